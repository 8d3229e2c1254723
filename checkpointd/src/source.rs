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

pub trait PageSource {
    /// Number of pfns (pfns are 0..count).
    fn pfn_count(&self) -> u64;
    /// pfn of the start_info page.
    fn start_info_pfn(&self) -> u64;
    /// Source kernel string for the stream header.
    fn kernel(&self) -> String;
    fn start_tracking(&mut self) -> io::Result<()>;
    /// Fill `bitmap` with the pages whose content differs from what we last read; returns
    /// how many.
    fn next_round(&mut self, bitmap: &mut [u64]) -> io::Result<u64>;
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
}
