//! K2 balance by connections and K5 regions, with real nodes on one
//! ZooKeeper and one Redis: agents that all list node-1 first end spread
//! over the nodes (redirects at registration, hand-overs after), a node
//! that joins is given agents gradually, and an agent with a region lands
//! on its region's node.

use std::time::Duration;

use gse_testkit::{Cluster, StartedCluster, eventually};
use serde_json::json;

use crate::task_api::{entries, is_final, start, wait_final};

/// Which node (0-based) holds each agent, in agent order; `None` for an
/// agent not alive anywhere. Read through node-1's API: with Redis every
/// node answers for every agent (T1).
async fn holders(cluster: &StartedCluster) -> Vec<Option<usize>> {
    let hosts: Vec<_> = cluster
        .agents
        .iter()
        .map(|a| json!({"ip": a.ip.to_string(), "bk_cloud_id": 0}))
        .collect();
    let body = json!({"bk_supplier_account": "0", "hosts": hosts});
    let api = cluster.api(0);
    let (_, info) = api
        .post("/api/c/compapi/v2/gse/get_agent_info/", body.clone())
        .await;
    let (_, status) = api
        .post("/api/c/compapi/v2/gse/get_agent_status/", body)
        .await;
    cluster
        .agents
        .iter()
        .map(|a| {
            let key = format!("0:{}", a.ip);
            if status["data"][&key]["bk_agent_alive"] != 1 {
                return None;
            }
            let port = info["data"][&key]["parent_port"].as_u64()?;
            cluster
                .nodes
                .iter()
                .position(|n| u64::from(n.link_addr.port()) == port)
        })
        .collect()
}

/// Agents held per node, once every agent is alive somewhere.
fn counts(held: &[Option<usize>], nodes: usize) -> Result<Vec<usize>, String> {
    let mut counts = vec![0; nodes];
    for (i, h) in held.iter().enumerate() {
        match h {
            Some(n) => counts[*n] += 1,
            None => return Err(format!("agent {} is not alive anywhere: {held:?}", i + 1)),
        }
    }
    Ok(counts)
}

/// Waits until the nodes hold between `lo` and `hi` agents each; returns
/// who holds which agent.
async fn wait_spread(cluster: &StartedCluster, lo: usize, hi: usize) -> Vec<Option<usize>> {
    eventually(
        &format!("every node holds {lo}..={hi} agents"),
        Duration::from_secs(90),
        || async {
            let held = holders(cluster).await;
            let counts = counts(&held, cluster.nodes.len())?;
            counts
                .iter()
                .all(|c| (lo..=hi).contains(c))
                .then_some(held)
                .ok_or(format!("{counts:?}"))
        },
    )
    .await
}

/// A counter's value summed over every node's `/metrics` (0 where a node
/// never counted it).
async fn counter(cluster: &StartedCluster, name: &str) -> u64 {
    let mut sum = 0;
    for i in 0..cluster.nodes.len() {
        let (_, text) = cluster.api(i).get("/metrics").await.unwrap();
        sum += text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
    }
    sum
}

#[tokio::test]
async fn k2_agents_listing_the_same_first_node_spread_over_three_nodes() {
    let cluster = Cluster::builder()
        .nodes(3)
        .zookeeper()
        .redis()
        .agents(9)
        .start()
        .await;
    wait_spread(&cluster, 2, 4).await;
    // The registry's load figures agree once published.
    eventually(
        "list_nodes shows the load",
        Duration::from_secs(30),
        || async {
            let nodes = cluster.api(1).list_nodes().await?;
            let load: Vec<u64> = nodes.iter().map(|n| n.agents).collect();
            (load.iter().sum::<u64>() == 9 && load.iter().all(|c| (2..=4).contains(c)))
                .then_some(())
                .ok_or(format!("{load:?}"))
        },
    )
    .await;
    // No reconnect storm: most agents were placed by a redirect at
    // registration; hand-overs moved fewer agents than there are, each
    // once.
    let handovers = counter(&cluster, "gse_link_handovers_total").await;
    let registrations = counter(&cluster, "gse_link_registrations_total").await;
    assert!(handovers < 9, "{handovers} hand-overs for 9 agents");
    assert!(
        registrations <= 9 + handovers,
        "{registrations} registrations, {handovers} hand-overs"
    );
}

#[tokio::test]
async fn k2_a_joining_node_is_given_agents_gradually() {
    let mut cluster = Cluster::builder()
        .nodes(1)
        .zookeeper()
        .redis()
        .agents(6)
        // One hand-over a second (jittered): slow enough to watch.
        .node_config(|_, cfg| cfg.cluster.rebalance_per_s = 1)
        .start()
        .await;
    assert_eq!(counts(&holders(&cluster).await, 1).unwrap(), [6]);
    let new = cluster.add_node().await;
    // Watch node-2's count climb: one agent at a time, never all at once.
    let seen = std::sync::Mutex::new(Vec::new());
    eventually(
        "node-2 holds its share",
        Duration::from_secs(90),
        || async {
            let held = holders(&cluster).await;
            let counts = counts(&held, 2)?;
            let mut seen = seen.lock().unwrap();
            if seen.last() != Some(&counts[new]) {
                seen.push(counts[new]);
            }
            (counts[new] >= 2 && counts[0] >= 2)
                .then_some(())
                .ok_or(format!("{counts:?}"))
        },
    )
    .await;
    let seen = seen.into_inner().unwrap();
    assert!(
        seen.contains(&1),
        "node-2's count rose through 1 (one hand-over at a time): {seen:?}"
    );
    let climbs: Vec<usize> = seen.windows(2).map(|w| w[1].saturating_sub(w[0])).collect();
    assert!(climbs.iter().all(|&c| c <= 1), "no jumps: {seen:?}");
    let final_counts = counts(&holders(&cluster).await, 2).unwrap();
    assert!(
        final_counts.iter().all(|c| (2..=4).contains(c)),
        "{final_counts:?}"
    );
}

#[tokio::test]
async fn k5_agents_of_a_region_land_on_its_nodes_and_the_others_spread() {
    // node-1, node-2: east; node-3: west. Agents 1-3 are west, 4-9 have
    // no region; all list node-1 first.
    let cluster = Cluster::builder()
        .nodes(3)
        .zookeeper()
        .redis()
        .node_config(|i, cfg| cfg.node.region = if i == 2 { "west" } else { "east" }.into())
        .agents(9)
        .agent_options(|i, opts| {
            if i <= 3 {
                opts.customize = Some(std::sync::Arc::new(
                    |cfg: &mut gse_agent_config::AgentConfig| cfg.agent.region = "west".into(),
                ));
            }
        })
        .start()
        .await;
    let held = wait_spread(&cluster, 2, 4).await;
    let west: Vec<_> = held[..3].to_vec();
    assert_eq!(
        west,
        [Some(2); 3],
        "west agents are on the west node: {held:?}"
    );
    let mut others: Vec<usize> = held[3..].iter().flatten().copied().collect();
    others.sort();
    others.dedup();
    assert!(
        others.len() >= 2,
        "agents without a region spread: {held:?}"
    );
}

#[tokio::test]
async fn k5_agents_of_a_region_with_no_node_up_move_to_it_once_one_joins() {
    // node-1, node-2: east; node-3 (added later): west. Agents 1-2 are
    // west, 3-4 have no region.
    let mut cluster = Cluster::builder()
        .nodes(2)
        .zookeeper()
        .redis()
        .node_config(|i, cfg| cfg.node.region = if i == 2 { "west" } else { "east" }.into())
        .agents(4)
        .agent_options(|i, opts| {
            if i <= 2 {
                opts.customize = Some(std::sync::Arc::new(
                    |cfg: &mut gse_agent_config::AgentConfig| cfg.agent.region = "west".into(),
                ));
            }
        })
        .start()
        .await;
    // No west node: the west agents are balanced over every node.
    let held = holders(&cluster).await;
    assert!(held.iter().all(|h| matches!(h, Some(0 | 1))), "{held:?}");
    let west = cluster.add_node().await;
    eventually(
        "the west agents move to the west node",
        Duration::from_secs(90),
        || async {
            let held = holders(&cluster).await;
            (held[..2] == [Some(west); 2])
                .then_some(())
                .ok_or(format!("{held:?}"))
        },
    )
    .await;
}

#[tokio::test]
async fn k2_a_hand_over_lets_running_tasks_finish_before_the_agent_moves() {
    // Four busy agents on node-1; node-2 joins while their script runs.
    let mut cluster = Cluster::builder()
        .nodes(1)
        .zookeeper()
        .redis()
        .agents(4)
        .node_config(|_, cfg| cfg.cluster.rebalance_per_s = 2)
        .start()
        .await;
    assert_eq!(counts(&holders(&cluster).await, 1).unwrap(), [4]);
    let ids: Vec<String> = cluster
        .agents
        .iter()
        .map(|a| format!("0:{}", a.ip))
        .collect();
    let targets: Vec<&str> = ids.iter().map(String::as_str).collect();
    let api = cluster.api(0);
    // Long enough to outlast the join and the balancer's settling (5 s),
    // with room for a slow machine.
    let task = start(api, &targets, "sleep 20; echo done", json!({})).await;
    eventually(
        "the script runs on every agent",
        Duration::from_secs(10),
        || async {
            let got = entries(api, &task, &targets).await;
            (got.len() == 4 && got.iter().all(|e| e["status"] == 1))
                .then_some(())
                .ok_or(format!("{got:?}"))
        },
    )
    .await;
    cluster.add_node().await;
    // node-1 asks agents to move while their script still runs.
    eventually("hand-overs asked", Duration::from_secs(30), || async {
        let n = counter(&cluster, "gse_link_handovers_total").await;
        (n >= 1).then_some(()).ok_or(format!("{n} hand-overs"))
    })
    .await;
    let api = cluster.api(0);
    let running = entries(api, &task, &targets).await;
    assert!(
        !running.iter().any(is_final),
        "no entry ended when the hand-over was asked: {running:?}"
    );
    // Work sent to agents waiting to move runs too.
    let more = start(api, &targets, "echo again", json!({})).await;
    // Every entry completes; none ends with a disconnect.
    for (task, screen) in [(&more, "again\n"), (&task, "done\n")] {
        let done = wait_final(api, task, &targets, Duration::from_secs(60)).await;
        for e in &done {
            assert_eq!(e["status"], 2, "success: {e}");
            assert_eq!(e["error_code"], 0, "{e}");
            assert_eq!(e["screen"], screen, "{e}");
        }
    }
    // And then the agents move: two each.
    wait_spread(&cluster, 2, 2).await;
}

/// The agent of `agents` that node-1 asks to move (K2) first; its index
/// and where it is told to go.
async fn first_asked_to_move(agents: &mut [gse_testkit::FakeAgent]) -> (usize, String) {
    use gse_proto::MsgType;
    use gse_proto::link::HandOver;
    let waits = agents.iter_mut().enumerate().map(|(i, a)| {
        Box::pin(async move {
            let f = a
                .recv_type(MsgType::HandOver, Duration::from_secs(60))
                .await;
            (i, f.decode::<HandOver>().expect("HandOver").redirect)
        })
    });
    futures::future::select_all(waits).await.0
}

/// Answers the next `n` RunScript frames on `agent` with success, echoing
/// each frame's stream (relayed ones go back through the node that sent
/// them); returns their task ids.
async fn run_scripts(agent: &mut gse_testkit::FakeAgent, n: usize) -> Vec<String> {
    use gse_core::task::{ERR_NONE, STATUS_SUCCESS};
    use gse_proto::link::{RunScript, TaskOutput, TaskStatus};
    use gse_proto::{Frame, MsgType};
    let mut ids = Vec::new();
    for _ in 0..n {
        let f = agent
            .recv_type(MsgType::RunScript, Duration::from_secs(30))
            .await;
        let run: RunScript = f.decode().expect("RunScript");
        let now = gse_core::now_ms();
        let output = TaskOutput {
            task_id: run.task_id.clone(),
            atomic_id: 0,
            data: b"followed\n".to_vec(),
        };
        agent
            .send(Frame::new(MsgType::TaskOutput, f.stream_id, &output))
            .await;
        let status = TaskStatus {
            task_id: run.task_id.clone(),
            atomic_id: 0,
            status: STATUS_SUCCESS,
            error_code: ERR_NONE,
            exit_code: 0,
            start_time_ms: now,
            end_time_ms: now,
            ..TaskStatus::default()
        };
        agent
            .send(Frame::new(MsgType::TaskStatus, f.stream_id, &status))
            .await;
        ids.push(run.task_id);
    }
    ids
}

/// Two hand-driven agents at `ips` on node-1, node-2 joined, and one of
/// them handed over: it left node-1 and has not registered anywhere yet.
struct OneMoving {
    cluster: StartedCluster,
    tls: gse_core::tls::TlsFiles,
    /// Index in `ips` of the agent that is moving, and where it was told
    /// to go.
    moving: usize,
    redirect: std::net::SocketAddr,
    /// The agent that stays on node-1.
    stayer: gse_testkit::FakeAgent,
}

async fn one_agent_moving(ips: [&str; 2]) -> OneMoving {
    use gse_core::certs::CertKind;
    use gse_proto::link::HandOverReady;
    use gse_proto::{Frame, MsgType};
    use gse_testkit::{FakeAgent, FakeAgentOptions};

    // Hand-driven agents, so the test chooses when the moving one
    // registers again; node-2 joins and one is handed over.
    let mut cluster = Cluster::builder()
        .nodes(1)
        .zookeeper()
        .redis()
        .node_config(|_, cfg| cfg.cluster.rebalance_per_s = 2)
        .start()
        .await;
    let tls = cluster.cluster.tls(CertKind::Agent);
    let link = cluster.nodes[0].link_addr;
    let mut agents = Vec::new();
    for ip in ips {
        agents.push(FakeAgent::connect(link, &tls, FakeAgentOptions::ip(ip)).await);
    }
    cluster.add_node().await;
    let (i, redirect) = first_asked_to_move(&mut agents).await;
    let mut moving = agents.swap_remove(i);
    // Idle: ready to go. The node lets it go once nothing is on its way
    // to it (and at its hand-over pace): say so again until it does.
    let deadline = tokio::time::Instant::now() + gse_testkit::patience(Duration::from_secs(30));
    loop {
        let ready = HandOverReady {
            received: moving.received(),
        };
        moving
            .send(Frame::new(MsgType::HandOverReady, 0, &ready))
            .await;
        let goodbye = tokio::time::timeout(
            Duration::from_millis(500),
            moving.recv_type(MsgType::Goodbye, Duration::from_secs(5)),
        );
        if goodbye.await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node never let the agent go"
        );
    }
    drop(moving);
    OneMoving {
        cluster,
        tls,
        moving: i,
        redirect: redirect.parse().expect("an agent address"),
        stayer: agents.pop().expect("the other agent"),
    }
}

#[tokio::test]
async fn k2_work_sent_while_an_agent_moves_follows_it_to_its_new_node() {
    use gse_testkit::{FakeAgent, FakeAgentOptions};
    let ips = ["127.0.12.1", "127.0.12.2"];
    let OneMoving {
        cluster,
        tls,
        moving: i,
        redirect,
        stayer: _stayer,
    } = one_agent_moving(ips).await;

    // Between its links: a task asked of the node it left (which holds
    // its claim still) and one asked of the node it goes to (forwarded to
    // the node it left, which refuses it as moving). Neither fails.
    let target = format!("0:{}", ips[i]);
    let targets = [target.as_str()];
    let asked_of_old = start(cluster.api(0), &targets, "echo followed", json!({})).await;
    let asked_of_new = start(cluster.api(1), &targets, "echo followed", json!({})).await;
    for (api, task) in [
        (cluster.api(0), &asked_of_old),
        (cluster.api(1), &asked_of_new),
    ] {
        let e = entries(api, task, &targets).await;
        assert!(!e.iter().any(is_final), "waits for the agent: {e:?}");
    }

    // It registers where it was told: both tasks reach it there.
    let mut moved = FakeAgent::connect(redirect, &tls, FakeAgentOptions::ip(ips[i])).await;
    let mut ran = run_scripts(&mut moved, 2).await;
    ran.sort();
    let mut want = vec![asked_of_old.clone(), asked_of_new.clone()];
    want.sort();
    assert_eq!(ran, want);
    for (api, task) in [
        (cluster.api(0), &asked_of_old),
        (cluster.api(1), &asked_of_new),
    ] {
        let done = wait_final(api, task, &targets, Duration::from_secs(30)).await;
        assert_eq!(done[0]["status"], 2, "{}", done[0]);
        assert_eq!(done[0]["error_code"], 0, "{}", done[0]);
        assert_eq!(done[0]["screen"], "followed\n", "{}", done[0]);
    }
}

#[tokio::test]
async fn k2_file_transfers_sent_while_an_agent_moves_follow_it_to_its_new_node() {
    use gse_proto::link::{
        EntryType, FileEntry, FileManifest, FileManifestRequest, FileProgress, FileStart,
        FileState, ProgressSide,
    };
    use gse_proto::{Frame, MsgType};
    use gse_testkit::{FakeAgent, FakeAgentOptions};
    use std::path::Path;

    use crate::f_files::{download_of, results, task};

    /// A source's manifest of one small file, answering `req` on `stream`.
    fn manifest(req: &FileManifestRequest, stream: u64) -> Frame {
        let m = FileManifest {
            transfer_id: req.transfer_id.clone(),
            task_index: req.task_index,
            entries: vec![FileEntry {
                path: "a.txt".into(),
                mode: 0o644,
                r#type: EntryType::EntryFile as i32,
                size: 5,
                piece_size: 1 << 20,
                piece_hashes: vec![7; 32],
                blake3: vec![7; 32],
                md5_hex: "0".repeat(32),
                link_target: String::new(),
            }],
            ..FileManifest::default()
        };
        Frame::new(MsgType::FileManifest, stream, &m)
    }
    /// A target's report that it installed what `start` (on `stream`) named.
    fn done(start: &FileStart, stream: u64) -> Frame {
        let p = FileProgress {
            transfer_id: start.transfer_id.clone(),
            task_index: start.task_index,
            side: ProgressSide::SideDownload as i32,
            state: FileState::FileDone as i32,
            done_bytes: 5,
            total_bytes: 5,
            bytes_direct: 5,
            files_done: 1,
            files_total: 1,
            ..FileProgress::default()
        };
        Frame::new(MsgType::FileProgress, stream, &p)
    }
    /// Waits until `entry` of `transfer` (through `api`) says it waits for
    /// its moving agent.
    async fn waits_for_the_move(api: &gse_testkit::Api, transfer: &str, entry: &str) {
        gse_testkit::eventually(
            &format!("{entry} of {transfer} waits for its moving agent"),
            Duration::from_secs(30),
            || async {
                let all = results(api, transfer).await;
                let e = match entry {
                    "upload" => all[0].clone(),
                    dest => download_of(&all, dest).clone(),
                };
                let info = e["content"]["status_info"].as_str().unwrap_or_default();
                (e["error_code"] == 115 && info.contains("moving to another node"))
                    .then_some(())
                    .ok_or(format!("{e}"))
            },
        )
        .await
    }

    let ips = ["127.0.13.1", "127.0.13.2"];
    let OneMoving {
        cluster,
        tls,
        moving: i,
        redirect,
        mut stayer,
    } = one_agent_moving(ips).await;
    let (moving, staying) = (format!("0:{}", ips[i]), format!("0:{}", ips[1 - i]));
    let (src, dst) = (Path::new("/srv"), Path::new("/dst"));

    // Between its links: a transfer to it asked of the node it left, and
    // one from it asked of the node it goes to. Neither fails.
    let to_it = crate::f_files::start(
        cluster.api(0),
        vec![task(&staying, src, "a.txt", &[moving.as_str()], dst)],
        json!({}),
    )
    .await;
    let from_it = crate::f_files::start(
        cluster.api(1),
        vec![task(&moving, src, "a.txt", &[staying.as_str()], dst)],
        json!({}),
    )
    .await;
    let f = stayer
        .recv_type(MsgType::FileManifestRequest, Duration::from_secs(30))
        .await;
    let req: FileManifestRequest = f.decode().expect("FileManifestRequest");
    assert_eq!(req.transfer_id, to_it);
    stayer.send(manifest(&req, f.stream_id)).await;
    waits_for_the_move(cluster.api(0), &to_it, &moving).await;
    waits_for_the_move(cluster.api(1), &from_it, "upload").await;

    // It registers where it was told: both requests reach it there.
    let mut moved = FakeAgent::connect(redirect, &tls, FakeAgentOptions::ip(ips[i])).await;
    let mut got_start = None;
    let mut got_request = None;
    while got_start.is_none() || got_request.is_none() {
        let f = moved
            .recv_any(
                &[MsgType::FileStart, MsgType::FileManifestRequest],
                Duration::from_secs(30),
            )
            .await;
        match f.msg_type {
            MsgType::FileStart => got_start = Some(f),
            _ => got_request = Some(f),
        }
    }
    let (f, r) = (got_start.unwrap(), got_request.unwrap());
    let start: FileStart = f.decode().expect("FileStart");
    assert_eq!(start.transfer_id, to_it);
    assert_eq!(start.entries.len(), 1);
    moved.send(done(&start, f.stream_id)).await;
    let req: FileManifestRequest = r.decode().expect("FileManifestRequest");
    assert_eq!(req.transfer_id, from_it);
    moved.send(manifest(&req, r.stream_id)).await;
    // The agent that stayed is the target of the second one.
    let f = stayer
        .recv_type(MsgType::FileStart, Duration::from_secs(30))
        .await;
    let start: FileStart = f.decode().expect("FileStart");
    assert_eq!(start.transfer_id, from_it);
    stayer.send(done(&start, f.stream_id)).await;

    for (api, transfer) in [(cluster.api(0), &to_it), (cluster.api(1), &from_it)] {
        let all = crate::f_files::wait_final(api, transfer, 2, Duration::from_secs(30)).await;
        for e in &all {
            assert_eq!(e["error_code"], 0, "{transfer}: {e}");
            assert_eq!(e["content"]["status"], 2, "{transfer}: {e}");
        }
    }
}
