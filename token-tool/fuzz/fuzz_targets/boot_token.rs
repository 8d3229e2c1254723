//! Boot-token parser and verifier: never panics, and whatever parses re-encodes to the
//! same bytes (so no two encodings mean the same token).
#![no_main]
use libfuzzer_sys::fuzz_target;
use token_tool::BootToken;

const SECRET: &[u8] = b"fuzz-node-secret-0123";

fuzz_target!(|data: &[u8]| {
    if let Ok((t, mac)) = BootToken::decode_unverified(data) {
        let mut again = t.encode_body().expect("a parsed token re-encodes");
        again.extend_from_slice(&mac);
        assert_eq!(again, data, "re-encoding differs");
        assert!(data.len() <= token_tool::wire::BOOT_MAX_LEN);
    }
    if let Ok(t) = BootToken::verify(data, SECRET, 1, 0) {
        // Only a correctly signed token may verify; the fuzzer cannot forge the HMAC, so
        // this can only be reached through the seed corpus.
        assert_eq!(t.encode(SECRET).unwrap(), data);
    }
});
