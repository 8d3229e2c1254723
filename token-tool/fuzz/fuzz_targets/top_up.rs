//! Top-up parser: never panics; a parsed top-up re-encodes to the same 44 bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use token_tool::TopUp;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = TopUp::decode(data) {
        assert_eq!(t.encode(), data, "re-encoding differs");
        assert!(t.count >= 1);
    }
});
