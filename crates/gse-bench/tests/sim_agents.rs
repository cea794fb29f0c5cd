//! The hidden `gse-bench sim-agents` child (`gse-bench scale` runs one per
//! node): its JSON lines on stdout, and that it stops once its parent's
//! end of stdin closes, so a parent that dies leaves no orphan.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gse_core::certs::{CertDir, CertKind};

#[test]
fn reports_failed_agents_then_exits_when_stdin_closes() {
    let dir = tempfile::tempdir().unwrap();
    let certs = CertDir::new(dir.path());
    certs.init(&[], 30).unwrap();
    let tls = certs.tls_files(CertKind::Agent);
    // A port nobody listens on: every agent's TCP connect is refused.
    let server = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gse-bench"))
        .arg("sim-agents")
        .args([
            "--server",
            &server.to_string(),
            "--first",
            "5",
            "--count",
            "3",
        ])
        .arg("--ca")
        .arg(&tls.ca_file)
        .arg("--cert")
        .arg(&tls.cert_file)
        .arg("--key")
        .arg(&tls.key_file)
        .args(["--report-every-ms", "50"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let done = loop {
        let line = lines.next().expect("the child ended its output").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["connecting_done"] == true {
            break v;
        }
    };
    assert_eq!(done["registered"], 0, "{done}");
    assert_eq!(done["failed"], 3, "{done}");
    let error = done["first_error"].as_str().unwrap();
    assert!(error.contains("TCP connect"), "{error}");
    // Still reporting while its stdin is open.
    lines.next().unwrap().unwrap();
    assert!(child.try_wait().unwrap().is_none());

    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after its stdin closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}
