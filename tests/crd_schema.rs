//! The CRD must be accepted by every supported kube-apiserver: no literal `null` in any
//! `enum` (releases before kubernetes PR 104969 refuse the whole CRD for it). Checked in
//! the generated CRD, in every committed copy, and in the plain manifests.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize as _;
use serde_yaml::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Paths (as `a.b[2].c`) of every `enum` list that holds a null, below `value`.
fn null_enums(value: &Value, at: &str, found: &mut Vec<String>) {
    match value {
        Value::Mapping(map) => {
            for (k, v) in map {
                let key = k.as_str().unwrap_or("?");
                let here = format!("{at}.{key}");
                if key == "enum" {
                    if let Value::Sequence(items) = v {
                        if items.iter().any(Value::is_null) {
                            found.push(here.clone());
                        }
                    }
                }
                null_enums(v, &here, found);
            }
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter().enumerate() {
                null_enums(v, &format!("{at}[{i}]"), found);
            }
        }
        _ => {}
    }
}

/// Every document of a multi-document YAML text, with the null enums it holds.
fn check_text(what: &str, text: &str) -> (usize, Vec<String>) {
    let mut found = Vec::new();
    let mut enums = 0;
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc)
            .unwrap_or_else(|e| panic!("{what}: document {i} is not YAML: {e}"));
        enums += serde_yaml::to_string(&value)
            .unwrap_or_default()
            .matches("enum:")
            .count();
        null_enums(&value, &format!("{what}#{i}"), &mut found);
    }
    (enums, found)
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

#[test]
fn no_enum_in_any_crd_holds_null() {
    let mut sources: Vec<(String, String)> = Vec::new();
    let out = Command::new(env!("CARGO_BIN_EXE_logroute"))
        .arg("crd")
        .output()
        .expect("run logroute crd");
    assert!(out.status.success(), "logroute crd failed");
    sources.push((
        "`logroute crd`".into(),
        String::from_utf8(out.stdout).expect("UTF-8"),
    ));
    let mut files = yaml_files(&repo().join("crds"));
    files.extend(yaml_files(&repo().join("charts/logroute/crds")));
    files.extend(yaml_files(&repo().join("manifests")));
    assert!(
        files.len() >= 3,
        "expected crds/, the chart's crds/ and manifests/, found {files:?}"
    );
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        sources.push((
            f.strip_prefix(repo()).unwrap_or(&f).display().to_string(),
            text,
        ));
    }
    for (what, text) in sources {
        let (enums, found) = check_text(&what, &text);
        if what.contains("crd") {
            assert!(
                enums >= 4,
                "{what}: expected the enums of transport, format, framing and compression, found {enums}"
            );
        }
        assert!(
            found.is_empty(),
            "literal null in enum (refused by apiservers before kubernetes PR 104969); \
             regenerate with `logroute crd` after fixing src/api.rs:\n{}",
            found.join("\n")
        );
    }
}

#[test]
fn the_walker_sees_a_null_in_a_nested_enum() {
    let yaml = "spec:\n  properties:\n    mode:\n      enum: [a, b, null]\n      nullable: true\n";
    let (_, found) = check_text("sample", yaml);
    assert_eq!(
        found,
        vec!["sample#0.spec.properties.mode.enum".to_string()]
    );
}
