//! A RELP client session (rsyslog's Reliable Event Logging Protocol, as imrelp speaks
//! it): open with offers, `syslog` frames answered one by one with `rsp`, at most a
//! window of them unanswered.
//!
//! A send is accepted up to the last message the receiver answered `200`: that is what
//! the sink reports to the worker, so the checkpoint never passes an unacknowledged
//! message. Anything else (an `rsp 500`, a `serverclose`, the connection ending, no
//! answer within the acknowledgement timeout, bytes that are not RELP) ends the session;
//! the messages not yet acknowledged are sent again, on a new session, by the worker's
//! retry. RELP has no deduplication, so a message the receiver took but could not
//! acknowledge before it died arrives twice: delivery is at least once from the last
//! acknowledged message.

pub mod frame;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures::FutureExt;
use prometheus::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::SyslogError;
use super::transport::Io;

/// Bytes read from the receiver at a time.
const READ_CHUNK: usize = 16 * 1024;

/// An open session.
pub struct Session {
    io: Box<dyn Io>,
    /// `host:port`, for messages.
    addr: String,
    /// Number of the next frame written.
    next_txnr: u32,
    /// Bytes read and not yet parsed start at `rpos`.
    rbuf: Vec<u8>,
    rpos: usize,
}

/// A failed exchange: the first `acked` messages were acknowledged, the first `written`
/// were (perhaps only partly) handed to the connection.
#[derive(Debug)]
pub struct Failure {
    pub acked: usize,
    pub written: usize,
    pub error: SyslogError,
}

impl Failure {
    /// The session ended on the receiver's side (closed, reset, `serverclose`) rather
    /// than by a refusal, a stall or a protocol error.
    pub fn ended(&self) -> bool {
        matches!(
            self.error,
            SyslogError::RelpEnded { .. } | SyslogError::RelpServerClose { .. }
        )
    }
}

/// What one answer from the receiver says.
enum Event {
    Ack,
    Refused { code: u16, text: String },
    ServerClose,
    Unexpected(String),
}

impl Session {
    /// Open a session on a connected stream: send `open` with our offers and check the
    /// receiver's answer (a `200` that offers the `syslog` command).
    pub async fn open(
        io: Box<dyn Io>,
        addr: &str,
        ack_timeout: Duration,
    ) -> Result<Session, SyslogError> {
        let mut s = Session {
            io,
            addr: addr.to_string(),
            next_txnr: 1,
            rbuf: Vec::with_capacity(READ_CHUNK),
            rpos: 0,
        };
        let mut out = Vec::new();
        frame::push_frame(&mut out, 1, "open", frame::open_offers().as_bytes());
        s.next_txnr = 2;
        s.write(&out).await.map_err(|source| SyslogError::Write {
            addr: s.addr.clone(),
            source,
        })?;
        let answer = tokio::time::timeout(ack_timeout, s.read_open_answer())
            .await
            .unwrap_or_else(|_| {
                Err(SyslogError::RelpStall {
                    addr: s.addr.clone(),
                    in_flight: 1,
                    timeout: ack_timeout,
                })
            })?;
        let (code, text, commands) = answer;
        if code != 200 {
            return Err(SyslogError::RelpRefused {
                addr: s.addr.clone(),
                code,
                text,
            });
        }
        let offers_syslog = commands
            .as_deref()
            .is_some_and(|c| c.split(',').any(|c| c.trim() == "syslog"));
        if !offers_syslog {
            return Err(SyslogError::RelpOffer {
                addr: s.addr.clone(),
                offered: commands.unwrap_or_else(|| "no commands".into()),
            });
        }
        Ok(s)
    }

    /// The answer to `open`: code, text and the `commands` offer.
    async fn read_open_answer(&mut self) -> Result<(u16, String, Option<String>), SyslogError> {
        loop {
            let parsed = frame::parse(&self.rbuf[self.rpos..]).map_err(|e| self.protocol(e))?;
            if let Some((f, used)) = parsed {
                if f.command != "rsp" || f.txnr != 1 {
                    let what = format!(
                        "answered `open` with `{} {}` instead of `1 rsp`",
                        f.txnr, f.command
                    );
                    return Err(self.protocol(what));
                }
                let a = frame::answer(f.data).map_err(|e| self.protocol(e))?;
                let out = (
                    a.code,
                    a.text.to_string(),
                    a.offer("commands").map(str::to_string),
                );
                self.rpos += used;
                return Ok(out);
            }
            if self.fill().await.map_err(|source| self.ended(0, source))? == 0 {
                return Err(self.ended(0, eof()));
            }
        }
    }

    /// The transaction number the next frame must carry.
    pub fn next_txnr(&self) -> u32 {
        self.next_txnr
    }

    /// False when the receiver has closed the session while it was idle (as far as can
    /// be seen without waiting): a `serverclose`, or the connection's end.
    pub fn looks_open(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match self.io.read(&mut chunk).now_or_never() {
                None => break,
                Some(Ok(0)) | Some(Err(_)) => return false,
                Some(Ok(n)) => self.rbuf.extend_from_slice(&chunk[..n]),
            }
        }
        // Whatever arrived unasked can only be a `serverclose` (or garbage).
        self.rbuf.len() == self.rpos
    }

    /// Send the `syslog` frames in `buf` (frame `i` ends at `ends[i]`, numbered from
    /// [`Session::next_txnr`] on) with at most `window` unanswered, and wait until every
    /// one is acknowledged. `rtt` observes each acknowledgement's round trip. When
    /// `shutdown` is cancelled, waiting for answers stops at once: what was acknowledged
    /// so far is reported, the rest is read again by the next agent.
    pub async fn exchange(
        &mut self,
        buf: &[u8],
        ends: &[usize],
        window: usize,
        ack_timeout: Duration,
        rtt: &Histogram,
        shutdown: &CancellationToken,
    ) -> Result<(), Failure> {
        let n = ends.len();
        let window = window.max(1);
        let start = |i: usize| if i == 0 { 0 } else { ends[i - 1] };
        let mut written = 0;
        let mut acked = 0;
        let mut expected = self.next_txnr;
        // Writes in flight: (frames up to, written at).
        let mut writes: VecDeque<(usize, Instant)> = VecDeque::new();
        let fail = |acked, written, error| Failure {
            acked,
            written,
            error,
        };
        while acked < n {
            let room = window - (written - acked);
            // Refill the window in sizeable writes rather than one frame per answer.
            if written < n && (room >= (window / 4).max(1) || written + room >= n) {
                let upto = (acked + window).min(n);
                if let Err(source) = self.write(&buf[start(written)..ends[upto - 1]]).await {
                    return Err(fail(acked, upto, self.ended(upto - acked, source)));
                }
                writes.push_back((upto, Instant::now()));
                written = upto;
            }
            let read = tokio::select! {
                read = tokio::time::timeout(ack_timeout, self.fill()) => read,
                () = shutdown.cancelled() => {
                    let error = SyslogError::ShuttingDown { addr: self.addr.clone() };
                    return Err(fail(acked, written, error));
                }
            };
            match read {
                Err(_) => {
                    let error = SyslogError::RelpStall {
                        addr: self.addr.clone(),
                        in_flight: written - acked,
                        timeout: ack_timeout,
                    };
                    return Err(fail(acked, written, error));
                }
                Ok(Err(source)) => {
                    return Err(fail(acked, written, self.ended(written - acked, source)));
                }
                Ok(Ok(0)) => {
                    return Err(fail(acked, written, self.ended(written - acked, eof())));
                }
                Ok(Ok(_)) => {}
            }
            loop {
                let event = match frame::parse(&self.rbuf[self.rpos..]) {
                    Ok(None) => break,
                    Err(e) => return Err(fail(acked, written, self.protocol(e))),
                    Ok(Some((f, used))) => {
                        let event = match f.command {
                            "rsp" if f.txnr == expected => match frame::answer(f.data) {
                                Ok(a) if a.ok() => Event::Ack,
                                Ok(a) => Event::Refused {
                                    code: a.code,
                                    text: a.text.to_string(),
                                },
                                Err(e) => Event::Unexpected(e.to_string()),
                            },
                            "rsp" if acked < written => Event::Unexpected(format!(
                                "answered transaction {} while {expected} was the oldest unanswered",
                                f.txnr
                            )),
                            "serverclose" => Event::ServerClose,
                            _ => Event::Unexpected(format!(
                                "sent `{} {}` unasked",
                                f.txnr, f.command
                            )),
                        };
                        self.rpos += used;
                        event
                    }
                };
                match event {
                    Event::Ack => {
                        acked += 1;
                        expected = frame::next_txnr(expected);
                        while writes.front().is_some_and(|&(upto, _)| upto < acked) {
                            writes.pop_front();
                        }
                        if let Some(&(_, at)) = writes.front() {
                            rtt.observe(at.elapsed().as_secs_f64());
                        }
                    }
                    Event::Refused { code, text } => {
                        let error = SyslogError::RelpRejected {
                            addr: self.addr.clone(),
                            code,
                            text,
                            unacked: written - acked,
                        };
                        return Err(fail(acked, written, error));
                    }
                    Event::ServerClose => {
                        let error = SyslogError::RelpServerClose {
                            addr: self.addr.clone(),
                            unacked: written - acked,
                        };
                        return Err(fail(acked, written, error));
                    }
                    Event::Unexpected(what) => {
                        return Err(fail(acked, written, self.protocol(what)));
                    }
                }
            }
            if self.rpos == self.rbuf.len() {
                self.rbuf.clear();
                self.rpos = 0;
            }
        }
        self.next_txnr = expected;
        Ok(())
    }

    /// Write and flush (for TLS, so that the bytes leave rustls's buffer).
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Read more of the receiver's answers into `rbuf`; 0 at the connection's end.
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.rpos > 0 && self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        }
        let len = self.rbuf.len();
        self.rbuf.resize(len + READ_CHUNK, 0);
        let read = self.io.read(&mut self.rbuf[len..]).await;
        self.rbuf.truncate(len + *read.as_ref().unwrap_or(&0));
        self.io.ack_now();
        read
    }

    fn ended(&self, unacked: usize, source: std::io::Error) -> SyslogError {
        SyslogError::RelpEnded {
            addr: self.addr.clone(),
            unacked,
            source,
        }
    }

    fn protocol(&self, detail: impl std::fmt::Display) -> SyslogError {
        SyslogError::RelpProtocol {
            addr: self.addr.clone(),
            detail: detail.to_string(),
        }
    }
}

fn eof() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the receiver closed the connection",
    )
}

#[cfg(test)]
mod tests {
    //! The session against a scripted peer, for answers a real rsyslog gives only under
    //! conditions a test cannot arrange (a full queue's `rsp 500`); the ordinary path is
    //! tested against rsyslog's imrelp in tests/relp_sink.rs.

    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream};

    impl Io for DuplexStream {}

    fn rtt() -> Histogram {
        Histogram::with_opts(prometheus::HistogramOpts::new("rtt", "rtt")).expect("histogram")
    }

    /// A client session on one end of a pipe, the peer's end after it answered `open`.
    async fn session(
        offers: &'static str,
    ) -> Result<(Session, BufReader<DuplexStream>), SyslogError> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let peer = tokio::spawn(async move {
            let mut server = BufReader::new(server);
            let mut line = String::new();
            // `1 open LEN relp_version=0` `relp_software=...` `commands=syslog`
            for _ in 0..3 {
                server.read_line(&mut line).await.expect("open");
            }
            assert!(line.starts_with("1 open "), "{line}");
            let data = format!("200 OK\n{offers}");
            let answer = format!("1 rsp {} {data}\n", data.len());
            server
                .get_mut()
                .write_all(answer.as_bytes())
                .await
                .expect("answer");
            server
        });
        let s = Session::open(Box::new(client), "peer:2514", Duration::from_secs(5)).await;
        let server = peer.await.expect("peer");
        s.map(|s| (s, server))
    }

    fn frames(n: u32, first: u32) -> (Vec<u8>, Vec<usize>) {
        let (mut buf, mut ends) = (Vec::new(), Vec::new());
        for i in 0..n {
            frame::push_frame(&mut buf, first + i, "syslog", format!("msg {i}").as_bytes());
            ends.push(buf.len());
        }
        (buf, ends)
    }

    /// Read `n` frames and answer them with `answers` (whole frames, in order).
    async fn answer(server: &mut BufReader<DuplexStream>, n: usize, answers: &str) {
        let mut line = String::new();
        for _ in 0..n {
            line.clear();
            server.read_line(&mut line).await.expect("frame");
        }
        server
            .get_mut()
            .write_all(answers.as_bytes())
            .await
            .expect("answers");
    }

    #[tokio::test]
    async fn a_refusal_accepts_what_was_acknowledged_before_it() {
        let (mut s, mut server) = session("relp_version=0\ncommands=syslog")
            .await
            .expect("open");
        assert_eq!(s.next_txnr(), 2);
        let (buf, ends) = frames(3, 2);
        let peer = tokio::spawn(async move {
            answer(&mut server, 3, "2 rsp 6 200 OK\n3 rsp 14 500 queue full\n").await;
            server
        });
        let f = s
            .exchange(
                &buf,
                &ends,
                8,
                Duration::from_secs(5),
                &rtt(),
                &CancellationToken::new(),
            )
            .await
            .expect_err("refused");
        assert_eq!((f.acked, f.written), (1, 3));
        assert!(!f.ended());
        assert_eq!(f.error.reason(), "relp_rejected");
        let text = f.error.to_string();
        assert!(
            text.contains("rsp 500 queue full") && text.contains("2 unacknowledged"),
            "{text}"
        );
        drop(peer);
    }

    #[tokio::test]
    async fn serverclose_and_silence_end_the_session() {
        let (mut s, mut server) = session("commands=syslog").await.expect("open");
        let (buf, ends) = frames(2, 2);
        let peer = tokio::spawn(async move {
            answer(&mut server, 2, "2 rsp 6 200 OK\n0 serverclose 0\n").await;
            server
        });
        let f = s
            .exchange(
                &buf,
                &ends,
                8,
                Duration::from_secs(5),
                &rtt(),
                &CancellationToken::new(),
            )
            .await
            .expect_err("closed");
        assert_eq!((f.acked, f.written), (1, 2));
        assert!(
            f.ended(),
            "a serverclose may be retried at once on an idle session"
        );
        assert_eq!(f.error.reason(), "relp_serverclose");
        drop(peer);

        // A peer that takes the frames and never answers: a window stall.
        let (mut s, server) = session("commands=syslog").await.expect("open");
        let (buf, ends) = frames(4, 2);
        let f = s
            .exchange(
                &buf,
                &ends,
                2,
                Duration::from_millis(200),
                &rtt(),
                &CancellationToken::new(),
            )
            .await
            .expect_err("stalled");
        assert_eq!(
            (f.acked, f.written),
            (0, 2),
            "no more than the window goes out"
        );
        assert_eq!(f.error.reason(), "relp_stall");
        assert!(
            f.error.to_string().contains("none of 2 messages"),
            "{}",
            f.error
        );
        drop(server);
    }

    #[tokio::test]
    async fn the_window_is_refilled_as_answers_arrive() {
        let (mut s, mut server) = session("commands=syslog").await.expect("open");
        let (buf, ends) = frames(10, 2);
        let peer = tokio::spawn(async move {
            // Answer one at a time: the client never has more than 4 unanswered.
            let mut line = String::new();
            let mut answered = 0u32;
            let mut read = 0u32;
            while answered < 10 {
                line.clear();
                server.read_line(&mut line).await.expect("frame");
                read += 1;
                assert!(
                    read - answered <= 4,
                    "{read} read, {answered} answered: window exceeded"
                );
                if read - answered == 4 || read == 10 {
                    while answered < read {
                        let a = format!("{} rsp 6 200 OK\n", answered + 2);
                        server
                            .get_mut()
                            .write_all(a.as_bytes())
                            .await
                            .expect("answer");
                        answered += 1;
                    }
                }
            }
            server
        });
        let h = rtt();
        s.exchange(
            &buf,
            &ends,
            4,
            Duration::from_secs(5),
            &h,
            &CancellationToken::new(),
        )
        .await
        .expect("all acknowledged");
        assert_eq!(s.next_txnr(), 12);
        assert_eq!(h.get_sample_count(), 10);
        drop(peer.await.expect("peer"));
    }

    #[tokio::test]
    async fn a_receiver_without_the_syslog_command_is_refused() {
        let err = session("relp_version=0\ncommands=foo")
            .await
            .err()
            .expect("refused");
        assert_eq!(err.reason(), "relp_refused");
        let text = err.to_string();
        assert!(
            text.contains("(offered: foo)") && text.contains("imrelp listener"),
            "{text}"
        );
    }
}
