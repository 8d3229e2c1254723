//! docs/tokens.md carries worked hex examples of each format. This test reads them from the
//! doc, parses them, checks every field against the values the doc lists (built here from
//! the same documented inputs), verifies the MACs and re-encodes byte for byte. If the doc or
//! the code drifts, it fails.

use token_tool::chain::iterate;
use token_tool::{from_hex, to_hex, BootToken, Certificate, Extent, TopUp};

/// The example secret shared by broker and node 1 (ASCII "example-node-secret!").
const SECRET: &[u8] = b"example-node-secret!";

fn doc() -> String {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/tokens.md");
    std::fs::read_to_string(p).expect("docs/tokens.md must exist")
}

/// The hex block following `<!-- example: NAME -->`.
fn example(name: &str) -> Vec<u8> {
    let d = doc();
    let marker = format!("<!-- example: {name} -->");
    let start = d
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/tokens.md lacks {marker}"));
    let rest = &d[start..];
    let open = rest.find("```hex\n").expect("hex fence after marker") + 7;
    let close = rest[open..].find("```").expect("closing fence") + open;
    // Each line may carry an offset prefix "0000:"; drop it.
    let hex: String = rest[open..close]
        .lines()
        .map(|l| match l.split_once(':') {
            Some((_, h)) => h,
            None => l,
        })
        .collect();
    from_hex(&hex).expect("doc example is hex")
}

/// s(0) = 20 zero bytes; the example chain has n = 20.
fn s(i: u64) -> [u8; 20] {
    iterate(&[0u8; 20], i)
}

fn boot() -> BootToken {
    BootToken {
        vcpus: 1,
        node_id: 1,
        memory_mib: 256,
        job_id: 42,
        expiry: 1_893_456_000, // 2030-01-01T00:00:00Z
        count: 10,
        max_topup: 100,
        nonce: core::array::from_fn(|i| i as u8),
        anchor: s(20),
        first: s(10),
        // SHA-1 of the empty string.
        loader_sha1: from_hex("da39a3ee5e6b4b0d3255bfef95601890afd80709")
            .unwrap()
            .try_into()
            .unwrap(),
        extents: vec![Extent {
            disk: 0,
            writable: true,
            start_sector: 2048,
            sectors: 1_048_576,
        }],
    }
}

fn topup() -> TopUp {
    TopUp {
        node_id: 1,
        job_id: 42,
        count: 10,
        value: s(0),
    }
}

fn cert() -> Certificate {
    Certificate {
        node_id: 1,
        job_id: 42,
        accepted: 20,
        balance: 13,
        issued_at: 1_893_000_000,
        last: s(0),
    }
}

fn show(b: &[u8]) -> String {
    b.chunks(16)
        .enumerate()
        .map(|(i, c)| format!("{:04x}: {}\n", i * 16, to_hex(c)))
        .collect()
}

#[test]
fn boot_token_example_matches_doc() {
    let ours = boot().encode(SECRET).unwrap();
    let doc = example("boot-token");
    assert_eq!(
        doc,
        ours,
        "doc example drifted; code encodes:\n{}",
        show(&ours)
    );
    let t = BootToken::verify(&doc, SECRET, 1, 1_800_000_000).unwrap();
    assert_eq!(t, boot());
    assert_eq!(
        t.encode(SECRET).unwrap(),
        doc,
        "re-encoding is byte-identical"
    );
    assert_eq!(doc.len(), 160);
}

#[test]
fn topup_example_matches_doc() {
    let ours = topup().encode();
    let doc = example("top-up");
    assert_eq!(
        doc,
        ours,
        "doc example drifted; code encodes:\n{}",
        show(&ours)
    );
    assert_eq!(TopUp::decode(&doc).unwrap().encode(), doc);
    // It extends the boot token's chain by exactly its count.
    assert_eq!(iterate(&topup().value, 10), boot().first);
}

#[test]
fn certificate_example_matches_doc() {
    let ours = cert().encode(SECRET).unwrap();
    let doc = example("certificate");
    assert_eq!(
        doc,
        ours,
        "doc example drifted; code encodes:\n{}",
        show(&ours)
    );
    let c = Certificate::verify(&doc, SECRET).unwrap();
    assert_eq!(c, cert());
    assert_eq!(c.encode(SECRET).unwrap(), doc);
}

#[test]
fn doc_lists_the_example_chain_values() {
    // The doc quotes s(10), s(20) and s(0); keep them honest too.
    let d = doc();
    for v in [s(0), s(10), s(20)] {
        assert!(
            d.contains(&to_hex(&v)),
            "docs/tokens.md should quote {}",
            to_hex(&v)
        );
    }
}
