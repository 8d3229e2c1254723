//! The upload headers stage 1 and stage 2 parse off the network (docs/bootstrap.md §1, §2):
//! every parser on arbitrary bytes, and every error rendered as the line sent to the client.
#![no_main]
use core::fmt::Write;
use libfuzzer_sys::fuzz_target;
use loader_abi::upload::{self, Item, Line};

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
    let _ = upload::parse_hex20(data);
});
