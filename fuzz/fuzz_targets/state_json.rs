#![no_main]
// Arbitrary state files (the `dns serve` input and the daemon's model) through validation
// and the tables: valid ones must load, nothing may panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sdnet_resolver::fuzzing::state_json(data));
