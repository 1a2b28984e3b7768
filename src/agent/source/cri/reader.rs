//! Reading one container's log directory in order, by file identity, without waiting
//! (the waiting is [`super::follow`]'s).

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::record::Timestamp;

use super::join::{CriRecord, Joiner};
use super::parse::{HEADER_MAX, parse_header};
use super::path::LogFileName;
use super::position::{FileId, FilePosition, fingerprint};

/// Bytes read from a file at once.
const CHUNK: usize = 64 * 1024;
/// A file line longer than this (the runtime splits at 16 KiB by default) is not
/// buffered whole: its message goes to the joiner as it is read.
const LINE_BUFFER_MAX: usize = 64 * 1024;

/// How to read.
#[derive(Clone, Copy, Debug)]
pub struct ReadOptions {
    /// Longest line kept whole after joining `P` entries; longer ones are cut.
    pub max_line_bytes: usize,
    /// Lines stamped earlier are read but not handed out (a lane that starts at a time).
    pub since: Option<Timestamp>,
    /// How long a renamed file may still get lines after the reopened file got its
    /// first: containerd moves stdout and stderr to the new file one after the other, so
    /// the other stream's last line can land in the old file just after. Reading moves on
    /// this long after the new file was first seen written (at once for an exited
    /// container).
    pub rotate_grace: Duration,
}

/// The default [`ReadOptions::rotate_grace`].
pub const ROTATE_GRACE: Duration = Duration::from_millis(250);

/// Where to start reading.
#[derive(Clone, Copy, Debug)]
pub enum Start {
    /// The oldest uncompressed file.
    Beginning,
    /// A position handed out earlier.
    At(FilePosition),
}

/// The file of a position is no longer there to be read: what was still unread in it is
/// lost to this reader (count it as `rotated`). Reading went on at the oldest file left
/// of the same or a later restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// Gone, and some rotated files of the directory are compressed: it was most likely
    /// compressed by the kubelet (its lines are in a `.gz` this reader does not read).
    Compressed,
    /// Gone (deleted, or its inode now holds another file).
    Deleted,
}

impl Missing {
    /// A bounded label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Missing::Compressed => "compressed",
            Missing::Deleted => "deleted",
        }
    }
}

/// What one read gave.
#[derive(Debug, Default)]
pub struct Batch {
    /// In order; each with the position after it.
    pub records: Vec<CriRecord>,
    /// Lines that were not CRI entries (skipped), including a line a file ended in
    /// without its newline when reading moved on to the next file.
    pub malformed: u64,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.malformed == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error(
        "cannot list the container log directory {dir}: {source}; the agent needs read access to /var/log/pods"
    )]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the container log file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl CriError {
    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CriError::Dir { source, .. } | CriError::File { source, .. }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                "not_found"
            }
            CriError::Dir { .. } => "dir",
            CriError::File { .. } => "file",
        }
    }
}

/// An open log file.
#[derive(Debug)]
struct Open {
    file: File,
    id: FileId,
    name: LogFileName,
    path: PathBuf,
}

/// A file line too long to buffer, being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Long {
    None,
    /// Its header was parsed and its entry is open in the joiner.
    Entry,
    /// Not an entry: dropped up to its newline.
    Malformed,
}

/// Reads one container's log directory: its files oldest first, each followed by
/// identity (dev, inode) so that a rename does not matter.
#[derive(Debug)]
pub struct DirReader {
    dir: PathBuf,
    cur: Option<Open>,
    /// The file after `cur`, once found.
    next: Option<Open>,
    /// Only files of this restart or later are read (after a missing file).
    min_restart: u32,
    /// The directory may have changed since it was last listed.
    rescan: bool,
    /// `cur` is read to its end once more before moving on to `next`.
    final_pass: bool,
    /// A file after `cur` holds data (as of the last listing).
    later_written: bool,
    /// When to move on to `next`, which the runtime writes now.
    switch_at: Option<Instant>,
    rotate_grace: Duration,
    joiner: Joiner,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_at: u64,
    long: Long,
}

impl DirReader {
    /// Opens `dir` at `start`. Reports a position whose file is no longer there.
    pub fn open(
        dir: &Path,
        start: Start,
        opts: ReadOptions,
    ) -> Result<(Self, Option<Missing>), CriError> {
        let mut reader = DirReader {
            dir: dir.to_path_buf(),
            cur: None,
            next: None,
            min_restart: 0,
            rescan: true,
            final_pass: false,
            later_written: false,
            switch_at: None,
            rotate_grace: opts.rotate_grace,
            joiner: Joiner::new(&FilePosition::default(), opts.max_line_bytes, opts.since),
            buf: Vec::new(),
            buf_at: 0,
            long: Long::None,
        };
        let listing = reader.list()?;
        let p = match start {
            Start::At(p) if p.file != FileId::default() => p,
            Start::At(p) => {
                reader.min_restart = p.restart;
                return Ok((reader, None));
            }
            Start::Beginning => return Ok((reader, None)),
        };
        reader.min_restart = p.restart;
        let found = listing.files.into_iter().find(|f| f.id == p.file);
        if let Some(f) = found
            && let Some(file) = reader.resume_in(&f.path, &p)?
        {
            reader.cur = Some(Open {
                file,
                id: f.id,
                name: f.name,
                path: f.path,
            });
            reader.buf_at = p.offset;
            reader.joiner = Joiner::new(&p, opts.max_line_bytes, opts.since);
            return Ok((reader, None));
        }
        let missing = if listing.compressed {
            Missing::Compressed
        } else {
            Missing::Deleted
        };
        Ok((reader, Some(missing)))
    }

    /// The file at `path` opened at `p.offset`, if it is the file `p` was taken in.
    fn resume_in(&self, path: &Path, p: &FilePosition) -> Result<Option<File>, CriError> {
        let err = |source| CriError::File {
            path: path.to_path_buf(),
            source,
        };
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e)),
        };
        let len = file.metadata().map_err(err)?.len();
        if len < p.offset {
            return Ok(None);
        }
        if p.fingerprint != 0 {
            let mut head = Vec::with_capacity(64);
            (&mut file).take(64).read_to_end(&mut head).map_err(err)?;
            if fingerprint(&head) != p.fingerprint {
                return Ok(None);
            }
        }
        file.seek(SeekFrom::Start(p.offset)).map_err(err)?;
        Ok(Some(file))
    }

    /// The position after everything handed out.
    pub fn position(&self) -> FilePosition {
        self.joiner.position()
    }

    /// The directory changed (a file created, renamed or removed): list it again when
    /// the current file is read to its end.
    pub fn dir_changed(&mut self) {
        self.rescan = true;
    }

    /// When reading should be tried again without an event: the end of a rotation's
    /// grace (see [`ReadOptions::rotate_grace`]).
    pub fn retry_at(&self) -> Option<Instant> {
        self.switch_at
    }

    /// Bytes held: the read buffer and lines in progress.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.capacity() + self.joiner.pending_bytes()
    }

    /// Reads what is there, about `limit` records at most. A rotated file is read to its
    /// end before the next one; reading moves on to the next file once the runtime
    /// writes there (or at once with `drain`, for a container that exited). An empty
    /// batch: nothing more for now.
    ///
    /// An error after some records were read returns those records; the error comes
    /// again at the next read if its cause stays.
    pub fn read(&mut self, limit: usize, drain: bool) -> Result<Batch, CriError> {
        let mut batch = Batch::default();
        match self.read_into(&mut batch, limit, drain) {
            Err(e) if batch.is_empty() => Err(e),
            _ => Ok(batch),
        }
    }

    fn read_into(&mut self, batch: &mut Batch, limit: usize, drain: bool) -> Result<(), CriError> {
        if drain {
            self.rescan = true;
        }
        while batch.records.len() < limit {
            if self.cur.is_none() {
                if !self.rescan {
                    break;
                }
                self.rescan = false;
                let Some(first) = self.first_file()? else {
                    break;
                };
                self.begin_file(first, batch);
                continue;
            }
            self.consume(batch);
            if batch.records.len() >= limit || self.fill()? > 0 {
                continue;
            }
            // The runtime writes to a later file: the current one is complete. (Not
            // necessarily the next: two quick rotations leave an empty file between.)
            let next_written = |n: &Open| n.file.metadata().map(|m| m.len() > 0).unwrap_or(true);
            if self.rescan || self.next.as_ref().is_some_and(|n| !next_written(n)) {
                self.rescan = false;
                (self.next, self.later_written) = self.find_next()?;
            }
            let Some(next) = &self.next else {
                break;
            };
            if !(drain || self.later_written || next_written(next)) {
                break;
            }
            let switch_at = *self
                .switch_at
                .get_or_insert_with(|| Instant::now() + self.rotate_grace);
            if !drain && Instant::now() < switch_at {
                break;
            }
            if !self.final_pass {
                self.final_pass = true;
                continue;
            }
            let next = self.next.take().expect("checked above");
            self.begin_file(next, batch);
        }
        Ok(())
    }

    /// The log has ended for good: hand out lines that never got their end.
    pub fn flush(&mut self) -> Vec<CriRecord> {
        let mut out = Vec::new();
        self.joiner.flush(&mut out);
        out
    }

    /// Moves on to `file` from its start.
    fn begin_file(&mut self, file: Open, batch: &mut Batch) {
        if !self.buf.is_empty() || self.long != Long::None {
            // The previous file ended in the middle of a line: a torn write.
            batch.malformed += 1;
        }
        self.joiner.next_file(file.id, file.name.restart(), 0);
        self.buf.clear();
        self.buf_at = 0;
        self.long = Long::None;
        self.final_pass = false;
        self.switch_at = None;
        self.later_written = false;
        self.cur = Some(file);
        // What comes after it is looked for when it is read to its end.
        self.rescan = true;
    }

    /// Reads a chunk of the current file into the buffer; 0 at its end.
    fn fill(&mut self) -> Result<usize, CriError> {
        let Some(cur) = self.cur.as_mut() else {
            return Ok(0);
        };
        let len = self.buf.len();
        self.buf.resize(len + CHUNK, 0);
        let n = loop {
            match cur.file.read(&mut self.buf[len..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    self.buf.truncate(len);
                    return Err(CriError::File {
                        path: cur.path.clone(),
                        source,
                    });
                }
            }
        };
        self.buf.truncate(len + n);
        Ok(n)
    }

    /// Hands the complete lines of the buffer to the joiner.
    fn consume(&mut self, batch: &mut Batch) {
        let mut at = 0;
        while at < self.buf.len() {
            let rest = &self.buf[at..];
            let start = self.buf_at + at as u64;
            let newline = rest.iter().position(|&b| b == b'\n');
            if start == 0 && (newline.is_some() || rest.len() >= 64) {
                self.joiner.set_fingerprint(fingerprint(rest));
            }
            if self.long != Long::None {
                let body = &rest[..newline.unwrap_or(rest.len())];
                if self.long == Long::Entry {
                    self.joiner.data(body);
                }
                at += body.len();
                if let Some(i) = newline {
                    let end = start + i as u64 + 1;
                    match self.long {
                        Long::Entry => self.joiner.finish(end, &mut batch.records),
                        _ => self.joiner.skip_line(end),
                    }
                    self.long = Long::None;
                    at += 1;
                }
                continue;
            }
            let Some(i) = newline else {
                if rest.len() >= LINE_BUFFER_MAX {
                    match parse_header(&rest[..HEADER_MAX]) {
                        Ok((header, message_at)) => {
                            self.joiner.begin(header, start);
                            self.joiner.data(&rest[message_at..]);
                            self.long = Long::Entry;
                        }
                        Err(_) => {
                            batch.malformed += 1;
                            self.long = Long::Malformed;
                        }
                    }
                    at = self.buf.len();
                }
                break;
            };
            let end = start + i as u64 + 1;
            let line = &rest[..i];
            match parse_header(line) {
                Ok((header, message_at)) => {
                    self.joiner.begin(header, start);
                    self.joiner.data(&line[message_at..]);
                    self.joiner.finish(end, &mut batch.records);
                }
                Err(_) => {
                    batch.malformed += 1;
                    self.joiner.skip_line(end);
                }
            }
            at += i + 1;
        }
        self.buf.drain(..at);
        self.buf_at += at as u64;
    }

    /// The oldest readable file.
    fn first_file(&self) -> Result<Option<Open>, CriError> {
        let listing = self.list_if_there()?;
        for f in listing.files {
            if f.name.restart() >= self.min_restart
                && let Some(open) = self.open_file(f.name, f.path)?
            {
                return Ok(Some(open));
            }
        }
        Ok(None)
    }

    /// The file to read after the current one: the oldest that sorts after it (by the
    /// name it has now) and is not it. A file that took over the current file's name
    /// (the runtime reopened it after the kubelet renamed it) counts as after it.
    /// Also says whether any file after it holds data.
    fn find_next(&self) -> Result<(Option<Open>, bool), CriError> {
        let Some(cur) = &self.cur else {
            return Ok((None, false));
        };
        let listing = self.list_if_there()?;
        let cur_name = listing
            .files
            .iter()
            .find(|f| f.id == cur.id)
            .map(|f| f.name.clone())
            .unwrap_or_else(|| cur.name.clone());
        let mut next = None;
        let mut later_written = false;
        for f in listing.files {
            if f.id == cur.id || f.name.order(&cur_name).is_lt() {
                continue;
            }
            later_written |= f.len > 0;
            if next.is_none() {
                next = self.open_file(f.name, f.path)?;
            }
        }
        Ok((next, later_written))
    }

    fn open_file(&self, name: LogFileName, path: PathBuf) -> Result<Option<Open>, CriError> {
        let err = |source| CriError::File {
            path: path.clone(),
            source,
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e)),
        };
        let id = FileId::of(&file.metadata().map_err(err)?);
        Ok(Some(Open {
            file,
            id,
            name,
            path,
        }))
    }

    /// Like [`list`](Self::list), but a directory that is gone (the kubelet removed a
    /// deleted pod's logs) holds no more files: the open one is still read to its end.
    fn list_if_there(&self) -> Result<Listing, CriError> {
        match self.list() {
            Err(CriError::Dir { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(Listing::default())
            }
            other => other,
        }
    }

    /// The readable files, oldest first, and whether compressed ones are there.
    fn list(&self) -> Result<Listing, CriError> {
        let err = |source| CriError::Dir {
            dir: self.dir.clone(),
            source,
        };
        let mut listing = Listing::default();
        for entry in std::fs::read_dir(&self.dir).map_err(err)? {
            let entry = entry.map_err(err)?;
            let Some(name) = entry.file_name().to_str().and_then(LogFileName::parse) else {
                continue;
            };
            if let LogFileName::Compressed { .. } = name {
                listing.compressed = true;
                continue;
            }
            // Gone between listing and stat: skip it.
            let Ok(meta) = std::fs::metadata(entry.path()) else {
                continue;
            };
            if meta.is_file() {
                listing.files.push(Listed {
                    name,
                    path: entry.path(),
                    id: FileId::of(&meta),
                    len: meta.len(),
                });
            }
        }
        listing.files.sort_by(|a, b| a.name.order(&b.name));
        Ok(listing)
    }
}

struct Listed {
    name: LogFileName,
    path: PathBuf,
    id: FileId,
    len: u64,
}

#[derive(Default)]
struct Listing {
    files: Vec<Listed>,
    compressed: bool,
}

#[cfg(test)]
#[path = "reader_tests.rs"]
mod tests;
