//! Matching containers and messages against a compiled route (pure).
//!
//! Container matching runs once per container (and again when its pod or the route
//! table changes); the per-record cost is only the stream check and the message regexes,
//! and a route without filters runs no regex at all.
//!
//! # What a message regex costs, and its bounds
//!
//! Rust's regex engine is linear in the text, but the factor depends on the pattern. A
//! plain pattern (`ERROR|WARN`, `^\S`, `(?i)\b(error|fatal)\b`) runs on its lazy DFA at
//! well under a nanosecond per byte: under a millisecond for a whole 1 MiB line. A
//! pattern the DFA gives up on — a Unicode `\b` over non-ASCII text, or a wide counted
//! repetition such as `\b.{1,1000}Z` — falls back to the PikeVM, whose cost per byte
//! grows with the pattern: up to about 20 µs per byte for patterns the compile-time
//! size limit still admits, so seconds for one 1 MiB line. Three bounds keep one
//! route's filters from stalling the agent:
//!
//! - the compiled size of each pattern is limited when the route is compiled
//!   ([`REGEX_SIZE_LIMIT`], an error naming the field), and the DFA cache of each pattern
//!   is bounded ([`REGEX_DFA_SIZE_LIMIT`] per thread that matches);
//! - a regex sees at most the first [`MATCH_PREFIX_BYTES`] of a message or line
//!   ([`match_prefix`]): a record longer than that is judged by its beginning;
//! - a message of [`OFF_WORKER_FROM`] bytes or more is matched off the async worker
//!   thread when the agent runs on a multi-thread runtime (`block_in_place`: the worker
//!   hands its other tasks to a fresh thread meanwhile), so a slow pattern holds up only
//!   the container it filters, not the other containers and sinks.
//!
//! The prefix is a trade: `include`, `exclude` and `multiline.start` decide on what
//! comes first in a message, where log levels, logger names and exception types are;
//! a word that first appears 64 KiB into a record is not seen.

use regex::{Regex, RegexBuilder};
use tokio::runtime::{Handle, RuntimeFlavor};

use crate::api::StreamName;
use crate::record::ContainerInfo;
use crate::route::compile::{REGEX_DFA_SIZE_LIMIT, REGEX_SIZE_LIMIT, labels_match};
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

/// How much of a message (or, for `multiline.start`, of a line) the route regexes see.
pub const MATCH_PREFIX_BYTES: usize = 64 * 1024;

/// Messages from this length on are matched off the async worker (see the module
/// documentation). Below it, even the slowest admitted pattern takes some tens of
/// milliseconds at most (measured: 57 ms for `\b.{1,1000}Z` on 4 KiB, release build),
/// and the common ones about a microsecond, less than the hand-off to another thread
/// costs (measured: 8–19 µs each when the task awaits between messages).
pub const OFF_WORKER_FROM: usize = 4 * 1024;

/// The part of `text` the route regexes look at: its first [`MATCH_PREFIX_BYTES`], cut
/// back to a character boundary.
pub fn match_prefix(text: &str) -> &str {
    if text.len() <= MATCH_PREFIX_BYTES {
        return text;
    }
    let mut end = MATCH_PREFIX_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Does `re` match the beginning ([`match_prefix`]) of `text`? Long texts are matched off
/// the async worker.
pub fn is_match_bounded(re: &Regex, text: &str) -> bool {
    let scanned = match_prefix(text);
    if scanned.len() >= OFF_WORKER_FROM {
        off_worker(|| re.is_match(scanned))
    } else {
        re.is_match(scanned)
    }
}

/// Run `f`, which may take long, without holding up the async worker that calls it: on
/// a multi-thread runtime the worker hands its queued tasks to another thread first. On
/// a current-thread runtime (tests) there is no other thread and `block_in_place` would
/// panic: `f` runs in place. Outside a runtime it runs in place too.
fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn build(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
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

    /// Message filters: `None` when the record passes. They look at the message's first
    /// [`MATCH_PREFIX_BYTES`] only, off the async worker when that is long (see the
    /// module documentation).
    pub fn filter_message(&self, message: &str) -> Option<Filtered> {
        if self.include.is_none() && self.exclude.is_none() {
            return None;
        }
        let scanned = match_prefix(message);
        if scanned.len() >= OFF_WORKER_FROM {
            off_worker(|| self.filter_prefix(scanned))
        } else {
            self.filter_prefix(scanned)
        }
    }

    fn filter_prefix(&self, message: &str) -> Option<Filtered> {
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

    fn filtered(include: Option<&str>, exclude: Option<&str>) -> RouteMatcher {
        let mut d = doc(NamespaceScope::All, None);
        d.filter = Some(CompiledFilter {
            include: include.map(Into::into),
            exclude: exclude.map(Into::into),
        });
        RouteMatcher::new(d).expect("valid")
    }

    #[test]
    fn regexes_see_only_the_beginning_of_a_long_message() {
        let pad = "x".repeat(MATCH_PREFIX_BYTES);
        let include = filtered(Some("ERROR"), None);
        assert_eq!(include.filter_message(&format!("ERROR {pad}")), None);
        assert_eq!(
            include.filter_message(&format!("{pad}ERROR")),
            Some(Filtered::Include),
            "a word past the prefix is not seen"
        );
        let exclude = filtered(None, Some("healthz"));
        assert_eq!(
            exclude.filter_message(&format!("healthz {pad}")),
            Some(Filtered::Exclude)
        );
        assert_eq!(exclude.filter_message(&format!("{pad}healthz")), None);
        // A text just at the limit is seen whole.
        let at_limit = format!("{}ERROR", &pad[5..]);
        assert_eq!(at_limit.len(), MATCH_PREFIX_BYTES);
        assert_eq!(include.filter_message(&at_limit), None);

        let start = Regex::new("^BEGIN|TRACE$").expect("regex");
        assert!(is_match_bounded(&start, &format!("BEGIN {pad}")));
        assert!(!is_match_bounded(&start, &format!("{pad} TRACE")));
    }

    #[test]
    fn the_prefix_ends_on_a_character_boundary() {
        // 'é' is two bytes: the limit falls inside one.
        let text = format!("a{}", "é".repeat(MATCH_PREFIX_BYTES));
        let p = match_prefix(&text);
        assert_eq!(p.len(), MATCH_PREFIX_BYTES - 1);
        assert!(text.starts_with(p));
        assert_eq!(match_prefix("short"), "short");
    }

    /// One async worker: a long match that kept it would keep the task that releases
    /// the match from running (the releasing message is bounded so a failure ends).
    #[test]
    fn long_matches_leave_the_async_worker() {
        use std::sync::mpsc;
        use std::time::Duration;

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let released_in_time = rt.block_on(async {
            let (started_tx, started) = tokio::sync::oneshot::channel();
            let (release, released) = mpsc::channel::<()>();
            let matching = tokio::spawn(async move {
                off_worker(move || {
                    let _ = started_tx.send(());
                    released.recv_timeout(Duration::from_secs(30)).is_ok()
                })
            });
            started.await.expect("the match started");
            // Runs on a worker, never on this (block_on) thread.
            tokio::spawn(async move {
                let _ = release.send(());
            });
            matching.await.expect("task")
        });
        assert!(released_in_time, "the match held the only async worker");

        // The real filter on that runtime, long and short messages.
        let m = filtered(Some("ERROR"), Some("healthz"));
        let long = format!("ERROR {}", "y".repeat(OFF_WORKER_FROM));
        let verdicts = rt.block_on(async move {
            tokio::spawn(async move {
                (
                    m.filter_message(&long),
                    m.filter_message("ERROR healthz"),
                    m.filter_message("INFO"),
                )
            })
            .await
            .expect("task")
        });
        assert_eq!(
            verdicts,
            (None, Some(Filtered::Exclude), Some(Filtered::Include))
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn long_matches_run_in_place_on_a_current_thread_runtime() {
        let m = filtered(Some("ERROR"), None);
        let long = format!("{}ERROR", "z".repeat(OFF_WORKER_FROM));
        assert_eq!(m.filter_message(&long), None);
        assert_eq!(
            m.filter_message(&"z".repeat(OFF_WORKER_FROM)),
            Some(Filtered::Include)
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
