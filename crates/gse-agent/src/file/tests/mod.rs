//! File transfer end to end inside one process: real agents' file
//! services with their P2P listeners on 127.0.0.1 (mutual TLS with certs
//! made for the test), and a fake node routing the agent-link frames.

mod flows;
mod harness;
mod p2p;
mod scale;
