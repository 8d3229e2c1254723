//! `prepare` on a real capture: the checkpoint guest (128 MiB, Rust-for-Linux 6.12 guest
//! kernel, /dev/checkpoint) saved itself on emulated Xen 4.17; `scripts/restore-testdata`
//! reduced the stream to every record and the pages a restore reads (page tables, start_info,
//! GDT, the pad's page), other pages as zeros, digest recomputed (testdata/README.md).
//! The test receives it into fake frames and checks every localised entry against the
//! capture's own p2m, the p2m and start_info rewrites and the vCPU translation.
use super::tests::{loader_mfn, own, FakeDomain};
use super::*;
use crate::frames::{FrameBook, Plan};
use crate::receive::Receiver;
use crate::records::Records;
use crate::result::Status;
use checkpoint_stream::model::FullCheckpoint;
use std::collections::HashMap;

const CAPTURE: &[u8] = include_bytes!("../../testdata/capture-128m.zlib");

#[test]
fn a_real_capture_is_prepared_in_fake_frames() {
    let stream = miniz_oxide::inflate::decompress_to_vec_zlib(CAPTURE).expect("zlib test data");
    let full = FullCheckpoint::from_bytes(&stream).expect("a valid stream");
    let k = &full.checkpoint;
    let ram = k
        .page_types
        .iter()
        .filter(|&&t| t != page_type::UNPOPULATED)
        .count() as u64;
    // The shape the loader must cope with: a p2m far larger than the RAM.
    assert_eq!(k.max_pfn, 262143);
    assert_eq!(ram, 32768);
    assert_eq!(full.p2m_frames.len(), 512);

    let n = k.max_pfn as usize + 1;
    let nr_pages = ram + 4096;
    let (mut bits, mut slots) = (vec![0u64; nr_pages as usize / 64 + 1], vec![0u32; n]);
    let (mut types, mut index, mut frames) = (vec![0u8; n], vec![0u64; n], vec![0u64; 512]);
    let mut r = Receiver::with_records(
        FrameBook::new(&mut bits, nr_pages, 1024),
        Plan::new(&mut slots),
        Records::new(&mut types, &mut index, &mut frames),
    );
    let mut d = FakeDomain::default();
    r.begin(0);
    let res = r.feed(&stream, &mut d, 1).expect("a result");
    assert_eq!(res.status, Status::Ok, "{}", res.message());
    assert!(r.records.restorable());
    assert_eq!(r.records.ram_pages(), ram);
    assert_eq!(r.plan.placed(), ram, "every RAM pfn has a frame");
    // Pages sent (the model keeps only the non-zero ones): the rest were zero-filled.
    struct Count(std::collections::BTreeSet<u64>);
    impl checkpoint_stream::Sink for Count {
        fn page(
            &mut self,
            pfn: u64,
            _: Option<&[u8; PAGE_SIZE]>,
        ) -> Result<(), checkpoint_stream::Error> {
            self.0.insert(pfn);
            Ok(())
        }
    }
    let mut sent = Count(Default::default());
    checkpoint_stream::decode_slice(&stream, None, &mut sent).unwrap();
    assert_eq!(r.zero_filled(), ram - sent.0.len() as u64);
    std::eprintln!(
        "real capture: {} RAM pages, {} pages in the test data, {} zero-filled",
        ram,
        sent.0.len(),
        r.zero_filled()
    );

    let ctx = vcpu::VcpuContext::decode(
        k.vcpu(0, checkpoint_stream::VcpuKind::Basic)
            .unwrap()
            .try_into()
            .unwrap(),
    );
    let t0 = std::time::Instant::now();
    let out = prepare(
        &r.records,
        &mut r.plan,
        &mut r.book,
        &FakeDomain::default(),
        &mut d,
        &own(),
    );
    let p = out.unwrap_or_else(|e| panic!("the real capture was refused: {e}"));
    std::eprintln!(
        "real capture: prepare took {:.1} ms on the host over in-memory frames",
        t0.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(p.pad.va, ctx.user_regs.rip - 2);

    // Independent check of every table: source entry -> pfn (capture's p2m) -> this domain.
    let m2p: HashMap<u64, u64> = k
        .p2m
        .iter()
        .enumerate()
        .filter(|(_, &m)| m != u64::MAX)
        .map(|(p, &m)| (m, p as u64))
        .collect();
    let si = k.page(k.capture.start_info_pfn).unwrap();
    let rd = |p: &[u8; PAGE_SIZE], o: usize| u64::from_le_bytes(p[o..o + 8].try_into().unwrap());
    let (store, console) = (rd(si, 56), rd(si, 72));
    let new = |pfn: u64| match pfn {
        p if p == store => own().store_mfn,
        p if p == console => own().console_mfn,
        p => loader_mfn(r.plan.lookup(p).unwrap()),
    };
    let (mut tables, mut entries) = (0, 0);
    for pfn in 0..=k.max_pfn {
        let Some(level) = table_level(k.page_types[pfn as usize]) else {
            continue;
        };
        tables += 1;
        let orig = k.page(pfn).copied().unwrap_or([0; PAGE_SIZE]);
        let mut got = [0u8; PAGE_SIZE];
        d.with_frame(r.plan.lookup(pfn).unwrap(), &mut |f| got.copy_from_slice(f));
        for i in 0..512 {
            let o = rd(&orig, i * 8);
            let g = rd(&got, i * 8);
            if level == 4 && (256..=271).contains(&i) {
                assert_eq!(g, 0);
                continue;
            }
            if o & 1 == 0 {
                assert_eq!(g, o, "non-present entries are kept");
                continue;
            }
            entries += 1;
            let src = (o & xen::pte::FRAME) >> 12;
            let want = (o & !xen::pte::FRAME) | (new(m2p[&src]) << 12);
            assert_eq!(g, want, "table pfn {pfn:#x} L{level} entry {i}");
        }
    }
    assert!(
        tables > 100 && entries > 10_000,
        "{tables} tables, {entries} entries"
    );
    std::eprintln!("real capture: {tables} page tables, {entries} present entries localised");

    // start_info and the p2m pages.
    let mut s = [0u8; PAGE_SIZE];
    d.with_frame(r.plan.lookup(k.capture.start_info_pfn).unwrap(), &mut |f| {
        s.copy_from_slice(f)
    });
    assert_eq!(rd(&s, 32), k.max_pfn + 1);
    assert_eq!(rd(&s, 56), own().store_mfn);
    assert_eq!(rd(&s, 72), own().console_mfn);
    assert_eq!(&s[..8], b"xen-3.0-");
    for (i, &pfn) in full.p2m_frames.iter().enumerate().step_by(97) {
        let mut page = [0u8; PAGE_SIZE];
        d.with_frame(r.plan.lookup(pfn).unwrap(), &mut |f| {
            page.copy_from_slice(f)
        });
        // A shared page (Linux's "missing" page) holds what its last index wrote.
        let last = full.p2m_frames.iter().rposition(|&q| q == pfn).unwrap();
        for j in 0..512u64 {
            let q = last as u64 * 512 + j;
            let want = if k.page_types[q as usize] == page_type::UNPOPULATED {
                !0
            } else {
                new(q)
            };
            assert_eq!(
                rd(&page, 8 * j as usize),
                want,
                "p2m index {i} (pfn {pfn:#x}) entry {j}"
            );
        }
    }
    assert_eq!(p.vcpu.ctrlreg[3], new(m2p[&ctx.cr3_frame()]) << 12);
    assert_eq!(p.vcpu.user_regs.rdx, new(k.capture.start_info_pfn));
    assert_eq!(p.m2p_updates(&r.records, &r.plan, &d).count() as u64, ram);
    assert!(p.pinned > 0);
    assert_eq!((p.page_tables, p.ptes), (tables, entries));
    assert_eq!((p.store_pfn, p.console_pfn), (store, console));
    assert_eq!(p.released, 2, "the two rings' frames");
    assert_eq!(p.xcr0, None, "captures carry no XSAVE record");
    let mut pad = [0u8; PAGE_SIZE];
    d.with_frame(d.loader_pfn(p.pad.mfn).unwrap(), &mut |f| {
        pad.copy_from_slice(f)
    });
    let o = (p.pad.va & 0xfff) as usize;
    assert_eq!(pad[o..o + 2], pad::SYSCALL);
    std::eprintln!(
        "real capture: {} pinned tables, pad at {:#x}, rip {:#x}",
        p.pinned,
        p.pad.va,
        p.vcpu.user_regs.rip
    );
}
