use std::sync::Arc;
use std::time::Duration;

use gse_core::AgentKey;
use gse_core::seams::state_store::prelude::*;
use gse_core::seams::{AgentRecord, LostAlarm};
use tokio_util::sync::CancellationToken;

use super::lost::{Resume, plan};
use super::{AlarmConfig, AlarmService};
use crate::store::EmbeddedStore;

fn record(ip: &str) -> AgentRecord {
    AgentRecord {
        key: AgentKey::new(0, ip.parse().unwrap()),
        agent_id: format!("id-{ip}"),
        version: String::new(),
        hostname: String::new(),
        os_type: String::new(),
        run_mode: 1,
        zone: String::new(),
        start_time_s: 0,
        node_id: "n".into(),
        parent_ip: String::new(),
        parent_port: 0,
        peer_addr: String::new(),
        alive: false,
        connected_at_ms: 0,
        last_seen_ms: 0,
        cpu_percent: 0.0,
        mem_bytes: 0,
        mem_percent: 0.0,
        p2p_addr: String::new(),
    }
}

fn key(ip: &str) -> AgentKey {
    AgentKey::new(0, ip.parse().unwrap())
}

fn on_node(ip: &str, node_id: &str) -> AgentRecord {
    AgentRecord {
        node_id: node_id.into(),
        ..record(ip)
    }
}

/// An alarm service "n" with a 100 ms grace, logging to `log`, over `store`.
fn service(log: &std::path::Path, store: &Arc<EmbeddedStore>) -> Arc<AlarmService> {
    let config = AlarmConfig {
        log_file: Some(log.to_path_buf()),
        lost_grace: Duration::from_millis(100),
        ..AlarmConfig::default()
    };
    AlarmService::start(config, "n".into(), store.clone(), CancellationToken::new()).unwrap()
}

fn kinds(path: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["kind"].as_str().unwrap().to_string(),
                v["agent"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn one_lost_alarm_per_loss_and_a_clear_on_return() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("alarms.jsonl");
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("s.sqlite")).unwrap());
    let svc = service(&log, &store);

    // A blip shorter than the grace period raises nothing.
    svc.agent_lost(record("10.0.0.1"), "connection closed".into(), Vec::new());
    svc.agent_back(&record("10.0.0.1"));
    // A real loss, reported twice, raises one alarm, kept in the store.
    svc.agent_lost(record("10.0.0.2"), "connection closed".into(), Vec::new());
    svc.agent_lost(record("10.0.0.2"), "heartbeat timeout".into(), Vec::new());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let kept = store.list_lost_alarms().await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(
        (kept[0].key, kept[0].node_id.as_str()),
        (key("10.0.0.2"), "n")
    );
    svc.agent_back(&record("10.0.0.2"));
    tokio::time::sleep(Duration::from_millis(100)).await;

    assert_eq!(
        kinds(&log),
        [
            ("agent_lost".to_string(), "0:10.0.0.2".to_string()),
            ("agent_recovered".to_string(), "0:10.0.0.2".to_string())
        ]
    );
    assert!(
        store.list_lost_alarms().await.unwrap().is_empty(),
        "cleared"
    );
}

#[test]
fn a_starting_node_waits_for_its_agents_and_keeps_its_raised_alarms() {
    let raised = |ip: &str, node_id: &str| LostAlarm {
        key: key(ip),
        node_id: node_id.into(),
        raised_ms: 7,
    };
    let records = vec![
        on_node("10.0.0.1", "n"),  // connected or in its grace at the stop
        on_node("10.0.0.2", "n"),  // alarmed before the stop
        on_node("10.0.0.3", "n2"), // another node's agent
        on_node("10.0.0.4", "n"),  // alarmed by n2, then connected to n
    ];
    let alarms = vec![
        raised("10.0.0.2", "n"),
        raised("10.0.0.4", "n2"),
        raised("10.0.0.5", "n"), // alarmed here, then moved to another node
    ];
    let mut got = plan("n", records, alarms);
    got.sort_by_key(|(k, _)| *k);
    assert_eq!(
        got,
        [
            (
                key("10.0.0.1"),
                Resume::Grace(Box::new(on_node("10.0.0.1", "n")))
            ),
            (key("10.0.0.2"), Resume::Alarmed { raised_ms: 7 }),
            (
                key("10.0.0.4"),
                Resume::Grace(Box::new(on_node("10.0.0.4", "n")))
            ),
            (key("10.0.0.5"), Resume::Alarmed { raised_ms: 7 }),
        ]
    );
}

/// One node's life, stopped without clearing anything (a crash), and the
/// next one on the same store.
#[tokio::test]
async fn after_a_restart_the_missing_are_alarmed_once_and_old_alarms_cleared_on_return() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("alarms.jsonl");
    let path = dir.path().join("s.sqlite");
    {
        let store = Arc::new(EmbeddedStore::open(&path).unwrap());
        for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
            store.upsert_agent(record(ip)).await.unwrap();
        }
        store.upsert_agent(on_node("10.0.0.4", "n2")).await.unwrap();
        let svc = service(&log, &store);
        // 10.0.0.3 is lost and alarmed before the crash.
        svc.agent_lost(record("10.0.0.3"), "connection closed".into(), Vec::new());
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let store = Arc::new(EmbeddedStore::open(&path).unwrap());
    let svc = service(&log, &store);
    svc.resume_after_restart().await;
    // 10.0.0.1 comes back within the grace; 10.0.0.2 never does.
    svc.agent_back(&record("10.0.0.1"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    svc.agent_back(&record("10.0.0.3"));
    tokio::time::sleep(Duration::from_millis(100)).await;

    assert_eq!(
        kinds(&log),
        [
            ("agent_lost".to_string(), "0:10.0.0.3".to_string()),
            ("agent_lost".to_string(), "0:10.0.0.2".to_string()),
            ("agent_recovered".to_string(), "0:10.0.0.3".to_string()),
        ]
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("not reconnected within 100ms after the server restarted"),
        "{text}"
    );
    let kept = store.list_lost_alarms().await.unwrap();
    assert_eq!(
        kept.iter().map(|a| a.key).collect::<Vec<_>>(),
        [key("10.0.0.2")]
    );
}
