//! The LogRoute compiler: a pure function from a LogRoute (plus the namespaces and Secrets
//! it may refer to) to a [`CompiledRoute`] and its resolved credentials.

use std::collections::BTreeMap;

use crate::api::LogRoute;
use crate::route::document::CompiledRoute;

/// Why a LogRoute was not compiled; becomes the Ready=False reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// The spec breaks a rule (bad regex, address, duplicate name, ...).
    InvalidSpec,
    /// The spec asks for something its namespace may not have (tenancy).
    Forbidden,
    /// A referenced Secret or key does not exist.
    SecretNotFound,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidSpec => "InvalidSpec",
            Reason::Forbidden => "Forbidden",
            Reason::SecretNotFound => "SecretNotFound",
        }
    }
}

/// One problem with a LogRoute, at a field path such as `spec.sinks[0].syslog.address`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
    pub reason: Reason,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Reads Secrets for the compiler. The controller backs it with the API (through a
/// reflector store); `check` has none and only checks references for form.
pub trait SecretLookup {
    /// The Secret's data, or `None` when it does not exist.
    fn get(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>>;
}

/// What a compilation may consult besides the LogRoute itself.
pub struct CompileEnv<'a> {
    /// The namespace logroute runs in; only LogRoutes there may select other namespaces
    /// or host containers.
    pub operator_namespace: &'a str,
    /// Every namespace with its labels, to resolve `namespaceSelector`. `None` offline.
    pub namespaces: Option<&'a [(String, BTreeMap<String, String>)]>,
    /// Secret access; `None` offline.
    pub secrets: Option<&'a dyn SecretLookup>,
}

/// A compiled LogRoute.
#[derive(Clone, Debug, PartialEq)]
pub struct Compiled {
    pub document: CompiledRoute,
    /// Resolved credential values keyed as the document's `CredentialRef`s name them.
    /// Empty when the route references no Secret.
    pub credentials: BTreeMap<String, Vec<u8>>,
    /// The Secrets (namespace, name) the route referenced, for re-triggering.
    pub secret_refs: Vec<(String, String)>,
    /// Things that are allowed but worth telling the user (e.g. unresolved offline).
    pub warnings: Vec<String>,
}

/// Name of the compiled ConfigMap and credentials Secret for a LogRoute.
pub fn compiled_object_name(namespace: &str, name: &str) -> String {
    todo!("{namespace}{name}")
}

/// Validate and compile. Returns every problem found, not just the first.
pub fn compile(route: &LogRoute, env: &CompileEnv<'_>) -> Result<Compiled, Vec<Problem>> {
    let _ = (route, env.operator_namespace);
    todo!()
}
