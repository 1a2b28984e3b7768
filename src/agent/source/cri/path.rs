//! What the kubelet's log paths say: the pod and container a directory belongs to, and
//! the order of the files in it.
//!
//! `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log` is the file the
//! runtime writes; the kubelet rotates it by renaming it to `<restart>.log.<YYYYMMDD-hhmmss>`
//! and having the runtime reopen `<restart>.log`, and compresses older rotated files to
//! `….gz` (through a `….gz.tmp`). Namespace and pod names are DNS labels/subdomains and
//! the uid is a UUID, so none holds `_`.

use std::cmp::Ordering;
use std::path::Path;

/// The pod and container of a log directory `…/<namespace>_<pod>_<uid>/<container>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodLogDir {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container: String,
}

impl PodLogDir {
    /// `None` for a path that is not a container's log directory.
    pub fn parse(dir: &Path) -> Option<Self> {
        let container = dir.file_name()?.to_str()?;
        let pod_dir = dir.parent()?.file_name()?.to_str()?;
        let mut parts = pod_dir.split('_');
        let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || [namespace, pod, uid, container]
                .iter()
                .any(|p| p.is_empty() || p.starts_with('.'))
        {
            return None;
        }
        Some(PodLogDir {
            namespace: namespace.into(),
            pod: pod.into(),
            uid: uid.into(),
            container: container.into(),
        })
    }
}

/// A file of a container's log directory, by its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogFileName {
    /// `<restart>.log` (the file the runtime writes) or `<restart>.log.<timestamp>` (a
    /// rotated one): readable, in [`order`](LogFileName::order).
    Plain {
        restart: u32,
        rotated: Option<String>,
    },
    /// `<restart>.log.<timestamp>.gz`: rotated and compressed; not read.
    Compressed { restart: u32 },
}

impl LogFileName {
    /// `None` for anything else (`.tmp` files of a compression in progress, strangers).
    pub fn parse(name: &str) -> Option<Self> {
        let (text, rest) = name.split_once(".log")?;
        let restart: u32 = text.parse().ok()?;
        if restart.to_string() != text {
            return None;
        }
        match rest {
            "" => Some(LogFileName::Plain {
                restart,
                rotated: None,
            }),
            _ => {
                let ts = rest.strip_prefix('.')?;
                if let Some(ts) = ts.strip_suffix(".gz") {
                    return is_rotation_stamp(ts).then_some(LogFileName::Compressed { restart });
                }
                is_rotation_stamp(ts).then(|| LogFileName::Plain {
                    restart,
                    rotated: Some(ts.to_string()),
                })
            }
        }
    }

    /// The restart of the container the file belongs to.
    pub fn restart(&self) -> u32 {
        match self {
            LogFileName::Plain { restart, .. } | LogFileName::Compressed { restart } => *restart,
        }
    }

    /// Oldest first: by restart, then rotated files by their time, then the file the
    /// runtime writes. (Compressed files sort before the plain ones of their restart.)
    pub fn order(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }

    fn key(&self) -> (u32, u8, &str) {
        match self {
            LogFileName::Compressed { restart } => (*restart, 0, ""),
            LogFileName::Plain {
                restart,
                rotated: Some(ts),
            } => (*restart, 1, ts),
            LogFileName::Plain {
                restart,
                rotated: None,
            } => (*restart, 2, ""),
        }
    }
}

/// The kubelet's rotation suffix: `YYYYMMDD-hhmmss` (Go layout `20060102-150405`).
fn is_rotation_stamp(ts: &str) -> bool {
    let b = ts.as_bytes();
    b.len() == 15
        && b[8] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 8 || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_identity_from_the_path() {
        let d = PodLogDir::parse(Path::new(
            "/var/log/pods/payments_api-7d9f_0f8e2c1a-1111-2222-3333-444455556666/api",
        ))
        .expect("a pod log dir");
        assert_eq!(d.namespace, "payments");
        assert_eq!(d.pod, "api-7d9f");
        assert_eq!(d.uid, "0f8e2c1a-1111-2222-3333-444455556666");
        assert_eq!(d.container, "api");
        for bad in [
            "/var/log/pods/a_b/c",
            "/var/log/pods/a_b_c_d/e",
            "/var/log/pods/a__c/e",
            "/",
        ] {
            assert_eq!(PodLogDir::parse(Path::new(bad)), None, "{bad}");
        }
    }

    #[test]
    fn file_names_and_their_order() {
        let p = |n: &str| LogFileName::parse(n);
        assert_eq!(
            p("0.log"),
            Some(LogFileName::Plain {
                restart: 0,
                rotated: None
            })
        );
        assert_eq!(
            p("3.log.20240101-120000"),
            Some(LogFileName::Plain {
                restart: 3,
                rotated: Some("20240101-120000".into())
            })
        );
        assert_eq!(
            p("3.log.20240101-120000.gz"),
            Some(LogFileName::Compressed { restart: 3 })
        );
        for bad in [
            "3.log.20240101-120000.gz.tmp",
            "x.log",
            "03.log",
            "3.log.tmp",
            "3.logx",
            "3.log.2024",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
        let mut names: Vec<LogFileName> = [
            "1.log",
            "0.log",
            "1.log.20240101-120001",
            "1.log.20240101-120000",
            "0.log.20231231-000000",
        ]
        .iter()
        .map(|n| p(n).unwrap())
        .collect();
        names.sort_by(|a, b| a.order(b));
        let restarts: Vec<(u32, bool)> = names
            .iter()
            .map(|n| match n {
                LogFileName::Plain { restart, rotated } => (*restart, rotated.is_some()),
                LogFileName::Compressed { restart } => (*restart, true),
            })
            .collect();
        assert_eq!(
            restarts,
            [(0, true), (0, false), (1, true), (1, true), (1, false)]
        );
        assert!(
            p("1.log.20240101-120000")
                .unwrap()
                .order(&p("1.log.20240101-120001").unwrap())
                .is_lt()
        );
    }
}
