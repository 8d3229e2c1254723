//! The end-to-end digest (algorithm 1).
//!
//! leaf(p) = SHA-256(the 4096 bytes of pfn p at the capture point; zeros if the page was sent
//! as zero or never sent)
//! root    = SHA-256("LNDR-DIGEST-v1\0\0" || u64le(max_pfn + 1) || leaf(0) || ... || leaf(max_pfn))
//!
//! Two equivalent ways to compute it, so each peer picks what its memory allows: keep one
//! 32-byte leaf per pfn and overwrite it as copies arrive (any order, last copy wins), or hash
//! the final contents in pfn order at the end. A plain hash list is used instead of an
//! order-independent sum of page hashes because additive combinations are open to
//! generalized-birthday collisions; the leaf table costs 32 bytes per 4 KiB page (0.8%).

use crate::format::PAGE_SIZE;
use sha2::{Digest as _, Sha256};

pub const DOMAIN_TAG: [u8; 16] = *b"LNDR-DIGEST-v1\0\0";

/// SHA-256 of a zero page.
pub const ZERO_LEAF: [u8; 32] = [
    0xad, 0x7f, 0xac, 0xb2, 0x58, 0x6f, 0xc6, 0xe9, 0x66, 0xc0, 0x04, 0xd7, 0xd1, 0xd1, 0x6b, 0x02,
    0x4f, 0x58, 0x05, 0xff, 0x7c, 0xb4, 0x7c, 0x7a, 0x85, 0xda, 0xbd, 0x8b, 0x48, 0x89, 0x2c, 0xa7,
];

/// The leaf hash of one page (None = zero page).
pub fn leaf_hash(page: Option<&[u8; PAGE_SIZE]>) -> [u8; 32] {
    match page {
        None => ZERO_LEAF,
        Some(p) => Sha256::digest(p).into(),
    }
}

/// Computes the root from leaves supplied in pfn order.
pub struct RootBuilder {
    h: Sha256,
    expected: u64,
    pushed: u64,
}

impl RootBuilder {
    pub fn new(max_pfn: u64) -> Self {
        let mut h = Sha256::new();
        h.update(DOMAIN_TAG);
        h.update((max_pfn + 1).to_le_bytes());
        RootBuilder {
            h,
            expected: max_pfn + 1,
            pushed: 0,
        }
    }
    pub fn push(&mut self, leaf: &[u8; 32]) {
        self.h.update(leaf);
        self.pushed += 1;
    }
    /// The root, or None if not exactly max_pfn + 1 leaves were pushed.
    pub fn finish(self) -> Option<[u8; 32]> {
        (self.pushed == self.expected).then(|| self.h.finalize().into())
    }
}

/// Root over a complete leaf table (len = max_pfn + 1).
pub fn root_of_leaves(leaves: &[[u8; 32]]) -> [u8; 32] {
    let mut b = RootBuilder::new(leaves.len() as u64 - 1);
    for l in leaves {
        b.push(l);
    }
    b.finish().expect("count matches by construction")
}

/// Root over final page contents in pfn order; `page(pfn)` returns None for zero pages.
pub fn root_of_pages<'a>(
    max_pfn: u64,
    mut page: impl FnMut(u64) -> Option<&'a [u8; PAGE_SIZE]>,
) -> [u8; 32] {
    let mut b = RootBuilder::new(max_pfn);
    for pfn in 0..=max_pfn {
        b.push(&leaf_hash(page(pfn)));
    }
    b.finish().expect("count matches by construction")
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn zero_leaf_constant_is_sha256_of_zero_page() {
        let z: [u8; 32] = Sha256::digest([0u8; PAGE_SIZE]).into();
        assert_eq!(z, ZERO_LEAF);
    }
    #[test]
    fn leaf_table_and_page_order_agree() {
        let mut a = [0u8; PAGE_SIZE];
        a[17] = 3;
        let leaves = [ZERO_LEAF, leaf_hash(Some(&a)), ZERO_LEAF];
        let r1 = root_of_leaves(&leaves);
        let r2 = root_of_pages(2, |p| if p == 1 { Some(&a) } else { None });
        assert_eq!(r1, r2);
        // Position matters: the same page at another pfn gives another root.
        let r3 = root_of_pages(2, |p| if p == 2 { Some(&a) } else { None });
        assert_ne!(r1, r3);
    }
}
