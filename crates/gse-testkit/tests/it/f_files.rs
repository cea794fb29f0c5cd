//! F1..F10 end to end: real agents move real files, driven through bk-job's
//! file API (COMPAT.md §2.1) and `gsectl push`; hand-driven fake agents and a
//! rogue peer play the adversaries (corrupt pieces, escaping manifests).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gse_core::certs::CertKind;
use gse_proto::MsgType;
use gse_proto::link::{EntryType, FileEntry, FileManifest, FileManifestRequest};
use gse_testkit::{
    AgentOptions, AgentProc, Api, Cluster, FakeAgent, FakeAgentOptions, RoguePeer, ServerOptions,
    ServerProc, eventually,
};
use serde_json::{Value, json};

const TRANSFER: &str = "/api/v2/task/extensions/async_transfer_file";
const RESULT: &str = "/api/v2/task/extensions/get_transfer_file_result";
const TERMINATE: &str = "/api/v2/task/extensions/async_terminate_transfer_file";

/// Deterministic pseudo-random bytes (xorshift), so content mix-ups show.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub(crate) fn write_file(path: &Path, bytes: &[u8], mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Every path under `dir` whose name marks a temporary file.
pub(crate) fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            } else if e.file_name().to_string_lossy().contains(".gse-tmp-") {
                found.push(p);
            }
        }
    }
    found
}

pub(crate) fn agent_obj(id: &str) -> Value {
    json!({"bk_agent_id": id})
}

/// One `tasks[]` item: `source` on `src_agent`, to `dst_dir` on `targets`.
pub(crate) fn task(
    src_agent: &str,
    src_dir: &Path,
    name: &str,
    targets: &[&str],
    dst_dir: &Path,
) -> Value {
    json!({
        "source": {"file_name": name, "store_dir": src_dir, "agent": agent_obj(src_agent)},
        "target": {"file_name": "", "store_dir": dst_dir,
                   "agents": targets.iter().map(|t| agent_obj(t)).collect::<Vec<_>>()},
    })
}

pub(crate) async fn start(api: &Api, tasks: Vec<Value>, extra: Value) -> String {
    let mut body = json!({"tasks": tasks, "timeout_seconds": 120, "auto_mkdir": true,
                          "upload_speed": 0, "download_speed": 0});
    gse_testkit::merge_json(&mut body, &extra);
    let (status, v) = api.post(TRANSFER, body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["code"], 0, "{v}");
    v["data"]["result"]["task_id"]
        .as_str()
        .expect("task_id")
        .to_string()
}

pub(crate) async fn results(api: &Api, task_id: &str) -> Vec<Value> {
    let (_, v) = api.post(RESULT, json!({"task_id": task_id})).await;
    v["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no result list: {v}"))
}

pub(crate) fn code(e: &Value) -> i64 {
    e["error_code"].as_i64().unwrap_or(-1)
}

pub(crate) fn downloads(all: &[Value]) -> Vec<Value> {
    all.iter()
        .filter(|e| e["content"]["mode"] == 1)
        .cloned()
        .collect()
}

pub(crate) fn download_of<'a>(all: &'a [Value], dest: &str) -> &'a Value {
    all.iter()
        .find(|e| e["content"]["mode"] == 1 && e["content"]["dest_agent_id"] == dest)
        .unwrap_or_else(|| panic!("no download entry for {dest}: {all:?}"))
}

/// Polls until `n` entries are listed and every one is final.
pub(crate) async fn wait_final(api: &Api, task_id: &str, n: usize, within: Duration) -> Vec<Value> {
    eventually(&format!("transfer {task_id} final"), within, || async {
        let got = results(api, task_id).await;
        (got.len() == n && got.iter().all(|e| code(e) != 115))
            .then_some(got.clone())
            .ok_or(format!("{got:#?}"))
    })
    .await
}

pub(crate) struct Setup {
    pub cluster: Cluster,
    pub server: ServerProc,
    pub agents: Vec<AgentProc>,
}

pub(crate) async fn setup(server_opts: ServerOptions, agents: Vec<AgentOptions>) -> Setup {
    let cluster = Cluster::new();
    let server = cluster.server(server_opts).await;
    let ips: Vec<String> = agents.iter().map(|a| a.ip.to_string()).collect();
    let agents: Vec<AgentProc> = agents
        .into_iter()
        .map(|o| cluster.agent(&server, o))
        .collect();
    for ip in &ips {
        server.api.wait_alive(ip).await;
    }
    Setup {
        cluster,
        server,
        agents,
    }
}

fn zoned(ip: &str, zone: &str) -> AgentOptions {
    let mut o = AgentOptions::ip(ip);
    o.zone = zone.into();
    o
}

#[tokio::test]
async fn f1_large_file_goes_p2p_to_every_target_with_content_and_mode() {
    let s = setup(
        ServerOptions::default(),
        ["127.0.2.1", "127.0.2.2", "127.0.2.3", "127.0.2.4"]
            .map(AgentOptions::ip)
            .to_vec(),
    )
    .await;
    let src = s.cluster.path.join("src");
    let content = noise(24 << 20, 1);
    write_file(&src.join("big.bin"), &content, 0o640);
    let targets = ["0:127.0.2.2", "0:127.0.2.3", "0:127.0.2.4"];
    let dst: Vec<PathBuf> = (2..=4)
        .map(|i| s.cluster.path.join(format!("dst{i}")))
        .collect();
    // One task per target directory would be three tasks; one directory
    // shared by all targets is what Job sends.
    let dst_dir = s.cluster.path.join("dst");
    let api = &s.server.api;
    let id = start(
        api,
        vec![task("0:127.0.2.1", &src, "big.bin", &targets, &dst_dir)],
        json!({}),
    )
    .await;
    // Every entry is listed at once: one upload, one download per target.
    let first = results(api, &id).await;
    assert_eq!(first.len(), 4, "{first:#?}");
    assert_eq!(
        first.iter().filter(|e| e["content"]["mode"] == 0).count(),
        1
    );

    let done = wait_final(api, &id, 4, Duration::from_secs(90)).await;
    let mut p2p_total = 0;
    for e in &done {
        assert_eq!(code(e), 0, "{e}");
        assert_eq!(e["content"]["size"], content.len() as u64, "{e}");
        assert_eq!(e["content"]["progress"], 100, "{e}");
    }
    for e in downloads(&done) {
        let c = &e["content"];
        assert_eq!(c["dest_file_name"], "big.bin", "{e}");
        assert_eq!(c["source_file_name"], "big.bin", "{e}");
        let (p2p, direct) = (
            c["bytes_p2p"].as_u64().unwrap(),
            c["bytes_direct"].as_u64().unwrap(),
        );
        assert_eq!(p2p + direct, content.len() as u64, "{e}");
        p2p_total += p2p;
    }
    assert!(p2p_total > 0, "pieces went peer to peer: {done:#?}");
    // The targets all share one directory on this one machine, so write
    // each to its own: check the shared one once, then the per-target runs.
    let got = dst_dir.join("big.bin");
    assert_eq!(std::fs::read(&got).unwrap(), content);
    assert_eq!(mode_of(&got), 0o640);
    assert!(temp_files(&dst_dir).is_empty());

    // Separate directories per target (three tasks of one transfer).
    let tasks: Vec<Value> = targets
        .iter()
        .zip(&dst)
        .map(|(t, d)| task("0:127.0.2.1", &src, "big.bin", &[t], d))
        .collect();
    let id = start(api, tasks, json!({})).await;
    let done = wait_final(api, &id, 6, Duration::from_secs(90)).await;
    assert!(done.iter().all(|e| code(e) == 0), "{done:#?}");
    for d in &dst {
        let got = d.join("big.bin");
        assert_eq!(std::fs::read(&got).unwrap(), content, "{}", got.display());
        assert_eq!(mode_of(&got), 0o640);
    }
}

#[tokio::test]
async fn f2_small_file_goes_direct_renamed_with_permission() {
    let s = setup(
        ServerOptions::default(),
        vec![
            AgentOptions::ip("127.0.2.11"),
            AgentOptions::ip("127.0.2.12"),
        ],
    )
    .await;
    let src = s.cluster.path.join("src");
    let content = noise(5000, 2);
    write_file(&src.join("small.cfg"), &content, 0o644);
    let dst = s.cluster.path.join("dst/new/dir");
    let mut t = task("0:127.0.2.11", &src, "small.cfg", &["0:127.0.2.12"], &dst);
    t["target"]["file_name"] = "renamed.cfg".into();
    t["target"]["permission"] = "600".into();
    let id = start(&s.server.api, vec![t], json!({})).await;
    let done = wait_final(&s.server.api, &id, 2, Duration::from_secs(30)).await;
    let d = download_of(&done, "0:127.0.2.12");
    assert_eq!(code(d), 0, "{d}");
    assert_eq!(
        d["content"]["bytes_direct"], 5000,
        "small files go direct: {d}"
    );
    assert_eq!(d["content"]["bytes_p2p"], 0, "{d}");
    let got = dst.join("renamed.cfg");
    assert_eq!(std::fs::read(&got).unwrap(), content);
    assert_eq!(mode_of(&got), 0o600);

    // The results survive a server restart.
    let mut s = s;
    s.server.restart().await;
    let again = results(&s.server.api, &id).await;
    assert_eq!(again.len(), 2, "{again:#?}");
    let d = download_of(&again, "0:127.0.2.12");
    assert_eq!(
        (code(d), &d["content"]["bytes_direct"]),
        (0, &json!(5000)),
        "{d}"
    );
}

#[tokio::test]
async fn f6_f7_directory_keeps_modes_links_and_empty_dirs_and_patterns_select() {
    let s = setup(
        ServerOptions::default(),
        vec![
            AgentOptions::ip("127.0.2.21"),
            AgentOptions::ip("127.0.2.22"),
        ],
    )
    .await;
    let root = s.cluster.path.join("src");
    let app = root.join("app");
    write_file(&app.join("bin/run.sh"), b"#!/bin/sh\necho hi\n", 0o755);
    write_file(&app.join("conf/a.conf"), &noise(40_000, 3), 0o600);
    write_file(&app.join("conf/b.conf"), b"b", 0o644);
    write_file(&app.join("logs/x.log"), b"x", 0o644);
    write_file(&app.join("logs/y.txt"), b"y", 0o644);
    std::fs::create_dir_all(app.join("empty")).unwrap();
    std::fs::set_permissions(app.join("empty"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(app.join("conf"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("conf/b.conf", app.join("link")).unwrap();
    let api = &s.server.api;

    // Directory (F6): empty file_name.
    let dst = s.cluster.path.join("dst-tree");
    let id = start(
        api,
        vec![task("0:127.0.2.21", &app, "", &["0:127.0.2.22"], &dst)],
        json!({}),
    )
    .await;
    let done = wait_final(api, &id, 2, Duration::from_secs(30)).await;
    assert!(done.iter().all(|e| code(e) == 0), "{done:#?}");
    let out = dst.join("app");
    assert_eq!(mode_of(&out.join("bin/run.sh")), 0o755);
    assert_eq!(mode_of(&out.join("conf")), 0o750);
    assert_eq!(mode_of(&out.join("conf/a.conf")), 0o600);
    assert_eq!(
        std::fs::read(out.join("conf/a.conf")).unwrap(),
        noise(40_000, 3)
    );
    assert!(out.join("empty").is_dir());
    assert_eq!(mode_of(&out.join("empty")), 0o700);
    assert_eq!(
        std::fs::read_link(out.join("link")).unwrap(),
        PathBuf::from("conf/b.conf")
    );

    // Wildcard (F7): *.log under logs/, and a regex over the whole tree.
    let dst_w = s.cluster.path.join("dst-wild");
    let mut wild = task(
        "0:127.0.2.21",
        &app.join("logs"),
        "*.log",
        &["0:127.0.2.22"],
        &dst_w,
    );
    wild["source"]["file_type"] = 4.into();
    let dst_r = s.cluster.path.join("dst-regex");
    let mut re = task("0:127.0.2.21", &app, r".*\.conf", &["0:127.0.2.22"], &dst_r);
    re["source"]["file_type"] = 3.into();
    let id = start(api, vec![wild, re], json!({})).await;
    let done = wait_final(api, &id, 4, Duration::from_secs(30)).await;
    assert!(done.iter().all(|e| code(e) == 0), "{done:#?}");
    assert!(dst_w.join("x.log").is_file());
    assert!(!dst_w.join("y.txt").exists());
    assert_eq!(mode_of(&dst_r.join("conf/a.conf")), 0o600);
    assert!(dst_r.join("conf/b.conf").is_file());
    assert!(
        !dst_r.join("logs").exists(),
        "regex selected only .conf files"
    );
}

#[tokio::test]
async fn f5_corrupt_pieces_from_a_rogue_peer_are_refused_and_refetched() {
    let s = setup(
        ServerOptions::default(),
        vec![
            AgentOptions::ip("127.0.2.31"),
            AgentOptions::ip("127.0.2.32"),
            AgentOptions::ip("127.0.2.33"),
        ],
    )
    .await;
    let size: u64 = 8 << 20;
    let piece: u32 = 1 << 20;
    let tls = s.cluster.tls(CertKind::Agent);
    let rogue = RoguePeer::start("127.0.2.34", &tls, vec![(0, 8, piece, size)]).await;
    let mut fake_opts = FakeAgentOptions::ip("127.0.2.34");
    fake_opts.p2p_addr = Some(rogue.addr);
    let _fake = FakeAgent::connect(s.server.link_addr, &tls, fake_opts).await;

    let src = s.cluster.path.join("src");
    let content = noise(size as usize, 5);
    write_file(&src.join("f.bin"), &content, 0o644);
    let dst = s.cluster.path.join("dst");
    let targets = ["0:127.0.2.32", "0:127.0.2.33", "0:127.0.2.34"];
    let api = &s.server.api;
    // The source uploads at 2 MiB/s, so the targets must fetch from peers
    // too (the rogue claims every piece); an unthrottled source on a busy
    // machine served them everything before they asked anyone else.
    let id = start(
        api,
        vec![task("0:127.0.2.31", &src, "f.bin", &targets, &dst)],
        json!({"upload_speed": 2}),
    )
    .await;
    // The honest targets finish; the rogue never reports.
    let done = eventually("honest targets done", Duration::from_secs(60), || async {
        let got = results(api, &id).await;
        let ok = ["0:127.0.2.32", "0:127.0.2.33"].iter().all(|t| {
            got.iter()
                .any(|e| e["content"]["dest_agent_id"] == *t && code(e) == 0)
        });
        ok.then_some(got.clone()).ok_or(format!("{got:#?}"))
    })
    .await;
    assert_eq!(std::fs::read(dst.join("f.bin")).unwrap(), content);
    assert!(
        rogue.corrupt_pieces_served() > 0,
        "the rogue peer was asked for pieces: {done:#?}"
    );
    let refused = s.agents.iter().skip(1).any(|a| a.log().contains("corrupt"));
    assert!(refused, "a target logged the corrupt piece it refused");
    // Terminate the rest; the rogue's entry ends 126.
    let (_, v) = api
        .post(
            TERMINATE,
            json!({"task_id": id, "agents": [agent_obj("0:127.0.2.34")]}),
        )
        .await;
    assert_eq!(v["code"], 0, "{v}");
    let done = wait_final(api, &id, 4, Duration::from_secs(30)).await;
    assert_eq!(code(download_of(&done, "0:127.0.2.34")), 126);
}

#[tokio::test]
async fn f3_without_a_reachable_source_pieces_come_direct_and_then_from_peers() {
    // The source serves no peers (no P2P listener): every piece must start
    // direct through the server; the targets then trade among themselves.
    let mut source = AgentOptions::ip("127.0.2.41");
    source.p2p = false;
    let s = setup(
        ServerOptions::default(),
        vec![
            source,
            AgentOptions::ip("127.0.2.42"),
            AgentOptions::ip("127.0.2.43"),
        ],
    )
    .await;
    let src = s.cluster.path.join("src");
    let content = noise(12 << 20, 6);
    write_file(&src.join("h.bin"), &content, 0o644);
    let targets = ["0:127.0.2.42", "0:127.0.2.43"];
    let dst = s.cluster.path.join("dst");
    let api = &s.server.api;
    // The source uploads at 2 MiB/s: twice 12 MiB direct would take 12 s,
    // so the targets trade what each got (on a busy machine an unthrottled
    // source could serve both everything before they met).
    let id = start(
        api,
        vec![task("0:127.0.2.41", &src, "h.bin", &targets, &dst)],
        json!({"upload_speed": 2}),
    )
    .await;
    let done = wait_final(api, &id, 3, Duration::from_secs(90)).await;
    assert!(done.iter().all(|e| code(e) == 0), "{done:#?}");
    assert_eq!(std::fs::read(dst.join("h.bin")).unwrap(), content);
    let (mut p2p, mut direct) = (0, 0);
    for e in downloads(&done) {
        p2p += e["content"]["bytes_p2p"].as_u64().unwrap();
        direct += e["content"]["bytes_direct"].as_u64().unwrap();
    }
    assert_eq!(p2p + direct, 2 * content.len() as u64);
    assert!(
        direct > 0,
        "the source was only reachable direct: {done:#?}"
    );
    assert!(p2p > 0, "the targets traded pieces: {done:#?}");
}

#[tokio::test]
async fn f9_zones_are_isolated_unless_the_operator_allows_a_pass_through() {
    let opts = ServerOptions {
        file_pass_through: vec![("a".into(), "b".into())],
        ..ServerOptions::default()
    };
    let s = setup(
        opts,
        vec![
            zoned("127.0.3.1", "a"),
            zoned("127.0.3.2", "b"),
            zoned("127.0.3.3", "c"),
        ],
    )
    .await;
    let src = s.cluster.path.join("src");
    let content = noise(3 << 20, 7);
    write_file(&src.join("z.bin"), &content, 0o644);
    let dst = s.cluster.path.join("dst");
    let api = &s.server.api;

    let id = start(
        api,
        vec![task("0:127.0.3.1", &src, "z.bin", &["0:127.0.3.2"], &dst)],
        json!({}),
    )
    .await;
    let done = wait_final(api, &id, 2, Duration::from_secs(30)).await;
    let d = download_of(&done, "0:127.0.3.2");
    assert_eq!(code(d), 707, "{d}");
    let msg = d["error_msg"].as_str().unwrap();
    assert!(
        msg.contains("\"b\"") && msg.contains("pass_through"),
        "{msg}"
    );
    assert!(!dst.join("z.bin").exists());

    // A pass-through the operator did not allow is refused up front.
    let (status, v) = api
        .post(
            TRANSFER,
            json!({"tasks": [task("0:127.0.3.1", &src, "z.bin", &["0:127.0.3.3"], &dst)],
                   "timeout_seconds": 60, "auto_mkdir": true, "upload_speed": 0, "download_speed": 0,
                   "pass_through": [{"from_zone": "a", "to_zone": "c"}]}),
        )
        .await;
    assert_ne!(v["code"], 0, "{status} {v}");
    assert!(
        v["message"].as_str().unwrap().contains("pass_through"),
        "{v}"
    );

    // The allowed one opens the way for this transfer.
    let id = start(
        api,
        vec![task("0:127.0.3.1", &src, "z.bin", &["0:127.0.3.2"], &dst)],
        json!({"pass_through": [{"from_zone": "a", "to_zone": "b"}]}),
    )
    .await;
    let done = wait_final(api, &id, 2, Duration::from_secs(30)).await;
    assert!(done.iter().all(|e| code(e) == 0), "{done:#?}");
    assert_eq!(std::fs::read(dst.join("z.bin")).unwrap(), content);
}

#[tokio::test]
async fn f8_zone_chain_relays_the_file_into_the_next_zone() {
    let s = setup(
        ServerOptions::default(),
        vec![
            zoned("127.0.3.11", "a"),
            zoned("127.0.3.12", "b"),
            zoned("127.0.3.13", "b"),
            zoned("127.0.3.14", "b"),
        ],
    )
    .await;
    let src = s.cluster.path.join("src");
    let content = noise(6 << 20, 8);
    write_file(&src.join("c.bin"), &content, 0o600);
    let dst = s.cluster.path.join("dst");
    let api = &s.server.api;
    let id = start(
        api,
        vec![task(
            "0:127.0.3.11",
            &src,
            "c.bin",
            &["0:127.0.3.13", "0:127.0.3.14"],
            &dst,
        )],
        json!({"zone_chain": [{"zone": "b", "relays": [agent_obj("0:127.0.3.12")]}]}),
    )
    .await;
    let done = wait_final(api, &id, 3, Duration::from_secs(60)).await;
    assert!(done.iter().all(|e| code(e) == 0), "{done:#?}");
    assert_eq!(std::fs::read(dst.join("c.bin")).unwrap(), content);
    assert_eq!(mode_of(&dst.join("c.bin")), 0o600);
    // The relay is not a result entry and installed nothing for the user.
    assert!(
        !done
            .iter()
            .any(|e| e["content"]["dest_agent_id"] == "0:127.0.3.12"),
        "{done:#?}"
    );
}

#[tokio::test]
async fn f_escaping_manifest_paths_are_refused_by_the_target() {
    let s = setup(
        ServerOptions::default(),
        vec![AgentOptions::ip("127.0.3.22")],
    )
    .await;
    let tls = s.cluster.tls(CertKind::Agent);
    let mut fake =
        FakeAgent::connect(s.server.link_addr, &tls, FakeAgentOptions::ip("127.0.3.21")).await;
    let dst = s.cluster.path.join("dst/inner");
    std::fs::create_dir_all(&dst).unwrap();
    let api = &s.server.api;
    for (path, kind) in [
        ("../escape.txt", EntryType::EntryFile),
        ("/tmp/gse-escape-abs.txt", EntryType::EntryFile),
        ("sub/../../escape2.txt", EntryType::EntryFile),
    ] {
        let id = start(
            api,
            vec![task(
                "0:127.0.3.21",
                Path::new("/srv"),
                "x",
                &["0:127.0.3.22"],
                &dst,
            )],
            json!({}),
        )
        .await;
        let req: FileManifestRequest = fake
            .recv_type(MsgType::FileManifestRequest, Duration::from_secs(10))
            .await
            .decode()
            .unwrap();
        let bytes = b"evil!";
        let hash = blake3_of(bytes);
        let manifest = FileManifest {
            transfer_id: req.transfer_id.clone(),
            task_index: req.task_index,
            error_code: 0,
            error_message: String::new(),
            entries: vec![FileEntry {
                path: path.into(),
                mode: 0o644,
                r#type: kind as i32,
                size: bytes.len() as u64,
                piece_size: 1 << 20,
                piece_hashes: hash.to_vec(),
                blake3: hash.to_vec(),
                md5_hex: md5_hex(bytes),
                link_target: String::new(),
            }],
            skipped: vec![],
        };
        fake.send(gse_proto::Frame::new(MsgType::FileManifest, 0, &manifest))
            .await;
        let done = wait_final(api, &id, 2, Duration::from_secs(30)).await;
        let d = download_of(&done, "0:127.0.3.22");
        assert_eq!(code(d), 703, "{path}: {d}");
        assert!(!s.cluster.path.join("dst/escape.txt").exists());
        assert!(!s.cluster.path.join("escape2.txt").exists());
        assert!(!Path::new("/tmp/gse-escape-abs.txt").exists());
    }
}

#[tokio::test]
async fn f10_terminate_and_a_lost_target_leave_no_partial_files() {
    let s = setup(
        ServerOptions::default(),
        vec![
            AgentOptions::ip("127.0.3.31"),
            AgentOptions::ip("127.0.3.32"),
            AgentOptions::ip("127.0.3.33"),
        ],
    )
    .await;
    let mut s = s;
    let src = s.cluster.path.join("src");
    let content = noise(16 << 20, 9);
    write_file(&src.join("slow.bin"), &content, 0o644);
    let api = s.server.api.clone();
    let dst_a = s.cluster.path.join("dst-a");
    let dst_b = s.cluster.path.join("dst-b");
    // 1 MB/s: 16 s for the whole file, time enough to act mid-way.
    let id = start(
        &api,
        vec![
            task("0:127.0.3.31", &src, "slow.bin", &["0:127.0.3.32"], &dst_a),
            task("0:127.0.3.31", &src, "slow.bin", &["0:127.0.3.33"], &dst_b),
        ],
        json!({"upload_speed": 1, "download_speed": 1}),
    )
    .await;
    eventually(
        "progress on both targets",
        Duration::from_secs(30),
        || async {
            let got = results(&api, &id).await;
            let moving = downloads(&got)
                .iter()
                .filter(|e| e["content"]["progress"].as_u64().unwrap_or(0) > 0)
                .count();
            (moving == 2).then_some(()).ok_or(format!("{got:#?}"))
        },
    )
    .await;
    // One target dies; the other is terminated.
    s.agents[2].kill9();
    let (_, v) = api
        .post(
            TERMINATE,
            json!({"task_id": id, "agents": [agent_obj("0:127.0.3.32")]}),
        )
        .await;
    assert_eq!(v["code"], 0, "{v}");
    let done = wait_final(&api, &id, 4, Duration::from_secs(30)).await;
    assert_eq!(code(download_of(&done, "0:127.0.3.32")), 126, "{done:#?}");
    assert_eq!(code(download_of(&done, "0:127.0.3.33")), 117, "{done:#?}");
    // Terminated: nothing under the final name, temp files removed.
    eventually("temp files removed", Duration::from_secs(10), || async {
        let left = temp_files(&dst_a);
        left.is_empty().then_some(()).ok_or(format!("{left:?}"))
    })
    .await;
    assert!(!dst_a.join("slow.bin").exists());
    // The killed agent left a temp file at most, never a final one.
    assert!(!dst_b.join("slow.bin").exists());
}

#[tokio::test]
async fn f_bad_sources_and_targets_end_their_own_entries_only() {
    let s = setup(
        ServerOptions::default(),
        vec![
            AgentOptions::ip("127.0.3.41"),
            AgentOptions::ip("127.0.3.42"),
            AgentOptions::ip("127.0.3.43"),
        ],
    )
    .await;
    let src = s.cluster.path.join("src");
    write_file(&src.join("ok.bin"), &noise(2 << 20, 10), 0o644);
    let api = &s.server.api;
    let good = s.cluster.path.join("good");
    let missing_dir = s.cluster.path.join("no/such/dir");

    // A missing source: its upload and downloads fail with 705.
    let id = start(
        api,
        vec![
            task("0:127.0.3.41", &src, "nope.bin", &["0:127.0.3.42"], &good),
            task("0:127.0.3.41", &src, "ok.bin", &["0:127.0.3.42"], &good),
        ],
        json!({}),
    )
    .await;
    let done = wait_final(api, &id, 4, Duration::from_secs(30)).await;
    let missing: Vec<&Value> = done
        .iter()
        .filter(|e| e["content"]["source_file_name"] == "nope.bin")
        .collect();
    assert_eq!(missing.len(), 2, "{done:#?}");
    assert!(missing.iter().all(|e| code(e) == 705), "{done:#?}");
    assert!(
        missing[0]["error_msg"]
            .as_str()
            .unwrap()
            .contains("nope.bin"),
        "{done:#?}"
    );
    assert!(
        done.iter()
            .filter(|e| e["content"]["source_file_name"] == "ok.bin")
            .all(|e| code(e) == 0),
        "{done:#?}"
    );

    // A missing target directory without auto_mkdir: 704 for that target
    // only; an unknown agent: 117 at once.
    let id = start(
        api,
        vec![
            task(
                "0:127.0.3.41",
                &src,
                "ok.bin",
                &["0:127.0.3.42"],
                &missing_dir,
            ),
            task(
                "0:127.0.3.41",
                &src,
                "ok.bin",
                &["0:127.0.3.43", "0:10.9.9.9"],
                &good.join("2"),
            ),
        ],
        json!({"auto_mkdir": false}),
    )
    .await;
    let first = results(api, &id).await;
    assert_eq!(code(download_of(&first, "0:10.9.9.9")), 117, "{first:#?}");
    std::fs::create_dir_all(good.join("2")).unwrap();
    let done = wait_final(api, &id, 5, Duration::from_secs(30)).await;
    assert_eq!(code(download_of(&done, "0:127.0.3.42")), 704, "{done:#?}");
    assert_eq!(code(download_of(&done, "0:127.0.3.43")), 0, "{done:#?}");
    assert!(!missing_dir.exists());
}

#[tokio::test]
async fn f_full_disk_fails_the_target_with_no_partial_file() {
    // A 1 MiB tmpfs as the target directory (we are root in CI).
    let s = setup(
        ServerOptions::default(),
        vec![
            AgentOptions::ip("127.0.3.51"),
            AgentOptions::ip("127.0.3.52"),
        ],
    )
    .await;
    let small = s.cluster.path.join("tiny");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "gse-test-tmpfs"])
        .arg(&small)
        .status()
        .map(|st| st.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("skipping the full-disk case: cannot mount a tmpfs here (not root?)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let src = s.cluster.path.join("src");
    write_file(&src.join("big.bin"), &noise(3 << 20, 11), 0o644);
    let id = start(
        &s.server.api,
        vec![task(
            "0:127.0.3.51",
            &src,
            "big.bin",
            &["0:127.0.3.52"],
            &small,
        )],
        json!({}),
    )
    .await;
    let done = wait_final(&s.server.api, &id, 2, Duration::from_secs(30)).await;
    let d = download_of(&done, "0:127.0.3.52");
    assert_eq!(code(d), 704, "{d}");
    assert!(!small.join("big.bin").exists());
    assert!(temp_files(&small).is_empty(), "{:?}", temp_files(&small));
}

#[tokio::test]
async fn gsectl_push_shows_results_and_the_p2p_direct_split() {
    let s = setup(
        ServerOptions::default(),
        vec![
            AgentOptions::ip("127.0.3.61"),
            AgentOptions::ip("127.0.3.62"),
            AgentOptions::ip("127.0.3.63"),
        ],
    )
    .await;
    let src = s.cluster.path.join("src/p.bin");
    let content = noise(3 << 20, 12);
    write_file(&src, &content, 0o644);
    let dst = s.cluster.path.join("dst");
    let api = &s.server.api;
    let out = tokio::process::Command::from(api.gsectl())
        .arg("push")
        .arg("--from")
        .arg(format!("0:127.0.3.61:{}", src.display()))
        .arg("--to")
        .arg(format!("0:127.0.3.62,0:127.0.3.63:{}", dst.display()))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("P2P") && stdout.contains("direct"),
        "{stdout}"
    );
    assert_eq!(std::fs::read(dst.join("p.bin")).unwrap(), content);

    // A missing source: non-zero exit and the error named.
    let out = tokio::process::Command::from(api.gsectl())
        .arg("push")
        .arg("--from")
        .arg("0:127.0.3.61:/no/such/file.bin")
        .arg("--to")
        .arg(format!("0:127.0.3.62:{}", dst.display()))
        .output()
        .await
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("705"), "{all}");
}

fn blake3_of(bytes: &[u8]) -> [u8; 32] {
    gse_agent::file::Blake3Hash::of(bytes).0
}

fn md5_hex(bytes: &[u8]) -> String {
    gse_agent::file::digest::md5_hex(bytes)
}
