//! The route service over a real embedded store: validation, id
//! allocation, table rebuilds, sink reuse and persistence across a reopen.

use std::sync::Arc;

use bytes::Bytes;
use gse_core::seams::{Batch, Record, StateStore};
use serde_json::{Value, json};

use super::validate::{self, StreamToSpec};
use super::*;
use crate::role::data::sink::SinkContext;
use crate::store::EmbeddedStore;

struct Fixture {
    dir: tempfile::TempDir,
    svc: Arc<RouteService>,
}

async fn open(dir: &std::path::Path) -> Arc<RouteService> {
    let store: Arc<dyn StateStore> =
        Arc::new(EmbeddedStore::open(&dir.join("state.sqlite")).unwrap());
    let sinks = SinkContext {
        data_dir: dir.to_path_buf(),
    };
    RouteService::start(store, sinks).await.unwrap()
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let svc = open(dir.path()).await;
    Fixture { dir, svc }
}

/// A request part read as a client's body would be: its typed reading,
/// or the error naming the path.
fn part<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| format!("{}: {}", e.path(), e.inner()))
}

fn stream_to(v: Value) -> Result<StreamToSpec, String> {
    validate::stream_to(part(v)?, "stream_to").map_err(|e| e.to_string())
}

fn spec(v: Value) -> StreamToSpec {
    stream_to(v).unwrap()
}

fn file_spec(path: &str) -> StreamToSpec {
    spec(json!({"name": "f", "report_mode": "file", "data_log_path": path}))
}

fn kafka_spec() -> StreamToSpec {
    spec(json!({
        "name": "mq_stream_to_1", "report_mode": "kafka",
        "kafka": {"storage_address": [{"ip": "127.0.0.1", "port": 9092}]}
    }))
}

fn routes(v: Value) -> Vec<model::Route> {
    validate::routes(part(v["route"].clone()).unwrap(), "").unwrap()
}

fn channel(id: Option<u32>, routes: Vec<model::Route>) -> NewChannel {
    NewChannel {
        plat_name: "bkmonitor".into(),
        label: None,
        channel_id: id,
        routes,
        stream_filters: vec![],
    }
}

fn file_route(name: &str, stream_to_id: u32) -> Value {
    json!({"route": [{"name": name, "stream_to": {"stream_to_id": stream_to_id}}]})
}

fn batch(payload: &str) -> Batch {
    Batch {
        source: Arc::from("0:10.0.0.1"),
        seq: 1,
        records: vec![Record {
            data_id: 1001,
            received_ms: 1,
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            ..Record::default()
        }],
    }
}

#[tokio::test]
async fn ids_are_allocated_from_documented_starts() {
    let f = fixture().await;
    let a = f
        .svc
        .add_stream_to("bkmonitor".into(), None, kafka_spec())
        .await
        .unwrap();
    let b = f
        .svc
        .add_stream_to("bkmonitor".into(), None, file_spec("x"))
        .await
        .unwrap();
    assert_eq!((a, b), (FIRST_STREAM_TO_ID, FIRST_STREAM_TO_ID + 1));
    let c1 = f.svc.add_channel(channel(None, vec![])).await.unwrap();
    let c2 = f.svc.add_channel(channel(None, vec![])).await.unwrap();
    assert_eq!(
        (c1, c2),
        (FIRST_ALLOCATED_CHANNEL_ID, FIRST_ALLOCATED_CHANNEL_ID + 1)
    );
    // A given id is taken as is, once.
    assert_eq!(
        f.svc
            .add_channel(channel(Some(1001), vec![]))
            .await
            .unwrap(),
        1001
    );
    let dup = f
        .svc
        .add_channel(channel(Some(1001), vec![]))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), error::CHANNEL_EXISTS, "{dup}");
}

#[tokio::test]
async fn routes_must_name_existing_stream_tos_with_their_sections() {
    let f = fixture().await;
    let unknown = f
        .svc
        .add_channel(channel(Some(1001), routes(file_route("r", 777))))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), error::UNKNOWN_STREAM_TO);
    assert!(
        unknown
            .to_string()
            .contains("route[0].stream_to.stream_to_id"),
        "{unknown}"
    );
    let kafka = f
        .svc
        .add_stream_to("bkmonitor".into(), None, kafka_spec())
        .await
        .unwrap();
    // A Kafka route needs its topic.
    let err = f
        .svc
        .add_channel(channel(Some(1001), routes(file_route("r", kafka))))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("kafka.topic_name"), "{err}");
    // And a stream_to in use cannot go.
    let ok = json!({"route": [{"name": "r", "stream_to": {"stream_to_id": kafka, "kafka": {"topic_name": "t"}}}]});
    f.svc
        .add_channel(channel(Some(1001), routes(ok)))
        .await
        .unwrap();
    let in_use = f
        .svc
        .delete_stream_to(kafka, "bkmonitor")
        .await
        .unwrap_err();
    assert_eq!(in_use.code(), error::STREAM_TO_IN_USE, "{in_use}");
    // Other platforms do not see it.
    let other = f.svc.delete_stream_to(kafka, "bklog").await.unwrap_err();
    assert_eq!(other.code(), error::NOT_FOUND);
}

#[tokio::test]
async fn file_paths_outside_the_data_dir_are_refused() {
    let f = fixture().await;
    for bad in ["../up", "/etc"] {
        let err = f
            .svc
            .add_stream_to("bkmonitor".into(), None, file_spec(bad))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("data_log_path"), "{err}");
    }
    let long = "a/".repeat(2049);
    for bad in ["x\ny", "x\u{1b}[2J", "x\ty", "x\u{85}", "", long.as_str()] {
        let body = json!({"name": "f", "report_mode": "file", "data_log_path": bad});
        let err = stream_to(body).unwrap_err();
        assert!(
            err.to_string().contains("stream_to.data_log_path"),
            "{bad:?}: {err}"
        );
    }
    let inside = f.dir.path().join("abs").display().to_string();
    f.svc
        .add_stream_to("bkmonitor".into(), None, file_spec(&inside))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_table_follows_every_change_and_reuses_sinks() {
    let f = fixture().await;
    let table = f.svc.table();
    let st = f
        .svc
        .add_stream_to("bkmonitor".into(), None, file_spec("logs"))
        .await
        .unwrap();
    assert!(table.targets(1001).is_none());
    f.svc
        .add_channel(channel(Some(1001), routes(file_route("a", st))))
        .await
        .unwrap();
    let first = table.targets(1001).expect("routed");
    assert_eq!(first.len(), 1);
    first[0].sink.write_batch(&batch("hello")).await.unwrap();
    let written = std::fs::read_to_string(f.dir.path().join("logs/1001_a.jsonl")).unwrap();
    assert!(written.contains("\"data\":\"hello\""), "{written}");

    // Adding a second route keeps the first one's sink.
    f.svc
        .update_channel(1001, "bkmonitor", routes(file_route("b", st)), vec![])
        .await
        .unwrap();
    let second = table.targets(1001).unwrap();
    let names: Vec<&str> = second.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(Arc::ptr_eq(&first[0].sink, &second[0].sink));

    // Changing the stream_to re-makes its sinks, writing to the new place.
    f.svc
        .update_stream_to(st, "bkmonitor", file_spec("moved"))
        .await
        .unwrap();
    let third = table.targets(1001).unwrap();
    assert!(!Arc::ptr_eq(&second[0].sink, &third[0].sink));
    third[1].sink.write_batch(&batch("again")).await.unwrap();
    assert!(f.dir.path().join("moved/1001_b.jsonl").is_file());

    // Deleting one route by name, then the channel.
    f.svc
        .delete_from_channel(1001, "bkmonitor", &["a".to_string()], &[])
        .await
        .unwrap();
    assert_eq!(table.targets(1001).unwrap().len(), 1);
    f.svc.delete_channel(1001, "bkmonitor").await.unwrap();
    assert!(table.targets(1001).is_none());
}

#[tokio::test]
async fn unsupported_modes_get_a_sink_that_refuses_clearly() {
    let f = fixture().await;
    let pulsar = spec(json!({
        "name": "p", "report_mode": "pulsar",
        "pulsar": {"storage_address": [{"ip": "127.0.0.1", "port": 6650}]}
    }));
    let st = f
        .svc
        .add_stream_to("bkmonitor".into(), None, pulsar)
        .await
        .unwrap();
    let r = json!({"route": [{"name": "r", "stream_to": {"stream_to_id": st, "pulsar": {"name": "t"}}}]});
    f.svc
        .add_channel(channel(Some(7), routes(r)))
        .await
        .unwrap();
    let targets = f.svc.table().targets(7).unwrap();
    let err = targets[0].sink.write_batch(&batch("x")).await.unwrap_err();
    assert!(err.to_string().contains("pulsar"), "{err}");
}

#[tokio::test]
async fn routes_survive_a_reopen_with_their_versions() {
    let dir = tempfile::tempdir().unwrap();
    {
        let svc = open(dir.path()).await;
        let st = svc
            .add_stream_to("bkmonitor".into(), None, file_spec("l"))
            .await
            .unwrap();
        svc.add_channel(channel(Some(1001), routes(file_route("a", st))))
            .await
            .unwrap();
        svc.update_channel(1001, "bkmonitor", routes(file_route("b", st)), vec![])
            .await
            .unwrap();
    }
    let svc = open(dir.path()).await;
    let got = svc
        .query_channels(Some(1001), Some("bkmonitor"), None)
        .await;
    assert_eq!(got.len(), 1);
    let q = serde_json::to_value(got[0].to_query()).unwrap();
    assert_eq!(q["metadata"]["version"], "2");
    assert_eq!(q["route"][1]["name"], "b");
    assert_eq!(svc.table().targets(1001).unwrap().len(), 2);
    // Allocation continues after the stored ids.
    let next = svc
        .add_stream_to("bkmonitor".into(), None, file_spec("l"))
        .await
        .unwrap();
    assert_eq!(next, FIRST_STREAM_TO_ID + 1);
}

#[test]
fn request_parts_are_checked_field_by_field() {
    let bad = |v: Value| stream_to(v).unwrap_err();
    assert!(bad(json!({"report_mode": "file"})).contains("missing field `name`"));
    assert!(bad(json!({"name": "", "report_mode": "file"})).contains("stream_to.name"));
    assert!(
        bad(json!({"name": "x", "report_mode": "nats"})).contains("kafka, redis, pulsar or file")
    );
    assert!(bad(json!({"name": "x", "report_mode": "redis"})).contains("storage_address"));
    assert!(
        bad(json!({"name": "x", "report_mode": "kafka", "kafka": {"storage_address": [{"ip": "h", "port": 70000}]}}))
            .contains("stream_to.kafka.storage_address[0].port")
    );
    let r = |v: Value| validate::routes(part(v["route"].clone()).unwrap(), "").map(|r| r.len());
    let dup = json!({"route": [
        {"name": "a", "stream_to": {"stream_to_id": 1}},
        {"name": "a", "stream_to": {"stream_to_id": 1}}
    ]});
    assert!(r(dup).unwrap_err().to_string().contains("appears twice"));
    let many: Vec<Value> = (0..=validate::MAX_ROUTES)
        .map(|i| json!({"name": format!("r{i}"), "stream_to": {"stream_to_id": 1}}))
        .collect();
    assert_eq!(r(json!({"route": many})).unwrap_err().code(), 1000413);
    // Go clients send 0 for "no id".
    let zero: serde_json::Number = part(json!(0)).unwrap();
    assert_eq!(
        validate::opt_id(Some(zero), "metadata.channel_id", validate::MAX_CHANNEL_ID).unwrap(),
        None
    );
    let filters = part(json!([{"name": "f", "field_in": "header"}])).unwrap();
    assert!(validate::filters(Some(filters), "").is_err());
    // A route's own stream_to is checked with its whole path.
    let no_id = json!([{"name": "a", "stream_to": {"kafka": {}}}]);
    let err = validate::routes(part(no_id).unwrap(), "").unwrap_err();
    assert!(
        err.to_string().contains("route[0].stream_to.stream_to_id"),
        "{err}"
    );
}
