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
    h.svc
        .on_disconnect(key("10.0.0.1"), crate::role::task::tests::held(FIRST_CONN));
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
async fn a_cancel_that_finds_the_queue_full_is_retried_and_never_closes_the_entry() {
    let h = harness().await;
    let task_id = h
        .svc
        .start_script(spec(&["0:10.0.0.1", "0:10.0.0.2"], &["sleep 60"]))
        .await
        .unwrap();
    for ip in ["10.0.0.1", "10.0.0.2"] {
        h.svc.on_frame(
            key(ip),
            status_frame(&task_id, 0, STATUS_RUNNING, ERR_RUNNING, 0),
        );
        h.link.refuse.lock().insert(key(ip));
    }
    h.svc.terminate(&task_id, None).await.unwrap();
    h.svc.retry_cancels(Instant::now()).await;
    let still_running = |entries: &[EntryView]| {
        entries
            .iter()
            .all(|e| (e.status, e.error_code) == (STATUS_RUNNING, ERR_RUNNING))
    };
    assert!(
        still_running(&poll_all(&h.svc, &task_id).await),
        "a busy agent's process still runs: no 126 yet"
    );
    assert_eq!(h.link.cancels_to("10.0.0.1"), 0);
    assert_eq!(h.svc.cancels.lock().len(), 2);

    // 10.0.0.1's queue drains: the cancel goes out once, and the agent
    // reports 126 itself.
    h.link.refuse.lock().remove(&key("10.0.0.1"));
    h.svc.retry_cancels(Instant::now()).await;
    h.svc.retry_cancels(Instant::now()).await;
    assert_eq!(h.link.cancels_to("10.0.0.1"), 1);
    assert!(still_running(&poll_all(&h.svc, &task_id).await));
    h.svc.on_frame(
        key("10.0.0.1"),
        status_frame(&task_id, 0, STATUS_DISCARDED, ERR_TERMINATED, 0),
    );

    // 10.0.0.2 stays full past the retry limit: given up, still running.
    h.svc
        .retry_cancels(Instant::now() + Duration::from_secs(31))
        .await;
    assert!(h.svc.cancels.lock().is_empty());
    let entries = poll_all(&h.svc, &task_id).await;
    assert_eq!(
        (entries[0].status, entries[0].error_code),
        (STATUS_DISCARDED, ERR_TERMINATED)
    );
    assert_eq!(entries[1].status, STATUS_RUNNING);

    // Terminated again, then gone before the retry: closed at once.
    h.svc.terminate(&task_id, None).await.unwrap();
    h.link.connected.lock().remove(&key("10.0.0.2"));
    h.link.refuse.lock().clear();
    h.svc.retry_cancels(Instant::now()).await;
    let e = &poll_all(&h.svc, &task_id).await[1];
    assert_eq!((e.status, e.error_code), (STATUS_DISCARDED, ERR_TERMINATED));
    assert_eq!(h.svc.counts(), (1, 0));
}

#[tokio::test]
async fn deadlines_count_from_the_start_an_agent_reports_not_from_dispatch() {
    let h = harness().await;
    // Default timeout 600s per atomic task.
    let task_id = h
        .svc
        .start_script(spec(&["0:10.0.0.1", "0:10.0.0.2"], &["a", "b"]))
        .await
        .unwrap();
    let created = Instant::now();
    // Past the old bound (2 * 600s + 60s): both agents may still be
    // running other tasks with this one queued.
    h.svc
        .close_overdue(created + Duration::from_secs(2 * 600 + 61));
    let entries = poll_all(&h.svc, &task_id).await;
    assert!(entries.iter().all(|e| e.status == STATUS_DISPATCHED));

    // 10.0.0.1 starts it now: it has both timeouts plus 60s from here.
    h.svc.on_frame(
        key("10.0.0.1"),
        status_frame(&task_id, 0, STATUS_RUNNING, ERR_RUNNING, 0),
    );
    let started = Instant::now();
    h.svc
        .close_overdue(started + Duration::from_secs(1200 + 59));
    assert_eq!(poll_all(&h.svc, &task_id).await[0].status, STATUS_RUNNING);
    // Its second atomic task starts: 600s + 60s from then.
    run_ok(&h.svc, "10.0.0.1", &task_id, 0, "");
    h.svc.on_frame(
        key("10.0.0.1"),
        status_frame(&task_id, 1, STATUS_RUNNING, ERR_RUNNING, 0),
    );
    let second = Instant::now();
    h.svc.close_overdue(second + Duration::from_secs(659));
    assert_eq!(poll_all(&h.svc, &task_id).await[1].status, STATUS_RUNNING);
    h.svc.close_overdue(second + Duration::from_secs(661));
    let entries = poll_all(&h.svc, &task_id).await;
    assert_eq!(entries[0].status, STATUS_SUCCESS);
    assert_eq!(
        (entries[1].status, entries[1].error_code),
        (STATUS_FAILED, ERR_AGENT_DOWN)
    );
    assert!(
        entries[1].error_msg.contains("no final status"),
        "{}",
        entries[1].error_msg
    );
    assert!(entries[2..].iter().all(|e| e.status == STATUS_DISPATCHED));

    // 10.0.0.2 never starts it: closed only after the queued limit.
    h.svc
        .close_overdue(created + Duration::from_secs(24 * 3600 + 1));
    let entries = poll_all(&h.svc, &task_id).await;
    for e in &entries[2..] {
        assert_eq!((e.status, e.error_code), (STATUS_FAILED, ERR_AGENT_DOWN));
        assert!(e.error_msg.contains("never reported"), "{}", e.error_msg);
    }
    assert_eq!(h.svc.counts(), (1, 0));
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
    let running = h
        .svc
        .start_script(spec(&["0:10.0.0.2"], &["sleep 60"]))
        .await
        .unwrap();
    h.svc.on_frame(
        key("10.0.0.2"),
        status_frame(&running, 0, STATUS_RUNNING, ERR_RUNNING, 0),
    );
    flush(&h.svc).await;
    assert_eq!(
        h.store.prune_tasks(gse_core::now_ms() + 1).await.unwrap(),
        1,
        "only the finished task goes"
    );
    assert!(h.store.get_task(&task_id).await.unwrap().is_none());
    assert!(
        h.store.get_task(&running).await.unwrap().is_some(),
        "a running task is kept however old"
    );
    run_ok(&h.svc, "10.0.0.2", &running, 0, "");
    flush(&h.svc).await;
    assert_eq!(
        h.store.prune_tasks(gse_core::now_ms() + 1).await.unwrap(),
        1
    );
    assert!(h.store.get_task(&running).await.unwrap().is_none());
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
async fn the_old_connections_disconnect_spares_a_task_sent_on_the_new_one() {
    let h = harness().await;
    let old = h
        .svc
        .start_script(spec(&["0:10.0.0.1"], &["sleep 9"]))
        .await
        .unwrap();
    // A new connection of 10.0.0.1 is attached; a task goes out on it
    // before the link tells the task role the old one is gone.
    h.link.conns.lock().insert(key("10.0.0.1"), 2);
    let new = h
        .svc
        .start_script(spec(&["0:10.0.0.1"], &["sleep 9"]))
        .await
        .unwrap();
    h.svc
        .on_disconnect(key("10.0.0.1"), crate::role::task::tests::held(FIRST_CONN));
    let e = &poll_all(&h.svc, &old).await[0];
    assert_eq!((e.status, e.error_code), (STATUS_FAILED, ERR_AGENT_DOWN));
    assert_eq!(poll_all(&h.svc, &new).await[0].status, STATUS_DISPATCHED);

    h.svc
        .on_disconnect(key("10.0.0.1"), crate::role::task::tests::held(2));
    let e = &poll_all(&h.svc, &new).await[0];
    assert_eq!((e.status, e.error_code), (STATUS_FAILED, ERR_AGENT_DOWN));
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
    h.link.conns.lock().insert(key("10.0.0.1"), 2);
    h.svc.close_relinked().await;
    let entries = poll_all(&h.svc, &task_id).await;
    assert_eq!(
        (entries[0].status, entries[0].error_code),
        (STATUS_FAILED, ERR_AGENT_DOWN)
    );
    assert_eq!(entries[1].status, STATUS_DISPATCHED);

    // 10.0.0.2 registered on another node since (the directory says so);
    // its link here is stale.
    h.link.connected.lock().remove(&key("10.0.0.2"));
    h.link.remote.lock().insert(key("10.0.0.2"), "n2".into());
    h.svc.close_relinked().await;
    let e = &poll_all(&h.svc, &task_id).await[1];
    assert_eq!((e.status, e.error_code), (STATUS_FAILED, ERR_AGENT_DOWN));
}

#[tokio::test]
async fn a_task_sent_on_a_connection_registered_after_its_creation_is_not_relinked() {
    let h = harness().await;
    // The agent's new connection registers (a newer claim) while the task
    // is being created; the task goes out under it and is not relinked,
    // however the times of the two compare.
    h.link.conns.lock().insert(key("10.0.0.1"), 2);
    let task_id = h
        .svc
        .start_script(spec(&["0:10.0.0.1"], &["sleep 9"]))
        .await
        .unwrap();
    h.svc.close_relinked().await;
    assert_eq!(
        poll_all(&h.svc, &task_id).await[0].status,
        STATUS_DISPATCHED
    );
}

#[tokio::test]
async fn a_store_that_fails_then_recovers_ends_up_with_what_memory_holds() {
    let h = harness().await;
    let flaky = Arc::new(FlakyStore {
        inner: h.store.clone(),
        fail_writes: 0.into(),
    });
    let store: Arc<dyn StateStore> = flaky.clone();
    let svc = service(&store, &h.link, None).await;
    let set_failures = |n: usize| {
        flaky
            .fail_writes
            .store(n, std::sync::atomic::Ordering::SeqCst)
    };
    let mut writer = WriterState::default();
    let later = Instant::now() + MEMORY_TTL + Duration::from_secs(1);

    let first = svc
        .start_script(spec(&["0:10.0.0.1", "0:10.0.0.2"], &["echo", "echo"]))
        .await
        .unwrap();
    svc.on_frame(
        key("10.0.0.1"),
        status_frame(&first, 0, STATUS_RUNNING, ERR_RUNNING, 0),
    );
    svc.on_frame(key("10.0.0.1"), output_frame(&first, 0, "one "));
    assert!(svc.flush(&mut writer).await, "the first part is saved");
    set_failures(4);
    svc.on_frame(key("10.0.0.1"), output_frame(&first, 0, "two "));
    assert!(!svc.flush(&mut writer).await);
    svc.on_frame(key("10.0.0.1"), output_frame(&first, 0, "three"));
    run_ok(&svc, "10.0.0.1", &first, 1, "x");
    assert!(!svc.flush(&mut writer).await);
    let second = svc
        .start_script(spec(&["0:10.0.0.2"], &["true"]))
        .await
        .unwrap();
    run_ok(&svc, "10.0.0.2", &second, 0, "é");
    run_ok(&svc, "10.0.0.2", &first, 0, "a");
    run_ok(&svc, "10.0.0.2", &first, 1, "b");
    svc.on_frame(
        key("10.0.0.1"),
        status_frame(&first, 0, STATUS_SUCCESS, ERR_NONE, 0),
    );
    assert!(!svc.flush(&mut writer).await);
    assert!(!svc.flush(&mut writer).await);
    svc.evict_within(later, 0, 0);
    assert_eq!(svc.counts(), (2, 0), "unsaved tasks never leave memory");
    let in_memory = (poll_all(&svc, &first).await, poll_all(&svc, &second).await);
    assert_eq!(in_memory.0[0].screen, "one two three");
    assert!(svc.flush(&mut writer).await, "the store is back");
    svc.evict_within(later, 0, 0);
    assert_eq!(svc.counts(), (0, 0));
    let from_store = (poll_all(&svc, &first).await, poll_all(&svc, &second).await);
    assert_eq!(from_store, in_memory);
}

#[tokio::test]
async fn finished_saved_tasks_leave_memory_when_their_logs_are_over_the_byte_limit() {
    let h = harness().await;
    let big = h
        .svc
        .start_script(spec(&["0:10.0.0.1"], &["cat big"]))
        .await
        .unwrap();
    run_ok(&h.svc, "10.0.0.1", &big, 0, &"x".repeat(1000));
    let small = h
        .svc
        .start_script(spec(&["0:10.0.0.2"], &["true"]))
        .await
        .unwrap();
    run_ok(&h.svc, "10.0.0.2", &small, 0, "ok");
    let running = h
        .svc
        .start_script(spec(&["0:10.0.0.2"], &["sleep 9"]))
        .await
        .unwrap();
    h.svc
        .on_frame(key("10.0.0.2"), output_frame(&running, 0, &"y".repeat(500)));
    flush(&h.svc).await;
    let now = Instant::now();
    h.svc.evict_within(now, usize::MAX, 2000);
    assert_eq!(h.svc.counts(), (3, 1), "1502 bytes are within the limit");
    h.svc.evict_within(now, usize::MAX, 1000);
    assert!(h.svc.live(&big).is_none(), "the oldest finished task goes");
    assert!(
        h.svc.live(&small).is_some(),
        "502 bytes are within the limit"
    );
    h.svc.evict_within(now, usize::MAX, 100);
    assert!(h.svc.live(&small).is_none());
    assert!(h.svc.live(&running).is_some(), "a running task stays");
    assert_eq!(poll_all(&h.svc, &big).await[0].screen, "x".repeat(1000));
}
