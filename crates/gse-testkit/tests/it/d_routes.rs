//! D5 routing end to end: the route and stream_to APIs of COMPAT.md §2.3
//! with bk-monitor's exact bodies (and the legacy ESB names), persistence
//! across a server restart, and the Redis sink against a real redis-server.

use std::sync::Arc;
use std::time::Duration;

use gse_core::seams::{Batch, Record, Sink};
use gse_server::role::data::routes::model::{ReportMode, Route, StreamTo};
use gse_server::role::data::sink::redis::RedisSink;
use gse_testkit::redis::{self as test_redis, RedisServer};
use gse_testkit::{Api, Cluster, ServerOptions};
use serde_json::{Value, json};

pub(crate) const V2: &str = "/api/v2/data";
const LEGACY: &str = "/api/c/compapi/v2/gse";
/// bk-monitor's topic naming: `0bkmonitor_<data id>0`.
const TOPIC: &str = "0bkmonitor_10010";

pub(crate) fn op() -> Value {
    json!({"operator_name": "admin"})
}

/// POSTs and returns the envelope, asserting HTTP 200.
async fn call(api: &Api, path: &str, body: Value) -> Value {
    let (status, v) = api.post(path, body).await;
    assert_eq!(status, 200, "{path}: {v}");
    v
}

pub(crate) async fn ok(api: &Api, path: &str, body: Value) -> Value {
    let v = call(api, path, body).await;
    assert_eq!(v["code"], 0, "{path}: {v}");
    assert_eq!(v["result"], true, "{path}: {v}");
    v["data"].clone()
}

/// bk-monitor's default Kafka cluster, as `add_streamto` gets it.
fn kafka_stream_to() -> Value {
    json!({
        "metadata": {"plat_name": "bkmonitor", "label": {"bk_biz_id": 0}},
        "operation": op(),
        "stream_to": {
            "name": "mq_stream_to_1",
            "report_mode": "kafka",
            "kafka": {"storage_address": [{"ip": "kafka.service.consul", "port": 9092}]}
        }
    })
}

/// The route bk-monitor-worker builds (`GseRouteConfig`).
fn worker_route(stream_to_id: u64, partition: u64) -> Value {
    json!({
        "name": format!("stream_to_bkmonitor_kafka_{TOPIC}"),
        "stream_to": {
            "stream_to_id": stream_to_id,
            "kafka": {
                "topic_name": TOPIC,
                "data_set": &TOPIC[..TOPIC.len() - 1],
                "partition": partition,
                "biz_id": 0
            }
        },
        "filter_name_and": [],
        "filter_name_or": []
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_route_and_stream_to_crud_with_bk_monitor_bodies() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let api = &server.api;

    // add_streamto allocates from 500: the first is bk-monitor's default.
    let st = ok(api, &format!("{V2}/add_streamto"), kafka_stream_to()).await;
    assert_eq!(st, json!({"stream_to_id": 500}));
    let q =
        json!({"condition": {"plat_name": "bkmonitor", "stream_to_id": 500}, "operation": op()});
    let listed = ok(api, &format!("{V2}/query_streamto"), q).await;
    assert_eq!(listed[0]["stream_to"]["stream_to_id"], 500, "{listed}");
    assert_eq!(listed[0]["stream_to"]["name"], "mq_stream_to_1");
    assert_eq!(listed[0]["metadata"]["plat_name"], "bkmonitor");
    let none = json!({"condition": {"plat_name": "bklog"}, "operation": op()});
    assert_eq!(
        ok(api, &format!("{V2}/query_streamto"), none).await,
        json!([])
    );

    // apply_for_data_id_from_gse: no route, no channel_id -> a new data id.
    let apply = json!({"metadata": {"plat_name": "bkmonitor"}, "operation": op()});
    let first = ok(api, &format!("{V2}/add_route"), apply.clone()).await;
    let second = ok(api, &format!("{V2}/add_route"), apply).await;
    let id1 = first["channel_id"].as_u64().expect("channel_id");
    assert_eq!(id1, 1_572_864);
    assert_eq!(second["channel_id"].as_u64(), Some(id1 + 1));

    // query_route of an unknown id: code 0 and null data (the worker's
    // "no route" test), then the worker's AddBuiltInChannelIdToGse body.
    let query =
        json!({"condition": {"plat_name": "bkmonitor", "channel_id": 1001}, "operation": op()});
    assert_eq!(
        ok(api, &format!("{V2}/query_route"), query.clone()).await,
        Value::Null
    );
    let add = json!({
        "metadata": {"channel_id": 1001, "plat_name": "bkmonitor"},
        "operation": op(),
        "route": [worker_route(500, 1)]
    });
    assert_eq!(
        ok(api, &format!("{V2}/add_route"), add.clone()).await,
        json!({"channel_id": 1001})
    );
    let dup = call(api, &format!("{V2}/add_route"), add).await;
    assert_eq!(dup["code"], 1014506, "{dup}");
    assert_eq!(dup["result"], false);

    // What query_route returns compares equal to what the worker sent, so
    // the worker does not call update_route again.
    let got = ok(api, &format!("{V2}/query_route"), query.clone()).await;
    assert_eq!(got[0]["metadata"]["channel_id"], 1001, "{got}");
    assert_eq!(got[0]["metadata"]["version"], "1");
    assert_eq!(got[0]["metadata"]["plat_name"], "bkmonitor");
    assert!(got[0]["metadata"]["label"].is_object());
    assert_eq!(got[0]["route"][0], worker_route(500, 1));
    assert_eq!(got[0]["stream_filters"], json!([]));

    // update_route (the worker's RefreshGseConfig body) replaces by name.
    let update = json!({
        "condition": {"channel_id": 1001, "plat_name": "bkmonitor"},
        "operation": op(),
        "specification": {"route": [worker_route(500, 4)]}
    });
    ok(api, &format!("{V2}/update_route"), update).await;
    let got = ok(api, &format!("{V2}/query_route"), query.clone()).await;
    assert_eq!(got[0]["metadata"]["version"], "2");
    assert_eq!(got[0]["route"].as_array().unwrap().len(), 1);
    assert_eq!(got[0]["route"][0]["stream_to"]["kafka"]["partition"], 4);

    // The stream_to is in use: it cannot be deleted.
    let del_st =
        json!({"condition": {"stream_to_id": 500, "plat_name": "bkmonitor"}, "operation": op()});
    let refused = call(api, &format!("{V2}/delete_streamto"), del_st.clone()).await;
    assert_eq!(refused["code"], 1014507, "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("1001"),
        "{refused}"
    );

    // A route naming an unknown stream_to is refused, naming the field.
    let bad = json!({
        "condition": {"channel_id": 1001, "plat_name": "bkmonitor"},
        "operation": op(),
        "specification": {"route": [worker_route(999, 1)]}
    });
    let refused = call(api, &format!("{V2}/update_route"), bad).await;
    assert_eq!(refused["code"], 1014508, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("route[0].stream_to.stream_to_id")
    );

    // operation.operator_name is required everywhere.
    let no_op = json!({"condition": {"plat_name": "bkmonitor", "channel_id": 1001}});
    let refused = call_any(api, &format!("{V2}/query_route"), no_op).await;
    assert_eq!(refused["code"], 1000400, "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("operation"));

    // delete_route: by name, then the whole channel; then the stream_to.
    let by_name = json!({
        "condition": {"channel_id": 1001, "plat_name": "bkmonitor"},
        "operation": {"operator_name": "admin", "method": "specification"},
        "specification": {"route": [format!("stream_to_bkmonitor_kafka_{TOPIC}")], "stream_filters": []}
    });
    ok(api, &format!("{V2}/delete_route"), by_name).await;
    let got = ok(api, &format!("{V2}/query_route"), query.clone()).await;
    assert_eq!(got[0]["route"], json!([]), "{got}");
    let all = json!({
        "condition": {"channel_id": 1001, "plat_name": "bkmonitor"},
        "operation": {"operator_name": "admin", "method": "all"}
    });
    ok(api, &format!("{V2}/delete_route"), all.clone()).await;
    assert_eq!(
        ok(api, &format!("{V2}/query_route"), query).await,
        Value::Null
    );
    let gone = call(api, &format!("{V2}/delete_route"), all).await;
    assert_eq!(gone["code"], 1014505, "{gone}");
    ok(api, &format!("{V2}/delete_streamto"), del_st).await;
}

/// Like [`call`] but any HTTP status (validation errors answer 400).
async fn call_any(api: &Api, path: &str, body: Value) -> Value {
    api.post(path, body).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_legacy_names_and_persistence_across_a_restart() {
    let cluster = Cluster::new();
    let mut server = cluster.server(ServerOptions::default()).await;
    let api = server.api.clone();

    // Legacy ESB names with the trailing slash, same bodies.
    let file_st = json!({
        "metadata": {"plat_name": "bkmonitor"},
        "operation": op(),
        "stream_to": {"name": "local_file", "report_mode": "file", "data_log_path": "exported"}
    });
    let st = ok(&api, &format!("{LEGACY}/config_add_streamto/"), file_st).await;
    let st_id = st["stream_to_id"].as_u64().unwrap();
    let add = json!({
        "metadata": {"channel_id": 1200, "plat_name": "bkmonitor", "label": {"odm": "x", "bk_biz_id": 2, "bk_biz_name": "b"}},
        "operation": op(),
        "route": [{"name": "to_file", "stream_to": {"stream_to_id": st_id}}],
        "stream_filters": [{"name": "f1", "field_index": 0, "field_data_type": "string", "field_data_value": "x"}]
    });
    ok(&api, &format!("{LEGACY}/config_add_route/"), add).await;
    let apply = json!({"metadata": {"plat_name": "bkmonitor", "channel_id": 0}, "operation": op()});
    let allocated = ok(&api, &format!("{LEGACY}/config_add_route/"), apply.clone()).await;

    // A file stream_to may not point outside the server's data dir.
    let escape = json!({
        "metadata": {"plat_name": "bkmonitor"},
        "operation": op(),
        "stream_to": {"name": "evil", "report_mode": "file", "data_log_path": "/etc"}
    });
    let refused = call_any(&api, &format!("{V2}/add_streamto"), escape).await;
    assert_eq!(refused["code"], 1000400, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("data_log_path")
    );

    server.kill9();
    server.start_again().await;

    let query =
        json!({"condition": {"plat_name": "bkmonitor", "channel_id": 1200}, "operation": op()});
    let got = ok(&api, &format!("{LEGACY}/config_query_route/"), query).await;
    assert_eq!(got[0]["metadata"]["label"]["bk_biz_id"], 2, "{got}");
    assert_eq!(got[0]["route"][0]["name"], "to_file");
    assert_eq!(got[0]["stream_filters"][0]["name"], "f1");
    let q = json!({"condition": {"plat_name": "bkmonitor"}, "operation": op()});
    let listed = ok(&api, &format!("{LEGACY}/config_query_streamto/"), q).await;
    assert_eq!(
        listed[0]["stream_to"]["data_log_path"], "exported",
        "{listed}"
    );
    // Allocation continues after what was stored before the crash.
    let next = ok(&api, &format!("{V2}/add_route"), apply).await;
    assert_eq!(
        next["channel_id"].as_u64(),
        Some(allocated["channel_id"].as_u64().unwrap() + 1)
    );
}

fn redis_stream_to(port: u16, passwd: &str) -> StreamTo {
    StreamTo {
        stream_to_id: 501,
        plat_name: "bkmonitor".into(),
        label: None,
        name: "redis_snapshot".into(),
        report_mode: ReportMode::Redis,
        body: json!({
            "name": "redis_snapshot", "report_mode": "redis",
            "redis": {"storage_address": [{"ip": "127.0.0.1", "port": port}], "passwd": passwd}
        }),
    }
}

fn redis_route(redis: Value) -> Route {
    Route {
        name: "snapshot".into(),
        stream_to_id: 501,
        stream_to: json!({"stream_to_id": 501, "redis": redis}),
        filter_name_and: vec![],
        filter_name_or: vec![],
    }
}

fn batch(n: usize) -> Batch {
    Batch {
        source: Arc::from("0:10.0.0.1"),
        seq: 9,
        records: (0..n)
            .map(|i| Record {
                data_id: 1001,
                received_ms: 1000 + i as u64,
                payload: format!("{{\"i\":{i}}}").into_bytes().into(),
                ..Record::default()
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_redis_sink_publishes_and_streams_to_a_real_redis() {
    assert!(
        test_redis::available(),
        "redis-server is not installed: run scripts/install-deps.sh --tests"
    );
    let mut redis = RedisServer::start(Some("s3cret")).await;
    let client = redis.client(Some("s3cret"));

    // PUBLISH: a subscriber sees every payload, in order.
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("snapshot2").await.unwrap();
    let st = redis_stream_to(redis.port, "s3cret");
    let sink = RedisSink::new(
        &st,
        1001,
        &redis_route(json!({"channel_name": "snapshot2"})),
    )
    .unwrap();
    sink.write_batch(&batch(100)).await.unwrap();
    let mut messages = pubsub.on_message();
    for i in 0..100 {
        let msg = tokio::time::timeout(
            Duration::from_secs(5),
            futures::StreamExt::next(&mut messages),
        )
        .await
        .expect("a published record")
        .unwrap();
        assert_eq!(
            msg.get_payload::<String>().unwrap(),
            format!("{{\"i\":{i}}}")
        );
    }
    drop(messages);

    // XADD: the records stay in the stream with their origin.
    let stream = RedisSink::new(
        &st,
        1001,
        &redis_route(json!({"channel_name": "gse:1001", "mode": "stream", "maxlen": 1000})),
    )
    .unwrap();
    stream.write_batch(&batch(3)).await.unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let len: u64 = redis::cmd("XLEN")
        .arg("gse:1001")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 3);
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("gse:1001")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let last = &reply.ids[2];
    assert_eq!(last.get::<String>("data").as_deref(), Some("{\"i\":2}"));
    assert_eq!(last.get::<String>("agent").as_deref(), Some("0:10.0.0.1"));
    assert_eq!(last.get::<u64>("time_ms"), Some(1002));
    assert_eq!(last.get::<u64>("dataid"), Some(1001));

    // A wrong password is refused clearly, and so is a stopped server.
    let wrong = RedisSink::new(
        &redis_stream_to(redis.port, "nope"),
        1001,
        &redis_route(json!({"channel_name": "c"})),
    )
    .unwrap();
    let err = wrong.write_batch(&batch(1)).await.unwrap_err().to_string();
    assert!(err.contains("redis 127.0.0.1:"), "{err}");
    redis.stop();
    let err = sink.write_batch(&batch(1)).await.unwrap_err().to_string();
    assert!(err.contains("could not store 1 records"), "{err}");
}

/// A Redis stream_to whose `redis` object is `redis`.
fn redis_stream_to_with(redis: Value) -> StreamTo {
    StreamTo {
        body: json!({"name": "redis_snapshot", "report_mode": "redis", "redis": redis}),
        ..redis_stream_to(0, "")
    }
}

/// XLEN of `key` on `server`.
async fn xlen(server: &RedisServer, password: &str, key: &str) -> u64 {
    let mut conn = server
        .client(Some(password))
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("XLEN")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d6_redis_sink_follows_the_sentinels_master_across_a_failover() {
    use gse_testkit::sentinel::Sentinel;
    let master = RedisServer::start(Some("pw")).await;
    let replica = RedisServer::start_replica(&master).await;
    let sentinel = Sentinel::start(&master, "gse-data", None).await;
    let (host, port) = sentinel
        .addr()
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse::<u16>().unwrap()))
        .unwrap();
    let st = redis_stream_to_with(json!({
        "storage_address": [{"ip": host, "port": port}], "master_name": "gse-data", "passwd": "pw"
    }));
    let route = redis_route(json!({"channel_name": "gse:sentinel", "mode": "stream"}));
    let sink = RedisSink::new(&st, 1001, &route).unwrap();
    sink.write_batch(&batch(5)).await.unwrap();
    assert_eq!(
        xlen(&master, "pw", "gse:sentinel").await,
        5,
        "written to the master"
    );
    gse_testkit::eventually(
        "the replica has the records",
        Duration::from_secs(10),
        || async {
            (xlen(&replica, "pw", "gse:sentinel").await == 5)
                .then_some(())
                .ok_or_else(String::new)
        },
    )
    .await;

    // The sentinels promote the replica: the sink follows without being
    // made again (a batch in between may fail, and the agent resends it).
    assert_eq!(sentinel.failover().await, replica.port);
    gse_testkit::eventually(
        "the sink writes to the new master",
        Duration::from_secs(30),
        || async {
            sink.write_batch(&batch(2))
                .await
                .map_err(|e| e.to_string())?;
            (xlen(&replica, "pw", "gse:sentinel").await >= 7)
                .then_some(())
                .ok_or_else(|| "not on the new master yet".to_string())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d6_redis_sink_uses_the_first_address_that_answers() {
    let mut first = RedisServer::start(Some("pw")).await;
    let mut second = RedisServer::start(Some("pw")).await;
    let st = redis_stream_to_with(json!({"passwd": "pw", "storage_address": [
        {"ip": "127.0.0.1", "port": first.port}, {"ip": "127.0.0.1", "port": second.port}]}));
    let route = redis_route(json!({"channel_name": "gse:multi", "mode": "stream"}));
    let sink = RedisSink::new(&st, 1001, &route).unwrap();
    sink.write_batch(&batch(3)).await.unwrap();
    assert_eq!(xlen(&first, "pw", "gse:multi").await, 3);
    assert_eq!(xlen(&second, "pw", "gse:multi").await, 0);
    // The first goes away: the batch that finds it gone fails (the agent
    // resends it), the next goes to the second.
    first.stop();
    let _ = sink.write_batch(&batch(1)).await;
    sink.write_batch(&batch(4)).await.unwrap();
    assert_eq!(xlen(&second, "pw", "gse:multi").await, 4);
    // Neither answers: the error names both.
    second.stop();
    let err = sink.write_batch(&batch(1)).await;
    let err = match err {
        Err(e) => e.to_string(),
        Ok(()) => sink.write_batch(&batch(1)).await.unwrap_err().to_string(),
    };
    assert!(
        err.contains(&format!("127.0.0.1:{}, 127.0.0.1:", first.port)),
        "{err}"
    );
}

// === records through a real agent, per route ===

/// A 0xC01 frame (COMPAT.md §1.2): 24-byte big-endian header + payload.
fn frame(data_id: u32, payload: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + payload.len());
    for v in [0xC01, data_id, 1_700_000_000, payload.len() as u32, 0, 0] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(payload.as_bytes());
    out
}

/// Sends `<tag>-0..n` for `data_id` through the agent's local socket.
pub(crate) async fn send(
    agent: &gse_testkit::AgentProc,
    data_id: u32,
    tag: &str,
    n: usize,
) -> Vec<String> {
    use tokio::io::AsyncWriteExt;
    let path = agent.dir.join("data").join("ipc.state.report");
    let mut conn =
        gse_testkit::eventually("the agent's data socket", Duration::from_secs(20), || {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(&path)
                    .await
                    .map_err(|e| e.to_string())
            }
        })
        .await;
    let payloads: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    let mut buf = Vec::new();
    for p in &payloads {
        buf.extend(frame(data_id, p));
    }
    conn.write_all(&buf).await.unwrap();
    conn.shutdown().await.unwrap();
    payloads
}

/// The `data` of every line of a file sink.
pub(crate) fn file_payloads(path: &std::path::Path) -> Vec<String> {
    gse_testkit::read_lines(path)
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            v["data"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

/// The `data` field of every entry of a Redis stream.
async fn stream_payloads(client: &redis::Client, key: &str) -> Vec<String> {
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    reply
        .ids
        .iter()
        .filter_map(|e| e.get::<String>("data"))
        .collect()
}

pub(crate) fn has_all(got: &[String], want: &[String]) -> Result<(), String> {
    let missing: Vec<&String> = want.iter().filter(|w| !got.contains(w)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} missing, e.g. {:?}",
            missing.len(),
            missing.first()
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_records_reach_every_route_and_route_changes_apply_without_restart() {
    assert!(
        test_redis::available(),
        "redis-server is not installed: run scripts/install-deps.sh --tests"
    );
    let redis = RedisServer::start(None).await;
    let client = redis.client(None);
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let api = &server.api;
    let data_id = 1300;

    let add_st = |stream_to: Value| json!({"metadata": {"plat_name": "bkmonitor"}, "operation": op(), "stream_to": stream_to});
    let file_st = ok(
        api,
        &format!("{V2}/add_streamto"),
        add_st(json!({"name": "file", "report_mode": "file", "data_log_path": "routes"})),
    )
    .await["stream_to_id"]
        .clone();
    let redis_st = ok(
        api,
        &format!("{V2}/add_streamto"),
        add_st(json!({
            "name": "redis", "report_mode": "redis",
            "redis": {"storage_address": [{"ip": "127.0.0.1", "port": redis.port}]}
        })),
    )
    .await["stream_to_id"]
        .clone();
    let add = json!({
        "metadata": {"plat_name": "bkmonitor", "channel_id": data_id},
        "operation": op(),
        "route": [{"name": "to_file", "stream_to": {"stream_to_id": file_st}}]
    });
    ok(api, &format!("{V2}/add_route"), add).await;

    let agent = cluster.agent(&server, gse_testkit::AgentOptions::ip("127.0.0.1"));
    let file = server
        .dir
        .join("data/routes")
        .join(format!("{data_id}_to_file.jsonl"));
    let first = send(&agent, data_id, "a", 50).await;
    gse_testkit::eventually(
        "the first records in the file route",
        Duration::from_secs(20),
        || async { has_all(&file_payloads(&file), &first) },
    )
    .await;

    // Two Redis routes join the channel: a stream and a pub/sub channel.
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("gse_pub_1300").await.unwrap();
    let update = json!({
        "condition": {"channel_id": data_id, "plat_name": "bkmonitor"},
        "operation": op(),
        "specification": {"route": [
            {"name": "to_stream", "stream_to": {"stream_to_id": redis_st, "redis": {"channel_name": "gse:1300", "mode": "stream"}}},
            {"name": "to_pub", "stream_to": {"stream_to_id": redis_st, "redis": {"channel_name": "gse_pub_1300"}}}
        ]}
    });
    ok(api, &format!("{V2}/update_route"), update).await;
    let second = send(&agent, data_id, "b", 50).await;
    // Records of a data id without a route go nowhere.
    send(&agent, 4242, "unrouted", 5).await;

    gse_testkit::eventually(
        "the second records in the file route",
        Duration::from_secs(20),
        || async { has_all(&file_payloads(&file), &second) },
    )
    .await;
    gse_testkit::eventually(
        "the second records in the Redis stream",
        Duration::from_secs(20),
        || async { has_all(&stream_payloads(&client, "gse:1300").await, &second) },
    )
    .await;
    let mut messages = pubsub.on_message();
    let mut published = Vec::new();
    while has_all(&published, &second).is_err() {
        let msg = tokio::time::timeout(
            Duration::from_secs(20),
            futures::StreamExt::next(&mut messages),
        )
        .await
        .unwrap_or_else(|_| panic!("published records stopped after {}", published.len()))
        .unwrap();
        published.push(msg.get_payload::<String>().unwrap());
    }
    // The stream only got what was sent after its route existed.
    let streamed = stream_payloads(&client, "gse:1300").await;
    assert!(
        !streamed.iter().any(|p| p.starts_with("a-")),
        "{streamed:?}"
    );
    assert!(
        !file_payloads(&file)
            .iter()
            .any(|p| p.starts_with("unrouted"))
    );

    // Deleting the file route stops the file; the stream still gets data.
    let del = json!({
        "condition": {"channel_id": data_id, "plat_name": "bkmonitor"},
        "operation": {"operator_name": "admin", "method": "specification"},
        "specification": {"route": ["to_file"]}
    });
    ok(api, &format!("{V2}/delete_route"), del).await;
    let lines_before = file_payloads(&file).len();
    let third = send(&agent, data_id, "c", 20).await;
    gse_testkit::eventually(
        "the third records in the Redis stream",
        Duration::from_secs(20),
        || async { has_all(&stream_payloads(&client, "gse:1300").await, &third) },
    )
    .await;
    assert_eq!(
        file_payloads(&file).len(),
        lines_before,
        "a deleted route still writes"
    );
}
