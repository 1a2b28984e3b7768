//! Turning records into syslog frames: RFC 5424 or RFC 3164 messages, framed per RFC 6587
//! for stream transports. Pure: no I/O, so every rule here is unit-tested.
//!
//! Decisions a receiver's operator may want to know:
//! - RFC 5424 MSG is UTF-8 **without** a BOM. RFC 5424 lets MSG be any octets when no BOM
//!   is present, and a BOM would end up at the start of every line in the receiver's files.
//! - TIMESTAMP is Docker's record time in UTC with microseconds (RFC 5424 allows at most
//!   six fractional digits). RFC 3164 has no zone or year: its timestamp is UTC as well.
//! - `max_message_bytes` bounds the syslog message itself (header, structured data and
//!   MSG), not the framing around it (the octet count and its space, or the trailing
//!   newline). A UDP datagram is exactly one message, so it never exceeds the limit.
//! - A longer message is cut at a UTF-8 character boundary and ends with
//!   `…[cut N bytes]` (N = bytes of MSG left out), all within the limit. In the
//!   pathological case of a limit too small for the header and structured data, the
//!   structured data is dropped (`-`) before anything else.
//! - Newline framing cannot carry a newline inside a message, so each `\n` of a multiline
//!   record becomes `#012`, the escape rsyslog itself uses for control characters.
//!   Octet-counting framing (the default) and UDP carry multiline records unchanged.

use std::borrow::Cow;
use std::io::Write as _;
use std::sync::Arc;

use chrono::{Datelike, Timelike};

use crate::api::StreamName;
use crate::record::{ContainerInfo, Record};
use crate::route::document::{SyslogConfig, SyslogFormat, SyslogFraming, SyslogTransport};

/// SD-ID of logroute's structured data element: `logroute@` + a private enterprise number.
///
/// 32473 is the PEN that RFC 5612 reserves for documentation and examples, so it cannot
/// clash with a real organisation's SD-IDs. Users with their own PEN may want this to be
/// configurable later.
pub const SD_ID: &str = "logroute@32473";

/// Marker placed at the end of a cut message, followed by `[cut N bytes]`.
const CUT_ELLIPSIS: &str = "…";

/// Replacement for `\n` inside a message under newline framing (rsyslog's own escape).
const NEWLINE_ESCAPE: &str = "#012";

/// RFC 5424 §6 header field limits, in bytes (the fields are printable US-ASCII).
const HOSTNAME_MAX: usize = 255;
const APP_NAME_MAX: usize = 48;
const PROCID_MAX: usize = 128;
const MSGID_MAX: usize = 32;
/// RFC 3164 §4.1.3: the TAG is at most 32 characters.
const TAG_MAX: usize = 32;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// How messages are delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// RFC 6587 §3.4.1: `LEN SP MSG`.
    OctetCounting,
    /// RFC 6587 §3.4.2: `MSG LF`.
    Newline,
    /// UDP: one message per datagram, nothing around it.
    Datagram,
}

impl Framing {
    pub fn of(cfg: &SyslogConfig) -> Self {
        match (cfg.transport, cfg.framing) {
            (SyslogTransport::Udp, _) => Framing::Datagram,
            // A RELP `syslog` frame's `DATALEN SP DATA` is an octet-counted message.
            (SyslogTransport::Relp, _) => Framing::OctetCounting,
            (_, SyslogFraming::OctetCounting) => Framing::OctetCounting,
            (_, SyslogFraming::Newline) => Framing::Newline,
        }
    }
}

/// Encodes records of one sink. Holds a scratch buffer, so reuse one per sink.
#[derive(Debug)]
pub struct Encoder {
    format: SyslogFormat,
    framing: Framing,
    facility: u8,
    severity: Option<u8>,
    max_message_bytes: usize,
    /// HOSTNAME, already sanitized.
    hostname: String,
    /// The node name for structured data (escaped when written).
    node: String,
    scratch: Vec<u8>,
    /// Header parts of the containers seen last (see [`Head`]).
    heads: Vec<Head>,
    /// Where the next new [`Head`] goes once `heads` is full.
    next_head: usize,
    /// The current second, formatted (`2024-05-01T10:00:00` or `May  1 10:00:00`).
    second: Option<(i64, Vec<u8>)>,
}

/// How many containers' header parts an encoder keeps: a sink's batches interleave the
/// containers it reads, and there are few of them at a time.
const HEAD_CACHE: usize = 16;

/// The parts of a header that depend only on the container and the stream, built once
/// rather than for every record. Keyed by the record's `Arc<ContainerInfo>` (kept here,
/// so that its address cannot be reused by another container while it is cached); the
/// pipeline makes a new one when a container's metadata changes.
#[derive(Debug)]
struct Head {
    container: Arc<ContainerInfo>,
    stream: StreamName,
    /// `<PRI>1 ` (RFC 5424) or `<PRI>` (RFC 3164): what comes before the timestamp.
    pri: Vec<u8>,
    /// What follows the timestamp, up to (without) the space before MSG, structured
    /// data included.
    rest: Vec<u8>,
}

impl Encoder {
    /// `facility` (0–23), `severity` (0–7) and `max_message_bytes` are expected to be
    /// validated by the caller; out-of-range values are clamped rather than trusted.
    pub fn new(cfg: &SyslogConfig, node: &str) -> Self {
        let mut hostname = String::new();
        push_header_field(&mut hostname, node, HOSTNAME_MAX);
        Self {
            format: cfg.format,
            framing: Framing::of(cfg),
            facility: cfg.facility.min(23),
            severity: cfg.severity.map(|s| s.min(7)),
            max_message_bytes: cfg.max_message_bytes as usize,
            hostname,
            node: node.to_string(),
            scratch: Vec::new(),
            heads: Vec::new(),
            next_head: 0,
            second: None,
        }
    }

    /// Append the frame for `record` to `out`. Returns true when the message had to be
    /// cut to fit `max_message_bytes`.
    pub fn encode(&mut self, record: &Record, out: &mut Vec<u8>) -> bool {
        if (self.framing != Framing::Newline || !record.message.contains('\n'))
            && self.encode_whole(record, out)
        {
            return false;
        }
        self.encode_with_limits(record, out)
    }

    /// The common case: a message that fits whole, written straight into `out` from the
    /// cached header parts. Writes nothing and returns false when it does not fit.
    fn encode_whole(&mut self, record: &Record, out: &mut Vec<u8>) -> bool {
        self.format_second(record.timestamp.secs);
        let head = self.head(record);
        let head = &self.heads[head];
        let second = self.second.as_ref().map_or(&[][..], |(_, s)| s);
        let fraction = match self.format {
            SyslogFormat::Rfc5424 => ".123456Z".len(),
            SyslogFormat::Rfc3164 => 0,
        };
        let msg = record.message.as_bytes();
        let len = head.pri.len()
            + second.len()
            + fraction
            + head.rest.len()
            + if msg.is_empty() { 0 } else { 1 + msg.len() };
        if len > self.max_message_bytes {
            return false;
        }
        if self.framing == Framing::OctetCounting {
            push_decimal(out, len);
            out.push(b' ');
        }
        out.extend_from_slice(&head.pri);
        out.extend_from_slice(second);
        if fraction > 0 {
            let mut micros = record.timestamp.nanos / 1000 % 1_000_000;
            let mut digits = *b".000000Z";
            for d in digits[1..7].iter_mut().rev() {
                *d = b'0' + (micros % 10) as u8;
                micros /= 10;
            }
            out.extend_from_slice(&digits);
        }
        out.extend_from_slice(&head.rest);
        if !msg.is_empty() {
            out.push(b' ');
            out.extend_from_slice(msg);
        }
        if self.framing == Framing::Newline {
            out.push(b'\n');
        }
        true
    }

    /// Index in `heads` of the header parts for `record`, built on a miss.
    fn head(&mut self, record: &Record) -> usize {
        if let Some(i) = self
            .heads
            .iter()
            .position(|h| h.stream == record.stream && Arc::ptr_eq(&h.container, &record.container))
        {
            return i;
        }
        let mut pri = Vec::new();
        self.write_pri(record.stream, &mut pri);
        let mut rest = Vec::new();
        self.write_rest(record, true, &mut rest);
        let head = Head {
            container: record.container.clone(),
            stream: record.stream,
            pri,
            rest,
        };
        if self.heads.len() < HEAD_CACHE {
            self.heads.push(head);
            self.heads.len() - 1
        } else {
            let i = self.next_head;
            self.next_head = (i + 1) % HEAD_CACHE;
            self.heads[i] = head;
            i
        }
    }

    /// Make `second` hold second `secs`, formatted; records come in time order, so this
    /// formats about once a second.
    fn format_second(&mut self, secs: i64) {
        if self.second.as_ref().is_some_and(|(s, _)| *s == secs) {
            return;
        }
        let ts = crate::record::Timestamp { secs, nanos: 0 }.to_datetime();
        let mut text = Vec::with_capacity(20);
        match self.format {
            SyslogFormat::Rfc5424 => write!(
                text,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                ts.year(),
                ts.month(),
                ts.day(),
                ts.hour(),
                ts.minute(),
                ts.second(),
            ),
            SyslogFormat::Rfc3164 => write!(
                text,
                "{} {:2} {:02}:{:02}:{:02}",
                MONTHS[ts.month0() as usize],
                ts.day(),
                ts.hour(),
                ts.minute(),
                ts.second(),
            ),
        }
        .expect("writing into a Vec cannot fail");
        self.second = Some((secs, text));
    }

    /// Any message: cut to `max_message_bytes` when needed, newlines escaped under
    /// newline framing. Returns true when the message was cut.
    fn encode_with_limits(&mut self, record: &Record, out: &mut Vec<u8>) -> bool {
        let msg: Cow<str> = if self.framing == Framing::Newline && record.message.contains('\n') {
            Cow::Owned(record.message.replace('\n', NEWLINE_ESCAPE))
        } else {
            Cow::Borrowed(&record.message)
        };
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let mut cut = false;
        self.write_header(record, true, &mut scratch);
        if !fits_with_marker(scratch.len(), &msg, self.max_message_bytes) {
            // Only a limit smaller than the header itself gets here: give up the
            // structured data before the message.
            scratch.clear();
            self.write_header(record, false, &mut scratch);
            cut = true;
        }
        cut |= push_message(&mut scratch, &msg, self.max_message_bytes);
        if scratch.len() > self.max_message_bytes {
            // Still too long (a limit below a bare header): the limit wins over syntax.
            let keep = floor_char_boundary_bytes(&scratch, self.max_message_bytes);
            scratch.truncate(keep);
            cut = true;
        }
        match self.framing {
            Framing::OctetCounting => {
                write!(out, "{} ", scratch.len()).expect("writing into a Vec cannot fail");
                out.extend_from_slice(&scratch);
            }
            Framing::Newline => {
                out.extend_from_slice(&scratch);
                out.push(b'\n');
            }
            Framing::Datagram => out.extend_from_slice(&scratch),
        }
        self.scratch = scratch;
        cut
    }

    fn severity(&self, stream: StreamName) -> u8 {
        self.severity.unwrap_or(match stream {
            StreamName::Stderr => 3,
            StreamName::Stdout => 6,
        })
    }

    /// Everything before MSG (without the space that separates MSG).
    fn write_header(&mut self, record: &Record, with_sd: bool, out: &mut Vec<u8>) {
        self.write_pri(record.stream, out);
        self.format_second(record.timestamp.secs);
        if let Some((_, second)) = &self.second {
            out.extend_from_slice(second);
        }
        if self.format == SyslogFormat::Rfc5424 {
            let micros = record.timestamp.to_datetime().nanosecond() / 1000 % 1_000_000;
            write!(out, ".{micros:06}Z").expect("writing into a Vec cannot fail");
        }
        self.write_rest(record, with_sd, out);
    }

    /// `<PRI>1 ` (RFC 5424) or `<PRI>` (RFC 3164).
    fn write_pri(&self, stream: StreamName, out: &mut Vec<u8>) {
        let pri = u16::from(self.facility) * 8 + u16::from(self.severity(stream));
        match self.format {
            SyslogFormat::Rfc5424 => write!(out, "<{pri}>1 "),
            SyslogFormat::Rfc3164 => write!(out, "<{pri}>"),
        }
        .expect("writing into a Vec cannot fail");
    }

    /// The header after the timestamp: ` HOSTNAME APP-NAME PROCID MSGID SD` (RFC 5424)
    /// or ` HOSTNAME TAG[ID]:` (RFC 3164).
    fn write_rest(&self, record: &Record, with_sd: bool, out: &mut Vec<u8>) {
        let c = &record.container;
        let app = c.pod.as_ref().map(|p| p.name.as_str()).unwrap_or(&c.name);
        let mut field = String::new();
        out.push(b' ');
        out.extend_from_slice(self.hostname.as_bytes());
        out.push(b' ');
        match self.format {
            SyslogFormat::Rfc5424 => {
                for (value, max) in [
                    (app, APP_NAME_MAX),
                    (c.short_id(), PROCID_MAX),
                    (record.stream.as_str(), MSGID_MAX),
                ] {
                    field.clear();
                    push_header_field(&mut field, value, max);
                    out.extend_from_slice(field.as_bytes());
                    out.push(b' ');
                }
                if with_sd {
                    self.write_sd(record, out);
                } else {
                    out.push(b'-');
                }
            }
            SyslogFormat::Rfc3164 => {
                push_tag(&mut field, app);
                out.extend_from_slice(field.as_bytes());
                field.clear();
                push_tag(&mut field, c.short_id());
                write!(out, "[{field}]:").expect("writing into a Vec cannot fail");
            }
        }
    }

    fn write_sd(&self, record: &Record, out: &mut Vec<u8>) {
        let c = &record.container;
        out.push(b'[');
        out.extend_from_slice(SD_ID.as_bytes());
        match &c.pod {
            Some(pod) => {
                push_param(out, "namespace", &pod.namespace);
                push_param(out, "pod", &pod.name);
                push_param(out, "container", &pod.container_name);
            }
            None => push_param(out, "container", &c.name),
        }
        push_param(out, "node", &self.node);
        out.push(b']');
    }
}

/// `n` in decimal, without going through `fmt`.
fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// ` name="value"` with the value escaped per RFC 5424 §6.3.3 (`"`, `\` and `]`).
/// Names are fixed here and within the 32-character PARAM-NAME limit.
fn push_param(out: &mut Vec<u8>, name: &str, value: &str) {
    debug_assert!(name.len() <= 32);
    out.push(b' ');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"=\"");
    for b in value.bytes() {
        // A raw newline would end the message under newline framing (found by the
        // syslog_encode fuzz target: a node name with a newline); names never carry one
        // legitimately, so it is written as rsyslog's own escape in every framing.
        if b == b'\n' {
            out.extend_from_slice(NEWLINE_ESCAPE.as_bytes());
            continue;
        }
        if matches!(b, b'"' | b'\\' | b']') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// A header field: printable US-ASCII (33–126) only, at most `max` bytes, `-` when empty.
/// Any other character becomes `_`, so a field never breaks the header's spaces.
fn push_header_field(out: &mut String, value: &str, max: usize) {
    let start = out.len();
    out.extend(
        value
            .chars()
            .map(|ch| if ('!'..='~').contains(&ch) { ch } else { '_' })
            .take(max),
    );
    if out.len() == start {
        out.push('-');
    }
}

/// An RFC 3164 TAG part: like a header field, also without `[`, `]` and `:`, which end the
/// TAG for receivers, and at most 32 characters.
fn push_tag(out: &mut String, value: &str) {
    let start = out.len();
    out.extend(
        value
            .chars()
            .map(|ch| match ch {
                '[' | ']' | ':' => '_',
                ch if ('!'..='~').contains(&ch) => ch,
                _ => '_',
            })
            .take(TAG_MAX),
    );
    if out.len() == start {
        out.push('-');
    }
}

/// Length of `…[cut N bytes]` for a message of `msg_len` bytes (N has at most as many
/// digits as `msg_len`).
fn marker_len(msg_len: usize) -> usize {
    CUT_ELLIPSIS.len() + "[cut  bytes]".len() + msg_len.to_string().len()
}

/// Whether a header of `header_len` leaves room for at least the cut marker of `msg`.
fn fits_with_marker(header_len: usize, msg: &str, max: usize) -> bool {
    if msg.is_empty() {
        return header_len <= max;
    }
    header_len + 1 + msg.len() <= max || header_len + 1 + marker_len(msg.len()) <= max
}

/// Append ` MSG` (nothing for an empty message), cut and marked to keep `out` within
/// `max` bytes when possible. Returns true when the message was cut.
fn push_message(out: &mut Vec<u8>, msg: &str, max: usize) -> bool {
    if msg.is_empty() {
        return false;
    }
    if out.len() + 1 + msg.len() <= max {
        out.push(b' ');
        out.extend_from_slice(msg.as_bytes());
        return false;
    }
    let room = max.saturating_sub(out.len() + 1 + marker_len(msg.len()));
    let keep = floor_char_boundary(msg, room);
    out.push(b' ');
    out.extend_from_slice(&msg.as_bytes()[..keep]);
    write!(out, "{CUT_ELLIPSIS}[cut {} bytes]", msg.len() - keep)
        .expect("writing into a Vec cannot fail");
    true
}

/// The largest `i <= max` that is a char boundary of `s`.
fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// Like [`floor_char_boundary`] on bytes that are UTF-8 (header ASCII + UTF-8 message).
fn floor_char_boundary_bytes(b: &[u8], max: usize) -> usize {
    if max >= b.len() {
        return b.len();
    }
    // A UTF-8 continuation byte is 0b10xx_xxxx; a boundary is any other position.
    (0..=max)
        .rev()
        .find(|&i| i == b.len() || (b[i] & 0xC0) != 0x80)
        .unwrap_or(0)
}

#[cfg(test)]
#[path = "encode_tests.rs"]
mod tests;
