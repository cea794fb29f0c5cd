use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use super::*;
use crate::file::digest::{Blake3Hash, SMALL_PIECE_SIZE, md5_hex};

fn write(path: &Path, content: &[u8], mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mkdir(path: &Path, mode: u32) {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn build(dir: &Path, selection: Selection) -> Result<Manifest, ManifestError> {
    ManifestBuilder::new(SourceSpec {
        dir: dir.into(),
        selection,
    })
    .build()
}

fn paths(m: &Manifest) -> Vec<&str> {
    m.entries.iter().map(|e| e.path.as_str()).collect()
}

fn entry<'m>(m: &'m Manifest, path: &str) -> &'m ManifestEntry {
    m.entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no entry {path:?} in {:?}", paths(m)))
}

fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 253) as u8).collect()
}

/// A source tree: app/{bin/run.sh 0755, conf/a.conf 0600, empty/ 0750,
/// logs/{x.log, old/y.log}, top.log}.
fn sample_tree() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let app = root.path().join("app");
    write(&app.join("bin/run.sh"), b"#!/bin/sh\necho hi\n", 0o755);
    write(&app.join("conf/a.conf"), b"key=value\n", 0o600);
    mkdir(&app.join("empty"), 0o750);
    write(&app.join("logs/x.log"), b"x\n", 0o644);
    write(&app.join("logs/old/y.log"), b"y\n", 0o644);
    write(&app.join("top.log"), b"top\n", 0o644);
    root
}

#[test]
fn f4_single_file_has_mode_size_and_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(2 * SMALL_PIECE_SIZE as usize + 12_345);
    write(&dir.path().join("pkg.tar.gz"), &data, 0o640);
    let m = build(dir.path(), Selection::File("pkg.tar.gz".into())).unwrap();
    assert_eq!(paths(&m), ["pkg.tar.gz"]);
    let e = &m.entries[0];
    assert_eq!(e.mode, 0o640);
    let EntryKind::File(d) = &e.kind else {
        panic!("not a file: {e:?}")
    };
    assert_eq!(d.size, data.len() as u64);
    assert_eq!(d.piece_size, SMALL_PIECE_SIZE);
    assert_eq!(d.pieces.len(), 3);
    assert_eq!(
        d.pieces[2],
        Blake3Hash::of(&data[2 * SMALL_PIECE_SIZE as usize..])
    );
    assert_eq!(d.blake3, Blake3Hash::of(&data));
    assert_eq!(d.md5, md5_hex(&data));
    assert_eq!(m.total_bytes(), data.len() as u64);
}

#[test]
fn f6_tree_keeps_structure_modes_and_empty_dirs() {
    let root = sample_tree();
    let m = build(&root.path().join("app"), Selection::Tree).unwrap();
    assert_eq!(
        paths(&m),
        [
            "app",
            "app/bin",
            "app/bin/run.sh",
            "app/conf",
            "app/conf/a.conf",
            "app/empty",
            "app/logs",
            "app/logs/old",
            "app/logs/old/y.log",
            "app/logs/x.log",
            "app/top.log",
        ]
    );
    assert_eq!(entry(&m, "app/bin/run.sh").mode, 0o755);
    assert_eq!(entry(&m, "app/conf/a.conf").mode, 0o600);
    let empty = entry(&m, "app/empty");
    assert_eq!((&empty.kind, empty.mode), (&EntryKind::Dir, 0o750));
    assert!(m.skipped.is_empty());
}

#[test]
fn f6_symlinks_are_recorded_not_followed() {
    let root = sample_tree();
    let outside = tempfile::tempdir().unwrap();
    write(&outside.path().join("secret"), b"do not copy", 0o644);
    let app = root.path().join("app");
    symlink("conf/a.conf", app.join("conf-link")).unwrap();
    symlink(outside.path(), app.join("escape")).unwrap();
    let m = build(&app, Selection::Tree).unwrap();
    assert_eq!(
        entry(&m, "app/conf-link").kind,
        EntryKind::Symlink {
            target: "conf/a.conf".into()
        }
    );
    let escape = entry(&m, "app/escape");
    assert_eq!(
        escape.kind,
        EntryKind::Symlink {
            target: outside.path().to_str().unwrap().into()
        }
    );
    assert!(
        !paths(&m).iter().any(|p| p.contains("secret")),
        "a link to a directory outside the source is not descended: {:?}",
        paths(&m)
    );
}

#[test]
fn f7_wildcard_matches_relative_paths() {
    let root = sample_tree();
    let app = root.path().join("app");
    let top = build(&app, Selection::Wildcard("*.log".into())).unwrap();
    assert_eq!(paths(&top), ["top.log"], "'*' does not cross directories");
    let deep = build(&app, Selection::Wildcard("**/*.log".into())).unwrap();
    assert_eq!(
        paths(&deep),
        [
            "logs",
            "logs/old",
            "logs/old/y.log",
            "logs/x.log",
            "top.log"
        ]
    );
    assert_eq!(
        entry(&deep, "logs").kind,
        EntryKind::Dir,
        "holding directories are kept"
    );
    let conf = build(&app, Selection::Wildcard("conf/*.conf".into())).unwrap();
    assert_eq!(paths(&conf), ["conf", "conf/a.conf"]);
    assert_eq!(
        entry(&conf, "conf/a.conf").mode,
        0o600,
        "F7 keeps permissions"
    );
}

#[test]
fn f7_regex_matches_the_whole_relative_path() {
    let root = sample_tree();
    let app = root.path().join("app");
    let m = build(&app, Selection::Regex(r"logs/.*\.log".into())).unwrap();
    assert_eq!(
        paths(&m),
        ["logs", "logs/old", "logs/old/y.log", "logs/x.log"]
    );
    let anchored = build(&app, Selection::Regex(r"x\.log".into())).unwrap_err();
    assert!(
        matches!(anchored, ManifestError::NothingMatched { .. }),
        "{anchored}"
    );
    let alternation = build(&app, Selection::Regex("top.log|bin/run.sh".into())).unwrap();
    assert_eq!(paths(&alternation), ["bin", "bin/run.sh", "top.log"]);
}

#[test]
fn selection_matching_nothing_is_an_error() {
    let root = sample_tree();
    let err = build(
        &root.path().join("app"),
        Selection::Wildcard("*.rpm".into()),
    )
    .unwrap_err();
    assert!(matches!(err, ManifestError::NothingMatched { .. }), "{err}");
    assert!(err.to_string().contains("\"*.rpm\""), "{err}");
}

#[test]
fn bad_patterns_are_reported() {
    let root = sample_tree();
    let err = build(root.path(), Selection::Wildcard("a[".into())).unwrap_err();
    assert!(matches!(err, ManifestError::BadWildcard { .. }), "{err}");
    let err = build(root.path(), Selection::Regex("(unclosed".into())).unwrap_err();
    assert!(matches!(err, ManifestError::BadRegex { .. }), "{err}");
}

#[test]
fn missing_source_is_reported() {
    let root = tempfile::tempdir().unwrap();
    let gone = root.path().join("gone");
    let err = build(&gone, Selection::Tree).unwrap_err();
    assert!(
        matches!(&err, ManifestError::SourceMissing { path } if path == &gone),
        "{err}"
    );
    let err = build(root.path(), Selection::File("nope.txt".into())).unwrap_err();
    assert!(matches!(err, ManifestError::SourceMissing { .. }), "{err}");
    write(&root.path().join("f"), b"x", 0o644);
    let err = build(&root.path().join("f"), Selection::Wildcard("*".into())).unwrap_err();
    assert!(matches!(err, ManifestError::SourceNotDir { .. }), "{err}");
}

#[test]
fn open_failure_names_path_and_os_error() {
    // Works as root too: a link swapped in for a file is refused (ELOOP).
    let root = tempfile::tempdir().unwrap();
    write(&root.path().join("real"), b"x", 0o644);
    let link = root.path().join("swapped");
    symlink("real", &link).unwrap();
    let err = hash_file(&link, Follow::No).unwrap_err();
    match &err {
        ManifestError::Read { path, source } => {
            assert_eq!(path, &link);
            assert_eq!(source.raw_os_error(), Some(nix::libc::ELOOP));
        }
        other => panic!("expected Read, got {other}"),
    }
    assert!(err.to_string().contains("swapped"), "{err}");
}

#[test]
fn unreadable_file_names_path_and_os_error() {
    if nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: root can read a mode-000 file");
        return;
    }
    let root = sample_tree();
    let secret = root.path().join("app/conf/a.conf");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    let err = build(&root.path().join("app"), Selection::Tree).unwrap_err();
    match &err {
        ManifestError::Read { path, source } => {
            assert_eq!(path, &secret);
            assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied);
        }
        other => panic!("expected Read, got {other}"),
    }
    assert!(err.to_string().contains("a.conf"), "{err}");
}

#[test]
fn file_selection_rules() {
    let root = sample_tree();
    let app = root.path().join("app");
    let err = build(&app, Selection::File("conf".into())).unwrap_err();
    assert!(
        matches!(
            err,
            ManifestError::NotAFile {
                what: "a directory",
                ..
            }
        ),
        "{err}"
    );
    let err = build(&app, Selection::File("conf/a.conf".into())).unwrap_err();
    assert!(matches!(err, ManifestError::BadFileName { .. }), "{err}");
    let err = build(&app, Selection::File(String::new())).unwrap_err();
    assert!(matches!(err, ManifestError::BadFileName { .. }), "{err}");
    // A named file that is a link is followed: its content is sent.
    symlink("conf/a.conf", app.join("current.conf")).unwrap();
    let m = build(&app, Selection::File("current.conf".into())).unwrap();
    let EntryKind::File(d) = &m.entries[0].kind else {
        panic!("not followed")
    };
    assert_eq!(d.md5, md5_hex(b"key=value\n"));
}

#[test]
fn limits_on_entries_and_path_length() {
    let root = sample_tree();
    let app = root.path().join("app");
    let spec = SourceSpec {
        dir: app.clone(),
        selection: Selection::Tree,
    };
    let err = ManifestBuilder::new(spec.clone())
        .max_entries(5)
        .build()
        .unwrap_err();
    assert!(
        matches!(err, ManifestError::TooManyEntries { limit: 5, .. }),
        "{err}"
    );
    let err = ManifestBuilder::new(spec.clone())
        .max_path_bytes(12)
        .build()
        .unwrap_err();
    assert!(
        matches!(err, ManifestError::PathTooLong { limit: 12, .. }),
        "{err}"
    );
    ManifestBuilder::new(spec).max_entries(11).build().unwrap();
}

#[test]
fn names_a_target_would_refuse_are_refused_here() {
    let root = tempfile::tempdir().unwrap();
    write(&root.path().join("src/back\\slash"), b"x", 0o644);
    let err = build(&root.path().join("src"), Selection::Tree).unwrap_err();
    assert!(
        matches!(
            err,
            ManifestError::UnsafeName {
                reason: UnsafeReason::Backslash,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn special_files_are_skipped_not_read() {
    let root = sample_tree();
    let app = root.path().join("app");
    nix::unistd::mkfifo(
        &app.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let m = build(&app, Selection::Tree).unwrap();
    assert_eq!(m.skipped, ["app/pipe"]);
    assert!(!paths(&m).contains(&"app/pipe"));
}

#[test]
fn root_directory_has_no_name_to_send() {
    let err = build(Path::new("/"), Selection::Tree).unwrap_err();
    assert!(matches!(err, ManifestError::NoBaseName { .. }), "{err}");
}

#[test]
fn manifest_round_trips_through_serde() {
    let root = sample_tree();
    let app = root.path().join("app");
    symlink("top.log", app.join("link")).unwrap();
    let m = build(&app, Selection::Tree).unwrap();
    let json = serde_json::to_string(&m).unwrap();
    assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
}

#[test]
fn source_paths_map_manifest_paths_back() {
    let root = sample_tree();
    let app = root.path().join("app");
    let tree = SourceSpec {
        dir: app.clone(),
        selection: Selection::Tree,
    };
    assert_eq!(tree.source_path("app"), app);
    assert_eq!(tree.source_path("app/logs/x.log"), app.join("logs/x.log"));
    let pattern = SourceSpec {
        dir: app.clone(),
        selection: Selection::Wildcard("**/*.log".into()),
    };
    assert_eq!(pattern.source_path("logs/x.log"), app.join("logs/x.log"));
    let m = ManifestBuilder::new(tree.clone()).build().unwrap();
    for e in &m.entries {
        assert!(tree.source_path(&e.path).exists(), "{}", e.path);
    }
}
