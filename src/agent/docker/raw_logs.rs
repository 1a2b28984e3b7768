//! Docker's logs endpoint read straight off the unix socket, for the reader's hot path.
//!
//! Through bollard (hyper), dockerd's answer arrives as HTTP/1.1 chunks, one per log
//! frame, each passed from hyper's connection task to the reading task through a
//! one-slot channel: two task wake-ups per line, often across threads, which cost more
//! than everything else the agent does with a line (see BENCHMARKS.md). Asked with
//! HTTP/1.0, dockerd sends the multiplexed stream unchunked until it closes the
//! connection, so one task can read it in large pieces and cut frames out of its buffer.
//!
//! A TTY container's log is not multiplexed: it is handed over as `LogOutput::Console`
//! pieces of whatever size the socket gave, for the line assembler's TTY decoder to cut
//! into entries. (Through bollard, on a unix socket, such a stream comes one `\n` at a
//! time, so a line that never ends is held whole; here nothing is held.) TCP endpoints
//! go through bollard. Items are bollard's, so the caller cannot tell the two apart:
//! `LogOutput` frames (sharing one buffer, no copy), errors as bollard reports them
//! (`DockerResponseServerError` with dockerd's status and message, `IOError`,
//! `RequestTimeoutError`).

use std::path::PathBuf;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::errors::Error;
use bytes::{Buf, BytesMut};
use futures::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Connect and response header, as bollard's request timeout.
const HEADER_TIMEOUT: Duration = Duration::from_secs(super::REQUEST_TIMEOUT_SECS);
/// A response header longer than this is not dockerd's.
const MAX_HEADER: usize = 64 * 1024;
/// What is read from the socket at a time (at least).
const READ_SIZE: usize = 256 * 1024;
/// The largest frame accepted: dockerd splits lines at 16 KiB; anything far beyond is
/// not a frame header.
const MAX_FRAME: usize = 1 << 20;

/// The log stream of `path` (`/v1.41/containers/ID/logs?...`) on the socket; `tty` when
/// the container has a TTY (its stream is not multiplexed).
pub fn logs(
    socket: PathBuf,
    path: String,
    tty: bool,
) -> impl Stream<Item = Result<LogOutput, Error>> {
    let state = RawLogs {
        socket,
        path,
        tty,
        conn: None,
        buf: BytesMut::new(),
        done: false,
    };
    futures::stream::unfold(state, |mut s| async move {
        let item = s.next().await?;
        Some((item, s))
    })
}

struct RawLogs {
    socket: PathBuf,
    path: String,
    tty: bool,
    conn: Option<UnixStream>,
    buf: BytesMut,
    /// The stream ended or failed: nothing more comes.
    done: bool,
}

impl RawLogs {
    async fn next(&mut self) -> Option<Result<LogOutput, Error>> {
        if self.done {
            return None;
        }
        if self.conn.is_none() {
            let opened = tokio::time::timeout(HEADER_TIMEOUT, self.open())
                .await
                .unwrap_or(Err(Error::RequestTimeoutError));
            match opened {
                Ok(conn) => self.conn = Some(conn),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        loop {
            if let Some(frame) = self.frame() {
                return Some(Ok(frame));
            }
            let conn = self.conn.as_mut()?;
            self.buf.reserve(READ_SIZE);
            match conn.read_buf(&mut self.buf).await {
                Ok(0) => {
                    self.done = true;
                    // A frame cut short by the end of the stream: hand it over as text, which
                    // the line assembler refuses as not a log frame (an error, retried).
                    return (!self.buf.is_empty()).then(|| {
                        Ok(LogOutput::Console {
                            message: self.buf.split().freeze(),
                        })
                    });
                }
                Ok(_) => {}
                Err(err) => {
                    self.done = true;
                    return Some(Err(Error::IOError { err }));
                }
            }
        }
    }

    /// The next whole frame in the buffer (for a TTY, all of it).
    fn frame(&mut self) -> Option<LogOutput> {
        if self.tty {
            return (!self.buf.is_empty()).then(|| LogOutput::Console {
                message: self.buf.split().freeze(),
            });
        }
        let h: [u8; 8] = self.buf.get(..8)?.try_into().ok()?;
        let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
        if h[0] > 2 || h[1..4] != [0, 0, 0] || len > MAX_FRAME {
            // Not a frame header: dockerd wrote text (an error) into the stream.
            return Some(LogOutput::Console {
                message: self.buf.split().freeze(),
            });
        }
        if self.buf.len() < 8 + len {
            return None;
        }
        self.buf.advance(8);
        let message = self.buf.split_to(len).freeze();
        Some(match h[0] {
            0 => LogOutput::StdIn { message },
            1 => LogOutput::StdOut { message },
            _ => LogOutput::StdErr { message },
        })
    }

    /// Send the request and read the response header; on success the buffer holds the
    /// start of the body.
    async fn open(&mut self) -> Result<UnixStream, Error> {
        let mut conn = UnixStream::connect(&self.socket).await?;
        let request = format!("GET {} HTTP/1.0\r\nHost: docker\r\n\r\n", self.path);
        conn.write_all(request.as_bytes()).await?;
        let end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            if self.buf.len() > MAX_HEADER || conn.read_buf(&mut self.buf).await? == 0 {
                return Err(
                    std::io::Error::other("dockerd sent no complete response header").into(),
                );
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.advance(end + 4);
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad response from dockerd: {head:?}")))?;
        if status == 200 {
            return Ok(conn);
        }
        // Errors come as `{"message": "..."}` and end with the connection.
        while self.buf.len() < MAX_HEADER && conn.read_buf(&mut self.buf).await? > 0 {}
        let body = String::from_utf8_lossy(&self.buf).into_owned();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or(body);
        Err(Error::DockerResponseServerError {
            status_code: status,
            message,
        })
    }
}
