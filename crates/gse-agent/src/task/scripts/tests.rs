//! Script-writing tests on a temp dir.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

fn file(dir: &str, name: &str, content: &str) -> ScriptFile {
    ScriptFile {
        name: name.into(),
        dir: dir.into(),
        content: content.as_bytes().to_vec(),
    }
}

#[test]
fn bad_paths_are_refused_with_a_reason() {
    let cases = [
        ("relative/dir", "a.sh", "not an absolute path"),
        ("/tmp/x/../etc", "a.sh", "`..`"),
        ("/tmp/x", "../a.sh", "path separator"),
        ("/tmp/x", "sub/a.sh", "path separator"),
        ("/tmp/x", "..", "`.` or `..`"),
        ("/tmp/x", ".", "`.` or `..`"),
        ("/tmp/x", "", "empty"),
        ("/tmp/x\0y", "a.sh", "NUL"),
        ("/tmp/x", "a\0.sh", "NUL"),
    ];
    for (dir, name, why) in cases {
        let err = checked_path(&file(dir, name, "")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(why), "{dir:?}/{name:?}: {text}");
    }
}

#[test]
fn t3_writes_scripts_with_mode_0755_creating_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bkjob/root");
    let dir_s = dir.to_str().unwrap();
    write_all(&[file(dir_s, "a.sh", "echo one\n")], None).unwrap();
    // Overwriting is atomic and leaves no temp file behind.
    write_all(&[file(dir_s, "a.sh", "echo two\n")], None).unwrap();
    let path = dir.join("a.sh");
    assert_eq!(fs::read_to_string(&path).unwrap(), "echo two\n");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&path), 0o755);
    assert_eq!(mode(&dir), 0o755);
    assert_eq!(mode(dir.parent().unwrap()), 0o755);
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("a.sh")]);
}

#[test]
fn write_failure_names_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    // A regular file where a directory should be.
    let blocker = tmp.path().join("not-a-dir");
    fs::write(&blocker, "x").unwrap();
    let dir = blocker.join("sub");
    let err = write_all(&[file(dir.to_str().unwrap(), "a.sh", "")], None).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(dir.to_str().unwrap()), "{text}");
}

#[test]
fn t4_scripts_and_new_dirs_belong_to_the_user() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("note: not root, skipping the chown test");
        return;
    }
    let Ok(nobody) = crate::task::user::resolve("nobody") else {
        eprintln!("note: no user nobody, skipping the chown test");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bkjob/nobody");
    write_all(
        &[file(dir.to_str().unwrap(), "a.sh", "id -u\n")],
        Some(&nobody),
    )
    .unwrap();
    let owner = |p: &Path| {
        let m = fs::metadata(p).unwrap();
        (m.uid(), m.gid())
    };
    let want = (nobody.uid, nobody.gid);
    assert_eq!(owner(&dir.join("a.sh")), want);
    assert_eq!(owner(&dir), want);
    assert_eq!(owner(dir.parent().unwrap()), want);
    // The temp dir existed before: it is not given away.
    assert_eq!(owner(tmp.path()).0, 0);
}
