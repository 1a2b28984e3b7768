//! Elasticsearch sink: `_bulk` delivery with per-item handling.

use std::sync::Arc;

use super::{SendFailure, SinkContext};
use crate::record::Record;
use crate::route::document::ElasticsearchConfig;

#[derive(Debug, thiserror::Error)]
pub enum ElasticsearchError {
    #[error("elasticsearch sink is not built yet")]
    Unimplemented,
}

impl ElasticsearchError {
    pub fn reason(&self) -> &'static str {
        "unimplemented"
    }
}

pub struct ElasticsearchSink {
    _cfg: ElasticsearchConfig,
    _ctx: SinkContext,
}

impl ElasticsearchSink {
    pub fn new(cfg: ElasticsearchConfig, ctx: SinkContext) -> Result<Self, ElasticsearchError> {
        Ok(Self {
            _cfg: cfg,
            _ctx: ctx,
        })
    }

    pub async fn send(&mut self, _batch: &[Arc<Record>]) -> Result<(), SendFailure> {
        Err(SendFailure {
            accepted: 0,
            error: ElasticsearchError::Unimplemented.into(),
        })
    }
}
