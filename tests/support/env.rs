//! Rules for external dependencies of the tests.

/// True when running in CI: a missing dependency there is a failure, never a skip.
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// Call when a dependency (`what`) is missing. In CI this panics so the run goes red;
/// elsewhere it prints why the test is not run and returns, so the caller can return.
pub fn missing(what: &str, how: &str) {
    if in_ci() {
        panic!("{what} is required in CI but is not available: {how}");
    }
    eprintln!("SKIPPED (not in CI): {what} is not available: {how}");
}
