#![no_main]
// Arbitrary upstream replies through the relay (hickory-proto decode and checks, rendering).
libfuzzer_sys::fuzz_target!(|data: &[u8]| sdnet_resolver::fuzzing::upstream(data));
