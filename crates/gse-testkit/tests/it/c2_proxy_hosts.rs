//! Issue 12 on separate hosts (C2, C11), deployed from the shipped config
//! files: the servers' network (10.77.0.0/24) and cloud area 7's
//! (10.77.7.0/24) are separate bridges; the proxy's host is on both and
//! forwards nothing, so the area's agents reach the proxy and never the
//! servers. Certificates: `certs init --server-name`, and `certs issue
//! --proxy-area 7` for the proxy.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use gse_testkit::netlab::{NetHost, NetLab};
use gse_testkit::{AgentProc, Api, Cluster, ProxyProc, eventually};
use serde_json::{Value, json};

use crate::d_data::{DATA_ID, file_route, records_survive, socket_of, stream_records, wait_all};
use crate::f_files::{self as files, noise, write_file};
use crate::r10_hosts::{
    SERVER_NAME, deploy_server, gse_server, set, set_tls, shipped, start_agent, start_agent_with,
};
use crate::task_api;

const AREA: u8 = 7;
/// The network below the lower proxy of a chain.
const DEEP: u8 = 71;

/// `certs issue --proxy-area 7`: the proxies' certificate.
fn issue_proxy_cert(certs: &Path) {
    gse_server(&[
        "certs",
        "issue",
        "--dir",
        certs.to_str().unwrap(),
        "--proxy-area",
        &AREA.to_string(),
    ]);
}

/// A proxy of area 7 on `host` from the shipped etc/gse-proxy.toml with the
/// changes its comments name: `id`, the address its agents reach it at,
/// and its upstream (an address and the name its certificate carries).
fn start_proxy(
    cluster: &Cluster,
    certs: &Path,
    host: &NetHost,
    (id, agents_reach, (upstream, server_name)): (&str, IpAddr, (&str, &str)),
) -> ProxyProc {
    let dir = cluster.path.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = shipped("gse-proxy.toml");
    set(&mut cfg, "proxy", "id", id);
    set(&mut cfg, "proxy", "bk_cloud_id", i64::from(AREA));
    set(&mut cfg, "proxy", "advertise_ip", agents_reach.to_string());
    set(&mut cfg, "upstream", "servers", vec![upstream]);
    set(&mut cfg, "upstream", "server_name", server_name);
    set(
        &mut cfg,
        "file",
        "cache_dir",
        dir.join("cache").display().to_string(),
    );
    set_tls(&mut cfg, certs, "gse_proxy_7");
    let path = dir.join("gse-proxy.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let metrics: SocketAddr = "127.0.0.1:29402".parse().unwrap();
    let forward = host.forward(metrics);
    let proxy = ProxyProc::from_config(dir, path, host.launcher(), forward.addr);
    // The forwarder lives as long as the test's process.
    std::mem::forget(forward);
    proxy
}

/// An agent of area 7 on `host` from the shipped config: the proxy at
/// `proxy` is its only upstream.
fn start_area_agent(cluster: &Cluster, certs: &Path, host: &NetHost, proxy: &str) -> AgentProc {
    start_agent_with(cluster, certs, host, |cfg| {
        set(cfg, "agent", "cloud_id", i64::from(AREA));
        set(cfg, "upstream", "servers", vec![proxy]);
        set(cfg, "upstream", "server_name", "gse-proxy");
    })
}

async fn info(api: &Api, ip: &str) -> Value {
    let (_, v) = api
        .post(
            "/api/v2/cluster/list_agent_info",
            json!({"agent_id_list": [format!("{AREA}:{ip}")]}),
        )
        .await;
    v["data"][0].clone()
}

async fn wait_offline(api: &Api, ip: &str) {
    eventually(
        &format!("agent {AREA}:{ip} offline"),
        Duration::from_secs(30),
        || async {
            (api.alive(i64::from(AREA), ip).await != 1)
                .then_some(())
                .ok_or("still alive".to_string())
        },
    )
    .await;
}

async fn wait_alive(api: &Api, ip: &str) {
    eventually(
        &format!("agent {AREA}:{ip} alive"),
        Duration::from_secs(30),
        || async {
            (api.alive(i64::from(AREA), ip).await == 1)
                .then_some(())
                .ok_or("not alive".to_string())
        },
    )
    .await;
}

/// The `agent_lost` alarm of `AREA:ip`, once raised.
async fn lost_alarm(server: &gse_testkit::ServerProc, ip: &str) -> Value {
    let agent = format!("{AREA}:{ip}");
    eventually(
        &format!("agent_lost for {agent}"),
        Duration::from_secs(45),
        || async {
            server
                .alarms()
                .into_iter()
                .find(|a| a["kind"] == "agent_lost" && a["agent"] == agent.as_str())
                .ok_or("not raised".to_string())
        },
    )
    .await
}

/// `size` bytes from a new host on the servers' network (10.77.0.5) to
/// `targets` behind `proxy`: every target gets the file, and at most 1.1
/// copies of it cross into the area.
async fn one_copy_crosses(
    lab: &NetLab,
    (cluster, certs): (&Cluster, &Path),
    api: &Api,
    proxy: &ProxyProc,
    targets: &[&str],
    size: usize,
) {
    let src_host = lab.host("source", 5);
    let _source = start_agent(cluster, certs, &src_host);
    api.wait_alive("10.77.0.5").await;
    let content = noise(size, 12);
    let src = cluster.path.join("src");
    write_file(&src.join("big.bin"), &content, 0o644);
    let dst = cluster.path.join("dst");
    let id = files::start(
        api,
        vec![files::task("0:10.77.0.5", &src, "big.bin", targets, &dst)],
        json!({}),
    )
    .await;
    let entries = targets.len() + 1;
    for e in files::wait_final(api, &id, entries, Duration::from_secs(180)).await {
        assert_eq!(files::code(&e), 0, "{e}");
    }
    assert!(std::fs::read(dst.join("big.bin")).unwrap() == content);
    let crossed = proxy
        .metric("gse_proxy_file_bytes_from_upstream_total")
        .await
        .unwrap_or(0.0);
    println!(
        "{crossed} bytes crossed into the area for {size} to {} targets",
        targets.len()
    );
    assert!(
        crossed / size as f64 <= 1.1,
        "{crossed} bytes crossed for {size}"
    );
}

#[tokio::test]
async fn c2_area_agents_reach_only_their_proxy_and_lost_hosts_are_probed_by_it() {
    let lab = NetLab::new();
    let cluster = Cluster::new();
    let certs = cluster.path.join("etc-certs");
    let (server, _api_forward) = deploy_server(&lab, &cluster, &certs, |_| {}).await;
    issue_proxy_cert(&certs);
    let proxy_host = lab.host("proxy", 2);
    let area_ip = lab.join_area(&proxy_host, AREA, 1);
    let proxy = start_proxy(
        &cluster,
        &certs,
        &proxy_host,
        ("proxy-area-7", area_ip, ("10.77.0.1:28668", SERVER_NAME)),
    );
    proxy.wait_linked().await;
    let hosts: Vec<NetHost> = [3, 4]
        .iter()
        .map(|last| lab.area_host(&format!("area-{last}"), AREA, *last))
        .collect();
    // The area's hosts have no way to the servers, only to their proxy.
    let server_link: SocketAddr = "10.77.0.1:28668".parse().unwrap();
    assert!(
        hosts[0].connect(server_link).is_err(),
        "an area host reached the server"
    );
    assert!(hosts[0].connect("10.77.7.1:28668".parse().unwrap()).is_ok());

    let mut agents: Vec<AgentProc> = hosts
        .iter()
        .map(|h| start_area_agent(&cluster, &certs, h, "10.77.7.1:28668"))
        .collect();
    let api = &server.api;
    for h in &hosts {
        wait_alive(api, &h.ip.to_string()).await;
    }
    let first = info(api, "10.77.7.3").await;
    assert_eq!(first["parent_ip"], "10.77.7.1", "{first}");
    assert_eq!(first["parent_port"], 28668, "{first}");

    // A task runs on each area host, through the proxy.
    let targets = ["7:10.77.7.3", "7:10.77.7.4"];
    let task = task_api::start(api, &targets, "ip -4 -o addr show dev eth0", json!({})).await;
    let done = task_api::wait_final(api, &task, &targets, Duration::from_secs(60)).await;
    for (e, ip) in done.iter().zip(["10.77.7.3", "10.77.7.4"]) {
        assert_eq!(e["status"], 2, "{e}");
        assert!(e["screen"].as_str().unwrap().contains(ip), "{e}");
    }

    // C10: an area host's records reach the sink through the proxy (the
    // area has no way to the DataServer itself).
    let sink = file_route(&server, DATA_ID).await;
    stream_records(
        socket_of(&agents[0]),
        "area".into(),
        200,
        50,
        Duration::from_millis(10),
    )
    .await;
    let want: Vec<String> = (0..200).map(|i| format!("area-{i}")).collect();
    wait_all(&sink, &want, Duration::from_secs(30)).await;

    // F8: a file from a host on the servers' network reaches both area
    // hosts; one copy crosses into the area.
    one_copy_crosses(&lab, (&cluster, &certs), api, &proxy, &targets, 20 << 20).await;

    // C11: the agent dies on a live host: the host answers its proxy's
    // probe. A host cut off the area's network does not.
    agents[0].kill9();
    hosts[1].cut();
    let alive_host = lost_alarm(&server, "10.77.7.3").await;
    assert_eq!(alive_host["host_reachable"], true, "{alive_host}");
    assert!(
        alive_host["probe"]
            .as_str()
            .unwrap()
            .starts_with("proxy proxy-area-7: icmp"),
        "{alive_host}"
    );
    let cut_host = lost_alarm(&server, "10.77.7.4").await;
    assert_eq!(cut_host["host_reachable"], false, "{cut_host}");
    assert!(
        cut_host["probe"].as_str().unwrap().contains("tcp:22"),
        "{cut_host}"
    );
}

/// A chain on its own networks: the upper proxy (10.77.0.2 / 10.77.7.1)
/// links to the servers, the lower one (10.77.7.11 / 10.77.71.1) to the
/// upper one, and a host of network 71 reaches only the lower proxy. Tasks
/// and files reach it two levels down (one copy crossing into the area);
/// its records survive the lower proxy's SIGKILL mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2_a_chain_on_its_own_networks_carries_tasks_files_and_data_through_a_proxy_crash() {
    let lab = NetLab::new();
    let cluster = Cluster::new();
    let certs = cluster.path.join("etc-certs");
    let (server, _api_forward) = deploy_server(&lab, &cluster, &certs, |_| {}).await;
    issue_proxy_cert(&certs);
    let upper_host = lab.host("proxy", 2);
    let upper_ip = lab.join_area(&upper_host, AREA, 1);
    let upper = start_proxy(
        &cluster,
        &certs,
        &upper_host,
        ("proxy-area-7", upper_ip, ("10.77.0.1:28668", SERVER_NAME)),
    );
    upper.wait_linked().await;
    let lower_host = lab.area_host("proxy-low", AREA, 11);
    let lower_ip = lab.join_area(&lower_host, DEEP, 1);
    let mut lower = start_proxy(
        &cluster,
        &certs,
        &lower_host,
        (
            "proxy-area-7-low",
            lower_ip,
            ("10.77.7.1:28668", "gse-proxy"),
        ),
    );
    lower.wait_linked().await;

    let deep = lab.area_host("deep", DEEP, 2);
    assert!(
        deep.connect("10.77.7.1:28668".parse().unwrap()).is_err(),
        "a deep host reached the upper proxy"
    );
    let area = lab.area_host("area-3", AREA, 3);
    let agents = [
        start_area_agent(&cluster, &certs, &deep, "10.77.71.1:28668"),
        start_area_agent(&cluster, &certs, &area, "10.77.7.1:28668"),
    ];
    let api = &server.api;
    for ip in ["10.77.71.2", "10.77.7.3"] {
        wait_alive(api, ip).await;
    }
    assert_eq!(info(api, "10.77.71.2").await["parent_ip"], "10.77.71.1");

    let targets = ["7:10.77.71.2", "7:10.77.7.3"];
    let task = task_api::start(api, &targets[..1], "ip -4 -o addr show dev eth0", json!({})).await;
    let done = task_api::wait_final(api, &task, &targets[..1], Duration::from_secs(60)).await;
    assert!(
        done[0]["screen"].as_str().unwrap().contains("10.77.71.2"),
        "{}",
        done[0]
    );

    // 100 MiB from the servers' network to both, one copy crossing into
    // the area (counted by the upper proxy).
    one_copy_crosses(&lab, (&cluster, &certs), api, &upper, &targets, 100 << 20).await;

    // Records of the deep host; its proxy is killed mid-stream and
    // restarted: nothing acknowledged is lost.
    let sink = file_route(&server, DATA_ID).await;
    records_survive(socket_of(&agents[0]), &sink, "deep", async || {
        lower.kill9();
        wait_offline(api, "10.77.71.2").await;
        lower.restart();
        lower.wait_linked().await;
    })
    .await;
}
