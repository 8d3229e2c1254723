//! docs/packetd.md carries two worked ICMP replies. This test reads them from the doc, checks
//! the ICMP header and checksum, decodes every field of the reply, and re-encodes the whole
//! message byte for byte with the code both packetd and `token-tool boot` use.

use token_tool::bootproto::{self as bp, BootReply, Status};
use token_tool::from_hex;

fn example(name: &str) -> Vec<u8> {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/packetd.md");
    let d = std::fs::read_to_string(p).expect("docs/packetd.md must exist");
    let marker = format!("<!-- example: {name} -->");
    let rest = &d[d
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/packetd.md lacks {marker}"))..];
    let open = rest.find("```hex\n").expect("hex fence after marker") + 7;
    let close = rest[open..].find("```").expect("closing fence") + open;
    let hex: String = rest[open..close]
        .lines()
        .map(|l| l.split_once(':').map_or(l, |(_, h)| h))
        .collect();
    from_hex(&hex).expect("doc example is hex")
}

/// The MAC of the boot token worked out in docs/tokens.md §3.
const MAC: &str = "0f39238c8cda3659f6edf04652f2a1979f59c9ee";

fn check(name: &str, want: BootReply) {
    let msg = example(name);
    assert_eq!(bp::inet_checksum(&msg), 0, "{name}: checksum");
    assert_eq!(&msg[..2], &[bp::ICMP_ECHO_REPLY, 0]);
    assert_eq!(
        &msg[4..8],
        &[0x12, 0x34, 0, 1],
        "{name}: identifier 0x1234, sequence 1"
    );
    let r = BootReply::decode(&msg[8..]).unwrap();
    assert_eq!(r, want);
    let mut again = [0u8; 64];
    let n = bp::write_echo(bp::ICMP_ECHO_REPLY, 0x1234, 1, &r.encode(), &mut again).unwrap();
    assert_eq!(&again[..n], msg.as_slice(), "{name}: re-encoding differs");
}

#[test]
fn doc_examples_decode_and_reencode() {
    let echo: [u8; 20] = from_hex(MAC).unwrap().try_into().unwrap();
    check(
        "reply-accepted",
        BootReply {
            status: Status::Accepted,
            reason: 0,
            job_id: 42,
            addr: [10, 0, 0, 120],
            port: 7000,
            domid: 5,
            balance: 10,
            echo,
        },
    );
    let refused = BootReply {
        status: Status::Refused,
        reason: bp::reason_code("bad-mac").unwrap(),
        job_id: 42,
        addr: [0; 4],
        port: 0,
        domid: 0,
        balance: 0,
        echo,
    };
    assert_eq!(refused.reason, 8);
    check("reply-refused", refused);
}

#[test]
fn certificate_query_example() {
    let q = example("cert-query");
    assert_eq!(q, bp::cert_query(42));
    assert_eq!(bp::parse_cert_query(&q), Some(42));
}
