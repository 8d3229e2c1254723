//! Typed errors. Each refusal has its own variant and a stable short code (`code()`), which
//! the CLI prints with `--json` so scripts can tell attacks apart.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    // --- parsing ---
    #[error("truncated {what}: {got} bytes, need {need}")]
    Truncated {
        what: &'static str,
        need: usize,
        got: usize,
    },
    #[error("oversized {what}: {got} bytes, at most {max} allowed")]
    Oversized {
        what: &'static str,
        max: usize,
        got: usize,
    },
    #[error("not a {what}: bad magic {found:02x?}")]
    BadMagic { what: &'static str, found: [u8; 4] },
    #[error("unsupported {what} version {found}")]
    UnsupportedVersion { what: &'static str, found: u8 },
    #[error("too many disk extents: {found} (at most {max})")]
    TooManyExtents { found: usize, max: usize },
    #[error("invalid field {field}: {reason}")]
    InvalidField {
        field: &'static str,
        reason: &'static str,
    },
    #[error("bad hex: {0}")]
    BadHex(String),

    // --- verification ---
    #[error("token is for node {token_node}, this is node {this_node}")]
    WrongNode { token_node: u32, this_node: u32 },
    #[error("HMAC does not verify: counterfeit or tampered {what}")]
    BadMac { what: &'static str },
    #[error("boot token expired at {expiry} (now {now})")]
    Expired { expiry: u64, now: u64 },
    #[error("first value does not hash to the anchor in {count} steps")]
    AnchorMismatch { count: u32 },
    #[error("value does not extend the chain of job {job}: f^{count}(value) is not the last accepted value")]
    ChainMismatch { job: u64, count: u32 },
    #[error("replayed value: job {job} already accepted it")]
    Replay { job: u64 },
    #[error("boot token for job {job} was already used on this node")]
    BootTokenReused { job: u64 },
    #[error("top-up skips {count} values, past the bound of {bound}")]
    SkipPastBound { count: u32, bound: u32 },
    #[error("unknown job {job}")]
    UnknownJob { job: u64 },
    #[error("job {job} is closed (redeemed)")]
    JobClosed { job: u64 },

    // --- environment ---
    #[error("randomness unavailable: {0}")]
    Random(String),
}

impl TokenError {
    /// Short stable identifier, one per refusal kind.
    pub fn code(&self) -> &'static str {
        use TokenError::*;
        match self {
            Truncated { .. } => "truncated",
            Oversized { .. } => "oversized",
            BadMagic { .. } => "bad-magic",
            UnsupportedVersion { .. } => "unsupported-version",
            TooManyExtents { .. } => "too-many-extents",
            InvalidField { .. } => "invalid-field",
            BadHex(_) => "bad-hex",
            WrongNode { .. } => "wrong-node",
            BadMac { .. } => "bad-mac",
            Expired { .. } => "expired",
            AnchorMismatch { .. } => "anchor-mismatch",
            ChainMismatch { .. } => "chain-mismatch",
            Replay { .. } => "replay",
            BootTokenReused { .. } => "boot-token-reused",
            SkipPastBound { .. } => "skip-past-bound",
            UnknownJob { .. } => "unknown-job",
            JobClosed { .. } => "job-closed",
            Random(_) => "no-randomness",
        }
    }

    /// True for refusals of presented input (as opposed to environment failures).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, TokenError::Random(_))
    }
}
