//! Issue 9, items 4 and 5, end to end: a transfer's source is read with the
//! named account's rights (never root's when it names another user), and
//! targets never write through a directory or link a local user planted.
//! The local user's steps run as `nobody` through `gse-hostile`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use gse_testkit::hostile::{as_user, open_path_to, run_json};
use gse_testkit::{AgentOptions, ServerOptions};
use serde_json::{Value, json};

use crate::f_files::{Setup, code, noise, setup, start, temp_files, wait_final, write_file};

const SRC: &str = "0:127.0.94.1";
const DST: &str = "0:127.0.94.2";

/// One `tasks[]` item whose source is read as `user` (`None`: no `user`).
fn task_as(user: Option<&str>, src_dir: &Path, name: &str, dst_dir: &Path) -> Value {
    let mut agent = json!({"bk_agent_id": SRC});
    if let Some(user) = user {
        agent["user"] = json!(user);
    }
    json!({
        "source": {"file_name": name, "store_dir": src_dir, "agent": agent},
        "target": {"file_name": "", "store_dir": dst_dir, "agents": [{"bk_agent_id": DST}]},
    })
}

/// The download entry of `name` into `dst_dir` (each task has one target).
fn download<'a>(all: &'a [Value], name: &str, dst_dir: &Path) -> &'a Value {
    all.iter()
        .find(|e| {
            let c = &e["content"];
            c["mode"] == 1 && c["source_file_name"] == name && c["dest_file_dir"] == json!(dst_dir)
        })
        .unwrap_or_else(|| panic!("no download entry of {name:?} into {dst_dir:?}: {all:#?}"))
}

/// A server with the agents [`SRC`] and [`DST`].
async fn source_and_target() -> Setup {
    setup(
        ServerOptions::default(),
        vec![
            AgentOptions::ip("127.0.94.1"),
            AgentOptions::ip("127.0.94.2"),
        ],
    )
    .await
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn r9_4_source_reads_files_as_the_named_user() {
    let s = source_and_target().await;
    let src = s.cluster.path.join("src");
    let secret = noise(3000, 41);
    let big_secret = noise(3 << 20, 42);
    let open = noise(2000, 43);
    write_file(&src.join("secret.txt"), &secret, 0o600);
    write_file(&src.join("big-secret.bin"), &big_secret, 0o600);
    write_file(&src.join("open.txt"), &open, 0o644);
    chmod(&src, 0o755);
    // Only the files' own modes stand between nobody and them.
    open_path_to(&src);
    let dst = |i: usize| s.cluster.path.join(format!("dst{i}"));
    let tasks = vec![
        task_as(Some("nobody"), &src, "secret.txt", &dst(0)),
        task_as(Some("nobody"), &src, "big-secret.bin", &dst(1)),
        task_as(Some("nobody"), &src, "open.txt", &dst(2)),
        task_as(Some("root"), &src, "secret.txt", &dst(3)),
        task_as(None, &src, "secret.txt", &dst(4)),
        task_as(Some("nobody"), &src, "", &dst(5)),
        task_as(Some("gse-no-such-user"), &src, "open.txt", &dst(6)),
    ];
    let api = &s.server.api;
    let id = start(api, tasks, json!({})).await;
    let done = wait_final(api, &id, 14, Duration::from_secs(90)).await;

    // Root-only files read as nobody: refused at the source with 706,
    // naming the file and the account; the target gets nothing.
    for (i, name) in [(0, "secret.txt"), (1, "big-secret.bin")] {
        let d = download(&done, name, &dst(i));
        assert_eq!(code(d), 706, "task {i}: {d:#}");
        let msg = d["error_msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains(name) && msg.contains("nobody") && msg.contains("ermission denied"),
            "task {i}: {msg}"
        );
        assert!(!dst(i).join(name).exists(), "task {i} delivered {name}");
    }
    // What nobody may read goes; root (named, or by default) reads it all.
    for (i, name, content) in [
        (2, "open.txt", &open),
        (3, "secret.txt", &secret),
        (4, "secret.txt", &secret),
    ] {
        let d = download(&done, name, &dst(i));
        assert_eq!(code(d), 0, "task {i}: {d:#}");
        assert_eq!(&std::fs::read(dst(i).join(name)).unwrap(), content);
    }
    // A directory as nobody fails as a whole (never a partial tree that
    // reads as success), naming an unreadable file.
    let d = download(&done, "", &dst(5));
    assert_eq!(code(d), 706, "directory: {d:#}");
    let msg = d["error_msg"].as_str().unwrap_or_default();
    assert!(
        (msg.contains("secret.txt") || msg.contains("big-secret.bin")) && msg.contains("nobody"),
        "{msg}"
    );
    assert!(!dst(5).join("src").exists(), "the directory was delivered");
    // An account the source host does not know: 122, as for scripts.
    let d = download(&done, "open.txt", &dst(6));
    assert_eq!(code(d), 122, "unknown user: {d:#}");
    assert!(!dst(6).join("open.txt").exists());
}

#[tokio::test]
async fn r9_5_target_directories_planted_by_a_local_user_are_not_followed() {
    let s = source_and_target().await;
    // A root-owned directory nobody must not get root to write in.
    let vault = s.cluster.path.join("vault");
    std::fs::create_dir(&vault).unwrap();
    write_file(&vault.join("victim.conf"), b"original", 0o644);
    // A world-writable sticky directory, like /tmp.
    let x = s.cluster.path.join("x");
    std::fs::create_dir(&x).unwrap();
    chmod(&x, 0o1777);
    open_path_to(&x);
    for (link, target) in [
        (x.join("inbox"), vault.clone()),
        (x.join("app.conf"), vault.join("victim.conf")),
        (x.join("tree"), vault.clone()),
    ] {
        let planted = run_json(
            as_user("nobody")
                .arg("plant-symlink")
                .arg(&link)
                .arg(&target),
        );
        assert_eq!(planted["planted"], true, "{link:?}: {planted}");
    }
    for dir in [x.join("owned"), x.join("tree2")] {
        let planted = run_json(as_user("nobody").arg("plant-dir").arg(&dir));
        assert_eq!(planted["planted"], true, "{dir:?}: {planted}");
    }

    let src = s.cluster.path.join("src");
    let small = noise(5000, 51);
    let big = noise(3 << 20, 52);
    write_file(&src.join("small.cfg"), &small, 0o644);
    write_file(&src.join("big.bin"), &big, 0o644);
    write_file(&src.join("app.conf"), b"pushed", 0o644);
    write_file(&src.join("tree/inner.txt"), b"inner", 0o644);
    write_file(&src.join("tree2/inner.txt"), b"inner", 0o644);
    let tasks = vec![
        task_as(None, &src, "small.cfg", &x.join("inbox")),
        task_as(None, &src, "big.bin", &x.join("inbox")),
        task_as(None, &src, "small.cfg", &x.join("owned")),
        task_as(None, &src, "app.conf", &x),
        task_as(None, &src.join("tree"), "", &x),
        task_as(None, &src.join("tree2"), "", &x),
    ];
    let api = &s.server.api;
    let id = start(api, tasks, json!({})).await;
    let done = wait_final(api, &id, 12, Duration::from_secs(90)).await;

    // Through the planted `inbox` link (direct and P2P), into nobody's own
    // directory, and into trees whose top directory is a planted link or
    // nobody's directory: refused as unsafe paths, naming what is wrong.
    for (i, name, dir, why) in [
        (0, "small.cfg", x.join("inbox"), "symbolic link"),
        (1, "big.bin", x.join("inbox"), "symbolic link"),
        (2, "small.cfg", x.join("owned"), "owned by uid"),
    ] {
        let d = download(&done, name, &dir);
        assert_eq!(code(d), 703, "task {i}: {d:#}");
        let msg = d["error_msg"].as_str().unwrap_or_default();
        assert!(msg.contains(why), "task {i}: {msg}");
    }
    for tree in ["tree", "tree2"] {
        let d = done
            .iter()
            .find(|e| {
                e["content"]["mode"] == 1
                    && e["content"]["source_file_dir"] == json!(src.join(tree))
            })
            .unwrap_or_else(|| panic!("no download entry of {tree}: {done:#?}"));
        assert_eq!(code(d), 703, "{tree}: {d:#}");
    }
    // A link planted at the final name is replaced, never written through.
    let app = download(&done, "app.conf", &x);
    assert_eq!(code(app), 0, "{app:#}");
    let meta = std::fs::symlink_metadata(x.join("app.conf")).unwrap();
    assert!(meta.is_file(), "app.conf is still a link");
    assert_eq!(std::fs::read(x.join("app.conf")).unwrap(), b"pushed");

    // Nothing reached the root-owned directory nor nobody's.
    let mut in_vault: Vec<_> = std::fs::read_dir(&vault)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    in_vault.sort();
    assert_eq!(in_vault, ["victim.conf"], "written through a planted link");
    assert_eq!(
        std::fs::read(vault.join("victim.conf")).unwrap(),
        b"original"
    );
    for theirs in ["owned", "tree2"] {
        assert_eq!(
            std::fs::read_dir(x.join(theirs)).unwrap().count(),
            0,
            "{theirs}"
        );
    }
    assert!(temp_files(&x).is_empty() && temp_files(&vault).is_empty());
}
