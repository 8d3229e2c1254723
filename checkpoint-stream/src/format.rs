//! Wire constants of the checkpoint stream (docs/stream.md is the normative text).

/// First 8 bytes of every stream.
pub const MAGIC: [u8; 8] = *b"LNDRCKPT";
/// The only version this crate reads and writes.
pub const VERSION: u32 = 1;
/// Preamble: magic (8), version u32, reserved u32 (must be 0).
pub const PREAMBLE_LEN: usize = 16;
/// Record header: type u32, body length u32, body CRC-32C u32, header CRC-32C u32.
pub const RECORD_HEADER_LEN: usize = 16;

pub const PAGE_SIZE: usize = 4096;
pub const PAGE_SHIFT: u32 = 12;
/// Largest pfn a stream may describe (2^40 pages = 4 PiB), keeps arithmetic far from overflow.
pub const MAX_PFN_LIMIT: u64 = (1 << 40) - 1;
/// Page-batch entries per record.
pub const MAX_BATCH: usize = 512;
/// P2M entries per record.
pub const MAX_P2M_CHUNK: usize = 512;
/// Page-type entries per record.
pub const MAX_TYPES_CHUNK: usize = 4096;
/// PAGE_TYPES and P2M flags (u32 at body offset 12): one entry stands for all `count` pfns.
pub const TABLE_FLAG_REPEAT: u32 = 1;
/// Largest count of a REPEAT record (the count field is a u32).
pub const MAX_REPEAT_COUNT: u64 = u32::MAX as u64;
/// Shortest run of equal entries the encoder sends as one REPEAT record: a REPEAT record is
/// 40 bytes with its header, against 8 bytes per P2M entry and 1 per type byte written out.
pub const REPEAT_MIN_P2M: usize = 64;
pub const REPEAT_MIN_TYPES: usize = 256;
/// Largest body of any record other than PAGE_BATCH (fits the decoder's fixed buffer).
pub const MAX_SMALL_BODY: usize = 16384;
/// Largest kernel string in HEADER.
pub const MAX_KERNEL_STRING: usize = 256;
/// Largest vCPU count.
pub const MAX_VCPUS: u32 = 128;

/// Bits of a page-batch entry: pfn in 0..=51, kind in 60..=63, 52..=59 zero.
pub const ENTRY_PFN_MASK: u64 = (1 << 52) - 1;
pub const ENTRY_KIND_SHIFT: u32 = 60;
pub const ENTRY_RESERVED_MASK: u64 = 0xFF << 52;
pub const ENTRY_KIND_DATA: u64 = 0;
pub const ENTRY_KIND_ZERO: u64 = 1;

/// ROUND flags.
pub const ROUND_FLAG_DRAIN: u32 = 1;

/// Record types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum RecordType {
    End = 0,
    Header = 1,
    Round = 2,
    PageBatch = 3,
    Capture = 4,
    PageTypes = 5,
    P2m = 6,
    Vcpu = 7,
    SharedInfo = 8,
    Digest = 9,
    P2mFrames = 10,
}

impl RecordType {
    pub fn from_u32(v: u32) -> Option<Self> {
        use RecordType::*;
        Some(match v {
            0 => End,
            1 => Header,
            2 => Round,
            3 => PageBatch,
            4 => Capture,
            5 => PageTypes,
            6 => P2m,
            7 => Vcpu,
            8 => SharedInfo,
            9 => Digest,
            10 => P2mFrames,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        use RecordType::*;
        match self {
            End => "END",
            Header => "HEADER",
            Round => "ROUND",
            PageBatch => "PAGE_BATCH",
            Capture => "CAPTURE",
            PageTypes => "PAGE_TYPES",
            P2m => "P2M",
            Vcpu => "VCPU",
            SharedInfo => "SHARED_INFO",
            Digest => "DIGEST",
            P2mFrames => "P2M_FRAMES",
        }
    }
}

impl core::fmt::Display for RecordType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// vCPU state kinds carried by VCPU records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum VcpuKind {
    /// Xen's `vcpu_guest_context` for a 64-bit PV guest (layout and size:
    /// `checkpoint_abi::vcpu_ctx`), frame numbers in CR3/GDT as the guest saw them (source
    /// mfns).
    Basic = 1,
    /// Xen's `xen_domctl_ext_vcpucontext` bytes, as libxc's X86_PV_VCPU_EXTENDED carries.
    Extended = 2,
    /// XSAVE area (xcr0 u64, xcr0_accum u64, then the area), as X86_PV_VCPU_XSAVE.
    Xsave = 3,
    /// MSR list: { u32 index, u32 reserved, u64 value } entries, as X86_PV_VCPU_MSRS.
    Msrs = 4,
}

impl VcpuKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => VcpuKind::Basic,
            2 => VcpuKind::Extended,
            3 => VcpuKind::Xsave,
            4 => VcpuKind::Msrs,
            _ => return None,
        })
    }
}

/// Page-type byte of PAGE_TYPES: level in bits 0..=3, bit 7 pinned. The values are the
/// guest module's (`checkpoint-abi`), so a capture's type table is carried unchanged.
pub use checkpoint_abi::page_type;

/// P2M value for a pfn with no machine frame.
pub const INVALID_MFN: u64 = u64::MAX;

/// Round a length up to the next multiple of 8.
pub const fn pad8(n: usize) -> usize {
    (n + 7) & !7
}
