use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;
use crate::file::install::is_temp_file_name;
use crate::file::manifest::{EntryKind, ManifestBuilder, Selection, SourceSpec};
use crate::file::target_path::resolve;

const PIECE: u32 = 4096;

fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 % 251) as u8).collect()
}

fn digest_of(data: &[u8]) -> FileDigest {
    digest_reader(data, data.len() as u64, PIECE).unwrap()
}

fn piece(data: &[u8], index: u32) -> &[u8] {
    let start = (index * PIECE) as usize;
    &data[start..(start + PIECE as usize).min(data.len())]
}

fn writer(root: &Path, rel: &str, data: &[u8], mode: u32) -> PieceWriter {
    let target = resolve(root, rel).unwrap();
    PieceWriter::create(target, digest_of(data), mode, &InstallOptions::default()).unwrap()
}

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| is_temp_file_name(p.file_name().unwrap().to_str().unwrap()))
        .collect()
}

fn the_temp_file(dir: &Path) -> PathBuf {
    let temps = temp_files(dir);
    assert_eq!(temps.len(), 1, "expected one temp file: {temps:?}");
    temps.into_iter().next().unwrap()
}

#[test]
fn f1_pieces_in_any_order_become_the_file() {
    let root = tempfile::tempdir().unwrap();
    let data = content(10 * PIECE as usize + 100);
    let mut w = writer(root.path(), "big.bin", &data, 0o750);
    assert_eq!(w.have().len(), 11);
    for index in (0..11).rev() {
        assert!(w.write_piece(index, piece(&data, index)).unwrap());
        assert!(
            !root.path().join("big.bin").exists(),
            "no half file under the final name"
        );
    }
    assert!(w.is_complete());
    w.finish().unwrap();
    assert_eq!(fs::read(root.path().join("big.bin")).unwrap(), data);
    let mode = fs::metadata(root.path().join("big.bin"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o750);
    assert!(temp_files(root.path()).is_empty());
}

#[test]
fn f5_corrupt_piece_is_refused_and_never_written() {
    let root = tempfile::tempdir().unwrap();
    let data = content(3 * PIECE as usize);
    let mut w = writer(root.path(), "f", &data, 0o644);
    let mut bad = piece(&data, 1).to_vec();
    bad[17] ^= 0xff;
    let err = w.write_piece(1, &bad).unwrap_err();
    assert!(matches!(err, PieceError::Corrupt { index: 1, .. }), "{err}");
    assert!(err.to_string().contains("piece 1"), "{err}");
    assert!(!w.have().contains(1));
    let mut on_disk = vec![0xaau8; PIECE as usize];
    let temp = fs::File::open(the_temp_file(root.path())).unwrap();
    temp.read_exact_at(&mut on_disk, u64::from(PIECE)).unwrap();
    assert!(
        on_disk.iter().all(|&b| b == 0),
        "corrupt bytes reached the disk"
    );
    // The same piece fetched again, intact, is accepted.
    assert!(w.write_piece(1, piece(&data, 1)).unwrap());
}

#[test]
fn wrong_length_out_of_range_and_duplicate_pieces() {
    let root = tempfile::tempdir().unwrap();
    let data = content(2 * PIECE as usize + 10);
    let mut w = writer(root.path(), "f", &data, 0o644);
    let err = w
        .write_piece(2, &data[2 * PIECE as usize..][..5])
        .unwrap_err();
    assert!(
        matches!(
            err,
            PieceError::Corrupt {
                index: 2,
                expected: 10,
                got: 5,
                ..
            }
        ),
        "{err}"
    );
    let err = w.write_piece(3, b"x").unwrap_err();
    assert!(
        matches!(
            err,
            PieceError::OutOfRange {
                index: 3,
                count: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(w.write_piece(0, piece(&data, 0)).unwrap());
    assert!(
        !w.write_piece(0, piece(&data, 0)).unwrap(),
        "a duplicate is a no-op"
    );
}

#[test]
fn finish_with_missing_pieces_fails_and_cleans_up() {
    let root = tempfile::tempdir().unwrap();
    let data = content(4 * PIECE as usize);
    let mut w = writer(root.path(), "f", &data, 0o644);
    w.write_piece(0, piece(&data, 0)).unwrap();
    w.write_piece(3, piece(&data, 3)).unwrap();
    let err = w.finish().unwrap_err();
    assert!(
        matches!(
            err,
            PieceError::Incomplete {
                missing: 2,
                count: 4,
                first: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(!root.path().join("f").exists());
    assert!(temp_files(root.path()).is_empty());
}

#[test]
fn abort_and_drop_remove_the_temp_file() {
    let root = tempfile::tempdir().unwrap();
    let data = content(PIECE as usize * 2);
    let mut w = writer(root.path(), "a", &data, 0o644);
    w.write_piece(0, piece(&data, 0)).unwrap();
    assert_eq!(temp_files(root.path()).len(), 1);
    w.abort();
    assert!(temp_files(root.path()).is_empty());
    let w = writer(root.path(), "b", &data, 0o644);
    assert_eq!(temp_files(root.path()).len(), 1);
    drop(w);
    assert!(temp_files(root.path()).is_empty());
    assert!(!root.path().join("a").exists() && !root.path().join("b").exists());
}

#[test]
fn f5_bytes_changed_on_disk_are_caught_by_the_whole_file_check() {
    let root = tempfile::tempdir().unwrap();
    let data = content(2 * PIECE as usize);
    let mut w = writer(root.path(), "f", &data, 0o644);
    w.write_piece(0, piece(&data, 0)).unwrap();
    w.write_piece(1, piece(&data, 1)).unwrap();
    let temp = fs::OpenOptions::new()
        .write(true)
        .open(the_temp_file(root.path()))
        .unwrap();
    temp.write_all_at(b"tampered", 100).unwrap();
    let err = w.finish().unwrap_err();
    assert!(
        matches!(
            err,
            PieceError::Install(InstallError::Mismatch {
                what: "whole-file blake3 hash",
                ..
            })
        ),
        "{err}"
    );
    assert!(!root.path().join("f").exists());
    assert!(temp_files(root.path()).is_empty());
}

#[test]
fn pieces_we_have_can_be_served_on() {
    let root = tempfile::tempdir().unwrap();
    let data = content(PIECE as usize + 7);
    let mut w = writer(root.path(), "f", &data, 0o644);
    w.write_piece(1, piece(&data, 1)).unwrap();
    assert_eq!(w.read_piece(1).unwrap(), piece(&data, 1));
    let err = w.read_piece(0).unwrap_err();
    assert!(matches!(err, PieceError::NotHave { index: 0, .. }), "{err}");
}

#[test]
fn empty_file_and_bad_digest() {
    let root = tempfile::tempdir().unwrap();
    let w = writer(root.path(), "empty", b"", 0o600);
    assert!(w.is_complete());
    w.finish().unwrap();
    assert_eq!(fs::read(root.path().join("empty")).unwrap(), b"");
    let mut digest = digest_of(&content(100));
    digest.pieces.clear();
    let target = resolve(root.path(), "bad").unwrap();
    let err = PieceWriter::create(target, digest, 0o644, &InstallOptions::default()).unwrap_err();
    assert!(matches!(err, PieceError::BadDigest { .. }), "{err}");
    assert!(temp_files(root.path()).is_empty());
}

#[test]
fn missing_directory_needs_auto_mkdir() {
    let root = tempfile::tempdir().unwrap();
    let data = content(10);
    let create = |auto_mkdir| {
        let target = resolve(root.path(), "new/dir/f").unwrap();
        let opts = InstallOptions {
            auto_mkdir,
            ..Default::default()
        };
        PieceWriter::create(target, digest_of(&data), 0o644, &opts)
    };
    let err = create(false).unwrap_err();
    assert!(
        matches!(err, PieceError::Install(InstallError::MissingDir { .. })),
        "{err}"
    );
    let mut w = create(true).unwrap();
    w.write_piece(0, &data).unwrap();
    w.finish().unwrap();
    assert_eq!(fs::read(root.path().join("new/dir/f")).unwrap(), data);
}

#[test]
fn source_manifest_to_target_file_end_to_end() {
    let src = tempfile::tempdir().unwrap();
    let data = content(3_000_000);
    fs::write(src.path().join("pkg.bin"), &data).unwrap();
    fs::set_permissions(
        src.path().join("pkg.bin"),
        fs::Permissions::from_mode(0o751),
    )
    .unwrap();
    let manifest = ManifestBuilder::new(SourceSpec {
        dir: src.path().into(),
        selection: Selection::File("pkg.bin".into()),
    })
    .build()
    .unwrap();
    let entry = &manifest.entries[0];
    let EntryKind::File(digest) = &entry.kind else {
        panic!("not a file")
    };
    let dst = tempfile::tempdir().unwrap();
    let target = resolve(dst.path(), &entry.path).unwrap();
    let mut w = PieceWriter::create(
        target,
        digest.clone(),
        entry.mode,
        &InstallOptions::default(),
    )
    .unwrap();
    for index in w.have().missing().collect::<Vec<_>>() {
        let (offset, len) = digest.piece_range(index).unwrap();
        w.write_piece(index, &data[offset as usize..][..len])
            .unwrap();
    }
    w.finish().unwrap();
    assert_eq!(fs::read(dst.path().join("pkg.bin")).unwrap(), data);
    let mode = fs::metadata(dst.path().join("pkg.bin"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o751);
}

#[test]
fn check_as_written_verifies_in_order_and_at_the_end() {
    let root = tempfile::tempdir().unwrap();
    let data = content(6 * PIECE as usize + 9);
    let target = resolve(root.path(), "f").unwrap();
    let opts = InstallOptions::default();
    let mut w = PieceWriter::create(target, digest_of(&data), 0o644, &opts)
        .unwrap()
        .check_as_written();
    for index in [1, 0, 2, 6, 5, 3, 4] {
        assert!(w.write_piece(index, piece(&data, index)).unwrap());
    }
    w.finish().unwrap();
    assert_eq!(fs::read(root.path().join("f")).unwrap(), data);

    // A change to a piece not yet read back is still caught.
    let target = resolve(root.path(), "g").unwrap();
    let mut w = PieceWriter::create(target, digest_of(&data), 0o644, &opts)
        .unwrap()
        .check_as_written();
    for index in [0, 2, 3, 4, 5, 6] {
        w.write_piece(index, piece(&data, index)).unwrap();
    }
    let temp = fs::OpenOptions::new()
        .write(true)
        .open(the_temp_file(root.path()))
        .unwrap();
    temp.write_all_at(b"tampered", 3 * u64::from(PIECE))
        .unwrap();
    w.write_piece(1, piece(&data, 1)).unwrap();
    let err = w.finish().unwrap_err();
    assert!(
        matches!(err, PieceError::Install(InstallError::Mismatch { .. })),
        "{err}"
    );
    assert!(!root.path().join("g").exists());
}
