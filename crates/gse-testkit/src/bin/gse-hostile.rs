//! gse-hostile: the attacking steps of the security tests (issue 9), as
//! their own process so a test can run them as an unprivileged local user
//! (`gse_testkit::hostile::as_user("nobody")` spawns this binary with that
//! user's uid and gid) or as an unauthenticated network client.
//!
//! Each subcommand prints what it achieved as one JSON line on stdout and
//! exits 0 when the attack step ran (whatever its outcome): the test decides
//! from the JSON whether the defence held. Exit 2 = bad usage or setup.

use clap::{Parser, Subcommand};
use gse_testkit::hostile::{hold, http};

#[derive(Parser)]
#[command(name = "gse-hostile", about = "Attack steps for gse's security tests")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Tries to read a file; prints {"read": bool, "bytes": N, "error": ".."}.
    ReadFile { path: std::path::PathBuf },
    /// Makes LINK a symbolic link to TARGET; prints {"planted": bool, "error": ".."}.
    PlantSymlink {
        link: std::path::PathBuf,
        target: std::path::PathBuf,
    },
    /// Makes the directory PATH (mode 0777); prints {"planted": bool, "error": ".."}.
    PlantDir { path: std::path::PathBuf },
    /// Attacks on the agent's local data and plugin-message sockets.
    #[command(subcommand)]
    Ipc(gse_testkit::hostile::ipc::IpcCmd),
    /// Opens COUNT connections to a server and holds them; prints a
    /// summary when the counts waited for are reached ("phase": "opened")
    /// and when every one is closed or WATCH_SECS passed ("phase": "done").
    HoldConnections {
        #[arg(long)]
        addr: std::net::SocketAddr,
        /// Source address to connect from (e.g. 127.0.0.2); several are
        /// taken in turn.
        #[arg(long)]
        bind: Vec<std::net::IpAddr>,
        #[arg(long)]
        count: usize,
        #[arg(long, value_enum)]
        send: hold::Send,
        /// After a half header, send one more header byte every N ms.
        #[arg(long)]
        trickle_ms: Option<u64>,
        /// "opened" waits until N connections were answered or closed.
        #[arg(long, default_value_t = 0)]
        until_answered: usize,
        /// "opened" waits until the server closed N connections.
        #[arg(long, default_value_t = 0)]
        until_closed: usize,
        /// Longest wait for those counts.
        #[arg(long, default_value_t = 60_000)]
        max_wait_ms: u64,
        #[arg(long)]
        watch_secs: u64,
    },
    /// Sends one hand-made HTTP request; prints {"status", "json", "text"}.
    HttpRequest {
        #[arg(long)]
        addr: std::net::SocketAddr,
        #[arg(long)]
        bind: Option<std::net::IpAddr>,
        #[arg(long, default_value = "POST")]
        method: String,
        #[arg(long)]
        path: String,
        /// Characters appended to the path.
        #[arg(long, default_value_t = 0)]
        path_pad: usize,
        /// Bytes of one extra header's value.
        #[arg(long, default_value_t = 0)]
        header_pad: usize,
        /// Extra small headers.
        #[arg(long, default_value_t = 0)]
        header_count: usize,
        /// "Name: value" headers, as given.
        #[arg(long)]
        header: Vec<String>,
        #[arg(long, default_value = "")]
        body: String,
    },
    /// Sends COUNT requests at once, each streaming a BYTES-byte body with
    /// no credentials; prints how they were answered.
    BigBodies {
        #[arg(long)]
        addr: std::net::SocketAddr,
        #[arg(long, default_value = "/api/v2/cluster/list_agents")]
        path: String,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        bytes: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    let out = match cli.cmd {
        Cmd::ReadFile { path } => gse_testkit::hostile::files::read_file(&path),
        Cmd::PlantSymlink { link, target } => gse_testkit::hostile::plant::symlink(&link, &target),
        Cmd::PlantDir { path } => gse_testkit::hostile::plant::dir(&path),
        Cmd::Ipc(cmd) => gse_testkit::hostile::ipc::run(cmd),
        Cmd::HoldConnections {
            addr,
            bind,
            count,
            send,
            trickle_ms,
            until_answered,
            until_closed,
            max_wait_ms,
            watch_secs,
        } => hold::hold(hold::HoldSpec {
            addr,
            binds: bind,
            count,
            send,
            trickle_ms,
            until_answered,
            until_closed,
            max_wait_ms,
            watch_secs,
        }),
        Cmd::HttpRequest {
            addr,
            bind,
            method,
            path,
            path_pad,
            header_pad,
            header_count,
            header,
            body,
        } => http::request(http::RequestSpec {
            addr,
            bind,
            method,
            path,
            path_pad,
            header_pad,
            header_count,
            headers: header,
            body,
        }),
        Cmd::BigBodies {
            addr,
            path,
            count,
            bytes,
        } => http::big_bodies(addr, &path, count, bytes),
    };
    println!("{out}");
}
