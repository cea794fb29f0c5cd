use super::*;

const A: &str = "0:10.0.0.1";
const B: &str = "2:10.0.0.2";

fn key(s: &str) -> AgentKey {
    s.parse().unwrap()
}

fn snap(time_ms: u64) -> Vec<u8> {
    format!(r#"{{"time_ms":{time_ms},"cpu":{{"count":2}},"extra_from_a_newer_agent":[1,2]}}"#)
        .into_bytes()
}

fn cache(config: SnapshotCacheConfig) -> SnapshotCache {
    SnapshotCache::new(1100001, config)
}

fn times(c: &SnapshotCache, k: &str, now: Instant) -> Vec<u64> {
    c.get_at(&key(k), false, now)
        .unwrap_or_default()
        .iter()
        .map(|j| {
            serde_json::from_str::<serde_json::Value>(j).unwrap()["time_ms"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn keeps_the_window_oldest_first_and_the_payload_as_sent() {
    let c = cache(SnapshotCacheConfig::default());
    let t0 = Instant::now();
    for i in 0..5u64 {
        c.insert_at(A, &snap(1000 + i * 5000), t0 + Duration::from_secs(i * 5))
            .unwrap();
    }
    let now = t0 + Duration::from_secs(20);
    assert_eq!(times(&c, A, now), [1000, 6000, 11000, 16000, 21000]);
    let kept = c.get_at(&key(A), false, now).unwrap();
    assert_eq!(&*kept[0], std::str::from_utf8(&snap(1000)).unwrap());
    let latest = c.get_at(&key(A), true, now).unwrap();
    assert_eq!(latest.len(), 1);
    assert!(latest[0].contains("21000"));

    // 61 s after the first arrived, it is gone; the rest stay.
    let later = t0 + Duration::from_secs(61);
    assert_eq!(times(&c, A, later), [6000, 11000, 16000, 21000]);
    // A sweep frees the memory of what expired, and then of the agent.
    let far = t0 + Duration::from_secs(200);
    c.inner.lock().sweep(far, c.window());
    assert_eq!(c.usage(), (0, 0));
    assert!(c.get_at(&key(A), false, far).is_none());
}

#[test]
fn agents_are_kept_apart_by_source() {
    let c = cache(SnapshotCacheConfig::default());
    let now = Instant::now();
    c.insert_at(A, &snap(1), now).unwrap();
    c.insert_at(B, &snap(2), now).unwrap();
    assert_eq!(times(&c, A, now), [1]);
    assert_eq!(times(&c, B, now), [2]);
    assert!(c.get_at(&key("0:10.0.0.2"), false, now).is_none());
    assert_eq!(c.usage().0, 2);
}

#[test]
fn bad_payloads_and_sources_are_dropped() {
    let c = cache(SnapshotCacheConfig {
        max_payload_bytes: 1024,
        ..SnapshotCacheConfig::default()
    });
    let now = Instant::now();
    let cases: [(&str, &[u8], Dropped); 7] = [
        (A, b"not json", Dropped::BadJson),
        (A, b"[1]", Dropped::BadJson),
        (A, br#"{"time_ms":"soon"}"#, Dropped::BadJson),
        (A, br#"{"cpu":{}}"#, Dropped::BadJson),
        (A, br#"{"time_ms":1} trailing"#, Dropped::BadJson),
        (A, &[0xff, 0xfe], Dropped::BadJson),
        ("agent-without-ip", &snap(1), Dropped::BadSource),
    ];
    for (source, payload, want) in cases {
        assert_eq!(
            c.insert_at(source, payload, now),
            Err(want),
            "{:?}",
            String::from_utf8_lossy(payload)
        );
    }
    let big = format!(r#"{{"time_ms":1,"pad":"{}"}}"#, "x".repeat(2000));
    assert_eq!(c.insert_at(A, big.as_bytes(), now), Err(Dropped::TooLarge));
    assert_eq!(c.usage(), (0, 0));
}

#[test]
fn duplicates_are_dropped_and_late_ones_go_in_order() {
    let c = cache(SnapshotCacheConfig::default());
    let now = Instant::now();
    c.insert_at(A, &snap(10_000), now).unwrap();
    c.insert_at(A, &snap(20_000), now).unwrap();
    assert_eq!(c.insert_at(A, &snap(20_000), now), Err(Dropped::Duplicate));
    // A batch drained late from the agent's spool: goes in its place.
    c.insert_at(A, &snap(15_000), now).unwrap();
    assert_eq!(times(&c, A, now), [10_000, 15_000, 20_000]);
    // One more than a window older than the newest: useless, dropped.
    c.insert_at(A, &snap(100_000), now).unwrap();
    assert_eq!(c.insert_at(A, &snap(39_000), now), Err(Dropped::Stale));
}

#[test]
fn per_agent_cap_drops_the_oldest() {
    let c = cache(SnapshotCacheConfig {
        max_per_agent: 3,
        ..SnapshotCacheConfig::default()
    });
    let now = Instant::now();
    for t in 1..=5 {
        c.insert_at(A, &snap(t), now).unwrap();
    }
    assert_eq!(times(&c, A, now), [3, 4, 5]);
    // A late one older than all it would displace is not kept.
    assert_eq!(c.insert_at(A, &snap(2), now), Err(Dropped::Stale));
    assert_eq!(times(&c, A, now), [3, 4, 5]);
    assert_eq!(c.usage().1, 3 * snap(3).len());
}

#[test]
fn agent_cap_refuses_new_agents_until_idle_ones_expire() {
    let c = cache(SnapshotCacheConfig {
        max_agents: 2,
        window: Duration::from_secs(10),
        ..SnapshotCacheConfig::default()
    });
    let t0 = Instant::now();
    c.insert_at(A, &snap(1), t0).unwrap();
    c.insert_at(B, &snap(1), t0).unwrap();
    assert_eq!(
        c.insert_at("0:10.0.0.3", &snap(1), t0),
        Err(Dropped::AgentsFull)
    );
    // Known agents still get in.
    c.insert_at(A, &snap(2), t0 + Duration::from_secs(5))
        .unwrap();
    // Once B's snapshot expired, the newcomer takes its place.
    let t1 = t0 + Duration::from_secs(12);
    c.insert_at("0:10.0.0.3", &snap(1), t1).unwrap();
    assert!(c.get_at(&key(B), false, t1).is_none());
    assert_eq!(c.usage().0, 2);
}

#[test]
fn byte_budget_is_never_exceeded() {
    let one = snap(1000).len();
    let c = cache(SnapshotCacheConfig {
        max_total_bytes: 3 * one + one / 2,
        ..SnapshotCacheConfig::default()
    });
    let now = Instant::now();
    c.insert_at(A, &snap(1000), now).unwrap();
    c.insert_at(A, &snap(1001), now).unwrap();
    c.insert_at(B, &snap(1000), now).unwrap();
    // Full: A's own oldest makes room for A's new one...
    c.insert_at(A, &snap(1002), now).unwrap();
    assert_eq!(times(&c, A, now), [1001, 1002]);
    // ...but an agent with nothing to give up is refused, and not kept.
    assert_eq!(
        c.insert_at("0:10.0.0.3", &snap(1000), now),
        Err(Dropped::MemoryFull)
    );
    assert!(c.get_at(&key("0:10.0.0.3"), false, now).is_none());
    let (agents, bytes) = c.usage();
    assert_eq!(agents, 2);
    assert!(bytes <= 3 * one + one / 2);
}

#[test]
fn config_problems_name_their_keys() {
    assert!(SnapshotCacheConfig::default().problems().is_empty());
    let bad = SnapshotCacheConfig {
        window: Duration::ZERO,
        max_per_agent: 0,
        max_agents: 0,
        max_payload_bytes: 10,
        max_total_bytes: 1,
    };
    let p = bad.problems().join("\n");
    for key in [
        "data.snapshot.window",
        "data.snapshot.max_per_agent",
        "data.snapshot.max_agents",
        "data.snapshot.max_payload_bytes",
        "data.snapshot.max_total_bytes",
    ] {
        assert!(p.contains(key), "{key} not in {p}");
    }
    let parsed: SnapshotCacheConfig = toml::from_str("window = \"3s\"").unwrap();
    assert_eq!(parsed.window, Duration::from_secs(3));
    assert!(toml::from_str::<SnapshotCacheConfig>("windw = \"3s\"").is_err());
}

#[test]
fn a_real_agent_snapshot_is_accepted() {
    let mut collector = gse_agent::snapshot::Collector::new().unwrap();
    let who = gse_agent::data::agent_info::AgentInfo {
        ip: "10.0.0.1".into(),
        ..Default::default()
    };
    let json = serde_json::to_vec(&collector.collect(&who)).unwrap();
    let c = cache(SnapshotCacheConfig::default());
    c.insert(A, &json).unwrap();
    let kept = c.get(&key(A), true).unwrap();
    let back: gse_agent::snapshot::Snapshot = serde_json::from_str(&kept[0]).unwrap();
    assert_eq!(back.ip, "10.0.0.1");
}
