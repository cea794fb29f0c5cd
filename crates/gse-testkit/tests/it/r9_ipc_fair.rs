//! Issue 9 item 7, follow-up: local users share the data socket fairly
//! with root. Non-root users together hold at most `max_connections -
//! root_reserved_connections`, so root's collectors always get in; and
//! records are handed to the batcher by turns of uid, so one user flooding
//! on all its connections cannot starve root's records.

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gse_testkit::{Cluster, ServerOptions, bin, eventually, hostile};
use tokio::io::AsyncWriteExt;

use crate::d_data::{DATA_ID, connect, file_route, plain, socket_of, wait_all};
use crate::r9_ipc::{agent_with, attacker_holds, open_fds, root_send, s};

/// `gse-hostile` as `uid` (and gid `uid`): a local user with no account
/// is as good as one with for SO_PEERCRED.
fn spawn_as(uid: u32, args: &[String]) -> Child {
    use std::os::unix::process::CommandExt;
    std::process::Command::new(bin("gse-hostile"))
        .uid(uid)
        .gid(uid)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gse-hostile")
}

/// A flag set once `child` (a `gse-hostile ipc hold`) says on stderr that
/// it made all its connections (accepted or still in the backlog).
fn connected_flag(child: &mut Child) -> Arc<AtomicBool> {
    use std::io::BufRead;
    let flag = Arc::new(AtomicBool::new(false));
    let stderr = child.stderr.take().expect("piped stderr");
    let set = flag.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("opened ") {
                set.store(true, Ordering::SeqCst);
            }
        }
    });
    flag
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r9_7_root_gets_in_while_local_users_hold_their_whole_share() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let sink = file_route(&server, DATA_ID).await;
    // Defaults (256 connections, 64 per user); nothing idles out here.
    let agent = agent_with(&cluster, &server, |cfg| {
        cfg.data.idle_timeout = Duration::from_secs(600);
    });
    server.api.wait_alive("127.0.0.1").await;
    let path = socket_of(&agent);
    drop(connect(&path).await);
    hostile::open_path_to(path.parent().unwrap());

    // Four local users, each holding its per-user maximum: 4 x 64 = 256.
    let before = open_fds(agent.pid());
    let mut users: Vec<Child> = [65534, 65533, 65532, 65531]
        .into_iter()
        .map(|uid| {
            let args = [
                s("ipc"),
                s("hold"),
                s("--socket"),
                s(path.display()),
                s("--count"),
                s(64),
                s("--seconds"),
                s(120),
            ];
            spawn_as(uid, &args)
        })
        .collect();
    // Every user connected all it could (accepted or in the backlog), and
    // the agent took at least the non-root share.
    let flags: Vec<_> = users.iter_mut().map(connected_flag).collect();
    eventually(
        "the local users' connections made",
        Duration::from_secs(30),
        || async {
            let done = flags.iter().filter(|f| f.load(Ordering::SeqCst)).count();
            (done == flags.len())
                .then_some(())
                .ok_or(format!("{done} of {} users done", flags.len()))
        },
    )
    .await;
    // (`before` may still count the probe connection above.)
    attacker_holds(&agent, before, 190).await;

    root_send(&path, "root-in-reserve", Duration::from_secs(10))
        .await
        .expect("root's collector sends");
    wait_all(
        &sink,
        &["root-in-reserve".to_string()],
        Duration::from_secs(20),
    )
    .await;
    let held = open_fds(agent.pid()) - before;
    println!("the agent holds {held} more descriptors");
    assert!(held < 256, "local users hold every connection: {held}");
    assert!(
        agent.log().contains("data.root_reserved_connections"),
        "the refusal names the key that reserves root's connections"
    );
    for user in &mut users {
        let _ = user.kill();
        let _ = user.wait();
    }
}

/// `(root records, flood records seen between root's first and last)` in
/// the sink, in its order; `root-` payloads are root's.
fn interleaving(sink: &Path) -> (usize, usize) {
    let text = std::fs::read_to_string(sink).unwrap_or_default();
    let (mut root, mut between, mut pending) = (0, 0, 0);
    for line in text.lines() {
        if line.contains("\"data\":\"root-") {
            root += 1;
            between += pending;
            pending = 0;
        } else if root > 0 && line.contains("\"data\":\"flood-") {
            pending += 1;
        }
    }
    (root, between)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r9_7_a_user_flooding_on_every_connection_does_not_starve_roots_records() {
    const ROOT_RECORDS: usize = 1000;
    const SIZE: usize = 1024;
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let sink = file_route(&server, DATA_ID).await;
    // A slow data link (one small batch at a time), so the records wait at
    // the agent's hand-over and the flood's volume stays small.
    let agent = agent_with(&cluster, &server, |cfg| {
        cfg.data.batch_max_kb = 4;
        cfg.data.max_in_flight = 1;
        cfg.data.memory_max_mb = 1;
    });
    server.api.wait_alive("127.0.0.1").await;
    let path = socket_of(&agent);
    drop(connect(&path).await);
    hostile::open_path_to(path.parent().unwrap());

    let args = [
        s("ipc"),
        s("flood"),
        s("--socket"),
        s(path.display()),
        s("--data-id"),
        s(DATA_ID),
        s("--connections"),
        s(64),
        s("--size"),
        s(SIZE),
        s("--seconds"),
        s(180),
    ];
    let mut flood = spawn_as(65534, &args);
    eventually(
        "the flood reaching the sink",
        Duration::from_secs(30),
        || async {
            let n = std::fs::metadata(&sink).map(|m| m.len()).unwrap_or(0);
            (n > 2 << 20).then_some(()).ok_or(format!("{n} bytes"))
        },
    )
    .await;

    // Root's collector sends its records as fast as the agent takes them.
    let mut conn = connect(&path).await;
    let started = tokio::time::Instant::now();
    let mut frames = Vec::new();
    for i in 0..ROOT_RECORDS {
        let mut payload = format!("root-{i}-").into_bytes();
        payload.resize(SIZE, b'r');
        frames.extend_from_slice(&plain(0xC01, DATA_ID, &payload));
    }
    conn.write_all(&frames).await.unwrap();
    conn.shutdown().await.unwrap();
    let (root, between) = eventually(
        "all of root's records in the sink",
        Duration::from_secs(90),
        || async {
            let (root, between) = interleaving(&sink);
            (root >= ROOT_RECORDS)
                .then_some((root, between))
                .ok_or(format!("{root} of {ROOT_RECORDS}"))
        },
    )
    .await;
    let _ = flood.kill();
    let _ = flood.wait();
    println!(
        "root's {root} records took {:?}, with {between} flood records between its first and last",
        started.elapsed()
    );
    // By turns of uid: about one flood chunk per root chunk. Before, one
    // turn per connection gave the flooding user 64 chunks per root chunk.
    assert!(
        between <= 4 * ROOT_RECORDS,
        "{between} flood records went between root's first and last of {ROOT_RECORDS}"
    );
}
