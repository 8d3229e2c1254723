//! Encoder. It frames records; the order rules are the writer's duty (the decoder checks
//! them), which lets tests build malformed streams with the same code.

use crate::crc::Crc32c;
use crate::digest::Algorithm;
use crate::format::*;

/// Where encoded bytes go. With the `std` feature every `io::Write` is one.
pub trait Output {
    type Error;
    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error>;
}

#[cfg(feature = "std")]
impl<W: std::io::Write> Output for W {
    type Error = std::io::Error;
    fn write_all(&mut self, buf: &[u8]) -> Result<(), std::io::Error> {
        std::io::Write::write_all(self, buf)
    }
}

/// One entry of a page batch: `None` data marks a zero page.
pub type PageRef<'a> = (u64, Option<&'a [u8; PAGE_SIZE]>);

pub struct Encoder<O: Output> {
    out: O,
    bytes: u64,
}

const ZEROS: [u8; 8] = [0; 8];

impl<O: Output> Encoder<O> {
    /// Start a stream: writes the preamble.
    pub fn new(mut out: O) -> Result<Self, O::Error> {
        let mut p = [0u8; PREAMBLE_LEN];
        p[..8].copy_from_slice(&MAGIC);
        p[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out.write_all(&p)?;
        Ok(Encoder {
            out,
            bytes: PREAMBLE_LEN as u64,
        })
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn into_inner(self) -> O {
        self.out
    }

    /// Frame one record whose body is the concatenation of `parts`.
    pub fn raw_record(&mut self, ty: u32, parts: &[&[u8]]) -> Result<(), O::Error> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut c = Crc32c::new();
        for p in parts {
            c.update(p);
        }
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[0..4].copy_from_slice(&ty.to_le_bytes());
        h[4..8].copy_from_slice(&(len as u32).to_le_bytes());
        h[8..12].copy_from_slice(&c.finish().to_le_bytes());
        let hc = crate::crc::crc32c(&h[..12]);
        h[12..16].copy_from_slice(&hc.to_le_bytes());
        self.out.write_all(&h)?;
        for p in parts {
            self.out.write_all(p)?;
        }
        let pad = pad8(len) - len;
        self.out.write_all(&ZEROS[..pad])?;
        self.bytes += (RECORD_HEADER_LEN + pad8(len)) as u64;
        Ok(())
    }

    fn rec(&mut self, ty: RecordType, parts: &[&[u8]]) -> Result<(), O::Error> {
        self.raw_record(ty as u32, parts)
    }

    pub fn header(&mut self, max_pfn: u64, kernel: &[u8]) -> Result<(), O::Error> {
        let kernel = &kernel[..kernel.len().min(MAX_KERNEL_STRING)];
        let mut b = [0u8; 32];
        b[0..4].copy_from_slice(&8u32.to_le_bytes());
        b[4..8].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        b[8..16].copy_from_slice(&max_pfn.to_le_bytes());
        b[24..28].copy_from_slice(&(kernel.len() as u32).to_le_bytes());
        self.rec(RecordType::Header, &[&b, kernel])
    }

    pub fn round(&mut self, index: u32, drain: bool) -> Result<(), O::Error> {
        let mut b = [0u8; 8];
        b[0..4].copy_from_slice(&index.to_le_bytes());
        b[4..8].copy_from_slice(&(if drain { ROUND_FLAG_DRAIN } else { 0 }).to_le_bytes());
        self.rec(RecordType::Round, &[&b])
    }

    /// One PAGE_BATCH of 1..=512 pages (panics on an empty or oversized batch: a caller bug).
    pub fn page_batch(&mut self, pages: &[PageRef<'_>]) -> Result<(), O::Error> {
        assert!(
            !pages.is_empty() && pages.len() <= MAX_BATCH,
            "page batch of {} pages",
            pages.len()
        );
        let mut head = [0u8; 8 + 8 * MAX_BATCH];
        head[0..4].copy_from_slice(&(pages.len() as u32).to_le_bytes());
        for (i, (pfn, data)) in pages.iter().enumerate() {
            let kind = if data.is_some() {
                ENTRY_KIND_DATA
            } else {
                ENTRY_KIND_ZERO
            };
            let e = (pfn & ENTRY_PFN_MASK) | (kind << ENTRY_KIND_SHIFT);
            head[8 + 8 * i..16 + 8 * i].copy_from_slice(&e.to_le_bytes());
        }
        let head = &head[..8 + 8 * pages.len()];
        // Frame by hand: the parts are the head and every data page.
        let ndata = pages.iter().filter(|p| p.1.is_some()).count();
        let len = head.len() + ndata * PAGE_SIZE;
        let mut c = Crc32c::new();
        c.update(head);
        for d in pages.iter().filter_map(|p| p.1) {
            c.update(d);
        }
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[0..4].copy_from_slice(&(RecordType::PageBatch as u32).to_le_bytes());
        h[4..8].copy_from_slice(&(len as u32).to_le_bytes());
        h[8..12].copy_from_slice(&c.finish().to_le_bytes());
        let hc = crate::crc::crc32c(&h[..12]);
        h[12..16].copy_from_slice(&hc.to_le_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(head)?;
        for d in pages.iter().filter_map(|p| p.1) {
            self.out.write_all(d)?;
        }
        self.bytes += (RECORD_HEADER_LEN + len) as u64;
        Ok(())
    }

    pub fn capture(
        &mut self,
        start_info_pfn: u64,
        nr_vcpus: u32,
        pause_ns: u64,
    ) -> Result<(), O::Error> {
        let mut b = [0u8; 24];
        b[0..8].copy_from_slice(&start_info_pfn.to_le_bytes());
        b[8..12].copy_from_slice(&nr_vcpus.to_le_bytes());
        b[16..24].copy_from_slice(&pause_ns.to_le_bytes());
        self.rec(RecordType::Capture, &[&b])
    }

    /// PAGE_TYPES records for pfns first_pfn..: a REPEAT record for every run of at least
    /// `REPEAT_MIN_TYPES` equal bytes, chunks of up to 4096 bytes for the rest.
    pub fn page_types(&mut self, first_pfn: u64, types: &[u8]) -> Result<(), O::Error> {
        for_runs(types, REPEAT_MIN_TYPES, |at, n, repeat| {
            let pfn = first_pfn.wrapping_add(at as u64);
            if repeat {
                return self.page_types_repeat(pfn, n as u64, types[at]);
            }
            for (i, chunk) in types[at..at + n].chunks(MAX_TYPES_CHUNK).enumerate() {
                let head = table_head(
                    pfn.wrapping_add((i * MAX_TYPES_CHUNK) as u64),
                    chunk.len() as u32,
                    0,
                );
                self.rec(RecordType::PageTypes, &[&head, chunk])?;
            }
            Ok(())
        })
    }

    /// PAGE_TYPES REPEAT records: type `ty` for the `count` pfns from first_pfn (one record
    /// per 2^32 - 1 pfns; none for a count of 0).
    pub fn page_types_repeat(
        &mut self,
        first_pfn: u64,
        count: u64,
        ty: u8,
    ) -> Result<(), O::Error> {
        for_repeat_chunks(first_pfn, count, |pfn, n| {
            let head = table_head(pfn, n, TABLE_FLAG_REPEAT);
            self.rec(RecordType::PageTypes, &[&head, &[ty]])
        })
    }

    /// P2M records for pfns first_pfn..: a REPEAT record for every run of at least
    /// `REPEAT_MIN_P2M` equal mfns, chunks of up to 512 mfns for the rest.
    pub fn p2m(&mut self, first_pfn: u64, mfns: &[u64]) -> Result<(), O::Error> {
        for_runs(mfns, REPEAT_MIN_P2M, |at, n, repeat| {
            let pfn = first_pfn.wrapping_add(at as u64);
            if repeat {
                return self.p2m_repeat(pfn, n as u64, mfns[at]);
            }
            for (i, chunk) in mfns[at..at + n].chunks(MAX_P2M_CHUNK).enumerate() {
                let mut b = [0u8; 8 * MAX_P2M_CHUNK];
                for (j, m) in chunk.iter().enumerate() {
                    b[8 * j..8 * j + 8].copy_from_slice(&m.to_le_bytes());
                }
                let head = table_head(
                    pfn.wrapping_add((i * MAX_P2M_CHUNK) as u64),
                    chunk.len() as u32,
                    0,
                );
                self.rec(RecordType::P2m, &[&head, &b[..8 * chunk.len()]])?;
            }
            Ok(())
        })
    }

    /// P2M REPEAT records: mfn `mfn` for the `count` pfns from first_pfn (one record per
    /// 2^32 - 1 pfns; none for a count of 0).
    pub fn p2m_repeat(&mut self, first_pfn: u64, count: u64, mfn: u64) -> Result<(), O::Error> {
        for_repeat_chunks(first_pfn, count, |pfn, n| {
            let head = table_head(pfn, n, TABLE_FLAG_REPEAT);
            self.rec(RecordType::P2m, &[&head, &mfn.to_le_bytes()])
        })
    }

    /// P2M_FRAMES records: pfns of the pages holding the guest's p2m array, in order.
    pub fn p2m_frames(&mut self, pfns: &[u64]) -> Result<(), O::Error> {
        for (i, chunk) in pfns.chunks(MAX_P2M_CHUNK).enumerate() {
            let mut b = [0u8; 16 + 8 * MAX_P2M_CHUNK];
            b[0..8].copy_from_slice(&((i * MAX_P2M_CHUNK) as u64).to_le_bytes());
            b[8..12].copy_from_slice(&(chunk.len() as u32).to_le_bytes());
            for (j, m) in chunk.iter().enumerate() {
                b[16 + 8 * j..24 + 8 * j].copy_from_slice(&m.to_le_bytes());
            }
            self.rec(RecordType::P2mFrames, &[&b[..16 + 8 * chunk.len()]])?;
        }
        Ok(())
    }

    pub fn vcpu(&mut self, id: u32, kind: VcpuKind, data: &[u8]) -> Result<(), O::Error> {
        let mut b = [0u8; 8];
        b[0..4].copy_from_slice(&id.to_le_bytes());
        b[4..8].copy_from_slice(&(kind as u32).to_le_bytes());
        self.rec(RecordType::Vcpu, &[&b, data])
    }

    pub fn shared_info(&mut self, page: &[u8; PAGE_SIZE]) -> Result<(), O::Error> {
        self.rec(RecordType::SharedInfo, &[page])
    }

    /// DIGEST with the root computed by `alg` (normally [`Algorithm::CURRENT`]).
    pub fn digest(&mut self, alg: Algorithm, root: &[u8; 32]) -> Result<(), O::Error> {
        let mut b = [0u8; 8];
        b[0..4].copy_from_slice(&alg.code().to_le_bytes());
        self.rec(RecordType::Digest, &[&b, root])
    }

    /// END; returns the output.
    pub fn end(mut self) -> Result<O, O::Error> {
        self.rec(RecordType::End, &[])?;
        Ok(self.out)
    }
}

/// The 16-byte head of a PAGE_TYPES or P2M body: first_pfn, count, flags.
fn table_head(first_pfn: u64, count: u32, flags: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&first_pfn.to_le_bytes());
    b[8..12].copy_from_slice(&count.to_le_bytes());
    b[12..16].copy_from_slice(&flags.to_le_bytes());
    b
}

/// Walk `v` in order as runs of at least `min` equal values (`emit(at, len, true)`) and the
/// stretches between them (`emit(at, len, false)`); together they cover `v` exactly once.
fn for_runs<T: PartialEq, E>(
    v: &[T],
    min: usize,
    mut emit: impl FnMut(usize, usize, bool) -> Result<(), E>,
) -> Result<(), E> {
    let (mut literal, mut i) = (0, 0);
    while i < v.len() {
        let end = i + v[i..].iter().take_while(|x| **x == v[i]).count();
        if end - i >= min {
            if literal < i {
                emit(literal, i - literal, false)?;
            }
            emit(i, end - i, true)?;
            literal = end;
        }
        i = end;
    }
    if literal < v.len() {
        emit(literal, v.len() - literal, false)?;
    }
    Ok(())
}

/// Split `count` pfns from `first_pfn` into REPEAT counts of at most 2^32 - 1.
fn for_repeat_chunks<E>(
    first_pfn: u64,
    count: u64,
    mut emit: impl FnMut(u64, u32) -> Result<(), E>,
) -> Result<(), E> {
    let (mut pfn, mut left) = (first_pfn, count);
    while left > 0 {
        let n = left.min(MAX_REPEAT_COUNT);
        emit(pfn, n as u32)?;
        // Wrapping: tests write hostile first pfns near 2^64 with this encoder.
        pfn = pfn.wrapping_add(n);
        left -= n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(v: &[u8], min: usize) -> [(usize, usize, bool); 8] {
        let mut out = [(0, 0, false); 8];
        let mut k = 0;
        for_runs(v, min, |at, n, r| -> Result<(), ()> {
            out[k] = (at, n, r);
            k += 1;
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn runs_of_at_least_min_are_split_out_in_order() {
        let none = (0, 0, false);
        // Runs of exactly min at the start and end, a shorter one left in the literal part.
        let v = [1, 1, 1, 2, 3, 3, 4, 4, 4];
        assert_eq!(
            runs(&v, 3)[..4],
            [(0, 3, true), (3, 3, false), (6, 3, true), none]
        );
        // Two adjacent runs of different values, no literal between them.
        let v = [5, 5, 5, 5, 6, 6, 6, 7];
        assert_eq!(
            runs(&v, 3)[..4],
            [(0, 4, true), (4, 3, true), (7, 1, false), none]
        );
        // Nothing long enough: one literal stretch; empty input: nothing.
        assert_eq!(runs(&[1, 1, 2, 2, 1], 3)[..2], [(0, 5, false), none]);
        assert_eq!(runs(&[], 3)[0], none);
    }

    #[test]
    fn repeat_counts_are_split_at_the_u32_limit() {
        let mut got = [(0u64, 0u32); 3];
        let mut k = 0;
        for_repeat_chunks(10, 2 * MAX_REPEAT_COUNT + 5, |p, n| -> Result<(), ()> {
            got[k] = (p, n);
            k += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(
            got,
            [
                (10, u32::MAX),
                (10 + MAX_REPEAT_COUNT, u32::MAX),
                (10 + 2 * MAX_REPEAT_COUNT, 5)
            ]
        );
        for_repeat_chunks(0, 0, |_, _| -> Result<(), ()> {
            panic!("no records for 0")
        })
        .unwrap();
    }
}
