//! Script-writing tests on a temp dir.

use std::fs;
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
fn t4_scripts_and_their_dir_belong_to_the_user_parents_stay_root() {
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
    // A parent made on the way stays root's, so that another account's
    // script directory beside it (bk-job: /tmp/bkjob/<account>) stays safe.
    assert_eq!(owner(dir.parent().unwrap()).0, 0);
    assert_eq!(owner(tmp.path()).0, 0);
    let root_dir = tmp.path().join("bkjob/root");
    write_all(&[file(root_dir.to_str().unwrap(), "b.sh", "id -u\n")], None).unwrap();
    assert_eq!(owner(&root_dir.join("b.sh")).0, 0);
}

fn is_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    eprintln!("note: not root, skipping an ownership test");
    false
}

/// Writes `a.sh` in `dir` as the agent (no user); the error text if refused.
fn write_in(dir: &Path) -> Result<(), String> {
    write_all(&[file(dir.to_str().unwrap(), "a.sh", "true\n")], None).map_err(|e| e.to_string())
}

#[test]
fn a_dir_owned_by_another_user_is_refused() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let theirs = tmp.path().join("bkjob");
    fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let err = write_in(&theirs.join("root")).unwrap_err();
    assert!(err.contains("owned by uid 65534"), "{err}");
    assert!(err.contains(theirs.to_str().unwrap()), "{err}");
    assert!(!theirs.join("root").exists(), "nothing is created under it");
}

#[test]
fn a_symlinked_component_is_refused_unless_root_made_it() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    fs::create_dir(&real).unwrap();
    let link = tmp.path().join("bkjob");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    // Made by another user: refused, on the way and as the last component.
    std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
    let err = write_in(&link.join("root")).unwrap_err();
    assert!(
        err.contains("symbolic link") && err.contains("uid 65534"),
        "{err}"
    );
    let err = write_in(&link).unwrap_err();
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(fs::read_dir(&real).unwrap().count(), 0);
    // Root's own link (`/var/run -> ../run`) is followed, and its target
    // is checked like any other directory.
    std::os::unix::fs::lchown(&link, Some(0), Some(0)).unwrap();
    write_in(&link.join("root")).unwrap();
    assert!(real.join("root/a.sh").is_file());
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("real/../real/./", &link).unwrap();
    write_in(&link).unwrap();
    assert!(real.join("a.sh").is_file());
}

#[test]
fn a_world_writable_dir_needs_the_sticky_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let open = tmp.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let err = write_in(&open.join("root")).unwrap_err();
    assert!(err.contains("mode 0777") && err.contains("sticky"), "{err}");
    // Sticky, like /tmp: accepted.
    fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
    write_in(&open.join("root")).unwrap();
}

#[test]
fn a_symlink_in_place_of_the_script_is_replaced_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    fs::create_dir(&dir).unwrap();
    let victim = tmp.path().join("victim");
    fs::write(&victim, "keep\n").unwrap();
    std::os::unix::fs::symlink(&victim, dir.join("a.sh")).unwrap();
    write_in(&dir).unwrap();
    assert_eq!(fs::read_to_string(&victim).unwrap(), "keep\n");
    let meta = fs::symlink_metadata(dir.join("a.sh")).unwrap();
    assert!(meta.file_type().is_file());
}

#[test]
fn a_fresh_dir_under_tmp_works() {
    let dir = PathBuf::from(format!(
        "/tmp/gse-scripts-test-{:016x}",
        rand::random::<u64>()
    ));
    let result = write_in(&dir.join("bkjob/root"));
    let written = fs::read_to_string(dir.join("bkjob/root/a.sh"));
    let _ = fs::remove_dir_all(&dir);
    result.unwrap();
    assert_eq!(written.unwrap(), "true\n");
}
