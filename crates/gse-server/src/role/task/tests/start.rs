//! Starting tasks: who is dispatched, who fails at once, dangerous operations.

use super::*;

// === start and dispatch ===

#[tokio::test]
async fn every_target_is_listed_at_once_and_unreachable_ones_fail_with_117() {
    let h = harness().await;
    let agents = [
        "0:10.0.0.1",
        "0:10.9.9.9",
        "0:10.0.0.3",
        "0:10.0.0.4",
        "id-10.0.0.2",
    ];
    let task_id = h
        .svc
        .start_script(spec(&agents, &["echo hi"]))
        .await
        .unwrap();
    assert!(task_id.starts_with("GSETASK:S:"), "{task_id}");

    let entries = poll_all(&h.svc, &task_id).await;
    assert_eq!(
        codes(&entries),
        [
            ("0:10.0.0.1".into(), STATUS_DISPATCHED, ERR_RUNNING),
            ("0:10.9.9.9".into(), STATUS_FAILED, ERR_AGENT_DOWN),
            ("0:10.0.0.3".into(), STATUS_FAILED, ERR_AGENT_DOWN),
            ("0:10.0.0.4".into(), STATUS_FAILED, ERR_AGENT_DOWN),
            ("id-10.0.0.2".into(), STATUS_DISPATCHED, ERR_RUNNING),
        ]
    );
    assert!(
        entries[1]
            .error_msg
            .starts_with("agent 0:10.9.9.9 is unknown"),
        "{}",
        entries[1].error_msg
    );
    assert_eq!(entries[2].error_msg, "agent 0:10.0.0.3 is offline");
    assert!(
        entries[3].error_msg.contains("held by node n2"),
        "{}",
        entries[3].error_msg
    );
    assert!(entries[1].end_ms > 0);

    // One RunScript per reachable agent, the default timeout filled in.
    let sent = h.link.sent.lock();
    let keys: HashSet<AgentKey> = sent.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, HashSet::from([key("10.0.0.1"), key("10.0.0.2")]));
    let run: RunScript = sent[0].1.decode().unwrap();
    assert_eq!(sent[0].1.msg_type, MsgType::RunScript);
    assert_eq!(run.task_id, task_id);
    assert_eq!(run.atomic_tasks[0].timeout_seconds, 600);
    assert_eq!(run.output_limit, DEFAULT_OUTPUT_LIMIT);
}

#[tokio::test]
async fn users_are_passed_per_agent_and_duplicates_and_containers_fail_alone() {
    let h = harness().await;
    let mut s = spec(&["0:10.0.0.1", "0:10.0.0.2", "id-10.0.0.1"], &["id"]);
    s.targets[0].user = "root".into();
    s.targets[1].user = "nobody".into();
    s.targets.push(TargetSpec {
        bk_container_id: "c1".into(),
        ..s.targets[1].clone()
    });
    let task_id = h.svc.start_script(s).await.unwrap();
    let users: HashSet<(AgentKey, String)> = h
        .link
        .sent
        .lock()
        .iter()
        .map(|(k, f)| (*k, f.decode::<RunScript>().unwrap().user))
        .collect();
    assert_eq!(
        users,
        HashSet::from([
            (key("10.0.0.1"), "root".into()),
            (key("10.0.0.2"), "nobody".into())
        ])
    );
    let entries = poll_all(&h.svc, &task_id).await;
    assert_eq!(
        (entries[2].status, entries[2].error_code),
        (STATUS_FAILED, ERR_SPAWN)
    );
    assert!(
        entries[2]
            .error_msg
            .contains("also a target of this task as 0:10.0.0.1"),
        "{}",
        entries[2].error_msg
    );
    assert_eq!(
        (entries[3].status, entries[3].error_code),
        (STATUS_FAILED, ERR_SPAWN)
    );
    assert_eq!(entries[3].bk_container_id, "c1");
}

#[tokio::test]
async fn a_failed_send_is_117_with_the_reason() {
    let h = harness().await;
    h.link.refuse.lock().insert(key("10.0.0.2"));
    let task_id = h
        .svc
        .start_script(spec(&["0:10.0.0.2"], &["true", "true"]))
        .await
        .unwrap();
    let entries = poll_all(&h.svc, &task_id).await;
    assert_eq!(entries.len(), 2);
    for e in &entries {
        assert_eq!((e.status, e.error_code), (STATUS_FAILED, ERR_AGENT_DOWN));
        assert!(e.error_msg.contains("256 frames queued"), "{}", e.error_msg);
    }
    assert_eq!(
        h.svc.counts(),
        (1, 0),
        "a task with nothing running is not active"
    );
}

// === dangerous operations ===

fn alarm_kinds(path: &PathBuf) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn blocked_tasks_dispatch_nothing_and_alarm_only_ones_run() {
    let h = harness().await;
    let log = h.dir.path().join("alarms.jsonl");
    let config = AlarmConfig {
        log_file: Some(log.clone()),
        ..AlarmConfig::default()
    };
    let alarms = AlarmService::start(
        config,
        NODE.into(),
        h.store.clone(),
        CancellationToken::new(),
    )
    .unwrap();
    let svc = service(&h.store, &h.link, Some(alarms)).await;

    let mut s = spec(&["0:10.0.0.1", "0:10.9.9.9"], &["echo start", "/tmp/x.sh"]);
    s.scripts = vec![ScriptFileSpec {
        name: "x.sh".into(),
        dir: "/tmp".into(),
        content: "#!/bin/sh\n# rm -rf /\nrm -rf / \n".into(),
    }];
    let blocked = svc.start_script(s).await.unwrap();
    assert!(h.link.sent.lock().is_empty(), "nothing is dispatched");
    for e in poll_all(&svc, &blocked).await {
        assert_eq!(
            (e.status, e.error_code),
            (STATUS_FAILED, ERR_DANGER_BLOCKED)
        );
        assert!(
            e.error_msg.contains("\"rm_root\"")
                && e.error_msg.contains("rm -rf /")
                && e.error_msg.contains("script x.sh"),
            "{}",
            e.error_msg
        );
    }

    let ran = svc
        .start_script(spec(&["0:10.0.0.1"], &["true || reboot"]))
        .await
        .unwrap();
    assert_eq!(h.link.sent.lock().len(), 1);
    assert_eq!(poll_all(&svc, &ran).await[0].status, STATUS_DISPATCHED);

    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = alarm_kinds(&log);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (
            got[0]["kind"].as_str(),
            got[0]["task_id"].as_str(),
            got[0]["rule"].as_str()
        ),
        (
            Some("dangerous_operation_blocked"),
            Some(blocked.as_str()),
            Some("rm_root")
        )
    );
    assert_eq!(got[0]["agent_count"], 2);
    assert!(got[0]["message"].as_str().unwrap().contains("0:10.9.9.9"));
    assert_eq!(
        (got[1]["kind"].as_str(), got[1]["agent"].as_str()),
        (Some("dangerous_operation"), Some("0:10.0.0.1"))
    );
}

#[tokio::test]
async fn r9_6_a_script_into_a_system_directory_is_blocked_before_dispatch() {
    let h = harness().await;
    let mut s = spec(&["0:10.0.0.1"], &["true"]);
    s.scripts = vec![ScriptFileSpec {
        name: "passwd".into(),
        dir: "/etc//".into(),
        content: "root::0:0::/root:/bin/sh\n".into(),
    }];
    let blocked = h.svc.start_script(s).await.unwrap();
    assert!(h.link.sent.lock().is_empty(), "nothing is dispatched");
    let e = &poll_all(&h.svc, &blocked).await[0];
    assert_eq!(
        (e.status, e.error_code),
        (STATUS_FAILED, ERR_DANGER_BLOCKED)
    );
    for part in ["\"script_destination\"", "/etc//passwd"] {
        assert!(e.error_msg.contains(part), "{}", e.error_msg);
    }
}

#[tokio::test]
async fn a_task_over_the_links_frame_limit_is_refused_naming_scripts() {
    let h = harness().await;
    *h.link.max_frame.lock() = 4096;
    let mut big = spec(&["0:10.0.0.1"], &["true"]);
    big.scripts = vec![ScriptFileSpec {
        name: "big.sh".into(),
        dir: "/tmp".into(),
        content: "x".repeat(5000),
    }];
    let err = h.svc.start_script(big.clone()).await.unwrap_err();
    assert!(
        matches!(err, TaskError::TooLarge { limit: 4096, bytes, field: "scripts", .. } if bytes > 5000),
        "{err:?}"
    );
    let api = crate::role::api::error::ApiError::from(err);
    assert_eq!(api.code(), 1000400);
    assert!(api.to_string().contains("scripts"), "{api}");
    assert!(h.link.sent.lock().is_empty(), "nothing reaches the agent");

    // Under the configured limit it goes out.
    *h.link.max_frame.lock() = 0;
    h.svc.start_script(big).await.unwrap();
    assert_eq!(h.link.sent.lock().len(), 1);
}

#[tokio::test]
async fn distinct_users_times_the_body_are_capped_naming_agents_user() {
    let h = harness().await;
    let names: Vec<String> = (0..300)
        .map(|i| format!("0:10.9.{}.{}", i / 200, i % 200 + 1))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut many = spec(&refs, &["true"]);
    many.scripts = vec![ScriptFileSpec {
        name: "big.sh".into(),
        dir: "/tmp".into(),
        content: "x".repeat(1 << 20),
    }];
    for (i, t) in many.targets.iter_mut().enumerate() {
        t.user = format!("u{i}");
    }
    let err = h.svc.start_script(many.clone()).await.unwrap_err();
    assert!(
        matches!(err, TaskError::TooLarge { field: "agents[].user", bytes, limit, .. }
            if bytes > 300 << 20 && limit == 256 << 20),
        "{err:?}"
    );
    assert!(err.to_string().contains("300 distinct users"), "{err}");
    // One user for all of them is one body, well under the cap.
    for t in &mut many.targets {
        t.user = "root".into();
    }
    h.svc.start_script(many).await.unwrap();
}
