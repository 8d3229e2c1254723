//! `checkpointd save` and the stream half of `checkpointd migrate`: pre-copy rounds, the
//! capture, the drain, written as a checkpoint stream (docs/stream.md). Host-testable: it
//! only talks to a [`PageSource`] and a writer.

use crate::source::{CaptureOutcome, Dirtier, HoldTuple, PageSource};
use checkpoint_stream::digest::{leaf_hash, root_of_leaves, Algorithm, ZERO_LEAF};
use checkpoint_stream::{Encoder, PageRef, VcpuKind, INVALID_MFN, PAGE_SIZE};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Size of the vCPU context the device returns (Xen's vcpu_guest_context, x86_64).
pub const VCPU_CONTEXT_BYTES: usize = checkpoint_abi::vcpu_ctx::SIZE;
/// Pages per device read (the ABI allows up to 256 per pread).
const READ_CHUNK: usize = 64;
/// Pages per PAGE_BATCH record. The read buffer holds at most BATCH + READ_CHUNK - 1
/// pages, and every round rewrites it, so it is dirty in every round: keep it small.
const BATCH: usize = 64;

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
    /// Bounds and the guest-driven convergence (free-page elision, throttling).
    pub conv: Convergence,
}

/// The module's dirty tracker (docs/fault-tracker.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Tracker {
    /// Write faults, copy-on-write at the capture: the pause does not grow with memory.
    #[default]
    Fault,
    /// Hashes every page every round: the oracle.
    Scan,
}

impl fmt::Display for Tracker {
    /// The option's own value name (`fault`, `scan`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use clap::ValueEnum;
        match self.to_possible_value() {
            Some(v) => f.write_str(v.get_name()),
            None => Ok(()),
        }
    }
}

/// When to slow down the processes that dirty most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleMode {
    /// Never: a dirty set too big for the snapshot budget is an error.
    Off,
    /// Only when pre-copy stopped with a dirty set too big for the snapshot budget.
    Auto,
    /// Whenever pre-copy stops converging (not shrinking, or out of rounds).
    Always,
}

/// Bounds of a save and how it converges (docs/migrate.md "Convergence").
#[derive(Debug, Clone, Copy)]
pub struct Convergence {
    /// Leave pages on the guest's free lists out of the stream.
    pub elide_free: bool,
    pub tracker: Tracker,
    pub throttle: ThrottleMode,
    /// Extra pre-copy rounds allowed once throttling has started.
    pub throttle_rounds: u32,
    /// Cap on the snapshot buffer (pages); the guest's own budget (half its available
    /// memory) applies as well.
    pub max_snapshot_pages: Option<u64>,
    /// Give up once the stream is longer than this (bytes). Without it the stream is still
    /// bounded by the rounds: at most (max_rounds + throttle_rounds + capture_attempts + 1)
    /// times the guest's memory.
    pub max_stream_bytes: Option<u64>,
}

impl Default for Convergence {
    fn default() -> Self {
        Convergence {
            elide_free: true,
            tracker: Tracker::default(),
            throttle: ThrottleMode::Auto,
            throttle_rounds: 6,
            max_snapshot_pages: None,
            max_stream_bytes: None,
        }
    }
}

/// Throttle period and the stop share of each escalation step (percent).
pub const THROTTLE_PERIOD_MS: u32 = 200;
pub const THROTTLE_LEVELS: [u32; 4] = [50, 75, 90, 97];
/// Most processes throttled at once.
const THROTTLE_PROCS: usize = 4;

/// Whether a capture of a `dirty`-page set fits a snapshot buffer of `budget` pages, with
/// room for what the guest writes between the last round and the capture.
pub fn fits_budget(dirty: u64, budget: u64) -> bool {
    dirty.saturating_add(dirty / 4).saturating_add(64) <= budget
}

/// A process that was slowed down, for the report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Throttled {
    pub pid: u32,
    pub comm: String,
    /// Pages of the dirty set it mapped when first picked.
    pub dirty_pages: u64,
    /// The last stop share applied (percent of each period).
    pub stop_pct: u32,
    /// How long it was stopped in all.
    pub stopped_ms: u64,
    /// Pre-copy rounds it was throttled for.
    pub rounds: u32,
}

/// The throttling state of one save.
#[derive(Debug, Default)]
struct Throttler {
    /// Index into THROTTLE_LEVELS of the current step; None before the first.
    level: Option<usize>,
    procs: Vec<Throttled>,
    /// Extra rounds taken while throttling.
    rounds: u32,
    /// Nobody to throttle: the dirtying is not attributable to a process.
    nobody: bool,
}

impl Throttler {
    fn active(&self) -> bool {
        !self.procs.is_empty()
    }

    /// One step tighter: picks the processes dirtying most of `set` (adding to those already
    /// throttled) and applies the next stop share to all of them. False if nothing changed.
    fn escalate<S: PageSource>(
        &mut self,
        src: &mut S,
        set: &[u64],
        dirty: u64,
    ) -> Result<bool, SaveError> {
        let next = self.level.map_or(0, |l| l + 1);
        if next >= THROTTLE_LEVELS.len() || self.nobody {
            return Ok(false);
        }
        let found = src
            .dirtiers(set)
            .map_err(dev("finding the processes that dirty memory"))?;
        // A tenth of the set, and not a handful of pages: with fast rounds a steady writer
        // leaves only some tens of pages in each set (a 2 MiB/s writer about 50 in a
        // 100 ms round), so a larger absolute floor finds nobody to throttle.
        let floor = (dirty / 10).max(16);
        for d in found.into_iter().filter(|d| d.dirty >= floor) {
            if self.procs.len() >= THROTTLE_PROCS {
                break;
            }
            if !self.procs.iter().any(|p| p.pid == d.pid) {
                let Dirtier { pid, comm, dirty } = d;
                self.procs.push(Throttled {
                    pid,
                    comm,
                    dirty_pages: dirty,
                    stop_pct: 0,
                    stopped_ms: 0,
                    rounds: 0,
                });
            }
        }
        if self.procs.is_empty() {
            self.nobody = true;
            return Ok(false);
        }
        let pct = THROTTLE_LEVELS[next];
        let stop_ms = THROTTLE_PERIOD_MS * pct / 100;
        self.procs.retain_mut(|p| {
            // A process that exited meanwhile is dropped from the list.
            match src.throttle(p.pid, stop_ms, THROTTLE_PERIOD_MS) {
                Ok(ns) => {
                    p.stop_pct = pct;
                    p.stopped_ms = ns / 1_000_000;
                    true
                }
                Err(_) => false,
            }
        });
        self.level = Some(next);
        Ok(!self.procs.is_empty())
    }

    /// Lets every throttled process run again and records how long each was stopped.
    fn release<S: PageSource>(&mut self, src: &mut S) {
        for p in &mut self.procs {
            if let Ok(ns) = src.unthrottle(p.pid) {
                p.stopped_ms = ns / 1_000_000;
            }
        }
    }

    fn describe(&self) -> String {
        if self.procs.is_empty() {
            return if self.nobody {
                "no process could be throttled (the dirtying is not attributable)".into()
            } else {
                "nothing throttled".into()
            };
        }
        let v: Vec<String> = self
            .procs
            .iter()
            .map(|p| {
                format!(
                    "pid {} ({}) at {}% stopped {} ms",
                    p.pid, p.comm, p.stop_pct, p.stopped_ms
                )
            })
            .collect();
        format!("throttled {}", v.join(", "))
    }
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
            conv: Convergence::default(),
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
    /// Free pages the scan (or capture) behind this round's set left out.
    pub free_pages: u64,
    /// RAM pages the scan (or capture) behind this round's set could not read.
    pub unreadable_pages: u64,
    /// Pages of this round's set not sent: their content equals the copy the receiver
    /// already holds (docs/stream.md, "last copy wins"). Not counted in `pages`.
    pub unchanged_pages: u64,
}

impl RoundSummary {
    /// The round's line in the human summaries of `save` and `migrate`.
    pub fn line(&self) -> String {
        let name = if self.drain {
            "drain".to_string()
        } else {
            format!("round {}", self.index)
        };
        let unchanged = if self.unchanged_pages > 0 {
            format!(", {} unchanged not sent", self.unchanged_pages)
        } else {
            String::new()
        };
        format!(
            "  {name:<9} {:>8} pages ({} zero{unchanged}) {:>12} bytes {:>7} ms",
            self.pages, self.zero_pages, self.bytes, self.millis
        )
    }
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
    /// Free-page elision was on.
    pub elide_free: bool,
    pub tracker: Tracker,
    /// Snapshot pages the guest could afford when the capture was decided.
    pub snapshot_budget: u64,
    /// Processes slowed down to converge, and pre-copy rounds taken while throttling.
    pub throttled: Vec<Throttled>,
    pub throttle_rounds: u32,
    /// From the drain's end to END: the capture's tables read and sent, and the digest.
    pub tables_ms: u64,
    /// Of that, computing the digest's root from the leaves (docs/stream.md, DIGEST).
    pub digest_ms: u64,
}

impl SaveSummary {
    /// The capture's line in the human summaries of `save` and `migrate`.
    pub fn capture_line(&self) -> String {
        format!(
            "  capture pause {:.3} ms (suspend sequence {:.3} ms), {} snapshot pages (budget {}), {} attempt(s); after the drain: tables and digest {} ms (digest {} ms)",
            self.capture_pause_ns as f64 / 1e6,
            self.suspend_ns as f64 / 1e6,
            self.snapshot_pages,
            self.snapshot_budget,
            self.capture_attempts,
            self.tables_ms,
            self.digest_ms
        )
    }
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
    #[error("pre-copy did not converge: {dirty} pages still dirty after {rounds} rounds, more than the snapshot budget of {budget} pages ({throttle}; dirty pages after each round: {history}); nothing was captured, the guest runs on")]
    DoesNotConverge {
        dirty: u64,
        budget: u64,
        rounds: u32,
        throttle: String,
        /// The dirty-set size after each round, oldest first (comma-separated).
        history: String,
    },
    #[error("the stream reached {bytes} bytes, over its bound of {limit} ({throttle}); nothing was captured, the guest runs on")]
    StreamBound {
        bytes: u64,
        limit: u64,
        throttle: String,
    },
    #[error("the guest could not allocate a {pages}-page snapshot buffer (out of memory); nothing was captured, the guest runs on")]
    SnapshotAlloc { pages: u64 },
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
    /// Per pfn, the leaf hash of the copy the receiver holds (ZERO_LEAF if none yet).
    leaves: Vec<[u8; 32]>,
    /// Pfns sent at least once: only these can be left out as unchanged, since the
    /// receiver zero-fills a never-sent pfn at END, inside the downtime.
    sent: Vec<u64>,
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

    /// Sends every pfn set in `set` as a ZERO entry (no data).
    fn zeros(&mut self, set: &[u64], summary: &mut RoundSummary) -> Result<(), SaveError> {
        let pfns = self.leaves.len() as u64;
        let mut batch: Vec<PageRef<'_>> = Vec::with_capacity(BATCH);
        for pfn in (0..pfns).filter(|&p| set[(p / 64) as usize] >> (p % 64) & 1 != 0) {
            self.leaves[pfn as usize] = ZERO_LEAF;
            self.sent[(pfn / 64) as usize] |= 1 << (pfn % 64);
            batch.push((pfn, None));
            if batch.len() == BATCH {
                self.enc.page_batch(&batch).map_err(SaveError::Write)?;
                batch.clear();
            }
            summary.pages += 1;
            summary.zero_pages += 1;
        }
        if !batch.is_empty() {
            self.enc.page_batch(&batch).map_err(SaveError::Write)?;
        }
        Ok(())
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
                let leaf = if zero {
                    ZERO_LEAF
                } else {
                    leaf_hash(Some(page))
                };
                // Written but back to the content last sent (a page table, a stack or a
                // per-CPU page the capture takes whether or not it changed): the
                // receiver's copy is already right.
                let (word, bit) = ((p / 64) as usize, p % 64);
                if self.sent[word] >> bit & 1 != 0 && self.leaves[p as usize] == leaf {
                    summary.unchanged_pages += 1;
                    continue;
                }
                self.sent[word] |= 1 << bit;
                self.leaves[p as usize] = leaf;
                summary.zero_pages += zero as u64;
                refs.push((p, (!zero).then_some(page)));
            }
            if !refs.is_empty() {
                self.enc.page_batch(&refs).map_err(SaveError::Write)?;
            }
            summary.pages += refs.len() as u64;
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
        sent: vec![0; words],
        buf: Vec::new(),
        show: show_progress,
    };

    let conv = policy.conv;
    src.start_tracking(conv.elide_free, conv.tracker == Tracker::Fault)
        .map_err(dev("starting dirty tracking"))?;
    let mut dirty_set = vec![0u64; words];
    let mut snap_set = vec![0u64; words];
    let mut vcpu = vec![0u8; VCPU_CONTEXT_BYTES];
    let mut rounds = Vec::new();
    let mut scan = src.next_round(&mut dirty_set).map_err(dev("first round"))?;
    let mut dirty = scan.dirty;
    let mut prev = u64::MAX;
    let mut attempts = 0u32;
    // Pre-copy goes on after a capture that lacked snapshot space (the dirty set just read
    // is still valid), with a buffer sized from what it needed.
    let mut needed = 0u64;
    let mut index = 0u32;
    let mut drain_estimate;
    let mut thr = Throttler::default();
    let mut history = vec![dirty];
    let mut budget;
    let stream_limit = conv.max_stream_bytes.unwrap_or(u64::MAX);
    // With elision, the RAM pfns the first round leaves out (free, or the module's own
    // buffers) go as ZERO entries in round 0: 8 bytes each on the wire, and the receiver
    // places them during pre-copy instead of zero-filling never-sent pfns at the end (in
    // the downtime). Their content does not matter (docs/migrate.md "Free pages").
    let mut elided = if conv.elide_free {
        let mut ram = src.live_ram().map_err(dev("reading the p2m"))?;
        ram.resize(words, 0);
        for (r, d) in ram.iter_mut().zip(&dirty_set) {
            *r &= !d;
        }
        Some(ram)
    } else {
        None
    };
    let (stop_reason, captured) = loop {
        let mut r = w.round(src, index, false, &dirty_set, dirty, policy)?;
        if let Some(z) = elided.take() {
            let t = Instant::now();
            let b = w.enc.bytes();
            w.zeros(&z, &mut r)?;
            r.bytes += w.enc.bytes() - b;
            r.millis += t.elapsed().as_millis() as u64;
        }
        r.free_pages = scan.free;
        r.unreadable_pages = scan.unreadable;
        let rate = r.bytes as f64 / r.millis.max(1) as f64;
        rounds.push(r);
        index += 1;
        for p in &mut thr.procs {
            p.rounds += 1;
        }
        prev = prev.min(dirty);
        let last = dirty;
        policy.interrupted()?;
        if w.enc.bytes() > stream_limit {
            thr.release(src);
            return Err(SaveError::StreamBound {
                bytes: w.enc.bytes(),
                limit: stream_limit,
                throttle: thr.describe(),
            });
        }
        scan = src.next_round(&mut dirty_set).map_err(dev("next round"))?;
        dirty = scan.dirty;
        history.push(dirty);
        // While throttling, the extra rounds are counted by the throttler, not max_rounds.
        let rounds_done = index.saturating_sub(thr.rounds);
        let Some(reason) = policy.stop(rounds_done, dirty, last.min(prev), rate) else {
            continue;
        };
        policy.interrupted()?;
        budget = conv
            .max_snapshot_pages
            .unwrap_or(u64::MAX)
            .min(src.snapshot_budget())
            .max(1);
        // The final set: this round's pages (not read before the capture), what is written
        // meanwhile, and the pages only the capture takes.
        let fits = fits_budget(dirty + scan.deferred, budget);
        let converging = matches!(
            reason,
            StopReason::SmallDirtySet | StopReason::DowntimeTarget
        );
        let want = match conv.throttle {
            ThrottleMode::Off => false,
            ThrottleMode::Auto => !fits,
            ThrottleMode::Always => !converging,
        };
        if want && thr.rounds < conv.throttle_rounds {
            // Tighten when the set stopped shrinking (or on the first step); a set that
            // shrinks under the current step just gets another round.
            let tightened = if reason == StopReason::NotShrinking || !thr.active() {
                thr.escalate(src, &dirty_set, dirty)?
            } else {
                true
            };
            if tightened || thr.active() {
                thr.rounds += 1;
                // Throttling changed the workload: judge shrinking from here on.
                if reason == StopReason::NotShrinking {
                    prev = u64::MAX;
                }
                continue;
            }
        }
        if !fits {
            thr.release(src);
            return Err(SaveError::DoesNotConverge {
                dirty,
                budget,
                rounds: index,
                throttle: thr.describe(),
                history: history
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        drain_estimate = drain_estimate_ms(dirty, rate);
        attempts += 1;
        // After a too-small buffer, at least twice what the failed capture needed; never
        // more than the guest can afford.
        let cap = policy
            .snapshot_size(dirty, pfns)
            .saturating_add(scan.deferred)
            .max(needed.saturating_mul(2).min(pfns))
            .min(budget);
        if let Some(t) = &policy.hold {
            src.hold_output(t).map_err(dev("arming the output hold"))?;
        }
        let outcome = src.capture(cap, &mut snap_set, &mut vcpu);
        if policy.hold.is_some() && !matches!(outcome, Ok(CaptureOutcome::Captured { .. })) {
            // Not captured (or this is the revived copy, whose hold the module dropped).
            let _ = src.release_output();
        }
        match outcome {
            Err(e) if e.raw_os_error() == Some(12) => {
                thr.release(src);
                return Err(SaveError::SnapshotAlloc { pages: cap });
            }
            Err(e) => {
                return Err(SaveError::Device {
                    what: "capture",
                    source: e,
                })
            }
            Ok(CaptureOutcome::Restored) => return Ok(SaveOutcome::Restored),
            Ok(CaptureOutcome::Captured {
                snapshot_pages,
                pause_ns,
                suspend_ns,
                unreadable,
                free,
            }) => {
                break (
                    reason,
                    (snapshot_pages, pause_ns, suspend_ns, unreadable, free),
                )
            }
            Ok(CaptureOutcome::NoSpace { needed: n }) if attempts < policy.capture_attempts => {
                needed = n
            }
            Ok(CaptureOutcome::NoSpace { .. }) => {
                thr.release(src);
                return Err(SaveError::NoConvergence(attempts));
            }
        }
    };
    // The capture point is behind us: the throttled processes may run freely again.
    thr.release(src);
    let (snapshot_pages, pause_ns, suspend_ns, cap_unreadable, cap_free) = captured;

    w.enc
        .capture(src.start_info_pfn(), 1, pause_ns)
        .map_err(SaveError::Write)?;
    let mut drain = w.round(src, index, true, &snap_set, snapshot_pages, policy)?;
    drain.free_pages = cap_free;
    drain.unreadable_pages = cap_unreadable;
    rounds.push(drain);

    let t_tables = Instant::now();
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
    let t_digest = Instant::now();
    let root = root_of_leaves(Algorithm::CURRENT, &w.leaves);
    let digest_ms = t_digest.elapsed().as_millis() as u64;
    w.enc
        .digest(Algorithm::CURRENT, &root)
        .map_err(SaveError::Write)?;
    let total_bytes = w.enc.bytes() + 16;
    let mut out = w.enc.end().map_err(SaveError::Write)?;
    out.flush().map_err(SaveError::Write)?;
    let tables_ms = t_tables.elapsed().as_millis() as u64;
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
        elide_free: conv.elide_free,
        tracker: conv.tracker,
        snapshot_budget: budget,
        throttled: thr.procs,
        throttle_rounds: thr.rounds,
        tables_ms,
        digest_ms,
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
        /// Processes that write their own pages, slowed by throttling.
        pub(crate) procs: Vec<FakeProc>,
        /// What snapshot_budget() says.
        pub(crate) budget: u64,
        /// Pfns on the fake free lists (elided when the session asks).
        pub(crate) free: std::ops::Range<usize>,
        elide: bool,
        pub(crate) released: Vec<u32>,
        /// Pfns every capture takes whether or not they changed, as the fault tracker's
        /// page tables, stacks and per-CPU pages (docs/fault-tracker.md).
        pub(crate) always: std::ops::Range<usize>,
    }

    #[derive(Debug, Clone)]
    pub(crate) struct FakeProc {
        pub(crate) pid: u32,
        pub(crate) pages: std::ops::Range<usize>,
        pub(crate) writes_per_step: usize,
        pub(crate) stop_pct: u32,
        pub(crate) stopped_ns: u64,
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
                procs: Vec::new(),
                budget: pages as u64,
                free: 0..0,
                elide: false,
                released: Vec::new(),
                always: 0..0,
            }
        }
        /// A process writing `writes_per_step` pages of `pages` per step.
        pub(crate) fn with_proc(
            mut self,
            pid: u32,
            pages: std::ops::Range<usize>,
            writes_per_step: usize,
        ) -> Self {
            self.procs.push(FakeProc {
                pid,
                pages,
                writes_per_step,
                stop_pct: 0,
                stopped_ns: 0,
            });
            self
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
            for i in 0..self.procs.len() {
                let p = &mut self.procs[i];
                // A throttled process gets (100 - stop_pct)% of its time, so of its writes.
                let n = p.writes_per_step * (100 - p.stop_pct as usize) / 100;
                p.stopped_ns += p.stop_pct as u64 * 10_000;
                let (base, len) = (p.pages.start, p.pages.len());
                for _ in 0..n {
                    self.tick += 1;
                    let pfn =
                        base + (self.tick.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33) as usize % len;
                    self.mem[pfn][200..208].copy_from_slice(&self.tick.to_le_bytes());
                }
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
        fn start_tracking(&mut self, elide_free: bool, _fault: bool) -> io::Result<()> {
            self.elide = elide_free;
            Ok(())
        }
        fn next_round(&mut self, bitmap: &mut [u64]) -> io::Result<crate::source::RoundScan> {
            self.step();
            self.rounds_seen += 1;
            bitmap.fill(0);
            let mut r = crate::source::RoundScan::default();
            for (pfn, p) in self.mem.iter().enumerate() {
                if self.elide && self.free.contains(&pfn) {
                    r.free += 1;
                } else if self.reference[pfn] != Some(h(p)) {
                    bitmap[pfn / 64] |= 1 << (pfn % 64);
                    r.dirty += 1;
                }
            }
            Ok(r)
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
                .filter(|&p| !(self.elide && self.free.contains(&p)))
                .filter(|&p| self.always.contains(&p) || self.reference[p] != Some(h(&self.mem[p])))
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
                unreadable: 0,
                free: if self.elide {
                    self.free.len() as u64
                } else {
                    0
                },
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
        fn dirtiers(&mut self, dirty: &[u64]) -> io::Result<Vec<Dirtier>> {
            let bit = |p: usize| dirty[p / 64] >> (p % 64) & 1 != 0;
            let mut v: Vec<Dirtier> = self
                .procs
                .iter()
                .map(|p| Dirtier {
                    pid: p.pid,
                    comm: format!("fake{}", p.pid),
                    dirty: p.pages.clone().filter(|&q| bit(q)).count() as u64,
                })
                .filter(|d| d.dirty > 0)
                .collect();
            v.sort_by_key(|d| std::cmp::Reverse(d.dirty));
            Ok(v)
        }
        fn throttle(&mut self, pid: u32, stop_ms: u32, period_ms: u32) -> io::Result<u64> {
            let p = self
                .procs
                .iter_mut()
                .find(|p| p.pid == pid)
                .ok_or_else(|| io::Error::from_raw_os_error(3))?;
            p.stop_pct = stop_ms * 100 / period_ms;
            Ok(p.stopped_ns)
        }
        fn unthrottle(&mut self, pid: u32) -> io::Result<u64> {
            let p = self
                .procs
                .iter_mut()
                .find(|p| p.pid == pid)
                .ok_or_else(|| io::Error::from_raw_os_error(3))?;
            p.stop_pct = 0;
            self.released.push(pid);
            Ok(p.stopped_ns)
        }
        fn live_ram(&mut self) -> io::Result<Vec<u64>> {
            let n = self.mem.len();
            let mut bm = vec![0u64; n.div_ceil(64)];
            for p in (0..n).filter(|&p| p != 2) {
                bm[p / 64] |= 1 << (p % 64);
            }
            Ok(bm)
        }
        fn snapshot_budget(&self) -> u64 {
            self.budget
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
        assert_capture_point(&g, &c, false);
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
        let mut g = FakeGuest::new(3000, 20);
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
    fn the_drain_leaves_out_pages_the_receiver_already_holds() {
        // 300 pfns the capture takes though most did not change since round 0.
        let mut g = FakeGuest::new(2000, 40);
        g.always = 1500..1800;
        let (s, c) = run(&mut g, &Policy::default());
        assert_capture_point(&g, &c, false);
        let drain = s.rounds.last().unwrap();
        assert!(drain.drain);
        // The workload writes only the low quarter, so none of 1500..1800 changed.
        assert_eq!(drain.unchanged_pages, 300, "{drain:?}");
        assert_eq!(drain.pages + drain.unchanged_pages, s.snapshot_pages);
        // The stream itself carries only the others.
        assert_eq!(c.checkpoint.rounds.last().unwrap().pages, drain.pages);
        // Round 0 still sends every pfn, zero pages included: the receiver places them
        // before the capture instead of zero-filling them at END.
        assert_eq!((s.rounds[0].pages, s.rounds[0].unchanged_pages), (2000, 0));
    }

    /// The checkpoint holds every pfn's capture-point content (free pfns excepted when
    /// elided: those are zero, never sent).
    fn assert_capture_point(g: &FakeGuest, c: &FullCheckpoint, elided: bool) {
        let at = g.at_capture.clone().unwrap();
        for (pfn, page) in at.iter().enumerate() {
            let got = c
                .checkpoint
                .page(pfn as u64)
                .copied()
                .unwrap_or([0; PAGE_SIZE]);
            if elided && g.free.contains(&pfn) {
                assert!(got == [0; PAGE_SIZE], "free pfn {pfn} was sent");
            } else {
                assert!(
                    got == *page,
                    "pfn {pfn} differs from its capture-point content"
                );
            }
        }
    }

    #[test]
    fn a_writer_too_fast_for_the_budget_is_throttled_until_it_fits() {
        // A process in a 2000-page guest writing 30 of its 750 pages per step: the dirty
        // set stays ~750 pages, the budget is 300.
        let mut g = FakeGuest::new(2000, 0).with_proc(42, 1000..1750, 30);
        g.budget = 300;
        let p = Policy {
            small_dirty: 10,
            ..Policy::default()
        };
        let (s, c) = run(&mut g, &p);
        assert_eq!(s.throttled.len(), 1, "{s:?}");
        let t = &s.throttled[0];
        assert_eq!((t.pid, t.comm.as_str()), (42, "fake42"));
        assert!(
            t.stop_pct >= 50 && t.stopped_ms > 0 && t.rounds > 0,
            "{t:?}"
        );
        assert!(s.throttle_rounds >= 1 && s.throttle_rounds <= 6);
        assert!(s.snapshot_pages <= 300, "{}", s.snapshot_pages);
        assert_eq!(g.released, vec![42], "released once, after the capture");
        assert_eq!(g.procs[0].stop_pct, 0, "runs freely after the save");
        assert_capture_point(&g, &c, false);
    }

    #[test]
    fn without_throttling_a_set_over_the_budget_is_a_clear_error_and_no_capture() {
        let mut g = FakeGuest::new(2000, 0).with_proc(42, 1000..1750, 30);
        g.budget = 300;
        let p = Policy {
            small_dirty: 10,
            conv: Convergence {
                throttle: ThrottleMode::Off,
                ..Convergence::default()
            },
            ..Policy::default()
        };
        let e = save(&mut g, Vec::new(), &p, false).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, SaveError::DoesNotConverge { budget: 300, .. }),
            "{msg}"
        );
        assert!(msg.contains("the guest runs on") && msg.contains("nothing throttled"));
        assert!(g.at_capture.is_none(), "no capture");
    }

    #[test]
    fn when_even_throttling_cannot_converge_pre_copy_stops_within_its_bound() {
        // So many writes that even 97% stopped leaves a set over the budget.
        let mut g = FakeGuest::new(2000, 0).with_proc(7, 250..1950, 2_000);
        g.budget = 150;
        let p = Policy::default();
        let e = save(&mut g, Vec::new(), &p, false).unwrap_err();
        let SaveError::DoesNotConverge {
            rounds,
            throttle,
            history,
            ..
        } = &e
        else {
            panic!("{e}")
        };
        // The set before round 0, then one per round sent.
        assert_eq!(
            history.split(", ").count(),
            *rounds as usize + 1,
            "{history}"
        );
        assert!(
            *rounds <= p.max_rounds + p.conv.throttle_rounds + 1,
            "{rounds}"
        );
        assert!(throttle.contains("pid 7 (fake7) at 97%"), "{throttle}");
        assert_eq!(g.released, vec![7], "the process runs freely again");
        assert!(g.at_capture.is_none());
    }

    #[test]
    fn always_throttles_a_set_that_stops_shrinking_even_if_it_fits() {
        let mut g = FakeGuest::new(2000, 0).with_proc(9, 500..900, 400);
        let p = Policy {
            small_dirty: 10,
            conv: Convergence {
                throttle: ThrottleMode::Always,
                ..Convergence::default()
            },
            ..Policy::default()
        };
        let (s, c) = run(&mut g, &p);
        assert_eq!(s.throttled.first().map(|t| t.pid), Some(9), "{s:?}");
        assert_capture_point(&g, &c, false);
        // Auto leaves it alone: the set fits the budget.
        let mut g = FakeGuest::new(2000, 0).with_proc(9, 500..900, 400);
        let (s, _) = run(
            &mut g,
            &Policy {
                small_dirty: 10,
                ..Policy::default()
            },
        );
        assert!(s.throttled.is_empty());
    }

    #[test]
    fn nobody_to_throttle_ends_in_the_error_not_a_loop() {
        // The hot set is written by "the kernel" (no process maps it).
        let mut g = FakeGuest::new(2000, 400);
        g.budget = 100;
        let e = save(&mut g, Vec::new(), &Policy::default(), false).unwrap_err();
        assert!(e.to_string().contains("not attributable"), "{e}");
    }

    #[test]
    fn the_stream_is_bounded() {
        let mut g = FakeGuest::new(2000, 0).with_proc(3, 0..1900, 5000);
        g.budget = 100_000;
        let p = Policy {
            small_dirty: 0,
            conv: Convergence {
                throttle: ThrottleMode::Off,
                max_stream_bytes: Some(3000 * 4096),
                ..Convergence::default()
            },
            ..Policy::default()
        };
        let e = save(&mut g, Vec::new(), &p, false).unwrap_err();
        assert!(matches!(e, SaveError::StreamBound { .. }), "{e}");
    }

    #[test]
    fn free_pages_are_left_out_and_the_checkpoint_stays_exact() {
        let mk = || {
            let mut g = FakeGuest::new(3000, 20);
            g.free = 1500..2700;
            g
        };
        let mut g = mk();
        let (with, c) = run(&mut g, &Policy::default());
        assert!(with.elide_free);
        assert_eq!(with.rounds[0].free_pages, 1200);
        // Sent once, as ZERO entries in round 0 (8 bytes each), never as data.
        assert_eq!(with.rounds[0].pages, 3000);
        assert!(with.rounds[0].zero_pages >= 1200);
        assert_eq!(with.rounds.last().unwrap().free_pages, 1200, "capture");
        assert_capture_point(&g, &c, true);
        let mut g = mk();
        let off = Policy {
            conv: Convergence {
                elide_free: false,
                ..Convergence::default()
            },
            ..Policy::default()
        };
        let (without, c) = run(&mut g, &off);
        assert_capture_point(&g, &c, false);
        assert!(
            with.total_bytes + 700 * 4096 < without.total_bytes,
            "{} vs {}",
            with.total_bytes,
            without.total_bytes
        );
    }

    #[test]
    fn tracker_names_are_the_option_values() {
        assert_eq!(
            (Tracker::Fault.to_string(), Tracker::Scan.to_string()),
            ("fault".to_string(), "scan".to_string())
        );
    }

    #[test]
    fn budget_fit() {
        assert!(fits_budget(0, 64));
        assert!(!fits_budget(0, 63));
        assert!(fits_budget(800, 1064));
        assert!(!fits_budget(800, 1063));
        assert!(!fits_budget(u64::MAX, u64::MAX - 1));
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
