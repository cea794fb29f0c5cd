//! Ports for test servers that no other listener can take.
//!
//! A port found free by binding `:0` and closing again can be taken by
//! anyone before the server binds it, and a restarted server rebinds its
//! ports while its own (and everyone's) ephemeral binds are handed out from
//! the same range: a DataServer's `:0` once landed on the API port a test
//! was about to rebind. So test ports come from *below* the kernel's
//! ephemeral range (`ip_local_port_range`), where `:0` binds never land,
//! and each one is reserved across test processes by an exclusive lock on
//! a file under the system temp dir, held until this process exits.
//! Nextest runs every test in its own process; the locks keep them apart.

use std::fs::File;
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};

/// Lowest port handed out (above the well-known and registered services
/// tests could meet on a developer machine).
const LOWEST: u16 = 12000;

/// Lock files of the ports this process holds, kept open until it exits.
static HELD: Mutex<Vec<Flock<File>>> = Mutex::new(Vec::new());

/// A loopback port outside the ephemeral range, free on 127.0.0.1 and
/// reserved for this process. Panics when none is left.
pub fn reserve_port() -> u16 {
    let highest = ephemeral_low().saturating_sub(1);
    assert!(
        highest > LOWEST,
        "the ephemeral port range leaves no room for test ports"
    );
    let span = u32::from(highest - LOWEST) + 1;
    let start: u32 = rand::random::<u32>() % span;
    for i in 0..span {
        let port = LOWEST + ((start + i) % span) as u16;
        if let Some(lock) = try_lock(port)
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            HELD.lock().unwrap_or_else(|e| e.into_inner()).push(lock);
            return port;
        }
    }
    panic!("no free test port in {LOWEST}..={highest}");
}

/// The first port of the kernel's ephemeral range (32768 when unknown).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// The lock of `port`, if no other process holds it.
fn try_lock(port: u16) -> Option<Flock<File>> {
    let dir = std::env::temp_dir().join("gse-test-ports");
    std::fs::create_dir_all(&dir).ok()?;
    // Other users' test runs share /tmp: a lock file we cannot open is
    // theirs, and so is the port.
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()))
        .ok()?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_never_repeat() {
        let a = reserve_port();
        let b = reserve_port();
        assert_ne!(a, b);
        assert!(a >= LOWEST && a < ephemeral_low() && b < ephemeral_low());
        // Another open file description cannot lock a held port.
        assert!(try_lock(a).is_none());
    }
}
