//! docs/bootstrap.md §6: the worked example, read from the doc, against loader_abi::upload.
use loader_abi::upload::{self, Item};
use sha1::{Digest, Sha1};

fn block(doc: &str, name: &str) -> String {
    let marker = format!("<!-- example: {name} -->");
    let rest = &doc[doc.find(&marker).expect("example in the doc") + marker.len()..];
    let body = &rest[rest.find("```").unwrap()..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_string()
}

fn hexdump(s: &str) -> Vec<u8> {
    let hex: String = s
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(_, h)| h.replace(' ', "")))
        .collect();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn worked_example_parses_and_re_encodes() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/bootstrap.md"))
        .unwrap();
    let bytes = hexdump(&block(&doc, "session"));
    assert_eq!(bytes.len(), 51);
    let s = upload::parse_session(&bytes).unwrap();
    assert_eq!(s.stage2, b"\xeb\xfe");
    assert_eq!(s.kernel, b"\x7fELF");
    assert_eq!(s.initrd, b"");
    assert_eq!(s.cmdline, b"quiet");

    // Re-encode with the crate's own writers: byte for byte the doc's.
    let mut again = upload::stage1_header(s.stage2.len() as u32).to_vec();
    again.extend_from_slice(s.stage2);
    for (item, data) in [
        (Item::Kernel, s.kernel),
        (Item::Initrd, s.initrd),
        (Item::Cmdline, s.cmdline),
    ] {
        again.extend_from_slice(&upload::item_header(item, data.len() as u32));
        again.extend_from_slice(data);
    }
    assert_eq!(again, bytes);

    let want = block(&doc, "stage2-sha1");
    let sum: [u8; 20] = Sha1::digest(s.stage2).into();
    assert_eq!(
        std::str::from_utf8(&upload::hex20(&sum)).unwrap(),
        want.trim()
    );
    assert_eq!(upload::parse_hex20(want.trim().as_bytes()), Some(sum));
}

/// The version-2 example: the kernel as a `KERZ` item, inflated with stage 2's receiver.
#[cfg(feature = "inflate")]
#[test]
fn worked_example_v2_inflates_to_the_kernel() {
    use loader_abi::inflate::Inflater;
    use loader_abi::upload::{Coding, InflateError};
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/bootstrap.md"))
        .unwrap();
    let bytes = hexdump(&block(&doc, "session-v2"));
    assert_eq!(bytes.len(), 66);
    // A version-1 parser refuses the compressed tag.
    assert!(upload::parse_session(&bytes).is_err());
    let s = upload::parse_session_v2(&bytes).unwrap();
    assert_eq!(s.stage2, b"\xeb\xfe");
    assert_eq!(s.kernel.coding, Coding::Zlib);
    assert_eq!(s.kernel.inflated, 64);
    assert_eq!(s.kernel.data.len(), 15);
    assert_eq!(s.initrd.coding, Coding::Plain);
    assert_eq!(s.initrd.data, b"");
    assert_eq!(s.cmdline, b"quiet");
    let mut kernel = b"\x7fELF".to_vec();
    kernel.resize(64, 0);
    let z = s.kernel.data;
    for cut in 0..=z.len() {
        let mut out = [0u8; 64];
        let mut inf = Inflater::new(&mut out, z.len());
        inf.feed(&z[..cut]).unwrap();
        inf.feed(&z[cut..]).unwrap();
        assert_eq!(inf.finish().unwrap(), &kernel[..], "split at {cut}");
    }
    let declared = |m: usize| {
        let mut out = vec![0u8; m];
        let mut inf = Inflater::new(&mut out, z.len());
        inf.feed(z).and_then(|_| inf.finish().map(|_| ()))
    };
    assert_eq!(declared(63), Err(InflateError::TooLong { declared: 63 }));
    assert_eq!(
        declared(65),
        Err(InflateError::Short {
            got: 64,
            declared: 65
        })
    );
    // Re-encoded with the crate's writer: the doc's header bytes.
    let h = upload::zitem_header(Item::Kernel, 15, 64).unwrap();
    assert_eq!(&bytes[18..30], &h[..]);
}
