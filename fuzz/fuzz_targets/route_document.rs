//! The route document parser (what an agent reads from a ConfigMap): any text is either
//! refused with an error or read into a document that writes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logroute::route::CompiledRoute;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(doc) = CompiledRoute::from_json(text) {
        let again =
            CompiledRoute::from_json(&doc.to_json()).expect("a written document reads back");
        assert_eq!(again, doc);
    }
});
