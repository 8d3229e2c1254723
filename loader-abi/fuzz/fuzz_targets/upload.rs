//! The upload headers stage 1 and stage 2 parse off the network (docs/bootstrap.md §1, §2):
//! every parser on arbitrary bytes, every error rendered as the line sent to the client, and
//! the bounded inflater of compressed items (§2.1) on the streams of version-2 sessions and on
//! raw streams, fed in pieces the input chooses.
#![no_main]
use core::fmt::Write;
use libfuzzer_sys::fuzz_target;
use loader_abi::inflate::Inflater;
use loader_abi::upload::{self, Coding, InflateError, Item, Line};

/// Largest destination the target allocates (declared lengths above it are skipped).
const OUT_MAX: usize = 1 << 20;

/// Inflate `z` into `declared` bytes in pieces of `step` bytes; check the receiver's promises.
fn inflate(z: &[u8], declared: usize, step: usize) {
    if declared > OUT_MAX {
        return;
    }
    let mut out = vec![0u8; declared];
    let mut inf = Inflater::new(&mut out, z.len());
    let mut r: Result<(), InflateError> = Ok(());
    for c in z.chunks(step.max(1)) {
        r = inf.feed(c);
        assert!(inf.inflated() <= declared);
        if r.is_err() {
            break;
        }
    }
    let r = r.and_then(|_| inf.finish().map(|o| assert_eq!(o.len(), declared)));
    if let Err(e) = r {
        let l = Line::new(format_args!("{}KERZ: {e}", upload::ERROR));
        assert!(l.as_bytes().len() <= upload::LINE_MAX);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Err(e) = upload::parse_stage1_header(data) {
        let _ = Line::new(format_args!("{}{e}", upload::STAGE1_REFUSED));
    }
    let _ = upload::is_stage1_magic(data);
    for item in Item::ALL {
        match upload::parse_item_header(data, item) {
            Ok(n) => {
                let (lo, hi) = item.bounds();
                assert!((lo..=hi).contains(&n));
            }
            Err(e) => {
                let l = Line::new(format_args!("{}{e}", upload::ERROR));
                assert!(l.as_bytes().len() <= upload::LINE_MAX);
            }
        }
        match upload::parse_item_header_v2(data, item) {
            Ok((Coding::Zlib, n)) => assert!(n >= 12 && n <= item.bounds().1),
            Ok((Coding::Plain, _)) => {}
            Err(e) => {
                let l = Line::new(format_args!("{}{e}", upload::ERROR));
                assert!(l.as_bytes().len() <= upload::LINE_MAX);
            }
        }
    }
    match upload::parse_session(data) {
        Ok(s) => {
            assert!(!s.stage2.is_empty() && !s.kernel.is_empty());
            assert!(s.cmdline.len() <= upload::CMDLINE_MAX as usize);
        }
        Err(e) => {
            let mut l = Line::default();
            let _ = write!(l, "{e}");
        }
    }
    // Version 2: every compressed part inflated, in pieces of a size the first byte chooses.
    let step = 1 + *data.first().unwrap_or(&0) as usize * 7;
    if let Ok(s) = upload::parse_session_v2(data) {
        for p in [s.kernel, s.initrd] {
            if p.coding == Coding::Zlib {
                inflate(p.data, p.inflated as usize, step);
            }
        }
    }
    // Raw: [declared length, 2 bytes][step, 1 byte][stream].
    if data.len() >= 3 {
        let declared = u16::from_be_bytes([data[0], data[1]]) as usize;
        inflate(&data[3..], declared, 1 + data[2] as usize);
    }
    let _ = upload::parse_hex20(data);
});
