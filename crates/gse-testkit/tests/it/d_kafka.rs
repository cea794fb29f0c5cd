//! D5 Kafka sink against a real Kafka-protocol broker: tansu (built once by
//! `scripts/install-deps.sh --tests`; a missing binary fails these tests).
//!
//! Sink level: batches produced with acks=all are fetched back with the
//! same client library (values, order, key, dedup headers, timestamps),
//! big batches are cut into several requests, records spread over
//! partitions by agent, a down broker is an error (not a hang) and the sink
//! recovers when it is back, a missing topic names itself. End to end: a
//! stream_to and route made through the HTTP API, records written to an
//! agent's local socket in COMPAT.md §1.2 frames, read back from the topic.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gse_core::seams::{Batch, Record, Sink};
use gse_server::role::data::routes::model::{ReportMode, Route, StreamTo};
use gse_server::role::data::sink::kafka::{
    HEADER_AGENT, HEADER_DATA_ID, HEADER_INDEX, HEADER_SEQ, KafkaSink, KafkaTarget,
};
use gse_testkit::relay::Relay;
use gse_testkit::tansu::Tansu;
use gse_testkit::{AgentOptions, AgentProc, Api, Cluster, ServerOptions, eventually};
use rskafka::record::RecordAndOffset;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

const TOPIC: &str = "0bkmonitor_10010";

fn stream_to(port: u16) -> StreamTo {
    StreamTo {
        stream_to_id: 500,
        plat_name: "bkmonitor".into(),
        label: None,
        name: "mq_stream_to_1".into(),
        report_mode: ReportMode::Kafka,
        body: json!({
            "name": "mq_stream_to_1", "report_mode": "kafka",
            "kafka": {"storage_address": [{"ip": "127.0.0.1", "port": port}]}
        }),
    }
}

fn route(kafka: Value) -> Route {
    Route {
        name: format!("stream_to_bkmonitor_kafka_{TOPIC}"),
        stream_to_id: 500,
        stream_to: json!({"stream_to_id": 500, "kafka": kafka}),
        filter_name_and: vec![],
        filter_name_or: vec![],
    }
}

fn batch(source: &str, seq: u64, n: usize, size: usize) -> Batch {
    Batch {
        source: Arc::from(source),
        seq,
        records: (0..n)
            .map(|i| {
                let mut payload = format!("{{\"seq\":{seq},\"i\":{i}}}").into_bytes();
                payload.resize(payload.len().max(size), b' ');
                Record {
                    data_id: 10010,
                    received_ms: 1_700_000_000_000 + i as u64,
                    payload: payload.into(),
                    ..Record::default()
                }
            })
            .collect(),
    }
}

fn text(v: &Option<Vec<u8>>) -> String {
    String::from_utf8_lossy(v.as_deref().unwrap_or_default()).into_owned()
}

fn header(r: &RecordAndOffset, name: &str) -> String {
    String::from_utf8_lossy(&r.record.headers[name]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_kafka_sink_produces_to_tansu_and_reads_back() {
    let cluster = Cluster::new();
    let tansu = Tansu::start(&cluster.path.join("tansu")).await;
    tansu.create_topic(TOPIC, 1).await;
    let sink = KafkaSink::from_route(
        &stream_to(tansu.port()),
        &route(json!({"topic_name": TOPIC})),
    )
    .unwrap();

    sink.write_batch(&batch("0:10.0.0.1", 7, 100, 0))
        .await
        .unwrap();
    let got = tansu.fetch_all(TOPIC, 0).await;
    assert_eq!(got.len(), 100);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.offset, i as i64);
        assert_eq!(text(&r.record.value), format!("{{\"seq\":7,\"i\":{i}}}"));
        assert_eq!(text(&r.record.key), "0:10.0.0.1");
        assert_eq!(header(r, HEADER_AGENT), "0:10.0.0.1");
        assert_eq!(header(r, HEADER_SEQ), "7");
        assert_eq!(header(r, HEADER_INDEX), i.to_string());
        assert_eq!(header(r, HEADER_DATA_ID), "10010");
        assert_eq!(
            r.record.timestamp.timestamp_millis(),
            1_700_000_000_000 + i as i64
        );
    }

    // A batch over the request limit goes as several requests, in order.
    let mut config = KafkaTarget::from_route(
        &stream_to(tansu.port()),
        &route(json!({"topic_name": TOPIC})),
    )
    .unwrap()
    .validate()
    .unwrap();
    config.max_request_bytes = 64 * 1024;
    let small_requests = KafkaSink::new(config);
    small_requests
        .write_batch(&batch("0:10.0.0.2", 8, 40, 10 * 1024))
        .await
        .unwrap();
    let got = tansu.fetch_all(TOPIC, 0).await;
    assert_eq!(got.len(), 140);
    let tail: Vec<String> = got[100..].iter().map(|r| header(r, HEADER_INDEX)).collect();
    let want: Vec<String> = (0..40).map(|i| i.to_string()).collect();
    assert_eq!(tail, want);
    assert!(
        got[100..]
            .iter()
            .all(|r| r.record.value.as_ref().unwrap().len() == 10 * 1024)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_kafka_sink_spreads_agents_over_partitions() {
    let cluster = Cluster::new();
    let tansu = Tansu::start(&cluster.path.join("tansu")).await;
    tansu.create_topic(TOPIC, 3).await;
    let sink = KafkaSink::from_route(
        &stream_to(tansu.port()),
        &route(json!({"topic_name": TOPIC, "partition": 3, "biz_id": 0})),
    )
    .unwrap();
    let agents: Vec<String> = (1..=12).map(|i| format!("0:10.0.1.{i}")).collect();
    for (seq, agent) in agents.iter().enumerate() {
        sink.write_batch(&batch(agent, seq as u64, 5, 0))
            .await
            .unwrap();
    }
    let mut per_agent: BTreeMap<String, (i32, usize)> = BTreeMap::new();
    for p in 0..3 {
        for r in tansu.fetch_all(TOPIC, p).await {
            let e = per_agent.entry(text(&r.record.key)).or_insert((p, 0));
            assert_eq!(e.0, p, "one agent's records stay on one partition");
            e.1 += 1;
        }
    }
    assert_eq!(per_agent.len(), 12);
    for agent in &agents {
        assert_eq!(per_agent[agent], (sink.partition_for(agent), 5), "{agent}");
    }
    let used: std::collections::BTreeSet<i32> = per_agent.values().map(|v| v.0).collect();
    assert!(
        used.len() > 1,
        "12 agents all on one partition: {per_agent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_kafka_sink_errors_while_the_broker_is_down_and_recovers() {
    let cluster = Cluster::new();
    let mut tansu = Tansu::start(&cluster.path.join("tansu")).await;
    tansu.create_topic(TOPIC, 1).await;
    let sink = KafkaSink::from_route(
        &stream_to(tansu.port()),
        &route(json!({"topic_name": TOPIC})),
    )
    .unwrap();
    sink.write_batch(&batch("0:10.0.0.1", 1, 10, 0))
        .await
        .unwrap();

    // Down: an error naming the sink, topic and broker, within the retry
    // deadline (the agent keeps the batch), never a hang or a panic.
    tansu.kill9();
    let began = Instant::now();
    let err = sink
        .write_batch(&batch("0:10.0.0.1", 2, 10, 0))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "{:?}",
        began.elapsed()
    );
    for needle in [
        "mq_stream_to_1",
        TOPIC,
        &tansu.addr(),
        "could not store 10 records",
    ] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }

    // Back (empty: memory storage): the same sink reconnects and stores.
    tansu.start_again().await;
    tansu.create_topic(TOPIC, 1).await;
    sink.write_batch(&batch("0:10.0.0.1", 2, 10, 0))
        .await
        .unwrap();
    let got = tansu.fetch_all(TOPIC, 0).await;
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|r| header(r, HEADER_SEQ) == "2"));

    // A topic nobody created is named in the error; the sink creates none.
    let missing = KafkaSink::from_route(
        &stream_to(tansu.port()),
        &route(json!({"topic_name": "no_such_topic"})),
    )
    .unwrap();
    let err = missing
        .write_batch(&batch("0:10.0.0.1", 3, 1, 0))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no_such_topic") && err.contains("does not create topics"),
        "{err}"
    );
}

// === end to end: API route, agent socket, DataServer, tansu ===

/// A COMPAT.md §1.2 0xC01 frame: 24-byte big-endian header {type, dataid,
/// utctime, bodylen, 0, 0}, then the payload.
fn frame_c01(data_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + payload.len());
    for v in [0xC01, data_id, 1_700_000_000, payload.len() as u32, 0, 0] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// Writes `payloads` as 0xC01 frames on one connection to the agent's
/// local data socket.
async fn send_records(agent: &AgentProc, data_id: u32, payloads: &[String]) {
    let path = agent.dir.join("data").join("ipc.state.report");
    let mut conn = eventually("the agent's data socket", Duration::from_secs(20), || {
        let path = path.clone();
        async move { UnixStream::connect(&path).await.map_err(|e| e.to_string()) }
    })
    .await;
    for p in payloads {
        conn.write_all(&frame_c01(data_id, p.as_bytes()))
            .await
            .unwrap();
    }
    conn.flush().await.unwrap();
}

/// bk-monitor's `add_streamto` for a Kafka cluster, then its `add_route`
/// for `data_id` into `topic`.
async fn kafka_route(api: &Api, broker_port: u16, data_id: u32, topic: &str) {
    let (status, v) = api
        .post(
            "/api/v2/data/add_streamto",
            json!({
                "operation": {"operator_name": "admin"},
                "metadata": {"plat_name": "bkmonitor"},
                "stream_to": {
                    "name": "mq_stream_to_1",
                    "report_mode": "kafka",
                    "kafka": {"storage_address": [{"ip": "127.0.0.1", "port": broker_port}]}
                }
            }),
        )
        .await;
    assert_eq!((status, &v["code"]), (200, &json!(0)), "{v}");
    let stream_to_id = v["data"]["stream_to_id"].as_u64().expect("stream_to_id");
    let (status, v) = api
        .post(
            "/api/v2/data/add_route",
            json!({
                "operation": {"operator_name": "admin"},
                "metadata": {"plat_name": "bkmonitor", "channel_id": data_id},
                "route": [{
                    "name": format!("stream_to_bkmonitor_kafka_{topic}"),
                    "stream_to": {"stream_to_id": stream_to_id, "kafka": {"topic_name": topic}}
                }]
            }),
        )
        .await;
    assert_eq!((status, &v["code"]), (200, &json!(0)), "{v}");
    assert_eq!(v["data"]["channel_id"], data_id, "{v}");
}

/// Waits until the topic holds every payload of `want` (duplicates from
/// at-least-once delivery allowed); returns the records.
async fn wait_for(tansu: &Tansu, topic: &str, want: &[String]) -> Vec<RecordAndOffset> {
    eventually(
        "the records in the Kafka topic",
        Duration::from_secs(60),
        || async {
            let got = tansu.fetch_all(topic, 0).await;
            let values: BTreeSet<String> = got.iter().map(|r| text(&r.record.value)).collect();
            let missing = want.iter().filter(|w| !values.contains(*w)).count();
            if missing == 0 {
                Ok(got)
            } else {
                Err(format!(
                    "{missing} of {} missing, {} in the topic",
                    want.len(),
                    got.len()
                ))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_agent_records_reach_kafka_through_an_api_route() {
    const DATA_ID: u32 = 10010;
    let cluster = Cluster::new();
    let mut tansu = Tansu::start(&cluster.path.join("tansu")).await;
    tansu.create_topic(TOPIC, 1).await;
    let server = cluster.server(ServerOptions::default()).await;
    kafka_route(&server.api, tansu.port(), DATA_ID, TOPIC).await;
    let agent = cluster.agent(&server, AgentOptions::ip("127.0.0.1"));

    // Records written to the agent's socket arrive in the topic, as sent,
    // keyed by the agent, with their data id.
    let first: Vec<String> = (0..50)
        .map(|i| format!("{{\"n\":{i},\"part\":1}}"))
        .collect();
    send_records(&agent, DATA_ID, &first).await;
    let got = wait_for(&tansu, TOPIC, &first).await;
    let values: Vec<String> = got.iter().map(|r| text(&r.record.value)).collect();
    assert_eq!(values[..first.len()], first[..], "in order, first delivery");
    for r in &got {
        assert_eq!(text(&r.record.key), "0:127.0.0.1");
        assert_eq!(header(r, HEADER_DATA_ID), DATA_ID.to_string());
    }

    // The broker dies: records sent meanwhile are refused by the sink (once
    // its request timeout passed, 10 s) and kept by the agent; once the
    // broker is back they all arrive.
    tansu.kill9();
    let second: Vec<String> = (0..30)
        .map(|i| format!("{{\"n\":{i},\"part\":2}}"))
        .collect();
    send_records(&agent, DATA_ID, &second).await;
    eventually(
        "the sink to refuse a batch",
        Duration::from_secs(40),
        || async {
            let log = server.log();
            if log.contains("Kafka did not store a batch") && log.contains("mq_stream_to_1") {
                Ok(())
            } else {
                Err("no refusal in the server log yet".to_string())
            }
        },
    )
    .await;
    tansu.start_again().await;
    tansu.create_topic(TOPIC, 1).await;
    let got = wait_for(&tansu, TOPIC, &second).await;
    let unique: BTreeSet<String> = got.iter().map(|r| text(&r.record.value)).collect();
    assert_eq!(
        unique.len(),
        second.len(),
        "only the second part (memory broker restarted)"
    );
    eprintln!(
        "after the broker restart: {} records, {} duplicates",
        got.len(),
        got.len() - unique.len()
    );
}

/// A stream_to for brokers behind `addr`, with more `kafka` fields.
fn stream_to_at(port: u16, extra: Value) -> StreamTo {
    let mut s = stream_to(port);
    let kafka = s.body["kafka"].as_object_mut().unwrap();
    for (k, v) in extra.as_object().unwrap() {
        kafka.insert(k.clone(), v.clone());
    }
    s
}

/// Tansu behind a relay (terminating TLS with `tls` when given) that it
/// advertises, so clients reach it only through the relay; the topic made.
async fn fronted(cluster: &Cluster, tls: Option<&gse_core::tls::TlsFiles>) -> (Tansu, Relay) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut tansu = Tansu::start_advertising(&cluster.path.join("tansu"), Some(port)).await;
    let relay = Relay::start(listener, tansu.addr().parse().unwrap(), tls);
    let client_tls = tls.map(|t| gse_core::tls::ca_client_config(&t.ca_file).unwrap());
    tansu.set_front(relay.addr.to_string(), client_tls);
    tansu.create_topic(TOPIC, 1).await;
    (tansu, relay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d6_kafka_sink_speaks_tls_to_the_brokers_and_checks_their_certificate() {
    use gse_core::certs::CertKind;
    let cluster = Cluster::new();
    let front = cluster.tls(CertKind::Server);
    let (tansu, relay) = fronted(&cluster, Some(&front)).await;
    let port = relay.addr.port();
    let ca = front.ca_file.display().to_string();

    let sink = KafkaSink::from_route(
        &stream_to_at(port, json!({"security_protocol": "SSL", "ssl_cafile": ca})),
        &route(json!({"topic_name": TOPIC})),
    )
    .unwrap();
    sink.write_batch(&batch("0:10.0.0.1", 1, 20, 0))
        .await
        .unwrap();
    let got = tansu.fetch_all(TOPIC, 0).await;
    assert_eq!(got.len(), 20);
    assert_eq!(text(&got[19].record.value), "{\"seq\":1,\"i\":19}");

    // Brokers whose certificate is not from the CA given: refused, named.
    let other = Cluster::new();
    let wrong_ca = other.tls(CertKind::Server).ca_file.display().to_string();
    let sink = KafkaSink::from_route(
        &stream_to_at(
            port,
            json!({"security_protocol": "SSL", "ssl_cafile": wrong_ca}),
        ),
        &route(json!({"topic_name": TOPIC})),
    )
    .unwrap();
    let err = sink
        .write_batch(&batch("0:10.0.0.1", 2, 1, 0))
        .await
        .expect_err("an unknown CA is refused");
    let text = err.to_string();
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    assert_eq!(
        tansu.fetch_all(TOPIC, 0).await.len(),
        20,
        "nothing more arrived"
    );

    // Plain Kafka to a TLS front fails too (no silent downgrade).
    let plain =
        KafkaSink::from_route(&stream_to(port), &route(json!({"topic_name": TOPIC}))).unwrap();
    assert!(
        plain
            .write_batch(&batch("0:10.0.0.1", 3, 1, 0))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d6_kafka_sink_compresses_with_lz4_and_zstd() {
    let cluster = Cluster::new();
    let (tansu, relay) = fronted(&cluster, None).await;
    let port = relay.addr.port();
    // 200 records of 10 KiB of spaces: 2 MB that compress to almost nothing.
    let big = |seq| batch("0:10.0.0.1", seq, 200, 10 * 1024);
    let mut sent = Vec::new();
    for (seq, compression) in [(1, "none"), (2, "lz4"), (3, "zstd")] {
        let sink = KafkaSink::from_route(
            &stream_to_at(port, json!({"compression": compression})),
            &route(json!({"topic_name": TOPIC})),
        )
        .unwrap();
        let before = relay.bytes_up();
        sink.write_batch(&big(seq)).await.unwrap();
        sent.push((compression, relay.bytes_up() - before));
    }
    let plain = sent[0].1;
    assert!(plain > 2_000_000, "{sent:?}");
    for (name, bytes) in &sent[1..] {
        assert!(
            *bytes < plain / 20,
            "{name} sent {bytes} bytes, plain {plain}: {sent:?}"
        );
    }
    // And every record reads back whole.
    let got = tansu.fetch_all(TOPIC, 0).await;
    assert_eq!(got.len(), 600);
    assert!(
        got.iter()
            .all(|r| r.record.value.as_ref().unwrap().len() == 10 * 1024)
    );

    let err = KafkaTarget::from_route(
        &stream_to_at(port, json!({"compression": "brotli"})),
        &route(json!({"topic_name": TOPIC})),
    )
    .unwrap()
    .validate()
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("compression 'brotli' is not supported"),
        "{err}"
    );
}
