//! The guest's own p2m array (Linux's `xen_p2m_addr`): page `i` of it holds the machine frames
//! of pfns `512*i .. 512*i+511`. A restore rewrites every page with the new frames, and
//! `INVALID_P2M_ENTRY` where a pfn has none, as Xen's restore copies its whole p2m over it.
use super::xen::INVALID_P2M_ENTRY;
use checkpoint_stream::PAGE_SIZE;

/// Entries per p2m page.
pub const PER_PAGE: u64 = (PAGE_SIZE / 8) as u64;

/// Fill p2m page `index` from `new_mfn(pfn)` (None: no frame).
pub fn fill_page(
    page: &mut [u8; PAGE_SIZE],
    index: u64,
    mut new_mfn: impl FnMut(u64) -> Option<u64>,
) {
    for (j, e) in page.chunks_exact_mut(8).enumerate() {
        let v = new_mfn(index * PER_PAGE + j as u64).unwrap_or(INVALID_P2M_ENTRY);
        e.copy_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_new_frames_or_invalid() {
        let mut p = [0u8; PAGE_SIZE];
        fill_page(&mut p, 2, |pfn| (pfn % 3 != 0).then_some(pfn + 0x10_0000));
        let e = |j: usize| u64::from_le_bytes(p[j * 8..j * 8 + 8].try_into().unwrap());
        assert_eq!(e(0), 1024 + 0x10_0000);
        assert_eq!(e(2), INVALID_P2M_ENTRY, "pfn 1026");
        assert_eq!(e(511), 1535 + 0x10_0000);
    }
}
