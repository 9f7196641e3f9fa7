//! tool_parameters JSON parsing: the input is the string value of Claude
//! Code's `tool_parameters` attribute, expanded with
//! `RecordView::expand_json` directly (counting every list as objects
//! acted on), then carried in a `tool_result` log
//! record through the default mapping pack (which expands it and reads
//! paths, commands, URLs and MCP names out of it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_fuzz::{default_normalizer, normalize, tool_result, Request};
use vigil_ingest::record::{ItemLists, Origin, RecordView, Val};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut view = RecordView::default();
    view.insert(
        "tool_parameters".into(),
        Val::Str(text.into()),
        Origin::Attribute,
    );
    // Every list counts, of values or of objects: the counting sees them all.
    let items = ItemLists::new(".", Some("."), None).expect("valid regexes");
    view.expand_json("tool_parameters", Some(&items));
    view.for_each(|k, _, v, _| {
        let _ = (k.len(), v.as_text());
    });
    let n = default_normalizer();
    for tool in ["Bash", "WebFetch", "mcp__github__create_issue"] {
        normalize(n, &Request::Logs(tool_result(tool, text)));
    }
});
