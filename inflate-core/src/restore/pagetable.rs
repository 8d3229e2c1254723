//! Page-table rewriting: the one operation behind both directions of a migration. A save
//! *normalises* each table (machine frame -> pfn); a restore *localises* it (pfn, or here
//! directly the source machine frame, -> the new machine frame). Flags (including NX) are
//! kept; Xen's own L4 slots are cleared, since Xen refills them when it validates the table.
use super::xen::pte;
use checkpoint_stream::PAGE_SIZE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PteError {
    /// A present entry names a frame the mapping does not know.
    Unmapped { index: usize, frame: u64 },
    /// A present L2/L3 entry with PSE: PV guests cannot carry superpages across a migration.
    Superpage { index: usize },
}

fn get(page: &[u8; PAGE_SIZE], i: usize) -> u64 {
    u64::from_le_bytes(page[i * 8..i * 8 + 8].try_into().unwrap())
}

fn put(page: &mut [u8; PAGE_SIZE], i: usize, v: u64) {
    page[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
}

/// Entry `i` of a table page.
pub fn entry(page: &[u8; PAGE_SIZE], i: usize) -> u64 {
    get(page, i)
}

/// Rewrite the frame of every present entry of a level-`level` table through `map` and clear
/// the Xen slots of an L4. Returns the number of entries rewritten. On error the page may be
/// partly rewritten: callers that must not change it run this on a copy first.
pub fn rewrite(
    page: &mut [u8; PAGE_SIZE],
    level: u8,
    mut map: impl FnMut(u64) -> Option<u64>,
) -> Result<u64, PteError> {
    let mut n = 0;
    for i in 0..pte::ENTRIES {
        let mut e = get(page, i);
        if level == 4 && (pte::XEN_L4_FIRST..=pte::XEN_L4_LAST).contains(&i) {
            e = 0;
        }
        if e & pte::PRESENT != 0 {
            if level > 1 && e & pte::PSE != 0 {
                return Err(PteError::Superpage { index: i });
            }
            let frame = (e & pte::FRAME) >> 12;
            let to = map(frame).ok_or(PteError::Unmapped { index: i, frame })?;
            e = (e & !pte::FRAME) | ((to << 12) & pte::FRAME);
            n += 1;
        }
        put(page, i, e);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(entries: &[(usize, u64)]) -> [u8; PAGE_SIZE] {
        let mut p = [0u8; PAGE_SIZE];
        for &(i, v) in entries {
            put(&mut p, i, v);
        }
        p
    }

    #[test]
    fn flags_kept_frames_mapped_xen_slots_cleared() {
        let mut p = page(&[
            (0, (0x100 << 12) | 0x67),
            (1, (0x5 << 12) | 0x66), // not present: untouched
            (256, (0xdead << 12) | 0x63),
            (271, 0x63),
            (272, (0x101 << 12) | pte::NX | 0x63),
        ]);
        let n = rewrite(&mut p, 4, |m| Some(m + 0x1000)).unwrap();
        assert_eq!(n, 2);
        assert_eq!(get(&p, 0), (0x1100 << 12) | 0x67);
        assert_eq!(get(&p, 1), (0x5 << 12) | 0x66);
        assert_eq!(get(&p, 256), 0);
        assert_eq!(get(&p, 271), 0);
        assert_eq!(get(&p, 272), (0x1101 << 12) | pte::NX | 0x63);
        // Slots 256..=271 are only Xen's in an L4.
        let mut l3 = page(&[(256, (0x7 << 12) | 1)]);
        assert_eq!(rewrite(&mut l3, 3, Some), Ok(1));
        assert_eq!(get(&l3, 256), (0x7 << 12) | 1);
    }

    #[test]
    fn unmapped_frames_and_superpages_are_errors() {
        let mut p = page(&[(3, (0x42 << 12) | 1)]);
        assert_eq!(
            rewrite(&mut p, 1, |_| None),
            Err(PteError::Unmapped {
                index: 3,
                frame: 0x42
            })
        );
        let mut p = page(&[(9, (0x42 << 12) | pte::PSE | 1)]);
        assert_eq!(
            rewrite(&mut p, 2, Some),
            Err(PteError::Superpage { index: 9 })
        );
        // At L1 bit 7 is PAT, not PSE.
        let mut p = page(&[(9, (0x42 << 12) | pte::PSE | 1)]);
        assert_eq!(rewrite(&mut p, 1, Some), Ok(1));
    }
}
