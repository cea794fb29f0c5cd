//! Admission limits, turns and frame budgets, without sockets.

use super::*;

fn admission(per_uid: usize) -> Admission {
    reserving(per_uid, 0)
}

fn reserving(per_uid: usize, root_reserve: usize) -> Admission {
    Admission::new(
        Names {
            socket: "test socket",
            per_uid_key: "test.max_connections_per_uid",
            reserve_key: "test.root_reserved_connections",
        },
        ConnLimits {
            max_connections: 8,
            max_connections_per_uid: per_uid,
            root_reserve,
            idle_timeout: Duration::from_secs(1),
            max_frame: 1 << 20,
        },
    )
}

fn slot(a: &Admission, uid: u32) -> Option<Slot> {
    try_slot(a, uid).ok()
}

fn try_slot(a: &Admission, uid: u32) -> Result<Slot, Refusal> {
    let permit = a.0.slots.clone().try_acquire_owned().unwrap();
    a.admit(
        Peer {
            pid: Some(1),
            uid: Some(uid),
        },
        permit,
    )
}

#[test]
fn a_user_is_capped_but_root_and_others_are_not() {
    let a = admission(2);
    let held: Vec<_> = (0..2).map(|_| slot(&a, 65534).unwrap()).collect();
    assert!(slot(&a, 65534).is_none(), "a third connection of one user");
    let others = [slot(&a, 1000), slot(&a, 0), slot(&a, 0), slot(&a, 0)];
    assert!(
        others.iter().all(Option::is_some),
        "root and others still admitted"
    );
    drop(held);
    let again = slot(&a, 65534);
    assert!(again.is_some(), "closing frees the user's places");
    assert_eq!(a.0.uids.lock().by_uid.get(&65534).map(|u| u.conns), Some(1));
    drop(again);
    assert!(
        !a.0.uids.lock().by_uid.contains_key(&65534),
        "a user's entry goes with its last connection"
    );
}

#[tokio::test]
async fn unfinished_frames_share_a_bounded_budget_per_user() {
    let a = admission(4);
    let frame = 1 << 20;
    let s1 = slot(&a, 7).unwrap();
    let s2 = slot(&a, 7).unwrap();
    let s3 = slot(&a, 7).unwrap();
    let held = [s1.reserve(frame).await, s2.reserve(frame).await];
    // The user's two frames are buffered; a third waits for room.
    let third = tokio::time::timeout(Duration::from_millis(100), s3.reserve(frame)).await;
    assert!(
        third.is_err(),
        "a third unfinished frame of one user got room"
    );
    // Another user still has room.
    let other = slot(&a, 8).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(1), other.reserve(frame)).await;
    assert!(got.is_ok());
    drop(held);
    let third = tokio::time::timeout(Duration::from_secs(1), s3.reserve(frame)).await;
    assert_eq!(third.expect("room once a frame is done").len, frame);
}

#[test]
fn users_together_leave_roots_reserve_free() {
    // 8 connections, 2 kept for root; 3 per user.
    let a = reserving(3, 2);
    let mut held: Vec<_> = (0..3).map(|_| slot(&a, 1001).unwrap()).collect();
    held.extend((0..3).map(|_| slot(&a, 1002).unwrap()));
    assert_eq!(
        try_slot(&a, 1003).err(),
        Some(Refusal::Share),
        "a third user past the non-root share"
    );
    let root: Vec<_> = (0..2).map(|_| slot(&a, 0).unwrap()).collect();
    assert_eq!(a.0.uids.lock().non_root, 6);
    held.pop();
    let third = slot(&a, 1003);
    assert!(third.is_some(), "a closed connection frees the share");
    drop(root);
    assert_eq!(a.0.uids.lock().non_root, 6, "root's do not count");
}

#[tokio::test]
async fn a_full_channel_serves_uids_by_turns_not_connections() {
    let a = admission(8);
    let (tx, mut rx) = mpsc::channel::<(u32, usize)>(1);
    tx.send((u32::MAX, 0)).await.unwrap();
    // Uid 7 waits on five connections, then uid 0 on one.
    let mut waiting = Vec::new();
    for (uid, n) in [(7, 5), (0, 1)] {
        for i in 0..n {
            let (slot, tx) = (slot(&a, uid).unwrap(), tx.clone());
            waiting.push(tokio::spawn(async move {
                slot.send(&tx, (uid, i)).await.unwrap();
                slot.send(&tx, (uid, i + 10)).await.unwrap();
            }));
            tokio::task::yield_now().await;
        }
    }
    drop(tx);
    let mut order = Vec::new();
    while let Some((uid, _)) = rx.recv().await {
        order.push(uid);
    }
    // Root's two records come within the first few, not after uid 7's ten.
    let roots: Vec<_> = order
        .iter()
        .enumerate()
        .filter(|(_, u)| **u == 0)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(roots.len(), 2, "{order:?}");
    assert!(
        roots[1] <= 4,
        "root waited behind every connection: {order:?}"
    );
    for w in waiting {
        w.await.unwrap();
    }
}
