//! D3: every agent's system snapshot reaches the server over the real data
//! path (agent collector -> batcher -> data link -> DataServer -> snapshot
//! cache) and is served by `get_agent_snapshot`, for the configured window
//! only.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gse_testkit::{AgentOptions, AgentProc, Api, Cluster, ServerOptions, eventually};
use serde_json::{Value, json};

const PATH: &str = "/api/v2/cluster/get_agent_snapshot";
/// The server keeps snapshots this long in this test (default: 1 minute).
const WINDOW: Duration = Duration::from_secs(4);
const AGENT_UNKNOWN: i64 = 1011003;
const NO_SNAPSHOT: i64 = 1011201;

fn agent_opts(ip: &str) -> AgentOptions {
    AgentOptions {
        customize: Some(Arc::new(|cfg| {
            cfg.data.snapshot_interval = Duration::from_secs(1);
        })),
        ..AgentOptions::ip(ip)
    }
}

async fn snapshots(api: &Api, ids: &[&str], latest_only: bool) -> Vec<Value> {
    let body = json!({ "agent_id_list": ids, "latest_only": latest_only });
    let (status, v) = api.post(PATH, body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["result"].clone(), v["code"].clone()),
        (json!(true), json!(0)),
        "{v}"
    );
    v["data"].as_array().expect("data is a list").clone()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// What a real snapshot of `agent` must look like.
fn check_plausible(snap: &Value, agent: &AgentProc) {
    let ip = agent.ip.to_string();
    assert_eq!(snap["ip"], ip.as_str(), "{snap}");
    assert_eq!(snap["cloud_id"], 0);
    assert_eq!(snap["bk_agent_id"], agent.agent_id().unwrap().as_str());
    assert!(snap["cpu"]["count"].as_u64().unwrap() > 0, "{snap}");
    let usage = snap["cpu"]["usage_percent"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&usage), "{snap}");
    let mem = &snap["memory"];
    assert!(mem["total_bytes"].as_u64().unwrap() > 0, "{snap}");
    assert!(mem["used_bytes"].as_u64().unwrap() <= mem["total_bytes"].as_u64().unwrap());
    assert!(snap["load"]["load1"].as_f64().unwrap() >= 0.0);
    assert!(snap["uptime_s"].as_u64().unwrap() > 0);
    assert!(snap["process_count"].as_u64().unwrap() > 0);
    assert!(snap["disks"].is_array());
    let nets = snap["net"].as_array().unwrap();
    assert!(
        nets.iter()
            .any(|n| n["name"] == "lo" && n["rx_bytes"].as_u64().unwrap() > 0),
        "{snap}"
    );
    let age = now_ms().saturating_sub(snap["time_ms"].as_u64().unwrap());
    assert!(age < 60_000, "snapshot {age} ms old");
}

#[tokio::test]
async fn d3_snapshots_of_every_agent_for_the_last_window() {
    let cluster = Cluster::new();
    let server = cluster
        .server(ServerOptions {
            customize: Some(Arc::new(|cfg| cfg.data.snapshot.window = WINDOW)),
            ..ServerOptions::default()
        })
        .await;
    let a1 = cluster.agent(&server, agent_opts("127.0.0.41"));
    let mut a2 = cluster.agent(&server, agent_opts("127.0.0.42"));
    let api = &server.api;
    let keys = ["0:127.0.0.41", "0:127.0.0.42"];

    // Within a few seconds both agents have snapshots, by either id form.
    let got = eventually(
        "snapshots of both agents",
        Duration::from_secs(20),
        || async {
            let data = snapshots(api, &keys, false).await;
            let ready = data
                .iter()
                .all(|e| e["code"] == 0 && !e["snapshots"].as_array().unwrap().is_empty());
            if ready {
                Ok(data)
            } else {
                Err(format!("{data:?}"))
            }
        },
    )
    .await;
    for (entry, agent) in got.iter().zip([&a1, &a2]) {
        assert_eq!(entry["agent_key"], format!("0:{}", agent.ip));
        for snap in entry["snapshots"].as_array().unwrap() {
            check_plausible(snap, agent);
        }
    }
    let real_id = a1.agent_id().unwrap();
    let by_id = snapshots(api, &[&real_id], true).await;
    assert_eq!(by_id[0]["bk_agent_id"], real_id.as_str());
    assert_eq!(by_id[0]["agent_key"], "0:127.0.0.41");
    assert_eq!(by_id[0]["snapshots"].as_array().unwrap().len(), 1);
    check_plausible(&by_id[0]["snapshots"][0], &a1);

    // Over two windows at one snapshot a second, only the last window is
    // kept, oldest first, one per second.
    tokio::time::sleep(WINDOW * 2).await;
    let data = snapshots(api, &keys[..1], false).await;
    let list = data[0]["snapshots"].as_array().unwrap();
    let times: Vec<u64> = list
        .iter()
        .map(|s| s["time_ms"].as_u64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "not oldest first: {times:?}"
    );
    let most = WINDOW.as_secs() as usize + 2;
    assert!(
        (2..=most).contains(&times.len()),
        "{} snapshots kept: {times:?}",
        times.len()
    );
    let span = times.last().unwrap() - times.first().unwrap();
    assert!(
        span < WINDOW.as_millis() as u64 + 1000,
        "span {span} ms: {times:?}"
    );
    assert!(
        now_ms() - times[0] < WINDOW.as_millis() as u64 + 3000,
        "{times:?}"
    );

    // An agent that stops: its snapshots are gone once the window passed;
    // the other agent's stay.
    a2.kill9();
    let gone = eventually(
        "the stopped agent's snapshots expire",
        WINDOW * 3,
        || async {
            let data = snapshots(api, &keys, false).await;
            if data[1]["code"] == NO_SNAPSHOT {
                Ok(data)
            } else {
                Err(data[1].to_string())
            }
        },
    )
    .await;
    assert_eq!(gone[1]["snapshots"], json!([]));
    assert!(
        gone[1]["message"]
            .as_str()
            .unwrap()
            .contains("no system snapshot")
    );
    assert_eq!(gone[0]["code"], 0);
    assert!(!gone[0]["snapshots"].as_array().unwrap().is_empty());

    // An agent gse never saw: an entry with an empty list, not an error.
    let unknown = snapshots(api, &["0:10.9.9.9", "no-such-agent"], false).await;
    for e in &unknown {
        assert_eq!(e["code"], AGENT_UNKNOWN, "{e}");
        assert_eq!(e["snapshots"], json!([]));
    }
}
