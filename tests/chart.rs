//! The Helm chart, the plain manifests, the CRDs and the RBAC table agree, and what the
//! chart renders is valid Kubernetes.
//!
//! Needs helm 3.17.2 and kubernetes-validate 1.37.0 (`scripts/install-tools.sh` puts
//! both in `.tools/bin`, which is searched before PATH). In CI a missing tool fails the
//! test; elsewhere the test says why it does not run.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, PodSpec, Service};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use logroute::permissions::{self, Component, Scope};
use serde::Deserialize;
use serde_yaml::Value;

const CRD_FILE: &str = "logroute.dev_logroutes.yaml";
/// Kubernetes versions the rendered objects are validated against: the chart's
/// kubeVersion floor and the API version the crate is built for (k8s-openapi v1_33).
const KUBE_VERSIONS: &[&str] = &["1.29.0", "1.33.0"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One way of rendering the chart.
struct Render {
    release: &'static str,
    namespace: &'static str,
    values: Option<&'static str>,
}

const DEFAULT: Render = Render {
    release: "logroute",
    namespace: "logroute-system",
    values: None,
};
const NON_DEFAULT: Render = Render {
    release: "lr",
    namespace: "observability",
    values: Some("charts/logroute/ci/nondefault-values.yaml"),
};
const RENDERS: [&Render; 2] = [&DEFAULT, &NON_DEFAULT];

impl Render {
    fn describe(&self) -> String {
        format!(
            "release {} in {} with {}",
            self.release,
            self.namespace,
            self.values.unwrap_or("default values")
        )
    }

    fn helm_args(&self, cmd: &mut Command) {
        cmd.arg("--namespace").arg(self.namespace);
        if let Some(values) = self.values {
            cmd.arg("--values").arg(repo().join(values));
        }
    }

    /// `helm template`, split into documents.
    fn template(&self, helm: &Path) -> Vec<Value> {
        let mut cmd = Command::new(helm);
        cmd.args(["template", self.release])
            .arg(repo().join("charts/logroute"));
        self.helm_args(&mut cmd);
        let out = run(&mut cmd);
        documents(&out)
    }
}

/// Run to success and return stdout; panic with both streams otherwise.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("")
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or("")
}

fn typed<T: serde::de::DeserializeOwned>(doc: &Value) -> T {
    serde_yaml::from_value(doc.clone()).unwrap_or_else(|e| {
        panic!(
            "{} {} does not parse as its Kubernetes type: {e}",
            kind(doc),
            name(doc)
        )
    })
}

fn one<T: serde::de::DeserializeOwned>(docs: &[Value], k: &str) -> T {
    let found: Vec<_> = docs.iter().filter(|d| kind(d) == k).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {k}, rendered {}",
        found.len()
    );
    typed(found[0])
}

/// `.tools/bin/NAME`, else NAME on PATH.
fn find_tool(name: &str) -> Option<PathBuf> {
    let local = repo().join(".tools/bin").join(name);
    if local.is_file() {
        return Some(local);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn tool(name: &str, version_args: &[&str], version: &str) -> Option<PathBuf> {
    let how = "run scripts/install-tools.sh (it installs into .tools/bin)";
    let Some(path) = find_tool(name) else {
        support::env::missing(name, how);
        return None;
    };
    let shown = run(Command::new(&path).args(version_args));
    if !shown.contains(version) {
        support::env::missing(&format!("{name} {version} (found {})", shown.trim()), how);
        return None;
    }
    Some(path)
}

fn helm() -> Option<PathBuf> {
    tool(
        "helm",
        &["version", "--template", "{{.Version}}"],
        "v3.17.2",
    )
}

fn kubernetes_validate() -> Option<PathBuf> {
    tool("kubernetes-validate", &["--version"], "1.37.0")
}

#[test]
fn helm_lint_strict_passes_with_default_and_ci_values() {
    let Some(helm) = helm() else { return };
    for render in RENDERS {
        let mut cmd = Command::new(&helm);
        cmd.args(["lint", "--strict"])
            .arg(repo().join("charts/logroute"));
        render.helm_args(&mut cmd);
        let out = run(&mut cmd);
        println!("helm lint --strict ({}):\n{out}", render.describe());
        assert!(
            out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "helm lint output: {out}"
        );
        assert!(
            !out.contains("[WARNING]") && !out.contains("[ERROR]"),
            "helm lint reported problems:\n{out}"
        );
    }
}

#[test]
fn helm_refuses_values_the_schema_does_not_know() {
    let Some(helm) = helm() else { return };
    let out = Command::new(&helm)
        .args(["template", "x"])
        .arg(repo().join("charts/logroute"))
        .args([
            "--set",
            "agent.dockerSocket=/tmp/x",
            "--set",
            "log.format=xml",
        ])
        .output()
        .expect("run helm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "helm accepted an unknown value and a bad enum value"
    );
    assert!(
        stderr.contains("dockerSocket"),
        "the error should name the unknown value: {stderr}"
    );
    assert!(
        stderr.contains("format"),
        "the error should name log.format: {stderr}"
    );
}

/// Validate documents with `kubernetes-validate --strict` against every KUBE_VERSIONS;
/// every one must pass (no warnings: a kind without a schema would pass silently).
fn validate(validator: &Path, label: &str, docs: &[Value]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut files = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let file = dir.path().join(format!(
            "{i:02}-{}-{}.yaml",
            kind(doc).to_lowercase(),
            name(doc)
        ));
        std::fs::write(&file, serde_yaml::to_string(doc).expect("serialize"))
            .expect("write temp file");
        files.push(file);
    }
    let mut cmd = Command::new(validator);
    cmd.arg("--strict");
    for v in KUBE_VERSIONS {
        cmd.args(["--kubernetes-version", v]);
    }
    cmd.args(&files);
    let out = cmd.output().expect("run kubernetes-validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubernetes-validate --strict failed on {label}:\n{stdout}"
    );
    for file in &files {
        for v in KUBE_VERSIONS {
            let minor = &v[..v.rfind('.').unwrap_or(v.len())];
            let passed = format!("INFO {} passed", file.display());
            let against = format!("against version {minor}");
            assert!(
                stdout
                    .lines()
                    .any(|l| l.starts_with(&passed) && l.ends_with(&against)),
                "{label}: {} was not validated against Kubernetes {minor}:\n{stdout}",
                file.display()
            );
        }
    }
    assert!(
        !stdout.contains("WARN") && !stdout.contains("ERROR"),
        "{label}:\n{stdout}"
    );
}

#[test]
fn rendered_objects_validate_against_kubernetes_schemas() {
    let (Some(helm), Some(validator)) = (helm(), kubernetes_validate()) else {
        return;
    };
    for render in RENDERS {
        let docs = render.template(&helm);
        // kubernetes-validate knows only built-in kinds: the ServiceMonitor and the
        // PrometheusRule (Prometheus Operator CRDs) are checked for presence and shape by
        // other tests, not here.
        let (monitors, builtin): (Vec<_>, Vec<_>) = docs
            .into_iter()
            .partition(|d| matches!(kind(d), "ServiceMonitor" | "PrometheusRule"));
        assert_eq!(
            monitors.len(),
            2 * usize::from(render.values.is_some()),
            "ServiceMonitors of {}",
            render.describe()
        );
        assert!(
            builtin.len() >= 12,
            "{} rendered only {} objects",
            render.describe(),
            builtin.len()
        );
        validate(&validator, &render.describe(), &builtin);
    }
    let manifests =
        std::fs::read_to_string(repo().join("manifests/logroute.yaml")).expect("read manifests");
    validate(
        &validator,
        "manifests/logroute.yaml",
        &documents(&manifests),
    );
}

#[test]
fn manifests_match_the_rendered_chart() {
    let Some(helm) = helm() else { return };
    let rendered = run(Command::new(repo().join("scripts/render-manifests.sh"))
        .arg("--stdout")
        .env("HELM", &helm));
    let committed =
        std::fs::read_to_string(repo().join("manifests/logroute.yaml")).expect("read manifests");
    if rendered != committed {
        let line = rendered
            .lines()
            .zip(committed.lines())
            .position(|(a, b)| a != b);
        panic!(
            "manifests/logroute.yaml is stale (first difference at line {}): run \
             scripts/render-manifests.sh and commit the result",
            line.map_or_else(
                || "past the shorter file's end".to_string(),
                |l| (l + 1).to_string()
            )
        );
    }
    let docs = documents(&committed);
    let kinds: BTreeSet<_> = docs.iter().map(kind).collect();
    for k in [
        "Namespace",
        "CustomResourceDefinition",
        "Deployment",
        "DaemonSet",
        "ClusterRole",
        "Role",
    ] {
        assert!(
            kinds.contains(k),
            "manifests/logroute.yaml has no {k}: {kinds:?}"
        );
    }
}

#[test]
fn crds_are_identical_in_crds_chart_and_binary() {
    let top = std::fs::read_to_string(repo().join("crds").join(CRD_FILE)).expect("read crds/");
    let chart = std::fs::read_to_string(repo().join("charts/logroute/crds").join(CRD_FILE))
        .expect("read chart crds/");
    assert!(
        top == chart,
        "charts/logroute/crds/{CRD_FILE} differs from crds/{CRD_FILE}: run scripts/render-manifests.sh"
    );
    let printed = run(Command::new(env!("CARGO_BIN_EXE_logroute")).arg("crd"));
    assert!(
        printed == top,
        "`logroute crd` differs from crds/{CRD_FILE}: run `cargo run -- crd > crds/{CRD_FILE}` \
         and then scripts/render-manifests.sh"
    );
    let files: Vec<_> = std::fs::read_dir(repo().join("charts/logroute/crds"))
        .expect("list chart crds/")
        .map(|e| e.expect("dir entry").file_name())
        .collect();
    assert_eq!(
        files,
        [CRD_FILE],
        "the chart's crds/ holds exactly the generated CRD"
    );
}

/// (component, api group, resource, verb, scope)
type Grant = (Component, String, String, String, Scope);

fn expected_grants() -> BTreeSet<Grant> {
    permissions::PERMISSIONS
        .iter()
        .flat_map(|p| {
            p.verbs.iter().map(|v| {
                (
                    p.component,
                    p.group.to_string(),
                    p.resource.to_string(),
                    v.to_string(),
                    p.scope,
                )
            })
        })
        .collect()
}

fn show(grants: &BTreeSet<Grant>) -> String {
    grants
        .iter()
        .map(|(c, g, r, v, s)| {
            format!(
                "  {} {}/{r} {v} ({})",
                c.as_str(),
                if g.is_empty() { "core" } else { g },
                s.as_str()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn rule_grants(rule: &PolicyRule, component: Component, scope: Scope, what: &str) -> Vec<Grant> {
    assert!(
        rule.non_resource_urls.is_none(),
        "{what}: nonResourceURLs are never needed"
    );
    assert!(
        rule.resource_names.is_none(),
        "{what}: resourceNames are not used by the permissions table"
    );
    let groups = rule.api_groups.clone().unwrap_or_default();
    let resources = rule.resources.clone().unwrap_or_default();
    let mut out = Vec::new();
    for g in &groups {
        for r in &resources {
            for v in &rule.verbs {
                assert!(
                    g != "*" && r != "*" && v != "*",
                    "{what}: wildcard in {rule:?}"
                );
                out.push((component, g.clone(), r.clone(), v.clone(), scope));
            }
        }
    }
    out
}

/// The ServiceAccount each component runs as, read from the rendered workloads.
fn service_accounts(docs: &[Value]) -> BTreeMap<String, Component> {
    let deployment: Deployment = one(docs, "Deployment");
    let daemonset: DaemonSet = one(docs, "DaemonSet");
    let sa = |spec: Option<&PodSpec>| {
        spec.and_then(|s| s.service_account_name.clone())
            .expect("serviceAccountName")
    };
    let controller = sa(deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref()));
    let agent = sa(daemonset
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref()));
    assert_ne!(
        controller, agent,
        "controller and agent must not share a ServiceAccount"
    );
    BTreeMap::from([
        (controller, Component::Controller),
        (agent, Component::Agent),
    ])
}

fn granted(docs: &[Value], namespace: &str) -> BTreeSet<Grant> {
    let accounts = service_accounts(docs);
    let roles: BTreeMap<String, Role> = docs
        .iter()
        .filter(|d| kind(d) == "Role")
        .map(|d| (name(d).to_string(), typed(d)))
        .collect();
    let cluster_roles: BTreeMap<String, ClusterRole> = docs
        .iter()
        .filter(|d| kind(d) == "ClusterRole")
        .map(|d| (name(d).to_string(), typed(d)))
        .collect();
    let mut bound_roles = BTreeSet::new();
    let mut bound_cluster_roles = BTreeSet::new();
    let mut grants = BTreeSet::new();

    let component_of = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>, what: &str| {
        let subjects = subjects.as_deref().unwrap_or_default();
        assert_eq!(subjects.len(), 1, "{what}: bind exactly one ServiceAccount");
        let s = &subjects[0];
        assert_eq!(s.kind, "ServiceAccount", "{what}: subject {s:?}");
        assert_eq!(
            s.namespace.as_deref(),
            Some(namespace),
            "{what}: subject {s:?} outside the release namespace"
        );
        *accounts
            .get(&s.name)
            .unwrap_or_else(|| panic!("{what}: binds {}, which neither workload runs as", s.name))
    };

    for doc in docs.iter().filter(|d| kind(d) == "RoleBinding") {
        let binding: RoleBinding = typed(doc);
        let what = format!("RoleBinding {}", name(doc));
        assert_eq!(
            binding.metadata.namespace.as_deref(),
            Some(namespace),
            "{what}: namespace"
        );
        let component = component_of(&binding.subjects, &what);
        let rules = match binding.role_ref.kind.as_str() {
            "Role" => {
                let role = roles
                    .get(&binding.role_ref.name)
                    .unwrap_or_else(|| panic!("{what}: no such Role"));
                assert_eq!(
                    role.metadata.namespace.as_deref(),
                    Some(namespace),
                    "Role {}",
                    binding.role_ref.name
                );
                bound_roles.insert(binding.role_ref.name.clone());
                role.rules.clone()
            }
            "ClusterRole" => {
                let role = cluster_roles
                    .get(&binding.role_ref.name)
                    .unwrap_or_else(|| panic!("{what}: no such ClusterRole"));
                bound_cluster_roles.insert(binding.role_ref.name.clone());
                role.rules.clone()
            }
            other => panic!("{what}: roleRef kind {other}"),
        };
        for rule in rules.unwrap_or_default() {
            grants.extend(rule_grants(
                &rule,
                component,
                Scope::OperatorNamespace,
                &what,
            ));
        }
    }
    for doc in docs.iter().filter(|d| kind(d) == "ClusterRoleBinding") {
        let binding: ClusterRoleBinding = typed(doc);
        let what = format!("ClusterRoleBinding {}", name(doc));
        let component = component_of(&binding.subjects, &what);
        assert_eq!(binding.role_ref.kind, "ClusterRole", "{what}: roleRef");
        let role = cluster_roles
            .get(&binding.role_ref.name)
            .unwrap_or_else(|| panic!("{what}: no such ClusterRole"));
        assert!(
            role.aggregation_rule.is_none(),
            "{what}: aggregated ClusterRoles grant what others add"
        );
        bound_cluster_roles.insert(binding.role_ref.name.clone());
        for rule in role.rules.clone().unwrap_or_default() {
            grants.extend(rule_grants(&rule, component, Scope::Cluster, &what));
        }
    }

    // Roles bound to nobody of ours: only the aggregation into admin/edit/view, which
    // concerns people managing LogRoutes, never logroute's own ServiceAccounts.
    let unbound: Vec<_> = roles.keys().filter(|n| !bound_roles.contains(*n)).collect();
    assert!(
        unbound.is_empty(),
        "Roles bound to no logroute ServiceAccount: {unbound:?}"
    );
    for (role_name, role) in cluster_roles
        .iter()
        .filter(|(n, _)| !bound_cluster_roles.contains(*n))
    {
        let labels = role.metadata.labels.clone().unwrap_or_default();
        assert!(
            labels
                .keys()
                .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-")),
            "ClusterRole {role_name} is bound to no logroute ServiceAccount and aggregates nowhere"
        );
        for rule in role.rules.clone().unwrap_or_default() {
            assert_eq!(
                rule.api_groups.as_deref(),
                Some(&["logroute.dev".to_string()][..]),
                "aggregated ClusterRole {role_name} may only concern LogRoutes"
            );
        }
    }
    grants
}

#[test]
fn rbac_grants_exactly_the_permissions_table() {
    let Some(helm) = helm() else { return };
    let expected = expected_grants();
    for render in RENDERS {
        let docs = render.template(&helm);
        let granted = granted(&docs, render.namespace);
        let missing: BTreeSet<_> = expected.difference(&granted).cloned().collect();
        let extra: BTreeSet<_> = granted.difference(&expected).cloned().collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "the chart's RBAC ({}) differs from src/permissions.rs.\nnot granted by the chart:\n{}\n\
             granted by the chart but not in the table:\n{}",
            render.describe(),
            show(&missing),
            show(&extra)
        );
        let aggregated = docs
            .iter()
            .filter(|d| kind(d) == "ClusterRole" && name(d).ends_with("-edit"))
            .count();
        assert_eq!(
            aggregated,
            usize::from(render.values.is_none()),
            "aggregated roles of {}",
            render.describe()
        );
    }
}

fn env_of<'a>(c: &'a Container, var: &str) -> Option<&'a k8s_openapi::api::core::v1::EnvVar> {
    c.env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| e.name == var)
}

fn env_value(c: &Container, var: &str) -> Option<String> {
    env_of(c, var).and_then(|e| e.value.clone())
}

fn env_field(c: &Container, var: &str) -> Option<String> {
    env_of(c, var).and_then(|e| {
        e.value_from
            .as_ref()?
            .field_ref
            .as_ref()
            .map(|f| f.field_path.clone())
    })
}

/// The contract every logroute container keeps, whatever the values.
fn check_container(c: &Container, port: i32, what: &str) {
    let sc = c
        .security_context
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no securityContext"));
    assert_eq!(
        sc.read_only_root_filesystem,
        Some(true),
        "{what}: readOnlyRootFilesystem"
    );
    assert_eq!(
        sc.allow_privilege_escalation,
        Some(false),
        "{what}: allowPrivilegeEscalation"
    );
    let drop = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.drop.clone())
        .unwrap_or_default();
    assert_eq!(drop, ["ALL"], "{what}: capabilities.drop");
    assert!(sc.privileged.is_none_or(|p| !p), "{what}: privileged");
    let ports = c.ports.as_deref().unwrap_or_default();
    assert!(
        ports
            .iter()
            .any(|p| p.name.as_deref() == Some("metrics") && p.container_port == port),
        "{what}: metrics port {port}: {ports:?}"
    );
    assert_eq!(
        env_value(c, "LOGROUTE_METRICS_ADDR"),
        Some(format!("0.0.0.0:{port}")),
        "{what}"
    );
    assert_eq!(
        env_field(c, "LOGROUTE_NAMESPACE").as_deref(),
        Some("metadata.namespace"),
        "{what}"
    );
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{what}: no {path} probe"));
        assert_eq!(get.path.as_deref(), Some(path), "{what}");
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("metrics".into())
        );
    }
    assert!(
        c.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_some(),
        "{what}: resource requests"
    );
    assert!(
        c.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .is_some(),
        "{what}: resource limits"
    );
    let names: Vec<_> = c
        .env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    let distinct: BTreeSet<_> = names.iter().collect();
    assert_eq!(
        distinct.len(),
        names.len(),
        "{what}: an env variable is set twice: {names:?}"
    );
}

fn workloads(docs: &[Value]) -> (PodSpec, PodSpec) {
    let deployment: Deployment = one(docs, "Deployment");
    let daemonset: DaemonSet = one(docs, "DaemonSet");
    let controller = deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("Deployment pod spec");
    let agent = daemonset
        .spec
        .and_then(|s| s.template.spec)
        .expect("DaemonSet pod spec");
    (controller, agent)
}

#[test]
fn default_workloads_keep_the_deployment_contract() {
    let Some(helm) = helm() else { return };
    let docs = DEFAULT.template(&helm);
    let (controller, agent) = workloads(&docs);

    let c = &controller.containers[0];
    check_container(c, 9090, "controller");
    assert_eq!(c.args.as_deref(), Some(&["controller".to_string()][..]));
    assert_eq!(c.image.as_deref(), Some("logroute:0.1.0"));
    assert_eq!(
        env_field(c, "POD_NAME").as_deref(),
        Some("metadata.name"),
        "leader-election identity"
    );
    assert_eq!(env_value(c, "LOGROUTE_LOG").as_deref(), Some("info"));
    let psc = controller
        .security_context
        .as_ref()
        .expect("controller pod securityContext");
    assert_eq!(
        psc.run_as_non_root,
        Some(true),
        "the controller runs as non-root"
    );

    let a = &agent.containers[0];
    check_container(a, 9091, "agent");
    assert_eq!(a.args.as_deref(), Some(&["agent".to_string()][..]));
    assert_eq!(env_field(a, "NODE_NAME").as_deref(), Some("spec.nodeName"));
    assert_eq!(
        env_value(a, "DOCKER_HOST").as_deref(),
        Some("unix:///var/run/docker.sock")
    );
    assert_eq!(
        env_value(a, "LOGROUTE_STATE_DIR").as_deref(),
        Some("/var/lib/logroute")
    );
    assert!(
        env_of(a, "LOGROUTE_MAX_LINE_BYTES").is_none(),
        "null values leave the agent's defaults"
    );
    let tolerations = agent.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "the agent tolerates every taint so it runs on control-plane nodes too: {tolerations:?}"
    );
    let volumes = agent.volumes.as_deref().unwrap_or_default();
    let host_path = |n: &str| {
        volumes
            .iter()
            .find(|v| v.name == n)
            .and_then(|v| v.host_path.clone())
            .unwrap_or_else(|| panic!("agent volume {n} is not a hostPath: {volumes:?}"))
    };
    let socket = host_path("docker-socket");
    assert_eq!(
        (socket.path.as_str(), socket.type_.as_deref()),
        ("/var/run/docker.sock", Some("Socket"))
    );
    let state = host_path("state");
    assert_eq!(
        (state.path.as_str(), state.type_.as_deref()),
        ("/var/lib/logroute", Some("DirectoryOrCreate"))
    );
    let mounts = a.volume_mounts.as_deref().unwrap_or_default();
    let socket_mount = mounts
        .iter()
        .find(|m| m.name == "docker-socket")
        .expect("socket mount");
    assert_eq!(socket_mount.read_only, Some(true));
    assert_eq!(socket_mount.mount_path, "/var/run/docker.sock");

    let daemonset: DaemonSet = one(&docs, "DaemonSet");
    let template = daemonset
        .spec
        .as_ref()
        .map(|s| &s.template.metadata)
        .cloned()
        .flatten()
        .expect("pod metadata");
    let annotations = template.annotations.unwrap_or_default();
    assert_eq!(
        annotations.get("logroute.dev/exclude").map(String::as_str),
        Some("true"),
        "agent opts out of itself"
    );
    let strategy = daemonset
        .spec
        .and_then(|s| s.update_strategy)
        .expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));

    // Metrics Services select their component's pods on the named port.
    let services: Vec<Service> = docs
        .iter()
        .filter(|d| kind(d) == "Service")
        .map(typed)
        .collect();
    assert_eq!(services.len(), 2);
    for (svc, component, port) in [
        (&services[0], "controller", 9090),
        (&services[1], "agent", 9091),
    ] {
        let spec = svc.spec.as_ref().expect("service spec");
        let selector = spec.selector.clone().unwrap_or_default();
        assert_eq!(
            selector
                .get("app.kubernetes.io/component")
                .map(String::as_str),
            Some(component)
        );
        let p = &spec.ports.as_deref().unwrap_or_default()[0];
        assert_eq!((p.name.as_deref(), p.port), (Some("metrics"), port));
    }
    assert!(
        !docs.iter().any(|d| kind(d) == "ServiceMonitor"),
        "ServiceMonitor is off by default"
    );
}

#[test]
fn non_default_values_reach_the_workloads() {
    let Some(helm) = helm() else { return };
    let docs = NON_DEFAULT.template(&helm);
    let (controller, agent) = workloads(&docs);
    let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let image = format!("registry.example.com/platform/logroute:0.1.0-rc.1@{digest}");

    let c = &controller.containers[0];
    check_container(c, 19090, "controller");
    assert_eq!(c.image.as_deref(), Some(image.as_str()));
    assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
    assert_eq!(
        env_value(c, "LOGROUTE_LOG").as_deref(),
        Some("debug"),
        "component log level wins"
    );
    assert_eq!(env_value(c, "LOGROUTE_LOG_FORMAT").as_deref(), Some("json"));
    assert_eq!(
        env_value(c, "RUST_BACKTRACE").as_deref(),
        Some("1"),
        "extraEnv"
    );
    assert_eq!(
        controller.service_account_name.as_deref(),
        Some("logroute-operator")
    );
    assert_eq!(
        controller.priority_class_name.as_deref(),
        Some("system-cluster-critical")
    );
    let deployment: Deployment = one(&docs, "Deployment");
    assert_eq!(
        deployment.metadata.name.as_deref(),
        Some("logs-controller"),
        "fullnameOverride"
    );
    assert_eq!(deployment.spec.and_then(|s| s.replicas), Some(2));

    let a = &agent.containers[0];
    check_container(a, 19091, "agent");
    assert_eq!(a.image.as_deref(), Some(image.as_str()));
    assert_eq!(env_value(a, "LOGROUTE_LOG").as_deref(), Some("warn"));
    assert_eq!(
        env_value(a, "DOCKER_HOST").as_deref(),
        Some("tcp://127.0.0.1:2375")
    );
    assert_eq!(
        env_value(a, "LOGROUTE_STATE_DIR").as_deref(),
        Some("/var/lib/logroute-agent")
    );
    assert_eq!(
        env_value(a, "LOGROUTE_MAX_LINE_BYTES").as_deref(),
        Some("262144")
    );
    assert_eq!(
        env_value(a, "LOGROUTE_QUEUE_RECORDS").as_deref(),
        Some("4096")
    );
    assert_eq!(
        env_value(a, "LOGROUTE_QUEUE_BYTES").as_deref(),
        Some("33554432")
    );
    assert_eq!(
        env_value(a, "LOGROUTE_SPILL_BYTES").as_deref(),
        Some("0"),
        "0 (spilling off) is a value, not an absent one"
    );
    assert_eq!(
        env_value(a, "HTTPS_PROXY").as_deref(),
        Some("http://proxy.example.com:3128")
    );
    assert_eq!(
        agent.service_account_name.as_deref(),
        Some("existing-agent-sa")
    );
    assert_eq!(
        agent.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(agent.termination_grace_period_seconds, Some(60));
    let volumes: Vec<_> = agent
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        volumes,
        ["state"],
        "with a Docker host set, the socket is not mounted"
    );
    let psc = agent
        .security_context
        .as_ref()
        .expect("agent pod securityContext");
    assert_eq!(
        (psc.run_as_user, psc.supplemental_groups.clone()),
        (Some(65532), Some(vec![998]))
    );

    let accounts: Vec<_> = docs
        .iter()
        .filter(|d| kind(d) == "ServiceAccount")
        .map(name)
        .collect();
    assert_eq!(
        accounts,
        ["logroute-operator"],
        "only the controller's ServiceAccount is created"
    );
    for doc in &docs {
        assert_eq!(
            doc["metadata"]["labels"]["team"].as_str(),
            Some("platform"),
            "commonLabels on {}",
            name(doc)
        );
    }
    let monitor = docs
        .iter()
        .find(|d| kind(d) == "ServiceMonitor")
        .expect("ServiceMonitor enabled");
    assert_eq!(
        monitor["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    assert_eq!(
        monitor["metadata"]["labels"]["release"].as_str(),
        Some("prometheus")
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(
        (endpoint["port"].as_str(), endpoint["interval"].as_str()),
        (Some("metrics"), Some("15s"))
    );
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"][0].as_str(),
        Some("observability")
    );
}

/// Walk values.yaml against values.schema.json: every value the chart defines has a
/// description in the schema and a comment in values.yaml.
#[test]
fn every_value_is_documented() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("charts/logroute/values.schema.json"))
            .expect("read schema"),
    )
    .expect("values.schema.json parses");
    let text = std::fs::read_to_string(repo().join("charts/logroute/values.yaml"))
        .expect("read values.yaml");

    fn described(schema: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        for (key, prop) in schema["properties"].as_object().into_iter().flatten() {
            let here = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            if prop["description"].as_str().is_none_or(str::is_empty) {
                out.push(here.clone());
            }
            described(prop, &here, out);
        }
    }
    let mut undescribed = Vec::new();
    described(&schema, "", &mut undescribed);
    assert!(
        undescribed.is_empty(),
        "values.schema.json: no description for {undescribed:?}"
    );

    // Each key line of values.yaml whose path the schema defines must follow a comment.
    let in_schema = |path: &[String]| {
        let mut node = &schema;
        for key in path {
            node = &node["properties"][key.as_str()];
            if node.is_null() {
                return false;
            }
        }
        true
    };
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut previous = "";
    let mut uncommented = Vec::new();
    let mut checked = 0;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let is_key =
            !trimmed.starts_with('#') && !trimmed.starts_with('-') && trimmed.contains(':');
        if is_key {
            let key = trimmed[..trimmed.find(':').unwrap_or(0)].to_string();
            stack.retain(|(i, _)| *i < indent);
            stack.push((indent, key));
            let path: Vec<String> = stack.iter().map(|(_, k)| k.clone()).collect();
            if in_schema(&path) {
                checked += 1;
                if !previous.trim_start().starts_with('#') {
                    uncommented.push(path.join("."));
                }
            }
        }
        if !trimmed.is_empty() {
            previous = line;
        }
    }
    assert!(
        checked > 40,
        "only {checked} documented keys found in values.yaml"
    );
    // Children of a documented group (docker.socketPath) are checked; groups whose
    // children are plain Kubernetes fields (resources.requests) are not in the schema.
    assert!(
        uncommented.is_empty(),
        "values.yaml: no comment above {uncommented:?}"
    );

    // And everything the schema defines has a default in values.yaml.
    let values: serde_json::Value = serde_yaml::from_str(&text).expect("values.yaml parses");
    fn defaulted(
        schema: &serde_json::Value,
        values: &serde_json::Value,
        path: &str,
        out: &mut Vec<String>,
    ) {
        for (key, prop) in schema["properties"].as_object().into_iter().flatten() {
            let here = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            match values.get(key) {
                None => out.push(here),
                Some(v) => defaulted(prop, v, &here, out),
            }
        }
    }
    let mut without_default = Vec::new();
    defaulted(&schema, &values, "", &mut without_default);
    assert!(
        without_default.is_empty(),
        "values.yaml has no default for {without_default:?}"
    );
}

/// The rendered egress policy is one the controller accepts, and the controller reads it
/// from where the ConfigMap is mounted.
#[test]
fn the_rendered_egress_policy_is_read_by_the_controller() {
    let Some(helm) = helm() else { return };
    for render in RENDERS {
        let docs = render.template(&helm);
        let policies: Vec<&Value> = docs
            .iter()
            .filter(|d| kind(d) == "ConfigMap" && name(d).ends_with("-egress-policy"))
            .collect();
        assert_eq!(
            policies.len(),
            1,
            "{}: one egress policy ConfigMap",
            render.describe()
        );
        let text = policies[0]["data"]["policy.yaml"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no data.policy.yaml", render.describe()));
        let policy = logroute::route::Policy::parse(text).unwrap_or_else(|e| {
            panic!(
                "{}: the controller refuses the policy: {e}\n{text}",
                render.describe()
            )
        });
        if render.values.is_some() {
            assert_eq!(
                policy.rules.len(),
                2,
                "{}: the values' rules arrive",
                render.describe()
            );
            assert!(policy.restrict_operator_namespace);
        } else {
            assert_eq!(
                policy,
                logroute::route::Policy::default(),
                "default values: the default policy"
            );
        }
        let (controller, _) = workloads(&docs);
        let c = &controller.containers[0];
        let path = env_value(c, "LOGROUTE_EGRESS_POLICY").expect("LOGROUTE_EGRESS_POLICY is set");
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| path.starts_with(&format!("{}/", m.mount_path)))
            .unwrap_or_else(|| panic!("{}: nothing is mounted at {path}", render.describe()));
        let volume = controller
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .expect("the mounted volume exists");
        assert_eq!(
            volume.config_map.as_ref().map(|c| c.name.as_str()),
            Some(name(policies[0])),
            "{}: the mount is the egress policy ConfigMap",
            render.describe()
        );
    }
}

/// The dashboard ConfigMap and the PrometheusRule are off by default; when on, they carry
/// the files of charts/logroute/files unchanged, with the sidecar label; and the
/// controller polls exactly this release's agent pods on the agent's metrics port.
#[test]
fn dashboard_alerts_and_route_health_wiring() {
    let Some(helm) = helm() else {
        return;
    };
    let defaults = DEFAULT.template(&helm);
    assert!(
        !defaults
            .iter()
            .any(|d| kind(d) == "PrometheusRule" || name(d).ends_with("-dashboard")),
        "dashboard and rules are opt-in"
    );
    for render in RENDERS {
        let docs = render.template(&helm);
        let (controller, _) = workloads(&docs);
        let c = &controller.containers[0];
        let daemonset: DaemonSet = one(&docs, "DaemonSet");
        let pod_labels = daemonset
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.labels)
            .expect("agent pod labels");
        let selector = env_value(c, "LOGROUTE_AGENT_SELECTOR").expect("agent selector");
        for pair in selector.split(',') {
            let (k, v) = pair.split_once('=').expect("key=value");
            assert_eq!(
                pod_labels.get(k).map(String::as_str),
                Some(v),
                "{}: {pair}",
                render.describe()
            );
        }
        assert!(
            selector.contains("app.kubernetes.io/instance="),
            "{selector}"
        );
        let port = env_value(c, "LOGROUTE_AGENT_PORT").expect("agent port");
        let ds_port = one::<DaemonSet>(&docs, "DaemonSet")
            .spec
            .and_then(|s| s.template.spec)
            .map(|p| p.containers[0].ports.clone().unwrap_or_default())
            .and_then(|ports| {
                ports
                    .into_iter()
                    .find(|p| p.name.as_deref() == Some("metrics"))
            })
            .map(|p| p.container_port.to_string());
        assert_eq!(Some(port), ds_port, "{}", render.describe());
    }
    let docs = NON_DEFAULT.template(&helm);
    let (controller, _) = workloads(&docs);
    let c = &controller.containers[0];
    assert_eq!(
        env_value(c, "LOGROUTE_HEALTH_POLL_MS").as_deref(),
        Some("30000")
    );
    assert_eq!(
        env_value(c, "LOGROUTE_STATUS_WRITES_PER_SECOND").as_deref(),
        Some("0.5")
    );
    assert_eq!(
        env_value(c, "LOGROUTE_LAG_THRESHOLD_SECONDS").as_deref(),
        Some("120")
    );

    let dashboard = docs
        .iter()
        .find(|d| kind(d) == "ConfigMap" && name(d) == "logs-dashboard")
        .expect("the dashboard ConfigMap");
    assert_eq!(dashboard["metadata"]["namespace"], "monitoring");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(
        dashboard["metadata"]["annotations"]["grafana_folder"],
        "Logging"
    );
    let file = std::fs::read_to_string(repo().join("charts/logroute/files/dashboard.json"))
        .expect("read the dashboard");
    let shipped: serde_json::Value = serde_json::from_str(
        dashboard["data"]["logroute.json"]
            .as_str()
            .expect("JSON key"),
    )
    .expect("the shipped dashboard parses");
    assert_eq!(
        shipped,
        serde_json::from_str::<serde_json::Value>(&file).expect("file parses")
    );

    let rule = docs
        .iter()
        .find(|d| kind(d) == "PrometheusRule")
        .expect("the PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let rules: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("charts/logroute/files/alerts.yaml"))
            .expect("read the rules"),
    )
    .expect("rules YAML");
    assert_eq!(
        rule["spec"]["groups"], rules["groups"],
        "the PrometheusRule holds the rules file"
    );
}
