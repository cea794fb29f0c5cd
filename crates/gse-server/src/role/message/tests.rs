//! The message role over the embedded store and the task tests' fake link
//! (records frames; agents in `connected` are up): slots and tokens, the
//! agents' answers, time-outs and lost links, and callbacks to a real HTTP
//! endpoint.

use std::sync::Arc;
use std::time::Duration;

use gse_core::seams::StateStore;
use gse_proto::link::{PluginMessage, PluginMessageAck, PluginMessageUp};
use gse_proto::{Frame, MsgType, plugin_message};
use parking_lot::Mutex;

use super::*;
use crate::role::task::tests::{FIRST_CONN, FakeLink, agent_record, held, key};
use crate::store::EmbeddedStore;

struct Harness {
    _dir: tempfile::TempDir,
    link: Arc<FakeLink>,
    svc: Arc<MessageService>,
}

fn slot(id: u64, plugin: &str, callback: &str) -> SlotConfig {
    SlotConfig {
        slot_id: id,
        plugin: plugin.into(),
        token: Some(format!("token-{id}")),
        token_hash: None,
        callback: callback.into(),
    }
}

/// 10.0.0.1..3 online here, 10.0.0.9 known but offline; slot 1 for
/// bkmonitorbeat (callback `callback`), slot 2 for another plugin.
async fn harness(callback: &str, ack_timeout: Duration) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("s.sqlite")).unwrap());
    let link = Arc::new(FakeLink::default());
    for (ip, alive) in [
        ("10.0.0.1", true),
        ("10.0.0.2", true),
        ("10.0.0.3", true),
        ("10.0.0.9", false),
    ] {
        store
            .upsert_agent(agent_record(ip, "n1", alive))
            .await
            .unwrap();
        if alive {
            link.connected.lock().insert(key(ip));
        }
    }
    let svc = MessageService::new(MessageParts {
        config: MessageConfig {
            ack_timeout,
            callback_attempts: 2,
            slots: vec![slot(1, "bkmonitorbeat", callback), slot(2, "other", "")],
            ..MessageConfig::default()
        },
        store,
        sender: link.sender(),
    });
    Harness {
        _dir: dir,
        link,
        svc,
    }
}

fn dispatch(slot_id: u64, token: &str, targets: &[&str]) -> Dispatch {
    Dispatch {
        slot_id,
        token: token.into(),
        message_id: "bkmonitorbeat.fetch/host/dataid.1".into(),
        targets: targets
            .iter()
            .map(|t| (t.to_string(), b"{\"code\":0}".to_vec()))
            .collect(),
    }
}

/// The `PluginMessage` frames sent so far, with their agents.
async fn sent(link: &FakeLink, n: usize) -> Vec<(gse_core::AgentKey, Frame)> {
    for _ in 0..500 {
        if link.sent.lock().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    link.sent.lock().clone()
}

fn ack(frame: &Frame, code: u32, message: &str) -> Frame {
    let m: PluginMessage = frame.decode().unwrap();
    Frame::new(
        MsgType::PluginMessageAck,
        frame.stream_id,
        &PluginMessageAck {
            message_id: m.message_id,
            code,
            message: message.into(),
            connections: u32::from(code == 0),
        },
    )
}

#[tokio::test]
async fn only_the_agents_not_reached_are_listed_with_why() {
    let h = harness("", Duration::from_secs(5)).await;
    let svc = h.svc.clone();
    let call = tokio::spawn(async move {
        svc.dispatch(dispatch(
            1,
            "token-1",
            &[
                "0:10.0.0.1",
                "0:10.0.0.2",
                "0:10.0.0.9",
                "0:10.9.9.9",
                "0:10.0.0.3",
            ],
        ))
        .await
    });
    let frames = sent(&h.link, 3).await;
    assert_eq!(frames.len(), 3, "the three online agents are sent it");
    for (agent, frame) in &frames {
        assert_eq!(frame.msg_type, MsgType::PluginMessage);
        let m: PluginMessage = frame.decode().unwrap();
        assert_eq!(m.plugin, "bkmonitorbeat", "the slot's plugin");
        assert_eq!(m.content, b"{\"code\":0}");
        let (code, why) = match agent.ip.to_string().as_str() {
            "10.0.0.1" => (plugin_message::DELIVERED, ""),
            "10.0.0.2" => (
                plugin_message::NOT_CONNECTED,
                "plugin \"bkmonitorbeat\" is not connected",
            ),
            _ => (plugin_message::UNREACHABLE, "none reading"),
        };
        h.svc.on_frame(*agent, ack(frame, code, why));
    }
    let mut failures = call.await.unwrap().unwrap();
    failures.sort_by(|a, b| a.bk_agent_id.cmp(&b.bk_agent_id));
    let got: Vec<(&str, i64)> = failures
        .iter()
        .map(|f| (f.bk_agent_id.as_str(), f.code))
        .collect();
    assert_eq!(
        got,
        [
            ("0:10.0.0.2", codes::PLUGIN_NOT_CONNECTED),
            ("0:10.0.0.3", codes::PLUGIN_NOT_READING),
            ("0:10.0.0.9", codes::AGENT_DOWN),
            ("0:10.9.9.9", codes::AGENT_DOWN),
        ]
    );
    assert!(
        failures[0].message.contains("not connected"),
        "{failures:?}"
    );
    assert!(
        failures[3].message.contains("unknown to gse"),
        "{failures:?}"
    );
}

#[tokio::test]
async fn unknown_slots_and_wrong_tokens_are_refused_before_anything_is_sent() {
    let h = harness("", Duration::from_secs(5)).await;
    let e = h
        .svc
        .dispatch(dispatch(7, "token-1", &["0:10.0.0.1"]))
        .await;
    assert!(matches!(e, Err(MessageError::UnknownSlot(7))), "{e:?}");
    let e = h
        .svc
        .dispatch(dispatch(1, "token-2", &["0:10.0.0.1"]))
        .await;
    assert!(matches!(e, Err(MessageError::WrongToken(1))), "{e:?}");
    assert!(h.link.sent.lock().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_agent_that_does_not_answer_in_time_is_listed_with_120() {
    let h = harness("", Duration::from_secs(3)).await;
    let failures = h
        .svc
        .dispatch(dispatch(1, "token-1", &["0:10.0.0.1"]))
        .await
        .unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].code, codes::TIMEOUT);
    assert!(
        failures[0].message.contains("did not answer within 3s"),
        "{failures:?}"
    );
    assert!(h.svc.pending.lock().is_empty(), "nothing left waiting");
}

#[tokio::test]
async fn a_link_that_ends_before_the_answer_fails_its_target_at_once() {
    let h = harness("", Duration::from_secs(30)).await;
    let svc = h.svc.clone();
    let call =
        tokio::spawn(async move { svc.dispatch(dispatch(1, "token-1", &["0:10.0.0.1"])).await });
    sent(&h.link, 1).await;
    h.svc.on_disconnect(key("10.0.0.1"), held(FIRST_CONN));
    let failures = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("answered without waiting for the time-out")
        .unwrap()
        .unwrap();
    assert_eq!(failures[0].code, codes::AGENT_DOWN);
    assert!(failures[0].message.contains("link ended"), "{failures:?}");
}

#[tokio::test]
async fn an_answer_from_another_agent_on_the_stream_is_not_taken() {
    let h = harness("", Duration::from_millis(300)).await;
    let svc = h.svc.clone();
    let call =
        tokio::spawn(async move { svc.dispatch(dispatch(1, "token-1", &["0:10.0.0.1"])).await });
    let frames = sent(&h.link, 1).await;
    h.svc.on_frame(
        key("10.0.0.2"),
        ack(&frames[0].1, plugin_message::DELIVERED, ""),
    );
    let failures = call.await.unwrap().unwrap();
    assert_eq!(failures[0].code, codes::TIMEOUT, "{failures:?}");
}

/// An HTTP endpoint that records the bodies POSTed to it and answers
/// `status`.
async fn callback_endpoint(status: u16) -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let seen = seen.clone();
        async move {
            seen.lock().push(serde_json::from_slice(&body).unwrap());
            axum::http::StatusCode::from_u16(status).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/gse/callback", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

async fn wait_for(got: &Mutex<Vec<serde_json::Value>>, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..500 {
        if got.lock().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    got.lock().clone()
}

fn up(plugin: &str, message_id: &str, content: &[u8]) -> Frame {
    Frame::new(
        MsgType::PluginMessageUp,
        0,
        &PluginMessageUp {
            plugin: plugin.into(),
            message_id: message_id.into(),
            content: content.to_vec(),
        },
    )
}

#[tokio::test]
async fn a_plugins_message_is_posted_to_its_slots_callback_with_the_agent_id() {
    let (url, got) = callback_endpoint(200).await;
    let h = harness(&url, Duration::from_secs(5)).await;
    h.svc.on_frame(
        key("10.0.0.1"),
        up("bkmonitorbeat", "m-1", b"{\"type\":\"fetch/host/dataid\"}"),
    );
    // A plugin no slot with a callback is registered for: dropped.
    h.svc.on_frame(key("10.0.0.1"), up("other", "m-2", b"x"));
    let bodies = wait_for(&got, 1).await;
    assert_eq!(
        bodies,
        [serde_json::json!({
            "message_id": "m-1",
            "bk_agent_id": "id-10.0.0.1",
            "content": "{\"type\":\"fetch/host/dataid\"}",
        })]
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(got.lock().len(), 1);
}

#[tokio::test]
async fn a_callback_that_does_not_answer_200_is_retried() {
    let (url, got) = callback_endpoint(204).await;
    let h = harness(&url, Duration::from_secs(5)).await;
    h.svc
        .on_frame(key("10.0.0.1"), up("bkmonitorbeat", "m-1", b"x"));
    // callback_attempts = 2: the 204 is not taken as delivered.
    let bodies = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if got.lock().len() >= 2 {
                return got.lock().clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("retried");
    assert_eq!(bodies[0], bodies[1]);
}
