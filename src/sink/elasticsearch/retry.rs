//! What a `_bulk` answer means for the documents it carried. Pure: status and body in,
//! decision out, so that every rule below is unit-tested on canned responses.
//!
//! | answer                                        | decision                                   |
//! |-----------------------------------------------|--------------------------------------------|
//! | 2xx, items parsed, one per document sent      | per item, see below                        |
//! | 2xx with a body that is not a bulk response   | retry the whole request (`invalid_response`)|
//! | 408, 429, 500, 502, 503, 504 and other 5xx    | retry the whole request, next endpoint     |
//! | 501, 505                                      | stop: the endpoint is not a bulk API       |
//! | 413                                           | split the request in two (one document: reject it) |
//! | 401, 403 (`security_exception` or any other)  | stop: authentication failed                |
//! | 403 `cluster_block_exception`                 | stop: index blocked (read-only / disk flood stage) |
//! | other 4xx                                     | stop: request refused (a bug or a proxy)   |
//!
//! | item status                                   | outcome                                    |
//! |-----------------------------------------------|--------------------------------------------|
//! | 201, or 200 with `result: created`            | created                                    |
//! | 200 (`updated`, `noop`)                       | indexed                                    |
//! | 409 on a `create`                             | duplicate: the document is already there   |
//! | 408, 429, 5xx                                 | retry this item alone                      |
//! | 401, 403 `security_exception`                 | stop: authentication/authorization failed  |
//! | 403 `cluster_block_exception`                 | stop: index blocked                        |
//! | any other 4xx (mapping, invalid index, ...)   | rejected: counted by reason, logged, never retried |
//!
//! "Stop" means the sink gives the batch back to its caller (`SendFailure`): no amount of
//! retrying inside one send fixes a wrong password or a read-only index, while resending
//! later, once an operator has acted, loses nothing.

use serde::Deserialize;

/// Why the sink stops and hands the batch back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// 401, or 403 for anything but an index block.
    Auth { status: u16 },
    /// `cluster_block_exception`: the index is read-only (e.g. disk flood stage).
    IndexBlocked { index: String },
    /// The request as a whole was refused with a status no retry fixes.
    Refused { status: u16, error_type: String },
}

/// The decision for one bulk attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// One outcome per document, in request order.
    Items(Vec<ItemOutcome>),
    /// Send the same documents again after a backoff; bounded label for metrics.
    RetryAll {
        reason: &'static str,
    },
    /// 413: send the documents in smaller requests.
    Split,
    Stop(Stop),
}

/// What became of one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    Created,
    Indexed,
    /// 409 on `create`: an earlier attempt already wrote it.
    Duplicate,
    /// Send this document again after a backoff.
    Retry {
        status: u16,
    },
    Rejected(Rejection),
    Stop(Stop),
}

/// A document Elasticsearch will never accept as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    /// Bounded label for metrics.
    pub reason: &'static str,
    /// Elasticsearch's `error.type`.
    pub error_type: String,
    /// Elasticsearch's `error.reason`, cut before any preview of the document's values
    /// and to at most [`MAX_DETAIL`] bytes: fit for a log line.
    pub detail: String,
    pub index: String,
}

pub const MAX_DETAIL: usize = 300;

#[derive(Deserialize)]
struct BulkResponse {
    items: Vec<std::collections::HashMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    #[serde(default, rename = "_index")]
    index: Option<String>,
    status: u16,
    #[serde(default)]
    result: Option<String>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum ErrorBody {
    Detailed {
        #[serde(rename = "type", default)]
        kind: String,
        #[serde(default)]
        reason: Option<String>,
    },
    Text(String),
    #[default]
    Other,
}

impl ErrorBody {
    fn kind(&self) -> &str {
        match self {
            ErrorBody::Detailed { kind, .. } => kind,
            _ => "",
        }
    }

    fn reason(&self) -> &str {
        match self {
            ErrorBody::Detailed { reason, .. } => reason.as_deref().unwrap_or(""),
            ErrorBody::Text(t) => t,
            ErrorBody::Other => "",
        }
    }
}

#[derive(Deserialize)]
struct ErrorResponse {
    #[serde(default)]
    error: ErrorBody,
}

/// Classify one `_bulk` answer to `sent` documents sent with `op_type: create`.
pub fn classify(status: u16, body: &[u8], sent: usize) -> Verdict {
    match status {
        200..=299 => classify_items(body, sent),
        413 => Verdict::Split,
        401 => Verdict::Stop(Stop::Auth { status }),
        403 if error_type(body) == "cluster_block_exception" => Verdict::Stop(Stop::IndexBlocked {
            index: String::new(),
        }),
        403 => Verdict::Stop(Stop::Auth { status }),
        408 => Verdict::RetryAll { reason: "http_408" },
        429 => Verdict::RetryAll { reason: "http_429" },
        501 | 505 => Verdict::Stop(Stop::Refused {
            status,
            error_type: error_type(body),
        }),
        500..=599 => Verdict::RetryAll {
            reason: match status {
                500 => "http_500",
                502 => "http_502",
                503 => "http_503",
                504 => "http_504",
                _ => "http_5xx",
            },
        },
        _ => Verdict::Stop(Stop::Refused {
            status,
            error_type: error_type(body),
        }),
    }
}

fn error_type(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorResponse>(body)
        .map(|e| e.error.kind().to_string())
        .unwrap_or_default()
}

fn classify_items(body: &[u8], sent: usize) -> Verdict {
    let Ok(parsed) = serde_json::from_slice::<BulkResponse>(body) else {
        return Verdict::RetryAll {
            reason: "invalid_response",
        };
    };
    if parsed.items.len() != sent {
        return Verdict::RetryAll {
            reason: "invalid_response",
        };
    }
    let mut outcomes = Vec::with_capacity(sent);
    for entry in parsed.items {
        // Each item is `{"<op>": {...}}` with exactly one key.
        let Some((op, item)) = entry.into_iter().next() else {
            return Verdict::RetryAll {
                reason: "invalid_response",
            };
        };
        outcomes.push(classify_item(&op, item));
    }
    Verdict::Items(outcomes)
}

fn classify_item(op: &str, item: BulkItem) -> ItemOutcome {
    let error = item.error.unwrap_or_default();
    let index = item.index.unwrap_or_default();
    match item.status {
        201 => ItemOutcome::Created,
        200..=299 if item.result.as_deref() == Some("created") => ItemOutcome::Created,
        200..=299 => ItemOutcome::Indexed,
        409 if op == "create" => ItemOutcome::Duplicate,
        408 | 429 | 500..=599 => ItemOutcome::Retry {
            status: item.status,
        },
        403 if error.kind() == "cluster_block_exception" => {
            ItemOutcome::Stop(Stop::IndexBlocked { index })
        }
        401 | 403 => ItemOutcome::Stop(Stop::Auth {
            status: item.status,
        }),
        status => ItemOutcome::Rejected(Rejection {
            status,
            reason: rejection_reason(error.kind()),
            error_type: error.kind().to_string(),
            detail: log_safe_detail(error.reason()),
            index,
        }),
    }
}

/// Bounded metric label for a rejected document.
pub fn rejection_reason(error_type: &str) -> &'static str {
    match error_type {
        "mapper_parsing_exception" => "mapper_parsing_exception",
        "document_parsing_exception" => "document_parsing_exception",
        "strict_dynamic_mapping_exception" => "strict_dynamic_mapping_exception",
        "illegal_argument_exception" => "illegal_argument_exception",
        "invalid_index_name_exception" => "invalid_index_name_exception",
        "index_not_found_exception" => "index_not_found_exception",
        "index_closed_exception" => "index_closed_exception",
        "version_conflict_engine_exception" => "version_conflict_engine_exception",
        "request_too_large" => "request_too_large",
        _ => "rejected_other",
    }
}

/// Elasticsearch's reason text without the document preview some versions append
/// ("Preview of field's value: '...'"), cut to [`MAX_DETAIL`] bytes.
pub fn log_safe_detail(reason: &str) -> String {
    let mut s = match reason.find("Preview of field's value") {
        Some(i) => reason[..i].trim_end().trim_end_matches('.').to_string(),
        None => reason.to_string(),
    };
    if s.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(v: Verdict) -> Vec<ItemOutcome> {
        match v {
            Verdict::Items(i) => i,
            other => panic!("expected per-item outcomes, got {other:?}"),
        }
    }

    #[test]
    fn all_created() {
        let body = br#"{"took":3,"errors":false,"items":[
            {"create":{"_index":"logs","_id":"a","_version":1,"result":"created","status":201}},
            {"create":{"_index":"logs","_id":"b","_version":1,"result":"created","status":201}}]}"#;
        assert_eq!(
            items(classify(200, body, 2)),
            vec![ItemOutcome::Created, ItemOutcome::Created]
        );
    }

    #[test]
    fn retry_only_the_failed_items() {
        let body = br#"{"took":3,"errors":true,"items":[
            {"create":{"_index":"logs","_id":"a","result":"created","status":201}},
            {"create":{"_index":"logs","_id":"b","status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution of coordinating operation"}}},
            {"create":{"_index":"logs","_id":"c","status":503,"error":{"type":"unavailable_shards_exception","reason":"primary shard is not active"}}},
            {"create":{"_index":"logs","_id":"d","status":409,"error":{"type":"version_conflict_engine_exception","reason":"[d]: version conflict, document already exists (current version [1])"}}},
            {"index":{"_index":"logs","_id":"e","result":"updated","status":200}}]}"#;
        assert_eq!(
            items(classify(200, body, 5)),
            vec![
                ItemOutcome::Created,
                ItemOutcome::Retry { status: 429 },
                ItemOutcome::Retry { status: 503 },
                ItemOutcome::Duplicate,
                ItemOutcome::Indexed,
            ]
        );
    }

    #[test]
    fn mapping_error_is_rejected_with_a_log_safe_reason() {
        let body = br#"{"errors":true,"items":[{"create":{"_index":"logs-a","_id":"x","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [@timestamp] of type [date] in document with id 'x'. Preview of field's value: 'secret-value'","caused_by":{"type":"illegal_argument_exception","reason":"bad date"}}}}]}"#;
        let out = items(classify(200, body, 1));
        let ItemOutcome::Rejected(r) = &out[0] else {
            panic!("expected a rejection, got {out:?}")
        };
        assert_eq!(r.status, 400);
        assert_eq!(r.reason, "mapper_parsing_exception");
        assert_eq!(r.index, "logs-a");
        assert_eq!(
            r.detail,
            "failed to parse field [@timestamp] of type [date] in document with id 'x'"
        );
        assert!(!r.detail.contains("secret-value"));
    }

    #[test]
    fn unknown_item_errors_get_a_bounded_label() {
        let body = br#"{"errors":true,"items":[{"create":{"_index":"Bad","status":400,"error":{"type":"some_new_exception","reason":"x"}}}]}"#;
        let out = items(classify(200, body, 1));
        assert!(
            matches!(&out[0], ItemOutcome::Rejected(r) if r.reason == "rejected_other" && r.error_type == "some_new_exception")
        );
    }

    #[test]
    fn item_authorization_and_block_errors_stop() {
        let body = br#"{"errors":true,"items":[
            {"create":{"_index":"logs","status":403,"error":{"type":"security_exception","reason":"action [indices:data/write/bulk[s]] is unauthorized"}}},
            {"create":{"_index":"logs","status":403,"error":{"type":"cluster_block_exception","reason":"index [logs] blocked by: [FORBIDDEN/8/index write (api)];"}}}]}"#;
        assert_eq!(
            items(classify(200, body, 2)),
            vec![
                ItemOutcome::Stop(Stop::Auth { status: 403 }),
                ItemOutcome::Stop(Stop::IndexBlocked {
                    index: "logs".into()
                })
            ]
        );
    }

    #[test]
    fn whole_request_answers() {
        let rejected = br#"{"error":{"root_cause":[{"type":"es_rejected_execution_exception","reason":"rejected"}],"type":"es_rejected_execution_exception","reason":"rejected"},"status":429}"#;
        assert_eq!(
            classify(429, rejected, 3),
            Verdict::RetryAll { reason: "http_429" }
        );
        assert_eq!(
            classify(503, b"", 3),
            Verdict::RetryAll { reason: "http_503" }
        );
        assert_eq!(
            classify(502, b"<html>bad gateway</html>", 3),
            Verdict::RetryAll { reason: "http_502" }
        );
        assert_eq!(
            classify(599, b"", 3),
            Verdict::RetryAll { reason: "http_5xx" }
        );
        assert_eq!(classify(413, b"", 3), Verdict::Split);
        let unauthorized = br#"{"error":{"root_cause":[{"type":"security_exception","reason":"unable to authenticate user [elastic] for REST request [/_bulk]"}],"type":"security_exception","reason":"unable to authenticate"},"status":401}"#;
        assert_eq!(
            classify(401, unauthorized, 3),
            Verdict::Stop(Stop::Auth { status: 401 })
        );
        assert_eq!(
            classify(403, b"", 3),
            Verdict::Stop(Stop::Auth { status: 403 })
        );
        let blocked =
            br#"{"error":{"type":"cluster_block_exception","reason":"blocked"},"status":403}"#;
        assert_eq!(
            classify(403, blocked, 3),
            Verdict::Stop(Stop::IndexBlocked {
                index: String::new()
            })
        );
        let newline = br#"{"error":{"type":"illegal_argument_exception","reason":"The bulk request must be terminated by a newline [\\n]"},"status":400}"#;
        assert_eq!(
            classify(400, newline, 3),
            Verdict::Stop(Stop::Refused {
                status: 400,
                error_type: "illegal_argument_exception".into()
            })
        );
        assert_eq!(
            classify(501, b"", 3),
            Verdict::Stop(Stop::Refused {
                status: 501,
                error_type: String::new()
            })
        );
    }

    #[test]
    fn malformed_or_mismatched_success_is_retried_whole() {
        assert_eq!(
            classify(200, b"<html>proxy</html>", 1),
            Verdict::RetryAll {
                reason: "invalid_response"
            }
        );
        let one = br#"{"errors":false,"items":[{"create":{"_index":"a","status":201}}]}"#;
        assert_eq!(
            classify(200, one, 2),
            Verdict::RetryAll {
                reason: "invalid_response"
            }
        );
        assert_eq!(
            classify(200, br#"{"errors":false,"items":[{}]}"#, 1),
            Verdict::RetryAll {
                reason: "invalid_response"
            }
        );
    }

    #[test]
    fn long_details_are_cut_on_a_char_boundary() {
        let d = log_safe_detail(&"é".repeat(400));
        assert!(d.len() <= MAX_DETAIL + '…'.len_utf8());
        assert!(d.ends_with('…'));
    }
}
