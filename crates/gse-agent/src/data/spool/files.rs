//! Segment files on disk: naming, listing, tail recovery, creation and
//! removal. Everything here runs at `open` or when a segment starts or ends.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::entry::{self, HEADER_LEN};
use super::{Segment, SpoolError, io_err};

const SEGMENT_EXT: &str = "seg";

pub(super) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.{SEGMENT_EXT}"))
}

/// Segment files in `dir`, oldest first. Other files are ignored.
pub(super) fn list_segments(dir: &Path) -> Result<VecDeque<Segment>, SpoolError> {
    let mut segments = Vec::new();
    for dirent in fs::read_dir(dir).map_err(io_err(dir))? {
        let dirent = dirent.map_err(io_err(dir))?;
        let path = dirent.path();
        let first_seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(SEGMENT_EXT)?.strip_suffix('.'))
            .filter(|stem| stem.len() == 20)
            .and_then(|stem| stem.parse::<u64>().ok());
        if let Some(first_seq) = first_seq {
            let bytes = dirent.metadata().map_err(io_err(&path))?.len();
            segments.push(Segment {
                first_seq,
                path,
                bytes,
                end: bytes,
                skipped: 0,
            });
        }
    }
    segments.sort_by_key(|s| s.first_seq);
    Ok(segments.into())
}

/// Removes leading segments whose entries are all below `acked` (the next
/// segment starts at or before it).
pub(super) fn remove_acked_segments(
    segments: &mut VecDeque<Segment>,
    acked: u64,
) -> Result<(), SpoolError> {
    while segments.len() > 1 && segments[1].first_seq <= acked {
        let seg = segments.pop_front().expect("len > 1");
        remove_segment_file(&seg.path)?;
    }
    Ok(())
}

/// Checks every entry of the tail segment and truncates at the first one
/// that is torn or corrupt. Returns (valid entries, bytes cut).
pub(super) fn recover_tail(seg: &mut Segment) -> Result<(u64, u64), SpoolError> {
    let path = seg.path.clone();
    let file = File::open(&path).map_err(io_err(&path))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let (mut offset, mut count) = (0u64, 0u64);
    let mut header = [0u8; HEADER_LEN as usize];
    loop {
        if offset + HEADER_LEN > seg.bytes || reader.read_exact(&mut header).is_err() {
            break;
        }
        let (body_len, _) = entry::parse_header(&header);
        let len = HEADER_LEN + u64::from(body_len);
        if u64::from(body_len) < entry::BODY_FIXED_LEN || offset + len > seg.bytes {
            break;
        }
        let mut body = vec![0u8; body_len as usize];
        if reader.read_exact(&mut body).is_err() {
            break;
        }
        if entry::decode(&header, Bytes::from(body), seg.first_seq + count).is_none() {
            break;
        }
        offset += len;
        count += 1;
    }
    let cut = seg.bytes - offset;
    if cut > 0 {
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.set_len(offset)
            .and_then(|_| file.sync_all())
            .map_err(io_err(&path))?;
        seg.bytes = offset;
        seg.end = offset;
    }
    Ok((count, cut))
}

pub(super) fn create_segment(dir: &Path, first_seq: u64) -> Result<Segment, SpoolError> {
    let path = segment_path(dir, first_seq);
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    sync_dir(dir)?;
    Ok(Segment {
        first_seq,
        path,
        bytes: 0,
        end: 0,
        skipped: 0,
    })
}

pub(super) fn open_append(path: &Path) -> Result<File, SpoolError> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_err(path))
}

pub(super) fn remove_segment_file(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

/// Makes file creation durable (directory entries need their own fsync).
pub(super) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
