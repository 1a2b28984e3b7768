//! Validate and compile LogRoutes (pure), and match containers against compiled routes.

pub mod compile;
pub mod document;
pub mod matcher;

pub use compile::{
    CompileEnv, Compiled, Problem, Reason, SecretLookup, compile, compiled_object_name,
};
pub use document::{CompiledRoute, DOCUMENT_VERSION};
