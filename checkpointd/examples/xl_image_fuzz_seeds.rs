//! Writes seed inputs for the xl image fuzz target (scripts/fuzz-xl-image): small but
//! structurally real xl save images written by our own exporter, one with a JSON config.
//! `cargo run -p checkpointd --example xl_image_fuzz_seeds -- DIR`.

use checkpoint_stream::digest::root_of_pages;
use checkpoint_stream::model::{Checkpoint, FullCheckpoint, VcpuState};
use checkpoint_stream::{page_type, Capture, VcpuKind, INVALID_MFN, PAGE_SIZE};
use checkpointd::xen::{export, vcpu};
use std::collections::HashMap;

const MAX_PFN: u64 = 11;

fn mfn(pfn: u64) -> u64 {
    0x8_0000 + 3 * pfn
}

/// L4 (pfn 6, pinned) -> L3 (7) -> L2 (8) -> L1 (9) mapping pfns 2..=4; user L4 at 10;
/// GDT at 11; start_info at 1; pfn 5 unpopulated; the p2m page is pfn 0.
fn guest() -> FullCheckpoint {
    let n = MAX_PFN as usize + 1;
    let mut pages = HashMap::new();
    let mut types = vec![page_type::NORMAL; n];
    let mut p2m: Vec<u64> = (0..=MAX_PFN).map(mfn).collect();
    types[5] = page_type::UNPOPULATED;
    p2m[5] = INVALID_MFN;
    let mut table = |pfn: u64, entries: &[(usize, u64)]| {
        let mut p = [0u8; PAGE_SIZE];
        for &(i, v) in entries {
            p[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        pages.insert(pfn, Box::new(p));
    };
    table(6, &[(0, mfn(7) << 12 | 0x67), (511, mfn(7) << 12 | 0x63)]);
    table(7, &[(0, mfn(8) << 12 | 0x67)]);
    table(8, &[(1, mfn(9) << 12 | 0x67)]);
    table(
        9,
        &[
            (0, mfn(2) << 12 | 0x67),
            (1, mfn(3) << 12 | 0x67),
            (2, mfn(4) << 12 | 0x67),
        ],
    );
    types[6] = page_type::L4 | page_type::PINNED;
    types[7] = page_type::L3;
    types[8] = page_type::L2;
    types[9] = page_type::L1 | page_type::PINNED;
    types[10] = page_type::L4 | page_type::PINNED;
    for pfn in 2..=4u64 {
        let mut p = [0u8; PAGE_SIZE];
        p[..8].copy_from_slice(&pfn.to_le_bytes());
        pages.insert(pfn, Box::new(p));
    }
    let mut ctx = vec![0u8; vcpu::SIZE];
    let mut put = |o: usize, v: u64| ctx[o..o + 8].copy_from_slice(&v.to_le_bytes());
    put(vcpu::RDX, mfn(1));
    put(vcpu::GDT_FRAMES, mfn(11));
    put(vcpu::GDT_ENTS, 16);
    put(vcpu::CR3, mfn(6) << 12);
    put(vcpu::CR1, mfn(10) << 12);
    let digest = root_of_pages(MAX_PFN, |p| pages.get(&p).map(|b| &**b));
    FullCheckpoint {
        checkpoint: Checkpoint {
            max_pfn: MAX_PFN,
            kernel: "seed".into(),
            pages,
            rounds: Vec::new(),
            capture: Capture {
                start_info_pfn: 1,
                nr_vcpus: 1,
                pause_ns: 0,
            },
            page_types: types,
            p2m,
            vcpus: vec![VcpuState {
                id: 0,
                kind: VcpuKind::Basic,
                data: ctx,
            }],
            shared_info: None,
            digest,
            stream_bytes: 0,
        },
        p2m_frames: vec![0],
    }
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: xl_image_fuzz_seeds DIR");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, cfg) in [("text", "name = \"seed\"\n"), ("json", "{\"c_info\": {}}")] {
        let mut v = Vec::new();
        export(&guest(), cfg, (4, 17), &mut v).unwrap();
        std::fs::write(format!("{dir}/seed-{name}.img"), v).unwrap();
    }
}
