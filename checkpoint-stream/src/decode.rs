//! Push decoder: feed it byte slices of any size as they arrive; it calls a [`Sink`] for every
//! record. It allocates nothing (about 21 KiB of fixed buffers), so a kernel can keep one in a
//! static. Pages are handed out as soon as they are complete; the record's checksum is checked
//! at its end ([`Sink::record_end`]), so a consumer treats everything as provisional until
//! [`Sink::end`] (and must discard its work on any error), exactly as a restore must.

use crate::crc::{crc32c, Crc32c};
use crate::digest::{leaf_hash, root_of_leaves, Algorithm, ZERO_LEAF};
use crate::format::*;

/// Everything the decoder can reject. Offsets are byte offsets in the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("not a checkpoint stream (bad magic)")]
    BadMagic,
    #[error("unsupported stream version {0} (this reader knows version 1)")]
    UnsupportedVersion(u32),
    #[error("truncated stream at offset {offset}: {context}")]
    Truncated { offset: u64, context: &'static str },
    #[error("record header at offset {offset}: checksum mismatch")]
    BadHeaderChecksum { offset: u64 },
    #[error(
        "{record} record at offset {offset}: body checksum mismatch \
         (stored {stored:#010x}, computed {computed:#010x})"
    )]
    BadChecksum {
        offset: u64,
        record: RecordType,
        stored: u32,
        computed: u32,
    },
    #[error("{record} record at offset {offset}: bad length {len}: {reason}")]
    BadLength {
        offset: u64,
        record: RecordType,
        len: u32,
        reason: &'static str,
    },
    #[error("record at offset {offset}: unknown record type {ty:#x}")]
    UnknownType { offset: u64, ty: u32 },
    #[error(
        "{record} record at offset {offset}: pfn {pfn:#x} out of range (max pfn {max_pfn:#x})"
    )]
    PfnOutOfRange {
        offset: u64,
        record: RecordType,
        pfn: u64,
        max_pfn: u64,
    },
    #[error("digest mismatch: the pages received do not hash to the stream's digest")]
    DigestMismatch,
    #[error("{record} record at offset {offset} out of order: {reason}")]
    OutOfOrder {
        offset: u64,
        record: RecordType,
        reason: &'static str,
    },
    #[error("{record} record at offset {offset}: bad value: {what}")]
    BadValue {
        offset: u64,
        record: RecordType,
        what: &'static str,
    },
    #[error("record at offset {offset}: non-zero padding")]
    NonZeroPadding { offset: u64 },
    #[error("data after the END record at offset {offset}")]
    TrailingData { offset: u64 },
    #[error("stream incomplete: {0}")]
    Missing(&'static str),
    #[error("leaf table holds {have} entries but the stream has {need} pfns")]
    LeafTableTooSmall { have: u64, need: u64 },
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    #[error("consumer rejected the stream: {0}")]
    Sink(&'static str),
}

/// HEADER contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub word_size: u32,
    pub page_size: u32,
    pub max_pfn: u64,
    pub kernel: &'a [u8],
}

/// CAPTURE contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capture {
    pub start_info_pfn: u64,
    pub nr_vcpus: u32,
    pub pause_ns: u64,
}

/// A run of little-endian u64 values borrowed from a record body.
#[derive(Debug, Clone, Copy)]
pub struct U64s<'a>(&'a [u8]);

impl<'a> U64s<'a> {
    pub fn len(&self) -> usize {
        self.0.len() / 8
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn get(&self, i: usize) -> u64 {
        rd64(self.0, i * 8)
    }
    pub fn iter(&self) -> impl Iterator<Item = u64> + 'a {
        self.0
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
    }
}

/// Receives decoded records. Every method defaults to accepting and ignoring.
#[allow(unused_variables)]
pub trait Sink {
    fn header(&mut self, h: &Header<'_>) -> Result<(), Error> {
        Ok(())
    }
    fn round(&mut self, index: u32, flags: u32) -> Result<(), Error> {
        Ok(())
    }
    /// One page copy: `None` is a zero page. Later copies of a pfn replace earlier ones.
    fn page(&mut self, pfn: u64, data: Option<&[u8; PAGE_SIZE]>) -> Result<(), Error> {
        Ok(())
    }
    fn capture(&mut self, c: &Capture) -> Result<(), Error> {
        Ok(())
    }
    /// Type bytes for pfns first_pfn.. (see format::page_type). A REPEAT record arrives as
    /// consecutive calls of at most 4096 bytes each.
    fn page_types(&mut self, first_pfn: u64, types: &[u8]) -> Result<(), Error> {
        Ok(())
    }
    /// Source mfns for pfns first_pfn.. (INVALID_MFN for none). A REPEAT record arrives as
    /// consecutive calls of at most 512 mfns each.
    fn p2m(&mut self, first_pfn: u64, mfns: U64s<'_>) -> Result<(), Error> {
        Ok(())
    }
    /// Pfns of the pages holding the guest's own p2m array, from p2m page `first_index` on.
    fn p2m_frames(&mut self, first_index: u64, pfns: U64s<'_>) -> Result<(), Error> {
        Ok(())
    }
    fn vcpu(&mut self, id: u32, kind: VcpuKind, data: &[u8]) -> Result<(), Error> {
        Ok(())
    }
    fn shared_info(&mut self, page: &[u8; PAGE_SIZE]) -> Result<(), Error> {
        Ok(())
    }
    /// The stream's digest and how it was computed (already checked if the decoder was given
    /// a leaf table).
    fn digest(&mut self, alg: Algorithm, root: &[u8; 32]) -> Result<(), Error> {
        Ok(())
    }
    /// The record just delivered passed its checksum.
    fn record_end(&mut self, ty: RecordType, body_len: u32) -> Result<(), Error> {
        Ok(())
    }
    /// END reached: the stream is complete and consistent.
    fn end(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

/// Where the stream is, as far as record order goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Preamble,
    ExpectHeader,
    PreCopy,
    Captured,
    Digested,
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Preamble,
    RecHeader,
    Small,
    BatchHead,
    BatchEntries,
    BatchPages,
    Done,
}

#[derive(Debug, Clone, Copy)]
struct Rec {
    ty: RecordType,
    len: u32,
    crc: u32,
    offset: u64,
}

pub struct Decoder<'t> {
    phase: Phase,
    stage: Stage,
    pos: u64,
    hdr: [u8; RECORD_HEADER_LEN],
    hdr_fill: usize,
    rec: Option<Rec>,
    body_crc: Crc32c,
    small: [u8; MAX_SMALL_BODY],
    small_fill: usize,
    page: [u8; PAGE_SIZE],
    page_fill: usize,
    batch_count: usize,
    batch_idx: usize,
    max_pfn: u64,
    next_round: u32,
    in_round: bool,
    nr_vcpus: u32,
    vcpus_seen: u128,
    p2m_next: u64,
    types_next: u64,
    frames_next: u64,
    leaves: Option<&'t mut [[u8; 32]]>,
}

fn rd32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn rd64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Copy from `input` into `buf[*fill..want]`; true once `want` bytes are there.
fn fill(buf: &mut [u8], fill: &mut usize, want: usize, input: &mut &[u8], pos: &mut u64) -> bool {
    let n = (want - *fill).min(input.len());
    buf[*fill..*fill + n].copy_from_slice(&input[..n]);
    *fill += n;
    *input = &input[n..];
    *pos += n as u64;
    *fill == want
}

impl Default for Decoder<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'t> Decoder<'t> {
    pub const fn new() -> Self {
        Decoder {
            phase: Phase::Preamble,
            stage: Stage::Preamble,
            pos: 0,
            hdr: [0; RECORD_HEADER_LEN],
            hdr_fill: 0,
            rec: None,
            body_crc: Crc32c::new(),
            small: [0; MAX_SMALL_BODY],
            small_fill: 0,
            page: [0; PAGE_SIZE],
            page_fill: 0,
            batch_count: 0,
            batch_idx: 0,
            max_pfn: 0,
            next_round: 0,
            in_round: false,
            nr_vcpus: 0,
            vcpus_seen: 0,
            p2m_next: 0,
            types_next: 0,
            frames_next: 0,
            leaves: None,
        }
    }

    /// A decoder that also checks the digest itself, keeping one leaf per pfn in `leaves`
    /// (needs at least max_pfn + 1 entries; 32 bytes per pfn).
    pub fn with_leaf_table(leaves: &'t mut [[u8; 32]]) -> Self {
        let mut d = Self::new();
        d.leaves = Some(leaves);
        d
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }
    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }
    /// Max pfn from HEADER (0 before it).
    pub fn max_pfn(&self) -> u64 {
        self.max_pfn
    }

    /// Consume `input`, delivering complete records to `sink`. Returns the bytes consumed,
    /// which is all of `input` unless an error is returned.
    pub fn feed<S: Sink + ?Sized>(
        &mut self,
        mut input: &[u8],
        sink: &mut S,
    ) -> Result<usize, Error> {
        let total = input.len();
        while !input.is_empty() {
            match self.stage {
                Stage::Preamble => {
                    if fill(
                        &mut self.hdr,
                        &mut self.hdr_fill,
                        PREAMBLE_LEN,
                        &mut input,
                        &mut self.pos,
                    ) {
                        self.hdr_fill = 0;
                        if self.hdr[..8] != MAGIC {
                            return Err(Error::BadMagic);
                        }
                        let v = rd32(&self.hdr, 8);
                        if v != VERSION {
                            return Err(Error::UnsupportedVersion(v));
                        }
                        if rd32(&self.hdr, 12) != 0 {
                            return Err(Error::Unsupported("preamble reserved field is not zero"));
                        }
                        self.phase = Phase::ExpectHeader;
                        self.stage = Stage::RecHeader;
                    }
                }
                Stage::RecHeader => {
                    if fill(
                        &mut self.hdr,
                        &mut self.hdr_fill,
                        RECORD_HEADER_LEN,
                        &mut input,
                        &mut self.pos,
                    ) {
                        self.hdr_fill = 0;
                        self.begin_record(sink)?;
                    }
                }
                Stage::Small => {
                    let rec = self.rec.unwrap();
                    let want = pad8(rec.len as usize);
                    if fill(
                        &mut self.small,
                        &mut self.small_fill,
                        want,
                        &mut input,
                        &mut self.pos,
                    ) {
                        self.small_fill = 0;
                        let body_len = rec.len as usize;
                        let computed = crc32c(&self.small[..body_len]);
                        if computed != rec.crc {
                            return Err(Error::BadChecksum {
                                offset: rec.offset,
                                record: rec.ty,
                                stored: rec.crc,
                                computed,
                            });
                        }
                        if self.small[body_len..want].iter().any(|&b| b != 0) {
                            return Err(Error::NonZeroPadding { offset: rec.offset });
                        }
                        self.small_record(rec, sink)?;
                        self.end_record(sink)?;
                    }
                }
                Stage::BatchHead => {
                    if fill(
                        &mut self.small,
                        &mut self.small_fill,
                        8,
                        &mut input,
                        &mut self.pos,
                    ) {
                        let rec = self.rec.unwrap();
                        let count = rd32(&self.small, 0) as usize;
                        let bad = |what| Error::BadValue {
                            offset: rec.offset,
                            record: rec.ty,
                            what,
                        };
                        if count == 0 || count > MAX_BATCH {
                            return Err(bad("page count must be 1..=512"));
                        }
                        if rd32(&self.small, 4) != 0 {
                            return Err(bad("reserved field is not zero"));
                        }
                        if (rec.len as usize) < 8 + 8 * count {
                            return Err(Error::BadLength {
                                offset: rec.offset,
                                record: rec.ty,
                                len: rec.len,
                                reason: "shorter than its pfn list",
                            });
                        }
                        self.batch_count = count;
                        self.stage = Stage::BatchEntries;
                    }
                }
                Stage::BatchEntries => {
                    let want = 8 + 8 * self.batch_count;
                    if fill(
                        &mut self.small,
                        &mut self.small_fill,
                        want,
                        &mut input,
                        &mut self.pos,
                    ) {
                        self.small_fill = 0;
                        self.batch_entries_done()?;
                        self.body_crc = Crc32c::new();
                        self.body_crc.update(&self.small[..want]);
                        self.batch_idx = 0;
                        self.stage = Stage::BatchPages;
                        self.advance_zero_entries(sink)?;
                    }
                }
                Stage::BatchPages => {
                    if fill(
                        &mut self.page,
                        &mut self.page_fill,
                        PAGE_SIZE,
                        &mut input,
                        &mut self.pos,
                    ) {
                        self.page_fill = 0;
                        self.body_crc.update(&self.page);
                        let pfn = rd64(&self.small, 8 + 8 * self.batch_idx) & ENTRY_PFN_MASK;
                        if let Some(l) = self.leaves.as_deref_mut() {
                            l[pfn as usize] = leaf_hash(Some(&self.page));
                        }
                        sink.page(pfn, Some(&self.page))?;
                        self.batch_idx += 1;
                        self.advance_zero_entries(sink)?;
                    }
                }
                Stage::Done => return Err(Error::TrailingData { offset: self.pos }),
            }
        }
        Ok(total)
    }

    /// Call at end of input: errors unless the END record was decoded.
    pub fn finish(&self) -> Result<(), Error> {
        if self.phase == Phase::Ended {
            return Ok(());
        }
        let context = match self.stage {
            Stage::Preamble => "inside the preamble",
            Stage::RecHeader if self.hdr_fill > 0 => "inside a record header",
            Stage::RecHeader => "between records, before END",
            Stage::Done => unreachable!("Done implies Ended"),
            _ => "inside a record body",
        };
        Err(Error::Truncated {
            offset: self.pos,
            context,
        })
    }

    fn begin_record<S: Sink + ?Sized>(&mut self, _sink: &mut S) -> Result<(), Error> {
        let offset = self.pos - RECORD_HEADER_LEN as u64;
        if crc32c(&self.hdr[..12]) != rd32(&self.hdr, 12) {
            return Err(Error::BadHeaderChecksum { offset });
        }
        let raw_ty = rd32(&self.hdr, 0);
        let ty = RecordType::from_u32(raw_ty).ok_or(Error::UnknownType { offset, ty: raw_ty })?;
        let len = rd32(&self.hdr, 4);
        let crc = rd32(&self.hdr, 8);
        let bad_len = |reason| Error::BadLength {
            offset,
            record: ty,
            len,
            reason,
        };
        let ooo = |reason| Error::OutOfOrder {
            offset,
            record: ty,
            reason,
        };
        use RecordType::*;
        // Length rules per type (exact where the type fixes it).
        let l = len as usize;
        match ty {
            End if l != 0 => return Err(bad_len("END has an empty body")),
            Header if !(32..=32 + MAX_KERNEL_STRING).contains(&l) => {
                return Err(bad_len(
                    "HEADER is 32 bytes plus at most 256 of kernel string",
                ))
            }
            Round if l != 8 => return Err(bad_len("ROUND is 8 bytes")),
            Capture if l != 24 => return Err(bad_len("CAPTURE is 24 bytes")),
            SharedInfo if l != PAGE_SIZE => return Err(bad_len("SHARED_INFO is one page")),
            Digest if l != 40 => return Err(bad_len("DIGEST is 40 bytes")),
            PageTypes if !(17..=16 + MAX_TYPES_CHUNK).contains(&l) => {
                return Err(bad_len("PAGE_TYPES is 16 bytes plus 1..=4096 type bytes"))
            }
            P2m | P2mFrames if !(24..=16 + 8 * MAX_P2M_CHUNK).contains(&l) || (l - 16) % 8 != 0 => {
                return Err(bad_len(
                    "P2M and P2M_FRAMES are 16 bytes plus 1..=512 u64 entries",
                ))
            }
            Vcpu if !(9..=MAX_SMALL_BODY).contains(&l) => {
                return Err(bad_len("VCPU is 8 bytes plus 1..=16376 bytes of state"))
            }
            PageBatch if !(16..=8 + MAX_BATCH * (8 + PAGE_SIZE)).contains(&l) || l % 8 != 0 => {
                return Err(bad_len("PAGE_BATCH is 8 + 8*count + 4096*data pages"))
            }
            _ => {}
        }
        // Order rules.
        match (self.phase, ty) {
            (Phase::ExpectHeader, Header) => {}
            (Phase::ExpectHeader, _) => return Err(ooo("the first record must be HEADER")),
            (_, Header) => return Err(ooo("HEADER may appear only once, first")),
            (Phase::PreCopy | Phase::Captured, Round) => {}
            (Phase::PreCopy | Phase::Captured, PageBatch) if self.in_round => {}
            (Phase::PreCopy | Phase::Captured, PageBatch) => {
                return Err(ooo(
                    "PAGE_BATCH before any ROUND (or after CAPTURE without a drain ROUND)",
                ))
            }
            (Phase::PreCopy, Capture) => {}
            (Phase::Captured, Capture) => return Err(ooo("CAPTURE may appear only once")),
            (Phase::PreCopy, PageTypes | P2m | P2mFrames | Vcpu | SharedInfo | Digest) => {
                return Err(ooo("capture state before CAPTURE"))
            }
            (Phase::Captured, PageTypes | P2m | P2mFrames | Vcpu | SharedInfo | Digest) => {}
            (Phase::PreCopy | Phase::Captured, End) => return Err(ooo("END before DIGEST")),
            (Phase::Digested, End) => {}
            (Phase::Digested, _) => return Err(ooo("only END may follow DIGEST")),
            (Phase::Preamble | Phase::Ended, _) => {
                unreachable!("no records are parsed in this phase")
            }
        }
        self.rec = Some(Rec {
            ty,
            len,
            crc,
            offset,
        });
        self.stage = match ty {
            PageBatch => Stage::BatchHead,
            End => {
                self.small_record(self.rec.unwrap(), _sink)?;
                return self.end_record(_sink);
            }
            _ => Stage::Small,
        };
        self.small_fill = 0;
        Ok(())
    }

    fn batch_entries_done(&mut self) -> Result<(), Error> {
        let rec = self.rec.unwrap();
        let mut ndata = 0usize;
        for i in 0..self.batch_count {
            let e = rd64(&self.small, 8 + 8 * i);
            let bad = |what| Error::BadValue {
                offset: rec.offset,
                record: rec.ty,
                what,
            };
            if e & ENTRY_RESERVED_MASK != 0 {
                return Err(bad("reserved bits of a page entry are set"));
            }
            match e >> ENTRY_KIND_SHIFT {
                ENTRY_KIND_DATA => ndata += 1,
                ENTRY_KIND_ZERO => {}
                _ => return Err(bad("unknown page entry kind")),
            }
            let pfn = e & ENTRY_PFN_MASK;
            if pfn > self.max_pfn {
                return Err(Error::PfnOutOfRange {
                    offset: rec.offset,
                    record: rec.ty,
                    pfn,
                    max_pfn: self.max_pfn,
                });
            }
        }
        let expect = 8 + 8 * self.batch_count + PAGE_SIZE * ndata;
        if rec.len as usize != expect {
            return Err(Error::BadLength {
                offset: rec.offset,
                record: rec.ty,
                len: rec.len,
                reason: "does not match its pfn list (8 + 8*count + 4096*data pages)",
            });
        }
        Ok(())
    }

    /// Deliver zero entries from batch_idx on; finish the record after the last entry.
    fn advance_zero_entries<S: Sink + ?Sized>(&mut self, sink: &mut S) -> Result<(), Error> {
        while self.batch_idx < self.batch_count {
            let e = rd64(&self.small, 8 + 8 * self.batch_idx);
            if e >> ENTRY_KIND_SHIFT != ENTRY_KIND_ZERO {
                return Ok(()); // a data page comes next
            }
            let pfn = e & ENTRY_PFN_MASK;
            if let Some(l) = self.leaves.as_deref_mut() {
                l[pfn as usize] = ZERO_LEAF;
            }
            sink.page(pfn, None)?;
            self.batch_idx += 1;
        }
        let rec = self.rec.unwrap();
        let computed = core::mem::take(&mut self.body_crc).finish();
        if computed != rec.crc {
            return Err(Error::BadChecksum {
                offset: rec.offset,
                record: rec.ty,
                stored: rec.crc,
                computed,
            });
        }
        self.end_record(sink)
    }

    fn end_record<S: Sink + ?Sized>(&mut self, sink: &mut S) -> Result<(), Error> {
        let rec = self.rec.take().unwrap();
        sink.record_end(rec.ty, rec.len)?;
        if rec.ty == RecordType::End {
            self.phase = Phase::Ended;
            self.stage = Stage::Done;
            sink.end()?;
        } else {
            self.stage = Stage::RecHeader;
        }
        Ok(())
    }

    /// Parse and deliver a fully buffered, checksum-verified body.
    fn small_record<S: Sink + ?Sized>(&mut self, rec: Rec, sink: &mut S) -> Result<(), Error> {
        let b = &self.small[..rec.len as usize];
        let bad = |what| Error::BadValue {
            offset: rec.offset,
            record: rec.ty,
            what,
        };
        use RecordType::*;
        match rec.ty {
            End => {}
            Header => {
                let word_size = rd32(b, 0);
                let page_size = rd32(b, 4);
                let max_pfn = rd64(b, 8);
                let flags = rd64(b, 16);
                let klen = rd32(b, 24) as usize;
                if word_size != 8 {
                    return Err(Error::Unsupported("guest word size other than 8 bytes"));
                }
                if page_size as usize != PAGE_SIZE {
                    return Err(Error::Unsupported("page size other than 4096"));
                }
                if max_pfn > MAX_PFN_LIMIT {
                    return Err(bad("max pfn above 2^40 - 1"));
                }
                if flags != 0 || rd32(b, 28) != 0 {
                    return Err(bad("reserved field is not zero"));
                }
                if 32 + klen != b.len() {
                    return Err(Error::BadLength {
                        offset: rec.offset,
                        record: rec.ty,
                        len: rec.len,
                        reason: "does not match the kernel string length",
                    });
                }
                if let Some(l) = self.leaves.as_deref_mut() {
                    let need = max_pfn + 1;
                    if (l.len() as u64) < need {
                        return Err(Error::LeafTableTooSmall {
                            have: l.len() as u64,
                            need,
                        });
                    }
                    l[..need as usize].fill(ZERO_LEAF);
                }
                self.max_pfn = max_pfn;
                self.phase = Phase::PreCopy;
                sink.header(&crate::decode::Header {
                    word_size,
                    page_size,
                    max_pfn,
                    kernel: &b[32..],
                })?;
            }
            Round => {
                let index = rd32(b, 0);
                let flags = rd32(b, 4);
                if flags & !ROUND_FLAG_DRAIN != 0 {
                    return Err(bad("unknown ROUND flags"));
                }
                let ooo = |reason| Error::OutOfOrder {
                    offset: rec.offset,
                    record: rec.ty,
                    reason,
                };
                if index != self.next_round {
                    return Err(ooo("round numbers must count up from 0 by 1"));
                }
                let drain = flags & ROUND_FLAG_DRAIN != 0;
                if drain != (self.phase == Phase::Captured) {
                    return Err(ooo(
                        "rounds after CAPTURE, and only those, carry the drain flag",
                    ));
                }
                self.next_round += 1;
                self.in_round = true;
                sink.round(index, flags)?;
            }
            Capture => {
                let start_info_pfn = rd64(b, 0);
                let nr_vcpus = rd32(b, 8);
                if rd32(b, 12) != 0 {
                    return Err(bad("reserved field is not zero"));
                }
                if nr_vcpus == 0 || nr_vcpus > MAX_VCPUS {
                    return Err(bad("vCPU count must be 1..=128"));
                }
                if start_info_pfn > self.max_pfn {
                    return Err(Error::PfnOutOfRange {
                        offset: rec.offset,
                        record: rec.ty,
                        pfn: start_info_pfn,
                        max_pfn: self.max_pfn,
                    });
                }
                self.nr_vcpus = nr_vcpus;
                self.phase = Phase::Captured;
                self.in_round = false;
                sink.capture(&crate::decode::Capture {
                    start_info_pfn,
                    nr_vcpus,
                    pause_ns: rd64(b, 16),
                })?;
            }
            PageTypes | P2m => {
                let first = rd64(b, 0);
                let count = rd32(b, 8) as u64;
                let flags = rd32(b, 12);
                if flags & !TABLE_FLAG_REPEAT != 0 {
                    return Err(bad("unknown PAGE_TYPES/P2M flags"));
                }
                let repeat = flags & TABLE_FLAG_REPEAT != 0;
                let entry = if rec.ty == P2m { 8 } else { 1 };
                if repeat {
                    if b.len() != 16 + entry {
                        return Err(Error::BadLength {
                            offset: rec.offset,
                            record: rec.ty,
                            len: rec.len,
                            reason: "a REPEAT record holds exactly one entry",
                        });
                    }
                    if count == 0 {
                        return Err(bad("REPEAT count must be at least 1"));
                    }
                } else if count == 0 || 16 + count as usize * entry != b.len() {
                    return Err(Error::BadLength {
                        offset: rec.offset,
                        record: rec.ty,
                        len: rec.len,
                        reason: "does not match its entry count",
                    });
                }
                let next = if rec.ty == P2m {
                    &mut self.p2m_next
                } else {
                    &mut self.types_next
                };
                // Saturating: a hostile first_pfn near 2^64 must not overflow.
                let last = first.saturating_add(count - 1);
                if last > self.max_pfn {
                    return Err(Error::PfnOutOfRange {
                        offset: rec.offset,
                        record: rec.ty,
                        pfn: last,
                        max_pfn: self.max_pfn,
                    });
                }
                if first != *next {
                    return Err(Error::OutOfOrder {
                        offset: rec.offset,
                        record: rec.ty,
                        reason: "chunks must cover pfns from 0 upwards without gaps or overlap",
                    });
                }
                *next = last + 1;
                let data = &b[16..];
                if rec.ty == PageTypes && !data.iter().all(|&t| page_type::valid(t)) {
                    return Err(bad("unknown page type byte"));
                }
                if !repeat {
                    if rec.ty == P2m {
                        sink.p2m(first, U64s(data))?;
                    } else {
                        sink.page_types(first, data)?;
                    }
                    return Ok(());
                }
                // Expand the run through the page buffer, idle outside PAGE_BATCH bodies: a
                // sink sees chunks of at most 4096 types or 512 mfns, as from literal records.
                for e in self.page.chunks_exact_mut(entry) {
                    e.copy_from_slice(data);
                }
                let per_chunk = (PAGE_SIZE / entry) as u64;
                let (mut pfn, mut left) = (first, count);
                while left > 0 {
                    let n = left.min(per_chunk);
                    let chunk = &self.page[..n as usize * entry];
                    if rec.ty == P2m {
                        sink.p2m(pfn, U64s(chunk))?;
                    } else {
                        sink.page_types(pfn, chunk)?;
                    }
                    pfn += n;
                    left -= n;
                }
            }
            P2mFrames => {
                let first = rd64(b, 0);
                let count = rd32(b, 8) as u64;
                if rd32(b, 12) != 0 {
                    return Err(bad("reserved field is not zero"));
                }
                if count == 0 || 16 + count as usize * 8 != b.len() {
                    return Err(Error::BadLength {
                        offset: rec.offset,
                        record: rec.ty,
                        len: rec.len,
                        reason: "does not match its entry count",
                    });
                }
                let frames = self.max_pfn / 512 + 1;
                if first != self.frames_next || first.saturating_add(count) > frames {
                    return Err(Error::OutOfOrder {
                        offset: rec.offset,
                        record: rec.ty,
                        reason: "chunks must cover p2m pages 0..=max_pfn/512 in order, once",
                    });
                }
                let pfns = U64s(&b[16..]);
                if let Some(pfn) = pfns.iter().find(|&p| p > self.max_pfn) {
                    return Err(Error::PfnOutOfRange {
                        offset: rec.offset,
                        record: rec.ty,
                        pfn,
                        max_pfn: self.max_pfn,
                    });
                }
                self.frames_next = first + count;
                sink.p2m_frames(first, pfns)?;
            }
            Vcpu => {
                let id = rd32(b, 0);
                let kind = VcpuKind::from_u32(rd32(b, 4)).ok_or(bad("unknown vCPU state kind"))?;
                if id >= self.nr_vcpus {
                    return Err(bad("vCPU id not below CAPTURE's vCPU count"));
                }
                if kind == VcpuKind::Basic {
                    if self.vcpus_seen & (1u128 << id) != 0 {
                        return Err(bad("second basic state for one vCPU"));
                    }
                    self.vcpus_seen |= 1u128 << id;
                }
                sink.vcpu(id, kind, &b[8..])?;
            }
            SharedInfo => {
                sink.shared_info(b.try_into().unwrap())?;
            }
            Digest => {
                let Some(alg) = Algorithm::from_code(rd32(b, 0)) else {
                    return Err(Error::Unsupported("digest algorithm other than 1 or 2"));
                };
                if rd32(b, 4) != 0 {
                    return Err(bad("reserved field is not zero"));
                }
                let all_vcpus = if self.nr_vcpus == 128 {
                    u128::MAX
                } else {
                    (1u128 << self.nr_vcpus) - 1
                };
                if self.vcpus_seen != all_vcpus {
                    return Err(Error::Missing(
                        "a basic VCPU record for every vCPU before DIGEST",
                    ));
                }
                if self.p2m_next != self.max_pfn + 1 {
                    return Err(Error::Missing("P2M entries for every pfn before DIGEST"));
                }
                if self.types_next != self.max_pfn + 1 {
                    return Err(Error::Missing(
                        "PAGE_TYPES entries for every pfn before DIGEST",
                    ));
                }
                if self.frames_next != 0 && self.frames_next != self.max_pfn / 512 + 1 {
                    return Err(Error::Missing(
                        "P2M_FRAMES for every p2m page (they are optional, but all or none)",
                    ));
                }
                let root: [u8; 32] = b[8..40].try_into().unwrap();
                if let Some(l) = self.leaves.as_deref() {
                    if root_of_leaves(alg, &l[..=self.max_pfn as usize]) != root {
                        return Err(Error::DigestMismatch);
                    }
                }
                self.phase = Phase::Digested;
                sink.digest(alg, &root)?;
            }
            PageBatch => unreachable!("page batches are streamed"),
        }
        Ok(())
    }
}

/// Decode a whole stream held in memory.
pub fn decode_slice<S: Sink + ?Sized>(
    data: &[u8],
    leaves: Option<&mut [[u8; 32]]>,
    sink: &mut S,
) -> Result<(), Error> {
    #[cfg(feature = "std")]
    let mut d = match leaves {
        Some(l) => std::boxed::Box::new(Decoder::with_leaf_table(l)),
        None => std::boxed::Box::new(Decoder::new()),
    };
    #[cfg(not(feature = "std"))]
    let mut d = match leaves {
        Some(l) => Decoder::with_leaf_table(l),
        None => Decoder::new(),
    };
    d.feed(data, sink)?;
    d.finish()
}
