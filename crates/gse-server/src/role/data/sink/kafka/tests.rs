//! Kafka sink tests that need no broker: validation, request cutting, the
//! message shape, the partitioner, and the error when nothing listens. The
//! tests against a real Kafka-protocol broker (tansu) are in gse-testkit's
//! `tests/it/d_kafka.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gse_core::seams::{Batch, Record, Sink};

use super::*;

fn target() -> KafkaTarget {
    KafkaTarget {
        stream_to_name: "mq_stream_to_1".into(),
        storage_address: vec![("127.0.0.1".into(), 9092)],
        topic_name: "0bkmonitor_10010".into(),
        ..KafkaTarget::default()
    }
}

fn batch(payloads: &[usize]) -> Batch {
    Batch {
        source: Arc::from("0:10.0.0.1"),
        seq: 42,
        records: payloads
            .iter()
            .enumerate()
            .map(|(i, &n)| Record {
                data_id: 1001,
                received_ms: 1_700_000_000_000 + i as u64,
                payload: Bytes::from(vec![b'x'; n]),
                ..Record::default()
            })
            .collect(),
    }
}

#[test]
fn plain_target_validates() {
    let c = target().validate().unwrap();
    assert_eq!(c.brokers, vec!["127.0.0.1:9092"]);
    assert_eq!(c.topic, "0bkmonitor_10010");
    assert_eq!(c.partitions, 1);
    assert!(c.sasl.is_none());
}

#[test]
fn every_problem_is_reported_at_once() {
    let t = KafkaTarget {
        storage_address: vec![],
        topic_name: "bad topic!".into(),
        partition: Some(-3),
        security_protocol: Some("TLS13".into()),
        ..target()
    };
    let err = t.validate().unwrap_err();
    assert_eq!(err.problems.len(), 4, "{err}");
    let text = err.to_string();
    for needle in [
        "mq_stream_to_1",
        "storage_address",
        "bad topic!",
        "partition -3",
        "security_protocol 'TLS13' is unknown",
    ] {
        assert!(text.contains(needle), "{needle} missing from: {text}");
    }
}

#[test]
fn ipv6_brokers_are_bracketed_and_port_zero_refused() {
    let t = KafkaTarget {
        storage_address: vec![("::1".into(), 9092), ("10.0.0.2".into(), 0)],
        ..target()
    };
    let err = t.validate().unwrap_err();
    assert_eq!(err.problems, vec!["storage_address 10.0.0.2 has port 0"]);
    let t = KafkaTarget {
        storage_address: vec![("::1".into(), 9092)],
        ..target()
    };
    assert_eq!(t.validate().unwrap().brokers, vec!["[::1]:9092"]);
}

#[test]
fn sasl_mechanisms_map_or_are_refused() {
    let with = |mech: Option<&str>, proto: Option<&str>| KafkaTarget {
        sasl_username: Some("u".into()),
        sasl_passwd: Some("p".into()),
        sasl_mechanisms: mech.map(Into::into),
        security_protocol: proto.map(Into::into),
        ..target()
    };
    let mech = |t: KafkaTarget| t.validate().map(|c| c.sasl.map(|s| s.mechanism));
    assert_eq!(mech(with(None, None)).unwrap(), Some(SaslMechanism::Plain));
    assert_eq!(
        mech(with(Some("scram-sha-512"), Some("SASL_PLAINTEXT"))).unwrap(),
        Some(SaslMechanism::ScramSha512)
    );
    assert_eq!(
        mech(with(Some("SCRAM-SHA-256"), None)).unwrap(),
        Some(SaslMechanism::ScramSha256)
    );
    let err = with(Some("GSSAPI"), None).validate().unwrap_err();
    assert!(err.to_string().contains("GSSAPI"), "{err}");
    let err = with(None, Some("PLAINTEXT")).validate().unwrap_err();
    assert!(err.to_string().contains("contradicts"), "{err}");
    let no_pass = KafkaTarget {
        sasl_passwd: None,
        ..with(None, Some("SASL_PLAINTEXT"))
    };
    assert!(
        no_pass
            .validate()
            .unwrap_err()
            .to_string()
            .contains("sasl_passwd")
    );
}

#[test]
fn sasl_password_is_not_in_debug_output() {
    let c = KafkaTarget {
        sasl_username: Some("u".into()),
        sasl_passwd: Some("s3cret".into()),
        ..target()
    }
    .validate()
    .unwrap();
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[test]
fn big_batches_are_cut_below_the_request_limit() {
    let b = batch(&[400, 400, 400, 2000, 10]);
    let src = b.source.len();
    let max = 2 * record_size(400, src);
    assert_eq!(request_cuts(&b.records, src, max), vec![2, 3, 4, 5]);
    assert!(request_cuts(&[], src, max).is_empty());
    assert_eq!(request_cuts(&b.records, src, usize::MAX), vec![5]);
}

#[test]
fn records_carry_value_key_and_dedup_headers() {
    let b = batch(&[3, 5]);
    let recs = to_kafka_records(&b, 1, 2);
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r.value.as_deref(), Some(&b"xxxxx"[..]));
    assert_eq!(r.key.as_deref(), Some(&b"0:10.0.0.1"[..]));
    assert_eq!(r.headers[HEADER_SEQ], b"42");
    assert_eq!(r.headers[HEADER_INDEX], b"1");
    assert_eq!(r.headers[HEADER_DATA_ID], b"1001");
    assert_eq!(r.headers[HEADER_AGENT], b"0:10.0.0.1");
    assert_eq!(r.timestamp.timestamp_millis(), 1_700_000_000_001);
    assert!(!r.headers.contains_key(HEADER_PEER_UID));
}

#[test]
fn records_name_their_sender_when_known() {
    let mut b = batch(&[3]);
    b.records[0].peer_uid = Some(0);
    b.records[0].peer_pid = Some(77);
    let r = &to_kafka_records(&b, 0, 1)[0];
    assert_eq!(r.headers[HEADER_PEER_UID], b"0");
    assert_eq!(r.headers[HEADER_PEER_PID], b"77");
}

#[test]
fn partitioner_is_stable_and_spreads() {
    let sink = KafkaSink::from_target(KafkaTarget {
        partition: Some(4),
        ..target()
    })
    .unwrap();
    // FNV-1a is fixed: the same agent always lands on the same partition.
    assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    let parts: std::collections::BTreeSet<i32> = (0..64)
        .map(|i| sink.partition_for(&format!("0:10.0.0.{i}")))
        .collect();
    assert!(parts.iter().all(|p| (0..4).contains(p)));
    assert_eq!(parts.len(), 4, "64 agents should hit all 4 partitions");
    let single = KafkaSink::from_target(target()).unwrap();
    assert_eq!(single.partition_for("0:10.0.0.9"), 0);
}

#[tokio::test]
async fn no_broker_is_an_error_naming_the_brokers_not_a_hang() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = KafkaTarget {
        storage_address: vec![("127.0.0.1".into(), port)],
        ..target()
    }
    .validate()
    .unwrap();
    config.retry_deadline = Duration::from_millis(300);
    let sink = KafkaSink::new(config);
    let began = Instant::now();
    let err = sink.write_batch(&batch(&[10])).await.unwrap_err();
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("mq_stream_to_1"), "{text}");
    // Empty batches need no broker.
    sink.write_batch(&batch(&[])).await.unwrap();
}

#[test]
fn tls_protocols_take_a_ca_and_sasl_ssl_takes_credentials() {
    let ssl = KafkaTarget {
        security_protocol: Some("ssl".into()),
        ..target()
    }
    .validate()
    .unwrap();
    assert_eq!(
        ssl.tls.map(|t| t.ca_file),
        Some(std::path::PathBuf::from(super::config::SYSTEM_CA_BUNDLE)),
        "the system's bundle by default"
    );
    assert!(ssl.sasl.is_none());
    let sasl_ssl = KafkaTarget {
        security_protocol: Some("SASL_SSL".into()),
        sasl_username: Some("u".into()),
        sasl_passwd: Some("p".into()),
        sasl_mechanisms: Some("SCRAM-SHA-512".into()),
        ssl_cafile: Some("/etc/gse/kafka-ca.pem".into()),
        compression: Some("ZSTD".into()),
        ..target()
    }
    .validate()
    .unwrap();
    assert_eq!(
        sasl_ssl.tls.unwrap().ca_file,
        std::path::PathBuf::from("/etc/gse/kafka-ca.pem")
    );
    assert_eq!(sasl_ssl.sasl.unwrap().mechanism, SaslMechanism::ScramSha512);
    assert_eq!(sasl_ssl.compression, KafkaCompression::Zstd);
    for (protocol, cafile, user, needle) in [
        ("SSL", None, Some("u"), "security_protocol SSL contradicts"),
        ("PLAINTEXT", Some("/x.pem"), None, "ssl_cafile is given but"),
        ("SSL", Some("ca.pem"), None, "not an absolute path"),
    ] {
        let err = KafkaTarget {
            security_protocol: Some(protocol.into()),
            ssl_cafile: cafile.map(str::to_string),
            sasl_username: user.map(str::to_string),
            sasl_passwd: user.map(str::to_string),
            ..target()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
}
