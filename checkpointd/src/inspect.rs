//! `checkpointd inspect`: validate a checkpoint file fully and summarise it.

use checkpoint_stream::model::{FullCheckpoint, RoundStats};
use checkpoint_stream::{page_type, INVALID_MFN};
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Debug, Serialize)]
pub struct Round {
    pub index: u32,
    pub drain: bool,
    pub pages: u64,
    pub zero_pages: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub valid: bool,
    pub kernel: String,
    pub max_pfn: u64,
    pub guest_mib: u64,
    pub nonzero_pages: usize,
    pub stream_bytes: u64,
    pub rounds: Vec<Round>,
    pub start_info_pfn: u64,
    pub vcpus: u32,
    pub capture_pause_ns: u64,
    /// Page-table pages per level (L1..L4) and how many are pinned.
    pub page_tables: [usize; 4],
    pub pinned: usize,
    pub unpopulated: usize,
    pub p2m_valid: usize,
    pub p2m_frames: usize,
    pub vcpu_records: Vec<(u32, String, usize)>,
    pub shared_info: bool,
    pub digest: String,
    /// The DIGEST record's algorithm (docs/stream.md).
    pub digest_algorithm: u32,
}

pub fn summarise(c: &FullCheckpoint) -> Summary {
    let k = &c.checkpoint;
    let mut pt = [0usize; 4];
    let mut pinned = 0;
    let mut unpop = 0;
    for &t in &k.page_types {
        match t & !page_type::PINNED {
            l @ page_type::L1..=page_type::L4 => pt[(l - 1) as usize] += 1,
            page_type::UNPOPULATED => unpop += 1,
            _ => {}
        }
        pinned += (t & page_type::PINNED != 0) as usize;
    }
    let round = |r: &RoundStats| Round {
        index: r.index,
        drain: r.drain,
        pages: r.pages,
        zero_pages: r.zero_pages,
        bytes: r.bytes,
    };
    Summary {
        valid: true,
        kernel: k.kernel.clone(),
        max_pfn: k.max_pfn,
        guest_mib: ((k.max_pfn + 1) * 4096) >> 20,
        nonzero_pages: k.pages.len(),
        stream_bytes: k.stream_bytes,
        rounds: k.rounds.iter().map(round).collect(),
        start_info_pfn: k.capture.start_info_pfn,
        vcpus: k.capture.nr_vcpus,
        capture_pause_ns: k.capture.pause_ns,
        page_tables: pt,
        pinned,
        unpopulated: unpop,
        p2m_valid: k.p2m.iter().filter(|&&m| m != INVALID_MFN).count(),
        p2m_frames: c.p2m_frames.len(),
        vcpu_records: k
            .vcpus
            .iter()
            .map(|v| (v.id, format!("{:?}", v.kind), v.data.len()))
            .collect(),
        shared_info: k.shared_info.is_some(),
        digest: k.digest.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        }),
        digest_algorithm: k.digest_algorithm.code(),
    }
}

pub fn human(s: &Summary) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "checkpoint: valid (every record checksum, order rule and the digest verified)"
    );
    let _ = writeln!(o, "  kernel        {}", s.kernel);
    let _ = writeln!(
        o,
        "  guest         {} pfns ({} MiB), {} non-zero pages",
        s.max_pfn + 1,
        s.guest_mib,
        s.nonzero_pages
    );
    let _ = writeln!(o, "  stream        {} bytes", s.stream_bytes);
    for r in &s.rounds {
        let name = if r.drain {
            "drain".to_string()
        } else {
            format!("round {}", r.index)
        };
        let _ = writeln!(
            o,
            "  {name:<13} {} pages ({} zero), {} bytes",
            r.pages, r.zero_pages, r.bytes
        );
    }
    let _ = writeln!(
        o,
        "  capture       pause {:.3} ms, start_info pfn {:#x}, {} vCPU(s)",
        s.capture_pause_ns as f64 / 1e6,
        s.start_info_pfn,
        s.vcpus
    );
    let _ = writeln!(
        o,
        "  page tables   L1 {} L2 {} L3 {} L4 {}, {} pinned; {} unpopulated pfns",
        s.page_tables[0],
        s.page_tables[1],
        s.page_tables[2],
        s.page_tables[3],
        s.pinned,
        s.unpopulated
    );
    let _ = writeln!(
        o,
        "  p2m           {} valid entries, {} p2m frames",
        s.p2m_valid, s.p2m_frames
    );
    for (id, kind, len) in &s.vcpu_records {
        let _ = writeln!(o, "  vcpu {id}        {kind}, {len} bytes");
    }
    let _ = writeln!(
        o,
        "  digest        {} (algorithm {})",
        s.digest, s.digest_algorithm
    );
    o
}
