//! The end-to-end digest (DIGEST algorithms 1 and 2).
//!
//! leaf(p) = SHA-256(the 4096 bytes of pfn p at the capture point; zeros if the page was sent
//! as zero or never sent)
//! algorithm 1: root = SHA-256("LNDR-DIGEST-v1\0\0" || u64le(max_pfn + 1)
//!                             || leaf(0) || ... || leaf(max_pfn))
//! algorithm 2: root = SHA-256("LNDR-DIGEST-v2\0\0" || u64le(max_pfn + 1)
//!                             || u64le(p) || leaf(p) for each p in pfn order whose leaf is
//!                                not the zero leaf)
//!
//! Two equivalent ways to compute either, so each peer picks what its memory allows: keep one
//! 32-byte leaf per pfn and overwrite it as copies arrive (any order, last copy wins), or hash
//! the final contents in pfn order at the end. A plain hash list is used instead of an
//! order-independent sum of page hashes because additive combinations are open to
//! generalized-birthday collisions; the leaf table costs 32 bytes per 4 KiB page (0.8%).
//! Algorithm 2 hashes only the pfns that hold data: a guest's p2m usually spans many more pfns
//! than it has RAM (Linux sizes it for memory hotplug), and algorithm 1 hashes a zero leaf for
//! each, both ends, in the migration's downtime. Tagging each leaf with its pfn keeps the
//! encoding of the leaf table injective, so it binds the same content as algorithm 1.

use crate::format::PAGE_SIZE;
use sha2::{Digest as _, Sha256};

/// How the root is formed from the leaves: the DIGEST record's algorithm field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// 1: every leaf, pfn 0 to max_pfn.
    Leaves = 1,
    /// 2: the pfn and leaf of every pfn whose leaf is not the zero leaf.
    NonZeroLeaves = 2,
}

impl Algorithm {
    /// What encoders write.
    pub const CURRENT: Algorithm = Algorithm::NonZeroLeaves;

    pub fn from_code(code: u32) -> Option<Algorithm> {
        match code {
            1 => Some(Algorithm::Leaves),
            2 => Some(Algorithm::NonZeroLeaves),
            _ => None,
        }
    }
    pub fn code(self) -> u32 {
        self as u32
    }
    /// The 16 bytes the root's input starts with.
    pub fn domain_tag(self) -> [u8; 16] {
        match self {
            Algorithm::Leaves => *b"LNDR-DIGEST-v1\0\0",
            Algorithm::NonZeroLeaves => *b"LNDR-DIGEST-v2\0\0",
        }
    }
}

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
    alg: Algorithm,
    expected: u64,
    pushed: u64,
}

impl RootBuilder {
    pub fn new(alg: Algorithm, max_pfn: u64) -> Self {
        let mut h = Sha256::new();
        h.update(alg.domain_tag());
        h.update((max_pfn + 1).to_le_bytes());
        RootBuilder {
            h,
            alg,
            expected: max_pfn + 1,
            pushed: 0,
        }
    }
    /// The leaf of the next pfn.
    pub fn push(&mut self, leaf: &[u8; 32]) {
        match self.alg {
            Algorithm::Leaves => self.h.update(leaf),
            Algorithm::NonZeroLeaves if leaf == &ZERO_LEAF => {}
            Algorithm::NonZeroLeaves => {
                self.h.update(self.pushed.to_le_bytes());
                self.h.update(leaf);
            }
        }
        self.pushed += 1;
    }
    /// The root, or None if not exactly max_pfn + 1 leaves were pushed.
    pub fn finish(self) -> Option<[u8; 32]> {
        (self.pushed == self.expected).then(|| self.h.finalize().into())
    }
}

/// Root over a complete leaf table (len = max_pfn + 1).
pub fn root_of_leaves(alg: Algorithm, leaves: &[[u8; 32]]) -> [u8; 32] {
    let mut b = RootBuilder::new(alg, leaves.len() as u64 - 1);
    for l in leaves {
        b.push(l);
    }
    b.finish().expect("count matches by construction")
}

/// Root over final page contents in pfn order; `page(pfn)` returns None for zero pages.
pub fn root_of_pages<'a>(
    alg: Algorithm,
    max_pfn: u64,
    mut page: impl FnMut(u64) -> Option<&'a [u8; PAGE_SIZE]>,
) -> [u8; 32] {
    let mut b = RootBuilder::new(alg, max_pfn);
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
        for alg in [Algorithm::Leaves, Algorithm::NonZeroLeaves] {
            let r1 = root_of_leaves(alg, &leaves);
            let r2 = root_of_pages(alg, 2, |p| if p == 1 { Some(&a) } else { None });
            assert_eq!(r1, r2);
            // Position matters: the same page at another pfn gives another root.
            let r3 = root_of_pages(alg, 2, |p| if p == 2 { Some(&a) } else { None });
            assert_ne!(r1, r3);
            // So does the size: one more zero pfn at the end.
            let r4 = root_of_pages(alg, 3, |p| if p == 1 { Some(&a) } else { None });
            assert_ne!(r1, r4);
        }
        assert_ne!(
            root_of_leaves(Algorithm::Leaves, &leaves),
            root_of_leaves(Algorithm::NonZeroLeaves, &leaves)
        );
    }

    /// Algorithm 2 by its definition in docs/stream.md, spelled out.
    #[test]
    fn non_zero_leaves_hashes_pfn_and_leaf_of_each_data_page_only() {
        let mut a = [0u8; PAGE_SIZE];
        a[0] = 1;
        let la = leaf_hash(Some(&a));
        let mut h = Sha256::new();
        h.update(b"LNDR-DIGEST-v2\0\0");
        h.update(4u64.to_le_bytes());
        h.update(2u64.to_le_bytes());
        h.update(la);
        let want: [u8; 32] = h.finalize().into();
        let got = root_of_pages(Algorithm::NonZeroLeaves, 3, |p| (p == 2).then_some(&a));
        assert_eq!(got, want);
    }

    #[test]
    fn algorithm_codes_round_trip() {
        for alg in [Algorithm::Leaves, Algorithm::NonZeroLeaves] {
            assert_eq!(Algorithm::from_code(alg.code()), Some(alg));
        }
        assert_eq!(Algorithm::from_code(0), None);
        assert_eq!(Algorithm::from_code(3), None);
    }
}
