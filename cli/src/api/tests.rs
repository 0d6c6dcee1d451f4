//! Parsing and formatting of the API model.

use super::*;

#[test]
fn times_are_rfc3339_utc() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(1_796_317_749), "2026-12-03T17:09:09Z");
    let t = parse_rfc3339("2026-12-03T17:09:09Z").unwrap();
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(secs, 1_796_317_749);
    assert!(parse_rfc3339("2026-12-03T17:09:09.5Z").is_some());
    assert!(parse_rfc3339("1796404149").is_none());
    assert!(
        rfc3339(1_000) < rfc3339(999_999_999),
        "fixed width sorts by time"
    );
}

#[test]
fn port_specs() {
    let p: PortSpec = "8080:80".parse().unwrap();
    assert_eq!(
        (p.host_ip, p.host_port, p.container_port, p.protocol),
        (None, 8080, 80, Protocol::Tcp)
    );
    let p: PortSpec = "127.0.0.1:53:5353/udp".parse().unwrap();
    assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(p.protocol, Protocol::Udp);
    let p: PortSpec = "[::1]:8080:80".parse().unwrap();
    assert_eq!(p.host_ip, Some("::1".parse().unwrap()));
    for bad in [
        "80",
        "0:80",
        "70000:80",
        "a:b",
        "1.2.3:80:80",
        "8080:80/sctp",
        "1:2:3:4",
    ] {
        assert!(bad.parse::<PortSpec>().is_err(), "{bad}");
    }
}

#[test]
fn link_and_expose_specs() {
    let l: LinkSpec = "web:db".parse().unwrap();
    assert_eq!((l.target.as_str(), l.alias.as_deref()), ("web", Some("db")));
    let l: LinkSpec = "/web".parse().unwrap();
    assert_eq!((l.target.as_str(), l.alias), ("web", None));
    for bad in ["", ":db", "web:", "a:b:c"] {
        assert!(bad.parse::<LinkSpec>().is_err(), "{bad}");
    }
    let e: ExposedPort = "53/udp".parse().unwrap();
    assert_eq!((e.port, e.end, e.protocol), (53, None, Protocol::Udp));
    let e: ExposedPort = "8000-8002".parse().unwrap();
    assert_eq!(e.ports().collect::<Vec<_>>(), [8000, 8001, 8002]);
    for bad in ["0", "80/sctp", "9-8", "1-2000", "x", "70000"] {
        assert!(bad.parse::<ExposedPort>().is_err(), "{bad}");
    }
}

#[test]
fn link_names() {
    for ok in ["/web/db", "web/db", "/web/DB-1"] {
        let l: LinkName = ok.parse().unwrap();
        assert_eq!(l.linker, "web", "{ok}");
        assert!(
            l.alias.eq_ignore_ascii_case("db") || l.alias == "DB-1",
            "{ok}"
        );
    }
    for bad in ["", "/", "web", "/web", "/web/", "//db", "/a/b/c", "web:db"] {
        assert!(bad.parse::<LinkName>().is_err(), "{bad}");
    }
}
