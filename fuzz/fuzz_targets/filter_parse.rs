//! The search filter language (`gclip_search::filter::Filter::parse`) and matching a parsed
//! filter against a document. Run with `-max_len=4096`: filters are short, and the depth limit
//! for `NOT` chains is tracked separately (issue 10).
#![no_main]

use gclip_search::document::Fields;
use gclip_search::filter::Filter;
use libfuzzer_sys::fuzz_target;

fn document() -> Fields {
    let v = serde_json::json!({
        "price": 12.5,
        "count": 3,
        "title": "dark blue shirt",
        "colour": "dark blue",
        "tags": ["red", "sale", 7],
        "sold": false,
        "date": "2024-05-01",
        "empty": "",
        "none": null,
        "nested": {"a": 1},
    });
    match v {
        serde_json::Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() > 4096 {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(f) = Filter::parse(text) {
        let fields = document();
        let _ = f.matches("doc-1", &fields);
        let _ = f.matches("", &Fields::new());
    }
});
