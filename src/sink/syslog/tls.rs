//! The rustls client configuration of a TLS syslog sink, built once per sink.
//!
//! Trust: the CA from `tls.caSecretRef` when set (and then only that CA), otherwise the
//! system trust store (`rustls-native-certs`, which honours `SSL_CERT_FILE` /
//! `SSL_CERT_DIR`). An agent image without a trust store therefore needs a CA reference
//! or those variables. `insecureSkipVerify` installs a verifier that accepts any
//! certificate (handshake signatures are still checked); it exists for tests only.

use std::io::BufReader;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::SyslogError;
use crate::route::document::{CredentialRef, TlsSettings};
use crate::sink::Credentials;

/// What a TLS connection needs: the client configuration and the name to verify.
#[derive(Clone)]
pub struct TlsTarget {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// Build the TLS client for `settings`; `default_name` (the receiver's host) is checked
/// against the certificate when `serverName` is empty.
pub fn client(
    settings: &TlsSettings,
    creds: &Credentials,
    default_name: &str,
) -> Result<TlsTarget, SyslogError> {
    let name = if settings.server_name.is_empty() {
        default_name
    } else {
        settings.server_name.as_str()
    };
    let server_name =
        ServerName::try_from(name.to_string()).map_err(|_| SyslogError::ServerName {
            name: name.to_string(),
        })?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(SyslogError::TlsConfig)?;
    let builder = if settings.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(
                provider.signature_verification_algorithms,
            )))
    } else {
        builder.with_root_certificates(roots(settings.ca.as_ref(), creds)?)
    };
    let config = match (&settings.client_cert, &settings.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = certificates(cert, creds, "client certificate")?;
            let key = private_key(key, creds)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(SyslogError::TlsConfig)?
        }
        _ => return Err(SyslogError::ClientCertWithoutKey),
    };
    Ok(TlsTarget {
        config: Arc::new(config),
        server_name,
    })
}

fn roots(ca: Option<&CredentialRef>, creds: &Credentials) -> Result<RootCertStore, SyslogError> {
    let mut store = RootCertStore::empty();
    match ca {
        Some(ca) => {
            for cert in certificates(ca, creds, "CA certificate")? {
                store.add(cert).map_err(|e| SyslogError::Pem {
                    what: "CA certificate",
                    key: ca.key.clone(),
                    detail: e.to_string(),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let detail = match found.errors.first() {
                    Some(e) => e.to_string(),
                    None => "the store is empty".to_string(),
                };
                return Err(SyslogError::NoSystemRoots { detail });
            }
        }
    }
    Ok(store)
}

fn credential<'a>(r: &CredentialRef, creds: &'a Credentials) -> Result<&'a [u8], SyslogError> {
    creds
        .get(&r.key)
        .map(Vec::as_slice)
        .ok_or_else(|| SyslogError::Credential { key: r.key.clone() })
}

fn certificates(
    r: &CredentialRef,
    creds: &Credentials,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, SyslogError> {
    let pem = credential(r, creds)?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(pem))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SyslogError::Pem {
            what,
            key: r.key.clone(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(SyslogError::Pem {
            what,
            key: r.key.clone(),
            detail: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

fn private_key(
    r: &CredentialRef,
    creds: &Credentials,
) -> Result<PrivateKeyDer<'static>, SyslogError> {
    let what = "client key";
    let pem = credential(r, creds)?;
    match rustls_pemfile::private_key(&mut BufReader::new(pem)) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(SyslogError::Pem {
            what,
            key: r.key.clone(),
            detail: "no PRIVATE KEY block found".into(),
        }),
        Err(e) => Err(SyslogError::Pem {
            what,
            key: r.key.clone(),
            detail: e.to_string(),
        }),
    }
}

/// `insecureSkipVerify`: any certificate is accepted, for any name. Only installed when
/// a user asked for it in so many words.
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

    fn settings() -> TlsSettings {
        TlsSettings {
            server_name: "syslog.example".into(),
            ..TlsSettings::default()
        }
    }

    #[test]
    fn missing_credential_names_the_key() {
        let mut s = settings();
        s.ca = Some(CredentialRef {
            key: "central-ca".into(),
        });
        let err = client(&s, &Credentials::new(), "h").err().expect("error");
        assert!(matches!(err, SyslogError::Credential { .. }), "{err}");
        assert!(err.to_string().contains("central-ca"), "{err}");
    }

    #[test]
    fn garbage_ca_is_refused() {
        let mut s = settings();
        s.ca = Some(CredentialRef { key: "ca".into() });
        let creds = Credentials::from([("ca".to_string(), b"not a certificate".to_vec())]);
        let err = client(&s, &creds, "h").err().expect("error");
        assert!(err.to_string().contains("no CERTIFICATE block"), "{err}");
    }

    #[test]
    fn client_cert_needs_its_key() {
        let mut s = settings();
        s.insecure_skip_verify = true;
        s.client_cert = Some(CredentialRef {
            key: "tls.crt".into(),
        });
        let err = client(&s, &Credentials::new(), "h").err().expect("error");
        assert!(matches!(err, SyslogError::ClientCertWithoutKey), "{err}");
    }

    #[test]
    fn server_name_defaults_to_host_and_accepts_ips() {
        let mut s = settings();
        s.insecure_skip_verify = true;
        s.server_name.clear();
        let target = client(&s, &Credentials::new(), "127.0.0.1").expect("valid");
        assert!(matches!(target.server_name, ServerName::IpAddress(_)));
        let err = client(&s, &Credentials::new(), "bad name!")
            .err()
            .expect("error");
        assert!(matches!(err, SyslogError::ServerName { .. }), "{err}");
    }
}
