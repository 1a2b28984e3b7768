//! The LogRoute status the controller writes: a Ready condition, observedGeneration, the
//! sink summary and the resolved namespaces. Building it is pure; it is written only when
//! it differs from what the object already shows, so a steady state makes no writes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::error::Error;
use crate::api::{FIELD_MANAGER, LogRouteStatus};
use crate::route::document::{CompiledRoute, NamespaceScope};
use crate::route::{Compiled, Problem};

pub const READY: &str = "Ready";
/// Condition type of delivery health, written by [`super::health`].
pub const DELIVERING: &str = "Delivering";
pub const REASON_COMPILED: &str = "Compiled";
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";

/// Longest condition message written (the API allows 32 KiB; people read far less).
const MESSAGE_MAX: usize = 4096;
/// Longest Event note (the API's limit is 1 KiB).
pub const NOTE_MAX: usize = 1024;

/// What a reconcile concluded.
pub enum Outcome<'a> {
    Ready {
        compiled: &'a Compiled,
        /// The route has a namespaceSelector, so its namespaces go in the status.
        namespace_selector: bool,
        /// Every namespace name, used when the route covers all namespaces.
        all_namespaces: &'a [String],
    },
    Invalid(&'a [Problem]),
    /// The object could not be read as a LogRoute at all.
    Malformed(&'a str),
}

/// `central(syslog),search(elasticsearch)`.
pub fn sinks_summary(document: &CompiledRoute) -> String {
    document
        .sinks
        .iter()
        .map(|s| format!("{}({})", s.name, s.config.kind()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Each problem with its field path, most important (as the compiler ordered them) first.
pub fn problems_message(problems: &[Problem]) -> String {
    let listed = problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    match problems.len() {
        0 => "the route was not compiled".to_string(),
        1 => listed,
        n => format!("{n} problems: {listed}"),
    }
}

/// Cut `text` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    const MARK: &str = " [...]";
    let mut end = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &text[..end])
}

/// The status the route should show. `previous` supplies lastTransitionTime when the
/// Ready status did not change, so that an unchanged outcome yields an equal status.
pub fn desired(
    previous: Option<&LogRouteStatus>,
    generation: Option<i64>,
    outcome: &Outcome<'_>,
) -> LogRouteStatus {
    let (ready, reason, message, sinks, namespaces) = match outcome {
        Outcome::Ready {
            compiled,
            namespace_selector,
            all_namespaces,
        } => {
            let doc = &compiled.document;
            let namespaces = match (&doc.scope.namespaces, *namespace_selector) {
                (_, false) => None,
                (NamespaceScope::List(list), true) => Some(list.clone()),
                (NamespaceScope::All, true) => Some(all_namespaces.to_vec()),
            };
            let mut message = format!(
                "compiled {} sink{}: {}",
                doc.sinks.len(),
                if doc.sinks.len() == 1 { "" } else { "s" },
                sinks_summary(doc).replace(',', ", ")
            );
            match (&doc.scope.namespaces, &namespaces) {
                (NamespaceScope::All, Some(_)) => message.push_str("; covers all namespaces"),
                (NamespaceScope::List(_), Some(list)) => message.push_str(&format!(
                    "; covers {} namespace{}",
                    list.len(),
                    plural(list.len())
                )),
                _ => {}
            }
            if !compiled.warnings.is_empty() {
                message.push_str("; warnings: ");
                message.push_str(&compiled.warnings.join("; "));
            }
            (
                true,
                REASON_COMPILED.to_string(),
                message,
                Some(sinks_summary(doc)),
                namespaces,
            )
        }
        Outcome::Invalid(problems) => {
            let reason = problems
                .first()
                .map_or(REASON_INVALID_SPEC, |p| p.reason.as_str());
            (
                false,
                reason.to_string(),
                problems_message(problems),
                None,
                None,
            )
        }
        Outcome::Malformed(error) => (
            false,
            REASON_INVALID_SPEC.to_string(),
            format!(
                "the object is not a valid LogRoute: {error}; fix it with kubectl edit or re-apply the manifest"
            ),
            None,
            None,
        ),
    };
    let status = if ready { "True" } else { "False" };
    let previous_ready = previous.and_then(ready_condition);
    let last_transition_time = match previous_ready {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    let mut conditions = vec![Condition {
        type_: READY.to_string(),
        status: status.to_string(),
        reason,
        message: truncate(&message, MESSAGE_MAX),
        observed_generation: generation,
        last_transition_time,
    }];
    // Delivery health is the health writer's (`super::health`); a reconcile keeps what
    // it wrote while the route stays Ready, and removes it when the route is not.
    let mut health = None;
    if let (true, Some(previous)) = (ready, previous) {
        conditions.extend(
            previous
                .conditions
                .iter()
                .filter(|c| c.type_ == DELIVERING)
                .cloned(),
        );
        health = previous.health.clone();
    }
    LogRouteStatus {
        observed_generation: generation,
        conditions,
        sinks,
        namespaces,
        health,
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

pub fn ready_condition(status: &LogRouteStatus) -> Option<&Condition> {
    status.conditions.iter().find(|c| c.type_ == READY)
}

/// Write the status with server-side apply on the status subresource.
pub async fn patch(
    api: &super::RouteMetaApi,
    name: &str,
    status: &LogRouteStatus,
) -> Result<(), Error> {
    let body = json!({
        "apiVersion": "logroute.dev/v1alpha1",
        "kind": "LogRoute",
        "status": status,
    });
    let object = match api.namespace() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    };
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(Error::api("patch LogRoute status", object))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Reason;

    fn problem(path: &str, message: &str, reason: Reason) -> Problem {
        Problem {
            path: path.into(),
            message: message.into(),
            reason,
        }
    }

    #[test]
    fn problems_are_listed_with_their_paths_first_reason_wins() {
        let problems = [
            problem(
                "spec.sinks[0].elasticsearch.auth.basicSecretRef.namespace",
                "other namespace",
                Reason::Forbidden,
            ),
            problem(
                "spec.filter.include",
                "regex does not compile",
                Reason::InvalidSpec,
            ),
        ];
        let status = desired(None, Some(4), &Outcome::Invalid(&problems));
        let c = ready_condition(&status).expect("Ready condition");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Forbidden")
        );
        assert_eq!(
            c.message,
            "2 problems: spec.sinks[0].elasticsearch.auth.basicSecretRef.namespace: other namespace; \
             spec.filter.include: regex does not compile"
        );
        assert_eq!(
            (status.observed_generation, c.observed_generation),
            (Some(4), Some(4))
        );
        assert_eq!(status.sinks, None);
    }

    #[test]
    fn unchanged_outcome_gives_an_equal_status_so_nothing_is_written() {
        let problems = [problem(
            "spec.sinks",
            "at least one sink",
            Reason::InvalidSpec,
        )];
        let first = desired(None, Some(1), &Outcome::Invalid(&problems));
        let again = desired(Some(&first), Some(1), &Outcome::Invalid(&problems));
        assert_eq!(first, again);
        // A new generation is a change even with the same problems.
        let next = desired(Some(&first), Some(2), &Outcome::Invalid(&problems));
        assert_ne!(first, next);
        assert_eq!(
            ready_condition(&next).map(|c| &c.last_transition_time),
            ready_condition(&first).map(|c| &c.last_transition_time),
            "the Ready status did not flip, so its transition time stays"
        );
    }

    #[test]
    fn malformed_objects_are_invalid_spec_with_the_decode_error() {
        let status = desired(
            None,
            Some(1),
            &Outcome::Malformed("spec.sinks: invalid type: string"),
        );
        let c = ready_condition(&status).expect("Ready condition");
        assert_eq!(c.reason, "InvalidSpec");
        assert!(
            c.message.contains("spec.sinks: invalid type: string"),
            "{}",
            c.message
        );
    }

    #[test]
    fn truncate_cuts_on_a_char_boundary_and_marks_it() {
        assert_eq!(truncate("short", 10), "short");
        let cut = truncate(&"é".repeat(100), 21);
        assert!(cut.len() <= 21 && cut.ends_with(" [...]"), "{cut:?}");
    }
}
