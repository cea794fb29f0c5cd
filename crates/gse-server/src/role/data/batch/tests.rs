use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;
use gse_core::seams::{Sink, SinkError};
use parking_lot::Mutex;

use super::*;
use crate::role::data::routes::RouteTarget;
use gse_proto::link::DataRecord;

/// Keeps what it is given; fails while `fail` is set.
#[derive(Default)]
struct FakeSink {
    name: String,
    fail: Mutex<bool>,
    got: Mutex<Vec<Batch>>,
}

#[async_trait]
impl Sink for FakeSink {
    fn name(&self) -> &str {
        &self.name
    }
    async fn write_batch(&self, batch: &Batch) -> Result<(), SinkError> {
        if *self.fail.lock() {
            return Err(SinkError::Store {
                sink: self.name.clone(),
                records: batch.records.len(),
                message: "disk full".into(),
            });
        }
        self.got.lock().push(batch.clone());
        Ok(())
    }
}

struct CountTap {
    data_id: u32,
    seen: Mutex<Vec<(String, Bytes)>>,
}

impl DataTap for CountTap {
    fn data_id(&self) -> u32 {
        self.data_id
    }
    fn observe(&self, source: &str, record: &Record) {
        self.seen
            .lock()
            .push((source.to_string(), record.payload.clone()));
    }
}

fn sink(name: &str) -> Arc<FakeSink> {
    Arc::new(FakeSink {
        name: name.into(),
        ..FakeSink::default()
    })
}

fn table(routes: Vec<(u32, Vec<Arc<FakeSink>>)>) -> RouteTable {
    let table = RouteTable::default();
    let map: HashMap<u32, Arc<[RouteTarget]>> = routes
        .into_iter()
        .map(|(id, sinks)| {
            let targets: Vec<RouteTarget> = sinks
                .into_iter()
                .map(|s| RouteTarget {
                    name: s.name.clone(),
                    sink: s as Arc<dyn Sink>,
                })
                .collect();
            (id, targets.into())
        })
        .collect();
    table.swap(map);
    table
}

fn batch(seq: u64, records: &[(u32, &'static str)]) -> DataBatch {
    DataBatch {
        seq,
        records: records
            .iter()
            .map(|(id, p)| DataRecord {
                data_id: *id,
                received_ms: 1,
                payload: Bytes::from_static(p.as_bytes()),
                ..DataRecord::default()
            })
            .collect(),
    }
}

#[tokio::test]
async fn records_are_split_per_data_id_and_written_to_every_target() {
    let (a, b, c) = (sink("a"), sink("b"), sink("c"));
    let routes = table(vec![(1, vec![a.clone(), b.clone()]), (2, vec![c.clone()])]);
    let handler = BatchHandler::new(routes, Vec::new());
    let source: Arc<str> = "0:127.0.0.1".into();
    let stored = handler
        .store(
            &source,
            batch(7, &[(1, "x"), (2, "y"), (1, "z"), (3, "lost")]),
        )
        .await
        .unwrap();
    assert_eq!(stored.records, 4);
    assert_eq!(stored.unrouted, 1);
    for s in [&a, &b] {
        let got = s.got.lock();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].seq, &*got[0].source), (7, "0:127.0.0.1"));
        let payloads: Vec<_> = got[0].records.iter().map(|r| r.payload.clone()).collect();
        assert_eq!(payloads, vec![Bytes::from("x"), Bytes::from("z")]);
    }
    assert_eq!(c.got.lock()[0].records.len(), 1);
}

#[tokio::test]
async fn a_failing_sink_fails_the_batch_and_a_retry_loses_nothing() {
    let (good, bad) = (sink("good"), sink("bad"));
    *bad.fail.lock() = true;
    let handler = BatchHandler::new(
        table(vec![(1, vec![good.clone(), bad.clone()])]),
        Vec::new(),
    );
    let source: Arc<str> = "0:10.0.0.1".into();
    let err = handler
        .store(&source, batch(1, &[(1, "r1"), (1, "r2")]))
        .await
        .unwrap_err();
    assert_eq!((err.failed, err.targets), (1, 2));
    assert!(err.to_string().contains("disk full"), "{err}");
    // The agent keeps the batch and sends it again once the sink is back.
    *bad.fail.lock() = false;
    handler
        .store(&source, batch(1, &[(1, "r1"), (1, "r2")]))
        .await
        .unwrap();
    assert_eq!(bad.got.lock()[0].records.len(), 2, "nothing lost");
    assert_eq!(
        good.got.lock().len(),
        2,
        "at least once: the good sink saw it twice"
    );
}

#[tokio::test]
async fn taps_see_their_data_id_even_without_a_route() {
    let tap = Arc::new(CountTap {
        data_id: 1_100_001,
        seen: Mutex::default(),
    });
    let handler = BatchHandler::new(RouteTable::default(), vec![tap.clone() as Arc<dyn DataTap>]);
    let source: Arc<str> = "0:10.0.0.2".into();
    let stored = handler
        .store(
            &source,
            batch(3, &[(1_100_001, "{\"cpu\":1}"), (5, "other")]),
        )
        .await
        .unwrap();
    assert_eq!(stored.unrouted, 1, "only the untapped, unrouted record");
    let seen = tap.seen.lock();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "0:10.0.0.2");
}
