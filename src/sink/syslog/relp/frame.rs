//! RELP frames, pure: what the client writes and how the receiver's answers are read.
//!
//! A frame is `TXNR SP COMMAND SP DATALEN [SP DATA] LF`: a transaction number
//! (1..=999999999, then 1 again), a command (`open`, `syslog`, `close` from the client;
//! `rsp` and `serverclose` from the receiver), the length of DATA in bytes (no DATA and
//! no space before it when 0) and a line feed. An `rsp` answers the client's frame of
//! the same transaction number; its DATA is a three-digit code (`200` success, `500`
//! failure), a space, a human-readable text, and for `open` the receiver's offers on the
//! following lines (`relp_version=0`, `commands=syslog`, ...). `serverclose` (number 0)
//! says the receiver is closing: whatever it has not answered was not taken.

/// Largest transaction number; the next one is 1.
pub const MAX_TXNR: u32 = 999_999_999;
/// Largest DATA accepted in a frame from the receiver: answers are short, so anything
/// much longer is not RELP.
const MAX_ANSWER_DATA: usize = 64 * 1024;
/// Digits of TXNR and DATALEN, at most.
const MAX_DIGITS: usize = 9;
/// Longest command name read.
const MAX_COMMAND: usize = 32;

/// What logroute offers when it opens a session.
pub fn open_offers() -> String {
    format!(
        "relp_version=0\nrelp_software=logroute,{},https://logroute.dev\ncommands=syslog",
        env!("CARGO_PKG_VERSION")
    )
}

/// The transaction number after `txnr`.
pub fn next_txnr(txnr: u32) -> u32 {
    if txnr >= MAX_TXNR { 1 } else { txnr + 1 }
}

/// Append a whole frame.
pub fn push_frame(out: &mut Vec<u8>, txnr: u32, command: &str, data: &[u8]) {
    push_head(out, txnr, command);
    push_decimal(out, data.len());
    if !data.is_empty() {
        out.push(b' ');
        out.extend_from_slice(data);
    }
    out.push(b'\n');
}

/// Append `TXNR SP COMMAND SP`: the caller appends `DATALEN SP DATA` (an octet-counted
/// syslog message is exactly that) and then [`push_trailer`].
pub fn push_head(out: &mut Vec<u8>, txnr: u32, command: &str) {
    push_decimal(out, txnr as usize);
    out.push(b' ');
    out.extend_from_slice(command.as_bytes());
    out.push(b' ');
}

pub fn push_trailer(out: &mut Vec<u8>) {
    out.push(b'\n');
}

fn push_decimal(out: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
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

/// A frame read from the receiver.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub txnr: u32,
    pub command: &'a str,
    pub data: &'a [u8],
}

/// An `rsp` frame's DATA, split.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer<'a> {
    /// `200` success, `500` failure; other codes are failures too.
    pub code: u16,
    /// The text after the code, up to the end of its line.
    pub text: &'a str,
    /// The lines after the first (an `open` answer's offers).
    pub offers: &'a str,
}

impl Answer<'_> {
    pub fn ok(&self) -> bool {
        self.code == 200
    }

    /// The value of offer `name` (`commands`, `relp_version`...), if offered.
    pub fn offer(&self, name: &str) -> Option<&str> {
        self.offers.lines().find_map(|line| {
            let (key, value) = line.split_once('=').unwrap_or((line, ""));
            (key.trim() == name).then_some(value.trim())
        })
    }
}

/// Why bytes from the receiver are not RELP.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("malformed frame header {0:?}")]
    Header(String),
    #[error("frame data of {0} bytes is longer than an answer can be")]
    TooLong(usize),
    #[error("frame does not end with a line feed")]
    Trailer,
    #[error("rsp data {0:?} does not start with a three-digit code")]
    Code(String),
}

/// The first complete frame of `buf` and how many bytes it took; `None` until a whole
/// frame has arrived.
pub fn parse(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let mut pos = 0;
    let header_error = || {
        let end = buf.len().min(40);
        FrameError::Header(String::from_utf8_lossy(&buf[..end]).into_owned())
    };
    let Some((txnr, n)) = number(&buf[pos..]).map_err(|()| header_error())? else {
        return Ok(None);
    };
    if buf[n - 1] != b' ' {
        return Err(header_error());
    }
    pos += n;
    let rest = &buf[pos..];
    let command_len = match rest.iter().take(MAX_COMMAND + 1).position(|&b| b == b' ') {
        Some(0) => return Err(header_error()),
        Some(len) => len,
        None if rest.len() > MAX_COMMAND => return Err(header_error()),
        None => return Ok(None),
    };
    let command = std::str::from_utf8(&rest[..command_len]).map_err(|_| header_error())?;
    if !command.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(header_error());
    }
    pos += command_len + 1;
    let Some((len, n)) = number(&buf[pos..]).map_err(|()| header_error())? else {
        return Ok(None);
    };
    pos += n - 1; // back onto the byte that ended the number
    let len = len as usize; // nine digits at most
    if len > MAX_ANSWER_DATA {
        return Err(FrameError::TooLong(len));
    }
    let data_start = match buf[pos] {
        b'\n' if len == 0 => return Ok(Some((frame(txnr, command, &[]), pos + 1))),
        b' ' => pos + 1,
        _ => return Err(header_error()),
    };
    let end = data_start + len;
    if buf.len() <= end {
        return Ok(None);
    }
    if buf[end] != b'\n' {
        return Err(FrameError::Trailer);
    }
    Ok(Some((frame(txnr, command, &buf[data_start..end]), end + 1)))
}

fn frame<'a>(txnr: u64, command: &'a str, data: &'a [u8]) -> Frame<'a> {
    Frame {
        // `number` read at most nine digits.
        txnr: txnr as u32,
        command,
        data,
    }
}

/// A decimal number followed by a space (or, for DATALEN, a line feed) and how many
/// bytes it took with that separator; `None` when more bytes are needed.
fn number(buf: &[u8]) -> Result<Option<(u64, usize)>, ()> {
    let digits = buf.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits > MAX_DIGITS {
        return Err(());
    }
    match buf.get(digits) {
        None => Ok(None),
        Some(b' ' | b'\n') if digits > 0 => {
            let mut n = 0u64;
            for &d in &buf[..digits] {
                n = n * 10 + u64::from(d - b'0');
            }
            Ok(Some((n, digits + 1)))
        }
        Some(_) => Err(()),
    }
}

/// Split an `rsp` frame's DATA.
pub fn answer(data: &[u8]) -> Result<Answer<'_>, FrameError> {
    let text = String::from_utf8_lossy(data);
    let bad = || FrameError::Code(text.chars().take(40).collect());
    let s = std::str::from_utf8(data).map_err(|_| bad())?;
    let code = s
        .get(..3)
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let rest = &s[3..];
    if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\n')) {
        return Err(bad());
    }
    let (first, offers) = rest.split_once('\n').unwrap_or((rest, ""));
    Ok(Answer {
        code,
        text: first.trim(),
        offers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_written_as_the_protocol_says() {
        let mut out = Vec::new();
        push_frame(&mut out, 1, "open", b"relp_version=0");
        push_frame(&mut out, 7, "close", b"");
        push_head(&mut out, 2, "syslog");
        out.extend_from_slice(b"5 hello");
        push_trailer(&mut out);
        assert_eq!(
            out,
            b"1 open 14 relp_version=0\n7 close 0\n2 syslog 5 hello\n".as_slice()
        );
        assert!(open_offers().contains("\ncommands=syslog"));
    }

    #[test]
    fn transaction_numbers_wrap_to_one() {
        assert_eq!(next_txnr(1), 2);
        assert_eq!(next_txnr(MAX_TXNR - 1), MAX_TXNR);
        assert_eq!(next_txnr(MAX_TXNR), 1);
    }

    #[test]
    fn answers_are_read_whole_and_only_whole() {
        let wire = b"2 rsp 6 200 OK\n0 serverclose 0\n";
        for cut in 0..14 {
            assert_eq!(parse(&wire[..cut]), Ok(None), "cut at {cut}");
        }
        let (f, n) = parse(wire).unwrap().unwrap();
        assert_eq!(
            f,
            Frame {
                txnr: 2,
                command: "rsp",
                data: b"200 OK"
            }
        );
        assert_eq!(n, 15);
        let (f, m) = parse(&wire[n..]).unwrap().unwrap();
        assert_eq!((f.txnr, f.command, f.data), (0, "serverclose", &b""[..]));
        assert_eq!(n + m, wire.len());
        // Data may hold line feeds; only DATALEN says where it ends.
        let open = b"1 rsp 37 200 OK\nrelp_version=0\ncommands=syslog\n";
        let (f, n) = parse(open).unwrap().unwrap();
        assert_eq!(n, open.len());
        let a = answer(f.data).unwrap();
        assert!(a.ok());
        assert_eq!(a.text, "OK");
        assert_eq!(a.offer("commands"), Some("syslog"));
        assert_eq!(a.offer("relp_version"), Some("0"));
        assert_eq!(a.offer("missing"), None);
    }

    #[test]
    fn what_is_not_relp_is_an_error() {
        assert!(matches!(parse(b"HTTP/1.1 400"), Err(FrameError::Header(_))));
        assert!(matches!(
            parse(b"1234567890 rsp"),
            Err(FrameError::Header(_))
        ));
        assert!(matches!(parse(b"1 rsp 2 OKX"), Err(FrameError::Trailer)));
        assert!(matches!(
            parse(b"1 rsp 9999999 "),
            Err(FrameError::TooLong(_))
        ));
        assert!(matches!(parse(b"1 r$p 0\n"), Err(FrameError::Header(_))));
        assert!(matches!(parse(b"1 rsp x\n"), Err(FrameError::Header(_))));
        assert!(matches!(answer(b"OK"), Err(FrameError::Code(_))));
        assert!(matches!(answer(b"2000"), Err(FrameError::Code(_))));
        let a = answer(b"500 queue full").unwrap();
        assert_eq!((a.code, a.text, a.ok()), (500, "queue full", false));
        assert_eq!(answer(b"200").unwrap().text, "");
    }
}
