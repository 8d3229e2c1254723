//! Prints the worked example of docs/stream.md and its REPEAT example (the tests in
//! tests/decode.rs check the doc against the encoder):
//! `cargo run -p checkpoint-stream --example worked_example`.

use checkpoint_stream::digest::{root_of_pages, Algorithm};
use checkpoint_stream::*;

fn main() {
    let mut e = Encoder::new(Vec::new()).unwrap();
    let mut marks = vec![(0usize, "preamble")];
    macro_rules! rec {
        ($name:expr, $body:expr) => {{
            marks.push((e.bytes() as usize, $name));
            $body;
        }};
    }
    rec!(
        "HEADER: word 8, page 4096, max_pfn 1, flags 0, kernel \"6.12\"",
        e.header(1, b"6.12").unwrap()
    );
    rec!("ROUND 0, flags 0", e.round(0, false).unwrap());
    rec!(
        "PAGE_BATCH: 2 entries, pfn 0 and 1 as zero pages",
        e.page_batch(&[(0, None), (1, None)]).unwrap()
    );
    rec!(
        "CAPTURE: start_info pfn 1, 1 vCPU, pause 0 ns",
        e.capture(1, 1, 0).unwrap()
    );
    rec!(
        "PAGE_TYPES: pfn 0 = L4|pinned, pfn 1 = normal",
        e.page_types(0, &[page_type::L4 | page_type::PINNED, 0])
            .unwrap()
    );
    rec!(
        "P2M: pfn 0 -> mfn 0x1000, pfn 1 -> mfn 0x1001",
        e.p2m(0, &[0x1000, 0x1001]).unwrap()
    );
    rec!(
        "VCPU 0, kind 1 (basic), 1 byte of state 0xab",
        e.vcpu(0, VcpuKind::Basic, &[0xAB]).unwrap()
    );
    let root = root_of_pages(Algorithm::CURRENT, 1, |_| None);
    rec!(
        "DIGEST: algorithm 2, root over two zero pages",
        e.digest(Algorithm::CURRENT, &root).unwrap()
    );
    let end_at = e.bytes() as usize;
    let out = e.end().unwrap();
    marks.push((end_at, "END"));
    dump(&out, &marks);

    // The tail of the tables of a 128 MiB guest (max_pfn 0x3ffff, RAM pfns 0..0x7fff): two
    // records, shown without a preamble, offsets from the first record.
    println!();
    let mut e = Encoder::new(Vec::new()).unwrap();
    e.page_types_repeat(0x8000, 0x38000, page_type::UNPOPULATED)
        .unwrap();
    let p2m_at = e.bytes() as usize - 16;
    e.p2m_repeat(0x8000, 0x38000, INVALID_MFN).unwrap();
    let out = e.into_inner();
    dump(
        &out[16..],
        &[
            (
                0,
                "PAGE_TYPES, REPEAT: pfns 0x8000..=0x3ffff unpopulated (0x0f)",
            ),
            (p2m_at, "P2M, REPEAT: pfns 0x8000..=0x3ffff no frame"),
        ],
    );
}

/// Hex, 8 bytes a line, with a note where a record starts.
fn dump(out: &[u8], marks: &[(usize, &str)]) {
    for (i, chunk) in out.chunks(8).enumerate() {
        let off = i * 8;
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let note = marks
            .iter()
            .find(|m| m.0 == off)
            .map(|m| format!("  # {}", m.1))
            .unwrap_or_default();
        println!("    {off:04x}: {}{note}", hex.join(" "));
    }
}
