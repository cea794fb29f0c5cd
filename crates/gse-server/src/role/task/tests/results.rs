//! Agent frames applied to entries, and polls (screen slicing by byte offset).

use super::*;

// === results from agents ===

#[tokio::test]
async fn agent_frames_update_entries_and_final_ones_never_change() {
    let h = harness().await;
    let task_id = h
        .svc
        .start_script(spec(&["0:10.0.0.1"], &["echo a", "echo b"]))
        .await
        .unwrap();
    run_ok(&h.svc, "10.0.0.1", &task_id, 0, "a\n");
    let exit3 = status_frame(&task_id, 1, STATUS_FAILED, ERR_NONE, 3);
    h.svc
        .on_frame(key("10.0.0.1"), output_frame(&task_id, 1, "b\n"));
    h.svc.on_frame(key("10.0.0.1"), exit3);
    // Late or stray frames change nothing.
    h.svc.on_frame(
        key("10.0.0.1"),
        status_frame(&task_id, 0, STATUS_RUNNING, ERR_RUNNING, 0),
    );
    h.svc
        .on_frame(key("10.0.0.1"), output_frame(&task_id, 0, "late\n"));
    h.svc
        .on_frame(key("10.0.0.2"), output_frame(&task_id, 0, "not my task\n"));
    h.svc
        .on_frame(key("10.0.0.1"), output_frame("GSETASK:S:nope:1", 0, "x"));
    h.svc.on_frame(
        key("10.0.0.1"),
        status_frame(&task_id, 7, STATUS_SUCCESS, ERR_NONE, 0),
    );

    let entries = poll_all(&h.svc, &task_id).await;
    assert_eq!(
        entries
            .iter()
            .map(|e| (
                e.atomic_task_id,
                e.status,
                e.error_code,
                e.exit_code,
                e.screen.as_str()
            ))
            .collect::<Vec<_>>(),
        [
            (0, STATUS_SUCCESS, ERR_NONE, 0, "a\n"),
            (1, STATUS_FAILED, ERR_NONE, 3, "b\n")
        ]
    );
    assert_eq!(
        (entries[0].start_ms, entries[0].end_ms),
        (1_700_000_000_000, 1_700_000_001_000)
    );
    assert_eq!(h.svc.counts(), (1, 0), "the task is finished");
}

#[tokio::test]
async fn output_over_the_limit_is_cut_on_a_character_boundary() {
    let h = harness().await;
    let task_id = h
        .svc
        .start_script(spec(&["0:10.0.0.1"], &["yes"]))
        .await
        .unwrap();
    let big = "é".repeat(DEFAULT_OUTPUT_LIMIT as usize); // 2 bytes each: twice the limit
    h.svc
        .on_frame(key("10.0.0.1"), output_frame(&task_id, 0, &big));
    h.svc
        .on_frame(key("10.0.0.1"), output_frame(&task_id, 0, "more"));
    let log_len: usize = {
        let task = h.svc.live(&task_id).unwrap();
        let state = task.state.lock();
        state.entries[0].log.len()
    };
    assert!(
        log_len <= DEFAULT_OUTPUT_LIMIT as usize + 1024 + 64,
        "{log_len}"
    );
    let e = &h
        .svc
        .results(
            &task_id,
            &poll_one("0:10.0.0.1", 0, log_len as u64 - 60, None),
        )
        .await
        .unwrap()[0];
    assert!(
        e.screen.ends_with("output over the limit was dropped]\n"),
        "{}",
        e.screen
    );
}

#[tokio::test]
async fn screens_slice_by_utf8_byte_offset_from_memory_and_from_the_store() {
    let h = harness().await;
    let text = "中文日志 ✓\nok\n";
    let task_id = h
        .svc
        .start_script(spec(&["0:10.0.0.1"], &["cat"]))
        .await
        .unwrap();
    run_ok(&h.svc, "10.0.0.1", &task_id, 0, text);

    for from_store in [false, true] {
        if from_store {
            flush(&h.svc).await;
            h.svc
                .evict(Instant::now() + MEMORY_TTL + Duration::from_secs(1));
            assert!(h.svc.live(&task_id).is_none());
        }
        // Read as bk-job does, 4 bytes at a time: each screen is whole characters.
        let (mut offset, mut got) = (0u64, String::new());
        loop {
            let e = &h
                .svc
                .results(&task_id, &poll_one("0:10.0.0.1", 0, offset, Some(4)))
                .await
                .unwrap()[0];
            assert!(e.screen.len() <= 4, "{:?}", e.screen);
            if e.screen.is_empty() {
                break;
            }
            offset += e.screen.len() as u64;
            got.push_str(&e.screen);
        }
        assert_eq!(got, text, "from_store={from_store}");
        // An offset inside a character: its stray bytes come back as '?', one each.
        let e = &h
            .svc
            .results(&task_id, &poll_one("0:10.0.0.1", 0, 1, Some(5)))
            .await
            .unwrap()[0];
        assert_eq!(e.screen, "??文", "from_store={from_store}");
        // Past the end: empty, not an error.
        let e = &h
            .svc
            .results(&task_id, &poll_one("0:10.0.0.1", 0, 1000, None))
            .await
            .unwrap()[0];
        assert_eq!((e.screen.as_str(), e.status), ("", STATUS_SUCCESS));
    }
}

#[test]
fn screen_cuts_back_to_a_boundary_and_counts_stray_bytes() {
    use crate::role::task::query::screen;
    let s = "a中b".as_bytes(); // 1 + 3 + 1 bytes
    assert_eq!(screen(s, 1), "a");
    assert_eq!(screen(s, 2), "a");
    assert_eq!(screen(s, 3), "a");
    assert_eq!(screen(s, 4), "a中");
    assert_eq!(screen(s, 100), "a中b");
    assert_eq!(screen(&s[2..], 100), "??b");
    assert_eq!(screen(&s[2..], 1), "?");
    assert_eq!(screen(b"", 10), "");
}

#[tokio::test]
async fn polls_find_agents_by_any_name_and_skip_what_the_task_lacks() {
    let h = harness().await;
    let task_id = h
        .svc
        .start_script(spec(&["0:10.0.0.1"], &["true"]))
        .await
        .unwrap();
    for name in ["0:10.0.0.1", "id-10.0.0.1"] {
        let got = h
            .svc
            .results(&task_id, &poll_one(name, 0, 0, None))
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "{name}");
        assert_eq!(got[0].bk_agent_id, name, "echoed as asked");
    }
    assert!(
        h.svc
            .results(&task_id, &poll_one("0:10.0.0.2", 0, 0, None))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        h.svc
            .results(&task_id, &poll_one("0:10.0.0.1", 5, 0, None))
            .await
            .unwrap()
            .is_empty()
    );
    let err = h
        .svc
        .results("GSETASK:S:nope:1", &ResultQuery::default())
        .await
        .unwrap_err();
    assert!(matches!(err, TaskError::NotFound(_)), "{err}");
}

#[tokio::test]
async fn one_answer_holds_a_bounded_total_of_screens_cut_on_boundaries() {
    let h = harness().await;
    let task_id = h
        .svc
        .start_script(spec(&["0:10.0.0.1", "0:10.0.0.2"], &["echo"]))
        .await
        .unwrap();
    run_ok(&h.svc, "10.0.0.1", &task_id, 0, "abcé");
    run_ok(&h.svc, "10.0.0.2", &task_id, 0, "xyz");
    let all = ResultQuery::default();
    let screens = |v: Vec<EntryView>| v.into_iter().map(|e| e.screen).collect::<Vec<_>>();
    // é is two bytes: a budget of 4 stops before it; the byte left goes on.
    let live = screens(h.svc.results_within(&task_id, &all, 4).await.unwrap());
    assert_eq!(live, ["abc", "x"]);
    let live = screens(h.svc.results_within(&task_id, &all, 5).await.unwrap());
    assert_eq!(live, ["abcé", ""]);
    let live = screens(h.svc.results_within(&task_id, &all, 7).await.unwrap());
    assert_eq!(live, ["abcé", "xy"]);
    flush(&h.svc).await;
    h.svc
        .evict(Instant::now() + MEMORY_TTL + Duration::from_secs(1));
    assert!(h.svc.live(&task_id).is_none());
    let stored = screens(h.svc.results_within(&task_id, &all, 4).await.unwrap());
    assert_eq!(stored, ["abc", "x"]);
    let stored = screens(h.svc.results_within(&task_id, &all, 5).await.unwrap());
    assert_eq!(stored, ["abcé", ""]);
    let stored = screens(h.svc.results_within(&task_id, &all, 7).await.unwrap());
    assert_eq!(stored, ["abcé", "xy"]);
    assert_eq!(screens(poll_all(&h.svc, &task_id).await), ["abcé", "xyz"]);
}

#[tokio::test]
async fn an_entry_asked_for_again_is_answered_once_as_first_asked() {
    let h = harness().await;
    let task_id = h
        .svc
        .start_script(spec(&["0:10.0.0.1"], &["echo a"]))
        .await
        .unwrap();
    run_ok(&h.svc, "10.0.0.1", &task_id, 0, "hello\n");
    let once = poll_one("0:10.0.0.1", 0, 2, None);
    let mut agents = once.agents.clone().unwrap();
    // The same entry 1000 more times, from another offset, and once with
    // every atomic task: still one entry, from the first offset.
    let mut again = poll_one("0:10.0.0.1", 0, 0, None).agents.unwrap();
    again[0].atomic_tasks.clear();
    for _ in 0..1000 {
        agents.extend(poll_one("0:10.0.0.1", 0, 0, None).agents.unwrap());
    }
    agents.extend(again);
    let query = ResultQuery {
        agents: Some(agents),
    };
    let entries = h.svc.results(&task_id, &query).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].screen, "llo\n");
}
