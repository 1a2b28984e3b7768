//! Where a container's CRI log has been read to: a file by identity and a byte offset.

use crate::api::StreamName;

/// A file by identity (device and inode), which survives the kubelet's renames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        FileId {
            // As stored in a checkpoint (see `FilePosition::encode`); Linux's are 32-bit.
            dev: meta.dev() & 0xffff_ffff,
            ino: meta.ino(),
        }
    }
}

/// The position right after a record (or where reading starts): resuming from it yields
/// the next record, nothing repeated and nothing lost.
///
/// `offset` is the start of the first line of `file` still to be read. Lines of the two
/// streams interleave in one file, and a line in progress on one stream (its `P` entries
/// read, its `F` not yet) keeps `offset` at its first entry while lines of the other
/// stream complete after it: those are delivered, so the position also says that entries
/// of `skip`'s stream starting before its offset are to be skipped. A line cut at
/// `max_line_bytes` was delivered when cut: `dropping` says its remaining entries (up to
/// and including its `F`) are to be dropped too.
///
/// `fingerprint` guards against a deleted file whose inode was given to a new file: a
/// CRC-32 of the file's first line (up to 64 bytes), 0 while the file had no line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FilePosition {
    pub file: FileId,
    /// The container restart the file belongs to (`<restart>.log`), so that a resume
    /// from a file that is gone goes on in the same or a later restart's files.
    pub restart: u32,
    pub fingerprint: u32,
    pub offset: u64,
    pub skip: Option<(StreamName, u64)>,
    pub dropping: [bool; 2],
}

/// Index of a stream in per-stream arrays (`dropping`).
pub fn slot(stream: StreamName) -> usize {
    match stream {
        StreamName::Stdout => 0,
        StreamName::Stderr => 1,
    }
}

/// Bytes of [`FilePosition::encode`].
pub const ENCODED_LEN: usize = 34;

impl FilePosition {
    /// The start of `file`.
    pub fn start_of(file: FileId, restart: u32, fingerprint: u32) -> Self {
        FilePosition {
            file,
            restart,
            fingerprint,
            ..Default::default()
        }
    }

    /// Where entries of `stream` start to count: the ones before it were delivered.
    pub fn delivered_until(&self, stream: StreamName) -> u64 {
        match self.skip {
            Some((s, until)) if s == stream => until.max(self.offset),
            _ => self.offset,
        }
    }

    /// A fixed-size form for a checkpoint slot, little endian:
    /// `dev u32 | ino u64 | offset u64 | skip distance past offset u32 | fingerprint u32 |
    /// flags u8 (1 skip, 2 skip is stderr, 4/8 dropping stdout/stderr) | 0 u8 | restart u32`.
    /// Linux device numbers fit 32 bits (`new_encode_dev`). A skip farther than 4 GiB
    /// past `offset` (another stream writing 4 GiB into one file while a line waits for
    /// its end) is not kept: resuming then repeats that stream's lines, never loses one.
    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut b = [0u8; ENCODED_LEN];
        b[0..4].copy_from_slice(&(self.file.dev as u32).to_le_bytes());
        b[4..12].copy_from_slice(&self.file.ino.to_le_bytes());
        b[12..20].copy_from_slice(&self.offset.to_le_bytes());
        let mut flags = 0u8;
        if let Some((stream, until)) = self.skip
            && let Ok(distance) = u32::try_from(until.saturating_sub(self.offset))
            && distance > 0
        {
            b[20..24].copy_from_slice(&distance.to_le_bytes());
            flags |= 1;
            if stream == StreamName::Stderr {
                flags |= 2;
            }
        }
        b[24..28].copy_from_slice(&self.fingerprint.to_le_bytes());
        if self.dropping[0] {
            flags |= 4;
        }
        if self.dropping[1] {
            flags |= 8;
        }
        b[28] = flags;
        b[30..34].copy_from_slice(&self.restart.to_le_bytes());
        b
    }

    /// The inverse of [`encode`](Self::encode); `None` for bytes it cannot have written.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != ENCODED_LEN || b[28] & !0x0f != 0 || b[29] != 0 {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let flags = b[28];
        let offset = u64_at(12);
        let distance = u64::from(u32_at(20));
        let skip = match flags & 1 {
            0 if distance != 0 => return None,
            0 => None,
            _ if distance == 0 => return None,
            _ => {
                let stream = if flags & 2 != 0 {
                    StreamName::Stderr
                } else {
                    StreamName::Stdout
                };
                Some((stream, offset.checked_add(distance)?))
            }
        };
        if flags & 1 == 0 && flags & 2 != 0 {
            return None;
        }
        Some(FilePosition {
            file: FileId {
                dev: u64::from(u32_at(0)),
                ino: u64_at(4),
            },
            restart: u32_at(30),
            fingerprint: u32_at(24),
            offset,
            skip,
            dropping: [flags & 4 != 0, flags & 8 != 0],
        })
    }
}

/// CRC-32 of the first line of a file (up to 64 bytes): see [`FilePosition`].
pub fn fingerprint(first_bytes: &[u8]) -> u32 {
    let Some(end) = first_bytes.iter().take(64).position(|&b| b == b'\n') else {
        if first_bytes.len() >= 64 {
            return crc32fast::hash(&first_bytes[..64]).max(1);
        }
        return 0;
    };
    crc32fast::hash(&first_bytes[..end]).max(1)
}
