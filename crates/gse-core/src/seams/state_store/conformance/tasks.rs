//! Script task records and logs.

use std::sync::Arc;

use crate::seams::state_store::{
    EntryFailure, LogWindow, TaskEntryState, TaskLogChunk, TaskRecord, TaskStore, TaskTarget,
    TaskWrites,
};
use crate::task::{
    ERR_AGENT_DOWN, ERR_NONE, ERR_RUNNING, STATUS_FAILED, STATUS_RUNNING, STATUS_SUCCESS,
};

fn record(task_id: &str, node_id: &str, created_ms: u64, targets: u32) -> TaskRecord {
    TaskRecord {
        task_id: task_id.into(),
        node_id: node_id.into(),
        created_ms,
        tag: "conf".into(),
        atomic_count: 2,
        targets: (0..targets)
            .map(|t| TaskTarget {
                bk_agent_id: format!("0:10.203.0.{t}"),
                bk_container_id: String::new(),
                agent_key: format!("0:10.203.0.{t}"),
                agent_id: format!("conf-task-agent-{t}"),
            })
            .collect(),
    }
}

fn entry(
    task_id: &str,
    target: u32,
    atomic_id: u32,
    status: i32,
    error_code: i32,
) -> TaskEntryState {
    TaskEntryState {
        task_id: task_id.into(),
        target,
        atomic_id,
        status,
        error_code,
        error_msg: String::new(),
        exit_code: 0,
        start_ms: 5,
        end_ms: 0,
    }
}

fn chunk(task_id: &str, target: u32, offset: u64, data: &str) -> TaskLogChunk {
    TaskLogChunk {
        task_id: task_id.into(),
        target,
        atomic_id: 0,
        offset,
        data: data.into(),
    }
}

fn window(target: u32, offset: u64, max_bytes: u64) -> LogWindow {
    LogWindow {
        target,
        atomic_id: 0,
        offset,
        max_bytes,
    }
}

async fn write(store: &dyn TaskStore, w: TaskWrites) {
    store.write_tasks(Arc::new(w)).await.unwrap();
}

/// Records are written once, entries replace, logs append by offset and
/// read by window; a restarted node closes its unfinished entries; old
/// finished tasks are pruned.
pub async fn tasks(store: &dyn TaskStore) {
    assert_eq!(store.get_task("conf-t-none").await.unwrap(), None);
    write(store, TaskWrites::default()).await;

    let rec = record("conf-t1", "n1", 1000, 2);
    write(
        store,
        TaskWrites {
            tasks: vec![rec.clone()],
            // Out of order on purpose: entries come back by (target, atomic).
            entries: vec![
                entry("conf-t1", 1, 0, STATUS_RUNNING, ERR_RUNNING),
                entry("conf-t1", 0, 1, STATUS_RUNNING, ERR_RUNNING),
                entry("conf-t1", 0, 0, STATUS_RUNNING, ERR_RUNNING),
            ],
            logs: vec![
                chunk("conf-t1", 0, 0, "hello "),
                chunk("conf-t1", 0, 6, "world"),
            ],
        },
    )
    .await;
    let got = store.get_task("conf-t1").await.unwrap().expect("stored");
    assert_eq!(got.record, rec);
    let order: Vec<(u32, u32)> = got
        .entries
        .iter()
        .map(|e| (e.target, e.atomic_id))
        .collect();
    assert_eq!(
        order,
        vec![(0, 0), (0, 1), (1, 0)],
        "entries by target, atomic id"
    );

    // The record never changes; an entry's state is replaced whole; a
    // batch sent again (after a failure) changes nothing more.
    let mut other = rec.clone();
    other.tag = "changed".into();
    let mut done = entry("conf-t1", 0, 0, STATUS_SUCCESS, ERR_NONE);
    done.exit_code = 3;
    done.end_ms = 9;
    done.error_msg = "fine".into();
    let batch = TaskWrites {
        tasks: vec![other],
        entries: vec![done.clone()],
        logs: vec![chunk("conf-t1", 0, 11, "!")],
    };
    write(store, batch.clone()).await;
    write(store, batch).await;
    let got = store.get_task("conf-t1").await.unwrap().unwrap();
    assert_eq!(got.record.tag, "conf", "a record is written once");
    assert_eq!(got.entries[0], done);
    assert_eq!(got.entries.len(), 3);

    // Log windows: from an offset, at most max_bytes, empty past the end
    // and for unknown entries; one answer per window, in order.
    let logs = store
        .read_task_logs(
            "conf-t1",
            &[
                window(0, 0, 100),
                window(0, 3, 6),
                window(0, 12, 10),
                window(1, 0, 10),
                window(0, 5, 0),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        logs,
        vec![
            b"hello world!".to_vec(),
            b"lo wor".to_vec(),
            Vec::new(),
            Vec::new(),
            Vec::new()
        ]
    );
    let none = store
        .read_task_logs("conf-t-none", &[window(0, 0, 10)])
        .await
        .unwrap();
    assert_eq!(none, vec![Vec::<u8>::new()]);

    // A restart of n1 closes n1's unfinished entries, and only those.
    write(
        store,
        TaskWrites {
            tasks: vec![record("conf-t2", "n2", 1000, 1)],
            entries: vec![entry("conf-t2", 0, 0, STATUS_RUNNING, ERR_RUNNING)],
            logs: vec![],
        },
    )
    .await;
    let failure = EntryFailure {
        status: STATUS_FAILED,
        error_code: ERR_AGENT_DOWN,
        error_msg: "node restarted".into(),
        end_ms: 77,
    };
    assert_eq!(
        store
            .fail_unfinished_tasks("n1", failure.clone())
            .await
            .unwrap(),
        2
    );
    let got = store.get_task("conf-t1").await.unwrap().unwrap();
    assert_eq!(got.entries[0], done, "a final entry is kept");
    for e in &got.entries[1..] {
        assert_eq!(
            (e.status, e.error_code, e.error_msg.as_str(), e.end_ms),
            (STATUS_FAILED, ERR_AGENT_DOWN, "node restarted", 77)
        );
    }
    assert_eq!(store.fail_unfinished_tasks("n1", failure).await.unwrap(), 0);
    let t2 = store.get_task("conf-t2").await.unwrap().unwrap();
    assert_eq!(
        t2.entries[0].status, STATUS_RUNNING,
        "another node's task is not touched"
    );

    // Prune: old and finished goes with its logs; old but running stays;
    // new stays.
    write(
        store,
        TaskWrites {
            tasks: vec![record("conf-t3", "n1", 5000, 1)],
            entries: vec![entry("conf-t3", 0, 0, STATUS_SUCCESS, ERR_NONE)],
            logs: vec![],
        },
    )
    .await;
    assert_eq!(store.prune_tasks(2000).await.unwrap(), 1);
    assert_eq!(store.get_task("conf-t1").await.unwrap(), None, "pruned");
    let logs = store
        .read_task_logs("conf-t1", &[window(0, 0, 100)])
        .await
        .unwrap();
    assert_eq!(logs, vec![Vec::<u8>::new()], "with its logs");
    assert!(
        store.get_task("conf-t2").await.unwrap().is_some(),
        "running: kept"
    );
    assert!(
        store.get_task("conf-t3").await.unwrap().is_some(),
        "new: kept"
    );
}
