//! Issue 14: the agent built for another platform, run for real. The arm64
//! agent that `scripts/cross-build.sh` builds runs under qemu-user against a
//! native server: it registers, runs a task, receives a file from a native
//! agent and sends data records a collector writes to its local socket.

use std::path::{Path, PathBuf};
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
    let target = bin("gse-agent")
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

/// The Windows agent, copied into `dir` with the `bcryptprimitives.dll`
/// stand-in wine 8 needs (crates/gse-testkit/wine), and the command that
/// starts it under wine with its own prefix (its C: drive) in `dir`.
fn windows_agent(dir: &Path) -> (PathBuf, Vec<String>) {
    let built = cross_built("x86_64-pc-windows-gnu", "gse-agent.exe");
    std::fs::create_dir_all(dir).unwrap();
    let exe = dir.join("gse-agent.exe");
    std::fs::copy(&built, &exe).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("wine");
    let status = std::process::Command::new("x86_64-w64-mingw32-gcc")
        .args(["-O2", "-shared", "-o"])
        .arg(dir.join("bcryptprimitives.dll"))
        .arg(src.join("bcryptprimitives.c"))
        .arg(src.join("bcryptprimitives.def"))
        .arg("-ladvapi32")
        .status()
        .expect("x86_64-w64-mingw32-gcc (scripts/install-deps.sh --cross)");
    assert!(status.success(), "building the bcryptprimitives stand-in");
    let launcher: Vec<String> = vec![
        "env".into(),
        format!("WINEPREFIX={}", dir.join("prefix").display()),
        "WINEDEBUG=-all".into(),
        "/usr/lib/wine/wine64".into(),
    ];
    // Make the prefix now (wine's first start takes seconds, longer on a
    // busy machine), so the agent's own start is not what waits for it.
    let out = std::process::Command::new(&launcher[0])
        .args(&launcher[1..])
        .arg(&exe)
        .arg("--version")
        .output()
        .expect("wine64 (scripts/install-deps.sh --cross)");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("gse-agent "),
        "the Windows agent does not start under wine: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (exe, launcher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x2_the_windows_agent_under_wine_runs_commands_and_bat_scripts_and_receives_files() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let wine = cluster.path.join("wine");
    let (exe, launcher) = windows_agent(&wine);
    let mut opts = AgentOptions::ip("127.0.14.3");
    opts.binary = Some(exe);
    opts.launcher = launcher;
    let _agent = cluster.agent(&server, opts);
    let native = cluster.agent(&server, AgentOptions::ip("127.0.14.4"));
    let api = &server.api;
    api.wait_alive("127.0.14.3").await;
    api.wait_alive("127.0.14.4").await;
    let (_, v) = api.post("/api/v2/cluster/list_agents", json!({})).await;
    let me = v["data"]["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["ip"] == "127.0.14.3")
        .cloned()
        .unwrap();
    assert_eq!(me["os_type"], "windows", "{me}");

    // A command through cmd: its output and exit code.
    let targets = ["0:127.0.14.3"];
    let task = task_api::start(api, &targets, "echo hello& exit 3", json!({})).await;
    let done = task_api::wait_final(api, &task, &targets, Duration::from_secs(120)).await;
    assert_eq!(done[0]["screen"], "hello\r\n", "{}", done[0]);
    assert_eq!(done[0]["script_exit_code"], 3, "{}", done[0]);

    // A .bat script written to C:\ first, then run with an argument.
    let scripts = json!([{
        "script_name": "probe.bat",
        "script_store_dir": "C:\\gse-scripts",
        "script_content": "@echo off\r\necho bat says %1\r\nexit /b 7\r\n",
    }]);
    let task = task_api::start(
        api,
        &targets,
        "C:\\gse-scripts\\probe.bat hi",
        json!({"scripts": scripts}),
    )
    .await;
    let done = task_api::wait_final(api, &task, &targets, Duration::from_secs(120)).await;
    assert_eq!(done[0]["screen"], "bat says hi\r\n", "{}", done[0]);
    assert_eq!(done[0]["script_exit_code"], 7, "{}", done[0]);
    assert!(
        wine.join("prefix/drive_c/gse-scripts/probe.bat").is_file(),
        "the script is on C:"
    );

    // A file from the native agent into a C:\ directory.
    let src = cluster.path.join("src");
    let content = noise(1 << 20, 15);
    write_file(&src.join("setup.cfg"), &content, 0o644);
    let id = f_files::start(
        api,
        vec![json!({
            "source": {"file_name": "setup.cfg", "store_dir": src,
                       "agent": {"bk_agent_id": "0:127.0.14.4"}},
            "target": {"file_name": "", "store_dir": "C:\\gse-in",
                       "agents": [{"bk_agent_id": "0:127.0.14.3"}]},
        })],
        json!({}),
    )
    .await;
    let results = f_files::wait_final(api, &id, 2, Duration::from_secs(120)).await;
    assert!(
        results.iter().all(|e| f_files::code(e) == 0),
        "{results:#?}"
    );
    let got = std::fs::read(wine.join("prefix/drive_c/gse-in/setup.cfg")).unwrap();
    assert!(got == content, "the file arrived changed");
    drop(native);
}
