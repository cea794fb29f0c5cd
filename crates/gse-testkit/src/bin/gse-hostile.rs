//! gse-hostile: the attacking steps of the security tests (issue 9), as
//! their own process so a test can run them as an unprivileged local user
//! (`gse_testkit::hostile::as_user("nobody")` spawns this binary with that
//! user's uid and gid) or as an unauthenticated network client.
//!
//! Each subcommand prints what it achieved as one JSON line on stdout and
//! exits 0 when the attack step ran (whatever its outcome): the test decides
//! from the JSON whether the defence held. Exit 2 = bad usage or setup.

use clap::{Parser, Subcommand};

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
}

fn main() {
    let cli = Cli::parse();
    let out = match cli.cmd {
        Cmd::ReadFile { path } => gse_testkit::hostile::files::read_file(&path),
        Cmd::PlantSymlink { link, target } => gse_testkit::hostile::plant::symlink(&link, &target),
        Cmd::PlantDir { path } => gse_testkit::hostile::plant::dir(&path),
        Cmd::Ipc(cmd) => gse_testkit::hostile::ipc::run(cmd),
    };
    println!("{out}");
}
