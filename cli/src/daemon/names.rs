//! Generated sandbox names, Docker style: `adjective_scientist`.

const LEFT: &[&str] = &[
    "admiring",
    "bold",
    "brave",
    "busy",
    "calm",
    "clever",
    "cool",
    "dazzling",
    "eager",
    "elated",
    "epic",
    "festive",
    "focused",
    "gallant",
    "gifted",
    "happy",
    "hopeful",
    "jolly",
    "keen",
    "kind",
    "loving",
    "lucid",
    "modest",
    "nifty",
    "noble",
    "optimistic",
    "peaceful",
    "quirky",
    "relaxed",
    "serene",
    "sharp",
    "stoic",
    "sweet",
    "tender",
    "trusting",
    "upbeat",
    "vibrant",
    "wizardly",
    "youthful",
    "zealous",
];

const RIGHT: &[&str] = &[
    "babbage",
    "bardeen",
    "bohr",
    "cerf",
    "curie",
    "dijkstra",
    "einstein",
    "euler",
    "feynman",
    "gauss",
    "goldberg",
    "hamilton",
    "hopper",
    "kalam",
    "knuth",
    "lamarr",
    "lovelace",
    "meitner",
    "mirzakhani",
    "noether",
    "pascal",
    "perlman",
    "ritchie",
    "shannon",
    "tesla",
    "thompson",
    "torvalds",
    "turing",
    "wozniak",
    "yalow",
];

/// A random name (collisions are retried by the caller).
pub fn generate() -> String {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    let n = u32::from_le_bytes(b) as usize;
    format!(
        "{}_{}",
        LEFT[n % LEFT.len()],
        RIGHT[(n / LEFT.len()) % RIGHT.len()]
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn valid_names() {
        for _ in 0..50 {
            let n = super::generate();
            sdnet_resolver::model::check_object_name("sandbox", &n).unwrap();
        }
    }
}
