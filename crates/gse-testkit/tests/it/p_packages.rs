//! The Debian packages (issue 13 item 1): `scripts/package.sh` builds
//! gse-server, gse-agent and gse-proxy; their contents, modes, conffiles
//! and control fields are what the README says; every unit passes
//! `systemd-analyze verify`; the maintainer scripts install into a fresh
//! root (`dpkg --root`, the gse user, data directories, the CA and
//! certificates); and the installed binaries, started with the packaged
//! configs as the units start them, give a working node whose agent runs a
//! task. The last step runs in mount and network namespaces of its own:
//! the packaged configs' fixed ports and host-wide paths never touch this
//! host's.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn version() -> String {
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let ws = &cargo[cargo.find("[workspace.package]").unwrap()..];
    let line = ws.lines().find(|l| l.starts_with("version")).unwrap();
    line.split('"').nth(1).unwrap().to_string()
}

/// `(mode, owner, path)` of every file in `deb`.
fn contents(deb: &Path) -> Vec<(String, String, String)> {
    run(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].to_string(),
                f[1].to_string(),
                f[5].trim_start_matches('.').to_string(),
            )
        })
        .collect()
}

fn field(deb: &Path, name: &str) -> String {
    run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name))
        .trim()
        .to_string()
}

/// A fresh root dpkg can install into: its database and the few account
/// files the maintainer scripts read and `useradd --root` writes.
fn fresh_root(dir: &Path) {
    for d in [
        "var/lib/dpkg/updates",
        "var/lib/dpkg/info",
        "etc",
        "lib/systemd/system",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("var/lib/dpkg/status"), "").unwrap();
    for (file, line) in [
        ("passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("group", "root:x:0:\n"),
        ("shadow", "root:*:19000:0:99999:7:::\n"),
        ("gshadow", "root:*::\n"),
    ] {
        std::fs::write(dir.join("etc").join(file), line).unwrap();
    }
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn owner_of(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).unwrap().uid()
}

#[test]
fn p_packages_install_into_a_fresh_root_and_run_a_node_and_its_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("debs");
    run(Command::new(repo().join("scripts/package.sh"))
        .args(["--profile", "debug", "--out"])
        .arg(&out)
        .current_dir(repo()));
    let (ver, arch) = (
        version(),
        run(Command::new("dpkg").arg("--print-architecture")),
    );
    let deb = |name: &str| out.join(format!("{name}_{ver}_{}.deb", arch.trim()));

    // Contents, modes and control fields.
    for (name, bins, config) in [
        (
            "gse-server",
            &["gse-server", "gsectl"][..],
            "gse-server.toml",
        ),
        ("gse-agent", &["gse-agent"][..], "gse-agent.toml"),
        ("gse-proxy", &["gse-proxy"][..], "gse-proxy.toml"),
    ] {
        let d = deb(name);
        let files = contents(&d);
        let find = |p: &str| {
            files
                .iter()
                .find(|(_, _, path)| path == p)
                .unwrap_or_else(|| panic!("{name} lacks {p}: {files:?}"))
                .clone()
        };
        for b in bins {
            assert_eq!(find(&format!("/usr/bin/{b}")).0, "-rwxr-xr-x");
        }
        let (mode, owner, _) = find(&format!("/etc/gse/{config}"));
        assert_eq!((mode.as_str(), owner.as_str()), ("-rw-r--r--", "root/root"));
        assert_eq!(
            find(&format!("/lib/systemd/system/{name}.service")).0,
            "-rw-r--r--"
        );
        assert!(files.iter().all(|(_, o, _)| o == "root/root"), "{files:?}");
        assert_eq!(field(&d, "Package"), name);
        assert_eq!(field(&d, "Version"), ver);
        let ctl = tmp.path().join(format!("ctl-{name}"));
        run(Command::new("dpkg-deb").arg("-e").arg(&d).arg(&ctl));
        assert_eq!(
            std::fs::read_to_string(ctl.join("conffiles"))
                .unwrap()
                .trim(),
            format!("/etc/gse/{config}")
        );
        for script in ["postinst", "prerm", "postrm"] {
            run(Command::new("sh").arg("-n").arg(ctl.join(script)));
        }
    }

    // Installed into a fresh root, as on a clean host.
    let root = tmp.path().join("root");
    fresh_root(&root);
    let debs: Vec<PathBuf> = ["gse-server", "gse-agent", "gse-proxy"].map(deb).into();
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args([
            "--force-script-chrootless",
            "--force-depends",
            "--log=/dev/null",
            "-i",
        ])
        .args(&debs));
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let gse_uid: u32 = passwd
        .lines()
        .find_map(|l| l.strip_prefix("gse:"))
        .and_then(|rest| rest.split(':').nth(1)?.parse().ok())
        .expect("the gse system user");
    let certs = root.join("etc/gse/certs");
    assert_eq!(mode_of(&root.join("var/lib/gse/server")), 0o700);
    assert_eq!(owner_of(&root.join("var/lib/gse/server")), gse_uid);
    assert_eq!(owner_of(&root.join("var/lib/gse/proxy")), gse_uid);
    assert_eq!(
        (
            mode_of(&root.join("var/lib/gse/agent")),
            owner_of(&root.join("var/lib/gse/agent"))
        ),
        (0o700, 0)
    );
    assert_eq!(mode_of(&root.join("etc/gse/gse-server.toml")), 0o640);
    assert_eq!(
        (
            mode_of(&certs.join("gse_server.key")),
            owner_of(&certs.join("gse_server.key"))
        ),
        (0o600, gse_uid)
    );
    assert_eq!(
        (
            mode_of(&certs.join("gseca.key")),
            owner_of(&certs.join("gseca.key"))
        ),
        (0o600, 0)
    );
    assert_eq!(mode_of(&certs.join("gse_agent.key")), 0o600);
    let server_cfg = std::fs::read_to_string(root.join("etc/gse/gse-server.toml")).unwrap();
    assert!(
        server_cfg.contains("data_dir = \"/var/lib/gse/server\""),
        "packaged data dir"
    );

    // Every unit verifies against the installed root (the host's own
    // units copied in for what they depend on).
    let units = root.join("lib/systemd/system");
    run(Command::new("cp")
        .args(["-rn", "/lib/systemd/system/."])
        .arg(&units));
    for name in ["gse-server", "gse-agent", "gse-proxy"] {
        let verify = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .arg(format!("/lib/systemd/system/{name}.service"))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&verify.stderr);
        assert!(
            verify.status.success() && said.trim().is_empty(),
            "{name}: {said}"
        );
    }

    // The node and its agent, started as the units start them, with the
    // packaged configs at their packaged paths, in namespaces of their own.
    let exec = |unit: &str, key: &str| -> String {
        let text = std::fs::read_to_string(units.join(format!("{unit}.service"))).unwrap();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{unit} has no {key}"));
        // The installed binary, from the root.
        format!("{}{line}", root.display())
    };
    let r = root.display();
    let script = format!(
        r#"set -eu
ip link set lo up
mount --make-rprivate /
mkdir -p /etc/gse /var/lib/gse
mount --bind {r}/etc/gse /etc/gse
mount --bind {r}/var/lib/gse /var/lib/gse
# Host-wide paths the packaged agent links its sockets at: private here.
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /usr/local
as_gse="setpriv --reuid {uid} --regid {uid} --clear-groups"
$as_gse {pre_server} >/dev/null
$as_gse {r}/usr/bin/gse-server apps add -c /etc/gse/gse-server.toml --code pkg --secret pkg-secret >/dev/null
$as_gse {server} >{logs}/server.log 2>&1 &
server=$!
{pre_agent} >/dev/null
{agent} >{logs}/agent.log 2>&1 &
agent=$!
trap 'kill $agent $server 2>/dev/null; wait' EXIT
export GSE_API=http://127.0.0.1:59313 GSE_APP_CODE=pkg GSE_APP_SECRET=pkg-secret
for i in $(seq 1 150); do
  if {r}/usr/bin/gsectl agents --alive-only --json 2>/dev/null | grep -q '127.0.0.1'; then
    {r}/usr/bin/gsectl exec --hosts 0:127.0.0.1 -- echo packaged-node-works
    exit 0
  fi
  sleep 0.2
done
echo "the agent never came alive"; cat {logs}/server.log {logs}/agent.log; exit 1
"#,
        uid = gse_uid,
        pre_server = exec("gse-server", "ExecStartPre"),
        server = exec("gse-server", "ExecStart"),
        pre_agent = exec("gse-agent", "ExecStartPre"),
        agent = exec("gse-agent", "ExecStart"),
        logs = tmp.path().display(),
    );
    let said = run(Command::new("unshare")
        .args(["--mount", "--net", "--fork", "bash", "-c"])
        .arg(&script));
    assert!(said.contains("packaged-node-works"), "{said}");
}
