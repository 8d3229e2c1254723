//! Page-table entries and the batched MMU operations of a hand-over (asm-x86/x86_64/page.h,
//! public/xen.h `mmu_update`, `mmuext_op`).
use crate::hypercall::{self as hc, MmuUpdate};

pub const PAGE_SHIFT: u64 = 12;
pub const _PAGE_PRESENT: u64 = 0x001;
pub const _PAGE_RW: u64 = 0x002;
pub const _PAGE_USER: u64 = 0x004;
pub const _PAGE_ACCESSED: u64 = 0x020;
pub const _PAGE_DIRTY: u64 = 0x040;
/// Bits 12..51 of an entry: the machine frame.
pub const PADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Xen's own L4 slots in a 64-bit PV guest (HYPERVISOR_VIRT_START..HYPERVISOR_VIRT_END).
pub const XEN_L4_SLOTS: core::ops::Range<usize> = 256..272;

/// The four table indices of a virtual address, L4 first.
pub const fn va_indices(va: u64) -> [usize; 4] {
    [
        (va >> 39) as usize & 511,
        (va >> 30) as usize & 511,
        (va >> 21) as usize & 511,
        (va >> 12) as usize & 511,
    ]
}

/// MMU_MACHPHYS_UPDATE for every `(mfn, pfn)`, 256 per hypercall. Returns the first failing rc
/// (0 if none) and how many updates Xen applied.
pub fn machphys(updates: impl Iterator<Item = (u64, u64)>) -> (i64, u64) {
    let mut buf = [MmuUpdate::default(); 256];
    let (mut n, mut total, mut first_rc) = (0usize, 0u64, 0i64);
    let flush = |buf: &[MmuUpdate], first_rc: &mut i64, total: &mut u64| {
        let (rc, done) = hc::mmu_update(buf);
        *total += done as u64;
        if rc != 0 && *first_rc == 0 {
            *first_rc = rc;
        }
    };
    for (mfn, pfn) in updates {
        buf[n] = MmuUpdate {
            ptr: (mfn << PAGE_SHIFT) | hc::MMU_MACHPHYS_UPDATE,
            val: pfn,
        };
        n += 1;
        if n == buf.len() {
            flush(&buf[..n], &mut first_rc, &mut total);
            n = 0;
        }
    }
    if n > 0 {
        flush(&buf[..n], &mut first_rc, &mut total);
    }
    (first_rc, total)
}

/// Why a page could not be mapped through a fresh chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// The address lies in Xen's L4 slots.
    XenSlot(usize),
    /// The L4 slot is already in use by the current tables.
    SlotInUse(usize),
}

impl core::fmt::Display for ChainError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ChainError::XenSlot(s) => write!(f, "L4 slot {s} is Xen's"),
            ChainError::SlotInUse(s) => write!(f, "L4 slot {s} is already in use"),
        }
    }
}

/// A fresh L3 -> L2 -> L1 chain that maps one page at `va`, to hang off the empty L4 slot
/// of `va` in the current tables (restore's pad, boot's trampoline: a page both the old and the
/// new tables map at the same address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    pub l4_slot: usize,
    /// `(table mfn, slot, entry)` for the L3, the L2 and the L1: each table frame holds only
    /// that entry. The leaf is read-only and executable: the page is code both tables run.
    pub tables: [(u64, usize, u64); 3],
    /// The L4 entry that hangs the chain in.
    pub l4_entry: u64,
}

/// The chain for `va` -> `page_mfn` through the table frames `chain` (L3, L2, L1), given the
/// current entry of `va`'s L4 slot. The caller writes `tables` (zeroed frames, one entry each),
/// removes every writable mapping of them (Xen refuses to make a frame a page table while one
/// exists), then calls `hook`.
pub fn chain_for(
    va: u64,
    page_mfn: u64,
    chain: [u64; 3],
    current_l4_entry: u64,
) -> Result<Chain, ChainError> {
    let idx = va_indices(va);
    if XEN_L4_SLOTS.contains(&idx[0]) {
        return Err(ChainError::XenSlot(idx[0]));
    }
    if current_l4_entry & _PAGE_PRESENT != 0 {
        return Err(ChainError::SlotInUse(idx[0]));
    }
    let table = |mfn: u64| (mfn << PAGE_SHIFT) | _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED;
    Ok(Chain {
        l4_slot: idx[0],
        tables: [
            (chain[0], idx[1], table(chain[1])),
            (chain[1], idx[2], table(chain[2])),
            (
                chain[2],
                idx[3],
                (page_mfn << PAGE_SHIFT) | _PAGE_PRESENT | _PAGE_ACCESSED,
            ),
        ],
        l4_entry: table(chain[0]),
    })
}

/// Write the chain's L4 entry into the (pinned) table `l4_mfn` with mmu_update; returns rc.
pub fn hook(l4_mfn: u64, c: &Chain) -> i64 {
    set_entry(l4_mfn, c.l4_slot, c.l4_entry)
}

/// `mmu_update` MMU_NORMAL_PT_UPDATE of entry `slot` of table `table_mfn`; returns rc.
pub fn set_entry(table_mfn: u64, slot: usize, val: u64) -> i64 {
    hc::mmu_update(&[MmuUpdate {
        ptr: ((table_mfn << PAGE_SHIFT) + slot as u64 * 8) | hc::MMU_NORMAL_PT_UPDATE,
        val,
    }])
    .0
}

/// Unhook a chain (undo of `hook`); returns rc.
pub fn unhook(l4_mfn: u64, c: &Chain) -> i64 {
    set_entry(l4_mfn, c.l4_slot, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_maps_one_read_only_executable_page() {
        let c = chain_for(0xffff_ffff_a000_2000, 0x777, [10, 11, 12], 0).unwrap();
        assert_eq!(c.l4_slot, 511);
        assert_eq!(c.tables[0], (10, 510, (11 << 12) | 0x23));
        assert_eq!(c.tables[1], (11, 256, (12 << 12) | 0x23));
        assert_eq!(c.tables[2], (12, 2, (0x777 << 12) | 0x21));
        assert_eq!(c.l4_entry, (10 << 12) | 0x23);
        assert_eq!(
            chain_for(0xffff_8000_0000_0000, 1, [1, 2, 3], 0),
            Err(ChainError::XenSlot(256))
        );
        assert_eq!(
            chain_for(0x1000, 1, [1, 2, 3], 0x1234_5067),
            Err(ChainError::SlotInUse(0))
        );
    }

    #[test]
    fn indices_of_the_kernel_map() {
        assert_eq!(va_indices(0xffff_ffff_8100_0000), [511, 510, 8, 0]);
        assert_eq!(va_indices(0x1000), [0, 0, 0, 1]);
    }
}
