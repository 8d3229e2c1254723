//! A reader for xl save images (xl header, libxl v2 stream, libxc v3 stream of an x86 PV
//! guest). It checks the structure our exporter writes against what `xl save` writes, and it
//! can turn an `xl save` image into a checkpoint (`xen-import`) for round-trip tests.
//!
//! Images are files from elsewhere, so nothing in one decides how much we allocate: every
//! allocation is bounded by bytes the image really holds (a pfn costs at least its 8-byte
//! PAGE_DATA entry, a page its 4096 bytes), arithmetic on image values is checked, and
//! inconsistent counts are refused. An image that imports becomes a checkpoint that the
//! stream's own decoder accepts (the `xl_image` fuzz target checks exactly that).

use super::{
    pfinfo, rec, vcpu, LIBXC_ID, LIBXC_MARKER, LIBXL_IDENT, LIBXL_REC_END, LIBXL_REC_LIBXC_CONTEXT,
    XL_BYTEORDER, XL_MAGIC,
};
use checkpoint_stream::digest::{root_of_pages, Algorithm};
use checkpoint_stream::model::{Checkpoint, FullCheckpoint, VcpuState, MODEL_MAX_PFN};
use checkpoint_stream::{page_type, Capture, VcpuKind, INVALID_MFN, PAGE_SIZE};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("truncated image at offset {0}")]
    Truncated(usize),
    #[error("not an xl save image (bad magic)")]
    BadMagic,
    #[error("bad {what} at offset {offset}: {detail}")]
    Bad {
        what: &'static str,
        offset: usize,
        detail: String,
    },
    #[error("unsupported: {0}")]
    Unsupported(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordInfo {
    pub stream: &'static str,
    pub ty: u32,
    pub name: &'static str,
    pub length: u32,
    pub offset: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct XlImage {
    pub mandatory_flags: u32,
    pub optional_flags: u32,
    #[serde(skip)]
    pub config: Vec<u8>,
    pub libxl_options: u32,
    pub libxc_version: u32,
    pub domain_type: u32,
    pub page_shift: u16,
    pub xen_version: (u32, u32),
    pub records: Vec<RecordInfo>,
    pub guest_width: u8,
    pub pt_levels: u8,
    pub p2m_start: u32,
    pub p2m_end: u32,
    pub p2m_frames: Vec<u64>,
    /// Type nibble per pfn as sent (last one wins).
    #[serde(skip)]
    pub types: BTreeMap<u64, u64>,
    #[serde(skip)]
    pub pages: HashMap<u64, Box<[u8; PAGE_SIZE]>>,
    #[serde(skip)]
    pub vcpus: Vec<(u32, u32, Vec<u8>)>,
    #[serde(skip)]
    pub shared_info: Option<Vec<u8>>,
    pub tsc_info: Option<(u32, u32, u64, u32)>,
    pub page_data_records: u64,
    #[serde(skip)]
    p2m_frames_seen: bool,
}

/// Bits 0..51 of a PAGE_DATA entry: the pfn; 52..59 reserved; 60..63 the type.
const PFN_MASK: u64 = (1 << 52) - 1;
const PFN_RESERVED: u64 = 0xff << 52;
/// Most bytes of vCPU state the checkpoint stream carries in one record.
const MAX_VCPU_STATE: usize = 16376;
/// Most vCPUs a checkpoint describes.
const MAX_VCPUS: u32 = 128;

struct Cur<'a> {
    b: &'a [u8],
    o: usize,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ImageError> {
        if self.b.len() - self.o < n {
            return Err(ImageError::Truncated(self.o));
        }
        let s = &self.b[self.o..self.o + n];
        self.o += n;
        Ok(s)
    }
    fn le32(&mut self) -> Result<u32, ImageError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn be32(&mut self) -> Result<u32, ImageError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn be64(&mut self) -> Result<u64, ImageError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap()))
    }
    /// A record: (type, body, offset of its header).
    fn record(&mut self) -> Result<(u32, &'a [u8], usize), ImageError> {
        let at = self.o;
        let ty = self.le32()?;
        let len = self.le32()? as usize;
        let body = self.take(len)?;
        self.take((8 - len % 8) % 8)?;
        Ok((ty, body, at))
    }
}

fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn bad(what: &'static str, offset: usize, detail: impl Into<String>) -> ImageError {
    ImageError::Bad {
        what,
        offset,
        detail: detail.into(),
    }
}

pub fn parse(data: &[u8]) -> Result<XlImage, ImageError> {
    let mut c = Cur { b: data, o: 0 };
    let mut img = XlImage::default();
    if c.take(32)? != XL_MAGIC {
        return Err(ImageError::BadMagic);
    }
    if c.le32()? != XL_BYTEORDER {
        return Err(ImageError::Unsupported(
            "xl header byte order other than little-endian".into(),
        ));
    }
    img.mandatory_flags = c.le32()?;
    img.optional_flags = c.le32()?;
    let opt_len = c.le32()? as usize;
    let opt = c.take(opt_len)?;
    if opt_len >= 4 {
        let n = u32::from_le_bytes(opt[..4].try_into().unwrap()) as usize;
        img.config = opt
            .get(4..4 + n)
            .ok_or_else(|| {
                bad(
                    "xl optional data",
                    48,
                    "config longer than the optional data",
                )
            })?
            .to_vec();
    }
    if img.mandatory_flags & super::XL_FLAG_STREAM_V2 == 0 {
        return Err(ImageError::Unsupported(
            "xl save image of the legacy (v1) stream".into(),
        ));
    }
    let at = c.o;
    if c.be64()? != LIBXL_IDENT {
        return Err(bad("libxl header", at, "ident is not LibxlFmt"));
    }
    let v = c.be32()?;
    if v != 2 {
        return Err(bad("libxl header", at, format!("version {v}")));
    }
    img.libxl_options = c.be32()?;
    loop {
        let (ty, body, at) = c.record()?;
        img.records.push(RecordInfo {
            stream: "libxl",
            ty,
            name: libxl_name(ty),
            length: body.len() as u32,
            offset: at,
        });
        match ty {
            LIBXL_REC_END => break,
            LIBXL_REC_LIBXC_CONTEXT => parse_libxc(&mut c, &mut img)?,
            _ => {} // emulator records etc.: noted, not needed for PV
        }
    }
    if c.o != data.len() {
        return Err(bad("image", c.o, "data after the libxl END record"));
    }
    Ok(img)
}

fn libxl_name(t: u32) -> &'static str {
    match t {
        0 => "END",
        1 => "LIBXC_CONTEXT",
        2 => "EMULATOR_XENSTORE_DATA",
        3 => "EMULATOR_CONTEXT",
        4 => "CHECKPOINT_END",
        5 => "CHECKPOINT_STATE",
        _ => "UNKNOWN",
    }
}

fn parse_libxc(c: &mut Cur<'_>, img: &mut XlImage) -> Result<(), ImageError> {
    let at = c.o;
    if c.be64()? != LIBXC_MARKER || c.be32()? != LIBXC_ID {
        return Err(bad("libxc image header", at, "marker/id"));
    }
    img.libxc_version = c.be32()?;
    let opts = u16::from_be_bytes(c.take(2)?.try_into().unwrap());
    c.take(6)?;
    if opts & 1 != 0 {
        return Err(ImageError::Unsupported("big-endian libxc stream".into()));
    }
    img.domain_type = c.le32()?;
    img.page_shift = u16::from_le_bytes(c.take(2)?.try_into().unwrap());
    c.take(2)?;
    img.xen_version = (c.le32()?, c.le32()?);
    if img.domain_type != super::DHDR_TYPE_X86_PV || img.page_shift != 12 {
        return Err(ImageError::Unsupported(format!(
            "domain type {} page shift {}",
            img.domain_type, img.page_shift
        )));
    }
    loop {
        let (ty, body, at) = c.record()?;
        img.records.push(RecordInfo {
            stream: "libxc",
            ty,
            name: rec::name(ty),
            length: body.len() as u32,
            offset: at,
        });
        match ty {
            rec::END => return Ok(()),
            rec::X86_PV_INFO => {
                if body.len() != 8 {
                    return Err(bad("X86_PV_INFO", at, "length"));
                }
                img.guest_width = body[0];
                img.pt_levels = body[1];
            }
            rec::X86_PV_P2M_FRAMES => {
                if body.len() < 8 || (body.len() - 8) % 8 != 0 {
                    return Err(bad("X86_PV_P2M_FRAMES", at, "length"));
                }
                if img.p2m_frames_seen {
                    return Err(bad("X86_PV_P2M_FRAMES", at, "second record"));
                }
                img.p2m_frames_seen = true;
                img.p2m_start = u32::from_le_bytes(body[..4].try_into().unwrap());
                img.p2m_end = u32::from_le_bytes(body[4..8].try_into().unwrap());
                img.p2m_frames = body[8..]
                    .chunks_exact(8)
                    .map(|x| u64::from_le_bytes(x.try_into().unwrap()))
                    .collect();
            }
            rec::PAGE_DATA => {
                img.page_data_records += 1;
                if body.len() < 8 {
                    return Err(bad("PAGE_DATA", at, "length"));
                }
                let count = u32::from_le_bytes(body[..4].try_into().unwrap()) as usize;
                // The pfn list alone must fit in the record: this bounds the loop by the file.
                let mut data = count
                    .checked_mul(8)
                    .and_then(|n| n.checked_add(8))
                    .filter(|&n| n <= body.len())
                    .ok_or_else(|| bad("PAGE_DATA", at, "shorter than its pfn list"))?;
                if count == 0 {
                    return Err(bad("PAGE_DATA", at, "no pfns"));
                }
                for i in 0..count {
                    let e = le64(body, 8 + 8 * i);
                    let pfn = e & PFN_MASK;
                    let t = e >> 60;
                    if e & PFN_RESERVED != 0 {
                        return Err(bad(
                            "PAGE_DATA",
                            at,
                            format!("entry {e:#x}: reserved bits set"),
                        ));
                    }
                    if !matches!(t, 0..=4 | 9..=12 | pfinfo::BROKEN | pfinfo::XALLOC | pfinfo::XTAB)
                    {
                        return Err(bad(
                            "PAGE_DATA",
                            at,
                            format!("pfn {pfn:#x}: page type {t:#x}"),
                        ));
                    }
                    // A pfn sent again replaces what came before (libxc streams may resend).
                    img.types.insert(pfn, t);
                    if matches!(t, pfinfo::XTAB | pfinfo::XALLOC | pfinfo::BROKEN) {
                        img.pages.remove(&pfn);
                        continue;
                    }
                    let page = body
                        .get(data..data + PAGE_SIZE)
                        .ok_or_else(|| bad("PAGE_DATA", at, "page data short"))?;
                    img.pages.insert(pfn, Box::new(page.try_into().unwrap()));
                    data += PAGE_SIZE;
                }
                if data != body.len() {
                    return Err(bad("PAGE_DATA", at, "length does not match its pfn list"));
                }
            }
            rec::X86_PV_VCPU_BASIC
            | rec::X86_PV_VCPU_EXTENDED
            | rec::X86_PV_VCPU_XSAVE
            | rec::X86_PV_VCPU_MSRS => {
                if body.len() < 8 {
                    return Err(bad(rec::name(ty), at, "length"));
                }
                let id = u32::from_le_bytes(body[..4].try_into().unwrap());
                if img.vcpus.iter().any(|(i, t, _)| *i == id && *t == ty) {
                    return Err(bad(
                        rec::name(ty),
                        at,
                        format!("second record for vCPU {id}"),
                    ));
                }
                img.vcpus.push((id, ty, body[8..].to_vec()));
            }
            rec::SHARED_INFO if body.len() != PAGE_SIZE => {
                return Err(bad(
                    "SHARED_INFO",
                    at,
                    format!("{} bytes, not one page", body.len()),
                ));
            }
            rec::SHARED_INFO => img.shared_info = Some(body.to_vec()),
            rec::X86_TSC_INFO if body.len() == 24 => {
                img.tsc_info = Some((
                    u32::from_le_bytes(body[..4].try_into().unwrap()),
                    u32::from_le_bytes(body[4..8].try_into().unwrap()),
                    le64(body, 8),
                    u32::from_le_bytes(body[16..20].try_into().unwrap()),
                ));
            }
            _ => {}
        }
    }
}

/// Options of [`XlImage::to_checkpoint`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportOptions {
    /// Give the checkpoint a scrambled p2m (mfn = pfn * 7 + 0x100000, a bijection that is
    /// nowhere the identity) and rewrite page tables and vCPU frames into those "mfns", as a
    /// real capture has them; exporting must then undo it exactly.
    pub scramble_mfns: bool,
    /// Leave the image's SHARED_INFO out, so export synthesises one (as for a real capture).
    pub drop_shared_info: bool,
}

fn scramble(pfn: u64) -> u64 {
    pfn * 7 + 0x10_0000
}

impl XlImage {
    /// libxc record names in order, runs of PAGE_DATA collapsed to one entry.
    pub fn libxc_layout(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = Vec::new();
        for r in self.records.iter().filter(|r| r.stream == "libxc") {
            if v.last() != Some(&r.name) || r.name != "PAGE_DATA" {
                v.push(r.name);
            }
        }
        v
    }

    /// This image as a checkpoint. The image's page tables and vCPU frames are already
    /// pfns, so the checkpoint gets an identity p2m (mfn = pfn): exporting it again reproduces
    /// the image's memory, which makes `xl save` -> import -> export -> `xl restore` a test of
    /// the exporter on real Xen.
    #[cfg(test)]
    pub fn to_checkpoint(&self) -> Result<FullCheckpoint, ImageError> {
        self.to_checkpoint_with(ImportOptions::default())
    }

    pub fn to_checkpoint_with(&self, opts: ImportOptions) -> Result<FullCheckpoint, ImageError> {
        if self.guest_width != 8 || self.pt_levels != 4 {
            return Err(ImageError::Unsupported("only 64-bit PV guests".into()));
        }
        if !self.p2m_frames_seen {
            return Err(bad("image", 0, "no X86_PV_P2M_FRAMES record"));
        }
        let max_pfn = self.p2m_end as u64;
        if self.p2m_start != 0 || max_pfn > MODEL_MAX_PFN {
            return Err(bad(
                "X86_PV_P2M_FRAMES",
                0,
                format!("p2m range {:#x}..={max_pfn:#x}", self.p2m_start),
            ));
        }
        // xl save lists every pfn 0..=p2m end (unpopulated ones as XTAB): the per-pfn arrays
        // below are then bounded by the image's own PAGE_DATA entries.
        let listed = self.types.len() as u64;
        let last = self.types.keys().next_back().copied();
        if listed != max_pfn + 1 || last != Some(max_pfn) {
            return Err(bad(
                "PAGE_DATA",
                0,
                format!(
                    "the image lists {listed} pfns (highest {last:#x?}), \
                     the p2m end {max_pfn:#x} needs every pfn 0..={max_pfn:#x}"
                ),
            ));
        }
        let frames_needed = max_pfn / 512 + 1;
        if self.p2m_frames.len() as u64 != frames_needed {
            return Err(bad(
                "X86_PV_P2M_FRAMES",
                0,
                format!(
                    "{} frames for pfns 0..={max_pfn:#x}, which need {frames_needed}",
                    self.p2m_frames.len()
                ),
            ));
        }
        if let Some(f) = self.p2m_frames.iter().find(|&&f| f > max_pfn) {
            return Err(bad(
                "X86_PV_P2M_FRAMES",
                0,
                format!("frame pfn {f:#x} beyond the p2m end"),
            ));
        }
        let mut types = vec![page_type::UNPOPULATED; max_pfn as usize + 1];
        let mut p2m = vec![INVALID_MFN; max_pfn as usize + 1];
        for (&pfn, &t) in &self.types {
            let b = match t {
                pfinfo::XTAB | pfinfo::BROKEN => page_type::UNPOPULATED,
                pfinfo::XALLOC | pfinfo::NOTAB => page_type::NORMAL,
                1..=4 => t as u8,
                9..=12 => (t as u8 - 8) | page_type::PINNED,
                _ => return Err(bad("PAGE_DATA", 0, format!("page type {t:#x}"))),
            };
            types[pfn as usize] = b;
            if b != page_type::UNPOPULATED {
                // A bijection on pfns <= MODEL_MAX_PFN: no two pfns share an mfn.
                p2m[pfn as usize] = if opts.scramble_mfns {
                    scramble(pfn)
                } else {
                    pfn
                };
            }
        }
        // A frame number the vCPU state names must be a populated pfn of this image.
        let frame = |what: &'static str, pfn: u64| -> Result<u64, ImageError> {
            if pfn > max_pfn || types[pfn as usize] == page_type::UNPOPULATED {
                return Err(bad(
                    "X86_PV_VCPU_BASIC",
                    0,
                    format!("{what} {pfn:#x} is not a populated pfn of the image"),
                ));
            }
            Ok(pfn)
        };
        let nr_vcpus = self
            .vcpus
            .iter()
            .filter(|(_, ty, d)| *ty == rec::X86_PV_VCPU_BASIC && !d.is_empty())
            .count() as u32;
        if nr_vcpus == 0 || nr_vcpus > MAX_VCPUS {
            return Err(bad(
                "image",
                0,
                format!("{nr_vcpus} vCPUs with basic state"),
            ));
        }
        let mut vcpus = Vec::new();
        let mut start_info_pfn = None;
        for (id, ty, data) in &self.vcpus {
            let kind = match *ty {
                rec::X86_PV_VCPU_BASIC => VcpuKind::Basic,
                rec::X86_PV_VCPU_EXTENDED => VcpuKind::Extended,
                rec::X86_PV_VCPU_XSAVE => VcpuKind::Xsave,
                _ => VcpuKind::Msrs,
            };
            if data.is_empty() {
                continue; // errata: zero-length blobs are tolerated and ignored
            }
            // Basic states must be vCPUs 0..n-1 (each once: parse refuses repeats).
            if *id >= nr_vcpus || data.len() > MAX_VCPU_STATE {
                return Err(bad(
                    rec::name(*ty),
                    0,
                    format!("vCPU {id} ({} bytes) of {nr_vcpus}", data.len()),
                ));
            }
            let mut data = data.clone();
            if kind == VcpuKind::Basic {
                if data.len() != vcpu::SIZE {
                    return Err(bad("X86_PV_VCPU_BASIC", 0, format!("{} bytes", data.len())));
                }
                if *id == 0 {
                    start_info_pfn = Some(frame("start_info (rdx)", le64(&data, vcpu::RDX))?);
                }
                // In the image cr1 carries "1 | pfn << 12"; a checkpoint holds "mfn << 12".
                let cr1 = le64(&data, vcpu::CR1) & !1;
                data[vcpu::CR1..vcpu::CR1 + 8].copy_from_slice(&cr1.to_le_bytes());
                if opts.scramble_mfns {
                    let put = |d: &mut Vec<u8>, o: usize, v: u64| {
                        d[o..o + 8].copy_from_slice(&v.to_le_bytes())
                    };
                    let gdt = le64(&data, vcpu::GDT_ENTS).div_ceil(512).min(16) as usize;
                    for i in 0..gdt {
                        let o = vcpu::GDT_FRAMES + 8 * i;
                        let v = scramble(frame("GDT frame", le64(&data, o))?);
                        put(&mut data, o, v);
                    }
                    let v = scramble(frame("cr3", le64(&data, vcpu::CR3) >> 12)?) << 12;
                    put(&mut data, vcpu::CR3, v);
                    if cr1 != 0 {
                        put(
                            &mut data,
                            vcpu::CR1,
                            scramble(frame("cr1", cr1 >> 12)?) << 12,
                        );
                    }
                    if *id == 0 {
                        let v = scramble(le64(&data, vcpu::RDX));
                        put(&mut data, vcpu::RDX, v);
                    }
                }
            }
            vcpus.push(VcpuState {
                id: *id,
                kind,
                data,
            });
        }
        let start_info_pfn =
            start_info_pfn.ok_or_else(|| bad("image", 0, "no basic state for vCPU 0"))?;
        let mut pages: HashMap<u64, Box<[u8; PAGE_SIZE]>> = self
            .pages
            .iter()
            .filter(|(_, p)| p.iter().any(|&b| b != 0))
            .map(|(&k, v)| (k, v.clone()))
            .collect();
        if opts.scramble_mfns {
            // Page tables hold pfns in the image; a capture has them as mfns.
            for (pfn, page) in pages.iter_mut() {
                let level = types[*pfn as usize] & !page_type::PINNED;
                if !(page_type::L1..=page_type::L4).contains(&level) {
                    continue;
                }
                for i in 0..512 {
                    let pte = le64(&page[..], i * 8);
                    if pte & 1 != 0 {
                        let frame = (pte & 0x000f_ffff_ffff_f000) >> 12;
                        let v = (pte & !0x000f_ffff_ffff_f000) | (scramble(frame) << 12);
                        page[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        let digest = root_of_pages(Algorithm::CURRENT, max_pfn, |p| pages.get(&p).map(|b| &**b));
        let shared_info = match &self.shared_info {
            _ if opts.drop_shared_info => None,
            Some(s) => Some(Box::new(
                <[u8; PAGE_SIZE]>::try_from(s.as_slice())
                    .map_err(|_| bad("SHARED_INFO", 0, "not one page"))?,
            )),
            None => None,
        };
        Ok(FullCheckpoint {
            checkpoint: Checkpoint {
                max_pfn,
                kernel: "imported from an xl save image".into(),
                pages,
                rounds: Vec::new(),
                capture: Capture {
                    start_info_pfn,
                    nr_vcpus,
                    pause_ns: 0,
                },
                page_types: types,
                p2m,
                vcpus,
                shared_info,
                digest,
                digest_algorithm: Algorithm::CURRENT,
                stream_bytes: 0,
            },
            p2m_frames: self.p2m_frames.clone(),
        })
    }
}
