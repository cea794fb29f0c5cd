//! Plugin messages both ways (issue 13 item 3; COMPAT §1.3) with a real
//! server and agent: bkmonitorbeat's tenant data-id request as the real
//! case. The plugin (a client of the agent's plugin-message socket written
//! from the protocol, `gse_testkit::plugin_client`) asks for its data ids
//! with a 0x900a; the server POSTs it to the slot's callback (bk-monitor,
//! here a recording endpoint); bk-monitor answers through
//! `dispatch_message`, and the plugin gets the answer as a 0x9008 with the
//! same message id. A local user posing as the plugin gets nothing and
//! sends nothing; a wrong token and unknown agents are refused as the
//! SDK's server expects.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gse_testkit::plugin_client::PluginClient;
use gse_testkit::{AgentOptions, Cluster, ServerOptions, Webhook, eventually, hostile};
use serde_json::{Value, json};

const SLOT: u64 = 7;
const TOKEN: &str = "slot-7-token";

/// The `[[plugin_message.slots]]` entry for bkmonitorbeat, calling back to
/// `callback`.
pub(crate) fn monitor_slot(callback: &str) -> gse_server::role::message::SlotConfig {
    gse_server::role::message::SlotConfig {
        slot_id: SLOT,
        plugin: "bkmonitorbeat".into(),
        token: Some(TOKEN.into()),
        token_hash: None,
        callback: callback.into(),
    }
}

/// bkmonitorbeat's request for its data ids (DL `tenant/client.go`).
pub(crate) fn dataid_request(agent_id: &str) -> (String, Vec<u8>) {
    let message_id = format!("bkmonitorbeat.fetch/host/dataid.{:016x}.1a", 0x5eed_u64);
    let content = json!({
        "type": "fetch/host/dataid", "cloudid": 0, "bk_agent_id": agent_id,
        "bk_tenant_id": "system", "ip": "127.0.0.1",
        "params": {"tasks": ["basereport", "processbeat"]},
    });
    (message_id, content.to_string().into_bytes())
}

/// Waits for the callback to have received a body with `message_id`.
pub(crate) async fn called_back(hook: &Webhook, message_id: &str) -> Value {
    eventually(
        &format!("the callback got {message_id}"),
        Duration::from_secs(20),
        || async {
            hook.received()
                .into_iter()
                .find(|b| b["message_id"] == message_id)
                .ok_or_else(|| format!("{:?}", hook.received()))
        },
    )
    .await
}

/// The body of a `dispatch_message` call for slot [`SLOT`].
pub(crate) fn dispatch_body(message_id: &str, agents: &[&str], content: &str) -> Value {
    json!({
        "slot_id": SLOT, "token": TOKEN, "message_id": message_id,
        "agent_id_list": agents, "content": content,
    })
}

/// A server with the bkmonitorbeat slot calling back to `hook`, and an
/// agent on 127.0.0.1 alive there.
struct Rig {
    hook: Webhook,
    cluster: Cluster,
    server: gse_testkit::ServerProc,
    agent_id: String,
    /// The agent's plugin-message socket.
    socket: std::path::PathBuf,
    _agent: gse_testkit::AgentProc,
}

async fn rig() -> Rig {
    let hook = Webhook::start().await;
    let slot = monitor_slot(&hook.url);
    let cluster = Cluster::new();
    let server = cluster
        .server(ServerOptions {
            customize: Some(Arc::new(move |cfg| {
                cfg.plugin_message.slots = vec![slot.clone()];
            })),
            ..ServerOptions::default()
        })
        .await;
    let agent = cluster.agent(&server, AgentOptions::ip("127.0.0.1"));
    server.api.wait_alive("127.0.0.1").await;
    Rig {
        agent_id: agent.agent_id().expect("the agent's id"),
        socket: agent.dir.join("data/ipc.state.message"),
        hook,
        cluster,
        server,
        _agent: agent,
    }
}

#[tokio::test]
async fn d_bkmonitorbeat_asks_for_its_data_ids_and_gets_the_answer_back() {
    let Rig {
        hook,
        cluster: _cluster,
        server,
        agent_id,
        socket,
        _agent,
    } = rig().await;
    let api = &server.api;
    let (mut plugin, answer) = connect(&socket, "bkmonitorbeat").await;
    assert_eq!(answer["agent_id"], agent_id.as_str());

    // Up: the plugin's request reaches bk-monitor's callback.
    let (message_id, request) = dataid_request(&agent_id);
    plugin
        .send_message("bkmonitorbeat", &message_id, &request)
        .await
        .unwrap();
    let body = called_back(&hook, &message_id).await;
    assert_eq!(body["bk_agent_id"], agent_id.as_str(), "{body}");
    let content: Value = serde_json::from_str(body["content"].as_str().unwrap()).unwrap();
    assert_eq!(content["type"], "fetch/host/dataid");
    assert_eq!(content["params"]["tasks"][0], "basereport");

    // Down: bk-monitor answers with the data ids, to that agent.
    let reply = json!({"code": 0, "data": [{"task": "basereport", "dataid": 1001},
                                           {"task": "processbeat", "dataid": 1002}]})
    .to_string();
    let (status, v) = api
        .post(
            "/api/v2/cluster/dispatch_message",
            dispatch_body(&message_id, &[&agent_id], &reply),
        )
        .await;
    assert_eq!((status, v["code"].clone()), (200, json!(0)), "{v}");
    assert_eq!(v["data"]["results"], json!([]), "no agent failed: {v}");
    let got = plugin
        .next_message(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the answer reaches the plugin");
    assert_eq!(got.message_id, message_id);
    assert_eq!(String::from_utf8(got.content).unwrap(), reply);

    // dispatch_multi_message: front + own + back content, by cloud:ip too.
    let (status, v) = api
        .post(
            "/api/v2/cluster/dispatch_multi_message",
            json!({"slot_id": SLOT.to_string(), "token": TOKEN, "message_id": "multi-1",
                   "agent_message_list": [{"bk_agent_id": "0:127.0.0.1", "content": "[own]"},
                                          {"bk_agent_id": "0:127.0.9.9", "content": "[x]"}],
                   "front_content": "<front>", "back_content": "<back>"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["data"]["results"],
        json!([{"bk_agent_id": "0:127.0.9.9", "code": 117,
                "message": v["data"]["results"][0]["message"]}]),
        "only the unknown agent is listed: {v}"
    );
    assert!(
        v["data"]["results"][0]["message"]
            .as_str()
            .unwrap()
            .contains("unknown to gse")
    );
    let got = plugin
        .next_message(Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.message_id.as_str(), got.content.as_slice()),
        ("multi-1", &b"<front>[own]<back>"[..])
    );

    // A plugin that is not connected is reported, not silently dropped.
    drop(plugin);
    eventually(
        "the agent saw the plugin leave",
        Duration::from_secs(10),
        || async {
            let (_, v) = api
                .post(
                    "/api/v2/cluster/dispatch_message",
                    dispatch_body("m-gone", &[&agent_id], "{}"),
                )
                .await;
            let r = &v["data"]["results"];
            (r[0]["code"] == 829).then_some(()).ok_or(format!("{v}"))
        },
    )
    .await;

    // The slot's token is checked; bad input names its field.
    let (status, v) = api
        .post(
            "/api/v2/cluster/dispatch_message",
            json!({"slot_id": SLOT, "token": "wrong", "message_id": "m",
                   "agent_id_list": [agent_id], "content": "{}"}),
        )
        .await;
    assert_eq!((status, v["code"].clone()), (401, json!(1000403)), "{v}");
    let (status, v) = api
        .post(
            "/api/v2/cluster/dispatch_message",
            json!({"slot_id": SLOT, "token": TOKEN, "message_id": "m",
                   "agent_id_list": [agent_id, 5], "content": "{}"}),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("agent_id_list[1]"),
        "{v}"
    );
}

#[tokio::test]
async fn d_a_local_user_posing_as_a_plugin_gets_no_message_and_sends_none() {
    let Rig {
        hook,
        cluster,
        server,
        agent_id,
        socket,
        _agent,
    } = rig().await;
    let api = &server.api;
    let (mut plugin, _) = connect(&socket, "bkmonitorbeat").await;
    hostile::open_path_to(socket.parent().unwrap());
    let shared = cluster.path.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    hostile::open_path_to(&shared);
    let ready = shared.join("posing");

    // nobody connects as bkmonitorbeat and sends bk-monitor a message.
    let mut posing = hostile::as_user("nobody");
    posing.args([
        "ipc",
        "pose-plugin",
        "--plugin",
        "bkmonitorbeat",
        "--seconds",
        "6",
    ]);
    posing
        .arg("--socket")
        .arg(&socket)
        .arg("--ready")
        .arg(&ready);
    let posing = tokio::task::spawn_blocking(move || hostile::run_json(&mut posing));
    let ready2 = ready.clone();
    eventually(
        "the posing plugin is connected",
        Duration::from_secs(20),
        || {
            let r = ready2.clone();
            async move { r.exists().then_some(()).ok_or_else(String::new) }
        },
    )
    .await;

    // The server's message reaches the real plugin only.
    let (_, v) = api
        .post(
            "/api/v2/cluster/dispatch_message",
            dispatch_body("to-monitor", &[&agent_id], "{\"code\":0}"),
        )
        .await;
    assert_eq!(v["data"]["results"], json!([]), "{v}");
    let got = plugin
        .next_message(Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.message_id, "to-monitor");
    let posing = posing.await.unwrap();
    assert_eq!(posing["keepalive_answered"], true, "{posing}");
    assert_eq!(
        posing["messages_received"], 0,
        "nobody got the server's message: {posing}"
    );

    // nobody's message never reached the callback: the real plugin's,
    // sent after it, did.
    plugin
        .send_message("bkmonitorbeat", "after-posing", b"{}")
        .await
        .unwrap();
    called_back(&hook, "after-posing").await;
    let posed = posing["message_id"].as_str().unwrap();
    assert!(
        hook.received().iter().all(|b| b["message_id"] != posed),
        "{:?}",
        hook.received()
    );
}

async fn connect(socket: &Path, plugin: &str) -> (PluginClient, Value) {
    let socket = socket.to_path_buf();
    eventually("the plugin-message socket", Duration::from_secs(10), || {
        let s = socket.clone();
        async move { s.exists().then_some(()).ok_or_else(String::new) }
    })
    .await;
    PluginClient::connect(&socket, plugin)
        .await
        .expect("connect as a plugin")
}

#[tokio::test]
async fn d_plugin_messages_cross_nodes_and_a_proxy_both_ways() {
    use gse_testkit::{ProxyOptions, area_agent};
    const AREA: i64 = 7;
    let hook = Webhook::start().await;
    let slot = monitor_slot(&hook.url);
    // Node 1 is asked; the agent is behind a proxy linked to node 2.
    let cluster = gse_testkit::Cluster::builder()
        .nodes(2)
        .zookeeper()
        .redis()
        .node_config(move |_, cfg| {
            cfg.cluster.balance = false;
            cfg.plugin_message.slots = vec![slot.clone()];
        })
        .start()
        .await;
    let proxy = cluster.cluster.proxy(ProxyOptions::new(
        "pm-1",
        AREA,
        "127.0.17.1",
        &[cluster.nodes[1].link_addr],
    ));
    proxy.wait_linked().await;
    let agent = cluster
        .cluster
        .agent_of(&[proxy.listen], area_agent("127.0.17.2", AREA));
    let api = cluster.api(0);
    eventually("the area agent alive", Duration::from_secs(30), || async {
        (api.alive(AREA, "127.0.17.2").await == 1)
            .then_some(())
            .ok_or_else(String::new)
    })
    .await;
    let agent_id = agent.agent_id().expect("the agent's id");
    let (mut plugin, _) = connect(&agent.dir.join("data/ipc.state.message"), "bkmonitorbeat").await;

    // Up: through the proxy to node 2, which calls bk-monitor back.
    let (message_id, request) = dataid_request(&agent_id);
    plugin
        .send_message("bkmonitorbeat", &message_id, &request)
        .await
        .unwrap();
    let body = called_back(&hook, &message_id).await;
    assert_eq!(body["bk_agent_id"], agent_id.as_str(), "{body}");

    // Down: asked of node 1, forwarded to node 2, through the proxy; the
    // agent's answer comes back the same way.
    let (status, v) = api
        .post(
            "/api/v2/cluster/dispatch_message",
            dispatch_body(
                &message_id,
                &[&agent_id, &format!("{AREA}:127.0.17.2")],
                "{\"code\":0}",
            ),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["results"], json!([]), "{v}");
    for _ in 0..2 {
        let got = plugin
            .next_message(Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (got.message_id.as_str(), got.content.as_slice()),
            (message_id.as_str(), &b"{\"code\":0}"[..])
        );
    }
}
