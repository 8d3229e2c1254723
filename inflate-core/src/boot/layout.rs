//! Where everything goes in the new domain, computed the way the toolstack's PV builder does it
//! for a 64-bit guest (tools/libs/guest xg_dom_core.c `xc_dom_build_image`, xg_dom_x86.c), in
//! the kernel's pfns 0..nr_pages:
//!
//! | pfns | what |
//! |---|---|
//! | 0 .. kernel | RAM below the kernel (mapped) |
//! | kernel | the ELF's loadable segments by physical address, page-rounded |
//! | (initrd) | only if the kernel cannot take it unmapped (no MOD_START_PFN note) |
//! | (p2m list) | only without a usable INIT_P2M note |
//! | start_info, xenstore, console | one page each |
//! | page tables | L4, L3s, L2s, L1s of the initial mapping |
//! | boot stack | one page |
//! | .. virt_pgtab_end | at least 512 KiB more, up to a 4 MiB boundary, all mapped |
//! | initrd | unmapped (MOD_START_PFN: start_info gets its pfn and SIF_MOD_START_PFN) |
//! | p2m list + its L3/L2/L1 | mapped at the INIT_P2M address in tables of its own |
//!
//! The initial mapping maps pfn p at virt_base + p * 4096 for every pfn below virt_pgtab_end;
//! the page-table pages themselves read-only (Xen refuses a writable mapping of a table).
use super::elf::Kernel;
use core::fmt;

pub const PAGE: u64 = 4096;
/// The builder pads the mapped region by this much after the boot stack (Linux relies on it).
pub const PADDING_PAGES: u64 = (512 * 1024) / PAGE;
/// 48-bit virtual addresses (bits_to_mask(VIRT_BITS_X86_64)).
pub const VADDR_MASK: u64 = (1 << 48) - 1;
/// start_info flag: mod_start is a pfn, not a virtual address.
pub const SIF_MOD_START_PFN: u32 = 1 << 3;

/// Entry bits of the initial tables (xg_dom_x86.c's x86_64 `lvl_prot`).
pub const L1_PROT: u64 = 0x001 | 0x002 | 0x020; // PRESENT | RW | ACCESSED
pub const L234_PROT: u64 = 0x001 | 0x002 | 0x004 | 0x020 | 0x040; // + USER | DIRTY
const RW: u64 = 0x002;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// The domain has too few pages for the layout (needed, have).
    TooSmall { needed: u64, have: u64 },
    /// The initrd or command line is larger than this builder takes.
    InitrdTooLarge(u64),
    /// Virtual address arithmetic overflowed (a hostile VIRT_BASE or INIT_P2M).
    AddressOverflow,
    /// Two mappings overlap (INIT_P2M inside the initial mapping).
    OverlappingMappings,
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::TooSmall { needed, have } => write!(
                f,
                "the domain has {have} pages, the kernel's layout needs {needed}"
            ),
            LayoutError::InitrdTooLarge(n) => write!(f, "initrd of {n} bytes is too large"),
            LayoutError::AddressOverflow => write!(f, "kernel addresses overflow"),
            LayoutError::OverlappingMappings => {
                write!(f, "INIT_P2M area overlaps the initial mapping")
            }
        }
    }
}

/// The tables of one level of one mapping (xg_dom_x86.c `struct xc_dom_x86_mapping_lvl`):
/// `count` tables from pfn `pfn` cover the (48-bit) virtual range from..=to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Level {
    pub from: u64,
    pub to: u64,
    pub pfn: u64,
    pub count: u64,
}

/// One mapped area: virtual from..=to -> pfns from `pfn`, and its tables per level
/// (`lvls[3]` = L4, only in the first mapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mapping {
    pub from: u64,
    pub to: u64,
    pub pfn: u64,
    pub tables: u64,
    pub lvls: [Level; 4],
}

/// A run of pfns with the virtual address of its first page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seg {
    pub pfn: u64,
    pub pages: u64,
    pub vstart: u64,
}

impl Seg {
    pub fn end(&self) -> u64 {
        self.pfn + self.pages
    }
    pub fn contains(&self, pfn: u64) -> bool {
        pfn >= self.pfn && pfn < self.end()
    }
}

/// The whole layout. Every pfn below `end` is written or mapped by the builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub nr_pages: u64,
    pub virt_base: u64,
    pub entry: u64,
    pub kernel: Seg,
    pub initrd: Option<Seg>,
    pub initrd_len: u64,
    /// The p2m list (nr_pages u64 entries, page-rounded), without its own tables.
    pub p2m: Seg,
    /// Set when the p2m list is mapped at INIT_P2M (start_info first_p2m_pfn/nr_p2m_frames
    /// then describe `p2m_seg_pages` pages from `p2m.pfn`, its tables included).
    pub p2m_outside: bool,
    pub p2m_seg_pages: u64,
    pub start_info_pfn: u64,
    pub xenstore_pfn: u64,
    pub console_pfn: u64,
    /// The initial mapping's tables (L4 first).
    pub pgtables: Seg,
    pub bootstack_pfn: u64,
    /// End (exclusive) of the initial mapping, a virtual address.
    pub virt_pgtab_end: u64,
    pub mappings: [Mapping; 2],
    pub nr_mappings: usize,
    /// SIF_* flags for start_info.
    pub flags: u32,
    /// start_info mod_start / mod_len.
    pub mod_start: u64,
    pub mod_len: u64,
    pub hypercall_pfn: Option<u64>,
    /// First pfn after everything the builder allocates.
    pub end: u64,
}

/// The builder's allocator state: virtual and pfn cursors move together.
struct Alloc {
    virt_end: u64,
    pfn_end: u64,
    nr_pages: u64,
}

impl Alloc {
    fn pages(&mut self, n: u64) -> Result<u64, LayoutError> {
        let pfn = self.pfn_end;
        let end = pfn.checked_add(n).ok_or(LayoutError::AddressOverflow)?;
        if end > self.nr_pages {
            return Err(LayoutError::TooSmall {
                needed: end,
                have: self.nr_pages,
            });
        }
        self.pfn_end = end;
        self.virt_end = n
            .checked_mul(PAGE)
            .and_then(|b| self.virt_end.checked_add(b))
            .ok_or(LayoutError::AddressOverflow)?;
        Ok(pfn)
    }
    /// Pad up to virtual address `to` (xc_dom_alloc_pad).
    fn pad_to(&mut self, to: u64) -> Result<(), LayoutError> {
        if to < self.virt_end || to % PAGE != 0 {
            return Err(LayoutError::AddressOverflow);
        }
        self.pages((to - self.virt_end) / PAGE).map(|_| ())
    }
    fn segment(&mut self, bytes: u64) -> Result<Seg, LayoutError> {
        let vstart = self.virt_end;
        let pages = bytes.div_ceil(PAGE);
        Ok(Seg {
            pfn: self.pages(pages)?,
            pages,
            vstart,
        })
    }
}

/// xg_dom_x86.c `count_pgtables`: the tables a new mapping from..=to needs beyond those of
/// the mappings before it; their pfns start at `pfn_alloc_end`.
fn count_pgtables(
    maps: &[Mapping],
    from: u64,
    to: u64,
    pfn_alloc_end: u64,
) -> Result<Mapping, LayoutError> {
    let mut m = Mapping {
        from: from & VADDR_MASK,
        to: to & VADDR_MASK,
        ..Mapping::default()
    };
    for c in maps {
        if m.from < c.to && m.to > c.from {
            return Err(LayoutError::OverlappingMappings);
        }
    }
    for l in (0..4).rev() {
        m.lvls[l].pfn = pfn_alloc_end + m.tables;
        if l == 3 {
            if maps.is_empty() {
                m.lvls[3] = Level {
                    from: 0,
                    to: VADDR_MASK,
                    pfn: pfn_alloc_end + m.tables,
                    count: 1,
                };
                m.tables += 1;
            }
            continue;
        }
        let bits = 12 + (l as u32 + 1) * 9;
        let mask = (1u64 << bits) - 1;
        let (mut lf, mut lt) = (m.from & !mask, m.to | mask);
        for c in maps {
            let cl = c.lvls[l];
            if cl.from == cl.to {
                continue;
            }
            if lf >= cl.from && lt <= cl.to {
                (lf, lt) = (0, 0);
                break;
            }
            if lf >= cl.from && lf <= cl.to {
                lf = cl.to + 1;
            }
            if lt >= cl.from && lt <= cl.to {
                lt = cl.from - 1;
            }
        }
        m.lvls[l].from = lf;
        m.lvls[l].to = lt;
        if lf < lt {
            m.lvls[l].count = ((lt - lf) >> bits) + 1;
        }
        m.tables += m.lvls[l].count;
    }
    Ok(m)
}

impl Layout {
    /// The layout for `kernel` in a domain of `nr_pages` pages with an initrd of `initrd_len`
    /// bytes (0: none).
    pub fn new(kernel: &Kernel<'_>, nr_pages: u64, initrd_len: u64) -> Result<Layout, LayoutError> {
        if initrd_len > nr_pages.saturating_mul(PAGE) {
            return Err(LayoutError::InitrdTooLarge(initrd_len));
        }
        let vb = kernel.virt_base;
        let mut a = Alloc {
            virt_end: vb,
            pfn_end: 0,
            nr_pages,
        };
        // Kernel: padding from virt_base to its start, then its pages.
        a.pad_to(kernel.virt_kstart)?;
        let kseg = a.segment(kernel.virt_kend - kernel.virt_kstart)?;
        let unmapped_initrd = kernel.unmapped_initrd;
        let mut initrd = None;
        if initrd_len > 0 && !unmapped_initrd {
            initrd = Some(a.segment(initrd_len)?);
        }
        // xc_dom_build_image: INIT_P2M is used only below virt_base and page aligned.
        let p2m_base = kernel.p2m_base.filter(|&b| b < vb && b % PAGE == 0);
        let p2m_bytes = nr_pages
            .checked_mul(8)
            .ok_or(LayoutError::AddressOverflow)?
            .next_multiple_of(PAGE);
        let mut p2m = Seg::default();
        if p2m_base.is_none() {
            p2m = a.segment(p2m_bytes)?;
        }
        let start_info_pfn = a.pages(1)?;
        let xenstore_pfn = a.pages(1)?;
        let console_pfn = a.pages(1)?;
        // alloc_pgtables_pv: grow the mapping until it covers its own tables, the boot stack
        // and the padding, rounded up to 4 MiB.
        let extra = 1 + PADDING_PAGES;
        let mut pages = extra;
        let mut m0;
        let try_end = loop {
            let try_end = pages
                .checked_mul(PAGE)
                .and_then(|b| a.virt_end.checked_add(b))
                .ok_or(LayoutError::AddressOverflow)?
                | ((1 << 22) - 1);
            let pfn_last = (try_end - vb) >> 12;
            if pfn_last >= nr_pages {
                return Err(LayoutError::TooSmall {
                    needed: pfn_last + 1,
                    have: nr_pages,
                });
            }
            m0 = count_pgtables(&[], vb, try_end, a.pfn_end)?;
            pages = m0.tables + extra;
            if a.virt_end.saturating_add(pages * PAGE) <= try_end.saturating_add(1) {
                break try_end;
            }
        };
        m0.pfn = 0;
        let virt_pgtab_end = try_end.checked_add(1).ok_or(LayoutError::AddressOverflow)?;
        let pgtables = a.segment(m0.tables * PAGE)?;
        let bootstack_pfn = a.pages(1)?;
        a.pad_to(virt_pgtab_end)?;
        let mut mappings = [m0, Mapping::default()];
        let mut nr_mappings = 1;
        let (mut flags, mut mod_start, mut mod_len) = (0u32, 0u64, 0u64);
        if let Some(s) = initrd {
            mod_start = s.vstart;
            mod_len = initrd_len;
        } else if initrd_len > 0 {
            let s = a.segment(initrd_len)?;
            flags |= SIF_MOD_START_PFN;
            mod_start = s.pfn;
            mod_len = s.pages * PAGE;
            initrd = Some(s);
        }
        let mut p2m_seg_pages = p2m.pages;
        if let Some(base) = p2m_base {
            let to = base
                .checked_add(p2m_bytes - 1)
                .ok_or(LayoutError::AddressOverflow)?;
            let mut m1 = count_pgtables(&mappings[..1], base, to, a.pfn_end)?;
            m1.pfn = a.pfn_end;
            for l in &mut m1.lvls {
                l.pfn += p2m_bytes / PAGE;
            }
            let seg = a.segment(p2m_bytes + m1.tables * PAGE)?;
            p2m = Seg {
                pfn: seg.pfn,
                pages: p2m_bytes / PAGE,
                vstart: base,
            };
            p2m_seg_pages = seg.pages;
            mappings[1] = m1;
            nr_mappings = 2;
        }
        let hypercall_pfn = kernel.hypercall_page.map(|h| (h - vb) / PAGE);
        Ok(Layout {
            nr_pages,
            virt_base: vb,
            entry: kernel.entry,
            kernel: kseg,
            initrd,
            initrd_len,
            p2m,
            p2m_outside: p2m_base.is_some(),
            p2m_seg_pages,
            start_info_pfn,
            xenstore_pfn,
            console_pfn,
            pgtables,
            bootstack_pfn,
            virt_pgtab_end,
            mappings,
            nr_mappings,
            flags,
            mod_start,
            mod_len,
            hypercall_pfn,
            end: a.pfn_end,
        })
    }

    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings[..self.nr_mappings]
    }

    /// Virtual address of pfn `p` inside the initial mapping.
    pub fn va(&self, pfn: u64) -> u64 {
        self.virt_base + pfn * PAGE
    }

    /// Pages mapped by the initial mapping (pfns 0..this).
    pub fn mapped_pages(&self) -> u64 {
        (self.virt_pgtab_end - self.virt_base) / PAGE
    }

    /// Initial stack pointer (top of the boot stack page) and start_info's address: rsp and
    /// rsi at the entry.
    pub fn boot_rsp(&self) -> u64 {
        self.va(self.bootstack_pfn + 1)
    }
    pub fn start_info_va(&self) -> u64 {
        self.va(self.start_info_pfn)
    }

    /// Every page-table page: (pfn, level 1..=4), L4 first, in each mapping's order.
    pub fn page_tables(&self) -> impl Iterator<Item = (u64, u8)> + '_ {
        self.mappings().iter().flat_map(|m| {
            (0..4usize).rev().flat_map(move |l| {
                let lv = m.lvls[l];
                (0..lv.count).map(move |i| (lv.pfn + i, l as u8 + 1))
            })
        })
    }

    /// The L4's pfn (cr3 of the new kernel; start_info.pt_base is its virtual address).
    pub fn l4_pfn(&self) -> u64 {
        self.mappings[0].lvls[3].pfn
    }

    fn is_table(&self, pfn: u64) -> bool {
        self.mappings()
            .iter()
            .any(|m| pfn >= m.lvls[3].pfn && pfn < m.lvls[3].pfn + m.tables)
    }

    /// Write page-table page `table_pfn` (one of `page_tables()`), entries pointing at the
    /// machine frames `mfn(pfn)` of the new numbering (xg_dom_x86.c `setup_pgtables_pv`).
    /// Returns false if `table_pfn` is not one of the tables.
    pub fn write_table(
        &self,
        table_pfn: u64,
        mfn: &dyn Fn(u64) -> u64,
        out: &mut [u8; 4096],
    ) -> bool {
        out.fill(0);
        let Some((m1, l, idx)) = self.mappings().iter().enumerate().find_map(|(i, m)| {
            (0..4usize).find_map(|l| {
                let lv = m.lvls[l];
                (table_pfn >= lv.pfn && table_pfn < lv.pfn + lv.count)
                    .then(|| (i, l, table_pfn - lv.pfn))
            })
        }) else {
            return false;
        };
        let lv1 = self.mappings[m1].lvls[l];
        let shift = 12 + 9 * l as u32;
        let (from, to) = (lv1.from, lv1.to);
        let (win_lo, win_hi) = (idx * 512, idx * 512 + 511);
        for m2 in self.mappings() {
            let (lo, hi, pfn0) = if l > 0 {
                let lv = m2.lvls[l - 1];
                if lv.count == 0 {
                    continue;
                }
                (lv.from, lv.to, lv.pfn)
            } else {
                (m2.from, m2.to, m2.pfn)
            };
            if lo >= to || hi <= from {
                continue;
            }
            let p_s = (lo.max(from) - from) >> shift;
            let p_e = (hi.min(to) - from) >> shift;
            let first_pfn = ((lo.max(from) - lo) >> shift) + pfn0;
            for p in p_s.max(win_lo)..=p_e.min(win_hi) {
                let pfn = first_pfn + (p - p_s);
                let prot = if l > 0 {
                    L234_PROT
                } else if self.is_table(pfn) {
                    L1_PROT & !RW
                } else {
                    L1_PROT
                };
                let e = (mfn(pfn) << 12) | prot;
                let o = ((p - win_lo) * 8) as usize;
                out[o..o + 8].copy_from_slice(&e.to_le_bytes());
            }
        }
        true
    }
}
