//! The receive state machine: bytes from the one TCP connection go through the stream
//! decoder; every page is placed into a loader frame by the plan; at END the pages are hashed
//! back out of those frames, in pfn order, and compared with the stream's digest. Any failure
//! abandons the plan (frames go back to the book) and yields a result record naming the check.
//!
//! The capture records a restore needs (CAPTURE, PAGE_TYPES, P2M, P2M_FRAMES, vCPU 0) are kept
//! in `Records`. The plan takes a frame per page received; PAGE_TYPES tells how many pfns are
//! RAM, and a guest whose RAM cannot fit the loader's frames is refused as soon as that is
//! known (`too-large`). For a restorable stream (one with P2M_FRAMES), RAM pfns never sent get
//! a zeroed frame at END, so every RAM pfn has a frame of its own.
use crate::frames::{FrameBook, Plan, PlanError};
use crate::records::{is_ram, Records};
use crate::result::{ResultRecord, Status};
use checkpoint_stream::digest::{leaf_hash, Algorithm, RootBuilder, ZERO_LEAF};
use checkpoint_stream::{
    Capture, Decoder, Error as StreamError, Header, Phase, Sink, U64s, VcpuKind, PAGE_SIZE,
};

/// Where placed pages live. The kernel maps a machine frame per call; tests use memory.
pub trait FrameStore {
    /// Write a page (None = zeros) into loader frame `pfn`.
    fn write(&mut self, pfn: u64, data: Option<&[u8; PAGE_SIZE]>);
    /// SHA-256 leaf of loader frame `pfn`'s current contents.
    fn leaf(&mut self, pfn: u64) -> [u8; 32];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for a connection.
    Idle,
    /// Connection accepted, stream in progress.
    Receiving,
    /// A result was produced; the verified pages (if ok) stay placed.
    Finished(Status),
}

struct Placer<'r, 'a, S: FrameStore> {
    book: &'r mut FrameBook<'a>,
    plan: &'r mut Plan<'a>,
    records: &'r mut Records<'a>,
    leaves: &'r mut [[u8; 32]],
    store: &'r mut S,
    plan_err: Option<PlanError>,
    digest: Option<(Algorithm, [u8; 32])>,
    verified: bool,
    zero_filled: u64,
}

impl<S: FrameStore> Placer<'_, '_, S> {
    /// Write a page into frame `f`, keeping its leaf if the receiver caches leaves.
    fn write(&mut self, f: u64, data: Option<&[u8; PAGE_SIZE]>) {
        self.store.write(f, data);
        if let Some(l) = self.leaves.get_mut(f as usize) {
            *l = leaf_hash(data);
        }
    }
}

impl<S: FrameStore> Sink for Placer<'_, '_, S> {
    fn header(&mut self, h: &Header<'_>) -> Result<(), StreamError> {
        if h.page_size as usize != PAGE_SIZE || h.word_size != 8 {
            return Err(StreamError::Unsupported(
                "only 64-bit guests with 4 KiB pages",
            ));
        }
        self.records.start(h.max_pfn);
        self.plan.start(h.max_pfn).map_err(|e| {
            self.plan_err = Some(e);
            StreamError::Sink("plan")
        })
    }

    fn page(&mut self, pfn: u64, data: Option<&[u8; PAGE_SIZE]>) -> Result<(), StreamError> {
        let f = self.plan.place(pfn, self.book).map_err(|e| {
            self.plan_err = Some(e);
            StreamError::Sink("plan")
        })?;
        self.write(f, data);
        Ok(())
    }

    fn capture(&mut self, c: &Capture) -> Result<(), StreamError> {
        self.records.set_capture(c);
        Ok(())
    }

    fn page_types(&mut self, first_pfn: u64, types: &[u8]) -> Result<(), StreamError> {
        self.records.add_types(first_pfn, types);
        // Every RAM pfn needs a frame of its own: refuse as soon as they cannot all fit.
        let ram = self.records.ram_pages();
        let frames = self.plan.placed() + self.book.free_count();
        if ram > frames {
            self.plan_err = Some(PlanError::RamTooLarge { ram, frames });
            return Err(StreamError::Sink("plan"));
        }
        Ok(())
    }

    fn p2m(&mut self, first_pfn: u64, mfns: U64s<'_>) -> Result<(), StreamError> {
        self.records.add_p2m(first_pfn, mfns.iter());
        Ok(())
    }

    fn p2m_frames(&mut self, first_index: u64, pfns: U64s<'_>) -> Result<(), StreamError> {
        self.records.add_p2m_frames(first_index, pfns.iter());
        Ok(())
    }

    fn vcpu(&mut self, id: u32, kind: VcpuKind, data: &[u8]) -> Result<(), StreamError> {
        self.records.add_vcpu(id, kind, data);
        Ok(())
    }

    fn digest(&mut self, alg: Algorithm, root: &[u8; 32]) -> Result<(), StreamError> {
        self.digest = Some((alg, *root));
        Ok(())
    }

    fn end(&mut self) -> Result<(), StreamError> {
        let (alg, want) = self.digest.ok_or(StreamError::Missing("DIGEST"))?;
        let max = self.plan.max_pfn().ok_or(StreamError::Missing("HEADER"))?;
        if self.records.restorable() && self.records.has_types() {
            // RAM pfns never sent are zero pages, but the restored guest owns them: give each
            // a zeroed frame now, while a failure can still be reported.
            for pfn in 0..=max {
                if is_ram(self.records.page_type(pfn)) && !self.plan.is_placed(pfn) {
                    let f = self.plan.place(pfn, self.book).map_err(|e| {
                        self.plan_err = Some(e);
                        StreamError::Sink("plan")
                    })?;
                    self.write(f, None);
                    self.zero_filled += 1;
                }
            }
        }
        let mut b = RootBuilder::new(alg, max);
        for pfn in 0..=max {
            match self.plan.lookup(pfn) {
                Some(f) => match self.leaves.get(f as usize) {
                    Some(l) => b.push(l),
                    None => b.push(&self.store.leaf(f)),
                },
                None => b.push(&ZERO_LEAF),
            }
        }
        if b.finish() != Some(want) {
            return Err(StreamError::DigestMismatch);
        }
        self.records.seal();
        self.verified = true;
        Ok(())
    }
}

pub struct Receiver<'a> {
    pub book: FrameBook<'a>,
    pub plan: Plan<'a>,
    pub records: Records<'a>,
    /// Leaf of each loader frame, set when the frame is written (empty: no cache).
    leaves: &'a mut [[u8; 32]],
    decoder: Decoder<'static>,
    state: State,
    bytes: u64,
    started_us: u64,
    digest: Option<(Algorithm, [u8; 32])>,
    zero_filled: u64,
}

fn classify(e: &StreamError, plan_err: Option<PlanError>) -> Status {
    match (e, plan_err) {
        (
            _,
            Some(
                PlanError::TooManyPfns { .. }
                | PlanError::RamTooLarge { .. }
                | PlanError::OutOfFrames { .. },
            ),
        ) => Status::TooLarge,
        (_, Some(PlanError::PfnOutOfRange { .. })) | (StreamError::PfnOutOfRange { .. }, _) => {
            Status::PfnOutOfRange
        }
        (StreamError::DigestMismatch, _) => Status::DigestMismatch,
        (StreamError::Truncated { .. }, _) => Status::Truncated,
        _ => Status::Corrupt,
    }
}

/// Writes Display output into a fixed buffer (for result messages without alloc).
struct Msg {
    b: [u8; crate::result::MSG_MAX],
    n: usize,
}

impl core::fmt::Write for Msg {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for c in s.chars() {
            let mut tmp = [0u8; 4];
            let e = c.encode_utf8(&mut tmp);
            if self.n + e.len() > self.b.len() {
                return Ok(());
            }
            self.b[self.n..self.n + e.len()].copy_from_slice(e.as_bytes());
            self.n += e.len();
        }
        Ok(())
    }
}

fn message(args: core::fmt::Arguments<'_>) -> Msg {
    let mut m = Msg {
        b: [0; crate::result::MSG_MAX],
        n: 0,
    };
    let _ = core::fmt::write(&mut m, args);
    m
}

impl<'a> Receiver<'a> {
    /// A receiver that verifies streams but keeps no capture records (no restore).
    pub fn new(book: FrameBook<'a>, plan: Plan<'a>) -> Self {
        Self::with_records(book, plan, Records::none())
    }

    /// A receiver that also keeps what a restore needs in `records`.
    pub fn with_records(book: FrameBook<'a>, plan: Plan<'a>, records: Records<'a>) -> Self {
        Receiver {
            book,
            plan,
            records,
            leaves: &mut [],
            zero_filled: 0,
            decoder: Decoder::new(),
            state: State::Idle,
            bytes: 0,
            started_us: 0,
            digest: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// A connection was accepted at time `now_us`.
    pub fn begin(&mut self, now_us: u64) {
        self.plan.abandon(&mut self.book);
        self.decoder = Decoder::new();
        self.state = State::Receiving;
        self.bytes = 0;
        self.started_us = now_us;
        self.digest = None;
        self.zero_filled = 0;
    }

    /// Cache each frame's digest leaf when the frame is written (`leaves[loader pfn]`, frames
    /// beyond the slice are not cached). END then hashes the cached leaves instead of reading
    /// every frame back: the pages of the pre-copy rounds are hashed as they arrive, before the
    /// capture, which takes O(RAM) re-reading out of the guest's blackout. What is verified is
    /// then the bytes handed to the frame store, not a re-read of the frames.
    pub fn cache_leaves(&mut self, leaves: &'a mut [[u8; 32]]) {
        self.leaves = leaves;
    }

    /// RAM pfns that were never sent and got a zeroed frame at END.
    pub fn zero_filled(&self) -> u64 {
        self.zero_filled
    }

    fn fail(
        &mut self,
        status: Status,
        now_us: u64,
        args: core::fmt::Arguments<'_>,
    ) -> ResultRecord {
        let placed = self.plan.placed();
        self.plan.abandon(&mut self.book);
        self.state = State::Finished(status);
        let m = message(args);
        ResultRecord::new(
            status,
            placed,
            self.bytes,
            now_us - self.started_us,
            core::str::from_utf8(&m.b[..m.n]).unwrap_or(""),
        )
    }

    /// Feed received bytes. Returns a result record once the stream is finished: after END
    /// (ok or a failed check) or at the first error; None while more is expected.
    pub fn feed<S: FrameStore>(
        &mut self,
        data: &[u8],
        store: &mut S,
        now_us: u64,
    ) -> Option<ResultRecord> {
        if self.state != State::Receiving {
            return None;
        }
        self.bytes += data.len() as u64;
        // DIGEST arrives in one feed() call and END maybe in a later one: carry it over.
        let mut sink = Placer {
            book: &mut self.book,
            plan: &mut self.plan,
            records: &mut self.records,
            leaves: &mut *self.leaves,
            store,
            plan_err: None,
            digest: self.digest,
            verified: false,
            zero_filled: 0,
        };
        let r = self.decoder.feed(data, &mut sink);
        let (plan_err, verified) = (sink.plan_err, sink.verified);
        self.zero_filled += sink.zero_filled;
        self.digest = sink.digest;
        match r {
            Err(e) => {
                let st = classify(&e, plan_err);
                Some(match plan_err {
                    Some(pe) => self.fail(st, now_us, format_args!("{pe}")),
                    None => self.fail(st, now_us, format_args!("{e}")),
                })
            }
            Ok(_) if self.decoder.phase() == Phase::Ended && verified => {
                self.state = State::Finished(Status::Ok);
                let placed = self.plan.placed();
                let m = if self.records.restorable() {
                    message(format_args!(
                        "{placed} pages placed ({} RAM pages never sent, zero-filled), digest \
                         verified, capture kept",
                        self.zero_filled
                    ))
                } else {
                    message(format_args!("{placed} pages placed, digest verified"))
                };
                Some(ResultRecord::new(
                    Status::Ok,
                    placed,
                    self.bytes,
                    now_us - self.started_us,
                    core::str::from_utf8(&m.b[..m.n]).unwrap_or(""),
                ))
            }
            Ok(_) => None,
        }
    }

    /// The peer closed its side (or the connection broke) at `now_us`.
    pub fn eof(&mut self, now_us: u64) -> Option<ResultRecord> {
        if self.state != State::Receiving {
            return None;
        }
        let e = self.decoder.finish().err();
        Some(match e {
            Some(e) => self.fail(Status::Truncated, now_us, format_args!("{e}")),
            None => self.fail(
                Status::Internal,
                now_us,
                format_args!("stream ended without a result"),
            ),
        })
    }

    /// Back to Idle for a next connection, keeping a verified checkpoint's frames placed only if
    /// `keep` (the loader serves one checkpoint; tests reuse receivers).
    pub fn reset(&mut self, keep: bool) {
        if !keep {
            self.plan.abandon(&mut self.book);
        }
        self.state = State::Idle;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth;

    /// Test fake: frames held in memory.
    struct FakeStore(std::collections::HashMap<u64, Box<[u8; PAGE_SIZE]>>);
    impl FrameStore for FakeStore {
        fn write(&mut self, pfn: u64, data: Option<&[u8; PAGE_SIZE]>) {
            self.0
                .insert(pfn, Box::new(*data.unwrap_or(&[0; PAGE_SIZE])));
        }
        fn leaf(&mut self, pfn: u64) -> [u8; 32] {
            checkpoint_stream::digest::leaf_hash(Some(&self.0[&pfn]))
        }
    }

    fn run(stream: &[u8], nr_pages: u64, chunk: usize) -> (ResultRecord, FakeStore) {
        let mut bits = vec![0u64; 64];
        let mut slots = vec![0u32; 4096];
        let mut r = Receiver::new(
            FrameBook::new(&mut bits, nr_pages, 100),
            Plan::new(&mut slots),
        );
        let mut st = FakeStore(Default::default());
        r.begin(1000);
        for c in stream.chunks(chunk) {
            if let Some(res) = r.feed(c, &mut st, 2000) {
                return (res, st);
            }
        }
        (r.eof(3000).unwrap(), st)
    }

    #[test]
    fn good_stream_is_placed_and_verified() {
        let s = synth::stream(63, 7);
        for chunk in [1, 1460, 5000, s.len()] {
            let (res, st) = run(&s, 1000, chunk);
            assert_eq!(res.status, Status::Ok, "chunk {chunk}: {}", res.message());
            assert_eq!(res.pages, 64);
            assert_eq!(res.bytes, s.len() as u64);
            assert_eq!(st.0.len(), 64);
            assert!(
                st.0.keys().all(|&f| (100..1000).contains(&f)),
                "frames below first_free untouched"
            );
        }
    }

    #[test]
    fn truncated_stream_is_refused() {
        let s = synth::stream(15, 1);
        for cut in [0, 10, 100, s.len() / 2, s.len() - 1] {
            let (res, _) = run(&s[..cut], 1000, 512);
            assert_eq!(
                res.status,
                Status::Truncated,
                "cut at {cut}: {}",
                res.message()
            );
        }
    }

    #[test]
    fn corrupted_page_fails_its_checksum() {
        let mut s = synth::stream(15, 1);
        let i = s.len() / 2;
        s[i] ^= 0x40;
        let (res, _) = run(&s, 1000, 4096);
        assert_eq!(res.status, Status::Corrupt, "{}", res.message());
        assert!(res.message().contains("checksum"), "{}", res.message());
    }

    #[test]
    fn pfn_range_beyond_the_plan_is_refused_at_the_header() {
        let s = synth::stream(4096, 1); // 4097 pfns, the test plan holds 4096
        let (res, _) = run(&s, 300, 4096);
        assert_eq!(res.status, Status::TooLarge, "{}", res.message());
        assert_eq!(res.pages, 0);
        assert!(res.message().contains("4097 pfns"), "{}", res.message());
    }

    #[test]
    fn ram_beyond_free_frames_is_refused() {
        // Pages first: the book runs out while placing them.
        let s = synth::stream(255, 1);
        let (res, _) = run(&s, 300, 4096); // 200 free frames < 256 pages
        assert_eq!(res.status, Status::TooLarge, "{}", res.message());
        assert!(res.message().contains("no free frame"), "{}", res.message());
        // Types first (no pages yet): refused at the first PAGE_TYPES chunk that shows more
        // RAM than frames, with nothing placed.
        let s = synth::ram_claim(3999);
        let (res, _) = run(&s, 300, 100_000);
        assert_eq!(res.status, Status::TooLarge, "{}", res.message());
        assert_eq!(res.pages, 0);
        assert!(
            res.message().contains("at least 4000 pages") && res.message().contains("200 frames"),
            "{}",
            res.message()
        );
    }

    #[test]
    fn a_sparse_guest_needs_frames_for_its_ram_only() {
        // 4000 pfns, of which 150 RAM: fits 200 frames although max_pfn does not.
        let (res, r, _) = receive_sparse(&only_ram(&sparse(3999, 150)));
        assert_eq!(res.status, Status::Ok, "{}", res.message());
        assert_eq!(r.zero_filled(), 0);
        assert_eq!(res.pages, 150);
        assert!(r.records.restorable());
        assert_eq!(r.records.ram_pages(), 150);
        assert_eq!(r.records.mapped_frames(), 150);
        assert_eq!(r.records.pfn_of_source_mfn(0x9_0000 + 7 * 25), Some(7 * 25));
        assert_eq!(r.records.p2m_frames(), &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(r.records.vcpu0_basic().is_some());
    }

    #[test]
    fn ram_never_sent_gets_zeroed_frames() {
        // Leave out the zero pages (they are implied): they still need frames.
        let (res, r, st) = receive_sparse(&only_ram_with_data(&sparse(3999, 150)));
        assert_eq!(res.status, Status::Ok, "{}", res.message());
        let zeros = (0..4000u64)
            .filter(|&p| p % 25 == 0 && p / 25 < 150 && p % 4 == 3)
            .count() as u64;
        assert!(zeros > 0);
        assert_eq!(r.zero_filled(), zeros);
        assert_eq!(r.plan.placed(), 150);
        for p in (0..4000u64).filter(|p| p % 25 == 0 && p / 25 < 150) {
            let f = r.plan.lookup(p).expect("every RAM pfn has a frame");
            if p % 4 == 3 {
                assert!(st.0[&f].iter().all(|&b| b == 0));
            }
        }
        assert!(res.message().contains("zero-filled"), "{}", res.message());
    }

    /// Test fake: counts the frames read back at END.
    struct CountingStore(FakeStore, u64);
    impl FrameStore for CountingStore {
        fn write(&mut self, pfn: u64, data: Option<&[u8; PAGE_SIZE]>) {
            self.0.write(pfn, data);
        }
        fn leaf(&mut self, pfn: u64) -> [u8; 32] {
            self.1 += 1;
            self.0.leaf(pfn)
        }
    }

    #[test]
    fn cached_leaves_verify_without_reading_frames_back() {
        let s = synth::stream(63, 11);
        for (cache, reads) in [(1000usize, 0u64), (132, 32), (0, 64)] {
            let mut bits = vec![0u64; 64];
            let mut slots = vec![0u32; 4096];
            let mut leaves = vec![[0u8; 32]; cache];
            let mut r = Receiver::new(FrameBook::new(&mut bits, 1000, 100), Plan::new(&mut slots));
            r.cache_leaves(&mut leaves);
            let mut st = CountingStore(FakeStore(Default::default()), 0);
            r.begin(0);
            let res = r.feed(&s, &mut st, 1).unwrap();
            assert_eq!(res.status, Status::Ok, "{}", res.message());
            // Frames 100..164: those below the cache's end are not read back.
            assert_eq!(st.1, reads, "cache of {cache} frames");
        }
        // A wrong page is still caught: the leaves are of the bytes received.
        let good = synth::checkpoint(63, 11);
        let mut c = synth::checkpoint(63, 11);
        c.pages.get_mut(&5).unwrap()[0] ^= 1;
        let mut e = checkpoint_stream::Encoder::new(Vec::new()).unwrap();
        e.header(63, b"bad").unwrap();
        e.round(0, false).unwrap();
        let pages: Vec<_> = (0..=63u64).map(|p| (p, c.page(p))).collect();
        e.page_batch(&pages).unwrap();
        e.capture(1, 1, 0).unwrap();
        e.page_types(0, &c.page_types).unwrap();
        e.p2m(0, &c.p2m).unwrap();
        e.vcpu(0, checkpoint_stream::VcpuKind::Basic, &c.vcpus[0].data)
            .unwrap();
        e.digest(Algorithm::CURRENT, &good.compute_digest())
            .unwrap();
        let bad = e.end().unwrap();
        let mut bits = vec![0u64; 64];
        let mut slots = vec![0u32; 4096];
        let mut leaves = vec![[0u8; 32]; 1000];
        let mut r = Receiver::new(FrameBook::new(&mut bits, 1000, 100), Plan::new(&mut slots));
        r.cache_leaves(&mut leaves);
        let mut st = FakeStore(Default::default());
        r.begin(0);
        let res = r.feed(&bad, &mut st, 1).unwrap();
        assert_eq!(res.status, Status::DigestMismatch, "{}", res.message());
    }

    /// Receive `stream` into a 300-page book (200 free) with records storage for 4096 pfns.
    fn receive_sparse(stream: &[u8]) -> (ResultRecord, Receiver<'static>, FakeStore) {
        // Leaked (tests only) so the receiver can outlive this frame.
        let bits = Box::leak(vec![0u64; 64].into_boxed_slice());
        let slots = Box::leak(vec![0u32; 4096].into_boxed_slice());
        let t = Box::leak(vec![0u8; 4096].into_boxed_slice());
        let i = Box::leak(vec![0u64; 256].into_boxed_slice());
        let f = Box::leak(vec![0u64; 8].into_boxed_slice());
        let mut r = Receiver::with_records(
            FrameBook::new(bits, 300, 100),
            Plan::new(slots),
            Records::new(t, i, f),
        );
        let mut st = FakeStore(Default::default());
        r.begin(0);
        let res = r.feed(stream, &mut st, 1).unwrap();
        (res, r, st)
    }

    /// A synthetic guest of `max_pfn + 1` pfns where only every 25th is RAM (`ram` of them),
    /// with a p2m, a p2m frame list and a vCPU: the shape of a real capture.
    fn sparse(max_pfn: u64, ram: u64) -> checkpoint_stream::model::FullCheckpoint {
        use checkpoint_stream::{page_type, INVALID_MFN};
        let mut c = synth::checkpoint(max_pfn, 5);
        let is_ram = |p: u64| p % 25 == 0 && p / 25 < ram;
        c.pages.retain(|&p, _| is_ram(p));
        for p in 0..=max_pfn {
            if !is_ram(p) {
                c.page_types[p as usize] = page_type::UNPOPULATED;
                c.p2m[p as usize] = INVALID_MFN;
            } else {
                c.p2m[p as usize] = 0x9_0000 + p;
            }
        }
        c.digest = c.compute_digest();
        checkpoint_stream::model::FullCheckpoint {
            checkpoint: c,
            p2m_frames: (1..=max_pfn / 512 + 1).collect(),
        }
    }

    /// Encode `c` as checkpointd does: RAM pfns only (`Checkpoint::write_to` sends every pfn).
    fn encode(c: &checkpoint_stream::model::FullCheckpoint, zeros: bool) -> Vec<u8> {
        use checkpoint_stream::{page_type, Encoder};
        let k = &c.checkpoint;
        let mut e = Encoder::new(Vec::new()).unwrap();
        e.header(k.max_pfn, b"sparse").unwrap();
        e.round(0, false).unwrap();
        let pages: Vec<_> = (0..=k.max_pfn)
            .filter(|&p| k.page_types[p as usize] != page_type::UNPOPULATED)
            .map(|p| (p, k.page(p)))
            .filter(|(_, d)| zeros || d.is_some())
            .collect();
        for b in pages.chunks(512) {
            e.page_batch(b).unwrap();
        }
        e.capture(k.capture.start_info_pfn, 1, 0).unwrap();
        e.page_types(0, &k.page_types).unwrap();
        e.p2m(0, &k.p2m).unwrap();
        e.p2m_frames(&c.p2m_frames).unwrap();
        e.vcpu(0, checkpoint_stream::VcpuKind::Basic, &k.vcpus[0].data)
            .unwrap();
        e.digest(Algorithm::CURRENT, &k.compute_digest()).unwrap();
        e.end().unwrap()
    }

    fn only_ram(c: &checkpoint_stream::model::FullCheckpoint) -> Vec<u8> {
        encode(c, true)
    }

    fn only_ram_with_data(c: &checkpoint_stream::model::FullCheckpoint) -> Vec<u8> {
        encode(c, false)
    }

    /// A frame store that silently corrupts one placed page: the digest over the frames must
    /// catch what the per-record checksums cannot.
    struct FlippingStore(FakeStore);
    impl FrameStore for FlippingStore {
        fn write(&mut self, pfn: u64, data: Option<&[u8; PAGE_SIZE]>) {
            self.0.write(pfn, data);
            if pfn == 105 {
                self.0 .0.get_mut(&pfn).unwrap()[17] ^= 1;
            }
        }
        fn leaf(&mut self, pfn: u64) -> [u8; 32] {
            self.0.leaf(pfn)
        }
    }

    #[test]
    fn digest_is_checked_over_placed_frames() {
        let s = synth::stream(15, 3);
        let mut bits = vec![0u64; 64];
        let mut slots = vec![0u32; 4096];
        let mut r = Receiver::new(FrameBook::new(&mut bits, 1000, 100), Plan::new(&mut slots));
        let mut st = FlippingStore(FakeStore(Default::default()));
        r.begin(0);
        let res = r.feed(&s, &mut st, 5).unwrap();
        assert_eq!(res.status, Status::DigestMismatch, "{}", res.message());
        assert_eq!(r.book.free_count(), 900, "frames returned after a failure");
    }

    #[test]
    fn receiver_serves_again_after_failure() {
        let s = synth::stream(15, 3);
        let mut bits = vec![0u64; 64];
        let mut slots = vec![0u32; 4096];
        let mut r = Receiver::new(FrameBook::new(&mut bits, 1000, 100), Plan::new(&mut slots));
        let mut st = FakeStore(Default::default());
        r.begin(0);
        assert_eq!(r.feed(&s[..100], &mut st, 1), None);
        assert_eq!(r.eof(2).unwrap().status, Status::Truncated);
        assert_eq!(r.feed(&s, &mut st, 3), None, "no feeding after a result");
        r.reset(false);
        r.begin(10);
        let res = r.feed(&s, &mut st, 20).unwrap();
        assert_eq!(res.status, Status::Ok);
        assert_eq!(res.micros, 10);
        assert_eq!(r.state(), State::Finished(Status::Ok));
    }

    /// Pre-copy: round 0 sends every page, round 1 resends pfn 2 with new content and turns
    /// pfn 5 into a zero page. The resent pages reuse their frames and the digest (over the
    /// final contents) verifies.
    #[test]
    fn later_rounds_overwrite_the_same_frames() {
        use checkpoint_stream::Encoder;
        let mut c = synth::checkpoint(7, 9);
        let old2 = **c.pages.get(&2).unwrap();
        let new2 = [0xabu8; PAGE_SIZE];
        c.pages.insert(2, Box::new(new2));
        c.pages.remove(&5);
        c.digest = c.compute_digest();
        let mut e = Encoder::new(Vec::new()).unwrap();
        e.header(c.max_pfn, b"rounds").unwrap();
        e.round(0, false).unwrap();
        let filler = [0x11u8; PAGE_SIZE];
        let round0: Vec<_> = (0..=7u64)
            .map(|p| {
                (
                    p,
                    if p == 2 {
                        Some(&old2)
                    } else if p == 5 {
                        Some(&filler)
                    } else {
                        c.page(p)
                    },
                )
            })
            .collect();
        e.page_batch(&round0).unwrap();
        e.round(1, false).unwrap();
        e.page_batch(&[(2, Some(&new2)), (5, None)]).unwrap();
        e.capture(1, 1, 0).unwrap();
        e.page_types(0, &c.page_types).unwrap();
        e.p2m(0, &c.p2m).unwrap();
        e.vcpu(0, checkpoint_stream::VcpuKind::Basic, &c.vcpus[0].data)
            .unwrap();
        e.digest(c.digest_algorithm, &c.digest).unwrap();
        let s = e.end().unwrap();

        let mut bits = vec![0u64; 64];
        let mut slots = vec![0u32; 4096];
        let mut r = Receiver::new(FrameBook::new(&mut bits, 1000, 100), Plan::new(&mut slots));
        let mut st = FakeStore(Default::default());
        r.begin(0);
        let res = r.feed(&s, &mut st, 1).unwrap();
        assert_eq!(res.status, Status::Ok, "{}", res.message());
        assert_eq!(res.pages, 8, "8 distinct pfns, 10 page copies");
        assert_eq!(st.0.len(), 8);
        let f2 = r.plan.lookup(2).unwrap();
        assert_eq!(*st.0[&f2], new2, "last copy wins");
        assert!(st.0[&r.plan.lookup(5).unwrap()].iter().all(|&b| b == 0));
        assert_eq!(r.book.free_count(), 900 - 8);
    }
}
