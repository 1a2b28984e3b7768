//! Following one container's log to its very end.
//!
//! dockerd 20.10 answers a follow request with the log file as it stood when the request
//! opened and then what gets written; but when the container has exited by the time the
//! first part is sent, it ends the stream without what was written in between. A reader
//! that fell behind a container that printed fast and exited would lose lines. So the
//! end of a stream proves nothing: the container is inspected, and when it has stopped
//! its log is re-read (without follow) from the cursor until a read finds nothing new.

use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptions;
use futures::StreamExt;
use futures::future::Either;
use prometheus::IntGauge;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::StreamName;
use crate::metrics::AgentMetrics;

use super::{
    Backoff, Cursor, DockerContainer, DockerError, Frame, LineAssembler, LogLine, Pushed, negotiate,
};

/// How a container's log is read.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    /// Longest line kept whole; longer ones are cut, marked and counted.
    pub max_line_bytes: usize,
    /// Most lines per batch sent to the pipeline.
    pub batch_lines: usize,
    /// Most message bytes per batch (a batch may exceed it by one line).
    pub batch_bytes: usize,
    /// How long a batch that is not full waits for more lines while the stream is busy
    /// (the previous batch was handed over less than this long ago; the first line after
    /// a quiet spell goes at once). Docker sends one frame per HTTP chunk, so without it
    /// a fast log would be handed over one or two lines at a time, and every line
    /// downstream would cost a task wake-up and a sink write of its own. Bounds the
    /// latency it adds.
    pub linger: Duration,
    /// Docker's unix socket: when set, logs are read from it directly (see `raw_logs`)
    /// rather than through bollard. The agent always sets it for a unix endpoint: without
    /// it, bollard holds a TTY container's line whole until its newline, and memory is
    /// not bounded by `max_line_bytes`. (Over `tcp://`, bollard passes TTY output on as
    /// it arrives.)
    pub unix_socket: Option<PathBuf>,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            max_line_bytes: 1024 * 1024,
            batch_lines: 512,
            batch_bytes: 1024 * 1024,
            linger: Duration::from_millis(2),
            unix_socket: None,
        }
    }
}

/// Counts a container as followed while alive.
struct Followed(IntGauge);

impl Followed {
    fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Followed(gauge.clone())
    }
}

impl Drop for Followed {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How one read ended.
enum ReadEnd {
    /// Docker ended the stream; `new` tells whether it carried anything past the cursor.
    Ended {
        new: bool,
    },
    Shutdown,
}

/// Follow `container`'s log from `from` (`None`: from the beginning), sending its lines in
/// batches to `tx`, until the container has stopped and its log has been read to the
/// end, or until `shutdown`. Returns the cursor after the last line sent.
///
/// Transient failures (dropped socket, daemon restart, errors inside the stream) are
/// retried with backoff from the cursor, so no line is lost or repeated. Errors are
/// returned only when retrying cannot help: the container was removed, its log driver
/// cannot be read back, or `tx` was closed. While it runs, the container counts in
/// `containers_followed`.
pub async fn follow(
    docker: &Docker,
    container: &DockerContainer,
    from: Option<Cursor>,
    opts: &ReadOptions,
    tx: &mpsc::Sender<Vec<LogLine>>,
    metrics: &AgentMetrics,
    shutdown: &CancellationToken,
) -> Result<Cursor, DockerError> {
    if !container.logs_readable() {
        return Err(DockerError::LogDriver {
            container: container.display(),
            driver: container.log_driver.clone(),
        });
    }
    let _followed = Followed::new(&metrics.containers_followed);
    let mut reader = Reader {
        docker,
        container,
        opts,
        tx,
        metrics,
        shutdown,
        lines: LineAssembler::new(from.unwrap_or_default(), opts.max_line_bytes, container.tty),
        sent: from.unwrap_or_default(),
    };
    let mut backoff = Backoff::new();
    let mut negotiated = false;
    // After the container was seen stopped: read without follow until nothing is new.
    let mut draining = false;
    loop {
        if !negotiated {
            negotiated = negotiate(docker).await.is_ok();
        }
        let new = match reader.read(draining).await {
            Ok(ReadEnd::Shutdown) => return Ok(reader.sent),
            Ok(ReadEnd::Ended { new }) => new,
            Err(e) if e.is_permanent() => return Err(e),
            Err(e) => {
                tracing::warn!(container = %container.display(), error = %e, reason = e.reason(), "reading container log failed; retrying from the last line read");
                negotiated = false;
                if !backoff.wait(shutdown).await {
                    return Ok(reader.sent);
                }
                continue;
            }
        };
        let running = match docker.inspect_container(&container.id, None).await {
            Ok(c) => c.state.and_then(|s| s.running).unwrap_or(false),
            Err(e) => match DockerError::request("inspect", container, e) {
                e if e.is_permanent() => return Err(e),
                e => {
                    tracing::warn!(container = %container.display(), error = %e, "inspecting container failed; retrying");
                    if !backoff.wait(shutdown).await {
                        return Ok(reader.sent);
                    }
                    continue;
                }
            },
        };
        if running {
            // The follow stream ended under a running container (a daemon hiccup):
            // open it again from the cursor, slower when it keeps bringing nothing.
            draining = false;
            if new {
                backoff.reset();
            } else if !backoff.wait(shutdown).await {
                return Ok(reader.sent);
            }
        } else if draining && !new {
            return Ok(reader.sent);
        } else {
            draining = true;
        }
    }
}

struct Reader<'a> {
    docker: &'a Docker,
    container: &'a DockerContainer,
    opts: &'a ReadOptions,
    tx: &'a mpsc::Sender<Vec<LogLine>>,
    metrics: &'a AgentMetrics,
    shutdown: &'a CancellationToken,
    lines: LineAssembler,
    /// After the last line the receiver got.
    sent: Cursor,
}

impl Reader<'_> {
    /// One logs request from the cursor: with follow, or (`to_end`) without, in which case
    /// the container has stopped and lines that never got their newline are complete.
    async fn read(&mut self, to_end: bool) -> Result<ReadEnd, DockerError> {
        self.lines.restart(self.sent);
        let options = LogsOptions {
            follow: !to_end,
            stdout: true,
            stderr: true,
            // Whole seconds only: the rest of that second is skipped by the cursor.
            since: i32::try_from(self.sent.since().secs).unwrap_or(0),
            until: 0,
            timestamps: true,
            tail: "all".to_string(),
        };
        let stream = match &self.opts.unix_socket {
            Some(socket) => {
                let path = format!(
                    "/v{}/containers/{}/logs?stdout=1&stderr=1&timestamps=1&tail=all&follow={}&since={}",
                    self.docker.client_version(),
                    self.container.id,
                    u8::from(options.follow),
                    options.since,
                );
                Either::Left(super::raw_logs::logs(
                    socket.clone(),
                    path,
                    self.container.tty,
                ))
            }
            _ => Either::Right(self.docker.logs(&self.container.id, Some(options))),
        };
        tokio::pin!(stream);
        let mut new = false;
        let mut batch: Vec<LogLine> = Vec::new();
        let mut batch_bytes = 0;
        // Set once the stream is over: `Ok` at its end, `Err` on a failure.
        let mut outcome: Option<Result<(), DockerError>> = None;
        // Created once: a fresh `cancelled()` per frame would register with the token
        // (a mutex) for every line.
        let cancelled = self.shutdown.cancelled();
        tokio::pin!(cancelled);
        // Armed when a batch gets its first line while the stream is busy; the batch is
        // handed over when it is full, when the stream is over, or when this fires.
        let linger = tokio::time::sleep(self.opts.linger);
        tokio::pin!(linger);
        let mut lingering = false;
        let mut last_handover: Option<tokio::time::Instant> = None;
        // Reading goes on while the receiver is busy, so that a slow receiver gets
        // bigger batches; bounded by lines and bytes.
        loop {
            let full = batch.len() >= self.opts.batch_lines || batch_bytes >= self.opts.batch_bytes;
            let due = !batch.is_empty() && (full || outcome.is_some() || !lingering);
            tokio::select! {
                biased;
                _ = &mut cancelled => return Ok(ReadEnd::Shutdown),
                item = stream.next(), if outcome.is_none() && !full => {
                    let before = batch.len();
                    outcome = self.take(item, &mut batch, &mut new);
                    if to_end && matches!(outcome, Some(Ok(()))) {
                        self.lines.flush(&mut batch);
                    }
                    batch_bytes += batch[before..].iter().map(|l| l.message.len()).sum::<usize>();
                    if before == 0 && !batch.is_empty() {
                        let now = tokio::time::Instant::now();
                        lingering = last_handover.is_some_and(|t| now < t + self.opts.linger);
                        if lingering {
                            linger.as_mut().reset(now + self.opts.linger);
                        }
                    }
                }
                () = &mut linger, if lingering => lingering = false,
                permit = self.tx.reserve(), if due => {
                    let permit = permit.map_err(|_| DockerError::ReceiverClosed { container: self.container.display() })?;
                    self.sent = self.count(&batch);
                    // The next batch is likely the size of this one.
                    let next = Vec::with_capacity(batch.len());
                    permit.send(std::mem::replace(&mut batch, next));
                    batch_bytes = 0;
                    lingering = false;
                    last_handover = Some(tokio::time::Instant::now());
                }
            }
            if batch.is_empty() {
                match outcome.take() {
                    None => {}
                    Some(Ok(())) => return Ok(ReadEnd::Ended { new }),
                    Some(Err(e)) => return Err(e),
                }
            }
        }
    }

    /// Feed one stream item to the assembler. `Some` when the stream is over: `Ok` at its
    /// end, `Err` on a failure.
    fn take(
        &mut self,
        item: Option<Result<LogOutput, bollard::errors::Error>>,
        batch: &mut Vec<LogLine>,
        new: &mut bool,
    ) -> Option<Result<(), DockerError>> {
        let output = match item {
            None => return Some(Ok(())),
            Some(Err(e)) => return Some(Err(DockerError::request("logs", self.container, e))),
            Some(Ok(output)) => output,
        };
        let frame = match &output {
            LogOutput::StdOut { message } => Frame::Stdout(message),
            LogOutput::StdErr { message } => Frame::Stderr(message),
            LogOutput::Console { message } => Frame::Console(message),
            LogOutput::StdIn { .. } => return None,
        };
        match self.lines.push(frame, batch) {
            Pushed::New => *new = true,
            Pushed::Skipped => {}
            Pushed::NotLog => {
                let text = String::from_utf8_lossy(output.as_ref());
                return Some(Err(DockerError::InStream {
                    container: self.container.display(),
                    message: text.trim_end().chars().take(512).collect(),
                }));
            }
        }
        None
    }

    /// Count a batch about to be handed over; returns the cursor after it.
    fn count(&self, batch: &[LogLine]) -> Cursor {
        // [stdout, stderr] x [records, bytes], then one update per label.
        let mut counts = [[0u64; 2]; 2];
        let mut truncated = 0;
        for line in batch {
            let c = &mut counts[usize::from(line.stream == StreamName::Stderr)];
            c[0] += 1;
            c[1] += line.message.len() as u64;
            truncated += u64::from(line.truncated);
        }
        for (stream, [records, bytes]) in [StreamName::Stdout, StreamName::Stderr]
            .into_iter()
            .zip(counts)
        {
            if records > 0 {
                self.metrics
                    .records_read
                    .with_label_values(&[stream.as_str()])
                    .inc_by(records);
                self.metrics
                    .bytes_read
                    .with_label_values(&[stream.as_str()])
                    .inc_by(bytes);
            }
        }
        self.metrics.lines_truncated.inc_by(truncated);
        batch.last().map_or(self.sent, |l| l.cursor)
    }
}
