//! Synthetic checkpoints for tests and for the lab scenario while no real capture exists:
//! deterministic page contents from a seed, a share of zero pages, one vCPU.
extern crate std;
use checkpoint_stream::model::Checkpoint;
use checkpoint_stream::{page_type, PAGE_SIZE};
use std::boxed::Box;
use std::collections::HashMap;
use std::vec;
use std::vec::Vec;

/// A checkpoint of `max_pfn + 1` pages; every fourth page is zero, the others are filled from
/// an xorshift generator seeded with `seed` and the pfn.
pub fn checkpoint(max_pfn: u64, seed: u64) -> Checkpoint {
    let mut pages = HashMap::new();
    for pfn in 0..=max_pfn {
        if pfn % 4 == 3 {
            continue;
        }
        let mut p = Box::new([0u8; PAGE_SIZE]);
        let mut x = seed ^ (pfn.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
        for c in p.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        pages.insert(pfn, p);
    }
    let n = (max_pfn + 1) as usize;
    let p2m = (0..n as u64).map(|p| 0x10_0000 + p).collect();
    let ctx = vec![0u8; checkpoint_abi::vcpu_ctx::SIZE];
    let types = vec![page_type::NORMAL; n];
    Checkpoint::one_vcpu(max_pfn, "synthetic", pages, types, p2m, ctx)
}

/// The encoded stream of `checkpoint(max_pfn, seed)`.
pub fn stream(max_pfn: u64, seed: u64) -> Vec<u8> {
    checkpoint(max_pfn, seed)
        .write_to(Vec::new())
        .expect("writing to memory")
}

/// The start of a stream whose guest claims `max_pfn + 1` pages of RAM: HEADER, an empty
/// round, CAPTURE and PAGE_TYPES typing every pfn as an ordinary page, and nothing more. A
/// loader with fewer frames must refuse it (`too-large`) as soon as the types arrive, without
/// waiting for pages.
pub fn ram_claim(max_pfn: u64) -> Vec<u8> {
    let mut e = checkpoint_stream::Encoder::new(Vec::new()).expect("writing to memory");
    e.header(max_pfn, b"synthetic RAM claim")
        .and_then(|_| e.round(0, false))
        .and_then(|_| e.capture(0, 1, 0))
        .and_then(|_| e.page_types(0, &vec![page_type::NORMAL; (max_pfn + 1) as usize]))
        .expect("writing to memory");
    e.into_inner()
}
