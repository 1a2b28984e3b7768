#![deny(unsafe_code)] // one exception: mapping the checkpoint file (agent::checkpoint::map)
//! logroute: Kubernetes-native container log routing.
//!
//! The controller compiles `LogRoute` resources into route documents; the agent on each
//! node reads container logs from Docker, enriches them with pod metadata and forwards
//! them to the sinks the routes name.

pub mod agent;
pub mod api;
pub mod check;
pub mod controller;
pub mod http;
pub mod metrics;
pub mod permissions;
pub mod record;
pub mod route;
pub mod sink;
