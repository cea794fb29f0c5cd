//! Hand-over bookkeeping: counts, lapses, selection and pace.

use super::*;

#[test]
fn a_request_not_followed_lapses_and_releases_the_count() {
    let leaving = Leaving::default();
    let slot = Slot::default();
    let t0 = Instant::now();
    assert!(leaving.ask(&slot, "10.0.0.2:28668".into(), t0));
    assert!(
        !leaving.ask(&slot, "10.0.0.3:28668".into(), t0),
        "asked twice"
    );
    assert_eq!(leaving.count(), 1);
    assert_eq!(slot.to().as_deref(), Some("10.0.0.2:28668"));
    assert_eq!(leaving.pending().get("10.0.0.2:28668"), Some(&1));

    let wait = Duration::from_secs(180);
    assert!(!leaving.lapse(&slot, t0 + wait - Duration::from_secs(1), wait));
    assert_eq!(leaving.count(), 1, "still within the wait");

    assert!(leaving.lapse(&slot, t0 + wait, wait));
    assert_eq!(leaving.count(), 0);
    assert!(leaving.pending().is_empty());
    assert!(leaving.take_departed().is_empty(), "it did not go");
    assert_eq!(slot.to(), None);
    assert!(slot.lapsed_lately(t0 + wait));
    assert!(!leaving.lapse(&slot, t0 + wait * 2, wait), "lapses once");
    assert_eq!(leaving.count(), 0);

    // It can be asked again later, and counts again.
    let t1 = t0 + wait * 2;
    assert!(!slot.lapsed_lately(t1 + wait));
    assert!(leaving.ask(&slot, "10.0.0.3:28668".into(), t1));
    assert_eq!(leaving.count(), 1);
    // A lapse timer of the first request finds this one not due.
    assert!(!leaving.lapse(&slot, t1 + Duration::from_secs(1), wait));
    assert_eq!(leaving.count(), 1);
}

#[test]
fn idle_agents_go_first_busy_old_ones_never_and_lapsed_ones_last() {
    let idle = Standing {
        follows: true,
        proxied: false,
        ..Standing::default()
    };
    let busy = Standing { busy: true, ..idle };
    let lapsed = Standing {
        lapsed_lately: true,
        ..idle
    };
    let old_idle = Standing {
        follows: false,
        proxied: false,
        ..idle
    };
    let old_busy = Standing {
        busy: true,
        ..old_idle
    };
    let asked = Standing {
        asked: true,
        ..idle
    };
    let anywhere = |_: &&str| Some("10.0.0.2:28668".to_string());
    let first = |list: Vec<(&'static str, Standing)>| pick(list, anywhere).map(|(s, _)| s);

    assert_eq!(first(vec![("busy", busy), ("idle", idle)]), Some("idle"));
    assert_eq!(
        first(vec![("lapsed", lapsed), ("busy", busy)]),
        Some("busy")
    );
    assert_eq!(
        first(vec![("lapsed", lapsed)]),
        Some("lapsed"),
        "picked again, later"
    );
    assert_eq!(
        first(vec![("old busy", old_busy), ("lapsed", lapsed)]),
        Some("lapsed")
    );
    assert_eq!(first(vec![("old busy", old_busy), ("asked", asked)]), None);
    assert_eq!(
        first(vec![("busy", busy), ("old idle", old_idle)]),
        Some("old idle")
    );
    // One with no target (another region, balanced) is passed over.
    let only_b = |s: &&str| (*s == "b").then(|| "10.0.0.2:28668".to_string());
    let list = vec![("a", idle), ("b", busy)];
    assert_eq!(pick(list, only_b).map(|(s, _)| s), Some("b"));
}

#[test]
fn agents_ready_at_once_go_at_the_hand_over_rate() {
    let pace = Pace::default();
    let t0 = Instant::now();
    assert!((0..100).all(|_| pace.allow(t0)), "no limit set");
    pace.set(2);
    let t1 = t0 + Duration::from_secs(5);
    assert!(pace.allow(t1));
    assert!(pace.allow(t1 + Duration::from_millis(500)));
    assert!(!pace.allow(t1 + Duration::from_millis(900)), "two a second");
    assert!(pace.allow(t1 + Duration::from_secs(1)), "the next second");
}

#[test]
fn a_session_that_left_counts_once_and_never_lapses() {
    let leaving = Leaving::default();
    let slot = Slot::default();
    let t0 = Instant::now();
    leaving.left(&slot);
    assert_eq!(leaving.count(), 0, "one never asked is not counted");

    assert!(leaving.ask(&slot, "10.0.0.2:28668".into(), t0));
    leaving.left(&slot);
    leaving.left(&slot);
    assert_eq!(leaving.count(), 0, "released once");
    assert!(leaving.pending().is_empty());
    assert_eq!(leaving.take_departed(), vec!["10.0.0.2:28668".to_string()]);
    assert_eq!(
        slot.to().as_deref(),
        Some("10.0.0.2:28668"),
        "its lost alarm is left out"
    );
    let wait = Duration::from_secs(180);
    assert!(!leaving.lapse(&slot, t0 + wait, wait));
    assert_eq!(leaving.count(), 0);
}
