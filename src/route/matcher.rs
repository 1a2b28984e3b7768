//! Matching containers and messages against a compiled route (pure).
//!
//! Container matching runs once per container (and again when its pod or the route
//! table changes); the per-record cost is only the stream check and the message regexes,
//! and a route without filters runs no regex at all.

use regex::{Regex, RegexBuilder};

use crate::api::StreamName;
use crate::record::ContainerInfo;
use crate::route::compile::{REGEX_SIZE_LIMIT, labels_match};
use crate::route::document::{CompiledRoute, NamespaceScope};

/// A compiled route with its regexes built, ready to match.
#[derive(Debug)]
pub struct RouteMatcher {
    pub document: CompiledRoute,
    include: Option<Regex>,
    exclude: Option<Regex>,
    pub multiline_start: Option<Regex>,
    stdout: bool,
    stderr: bool,
}

/// Why a record of a matching container was not forwarded (metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filtered {
    Stream,
    Include,
    Exclude,
}

impl Filtered {
    pub fn as_str(self) -> &'static str {
        match self {
            Filtered::Stream => "stream",
            Filtered::Include => "include",
            Filtered::Exclude => "exclude",
        }
    }
}

fn build(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

impl RouteMatcher {
    /// Build the regexes of a document. They compiled in the compiler already; this only
    /// fails for a document written by a different (buggy or hostile) producer.
    pub fn new(document: CompiledRoute) -> Result<Self, regex::Error> {
        let filter = document.filter.clone().unwrap_or_default();
        Ok(Self {
            include: filter.include.as_deref().map(build).transpose()?,
            exclude: filter.exclude.as_deref().map(build).transpose()?,
            multiline_start: document
                .multiline
                .as_ref()
                .map(|m| build(&m.start))
                .transpose()?,
            stdout: document.selector.streams.contains(&StreamName::Stdout),
            stderr: document.selector.streams.contains(&StreamName::Stderr),
            document,
        })
    }

    /// Does this route take this container's logs? Tenancy is enforced here: a pod is
    /// only visible to routes whose scope lists its namespace.
    pub fn matches_container(&self, c: &ContainerInfo) -> bool {
        let doc = &self.document;
        match &c.pod {
            Some(pod) => {
                let in_scope = match &doc.scope.namespaces {
                    NamespaceScope::All => true,
                    NamespaceScope::List(names) => names.contains(&pod.namespace),
                };
                in_scope
                    && labels_match(
                        &doc.selector.match_labels,
                        &doc.selector.match_expressions,
                        &pod.labels,
                    )
                    && (doc.selector.containers.is_empty()
                        || doc.selector.containers.contains(&pod.container_name))
            }
            None => doc.scope.host_containers.as_ref().is_some_and(|h| {
                (h.names.is_empty() || h.names.contains(&c.name))
                    && h.match_labels
                        .iter()
                        .all(|(k, v)| c.labels.get(k) == Some(v))
            }),
        }
    }

    pub fn takes_stream(&self, stream: StreamName) -> bool {
        match stream {
            StreamName::Stdout => self.stdout,
            StreamName::Stderr => self.stderr,
        }
    }

    /// Message filters: `None` when the record passes.
    pub fn filter_message(&self, message: &str) -> Option<Filtered> {
        if let Some(re) = &self.include
            && !re.is_match(message)
        {
            return Some(Filtered::Include);
        }
        if let Some(re) = &self.exclude
            && re.is_match(message)
        {
            return Some(Filtered::Exclude);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::record::PodInfo;
    use crate::route::document::*;

    fn doc(namespaces: NamespaceScope, host: Option<HostContainerSelector>) -> CompiledRoute {
        CompiledRoute {
            version: DOCUMENT_VERSION,
            route: RouteIdentity {
                namespace: "a".into(),
                name: "r".into(),
                uid: None,
                generation: None,
                created: None,
            },
            scope: Scope {
                namespaces,
                host_containers: host,
            },
            selector: PodSelector {
                match_labels: BTreeMap::from([("app".into(), "a".into())]),
                match_expressions: vec![],
                containers: vec![],
                streams: vec![StreamName::Stderr],
            },
            filter: Some(CompiledFilter {
                include: Some("ERROR".into()),
                exclude: Some("healthz".into()),
            }),
            multiline: None,
            sinks: vec![],
            credentials_secret: None,
        }
    }

    fn pod_container(ns: &str, app: &str) -> ContainerInfo {
        ContainerInfo {
            id: "c1".into(),
            name: "k8s_api_p_ns_uid_0".into(),
            pod: Some(PodInfo {
                namespace: ns.into(),
                name: "p".into(),
                container_name: "api".into(),
                labels: BTreeMap::from([("app".into(), app.into())]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pods_only_in_scope_and_matching_labels() {
        let m =
            RouteMatcher::new(doc(NamespaceScope::List(vec!["a".into()]), None)).expect("valid");
        assert!(m.matches_container(&pod_container("a", "a")));
        assert!(
            !m.matches_container(&pod_container("b", "a")),
            "other namespace is never visible"
        );
        assert!(
            !m.matches_container(&pod_container("a", "b")),
            "label selector"
        );
        let all = RouteMatcher::new(doc(NamespaceScope::All, None)).expect("valid");
        assert!(all.matches_container(&pod_container("b", "a")));
    }

    #[test]
    fn host_containers_need_an_explicit_host_selector() {
        let host = ContainerInfo {
            name: "nginx".into(),
            labels: BTreeMap::from([("tier".into(), "edge".into())]),
            ..Default::default()
        };
        let none = RouteMatcher::new(doc(NamespaceScope::All, None)).expect("valid");
        assert!(!none.matches_container(&host));
        let by_name = HostContainerSelector {
            names: vec!["nginx".into()],
            ..Default::default()
        };
        assert!(
            RouteMatcher::new(doc(NamespaceScope::All, Some(by_name)))
                .expect("valid")
                .matches_container(&host)
        );
        let by_label = HostContainerSelector {
            match_labels: BTreeMap::from([("tier".into(), "db".into())]),
            ..Default::default()
        };
        assert!(
            !RouteMatcher::new(doc(NamespaceScope::All, Some(by_label)))
                .expect("valid")
                .matches_container(&host)
        );
    }

    #[test]
    fn streams_and_message_filters() {
        let m = RouteMatcher::new(doc(NamespaceScope::All, None)).expect("valid");
        assert!(m.takes_stream(StreamName::Stderr));
        assert!(!m.takes_stream(StreamName::Stdout));
        assert_eq!(m.filter_message("ERROR boom"), None);
        assert_eq!(m.filter_message("INFO fine"), Some(Filtered::Include));
        assert_eq!(m.filter_message("ERROR healthz"), Some(Filtered::Exclude));
    }
}
