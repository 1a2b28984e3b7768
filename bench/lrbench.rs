//! Helpers of the benchmark harness (`bash bench/run.sh`), kept out of the agent:
//!
//! - `lrbench read [--follow] [--start] ID...`: the ceiling. Reads the containers' logs
//!   straight from the Docker Engine API (HTTP/1.0 over the unix socket, `timestamps=1`,
//!   multiplexed frames), concurrently, counts lines and throws them away. With `--start`
//!   it starts the (created) containers first and times from just before that.
//! - `lrbench start ID...`: start containers; prints the time just before.
//! - `lrbench count --port P --expect N`: a fast RFC 5424 receiver over TCP with RFC 6587
//!   octet counting. Counts messages, and for each one takes the TIMESTAMP of its header
//!   (Docker's record time) from the time it was received: end-to-end latency. Exits when
//!   N messages arrived (or at `--deadline`, then with status 2). Messages that are just
//!   `probe` (the harness checking that the path works) are set aside, not counted.
//!
//! Every command prints one JSON object on stdout; times are Unix seconds.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};

const DOCKER_SOCKET: &str = "/var/run/docker.sock";

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn usage() -> ! {
    eprintln!(
        "usage: lrbench read [--follow] [--start] ID... | start ID... | count --port P --expect N [--deadline SECS]"
    );
    std::process::exit(64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        usage()
    };
    let result = match cmd.as_str() {
        "read" => read(rest).await,
        "start" => {
            let t0 = now();
            let started = start_all(rest).await;
            started.map(|()| println!("{{\"start\":{t0:.6}}}"))
        }
        "count" => count(rest).await,
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("lrbench {cmd}: {e}");
        std::process::exit(1);
    }
}

/// One HTTP/1.0 request to dockerd; returns the status and a connection positioned at
/// the body (HTTP/1.0: no chunked encoding, the body ends when the connection does).
async fn request(method: &str, path: &str) -> io::Result<(u16, UnixStream, Vec<u8>)> {
    let mut s = UnixStream::connect(DOCKER_SOCKET).await?;
    let head = format!("{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Length: 0\r\n\r\n");
    s.write_all(head.as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::other(
                "dockerd closed before its response header",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| io::Error::other(format!("bad response {head:?}")))?;
            if head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked")
            {
                return Err(io::Error::other("dockerd answered HTTP/1.0 with chunks"));
            }
            let body = buf[end + 4..].to_vec();
            return Ok((status, s, body));
        }
    }
}

async fn start_all(ids: &[String]) -> io::Result<()> {
    for id in ids {
        let (status, _, body) = request("POST", &format!("/containers/{id}/start")).await?;
        if status != 204 && status != 304 {
            let body = String::from_utf8_lossy(&body);
            return Err(io::Error::other(format!("start {id}: {status} {body}")));
        }
    }
    Ok(())
}

/// Lines and bytes of one container's log.
async fn read_one(id: String, follow: bool) -> io::Result<(u64, u64)> {
    let path = format!(
        "/containers/{id}/logs?stdout=1&stderr=1&timestamps=1&follow={}",
        u8::from(follow)
    );
    let (status, mut s, first) = request("GET", &path).await?;
    if status != 200 {
        return Err(io::Error::other(format!("logs {id}: status {status}")));
    }
    let mut frames = FrameCounter::default();
    frames.feed(&first);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok((frames.lines, frames.bytes));
        }
        frames.feed(&buf[..n]);
    }
}

/// Docker's multiplexed stream: 8-byte headers (stream, 0, 0, 0, big-endian length),
/// then the frame. A frame ending in `\n` ends a line.
#[derive(Default)]
struct FrameCounter {
    header: [u8; 8],
    header_len: usize,
    left: usize,
    last: u8,
    lines: u64,
    bytes: u64,
}

impl FrameCounter {
    fn feed(&mut self, mut data: &[u8]) {
        self.bytes += data.len() as u64;
        while !data.is_empty() {
            if self.left == 0 {
                let take = (8 - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
                self.header_len += take;
                data = &data[take..];
                if self.header_len == 8 {
                    self.header_len = 0;
                    let h = self.header;
                    self.left = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
                }
                continue;
            }
            let take = self.left.min(data.len());
            self.last = data[take - 1];
            self.left -= take;
            data = &data[take..];
            if self.left == 0 && self.last == b'\n' {
                self.lines += 1;
            }
        }
    }
}

async fn read(args: &[String]) -> io::Result<()> {
    let follow = args.iter().any(|a| a == "--follow");
    let start = args.iter().any(|a| a == "--start");
    let ids: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .collect();
    if ids.is_empty() {
        usage();
    }
    let t0 = now();
    if start {
        start_all(&ids).await?;
    }
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| tokio::spawn(read_one(id.clone(), follow)))
        .collect();
    let (mut lines, mut bytes) = (0, 0);
    for t in tasks {
        let (l, b) = t.await.map_err(io::Error::other)??;
        lines += l;
        bytes += b;
    }
    let t1 = now();
    println!("{{\"lines\":{lines},\"bytes\":{bytes},\"start\":{t0:.6},\"end\":{t1:.6}}}");
    Ok(())
}

/// What the receiver saw, shared by its connections.
#[derive(Default)]
struct Seen {
    messages: u64,
    first_received: f64,
    last_received: f64,
    /// Received minus record time, microseconds, one per message.
    latency_us: Vec<i64>,
    /// Earliest and latest record time (microseconds): the offered rate.
    first_record_us: i64,
    last_record_us: i64,
    bad_frames: u64,
    /// Messages `probe` (the harness's check that the path works), not counted.
    probes: u64,
}

async fn count(args: &[String]) -> io::Result<()> {
    let mut port = None;
    let mut expect = None;
    let mut deadline = 600.0;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().map(String::as_str);
        match (a.as_str(), v) {
            ("--port", Some(v)) => port = v.parse::<u16>().ok(),
            ("--expect", Some(v)) => expect = v.parse::<u64>().ok(),
            ("--deadline", Some(v)) => deadline = v.parse().unwrap_or(deadline),
            _ => usage(),
        }
    }
    let (Some(port), Some(expect)) = (port, expect) else {
        usage()
    };
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let seen = Arc::new(Mutex::new(Seen {
        latency_us: Vec::with_capacity(expect as usize),
        first_record_us: i64::MAX,
        last_record_us: i64::MIN,
        ..Default::default()
    }));
    let done = Arc::new(tokio::sync::Notify::new());
    {
        let seen = seen.clone();
        let done = done.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let _ = conn.set_nodelay(true);
                tokio::spawn(receive(conn, seen.clone(), expect, done.clone()));
            }
        });
    }
    let complete = tokio::time::timeout(Duration::from_secs_f64(deadline), done.notified())
        .await
        .is_ok();
    let s = seen.lock().expect("lock");
    let mut lat = s.latency_us.clone();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return -1.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    println!(
        "{{\"messages\":{},\"expected\":{expect},\"complete\":{complete},\"bad_frames\":{},\"probes\":{},\"first_received\":{:.6},\"last_received\":{:.6},\"first_record\":{:.6},\"last_record\":{:.6},\"latency_ms\":{{\"p50\":{:.2},\"p90\":{:.2},\"p99\":{:.2},\"p999\":{:.2},\"max\":{:.2}}}}}",
        s.messages,
        s.bad_frames,
        s.probes,
        s.first_received,
        s.last_received,
        s.first_record_us as f64 / 1e6,
        s.last_record_us as f64 / 1e6,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(0.999),
        pct(1.0),
    );
    std::process::exit(if complete { 0 } else { 2 });
}

/// Read octet-counted frames (`LEN SP MSG`) from one connection.
async fn receive(
    mut conn: tokio::net::TcpStream,
    seen: Arc<Mutex<Seen>>,
    expect: u64,
    done: Arc<tokio::sync::Notify>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut chunk = vec![0u8; 256 << 10];
    let mut lat = Vec::with_capacity(4096);
    loop {
        let n = match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let received = now();
        let received_us = (received * 1e6) as i64;
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        let mut bad = 0;
        let mut probes = 0;
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        loop {
            let Some(sp) = buf[at..].iter().take(12).position(|&b| b == b' ') else {
                if buf.len() - at >= 12 {
                    bad += 1; // not octet counting: give up on this connection
                    at = buf.len();
                }
                break;
            };
            let Some(len) = std::str::from_utf8(&buf[at..at + sp])
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
            else {
                bad += 1;
                at = buf.len();
                break;
            };
            let start = at + sp + 1;
            if buf.len() < start + len {
                break;
            }
            let msg = &buf[start..start + len];
            if msg.ends_with(b" probe") {
                probes += 1;
                at = start + len;
                continue;
            }
            match record_time_us(msg) {
                Some(ts) => {
                    lat.push(received_us - ts);
                    lo = lo.min(ts);
                    hi = hi.max(ts);
                }
                None => bad += 1,
            }
            at = start + len;
        }
        buf.drain(..at);
        if lat.is_empty() && bad == 0 && probes == 0 {
            continue;
        }
        let mut s = seen.lock().expect("lock");
        if s.messages == 0 && !lat.is_empty() {
            s.first_received = received;
        }
        s.messages += lat.len() as u64;
        if !lat.is_empty() {
            s.last_received = received;
        }
        s.bad_frames += bad;
        s.probes += probes;
        s.first_record_us = s.first_record_us.min(lo);
        s.last_record_us = s.last_record_us.max(hi);
        s.latency_us.append(&mut lat);
        if s.messages >= expect {
            done.notify_one();
        }
    }
}

/// TIMESTAMP of an RFC 5424 message (`<PRI>1 2024-05-01T10:00:00.123456Z ...`), in
/// microseconds since the epoch. UTC with `Z` only: what logroute writes.
fn record_time_us(msg: &[u8]) -> Option<i64> {
    let sp = msg.iter().take(8).position(|&b| b == b' ')?;
    let t = msg.get(sp + 1..sp + 28)?;
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        t[r].iter().try_fold(0i64, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
        })
    };
    if t[26] != b'Z' || t[19] != b'.' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s, us) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..26)?);
    let days = days_from_civil(y, mo, d);
    Some(((days * 86400 + h * 3600 + mi * 60 + s) * 1_000_000) + us)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc5424_timestamps() {
        let us = record_time_us(b"<14>1 2024-05-01T10:00:00.000001Z host app").expect("ts");
        assert_eq!(us, 1_714_557_600_000_001);
        assert_eq!(record_time_us(b"<14>1 - host"), None);
    }

    #[test]
    fn counts_lines_across_split_frames() {
        let frame = |payload: &[u8]| {
            let mut f = vec![1, 0, 0, 0];
            f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            f.extend_from_slice(payload);
            f
        };
        let mut stream = frame(b"2024 one\n");
        stream.extend(frame(b"2024 partial"));
        stream.extend(frame(b"2024 two\n"));
        let mut c = FrameCounter::default();
        for piece in stream.chunks(3) {
            c.feed(piece);
        }
        assert_eq!(c.lines, 2);
    }
}
