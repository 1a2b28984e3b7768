//! One bulk request's life: send, read every item, retry what may be retried, split on
//! 413, and report which records reached a final state.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::encode::EncodedBatch;
use super::retry::{ItemOutcome, Rejection, Stop, Verdict, classify};
use super::{ElasticsearchError, Inner, KIND};
use crate::record::Record;

/// Backoff for retries inside one send: attempt `n` (from 1) waits a random time in
/// `[d/2, d]` with `d = min(max, initial · 2^(n-1))`.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    /// Retries of one request (whole or its failed items) before the send gives the batch
    /// back; the default schedule spans roughly 15–30 s.
    pub max_retries: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
            max_retries: 8,
        }
    }
}

impl RetryPolicy {
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self.initial.saturating_mul(
            1u32.checked_shl(retry.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        let d = exp.min(self.max);
        d / 2 + d.mul_f64(fastrand::f64() / 2.0)
    }
}

/// Cut a batch into requests of at most `max_events` documents and `max_bytes` bytes
/// (uncompressed). A document larger than `max_bytes` goes alone.
pub fn plan_requests(
    spans: &[Range<usize>],
    max_events: usize,
    max_bytes: usize,
) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for (i, span) in spans.iter().enumerate() {
        if !current.is_empty() && (current.len() >= max_events || bytes + span.len() > max_bytes) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(i);
        bytes += span.len();
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// What one planned request achieved.
pub(super) struct Report {
    /// Records (batch positions) in a final state: indexed, duplicate or rejected.
    pub done: Vec<usize>,
    /// Set when the request gave up; the records not in `done` must be sent again later.
    pub error: Option<ElasticsearchError>,
}

struct Work {
    items: Vec<usize>,
    retries: u32,
    wait: bool,
}

impl Inner {
    pub(super) async fn deliver(
        &self,
        batch: &EncodedBatch,
        records: &[Arc<Record>],
        items: Vec<usize>,
    ) -> Report {
        let mut report = Report {
            done: Vec::with_capacity(items.len()),
            error: None,
        };
        let mut queue = vec![Work {
            items,
            retries: 0,
            wait: false,
        }];
        while let Some(Work {
            mut items,
            retries,
            wait,
        }) = queue.pop()
        {
            if wait {
                tokio::time::sleep(self.policy.backoff(retries)).await;
            }
            let endpoint = self.transport.current();
            let started = Instant::now();
            let answer = self
                .transport
                .bulk(endpoint, batch.body_for(&items), items.len())
                .await;
            self.metrics
                .bulk_duration
                .observe(started.elapsed().as_secs_f64());
            self.metrics.batch_size.observe(items.len() as f64);
            let (verdict, last) = match answer {
                Ok(a) => (
                    classify(a.status, &a.body, items.len()),
                    format!("HTTP {}", a.status),
                ),
                Err(e) => (Verdict::RetryAll { reason: e.reason() }, e.to_string()),
            };
            let retry_or_give_up =
                |items: Vec<usize>, report: &mut Report, queue: &mut Vec<Work>| {
                    if retries >= self.policy.max_retries {
                        report.error = Some(ElasticsearchError::Unavailable {
                            endpoint: self.transport.endpoint(endpoint).display.clone(),
                            attempts: retries + 1,
                            last: last.clone(),
                        });
                        return;
                    }
                    self.metrics.send_retries.inc();
                    queue.push(Work {
                        items,
                        retries: retries + 1,
                        wait: true,
                    });
                };
            match verdict {
                Verdict::Items(outcomes) => {
                    let now = chrono::Utc::now();
                    let mut again = Vec::new();
                    let mut rejected: Vec<Rejection> = Vec::new();
                    let mut stop = None;
                    for (&i, outcome) in items.iter().zip(outcomes) {
                        match outcome {
                            ItemOutcome::Created => self.final_ok(
                                &self.metrics.created,
                                &records[i],
                                now,
                                i,
                                &mut report,
                            ),
                            ItemOutcome::Indexed => self.final_ok(
                                &self.metrics.indexed,
                                &records[i],
                                now,
                                i,
                                &mut report,
                            ),
                            ItemOutcome::Duplicate => self.final_ok(
                                &self.metrics.duplicate,
                                &records[i],
                                now,
                                i,
                                &mut report,
                            ),
                            ItemOutcome::Retry { .. } => again.push(i),
                            ItemOutcome::Rejected(r) => {
                                report.done.push(i);
                                rejected.push(r);
                            }
                            ItemOutcome::Stop(s) => {
                                stop.get_or_insert(s);
                            }
                        }
                    }
                    self.count_rejections(rejected);
                    if let Some(stop) = stop {
                        report.error = Some(self.stop_error(stop, endpoint));
                        return report;
                    }
                    if !again.is_empty() {
                        self.metrics.retried.inc_by(again.len() as u64);
                        self.attempt_error("item_retry");
                        tracing::debug!(route = %self.ctx.route, sink = %self.ctx.sink, documents = again.len(), "retrying failed bulk items");
                        retry_or_give_up(again, &mut report, &mut queue);
                    }
                }
                Verdict::RetryAll { reason } => {
                    self.attempt_error(reason);
                    tracing::warn!(
                        route = %self.ctx.route,
                        sink = %self.ctx.sink,
                        endpoint = %self.transport.endpoint(endpoint).display,
                        reason,
                        retry = retries + 1,
                        "bulk request failed ({last}); retrying"
                    );
                    self.transport.fail_over(endpoint);
                    retry_or_give_up(items, &mut report, &mut queue);
                }
                Verdict::Split if items.len() == 1 => {
                    self.attempt_error("http_413");
                    report.done.push(items[0]);
                    self.count_rejections(vec![Rejection {
                        status: 413,
                        reason: "request_too_large",
                        error_type: "request_too_large".into(),
                        detail: format!(
                            "a single document of {} bytes exceeds the server's request size limit",
                            batch.spans[items[0]].len()
                        ),
                        index: String::new(),
                    }]);
                }
                Verdict::Split => {
                    self.attempt_error("http_413");
                    let second = items.split_off(items.len() / 2);
                    queue.push(Work {
                        items: second,
                        retries,
                        wait: false,
                    });
                    queue.push(Work {
                        items,
                        retries,
                        wait: false,
                    });
                }
                Verdict::Stop(stop) => {
                    report.error = Some(self.stop_error(stop, endpoint));
                }
            }
            if report.error.is_some() {
                return report;
            }
        }
        report
    }

    fn final_ok(
        &self,
        result: &prometheus::IntCounter,
        record: &Record,
        now: chrono::DateTime<chrono::Utc>,
        i: usize,
        report: &mut Report,
    ) {
        result.inc();
        report.done.push(i);
        self.metrics.records_sent.inc();
        let age = now.signed_duration_since(record.timestamp.to_datetime());
        self.metrics
            .end_to_end
            .observe(age.to_std().unwrap_or(Duration::ZERO).as_secs_f64());
    }

    fn attempt_error(&self, reason: &str) {
        self.ctx
            .metrics
            .send_errors
            .with_label_values(&[KIND, &self.ctx.route, &self.ctx.sink, reason])
            .inc();
    }

    /// Count rejected documents and log them, one line per (index, error type).
    fn count_rejections(&self, rejected: Vec<Rejection>) {
        if rejected.is_empty() {
            return;
        }
        let mut groups: BTreeMap<(String, String), (Rejection, usize)> = BTreeMap::new();
        for r in rejected {
            self.metrics.rejected.inc();
            self.metrics.dropped_rejected.inc();
            self.attempt_error(r.reason);
            groups
                .entry((r.index.clone(), r.error_type.clone()))
                .or_insert((r, 0))
                .1 += 1;
        }
        for ((index, error_type), (first, count)) in groups {
            tracing::warn!(
                route = %self.ctx.route,
                sink = %self.ctx.sink,
                index = %index,
                error_type = %error_type,
                status = first.status,
                documents = count,
                "Elasticsearch rejected documents; they are counted and not retried: {}",
                first.detail
            );
        }
    }

    fn stop_error(&self, stop: Stop, endpoint: usize) -> ElasticsearchError {
        let endpoint = self.transport.endpoint(endpoint).display.clone();
        match stop {
            Stop::Auth { status } => ElasticsearchError::Auth { endpoint, status },
            Stop::IndexBlocked { index } => ElasticsearchError::IndexBlocked {
                endpoint,
                index: if index.is_empty() {
                    "the target index".into()
                } else {
                    index
                },
            },
            Stop::Refused { status, error_type } => ElasticsearchError::Refused {
                endpoint,
                status,
                error_type,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_respect_both_limits() {
        let spans: Vec<Range<usize>> = [10, 10, 10, 50, 10]
            .iter()
            .scan(0, |s, &l| {
                let r = *s..*s + l;
                *s += l;
                Some(r)
            })
            .collect();
        assert_eq!(
            plan_requests(&spans, 2, 1000),
            vec![vec![0, 1], vec![2, 3], vec![4]]
        );
        assert_eq!(
            plan_requests(&spans, 100, 30),
            vec![vec![0, 1, 2], vec![3], vec![4]]
        );
        assert_eq!(plan_requests(&spans, 100, 1000), vec![vec![0, 1, 2, 3, 4]]);
        assert!(plan_requests(&[], 1, 1).is_empty());
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            max_retries: 5,
        };
        for _ in 0..100 {
            let b1 = p.backoff(1);
            assert!(
                b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100),
                "{b1:?}"
            );
            let b3 = p.backoff(3);
            assert!(
                b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400),
                "{b3:?}"
            );
            let b40 = p.backoff(40);
            assert!(
                b40 >= Duration::from_millis(500) && b40 <= Duration::from_secs(1),
                "{b40:?}"
            );
        }
    }
}
