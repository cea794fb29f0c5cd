use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// A batch whose bytes depend on `tag`, so mix-ups are visible.
fn batch(tag: u64, records: usize, record_len: usize) -> SpoolBatch {
    SpoolBatch {
        data_id: (tag % 7) as u32 + 1,
        records: (0..records)
            .map(|i| {
                let fill = (tag as usize * 31 + i) as u8;
                let mut r = vec![fill; record_len];
                r[..8.min(record_len)].copy_from_slice(&tag.to_le_bytes()[..8.min(record_len)]);
                Bytes::from(r)
            })
            .collect(),
    }
}

/// Small segments so that a few dozen batches span many files; fsync per
/// push only where a test is about it (the spool is crash-safe for a
/// process crash under either policy).
fn small(max_bytes: u64) -> SpoolOptions {
    SpoolOptions {
        max_bytes,
        segment_bytes: MIN_SEGMENT_BYTES,
        sync: SyncPolicy::EveryN(64),
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

fn peek_all(spool: &mut Spool) -> Vec<(SeqNo, SpoolBatch)> {
    spool.peek(usize::MAX).unwrap()
}

fn seqs(items: &[(SeqNo, SpoolBatch)]) -> Vec<u64> {
    items.iter().map(|(s, _)| s.0).collect()
}

#[test]
fn spool_push_peek_ack_keep_order_across_segments_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open_with(tmp.path(), small(1 << 20)).unwrap();
    for tag in 0..100 {
        let out = spool.push(&batch(tag, 3, 150)).unwrap();
        assert_eq!(out.seq, SeqNo(tag));
        assert_eq!((out.dropped_batches, out.dropped_bytes), (0, 0));
    }
    assert!(
        segment_files(tmp.path()).len() > 5,
        "batches span several segments"
    );
    assert_eq!(spool.len_batches(), 100);

    let first = spool.peek(10).unwrap();
    assert_eq!(seqs(&first), (0..10).collect::<Vec<_>>());
    assert_eq!(first[3].1, batch(3, 3, 150));
    assert_eq!(spool.peek(10).unwrap(), first, "peek does not consume");
    let next = spool.peek_after(Some(SeqNo(9)), 10).unwrap();
    assert_eq!(seqs(&next), (10..20).collect::<Vec<_>>());
    // A peek_after that does not continue the last one still works.
    let mid = spool.peek_after(Some(SeqNo(54)), 2).unwrap();
    assert_eq!(seqs(&mid), vec![55, 56]);

    spool.ack(SeqNo(24)).unwrap();
    assert_eq!(spool.len_batches(), 75);
    spool.ack(SeqNo(3)).unwrap(); // older ack: no-op
    assert_eq!(spool.len_batches(), 75);
    let bytes = spool.len_bytes();
    drop(spool);

    let mut spool = Spool::open_with(tmp.path(), small(1 << 20)).unwrap();
    assert_eq!(spool.len_batches(), 75);
    assert_eq!(spool.len_bytes(), bytes);
    assert_eq!(spool.next_seq(), SeqNo(100));
    let rest = peek_all(&mut spool);
    assert_eq!(seqs(&rest), (25..100).collect::<Vec<_>>());
    for (seq, b) in &rest {
        assert_eq!(*b, batch(seq.0, 3, 150));
    }
    assert_eq!(spool.push(&batch(100, 1, 10)).unwrap().seq, SeqNo(100));
}

#[test]
fn spool_acked_batches_never_return_after_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(tmp.path(), 1 << 20).unwrap(); // SyncPolicy::Always
    for tag in 0..40 {
        spool.push(&batch(tag, 2, 100)).unwrap();
    }
    spool.ack(SeqNo(17)).unwrap();
    drop(spool);
    let mut spool = Spool::open(tmp.path(), 1 << 20).unwrap();
    assert_eq!(seqs(&peek_all(&mut spool))[0], 18);
    spool.ack(SeqNo(1000)).unwrap(); // beyond the end: acks everything
    assert!(spool.is_empty());
    assert_eq!(spool.len_bytes(), 0);
    drop(spool);

    let mut spool = Spool::open(tmp.path(), 1 << 20).unwrap();
    assert!(peek_all(&mut spool).is_empty());
    assert_eq!(spool.next_seq(), SeqNo(40), "seqs are never reused");
    assert_eq!(spool.push(&batch(40, 1, 1)).unwrap().seq, SeqNo(40));
}

#[test]
fn spool_removes_fully_acked_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open_with(tmp.path(), small(1 << 20)).unwrap();
    for tag in 0..200 {
        spool.push(&batch(tag, 1, 400)).unwrap();
    }
    let before = segment_files(tmp.path()).len();
    spool.ack(SeqNo(150)).unwrap();
    let after = segment_files(tmp.path()).len();
    assert!(after < before / 3, "{before} segments -> {after}");
    assert!(spool.disk_bytes() >= spool.len_bytes());
    spool.ack(SeqNo(199)).unwrap();
    assert_eq!(
        segment_files(tmp.path()).len(),
        1,
        "only the active segment stays"
    );
}

/// Pushes 10 batches, crashes, damages the tail with `damage`, reopens:
/// the last batch must be gone (never returned damaged), the rest intact.
fn assert_tail_damage_is_cut(damage: impl Fn(&Path, u64)) {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(tmp.path(), 1 << 20).unwrap();
    let mut last_len = 0;
    for tag in 0..10 {
        let b = batch(tag, 4, 64);
        last_len = entry::encoded_len(&b);
        spool.push(&b).unwrap();
    }
    drop(spool); // a crash: nothing is flushed on drop
    let seg = segment_files(tmp.path()).pop().unwrap();
    damage(&seg, last_len);

    let mut spool = Spool::open(tmp.path(), 1 << 20).unwrap();
    assert!(spool.stats().truncated_tail_bytes > 0);
    assert_eq!(spool.len_batches(), 9);
    let items = peek_all(&mut spool);
    assert_eq!(seqs(&items), (0..9).collect::<Vec<_>>());
    for (seq, b) in &items {
        assert_eq!(*b, batch(seq.0, 4, 64));
    }
    // The log continues cleanly after the cut.
    assert_eq!(spool.push(&batch(9, 4, 64)).unwrap().seq, SeqNo(9));
    drop(spool);
    let mut spool = Spool::open(tmp.path(), 1 << 20).unwrap();
    assert_eq!(spool.stats().truncated_tail_bytes, 0);
    assert_eq!(seqs(&peek_all(&mut spool)), (0..10).collect::<Vec<_>>());
}

fn truncate_by(path: &Path, cut: u64) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - cut).unwrap();
}

fn flip_byte(path: &Path, from_end: u64) {
    let mut data = fs::read(path).unwrap();
    let i = data.len() - from_end as usize;
    data[i] ^= 0x5a;
    fs::write(path, data).unwrap();
}

#[test]
fn spool_torn_tail_is_truncated_on_open() {
    // Mid-body, inside the header, and one byte short.
    for cut in [1, 7, 100] {
        assert_tail_damage_is_cut(|seg, _| truncate_by(seg, cut));
    }
    // Only part of the last header written.
    assert_tail_damage_is_cut(|seg, last| truncate_by(seg, last - 3));
}

#[test]
fn spool_corrupt_tail_is_truncated_on_open() {
    // A payload byte, the checksum, the length, the seq.
    for at in [1, 50] {
        assert_tail_damage_is_cut(|seg, _| flip_byte(seg, at));
    }
    assert_tail_damage_is_cut(|seg, last| flip_byte(seg, last - 5));
    assert_tail_damage_is_cut(|seg, last| flip_byte(seg, last - 1));
    assert_tail_damage_is_cut(|seg, last| flip_byte(seg, last - 8));
    // Zero-filled garbage after the last entry (a filesystem extending the
    // file before the data landed) is cut too, and the last entry kept.
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(tmp.path(), 1 << 20).unwrap();
    spool.push(&batch(0, 1, 10)).unwrap();
    drop(spool);
    let seg = segment_files(tmp.path()).pop().unwrap();
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, &[0u8; 100]).unwrap();
    let mut spool = Spool::open(tmp.path(), 1 << 20).unwrap();
    assert_eq!(spool.stats().truncated_tail_bytes, 100);
    assert_eq!(seqs(&peek_all(&mut spool)), vec![0]);
}

#[test]
fn spool_corrupt_entry_in_sealed_segment_is_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open_with(tmp.path(), small(1 << 20)).unwrap();
    for tag in 0..60 {
        spool.push(&batch(tag, 2, 300)).unwrap();
    }
    drop(spool);
    // Damage the third entry of the second segment.
    let segs = segment_files(tmp.path());
    let second = &segs[1];
    let first_seq: u64 = second
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let third_seq: u64 = segs[2]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let entry_len = entry::encoded_len(&batch(0, 2, 300));
    let mut data = fs::read(second).unwrap();
    data[(2 * entry_len + 40) as usize] ^= 1;
    fs::write(second, data).unwrap();

    let mut spool = Spool::open_with(tmp.path(), small(1 << 20)).unwrap();
    let items = peek_all(&mut spool);
    let lost = third_seq - (first_seq + 2);
    assert_eq!(spool.stats().corrupt_batches, lost);
    assert_eq!(items.len() as u64, 60 - lost);
    assert_eq!(spool.len_batches(), 60 - lost);
    for (seq, b) in &items {
        assert_eq!(*b, batch(seq.0, 2, 300), "never a damaged batch");
        assert!(seq.0 < first_seq + 2 || seq.0 >= third_seq);
    }
    // Acking through the gap and draining works.
    spool.ack(SeqNo(third_seq)).unwrap();
    assert_eq!(spool.len_batches(), 60 - third_seq - 1);
    spool.ack(SeqNo(59)).unwrap();
    assert!(spool.is_empty());
}

#[test]
fn spool_corrupt_entry_in_active_segment_seals_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(tmp.path(), 1 << 20).unwrap();
    for tag in 0..5 {
        spool.push(&batch(tag, 1, 50)).unwrap();
    }
    // Bit rot after open, in the middle of the active segment.
    let seg = segment_files(tmp.path()).pop().unwrap();
    let entry_len = entry::encoded_len(&batch(0, 1, 50));
    let mut data = fs::read(&seg).unwrap();
    data[(entry_len + 30) as usize] ^= 1;
    fs::write(&seg, data).unwrap();

    let items = peek_all(&mut spool);
    assert_eq!(seqs(&items), vec![0]);
    assert_eq!(spool.stats().corrupt_batches, 4);
    assert_eq!(spool.push(&batch(5, 1, 50)).unwrap().seq, SeqNo(5));
    assert_eq!(seqs(&peek_all(&mut spool)), vec![0, 5]);
    assert_eq!(spool.len_batches(), 2);
}

#[test]
fn spool_full_drops_oldest_first_and_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let max = 64 << 10;
    let mut spool = Spool::open_with(tmp.path(), small(max)).unwrap();
    let (mut dropped, mut dropped_bytes) = (0, 0);
    for tag in 0..300 {
        let out = spool.push(&batch(tag, 1, 1000)).unwrap();
        dropped += out.dropped_batches;
        dropped_bytes += out.dropped_bytes;
        assert!(spool.disk_bytes() <= max);
    }
    assert!(dropped > 200, "dropped {dropped}");
    let stats = spool.stats();
    assert_eq!(
        (stats.dropped_batches, stats.dropped_bytes),
        (dropped, dropped_bytes)
    );
    let items = peek_all(&mut spool);
    assert_eq!(
        seqs(&items),
        (dropped..300).collect::<Vec<_>>(),
        "the newest survive"
    );
    assert_eq!(spool.len_batches(), 300 - dropped);
    assert_eq!(
        dropped_bytes,
        dropped * entry::encoded_len(&batch(0, 1, 1000))
    );
    drop(spool);
    let mut spool = Spool::open_with(tmp.path(), small(max)).unwrap();
    assert_eq!(
        seqs(&peek_all(&mut spool)),
        (dropped..300).collect::<Vec<_>>()
    );
}

#[test]
fn spool_drop_counts_only_unacked_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let max = 64 << 10;
    let mut spool = Spool::open_with(tmp.path(), small(max)).unwrap();
    for tag in 0..40 {
        spool.push(&batch(tag, 1, 1000)).unwrap();
    }
    spool.ack(SeqNo(1)).unwrap(); // the head is inside the first segment
    let mut dropped = 0;
    for tag in 40..120 {
        dropped += spool.push(&batch(tag, 1, 1000)).unwrap().dropped_batches;
    }
    let left = spool.len_batches();
    assert_eq!(
        left + dropped,
        120 - 2,
        "acked batches are not counted as dropped"
    );
}

#[test]
fn spool_rejects_a_batch_bigger_than_the_spool() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(tmp.path(), MIN_MAX_BYTES).unwrap();
    let err = spool
        .push(&batch(0, 1, MIN_MAX_BYTES as usize))
        .unwrap_err();
    assert!(matches!(err, SpoolError::BatchTooLarge { .. }), "{err}");
    assert!(spool.is_empty());
    // A batch that needs the whole spool evicts everything else.
    spool.push(&batch(1, 1, 100)).unwrap();
    let big = batch(2, 1, (MIN_MAX_BYTES - 100) as usize);
    let out = spool.push(&big).unwrap();
    assert_eq!(out.dropped_batches, 1);
    let items = peek_all(&mut spool);
    assert_eq!(seqs(&items), vec![1], "a rejected push takes no seq");
    assert!(items[0].1 == big);
    assert!(matches!(
        Spool::open(tmp.path(), 10),
        Err(SpoolError::InvalidOptions { .. })
    ));
}

#[test]
fn spool_torn_cursor_slot_falls_back_to_previous_ack() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(tmp.path(), 1 << 20).unwrap();
    for tag in 0..20 {
        spool.push(&batch(tag, 1, 10)).unwrap();
    }
    spool.ack(SeqNo(4)).unwrap();
    spool.ack(SeqNo(9)).unwrap();
    drop(spool);
    // Tear the slot holding the newest value (first un-acked = 10).
    let path = tmp.path().join(CURSOR_FILE);
    let mut raw = fs::read(&path).unwrap();
    let newest = (0..2)
        .find(|i| raw[i * 16..i * 16 + 8] == 10u64.to_le_bytes())
        .unwrap();
    raw[newest * 16 + 3] ^= 0xff;
    fs::write(&path, raw).unwrap();

    let mut spool = Spool::open(tmp.path(), 1 << 20).unwrap();
    // At least once: the last ack is repeated, nothing is lost.
    assert_eq!(seqs(&peek_all(&mut spool)), (5..20).collect::<Vec<_>>());
}

/// Random pushes, peeks, acks, reopens, torn tails and overflow, checked
/// against a `VecDeque` model after every step.
#[test]
fn spool_matches_a_queue_model_under_random_operations() {
    let mut dropped = 0;
    for seed in 0..8 {
        dropped += run_model(seed, 1500);
    }
    assert!(dropped > 0, "the small spools overflowed");
}

/// Returns how many batches overflow dropped.
fn run_model(seed: u64, steps: usize) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let opts = small(if seed.is_multiple_of(2) {
        48 << 10
    } else {
        1 << 20
    });
    let mut spool = Spool::open_with(tmp.path(), opts.clone()).unwrap();
    let mut model: VecDeque<(SeqNo, SpoolBatch)> = VecDeque::new();
    let mut next = 0u64;
    let mut dropped = 0;
    let mut last_len = 0; // encoded size of the newest entry, 0 once cut
    for step in 0..steps {
        let ctx = format!("seed {seed} step {step}");
        match rng.random_range(0..100) {
            0..50 => {
                let b = batch(next, rng.random_range(0..5), rng.random_range(0..700));
                let out = spool.push(&b).unwrap();
                assert_eq!(out.seq, SeqNo(next), "{ctx}");
                last_len = entry::encoded_len(&b);
                for _ in 0..out.dropped_batches {
                    model.pop_front().expect("a drop removes modelled batches");
                }
                dropped += out.dropped_batches;
                model.push_back((out.seq, b));
                next += 1;
            }
            50..70 => {
                let n = rng.random_range(0..20);
                let got = spool.peek(n).unwrap();
                let want: Vec<_> = model.iter().take(n).cloned().collect();
                assert_eq!(got, want, "{ctx}");
            }
            70..80 if !model.is_empty() => {
                let i = rng.random_range(0..model.len());
                let after = model[i].0;
                let got = spool.peek_after(Some(after), 5).unwrap();
                let want: Vec<_> = model.iter().skip(i + 1).take(5).cloned().collect();
                assert_eq!(got, want, "{ctx}");
            }
            80..93 if !model.is_empty() => {
                let i = rng.random_range(0..model.len().min(4));
                let up_to = model[i].0;
                spool.ack(up_to).unwrap();
                model.drain(..=i);
            }
            93..96 if last_len > 0 => {
                // Crash in the middle of writing the newest entry.
                drop(spool);
                let seg = segment_files(tmp.path()).pop().unwrap();
                if fs::metadata(&seg).unwrap().len() > 0 {
                    truncate_by(&seg, rng.random_range(1..=last_len));
                    if model.back().is_some_and(|(s, _)| s.0 + 1 == next) {
                        model.pop_back();
                        next -= 1; // never acked, so its seq is free again
                    }
                    last_len = 0;
                }
                spool = Spool::open_with(tmp.path(), opts.clone()).unwrap();
                assert_eq!(spool.next_seq(), SeqNo(next), "{ctx}");
            }
            _ => {
                drop(spool);
                spool = Spool::open_with(tmp.path(), opts.clone()).unwrap();
                assert_eq!(spool.next_seq(), SeqNo(next), "{ctx}");
            }
        }
        assert_eq!(spool.len_batches(), model.len() as u64, "{ctx}");
        assert!(spool.disk_bytes() <= opts.max_bytes, "{ctx}");
    }
    assert!(spool.stats().dropped_batches <= dropped);
    let all = peek_all(&mut spool);
    assert_eq!(
        all,
        model.into_iter().collect::<Vec<_>>(),
        "seed {seed} final"
    );
    dropped
}

/// Prints write and drain throughput with 1 KiB records. Run with
/// `cargo test -p gse-agent --release spool_throughput -- --ignored --nocapture`.
#[test]
#[ignore = "prints throughput; no timed assertions"]
fn spool_throughput_with_1kib_records() {
    const RECORDS_PER_BATCH: usize = 256;
    const TOTAL: u64 = 1 << 30;
    let per_batch = (RECORDS_PER_BATCH * 1024) as u64;
    for sync in [SyncPolicy::EveryN(64), SyncPolicy::Always] {
        let tmp = tempfile::tempdir().unwrap();
        let opts = SpoolOptions {
            sync,
            ..SpoolOptions::new(2 * TOTAL)
        };
        let mut spool = Spool::open_with(tmp.path(), opts).unwrap();
        let b = batch(1, RECORDS_PER_BATCH, 1024);
        let start = Instant::now();
        for _ in 0..TOTAL / per_batch {
            spool.push(&b).unwrap();
        }
        spool.sync().unwrap();
        let write = start.elapsed();
        let start = Instant::now();
        loop {
            let items = spool.peek(16).unwrap();
            let Some((last, _)) = items.last() else { break };
            spool.ack(*last).unwrap();
        }
        let drain = start.elapsed();
        let mb = TOTAL as f64 / 1e6;
        println!(
            "{sync:?}: push {:.0} MB/s, peek+ack {:.0} MB/s ({} KiB batches of 1 KiB records)",
            mb / write.as_secs_f64(),
            mb / drain.as_secs_f64(),
            per_batch >> 10,
        );
    }
}
