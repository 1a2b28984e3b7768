//! Every Kubernetes API call logroute makes, in one table: the source of truth for RBAC.
//!
//! The Helm chart's Roles and ClusterRoles must grant exactly what this table lists, no
//! more and no less; `tests/chart.rs` renders the chart and compares. When code starts
//! making a new call (a new resource, verb or scope), add a row here and the matching
//! rule to `charts/logroute/templates/*-rbac.yaml`; the test names what is missing.
//!
//! The table describes calls, not wishes: a row whose call the code no longer makes is
//! a privilege nobody needs, so remove it.

/// A logroute process that talks to the API server with its own ServiceAccount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// `logroute controller` (Deployment).
    Controller,
    /// `logroute agent` (DaemonSet, one per node).
    Agent,
}

impl Component {
    pub const ALL: [Component; 2] = [Component::Controller, Component::Agent];

    pub fn as_str(self) -> &'static str {
        match self {
            Component::Controller => "controller",
            Component::Agent => "agent",
        }
    }
}

/// Where a permission applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Every namespace (ClusterRole + ClusterRoleBinding), or a cluster-scoped resource.
    Cluster,
    /// Only the namespace logroute is installed in (Role + RoleBinding there).
    OperatorNamespace,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Cluster => "cluster",
            Scope::OperatorNamespace => "operator-namespace",
        }
    }
}

/// One row: `component` calls `verbs` on `group`/`resource` within `scope`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission {
    pub component: Component,
    /// API group; `""` is the core group.
    pub group: &'static str,
    /// Plural resource name, with `/subresource` where it applies.
    pub resource: &'static str,
    /// Kubernetes verbs (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`).
    pub verbs: &'static [&'static str],
    pub scope: Scope,
    /// Why the call is made: the line a reviewer reads before granting it.
    pub why: &'static str,
}

/// Every API call of the controller and the agent.
pub const PERMISSIONS: &[Permission] = &[
    // ---- controller -------------------------------------------------------------------
    Permission {
        component: Component::Controller,
        group: "logroute.dev",
        resource: "logroutes",
        verbs: &["list", "watch", "patch"],
        scope: Scope::Cluster,
        why: "watch LogRoutes in every namespace; add and remove the cleanup finalizer",
    },
    Permission {
        component: Component::Controller,
        group: "logroute.dev",
        resource: "logroutes/status",
        verbs: &["patch"],
        scope: Scope::Cluster,
        why: "report Ready, Delivering, observedGeneration, sinks, namespaces and delivery health",
    },
    Permission {
        component: Component::Controller,
        group: "",
        resource: "configmaps",
        verbs: &["list", "watch", "create", "patch", "delete"],
        scope: Scope::OperatorNamespace,
        why: "server-side apply, sweep and delete compiled route documents; notice drift",
    },
    Permission {
        component: Component::Controller,
        group: "",
        resource: "secrets",
        verbs: &["list", "watch", "create", "patch", "delete"],
        scope: Scope::OperatorNamespace,
        why: "server-side apply, sweep and delete compiled credentials; notice drift",
    },
    // RBAC cannot narrow list/watch by label: the controller always sends the label
    // selector logroute.dev/credentials=true outside the operator namespace (the scripted
    // API server of src/controller/tests.rs refuses any other Secret request), and never
    // gets a Secret by name.
    Permission {
        component: Component::Controller,
        group: "",
        resource: "secrets",
        verbs: &["list", "watch"],
        scope: Scope::Cluster,
        why: "read the Secrets labelled logroute.dev/credentials=true that LogRoutes reference in their own namespaces, and re-reconcile when they change",
    },
    Permission {
        component: Component::Controller,
        group: "",
        resource: "pods",
        verbs: &["list", "watch"],
        scope: Scope::OperatorNamespace,
        why: "find the agent pods (by label) and the node each runs on, to poll their route health reports",
    },
    Permission {
        component: Component::Controller,
        group: "",
        resource: "namespaces",
        verbs: &["list", "watch"],
        scope: Scope::Cluster,
        why: "resolve namespaceSelector into namespace lists, again when labels change",
    },
    Permission {
        component: Component::Controller,
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        scope: Scope::Cluster,
        why: "record Events on LogRoutes in their namespaces (kube-runtime Recorder)",
    },
    Permission {
        component: Component::Controller,
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
        scope: Scope::OperatorNamespace,
        why: "leader election between controller replicas",
    },
    // ---- agent ------------------------------------------------------------------------
    Permission {
        component: Component::Agent,
        group: "",
        resource: "pods",
        verbs: &["list", "watch"],
        scope: Scope::Cluster,
        why: "pod metadata of this node's containers (a reflector with fieldSelector spec.nodeName)",
    },
    Permission {
        component: Component::Agent,
        group: "",
        resource: "configmaps",
        verbs: &["list", "watch"],
        scope: Scope::OperatorNamespace,
        why: "compiled route documents (a reflector)",
    },
    Permission {
        component: Component::Agent,
        group: "",
        resource: "secrets",
        verbs: &["list", "watch"],
        scope: Scope::OperatorNamespace,
        why: "compiled sink credentials (a reflector)",
    },
];

/// One API request, as RBAC sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub group: String,
    /// Plural resource, with `/subresource` where there is one.
    pub resource: String,
    pub verb: &'static str,
    /// `None` for a cluster-wide or cluster-scoped request.
    pub namespace: Option<String>,
}

impl Request {
    /// Read an HTTP request to the API server the way the authorizer does: `GET` on a
    /// collection is `list` (`watch` with `watch=true`), on an object `get`; `POST`
    /// `create`, `PUT` `update`, `PATCH` `patch`, `DELETE` `delete`. `None` for paths
    /// outside `/api` and `/apis`.
    pub fn parse(method: &str, path: &str, query: &str) -> Option<Self> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match parts.as_slice() {
            ["api", _version, rest @ ..] => (String::new(), rest),
            ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
            _ => (None, rest),
        };
        let (resource, object) = match rest {
            [resource] => (resource.to_string(), false),
            [resource, _name] => (resource.to_string(), true),
            [resource, _name, sub] => (format!("{resource}/{sub}"), true),
            _ => return None,
        };
        let watching = query.split('&').any(|kv| kv == "watch=true");
        let verb = match (method, object) {
            ("GET", _) if watching => "watch",
            ("GET", false) => "list",
            ("GET", true) => "get",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", _) => "delete",
            _ => return None,
        };
        Some(Self {
            group,
            resource,
            verb,
            namespace,
        })
    }

    /// Whether the table lets `component` make this request, logroute being installed
    /// in `operator_namespace`.
    pub fn allowed(&self, component: Component, operator_namespace: &str) -> bool {
        of(component).any(|p| {
            p.group == self.group
                && p.resource == self.resource
                && p.verbs.contains(&self.verb)
                && match p.scope {
                    Scope::Cluster => true,
                    Scope::OperatorNamespace => {
                        self.namespace.as_deref() == Some(operator_namespace)
                    }
                }
        })
    }
}

/// The rows of one component.
pub fn of(component: Component) -> impl Iterator<Item = &'static Permission> {
    PERMISSIONS.iter().filter(move |p| p.component == component)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const KNOWN_VERBS: &[&str] = &[
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];

    #[test]
    fn rows_are_unique_and_use_known_verbs() {
        let mut seen = BTreeSet::new();
        for p in PERMISSIONS {
            assert!(
                seen.insert((p.component, p.group, p.resource, p.scope)),
                "two rows for {} {}/{} {}: merge them",
                p.component.as_str(),
                p.group,
                p.resource,
                p.scope.as_str()
            );
            assert!(!p.verbs.is_empty(), "row {p:?} grants no verb");
            for verb in p.verbs {
                assert!(KNOWN_VERBS.contains(verb), "row {p:?}: unknown verb {verb}");
            }
            let distinct: BTreeSet<_> = p.verbs.iter().collect();
            assert_eq!(distinct.len(), p.verbs.len(), "row {p:?} repeats a verb");
            assert!(!p.why.is_empty(), "row {p:?} does not say why");
        }
    }

    #[test]
    fn agent_only_reads() {
        for p in of(Component::Agent) {
            for verb in p.verbs {
                assert!(
                    ["get", "list", "watch"].contains(verb),
                    "the agent must stay read-only, but {p:?} grants {verb}"
                );
            }
        }
        let cluster: Vec<_> = of(Component::Agent)
            .filter(|p| p.scope == Scope::Cluster)
            .map(|p| p.resource)
            .collect();
        assert_eq!(
            cluster,
            ["pods"],
            "the agent reads only pods outside the operator namespace"
        );
    }

    #[test]
    fn requests_read_like_the_authorizer_reads_them() {
        let r = |m, p, q| Request::parse(m, p, q).expect("an API path");
        let ns = |s: &str| Some(s.to_string());
        assert_eq!(
            r(
                "GET",
                "/apis/logroute.dev/v1alpha1/logroutes",
                "watch=true&timeoutSeconds=290"
            ),
            Request {
                group: "logroute.dev".into(),
                resource: "logroutes".into(),
                verb: "watch",
                namespace: None
            }
        );
        assert_eq!(
            r(
                "PATCH",
                "/apis/logroute.dev/v1alpha1/namespaces/pay/logroutes/r/status",
                ""
            ),
            Request {
                group: "logroute.dev".into(),
                resource: "logroutes/status".into(),
                verb: "patch",
                namespace: ns("pay")
            }
        );
        assert_eq!(r("GET", "/api/v1/namespaces", "").verb, "list");
        assert_eq!(
            r("GET", "/api/v1/namespaces/pay", "").resource,
            "namespaces"
        );
        assert_eq!(
            r("GET", "/api/v1/namespaces/pay/secrets/creds", "").verb,
            "get"
        );
        assert_eq!(
            r(
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/op/leases/l",
                ""
            )
            .verb,
            "update"
        );
        assert_eq!(
            r("DELETE", "/api/v1/namespaces/op/configmaps/c", "").verb,
            "delete"
        );
        assert_eq!(
            r("POST", "/apis/events.k8s.io/v1/namespaces/pay/events", "").verb,
            "create"
        );
        assert_eq!(Request::parse("GET", "/healthz", ""), None);
    }

    #[test]
    fn the_operator_namespace_scope_stops_at_its_namespace() {
        let delete = |ns: &str| {
            Request::parse(
                "DELETE",
                &format!("/api/v1/namespaces/{ns}/configmaps/c"),
                "",
            )
            .unwrap()
        };
        assert!(delete("op").allowed(Component::Controller, "op"));
        assert!(!delete("payments").allowed(Component::Controller, "op"));
        assert!(!delete("op").allowed(Component::Agent, "op"));
        let list = Request::parse("GET", "/api/v1/namespaces/payments/secrets", "").unwrap();
        assert!(list.allowed(Component::Controller, "op"));
        assert!(!list.allowed(Component::Agent, "op"));
        let get = Request::parse("GET", "/api/v1/namespaces/payments/secrets/creds", "").unwrap();
        assert!(
            !get.allowed(Component::Controller, "op"),
            "the controller reads Secrets only through a label-selected list"
        );
    }
}
