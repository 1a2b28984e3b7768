//! A real rsyslogd on loopback ports, writing what it receives as JSON lines.
//!
//! Inputs (all on 127.0.0.1, fixed for the harness's life so that `restart` brings the
//! same addresses back):
//! - `udp_port`: imudp;
//! - `tcp_port`: imtcp (octet-counted and newline framing both);
//! - `tls_port`: imtcp with the gtls driver, anonymous clients, server certificate for
//!   `localhost` and `127.0.0.1` signed by the harness CA ([`Rsyslog::ca_pem`]);
//! - `mtls_port`: like `tls_port` but clients must present a certificate signed by the
//!   harness CA ([`Rsyslog::client_cert_pem`] / [`Rsyslog::client_key_pem`]).
//! - with [`Rsyslog::start_relp`] also `relp_port` (imrelp) and `relps_port` (imrelp over
//!   TLS with the same server certificate; clients must present one signed by the harness
//!   CA). That instance runs its main queue in direct mode: a message is written to the
//!   output file before imrelp acknowledges it, so what was acknowledged survives a
//!   SIGKILL ([`Rsyslog::kill9`]). Needs Debian's rsyslog-relp package.
//!
//! Limits are raised far above rsyslog's defaults (8 KiB messages, 200000-byte frames):
//! `maxMessageSize` 1 MiB and imtcp `maxFrameSize` 2 MB. Control characters are kept as
//! received (`parser.escapeControlCharactersOnReceive="off"`), so a test sees the bytes
//! that were sent.
//!
//! ```ignore
//! let Some(rs) = Rsyslog::start_or_skip() else { return };
//! // ... send to 127.0.0.1:rs.tcp_port ...
//! let got = rs.wait_for(3, Duration::from_secs(10));
//! ```

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::env;

pub const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
const OPENSSL: &str = "openssl";
/// APP-NAME of the harness's own readiness probes; they never reach `wait_for`.
const PROBE_APP: &str = "harness-probe";

/// One message as rsyslog parsed it (its property names in parentheses).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Received {
    /// Which input took it: `udp`, `tcp`, `tls` or `mtls` (inputname).
    pub input: String,
    pub hostname: String,
    /// (app-name)
    pub app: String,
    pub procid: String,
    pub msgid: String,
    /// (structured-data), `-` when there is none.
    pub sd: String,
    pub severity: u8,
    pub facility: u8,
    /// (syslogtag): for RFC 3164 `TAG[pid]:`.
    pub tag: String,
    /// (msg): for RFC 3164 rsyslog keeps the space after the TAG's colon.
    pub msg: String,
    /// (rawmsg): the whole message without framing.
    pub raw: String,
}

impl Received {
    /// A parameter of the RFC 5424 structured data (`[id name="value" ...]`), unescaped.
    pub fn sd_param(&self, name: &str) -> Option<String> {
        let needle = format!(" {name}=\"");
        let start = self.sd.find(&needle)? + needle.len();
        let mut out = String::new();
        let mut chars = self.sd[start..].chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.extend(chars.next()),
                '"' => return Some(out),
                c => out.push(c),
            }
        }
        None
    }
}

pub struct Rsyslog {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub udp_port: u16,
    pub tcp_port: u16,
    pub tls_port: u16,
    pub mtls_port: u16,
    /// imrelp and imrelp over TLS; 0 unless started with [`Rsyslog::start_relp`].
    pub relp_port: u16,
    pub relps_port: u16,
    relp: bool,
}

/// imrelp's module, from Debian's rsyslog-relp.
pub const IMRELP: &str = "/usr/lib/x86_64-linux-gnu/rsyslog/imrelp.so";

impl Rsyslog {
    /// Start rsyslogd, or return None outside CI when it is not installed (CI fails).
    pub fn start_or_skip() -> Option<Rsyslog> {
        if !Path::new(RSYSLOGD).exists() {
            env::missing("rsyslogd", "apt-get install -y rsyslog rsyslog-gnutls");
            return None;
        }
        Some(Rsyslog::start().expect("start rsyslogd"))
    }

    /// Start rsyslogd with imrelp inputs too (see the module docs), or return None
    /// outside CI when rsyslog or its RELP module is not installed (CI fails).
    pub fn start_relp_or_skip() -> Option<Rsyslog> {
        if !Path::new(RSYSLOGD).exists() || !Path::new(IMRELP).exists() {
            env::missing(
                "rsyslogd with imrelp",
                "apt-get install -y rsyslog rsyslog-gnutls rsyslog-relp",
            );
            return None;
        }
        Some(Rsyslog::start_relp().expect("start rsyslogd with imrelp"))
    }

    pub fn start_relp() -> Result<Rsyslog> {
        Self::start_with(true)
    }

    /// Start rsyslogd on free loopback ports and wait until every input takes messages.
    pub fn start() -> Result<Rsyslog> {
        Self::start_with(false)
    }

    fn start_with(relp: bool) -> Result<Rsyslog> {
        let dir = tempfile::Builder::new().prefix("rsyslog-").tempdir()?;
        fs::create_dir(dir.path().join("work"))?;
        make_certificates(dir.path())?;
        let mut rs = Rsyslog {
            dir,
            child: None,
            udp_port: 0,
            tcp_port: 0,
            tls_port: 0,
            mtls_port: 0,
            relp_port: 0,
            relps_port: 0,
            relp,
        };
        // A port picked free may be taken by someone else before rsyslogd binds it
        // (rsyslogd then runs without that input): try a few sets.
        let mut last = None;
        for _ in 0..3 {
            rs.udp_port = free_udp_port()?;
            rs.tcp_port = free_tcp_port()?;
            rs.tls_port = free_tcp_port()?;
            rs.mtls_port = free_tcp_port()?;
            if relp {
                rs.relp_port = free_tcp_port()?;
                rs.relps_port = free_tcp_port()?;
            }
            rs.write_config()?;
            match rs.spawn() {
                Ok(()) => return Ok(rs),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("rsyslogd did not start")))
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        fs::read(self.path("ca.pem")).expect("harness CA exists")
    }

    /// A CA that signed nothing the receiver uses: verification with it must fail.
    pub fn stranger_ca_pem(&self) -> Vec<u8> {
        fs::read(self.path("stranger-ca.pem")).expect("stranger CA exists")
    }

    /// The receiver's certificate (for `localhost` and `127.0.0.1`) and key, for tests
    /// that stand up a TLS server of their own.
    pub fn server_cert_pem(&self) -> Vec<u8> {
        fs::read(self.path("server.pem")).expect("server certificate exists")
    }

    pub fn server_key_pem(&self) -> Vec<u8> {
        fs::read(self.path("server.key")).expect("server key exists")
    }

    pub fn client_cert_pem(&self) -> Vec<u8> {
        fs::read(self.path("client.pem")).expect("client certificate exists")
    }

    pub fn client_key_pem(&self) -> Vec<u8> {
        fs::read(self.path("client.key")).expect("client key exists")
    }

    /// Everything received so far (all inputs, across restarts), in arrival order.
    pub fn received(&self) -> Vec<Received> {
        read_lines(&self.path("received.jsonl"))
    }

    /// Lines received so far whose message starts with `needle`, counted without parsing them (cheap
    /// enough to poll while hundreds of thousands arrive).
    pub fn count_containing(&self, needle: &str) -> usize {
        let bytes = fs::read(self.path("received.jsonl")).unwrap_or_default();
        // std's substring search is optimized even in a debug build.
        let needle = format!("\"msg\":\"{needle}");
        String::from_utf8_lossy(&bytes).matches(&needle).count()
    }

    /// Size of the received-messages file: a cheap measure of progress.
    pub fn received_bytes(&self) -> u64 {
        fs::metadata(self.path("received.jsonl")).map_or(0, |m| m.len())
    }

    /// Stop rsyslogd with SIGSTOP, as a hung receiver: it takes nothing more from its
    /// sockets until [`Rsyslog::kill9`] or the end of the test.
    pub fn freeze(&mut self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg("-STOP")
                .arg(child.id().to_string())
                .status();
        }
    }

    /// Wait until at least `n` messages were received; panic at the deadline with what
    /// arrived.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if Instant::now() > deadline {
                let tail: Vec<&str> = got.iter().rev().take(5).map(|r| r.raw.as_str()).collect();
                panic!(
                    "rsyslog received {} messages within {timeout:?}, expected {n}; last ones: {tail:#?}\ninternal log:\n{}",
                    got.len(),
                    self.internal_log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// rsyslogd's own messages (errors about inputs, TLS, oversize frames).
    pub fn internal_log(&self) -> String {
        fs::read_to_string(self.path("internal.log")).unwrap_or_default()
    }

    /// Stop rsyslogd (SIGTERM, then SIGKILL after 10 s). Its ports refuse connections
    /// until [`Rsyslog::restart`].
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kill rsyslogd with SIGKILL, as a crash would: what sat in its sockets and memory
    /// is gone. Its ports refuse connections until [`Rsyslog::restart`].
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start rsyslogd again on the same ports; earlier messages stay in `received`.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_config(&self) -> Result<()> {
        let d = self.dir.path().display();
        let conf = format!(
            r#"global(
  maxMessageSize="1m"
  workDirectory="{d}/work"
  parser.escapeControlCharactersOnReceive="off"
  defaultNetstreamDriverCAFile="{d}/ca.pem"
  defaultNetstreamDriverCertFile="{d}/server.pem"
  defaultNetstreamDriverKeyFile="{d}/server.key"
)
module(load="imudp")
module(load="imtcp" maxSessions="200")
template(name="json" type="list") {{
  constant(value="{{\"input\":\"") property(name="inputname" format="json")
  constant(value="\",\"hostname\":\"") property(name="hostname" format="json")
  constant(value="\",\"app\":\"") property(name="app-name" format="json")
  constant(value="\",\"procid\":\"") property(name="procid" format="json")
  constant(value="\",\"msgid\":\"") property(name="msgid" format="json")
  constant(value="\",\"sd\":\"") property(name="structured-data" format="json")
  constant(value="\",\"severity\":") property(name="syslogseverity")
  constant(value=",\"facility\":") property(name="syslogfacility")
  constant(value=",\"tag\":\"") property(name="syslogtag" format="json")
  constant(value="\",\"msg\":\"") property(name="msg" format="json")
  constant(value="\",\"raw\":\"") property(name="rawmsg" format="json")
  constant(value="\"}}\n")
}}
ruleset(name="received") {{
  if $app-name == "{PROBE_APP}" then {{
    action(type="omfile" file="{d}/probe.jsonl" template="json")
    stop
  }}
  action(type="omfile" file="{d}/received.jsonl" template="json")
}}
input(type="imudp" name="udp" address="127.0.0.1" port="{udp}" ruleset="received")
input(type="imtcp" name="tcp" address="127.0.0.1" port="{tcp}" ruleset="received" maxFrameSize="2000000")
input(type="imtcp" name="tls" address="127.0.0.1" port="{tls}" ruleset="received" maxFrameSize="2000000"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
input(type="imtcp" name="mtls" address="127.0.0.1" port="{mtls}" ruleset="received" maxFrameSize="2000000"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")
{relp}action(type="omfile" file="{d}/internal.log")
"#,
            relp = if self.relp {
                format!(
                    r#"main_queue(queue.type="direct")
module(load="imrelp")
input(type="imrelp" name="relp" address="127.0.0.1" port="{relp}" ruleset="received" maxDataSize="1m")
input(type="imrelp" name="relps" address="127.0.0.1" port="{relps}" ruleset="received" maxDataSize="1m"
      tls="on" tls.caCert="{d}/ca.pem" tls.myCert="{d}/server.pem" tls.myPrivKey="{d}/server.key"
      tls.authMode="certvalid")
"#,
                    relp = self.relp_port,
                    relps = self.relps_port,
                )
            } else {
                String::new()
            },
            udp = self.udp_port,
            tcp = self.tcp_port,
            tls = self.tls_port,
            mtls = self.mtls_port,
        );
        fs::write(self.path("rsyslog.conf"), conf)?;
        Ok(())
    }

    /// Start the daemon and wait until UDP and TCP take messages and the TLS ports
    /// accept connections.
    fn spawn(&mut self) -> Result<()> {
        let child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(self.path("rsyslog.conf"))
            .arg("-i")
            .arg(self.path("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.path("stderr.log"))?)
            .spawn()
            .with_context(|| format!("spawning {RSYSLOGD}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let nonce = format!("{:?}", Instant::now());
        let probe = format!("<14>1 - - {PROBE_APP} - - - {nonce}");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "rsyslogd exited with {status} before it was ready: {}",
                    fs::read_to_string(self.path("stderr.log")).unwrap_or_default()
                );
            }
            let udp = UdpSocket::bind("127.0.0.1:0")?;
            let _ = udp.send_to(probe.as_bytes(), ("127.0.0.1", self.udp_port));
            if let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", self.tcp_port)) {
                let _ = write!(tcp, "{} {probe}", probe.len());
            }
            let tls_up = [
                self.tls_port,
                self.mtls_port,
                self.relp_port,
                self.relps_port,
            ]
            .iter()
            .filter(|&&port| port != 0)
            .all(|&port| TcpStream::connect(("127.0.0.1", port)).is_ok());
            let probes: Vec<Received> = read_lines(&self.path("probe.jsonl"));
            let seen = |input: &str| {
                probes
                    .iter()
                    .any(|p| p.input == input && p.msg.contains(&nonce))
            };
            if tls_up && seen("udp") && seen("tcp") {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                bail!(
                    "rsyslogd did not take probe messages within 20 s (tls ports up: {tls_up}); stderr: {}; internal log: {}",
                    fs::read_to_string(self.path("stderr.log")).unwrap_or_default(),
                    self.internal_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Complete JSON lines of `path` (a line still being written is left for the next poll).
fn read_lines(path: &Path) -> Vec<Received> {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("rsyslog wrote a line that is not our JSON ({e}): {line}")
            })
        })
        .collect()
}

fn free_tcp_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_udp_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate signed by
/// it, and an unrelated CA. EC P-256 keys: quick to make, accepted by gnutls and rustls.
fn make_certificates(dir: &Path) -> Result<()> {
    let ca_ext = [
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ];
    for ca in ["ca", "stranger-ca"] {
        openssl(
            dir,
            &[
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                ][..],
                &[
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                    "-days",
                    "2",
                ],
                &["-subj", &format!("/CN=logroute test {ca}")],
                &ca_ext,
            ]
            .concat(),
        )?;
    }
    for (name, usage, san) in [
        (
            "server",
            "serverAuth",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        ),
        ("client", "clientAuth", ""),
    ] {
        fs::write(
            dir.join(format!("{name}.ext")),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n{san}"
            ),
        )?;
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        )?;
    }
    Ok(())
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new(OPENSSL)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {OPENSSL}; install the openssl package"))?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
