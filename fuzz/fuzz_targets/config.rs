//! Configuration files: `config::from_toml_str` must never panic; it loads or lists errors.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = [("ACCOUNT_GATE__SERVER__MAX_CONNECTIONS", "10")];
    if let Err(errors) = account_gate::config::from_toml_str(text, &env) {
        assert!(!errors.to_string().is_empty());
    }
});
