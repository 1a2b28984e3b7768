//! Connections to a syslog receiver: UDP, TCP and TLS over TCP.
//!
//! A stream connection gets TCP keepalive and `TCP_USER_TIMEOUT`, so that a receiver that
//! vanished (host down, network cut) is noticed within tens of seconds rather than the
//! kernel's default of many minutes. Before each batch the connection is checked for an
//! orderly close by the receiver (a restarted rsyslog closes its sockets): without that
//! check the first batch after a close would be "written" into a socket whose peer is
//! gone and lost. Data written into a healthy-looking socket whose peer dies right after
//! is a limit of plain TCP syslog (there are no acknowledgements); `transport: relp`
//! lifts it (see `relp`).

use std::io::{self, Read as _};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::SyslogError;
use super::tls::TlsTarget;
use crate::route::egress::Scheme;
use crate::sink::egress::EgressGuard;

/// Resolution, TCP connect and TLS handshake together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle time before the first keepalive probe, then the interval and count of probes:
/// an idle connection to a dead peer is dropped after about 25 s.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;
/// How long written data may stay unacknowledged before the kernel drops the connection
/// (and our pending write fails). Long enough for a receiver's GC pause or a brief
/// network hiccup, short enough that a dead receiver stops a sink in seconds.
const USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Where to connect.
pub struct Target {
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
    /// `host:port`, for messages.
    pub display: String,
    /// The operator's egress rules for this route; `None` when unrestricted.
    pub egress: Option<EgressGuard>,
}

impl Target {
    fn scheme(&self) -> Scheme {
        match self.protocol {
            Protocol::Udp => Scheme::Udp,
            Protocol::Tcp => Scheme::Tcp,
            Protocol::Tls(_) => Scheme::Tls,
        }
    }
}

pub enum Protocol {
    Udp,
    Tcp,
    Tls(TlsTarget),
}

/// A stream connection, plain or TLS, for a protocol that reads answers (RELP).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {
    /// Acknowledge what was received at once, not on the kernel's delayed-ACK timer
    /// (Linux `TCP_QUICKACK`, which the kernel clears again: call after every read). A
    /// receiver that writes its answers without `TCP_NODELAY` (librelp) holds each
    /// answer after the first until our ACK comes: with delayed ACKs that is 40 ms per
    /// window.
    fn ack_now(&self) {}
}

impl Io for TcpStream {
    fn ack_now(&self) {
        let _ = SockRef::from(self).set_tcp_quickack(true);
    }
}

impl Io for TlsStream<TcpStream> {
    fn ack_now(&self) {
        let _ = SockRef::from(self.get_ref().0).set_tcp_quickack(true);
    }
}

pub enum Connection {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection {
    /// The stream of a TCP or TLS connection; `None` for UDP.
    pub fn into_io(self) -> Option<Box<dyn Io>> {
        match self {
            Connection::Udp(_) => None,
            Connection::Tcp(stream) => Some(Box::new(stream)),
            Connection::Tls(stream) => Some(stream),
        }
    }

    /// Resolve the receiver's name (again on every connect, so a Service whose address
    /// changed is followed) and connect to the first address that answers.
    pub async fn open(target: &Target) -> Result<Self, SyslogError> {
        tokio::time::timeout(CONNECT_TIMEOUT, Self::open_inner(target))
            .await
            .unwrap_or_else(|_| {
                Err(SyslogError::ConnectTimeout {
                    addr: target.display.clone(),
                    timeout: CONNECT_TIMEOUT,
                })
            })
    }

    async fn open_inner(target: &Target) -> Result<Self, SyslogError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|source| SyslogError::Resolve {
                addr: target.display.clone(),
                source,
            })?
            .collect();
        // Every address is judged before any is tried: DNS may have changed since the
        // controller compiled the route.
        let addrs = match &target.egress {
            None => addrs,
            Some(guard) => {
                guard
                    .filter(&target.host, addrs, target.scheme())
                    .map_err(|source| SyslogError::Egress {
                        addr: target.display.clone(),
                        source,
                    })?
            }
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no addresses");
        for addr in addrs {
            let opened = match &target.protocol {
                Protocol::Udp => udp(addr).await.map(Connection::Udp),
                Protocol::Tcp => tcp(addr).await.map(Connection::Tcp),
                Protocol::Tls(tls) => match tcp(addr).await {
                    Ok(stream) => return handshake(target, tls, stream).await,
                    Err(e) => Err(e),
                },
            };
            match opened {
                Ok(conn) => return Ok(conn),
                Err(e) => last = e,
            }
        }
        Err(SyslogError::Connect {
            addr: target.display.clone(),
            source: last,
        })
    }

    /// False when a stream's receiver has closed or reset the connection. Looks at the
    /// socket with non-blocking system calls (not the runtime's cached readiness), so it
    /// sees a close that happened a moment ago.
    pub fn peer_is_open(&mut self) -> bool {
        match self {
            Connection::Udp(_) => true,
            Connection::Tcp(stream) => loop {
                match peek(stream) {
                    Peek::Open => return true,
                    Peek::Closed => return false,
                    // Receivers do not talk back; discard whatever this is.
                    Peek::Data => {
                        let mut discard = [0u8; 1024];
                        match (&*SockRef::from(&*stream)).read(&mut discard) {
                            Ok(0) => return false,
                            Ok(_) => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                            Err(_) => return false,
                        }
                    }
                }
            },
            Connection::Tls(tls) => {
                let (stream, session) = tls.get_mut();
                loop {
                    match peek(stream) {
                        Peek::Open => return true,
                        Peek::Closed => return false,
                        // TLS records (session tickets, an alert): let rustls read them,
                        // which also reveals a close_notify.
                        Peek::Data => {
                            match session.read_tls(&mut &*SockRef::from(&*stream)) {
                                Ok(0) => return false,
                                Ok(_) => {}
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                                Err(_) => return false,
                            }
                            if session.process_new_packets().is_err() {
                                return false;
                            }
                            let mut discard = [0u8; 1024];
                            loop {
                                match session.reader().read(&mut discard) {
                                    Ok(0) => return false,
                                    Ok(_) => {}
                                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                    Err(_) => return false,
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Write the frames in `buf`, where frame `i` ends at `ends[i]`. On failure, returns
    /// how many leading frames were completely handed to the kernel; a frame that was
    /// only partly written does not count.
    pub async fn write_frames(
        &mut self,
        buf: &[u8],
        ends: &[usize],
    ) -> Result<(), (usize, io::Error)> {
        match self {
            Connection::Udp(socket) => {
                let mut start = 0;
                for (i, &end) in ends.iter().enumerate() {
                    match socket.send(&buf[start..end]).await {
                        Ok(n) if n == end - start => {}
                        Ok(n) => {
                            let e = io::Error::other(format!(
                                "datagram truncated to {n} of {} bytes",
                                end - start
                            ));
                            return Err((i, e));
                        }
                        Err(e) => return Err((i, e)),
                    }
                    start = end;
                }
                Ok(())
            }
            Connection::Tcp(stream) => write_stream(stream, buf, ends).await,
            Connection::Tls(stream) => write_stream(stream.as_mut(), buf, ends).await,
        }
    }
}

/// Write all of `buf`, flushing after each write so that (for TLS) what counts as written
/// has really left rustls's buffers for the socket.
async fn write_stream<S>(
    stream: &mut S,
    buf: &[u8],
    ends: &[usize],
) -> Result<(), (usize, io::Error)>
where
    S: tokio::io::AsyncWrite + Unpin,
{
    let mut committed = 0;
    while committed < buf.len() {
        let written = match stream.write(&buf[committed..]).await {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the connection accepts no more data",
            )),
            Ok(n) => Ok(n),
            Err(e) => Err(e),
        };
        match written {
            Ok(n) => match stream.flush().await {
                Ok(()) => committed += n,
                Err(e) => return Err((complete_frames(ends, committed), e)),
            },
            Err(e) => return Err((complete_frames(ends, committed), e)),
        }
    }
    Ok(())
}

/// How many frames end at or before byte `committed`.
pub fn complete_frames(ends: &[usize], committed: usize) -> usize {
    ends.partition_point(|&end| end <= committed)
}

enum Peek {
    Open,
    Data,
    Closed,
}

/// The socket is non-blocking (tokio sets it so): peeking never waits.
fn peek(stream: &TcpStream) -> Peek {
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    match SockRef::from(stream).peek(&mut byte) {
        Ok(0) => Peek::Closed,
        Ok(_) => Peek::Data,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Peek::Open,
        Err(_) => Peek::Closed,
    }
}

async fn udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(addr).await?;
    Ok(socket)
}

async fn tcp(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    {
        let sock = SockRef::from(&socket);
        let keepalive = TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES);
        sock.set_tcp_keepalive(&keepalive)?;
        sock.set_tcp_user_timeout(Some(USER_TIMEOUT))?;
    }
    let stream = socket.connect(addr).await?;
    // Batches are written whole; there is nothing for Nagle's algorithm to merge.
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn handshake(
    target: &Target,
    tls: &TlsTarget,
    stream: TcpStream,
) -> Result<Connection, SyslogError> {
    let connector = TlsConnector::from(tls.config.clone());
    match connector.connect(tls.server_name.clone(), stream).await {
        Ok(stream) => Ok(Connection::Tls(Box::new(stream))),
        Err(source) => Err(SyslogError::Handshake {
            addr: target.display.clone(),
            server_name: tls.server_name.to_str().into_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::complete_frames;

    #[test]
    fn only_whole_frames_count_as_written() {
        let ends = [10, 20, 35];
        assert_eq!(complete_frames(&ends, 0), 0);
        assert_eq!(complete_frames(&ends, 9), 0);
        assert_eq!(complete_frames(&ends, 10), 1);
        assert_eq!(complete_frames(&ends, 34), 2);
        assert_eq!(complete_frames(&ends, 35), 3);
        assert_eq!(complete_frames(&[], 0), 0);
    }
}
