//! HTTP for the `_bulk` endpoint: one pooled hyper client over rustls, the endpoint list
//! with failover, authentication, gzip and the request timeout.

use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::ServerName;

use super::ElasticsearchError;
use crate::route::document::{
    Compression, CredentialRef, ElasticsearchConfig, ElasticsearchCredentials,
};
use crate::route::egress::{Scheme, url_destination};
use crate::sink::egress::{EgressGuard, EgressRefused, GuardedResolver, refusal_in};
use crate::sink::{Credentials, tls};

/// One base URL of the cluster.
#[derive(Debug, Clone)]
pub struct Endpoint {
    bulk: Uri,
    /// Host, port and scheme, for the egress check.
    destination: Option<(String, u16, Scheme)>,
    /// The base URL without any `user:password@`, fit for logs and errors.
    pub display: String,
}

/// Why one attempt got no HTTP answer.
#[derive(Debug)]
pub enum AttemptError {
    Timeout,
    /// Connection, TLS or protocol failure (text for logs: no URL, no credentials).
    Transport(String),
    /// The operator's egress policy refuses every address of the endpoint.
    Egress(EgressRefused),
}

impl AttemptError {
    pub fn reason(&self) -> &'static str {
        match self {
            AttemptError::Timeout => "timeout",
            AttemptError::Transport(_) => "transport",
            AttemptError::Egress(_) => "egress_refused",
        }
    }
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Timeout => f.write_str("no answer within the request timeout"),
            AttemptError::Transport(e) => f.write_str(e),
            AttemptError::Egress(e) => write!(f, "{e}"),
        }
    }
}

/// An HTTP answer to a bulk request.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

pub struct Transport {
    client: Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>,
    egress: Option<EgressGuard>,
    endpoints: Vec<Endpoint>,
    cursor: AtomicUsize,
    auth: Option<HeaderValue>,
    gzip: bool,
    timeout: Duration,
}

impl Transport {
    /// Parse endpoints, load credentials and TLS material; opens no connection.
    /// `egress`: the route's connect-time egress check (`None`: unrestricted); every
    /// address a name resolves to passes it, and so does an address literal, before any
    /// connection is opened.
    pub fn new(
        cfg: &ElasticsearchConfig,
        credentials: &Credentials,
        egress: Option<EgressGuard>,
    ) -> Result<Self, ElasticsearchError> {
        if cfg.endpoints.is_empty() {
            return Err(ElasticsearchError::InvalidEndpoint {
                endpoint: String::new(),
                reason: "no endpoint configured".into(),
            });
        }
        let endpoints = cfg
            .endpoints
            .iter()
            .map(|e| parse_endpoint(e))
            .collect::<Result<Vec<_>, _>>()?;
        let auth = match &cfg.auth {
            None => None,
            Some(a) => Some(auth_header(a, credentials)?),
        };
        let needs_tls = endpoints
            .iter()
            .any(|e| e.bulk.scheme() == Some(&http::uri::Scheme::HTTPS));
        let tls = tls::client_config(cfg.tls.as_ref(), credentials, needs_tls)?;

        let targets = endpoints
            .iter()
            .filter_map(|e| e.destination.clone())
            .collect();
        let mut http =
            HttpConnector::new_with_resolver(GuardedResolver::new(egress.clone(), targets));
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(30)));
        http.set_connect_timeout(Some(Duration::from_millis(u64::from(
            cfg.request_timeout_ms.clamp(1, 10_000),
        ))));
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let server_name = cfg
            .tls
            .as_ref()
            .map(|t| t.server_name.as_str())
            .filter(|s| !s.is_empty());
        let connector = match server_name {
            Some(name) => {
                let name = ServerName::try_from(name.to_string()).map_err(|_| {
                    ElasticsearchError::Tls {
                        what: "serverName".into(),
                        reason: format!("{name:?} is not a valid DNS name or IP address"),
                    }
                })?;
                builder
                    .with_server_name_resolver(FixedServerNameResolver::new(name))
                    .enable_http1()
                    .wrap_connector(http)
            }
            None => builder.enable_http1().wrap_connector(http),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(cfg.max_concurrency.clamp(1, 64) as usize)
            .build(connector);
        Ok(Self {
            client,
            egress,
            endpoints,
            cursor: AtomicUsize::new(0),
            auth,
            gzip: cfg.compression == Compression::Gzip,
            timeout: Duration::from_millis(u64::from(cfg.request_timeout_ms.max(1))),
        })
    }

    /// Index of the endpoint new attempts go to.
    pub fn current(&self) -> usize {
        self.cursor.load(Ordering::Relaxed) % self.endpoints.len()
    }

    pub fn endpoint(&self, i: usize) -> &Endpoint {
        &self.endpoints[i % self.endpoints.len()]
    }

    /// Move on from endpoint `from` after it failed, unless a concurrent attempt already did.
    pub fn fail_over(&self, from: usize) {
        let n = self.endpoints.len();
        let _ = self
            .cursor
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                (c % n == from % n).then_some((from + 1) % n)
            });
    }

    /// POST one NDJSON body to `<endpoint>/_bulk`.
    pub async fn bulk(
        &self,
        endpoint: usize,
        body: Vec<u8>,
        documents: usize,
    ) -> Result<Answer, AttemptError> {
        let ep = self.endpoint(endpoint);
        // An address literal never reaches the resolver: judge it here.
        if let (Some(guard), Some((host, port, scheme))) = (&self.egress, &ep.destination) {
            if let Ok(ip) = host.parse::<std::net::IpAddr>() {
                guard
                    .check(host, std::net::SocketAddr::new(ip, *port), *scheme)
                    .map_err(AttemptError::Egress)?;
            }
        }
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(ep.bulk.clone())
            .header(CONTENT_TYPE, "application/x-ndjson")
            .header(ACCEPT, "application/json");
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let body = if self.gzip {
            req = req.header(CONTENT_ENCODING, "gzip");
            compress(body, gzip).await?
        } else {
            body
        };
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| AttemptError::Transport(format!("building the request failed: {e}")))?;
        let limit = 16 * 1024 * 1024 + documents * 1024;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| match refusal_in(&e) {
                    Some(refused) => AttemptError::Egress(refused.clone()),
                    None => AttemptError::Transport(error_chain(&e)),
                })?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), limit)
                .collect()
                .await
                .map_err(|e| AttemptError::Transport(format!("reading the response failed: {e}")))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| AttemptError::Timeout)?
    }
}

/// Bodies from this size up are compressed on a blocking thread.
///
/// gzip (level 1) compresses bulk NDJSON at a few hundred MB/s per core (measured: a
/// 5 MiB body in 17–20 ms, 64 KiB in 0.3 ms, release build). On an async worker those
/// 20 ms would run nothing else: no other sink's sends, no container's reads. Below the
/// threshold the work is small next to the hand-off to the blocking pool. How many
/// compressions run at once is bounded by the sinks' request concurrency
/// (`maxConcurrency` each).
const GZIP_INLINE_MAX: usize = 64 * 1024;

/// Compress `body` with `gzip`: in place when it is small, otherwise on the runtime's
/// blocking pool (`spawn_blocking` works on every runtime flavour, unlike
/// `block_in_place`, which panics on a current-thread runtime).
async fn compress<F>(body: Vec<u8>, gzip: F) -> Result<Vec<u8>, AttemptError>
where
    F: FnOnce(&[u8]) -> Vec<u8> + Send + 'static,
{
    if body.len() < GZIP_INLINE_MAX {
        return Ok(gzip(&body));
    }
    tokio::task::spawn_blocking(move || gzip(&body))
        .await
        .map_err(|e| AttemptError::Transport(format!("compressing the request failed: {e}")))
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(body);
    enc.finish().unwrap_or_default()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn parse_endpoint(raw: &str) -> Result<Endpoint, ElasticsearchError> {
    let invalid = |reason: &str| ElasticsearchError::InvalidEndpoint {
        endpoint: redact(raw),
        reason: reason.into(),
    };
    let uri: Uri = raw.parse().map_err(|_| invalid("not a URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(invalid("the scheme must be http or https")),
    }
    let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
    if authority.as_str().contains('@') {
        return Err(invalid(
            "credentials in the URL are not accepted; use the auth Secret",
        ));
    }
    if uri.query().is_some() {
        return Err(invalid("a query string is not accepted"));
    }
    let path = uri.path().trim_end_matches('/');
    let bulk = format!(
        "{}://{}{}/_bulk",
        uri.scheme_str().unwrap_or("http"),
        authority,
        path
    )
    .parse()
    .map_err(|_| invalid("not a URL"))?;
    Ok(Endpoint {
        bulk,
        destination: url_destination(raw),
        display: format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("http"),
            authority,
            path
        ),
    })
}

/// A URL for messages: anything between `://` and `@` is replaced.
fn redact(raw: &str) -> String {
    match (raw.find("://"), raw.rfind('@')) {
        (Some(s), Some(a)) if a > s => format!("{}://***@{}", &raw[..s], &raw[a + 1..]),
        _ => raw.to_string(),
    }
}

fn credential<'a>(
    credentials: &'a Credentials,
    r: &CredentialRef,
) -> Result<&'a [u8], ElasticsearchError> {
    credentials
        .get(&r.key)
        .map(Vec::as_slice)
        .ok_or_else(|| ElasticsearchError::MissingCredential { key: r.key.clone() })
}

/// A Secret value written with `echo` or from a file often ends with a newline: drop one.
fn strip_newline(v: &[u8]) -> &[u8] {
    let v = v.strip_suffix(b"\n").unwrap_or(v);
    v.strip_suffix(b"\r").unwrap_or(v)
}

fn auth_header(
    auth: &ElasticsearchCredentials,
    credentials: &Credentials,
) -> Result<HeaderValue, ElasticsearchError> {
    let (value, key) = match auth {
        ElasticsearchCredentials::Basic { username, password } => {
            let mut pair = strip_newline(credential(credentials, username)?).to_vec();
            pair.push(b':');
            pair.extend_from_slice(strip_newline(credential(credentials, password)?));
            let encoded = base64::engine::general_purpose::STANDARD.encode(&pair);
            (format!("Basic {encoded}").into_bytes(), &username.key)
        }
        ElasticsearchCredentials::ApiKey { key } => {
            let raw = credential(credentials, key)?;
            let trimmed = raw.trim_ascii();
            let mut v = b"ApiKey ".to_vec();
            v.extend_from_slice(trimmed);
            (v, &key.key)
        }
    };
    let mut header = HeaderValue::from_bytes(&value)
        .map_err(|_| ElasticsearchError::InvalidCredential { key: key.clone() })?;
    header.set_sensitive(true);
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::document::{IndexTarget, TlsSettings};

    fn gunzip(b: &[u8]) -> Vec<u8> {
        use std::io::Read as _;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(b)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    /// On a current-thread runtime (one thread for every task), a large body's
    /// compression waits for a message that the test task only sends while the
    /// compression is in progress: compressing on the runtime's thread could never see
    /// it.
    #[tokio::test(flavor = "current_thread")]
    async fn large_bodies_are_compressed_off_the_runtime_thread() {
        let body: Vec<u8> = (0..GZIP_INLINE_MAX + 1).map(|i| (i % 251) as u8).collect();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let was_released = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = was_released.clone();
        let compressing = tokio::spawn(compress(body.clone(), move |b| {
            let _ = started_tx.send(());
            // Bounded so that a failing test ends.
            let ok = released.recv_timeout(Duration::from_secs(30)).is_ok();
            flag.store(ok, Ordering::SeqCst);
            gzip(b)
        }));
        started.await.expect("compression started");
        let _ = release.send(());
        let compressed = compressing.await.expect("task").expect("compressed");
        assert!(
            was_released.load(Ordering::SeqCst),
            "the compression blocked the runtime's only thread"
        );
        assert_eq!(gunzip(&compressed), body);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn small_bodies_are_compressed_in_place() {
        let body = b"{\"create\":{}}\n{\"message\":\"hi\"}\n".to_vec();
        let here = std::thread::current().id();
        let compressed = compress(body.clone(), move |b| {
            assert_eq!(std::thread::current().id(), here, "moved to another thread");
            gzip(b)
        })
        .await
        .expect("compressed");
        assert_eq!(gunzip(&compressed), body);
    }

    #[test]
    fn endpoints_keep_their_path_prefix() {
        let e = parse_endpoint("https://es.example:9200/proxy/").unwrap();
        assert_eq!(e.bulk.to_string(), "https://es.example:9200/proxy/_bulk");
        assert_eq!(e.display, "https://es.example:9200/proxy");
        assert_eq!(
            parse_endpoint("http://127.0.0.1:9200")
                .unwrap()
                .bulk
                .to_string(),
            "http://127.0.0.1:9200/_bulk"
        );
    }

    #[test]
    fn credentials_in_urls_are_refused_and_never_echoed() {
        let err = parse_endpoint("https://elastic:hunter2@es:9200")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("auth Secret"), "{err}");
        assert!(parse_endpoint("ftp://es").is_err());
    }

    #[test]
    fn basic_and_api_key_headers() {
        let creds: Credentials = [
            ("u".to_string(), b"elastic\n".to_vec()),
            ("p".to_string(), b"pa:ss".to_vec()),
            ("k".to_string(), b" abc==\n".to_vec()),
        ]
        .into();
        let key = |k: &str| CredentialRef { key: k.into() };
        let basic = ElasticsearchCredentials::Basic {
            username: key("u"),
            password: key("p"),
        };
        assert_eq!(
            auth_header(&basic, &creds).unwrap(),
            "Basic ZWxhc3RpYzpwYTpzcw=="
        );
        let api = ElasticsearchCredentials::ApiKey { key: key("k") };
        let h = auth_header(&api, &creds).unwrap();
        assert_eq!(h, "ApiKey abc==");
        assert!(h.is_sensitive());
        let missing = ElasticsearchCredentials::ApiKey { key: key("nope") };
        assert!(matches!(
            auth_header(&missing, &creds),
            Err(ElasticsearchError::MissingCredential { .. })
        ));
    }

    #[test]
    fn a_ca_without_certificates_is_an_error() {
        let creds: Credentials = [("ca".to_string(), b"not pem".to_vec())].into();
        let tls = TlsSettings {
            ca: Some(CredentialRef { key: "ca".into() }),
            ..Default::default()
        };
        let cfg = ElasticsearchConfig {
            endpoints: vec!["https://127.0.0.1:9200".into()],
            target: IndexTarget::Index("logs".into()),
            auth: None,
            tls: Some(tls),
            max_events: 1000,
            max_bytes: 5 << 20,
            timeout_ms: 1000,
            compression: Compression::None,
            request_timeout_ms: 1000,
            max_concurrency: 1,
            egress: None,
        };
        let err = Transport::new(&cfg, &creds, None).err().expect("error");
        assert!(err.to_string().contains("no CERTIFICATE block"), "{err}");
        assert_eq!(err.reason(), "tls_config");
    }
}
