//! Shared harness for integration tests: real dockerd, rsyslog, bulk servers, an API server.
//!
//! Each test binary uses part of it, so unused items are expected.
#![allow(dead_code)]

pub mod agent_proc;
pub mod apiserver;
pub mod bulk;
pub mod cluster;
pub mod containerd;
pub mod controller_proc;
pub mod docker;
pub mod dockerd;
pub mod env;
pub mod fake_agent;
pub mod nginx;
pub mod osmem;
pub mod printer;
pub mod promtool;
pub mod routes;
pub mod rsyslog;
pub mod sequence;
pub mod suspend;
