//! File transfers.

use std::sync::Arc;

use crate::seams::state_store::{EntryFailure, FileEntryRecord, FileTransferRecord, TransferStore};
use crate::task::{ERR_AGENT_DOWN, ERR_NONE, ERR_RUNNING};

fn entry(mode: u8, error_code: i32, progress: u32) -> FileEntryRecord {
    FileEntryRecord {
        mode,
        source_agent_id: "0:10.204.0.1".into(),
        dest_agent_id: if mode == 1 {
            "0:10.204.0.2".into()
        } else {
            String::new()
        },
        progress,
        speed_kbps: 100,
        size: 1 << 20,
        status: if error_code == ERR_RUNNING { 1 } else { 2 },
        error_code,
        start_ms: 3,
        ..FileEntryRecord::default()
    }
}

fn transfer(
    task_id: &str,
    node_id: &str,
    created_ms: u64,
    entries: Vec<FileEntryRecord>,
) -> FileTransferRecord {
    FileTransferRecord {
        task_id: task_id.into(),
        node_id: node_id.into(),
        created_ms,
        entries,
    }
}

async fn write(store: &dyn TransferStore, batch: Vec<FileTransferRecord>) {
    store.write_file_transfers(Arc::new(batch)).await.unwrap();
}

/// Transfers are saved whole and replaced whole; a restarted node closes
/// its unfinished entries; old finished transfers are pruned.
pub async fn transfers(store: &dyn TransferStore) {
    assert_eq!(store.get_file_transfer("conf-f-none").await.unwrap(), None);
    write(store, vec![]).await;

    let f1 = transfer(
        "conf-f1",
        "n1",
        1000,
        vec![
            entry(0, ERR_NONE, 100),
            entry(1, ERR_RUNNING, 40),
            entry(1, ERR_RUNNING, 0),
        ],
    );
    let f2 = transfer("conf-f2", "n2", 1000, vec![entry(0, ERR_RUNNING, 10)]);
    write(store, vec![f1.clone(), f2.clone()]).await;
    assert_eq!(
        store.get_file_transfer("conf-f1").await.unwrap(),
        Some(f1.clone())
    );

    let mut f1b = f1.clone();
    f1b.entries[1].progress = 80;
    write(store, vec![f1b.clone()]).await;
    write(store, vec![f1b.clone()]).await;
    assert_eq!(
        store.get_file_transfer("conf-f1").await.unwrap(),
        Some(f1b.clone()),
        "replaced whole, idempotent"
    );

    let failure = EntryFailure {
        status: 5,
        error_code: ERR_AGENT_DOWN,
        error_msg: "node restarted".into(),
        end_ms: 88,
    };
    assert_eq!(
        store
            .fail_unfinished_file_transfers("n1", failure.clone())
            .await
            .unwrap(),
        2
    );
    let got = store.get_file_transfer("conf-f1").await.unwrap().unwrap();
    assert_eq!(got.entries[0], f1b.entries[0], "a final entry is kept");
    for e in &got.entries[1..] {
        assert_eq!(
            (
                e.status,
                e.error_code,
                e.error_msg.as_str(),
                e.status_info.as_str(),
                e.end_ms
            ),
            (5, ERR_AGENT_DOWN, "node restarted", "node restarted", 88)
        );
    }
    assert!(got.is_finished());
    assert_eq!(
        store
            .fail_unfinished_file_transfers("n1", failure)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store.get_file_transfer("conf-f2").await.unwrap(),
        Some(f2),
        "another node's transfer is not touched"
    );

    let f3 = transfer("conf-f3", "n1", 5000, vec![entry(0, ERR_NONE, 100)]);
    write(store, vec![f3]).await;
    assert_eq!(store.prune_file_transfers(2000).await.unwrap(), 1);
    assert_eq!(
        store.get_file_transfer("conf-f1").await.unwrap(),
        None,
        "old, finished: pruned"
    );
    assert!(
        store.get_file_transfer("conf-f2").await.unwrap().is_some(),
        "running: kept"
    );
    assert!(
        store.get_file_transfer("conf-f3").await.unwrap().is_some(),
        "new: kept"
    );
}
