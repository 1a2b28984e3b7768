//! LogRoute documents for `--routes` files, and replacing such a file the way a
//! configuration tool does (write a temporary file, then rename it over the old one), so
//! that an agent polling the file never reads half of it.
//!
//! ```ignore
//! let yaml = routes::route("ns", "all", &[routes::syslog("central", rsyslog.tcp_port)]);
//! routes::write(&path, &[yaml]);
//! ```

use std::path::Path;

/// A syslog sink (TCP, RFC 5424) sending to `127.0.0.1:port`, with messages up to 1 MiB.
pub fn syslog(name: &str, port: u16) -> String {
    format!(
        "  - name: {name}\n    syslog: {{address: \"127.0.0.1:{port}\", maxMessageBytes: 1048576}}\n"
    )
}

/// As [`syslog`], with messages of syslog `facility` (e.g. `local1`), so that a receiver
/// shared by several sinks can tell them apart.
pub fn syslog_facility(name: &str, port: u16, facility: &str) -> String {
    format!(
        "  - name: {name}\n    syslog: {{address: \"127.0.0.1:{port}\", maxMessageBytes: 1048576, facility: {facility}}}\n"
    )
}

/// An Elasticsearch sink writing to `index` at `url`, sending a batch at least every
/// 200 ms.
pub fn elasticsearch(name: &str, url: &str, index: &str) -> String {
    format!(
        "  - name: {name}\n    elasticsearch:\n      endpoints: [\"{url}\"]\n      index: \"{index}\"\n      batch: {{timeoutMs: 200}}\n"
    )
}

/// A LogRoute `name` in namespace `ns` taking every container of the namespace, with
/// `sinks` (from [`syslog`] and [`elasticsearch`]).
pub fn route(ns: &str, name: &str, sinks: &[String]) -> String {
    format!(
        "apiVersion: logroute.dev/v1alpha1\nkind: LogRoute\nmetadata: {{name: {name}, namespace: \"{ns}\"}}\nspec:\n  sinks:\n{}",
        sinks.concat()
    )
}

/// Replace the routes file at `path` with `routes` (none: a file without routes).
pub fn write(path: &Path, routes: &[String]) {
    let text = if routes.is_empty() {
        "# no routes\n".to_string()
    } else {
        routes.join("---\n")
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write routes file");
    std::fs::rename(&tmp, path).expect("replace routes file");
}
