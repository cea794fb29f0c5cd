//! Issue 14: the agent built for another platform, run for real. The arm64
//! agent that `scripts/cross-build.sh` builds runs under qemu-user against a
//! native server: it registers, runs a task, receives a file from a native
//! agent and sends data records a collector writes to its local socket.

use std::path::PathBuf;
use std::time::Duration;

use gse_testkit::{AgentOptions, Cluster, ServerOptions, bin};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::d_data::{DATA_ID, connect, file_route, plain, socket_of, wait_all};
use crate::f_files::{self, noise, write_file};
use crate::task_api;

/// `target/<triple>/release/<name>`, built by `scripts/cross-build.sh`
/// (the test command runs it first).
fn cross_built(triple: &str, name: &str) -> PathBuf {
    // bin() is target/debug/<name>.
    let target = bin(name)
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .to_path_buf();
    let path = target.join(triple).join("release").join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with scripts/cross-build.sh --target {triple}",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x1_the_arm64_agent_under_qemu_registers_runs_a_task_receives_a_file_and_sends_data() {
    let arm64 = cross_built("aarch64-unknown-linux-gnu", "gse-agent");
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let sink = file_route(&server, DATA_ID).await;
    let mut opts = AgentOptions::ip("127.0.14.1");
    opts.binary = Some(arm64.clone());
    // The arm64 loader and libc of libc6-arm64-cross, named directly: with
    // qemu's -L instead, the agent's own file writes would be redirected
    // under that prefix too.
    opts.launcher = [
        "qemu-aarch64-static",
        "/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1",
        "--library-path",
        "/usr/aarch64-linux-gnu/lib",
    ]
    .map(String::from)
    .to_vec();
    let agent = cluster.agent(&server, opts);
    let native = cluster.agent(&server, AgentOptions::ip("127.0.14.2"));
    let api = &server.api;
    api.wait_alive("127.0.14.1").await;
    api.wait_alive("127.0.14.2").await;

    // It is the emulated arm64 binary that registered.
    let exe = std::fs::read_link(format!("/proc/{}/exe", agent.pid())).unwrap();
    assert!(
        exe.to_string_lossy().contains("qemu-aarch64"),
        "{}",
        exe.display()
    );
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", agent.pid())).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains(&*arm64.to_string_lossy()),
        "not the arm64 binary"
    );

    // A task: its output and exit code come back.
    let targets = ["0:127.0.14.1"];
    let task = task_api::start(api, &targets, "echo $((6 * 7)); exit 4", json!({})).await;
    let done = task_api::wait_final(api, &task, &targets, Duration::from_secs(60)).await;
    assert_eq!(done[0]["screen"], "42\n", "{}", done[0]);
    assert_eq!(done[0]["script_exit_code"], 4, "{}", done[0]);

    // A file from the native agent, installed by the arm64 one.
    let src = cluster.path.join("src");
    let content = noise(3 << 20, 14);
    write_file(&src.join("payload.bin"), &content, 0o640);
    let dst = cluster.path.join("dst");
    let id = f_files::start(
        api,
        vec![f_files::task(
            "0:127.0.14.2",
            &src,
            "payload.bin",
            &targets,
            &dst,
        )],
        json!({}),
    )
    .await;
    let results = f_files::wait_final(api, &id, 2, Duration::from_secs(90)).await;
    assert!(
        results.iter().all(|e| f_files::code(e) == 0),
        "{results:#?}"
    );
    let got = std::fs::read(dst.join("payload.bin"))
        .unwrap_or_else(|e| panic!("{}: {e}; {results:#?}", dst.display()));
    assert!(got == content, "the file arrived changed");

    // Data records through its local socket reach the sink.
    let mut conn = connect(&socket_of(&agent)).await;
    let want: Vec<String> = (0..200).map(|i| format!("arm64-{i}")).collect();
    let mut buf = Vec::new();
    for payload in &want {
        buf.extend(plain(0xC01, DATA_ID, payload.as_bytes()));
    }
    conn.write_all(&buf).await.unwrap();
    wait_all(&sink, &want, Duration::from_secs(60)).await;
    drop(native);
}
