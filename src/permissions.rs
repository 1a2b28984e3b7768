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

const READ: &[&str] = &["get", "list", "watch"];

/// Every API call of the controller and the agent.
pub const PERMISSIONS: &[Permission] = &[
    // ---- controller -------------------------------------------------------------------
    Permission {
        component: Component::Controller,
        group: "logroute.dev",
        resource: "logroutes",
        verbs: &["get", "list", "watch", "patch", "update"],
        scope: Scope::Cluster,
        why: "watch LogRoutes in every namespace; add and remove the cleanup finalizer",
    },
    Permission {
        component: Component::Controller,
        group: "logroute.dev",
        resource: "logroutes/status",
        verbs: &["patch", "update"],
        scope: Scope::Cluster,
        why: "report Ready, observedGeneration, sinks and namespaces",
    },
    Permission {
        component: Component::Controller,
        group: "logroute.dev",
        resource: "logroutes/finalizers",
        verbs: &["update"],
        scope: Scope::Cluster,
        why: "set owner references that block deletion (OwnerReferencesPermissionEnforcement)",
    },
    Permission {
        component: Component::Controller,
        group: "",
        resource: "configmaps",
        verbs: &[
            "get", "list", "watch", "create", "patch", "update", "delete",
        ],
        scope: Scope::OperatorNamespace,
        why: "server-side apply, sweep and delete compiled route documents",
    },
    Permission {
        component: Component::Controller,
        group: "",
        resource: "secrets",
        verbs: &[
            "get", "list", "watch", "create", "patch", "update", "delete",
        ],
        scope: Scope::OperatorNamespace,
        why: "server-side apply, sweep and delete compiled credentials",
    },
    Permission {
        component: Component::Controller,
        group: "",
        resource: "secrets",
        verbs: READ,
        scope: Scope::Cluster,
        why: "resolve Secrets that LogRoutes reference in their own namespaces, and re-reconcile when they change",
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
        group: "",
        resource: "events",
        verbs: &["create", "patch"],
        scope: Scope::Cluster,
        why: "record Events through the core/v1 API",
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
        verbs: READ,
        scope: Scope::Cluster,
        why: "pod metadata of this node's containers (fieldSelector spec.nodeName)",
    },
    Permission {
        component: Component::Agent,
        group: "",
        resource: "configmaps",
        verbs: READ,
        scope: Scope::OperatorNamespace,
        why: "compiled route documents",
    },
    Permission {
        component: Component::Agent,
        group: "",
        resource: "secrets",
        verbs: READ,
        scope: Scope::OperatorNamespace,
        why: "compiled sink credentials",
    },
];

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
                    READ.contains(verb),
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
}
