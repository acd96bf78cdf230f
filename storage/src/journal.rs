//! The write-ahead journal in front of sled's update log.
//!
//! An append is a few bytes copied into memory. A flush writes what gathered since the last one
//! to the end of one file with a single `pwrite` and makes it durable with one `fdatasync`: the
//! group commit costs two system calls, whatever the number of documents and updates in it.
//! Journaled records reach sled's `log` tree later, many in one batch, at a checkpoint; the
//! journal is then emptied.
//!
//! A record: body length (u32, little-endian), CRC-32 of the body (u32), then the body: name
//! length (u16), name, sequence number (u64), update bytes. A crash can leave a torn record at
//! the end; replay stops at the first record that is short or fails its checksum.
//!
//! The file is grown ahead of the records, [`PREALLOCATE_BYTES`] of zeros at a time, synced
//! once: a group commit then writes inside blocks the file already owns, so its `fdatasync`
//! writes the records and no allocation (appending past the end makes every sync allocate
//! blocks and write the inode too: `benches/group-commit/fsync.py` measures both ways). Zeros end the valid prefix like a
//! torn record does (a zero header announces an empty body, which has no name), so the
//! preallocated tail is never taken for records.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::Seq;

const RECORD_HEADER_BYTES: usize = 4 + 4;

/// How far ahead of its records the journal file is grown with zeros.
pub(crate) const PREALLOCATE_BYTES: u64 = 1 << 20;

/// The journal file and what it holds that sled does not have yet.
pub(crate) struct JournalFile {
    file: File,
    /// Bytes of whole records in the file; the next write goes here.
    len: u64,
    /// The file's synced size: records, then zeros up to here.
    allocated: u64,
    /// The records written and synced since the last checkpoint (the file's whole content).
    unapplied: Vec<u8>,
    /// A truncation whose sync failed, to be synced before anything relies on it.
    truncation_unsynced: bool,
}

impl JournalFile {
    /// Opens (or creates) the journal. The records it held are its [`JournalFile::unapplied`]
    /// ones; a torn or corrupt tail is cut off the file, so that no later write can land in front
    /// of stale bytes.
    pub(crate) fn open(path: &Path) -> io::Result<(JournalFile, TornTail)> {
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if !existed {
            // The new file's directory entry must be durable too, or a power loss can take
            // the file, and the records synced into it, away.
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        let size = file.metadata()?.len();
        let size = usize::try_from(size)
            .map_err(|_| io::Error::other("the journal is larger than memory can hold"))?;
        let mut content = vec![0; size];
        file.read_exact_at(&mut content, 0)?;
        let valid = valid_prefix(&content);
        // Zeros after the records are the preallocated tail; anything else is a torn record.
        let zeros = content[valid..].iter().all(|&b| b == 0);
        let torn = TornTail {
            bytes: if zeros { 0 } else { content.len() - valid },
        };
        content.truncate(valid);
        let mut allocated = size as u64;
        if torn.bytes > 0 {
            file.set_len(valid as u64)?;
            file.sync_all()?;
            allocated = valid as u64;
        }
        let journal = JournalFile {
            file,
            len: valid as u64,
            allocated,
            unapplied: content,
            truncation_unsynced: false,
        };
        Ok((journal, torn))
    }

    /// Appends `records` (whole records) durably. On failure the file is cut back to its last
    /// good length, so a half-written record never sits in front of later ones.
    pub(crate) fn write(&mut self, records: &[u8]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.sync_truncation()?;
        let end = self.len + records.len() as u64;
        if end > self.allocated {
            self.preallocate(end)?;
        }
        let written = self
            .file
            .write_all_at(records, self.len)
            .and_then(|()| self.file.sync_data());
        if let Err(err) = written {
            // The partial record is zeroed (best effort: if even this fails, the next write
            // starts at the same offset and overwrites it anyway), so the zeros after the
            // records stay zeros.
            let zeros = vec![0; records.len()];
            if self.file.write_all_at(&zeros, self.len).is_err() {
                let _ = self.file.set_len(self.len);
                self.allocated = self.len;
            }
            return Err(err);
        }
        self.len += records.len() as u64;
        self.unapplied.extend_from_slice(records);
        Ok(())
    }

    /// Grows the file with zeros to hold at least `end` bytes, a [`PREALLOCATE_BYTES`] step at
    /// least, and syncs its new size. The blocks are reserved with `fallocate` (they read as
    /// zeros and cost no write; 0.2 ms a step here against 2 ms for writing the zeros), or, on a
    /// file system without it, written out as zeros. On failure the file is cut back to what it
    /// was.
    fn preallocate(&mut self, end: u64) -> io::Result<()> {
        let target = end.max(self.allocated + PREALLOCATE_BYTES);
        let grown = match fs4::FileExt::allocate(&self.file, target) {
            Ok(()) => self.file.sync_all(),
            Err(_) => {
                let len = usize::try_from(target - self.allocated)
                    .map_err(|_| io::Error::other("the journal is larger than memory can hold"))?;
                let zeros = vec![0; len];
                self.file
                    .write_all_at(&zeros, self.allocated)
                    .and_then(|()| self.file.sync_all())
            }
        };
        if let Err(err) = grown {
            let _ = self.file.set_len(self.allocated);
            return Err(err);
        }
        self.allocated = target;
        Ok(())
    }

    /// The records written since the last checkpoint.
    pub(crate) fn unapplied(&self) -> &[u8] {
        &self.unapplied
    }

    /// Bytes waiting for a checkpoint.
    pub(crate) fn unapplied_bytes(&self) -> usize {
        self.unapplied.len()
    }

    /// Empties the journal once its records are durable elsewhere. The truncation is synced: a
    /// journal that came back after a crash would replay records of documents deleted since.
    pub(crate) fn clear(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        // Emptied in memory at once, even if the sync fails: the next write must land at the
        // start of the (now empty) file, not past a hole that replay would stop at.
        self.len = 0;
        self.allocated = 0;
        self.unapplied.clear();
        self.truncation_unsynced = true;
        self.sync_truncation()
    }

    /// Syncs a truncation whose sync failed before; nothing to do otherwise.
    pub(crate) fn sync_truncation(&mut self) -> io::Result<()> {
        if self.truncation_unsynced {
            self.file.sync_all()?;
            self.truncation_unsynced = false;
        }
        Ok(())
    }
}

/// Bytes cut off the end of the journal when it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TornTail {
    pub(crate) bytes: usize,
}

/// Encodes one record at the end of `out`.
///
/// # Panics
/// Never for the server's names (at most a few hundred bytes) and updates (bounded by the frame
/// limit, far below 4 GiB); the lengths are checked by the caller.
pub(crate) fn encode(out: &mut Vec<u8>, doc: &str, seq: Seq, update: &[u8]) {
    let body_len = 2 + doc.len() + 8 + update.len();
    let start = out.len();
    out.reserve(RECORD_HEADER_BYTES + body_len);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(doc.len() as u16).to_le_bytes());
    out.extend_from_slice(doc.as_bytes());
    out.extend_from_slice(&seq.0.to_le_bytes());
    out.extend_from_slice(update);
    let crc = crc32fast::hash(&out[start + RECORD_HEADER_BYTES..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Whether a record for `doc` and `update` fits the format's length fields.
pub(crate) fn fits(doc: &str, update: &[u8]) -> bool {
    doc.len() <= usize::from(u16::MAX) && 2 + doc.len() + 8 + update.len() <= u32::MAX as usize
}

/// One decoded record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub(crate) doc: &'a str,
    pub(crate) seq: Seq,
    pub(crate) update: &'a [u8],
}

/// The records of `bytes`, up to the first invalid one.
pub(crate) fn records(bytes: &[u8]) -> impl Iterator<Item = Record<'_>> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let (record, len) = decode(rest)?;
        rest = &rest[len..];
        Some(record)
    })
}

/// The length of the longest prefix of `bytes` made of valid records.
fn valid_prefix(bytes: &[u8]) -> usize {
    let mut at = 0;
    while let Some((_, len)) = decode(&bytes[at..]) {
        at += len;
    }
    at
}

/// The record at the start of `bytes` and its encoded length, if it is whole and intact.
fn decode(bytes: &[u8]) -> Option<(Record<'_>, usize)> {
    let body_len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let end = RECORD_HEADER_BYTES.checked_add(body_len)?;
    let body = bytes.get(RECORD_HEADER_BYTES..end)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let name_len = usize::from(u16::from_le_bytes(body.get(0..2)?.try_into().ok()?));
    let doc = std::str::from_utf8(body.get(2..2 + name_len)?).ok()?;
    let seq_at = 2 + name_len;
    let seq = u64::from_le_bytes(body.get(seq_at..seq_at + 8)?.try_into().ok()?);
    let update = body.get(seq_at + 8..)?;
    Some((
        Record {
            doc,
            seq: Seq(seq),
            update,
        },
        end,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, "ws/a", Seq(1), b"one");
        encode(&mut out, "ws/b", Seq(2), b"");
        encode(&mut out, "ws/a", Seq(3), &[0xff; 300]);
        out
    }

    #[test]
    fn records_round_trip() {
        let bytes = sample();
        let decoded: Vec<_> = records(&bytes).collect();
        assert_eq!(decoded.len(), 3);
        assert_eq!(
            decoded[0],
            Record {
                doc: "ws/a",
                seq: Seq(1),
                update: b"one"
            }
        );
        assert_eq!(decoded[1].update, b"");
        assert_eq!(decoded[2].update, &[0xff; 300][..]);
        assert_eq!(valid_prefix(&bytes), bytes.len());
    }

    #[test]
    fn a_torn_or_corrupt_record_ends_the_valid_prefix() {
        let bytes = sample();
        let whole_two = bytes.len() - (RECORD_HEADER_BYTES + 2 + 4 + 8 + 300);
        for cut in whole_two..bytes.len() {
            assert_eq!(valid_prefix(&bytes[..cut]), whole_two, "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[whole_two + RECORD_HEADER_BYTES + 5] ^= 1;
        assert_eq!(valid_prefix(&flipped), whole_two);
        assert_eq!(records(&flipped).count(), 2);
    }

    #[test]
    fn open_cuts_a_torn_tail_and_later_writes_follow_the_good_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let bytes = sample();
        std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
        let (mut journal, torn) = JournalFile::open(&path).unwrap();
        assert_eq!(records(journal.unapplied()).count(), 2);
        assert_eq!(torn.bytes, bytes.len() - 7 - journal.unapplied_bytes());
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() as usize,
            journal.unapplied_bytes()
        );

        let mut more = Vec::new();
        encode(&mut more, "ws/c", Seq(4), b"four");
        journal.write(&more).unwrap();
        drop(journal);
        let (mut journal, torn) = JournalFile::open(&path).unwrap();
        assert_eq!(torn.bytes, 0);
        let docs: Vec<_> = records(journal.unapplied()).map(|r| r.doc).collect();
        assert_eq!(docs, vec!["ws/a", "ws/b", "ws/c"]);

        journal.clear().unwrap();
        drop(journal);
        let (journal, _) = JournalFile::open(&path).unwrap();
        assert_eq!(journal.unapplied_bytes(), 0);
    }

    #[test]
    fn the_file_is_grown_ahead_of_its_records_and_the_zeros_are_no_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut journal, _) = JournalFile::open(&path).unwrap();
        let bytes = sample();
        journal.write(&bytes).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), PREALLOCATE_BYTES);

        // Reopened, the records are there and the zeros after them are kept, not cut.
        drop(journal);
        let (mut journal, torn) = JournalFile::open(&path).unwrap();
        assert_eq!(torn.bytes, 0);
        assert_eq!(journal.unapplied(), &bytes[..]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), PREALLOCATE_BYTES);

        // Later records follow the earlier ones, and a write past the end grows the file again.
        let mut big = Vec::new();
        encode(
            &mut big,
            "ws/big",
            Seq(9),
            &vec![5; PREALLOCATE_BYTES as usize],
        );
        journal.write(&big).unwrap();
        let grown = std::fs::metadata(&path).unwrap().len();
        assert!(grown >= (bytes.len() + big.len()) as u64 && grown > PREALLOCATE_BYTES);
        drop(journal);

        // A crash in the middle of a write leaves a torn record among the zeros: it is cut off.
        let mut torn_record = Vec::new();
        encode(&mut torn_record, "ws/torn", Seq(10), b"never acknowledged");
        torn_record.truncate(torn_record.len() - 3);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&torn_record, (bytes.len() + big.len()) as u64)
            .unwrap();
        drop(file);
        let (journal, torn) = JournalFile::open(&path).unwrap();
        assert_eq!(torn.bytes as u64, grown - (bytes.len() + big.len()) as u64);
        let docs: Vec<_> = records(journal.unapplied()).map(|r| r.doc).collect();
        assert_eq!(docs, vec!["ws/a", "ws/b", "ws/a", "ws/big"]);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            (bytes.len() + big.len()) as u64
        );
    }
}
