//! With every descriptor below 1024 taken, libnftables (which select()s on its socket and
//! would abort the process) is not used: the apply still works, through the binary. Its own
//! test binary, so hogging descriptors disturbs no other test.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;

use common::*;
use sdnet_netstack::nft::{Nft, move_fd_high};

#[test]
fn no_low_descriptors_falls_back_to_the_binary() {
    if !root() {
        return;
    }
    let lab = Lab::new();
    let ns = lab.ns("fds");
    let mut hog = Vec::new();
    loop {
        let f = File::open("/dev/null").unwrap();
        let high = f.as_raw_fd() >= 1100;
        hog.push(f);
        if high {
            break;
        }
    }
    let r = Nft::apply(&ns, "add table inet hogged");
    let tables = Nft::list_tables(&ns);
    drop(hog);
    r.unwrap();
    assert_eq!(
        tables.unwrap(),
        vec![("inet".to_string(), "hogged".to_string())]
    );
    // And the library path is back once descriptors are free.
    Nft::apply(&ns, "delete table inet hogged").unwrap();
    assert!(Nft::list_tables(&ns).unwrap().is_empty());

    let moved = move_fd_high(File::open("/dev/null").unwrap().into());
    assert!(moved.as_raw_fd() >= 1024);
}
