//! The direct path (F2, F3): piece requests relayed to the source and its
//! answers back, and every way a request is refused.

use gse_proto::link::PieceStatus;

use super::*;
use crate::role::file::relay::{ANSWER_WITHIN, MAX_OUTSTANDING_PER_SOURCE};

/// A running transfer: source 10.0.0.1, targets 10.0.0.2 and 10.0.0.3.
async fn running() -> (Harness, String) {
    let h = harness().await;
    let id = h
        .start(spec("0:10.0.0.1", &["0:10.0.0.2", "0:10.0.0.3"]))
        .await;
    h.manifest("10.0.0.1", &id, 0).await;
    h.link.sent.lock().clear();
    (h, id)
}

fn request(id: &str, entry: u32, piece: u32, request_id: u64) -> Frame {
    Frame::new(
        MsgType::PieceRequest,
        0,
        &PieceRequest {
            transfer_id: id.into(),
            task_index: 0,
            entry_index: entry,
            piece,
            request_id,
        },
    )
}

fn answer(req: &PieceRequest, data: &[u8]) -> Frame {
    Frame::new(
        MsgType::PieceData,
        0,
        &PieceData {
            transfer_id: req.transfer_id.clone(),
            task_index: req.task_index,
            entry_index: req.entry_index,
            piece: req.piece,
            request_id: req.request_id,
            status: PieceStatus::PieceOk as i32,
            data: bytes::Bytes::copy_from_slice(data),
            message: String::new(),
        },
    )
}

/// The one `PieceData` sent to `ip`.
async fn answered(h: &Harness, ip: &str) -> PieceData {
    let mut got = h.link.piece_data().await;
    assert_eq!(got.len(), 1, "{got:?}");
    let (to, d) = got.remove(0);
    assert_eq!(to, key(ip));
    d
}

#[tokio::test]
async fn f2_a_piece_goes_to_the_source_and_back_under_each_sides_id() {
    let (h, id) = running().await;
    h.frame("10.0.0.2", request(&id, 0, 1, 77)).await;
    h.frame("10.0.0.3", request(&id, 0, 1, 77)).await;
    let reqs = h.link.piece_requests().await;
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|(to, _)| *to == key("10.0.0.1")));
    assert_ne!(
        reqs[0].1.request_id, reqs[1].1.request_id,
        "node ids are unique"
    );
    assert_eq!(h.svc.relays_waiting(), 2);

    h.frame("10.0.0.1", answer(&reqs[1].1, b"piece-bytes"))
        .await;
    let d = answered(&h, "10.0.0.3").await;
    assert_eq!(d.request_id, 77, "the requester's own id");
    assert_eq!(
        (d.status, &d.data[..]),
        (PieceStatus::PieceOk as i32, &b"piece-bytes"[..])
    );
    assert_eq!((d.entry_index, d.piece), (0, 1));
    assert_eq!(h.svc.relays_waiting(), 1);

    // A second answer, or one from another agent, goes nowhere.
    h.frame("10.0.0.1", answer(&reqs[1].1, b"again")).await;
    h.frame("10.0.0.2", answer(&reqs[0].1, b"forged")).await;
    assert!(h.link.piece_data().await.is_empty());
    assert_eq!(h.svc.relays_waiting(), 1);
}

#[tokio::test]
async fn bad_requests_are_answered_with_an_error_at_once() {
    let (h, id) = running().await;
    let cases = [
        (
            "10.0.0.2",
            request("GSETASK:F:nope:1", 0, 0, 1),
            "not running on this node",
        ),
        ("10.0.0.4", request(&id, 0, 0, 2), "not a target or relay"),
        ("10.0.0.2", request(&id, 5, 0, 3), "has no entry 5"),
        (
            "10.0.0.2",
            request(&id, 0, 2, 4),
            "has no piece 2 (2 pieces)",
        ),
        (
            "10.0.0.2",
            request(&id, 1, 0, 5),
            "has no piece 0 (0 pieces)",
        ),
    ];
    for (ip, frame, want) in cases {
        h.frame(ip, frame).await;
        let d = answered(&h, ip).await;
        assert_eq!(d.status, PieceStatus::PieceError as i32);
        assert!(d.message.contains(want), "{want}: {}", d.message);
    }
    assert!(h.link.piece_requests().await.is_empty());
}

#[tokio::test]
async fn f3_a_source_that_is_not_here_is_an_error_at_once() {
    let (h, id) = running().await;
    h.link.disconnect("10.0.0.1");
    h.frame("10.0.0.2", request(&id, 0, 0, 9)).await;
    let d = answered(&h, "10.0.0.2").await;
    assert_eq!(
        (d.status, d.request_id),
        (PieceStatus::PieceError as i32, 9)
    );
    assert!(d.message.contains("0:10.0.0.1 is offline"), "{}", d.message);
}

#[tokio::test]
async fn a_full_source_queue_or_too_many_waiting_answers_busy() {
    let (h, id) = running().await;
    for i in 0..MAX_OUTSTANDING_PER_SOURCE as u64 {
        h.frame("10.0.0.2", request(&id, 0, 0, i)).await;
    }
    assert_eq!(
        h.link.piece_requests().await.len(),
        MAX_OUTSTANDING_PER_SOURCE
    );
    h.frame("10.0.0.3", request(&id, 0, 0, 1000)).await;
    let d = answered(&h, "10.0.0.3").await;
    assert_eq!(
        (d.status, d.request_id),
        (PieceStatus::PieceBusy as i32, 1000)
    );

    h.svc
        .on_disconnect(key("10.0.0.2"), crate::role::task::tests::held(FIRST_CONN));
    assert_eq!(
        h.svc.relays_waiting(),
        0,
        "a requester's requests are forgotten when it goes"
    );
    h.link.refuse.lock().insert(key("10.0.0.1"));
    h.frame("10.0.0.3", request(&id, 0, 0, 1001)).await;
    let d = answered(&h, "10.0.0.3").await;
    assert_eq!(d.status, PieceStatus::PieceBusy as i32);
    assert_eq!(h.svc.relays_waiting(), 0);
}

#[tokio::test]
async fn waiting_requests_fail_when_the_source_goes_and_expire_when_it_is_silent() {
    let (h, id) = running().await;
    h.frame("10.0.0.2", request(&id, 0, 0, 1)).await;
    h.svc.sweep_relays(std::time::Instant::now());
    assert!(h.link.piece_data().await.is_empty(), "not expired yet");
    h.svc
        .sweep_relays(std::time::Instant::now() + ANSWER_WITHIN);
    let d = answered(&h, "10.0.0.2").await;
    assert_eq!((d.status, d.request_id), (PieceStatus::PieceBusy as i32, 1));
    assert!(
        d.message.contains("did not answer within 30s"),
        "{}",
        d.message
    );

    h.frame("10.0.0.2", request(&id, 0, 1, 2)).await;
    // An older connection of the source ending changes nothing.
    h.svc.on_disconnect(
        key("10.0.0.1"),
        crate::role::task::tests::held(FIRST_CONN + 5),
    );
    assert!(h.link.piece_data().await.is_empty());
    h.svc
        .on_disconnect(key("10.0.0.1"), crate::role::task::tests::held(FIRST_CONN));
    let d = answered(&h, "10.0.0.2").await;
    assert_eq!(
        (d.status, d.request_id),
        (PieceStatus::PieceError as i32, 2)
    );
    assert!(d.message.contains("went offline"));
}
