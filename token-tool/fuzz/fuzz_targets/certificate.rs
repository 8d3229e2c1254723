//! Redemption-certificate parser and verifier: never panics; parsed fields re-encode to the
//! same signed bytes; a certificate verifies only with its exact MAC.
#![no_main]
use libfuzzer_sys::fuzz_target;
use token_tool::Certificate;

const SECRET: &[u8] = b"fuzz-node-secret-0123";

fuzz_target!(|data: &[u8]| {
    if let Ok((c, mac)) = Certificate::decode_unverified(data) {
        assert!(c.balance <= c.accepted);
        let signed = c.encode(SECRET).expect("a parsed certificate re-encodes");
        assert_eq!(signed[..64], data[..64], "re-encoding differs");
        let verified = Certificate::verify(data, SECRET);
        assert_eq!(verified.is_ok(), signed[64..] == mac[..]);
    }
});
