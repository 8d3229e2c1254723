//! Writes seed inputs for the fuzz target (scripts/fuzz-stream): valid streams (literal
//! tables, and tables with REPEAT records), each prefixed with a mode byte. `cargo run -p checkpoint-stream --example stream_fuzz_seeds -- DIR`.

use checkpoint_stream::digest::{root_of_pages, Algorithm};
use checkpoint_stream::*;

fn stream(max_pfn: u64, data_pages: &[u64]) -> Vec<u8> {
    stream_with_tables(max_pfn, data_pages, |e| {
        e.page_types(0, &vec![1u8; max_pfn as usize + 1]).unwrap();
        e.p2m(0, &vec![7u64; max_pfn as usize + 1]).unwrap();
    })
}

/// Tables as a literal head and a REPEAT tail, as a small guest's (RAM, then unpopulated pfns).
fn runs(max_pfn: u64) -> Vec<u8> {
    stream_with_tables(max_pfn, &[1], |e| {
        e.page_types(0, &[0x84, 3, 2, 1, 0, 0, 0, 0]).unwrap();
        e.page_types_repeat(8, max_pfn - 7, page_type::UNPOPULATED)
            .unwrap();
        e.p2m(0, &[9, 8, 7, 6, 5, 4, 3, 2]).unwrap();
        e.p2m_repeat(8, max_pfn - 7, INVALID_MFN).unwrap();
    })
}

fn stream_with_tables(
    max_pfn: u64,
    data_pages: &[u64],
    tables: impl FnOnce(&mut Encoder<Vec<u8>>),
) -> Vec<u8> {
    let mut pg = [0x5Au8; PAGE_SIZE];
    pg[1] = 1;
    let mut e = Encoder::new(Vec::new()).unwrap();
    e.header(max_pfn, b"seed").unwrap();
    e.round(0, false).unwrap();
    let refs: Vec<PageRef<'_>> = (0..=max_pfn)
        .map(|p| (p, data_pages.contains(&p).then_some(&pg)))
        .collect();
    e.page_batch(&refs).unwrap();
    e.capture(0, 1, 1).unwrap();
    e.round(1, true).unwrap();
    e.page_batch(&[(0, None)]).unwrap();
    tables(&mut e);
    e.vcpu(0, VcpuKind::Basic, &[1, 2, 3]).unwrap();
    e.shared_info(&pg).unwrap();
    let root = root_of_pages(Algorithm::CURRENT, max_pfn, |p| {
        (p != 0 && data_pages.contains(&p)).then_some(&pg)
    });
    e.digest(Algorithm::CURRENT, &root).unwrap();
    e.end().unwrap()
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: stream_fuzz_seeds DIR");
    let seeds = [
        ("small", stream(1, &[])),
        ("pages", stream(3, &[1, 3])),
        ("runs", runs(200)),
    ];
    for (name, s) in seeds {
        model::Checkpoint::from_bytes(&s).expect("seed streams are valid");
        for mode in [0u8, 1, 4] {
            let mut v = vec![mode];
            v.extend_from_slice(&s);
            std::fs::write(format!("{dir}/seed-{name}-{mode}"), v).unwrap();
        }
    }
}
