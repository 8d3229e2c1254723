//! `checkpointd save` and the stream half of `checkpointd migrate`: pre-copy rounds, the
//! capture, the drain, written as a checkpoint stream (docs/stream.md). Host-testable: it
//! only talks to a [`PageSource`] and a writer.

use crate::source::{CaptureOutcome, HoldTuple, PageSource};
use checkpoint_stream::digest::{leaf_hash, root_of_leaves, ZERO_LEAF};
use checkpoint_stream::{Encoder, PageRef, VcpuKind, INVALID_MFN, PAGE_SIZE};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Size of the vCPU context the device returns (Xen's vcpu_guest_context, x86_64).
pub const VCPU_CONTEXT_BYTES: usize = checkpoint_abi::vcpu_ctx::SIZE;
/// Pages per device read (the ABI's limit per pread).
const READ_CHUNK: usize = 256;
/// Pages per PAGE_BATCH record.
const BATCH: usize = 256;

/// When to stop pre-copying.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Most pre-copy rounds before capturing regardless.
    pub max_rounds: u32,
    /// Capture once a round's dirty set is at most this many pages.
    pub small_dirty: u64,
    /// The snapshot buffer is this many times the last dirty set (at least `min_snapshot`).
    pub snapshot_factor: u64,
    pub min_snapshot: u64,
    /// Capture attempts that may fail for lack of snapshot space before giving up.
    pub capture_attempts: u32,
    /// Capture as soon as the dirty set could be sent in this many milliseconds at the
    /// rate the last round reached (QEMU's downtime-limit).
    pub downtime_ms: Option<u64>,
    /// Give up (before the capture) once this instant has passed.
    pub deadline: Option<Instant>,
    /// Give up (before the capture) as soon as this flag is set (Ctrl-C).
    pub cancel: Option<&'static AtomicBool>,
    /// Arm the output hold for this connection just before each capture attempt (and
    /// release it when the attempt fails), so nothing but the stream leaves the guest
    /// after the capture point. The caller releases it once the migration is decided.
    pub hold: Option<HoldTuple>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_rounds: 8,
            small_dirty: 256,
            snapshot_factor: 4,
            min_snapshot: 1024,
            capture_attempts: 4,
            downtime_ms: None,
            deadline: None,
            cancel: None,
            hold: None,
        }
    }
}

/// Why pre-copy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    SmallDirtySet,
    DowntimeTarget,
    NotShrinking,
    MaxRounds,
}

/// Bytes a page costs in a PAGE_BATCH record (its data plus its pfn), for drain estimates.
const PAGE_WIRE_BYTES: u64 = PAGE_SIZE as u64 + 8;

/// How long sending `pages` takes at `bytes_per_ms`.
pub fn drain_estimate_ms(pages: u64, bytes_per_ms: f64) -> u64 {
    if bytes_per_ms <= 0.0 {
        return u64::MAX;
    }
    ((pages * PAGE_WIRE_BYTES) as f64 / bytes_per_ms).ceil() as u64
}

impl Policy {
    /// Decide after `rounds_done` rounds, with the new dirty count, the previous one and
    /// the send rate the last round reached (bytes per millisecond).
    pub fn stop(
        &self,
        rounds_done: u32,
        dirty: u64,
        prev_dirty: u64,
        bytes_per_ms: f64,
    ) -> Option<StopReason> {
        if dirty <= self.small_dirty {
            Some(StopReason::SmallDirtySet)
        } else if self
            .downtime_ms
            .is_some_and(|t| drain_estimate_ms(dirty, bytes_per_ms) <= t)
        {
            Some(StopReason::DowntimeTarget)
        } else if rounds_done >= 2 && dirty >= prev_dirty {
            // Round 0 sends everything; from round 1 on a set that does not shrink will not.
            Some(StopReason::NotShrinking)
        } else if rounds_done >= self.max_rounds {
            Some(StopReason::MaxRounds)
        } else {
            None
        }
    }

    /// Whether the caller asked to give up.
    fn interrupted(&self) -> Result<(), SaveError> {
        if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(SaveError::Cancelled);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(SaveError::TimedOut);
        }
        Ok(())
    }

    fn snapshot_size(&self, dirty: u64, pfns: u64) -> u64 {
        (dirty.saturating_mul(self.snapshot_factor))
            .max(self.min_snapshot)
            .min(pfns)
            .max(1)
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RoundSummary {
    pub index: u32,
    pub drain: bool,
    pub pages: u64,
    pub zero_pages: u64,
    pub bytes: u64,
    pub millis: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SaveSummary {
    pub rounds: Vec<RoundSummary>,
    pub stop_reason: StopReason,
    /// Drain time estimated when pre-copy stopped (ms), from the last round's rate.
    pub drain_estimate_ms: u64,
    pub capture_attempts: u32,
    pub snapshot_pages: u64,
    pub capture_pause_ns: u64,
    pub suspend_ns: u64,
    pub total_bytes: u64,
    pub pfns: u64,
    pub millis: u64,
}

#[derive(Debug)]
pub enum SaveOutcome {
    Saved(SaveSummary),
    /// This process runs in a guest revived from the checkpoint; nothing was written after
    /// the capture point.
    Restored,
}

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("{what}: {source}")]
    Device {
        what: &'static str,
        source: io::Error,
    },
    #[error("writing the checkpoint: {0}")]
    Write(#[source] io::Error),
    #[error("the device returned a short read at pfn {pfn:#x}")]
    ShortRead { pfn: u64 },
    #[error("capture failed {0} times for lack of snapshot space; the guest dirties memory faster than rounds converge")]
    NoConvergence(u32),
    #[error("interrupted before the capture")]
    Cancelled,
    #[error("timed out before the capture")]
    TimedOut,
    #[error(
        "the device's captured tables do not match the guest size ({what}: {got}, expected {want})"
    )]
    TableSize {
        what: &'static str,
        got: usize,
        want: usize,
    },
}

fn dev(what: &'static str) -> impl FnOnce(io::Error) -> SaveError {
    move |source| SaveError::Device { what, source }
}

struct Writer<W: Write> {
    enc: Encoder<W>,
    leaves: Vec<[u8; 32]>,
    buf: Vec<u8>,
    show: bool,
}

impl<W: Write> Writer<W> {
    /// Send every pfn set in `set` as one round.
    fn round<S: PageSource>(
        &mut self,
        src: &mut S,
        index: u32,
        drain: bool,
        set: &[u64],
        count: u64,
        policy: &Policy,
    ) -> Result<RoundSummary, SaveError> {
        let t0 = Instant::now();
        let start_bytes = self.enc.bytes();
        self.enc.round(index, drain).map_err(SaveError::Write)?;
        let pb = if self.show {
            ProgressBar::new(count)
        } else {
            ProgressBar::hidden()
        };
        pb.set_style(
            ProgressStyle::with_template(
                "{prefix:>9} [{bar:40}] {pos}/{len} pages {binary_bytes_per_sec} {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        pb.set_prefix(if drain {
            "drain".to_string()
        } else {
            format!("round {index}")
        });
        let mut summary = RoundSummary {
            index,
            drain,
            ..Default::default()
        };
        let pfns = self.leaves.len() as u64;
        let mut pending: Vec<u64> = Vec::with_capacity(BATCH);
        let mut pfn = 0u64;
        while pfn < pfns {
            if set[(pfn / 64) as usize] >> (pfn % 64) & 1 == 0 {
                pfn += 1;
                continue;
            }
            // A run of consecutive dirty pfns, read in one call.
            let mut end = pfn + 1;
            while end < pfns
                && end - pfn < READ_CHUNK as u64
                && set[(end / 64) as usize] >> (end % 64) & 1 != 0
            {
                end += 1;
            }
            let n = (end - pfn) as usize;
            let got_start = pending.len();
            let need = (got_start + n) * PAGE_SIZE;
            if self.buf.len() < need {
                self.buf.resize(need, 0);
            }
            let mut done = 0;
            while done < n {
                let off = (got_start + done) * PAGE_SIZE;
                let got = src
                    .read_pages(
                        pfn + done as u64,
                        &mut self.buf[off..(got_start + n) * PAGE_SIZE],
                    )
                    .map_err(dev("reading pages"))?;
                if got == 0 {
                    return Err(SaveError::ShortRead {
                        pfn: pfn + done as u64,
                    });
                }
                done += got;
            }
            pending.extend(pfn..end);
            if pending.len() >= BATCH {
                self.flush(&mut pending, &mut summary)?;
                // Pre-copy may be abandoned at any batch; the drain must finish.
                if !drain {
                    policy.interrupted()?;
                }
            }
            pb.inc(n as u64);
            pfn = end;
        }
        if !pending.is_empty() {
            self.flush(&mut pending, &mut summary)?;
        }
        pb.finish_and_clear();
        summary.bytes = self.enc.bytes() - start_bytes;
        summary.millis = t0.elapsed().as_millis() as u64;
        Ok(summary)
    }

    fn flush(
        &mut self,
        pending: &mut Vec<u64>,
        summary: &mut RoundSummary,
    ) -> Result<(), SaveError> {
        for chunk in pending
            .chunks(BATCH)
            .enumerate()
            .map(|(i, c)| (i * BATCH, c))
        {
            let (base, pfns) = chunk;
            let mut refs: Vec<PageRef<'_>> = Vec::with_capacity(pfns.len());
            for (i, &p) in pfns.iter().enumerate() {
                let page: &[u8; PAGE_SIZE] = self.buf
                    [(base + i) * PAGE_SIZE..(base + i + 1) * PAGE_SIZE]
                    .try_into()
                    .unwrap();
                let zero = page.iter().all(|&b| b == 0);
                self.leaves[p as usize] = if zero {
                    ZERO_LEAF
                } else {
                    leaf_hash(Some(page))
                };
                summary.zero_pages += zero as u64;
                refs.push((p, (!zero).then_some(page)));
            }
            self.enc.page_batch(&refs).map_err(SaveError::Write)?;
            summary.pages += pfns.len() as u64;
        }
        pending.clear();
        Ok(())
    }
}

/// Take a checkpoint of `src` and write it to `out`, then end the tracking session.
pub fn save<S: PageSource, W: Write>(
    src: &mut S,
    out: W,
    policy: &Policy,
    show_progress: bool,
) -> Result<SaveOutcome, SaveError> {
    let o = stream(src, out, policy, show_progress)?;
    if matches!(o, SaveOutcome::Saved(_)) {
        src.stop_tracking()
            .map_err(dev("stopping dirty tracking"))?;
    }
    Ok(o)
}

/// Take a checkpoint of `src` and write it to `out`, ending with END; the tracking
/// session (and the capture it holds) stays open for the caller.
pub fn stream<S: PageSource, W: Write>(
    src: &mut S,
    out: W,
    policy: &Policy,
    show_progress: bool,
) -> Result<SaveOutcome, SaveError> {
    let t0 = Instant::now();
    let pfns = src.pfn_count();
    let words = pfns.div_ceil(64) as usize;
    let mut enc = Encoder::new(out).map_err(SaveError::Write)?;
    enc.header(pfns - 1, src.kernel().as_bytes())
        .map_err(SaveError::Write)?;
    let mut w = Writer {
        enc,
        leaves: vec![ZERO_LEAF; pfns as usize],
        buf: Vec::new(),
        show: show_progress,
    };

    src.start_tracking()
        .map_err(dev("starting dirty tracking"))?;
    let mut dirty_set = vec![0u64; words];
    let mut snap_set = vec![0u64; words];
    let mut vcpu = vec![0u8; VCPU_CONTEXT_BYTES];
    let mut rounds = Vec::new();
    let mut dirty = src.next_round(&mut dirty_set).map_err(dev("first round"))?;
    let mut prev = u64::MAX;
    let mut attempts = 0u32;
    // Pre-copy goes on after a capture that lacked snapshot space (the dirty set just read
    // is still valid), with a buffer sized from what it needed.
    let mut needed = 0u64;
    let mut index = 0u32;
    let mut drain_estimate;
    let (stop_reason, captured) = loop {
        let r = w.round(src, index, false, &dirty_set, dirty, policy)?;
        let rate = r.bytes as f64 / r.millis.max(1) as f64;
        rounds.push(r);
        index += 1;
        prev = prev.min(dirty);
        let last = dirty;
        policy.interrupted()?;
        dirty = src.next_round(&mut dirty_set).map_err(dev("next round"))?;
        let Some(reason) = policy.stop(index, dirty, last.min(prev), rate) else {
            continue;
        };
        policy.interrupted()?;
        drain_estimate = drain_estimate_ms(dirty, rate);
        attempts += 1;
        // After a too-small buffer, at least twice what the failed capture needed.
        let cap = policy
            .snapshot_size(dirty, pfns)
            .max(needed.saturating_mul(2).min(pfns));
        if let Some(t) = &policy.hold {
            src.hold_output(t).map_err(dev("arming the output hold"))?;
        }
        let outcome = src.capture(cap, &mut snap_set, &mut vcpu);
        if policy.hold.is_some() && !matches!(outcome, Ok(CaptureOutcome::Captured { .. })) {
            // Not captured (or this is the revived copy, whose hold the module dropped).
            let _ = src.release_output();
        }
        match outcome.map_err(dev("capture"))? {
            CaptureOutcome::Restored => return Ok(SaveOutcome::Restored),
            CaptureOutcome::Captured {
                snapshot_pages,
                pause_ns,
                suspend_ns,
            } => break (reason, (snapshot_pages, pause_ns, suspend_ns)),
            CaptureOutcome::NoSpace { needed: n } if attempts < policy.capture_attempts => {
                needed = n
            }
            CaptureOutcome::NoSpace { .. } => {
                return Err(SaveError::NoConvergence(attempts));
            }
        }
    };
    let (snapshot_pages, pause_ns, suspend_ns) = captured;

    w.enc
        .capture(src.start_info_pfn(), 1, pause_ns)
        .map_err(SaveError::Write)?;
    rounds.push(w.round(src, index, true, &snap_set, snapshot_pages, policy)?);

    let types = src
        .captured_page_types()
        .map_err(dev("reading the page-type map"))?;
    let p2m = src
        .captured_p2m()
        .map_err(dev("reading the captured p2m"))?;
    let frames = src
        .captured_p2m_frames()
        .map_err(dev("reading the p2m frame list"))?;
    for (what, got) in [("page types", types.len()), ("p2m", p2m.len())] {
        if got != pfns as usize {
            return Err(SaveError::TableSize {
                what,
                got,
                want: pfns as usize,
            });
        }
    }
    let want_frames = ((pfns - 1) / 512 + 1) as usize;
    if frames.len() != want_frames {
        return Err(SaveError::TableSize {
            what: "p2m frames",
            got: frames.len(),
            want: want_frames,
        });
    }
    // The device gives Linux's raw p2m entries; identity and foreign frames are not RAM.
    let p2m: Vec<u64> = p2m
        .into_iter()
        .map(|m| if m >> 62 != 0 { INVALID_MFN } else { m })
        .collect();
    w.enc.page_types(0, &types).map_err(SaveError::Write)?;
    w.enc.p2m(0, &p2m).map_err(SaveError::Write)?;
    w.enc.p2m_frames(&frames).map_err(SaveError::Write)?;
    w.enc
        .vcpu(0, VcpuKind::Basic, &vcpu)
        .map_err(SaveError::Write)?;
    w.enc
        .digest(&root_of_leaves(&w.leaves))
        .map_err(SaveError::Write)?;
    let total_bytes = w.enc.bytes() + 16;
    let mut out = w.enc.end().map_err(SaveError::Write)?;
    out.flush().map_err(SaveError::Write)?;
    Ok(SaveOutcome::Saved(SaveSummary {
        rounds,
        stop_reason,
        drain_estimate_ms: drain_estimate,
        capture_attempts: attempts,
        snapshot_pages,
        capture_pause_ns: pause_ns,
        suspend_ns,
        total_bytes,
        pfns,
        millis: t0.elapsed().as_millis() as u64,
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use checkpoint_stream::model::FullCheckpoint;
    use checkpoint_stream::page_type;
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash, Hasher};

    /// A fake guest for unit tests: memory that a "workload" keeps writing, with the
    /// content-scan tracker semantics of docs/checkpoint-abi.md.
    pub(crate) struct FakeGuest {
        mem: Vec<[u8; PAGE_SIZE]>,
        reference: Vec<Option<u64>>,
        /// Pages written per workload step, and a counter making writes unique.
        writes_per_step: usize,
        tick: u64,
        snapshot: Option<Vec<Option<[u8; PAGE_SIZE]>>>,
        pub(crate) at_capture: Option<Vec<[u8; PAGE_SIZE]>>,
        /// The capture reports "resumed" (this process runs in the revived copy).
        pub(crate) resume_at_capture: bool,
        /// The output hold as the module would have it.
        pub(crate) held: Option<HoldTuple>,
        pub(crate) holds_armed: u32,
        rounds_seen: u32,
        no_space_first: u32,
    }

    fn h(p: &[u8; PAGE_SIZE]) -> u64 {
        let mut s = DefaultHasher::new();
        p.hash(&mut s);
        s.finish()
    }

    impl FakeGuest {
        pub(crate) fn new(pages: usize, writes_per_step: usize) -> Self {
            let mut mem = vec![[0u8; PAGE_SIZE]; pages];
            for (i, p) in mem.iter_mut().enumerate() {
                if i % 3 != 0 {
                    p[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                }
            }
            FakeGuest {
                mem,
                reference: vec![None; pages],
                writes_per_step,
                tick: 0,
                snapshot: None,
                at_capture: None,
                rounds_seen: 0,
                no_space_first: 0,
                resume_at_capture: false,
                held: None,
                holds_armed: 0,
            }
        }
        /// The workload: write to a few pages, concentrated in the low quarter (a hot set).
        fn step(&mut self) {
            for _ in 0..self.writes_per_step {
                self.tick += 1;
                let n = self.mem.len() as u64;
                let pfn = ((self.tick.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33) % (n / 4).max(1))
                    as usize;
                self.mem[pfn][100..108].copy_from_slice(&self.tick.to_le_bytes());
            }
        }
    }

    impl PageSource for FakeGuest {
        fn pfn_count(&self) -> u64 {
            self.mem.len() as u64
        }
        fn start_info_pfn(&self) -> u64 {
            1
        }
        fn kernel(&self) -> String {
            "fake".into()
        }
        fn start_tracking(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn next_round(&mut self, bitmap: &mut [u64]) -> io::Result<u64> {
            self.step();
            self.rounds_seen += 1;
            bitmap.fill(0);
            let mut n = 0;
            for (pfn, p) in self.mem.iter().enumerate() {
                if self.reference[pfn] != Some(h(p)) {
                    bitmap[pfn / 64] |= 1 << (pfn % 64);
                    n += 1;
                }
            }
            Ok(n)
        }
        fn read_pages(&mut self, pfn: u64, buf: &mut [u8]) -> io::Result<usize> {
            let n = (buf.len() / PAGE_SIZE)
                .min(READ_CHUNK)
                .min(self.mem.len() - pfn as usize);
            for i in 0..n {
                let p = pfn as usize + i;
                let content = match &self.snapshot {
                    Some(s) if s[p].is_some() => s[p].unwrap(),
                    _ => self.mem[p],
                };
                buf[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].copy_from_slice(&content);
                if self.snapshot.is_none() {
                    self.reference[p] = Some(h(&content));
                }
            }
            // The guest keeps running while we read.
            self.step();
            Ok(n)
        }
        fn capture(
            &mut self,
            max: u64,
            snap: &mut [u64],
            vcpu: &mut [u8],
        ) -> io::Result<CaptureOutcome> {
            // The guest ran on between the last round and this call.
            self.step();
            if self.resume_at_capture {
                return Ok(CaptureOutcome::Restored);
            }
            let differing: Vec<usize> = (0..self.mem.len())
                .filter(|&p| self.reference[p] != Some(h(&self.mem[p])))
                .collect();
            if self.no_space_first > 0 || differing.len() as u64 > max {
                self.no_space_first = self.no_space_first.saturating_sub(1);
                return Ok(CaptureOutcome::NoSpace {
                    needed: differing.len() as u64,
                });
            }
            snap.fill(0);
            let mut s = vec![None; self.mem.len()];
            for &p in &differing {
                s[p] = Some(self.mem[p]);
                snap[p / 64] |= 1 << (p % 64);
            }
            self.at_capture = Some(self.mem.clone());
            self.snapshot = Some(s);
            vcpu.fill(0x42);
            // The guest runs on after the capture and keeps writing.
            self.step();
            self.step();
            Ok(CaptureOutcome::Captured {
                snapshot_pages: differing.len() as u64,
                pause_ns: 1234,
                suspend_ns: 5678,
            })
        }
        fn captured_p2m(&mut self) -> io::Result<Vec<u64>> {
            Ok((0..self.mem.len() as u64)
                .map(|p| if p == 2 { 1 << 62 } else { 0x5000 + p })
                .collect())
        }
        fn captured_page_types(&mut self) -> io::Result<Vec<u8>> {
            let mut t = vec![0u8; self.mem.len()];
            t[2] = page_type::UNPOPULATED;
            t[3] = page_type::L4 | page_type::PINNED;
            Ok(t)
        }
        fn captured_p2m_frames(&mut self) -> io::Result<Vec<u64>> {
            Ok(vec![5; (self.mem.len() - 1) / 512 + 1])
        }
        fn stop_tracking(&mut self) -> io::Result<()> {
            self.held = None;
            Ok(())
        }
        fn hold_output(&mut self, t: &HoldTuple) -> io::Result<()> {
            self.held = Some(*t);
            self.holds_armed += 1;
            Ok(())
        }
        fn release_output(&mut self) -> io::Result<u64> {
            self.held = None;
            Ok(7)
        }
    }

    fn run(g: &mut FakeGuest, policy: &Policy) -> (SaveSummary, FullCheckpoint) {
        let mut out = Vec::new();
        let s = match save(g, &mut out, policy, false).unwrap() {
            SaveOutcome::Saved(s) => s,
            SaveOutcome::Restored => panic!("restored"),
        };
        assert_eq!(s.total_bytes, out.len() as u64);
        (
            s,
            FullCheckpoint::from_bytes(&out).expect("the stream validates"),
        )
    }

    #[test]
    fn stream_holds_memory_at_the_capture_point_not_after() {
        let mut g = FakeGuest::new(2000, 40);
        let (s, c) = run(&mut g, &Policy::default());
        let at = g.at_capture.clone().unwrap();
        assert_ne!(at, g.mem, "the fake kept writing after the capture");
        for (pfn, page) in at.iter().enumerate() {
            let got = c
                .checkpoint
                .page(pfn as u64)
                .copied()
                .unwrap_or([0; PAGE_SIZE]);
            assert!(
                got == *page,
                "pfn {pfn} differs from its capture-point content"
            );
        }
        assert_eq!(s.rounds[0].pages, 2000);
        assert!(s.rounds.last().unwrap().drain);
        assert_eq!(c.checkpoint.capture.pause_ns, 1234);
        assert_eq!(
            c.checkpoint.p2m[2], INVALID_MFN,
            "identity entries become invalid"
        );
        assert_eq!(c.checkpoint.page_types[3], 0x84);
        assert_eq!(c.p2m_frames, vec![5; 4]);
        // inspect's summary of the same file.
        let sum = crate::inspect::summarise(&c);
        assert_eq!(sum.rounds.len(), s.rounds.len());
        assert_eq!(
            sum.rounds.iter().map(|r| r.pages).collect::<Vec<_>>(),
            s.rounds.iter().map(|r| r.pages).collect::<Vec<_>>()
        );
        assert_eq!(
            (
                sum.page_tables[3],
                sum.pinned,
                sum.unpopulated,
                sum.p2m_frames
            ),
            (1, 1, 1, 4)
        );
        assert_eq!(sum.p2m_valid, 1999);
        let text = crate::inspect::human(&sum);
        assert!(text.contains("drain") && text.contains("valid"), "{text}");
        assert_eq!(
            c.checkpoint.vcpu(0, VcpuKind::Basic).unwrap().len(),
            VCPU_CONTEXT_BYTES
        );
    }

    #[test]
    fn a_quiet_guest_stops_after_one_round_with_a_small_dirty_set() {
        let mut g = FakeGuest::new(1000, 0);
        let (s, _) = run(&mut g, &Policy::default());
        assert_eq!(s.stop_reason, StopReason::SmallDirtySet);
        assert_eq!(s.rounds.len(), 2, "round 0 and the drain");
        assert_eq!(s.snapshot_pages, 0);
    }

    #[test]
    fn a_busy_guest_stops_when_the_dirty_set_does_not_shrink() {
        // 600 writes per step over a hot set of 500 pages: the dirty set stays ~ the hot set.
        let mut g = FakeGuest::new(2000, 600);
        let p = Policy {
            small_dirty: 10,
            ..Policy::default()
        };
        let (s, _) = run(&mut g, &p);
        assert_eq!(s.stop_reason, StopReason::NotShrinking, "{:?}", s.rounds);
        assert!(s.rounds.len() < p.max_rounds as usize + 1);
    }

    #[test]
    fn max_rounds_bounds_pre_copy() {
        let mut g = FakeGuest::new(4000, 300);
        let p = Policy {
            small_dirty: 0,
            max_rounds: 2,
            ..Policy::default()
        };
        let (s, _) = run(&mut g, &p);
        assert!(s.rounds.iter().filter(|r| !r.drain).count() <= 2);
    }

    #[test]
    fn no_space_means_another_round_then_success_or_a_clear_error() {
        let mut g = FakeGuest::new(1000, 5);
        g.no_space_first = 2;
        let (s, _) = run(&mut g, &Policy::default());
        assert_eq!(s.capture_attempts, 3);
        let mut g = FakeGuest::new(1000, 5);
        g.no_space_first = 100;
        let e = save(&mut g, Vec::new(), &Policy::default(), false).unwrap_err();
        assert!(matches!(e, SaveError::NoConvergence(4)), "{e}");
    }

    #[test]
    fn a_too_small_snapshot_buffer_grows_from_what_the_capture_needed() {
        // Buffer = exactly the last dirty set, but the guest writes more before the capture:
        // the first capture fails for space, the retry gets twice what it needed.
        let mut g = FakeGuest::new(3000, 200);
        let p = Policy {
            small_dirty: 100_000,
            snapshot_factor: 1,
            min_snapshot: 1,
            ..Policy::default()
        };
        let (s, c) = run(&mut g, &p);
        assert!(s.capture_attempts >= 2, "{s:?}");
        let at = g.at_capture.clone().unwrap();
        for (pfn, page) in at.iter().enumerate() {
            assert!(
                c.checkpoint
                    .page(pfn as u64)
                    .copied()
                    .unwrap_or([0; PAGE_SIZE])
                    == *page
            );
        }
    }

    #[test]
    fn cancel_and_deadline_stop_pre_copy_before_the_capture() {
        static CANCEL: AtomicBool = AtomicBool::new(true);
        let mut g = FakeGuest::new(3000, 10);
        let p = Policy {
            cancel: Some(&CANCEL),
            ..Policy::default()
        };
        let e = stream(&mut g, Vec::new(), &p, false).unwrap_err();
        assert!(matches!(e, SaveError::Cancelled), "{e}");
        assert!(g.at_capture.is_none(), "no capture after a cancel");
        let mut g = FakeGuest::new(3000, 10);
        let p = Policy {
            deadline: Some(Instant::now()),
            ..Policy::default()
        };
        let e = stream(&mut g, Vec::new(), &p, false).unwrap_err();
        assert!(matches!(e, SaveError::TimedOut), "{e}");
        assert!(g.at_capture.is_none());
    }

    #[test]
    fn a_downtime_target_switches_over_early() {
        // A busy guest whose dirty set stays far above small_dirty: only the target stops it.
        let mut g = FakeGuest::new(4000, 300);
        let p = Policy {
            small_dirty: 0,
            downtime_ms: Some(u64::MAX - 1),
            ..Policy::default()
        };
        let (s, _) = run(&mut g, &p);
        assert_eq!(s.stop_reason, StopReason::DowntimeTarget);
        assert_eq!(s.rounds.len(), 2, "round 0 and the drain");
    }

    #[test]
    fn policy_decisions() {
        let p = Policy::default();
        assert_eq!(
            p.stop(1, 100, u64::MAX, 1.0),
            Some(StopReason::SmallDirtySet)
        );
        assert_eq!(p.stop(1, 5000, u64::MAX, 1.0), None);
        assert_eq!(p.stop(2, 5000, 4000, 1.0), Some(StopReason::NotShrinking));
        assert_eq!(p.stop(3, 3000, 4000, 1.0), None);
        assert_eq!(p.stop(8, 3000, 4000, 1.0), Some(StopReason::MaxRounds));
        // 3000 pages at 4104 bytes/ms take 3000 ms: a 3 s target switches over, 2.9 s not.
        let d = |ms| Policy {
            downtime_ms: Some(ms),
            ..p
        };
        assert_eq!(
            d(3000).stop(3, 3000, 4000, 4104.0),
            Some(StopReason::DowntimeTarget)
        );
        assert_eq!(d(2900).stop(3, 3000, 4000, 4104.0), None);
        assert_eq!(drain_estimate_ms(10, 0.0), u64::MAX);
        assert_eq!(p.snapshot_size(10, 100_000), 1024);
        assert_eq!(p.snapshot_size(10_000, 20_000), 20_000);
    }
}
