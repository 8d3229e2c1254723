//! `checkpointd export --xen`: a checkpoint as an xl save file that stock `xl restore`
//! resumes (docs/xen-export.md). Layout: xl save-file header with the xl config text, the
//! libxl stream (v2) wrapping one libxc stream (v3) for an x86 PV guest.

pub mod image;
pub mod sample;

use checkpoint_stream::model::FullCheckpoint;
use checkpoint_stream::{page_type, VcpuKind, INVALID_MFN, PAGE_SIZE};
use std::collections::HashMap;
use std::io::{self, Write};

pub const XL_MAGIC: &[u8; 32] = b"Xen saved domain, xl format\n \0 \r";
pub const XL_BYTEORDER: u32 = 0x0102_0304;
pub const XL_FLAG_JSON: u32 = 1;
pub const XL_FLAG_STREAM_V2: u32 = 2;
pub const LIBXL_IDENT: u64 = 0x4c69_6278_6c46_6d74; // "LibxlFmt"
pub const LIBXL_VERSION: u32 = 2;
pub const LIBXL_REC_END: u32 = 0;
pub const LIBXL_REC_LIBXC_CONTEXT: u32 = 1;
pub const LIBXC_MARKER: u64 = u64::MAX;
pub const LIBXC_ID: u32 = 0x5845_4E46; // "XENF"
pub const LIBXC_VERSION: u32 = 3;
pub const DHDR_TYPE_X86_PV: u32 = 1;

/// libxc record types (docs/specs/libxc-migration-stream.pandoc).
pub mod rec {
    pub const END: u32 = 0x00;
    pub const PAGE_DATA: u32 = 0x01;
    pub const X86_PV_INFO: u32 = 0x02;
    pub const X86_PV_P2M_FRAMES: u32 = 0x03;
    pub const X86_PV_VCPU_BASIC: u32 = 0x04;
    pub const X86_PV_VCPU_EXTENDED: u32 = 0x05;
    pub const X86_PV_VCPU_XSAVE: u32 = 0x06;
    pub const SHARED_INFO: u32 = 0x07;
    pub const X86_TSC_INFO: u32 = 0x08;
    pub const X86_PV_VCPU_MSRS: u32 = 0x0c;
    pub const STATIC_DATA_END: u32 = 0x10;

    pub fn name(t: u32) -> &'static str {
        match t {
            0x00 => "END",
            0x01 => "PAGE_DATA",
            0x02 => "X86_PV_INFO",
            0x03 => "X86_PV_P2M_FRAMES",
            0x04 => "X86_PV_VCPU_BASIC",
            0x05 => "X86_PV_VCPU_EXTENDED",
            0x06 => "X86_PV_VCPU_XSAVE",
            0x07 => "SHARED_INFO",
            0x08 => "X86_TSC_INFO",
            0x09 => "HVM_CONTEXT",
            0x0a => "HVM_PARAMS",
            0x0c => "X86_PV_VCPU_MSRS",
            0x0d => "VERIFY",
            0x0e => "CHECKPOINT",
            0x10 => "STATIC_DATA_END",
            0x11 => "X86_CPUID_POLICY",
            0x12 => "X86_MSR_POLICY",
            _ => "UNKNOWN",
        }
    }
}

/// XEN_DOMCTL_PFINFO_* values as they sit in bits 60..63 of a PAGE_DATA entry.
pub mod pfinfo {
    pub const NOTAB: u64 = 0x0;
    pub const LPINTAB: u64 = 0x8;
    pub const XTAB: u64 = 0xf;
    pub const XALLOC: u64 = 0xe;
    pub const BROKEN: u64 = 0xd;
}

/// Offsets in Xen's x86_64 `vcpu_guest_context` (the one definition the guest module uses).
pub use checkpoint_abi::vcpu_ctx as vcpu;

/// Offsets in the x86_64 `shared_info` page.
pub mod shinfo {
    pub const VCPU_INFO_UPCALL_MASK0: usize = 1;
    pub const ARCH_MAX_PFN: usize = 3088;
}

/// PAGE_DATA batch size (libxc's MAX_BATCH_SIZE).
const BATCH: usize = 1024;
const PTE_PRESENT: u64 = 1;
const PTE_PSE: u64 = 1 << 7;
const PTE_FRAME: u64 = 0x000f_ffff_ffff_f000;
/// Xen's FIRST_RESERVED_GDT_ENTRY for x86_64 (14 pages of GDT entries before Xen's own).
const MAX_GDT_ENTS: u64 = 14 * 512;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "the checkpoint has no P2M_FRAMES record: a restore could not rewrite the guest's p2m"
    )]
    NoP2mFrames,
    #[error("the checkpoint has no basic vCPU 0 state of {want} bytes (got {got:?})")]
    NoVcpu { got: Option<usize>, want: usize },
    #[error("only one vCPU is supported (the checkpoint has {0})")]
    Vcpus(u32),
    #[error(
        "page table at pfn {pfn:#x} (L{level}) entry {index} maps mfn {mfn:#x}, \
         which is not in the guest's p2m"
    )]
    ForeignPte {
        pfn: u64,
        level: u8,
        index: usize,
        mfn: u64,
    },
    #[error(
        "page table at pfn {pfn:#x} (L{level}) entry {index} is a superpage, \
         which PV migration cannot carry"
    )]
    Superpage { pfn: u64, level: u8, index: usize },
    #[error("vCPU {what} refers to mfn {mfn:#x}, which is not in the guest's p2m")]
    VcpuFrame { what: &'static str, mfn: u64 },
    #[error("vCPU {what} is pfn {pfn:#x} of type {ty:#x}, restore needs {need}")]
    VcpuFrameType {
        what: &'static str,
        pfn: u64,
        ty: u8,
        need: &'static str,
    },
    #[error("GDT entry count {0} out of range")]
    GdtEnts(u64),
    #[error(
        "p2m frame list entry {index} is pfn {pfn:#x} of type {ty:#x}; \
         restore needs ordinary pages"
    )]
    P2mFrameType { index: usize, pfn: u64, ty: u8 },
    #[error("pfns {0:#x} and {1:#x} both map to mfn {2:#x}: the p2m must be one-to-one")]
    DuplicateMfn(u64, u64, u64),
    #[error("writing the image: {0}")]
    Write(#[from] io::Error),
}

/// What export wrote, for the summary and tests.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ExportSummary {
    pub bytes: u64,
    pub pages: u64,
    pub unpopulated: u64,
    pub page_tables: u64,
    pub page_data_records: u64,
    pub ptes_rewritten: u64,
}

struct Out<W: Write> {
    w: W,
    bytes: u64,
}

impl<W: Write> Out<W> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.bytes += b.len() as u64;
        Ok(())
    }
    /// A libxc or libxl record: type, length, body, zero padding to 8.
    fn record(&mut self, ty: u32, parts: &[&[u8]]) -> io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.put(&ty.to_le_bytes())?;
        self.put(&(len as u32).to_le_bytes())?;
        for p in parts {
            self.put(p)?;
        }
        let pad = (8 - len % 8) % 8;
        self.put(&[0u8; 8][..pad])
    }
}

fn get64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}
fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// Xen page type (high nibble of a PAGE_DATA entry) for a checkpoint type byte.
pub fn pfinfo_of(t: u8) -> u64 {
    match t & !page_type::PINNED {
        page_type::UNPOPULATED => pfinfo::XTAB,
        l @ page_type::L1..=page_type::L4 => {
            l as u64
                | if t & page_type::PINNED != 0 {
                    pfinfo::LPINTAB
                } else {
                    0
                }
        }
        _ => pfinfo::NOTAB,
    }
}

/// Rewrite a page table's machine frames into pfns, as libxc's save does.
pub fn normalise_pagetable(
    page: &mut [u8; PAGE_SIZE],
    pfn: u64,
    level: u8,
    m2p: &HashMap<u64, u64>,
) -> Result<u64, ExportError> {
    let mut n = 0;
    for i in 0..512 {
        let mut pte = get64(page, i * 8);
        if level == 4 && checkpoint_abi::xen::l4_slot_is_xen(i) {
            pte = 0;
        }
        if pte & PTE_PRESENT != 0 {
            if level > 1 && pte & PTE_PSE != 0 {
                return Err(ExportError::Superpage {
                    pfn,
                    level,
                    index: i,
                });
            }
            let mfn = (pte & PTE_FRAME) >> 12;
            let Some(&p) = m2p.get(&mfn) else {
                return Err(ExportError::ForeignPte {
                    pfn,
                    level,
                    index: i,
                    mfn,
                });
            };
            pte = (pte & !PTE_FRAME) | (p << 12);
            n += 1;
        }
        put64(page, i * 8, pte);
    }
    Ok(n)
}

/// Normalise vCPU 0's context (machine frames -> pfns) and check what restore will check.
pub fn normalise_vcpu(
    ctx: &mut [u8],
    c: &FullCheckpoint,
    m2p: &HashMap<u64, u64>,
) -> Result<(), ExportError> {
    let k = &c.checkpoint;
    let ty = |pfn: u64| k.page_types[pfn as usize];
    let lookup = |what, mfn| {
        m2p.get(&mfn)
            .copied()
            .ok_or(ExportError::VcpuFrame { what, mfn })
    };
    // rdx: start_info. The capture records its pfn; the context holds its mfn.
    put64(ctx, vcpu::RDX, k.capture.start_info_pfn);
    let gdt_ents = get64(ctx, vcpu::GDT_ENTS);
    if gdt_ents > MAX_GDT_ENTS {
        return Err(ExportError::GdtEnts(gdt_ents));
    }
    for i in 0..gdt_ents.div_ceil(512) as usize {
        let pfn = lookup("GDT frame", get64(ctx, vcpu::GDT_FRAMES + 8 * i))?;
        if ty(pfn) & !page_type::PINNED != page_type::NORMAL {
            return Err(ExportError::VcpuFrameType {
                what: "GDT frame",
                pfn,
                ty: ty(pfn),
                need: "an ordinary page",
            });
        }
        put64(ctx, vcpu::GDT_FRAMES + 8 * i, pfn);
    }
    let pfn = lookup("cr3", get64(ctx, vcpu::CR3) >> 12)?;
    if ty(pfn) & !page_type::PINNED != page_type::L4 {
        return Err(ExportError::VcpuFrameType {
            what: "cr3",
            pfn,
            ty: ty(pfn),
            need: "an L4 table",
        });
    }
    put64(ctx, vcpu::CR3, pfn << 12);
    let cr1 = get64(ctx, vcpu::CR1);
    if cr1 != 0 {
        let pfn = lookup("cr1 (user L4)", cr1 >> 12)?;
        if ty(pfn) & !page_type::PINNED != page_type::L4 {
            return Err(ExportError::VcpuFrameType {
                what: "cr1",
                pfn,
                ty: ty(pfn),
                need: "an L4 table",
            });
        }
        // Bit 0 tells restore the field holds a pfn to translate.
        put64(ctx, vcpu::CR1, 1 | (pfn << 12));
    }
    Ok(())
}

/// A minimal xl config for the restored domain; a real one should come from the user.
pub fn default_config(name: &str, c: &FullCheckpoint) -> String {
    let mib = ((c.checkpoint.max_pfn + 1) * PAGE_SIZE as u64).div_ceil(1 << 20);
    format!(
        "name = \"{name}\"\ntype = \"pv\"\nmemory = {mib}\nmaxmem = {mib}\nvcpus = 1\n\
         on_crash = \"preserve\"\n"
    )
}

/// mfn -> pfn for every populated pfn. Two pfns with one mfn would make page tables that name
/// that mfn ambiguous: refused, not collapsed.
pub fn reverse_p2m(p2m: &[u64]) -> Result<HashMap<u64, u64>, ExportError> {
    let mut m2p = HashMap::with_capacity(p2m.len());
    for (pfn, &mfn) in p2m.iter().enumerate() {
        if mfn == INVALID_MFN {
            continue;
        }
        if let Some(other) = m2p.insert(mfn, pfn as u64) {
            return Err(ExportError::DuplicateMfn(other, pfn as u64, mfn));
        }
    }
    Ok(m2p)
}

/// Write the xl save image.
pub fn export<W: Write>(
    c: &FullCheckpoint,
    xl_config: &str,
    xen_version: (u32, u32),
    w: W,
) -> Result<ExportSummary, ExportError> {
    let k = &c.checkpoint;
    if c.p2m_frames.is_empty() {
        return Err(ExportError::NoP2mFrames);
    }
    if k.capture.nr_vcpus != 1 {
        return Err(ExportError::Vcpus(k.capture.nr_vcpus));
    }
    let basic = k.vcpu(0, VcpuKind::Basic);
    if basic.map(|b| b.len()) != Some(vcpu::SIZE) {
        return Err(ExportError::NoVcpu {
            got: basic.map(|b| b.len()),
            want: vcpu::SIZE,
        });
    }
    let m2p = reverse_p2m(&k.p2m)?;
    for (index, &pfn) in c.p2m_frames.iter().enumerate() {
        let ty = k.page_types[pfn as usize];
        if ty != page_type::NORMAL {
            return Err(ExportError::P2mFrameType { index, pfn, ty });
        }
    }
    let mut ctx = basic.unwrap().to_vec();
    normalise_vcpu(&mut ctx, c, &m2p)?;

    let mut o = Out { w, bytes: 0 };
    let mut s = ExportSummary::default();
    // xl save-file header. A config that is a JSON object is libxl's JSON (as `xl save`
    // writes it, NUL-terminated, with the JSON flag); anything else is xl.cfg text.
    let json = xl_config.trim_start().starts_with('{');
    let mut cfg = xl_config.trim_end_matches('\0').as_bytes().to_vec();
    if json {
        cfg.push(0);
    }
    let flags = XL_FLAG_STREAM_V2 | if json { XL_FLAG_JSON } else { 0 };
    o.put(XL_MAGIC)?;
    o.put(&XL_BYTEORDER.to_le_bytes())?;
    o.put(&flags.to_le_bytes())?;
    o.put(&0u32.to_le_bytes())?;
    o.put(&(4 + cfg.len() as u32).to_le_bytes())?;
    o.put(&(cfg.len() as u32).to_le_bytes())?;
    o.put(&cfg)?;
    // libxl stream header (big-endian) and the record handing over to libxc.
    o.put(&LIBXL_IDENT.to_be_bytes())?;
    o.put(&LIBXL_VERSION.to_be_bytes())?;
    o.put(&0u32.to_be_bytes())?;
    o.record(LIBXL_REC_LIBXC_CONTEXT, &[])?;
    // libxc image header (big-endian) and domain header.
    o.put(&LIBXC_MARKER.to_be_bytes())?;
    o.put(&LIBXC_ID.to_be_bytes())?;
    o.put(&LIBXC_VERSION.to_be_bytes())?;
    o.put(&0u16.to_be_bytes())?;
    o.put(&[0u8; 6])?;
    o.put(&DHDR_TYPE_X86_PV.to_le_bytes())?;
    o.put(&12u16.to_le_bytes())?;
    o.put(&0u16.to_le_bytes())?;
    o.put(&xen_version.0.to_le_bytes())?;
    o.put(&xen_version.1.to_le_bytes())?;
    // Static data: width 8, 4 levels; no CPUID/MSR policy (libxl then applies its defaults).
    o.record(rec::X86_PV_INFO, &[&[8, 4, 0, 0, 0, 0, 0, 0]])?;
    o.record(rec::STATIC_DATA_END, &[])?;
    let max_pfn = k.max_pfn;
    let mut frames = Vec::with_capacity(8 + 8 * c.p2m_frames.len());
    frames.extend_from_slice(&0u32.to_le_bytes());
    frames.extend_from_slice(&(max_pfn as u32).to_le_bytes());
    for &f in &c.p2m_frames {
        frames.extend_from_slice(&f.to_le_bytes());
    }
    o.record(rec::X86_PV_P2M_FRAMES, &[&frames])?;
    // Every pfn: populated ones with data (page tables normalised), the rest as XTAB.
    let zero = [0u8; PAGE_SIZE];
    let mut pfn = 0u64;
    while pfn <= max_pfn {
        let end = (pfn + BATCH as u64).min(max_pfn + 1);
        let mut head = Vec::with_capacity(8 + 8 * BATCH);
        head.extend_from_slice(&((end - pfn) as u32).to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        let mut data: Vec<u8> = Vec::new();
        for p in pfn..end {
            let t = k.page_types[p as usize];
            let info = pfinfo_of(t);
            head.extend_from_slice(&(p | info << 60).to_le_bytes());
            if info == pfinfo::XTAB {
                s.unpopulated += 1;
                continue;
            }
            let mut page = *k.page(p).unwrap_or(&zero);
            let level = t & !page_type::PINNED;
            if (page_type::L1..=page_type::L4).contains(&level) {
                s.ptes_rewritten += normalise_pagetable(&mut page, p, level, &m2p)?;
                s.page_tables += 1;
            }
            data.extend_from_slice(&page);
            s.pages += 1;
        }
        o.record(rec::PAGE_DATA, &[&head, &data])?;
        s.page_data_records += 1;
        pfn = end;
    }
    // Shared info: the captured page if any, else one with what restore copies and Linux's
    // resume path relies on (events masked on vCPU 0 until it re-registers its vcpu_info).
    let mut sh = match &k.shared_info {
        Some(p) => **p,
        None => [0u8; PAGE_SIZE],
    };
    if k.shared_info.is_none() {
        sh[shinfo::VCPU_INFO_UPCALL_MASK0] = 1;
        put64(&mut sh, shinfo::ARCH_MAX_PFN, max_pfn + 1);
    }
    o.record(rec::SHARED_INFO, &[&sh])?;
    let vhdr = [0u8; 8]; // vcpu_id 0, reserved
    o.record(rec::X86_PV_VCPU_BASIC, &[&vhdr, &ctx])?;
    for (kind, ty) in [
        (VcpuKind::Extended, rec::X86_PV_VCPU_EXTENDED),
        (VcpuKind::Xsave, rec::X86_PV_VCPU_XSAVE),
        (VcpuKind::Msrs, rec::X86_PV_VCPU_MSRS),
    ] {
        if let Some(b) = k.vcpu(0, kind) {
            o.record(ty, &[&vhdr, b])?;
        }
    }
    o.record(rec::END, &[])?;
    o.record(LIBXL_REC_END, &[])?;
    o.w.flush()?;
    s.bytes = o.bytes;
    Ok(s)
}

#[cfg(test)]
mod tests;
