use std::time::Duration;

use gse_core::AgentKey;
use gse_core::seams::AgentRecord;
use tokio_util::sync::CancellationToken;

use super::{AlarmConfig, AlarmService};

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
    }
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
    let config = AlarmConfig {
        log_file: Some(log.clone()),
        lost_grace: Duration::from_millis(100),
        ..AlarmConfig::default()
    };
    let svc = AlarmService::start(config, "n".into(), CancellationToken::new()).unwrap();

    // A blip shorter than the grace period raises nothing.
    svc.agent_lost(record("10.0.0.1"), "connection closed".into());
    svc.agent_back(&record("10.0.0.1"));
    // A real loss, reported twice, raises one alarm.
    svc.agent_lost(record("10.0.0.2"), "connection closed".into());
    svc.agent_lost(record("10.0.0.2"), "heartbeat timeout".into());
    tokio::time::sleep(Duration::from_millis(400)).await;
    svc.agent_back(&record("10.0.0.2"));
    tokio::time::sleep(Duration::from_millis(100)).await;

    assert_eq!(
        kinds(&log),
        [
            ("agent_lost".to_string(), "0:10.0.0.2".to_string()),
            ("agent_recovered".to_string(), "0:10.0.0.2".to_string())
        ]
    );
}
