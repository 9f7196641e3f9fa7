//! The rule file parser and compiler: the input is one user rule file, checked
//! with `vigil_rules::check` (parse, compile against the default lists,
//! validate the rule tests) as `vigil rules check FILE` does. There is no
//! public parse-from-text entry point, so the input goes through a scratch
//! file private to this process.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vigil_rules::RulesContext;

fuzz_target!(|data: &[u8]| {
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| vigil_fuzz::scratch_file("rule.yaml"));
    if data.len() > vigil_rules::MAX_FILE_BYTES || std::fs::write(path, data).is_err() {
        return;
    }
    let _ = vigil_rules::check(false, std::slice::from_ref(path), &RulesContext::default());
});
