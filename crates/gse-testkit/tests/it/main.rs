//! End-to-end tests: real gse-server and gse-agent processes on loopback,
//! driven through the HTTP API and the binaries' CLIs, as a user would.
//! Run `cargo build --bins` first (scripts/test.sh does).

mod api_input;
mod c2_proxy;
mod c2_proxy_hosts;
mod c2_proxy_link;
mod d_data;
mod d_kafka;
mod d_plugin_messages;
mod d_plugins;
mod d_routes;
mod d_snapshot;
mod f_files;
mod k1_registry;
mod k2_balance;
mod k3_status;
mod k4_liveness;
mod k6_tls;
mod k_cluster;
mod k_redis_sentinel;
mod k_redis_store;
mod quickstart;
mod quickstart_cluster;
mod r10_certs;
mod r10_hosts;
mod r10_lost;
mod r10_visible;
mod r11_claims;
mod r11_data_balance;
mod r11_failover;
mod r11_faults;
mod r11_forward;
mod r11_routes;
mod r11_snapshots;
mod r9_danger;
mod r9_files;
mod r9_http;
mod r9_identity;
mod r9_ipc;
mod r9_ipc_fair;
mod r9_link;
mod r9_link_flood;
mod r9_secrets;
mod restart;
mod t_tasks;
mod task_api;
