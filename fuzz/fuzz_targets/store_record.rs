#![no_main]
// Arbitrary keys and record values of the store (a corrupted file, a bad etcd peer): refused
// or decoded into records that survive a round trip, never a panic. The records are sdctl's
// own file (sdctl is a binary crate, so it is compiled in here by path).
#[path = "../../cli/src/daemon/store/schema.rs"]
#[allow(dead_code)]
mod schema;
libfuzzer_sys::fuzz_target!(|data: &[u8]| schema::fuzz_record(data));
