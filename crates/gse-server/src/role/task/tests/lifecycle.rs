//! Ending entries (disconnect, terminate, deadline), persistence and scale.

use super::*;

// === ending tasks ===

#[tokio::test]
async fn disconnect_fails_running_entries_and_terminate_discards_unreachable_ones() {
    let h = harness().await;
    let task_id = h
        .svc
        .start_script(spec(&["0:10.0.0.1", "0:10.0.0.2"], &["sleep 60"]))
        .await
        .unwrap();
    h.svc.on_frame(
        key("10.0.0.1"),
        status_frame(&task_id, 0, STATUS_RUNNING, ERR_RUNNING, 0),
    );

    h.link.connected.lock().remove(&key("10.0.0.1"));
    h.svc.on_disconnect(key("10.0.0.1"));
    let e = &poll_all(&h.svc, &task_id).await[0];
    assert_eq!((e.status, e.error_code), (STATUS_FAILED, ERR_AGENT_DOWN));
    assert_eq!(e.error_msg, "agent lost its connection during the task");

    // 10.0.0.2 is connected: it is told, and reports 126 itself.
    h.svc.terminate(&task_id, None).await.unwrap();
    let cancels: Vec<AgentKey> = h
        .link
        .sent
        .lock()
        .iter()
        .filter(|(_, f)| f.msg_type == MsgType::CancelTask)
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(cancels, [key("10.0.0.2")]);
    assert_eq!(
        poll_all(&h.svc, &task_id).await[1].status,
        STATUS_DISPATCHED
    );

    // Now it drops before answering: a second terminate closes it at once.
    h.link.connected.lock().remove(&key("10.0.0.2"));
    let names = [TargetName {
        bk_agent_id: "0:10.0.0.2".into(),
        bk_container_id: String::new(),
    }];
    h.svc.terminate(&task_id, Some(&names)).await.unwrap();
    let e = &poll_all(&h.svc, &task_id).await[1];
    assert_eq!((e.status, e.error_code), (STATUS_DISCARDED, ERR_TERMINATED));
    assert_eq!(h.svc.counts(), (1, 0));
    assert!(matches!(
        h.svc.terminate("nope", None).await,
        Err(TaskError::NotFound(_))
    ));
}

#[tokio::test]
async fn silent_agents_are_closed_after_the_deadline() {
    let h = harness().await;
    let task_id = h
        .svc
        .start_script(spec(&["0:10.0.0.1"], &["sleep 1"]))
        .await
        .unwrap();
    h.svc.close_overdue(Instant::now());
    assert_eq!(
        poll_all(&h.svc, &task_id).await[0].status,
        STATUS_DISPATCHED
    );
    h.svc
        .close_overdue(Instant::now() + Duration::from_secs(600 + 61));
    let e = &poll_all(&h.svc, &task_id).await[0];
    assert_eq!((e.status, e.error_code), (STATUS_FAILED, ERR_AGENT_DOWN));
    assert!(e.error_msg.contains("no final status"), "{}", e.error_msg);
}

// === persistence ===

#[tokio::test]
async fn a_restart_keeps_finished_entries_and_fails_unfinished_ones() {
    let h = harness().await;
    let task_id = h
        .svc
        .start_script(spec(
            &["0:10.0.0.1", "0:10.0.0.2", "0:10.9.9.9"],
            &["echo hi"],
        ))
        .await
        .unwrap();
    run_ok(&h.svc, "10.0.0.1", &task_id, 0, "hi\n");
    h.svc.on_frame(
        key("10.0.0.2"),
        status_frame(&task_id, 0, STATUS_RUNNING, ERR_RUNNING, 0),
    );
    h.svc
        .on_frame(key("10.0.0.2"), output_frame(&task_id, 0, "partial"));
    flush(&h.svc).await;
    let path = h.dir.path().join("s.sqlite");
    drop(h.svc);
    drop(h.store);

    let store: Arc<dyn StateStore> = Arc::new(EmbeddedStore::open(&path).unwrap());
    let svc = service(&store, &h.link, None).await;
    let entries = poll_all(&svc, &task_id).await;
    assert_eq!(
        entries
            .iter()
            .map(|e| (e.status, e.error_code, e.screen.as_str()))
            .collect::<Vec<_>>(),
        [
            (STATUS_SUCCESS, ERR_NONE, "hi\n"),
            (STATUS_FAILED, ERR_AGENT_DOWN, "partial"),
            (STATUS_FAILED, ERR_AGENT_DOWN, "")
        ]
    );
    assert_eq!(entries[1].error_msg, "server restarted during the task");
    assert!(entries[2].error_msg.contains("is unknown"));
    assert_eq!(entries[0].start_ms, 1_700_000_000_000);
    // Terminate of a task only in the store is accepted and changes nothing.
    svc.terminate(&task_id, None).await.unwrap();
}

#[tokio::test]
async fn changes_reach_the_store_in_batches_and_old_tasks_are_pruned() {
    let h = harness().await;
    let task_id = h
        .svc
        .start_script(spec(&["0:10.0.0.1"], &["echo"]))
        .await
        .unwrap();
    assert!(
        h.store.get_task(&task_id).await.unwrap().is_none(),
        "nothing written before a flush"
    );
    flush(&h.svc).await;
    let stored = h.store.get_task(&task_id).await.unwrap().unwrap();
    assert_eq!(
        (stored.record.node_id.as_str(), stored.entries.len()),
        (NODE, 1)
    );
    run_ok(&h.svc, "10.0.0.1", &task_id, 0, "x");
    flush(&h.svc).await;
    assert_eq!(
        h.store.get_task(&task_id).await.unwrap().unwrap().entries[0].status,
        STATUS_SUCCESS
    );
    assert_eq!(
        h.store.prune_tasks(gse_core::now_ms() + 1).await.unwrap(),
        1
    );
    assert!(h.store.get_task(&task_id).await.unwrap().is_none());
}

// === scale ===

#[tokio::test]
async fn ten_thousand_targets_fan_out_and_finish_without_quadratic_work() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("s.sqlite")).unwrap());
    let link = Arc::new(FakeLink::default());
    let ips: Vec<String> = (0..10_000)
        .map(|i| format!("10.1.{}.{}", i / 250, i % 250 + 1))
        .collect();
    for ip in &ips {
        store
            .upsert_agent(agent_record(ip, NODE, true))
            .await
            .unwrap();
        link.connected.lock().insert(key(ip));
    }
    let svc = service(&store, &link, None).await;
    let names: Vec<String> = ips.iter().map(|ip| format!("0:{ip}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();

    let began = Instant::now();
    let task_id = svc.start_script(spec(&refs, &["echo hi"])).await.unwrap();
    let dispatched = began.elapsed();
    for ip in &ips {
        run_ok(&svc, ip, &task_id, 0, "hi\n");
    }
    let results_in = began.elapsed();
    flush(&svc).await;
    let flushed = began.elapsed();
    let all = poll_all(&svc, &task_id).await;
    assert_eq!(all.len(), 10_000);
    assert!(
        all.iter()
            .all(|e| e.status == STATUS_SUCCESS && e.screen == "hi\n")
    );
    assert_eq!(svc.counts(), (1, 0));
    eprintln!(
        "10k targets: dispatched {dispatched:?}, all results {results_in:?}, flushed {flushed:?}"
    );
    // Generous: an unoptimised build on a busy machine; quadratic work
    // would take minutes.
    assert!(flushed < Duration::from_secs(20), "{flushed:?}");
}

#[tokio::test]
async fn only_saved_finished_tasks_leave_memory() {
    let h = harness().await;
    let running = h
        .svc
        .start_script(spec(&["0:10.0.0.1"], &["sleep 9"]))
        .await
        .unwrap();
    let done = h
        .svc
        .start_script(spec(&["0:10.0.0.2"], &["true"]))
        .await
        .unwrap();
    run_ok(&h.svc, "10.0.0.2", &done, 0, "");
    let later = Instant::now() + MEMORY_TTL + Duration::from_secs(1);
    h.svc.evict(later);
    assert_eq!(
        h.svc.counts(),
        (2, 1),
        "unsaved changes keep a task in memory"
    );
    flush(&h.svc).await;
    h.svc.evict(later);
    assert!(h.svc.live(&running).is_some(), "a running task stays");
    assert!(h.svc.live(&done).is_none());
    assert_eq!(poll_all(&h.svc, &done).await[0].status, STATUS_SUCCESS);
}

#[tokio::test]
async fn an_agent_that_registered_again_mid_task_has_its_entries_closed() {
    let h = harness().await;
    let task_id = h
        .svc
        .start_script(spec(&["0:10.0.0.1", "0:10.0.0.2"], &["sleep 9"]))
        .await
        .unwrap();
    h.svc.close_relinked().await;
    assert_eq!(
        poll_all(&h.svc, &task_id).await[0].status,
        STATUS_DISPATCHED
    );
    // 10.0.0.1's link was replaced by a newer one, without a disconnect here.
    let mut again = agent_record("10.0.0.1", NODE, true);
    again.connected_at_ms = gse_core::now_ms() + 1000;
    h.store.upsert_agent(again).await.unwrap();
    h.svc.close_relinked().await;
    let entries = poll_all(&h.svc, &task_id).await;
    assert_eq!(
        (entries[0].status, entries[0].error_code),
        (STATUS_FAILED, ERR_AGENT_DOWN)
    );
    assert_eq!(entries[1].status, STATUS_DISPATCHED);
}
