//! The TLS target of a syslog sink: the shared client configuration
//! ([`crate::sink::tls`]) and the server name to verify, built once per sink.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use super::SyslogError;
use crate::route::document::TlsSettings;
use crate::sink::{Credentials, tls};

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
    let server_name = tls::server_name(Some(settings), default_name)
        .map_err(|name| SyslogError::ServerName { name })?;
    let config = tls::client_config(Some(settings), creds, true)?;
    Ok(TlsTarget {
        config: Arc::new(config),
        server_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_server_name_is_a_configuration_error() {
        let s = TlsSettings {
            insecure_skip_verify: true,
            ..TlsSettings::default()
        };
        let err = client(&s, &Credentials::new(), "bad name!")
            .err()
            .expect("error");
        assert!(matches!(err, SyslogError::ServerName { .. }), "{err}");
        assert_eq!(err.reason(), "config");
        let target = client(&s, &Credentials::new(), "127.0.0.1").expect("valid");
        assert!(matches!(target.server_name, ServerName::IpAddress(_)));
    }
}
