//! K3 / A1 / A2 / K7: agent status and info through every status API, with
//! real agents heartbeating; NAT identity; metrics; `gsectl agents`.

use std::time::Duration;

use gse_testkit::{AgentOptions, Cluster, ServerOptions, eventually};
use serde_json::json;

#[tokio::test]
async fn k3_status_and_info_of_real_agents() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let a1 = cluster.agent(&server, AgentOptions::ip("127.0.0.11"));
    let _a2 = cluster.agent(&server, AgentOptions::ip("127.0.0.12"));
    let api = &server.api;
    for ip in ["127.0.0.11", "127.0.0.12"] {
        api.wait_alive(ip).await;
    }

    // v1 status, with the trailing slash as the legacy ESB sends it.
    let hosts = json!({"bk_supplier_account": "0", "hosts": [
        {"ip": "127.0.0.11", "bk_cloud_id": 0}, {"ip": "127.0.0.99", "bk_cloud_id": 0}]});
    let (code, v) = api
        .post("/api/c/compapi/v2/gse/get_agent_status/", hosts.clone())
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["result"], true);
    assert_eq!(v["code"], 0);
    assert_eq!(
        v["data"]["0:127.0.0.11"],
        json!({"ip": "127.0.0.11", "bk_cloud_id": 0, "bk_agent_alive": 1})
    );
    assert_eq!(v["data"]["0:127.0.0.99"]["bk_agent_alive"], 0);

    // v1 info, without the slash and with header auth: exactly the seed's keys.
    let (_, v) = api
        .post_header_auth("/api/c/compapi/v2/gse/get_agent_info", hosts)
        .await;
    let info = &v["data"]["0:127.0.0.11"];
    let mut keys: Vec<_> = info.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["bk_cloud_id", "ip", "parent_ip", "parent_port", "version"]
    );
    assert_eq!(info["parent_ip"], "127.0.0.1");
    assert_eq!(info["parent_port"], server.link_addr.port());
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));

    // v2 state by legacy id and by real id, with and without the slash.
    let real_id = a1.agent_id().expect("agent id written");
    let (_, v) = api
        .post(
            "/api/v2/cluster/list_agent_state/",
            json!({"agent_id_list": ["0:127.0.0.12", real_id]}),
        )
        .await;
    let states = v["data"].as_array().expect("a list");
    assert_eq!(states.len(), 2, "{v}");
    assert!(
        states
            .iter()
            .all(|s| s["status_code"] == 2 && s["run_mode"] == 1)
    );
    assert!(states.iter().any(|s| s["bk_agent_id"] == real_id.as_str()));
    let (_, v) = api
        .post(
            "/api/v2/cluster/list_agent_state",
            json!({"agent_id_list": ["0:10.1.1.1"]}),
        )
        .await;
    assert_eq!(v["code"], 1011003, "{v}");

    // v2 info: the agent's own cpu/mem arrive with heartbeats, never older than 24 s.
    let info = eventually(
        "cpu/mem in list_agent_info",
        Duration::from_secs(10),
        || async {
            let (_, v) = api
                .post(
                    "/api/v2/cluster/list_agent_info",
                    json!({"agent_id_list": ["0:127.0.0.11"]}),
                )
                .await;
            let item = v["data"][0].clone();
            (item["mem_rate"].as_f64().unwrap_or(0.0) > 0.0)
                .then_some(item.clone())
                .ok_or(v.to_string())
        },
    )
    .await;
    assert_eq!(info["status_code"], 2);
    assert_eq!(info["bk_host_ip"], "127.0.0.11");
    let age = gse_core::now_ms() as i64 - info["report_time"].as_i64().unwrap();
    assert!(age < 24_000, "info is {age} ms old");

    // Metrics: connected agents, heartbeats, API requests by path and code.
    let (_, metrics) = api.get("/metrics").await.unwrap();
    assert!(metrics.contains("gse_link_agents_connected 2"), "{metrics}");
    assert!(metrics.contains("gse_link_heartbeats_total"));
    assert!(metrics.contains("gse_link_heartbeat_batches_total"));
    assert!(metrics.contains("gse_link_heartbeat_store_seconds_count"));
    assert!(metrics.contains(
        r#"gse_api_requests_total{path="/api/v2/cluster/list_agent_state",code="1011003"}"#
    ));

    // gsectl lists both agents as alive.
    let out = api.gsectl().args(["agents"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for ip in ["0:127.0.0.11", "0:127.0.0.12"] {
        let line = text
            .lines()
            .find(|l| l.starts_with(ip))
            .unwrap_or_else(|| panic!("{ip} missing in\n{text}"));
        assert!(line.contains("alive"), "{line}");
    }
}

#[tokio::test]
async fn k7_status_is_keyed_by_identity_ip_not_peer_address() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let mut opts = AgentOptions::ip("10.20.30.40");
    opts.bind_ip = Some("127.0.0.21".parse().unwrap());
    opts.cloud_id = 7;
    let _agent = cluster.agent(&server, opts);
    let api = &server.api;
    eventually(
        "NAT agent alive under its identity",
        Duration::from_secs(15),
        || async {
            (api.alive(7, "10.20.30.40").await == 1)
                .then_some(())
                .ok_or("not alive".to_string())
        },
    )
    .await;
    assert_eq!(
        api.alive(0, "127.0.0.21").await,
        0,
        "the peer address is not an identity"
    );
    let (_, v) = api.post("/api/v2/cluster/list_agents", json!({})).await;
    let agent = &v["data"]["agents"][0];
    assert_eq!(agent["agent_key"], "7:10.20.30.40");
    assert!(
        agent["peer_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.21:"),
        "{agent}"
    );
}
