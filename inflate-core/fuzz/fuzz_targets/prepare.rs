//! Fuzz `restore::prepare`, the code that reads a received capture's page tables, start_info,
//! vCPU context, types and p2m before the loader commits. The input describes a small guest
//! (types, p2m corruptions, table entries, start_info fields, vCPU fields, the pad); the
//! harness builds the capture records and the placed frames from it, the way the receiver
//! leaves them, and runs `prepare` over fake frames. Every input must end in Ok or a
//! RestoreError, never a panic; an accepted one must satisfy the restore's invariants.
#![no_main]

use checkpoint_stream::{Capture, VcpuKind, INVALID_MFN, PAGE_SIZE};
use inflate_core::frames::{FrameBook, Plan};
use inflate_core::records::Records;
use inflate_core::restore::{self, vcpu::VcpuContext, FrameAccess, MachineFrames, OwnDomain};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

/// Test fake: loader frames in memory, loader pfn l at machine frame 0x40_0000 + 3 l.
#[derive(Default)]
struct FakeDomain(HashMap<u64, Box<[u8; PAGE_SIZE]>>);
impl MachineFrames for FakeDomain {
    fn mfn(&self, l: u64) -> u64 {
        0x40_0000 + 3 * l
    }
    fn loader_pfn(&self, mfn: u64) -> Option<u64> {
        let d = mfn.checked_sub(0x40_0000)?;
        (d % 3 == 0 && d / 3 < 1 << 16).then_some(d / 3)
    }
}
impl FrameAccess for FakeDomain {
    fn with_frame(&mut self, l: u64, f: &mut dyn FnMut(&mut [u8; PAGE_SIZE])) {
        f(self.0.entry(l).or_insert_with(|| Box::new([0; PAGE_SIZE])))
    }
}

struct In<'a>(&'a [u8]);
impl In<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |a, i| a | (self.u8() as u64) << (8 * i))
    }
}

static ACCEPTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

const RAM: u64 = 64;
const TYPES: [u8; 8] = [0, 1, 2, 3, 4, 0x81, 0x84, 0x0f];
/// Kernel text at L4[511] L3[510] L2[0] L1[0]; the pad at offset 0x100 of pfn TEXT.
const TEXT_VA: u64 = 0xffff_ffff_8000_0000;
const TEXT: u64 = 30;
const TABLES: [(u64, u8); 4] = [(10, 0x84), (11, 3), (12, 2), (13, 0x81)];

fn src(pfn: u64) -> u64 {
    0x9000 + pfn * 7
}

fn put(p: &mut [u8; PAGE_SIZE], i: usize, v: u64) {
    p[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let mut i = In(data);
    let flags = i.u8();
    let max_pfn = if flags & 1 != 0 { 600 } else { RAM - 1 };
    let n = max_pfn as usize + 1;
    // A valid guest first: RAM pfns 0..64, a pinned 4-level chain to the pad, start_info at
    // pfn 1 naming the rings at pfns 2 and 3, GDT at pfn 14.
    let mut types = vec![checkpoint_stream::page_type::UNPOPULATED; n];
    types[..RAM as usize].fill(0);
    let mut p2m = vec![INVALID_MFN; n];
    for p in 0..RAM {
        p2m[p as usize] = src(p);
    }
    let mut pages: HashMap<u64, [u8; PAGE_SIZE]> = HashMap::new();
    let chain = [
        (10u64, 511usize, 11u64),
        (11, 510, 12),
        (12, 0, 13),
        (13, 0, TEXT),
    ];
    for (&(pfn, ty), &(_, idx, next)) in TABLES.iter().zip(&chain) {
        types[pfn as usize] = ty;
        let mut pg = [0u8; PAGE_SIZE];
        put(&mut pg, idx, (src(next) << 12) | 0x67);
        pages.insert(pfn, pg);
    }
    let mut si = [0u8; PAGE_SIZE];
    si[..14].copy_from_slice(b"xen-3.0-x86_64");
    put(&mut si, 7, 2);
    put(&mut si, 9, 3);
    pages.insert(1, si);
    let mut text = [0x90u8; PAGE_SIZE];
    text[0x100..0x102].copy_from_slice(&[0x0f, 0x05]);
    pages.insert(TEXT, text);
    let mut c = VcpuContext::decode(&[0u8; restore::xen::vcpu::SIZE]);
    c.user_regs.rdx = src(1);
    c.user_regs.rip = TEXT_VA + 0x102;
    c.ctrlreg[3] = src(10) << 12;
    c.gdt_ents = 16;
    c.gdt_frames[0] = src(14);
    let mut p2m_frames: Vec<u64> = (0..max_pfn / 512 + 1).map(|k| 40 + k).collect();

    // Then the input's damage.
    let any = |i: &mut In| match i.u8() % 4 {
        0 => i.u64(),
        1 => INVALID_MFN,
        _ => src(i.u8() as u64 % (RAM + 4)),
    };
    while !i.0.is_empty() {
        match i.u8() % 8 {
            0 => {
                let pfn = TABLES[i.u8() as usize % 4].0;
                let idx = i.u16() as usize % 512;
                let v = match i.u8() % 3 {
                    0 => i.u64(),
                    1 => 0,
                    _ => {
                        (src(i.u8() as u64 % (RAM + 4)) << 12)
                            | (i.u8() as u64 & 0xa7)
                            | ((i.u8() as u64 & 1) << 63)
                    }
                };
                put(pages.get_mut(&pfn).unwrap(), idx, v);
            }
            1 => {
                let p = i.u8() as usize % RAM as usize;
                types[p] = TYPES[i.u8() as usize % 8];
            }
            2 => {
                let p = i.u16() as usize % n;
                p2m[p] = any(&mut i);
            }
            3 => {
                let at = if i.u8() & 1 == 0 { 7 } else { 9 };
                put(pages.get_mut(&1).unwrap(), at, i.u8() as u64 % (RAM + 4));
            }
            4 => match i.u8() % 6 {
                0 => c.ctrlreg[3] = any(&mut i) << 12,
                1 => c.ctrlreg[1] = any(&mut i) << 12,
                2 => c.gdt_ents = i.u16() as u64,
                3 => c.gdt_frames[i.u8() as usize % 16] = any(&mut i),
                4 => c.user_regs.rip = TEXT_VA + (i.u16() as u64) * 7,
                _ => c.user_regs.rdx = any(&mut i),
            },
            5 => {
                let k = i.u8() as usize % p2m_frames.len();
                p2m_frames[k] = i.u16() as u64 % (max_pfn + 1);
            }
            6 => pages.get_mut(&TEXT).unwrap()[i.u16() as usize % PAGE_SIZE] = i.u8(),
            _ => pages.get_mut(&1).unwrap()[i.u8() as usize % 32] = i.u8(),
        }
    }
    let ctx = c.encode();
    let (mut tys, mut index, mut frames) = (vec![0u8; n], vec![0u64; 128], vec![0u64; 4]);
    let mut rec = Records::new(&mut tys, &mut index, &mut frames);
    rec.start(max_pfn);
    rec.set_capture(&Capture {
        start_info_pfn: 1,
        nr_vcpus: 1,
        pause_ns: 0,
    });
    rec.add_types(0, &types);
    rec.add_p2m(0, p2m.iter().copied());
    rec.add_p2m_frames(0, p2m_frames.iter().copied());
    rec.add_vcpu(0, VcpuKind::Basic, &ctx);
    rec.seal();
    let mut bits = vec![0u64; 64];
    let mut slots = vec![0u32; n];
    let mut book = FrameBook::new(&mut bits, 4096, 16);
    let mut plan = Plan::new(&mut slots);
    plan.start(max_pfn).unwrap();
    let mut d = FakeDomain::default();
    for p in 0..RAM {
        if types[p as usize] != 0x0f || flags & 2 != 0 {
            let f = plan.place(p, &mut book).unwrap();
            let pg = pages.get(&p).copied().unwrap_or([0; PAGE_SIZE]);
            d.with_frame(f, &mut |fr| fr.copy_from_slice(&pg));
        }
    }
    let own = OwnDomain {
        shared_info: 0x5000_0000,
        store_mfn: 0x40_0000 + 3 * 2,
        store_evtchn: 1,
        console_mfn: 0x40_0000 + 3 * 3,
        console_evtchn: 2,
    };
    let fake = FakeDomain::default();
    match restore::prepare(&rec, &mut plan, &mut book, &fake, &mut d, &own) {
        Err(e) => assert!(format!("{e}").len() <= 224),
        Ok(p) => {
            // Show that inputs get through (powers of two only, to keep the log short).
            let n = ACCEPTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                eprintln!("prepare accepted {n} inputs so far");
            }
            let l = fake
                .loader_pfn(p.pad.mfn)
                .expect("the pad is one of our frames");
            let mut b = [0u8; PAGE_SIZE];
            d.with_frame(l, &mut |f| b.copy_from_slice(f));
            let o = (p.pad.va & 0xfff) as usize;
            assert_eq!(b[o..o + 2], [0x0f, 0x05]);
            assert_eq!(
                p.m2p_updates(&rec, &plan, &fake).count() as u64,
                p.ram_pages
            );
            assert!(p
                .pins(&rec, &plan, &fake)
                .all(|(lv, m)| (1..=4).contains(&lv) && m != 0));
        }
    }
});
