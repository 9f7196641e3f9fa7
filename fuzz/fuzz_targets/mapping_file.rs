//! The mapping file parser and compiler: the input is one mapping file,
//! compiled with `MappingSet::from_texts`; when it compiles, the fixed sample
//! requests (every source's shape) are normalized with it, so what the parser
//! accepted is also run.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vigil_fuzz::{normalize, samples};
use vigil_ingest::{MappingSet, Normalizer};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(set) = MappingSet::from_texts(&[("fuzz.yaml".to_string(), text.to_string())]) else {
        return;
    };
    let n = Normalizer::new(Arc::new(set));
    for req in samples() {
        normalize(&n, req);
    }
});
