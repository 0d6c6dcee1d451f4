#![no_main]
// An arbitrary TCP byte stream: length-prefixed frames through the request path.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sdnet_resolver::fuzzing::tcp(data));
