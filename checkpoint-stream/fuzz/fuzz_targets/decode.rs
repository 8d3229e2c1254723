//! Fuzz the decoder. Byte 0 picks the mode: bit 0 set = repair every record's CRCs first (so
//! the fuzzer gets past the checksums into the record parsers and order rules), bits 1..7 =
//! chunk size for feeding. Every input must end in Ok or an Error, never a panic; when both
//! the allocation-free decoder and the in-memory model accept, they must agree.
#![no_main]

use checkpoint_stream::crc::crc32c;
use checkpoint_stream::model::Checkpoint;
use checkpoint_stream::{Decoder, Sink};
use libfuzzer_sys::fuzz_target;

fn repair_crcs(d: &mut [u8]) {
    let mut off = 16;
    while off + 16 <= d.len() {
        let len = u32::from_le_bytes(d[off + 4..off + 8].try_into().unwrap()) as usize;
        let body_end = (off + 16 + len).min(d.len());
        let c = crc32c(&d[off + 16..body_end]);
        d[off + 8..off + 12].copy_from_slice(&c.to_le_bytes());
        let h = crc32c(&d[off..off + 12]);
        d[off + 12..off + 16].copy_from_slice(&h.to_le_bytes());
        off = off + 16 + ((len + 7) & !7);
    }
}

struct Nop;
impl Sink for Nop {}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else { return };
    let mut data = rest.to_vec();
    if mode & 1 != 0 {
        repair_crcs(&mut data);
    }
    let chunk = ((mode >> 1) as usize).max(1) * 37;
    let mut leaves = vec![[0u8; 32]; 256];
    let mut dec = Box::new(Decoder::with_leaf_table(&mut leaves));
    let mut r = Ok(0);
    for c in data.chunks(chunk) {
        r = dec.feed(c, &mut Nop);
        if r.is_err() {
            break;
        }
    }
    let a = r.and_then(|_| dec.finish());
    let b = Checkpoint::from_bytes(&data);
    if let (Ok(()), Ok(c)) = (&a, &b) {
        assert!(c.max_pfn < 256);
        assert_eq!(c.compute_digest_by(c.digest_algorithm), c.digest);
    }
    // The model accepts streams the small leaf table cannot hold, nothing else.
    if b.is_ok() && a.is_err() {
        assert!(matches!(a, Err(checkpoint_stream::Error::LeafTableTooSmall { .. })), "{a:?}");
    }
});
