//! One line of a CRI log file, without I/O.
//!
//! The kubelet's format, written by containerd and CRI-O:
//! `<RFC 3339 nano timestamp> <stdout|stderr> <tag>[:<more tags>] <message>\n`, where the
//! first tag is `P` for a partial entry (the runtime cut a long line, 16 KiB by default;
//! more entries of the same stream follow) or `F` for the entry that ends a line. Fields
//! are separated by one space; the message is raw bytes (not necessarily UTF-8) and runs
//! to the newline, which is not part of it. The kubelet's own reader (`parseCRILog`)
//! treats any tag other than `P` as a full line; so does this parser, and a line whose
//! third field is not a tag at all (`P`, `F`, or either with `:` tags) is taken as a full
//! line whose message starts there, so that nothing written is lost to a missing tag.

use crate::agent::docker::parse_timestamp;
use crate::api::StreamName;
use crate::record::Timestamp;

/// One entry of a CRI log file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub timestamp: Timestamp,
    pub stream: StreamName,
    /// A `P` entry: the line goes on in the next entry of the same stream.
    pub partial: bool,
    /// The bytes after the tag (and its space), up to the newline.
    pub message: &'a [u8],
}

/// Why a line is not a CRI log entry. Such a line is skipped and counted: it can only
/// come from something other than the runtime writing the file, or a write torn by a
/// crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("no space after the timestamp")]
    NoTimestamp,
    #[error("the timestamp is not RFC 3339")]
    BadTimestamp,
    #[error("the stream is neither stdout nor stderr")]
    BadStream,
}

/// The first bytes of a line that hold its timestamp, stream and tag: a line longer than
/// this without a space in the expected places is not CRI.
pub const HEADER_MAX: usize = 64;

/// Parses one line (without its `\n`).
pub fn parse_entry(line: &[u8]) -> Result<Entry<'_>, ParseError> {
    let (header, at) = parse_header(line)?;
    Ok(Entry {
        timestamp: header.timestamp,
        stream: header.stream,
        partial: header.partial,
        message: &line[at..],
    })
}

/// Timestamp, stream and tag of an entry, parsed from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub timestamp: Timestamp,
    pub stream: StreamName,
    pub partial: bool,
}

/// Parses the header at the start of `line` (a whole line, or the start of one that is
/// still being read, at least [`HEADER_MAX`] bytes or up to its newline); returns it and
/// where the message starts.
pub fn parse_header(line: &[u8]) -> Result<(Header, usize), ParseError> {
    let ts_end = find_space(line, 0).ok_or(ParseError::NoTimestamp)?;
    let timestamp = parse_timestamp(&line[..ts_end]).ok_or(ParseError::BadTimestamp)?;
    let stream_at = ts_end + 1;
    let stream_end = find_space(line, stream_at).unwrap_or(line.len());
    let stream = match &line[stream_at..stream_end] {
        b"stdout" => StreamName::Stdout,
        b"stderr" => StreamName::Stderr,
        _ => return Err(ParseError::BadStream),
    };
    let header = |partial| Header {
        timestamp,
        stream,
        partial,
    };
    if stream_end == line.len() {
        // `<ts> <stream>` and nothing more: an empty line without a tag.
        return Ok((header(false), line.len()));
    }
    let tag_at = stream_end + 1;
    let tag_end = match find_space(line, tag_at) {
        Some(end) => end,
        None if line.len() <= HEADER_MAX => line.len(),
        // A third field longer than any tag: no tag.
        None => return Ok((header(false), tag_at)),
    };
    let tag = &line[tag_at..tag_end];
    let first = tag.split(|&b| b == b':').next().unwrap_or_default();
    let message_at = (tag_end + 1).min(line.len());
    match first {
        b"P" => Ok((header(true), message_at)),
        b"F" => Ok((header(false), message_at)),
        // No tag: the message starts right after the stream.
        _ => Ok((header(false), tag_at)),
    }
}

/// The first space at or after `from`, within the header.
fn find_space(line: &[u8], from: usize) -> Option<usize> {
    let end = line.len().min(HEADER_MAX);
    if from >= end {
        return None;
    }
    line[from..end]
        .iter()
        .position(|&b| b == b' ')
        .map(|i| from + i)
}
