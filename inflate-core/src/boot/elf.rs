//! A Linux PV kernel as Xen's ELF loader sees it (xen/common/libelf): an ELF64 x86_64
//! executable, its loadable segments placed by physical address, and the "Xen" notes that say
//! where it wants to run (public/elfnote.h). Everything is checked against the input's length
//! before it is read; a malformed image is an `ElfError`, never a panic.
use core::fmt;

/// Upper bound on program headers (Linux has 5); more is refused rather than walked.
pub const MAX_PHDRS: usize = 64;
/// Upper bound on the Xen notes read per image.
pub const MAX_NOTES: usize = 128;

/// Xen ELF note types (public/elfnote.h).
pub mod note {
    pub const ENTRY: u32 = 1;
    pub const HYPERCALL_PAGE: u32 = 2;
    pub const VIRT_BASE: u32 = 3;
    pub const PADDR_OFFSET: u32 = 4;
    pub const XEN_VERSION: u32 = 5;
    pub const GUEST_OS: u32 = 6;
    pub const GUEST_VERSION: u32 = 7;
    pub const LOADER: u32 = 8;
    pub const PAE_MODE: u32 = 9;
    pub const FEATURES: u32 = 10;
    pub const BSD_SYMTAB: u32 = 11;
    pub const HV_START_LOW: u32 = 12;
    pub const L1_MFN_VALID: u32 = 13;
    pub const SUSPEND_CANCEL: u32 = 14;
    pub const INIT_P2M: u32 = 15;
    pub const MOD_START_PFN: u32 = 16;
    pub const SUPPORTED_FEATURES: u32 = 17;
    pub const PHYS32_ENTRY: u32 = 18;
}

/// Xen feature numbers a FEATURES note may name (public/features.h), as libelf knows them.
const FEATURE_NAMES: [(&str, u32); 7] = [
    ("writable_page_tables", 0),
    ("writable_descriptor_tables", 1),
    ("auto_translated_physmap", 2),
    ("supervisor_mode_kernel", 3),
    ("pae_pgdir_above_4gb", 4),
    ("hvm_callback_vector", 8),
    ("dom0", 11),
];
/// Features an unprivileged PV domU can give the kernel it builds itself (Xen offers them to
/// every 64-bit PV guest: writable_page_tables is a vm_assist, pae_pgdir_above_4gb is moot).
const PROVIDED: u32 = (1 << 0) | (1 << 4);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfError {
    TooShort,
    NotElf,
    /// Not ELFCLASS64, little-endian, version 1.
    NotElf64Le,
    NotX86_64,
    NotExecutable,
    BadProgramHeaders,
    TooManyProgramHeaders(usize),
    /// A segment's file bytes lie outside the image, or its sizes or addresses overflow.
    SegmentOutOfBounds(usize),
    NoLoadableSegment,
    /// The kernel's first physical address is not page aligned (libelf refuses the padding).
    UnalignedKernel(u64),
    NoXenNotes,
    /// A note header or descriptor runs past its segment.
    BadNote(usize),
    /// A numeric note whose descriptor is not 1, 2, 4 or 8 bytes.
    BadNumericNote(u32),
    TooManyNotes,
    /// Neither LOADER "generic" nor GUEST_OS "linux".
    NotForGenericLoader,
    /// XEN_VERSION is not "xen-3.0".
    NotXen3,
    /// PADDR_OFFSET given without VIRT_BASE.
    PaddrOffsetWithoutVirtBase,
    /// virt_kstart > virt_kend, the entry outside the kernel, or VIRT_BASE above the kernel.
    AddressesOutOfBounds,
    /// INIT_P2M inside the kernel's range.
    P2mBaseInKernel,
    UnknownFeature,
    /// The kernel requires a feature a PV domU cannot provide (Xen feature number).
    UnsupportedFeature(u32),
    /// The kernel asks for BSD_SYMTAB loading (not done here).
    BsdSymtab,
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ElfError::*;
        match self {
            TooShort => write!(f, "kernel image shorter than an ELF header"),
            NotElf => write!(f, "kernel image is not ELF"),
            NotElf64Le => write!(f, "kernel is not a little-endian ELF64 image"),
            NotX86_64 => write!(f, "kernel is not for x86_64"),
            NotExecutable => write!(f, "kernel ELF is not an executable (ET_EXEC)"),
            BadProgramHeaders => write!(f, "kernel ELF program headers are malformed"),
            TooManyProgramHeaders(n) => {
                write!(
                    f,
                    "kernel ELF has {n} program headers (at most {MAX_PHDRS})"
                )
            }
            SegmentOutOfBounds(i) => write!(f, "kernel ELF segment {i} lies outside the image"),
            NoLoadableSegment => write!(f, "kernel ELF has no loadable segment"),
            UnalignedKernel(a) => write!(f, "kernel starts at {a:#x}, not page aligned"),
            NoXenNotes => write!(f, "kernel has no Xen ELF notes (not a PV kernel)"),
            BadNote(o) => write!(f, "malformed ELF note at file offset {o:#x}"),
            BadNumericNote(t) => write!(f, "Xen note {t} has a bad numeric size"),
            TooManyNotes => write!(f, "more than {MAX_NOTES} ELF notes"),
            NotForGenericLoader => write!(f, "kernel is neither for the generic loader nor Linux"),
            NotXen3 => write!(f, "kernel is not built for xen-3.0"),
            PaddrOffsetWithoutVirtBase => write!(f, "PADDR_OFFSET set, VIRT_BASE unset"),
            AddressesOutOfBounds => write!(f, "kernel start, end or entry out of bounds"),
            P2mBaseInKernel => write!(f, "INIT_P2M address lies inside the kernel"),
            UnknownFeature => write!(f, "unknown feature in the FEATURES note"),
            UnsupportedFeature(n) => {
                write!(f, "kernel requires Xen feature {n}, not available here")
            }
            BsdSymtab => write!(f, "BSD_SYMTAB loading is not supported"),
        }
    }
}

/// One PT_LOAD segment (validated: its file bytes are inside the image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

/// The parsed kernel: the values of Xen's `struct elf_dom_parms` a PV builder uses.
#[derive(Debug, Clone, Copy)]
pub struct Kernel<'a> {
    pub image: &'a [u8],
    segments: [Segment; MAX_PHDRS],
    nr_segments: usize,
    /// Lowest physical address and end of the loadable segments (libelf's pstart/pend).
    pub pstart: u64,
    pub pend: u64,
    pub virt_base: u64,
    pub paddr_offset: u64,
    /// Virtual start and end of the kernel (pstart/pend moved by VIRT_BASE - PADDR_OFFSET).
    pub virt_kstart: u64,
    pub virt_kend: u64,
    pub entry: u64,
    pub hypercall_page: Option<u64>,
    /// INIT_P2M: where the kernel wants its p2m list mapped, if it can take it outside the
    /// initial mapping.
    pub p2m_base: Option<u64>,
    /// MOD_START_PFN: the initrd may be left unmapped and given as a pfn.
    pub unmapped_initrd: bool,
    /// FEATURES bits the kernel requires / supports.
    pub features_required: u32,
    pub features_supported: u32,
    pub guest_os: &'a [u8],
    pub xen_version: &'a [u8],
}

fn rd<const N: usize>(b: &[u8], off: u64) -> Option<[u8; N]> {
    let o = usize::try_from(off).ok()?;
    b.get(o..o.checked_add(N)?)?.try_into().ok()
}
fn u16_at(b: &[u8], off: u64) -> Option<u16> {
    rd::<2>(b, off).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], off: u64) -> Option<u32> {
    rd::<4>(b, off).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], off: u64) -> Option<u64> {
    rd::<8>(b, off).map(u64::from_le_bytes)
}

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_RWX: u32 = 7;

/// A string note's text up to its first NUL.
fn cstr(d: &[u8]) -> &[u8] {
    let n = d.iter().position(|&c| c == 0).unwrap_or(d.len());
    &d[..n]
}

fn numeric(ty: u32, d: &[u8]) -> Result<u64, ElfError> {
    Ok(match d.len() {
        1 => d[0] as u64,
        2 => u16::from_le_bytes([d[0], d[1]]) as u64,
        4 => u32::from_le_bytes(d.try_into().unwrap_or([0; 4])) as u64,
        8 => u64::from_le_bytes(d.try_into().unwrap_or([0; 8])),
        _ => return Err(ElfError::BadNumericNote(ty)),
    })
}

/// Parse `FEATURES`: names separated by '|', a leading '!' marks a required one.
fn features(s: &[u8]) -> Result<(u32, u32), ElfError> {
    let (mut req, mut sup) = (0u32, 0u32);
    for word in s.split(|&c| c == b'|').filter(|w| !w.is_empty()) {
        let (need, name) = match word.split_first() {
            Some((b'!', rest)) => (true, rest),
            _ => (false, word),
        };
        let bit = FEATURE_NAMES
            .iter()
            .find(|(n, _)| n.as_bytes() == name)
            .map(|&(_, b)| b)
            .ok_or(ElfError::UnknownFeature)?;
        sup |= 1 << bit;
        if need {
            req |= 1 << bit;
        }
    }
    Ok((req, sup))
}

impl<'a> Kernel<'a> {
    pub fn parse(image: &'a [u8]) -> Result<Kernel<'a>, ElfError> {
        if image.len() < 64 {
            return Err(ElfError::TooShort);
        }
        if image[..4] != *b"\x7fELF" {
            return Err(ElfError::NotElf);
        }
        if image[4] != 2 || image[5] != 1 || image[6] != 1 {
            return Err(ElfError::NotElf64Le);
        }
        let bad = ElfError::BadProgramHeaders;
        if u16_at(image, 16) != Some(2) {
            return Err(ElfError::NotExecutable);
        }
        if u16_at(image, 18) != Some(62) {
            return Err(ElfError::NotX86_64);
        }
        let e_entry = u64_at(image, 24).ok_or(bad)?;
        let phoff = u64_at(image, 32).ok_or(bad)?;
        let phentsize = u16_at(image, 54).ok_or(bad)? as u64;
        let phnum = u16_at(image, 56).ok_or(bad)? as usize;
        if phentsize != 56 || phnum == 0 {
            return Err(bad);
        }
        if phnum > MAX_PHDRS {
            return Err(ElfError::TooManyProgramHeaders(phnum));
        }
        let mut k = Kernel {
            image,
            segments: [Segment {
                offset: 0,
                paddr: 0,
                filesz: 0,
                memsz: 0,
            }; MAX_PHDRS],
            nr_segments: 0,
            pstart: u64::MAX,
            pend: 0,
            virt_base: 0,
            paddr_offset: 0,
            virt_kstart: 0,
            virt_kend: 0,
            entry: 0,
            hypercall_page: None,
            p2m_base: None,
            unmapped_initrd: false,
            features_required: 0,
            features_supported: 0,
            guest_os: &[],
            xen_version: &[],
        };
        let (mut virt_base, mut paddr_offset, mut entry) = (None, None, None);
        let mut loader: &[u8] = &[];
        let mut notes = 0usize;
        let mut seen_notes = false;
        for i in 0..phnum {
            let h = phoff
                .checked_add(i as u64 * 56)
                .filter(|h| h.checked_add(56).is_some_and(|e| e <= image.len() as u64))
                .ok_or(bad)?;
            let p_type = u32_at(image, h).ok_or(bad)?;
            let p_flags = u32_at(image, h + 4).ok_or(bad)?;
            let offset = u64_at(image, h + 8).ok_or(bad)?;
            let paddr = u64_at(image, h + 24).ok_or(bad)?;
            let filesz = u64_at(image, h + 32).ok_or(bad)?;
            let memsz = u64_at(image, h + 40).ok_or(bad)?;
            let in_file = offset
                .checked_add(filesz)
                .is_some_and(|e| e <= image.len() as u64);
            if p_type == PT_LOAD && p_flags & PF_RWX != 0 {
                if !in_file || filesz > memsz || paddr.checked_add(memsz).is_none() {
                    return Err(ElfError::SegmentOutOfBounds(i));
                }
                k.segments[k.nr_segments] = Segment {
                    offset,
                    paddr,
                    filesz,
                    memsz,
                };
                k.nr_segments += 1;
                k.pstart = k.pstart.min(paddr);
                k.pend = k.pend.max(paddr + memsz);
            } else if p_type == PT_NOTE {
                if !in_file {
                    return Err(ElfError::SegmentOutOfBounds(i));
                }
                let seg = &image[offset as usize..(offset + filesz) as usize];
                let mut o = 0usize;
                while o + 12 <= seg.len() {
                    let at = offset as usize + o;
                    let namesz = u32::from_le_bytes(seg[o..o + 4].try_into().unwrap_or([0; 4]));
                    let descsz = u32::from_le_bytes(seg[o + 4..o + 8].try_into().unwrap_or([0; 4]));
                    let ty = u32::from_le_bytes(seg[o + 8..o + 12].try_into().unwrap_or([0; 4]));
                    let name_at = o + 12;
                    let desc_at = name_at
                        .checked_add(
                            (namesz as usize)
                                .checked_next_multiple_of(4)
                                .ok_or(ElfError::BadNote(at))?,
                        )
                        .ok_or(ElfError::BadNote(at))?;
                    let next = desc_at
                        .checked_add(
                            (descsz as usize)
                                .checked_next_multiple_of(4)
                                .ok_or(ElfError::BadNote(at))?,
                        )
                        .ok_or(ElfError::BadNote(at))?;
                    if desc_at + descsz as usize > seg.len()
                        || name_at + namesz as usize > seg.len()
                    {
                        return Err(ElfError::BadNote(at));
                    }
                    let name = &seg[name_at..name_at + namesz as usize];
                    let d = &seg[desc_at..desc_at + descsz as usize];
                    o = next;
                    if cstr(name) != b"Xen" {
                        continue;
                    }
                    notes += 1;
                    if notes > MAX_NOTES {
                        return Err(ElfError::TooManyNotes);
                    }
                    seen_notes = true;
                    match ty {
                        note::ENTRY => entry = Some(numeric(ty, d)?),
                        note::HYPERCALL_PAGE => k.hypercall_page = Some(numeric(ty, d)?),
                        note::VIRT_BASE => virt_base = Some(numeric(ty, d)?),
                        note::PADDR_OFFSET => paddr_offset = Some(numeric(ty, d)?),
                        note::INIT_P2M => k.p2m_base = Some(numeric(ty, d)?),
                        note::MOD_START_PFN => k.unmapped_initrd = numeric(ty, d)? != 0,
                        note::BSD_SYMTAB if cstr(d) == b"yes" => {
                            return Err(ElfError::BsdSymtab);
                        }
                        note::XEN_VERSION => k.xen_version = cstr(d),
                        note::GUEST_OS => k.guest_os = cstr(d),
                        note::LOADER => loader = cstr(d),
                        note::FEATURES => {
                            let (r, s) = features(cstr(d))?;
                            k.features_required |= r;
                            k.features_supported |= s;
                        }
                        note::SUPPORTED_FEATURES => {
                            k.features_supported |= numeric(ty, d)? as u32;
                        }
                        _ => {}
                    }
                }
            }
        }
        if k.nr_segments == 0 {
            return Err(ElfError::NoLoadableSegment);
        }
        if !seen_notes {
            return Err(ElfError::NoXenNotes);
        }
        // libelf's elf_xen_note_check.
        if !loader.starts_with(b"generic") && !k.guest_os.starts_with(b"linux") {
            return Err(ElfError::NotForGenericLoader);
        }
        if !k.xen_version.starts_with(b"xen-3.0") {
            return Err(ElfError::NotXen3);
        }
        if let Some(n) = (0..32).find(|n| k.features_required & !PROVIDED & (1 << n) != 0) {
            return Err(ElfError::UnsupportedFeature(n));
        }
        // libelf's elf_xen_addr_calc_check (notes present: PADDR_OFFSET defaults to 0).
        if paddr_offset.is_some() && virt_base.is_none() {
            return Err(ElfError::PaddrOffsetWithoutVirtBase);
        }
        k.virt_base = virt_base.unwrap_or(0);
        k.paddr_offset = paddr_offset.unwrap_or(0);
        let virt_offset = k.virt_base.wrapping_sub(k.paddr_offset);
        k.virt_kstart = k.pstart.wrapping_add(virt_offset);
        k.virt_kend = k.pend.wrapping_add(virt_offset);
        k.entry = entry.unwrap_or(e_entry);
        if k.virt_kstart > k.virt_kend
            || k.entry < k.virt_kstart
            || k.entry > k.virt_kend
            || k.virt_base > k.virt_kstart
        {
            return Err(ElfError::AddressesOutOfBounds);
        }
        if k.p2m_base
            .is_some_and(|b| b >= k.virt_kstart && b < k.virt_kend)
        {
            return Err(ElfError::P2mBaseInKernel);
        }
        if k.pstart % 4096 != 0 || (k.virt_kstart - k.virt_base) % 4096 != 0 {
            return Err(ElfError::UnalignedKernel(k.pstart));
        }
        if let Some(h) = k.hypercall_page {
            if h < k.virt_kstart || h >= k.virt_kend || h % 4096 != 0 {
                return Err(ElfError::AddressesOutOfBounds);
            }
        }
        Ok(k)
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments[..self.nr_segments]
    }

    /// Pages of the kernel's image in memory (virt_kstart..virt_kend, page-rounded).
    pub fn pages(&self) -> u64 {
        (self.virt_kend - self.virt_kstart).div_ceil(4096)
    }

    /// Page `i` of the kernel as loaded (file bytes, zeros for .bss and gaps), as libelf's
    /// `elf_load_binary` lays the segments out by physical address from pstart.
    pub fn page(&self, i: u64, out: &mut [u8; 4096]) {
        out.fill(0);
        let (lo, hi) = (self.pstart + i * 4096, self.pstart + (i + 1) * 4096);
        for s in self.segments() {
            let (a, b) = (s.paddr.max(lo), (s.paddr + s.filesz).min(hi));
            if a < b {
                let src = (s.offset + (a - s.paddr)) as usize;
                let dst = (a - lo) as usize;
                let n = (b - a) as usize;
                out[dst..dst + n].copy_from_slice(&self.image[src..src + n]);
            }
        }
    }
}
