//! The stable CLI: `logroute crd` matches crds/, `logroute check` accepts the examples
//! and rejects broken files with field paths.

use std::process::Command;

fn logroute() -> Command {
    Command::new(env!("CARGO_BIN_EXE_logroute"))
}

#[test]
fn crds_directory_holds_exactly_the_generated_crd() {
    let out = logroute().arg("crd").output().expect("run logroute crd");
    assert!(
        out.status.success(),
        "logroute crd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).expect("UTF-8 CRD");
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/logroute.dev_logroutes.yaml"
    );
    let committed = std::fs::read_to_string(path).expect("crds/logroute.dev_logroutes.yaml exists");
    assert!(
        generated == committed,
        "crds/ is stale: run `cargo run -- crd > crds/logroute.dev_logroutes.yaml` (and copy it to the chart's crds/)"
    );
    for needle in [
        "shortNames:\n    - lr",
        "subresources:\n      status: {}",
        "name: Ready",
        "name: Sinks",
        "name: Delivering",
        "name: Lag",
    ] {
        assert!(generated.contains(needle), "CRD lacks {needle:?}");
    }
}

#[test]
fn check_accepts_every_example() {
    let mut examples: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"))
        .expect("examples/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 3, "expected examples, found {examples:?}");
    let out = logroute()
        .arg("check")
        .args(&examples)
        .output()
        .expect("run logroute check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "examples must be valid:\n{stdout}");
    assert_eq!(
        stdout.matches(": valid (").count(),
        examples.len(),
        "one valid line per example:\n{stdout}"
    );
}

#[test]
fn check_reports_field_paths_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("broken.yaml");
    std::fs::write(
        &file,
        "apiVersion: logroute.dev/v1alpha1\nkind: LogRoute\nmetadata: {name: broken, namespace: team-a}\nspec:\n  selector: {namespaceSelector: {}}\n  filter: {include: '(oops'}\n  sinks: [{name: s, syslog: {address: nohost}}]\n---\napiVersion: logroute.dev/v1alpha1\nkind: LogRoute\nmetadata: {name: typo, namespace: team-a}\nspec:\n  sinks: [{name: s, syslog: {address: 'h:1', transport: pigeon}}]\n",
    )
    .expect("write file");
    let out = logroute()
        .arg("check")
        .arg(&file)
        .output()
        .expect("run logroute check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "broken file must exit 1:\n{stdout}"
    );
    for expected in [
        "team-a/broken: invalid",
        "spec.selector.namespaceSelector: only LogRoutes in the operator namespace",
        "[Forbidden]",
        "spec.filter.include: not a valid regular expression",
        "spec.sinks[0].syslog.address: \"nohost\" has no port",
        "team-a/typo: spec.sinks[0].syslog.transport: unknown variant `pigeon`",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

#[test]
fn check_print_emits_the_versioned_document() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/payments-errors-syslog.yaml"
    );
    let out = logroute()
        .args(["check", "--print", example])
        .output()
        .expect("run logroute check");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json_start = stdout.find('{').expect("a JSON document");
    let doc = logroute::route::CompiledRoute::from_json(&stdout[json_start..])
        .expect("the printed document parses");
    assert_eq!(doc.version, logroute::route::DOCUMENT_VERSION);
    assert_eq!(doc.route.key(), "payments/payments-errors");
}
