//! A small synthetic 64-bit PV guest, for the exporter's golden tests and the xl image fuzz
//! target's seeds (`examples/xl_image_fuzz_seeds.rs`). Not a capture of a real guest.

use super::{put64, vcpu, FullCheckpoint};
use checkpoint_stream::model::Checkpoint;
use checkpoint_stream::{page_type, INVALID_MFN, PAGE_SIZE};
use std::collections::HashMap;

const MFN_BASE: u64 = 0x8_0000;
/// The sample's highest pfn: three p2m pages.
pub const MAX_PFN: u64 = 1100;

/// The sample's mfn of `pfn`.
pub fn mfn(pfn: u64) -> u64 {
    MFN_BASE + pfn * 3 // deliberately not identity and not monotone-adjacent
}

/// A page-table entry of the sample mapping `pfn` with `flags`.
pub fn pte(pfn: u64, flags: u64) -> u64 {
    (mfn(pfn) << 12) | flags
}

/// A small but structurally real 64-bit PV guest: L4 (pfn 10, pinned) -> L3 (11) -> L2
/// (12) -> L1 (13) mapping pfns 20..30; a user L4 (pfn 15, pinned); GDT at pfn 14;
/// start_info at pfn 1; pfn 5 unpopulated; p2m frames at pfns 40..42.
pub fn guest() -> FullCheckpoint {
    guest_up_to(MAX_PFN)
}

/// The same guest with `max_pfn` (at least 42) instead of [`MAX_PFN`]: its p2m frames are
/// pfns 40 and up, one per 512 pfns.
pub fn guest_up_to(max_pfn: u64) -> FullCheckpoint {
    assert!(max_pfn >= 42, "the sample guest uses pfns up to 42");
    let n = max_pfn as usize + 1;
    let mut pages = HashMap::new();
    let mut types = vec![page_type::NORMAL; n];
    let mut p2m: Vec<u64> = (0..=max_pfn).map(mfn).collect();
    types[5] = page_type::UNPOPULATED;
    p2m[5] = INVALID_MFN;
    let mut table = |pfn: u64, entries: &[(usize, u64)]| {
        let mut p = [0u8; PAGE_SIZE];
        for &(i, v) in entries {
            p[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        pages.insert(pfn, Box::new(p));
    };
    // Slot 256 holds a Xen mapping (an mfn the guest does not own): must be dropped.
    table(
        10,
        &[
            (0, pte(11, 0x67)),
            (256, 0xdead_b000 | 0x63),
            (511, pte(11, 0x63)),
        ],
    );
    types[10] = page_type::L4 | page_type::PINNED;
    table(11, &[(0, pte(12, 0x67))]);
    types[11] = page_type::L3;
    table(12, &[(3, pte(13, 0x67))]);
    types[12] = page_type::L2;
    let l1: Vec<(usize, u64)> = (0..10)
        .map(|i| (i, pte(20 + i as u64, 0x8000_0000_0000_0067)))
        .collect();
    table(13, &l1);
    types[13] = page_type::L1 | page_type::PINNED;
    table(15, &[]);
    types[15] = page_type::L4 | page_type::PINNED;
    for pfn in 20..30u64 {
        let mut p = [0u8; PAGE_SIZE];
        p[..8].copy_from_slice(&pfn.to_le_bytes());
        pages.insert(pfn, Box::new(p));
    }
    let mut ctx = vec![0u8; vcpu::SIZE];
    put64(&mut ctx, vcpu::RDX, mfn(1));
    put64(&mut ctx, vcpu::GDT_FRAMES, mfn(14));
    put64(&mut ctx, vcpu::GDT_ENTS, 16);
    put64(&mut ctx, vcpu::CR3, mfn(10) << 12);
    put64(&mut ctx, vcpu::CR1, mfn(15) << 12);
    FullCheckpoint {
        checkpoint: Checkpoint::one_vcpu(max_pfn, "test", pages, types, p2m, ctx),
        p2m_frames: (40..40 + (max_pfn + 1).div_ceil(512)).collect(),
    }
}
