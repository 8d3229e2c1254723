//! Fixed virtual addresses of stage 2 in the loader domain.
//!
//! Xen maps the loader's boot image from virtual address 0; a loader domain has at most 1 GiB,
//! so its boot mapping lives under the first L3 entry. Stage 1 maps stage 2 and the arena of
//! free frames under the second L3 entry (1 GiB .. 2 GiB), which nothing else uses, with an L2
//! table and L1 tables made from free frames of its own.

/// Page size.
pub const PAGE_SIZE: u64 = 4096;

/// Stage 2's link address: its flat binary's first byte, and its entry point.
pub const STAGE2_VA: u64 = 0x4000_0000;

/// The region stage 2 occupies, code, data, bss and all (one L1 table): the binary is copied
/// to its start and the rest is zero.
pub const STAGE2_REGION: u64 = 2 << 20;

/// Where the arena of free frames starts: free frame `free_pfn_first + i` is mapped read/write
/// at `ARENA_VA + i * PAGE_SIZE`.
pub const ARENA_VA: u64 = STAGE2_VA + STAGE2_REGION;

/// End of the window stage 1 maps (the second GiB of virtual addresses).
pub const MAPPED_END: u64 = 0x8000_0000;

/// Largest arena in pages (the window minus stage 2's region).
pub const ARENA_MAX_PAGES: u64 = (MAPPED_END - ARENA_VA) / PAGE_SIZE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_aligned_and_inside_the_second_gib() {
        assert_eq!(STAGE2_VA % (2 << 20), 0, "stage 2 starts an L2 entry");
        assert_eq!(ARENA_VA % (2 << 20), 0, "the arena starts an L2 entry");
        assert_eq!(STAGE2_VA >> 30, 1);
        assert_eq!((MAPPED_END - 1) >> 30, 1);
        assert_eq!(ARENA_MAX_PAGES, 511 * 512);
    }
}
