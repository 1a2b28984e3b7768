//! `logroute check`: validate LogRoute files offline with the controller's compiler.
//!
//! Offline means no cluster: Secret references are checked for form (name, key,
//! namespace) but not resolved, and label-based namespaceSelectors are not resolved.
//! A LogRoute without `metadata.namespace` is checked as if applied to `default`, as
//! `kubectl apply` would do without `-n`.
//!
//! The operator's tenancy policy applies as in the controller: the default one, or the
//! file given with `--egress-policy` (the API server address is not known offline, so
//! only its Service names are refused).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Deserialize;

use crate::api::LogRoute;
use crate::route::{CompileEnv, Compiled, Policy, Problem, compile_with_policy};

/// Outcome of checking one YAML document.
pub enum Checked {
    Valid {
        key: String,
        compiled: Box<Compiled>,
    },
    Invalid {
        key: String,
        problems: Vec<Problem>,
    },
    /// Not a LogRoute at all, or not parseable as one.
    Unreadable {
        key: String,
        message: String,
    },
}

/// Parse every document of a multi-document YAML text and compile each LogRoute.
pub fn check_text(text: &str, operator_namespace: &str, policy: &Policy) -> Vec<Checked> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let key = format!("document {}", i + 1);
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                out.push(Checked::Unreadable {
                    key,
                    message: format!("not valid YAML: {e}"),
                });
                break;
            }
        };
        out.push(check_value(value, key, operator_namespace, policy));
    }
    out
}

fn check_value(
    value: serde_yaml::Value,
    key: String,
    operator_namespace: &str,
    policy: &Policy,
) -> Checked {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default();
    let api_version = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or_default();
    if kind != "LogRoute" || api_version != "logroute.dev/v1alpha1" {
        return Checked::Unreadable {
            key,
            message: format!(
                "expected apiVersion logroute.dev/v1alpha1 and kind LogRoute, found {api_version:?} {kind:?}"
            ),
        };
    }
    let meta = |field: &str| {
        value
            .get("metadata")
            .and_then(|m| m.get(field))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let key = match (meta("namespace"), meta("name")) {
        (ns, Some(name)) => format!("{}/{name}", ns.as_deref().unwrap_or("default")),
        _ => key,
    };
    let mut route: LogRoute = match serde_path_to_error::deserialize(value) {
        Ok(r) => r,
        Err(e) => {
            return Checked::Unreadable {
                key,
                message: format!("{}: {}", e.path(), e.inner()),
            };
        }
    };
    if route.metadata.namespace.is_none() {
        route.metadata.namespace = Some("default".into());
    }
    let key = format!(
        "{}/{}",
        route.metadata.namespace.as_deref().unwrap_or_default(),
        route.metadata.name.as_deref().unwrap_or("<no name>")
    );
    let env = CompileEnv {
        operator_namespace,
        namespaces: None,
        secrets: None,
    };
    match compile_with_policy(&route, &env, policy) {
        Ok(compiled) => Checked::Valid {
            key,
            compiled: Box::new(compiled),
        },
        Err(problems) => Checked::Invalid { key, problems },
    }
}

fn check_file(path: &Path, operator_namespace: &str, policy: &Policy) -> Vec<Checked> {
    match std::fs::read_to_string(path) {
        Ok(text) => check_text(&text, operator_namespace, policy),
        Err(e) => vec![Checked::Unreadable {
            key: "file".into(),
            message: format!("cannot read: {e}"),
        }],
    }
}

/// Run the subcommand: a line per LogRoute, problems indented below; exit 1 when any
/// file or LogRoute is invalid.
pub fn run(
    files: &[PathBuf],
    operator_namespace: &str,
    egress_policy: Option<&Path>,
    print: bool,
) -> ExitCode {
    let policy = match egress_policy.map(Policy::load).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            println!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for path in files {
        let results = check_file(path, operator_namespace, &policy);
        if results.is_empty() {
            println!("{}: no LogRoute found", path.display());
            failed = true;
        }
        for result in results {
            match result {
                Checked::Valid { key, compiled } => {
                    println!(
                        "{}: {key}: valid ({} sinks)",
                        path.display(),
                        compiled.document.sinks.len()
                    );
                    for w in &compiled.warnings {
                        println!("  warning: {w}");
                    }
                    if print {
                        println!("{}", compiled.document.to_json());
                    }
                }
                Checked::Invalid { key, problems } => {
                    failed = true;
                    println!("{}: {key}: invalid", path.display());
                    for p in problems {
                        println!("  {}: {} [{}]", p.path, p.message, p.reason.as_str());
                    }
                }
                Checked::Unreadable { key, message } => {
                    failed = true;
                    println!("{}: {key}: {message}", path.display());
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
