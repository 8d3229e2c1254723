//! Reduce a real capture (a checkpoint stream file written by `checkpointd save`) to the test
//! data of the restore tests: every record a restore reads, and only the pages it reads (page
//! tables, start_info, the GDT frames and the page holding the transfer pad); every other page
//! becomes a zero page, and the digest is recomputed over what is kept. The result is a valid
//! stream, zlib-compressed. Usage (scripts/restore-testdata runs it):
//!     cargo run -p inflate-core --example reduce_capture -- IN.ckpt OUT.zlib
use checkpoint_stream::model::FullCheckpoint;
use checkpoint_stream::{page_type, Encoder, VcpuKind, PAGE_SIZE};
use inflate_core::restore::{table_level, vcpu::VcpuContext};
use std::collections::{BTreeSet, HashMap};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: reduce_capture IN.ckpt OUT.zlib");
        std::process::exit(2);
    }
    let bytes = std::fs::read(&args[1]).unwrap_or_else(|e| panic!("{}: {e}", args[1]));
    let c = FullCheckpoint::from_bytes(&bytes).unwrap_or_else(|e| panic!("{}: {e}", args[1]));
    let k = &c.checkpoint;
    let basic = k.vcpu(0, VcpuKind::Basic).expect("vCPU 0 BASIC");
    let ctx = VcpuContext::decode(basic.try_into().expect("5168 bytes"));
    let m2p: HashMap<u64, u64> = k
        .p2m
        .iter()
        .enumerate()
        .filter(|(_, &m)| m != u64::MAX)
        .map(|(p, &m)| (m, p as u64))
        .collect();
    let mut keep = BTreeSet::new();
    keep.insert(k.capture.start_info_pfn);
    for p in 0..=k.max_pfn {
        if table_level(k.page_types[p as usize]).is_some() {
            keep.insert(p);
        }
    }
    for &m in &ctx.gdt_frames[..ctx.gdt_frame_count()] {
        keep.extend(m2p.get(&m));
    }
    // The pad's page: walk the source tables to rip - 2.
    let va = ctx.user_regs.rip.wrapping_sub(2);
    let mut mfn = ctx.cr3_frame();
    for level in (1..=4u8).rev() {
        let Some(t) = m2p.get(&mfn).and_then(|p| k.page(*p)) else {
            break;
        };
        let i = ((va >> (12 + 9 * (level as u32 - 1))) & 511) as usize;
        let e = u64::from_le_bytes(t[i * 8..i * 8 + 8].try_into().unwrap());
        mfn = (e & 0x000f_ffff_ffff_f000) >> 12;
        if level == 1 {
            keep.extend(m2p.get(&mfn));
        }
    }
    let pages: Vec<(u64, Option<&[u8; PAGE_SIZE]>)> =
        keep.iter().map(|&p| (p, k.page(p))).collect();
    let mut e = Encoder::new(Vec::new()).unwrap();
    e.header(k.max_pfn, k.kernel.as_bytes()).unwrap();
    e.round(0, false).unwrap();
    for b in pages.chunks(512) {
        e.page_batch(b).unwrap();
    }
    e.capture(
        k.capture.start_info_pfn,
        k.capture.nr_vcpus,
        k.capture.pause_ns,
    )
    .unwrap();
    e.page_types(0, &k.page_types).unwrap();
    e.p2m(0, &k.p2m).unwrap();
    e.p2m_frames(&c.p2m_frames).unwrap();
    for v in &k.vcpus {
        e.vcpu(v.id, v.kind, &v.data).unwrap();
    }
    let root = checkpoint_stream::digest::root_of_pages(
        checkpoint_stream::digest::Algorithm::CURRENT,
        k.max_pfn,
        |p| {
            if keep.contains(&p) {
                k.page(p)
            } else {
                None
            }
        },
    );
    e.digest(checkpoint_stream::digest::Algorithm::CURRENT, &root)
        .unwrap();
    let stream = e.end().unwrap();
    let z = miniz_oxide::deflate::compress_to_vec_zlib(&stream, 9);
    std::fs::write(&args[2], &z).unwrap_or_else(|e| panic!("{}: {e}", args[2]));
    let ram = k
        .page_types
        .iter()
        .filter(|&&t| t != page_type::UNPOPULATED)
        .count();
    println!(
        "reduced {}: max_pfn {}, {} RAM pfns, {} pages kept ({} page tables), rip {:#x}, \
         stream {} -> {} bytes, zlib {} bytes",
        args[1],
        k.max_pfn,
        ram,
        keep.len(),
        (0..=k.max_pfn)
            .filter(|&p| table_level(k.page_types[p as usize]).is_some())
            .count(),
        ctx.user_regs.rip,
        bytes.len(),
        stream.len(),
        z.len()
    );
}
