//! The capture records a restore needs, kept while the stream goes by: CAPTURE, PAGE_TYPES,
//! P2M (as a sorted source-mfn -> pfn index), P2M_FRAMES and vCPU 0's BASIC and XSAVE states.
//! Everything lives in caller-provided storage (the loader has fixed tables in .bss), sized by
//! the caller; a stream that does not fit is still received and verified, but `shortfall`
//! says why it cannot be restored here.
use checkpoint_stream::{page_type, Capture, VcpuKind, INVALID_MFN};

/// Bytes of a 64-bit PV `vcpu_guest_context` (the BASIC state).
pub const VCPU_BASIC_LEN: usize = crate::restore::xen::vcpu::SIZE;
/// Largest XSAVE state kept: xcr0 (8), xcr0_accum (8) and a 4 KiB area (AVX-512 needs 2.7 KiB).
pub const XSAVE_MAX: usize = 16 + 4096;

/// Bits of a packed index entry: `(source mfn << PFN_BITS) | pfn`. Machine addresses on x86_64
/// have at most 52 bits (mfns < 2^40), and the loader's plan bounds pfns far below 2^24.
pub const PFN_BITS: u32 = 24;
const PFN_MASK: u64 = (1 << PFN_BITS) - 1;
const MFN_LIMIT: u64 = 1 << (64 - PFN_BITS);

/// Why a verified stream cannot be restored by this loader (it can still be verified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortfall {
    /// The page-type table holds fewer pfns than the stream has.
    TypesTable { pfns: u64, have: u64 },
    /// The p2m index holds fewer entries than the stream has machine frames.
    P2mIndex { have: u64 },
    /// The p2m frame list is longer than its table.
    P2mFrames { need: u64, have: u64 },
    /// A p2m entry names a machine frame beyond what the index can pack.
    MfnRange { pfn: u64, mfn: u64 },
    /// The stream has more pfns than the index can pack.
    PfnRange { max_pfn: u64 },
    /// vCPU 0's BASIC state has the wrong size.
    VcpuSize { len: usize },
    /// vCPU 0's XSAVE state is larger than kept.
    XsaveSize { len: usize },
}

impl core::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Shortfall::TypesTable { pfns, have } => {
                write!(
                    f,
                    "stream has {pfns} pfns, the page-type table holds {have}"
                )
            }
            Shortfall::P2mIndex { have } => {
                write!(
                    f,
                    "more than {have} machine frames in the p2m, the index is full"
                )
            }
            Shortfall::P2mFrames { need, have } => {
                write!(f, "{need} p2m frames, the table holds {have}")
            }
            Shortfall::MfnRange { pfn, mfn } => {
                write!(f, "p2m entry of pfn {pfn:#x} is mfn {mfn:#x}, beyond 2^40")
            }
            Shortfall::PfnRange { max_pfn } => {
                write!(f, "max_pfn {max_pfn:#x} is beyond 2^24 pfns")
            }
            Shortfall::VcpuSize { len } => {
                write!(f, "vCPU 0 BASIC state is {len} bytes, not {VCPU_BASIC_LEN}")
            }
            Shortfall::XsaveSize { len } => {
                write!(
                    f,
                    "vCPU 0 XSAVE state is {len} bytes, more than {XSAVE_MAX}"
                )
            }
        }
    }
}

/// Whether a PAGE_TYPES byte describes a page of guest RAM (anything but "no frame").
pub fn is_ram(t: u8) -> bool {
    t != page_type::UNPOPULATED
}

pub struct Records<'a> {
    types: &'a mut [u8],
    /// Packed `(mfn << PFN_BITS) | pfn`, unsorted while receiving, sorted by `seal`.
    index: &'a mut [u64],
    p2m_frames: &'a mut [u64],
    max_pfn: u64,
    capture: Option<Capture>,
    /// Pfns whose type arrived (chunks are contiguous from 0).
    types_len: u64,
    ram_pages: u64,
    index_len: usize,
    frames_len: u64,
    sealed: bool,
    shortfall: Option<Shortfall>,
    vcpu0: [u8; VCPU_BASIC_LEN],
    vcpu0_len: usize,
    xsave: [u8; XSAVE_MAX],
    xsave_len: usize,
}

impl<'a> Records<'a> {
    /// Records over caller storage: `types` one byte per pfn (>= max_pfn + 1), `index` one
    /// entry per machine frame of the guest (>= its RAM pages), `p2m_frames` one per p2m page
    /// (>= max_pfn / 512 + 1).
    pub fn new(types: &'a mut [u8], index: &'a mut [u64], p2m_frames: &'a mut [u64]) -> Self {
        Records {
            types,
            index,
            p2m_frames,
            max_pfn: 0,
            capture: None,
            types_len: 0,
            ram_pages: 0,
            index_len: 0,
            frames_len: 0,
            sealed: false,
            shortfall: None,
            vcpu0: [0; VCPU_BASIC_LEN],
            vcpu0_len: 0,
            xsave: [0; XSAVE_MAX],
            xsave_len: 0,
        }
    }

    /// No storage: the loader only verifies streams (every restore-only record is counted,
    /// not kept).
    pub fn none() -> Records<'static> {
        Records::new(&mut [], &mut [], &mut [])
    }

    /// Forget everything (a new stream starts with HEADER `max_pfn`).
    pub fn start(&mut self, max_pfn: u64) {
        self.max_pfn = max_pfn;
        self.capture = None;
        self.types_len = 0;
        self.ram_pages = 0;
        self.index_len = 0;
        self.frames_len = 0;
        self.sealed = false;
        self.shortfall = None;
        self.vcpu0_len = 0;
        self.xsave_len = 0;
        let pfns = max_pfn.saturating_add(1);
        if pfns > self.types.len() as u64 {
            self.short(Shortfall::TypesTable {
                pfns,
                have: self.types.len() as u64,
            });
        } else if pfns > 1 << PFN_BITS {
            self.short(Shortfall::PfnRange { max_pfn });
        }
    }

    fn short(&mut self, s: Shortfall) {
        self.shortfall.get_or_insert(s);
    }

    pub fn set_capture(&mut self, c: &Capture) {
        self.capture = Some(*c);
    }

    /// A PAGE_TYPES chunk (the decoder has checked range, contiguity and values). Returns
    /// the number of RAM pfns in it.
    pub fn add_types(&mut self, first_pfn: u64, types: &[u8]) -> u64 {
        let ram = types.iter().filter(|&&t| is_ram(t)).count() as u64;
        self.ram_pages += ram;
        let end = first_pfn + types.len() as u64;
        if end <= self.types.len() as u64 {
            self.types[first_pfn as usize..end as usize].copy_from_slice(types);
        }
        self.types_len = end;
        ram
    }

    /// A P2M chunk: every machine frame goes into the index.
    pub fn add_p2m(&mut self, first_pfn: u64, mfns: impl Iterator<Item = u64>) {
        for (i, mfn) in mfns.enumerate() {
            if mfn == INVALID_MFN {
                continue;
            }
            let pfn = first_pfn + i as u64;
            if mfn >= MFN_LIMIT {
                self.short(Shortfall::MfnRange { pfn, mfn });
                continue;
            }
            if self.index_len == self.index.len() {
                self.short(Shortfall::P2mIndex {
                    have: self.index.len() as u64,
                });
                continue;
            }
            self.index[self.index_len] = (mfn << PFN_BITS) | (pfn & PFN_MASK);
            self.index_len += 1;
        }
    }

    pub fn add_p2m_frames(&mut self, first_index: u64, pfns: impl Iterator<Item = u64>) {
        for (i, pfn) in pfns.enumerate() {
            let at = first_index + i as u64;
            match self.p2m_frames.get_mut(at as usize) {
                Some(slot) => *slot = pfn,
                None => self.short(Shortfall::P2mFrames {
                    need: self.max_pfn / 512 + 1,
                    have: self.p2m_frames.len() as u64,
                }),
            }
            self.frames_len = self.frames_len.max(at + 1);
        }
    }

    pub fn add_vcpu(&mut self, id: u32, kind: VcpuKind, data: &[u8]) {
        if id != 0 {
            return; // more than one vCPU is refused by the restore's checks (capture count)
        }
        match kind {
            VcpuKind::Basic if data.len() == VCPU_BASIC_LEN => {
                self.vcpu0.copy_from_slice(data);
                self.vcpu0_len = data.len();
            }
            VcpuKind::Basic => self.short(Shortfall::VcpuSize { len: data.len() }),
            VcpuKind::Xsave if data.len() <= XSAVE_MAX => {
                self.xsave[..data.len()].copy_from_slice(data);
                self.xsave_len = data.len();
            }
            VcpuKind::Xsave => self.short(Shortfall::XsaveSize { len: data.len() }),
            // EXTENDED and MSRS carry nothing a PV guest restoring itself can set.
            VcpuKind::Extended | VcpuKind::Msrs => {}
        }
    }

    /// Sort the p2m index (call once after END; later lookups need it).
    pub fn seal(&mut self) {
        self.index[..self.index_len].sort_unstable();
        self.sealed = true;
    }

    pub fn max_pfn(&self) -> u64 {
        self.max_pfn
    }

    pub fn capture(&self) -> Option<&Capture> {
        self.capture.as_ref()
    }

    /// RAM pfns according to PAGE_TYPES so far.
    pub fn ram_pages(&self) -> u64 {
        self.ram_pages
    }

    /// Whether the types of `pfn` are known and kept.
    pub fn has_types(&self) -> bool {
        self.types_len == self.max_pfn + 1 && self.types.len() as u64 >= self.types_len
    }

    /// Type byte of `pfn` (`UNPOPULATED` when not known or out of range).
    pub fn page_type(&self, pfn: u64) -> u8 {
        if pfn < self.types_len && pfn < self.types.len() as u64 {
            self.types[pfn as usize]
        } else {
            page_type::UNPOPULATED
        }
    }

    /// Types received so far (for pfns below `types_len`).
    pub fn types_received(&self) -> u64 {
        self.types_len
    }

    /// The stream carried the guest's p2m frame list: it is a real capture a restore can
    /// act on. Streams without it (synthetic ones) are verified only.
    pub fn restorable(&self) -> bool {
        self.frames_len > 0
    }

    pub fn shortfall(&self) -> Option<Shortfall> {
        self.shortfall
    }

    pub fn p2m_frames(&self) -> &[u64] {
        let n = (self.frames_len as usize).min(self.p2m_frames.len());
        &self.p2m_frames[..n]
    }

    /// Machine frames in the source p2m.
    pub fn mapped_frames(&self) -> u64 {
        self.index_len as u64
    }

    /// The pfn the source p2m maps machine frame `mfn` to (after `seal`).
    pub fn pfn_of_source_mfn(&self, mfn: u64) -> Option<u64> {
        debug_assert!(self.sealed, "lookups need the sorted index");
        if mfn >= MFN_LIMIT {
            return None;
        }
        let idx = &self.index[..self.index_len];
        let lo = mfn << PFN_BITS;
        let i = idx.partition_point(|&e| e < lo);
        match idx.get(i) {
            Some(&e) if e >> PFN_BITS == mfn => Some(e & PFN_MASK),
            _ => None,
        }
    }

    /// Index entries in ascending source-mfn order: (mfn, pfn).
    pub fn source_frames(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.index[..self.index_len]
            .iter()
            .map(|&e| (e >> PFN_BITS, e & PFN_MASK))
    }

    pub fn vcpu0_basic(&self) -> Option<&[u8; VCPU_BASIC_LEN]> {
        (self.vcpu0_len == VCPU_BASIC_LEN).then_some(&self.vcpu0)
    }

    /// vCPU 0's XSAVE state (xcr0, xcr0_accum, area), if the stream had one.
    pub fn vcpu0_xsave(&self) -> Option<&[u8]> {
        (self.xsave_len > 0).then(|| &self.xsave[..self.xsave_len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_maps_source_mfns_back_to_pfns() {
        let (mut t, mut i, mut f) = ([0u8; 16], [0u64; 16], [0u64; 1]);
        let mut r = Records::new(&mut t, &mut i, &mut f);
        r.start(9);
        let mfns = [0x500, 7, INVALID_MFN, 0x42, 0x1_0000_0000, 3, 1, 2, 4, 5];
        r.add_p2m(0, mfns[..4].iter().copied());
        r.add_p2m(4, mfns[4..].iter().copied());
        r.seal();
        assert_eq!(r.mapped_frames(), 9);
        assert_eq!(r.pfn_of_source_mfn(0x500), Some(0));
        assert_eq!(r.pfn_of_source_mfn(0x1_0000_0000), Some(4));
        assert_eq!(r.pfn_of_source_mfn(0x42), Some(3));
        assert_eq!(r.pfn_of_source_mfn(6), None);
        assert_eq!(r.pfn_of_source_mfn(u64::MAX >> 1), None);
        assert!(r.source_frames().map(|(m, _)| m).is_sorted());
        assert_eq!(r.shortfall(), None);
    }

    #[test]
    fn too_small_storage_is_a_shortfall_not_a_crash() {
        let (mut t, mut i, mut f) = ([0u8; 4], [0u64; 2], [0u64; 1]);
        let mut r = Records::new(&mut t, &mut i, &mut f);
        r.start(9);
        assert_eq!(
            r.shortfall(),
            Some(Shortfall::TypesTable { pfns: 10, have: 4 })
        );
        assert_eq!(r.add_types(0, &[0, 0x0f, 1, 0x84, 0, 0, 0, 0, 0, 0x0f]), 8);
        assert!(!r.has_types());
        r.add_p2m(0, [1, 2, 3].into_iter());
        r.add_p2m_frames(0, [5, 6].into_iter());
        r.add_vcpu(0, VcpuKind::Basic, &[0; 10]);
        assert_eq!(r.p2m_frames(), &[5]);
        assert!(r.restorable());
        assert!(r.vcpu0_basic().is_none());

        let mut r = Records::none();
        r.start(0);
        assert!(r.shortfall().is_some());
        r.add_p2m(0, [1].into_iter());
        assert_eq!(r.mapped_frames(), 0);
        r.add_p2m(0, [1u64 << 41].into_iter());
    }

    #[test]
    fn types_count_ram_pages() {
        let (mut t, mut i, mut f) = ([0u8; 8], [0u64; 8], [0u64; 1]);
        let mut r = Records::new(&mut t, &mut i, &mut f);
        r.start(7);
        assert_eq!(r.add_types(0, &[0x84, 0x0f, 0x0f]), 1);
        assert_eq!(r.add_types(3, &[1, 2, 3, 0, 0x0f]), 4);
        assert!(r.has_types());
        assert_eq!(r.ram_pages(), 5);
        assert_eq!(r.page_type(0), 0x84);
        assert_eq!(r.page_type(7), 0x0f);
        assert_eq!(r.page_type(8), 0x0f);
        assert!(!r.restorable());
    }
}
