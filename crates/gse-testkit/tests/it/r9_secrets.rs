//! Issue 9, item 1: secrets at rest. Another local user (`nobody`) reads
//! nothing that holds a secret or a key: quickstart's dir is 0700 and its
//! files 0600 from creation, the store keeps only salted hashes of app
//! secrets, `apps add` prints the secret once, and `check-config` names
//! every secret-holding file others can read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gse_testkit::hostile::{as_user, open_path_to, run_json};
use gse_testkit::{Api, Cluster, ServerOptions, bin, eventually};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every file under `dir` whose name satisfies `pick`.
fn files_under(dir: &Path, pick: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            found.extend(files_under(&p, pick));
        } else if pick(&p) {
            found.push(p);
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Whether `nobody` can read `path`.
fn nobody_reads(path: &Path) -> bool {
    let out = run_json(as_user("nobody").arg("read-file").arg(path));
    out["read"] == true
}

struct Quickstart {
    child: Child,
    dir: PathBuf,
    info: Value,
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `gse-server quickstart` with one agent on free ports, in `dir`.
fn quickstart_cmd(dir: &Path) -> Command {
    let mut cmd = Command::new(bin("gse-server"));
    cmd.args(["quickstart", "--agents", "1"])
        .args(["--api-listen", "127.0.0.1:0"])
        .args(["--agent-listen", "127.0.0.1:0"])
        .arg("--dir")
        .arg(dir);
    cmd
}

async fn quickstart(parent: &Path) -> Quickstart {
    let dir = parent.join("qs");
    let child = quickstart_cmd(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let info_path = dir.join("quickstart.json");
    let info = eventually("quickstart.json", Duration::from_secs(60), || async {
        let text = std::fs::read_to_string(&info_path).map_err(|e| e.to_string())?;
        serde_json::from_str(&text).map_err(|e| e.to_string())
    })
    .await;
    Quickstart { child, dir, info }
}

#[tokio::test]
async fn r9_1_quickstart_keeps_secrets_and_keys_from_other_local_users() {
    let parent = tempfile::tempdir().unwrap();
    let qs = quickstart(parent.path()).await;
    let secret = qs.info["bk_app_secret"].as_str().unwrap().to_string();

    // The directory and every file holding a secret, a key or a config
    // were created private.
    assert_eq!(mode(&qs.dir), 0o700, "quickstart dir");
    assert_eq!(mode(&qs.dir.join("server")), 0o700, "server data dir");
    let secret_files = files_under(&qs.dir, &|p| {
        let name = p.file_name().unwrap().to_string_lossy();
        name == "quickstart.json"
            || name.ends_with(".key")
            || name.ends_with(".toml")
            || name.starts_with("state.sqlite")
    });
    assert!(secret_files.len() >= 6, "{secret_files:?}");
    for f in &secret_files {
        assert_eq!(mode(f), 0o600, "{} is {:o}", f.display(), mode(f));
    }

    // Even with the directories opened to others (an operator's chmod),
    // nobody can read any of them.
    open_path_to(&qs.dir.join("server"));
    open_path_to(&qs.dir.join("certs"));
    for f in &secret_files {
        open_path_to(f.parent().unwrap());
        assert!(!nobody_reads(f), "nobody read {}", f.display());
    }
    // A file others may read is still readable: the attack step works.
    let public = qs.dir.join("certs/gseca.crt");
    assert!(nobody_reads(&public), "the CA certificate should be public");

    // The store keeps no plain secret, and the secret works.
    for f in files_under(&qs.dir.join("server"), &|_| true) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !contains(&bytes, &secret),
            "{} holds the secret",
            f.display()
        );
    }
    let api = Api::new(qs.info["api"].as_str().unwrap(), "gse-quickstart", &secret);
    assert_eq!(api.alive(0, "127.0.0.1").await, 1);
}

/// Runs `gse-server apps add` on a test server's config; returns the secret.
fn apps_add(config: &Path, code: &str) -> String {
    let out = Command::new(bin("gse-server"))
        .args(["apps", "add", "--code", code, "-c"])
        .arg(config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("bk_app_secret: ").count(), 1, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("bk_app_secret: "))
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test]
async fn r9_1_apps_add_prints_the_secret_once_and_stores_only_a_hash() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let first = apps_add(&server.config_path, "ops");
    let api = |secret: &str| Api::new(format!("http://{}", server.api_addr), "ops", secret);
    // Authenticated, the call gets past the app check to "agent unknown"
    // (1011003); a wrong secret stops at 1000403.
    let call = |api: Api| async move {
        let body = json!({"agent_id_list": ["0:127.0.0.99"]});
        api.post("/api/v2/cluster/list_agent_state", body).await.1["code"].clone()
    };
    assert_eq!(call(api(&first)).await, 1011003, "the printed secret works");
    assert_eq!(call(api("guess")).await, 1000403);

    // A new secret replaces the old one in the running node at once.
    let second = apps_add(&server.config_path, "ops");
    assert_ne!(first, second);
    assert_eq!(call(api(&second)).await, 1011003);
    assert_eq!(
        call(api(&first)).await,
        1000403,
        "the old secret still works"
    );

    let data = server.dir.join("data");
    assert_eq!(mode(&data), 0o700);
    for f in files_under(&data, &|p| p.to_string_lossy().contains("state.sqlite")) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
        let bytes = std::fs::read(&f).unwrap();
        for s in [&first, &second, "test-secret"] {
            assert!(!contains(&bytes, s), "{} holds a plain secret", f.display());
        }
    }
}

#[tokio::test]
async fn r9_1_check_config_names_every_secret_file_others_can_read() {
    let cluster = Cluster::new();
    let dir = cluster.path.join("cfg");
    std::fs::create_dir_all(&dir).unwrap();
    let key = cluster.tls(gse_core::certs::CertKind::Server).key_file;
    let config = dir.join("server.toml");
    let text = format!(
        "[node]\ndata_dir = {data:?}\n[tls]\nca_file = {ca:?}\ncert_file = {cert:?}\nkey_file = {key:?}\n\
         [[api.apps]]\napp_code = \"bk_job\"\napp_secret = \"plain-secret-in-config\"\n",
        data = dir.join("data"),
        ca = cluster.tls(gse_core::certs::CertKind::Server).ca_file,
        cert = cluster.tls(gse_core::certs::CertKind::Server).cert_file,
    );
    std::fs::write(&config, text).unwrap();
    let check = || {
        let out = Command::new(bin("gse-server"))
            .args(["check-config", "-c"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let chmod =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    chmod(&config, 0o644);
    chmod(&key, 0o640);
    let (stdout, stderr) = check();
    assert!(!stdout.contains("plain-secret-in-config"), "{stdout}");
    let warned = |path: &Path| {
        stderr
            .lines()
            .any(|l| l.starts_with("warning:") && l.contains(&*path.to_string_lossy()))
    };
    assert!(warned(&config), "no warning naming the config: {stderr}");
    assert!(warned(&key), "no warning naming the key: {stderr}");

    chmod(&config, 0o600);
    chmod(&key, 0o600);
    let (_, stderr) = check();
    assert!(!stderr.contains("warning:"), "{stderr}");

    // The agent names its key too.
    let agent_cfg = dir.join("agent.toml");
    let tls = cluster.tls(gse_core::certs::CertKind::Agent);
    let agent = gse_agent::AgentConfig::new(dir.join("agent"), vec!["127.0.0.1:1".into()], tls);
    std::fs::write(&agent_cfg, agent.to_toml()).unwrap();
    chmod(&agent.tls.key_file, 0o644);
    let out = Command::new(bin("gse-agent"))
        .arg("--config")
        .arg(&agent_cfg)
        .arg("check-config")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning:") && stderr.contains(&*agent.tls.key_file.to_string_lossy()),
        "{stderr}"
    );
}

#[tokio::test]
async fn r9_1_quickstart_refuses_a_directory_another_user_planted() {
    let parent = tempfile::tempdir().unwrap();
    // A shared, sticky directory like /tmp, where `nobody` got there first
    // (with, say, a CA of their own inside).
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    open_path_to(parent.path());
    let planted = parent.path().join("gse-quickstart");
    let made = run_json(as_user("nobody").arg("plant-dir").arg(&planted));
    assert_eq!(made["planted"], true, "{made}");

    let out = quickstart_cmd(&planted).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "quickstart used nobody's directory");
    assert!(stderr.contains("uid 65534"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&planted).unwrap().count(),
        0,
        "quickstart wrote into nobody's directory"
    );
}
