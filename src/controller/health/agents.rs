//! The agents to poll: pods with the agent's labels in the operator namespace only
//! (least privilege), each with the node it runs on and where its report is served.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;

use crate::agent::health::{NodeReport, REPORT_PATH};

/// Largest report read; a bigger one is refused (a route table of thousands of routes
/// fits many times over).
const REPORT_MAX_BYTES: usize = 8 << 20;

/// One agent pod to poll.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Agent {
    /// The node the pod is scheduled on: its report is attributed to this node, whatever
    /// the report says.
    pub node: String,
    pub pod: String,
    /// `http://ip:port/routes`.
    pub url: String,
}

/// The agent behind `pod`, when it runs and has an address: the port is the container
/// port named `metrics`, else `default_port`.
pub fn agent_of(pod: &Pod, default_port: u16) -> Option<Agent> {
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") || pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let node = spec.node_name.clone()?;
    let ip = status.pod_ip.clone()?;
    let port = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("metrics"))
        .map_or(i32::from(default_port), |p| p.container_port);
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip
    };
    Some(Agent {
        node,
        pod: pod.metadata.name.clone().unwrap_or_default(),
        url: format!("http://{host}:{port}{REPORT_PATH}"),
    })
}

/// Why a poll failed (a bounded metric label).
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("request to {url} failed: {message}")]
    Request { url: String, message: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url} sent a report that does not parse: {message}")]
    Parse { url: String, message: String },
}

impl PollError {
    pub fn reason(&self) -> &'static str {
        match self {
            PollError::Request { .. } => "request",
            PollError::Status { .. } => "status",
            PollError::Timeout { .. } => "timeout",
            PollError::Parse { .. } => "parse",
        }
    }
}

/// Plain HTTP client for agent reports (pod network, inside the cluster).
pub type Client = HttpClient<HttpConnector, Empty<Bytes>>;

pub fn client() -> Client {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    HttpClient::builder(TokioExecutor::new()).build(connector)
}

/// GET one agent's report.
pub async fn poll(client: &Client, url: &str, timeout: Duration) -> Result<NodeReport, PollError> {
    let fetch = async {
        let uri: http::Uri =
            url.parse()
                .map_err(|e: http::uri::InvalidUri| PollError::Request {
                    url: url.to_string(),
                    message: e.to_string(),
                })?;
        let response = client.get(uri).await.map_err(|e| PollError::Request {
            url: url.to_string(),
            message: e.to_string(),
        })?;
        if !response.status().is_success() {
            return Err(PollError::Status {
                url: url.to_string(),
                status: response.status().as_u16(),
            });
        }
        let body = Limited::new(response.into_body(), REPORT_MAX_BYTES)
            .collect()
            .await
            .map_err(|e| PollError::Request {
                url: url.to_string(),
                message: e.to_string(),
            })?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| PollError::Parse {
            url: url.to_string(),
            message: e.to_string(),
        })
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .unwrap_or_else(|_| {
            Err(PollError::Timeout {
                url: url.to_string(),
                timeout,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_agent_of_a_running_pod_is_on_its_node_at_its_metrics_port() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "agent-x"},
            "spec": {"nodeName": "n1", "containers": [{"name": "agent",
                "ports": [{"name": "metrics", "containerPort": 9191}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.7"}
        }))
        .unwrap();
        let a = agent_of(&pod, 9091).expect("an agent");
        assert_eq!(a.node, "n1");
        assert_eq!(a.url, "http://10.0.0.7:9191/routes");
        let mut pending = pod.clone();
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        assert_eq!(agent_of(&pending, 9091), None);
        let mut v6 = pod;
        v6.status.as_mut().unwrap().pod_ip = Some("fd00::7".into());
        v6.spec.as_mut().unwrap().containers[0].ports = None;
        assert_eq!(
            agent_of(&v6, 9091).unwrap().url,
            "http://[fd00::7]:9091/routes"
        );
    }
}
