use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use super::*;
use crate::file::digest::digest_reader;
use crate::file::target_path::resolve;

fn digest_of(content: &[u8]) -> FileDigest {
    digest_reader(content, content.len() as u64, 1024).unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Fails if any `.<name>.gse-tmp-*` file is left in `dir`.
pub(crate) fn assert_no_temp_files(dir: &Path) {
    let left: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| is_temp_file_name(n))
        .collect();
    assert!(left.is_empty(), "temp files left in {dir:?}: {left:?}");
}

fn me() -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .unwrap()
        .unwrap()
        .name
}

#[test]
fn f2_small_file_is_verified_and_installed_with_its_mode() {
    let root = tempfile::tempdir().unwrap();
    let target = resolve(root.path(), "hello.txt").unwrap();
    let content = b"hello, gse\n";
    write_small_file(
        &target,
        content,
        &digest_of(content),
        0o640,
        &InstallOptions::default(),
    )
    .unwrap();
    assert_eq!(fs::read(target.path()).unwrap(), content);
    assert_eq!(mode(target.path()), 0o640);
    assert_no_temp_files(root.path());
}

#[test]
fn f5_small_file_with_wrong_content_is_refused_before_writing() {
    let root = tempfile::tempdir().unwrap();
    let target = resolve(root.path(), "a.txt").unwrap();
    let digest = digest_of(b"the real content");
    let err = write_small_file(
        &target,
        b"the fake content",
        &digest,
        0o644,
        &InstallOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, InstallError::Mismatch { what: "MD5", .. }),
        "{err}"
    );
    let err = write_small_file(
        &target,
        b"short",
        &digest,
        0o644,
        &InstallOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, InstallError::Mismatch { what: "size", .. }),
        "{err}"
    );
    assert!(!target.path().exists());
    assert_no_temp_files(root.path());
}

#[test]
fn f4_permission_override_and_special_bits() {
    let root = tempfile::tempdir().unwrap();
    let content = b"#!/bin/sh\n";
    let a = resolve(root.path(), "a").unwrap();
    let opts = InstallOptions {
        permission: Some(0o600),
        ..Default::default()
    };
    write_small_file(&a, content, &digest_of(content), 0o755, &opts).unwrap();
    assert_eq!(mode(a.path()), 0o600);
    let b = resolve(root.path(), "b").unwrap();
    write_small_file(
        &b,
        content,
        &digest_of(content),
        0o4755,
        &InstallOptions::default(),
    )
    .unwrap();
    assert_eq!(mode(b.path()), 0o4755, "set-uid bit kept");
}

#[test]
fn existing_file_is_replaced_whole() {
    let root = tempfile::tempdir().unwrap();
    fs::write(root.path().join("f"), b"old old old old").unwrap();
    let target = resolve(root.path(), "f").unwrap();
    write_small_file(
        &target,
        b"new",
        &digest_of(b"new"),
        0o644,
        &InstallOptions::default(),
    )
    .unwrap();
    assert_eq!(fs::read(target.path()).unwrap(), b"new");
}

#[test]
fn missing_directory_needs_auto_mkdir() {
    let root = tempfile::tempdir().unwrap();
    let target = resolve(root.path(), "x/y/z.txt").unwrap();
    let digest = digest_of(b"z");
    let err =
        write_small_file(&target, b"z", &digest, 0o644, &InstallOptions::default()).unwrap_err();
    assert!(
        matches!(&err, InstallError::MissingDir { dir } if dir == &root.path().join("x/y")),
        "{err}"
    );
    assert!(err.to_string().contains("auto_mkdir"), "{err}");
    let opts = InstallOptions {
        auto_mkdir: true,
        ..Default::default()
    };
    write_small_file(&target, b"z", &digest, 0o644, &opts).unwrap();
    assert!(mode(&root.path().join("x/y")) & 0o700 == 0o700);
    assert_eq!(fs::read(target.path()).unwrap(), b"z");
}

#[test]
fn owner_is_resolved_by_name_and_applied() {
    let root = tempfile::tempdir().unwrap();
    let owner = Owner::resolve(&me()).unwrap();
    assert_eq!(owner.uid, nix::unistd::Uid::effective().as_raw());
    let target = resolve(root.path(), "owned").unwrap();
    let opts = InstallOptions {
        owner: Some(owner.clone()),
        ..Default::default()
    };
    write_small_file(&target, b"o", &digest_of(b"o"), 0o644, &opts).unwrap();
    let meta = fs::metadata(target.path()).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (owner.uid, owner.gid));
}

#[test]
fn owner_other_than_the_agent_when_root() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: only root can give files away");
        return;
    }
    let Ok(nobody) = Owner::resolve("nobody") else {
        eprintln!("skipped: no user 'nobody' on this host");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let target = resolve(root.path(), "given").unwrap();
    let opts = InstallOptions {
        owner: Some(nobody.clone()),
        ..Default::default()
    };
    // chown before chmod: the set-gid bit must survive the owner change.
    write_small_file(&target, b"g", &digest_of(b"g"), 0o2750, &opts).unwrap();
    let meta = fs::metadata(target.path()).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (nobody.uid, nobody.gid));
    assert_eq!(mode(target.path()), 0o2750);
    let link = resolve(root.path(), "link").unwrap();
    install_symlink(&link, "given", &opts).unwrap();
    assert_eq!(fs::symlink_metadata(link.path()).unwrap().uid(), nobody.uid);
}

#[test]
fn unknown_owner_is_reported() {
    let err = Owner::resolve("gse-no-such-user-x").unwrap_err();
    assert!(
        matches!(err, InstallError::NoSuchOwner { what: "user", .. }),
        "{err}"
    );
    let err = Owner::resolve(&format!("{}:gse-no-such-group-x", me())).unwrap_err();
    assert!(
        matches!(err, InstallError::NoSuchOwner { what: "group", .. }),
        "{err}"
    );
}

#[test]
fn f6_directories_are_created_then_given_their_mode() {
    let root = tempfile::tempdir().unwrap();
    let opts = InstallOptions::default();
    let dir = resolve(root.path(), "app").unwrap();
    install_dir(&dir, &opts).unwrap();
    install_dir(&dir, &opts).unwrap(); // an existing directory is fine
    let empty = resolve(root.path(), "app/empty").unwrap();
    install_dir(&empty, &opts).unwrap();
    set_dir_mode(&empty, 0o750, &opts).unwrap();
    set_dir_mode(&dir, 0o711, &opts).unwrap();
    assert_eq!(mode(empty.path()), 0o750);
    assert_eq!(mode(dir.path()), 0o711);
}

#[test]
fn directory_refuses_a_link_or_file_in_the_way() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    symlink(outside.path(), root.path().join("d")).unwrap();
    fs::write(root.path().join("f"), b"").unwrap();
    let opts = InstallOptions::default();
    let d = resolve(root.path(), "d").unwrap();
    let err = install_dir(&d, &opts).unwrap_err();
    assert!(
        matches!(
            err,
            InstallError::InTheWay {
                what: "symbolic link",
                ..
            }
        ),
        "{err}"
    );
    let err = install_dir(&resolve(root.path(), "f").unwrap(), &opts).unwrap_err();
    assert!(
        matches!(err, InstallError::InTheWay { what: "file", .. }),
        "{err}"
    );
    let before = mode(outside.path());
    assert!(
        set_dir_mode(&d, 0o777, &opts).is_err(),
        "never chmods through a link"
    );
    assert_eq!(mode(outside.path()), before);
}

#[test]
fn f6_symlink_is_created_as_given_and_replaces_an_old_one() {
    let root = tempfile::tempdir().unwrap();
    let opts = InstallOptions::default();
    let link = resolve(root.path(), "current").unwrap();
    install_symlink(&link, "releases/1", &opts).unwrap();
    install_symlink(&link, "/outside/is/just/text", &opts).unwrap();
    assert_eq!(
        fs::read_link(link.path()).unwrap(),
        Path::new("/outside/is/just/text")
    );
    assert_no_temp_files(root.path());
    fs::create_dir(root.path().join("dir")).unwrap();
    let err = install_symlink(&resolve(root.path(), "dir").unwrap(), "x", &opts).unwrap_err();
    assert!(
        matches!(
            err,
            InstallError::Io {
                op: "rename into place",
                ..
            }
        ),
        "{err}"
    );
    assert_no_temp_files(root.path());
}

#[test]
fn temp_names_are_recognised_and_fit_long_names() {
    let root = tempfile::tempdir().unwrap();
    let long = "n".repeat(250);
    let target = resolve(root.path(), &long).unwrap();
    let temp = create_temp(&target, &InstallOptions::default()).unwrap();
    let name = temp
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(name.len() <= 255, "{}", name.len());
    assert!(is_temp_file_name(&name), "{name}");
    drop(temp);
    assert_no_temp_files(root.path());
    assert!(!is_temp_file_name("report.txt"));
    assert!(!is_temp_file_name(".gse-tmp-0123456789abcdef"));
    assert!(!is_temp_file_name(".a.gse-tmp-xyz"));
}
