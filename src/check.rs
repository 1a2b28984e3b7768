//! `logroute check`: validate LogRoute files offline.

use std::path::PathBuf;
use std::process::ExitCode;

pub fn run(files: &[PathBuf], namespace: &str, print: bool) -> ExitCode {
    let _ = (files, namespace, print);
    ExitCode::FAILURE
}
