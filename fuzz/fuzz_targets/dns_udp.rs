#![no_main]
// Arbitrary datagrams through the resolver's request path (parse, tables, engine, cache).
libfuzzer_sys::fuzz_target!(|data: &[u8]| sdnet_resolver::fuzzing::udp(data));
