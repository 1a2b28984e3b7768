//! What flows through the agent: one log record with the container it came from.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::api::StreamName;

/// Docker's timestamp for a record: when dockerd received the line, with nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        }
    }

    pub fn to_datetime(self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(self.secs, self.nanos).unwrap_or_default()
    }

    /// Seconds from `self` to `later`; 0 when `later` is earlier (a clock stepped back).
    /// Integer arithmetic only: it is taken for every record sent.
    pub fn seconds_until(self, later: Timestamp) -> f64 {
        let nanos = (i128::from(later.secs) - i128::from(self.secs)) * 1_000_000_000
            + i128::from(later.nanos)
            - i128::from(self.nanos);
        nanos.max(0) as f64 / 1e9
    }

    /// `seconds.nanoseconds`, the form Docker's `since` parameter accepts.
    pub fn to_docker_since(self) -> String {
        format!("{}.{:09}", self.secs, self.nanos)
    }
}

/// Where a record ends in its container's log, on its own stream: the timestamp of its
/// last line and how many frames stamped exactly that had been read through it.
///
/// Reading the same log again (a resend, an agent restart from a checkpoint, a catch-up)
/// gives a record the same position, and no two records of one stream share one, even
/// when their timestamps and messages are equal. That makes it the identity of a record
/// for sinks that deduplicate (Elasticsearch document ids). Built by the sink worker from
/// the lane's cursor (see `sink::worker`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogPosition {
    pub timestamp: Timestamp,
    /// Frames stamped `timestamp` on the record's stream, counted from the first one
    /// through the record's last one (so at least 1 for a record read from Docker).
    pub seen: u32,
}

/// The pod a container belongs to, joined from the cri-dockerd labels and the pod cache.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Container name as in the pod spec.
    pub container_name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub owner_kind: Option<String>,
    pub owner_name: Option<String>,
}

/// A followed Docker container and everything known about it. Built once per container
/// (and rebuilt when its pod changes), shared by all of its records.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerInfo {
    pub id: String,
    /// Docker name without the leading `/`.
    pub name: String,
    pub image: String,
    /// Docker labels of the container.
    pub labels: BTreeMap<String, String>,
    /// Node (Kubernetes) or host name the agent runs on.
    pub node: String,
    /// Absent for non-pod (host) containers.
    pub pod: Option<PodInfo>,
}

impl ContainerInfo {
    /// Short id (12 hex digits) as `docker ps` shows it.
    /// Cut at a character boundary: the id comes from the Docker API, which should send
    /// hex, but a bad answer must not panic the sink (found by the syslog_encode fuzz
    /// target).
    pub fn short_id(&self) -> &str {
        let mut end = self.id.len().min(12);
        while !self.id.is_char_boundary(end) {
            end -= 1;
        }
        &self.id[..end]
    }

    /// Name a person recognises: the pod's container name, else the Docker name.
    pub fn display_name(&self) -> &str {
        self.pod
            .as_ref()
            .map(|p| p.container_name.as_str())
            .unwrap_or(&self.name)
    }
}

/// One log record.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub container: Arc<ContainerInfo>,
    pub stream: StreamName,
    pub timestamp: Timestamp,
    /// The message without its trailing newline; invalid UTF-8 already replaced.
    pub message: String,
    /// The line was longer than the agent's limit and was cut.
    pub truncated: bool,
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_short_id_never_splits_a_character() {
        let c = super::ContainerInfo {
            id: ".\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}]".into(),
            ..super::ContainerInfo::default()
        };
        assert_eq!(c.short_id(), ".\u{FFFD}\u{FFFD}\u{FFFD}");
        let hex = super::ContainerInfo {
            id: "0123456789abcdef".into(),
            ..super::ContainerInfo::default()
        };
        assert_eq!(hex.short_id(), "0123456789ab");
    }

    use super::Timestamp;

    #[test]
    fn seconds_until_is_never_negative() {
        let a = Timestamp {
            secs: 10,
            nanos: 900_000_000,
        };
        let b = Timestamp {
            secs: 12,
            nanos: 100_000_000,
        };
        assert!((a.seconds_until(b) - 1.2).abs() < 1e-9);
        assert_eq!(b.seconds_until(a), 0.0);
    }
}
