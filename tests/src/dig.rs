//! The parts of a `dig`/`kdig` reply tests look at, parsed from their default output.

/// One resource record as dig prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rr {
    pub name: String,
    pub ttl: u32,
    pub rtype: String,
    pub data: String,
}

/// The parts of a dig/kdig answer tests look at.
#[derive(Debug, Clone, Default)]
pub struct Dig {
    pub status: String,
    pub flags: Vec<String>,
    pub answer: Vec<Rr>,
    pub authority: Vec<Rr>,
    pub additional: Vec<Rr>,
    pub opt: bool,
    pub raw: String,
}

impl Dig {
    /// Parses dig's (or kdig's) default output; None if it holds no reply header.
    pub fn parse(text: &str) -> Option<Dig> {
        let mut d = Dig {
            raw: text.to_string(),
            ..Dig::default()
        };
        let mut section = "";
        let mut seen_header = false;
        for line in text.lines() {
            let l = line.trim();
            if let Some(rest) = l.split("status: ").nth(1) {
                d.status = rest
                    .split([',', ';'])
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string();
                seen_header = true;
                continue;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(rest) = lower.strip_prefix(";; flags:") {
                let flags = rest.split(';').next().unwrap_or("");
                d.flags = flags.split_whitespace().map(str::to_string).collect();
                continue;
            }
            if lower.contains("opt pseudosection") || lower.contains("edns pseudosection") {
                d.opt = true;
            }
            if l.starts_with(";;") && l.ends_with("SECTION:") {
                section = if l.contains("ANSWER") {
                    "answer"
                } else if l.contains("AUTHORITY") {
                    "authority"
                } else if l.contains("ADDITIONAL") {
                    "additional"
                } else {
                    ""
                };
                continue;
            }
            if l.is_empty() || l.starts_with(';') {
                if l.is_empty() {
                    section = "";
                }
                continue;
            }
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 5 || section.is_empty() {
                continue;
            }
            let rr = Rr {
                name: f[0].to_string(),
                ttl: f[1].parse().unwrap_or(0),
                rtype: f[3].to_string(),
                data: f[4..].join(" "),
            };
            match section {
                "answer" => d.answer.push(rr),
                "authority" => d.authority.push(rr),
                _ => d.additional.push(rr),
            }
        }
        seen_header.then_some(d)
    }

    pub fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }

    /// Answer data of one type, in answer order.
    pub fn data(&self, rtype: &str) -> Vec<String> {
        self.answer
            .iter()
            .filter(|r| r.rtype == rtype)
            .map(|r| r.data.clone())
            .collect()
    }

    pub fn sorted(&self, rtype: &str) -> Vec<String> {
        let mut v = self.data(rtype);
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dig_and_kdig() {
        let dig = ";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1\n;; flags: qr aa rd ra; QUERY: 1, ANSWER: 1\n\n;; OPT PSEUDOSECTION:\n; EDNS: version: 0\n;; ANSWER SECTION:\nb.\t\t0\tIN\tA\t10.1.0.3\n\n;; AUTHORITY SECTION:\nb.\t0\tIN\tSOA\tns.sdnet. hostmaster.sdnet. 1 3600 600 86400 0\n";
        let d = Dig::parse(dig).unwrap();
        assert_eq!(d.status, "NOERROR");
        assert!(d.has_flag("aa") && d.opt);
        assert_eq!(d.data("A"), ["10.1.0.3"]);
        assert_eq!(d.authority[0].rtype, "SOA");
        let kdig = ";; ->>HEADER<<- opcode: QUERY; status: NXDOMAIN; id: 5\n;; Flags: qr aa rd; QUERY: 1; ANSWER: 0\n\n;; QUESTION SECTION:\n;; x.\t\tIN\tA\n";
        let k = Dig::parse(kdig).unwrap();
        assert_eq!(k.status, "NXDOMAIN");
        assert!(k.has_flag("aa") && !k.has_flag("ra"));
        assert!(Dig::parse(";; connection timed out; no servers could be reached").is_none());
    }
}
