use super::*;
use crate::data::batcher::OutBatch;
use crate::data::wire::BatchBuf;

fn mem(seq: u64) -> Pending {
    let mut buf = BatchBuf::with_capacity(16);
    buf.push(1, 1, Default::default(), b"x");
    Pending::from_batcher(
        OutBatch {
            data_id: 1,
            buf,
            bytes: 10,
        },
        seq,
    )
}

fn spooled(seq: u64, at: u64) -> Pending {
    Pending {
        origin: Origin::Spool(SeqNo(at)),
        ..mem(seq)
    }
}

#[test]
fn acks_out_of_order_free_memory_and_ignore_unknown_seqs() {
    let now = Instant::now();
    let mut b = Book::new();
    for s in 1..=3 {
        b.push_memory(mem(s));
    }
    assert_eq!(b.mem_bytes(), 30);
    while let Some(p) = b.pop_memory() {
        b.sent(p, now);
    }
    assert_eq!(b.on_ack(3, 0, now).stored, Some(1));
    assert_eq!(b.on_ack(3, 0, now).stored, None, "a second ack is ignored");
    assert_eq!(b.on_ack(99, 0, now), AckOutcome::default());
    b.on_ack(1, 0, now);
    assert_eq!(b.mem_bytes(), 10);
    assert_eq!(b.in_flight(), 1);
    b.on_ack(2, 0, now);
    assert!(b.is_idle());
    assert_eq!(b.mem_bytes(), 0);
}

#[test]
fn spool_is_acked_only_up_to_the_oldest_outstanding_entry() {
    let now = Instant::now();
    let mut b = Book::new();
    let read: Vec<_> = (0..4).map(|i| spooled(100 + i, i)).collect();
    let (send, ack) = b.take_spooled(read, Some(SeqNo(3)), 4, 8);
    assert_eq!(ack, None);
    assert!(!b.wants_spool(), "fewer read than asked: spool exhausted");
    for p in send {
        b.sent(p, now);
    }
    // Acks for entries 1 and 3 come first: nothing contiguous yet.
    assert_eq!(b.on_ack(101, 0, now).spool_ack, None);
    assert_eq!(b.on_ack(103, 0, now).spool_ack, None);
    // Entry 0 acked: 0 and 1 are done, 2 is outstanding.
    assert_eq!(b.on_ack(100, 0, now).spool_ack, Some(SeqNo(1)));
    // Entry 2 acked: everything read (up to 3) is done.
    assert_eq!(b.on_ack(102, 0, now).spool_ack, Some(SeqNo(3)));
}

#[test]
fn refused_batches_are_retried_after_a_growing_delay() {
    let now = Instant::now();
    let mut b = Book::new();
    b.push_memory(mem(1));
    let p = b.pop_memory().unwrap();
    b.sent(p, now);
    assert_eq!(b.on_ack(1, 5, now).stored, None);
    assert_eq!(b.mem_bytes(), 10, "a refused batch stays in memory");
    assert!(b.take_due_retry(now).is_none());
    let again = b.take_due_retry(now + RETRY_FIRST).unwrap();
    assert_eq!(again.seq, 1);
    b.sent(again, now);
    b.on_ack(1, 5, now);
    assert_eq!(b.next_retry(), Some(now + RETRY_FIRST * 2));
}

#[test]
fn a_lost_link_spools_memory_in_seq_order_and_rereads_the_spool() {
    let now = Instant::now();
    let mut b = Book::new();
    for s in [5, 6, 7] {
        b.push_memory(mem(s));
    }
    let p = b.pop_memory().unwrap();
    b.sent(p, now); // 5 in flight, 6 and 7 queued
    let (send, _) = b.take_spooled(vec![spooled(1, 0), spooled(2, 1)], Some(SeqNo(1)), 2, 2);
    for p in send {
        b.sent(p, now);
    }
    b.on_ack(2, 0, now); // spool entry 1 acked early
    let out = b.reset_link(false);
    assert_eq!(out.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![5, 6, 7]);
    assert!(b.is_idle());
    assert_eq!(b.mem_bytes(), 0);
    assert!(b.wants_spool());
    assert_eq!(b.spool_cursor(), None);
    // Reading the spool again from its head skips the entry acked before.
    let (send, ack) = b.take_spooled(vec![spooled(1, 0), spooled(2, 1)], Some(SeqNo(1)), 2, 8);
    assert_eq!(send.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![1]);
    assert_eq!(ack, None);
    b.sent(send.into_iter().next().unwrap(), now);
    assert_eq!(b.on_ack(1, 0, now).spool_ack, Some(SeqNo(1)));
}

#[test]
fn a_move_keeps_unacked_memory_batches_first_in_line() {
    let now = Instant::now();
    let mut b = Book::new();
    for s in [1, 2, 3] {
        b.push_memory(mem(s));
    }
    for _ in 0..2 {
        let p = b.pop_memory().unwrap();
        b.sent(p, now);
    }
    b.on_ack(1, 0, now);
    assert!(b.reset_link(true).is_empty());
    assert_eq!(b.mem_bytes(), 20);
    let order: Vec<u64> = std::iter::from_fn(|| b.pop_memory())
        .map(|p| p.seq)
        .collect();
    assert_eq!(
        order,
        vec![2, 3],
        "nothing lost, the unacked one goes first"
    );
}

#[test]
fn stall_is_measured_from_the_oldest_batch_in_flight() {
    let now = Instant::now();
    let mut b = Book::new();
    assert_eq!(b.oldest_wait(now), None);
    b.sent(mem(1), now);
    b.sent(mem(2), now + Duration::from_secs(1));
    assert_eq!(
        b.oldest_wait(now + Duration::from_secs(3)),
        Some(Duration::from_secs(3))
    );
}
