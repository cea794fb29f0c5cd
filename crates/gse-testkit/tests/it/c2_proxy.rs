//! Issue 12 (C2, T1 multi-level, K3 through a proxy): real `gse-proxy`
//! processes relaying real agents of a cloud area. The agents know only
//! their proxies (`server_name = "gse-proxy"`, the proxy's certificate
//! bound to their area); the proxies link to the nodes, or to each other.

use std::time::Duration;

use gse_testkit::{
    AgentProc, Api, Cluster, ProxyOptions, ProxyProc, ServerOptions, area_agent, eventually,
};
use serde_json::{Value, json};

use crate::task_api::{start, wait_final};

const AREA: i64 = 7;

/// `list_agent_info`'s entry for `AREA:ip`.
async fn info(api: &Api, ip: &str) -> Value {
    let (_, v) = api
        .post(
            "/api/v2/cluster/list_agent_info",
            json!({"agent_id_list": [format!("{AREA}:{ip}")]}),
        )
        .await;
    v["data"][0].clone()
}

async fn wait_alive(api: &Api, ip: &str, within: Duration) {
    eventually(&format!("agent {AREA}:{ip} alive"), within, || async {
        (api.alive(AREA, ip).await == 1)
            .then_some(())
            .ok_or("not alive".to_string())
    })
    .await;
}

async fn wait_offline(api: &Api, ip: &str, within: Duration) {
    eventually(&format!("agent {AREA}:{ip} offline"), within, || async {
        (api.alive(AREA, ip).await != 1)
            .then_some(())
            .ok_or("still alive".to_string())
    })
    .await;
}

/// Runs `echo WORD` on `AREA:ip` and checks its output.
async fn echo_through(api: &Api, ip: &str, word: &str) {
    let target = format!("{AREA}:{ip}");
    let targets = [target.as_str()];
    let task = start(api, &targets, &format!("echo {word}"), json!({})).await;
    let done = wait_final(api, &task, &targets, Duration::from_secs(20)).await;
    assert_eq!(
        (done[0]["status"].as_i64(), done[0]["screen"].as_str()),
        (Some(2), Some(format!("{word}\n").as_str())),
        "{}",
        done[0]
    );
}

fn agent(cluster: &Cluster, ip: &str, proxies: &[&ProxyProc]) -> AgentProc {
    let servers: Vec<_> = proxies.iter().map(|p| p.listen).collect();
    cluster.agent_of(&servers, area_agent(ip, AREA))
}

#[tokio::test]
async fn c2_area_agents_register_through_a_proxy_run_tasks_and_go_offline_with_it() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let mut proxy = cluster.proxy(ProxyOptions::new(
        "pa-1",
        AREA,
        "127.0.7.1",
        &[server.link_addr],
    ));
    proxy.wait_linked().await;
    // An area host's agent, and the proxy host's own agent.
    let _agents = [
        agent(&cluster, "127.0.7.2", &[&proxy]),
        agent(&cluster, "127.0.7.1", &[&proxy]),
    ];
    let api = &server.api;
    for ip in ["127.0.7.2", "127.0.7.1"] {
        wait_alive(api, ip, Duration::from_secs(20)).await;
    }

    // Listed under the proxy: their parent is the proxy as they reach it;
    // the proxy host's own agent is the proxy (run_mode 0).
    let port = u64::from(proxy.listen.port());
    let area_host = info(api, "127.0.7.2").await;
    assert_eq!(
        (&area_host["parent_ip"], area_host["parent_port"].as_u64()),
        (&json!("127.0.7.1"), Some(port)),
        "{area_host}"
    );
    assert_eq!(area_host["run_mode"], 1, "{area_host}");
    assert_eq!(info(api, "127.0.7.1").await["run_mode"], 0);
    assert_eq!(
        proxy.metric("gse_proxy_agents{link=\"control\"}").await,
        Some(2.0)
    );

    echo_through(api, "127.0.7.2", "through-the-proxy").await;

    // The proxy dies: its area's agents go offline (well within 30 s);
    // restarted, they come back and take work again.
    proxy.kill9();
    for ip in ["127.0.7.2", "127.0.7.1"] {
        wait_offline(api, ip, Duration::from_secs(30)).await;
    }
    proxy.restart();
    proxy.wait_linked().await;
    for ip in ["127.0.7.2", "127.0.7.1"] {
        wait_alive(api, ip, Duration::from_secs(30)).await;
    }
    echo_through(api, "127.0.7.2", "after-the-restart").await;
}

#[tokio::test]
async fn c2_a_chain_of_proxies_relays_and_an_areas_agents_fail_over_between_its_proxies() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let api = &server.api;
    let upper = cluster.proxy(ProxyOptions::new(
        "pa-up",
        AREA,
        "127.0.7.1",
        &[server.link_addr],
    ));
    upper.wait_linked().await;
    let mut lower = cluster.proxy(ProxyOptions::below("pa-low", "127.0.7.11", &upper));
    lower.wait_linked().await;

    // Behind the lower proxy: two levels down, the agent still runs tasks,
    // and its parent is the proxy it reaches.
    let deep_agent = agent(&cluster, "127.0.7.12", &[&lower]);
    wait_alive(api, "127.0.7.12", Duration::from_secs(20)).await;
    let deep = info(api, "127.0.7.12").await;
    assert_eq!(deep["parent_ip"], "127.0.7.11", "{deep}");
    echo_through(api, "127.0.7.12", "two-levels-down").await;
    // Plugin operations too (start, then stop), two levels down.
    {
        use crate::d_plugins::{Plugin, alive, op_code};
        let plugin = Plugin::new(&deep_agent.dir, false);
        let target = format!("{AREA}:127.0.7.12");
        let (code, msg) = op_code(api, 0, &target, "sleeper", &plugin.spec()).await;
        assert_eq!(code, 0, "start through the chain: {msg}");
        let pid = plugin.pid().expect("the plugin wrote its pid");
        assert!(alive(pid));
        let (code, msg) = op_code(api, 1, &target, "sleeper", &plugin.spec()).await;
        assert_eq!(code, 0, "stop through the chain: {msg}");
        assert!(!alive(pid));
    }

    // An agent that lists both proxies of the area moves to the other
    // when the one it uses dies.
    let _both = agent(&cluster, "127.0.7.13", &[&lower, &upper]);
    wait_alive(api, "127.0.7.13", Duration::from_secs(20)).await;
    assert_eq!(info(api, "127.0.7.13").await["parent_ip"], "127.0.7.11");
    lower.kill9();
    eventually(
        "the agent on the area's other proxy",
        Duration::from_secs(30),
        || async {
            let i = info(api, "127.0.7.13").await;
            (i["parent_ip"] == "127.0.7.1" && i["status_code"] == 2)
                .then_some(())
                .ok_or(i.to_string())
        },
    )
    .await;
    echo_through(api, "127.0.7.13", "after-failover").await;
}

#[tokio::test]
async fn c2_a_proxy_fails_over_between_nodes_and_its_agents_follow() {
    let mut cluster = Cluster::builder()
        .nodes(2)
        .zookeeper()
        .redis()
        .node_config(|_, cfg| cfg.cluster.balance = false)
        .start()
        .await;
    let nodes: Vec<_> = cluster.nodes.iter().map(|n| n.link_addr).collect();
    let proxy = cluster
        .cluster
        .proxy(ProxyOptions::new("pa-1", AREA, "127.0.7.1", &nodes));
    proxy.wait_linked().await;
    let area_agent = agent(&cluster.cluster, "127.0.7.2", &[&proxy]);
    let api1 = cluster.api(1).clone();
    wait_alive(&api1, "127.0.7.2", Duration::from_secs(20)).await;
    // Through the node the proxy is not linked to: work is forwarded.
    echo_through(&api1, "127.0.7.2", "forwarded-to-the-proxys-node").await;

    // The proxy's node dies: the proxy links to the other, and its agents
    // register there again.
    cluster.kill9(0);
    eventually(
        "the agent registered again through the proxy's new link",
        Duration::from_secs(30),
        || async {
            let log = area_agent.log();
            let registered = log.matches("connected and registered").count();
            (registered >= 2 && api1.alive(AREA, "127.0.7.2").await == 1)
                .then_some(())
                .ok_or(format!("registered {registered} times"))
        },
    )
    .await;
    assert!(
        proxy.log().contains("node=node-2"),
        "the proxy is not linked to node-2"
    );
    echo_through(&api1, "127.0.7.2", "after-node-failover").await;
}

/// C10: an area agent's records go through its proxy (the node tells it
/// the proxy's data listener, the proxy relays its data link to a
/// DataServer, which acks each batch); the proxy SIGKILLed mid-stream and
/// restarted loses no acknowledged record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c10_area_records_reach_the_sink_through_the_proxy_and_survive_its_sigkill() {
    use crate::d_data::{DATA_ID, file_route, records_survive, socket_of};

    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let sink = file_route(&server, DATA_ID).await;
    let mut proxy = cluster.proxy(ProxyOptions::new(
        "pa-1",
        AREA,
        "127.0.7.1",
        &[server.link_addr],
    ));
    proxy.wait_linked().await;
    let agent = agent(&cluster, "127.0.7.2", &[&proxy]);
    wait_alive(&server.api, "127.0.7.2", Duration::from_secs(20)).await;
    eventually(
        "the agent's data link on the proxy",
        Duration::from_secs(20),
        || async {
            (proxy.metric("gse_proxy_agents{link=\"data\"}").await == Some(1.0))
                .then_some(())
                .ok_or("no data channel".to_string())
        },
    )
    .await;

    records_survive(socket_of(&agent), &sink, "area", async || {
        proxy.kill9();
        proxy.restart();
        proxy.wait_linked().await;
    })
    .await;
    // Every record is the area agent's own.
    let line = std::fs::read_to_string(&sink).unwrap();
    assert!(
        line.contains("7:127.0.7.2"),
        "{}",
        &line[..line.len().min(300)]
    );
}

/// F8 through a proxy: a file from a source outside the area reaches every
/// area target, and about one copy of it crosses into the area (the proxy
/// fetches each piece once, the targets share the rest among themselves
/// and from its cache); an area agent is a source for a target outside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f8_one_copy_of_a_file_crosses_into_the_area_for_all_its_targets() {
    use crate::f_files::{
        code, noise, start as start_files, task, wait_final as files_final, write_file,
    };

    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let api = &server.api;
    let _source = cluster.agent(&server, gse_testkit::AgentOptions::ip("127.0.8.1"));
    api.wait_alive("127.0.8.1").await;
    let proxy = cluster.proxy(ProxyOptions::new(
        "pa-1",
        AREA,
        "127.0.7.1",
        &[server.link_addr],
    ));
    proxy.wait_linked().await;
    let ips = ["127.0.7.2", "127.0.7.3", "127.0.7.4", "127.0.7.5"];
    let _area: Vec<AgentProc> = ips
        .iter()
        .map(|ip| agent(&cluster, ip, &[&proxy]))
        .collect();
    for ip in ips {
        wait_alive(api, ip, Duration::from_secs(20)).await;
    }

    let size = 100 << 20;
    let content = noise(size, 8);
    let src = cluster.path.join("src");
    write_file(&src.join("big.bin"), &content, 0o644);
    let targets: Vec<String> = ips.iter().map(|ip| format!("{AREA}:{ip}")).collect();
    let target_refs: Vec<&str> = targets.iter().map(String::as_str).collect();
    let dst = cluster.path.join("dst");
    let id = start_files(
        api,
        vec![task("0:127.0.8.1", &src, "big.bin", &target_refs, &dst)],
        json!({}),
    )
    .await;
    let done = files_final(api, &id, 1 + ips.len(), Duration::from_secs(120)).await;
    for e in &done {
        assert_eq!(code(e), 0, "{e}");
    }
    assert!(
        std::fs::read(dst.join("big.bin")).unwrap() == content,
        "the file differs"
    );
    let crossed = proxy
        .metric("gse_proxy_file_bytes_from_upstream_total")
        .await
        .unwrap_or(0.0);
    let copies = crossed / size as f64;
    println!(
        "{crossed} bytes crossed into the area for {} targets: {copies:.2} copies",
        ips.len()
    );
    assert!(
        copies <= 1.1,
        "{copies:.2} copies of the file crossed into the area"
    );

    // An area agent as the source of a target outside the area.
    let back = noise(3 << 20, 9);
    let area_src = cluster.path.join("area-src");
    write_file(&area_src.join("back.bin"), &back, 0o644);
    let out_dst = cluster.path.join("out-dst");
    let id = start_files(
        api,
        vec![task(
            "7:127.0.7.2",
            &area_src,
            "back.bin",
            &["0:127.0.8.1"],
            &out_dst,
        )],
        json!({}),
    )
    .await;
    let done = files_final(api, &id, 2, Duration::from_secs(60)).await;
    for e in &done {
        assert_eq!(code(e), 0, "{e}");
    }
    assert_eq!(std::fs::read(out_dst.join("back.bin")).unwrap(), back);
}
