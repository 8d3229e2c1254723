//! What a checkpoint is taken from: the `/dev/checkpoint` device (dev.rs) in production, a
//! fake guest in unit tests. The shape follows docs/checkpoint-abi.md.

use std::io;

/// Result of a capture attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureOutcome {
    /// The checkpoint is held; this guest continues (the source).
    Captured {
        snapshot_pages: u64,
        pause_ns: u64,
        suspend_ns: u64,
        /// RAM pages the capture could not read (the checkpoint holds their last read).
        unreadable: u64,
        /// Pages on the free lists at the capture point, left out (free-page elision).
        free: u64,
    },
    /// The snapshot buffer was too small; `needed` pages differed so far.
    NoSpace { needed: u64 },
    /// We are running in a guest revived from the checkpoint.
    Restored,
}

/// The one connection a guest under an output hold may still use (docs/checkpoint-abi.md
/// "Output hold"): IPv4 TCP, addresses and ports as the guest sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldTuple {
    pub local: std::net::SocketAddrV4,
    pub remote: std::net::SocketAddrV4,
}

/// What one pre-copy round's scan found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundScan {
    /// Pages whose content differs from what we last read (bits set in the bitmap).
    pub dirty: u64,
    /// RAM pages that could not be read (reported dirty, so read again).
    pub unreadable: u64,
    /// Pages on the free lists, left out of the bitmap (free-page elision).
    pub free: u64,
    /// Pages the capture will take besides the round's (the fault tracker's always-dirty
    /// pages, which rounds leave out; 0 for the scan tracker).
    pub deferred: u64,
}

/// A process and how many pages of a dirty set it maps writable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirtier {
    pub pid: u32,
    pub comm: String,
    pub dirty: u64,
}

pub trait PageSource {
    /// Number of pfns (pfns are 0..count).
    fn pfn_count(&self) -> u64;
    /// pfn of the start_info page.
    fn start_info_pfn(&self) -> u64;
    /// Source kernel string for the stream header.
    fn kernel(&self) -> String;
    /// Start the session; `elide_free` leaves pages on the guest's free lists out; `fault`
    /// picks the fault tracker (write faults + copy-on-write) over the scan tracker.
    fn start_tracking(&mut self, elide_free: bool, fault: bool) -> io::Result<()>;
    /// Fill `bitmap` with the pages whose content differs from what we last read.
    fn next_round(&mut self, bitmap: &mut [u64]) -> io::Result<RoundScan>;
    /// Read pages from `pfn` on into `buf` (a multiple of 4096); returns pages read.
    fn read_pages(&mut self, pfn: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Capture; on success fills the snapshot set and the vCPU context
    /// (`checkpoint_abi::vcpu_ctx::SIZE` bytes).
    fn capture(
        &mut self,
        max_snapshot: u64,
        snapshot: &mut [u64],
        vcpu: &mut [u8],
    ) -> io::Result<CaptureOutcome>;
    /// Tables held with the capture.
    fn captured_p2m(&mut self) -> io::Result<Vec<u64>>;
    fn captured_page_types(&mut self) -> io::Result<Vec<u8>>;
    fn captured_p2m_frames(&mut self) -> io::Result<Vec<u64>>;
    fn stop_tracking(&mut self) -> io::Result<()>;
    /// From now on the guest sends nothing but `t`'s connection (needs the session).
    fn hold_output(&mut self, t: &HoldTuple) -> io::Result<()>;
    /// Lift the hold; returns the packets it dropped.
    fn release_output(&mut self) -> io::Result<u64>;
    /// The processes mapping the most pages of `dirty` (a bitmap over pfns), most first.
    fn dirtiers(&mut self, dirty: &[u64]) -> io::Result<Vec<Dirtier>>;
    /// Stop `pid` `stop_ms` of every `period_ms` until released or the session ends;
    /// returns how long it has been stopped so far (ns).
    fn throttle(&mut self, pid: u32, stop_ms: u32, period_ms: u32) -> io::Result<u64>;
    /// Let `pid` run freely; returns how long it was stopped in all (ns).
    fn unthrottle(&mut self, pid: u32) -> io::Result<u64>;
    /// The pfns that are RAM now (live p2m), as a bitmap.
    fn live_ram(&mut self) -> io::Result<Vec<u64>>;
    /// Most snapshot pages the guest can afford now (memory it has available, with room to
    /// spare), whatever the caller's own cap.
    fn snapshot_budget(&self) -> u64;
}
