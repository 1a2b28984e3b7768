//! Debian's nginx as a TLS-terminating, authenticating proxy in front of a test server,
//! standing in for Elasticsearch security: Basic auth (htpasswd made with
//! `openssl passwd -apr1`), API keys (`Authorization: ApiKey <key>`) or client
//! certificates, with an Elasticsearch-style 401 JSON body. Certificates come from a
//! throwaway CA the harness makes with openssl; everything lives in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::env;

/// How the proxy authenticates clients.
#[derive(Clone, Debug)]
pub enum ProxyAuth {
    Basic {
        user: String,
        password: String,
    },
    ApiKey(String),
    /// Require a client certificate signed by the harness CA ([`Pki::client_cert`]).
    ClientCert,
}

/// A throwaway CA with a server certificate for `localhost` / `127.0.0.1` and a client
/// certificate, all PEM.
pub struct Pki {
    pub ca_pem: Vec<u8>,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub ca_path: PathBuf,
    pub client_cert: Vec<u8>,
    pub client_key: Vec<u8>,
}

fn run(cmd: &mut Command, what: &str) -> Vec<u8> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn which(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(PathBuf::from)
        .chain(extra.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl Pki {
    /// Make a CA, a server and a client certificate in `dir`; `None` when openssl is missing.
    pub fn generate(dir: &Path) -> Option<Self> {
        let Some(openssl) = which("openssl", &[]) else {
            env::missing("openssl", "apt-get install -y openssl");
            return None;
        };
        let p = |f: &str| dir.join(f);
        let ossl = || {
            let mut c = Command::new(&openssl);
            c.current_dir(dir);
            c
        };
        run(
            ossl()
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                ])
                .args([
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=logroute test CA",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ]),
            "openssl: making the test CA",
        );
        let leaf = |name: &str, cn: &str, ext: &str| {
            std::fs::write(p(&format!("{name}.ext")), ext).expect("write extension file");
            run(
                ossl()
                    .args([
                        "req",
                        "-newkey",
                        "ec",
                        "-pkeyopt",
                        "ec_paramgen_curve:P-256",
                        "-nodes",
                    ])
                    .args([
                        "-keyout",
                        &format!("{name}.key"),
                        "-out",
                        &format!("{name}.csr"),
                        "-subj",
                        &format!("/CN={cn}"),
                    ]),
                "openssl: making a key and CSR",
            );
            run(
                ossl()
                    .args([
                        "x509",
                        "-req",
                        "-in",
                        &format!("{name}.csr"),
                        "-CA",
                        "ca.pem",
                        "-CAkey",
                        "ca.key",
                    ])
                    .args([
                        "-CAcreateserial",
                        "-out",
                        &format!("{name}.pem"),
                        "-days",
                        "2",
                        "-extfile",
                        &format!("{name}.ext"),
                    ]),
                "openssl: signing a certificate",
            );
        };
        leaf(
            "server",
            "localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        );
        leaf(
            "client",
            "logroute-agent",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
        );
        let read = |f: &str| std::fs::read(p(f)).unwrap_or_else(|e| panic!("reading {f}: {e}"));
        Some(Self {
            ca_pem: read("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            ca_path: p("ca.pem"),
            client_cert: read("client.pem"),
            client_key: read("client.key"),
        })
    }
}

pub struct Nginx {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    pub pki: Pki,
    child: Child,
    dir: tempfile::TempDir,
}

const UNAUTHORIZED: &str = r#"{"error":{"root_cause":[{"type":"security_exception","reason":"unable to authenticate user for REST request [/_bulk]"}],"type":"security_exception","reason":"unable to authenticate user for REST request [/_bulk]"},"status":401}"#;

impl Nginx {
    /// Start nginx with TLS and `auth` in front of `upstream` (`host:port`); `None`
    /// outside CI when nginx or openssl is missing.
    pub async fn start(upstream: &str, auth: ProxyAuth) -> Option<Self> {
        let Some(nginx) = which("nginx", &["/usr/sbin", "/sbin"]) else {
            env::missing("nginx", "apt-get install -y nginx");
            return None;
        };
        let dir = tempfile::tempdir().expect("temporary directory");
        let pki = Pki::generate(dir.path())?;
        let d = dir.path().display().to_string();
        let access = match &auth {
            ProxyAuth::Basic { user, password } => {
                let hash = run(
                    Command::new(which("openssl", &[]).expect("openssl was found above"))
                        .args(["passwd", "-apr1", password]),
                    "openssl passwd -apr1",
                );
                let line = format!("{user}:{}\n", String::from_utf8_lossy(&hash).trim());
                std::fs::write(dir.path().join("htpasswd"), line).expect("write htpasswd");
                format!("auth_basic \"security\";\n auth_basic_user_file {d}/htpasswd;")
            }
            ProxyAuth::ApiKey(key) => {
                format!("if ($http_authorization != \"ApiKey {key}\") {{ return 401; }}")
            }
            ProxyAuth::ClientCert => String::new(),
        };
        let client_cert = match auth {
            ProxyAuth::ClientCert => {
                format!("ssl_verify_client on;\n ssl_client_certificate {d}/ca.pem;")
            }
            _ => String::new(),
        };
        let mut last_error = String::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let conf = format!(
                r#"user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
 access_log {d}/access.log;
 client_body_temp_path {d}/client_body;
 proxy_temp_path {d}/proxy;
 fastcgi_temp_path {d}/fastcgi;
 uwsgi_temp_path {d}/uwsgi;
 scgi_temp_path {d}/scgi;
 client_max_body_size 200m;
 upstream search {{ server {upstream}; keepalive 8; }}
 server {{
  listen 127.0.0.1:{port} ssl;
  ssl_certificate {cert};
  ssl_certificate_key {key};
  {client_cert}
  default_type application/json;
  error_page 401 @unauthorized;
  location @unauthorized {{
   add_header WWW-Authenticate 'Basic realm="security" charset="UTF-8"' always;
   return 401 '{UNAUTHORIZED}';
  }}
  location / {{
   {access}
   proxy_pass http://search;
   proxy_http_version 1.1;
   proxy_set_header Connection "";
   proxy_set_header Authorization "";
   proxy_request_buffering off;
  }}
 }}
}}
"#,
                cert = pki.server_cert.display(),
                key = pki.server_key.display(),
            );
            std::fs::write(dir.path().join("nginx.conf"), conf).expect("write nginx.conf");
            let mut child = Command::new(&nginx)
                .args([
                    "-p",
                    &d,
                    "-c",
                    &format!("{d}/nginx.conf"),
                    "-e",
                    &format!("{d}/error.log"),
                    "-g",
                    "daemon off;",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("starting nginx failed: {e}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    let mut stderr = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
                    }
                    last_error = format!("nginx exited with {status}: {stderr}");
                    break;
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return Some(Self {
                        url: format!("https://127.0.0.1:{port}"),
                        pki,
                        child,
                        dir,
                    });
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("nginx did not listen on 127.0.0.1:{port} within 10 s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !last_error.contains("Address already in use") {
                break;
            }
        }
        panic!("nginx did not start: {last_error}");
    }

    /// nginx's error log so far, for failure messages.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master (by its pid) stops its workers too; SIGKILL would orphan them.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
