//! Raised `agent_lost` alarms.

use super::key;
use crate::seams::state_store::{LostAlarm, LostAlarmStore};

/// Alarms are kept per agent, listed from every node, and cleared only by
/// the node that raised them.
pub async fn lost_alarms(store: &dyn LostAlarmStore) {
    let alarm = |last, node: &str, raised_ms| LostAlarm {
        key: key(207, last),
        node_id: node.into(),
        raised_ms,
    };
    let mine = |all: Vec<LostAlarm>| {
        let mut v: Vec<_> = all
            .into_iter()
            .filter(|a| a.key.to_string().starts_with("0:10.207."))
            .collect();
        v.sort_by_key(|a| a.key);
        v
    };
    assert_eq!(mine(store.list_lost_alarms().await.unwrap()), vec![]);
    store.put_lost_alarm(alarm(1, "n1", 5)).await.unwrap();
    store.put_lost_alarm(alarm(2, "n2", 6)).await.unwrap();
    assert_eq!(
        mine(store.list_lost_alarms().await.unwrap()),
        vec![alarm(1, "n1", 5), alarm(2, "n2", 6)]
    );
    // A second put for the same agent replaces the first.
    store.put_lost_alarm(alarm(1, "n3", 7)).await.unwrap();
    store.clear_lost_alarm(key(207, 1), "n1").await.unwrap();
    assert_eq!(
        mine(store.list_lost_alarms().await.unwrap()),
        vec![alarm(1, "n3", 7), alarm(2, "n2", 6)],
        "replaced, and not cleared by a node that did not raise it"
    );
    store.clear_lost_alarm(key(207, 1), "n3").await.unwrap();
    store.clear_lost_alarm(key(207, 9), "n3").await.unwrap();
    assert_eq!(
        mine(store.list_lost_alarms().await.unwrap()),
        vec![alarm(2, "n2", 6)],
        "cleared by the node that raised it"
    );
}
