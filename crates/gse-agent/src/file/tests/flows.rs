//! Whole transfers through the runner: direct fallback, trees, cancel,
//! bad paths, relays, the end of a session.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gse_proto::link::{FileRole, FileState};
use tokio::time::Instant;

use super::harness::*;
use crate::file::codes;

const MB: usize = 1 << 20;

/// Waits until `check` holds, or fails naming `what`.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_falls_back_to_direct_when_no_peer_is_reachable() {
    let certs = certs();
    // The source serves no peers at all.
    let mut world = World::start(&certs, 2, |i, f| {
        if i == 0 {
            f.p2p_listen = None;
        }
    })
    .await;
    let data = content(3 * MB + 99, 7);
    std::fs::write(world.agents[0].path("f.bin"), &data).unwrap();
    let dir = world.agents[0].dir.path().to_path_buf();
    let manifest = world.manifest(0, &dir, "f.bin", 0).await;
    let start = file_start(
        &manifest,
        &world.agents[1].path("out"),
        vec![world.agents[0].peer(true)],
    );
    world.start_target(1, start);
    let p = world.final_download(1).await;
    assert_eq!(p.state, FileState::FileDone as i32, "{p:?}");
    assert_eq!((p.bytes_p2p, p.bytes_direct), (0, data.len() as u64));
    assert_eq!(
        std::fs::read(world.agents[1].path("out/f.bin")).unwrap(),
        data
    );
    assert!(world.node.direct_requests.load(Ordering::SeqCst) >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f6_tree_with_small_and_large_files_links_and_modes() {
    let certs = certs();
    let mut world = World::start(&certs, 2, |_, _| {}).await;
    let app = world.agents[0].path("src/app");
    std::fs::create_dir_all(app.join("bin")).unwrap();
    std::fs::create_dir_all(app.join("empty")).unwrap();
    std::fs::write(app.join("bin/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        app.join("bin/run.sh"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    let big = content(2 * MB + 5, 8);
    std::fs::write(app.join("big.dat"), &big).unwrap();
    std::os::unix::fs::symlink("bin/run.sh", app.join("run")).unwrap();
    std::fs::set_permissions(app.join("empty"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let manifest = world.manifest(0, &app, "", 0).await;
    assert_eq!(manifest.error_code, 0, "{}", manifest.error_message);
    let out = world.agents[1].path("out");
    world.start_target(
        1,
        file_start(&manifest, &out, vec![world.agents[0].peer(true)]),
    );
    let p = world.final_download(1).await;
    assert_eq!(p.state, FileState::FileDone as i32, "{p:?}");
    assert_eq!(p.bytes_direct, 18, "the small file came direct");
    assert_eq!(p.bytes_p2p, big.len() as u64);
    assert_eq!(std::fs::read(out.join("app/big.dat")).unwrap(), big);
    let mode = |p: &str| {
        std::fs::symlink_metadata(out.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("app/bin/run.sh"), 0o750);
    assert_eq!(mode("app/empty"), 0o700);
    assert_eq!(
        std::fs::read_link(out.join("app/run")).unwrap().to_str(),
        Some("bin/run.sh")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_download_and_removes_temp_files() {
    let certs = certs();
    let mut world = World::start(&certs, 2, |_, _| {}).await;
    let data = content(8 * MB, 9);
    std::fs::write(world.agents[0].path("f.bin"), &data).unwrap();
    let dir = world.agents[0].dir.path().to_path_buf();
    // 1 MiB/s from the only source: 8 s, long enough to cancel midway.
    let manifest = world.manifest(0, &dir, "f.bin", MB as u64).await;
    world.node.direct.store(false, Ordering::SeqCst);
    let out = world.agents[1].path("out");
    world.start_target(
        1,
        file_start(&manifest, &out, vec![world.agents[0].peer(true)]),
    );
    eventually("a temp file", || !temp_files(&out).is_empty()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    world.cancel(1);
    let p = world.final_download(1).await;
    assert_eq!(p.state, FileState::FileCancelled as i32, "{p:?}");
    assert!(
        p.done_bytes > 0 && p.done_bytes < data.len() as u64,
        "{p:?}"
    );
    eventually("temp files removed", || temp_files(&out).is_empty()).await;
    assert!(
        !out.join("f.bin").exists(),
        "no partial file under the final name"
    );
    eventually("the task leaves the store", || {
        world.agents[1].service.store.get(TRANSFER, 0).is_none()
    })
    .await;
    // The source keeps serving until told, then stops too.
    assert!(world.agents[0].service.store.get(TRANSFER, 0).is_some());
    world.cancel(0);
    eventually("the source stops serving", || {
        world.agents[0].service.store.is_empty()
    })
    .await;
}

#[tokio::test]
async fn f10_escaping_path_fails_with_703_and_touches_nothing() {
    let certs = certs();
    let mut world = World::start(&certs, 1, |_, _| {}).await;
    let out = world.agents[0].path("out");
    let mut manifest = gse_proto::link::FileManifest::default();
    manifest
        .entries
        .push(file_entry("ok.txt", b"fine", 1 << 20));
    manifest
        .entries
        .push(file_entry("../escaped.txt", b"evil", 1 << 20));
    world.start_target(0, file_start(&manifest, &out, vec![]));
    let p = world.final_download(0).await;
    assert_eq!(p.state, FileState::FileFailed as i32);
    assert_eq!(p.error_code, codes::PATH, "{}", p.error_message);
    assert!(
        p.error_message.contains("escaped.txt"),
        "{}",
        p.error_message
    );
    assert!(!out.exists(), "nothing was created");
    assert!(!world.agents[0].path("escaped.txt").exists());
}

#[tokio::test]
async fn missing_target_dir_without_auto_mkdir_fails_with_704() {
    let certs = certs();
    let mut world = World::start(&certs, 1, |_, _| {}).await;
    let mut manifest = gse_proto::link::FileManifest::default();
    manifest.entries.push(file_entry("a.txt", b"abc", 1 << 20));
    let mut start = file_start(&manifest, &world.agents[0].path("nope/deeper"), vec![]);
    start.auto_mkdir = false;
    world.start_target(0, start);
    let p = world.final_download(0).await;
    assert_eq!(p.error_code, codes::WRITE, "{}", p.error_message);
    assert!(
        p.error_message.contains("auto_mkdir"),
        "{}",
        p.error_message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f8_relay_caches_serves_and_cleans_up() {
    let certs = certs();
    let mut world = World::start(&certs, 3, |_, _| {}).await;
    let data = content(3 * MB + 1, 10);
    std::fs::write(world.agents[0].path("f.bin"), &data).unwrap();
    let dir = world.agents[0].dir.path().to_path_buf();
    let manifest = world.manifest(0, &dir, "f.bin", 0).await;
    world.node.direct.store(false, Ordering::SeqCst);
    // Agent 1 relays; agent 2 only reaches the relay.
    let mut relay = file_start(
        &manifest,
        std::path::Path::new("/not/used"),
        vec![world.agents[0].peer(true)],
    );
    relay.set_role(FileRole::RoleRelay);
    world.start_target(1, relay);
    let p = world.final_download(1).await;
    assert_eq!(p.state, FileState::FileDone as i32, "{p:?}");
    let cache = world.agents[1].path("data/file-cache");
    let cached = cache.join(TRANSFER).join("0").join("f.bin");
    assert_eq!(std::fs::read(&cached).unwrap(), data);
    let out = world.agents[2].path("out");
    world.start_target(
        2,
        file_start(&manifest, &out, vec![world.agents[1].peer(true)]),
    );
    let p = world.final_download(2).await;
    assert_eq!(p.state, FileState::FileDone as i32, "{p:?}");
    assert_eq!(std::fs::read(out.join("f.bin")).unwrap(), data);
    world.cancel(1);
    eventually("the relay cache removed", || !cached.exists()).await;
    assert!(!cache.join(TRANSFER).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_end_cancels_everything() {
    let certs = certs();
    let mut world = World::start(&certs, 2, |_, _| {}).await;
    std::fs::write(world.agents[0].path("f.bin"), content(4 * MB, 11)).unwrap();
    let dir = world.agents[0].dir.path().to_path_buf();
    let manifest = world.manifest(0, &dir, "f.bin", MB as u64).await;
    let out = world.agents[1].path("out");
    world.start_target(
        1,
        file_start(&manifest, &out, vec![world.agents[0].peer(true)]),
    );
    eventually("a temp file", || !temp_files(&out).is_empty()).await;
    world.agents[1].runner.cancel_all().await;
    world.agents[0].runner.cancel_all().await;
    eventually("temp files removed", || temp_files(&out).is_empty()).await;
    assert_eq!(world.agents[1].runner.live(), 0);
    assert!(world.agents[0].service.store.is_empty() && world.agents[1].service.store.is_empty());
}
