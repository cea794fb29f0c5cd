//! Issue 12 (C2), the node's side: agents behind a proxy. A hand-driven
//! proxy (`FakeProxy`: a real mTLS connection with a proxy certificate)
//! says ProxyHello and relays its agents' frames on channels; the node
//! serves each as an agent's link. The proxy binary comes next.

use std::net::SocketAddr;
use std::time::Duration;

use gse_core::certs::CertKind;
use gse_core::task::{ERR_NONE, STATUS_SUCCESS};
use gse_proto::link::{
    Heartbeat, ProxyClose, ProxyHello, Register, RegisterAck, RunScript, TaskStatus,
};
use gse_proto::{Frame, LINK_PROTOCOL_VERSION, MsgType};
use gse_testkit::{Cluster, FakeProxy, StartedCluster, eventually};
use serde_json::json;

use crate::task_api::{start, wait_final};

const AREA: i64 = 7;
/// Where the area's agents reach the proxy: their parent.
const PROXY_AGENTS: &str = "127.0.0.77:28668";

fn hello(area: i64) -> Frame {
    let hello = ProxyHello {
        proxy_id: "pa-1".into(),
        bk_cloud_id: area,
        agent_addr: PROXY_AGENTS.into(),
        version: "test".into(),
    };
    Frame::new(MsgType::ProxyHello, 0, &hello)
}

fn register(cloud_id: i64, ip: &str) -> Frame {
    let reg = Register {
        agent_id: format!("proxied-{}", ip.replace('.', "-")),
        cloud_id,
        identity_ip: ip.into(),
        version: "fake".into(),
        hostname: "area-host".into(),
        os_type: "linux".into(),
        run_mode: 1,
        protocol_version: LINK_PROTOCOL_VERSION,
        ..Register::default()
    };
    Frame::new(MsgType::Register, 1, &reg)
}

async fn proxy(cluster: &StartedCluster, first: Frame) -> FakeProxy {
    let tls = cluster.cluster.tls(CertKind::Proxy);
    FakeProxy::connect(cluster.nodes[0].link_addr, &tls, first)
        .await
        .unwrap_or_else(|f| panic!("no ProxyHelloAck: {f:?}"))
}

fn peer(ip: &str) -> SocketAddr {
    format!("{ip}:40000").parse().unwrap()
}

/// `get_agent_info`'s entry with `get_agent_status`'s `bk_agent_alive`.
async fn agent_info(cluster: &StartedCluster, cloud: i64, ip: &str) -> serde_json::Value {
    let body = json!({"bk_supplier_account": "0", "hosts": [{"ip": ip, "bk_cloud_id": cloud}]});
    let key = format!("{cloud}:{ip}");
    let api = cluster.api(0);
    let (_, info) = api
        .post("/api/c/compapi/v2/gse/get_agent_info/", body.clone())
        .await;
    let (_, status) = api
        .post("/api/c/compapi/v2/gse/get_agent_status/", body)
        .await;
    let mut entry = info["data"][&key].clone();
    entry["bk_agent_alive"] = status["data"][&key]["bk_agent_alive"].clone();
    entry
}

#[tokio::test]
async fn c2_an_agent_behind_a_proxy_registers_under_it_and_runs_tasks_through_it() {
    let cluster = Cluster::builder().start().await;
    let mut p = proxy(&cluster, hello(AREA)).await;
    assert!(p.ack.accepted, "{:?}", p.ack);

    let ip = "127.0.13.1";
    p.open(1, peer(ip)).await;
    p.to_node(1, register(AREA, ip)).await;
    let ack: RegisterAck = p
        .recv_on(1, MsgType::RegisterAck, Duration::from_secs(10))
        .await
        .expect("registered")
        .decode()
        .unwrap();
    assert!(ack.accepted, "{}", ack.message);
    // Its parent is the proxy, as the area's agents reach it.
    assert_eq!(
        (ack.parent_ip.as_str(), ack.parent_port),
        ("127.0.0.77", 28668)
    );
    p.to_node(
        1,
        Frame::new(
            MsgType::Heartbeat,
            0,
            &Heartbeat {
                seq: 1,
                ..Default::default()
            },
        ),
    )
    .await;
    p.recv_on(1, MsgType::HeartbeatAck, Duration::from_secs(10))
        .await
        .expect("heartbeats answered through the proxy");

    let info = agent_info(&cluster, AREA, ip).await;
    assert_eq!(info["bk_agent_alive"], 1, "{info}");
    assert_eq!(info["parent_ip"], "127.0.0.77", "{info}");
    assert_eq!(info["parent_port"], 28668, "{info}");

    // A task reaches it through the proxy's link, and its answers come back.
    let target = format!("{AREA}:{ip}");
    let targets = [target.as_str()];
    let task = start(cluster.api(0), &targets, "echo through", json!({})).await;
    let run = p
        .recv_on(1, MsgType::RunScript, Duration::from_secs(10))
        .await
        .expect("the task reaches the agent");
    let script: RunScript = run.decode().unwrap();
    let now = gse_core::now_ms();
    let status = TaskStatus {
        task_id: script.task_id,
        atomic_id: 0,
        status: STATUS_SUCCESS,
        error_code: ERR_NONE,
        start_time_ms: now,
        end_time_ms: now,
        ..TaskStatus::default()
    };
    p.to_node(1, Frame::new(MsgType::TaskStatus, run.stream_id, &status))
        .await;
    let done = wait_final(cluster.api(0), &task, &targets, Duration::from_secs(10)).await;
    assert_eq!(
        (done[0]["status"].as_i64(), done[0]["error_code"].as_i64()),
        (Some(2), Some(0)),
        "{}",
        done[0]
    );

    // The proxy closes the channel: the agent is offline.
    let close = ProxyClose {
        chan: 1,
        reason: "agent disconnected from the proxy".into(),
    };
    p.send(Frame::new(MsgType::ProxyClose, 0, &close)).await;
    eventually(
        "the agent to go offline",
        Duration::from_secs(10),
        || async {
            let info = agent_info(&cluster, AREA, ip).await;
            (info["bk_agent_alive"] == 0)
                .then_some(())
                .ok_or(format!("{info}"))
        },
    )
    .await;
}

#[tokio::test]
async fn c2_a_proxy_relays_only_its_area_and_only_a_proxy_certificate_says_hello() {
    let cluster = Cluster::builder().start().await;
    let link = cluster.nodes[0].link_addr;

    // An agent of another area through this area's proxy is refused.
    let mut p = proxy(&cluster, hello(AREA)).await;
    p.open(1, peer("127.0.13.2")).await;
    p.to_node(1, register(AREA + 1, "127.0.13.2")).await;
    let ack: RegisterAck = p
        .recv_on(1, MsgType::RegisterAck, Duration::from_secs(10))
        .await
        .expect("an answer")
        .decode()
        .unwrap();
    assert!(!ack.accepted);
    assert!(
        ack.message
            .contains("is of cloud area 8, but registers through the proxy of cloud area 7"),
        "{}",
        ack.message
    );
    let info = agent_info(&cluster, AREA + 1, "127.0.13.2").await;
    assert_ne!(info["bk_agent_alive"], 1, "{info}");

    // Area 0 needs no proxy.
    let p0 = proxy(&cluster, hello(0)).await;
    assert!(!p0.ack.accepted);
    assert!(
        p0.ack.message.contains("bk_cloud_id 0"),
        "{}",
        p0.ack.message
    );

    // A proxy certificate cannot register as an agent itself...
    let tls = cluster.cluster.tls(CertKind::Proxy);
    let refused = FakeProxy::connect(link, &tls, register(AREA, "127.0.13.3"))
        .await
        .map(|p| p.ack)
        .expect("a ProxyHelloAck");
    assert!(!refused.accepted);
    assert!(
        refused.message.contains("must be ProxyHello"),
        "{}",
        refused.message
    );

    // ...and an agent certificate cannot open a proxy's link.
    let tls = cluster.cluster.tls(CertKind::Agent);
    let answer = match FakeProxy::connect(link, &tls, hello(AREA)).await {
        Ok(p) => panic!("an agent certificate was taken as a proxy: {:?}", p.ack),
        Err(f) => f.expect("an answer"),
    };
    assert_eq!(answer.msg_type, MsgType::RegisterAck);
    let ack: RegisterAck = answer.decode().unwrap();
    assert!(
        !ack.accepted && ack.message.contains("must be Register"),
        "{}",
        ack.message
    );
}

/// A proxy certificate made for one cloud area (`gse-server certs issue
/// --proxy-area 7`) serves that area only; one without an area serves any.
#[tokio::test]
async fn c2_a_proxy_certificate_bound_to_an_area_serves_that_area_only() {
    let cluster = Cluster::builder().start().await;
    let certs = cluster.cluster.path.join("certs");
    let issued = std::process::Command::new(gse_testkit::bin("gse-server"))
        .args(["certs", "issue", "--dir"])
        .arg(&certs)
        .args(["--proxy-area", "7"])
        .output()
        .expect("run gse-server certs issue");
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let refused = std::process::Command::new(gse_testkit::bin("gse-server"))
        .args(["certs", "issue", "--dir"])
        .arg(&certs)
        .args(["--proxy-area", "0"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("a proxy serves a cloud area above 0"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let tls = gse_core::tls::TlsFiles {
        cert_file: certs.join("gse_proxy_7.crt"),
        key_file: certs.join("gse_proxy_7.key"),
        ..cluster.cluster.tls(CertKind::Proxy)
    };
    let link = cluster.nodes[0].link_addr;
    let ok = FakeProxy::connect(link, &tls, hello(AREA))
        .await
        .expect("an ack");
    assert!(ok.ack.accepted, "{:?}", ok.ack);
    let other = FakeProxy::connect(link, &tls, hello(AREA + 1))
        .await
        .expect("an ack");
    assert!(!other.ack.accepted);
    assert!(
        other
            .ack
            .message
            .contains("certificate is for cloud area 7 (gse://proxy/7), not 8"),
        "{}",
        other.ack.message
    );
}
