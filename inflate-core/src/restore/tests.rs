//! `prepare` on a small but structurally real 64-bit PV guest (the same shape as checkpointd's
//! exporter tests: a 4-level chain, a Xen slot in the L4, NX bits, a user L4, a GDT page, three
//! p2m frames, a non-identity p2m), received through the real `Receiver` into in-memory fake
//! frames, then checked entry by entry; and each refusal.
use super::*;
use crate::frames::{FrameBook, Plan};
use crate::receive::{FrameStore, Receiver};
use crate::records::Records;
use crate::result::Status;
use checkpoint_stream::{Encoder, VcpuKind, INVALID_MFN};
use std::collections::HashMap;

const MAX_PFN: u64 = 1100; // three p2m pages
/// Pfns from here on are not RAM (a real capture's p2m is far larger than its RAM).
const RAM_END: u64 = 600;
const SI: u64 = 1;
const STORE: u64 = 2;
const CONSOLE: u64 = 3;
const HOLE: u64 = 5;
const L4: u64 = 10;
const L3: u64 = 11;
const L2: u64 = 12;
const L1: u64 = 13;
const GDT: u64 = 14;
const USER_L4: u64 = 15;
const TEXT: u64 = 30;
const P2M_FRAMES: [u64; 3] = [40, 41, 42];
/// L4[511] -> L3[0] -> L2[3] -> L1[i]: the kernel's high mapping of pfns 20.. .
const VA_BASE: u64 = 0xffff_ff80_0060_0000;
const PAD_OFF: u64 = 0x100;
const RIP: u64 = VA_BASE + 10 * 4096 + PAD_OFF + 2;

/// Source machine frames: deliberately neither identity nor adjacent.
fn src_mfn(pfn: u64) -> u64 {
    0x8_0000 + pfn * 3
}

fn pte(pfn: u64, flags: u64) -> u64 {
    (src_mfn(pfn) << 12) | flags
}

fn get(p: &[u8; PAGE_SIZE], i: usize) -> u64 {
    u64::from_le_bytes(p[i * 8..i * 8 + 8].try_into().unwrap())
}

fn set(p: &mut [u8; PAGE_SIZE], i: usize, v: u64) {
    p[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
}

#[derive(Clone)]
struct Guest {
    pages: HashMap<u64, [u8; PAGE_SIZE]>,
    types: Vec<u8>,
    p2m: Vec<u64>,
    ctx: Vec<u8>,
    p2m_frames: Vec<u64>,
    nr_vcpus: u32,
    xsave: Option<Vec<u8>>,
}

impl Guest {
    fn new() -> Guest {
        let n = MAX_PFN as usize + 1;
        let mut types = vec![page_type::NORMAL; n];
        let mut p2m: Vec<u64> = (0..=MAX_PFN).map(src_mfn).collect();
        for p in (HOLE..HOLE + 1).chain(RAM_END..=MAX_PFN) {
            types[p as usize] = page_type::UNPOPULATED;
            p2m[p as usize] = INVALID_MFN;
        }
        let mut pages = HashMap::new();
        let mut table = |pfn: u64, entries: &[(usize, u64)]| {
            let mut p = [0u8; PAGE_SIZE];
            for &(i, v) in entries {
                set(&mut p, i, v);
            }
            pages.insert(pfn, p);
        };
        // Slot 256 holds a Xen mapping (a frame the guest does not own): dropped.
        table(
            L4,
            &[
                (0, pte(L3, 0x67)),
                (256, 0xdead_b000 | 0x63),
                (511, pte(L3, 0x63)),
            ],
        );
        types[L4 as usize] = page_type::L4 | page_type::PINNED;
        table(L3, &[(0, pte(L2, 0x67))]);
        types[L3 as usize] = page_type::L3;
        table(L2, &[(3, pte(L1, 0x67))]);
        types[L2 as usize] = page_type::L2;
        let mut l1: Vec<(usize, u64)> = (0..10)
            .map(|i| (i, pte(20 + i as u64, pte_bits::NX | 0x67)))
            .collect();
        l1.push((10, pte(TEXT, 0x25))); // kernel text: present, user, accessed, no NX
        table(L1, &l1);
        types[L1 as usize] = page_type::L1 | page_type::PINNED;
        table(USER_L4, &[]);
        types[USER_L4 as usize] = page_type::L4 | page_type::PINNED;
        for pfn in 20..30u64 {
            let mut p = [0u8; PAGE_SIZE];
            p[..8].copy_from_slice(&pfn.to_le_bytes());
            pages.insert(pfn, p);
        }
        let mut text = [0x90u8; PAGE_SIZE];
        text[PAD_OFF as usize..PAD_OFF as usize + 2].copy_from_slice(&pad::SYSCALL);
        pages.insert(TEXT, text);
        let mut si = [0u8; PAGE_SIZE];
        si[..14].copy_from_slice(b"xen-3.0-x86_64");
        set(&mut si, 4, 0x1_0000); // nr_pages, rewritten
        set(&mut si, 7, STORE); // store_mfn holds the pfn at the capture point
        set(&mut si, 9, CONSOLE);
        set(&mut si, 11, 0xffff_ffff_8200_0000); // pt_base, kept
        pages.insert(SI, si);
        pages.insert(STORE, [0x5a; PAGE_SIZE]);
        pages.insert(CONSOLE, [0x3c; PAGE_SIZE]);
        for &f in &P2M_FRAMES {
            pages.insert(f, [0x77; PAGE_SIZE]); // the source's mfns, rewritten
        }
        let mut c = vcpu::VcpuContext::decode(&[0u8; xen::vcpu::SIZE]);
        c.flags = 0x1d;
        c.user_regs.rdx = src_mfn(SI);
        c.user_regs.rip = RIP;
        c.user_regs.rsp = 0xffff_c900_0001_3f00;
        c.user_regs.rbx = 0x1234;
        c.gdt_frames[0] = src_mfn(GDT);
        c.gdt_ents = 16;
        c.kernel_ss = 0xe02b;
        c.kernel_sp = 0xffff_c900_0001_4000;
        c.ctrlreg[3] = src_mfn(L4) << 12;
        c.ctrlreg[1] = src_mfn(USER_L4) << 12;
        c.ctrlreg[4] = 0x10_06f0;
        c.trap_ctxt[14] = vcpu::TrapInfo {
            vector: 14,
            flags: 0,
            cs: 0xe033,
            pad: 0,
            address: 0xffff_ffff_8100_1000,
        };
        c.fs_base = 0x7f00_0000_0000;
        c.gs_base_kernel = 0xffff_8880_0fc0_0000;
        Guest {
            pages,
            types,
            p2m,
            ctx: c.encode().to_vec(),
            p2m_frames: P2M_FRAMES.to_vec(),
            nr_vcpus: 1,
            xsave: None,
        }
    }

    /// The stream as checkpointd writes it: only RAM pfns (zero pages as zero entries,
    /// except that pfn 50 is left out entirely and pfn HOLE, not RAM at the capture, was sent
    /// in a pre-copy round).
    fn stream(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new()).unwrap();
        e.header(MAX_PFN, b"restore test").unwrap();
        e.round(0, false).unwrap();
        let mut batch: Vec<(u64, Option<&[u8; PAGE_SIZE]>)> = vec![(HOLE, None)];
        for p in 0..=MAX_PFN {
            if self.types[p as usize] != page_type::UNPOPULATED && p != 50 {
                batch.push((p, self.pages.get(&p)));
            }
        }
        for b in batch.chunks(512) {
            e.page_batch(b).unwrap();
        }
        e.capture(SI, self.nr_vcpus, 0).unwrap();
        e.page_types(0, &self.types).unwrap();
        e.p2m(0, &self.p2m).unwrap();
        if !self.p2m_frames.is_empty() {
            e.p2m_frames(&self.p2m_frames).unwrap();
        }
        for id in 0..self.nr_vcpus {
            e.vcpu(id, VcpuKind::Basic, &self.ctx).unwrap();
        }
        if let Some(x) = &self.xsave {
            e.vcpu(0, VcpuKind::Xsave, x).unwrap();
        }
        let root = checkpoint_stream::digest::root_of_pages(
            checkpoint_stream::digest::Algorithm::CURRENT,
            MAX_PFN,
            |p| {
                (self.types[p as usize] != page_type::UNPOPULATED)
                    .then(|| self.pages.get(&p))
                    .flatten()
            },
        );
        e.digest(checkpoint_stream::digest::Algorithm::CURRENT, &root)
            .unwrap();
        e.end().unwrap()
    }

    fn ctx(&self) -> vcpu::VcpuContext {
        vcpu::VcpuContext::decode(self.ctx.as_slice().try_into().unwrap())
    }

    fn set_ctx(&mut self, c: &vcpu::VcpuContext) {
        self.ctx = c.encode().to_vec();
    }

    fn page(&mut self, pfn: u64) -> &mut [u8; PAGE_SIZE] {
        self.pages.get_mut(&pfn).unwrap()
    }
}

use xen::pte as pte_bits;

/// Test fake: the loader domain's frames in memory. Loader pfn l has machine frame
/// 0x40_0000 + 5 l; the domain's own xenstore and console rings are loader pfns 2 and 3.
#[derive(Default)]
pub(super) struct FakeDomain {
    mem: HashMap<u64, Box<[u8; PAGE_SIZE]>>,
}

const NR_PAGES: u64 = 2000;
const FIRST_FREE: u64 = 100;

pub(super) fn loader_mfn(l: u64) -> u64 {
    0x40_0000 + 5 * l
}

impl MachineFrames for FakeDomain {
    fn mfn(&self, loader_pfn: u64) -> u64 {
        loader_mfn(loader_pfn)
    }
    fn loader_pfn(&self, mfn: u64) -> Option<u64> {
        let d = mfn.checked_sub(0x40_0000)?;
        (d % 5 == 0 && d / 5 < 1 << 20).then_some(d / 5)
    }
}

impl FrameAccess for FakeDomain {
    fn with_frame(&mut self, loader_pfn: u64, f: &mut dyn FnMut(&mut [u8; PAGE_SIZE])) {
        f(self
            .mem
            .entry(loader_pfn)
            .or_insert_with(|| Box::new([0; PAGE_SIZE])))
    }
}

impl FrameStore for FakeDomain {
    fn write(&mut self, pfn: u64, data: Option<&[u8; PAGE_SIZE]>) {
        // Zero frames are not stored (a real capture zero-fills tens of thousands).
        match data {
            Some(d) => {
                self.mem.insert(pfn, Box::new(*d));
            }
            None => {
                self.mem.remove(&pfn);
            }
        }
    }
    fn leaf(&mut self, pfn: u64) -> [u8; 32] {
        checkpoint_stream::digest::leaf_hash(self.mem.get(&pfn).map(|b| &**b))
    }
}

pub(super) fn own() -> OwnDomain {
    OwnDomain {
        shared_info: 0x7777_7000,
        store_mfn: loader_mfn(2),
        store_evtchn: 1,
        console_mfn: loader_mfn(3),
        console_evtchn: 2,
    }
}

struct Storage {
    bits: Vec<u64>,
    slots: Vec<u32>,
    types: Vec<u8>,
    index: Vec<u64>,
    frames: Vec<u64>,
}

impl Storage {
    fn new() -> Storage {
        Storage {
            bits: vec![0; 64],
            slots: vec![0; 2048],
            types: vec![0; 2048],
            index: vec![0; 1024],
            frames: vec![0; 8],
        }
    }
}

/// Receive `g`'s stream and run `prepare`.
fn run(
    g: &Guest,
    st: &mut Storage,
) -> (
    Result<Prepared, RestoreError>,
    Receiver<'static>,
    FakeDomain,
) {
    let (out, r, d) = run_any(g, std::mem::replace(st, Storage::new()));
    (out.expect("the receiver accepts the stream"), r, d)
}

fn prepared(g: &Guest) -> (Prepared, Receiver<'static>, FakeDomain) {
    let (p, r, d) = run(g, &mut Storage::new());
    (p.unwrap_or_else(|e| panic!("prepare refused: {e}")), r, d)
}

fn refusal(g: &Guest) -> RestoreError {
    match run(g, &mut Storage::new()).0 {
        Ok(_) => panic!("prepare accepted a guest it must refuse"),
        Err(e) => e,
    }
}

#[test]
fn localise_inverts_normalise_on_every_table() {
    // The exporter's direction (mfn -> pfn) and the restore's (pfn -> mfn) compose to the
    // identity, apart from Xen's L4 slots which both clear.
    let g = Guest::new();
    let m2p: HashMap<u64, u64> = g
        .p2m
        .iter()
        .enumerate()
        .filter(|(_, &m)| m != INVALID_MFN)
        .map(|(p, &m)| (m, p as u64))
        .collect();
    for pfn in [L4, L3, L2, L1, USER_L4] {
        let level = table_level(g.types[pfn as usize]).unwrap();
        let orig = g.pages[&pfn];
        let mut page = orig;
        let n1 = pagetable::rewrite(&mut page, level, |m| m2p.get(&m).copied()).unwrap();
        if pfn == L1 {
            assert_eq!(get(&page, 10), (TEXT << 12) | 0x25, "normalised to a pfn");
        }
        let n2 = pagetable::rewrite(&mut page, level, |p| Some(src_mfn(p))).unwrap();
        assert_eq!(n1, n2);
        let mut want = orig;
        if level == 4 {
            for i in 256..=271 {
                set(&mut want, i, 0);
            }
        }
        assert!(page == want, "pfn {pfn}: localise(normalise(t)) != t");
    }
}

#[test]
fn prepare_localises_tables_and_rewrites_p2m_start_info_and_vcpu() {
    let g = Guest::new();
    let free_before;
    let (p, r, mut d) = {
        let out = prepared(&g);
        free_before = out.1.book.free_count() - out.0.released;
        out
    };
    let new = |pfn: u64| match pfn {
        STORE => loader_mfn(2),
        CONSOLE => loader_mfn(3),
        _ => loader_mfn(r.plan.lookup(pfn).unwrap()),
    };
    let frame = |d: &mut FakeDomain, pfn: u64| -> [u8; PAGE_SIZE] {
        let mut b = [0u8; PAGE_SIZE];
        d.with_frame(r.plan.lookup(pfn).unwrap(), &mut |f| b.copy_from_slice(f));
        b
    };
    // Page tables: this domain's frames, flags kept, Xen slots cleared.
    let l4 = frame(&mut d, L4);
    assert_eq!(get(&l4, 0), (new(L3) << 12) | 0x67);
    assert_eq!(get(&l4, 256), 0);
    assert_eq!(get(&l4, 511), (new(L3) << 12) | 0x63);
    assert_eq!(get(&frame(&mut d, L3), 0), (new(L2) << 12) | 0x67);
    assert_eq!(get(&frame(&mut d, L2), 3), (new(L1) << 12) | 0x67);
    let l1 = frame(&mut d, L1);
    for i in 0..10 {
        assert_eq!(
            get(&l1, i),
            (new(20 + i as u64) << 12) | pte_bits::NX | 0x67
        );
    }
    assert_eq!(get(&l1, 10), (new(TEXT) << 12) | 0x25);
    assert_eq!(get(&l1, 11), 0);
    assert_eq!((p.page_tables, p.pinned, p.ptes), (5, 3, 2 + 1 + 1 + 11));
    // The guest's p2m: new frames, the domain's own rings, INVALID where no RAM.
    for (i, &f) in P2M_FRAMES.iter().enumerate() {
        let page = frame(&mut d, f);
        for j in 0..512u64 {
            let pfn = i as u64 * 512 + j;
            let want = if pfn == HOLE || pfn >= RAM_END {
                !0
            } else {
                new(pfn)
            };
            assert_eq!(get(&page, j as usize), want, "p2m entry of pfn {pfn}");
        }
    }
    assert_eq!(new(STORE), own().store_mfn);
    // start_info: the domain's rings, channels and shared_info; nr_pages = max_pfn + 1.
    let si = frame(&mut d, SI);
    assert_eq!(get(&si, 4), MAX_PFN + 1);
    assert_eq!(get(&si, 5), own().shared_info);
    assert_eq!(&si[48..52], &[0; 4]);
    assert_eq!(get(&si, 7), own().store_mfn);
    assert_eq!(&si[64..68], &1u32.to_le_bytes());
    assert_eq!(get(&si, 9), own().console_mfn);
    assert_eq!(&si[80..84], &2u32.to_le_bytes());
    assert_eq!(get(&si, 11), 0xffff_ffff_8200_0000, "pt_base kept");
    assert_eq!((p.start_info_pfn, p.start_info_mfn), (SI, new(SI)));
    assert_eq!((p.store_pfn, p.console_pfn), (STORE, CONSOLE));
    // vCPU 0 in this domain's frames; everything else as captured.
    let mut want = g.ctx();
    want.user_regs.rdx = new(SI);
    want.gdt_frames[0] = new(GDT);
    want.ctrlreg[3] = new(L4) << 12;
    want.ctrlreg[1] = new(USER_L4) << 12;
    want.flags |= xen::vcpu::VGCF_ONLINE;
    assert_eq!(p.vcpu, want);
    assert_eq!(p.xcr0, None, "the stream has no XSAVE record");
    // The pad, found through the localised tables.
    assert_eq!(
        p.pad,
        pad::Pad {
            va: RIP - 2,
            mfn: new(TEXT)
        }
    );
    // M2P updates: every RAM pfn once, the rings with the domain's frames.
    let m2p: Vec<(u64, u64)> = p
        .m2p_updates(&r.records, &r.plan, &FakeDomain::default())
        .collect();
    assert_eq!(m2p.len() as u64, RAM_END - 1);
    assert_eq!(p.ram_pages, RAM_END - 1);
    assert!(m2p.contains(&(own().store_mfn, STORE)) && m2p.contains(&(own().console_mfn, CONSOLE)));
    assert!(m2p.iter().all(|&(m, pfn)| m == new(pfn)));
    // Pins: the pinned tables, with their level.
    let pins: Vec<(u8, u64)> = p
        .pins(&r.records, &r.plan, &FakeDomain::default())
        .collect();
    assert_eq!(pins, [(4, new(L4)), (1, new(L1)), (4, new(USER_L4))]);
    // The rings' frames and the frame of the page sent for a pfn that is not RAM went back.
    assert_eq!(p.released, 3);
    assert!(!r.plan.is_placed(STORE) && !r.plan.is_placed(CONSOLE) && !r.plan.is_placed(HOLE));
    assert_eq!(r.book.free_count(), free_before + 3);
    assert_eq!(
        r.plan.placed(),
        RAM_END - 1 - 2,
        "every other RAM pfn keeps its frame"
    );
    // The pfn that was never sent has a zeroed frame of its own.
    assert!(frame(&mut d, 50).iter().all(|&b| b == 0));
    assert_eq!(r.zero_filled(), 1);
}

#[test]
fn the_trap_table_and_xcr0_come_through() {
    let mut g = Guest::new();
    let mut x = vec![0u8; 16 + 832];
    x[..8].copy_from_slice(&7u64.to_le_bytes()); // x87 | SSE | AVX
    g.xsave = Some(x);
    let (p, _, _) = prepared(&g);
    let mut t = [vcpu::TrapInfo::default(); vcpu::TRAP_TABLE_MAX];
    assert_eq!(p.vcpu.trap_table(&mut t), 2);
    assert_eq!(t[0].address, 0xffff_ffff_8100_1000);
    assert_eq!((t[1].vector, t[1].address), (0, 0), "the terminator");
    assert_eq!(p.xcr0, Some(7));
}

fn pad_error(g: &Guest) -> PadError {
    match refusal(g) {
        RestoreError::Pad(e) => e,
        e => panic!("expected a pad error, got {e}"),
    }
}

#[test]
fn pad_walk_refuses_what_cannot_be_the_transfer() {
    let mut g = Guest::new();
    g.page(TEXT)[PAD_OFF as usize] = 0x90;
    assert_eq!(
        pad_error(&g),
        PadError::NotSyscall {
            va: RIP - 2,
            found: [0x90, 0x05]
        }
    );
    let mut g = Guest::new();
    set(g.page(L1), 10, pte(TEXT, pte_bits::NX | 0x25));
    assert_eq!(
        pad_error(&g),
        PadError::NotExecutable {
            va: RIP - 2,
            level: 1
        }
    );
    let mut g = Guest::new();
    set(g.page(L1), 10, 0);
    assert_eq!(
        pad_error(&g),
        PadError::NotMapped {
            va: RIP - 2,
            level: 1
        }
    );
    let mut g = Guest::new();
    let mut c = g.ctx();
    c.user_regs.rip = VA_BASE + (1 << 30) + 0x102; // L3 slot 1: empty
    g.set_ctx(&c);
    assert!(matches!(
        pad_error(&g),
        PadError::NotMapped { level: 3, .. }
    ));
    let mut g = Guest::new();
    let mut c = g.ctx();
    c.user_regs.rip = VA_BASE + 10 * 4096 + 0x1001; // pad at offset 0xfff
    g.set_ctx(&c);
    assert!(matches!(pad_error(&g), PadError::Straddles { .. }));
    let mut g = Guest::new();
    let mut c = g.ctx();
    c.user_regs.rip = 0x40_0102; // user half
    g.set_ctx(&c);
    assert!(matches!(pad_error(&g), PadError::NonCanonical { .. }));
}

#[test]
fn prepare_refuses_what_a_restore_must_refuse() {
    use RestoreError as E;
    let mut g = Guest::new();
    set(g.page(L2), 1, (0x1234 << 12) | 1);
    assert_eq!(
        refusal(&g),
        E::ForeignPte {
            pfn: L2,
            level: 2,
            index: 1,
            mfn: 0x1234
        }
    );

    let mut g = Guest::new();
    set(g.page(L2), 1, pte(20, 0x80 | 1));
    assert_eq!(
        refusal(&g),
        E::Superpage {
            pfn: L2,
            level: 2,
            index: 1
        }
    );

    let mut g = Guest::new();
    g.types[L4 as usize] = page_type::NORMAL;
    assert!(matches!(refusal(&g), E::VcpuFrameType { what: "cr3", .. }));

    let mut g = Guest::new();
    g.types[USER_L4 as usize] = page_type::L3;
    assert!(matches!(refusal(&g), E::VcpuFrameType { what: "cr1", .. }));

    let mut g = Guest::new();
    g.types[GDT as usize] = page_type::L1;
    assert!(matches!(
        refusal(&g),
        E::VcpuFrameType {
            what: "GDT frame",
            pfn: GDT,
            ..
        }
    ));

    let mut g = Guest::new();
    let mut c = g.ctx();
    c.gdt_frames[0] = 0x7777;
    g.set_ctx(&c);
    assert_eq!(
        refusal(&g),
        E::VcpuFrame {
            what: "GDT frame",
            mfn: 0x7777
        }
    );

    let mut g = Guest::new();
    let mut c = g.ctx();
    c.gdt_ents = 14 * 512 + 1;
    g.set_ctx(&c);
    assert_eq!(refusal(&g), E::GdtEnts(14 * 512 + 1));

    let mut g = Guest::new();
    g.types[41] = page_type::L1;
    assert!(matches!(
        refusal(&g),
        E::P2mFrameType {
            index: 1,
            pfn: 41,
            ..
        }
    ));

    let mut g = Guest::new();
    g.p2m_frames[2] = STORE;
    assert!(matches!(
        refusal(&g),
        E::P2mFrameType {
            index: 2,
            pfn: STORE,
            ..
        }
    ));

    let mut g = Guest::new();
    g.types[SI as usize] = page_type::L1;
    assert!(matches!(
        refusal(&g),
        E::Ring {
            what: "start_info",
            ..
        }
    ));

    for (store, what) in [
        (5000, "xenstore ring"),
        (HOLE, "xenstore ring"),
        (L3, "xenstore ring"),
        (CONSOLE, "xenstore ring (shared)"),
        (SI, "xenstore ring (shared)"),
    ] {
        let mut g = Guest::new();
        set(g.page(SI), 7, store);
        match refusal(&g) {
            E::Ring { what: w, pfn, .. } => assert_eq!((w, pfn), (what, store)),
            e => panic!("store pfn {store}: {e}"),
        }
    }

    let mut g = Guest::new();
    set(g.page(SI), 9, 2000);
    assert!(matches!(
        refusal(&g),
        E::Ring {
            what: "console ring",
            pfn: 2000,
            ..
        }
    ));

    let mut g = Guest::new();
    g.page(SI)[0] = b'X';
    assert_eq!(refusal(&g), E::StartInfoMagic { pfn: SI });

    let mut g = Guest::new();
    let mut c = g.ctx();
    c.user_regs.rdx = src_mfn(7);
    g.set_ctx(&c);
    assert_eq!(
        refusal(&g),
        E::StartInfoMfn {
            rdx: src_mfn(7),
            pfn: SI
        }
    );

    let mut g = Guest::new();
    g.nr_vcpus = 2;
    assert_eq!(refusal(&g), E::Vcpus(2));

    let mut g = Guest::new();
    g.p2m_frames.clear();
    assert_eq!(refusal(&g), E::NotACapture);

    let mut g = Guest::new();
    g.p2m[7] = g.p2m[8];
    assert_eq!(
        refusal(&g),
        E::DuplicateMfn {
            mfn: src_mfn(8),
            pfn: 8
        }
    );

    let mut g = Guest::new();
    g.types[7] = page_type::UNPOPULATED;
    assert_eq!(
        refusal(&g),
        E::P2mNotRam {
            pfn: 7,
            mfn: src_mfn(7)
        }
    );

    let mut g = Guest::new();
    g.p2m[7] = INVALID_MFN;
    assert_eq!(
        refusal(&g),
        E::RamWithoutMfn {
            ram: RAM_END - 1,
            mapped: RAM_END - 2
        }
    );

    // Tables too small for the capture: verified, but not restorable here.
    let mut st = Storage::new();
    st.index = vec![0; 100];
    let e = run(&Guest::new(), &mut st).0.unwrap_err();
    assert!(
        matches!(e, E::Storage(Shortfall::P2mIndex { have: 100 })),
        "{e}"
    );
}

#[test]
fn refusal_messages_fit_the_result_record() {
    let errs = [
        RestoreError::ForeignPte {
            pfn: u64::MAX,
            level: 4,
            index: 511,
            mfn: u64::MAX,
        },
        RestoreError::Pad(PadError::NotSyscall {
            va: u64::MAX,
            found: [0xff, 0xff],
        }),
        RestoreError::Pad(PadError::ForeignFrame {
            va: u64::MAX,
            level: 4,
            mfn: u64::MAX,
        }),
        RestoreError::Storage(Shortfall::TypesTable {
            pfns: u64::MAX,
            have: u64::MAX,
        }),
        RestoreError::VcpuFrameType {
            what: "cr1 (user L4)",
            pfn: u64::MAX,
            ty: 0xff,
            need: "an ordinary page",
        },
    ];
    for e in errs {
        let m = std::format!("{e}");
        assert!(m.len() <= crate::result::MSG_MAX, "{} bytes: {m}", m.len());
    }
}

/// Hostile captures: random damage to the structures `prepare` reads (page tables, start_info,
/// vCPU context, types, p2m, p2m frame list), each inside what the stream decoder accepts.
/// `prepare` must answer every one with Ok or a RestoreError, never a panic, and an accepted
/// one must still satisfy the restore's invariants.
#[test]
fn damaged_captures_are_refused_or_consistent_never_a_panic() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let base = Guest::new();
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..150 {
        let mut g = base.clone();
        for _ in 0..1 + rnd() % 3 {
            let r = rnd();
            match r % 8 {
                0 | 1 => {
                    let pfn = [L4, L3, L2, L1, USER_L4][(r >> 8) as usize % 5];
                    let v = match (r >> 16) % 3 {
                        0 => rnd(),
                        1 => pte(rnd() % (MAX_PFN + 5), rnd() & 0x8000_0000_0000_0fff),
                        _ => 0,
                    };
                    set(g.page(pfn), (rnd() % 512) as usize, v);
                }
                2 => {
                    let v = if r & 256 != 0 {
                        rnd() % (MAX_PFN + 5)
                    } else {
                        rnd()
                    };
                    set(g.page(SI), [7, 9, 0][(r >> 12) as usize % 3], v);
                }
                3 => {
                    let mut c = g.ctx();
                    let v = if r & 256 != 0 {
                        src_mfn(rnd() % (MAX_PFN + 5))
                    } else {
                        rnd()
                    };
                    match (r >> 12) % 6 {
                        0 => c.ctrlreg[3] = v << 12,
                        1 => c.ctrlreg[1] = v << 12,
                        2 => c.gdt_frames[(rnd() % 16) as usize] = v,
                        3 => c.gdt_ents = rnd() % 9000,
                        4 => c.user_regs.rip = VA_BASE + rnd() % (1 << 23),
                        _ => c.user_regs.rdx = v,
                    }
                    g.set_ctx(&c);
                }
                4 | 5 => {
                    let t = [0u8, 1, 2, 3, 4, 0x81, 0x84, 0x0f][(r >> 8) as usize % 8];
                    g.types[(rnd() % (MAX_PFN + 1)) as usize] = t;
                }
                6 => {
                    let pfn = (rnd() % (MAX_PFN + 1)) as usize;
                    g.p2m[pfn] = match r % 3 {
                        0 => INVALID_MFN,
                        1 => src_mfn(rnd() % (MAX_PFN + 1)),
                        _ => rnd() >> (r % 40),
                    };
                }
                _ => {
                    let i = (rnd() % 3) as usize;
                    g.p2m_frames[i] = rnd() % (MAX_PFN + 1);
                }
            }
        }
        // Keep what the stream decoder itself guarantees: RAM pages hold their contents.
        let (out, r, mut d) = run_any(&g, Storage::new());
        match out {
            None => refused += 1, // the receiver refused it (e.g. RAM over the frames)
            Some(Err(e)) => {
                assert!(std::format!("{e}").len() <= crate::result::MSG_MAX);
                refused += 1;
            }
            Some(Ok(p)) => {
                ok += 1;
                assert!(d.loader_pfn(p.pad.mfn).is_some());
                let mut b = [0u8; PAGE_SIZE];
                d.with_frame(d.loader_pfn(p.pad.mfn).unwrap(), &mut |f| {
                    b.copy_from_slice(f)
                });
                let o = (p.pad.va & 0xfff) as usize;
                assert_eq!(b[o..o + 2], pad::SYSCALL);
                assert_eq!(
                    p.m2p_updates(&r.records, &r.plan, &d).count() as u64,
                    p.ram_pages
                );
            }
        }
    }
    eprintln!("damaged captures: {ok} accepted, {refused} refused");
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
}

/// Receive `g`'s stream into `st` and run `prepare`; None if the receiver refused the stream.
fn run_any(
    g: &Guest,
    st: Storage,
) -> (
    Option<Result<Prepared, RestoreError>>,
    Receiver<'static>,
    FakeDomain,
) {
    // Leak the storage (tests only) so the receiver can outlive this frame.
    let st: &'static mut Storage = Box::leak(Box::new(st));
    let mut r = Receiver::with_records(
        FrameBook::new(&mut st.bits, NR_PAGES, FIRST_FREE),
        Plan::new(&mut st.slots),
        Records::new(&mut st.types, &mut st.index, &mut st.frames),
    );
    let mut d = FakeDomain::default();
    r.begin(0);
    let res = r.feed(&g.stream(), &mut d, 1).expect("a result");
    if res.status != Status::Ok {
        return (None, r, d);
    }
    let out = prepare(
        &r.records,
        &mut r.plan,
        &mut r.book,
        &FakeDomain::default(),
        &mut d,
        &own(),
    );
    (Some(out), r, d)
}

/// The refusals the receiver's own checks make unreachable (the decoder enforces coverage),
/// kept because `prepare` must not rely on its caller: built on `Records` directly.
#[test]
fn incomplete_records_are_refused() {
    use checkpoint_stream::Capture;
    let ctx = Guest::new().ctx;
    let build = |max_pfn: u64, types_upto: u64, frames: u64, vcpu: bool, place: bool| {
        let n = max_pfn as usize + 1;
        let (mut t, mut i, mut f) = (vec![0u8; n], vec![0u64; n], vec![0u64; 4]);
        let mut r = Records::new(&mut t, &mut i, &mut f);
        r.start(max_pfn);
        r.set_capture(&Capture {
            start_info_pfn: SI,
            nr_vcpus: 1,
            pause_ns: 0,
        });
        r.add_types(0, &vec![page_type::NORMAL; types_upto as usize]);
        r.add_p2m(0, (0..types_upto).map(src_mfn));
        r.add_p2m_frames(0, (0..frames).map(|k| 40 + k));
        if vcpu {
            r.add_vcpu(0, VcpuKind::Basic, &ctx);
        }
        r.seal();
        let (mut bits, mut slots) = (vec![0u64; 64], vec![0u32; n]);
        let mut book = FrameBook::new(&mut bits, 4000, 100);
        let mut plan = Plan::new(&mut slots);
        plan.start(max_pfn).unwrap();
        if place {
            for p in 0..types_upto {
                plan.place(p, &mut book).unwrap();
            }
        }
        let mut d = FakeDomain::default();
        prepare(
            &r,
            &mut plan,
            &mut book,
            &FakeDomain::default(),
            &mut d,
            &own(),
        )
        .unwrap_err()
    };
    assert_eq!(build(63, 32, 1, true, true), RestoreError::TypesMissing);
    assert_eq!(
        build(600, 601, 1, true, true),
        RestoreError::P2mFrameCount { have: 1, need: 2 }
    );
    assert_eq!(build(63, 64, 1, false, true), RestoreError::NoVcpu);
    assert_eq!(
        build(63, 64, 1, true, false),
        RestoreError::RamNotPlaced { pfn: 0 }
    );
    assert_eq!(build(63, 64, 0, true, true), RestoreError::NotACapture);
}
