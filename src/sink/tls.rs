//! The rustls client configuration shared by the TLS-capable sinks (syslog over TLS,
//! Elasticsearch over https), built once per sink from the route's `tls` settings and
//! its resolved credentials.
//!
//! Trust: the CA from `tls.caSecretRef` when set (and then only that CA), otherwise the
//! system trust store (`rustls-native-certs`, which honours `SSL_CERT_FILE` /
//! `SSL_CERT_DIR`; the image ships Debian's CA bundle). `insecureSkipVerify` installs a
//! verifier that accepts any certificate for any name — handshake signatures are still
//! checked — and is only ever installed when a route asks for it in so many words.
//! A client certificate needs both `clientCert` and `clientKey`.

use std::io::BufReader;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::Credentials;
use crate::route::document::{CredentialRef, TlsSettings};

/// Why a sink's TLS client cannot be built. Messages name credential keys, never values.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "TLS credential `{key}` is missing from the route's credentials; check the referenced Secret and key"
    )]
    Credential { key: String },
    #[error("{what} in credential `{key}` cannot be used: {detail}")]
    Pem {
        what: &'static str,
        key: String,
        detail: String,
    },
    #[error("mutual TLS needs both a client certificate and its key, but only one is set")]
    ClientCertWithoutKey,
    #[error(
        "no usable CA certificate in the system trust store ({detail}); set tls.caSecretRef to the server's CA"
    )]
    NoSystemRoots { detail: String },
    #[error("TLS client configuration failed: {0}")]
    Config(rustls::Error),
}

/// Build the client configuration. `settings` is the route's `tls` block, if any;
/// `system_roots` says whether the system trust store is needed when no CA is given
/// (an Elasticsearch sink with only http endpoints never reads it).
pub fn client_config(
    settings: Option<&TlsSettings>,
    creds: &Credentials,
    system_roots: bool,
) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?;
    let insecure = settings.is_some_and(|s| s.insecure_skip_verify);
    let builder = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(
                provider.signature_verification_algorithms,
            )))
    } else {
        let ca = settings.and_then(|s| s.ca.as_ref());
        let roots = match ca {
            Some(ca) => ca_roots(ca, creds)?,
            None if system_roots => native_roots()?,
            None => RootCertStore::empty(),
        };
        builder.with_root_certificates(roots)
    };
    let client = settings.map(|s| (&s.client_cert, &s.client_key));
    match client {
        None | Some((None, None)) => Ok(builder.with_no_client_auth()),
        Some((Some(cert), Some(key))) => {
            let chain = certificates(cert, creds, "client certificate")?;
            let key = private_key(key, creds)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(TlsError::Config)
        }
        Some(_) => Err(TlsError::ClientCertWithoutKey),
    }
}

/// The server name to verify: `tls.serverName` when set, else `default` (the host the
/// sink connects to). `None` when that is neither a DNS name nor an IP address.
pub fn server_name(
    settings: Option<&TlsSettings>,
    default: &str,
) -> Result<ServerName<'static>, String> {
    let name = match settings.map(|s| s.server_name.as_str()) {
        Some(n) if !n.is_empty() => n,
        _ => default,
    };
    ServerName::try_from(name.to_string()).map_err(|_| name.to_string())
}

fn ca_roots(ca: &CredentialRef, creds: &Credentials) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(ca, creds, "CA certificate")? {
        store.add(cert).map_err(|e| TlsError::Pem {
            what: "CA certificate",
            key: ca.key.clone(),
            detail: e.to_string(),
        })?;
    }
    Ok(store)
}

fn native_roots() -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _ignored) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let detail = match found.errors.first() {
            Some(e) => e.to_string(),
            None => "the store is empty".to_string(),
        };
        return Err(TlsError::NoSystemRoots { detail });
    }
    Ok(store)
}

fn credential<'a>(r: &CredentialRef, creds: &'a Credentials) -> Result<&'a [u8], TlsError> {
    creds
        .get(&r.key)
        .map(Vec::as_slice)
        .ok_or_else(|| TlsError::Credential { key: r.key.clone() })
}

fn certificates(
    r: &CredentialRef,
    creds: &Credentials,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = credential(r, creds)?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(pem))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            key: r.key.clone(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            key: r.key.clone(),
            detail: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

fn private_key(r: &CredentialRef, creds: &Credentials) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "client key";
    let pem = credential(r, creds)?;
    let pem_error = |detail: String| TlsError::Pem {
        what,
        key: r.key.clone(),
        detail,
    };
    match rustls_pemfile::private_key(&mut BufReader::new(pem)) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(pem_error("no PRIVATE KEY block found".into())),
        Err(e) => Err(pem_error(e.to_string())),
    }
}

/// `insecureSkipVerify`: any certificate is accepted, for any name.
#[derive(Debug)]
struct AcceptAnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ca(key: &str) -> TlsSettings {
        TlsSettings {
            ca: Some(CredentialRef { key: key.into() }),
            ..TlsSettings::default()
        }
    }

    #[test]
    fn missing_credential_names_the_key() {
        let err = client_config(Some(&with_ca("central-ca")), &Credentials::new(), true)
            .expect_err("error");
        assert!(matches!(err, TlsError::Credential { .. }), "{err}");
        assert!(err.to_string().contains("central-ca"), "{err}");
    }

    #[test]
    fn garbage_ca_is_refused() {
        let creds = Credentials::from([("ca".to_string(), b"not a certificate".to_vec())]);
        let err = client_config(Some(&with_ca("ca")), &creds, true).expect_err("error");
        assert!(err.to_string().contains("no CERTIFICATE block"), "{err}");
    }

    #[test]
    fn client_cert_needs_its_key() {
        let s = TlsSettings {
            insecure_skip_verify: true,
            client_cert: Some(CredentialRef {
                key: "tls.crt".into(),
            }),
            ..TlsSettings::default()
        };
        let err = client_config(Some(&s), &Credentials::new(), true).expect_err("error");
        assert!(matches!(err, TlsError::ClientCertWithoutKey), "{err}");
    }

    #[test]
    fn plain_http_needs_no_trust_store() {
        assert!(client_config(None, &Credentials::new(), false).is_ok());
    }

    #[test]
    fn server_name_defaults_to_the_host_and_accepts_ips() {
        let ip = server_name(None, "127.0.0.1").expect("valid");
        assert!(matches!(ip, ServerName::IpAddress(_)));
        let named = TlsSettings {
            server_name: "syslog.example".into(),
            ..TlsSettings::default()
        };
        let dns = server_name(Some(&named), "127.0.0.1").expect("valid");
        assert!(matches!(dns, ServerName::DnsName(_)));
        assert_eq!(
            server_name(None, "bad name!").err().as_deref(),
            Some("bad name!")
        );
    }
}
