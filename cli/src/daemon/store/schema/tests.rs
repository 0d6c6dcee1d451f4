//! The layout's unit tests: keys parse back, records round-trip, IDs shorten safely.

use super::*;

/// The fuzz target's corpus (kept in `fuzz/corpus/store_record/`) through the same
/// checks: a deterministic slice of the fuzzing in every test run.
#[test]
fn fuzz_corpus_slice() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/store_record");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if let Ok(data) = std::fs::read(e.path()) {
            fuzz_record(&data);
            n += 1;
        }
    }
    for seed in [
        &b"\x00{\"id\":\"n\",\"name\":\"n\"}"[..],
        b"\x01{}",
        b"\x05/sdnet/v1/endpoints/a/b",
    ] {
        fuzz_record(seed);
    }
    assert!(
        n > 0 || !dir.exists(),
        "corpus at {} unreadable",
        dir.display()
    );
}

#[test]
fn keys_parse_back() {
    assert_eq!(parse(&network("n1")), Key::Network("n1"));
    assert_eq!(
        parse(&endpoint("n1", "s1")),
        Key::Endpoint {
            net: "n1",
            sandbox: "s1"
        }
    );
    let ip: IpAddr = "fd00::5".parse().unwrap();
    assert_eq!(parse(&ipam("n1", ip)), Key::Ipam { net: "n1", ip });
    assert_eq!(parse(&status("s1")), Key::Status("s1"));
    assert_eq!(parse(&sandbox_name("x")), Key::Other);
    assert_eq!(parse("/elsewhere/x"), Key::Other);
    assert_eq!(
        subnet(&"10.1.0.0/16".parse().unwrap()),
        "/sdnet/v1/subnets/10.1.0.0_16"
    );
}

#[test]
fn short_ids_never_split_a_character() {
    assert_eq!(short("0123456789abcdef"), "0123456789ab");
    assert_eq!(short("abc"), "abc");
    // Byte 12 falls inside "é": a byte slice there panicked.
    assert_eq!(short("aéééééééééééé"), "aééééééééééé");
    let rec = r#"{"id":"aéééééééééééé","name":"x","driver":"bridge","created":0,"subnets":[]}"#;
    let n: NetworkRec = decode("k", rec.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(n.bridge(), "sd-aééééééééééé");
}

#[test]
fn stable_hash_is_stable() {
    // Fixed values: a change here renames every veth of every running sandbox.
    assert_eq!(stable_hash(&[]), 0xcbf2_9ce4_8422_2325);
    assert_eq!(stable_hash(&["a", "b"]), stable_hash(&["a", "b"]));
    assert_ne!(stable_hash(&["ab", ""]), stable_hash(&["a", "b"]));
    assert_eq!(stable_hash(&["sandbox", "network"]), 0x3b4a_2220_821b_4bba);
}
