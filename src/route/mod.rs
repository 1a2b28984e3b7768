//! Validate and compile LogRoutes (pure), and match containers against compiled routes.

pub mod compile;
pub mod document;

pub use compile::{compile, compiled_object_name, CompileEnv, Compiled, Problem, Reason, SecretLookup};
pub use document::{CompiledRoute, DOCUMENT_VERSION};
