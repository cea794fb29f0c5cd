//! Walks over real temp directories; links and owners as a local user would
//! plant them (the ownership cases need root, as the agent has).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::Path;

use super::*;

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("note: not root, skipping an ownership test");
    }
    root
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn planted() -> DirOpener {
    DirOpener::new(Policy::NoPlanted)
}

#[test]
fn links_root_made_are_followed_and_others_refused() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    fs::create_dir_all(real.join("sub")).unwrap();
    // Relative with `..` (like /var/run -> ../run), to an absolute one.
    fs::create_dir(tmp.path().join("t")).unwrap();
    symlink("../abs", tmp.path().join("t/up")).unwrap();
    symlink(&real, tmp.path().join("abs")).unwrap();
    let dir = planted().open(&tmp.path().join("t/up/sub")).unwrap();
    let meta = dir.as_file().metadata().unwrap();
    assert_eq!(meta.ino(), fs::metadata(real.join("sub")).unwrap().ino());

    let theirs = tmp.path().join("theirs");
    symlink(&real, &theirs).unwrap();
    lchown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    for path in [theirs.clone(), theirs.join("sub")] {
        let err = planted().open(&path).unwrap_err();
        assert!(
            matches!(&err, DirError::Symlink { path: p, .. } if p == &theirs),
            "{err}"
        );
        assert!(err.to_string().contains("uid 65534"), "{err}");
    }
}

#[test]
fn child_never_follows_a_link() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("real")).unwrap();
    symlink("real", tmp.path().join("link")).unwrap();
    let top = planted().open(tmp.path()).unwrap();
    planted().child(&top, "real").unwrap();
    let err = planted().child(&top, "link").unwrap_err();
    assert!(matches!(err, DirError::Symlink { .. }), "{err}");
    fs::write(tmp.path().join("file"), b"").unwrap();
    let err = planted().child(&top, "file").unwrap_err();
    assert!(matches!(err, DirError::NotADir { .. }), "{err}");
}

#[test]
fn a_link_loop_ends() {
    let tmp = tempfile::tempdir().unwrap();
    symlink("a", tmp.path().join("b")).unwrap();
    symlink("b", tmp.path().join("a")).unwrap();
    let err = planted().open(&tmp.path().join("a")).unwrap_err();
    assert!(matches!(err, DirError::TooManyLinks { .. }), "{err}");
}

#[test]
fn a_directory_planted_where_others_may_write_is_refused() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o1777);
    let theirs = shared.join("inbox");
    fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let err = planted().open(&theirs).unwrap_err();
    assert!(
        matches!(err, DirError::Untrusted { uid: NOBODY, .. }),
        "{err}"
    );
    // Trusted when nobody is who the files are for.
    planted()
        .trust(NOBODY, "the files' owner \"nobody\"".into())
        .open(&theirs)
        .unwrap();
    // A user's directory where only they could have made it is theirs to
    // have (their home): accepted.
    chmod(&shared, 0o755);
    planted().open(&theirs).unwrap();
    // Scripts are stricter: every directory must be trusted.
    let err = DirOpener::new(Policy::Strict).open(&theirs).unwrap_err();
    assert!(matches!(err, DirError::Untrusted { .. }), "{err}");
}

#[test]
fn missing_directories_are_created_when_asked_and_named_when_not() {
    let tmp = tempfile::tempdir().unwrap();
    let want = tmp.path().join("a/b/c");
    let err = planted().open(&want).unwrap_err();
    assert!(
        matches!(&err, DirError::Missing { path } if path == &tmp.path().join("a")),
        "{err}"
    );
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let made = planted().create(true).open(&want);
    nix::sys::stat::umask(old);
    made.unwrap();
    for dir in ["a", "a/b", "a/b/c"] {
        let mode = fs::metadata(tmp.path().join(dir)).unwrap().mode() & 0o7777;
        assert_eq!(mode, DIR_MODE, "{dir}");
    }
}

#[test]
fn only_the_directory_asked_for_is_given_away() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let want = tmp.path().join("bkjob/nobody");
    DirOpener::new(Policy::Strict)
        .trust(NOBODY, "the task's user \"nobody\"".into())
        .create(true)
        .give_created(NOBODY, NOBODY)
        .open(&want)
        .unwrap();
    assert_eq!(fs::metadata(&want).unwrap().uid(), NOBODY);
    assert_eq!(fs::metadata(want.parent().unwrap()).unwrap().uid(), 0);
}

#[test]
fn temp_files_replace_a_planted_link_and_vanish_when_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim");
    fs::write(&victim, b"keep").unwrap();
    let dir_path = tmp.path().join("d");
    fs::create_dir(&dir_path).unwrap();
    symlink(&victim, dir_path.join("app.conf")).unwrap();
    let dir = planted().open(&dir_path).unwrap();
    let temp = TempFile::create(&dir, "app.conf", 0o600).unwrap();
    assert!(is_temp_file_name(
        temp.path().file_name().unwrap().to_str().unwrap()
    ));
    temp.file().write_all(b"new").unwrap();
    temp.persist("app.conf").unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"keep");
    assert!(
        fs::symlink_metadata(dir_path.join("app.conf"))
            .unwrap()
            .is_file()
    );
    assert_eq!(fs::read(dir_path.join("app.conf")).unwrap(), b"new");
    drop(TempFile::create(&dir, "other", 0o600).unwrap());
    assert_eq!(fs::read_dir(&dir_path).unwrap().count(), 1);
}
