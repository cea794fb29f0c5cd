//! Socket files, links and the reader over real sockets in temp dirs.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::admission::{Admission, ConnLimits, Names};
use super::links::{Links, open_dir};
use super::reader::{FrameReader, ReadEnd};
use super::*;
use crate::safe_dir::DirError;

fn opts(mode: u32, group: &str) -> SocketOptions {
    SocketOptions {
        mode,
        group: group.into(),
        key: "test.ipc",
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Gives the symlink (not its target) at `path` to uid/gid 65534.
fn give_link_to_nobody(path: &Path) {
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        Some(nix::unistd::Uid::from_raw(65534)),
        Some(nix::unistd::Gid::from_raw(65534)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

#[tokio::test]
async fn the_socket_file_gets_its_mode_and_group_and_is_removed_only_if_ours() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s/ipc.sock");
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(65534))
        .unwrap()
        .map(|g| g.name)
        .filter(|_| is_root())
        .unwrap_or_default();
    let (_listener, file) = SocketFile::bind(&path, &opts(0o660, &group)).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    if !group.is_empty() {
        assert_eq!(meta.gid(), 65534);
    }
    // Replaced by someone else: left alone.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"theirs").unwrap();
    file.remove();
    assert_eq!(std::fs::read(&path).unwrap(), b"theirs");
    let err = SocketFile::bind(&dir.path().join("x"), &opts(0o666, "no-such-group-gse"));
    assert!(matches!(err, Err(SocketError::NoGroup { .. })), "{err:?}");
}

#[test]
fn mode_is_never_set_through_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"x").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.path().join("ipc.sock");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let opened = open_dir(dir.path()).unwrap();
    let name = std::ffi::OsStr::new("ipc.sock");
    assert!(file::set_mode_and_group(&opened, name, &link, &opts(0o666, "")).is_err());
    let mode = std::fs::metadata(&victim).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600, "the symlink's target was changed");
}

#[test]
fn links_are_made_through_trusted_directories_and_removed_only_if_ours() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let target = root.join("ipc.sock");
    // A root-owned directory symlink is followed, like /var/run -> /run.
    std::fs::create_dir(root.join("run")).unwrap();
    std::os::unix::fs::symlink(root.join("run"), root.join("varrun")).unwrap();
    let fresh = root.join("new/deep/ipc");
    let via_symlink = root.join("varrun/gse2/ipc");
    let foreign = root.join("foreign");
    std::os::unix::fs::symlink("/elsewhere", &foreign).unwrap();
    let file = root.join("file");
    std::fs::write(&file, b"keep").unwrap();
    let ours_before = root.join("ours");
    std::os::unix::fs::symlink(&target, &ours_before).unwrap();
    let all = [&fresh, &via_symlink, &foreign, &file, &ours_before].map(|p| p.to_path_buf());

    let links = Links::make(&target, &all, "test.links");
    let made: Vec<_> = links.paths().map(Path::to_path_buf).collect();
    assert_eq!(
        made,
        vec![fresh.clone(), via_symlink.clone(), ours_before.clone()]
    );
    assert_eq!(std::fs::read_link(&fresh).unwrap(), target);
    let created = std::fs::metadata(root.join("new/deep")).unwrap();
    assert_eq!(created.mode() & 0o7777, 0o755);
    assert!(root.join("run/gse2/ipc").is_symlink());
    assert_eq!(
        std::fs::read_link(&foreign).unwrap(),
        Path::new("/elsewhere")
    );

    // One of ours was replaced meanwhile: that one stays.
    std::fs::remove_file(&ours_before).unwrap();
    std::os::unix::fs::symlink("/other", &ours_before).unwrap();
    links.remove();
    assert!(!fresh.is_symlink() && !via_symlink.is_symlink());
    assert_eq!(
        std::fs::read_link(&ours_before).unwrap(),
        Path::new("/other")
    );
    assert!(foreign.is_symlink() && file.exists());
}

#[test]
fn a_symlink_or_directory_another_user_controls_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Group- or world-writable without the sticky bit.
    let open = root.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = open_dir(&open.join("x")).unwrap_err();
    assert!(matches!(err, DirError::Writable { .. }), "{err}");
    assert!(!open.join("x").exists());
    // Sticky (like /tmp) is fine.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    assert!(open_dir(&open.join("x")).is_ok());
    if !is_root() {
        return;
    }
    let victim = root.join("victim");
    std::fs::create_dir(&victim).unwrap();
    let planted = root.join("planted");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    give_link_to_nobody(&planted);
    let err = open_dir(&planted.join("sub")).unwrap_err();
    assert!(
        matches!(&err, DirError::Symlink { path, .. } if path == &planted),
        "{err}"
    );
    assert!(err.to_string().contains("uid 65534"), "{err}");
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    let owned = root.join("owned");
    std::fs::create_dir(&owned).unwrap();
    std::os::unix::fs::chown(&owned, Some(65534), None).unwrap();
    let err = open_dir(&owned.join("sub")).unwrap_err();
    assert!(
        matches!(err, DirError::Untrusted { uid: 65534, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn the_socket_directory_is_walked_safely_and_a_stale_socket_removed_in_it() {
    let dir = tempfile::tempdir().unwrap();
    // The agent's own directories (root's in tests; the user's in a quick
    // start run by that user), made on the way.
    let path = dir.path().join("data/ipc.sock");
    let (listener, file) = SocketFile::bind(&path, &opts(0o666, "")).unwrap();
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket()
    );
    drop(listener);
    // Stale now: the next agent removes it and binds again.
    let (_listener, again) = SocketFile::bind(&path, &opts(0o666, "")).unwrap();
    again.remove();
    assert!(std::fs::symlink_metadata(&path).is_err());
    drop(file);
    if !is_root() {
        return;
    }
    // What a local user plants in a world-writable directory (like /tmp):
    // a symlink to a directory of root's, or a directory of their own.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = dir.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    let planted_link = shared.join("agent");
    std::os::unix::fs::symlink(&victim, &planted_link).unwrap();
    give_link_to_nobody(&planted_link);
    let err = SocketFile::bind(&planted_link.join("ipc.sock"), &opts(0o666, "")).unwrap_err();
    assert!(
        matches!(
            &err,
            SocketError::Dir {
                source: DirError::Symlink { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("test.ipc"), "names the key: {err}");
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    let planted_dir = shared.join("theirs");
    std::fs::create_dir(&planted_dir).unwrap();
    std::os::unix::fs::chown(&planted_dir, Some(65534), Some(65534)).unwrap();
    let err = SocketFile::bind(&planted_dir.join("ipc.sock"), &opts(0o666, "")).unwrap_err();
    assert!(
        matches!(
            &err,
            SocketError::Dir {
                source: DirError::Untrusted { uid: 65534, .. },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&planted_dir).unwrap().count(), 0);
}

fn admission(idle: Duration) -> Admission {
    Admission::new(
        Names {
            socket: "test socket",
            per_uid_key: "test.max_connections_per_uid",
            reserve_key: "test.root_reserved_connections",
        },
        ConnLimits {
            max_connections: 8,
            max_connections_per_uid: 4,
            root_reserve: 2,
            idle_timeout: idle,
            max_frame: 4 << 20,
        },
    )
}

#[tokio::test]
async fn the_reader_grows_with_the_bytes_not_with_the_claim_and_waits_for_room() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sock");
    let (listener, _file) = SocketFile::bind(&path, &opts(0o600, "")).unwrap();
    let a = admission(Duration::from_millis(400));
    let mut clients = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..3 {
        clients.push(UnixStream::connect(&path).await.unwrap());
        conns.push(a.accept(&listener).await.unwrap());
    }
    // Frames claiming 4 MiB: two get room (the user's budget of two
    // largest frames), the third waits for room and ends idle.
    let claim = 4 << 20;
    let mut held = Vec::new();
    for (i, (client, conn)) in clients.iter_mut().zip(conns).enumerate() {
        let super::admission::Conn {
            mut stream, slot, ..
        } = conn;
        client.write_all(&[7u8; 100]).await.unwrap();
        let mut reader = FrameReader::new(Duration::from_millis(400));
        assert_eq!(reader.fill(&mut stream, &slot, None).await.unwrap(), 100);
        client.write_all(&[7u8; 1000]).await.unwrap();
        let more = tokio::time::timeout(
            Duration::from_secs(5),
            reader.fill(&mut stream, &slot, Some(claim)),
        )
        .await
        .unwrap();
        match (i, more) {
            (0 | 1, Ok(n)) => assert_eq!(n, 1000),
            (2, Err(ReadEnd::Idle(_))) => {}
            (i, other) => panic!("connection {i}: {other:?}"),
        }
        // Nothing near the claimed 4 MiB was reserved.
        assert!(
            reader.buf().capacity() < 1 << 20,
            "reserved {}",
            reader.buf().capacity()
        );
        held.push((reader, slot, stream));
    }
}
