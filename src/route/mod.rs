//! Validate and compile LogRoutes (pure), and match containers against compiled routes.

pub mod compile;
pub mod document;
pub mod egress;
pub mod matcher;
pub mod policy;

pub use compile::{
    CompileEnv, Compiled, Problem, Reason, SecretLookup, compile, compile_with_policy,
    compiled_object_name,
};
pub use document::{CompiledRoute, DOCUMENT_VERSION};
pub use policy::Policy;
