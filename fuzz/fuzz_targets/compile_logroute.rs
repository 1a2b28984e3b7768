//! The LogRoute compiler on any YAML: never panics, refuses with field paths, and what it
//! compiles is a document the agent reads back unchanged. Also the egress policy parser.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use logroute::api::LogRoute;
use logroute::route::{CompileEnv, CompiledRoute, Policy, compile, compile_with_policy};

fn secrets(_: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    (name.len() % 2 == 0).then(|| {
        BTreeMap::from([
            ("username".to_string(), b"u".to_vec()),
            ("password".to_string(), b"p".to_vec()),
            ("ca.crt".to_string(), b"pem".to_vec()),
        ])
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Policy::parse(text);
    let Ok(route) = serde_yaml::from_str::<LogRoute>(text) else {
        return;
    };
    let namespaces = vec![
        (
            "payments".to_string(),
            BTreeMap::from([("tier".to_string(), "prod".to_string())]),
        ),
        ("logroute-system".to_string(), BTreeMap::new()),
    ];
    let lookup = secrets;
    let env = CompileEnv {
        operator_namespace: "logroute-system",
        namespaces: Some(&namespaces),
        secrets: Some(&lookup),
    };
    let strict = Policy::parse(
        "defaultAction: deny\nrules: [{name: a, action: allow, hosts: ['*.svc'], cidrs: [10.0.0.0/8], ports: [514, 9200]}]",
    )
    .expect("the fixed policy is valid");
    for result in [
        compile(&route, &env),
        compile_with_policy(&route, &env, &Policy::default()),
        compile_with_policy(&route, &env, &strict),
    ] {
        match result {
            Ok(compiled) => {
                let json = compiled.document.to_json();
                let back = CompiledRoute::from_json(&json).expect("compiled documents read back");
                assert_eq!(back, compiled.document);
            }
            Err(problems) => {
                assert!(!problems.is_empty());
                for p in problems {
                    assert!(!p.path.is_empty() && !p.message.is_empty(), "{p:?}");
                }
            }
        }
    }
});
