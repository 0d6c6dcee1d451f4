#![no_main]
// Arbitrary API request bodies through decoding and validation: refused in one line or valid
// (and still valid after a round trip), never a panic. The model and the checks are sdctl's
// own files (sdctl is a binary crate, so they are compiled in here by path).

#[path = "../../cli/src/api.rs"]
#[allow(dead_code)]
mod api;
#[path = "../../cli/src/daemon/api/validate.rs"]
#[allow(dead_code)]
mod validate;

libfuzzer_sys::fuzz_target!(|data: &[u8]| validate::fuzz_body(data));
