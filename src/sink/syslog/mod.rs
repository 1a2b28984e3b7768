//! Syslog sink: RFC 5424 / RFC 3164 over UDP, TCP or TLS (RFC 6587 framing).

use std::sync::Arc;

use super::{SendFailure, SinkContext};
use crate::record::Record;
use crate::route::document::SyslogConfig;

#[derive(Debug, thiserror::Error)]
pub enum SyslogError {
    #[error("syslog sink is not built yet")]
    Unimplemented,
}

impl SyslogError {
    pub fn reason(&self) -> &'static str {
        "unimplemented"
    }
}

pub struct SyslogSink {
    _cfg: SyslogConfig,
    _ctx: SinkContext,
}

impl SyslogSink {
    pub fn new(cfg: SyslogConfig, ctx: SinkContext) -> Result<Self, SyslogError> {
        Ok(Self {
            _cfg: cfg,
            _ctx: ctx,
        })
    }

    pub async fn send(&mut self, _batch: &[Arc<Record>]) -> Result<(), SendFailure> {
        Err(SendFailure {
            accepted: 0,
            error: SyslogError::Unimplemented.into(),
        })
    }
}
