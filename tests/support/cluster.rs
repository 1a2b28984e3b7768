//! A cluster for agent tests: the test API server, real dockerd and rsyslog, a tenant
//! namespace, and this node's pods as API objects plus Docker containers labelled as
//! cri-dockerd would. Routes are compiled with the controller's own functions from the
//! LogRoute the server stored (its uid, generation and creationTimestamp), so the
//! ConfigMaps and Secrets the agent reads are the ones the controller would write.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bollard::Docker;
use logroute::api::LogRoute;
use logroute::controller::objects::{self, Source};
use logroute::route::{CompileEnv, compile, compiled_object_name};
use serde_json::{Value, json};

use super::agent_proc::{AgentProc, NODE};
use super::apiserver::ApiServer;
use super::docker::{Spec, TestContainer, docker, pod_labels, pod_uid};
use super::rsyslog::Rsyslog;

/// The operator namespace the agent reads compiled routes from.
pub const OPERATOR_NS: &str = "logroute-system";

pub struct Cluster {
    pub api: ApiServer,
    pub rsyslog: Rsyslog,
    pub docker: Docker,
    /// The tenant namespace of this test's LogRoutes and pods (unique per process).
    pub ns: String,
    pub kubeconfig: PathBuf,
    pub dir: tempfile::TempDir,
}

/// A pod of this node: its API object is in the server; its containers run in Docker.
#[derive(Clone, Debug)]
pub struct PodId {
    pub name: String,
    pub uid: String,
}

impl Cluster {
    /// `None` outside CI when Docker or rsyslog is missing (in CI they fail).
    pub async fn start(test: &str) -> Option<Cluster> {
        let docker = docker().await?;
        let rsyslog = Rsyslog::start_or_skip()?;
        let api = ApiServer::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        let ns = format!("{test}-{}", std::process::id());
        for name in [OPERATOR_NS, ns.as_str()] {
            api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}));
        }
        Some(Cluster {
            api,
            rsyslog,
            docker,
            ns,
            kubeconfig,
            dir,
        })
    }

    /// A cluster-mode agent on this cluster (its state in `<dir>/agent`), serving
    /// `/healthz`; not necessarily ready.
    pub fn agent(&self, env: &[(&str, &str)]) -> AgentProc {
        let dir = self.dir.path().join("agent");
        std::fs::create_dir_all(&dir).expect("agent dir");
        AgentProc::start_cluster(&dir, &self.kubeconfig, OPERATOR_NS, env)
    }

    /// Replace `{tcp}`, `{udp}`, `{tls}` in a LogRoute spec with rsyslog's ports.
    pub fn render(&self, spec: &str) -> Value {
        let text = spec
            .replace("{tcp}", &self.rsyslog.tcp_port.to_string())
            .replace("{udp}", &self.rsyslog.udp_port.to_string())
            .replace("{tls}", &self.rsyslog.tls_port.to_string());
        serde_yaml::from_str(&text).expect("LogRoute spec is YAML")
    }

    /// Create or update the LogRoute `name` of the tenant namespace (spec as YAML, see
    /// [`Cluster::render`]); returns it as the server stored it.
    pub fn route(&self, name: &str, spec: &str) -> Value {
        self.api.apply(json!({
            "apiVersion": "logroute.dev/v1alpha1", "kind": "LogRoute",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": self.render(spec),
        }))
    }

    /// Compile the stored LogRoute `name` as the controller does and write its compiled
    /// objects: the credentials Secret first (when there is one), then the ConfigMap.
    pub fn publish(&self, name: &str) {
        let stored = self
            .api
            .get("logroute.dev/v1alpha1", "LogRoute", &self.ns, name)
            .unwrap_or_else(|| panic!("LogRoute {}/{name} not in the server", self.ns));
        let route: LogRoute = serde_json::from_value(stored).expect("stored LogRoute reads");
        let namespaces: Vec<(String, BTreeMap<String, String>)> = self
            .api
            .list("v1", "Namespace", None)
            .iter()
            .map(|n| {
                let labels =
                    serde_json::from_value(n["metadata"]["labels"].clone()).unwrap_or_default();
                (
                    n["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    labels,
                )
            })
            .collect();
        let lookup = |ns: &str, name: &str| self.secret_data(ns, name);
        let env = CompileEnv {
            operator_namespace: OPERATOR_NS,
            namespaces: Some(&namespaces),
            secrets: Some(&lookup),
        };
        let compiled = compile(&route, &env)
            .unwrap_or_else(|p| panic!("LogRoute {name} does not compile: {p:?}"));
        let object_name = compiled_object_name(&self.ns, name);
        let source = Source {
            namespace: self.ns.clone(),
            name: name.to_string(),
            uid: route.metadata.uid.clone(),
        };
        if !compiled.credentials.is_empty() {
            let secret = objects::credentials_secret(&source, &object_name, OPERATOR_NS, &compiled);
            self.api
                .apply(serde_json::to_value(secret).expect("Secret to JSON"));
        }
        let cm = objects::config_map(&source, &object_name, OPERATOR_NS, &compiled);
        self.api
            .apply(serde_json::to_value(cm).expect("ConfigMap to JSON"));
    }

    /// Remove the compiled objects of `name` (as the controller withdraws a route).
    pub fn withdraw(&self, name: &str) {
        let object_name = compiled_object_name(&self.ns, name);
        self.api
            .delete("v1", "ConfigMap", OPERATOR_NS, &object_name);
        self.api.delete("v1", "Secret", OPERATOR_NS, &object_name);
    }

    /// A Secret of the tenant namespace.
    pub fn secret(&self, name: &str, data: &[(&str, &[u8])]) {
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| (k.to_string(), json!(B64.encode(v))))
            .collect();
        self.api.apply(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": self.ns}, "type": "Opaque", "data": data}));
    }

    fn secret_data(&self, ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let s = self.api.get("v1", "Secret", ns, name)?;
        let data = s["data"].as_object().cloned().unwrap_or_default();
        Some(
            data.into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        B64.decode(v.as_str().unwrap_or_default())
                            .expect("Secret data is base64"),
                    )
                })
                .collect(),
        )
    }

    /// Put a pod of this node into the server (spec.nodeName, labels, annotations, a
    /// ReplicaSet owner).
    pub fn pod(&self, name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> PodId {
        let uid = pod_uid();
        let map = |pairs: &[(&str, &str)]| -> serde_json::Map<String, Value> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect()
        };
        let stored = self.api.apply(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": self.ns, "labels": map(labels), "annotations": map(annotations),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-rs"),
                    "uid": "00000000-0000-4000-8000-000000000001", "controller": true}]},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running"},
        }));
        // cri-dockerd labels containers with the pod's real uid: the one the server gave.
        let uid = stored["metadata"]["uid"]
            .as_str()
            .map(String::from)
            .unwrap_or(uid);
        PodId {
            name: name.to_string(),
            uid,
        }
    }

    /// Delete a pod from the API (its containers stay in Docker).
    pub fn delete_pod(&self, pod: &PodId) {
        self.api
            .delete("v1", "Pod", &self.ns, &pod.name)
            .unwrap_or_else(|| panic!("pod {} was not in the server", pod.name));
    }

    /// Run `script` as container `container` of `pod`.
    pub async fn run(&self, pod: &PodId, container: &str, script: &str) -> TestContainer {
        let labels = pod_labels(&self.ns, &pod.name, &pod.uid, container);
        TestContainer::run(&self.docker, Spec::sh(script).labels(labels)).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.rsyslog.stop();
    }
}
