//! A whole checkpoint in memory (std only): what `inspect` and `export` work from.

use crate::decode::{Capture, Decoder, Error, Header, Sink, U64s};
use crate::digest::{root_of_pages, Algorithm};
use crate::encode::{Encoder, PageRef};
use crate::format::*;
use std::collections::HashMap;
use std::io;

/// Largest guest the in-memory model accepts (2^24 pfns = 64 GiB), so a hostile max_pfn
/// cannot make it loop or allocate without bound.
pub const MODEL_MAX_PFN: u64 = (1 << 24) - 1;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoundStats {
    pub index: u32,
    pub drain: bool,
    /// Page copies sent in this round (data + zero).
    pub pages: u64,
    pub zero_pages: u64,
    /// Stream bytes of this round's PAGE_BATCH records (headers included).
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuState {
    pub id: u32,
    pub kind: VcpuKind,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub max_pfn: u64,
    pub kernel: String,
    /// Final content of every non-zero page (absent pfns are zero pages).
    pub pages: HashMap<u64, Box<[u8; PAGE_SIZE]>>,
    pub rounds: Vec<RoundStats>,
    pub capture: Capture,
    /// One type byte per pfn 0..=max_pfn.
    pub page_types: Vec<u8>,
    /// Source mfn per pfn 0..=max_pfn.
    pub p2m: Vec<u64>,
    pub vcpus: Vec<VcpuState>,
    pub shared_info: Option<Box<[u8; PAGE_SIZE]>>,
    pub digest: [u8; 32],
    /// How `digest` was computed (encoding writes [`Algorithm::CURRENT`] anew).
    pub digest_algorithm: Algorithm,
    /// Size of the encoded stream this came from.
    pub stream_bytes: u64,
}

/// Reading a checkpoint from a file or socket.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the stream: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Stream(#[from] Error),
}

#[derive(Default)]
struct Builder {
    max_pfn: u64,
    kernel: String,
    pages: HashMap<u64, Box<[u8; PAGE_SIZE]>>,
    rounds: Vec<RoundStats>,
    capture: Option<Capture>,
    page_types: Vec<u8>,
    p2m: Vec<u64>,
    p2m_frames: Vec<u64>,
    vcpus: Vec<VcpuState>,
    shared_info: Option<Box<[u8; PAGE_SIZE]>>,
    digest: Option<(Algorithm, [u8; 32])>,
}

impl Sink for Builder {
    fn header(&mut self, h: &Header<'_>) -> Result<(), Error> {
        if h.max_pfn > MODEL_MAX_PFN {
            return Err(Error::Unsupported(
                "guests above 64 GiB (max pfn 2^24 - 1) in the in-memory model",
            ));
        }
        self.max_pfn = h.max_pfn;
        self.kernel = String::from_utf8_lossy(h.kernel).into_owned();
        Ok(())
    }
    fn round(&mut self, index: u32, flags: u32) -> Result<(), Error> {
        self.rounds.push(RoundStats {
            index,
            drain: flags & ROUND_FLAG_DRAIN != 0,
            ..Default::default()
        });
        Ok(())
    }
    fn page(&mut self, pfn: u64, data: Option<&[u8; PAGE_SIZE]>) -> Result<(), Error> {
        let r = self
            .rounds
            .last_mut()
            .expect("decoder checks a ROUND came first");
        r.pages += 1;
        match data {
            Some(d) if d.iter().any(|&b| b != 0) => {
                self.pages.insert(pfn, Box::new(*d));
            }
            Some(_) => {
                self.pages.remove(&pfn);
            }
            None => {
                r.zero_pages += 1;
                self.pages.remove(&pfn);
            }
        }
        Ok(())
    }
    fn capture(&mut self, c: &Capture) -> Result<(), Error> {
        self.capture = Some(*c);
        Ok(())
    }
    fn page_types(&mut self, _first: u64, types: &[u8]) -> Result<(), Error> {
        self.page_types.extend_from_slice(types);
        Ok(())
    }
    fn p2m(&mut self, _first: u64, mfns: U64s<'_>) -> Result<(), Error> {
        self.p2m.extend(mfns.iter());
        Ok(())
    }
    fn p2m_frames(&mut self, _first: u64, pfns: U64s<'_>) -> Result<(), Error> {
        self.p2m_frames.extend(pfns.iter());
        Ok(())
    }
    fn vcpu(&mut self, id: u32, kind: VcpuKind, data: &[u8]) -> Result<(), Error> {
        self.vcpus.push(VcpuState {
            id,
            kind,
            data: data.to_vec(),
        });
        Ok(())
    }
    fn shared_info(&mut self, page: &[u8; PAGE_SIZE]) -> Result<(), Error> {
        self.shared_info = Some(Box::new(*page));
        Ok(())
    }
    fn digest(&mut self, alg: Algorithm, root: &[u8; 32]) -> Result<(), Error> {
        // The decoder checked that every pfn's type and p2m entry arrived; now the contents.
        let computed = root_of_pages(alg, self.max_pfn, |pfn| self.pages.get(&pfn).map(|b| &**b));
        if &computed != root {
            return Err(Error::DigestMismatch);
        }
        self.digest = Some((alg, *root));
        Ok(())
    }
    fn record_end(&mut self, ty: RecordType, body_len: u32) -> Result<(), Error> {
        if ty == RecordType::PageBatch {
            let r = self
                .rounds
                .last_mut()
                .expect("decoder checks a ROUND came first");
            r.bytes += (RECORD_HEADER_LEN + pad8(body_len as usize)) as u64;
        }
        Ok(())
    }
}

/// A checkpoint plus the records added after `Checkpoint`'s fields were fixed (kept apart so
/// code that builds a `Checkpoint` literal keeps compiling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullCheckpoint {
    pub checkpoint: Checkpoint,
    /// Pfns of the pages holding the guest's p2m array (P2M_FRAMES; empty if absent).
    pub p2m_frames: Vec<u64>,
}

impl FullCheckpoint {
    pub fn from_bytes(data: &[u8]) -> Result<Self, Error> {
        let mut b = Builder::default();
        let mut d = Box::new(Decoder::new());
        d.feed(data, &mut b)?;
        d.finish()?;
        Ok(b.build_full(data.len() as u64))
    }

    pub fn read_from(mut r: impl io::Read) -> Result<Self, ReadError> {
        let mut b = Builder::default();
        let mut d = Box::new(Decoder::new());
        let mut buf = vec![0u8; 65536];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            d.feed(&buf[..n], &mut b)?;
        }
        d.finish()?;
        Ok(b.build_full(d.position()))
    }

    pub fn write_to<W: io::Write>(&self, w: W) -> io::Result<W> {
        self.checkpoint.write_with(w, &self.p2m_frames)
    }
}

impl Builder {
    fn build_full(mut self, stream_bytes: u64) -> FullCheckpoint {
        let p2m_frames = std::mem::take(&mut self.p2m_frames);
        FullCheckpoint {
            checkpoint: self.build(stream_bytes),
            p2m_frames,
        }
    }

    fn build(self, stream_bytes: u64) -> Checkpoint {
        let (digest_algorithm, digest) = self.digest.expect("decoder guarantees DIGEST before END");
        Checkpoint {
            max_pfn: self.max_pfn,
            kernel: self.kernel,
            pages: self.pages,
            rounds: self.rounds,
            capture: self.capture.expect("decoder guarantees CAPTURE before END"),
            page_types: self.page_types,
            p2m: self.p2m,
            vcpus: self.vcpus,
            shared_info: self.shared_info,
            digest,
            digest_algorithm,
            stream_bytes,
        }
    }
}

impl Checkpoint {
    /// A checkpoint of a guest with one vCPU (basic context `vcpu_ctx`), taken without
    /// pre-copy rounds, start_info at pfn 1 and no shared-info page: the shape of the
    /// synthetic guests tests and fuzz seeds build. The digest is computed from `pages`.
    pub fn one_vcpu(
        max_pfn: u64,
        kernel: &str,
        pages: HashMap<u64, Box<[u8; PAGE_SIZE]>>,
        page_types: Vec<u8>,
        p2m: Vec<u64>,
        vcpu_ctx: Vec<u8>,
    ) -> Checkpoint {
        let mut c = Checkpoint {
            max_pfn,
            kernel: kernel.into(),
            pages,
            rounds: Vec::new(),
            capture: Capture {
                start_info_pfn: 1,
                nr_vcpus: 1,
                pause_ns: 0,
            },
            page_types,
            p2m,
            vcpus: vec![VcpuState {
                id: 0,
                kind: VcpuKind::Basic,
                data: vcpu_ctx,
            }],
            shared_info: None,
            digest: [0; 32],
            digest_algorithm: Algorithm::CURRENT,
            stream_bytes: 0,
        };
        c.digest = c.compute_digest();
        c
    }

    /// Decode and fully validate a stream held in memory.
    pub fn from_bytes(data: &[u8]) -> Result<Self, Error> {
        FullCheckpoint::from_bytes(data).map(|f| f.checkpoint)
    }

    /// Decode and fully validate a stream from a reader, 64 KiB at a time.
    pub fn read_from(r: impl io::Read) -> Result<Self, ReadError> {
        FullCheckpoint::read_from(r).map(|f| f.checkpoint)
    }

    /// Content of a pfn (None: zero page).
    pub fn page(&self, pfn: u64) -> Option<&[u8; PAGE_SIZE]> {
        self.pages.get(&pfn).map(|b| &**b)
    }

    /// The digest of this checkpoint's pages ([`Algorithm::CURRENT`], what encoding writes).
    pub fn compute_digest(&self) -> [u8; 32] {
        self.compute_digest_by(Algorithm::CURRENT)
    }

    /// The digest of this checkpoint's pages by `alg`.
    pub fn compute_digest_by(&self, alg: Algorithm) -> [u8; 32] {
        root_of_pages(alg, self.max_pfn, |pfn| self.page(pfn))
    }

    /// The basic state of a vCPU.
    pub fn vcpu(&self, id: u32, kind: VcpuKind) -> Option<&[u8]> {
        self.vcpus
            .iter()
            .find(|v| v.id == id && v.kind == kind)
            .map(|v| v.data.as_slice())
    }

    /// Write as a single-round stream (pre-copy round 0 with every page, then the capture
    /// state). Zero pages are sent as zero entries.
    pub fn write_to<W: io::Write>(&self, w: W) -> io::Result<W> {
        self.write_with(w, &[])
    }

    fn write_with<W: io::Write>(&self, w: W, p2m_frames: &[u64]) -> io::Result<W> {
        let mut e = Encoder::new(w)?;
        e.header(self.max_pfn, self.kernel.as_bytes())?;
        e.round(0, false)?;
        let mut batch: Vec<PageRef<'_>> = Vec::with_capacity(MAX_BATCH);
        for pfn in 0..=self.max_pfn {
            batch.push((pfn, self.page(pfn)));
            if batch.len() == MAX_BATCH {
                e.page_batch(&batch)?;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            e.page_batch(&batch)?;
        }
        e.capture(
            self.capture.start_info_pfn,
            self.capture.nr_vcpus,
            self.capture.pause_ns,
        )?;
        e.page_types(0, &self.page_types)?;
        e.p2m(0, &self.p2m)?;
        if !p2m_frames.is_empty() {
            e.p2m_frames(p2m_frames)?;
        }
        for v in &self.vcpus {
            e.vcpu(v.id, v.kind, &v.data)?;
        }
        if let Some(s) = &self.shared_info {
            e.shared_info(s)?;
        }
        e.digest(Algorithm::CURRENT, &self.compute_digest())?;
        e.end()
    }
}
