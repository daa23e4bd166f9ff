//! Token-request bodies: `signup::check_body` must never panic, and every refusal must be a body
//! error whose pointer is empty or starts with `/`.
#![no_main]

use account_gate::signup::{check_body, SignupError, SignupPolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let strict = SignupPolicy {
        username_must_be_email: true,
        min_password_length: 8,
        ..SignupPolicy::default()
    };
    for policy in [SignupPolicy::default(), strict] {
        match check_body(data, &policy) {
            Ok(_) => {}
            Err(SignupError::Invalid { pointer, .. }) => {
                assert!(pointer.is_empty() || pointer.starts_with('/'), "{pointer}");
            }
            Err(other) => panic!("not a body error: {other:?}"),
        }
    }
});
