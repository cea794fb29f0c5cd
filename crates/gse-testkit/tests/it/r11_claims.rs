//! Issue 11, one authority and one sender: a node's link claims each agent
//! in the agent directory when it registers and releases it when its link
//! ends; a claim taken by another node ends the stale link here at its
//! next renewal and survives it; roles' frames go through the sender, which
//! reports an agent of another node it cannot reach as such. In-process
//! node (its directory and sender are read directly), fake agents on
//! loopback.

use std::net::IpAddr;
use std::time::Duration;

use gse_core::certs::CertKind;
use gse_core::{AgentKey, AgentRef};
use gse_proto::link::CancelTask;
use gse_proto::{Frame, MsgType};
use gse_server::cluster::sender::SendError;
use gse_server::config::ServerConfig;
use gse_server::node::Node;
use gse_testkit::{Cluster, FakeAgent, FakeAgentOptions, eventually};

async fn node(cluster: &Cluster) -> Node {
    let dir = cluster.path.join("node");
    let mut cfg = ServerConfig::with_defaults(dir.join("data"), cluster.tls(CertKind::Server));
    cfg.node.id = "n-here".into();
    cfg.api.listen = "127.0.0.1:0".parse().unwrap();
    cfg.link.listen = "127.0.0.1:0".parse().unwrap();
    cfg.data.listen = vec!["127.0.0.1:0".parse().unwrap()];
    cfg.link.heartbeat_interval = Duration::from_secs(1);
    cfg.link.heartbeat_timeout = Duration::from_secs(3);
    cfg.resolve();
    Node::start(cfg).await.expect("node starts")
}

fn key(ip: &str) -> AgentKey {
    AgentKey::new(0, ip.parse::<IpAddr>().unwrap())
}

fn cancel() -> Frame {
    Frame::new(
        MsgType::CancelTask,
        0,
        &CancelTask {
            task_id: "GSETASK:S:claims".into(),
        },
    )
}

#[tokio::test]
async fn r11_the_link_claims_releases_and_yields_to_a_newer_claim() {
    let cluster = Cluster::new();
    let node = node(&cluster).await;
    let link_addr = node.agent_addr.expect("the node runs the link");
    let tls = cluster.tls(CertKind::Agent);
    let dir = node.sender.directory().clone();

    // Registered: claimed by this node, and the sender reaches it.
    let mut agent = FakeAgent::connect(link_addr, &tls, FakeAgentOptions::ip("127.0.11.1")).await;
    let a = key("127.0.11.1");
    let at = dir
        .locate(a)
        .await
        .unwrap()
        .expect("claimed at registration");
    assert_eq!((at.node_id.as_str(), at.via.len()), ("n-here", 0));
    let sent = node.sender.send(a, cancel()).await.expect("sent");
    agent
        .recv_type(MsgType::CancelTask, Duration::from_secs(5))
        .await;
    assert_eq!(node.sender.current(a).await.unwrap(), Some(sent));

    // Another node claims it (the agent registered there): the link here
    // ends at its next renewal and does not release the newer claim.
    let newer = dir.claim(a, "n-other", &[]).await.unwrap();
    assert!(newer > at.epoch);
    let link = node.link.clone().expect("link role");
    eventually("the stale link to end", Duration::from_secs(10), || {
        let n = link.connected();
        async move {
            if n == 0 {
                Ok(())
            } else {
                Err(format!("{n} connected"))
            }
        }
    })
    .await;
    let at = dir.locate(a).await.unwrap().expect("still held");
    assert_eq!((at.node_id.as_str(), at.epoch), ("n-other", newer));
    // Nor does the stale link mark the agent offline: its record is the
    // holder's to write.
    let rec = node.store.get_agents(&[AgentRef::Key(a)]).await.unwrap();
    assert!(rec[0].as_ref().is_some_and(|r| r.alive), "{rec:?}");
    assert!(
        node.sender.current(a).await.unwrap() != Some(sent),
        "work delivered under the old claim is seen as lost"
    );
    // Without a node link, another node's agent is unreachable, by name.
    let e = node.sender.send(a, cancel()).await.unwrap_err();
    assert!(
        matches!(&e, SendError::RemoteUnreachable { node, .. } if node == "n-other"),
        "{e:?}"
    );
    assert!(
        e.for_host("host-a")
            .contains("agent host-a is held by node n-other"),
        "{e}"
    );

    // A link that ends releases its claim: the agent is offline.
    let b = key("127.0.11.2");
    let other = FakeAgent::connect(link_addr, &tls, FakeAgentOptions::ip("127.0.11.2")).await;
    assert!(dir.locate(b).await.unwrap().is_some());
    drop(other);
    eventually("the claim to be released", Duration::from_secs(10), || {
        let dir = dir.clone();
        async move {
            match dir.locate(b).await {
                Ok(None) => Ok(()),
                got => Err(format!("{got:?}")),
            }
        }
    })
    .await;
    let e = node.sender.send(b, cancel()).await.unwrap_err();
    assert!(matches!(e, SendError::Offline(_)), "{e:?}");
    node.stop(Duration::from_secs(5)).await;
}
