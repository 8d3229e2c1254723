//! Host tests of the boot layout: the project's real guest kernel (a skeleton of its vmlinux:
//! headers and notes, testdata/guest-vmlinux-skeleton.zlib) laid out for the domain shape of
//! the real capture in testdata/capture-128m.zlib, whose start_info the toolstack's builder
//! wrote; synthetic ELFs for every refusal; hostile variants that must never panic.
use super::elf::{note, ElfError, Kernel};
use super::layout::{Layout, LayoutError, L1_PROT, L234_PROT, PAGE, SIF_MOD_START_PFN};
use super::numbering::{Numbering, NumberingError};
use super::startinfo::{self, Rings};
use checkpoint_stream::model::FullCheckpoint;
use std::collections::{HashMap, HashSet};
use std::vec::Vec;

const SKELETON: &[u8] = include_bytes!("../../testdata/guest-vmlinux-skeleton.zlib");
const CAPTURE: &[u8] = include_bytes!("../../testdata/capture-128m.zlib");

fn rd(p: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(p[o..o + 8].try_into().unwrap())
}

fn guest_kernel() -> Vec<u8> {
    miniz_oxide::inflate::decompress_to_vec_zlib(SKELETON).expect("zlib test data")
}

#[test]
fn the_guest_kernel_parses_like_libelf_reads_it() {
    let img = guest_kernel();
    let k = Kernel::parse(&img).unwrap();
    assert_eq!(k.virt_base, 0xffff_ffff_8000_0000);
    assert_eq!(k.paddr_offset, 0);
    assert_eq!((k.pstart, k.pend), (0x100_0000, 0x1a1_8000));
    assert_eq!(k.virt_kstart, 0xffff_ffff_8100_0000);
    assert_eq!(k.entry, 0xffff_ffff_818f_69f0);
    assert_eq!(k.p2m_base, Some(0x80_0000_0000));
    assert!(k.unmapped_initrd);
    assert_eq!(
        k.hypercall_page, None,
        "6.12 dropped the hypercall page note"
    );
    assert_eq!(k.features_required, 1, "!writable_page_tables");
    assert_eq!(k.guest_os, b"linux");
    // The .data..percpu segment has virtual address 0: placement is by physical address.
    assert_eq!(k.segments().len(), 4);
    assert_eq!(k.pages(), 0x1a18 - 0x1000);
}

/// The real capture's start_info as the toolstack's builder wrote it (Linux replaced only
/// pt_base and mfn_list with its own addresses and the ring mfns with pfns at suspend).
struct Built {
    nr_pages: u64,
    flags: u64,
    start_info_pfn: u64,
    store_pfn: u64,
    console_pfn: u64,
    pt_base_pfn: u64,
    nr_pt_frames: u64,
    mod_start: u64,
    mod_len: u64,
    first_p2m_pfn: u64,
    nr_p2m_frames: u64,
}

fn built_by_the_toolstack() -> Built {
    let stream = miniz_oxide::inflate::decompress_to_vec_zlib(CAPTURE).unwrap();
    let full = FullCheckpoint::from_bytes(&stream).unwrap();
    let k = &full.checkpoint;
    let si = k.page(k.capture.start_info_pfn).unwrap();
    // Linux's direct map starts at 0xffff888000000000 (no KASLR in the guest config).
    let pt_base = rd(si, 88);
    Built {
        nr_pages: rd(si, 32),
        flags: rd(si, 48) & 0xffff_ffff,
        start_info_pfn: k.capture.start_info_pfn,
        store_pfn: rd(si, 56),
        console_pfn: rd(si, 72),
        pt_base_pfn: (pt_base - 0xffff_8880_0000_0000) >> 12,
        nr_pt_frames: rd(si, 96),
        mod_start: rd(si, 112),
        mod_len: rd(si, 120),
        first_p2m_pfn: rd(si, 1152),
        nr_p2m_frames: rd(si, 1160),
    }
}

#[test]
fn the_layout_is_the_toolstacks_for_the_real_guest() {
    let b = built_by_the_toolstack();
    assert_eq!(b.nr_pages, 32768);
    let img = guest_kernel();
    let k = Kernel::parse(&img).unwrap();
    // Any initrd length that rounds to the captured mod_len gives the builder's layout.
    let l = Layout::new(&k, b.nr_pages, b.mod_len - 100).unwrap();
    assert_eq!(l.kernel.pfn, 0x1000);
    assert_eq!(l.start_info_pfn, b.start_info_pfn);
    assert_eq!(l.xenstore_pfn, b.store_pfn);
    assert_eq!(l.console_pfn, b.console_pfn);
    assert_eq!(l.pgtables.pfn, b.pt_base_pfn);
    assert_eq!(l.mappings[0].tables, b.nr_pt_frames);
    assert_eq!(l.flags as u64, b.flags);
    assert_eq!(l.flags, SIF_MOD_START_PFN);
    assert_eq!((l.mod_start, l.mod_len), (b.mod_start, b.mod_len));
    assert_eq!(
        (l.p2m.pfn, l.p2m_seg_pages),
        (b.first_p2m_pfn, b.nr_p2m_frames)
    );
    assert!(l.p2m_outside);
    assert_eq!(l.p2m.vstart, 0x80_0000_0000);
    assert_eq!(l.bootstack_pfn, l.pgtables.end());
    assert_eq!(l.virt_pgtab_end - l.virt_base, 28 << 20);
    assert!(
        l.mapped_pages() - (l.bootstack_pfn + 1) >= 128,
        "512 KiB padding"
    );
    assert_eq!(l.end, b.first_p2m_pfn + b.nr_p2m_frames);
    assert_eq!(l.boot_rsp(), l.va(l.bootstack_pfn + 1));
}

/// Walk `va` through tables given as pfn -> page, with mfn = pfn + OFF.
const OFF: u64 = 0x10_0000;
fn walk(tables: &HashMap<u64, [u8; 4096]>, l4: u64, va: u64) -> Option<(u64, u64)> {
    let mut t = l4;
    let mut e = 0;
    for (lvl, shift) in [39u32, 30, 21, 12].into_iter().enumerate() {
        let i = ((va >> shift) & 511) as usize;
        e = rd(tables.get(&t)?, i * 8);
        if e & 1 == 0 {
            return None;
        }
        let prot = if lvl < 3 { L234_PROT } else { e & 0xfff };
        assert_eq!(e & 0xfff, prot, "level {} entry flags", 4 - lvl);
        t = ((e & 0x000f_ffff_ffff_f000) >> 12) - OFF;
    }
    Some((t, e & 0xfff))
}

#[test]
fn the_initial_tables_map_the_bootstrap_region_and_the_p2m_list() {
    let img = guest_kernel();
    let k = Kernel::parse(&img).unwrap();
    let l = Layout::new(&k, 32768, 7 << 20).unwrap();
    let mfn = |p: u64| p + OFF;
    let mut tables = HashMap::new();
    let mut levels = [0; 5];
    for (pfn, level) in l.page_tables() {
        let mut page = [0u8; 4096];
        assert!(l.write_table(pfn, &mfn, &mut page));
        assert!(tables.insert(pfn, page).is_none(), "table pfn {pfn} twice");
        levels[level as usize] += 1;
    }
    assert_eq!(
        levels,
        [0, 14 + 1, 1 + 1, 1 + 1, 1],
        "L1s, L2s, L3s, one L4"
    );
    assert!(!l.write_table(l.kernel.pfn, &mfn, &mut [0; 4096]));
    let l4 = l.l4_pfn();
    assert_eq!(l4, l.pgtables.pfn);
    let present: Vec<usize> = (0..512)
        .filter(|&i| rd(&tables[&l4], i * 8) & 1 != 0)
        .collect();
    assert_eq!(
        present,
        [1, 511],
        "the p2m's and the kernel's L4 slots, nothing of Xen's"
    );
    let pt: HashSet<u64> = l.page_tables().map(|(p, _)| p).collect();
    for p in 0..l.mapped_pages() {
        let (got, flags) = walk(&tables, l4, l.va(p)).unwrap_or_else(|| panic!("pfn {p}"));
        assert_eq!(got, p);
        let want = if pt.contains(&p) {
            L1_PROT & !2
        } else {
            L1_PROT
        };
        assert_eq!(flags, want, "pfn {p}");
    }
    assert_eq!(walk(&tables, l4, l.virt_pgtab_end), None);
    assert_eq!(walk(&tables, l4, l.virt_base - PAGE), None);
    for i in 0..l.p2m.pages {
        assert_eq!(
            walk(&tables, l4, l.p2m.vstart + i * PAGE),
            Some((l.p2m.pfn + i, L1_PROT))
        );
    }
    assert_eq!(walk(&tables, l4, l.p2m.vstart + l.p2m.pages * PAGE), None);
    // The p2m mapping's own tables follow its list and are mapped nowhere.
    assert!(l
        .page_tables()
        .skip(l.mappings[0].tables as usize)
        .all(|(p, _)| p >= l.p2m.pfn + l.p2m.pages && p < l.end));
}

#[test]
fn start_info_carries_the_layout_and_the_domains_rings() {
    let img = guest_kernel();
    let k = Kernel::parse(&img).unwrap();
    let l = Layout::new(&k, 32768, 5000).unwrap();
    let rings = Rings {
        shared_info: 0x75c4_5000,
        store_mfn: 0x1234,
        store_evtchn: 1,
        console_mfn: 0x1235,
        console_evtchn: 2,
    };
    let mut p = [0xffu8; 4096];
    let long = [b'x'; 2000];
    startinfo::write(&l, &rings, &long, &mut p);
    assert_eq!(&p[..15], b"xen-3.0-x86_64\0");
    assert_eq!(rd(&p, 32), 32768);
    assert_eq!(rd(&p, 40), rings.shared_info);
    assert_eq!(rd(&p, 48) & 0xffff_ffff, SIF_MOD_START_PFN as u64);
    assert_eq!((rd(&p, 56), rd(&p, 64) & 0xffff_ffff), (0x1234, 1));
    assert_eq!((rd(&p, 72), rd(&p, 80) & 0xffff_ffff), (0x1235, 2));
    assert_eq!(rd(&p, 88), l.va(l.pgtables.pfn));
    assert_eq!(rd(&p, 96), 17);
    assert_eq!(rd(&p, 104), 0x80_0000_0000);
    assert_eq!(
        (rd(&p, 112), rd(&p, 120)),
        (0x1c00, 8192),
        "pfn and page-rounded length"
    );
    assert_eq!((rd(&p, 1152), rd(&p, 1160)), (l.p2m.pfn, 2 + 3 + 64 - 2));
    assert!(p[128..128 + 1023].iter().all(|&c| c == b'x'));
    assert_eq!(
        p[128 + 1023],
        0,
        "command line cut at 1023 bytes, NUL-terminated"
    );
    startinfo::write(&l, &rings, b"console=hvc0\0ignored", &mut p);
    assert_eq!(&p[128..141], b"console=hvc0\0");
    assert!(p[141..1152].iter().all(|&c| c == 0));
}

#[test]
fn numbering_gives_the_bootstrap_region_free_frames_and_keeps_everything() {
    let nr = 4096u64;
    let free = [100..200, 1000..3000, 3500..4000];
    let n = Numbering {
        nr_pages: nr,
        free: &free,
        store: (5, 1500),
        console: (6, 1501),
        fixed: None,
        fresh_end: 2000,
        spare: 3,
    };
    let mut t = vec![0u64; nr as usize];
    n.fill(&mut t).unwrap();
    let seen: HashSet<u64> = t.iter().copied().collect();
    assert_eq!(seen.len(), nr as usize, "a bijection");
    assert!(t.iter().all(|&o| o < nr));
    assert_eq!((t[1500], t[1501]), (5, 6));
    let is_free = |p: u64| free.iter().any(|r| r.contains(&p));
    assert!(t[..2000]
        .iter()
        .enumerate()
        .all(|(k, &o)| k == 1500 || k == 1501 || is_free(o)));
    assert_eq!(&t[..3], &[100, 101, 102]);
    let mut sp = [0u64; 3];
    assert_eq!(n.spares(&mut sp).unwrap(), 3);
    assert_eq!(sp, [3997, 3998, 3999]);
    assert!(sp.iter().all(|s| !t[..2000].contains(s)));
    // Not enough free frames, bad ranges, bad rings.
    let small = Numbering {
        fresh_end: 2601,
        ..n
    };
    assert_eq!(
        small.fill(&mut t),
        Err(NumberingError::NotEnoughFree {
            free: 2600,
            needed: 2602
        })
    );
    let overlap = [100..200, 150..300];
    assert_eq!(
        Numbering {
            free: &overlap,
            ..n
        }
        .fill(&mut t),
        Err(NumberingError::BadFreeRanges)
    );
    let beyond = [100..200, 300..5000];
    assert_eq!(
        Numbering { free: &beyond, ..n }.fill(&mut t),
        Err(NumberingError::BadFreeRanges)
    );
    assert_eq!(
        Numbering {
            console: (5, 1501),
            ..n
        }
        .fill(&mut t),
        Err(NumberingError::BadRing)
    );
    assert_eq!(n.fill(&mut t[..10]), Err(NumberingError::TableTooSmall));
    // Rings inside a free range are not handed out twice.
    let with_rings = [0..3000, 3000..3001];
    let m = Numbering {
        free: &with_rings,
        ..n
    };
    m.fill(&mut t).unwrap();
    assert_eq!(t.iter().copied().collect::<HashSet<_>>().len(), nr as usize);
    // The initrd's frames, already in place, keep their contents: a fixed run.
    let f = Numbering {
        fixed: Some((1800, 300, 50)),
        ..n
    };
    f.fill(&mut t).unwrap();
    assert_eq!(t.iter().copied().collect::<HashSet<_>>().len(), nr as usize);
    assert_eq!(&t[1800..1850], (300..350).collect::<Vec<_>>().as_slice());
    assert!(t[..1800]
        .iter()
        .chain(&t[1850..2000])
        .all(|&o| o == 5 || o == 6 || is_free(o)));
    for k in 0..2000 {
        assert_eq!(f.old_of(k).unwrap(), t[k as usize]);
    }
    assert_eq!(
        t[1850],
        1000 + 1800 - 2 - 100,
        "free pfns continue after the run"
    );
    let mut sp = [0u64; 3];
    f.spares(&mut sp).unwrap();
    assert!(sp.iter().all(|s| !t[..2000].contains(s) && is_free(*s)));
    assert_eq!(
        Numbering {
            fixed: Some((1800, 150, 10)),
            ..n
        }
        .fill(&mut t),
        Err(NumberingError::BadFixed),
        "free frames"
    );
    assert_eq!(
        Numbering {
            fixed: Some((1990, 300, 20)),
            ..n
        }
        .fill(&mut t),
        Err(NumberingError::BadFixed),
        "past fresh_end"
    );
    assert_eq!(
        Numbering {
            fixed: Some((1490, 300, 20)),
            ..n
        }
        .fill(&mut t),
        Err(NumberingError::BadFixed),
        "over a ring"
    );
}

// ---- synthetic ELFs ----

struct Elf {
    notes: Vec<(u32, Vec<u8>)>,
    segs: Vec<(u64, Vec<u8>, u64)>, // paddr, file bytes, memsz
    entry: u64,
}

fn num(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}
fn s(v: &str) -> Vec<u8> {
    let mut b = v.as_bytes().to_vec();
    b.push(0);
    b
}

impl Elf {
    fn linux() -> Elf {
        Elf {
            notes: vec![
                (note::GUEST_OS, s("linux")),
                (note::XEN_VERSION, s("xen-3.0")),
                (note::VIRT_BASE, num(0xffff_ffff_8000_0000)),
                (note::PADDR_OFFSET, num(0)),
                (note::ENTRY, num(0xffff_ffff_8100_0010)),
                (
                    note::FEATURES,
                    s("!writable_page_tables|pae_pgdir_above_4gb"),
                ),
            ],
            segs: vec![
                (0x100_0000, vec![0xaa; 5000], 0x3000),
                (0x100_3000, vec![0xbb; 10], 0x2000),
            ],
            entry: 0,
        }
    }
    fn build(&self) -> Vec<u8> {
        let mut notes = Vec::new();
        for (t, d) in &self.notes {
            notes.extend_from_slice(&4u32.to_le_bytes());
            notes.extend_from_slice(&(d.len() as u32).to_le_bytes());
            notes.extend_from_slice(&t.to_le_bytes());
            notes.extend_from_slice(b"Xen\0");
            notes.extend_from_slice(d);
            while notes.len() % 4 != 0 {
                notes.push(0);
            }
        }
        let phnum = self.segs.len() + 1;
        let mut off = 64 + 56 * phnum as u64;
        let mut out = vec![0u8; off as usize];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4..7].copy_from_slice(&[2, 1, 1]);
        out[16..18].copy_from_slice(&2u16.to_le_bytes());
        out[18..20].copy_from_slice(&62u16.to_le_bytes());
        out[24..32].copy_from_slice(&self.entry.to_le_bytes());
        out[32..40].copy_from_slice(&64u64.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
        let ph = |i: usize,
                  ty: u32,
                  off: u64,
                  paddr: u64,
                  filesz: u64,
                  memsz: u64,
                  out: &mut Vec<u8>| {
            let h = 64 + 56 * i;
            out[h..h + 4].copy_from_slice(&ty.to_le_bytes());
            out[h + 4..h + 8].copy_from_slice(&7u32.to_le_bytes());
            out[h + 8..h + 16].copy_from_slice(&off.to_le_bytes());
            out[h + 16..h + 24].copy_from_slice(&(paddr | 0xffff_ffff_8000_0000).to_le_bytes());
            out[h + 24..h + 32].copy_from_slice(&paddr.to_le_bytes());
            out[h + 32..h + 40].copy_from_slice(&filesz.to_le_bytes());
            out[h + 40..h + 48].copy_from_slice(&memsz.to_le_bytes());
        };
        for (i, (paddr, bytes, memsz)) in self.segs.iter().enumerate() {
            ph(i, 1, off, *paddr, bytes.len() as u64, *memsz, &mut out);
            out.extend_from_slice(bytes);
            off += bytes.len() as u64;
        }
        ph(
            self.segs.len(),
            4,
            off,
            0,
            notes.len() as u64,
            notes.len() as u64,
            &mut out,
        );
        out.extend_from_slice(&notes);
        out
    }
    fn with(mut self, ty: u32, d: Vec<u8>) -> Elf {
        self.notes.retain(|(t, _)| *t != ty);
        self.notes.push((ty, d));
        self
    }
    fn without(mut self, ty: u32) -> Elf {
        self.notes.retain(|(t, _)| *t != ty);
        self
    }
}

#[test]
fn a_synthetic_kernel_is_loaded_by_physical_address() {
    let img = Elf::linux().build();
    let k = Kernel::parse(&img).unwrap();
    assert_eq!((k.pstart, k.pend), (0x100_0000, 0x100_5000));
    assert_eq!(k.pages(), 5);
    let mut p = [0u8; 4096];
    k.page(0, &mut p);
    assert!(p.iter().all(|&c| c == 0xaa));
    k.page(1, &mut p);
    assert!(
        p[..5000 - 4096].iter().all(|&c| c == 0xaa) && p[5000 - 4096..].iter().all(|&c| c == 0)
    );
    k.page(2, &mut p);
    assert!(p.iter().all(|&c| c == 0), ".bss");
    k.page(3, &mut p);
    assert!(p[..10].iter().all(|&c| c == 0xbb) && p[10..].iter().all(|&c| c == 0));
    // No INIT_P2M, no MOD_START_PFN: p2m list and initrd inside the initial mapping, the
    // initrd as a virtual address, as the builder does for such kernels.
    let l = Layout::new(&k, 16384, 10_000).unwrap();
    let initrd = l.initrd.unwrap();
    assert_eq!(initrd.pfn, l.kernel.end());
    assert_eq!(
        (l.mod_start, l.mod_len, l.flags),
        (l.va(initrd.pfn), 10_000, 0)
    );
    assert_eq!(l.p2m.pfn, initrd.end());
    assert_eq!(l.p2m.pages, 16384 * 8 / 4096);
    assert_eq!(l.p2m.vstart, l.va(l.p2m.pfn));
    assert_eq!(l.start_info_pfn, l.p2m.end());
    assert!(!l.p2m_outside);
    assert_eq!(l.nr_mappings, 1);
    assert_eq!(l.end, l.mapped_pages());
    // No initrd at all.
    let l = Layout::new(&k, 16384, 0).unwrap();
    assert_eq!((l.initrd, l.mod_start, l.mod_len), (None, 0, 0));
}

#[test]
fn hypercall_page_and_entry_defaults() {
    let img = Elf::linux()
        .with(note::HYPERCALL_PAGE, num(0xffff_ffff_8100_2000))
        .build();
    let k = Kernel::parse(&img).unwrap();
    let l = Layout::new(&k, 16384, 0).unwrap();
    assert_eq!(l.hypercall_pfn, Some(0x1002));
    let mut e = Elf::linux().without(note::ENTRY);
    e.entry = 0xffff_ffff_8100_0020;
    let img = e.build();
    assert_eq!(
        Kernel::parse(&img).unwrap().entry,
        0xffff_ffff_8100_0020,
        "e_entry"
    );
    let img = Elf::linux()
        .with(note::ENTRY, 0x8100_0010u32.to_le_bytes().to_vec())
        .build();
    assert_eq!(
        Kernel::parse(&img).unwrap_err(),
        ElfError::AddressesOutOfBounds,
        "4-byte entry is not a kernel address"
    );
}

#[test]
fn malformed_kernels_are_refused_with_their_reason() {
    let good = Elf::linux().build();
    let bad = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        Kernel::parse(&b).map(|_| ())
    };
    assert_eq!(Kernel::parse(&good[..40]).unwrap_err(), ElfError::TooShort);
    assert_eq!(bad(&|b| b[0] = 0), Err(ElfError::NotElf));
    assert_eq!(bad(&|b| b[4] = 1), Err(ElfError::NotElf64Le));
    assert_eq!(bad(&|b| b[18] = 3), Err(ElfError::NotX86_64));
    assert_eq!(bad(&|b| b[16] = 3), Err(ElfError::NotExecutable));
    assert_eq!(bad(&|b| b[54] = 32), Err(ElfError::BadProgramHeaders));
    assert_eq!(
        bad(&|b| b[56] = 200),
        Err(ElfError::TooManyProgramHeaders(200))
    );
    assert_eq!(
        bad(&|b| b[32..40].copy_from_slice(&u64::MAX.to_le_bytes())),
        Err(ElfError::BadProgramHeaders)
    );
    assert_eq!(
        bad(&|b| b[64 + 32..64 + 40].copy_from_slice(&(1u64 << 40).to_le_bytes())),
        Err(ElfError::SegmentOutOfBounds(0))
    );
    assert_eq!(
        bad(&|b| b[64 + 8..64 + 16].copy_from_slice(&u64::MAX.to_le_bytes())),
        Err(ElfError::SegmentOutOfBounds(0))
    );
    assert_eq!(
        bad(&|b| b[64 + 40..64 + 48].copy_from_slice(&1u64.to_le_bytes())),
        Err(ElfError::SegmentOutOfBounds(0)),
        "filesz > memsz"
    );
    assert_eq!(
        bad(&|b| b[64 + 24..64 + 32].copy_from_slice(&u64::MAX.to_le_bytes())),
        Err(ElfError::SegmentOutOfBounds(0))
    );
    let refuse = |e: Elf| Kernel::parse(&e.build()).unwrap_err();
    assert_eq!(
        refuse(Elf {
            notes: vec![],
            ..Elf::linux()
        }),
        ElfError::NoXenNotes
    );
    assert_eq!(
        refuse(Elf::linux().with(note::GUEST_OS, s("netbsd"))),
        ElfError::NotForGenericLoader
    );
    assert_eq!(
        refuse(Elf::linux().with(note::XEN_VERSION, s("xen-2.0"))),
        ElfError::NotXen3
    );
    assert_eq!(
        refuse(Elf::linux().with(note::FEATURES, s("!auto_translated_physmap"))),
        ElfError::UnsupportedFeature(2)
    );
    assert_eq!(
        refuse(Elf::linux().with(note::FEATURES, s("!dom0"))),
        ElfError::UnsupportedFeature(11)
    );
    assert_eq!(
        refuse(Elf::linux().with(note::FEATURES, s("writable_page_tables|teleport"))),
        ElfError::UnknownFeature
    );
    assert_eq!(
        refuse(Elf::linux().with(note::VIRT_BASE, vec![1, 2, 3])),
        ElfError::BadNumericNote(note::VIRT_BASE)
    );
    assert_eq!(
        refuse(Elf::linux().without(note::VIRT_BASE)),
        ElfError::PaddrOffsetWithoutVirtBase
    );
    assert_eq!(
        refuse(Elf::linux().with(note::ENTRY, num(0xffff_ffff_9000_0000))),
        ElfError::AddressesOutOfBounds
    );
    assert_eq!(
        refuse(Elf::linux().with(note::VIRT_BASE, num(0xffff_ffff_ff00_0000))),
        ElfError::AddressesOutOfBounds
    );
    assert_eq!(
        refuse(Elf::linux().with(note::INIT_P2M, num(0xffff_ffff_8100_1000))),
        ElfError::P2mBaseInKernel
    );
    assert_eq!(
        refuse(Elf::linux().with(note::HYPERCALL_PAGE, num(0xffff_ffff_8100_0800))),
        ElfError::AddressesOutOfBounds
    );
    assert_eq!(
        refuse(Elf::linux().with(note::BSD_SYMTAB, s("yes"))),
        ElfError::BsdSymtab
    );
    let mut e = Elf::linux();
    e.segs[0].0 = 0x100_0800;
    e.notes.retain(|(t, _)| *t != note::ENTRY);
    e.entry = 0xffff_ffff_8100_0900;
    assert_eq!(refuse(e), ElfError::UnalignedKernel(0x100_0800));
    // A note whose descriptor runs past its segment.
    let mut b = good.clone();
    let n = b.len();
    let first_note = n - Elf::linux()
        .notes
        .iter()
        .map(|(_, d)| 16 + d.len().next_multiple_of(4))
        .sum::<usize>();
    b[first_note + 4..first_note + 8].copy_from_slice(&1_000_000u32.to_le_bytes());
    assert_eq!(
        Kernel::parse(&b).unwrap_err(),
        ElfError::BadNote(first_note)
    );
    b[first_note + 4..first_note + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        Kernel::parse(&b).unwrap_err(),
        ElfError::BadNote(first_note)
    );
}

#[test]
fn layouts_that_do_not_fit_are_refused() {
    let img = guest_kernel();
    let k = Kernel::parse(&img).unwrap();
    assert!(
        matches!(Layout::new(&k, 4096, 0), Err(LayoutError::TooSmall { .. })),
        "16 MiB: the kernel starts at 16 MiB"
    );
    assert!(
        matches!(Layout::new(&k, 7000, 0), Err(LayoutError::TooSmall { .. })),
        "no room for the 4 MiB-rounded mapping"
    );
    assert!(Layout::new(&k, 8192, 0).is_ok());
    assert!(matches!(
        Layout::new(&k, 8192, 4 << 20),
        Err(LayoutError::TooSmall { .. })
    ));
    assert_eq!(
        Layout::new(&k, 8192, u64::MAX),
        Err(LayoutError::InitrdTooLarge(u64::MAX))
    );
}

/// xorshift, deterministic.
fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn damaged_kernels_are_refused_or_laid_out_never_a_panic() {
    let real = guest_kernel();
    let synth = Elf::linux()
        .with(note::INIT_P2M, num(0x80_0000_0000))
        .build();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let (mut ok, mut refused) = (0, 0);
    // Damaged in place and repaired after each round: no 14 MB copy per variant.
    let (mut synth, mut real) = (synth, real);
    for round in 0..3000 {
        let base = if round % 2 == 0 {
            &mut synth
        } else {
            &mut real
        };
        // Damage the headers and the notes: the bytes parsing reads.
        let note_off = if round % 2 == 0 {
            base.len() - 200
        } else {
            0x96f98c
        };
        let mut saved = Vec::new();
        for _ in 0..1 + rng(&mut seed) % 4 {
            let r = rng(&mut seed);
            let at = if r % 2 == 0 {
                (r >> 8) as usize % 400
            } else {
                note_off + (r >> 8) as usize % 0x1a8
            };
            if at < base.len() {
                saved.push((at, base[at]));
                base[at] = (rng(&mut seed) & 0xff) as u8;
            }
        }
        let len = if rng(&mut seed) % 8 == 0 {
            (rng(&mut seed) as usize) % base.len()
        } else {
            base.len()
        };
        let b = &base[..len];
        match Kernel::parse(b) {
            Ok(k) => {
                ok += 1;
                let nr = 1 + rng(&mut seed) % 300_000;
                if let Ok(l) = Layout::new(&k, nr, rng(&mut seed) % (64 << 20)) {
                    assert!(l.end <= nr && l.mapped_pages() <= nr);
                    let mut page = [0u8; 4096];
                    for (p, _) in l.page_tables() {
                        assert!(l.write_table(p, &|x| x, &mut page));
                    }
                    k.page(k.pages() - 1, &mut page);
                }
            }
            Err(_) => refused += 1,
        }
        for (at, v) in saved.into_iter().rev() {
            base[at] = v;
        }
    }
    assert!(ok > 100 && refused > 100, "ok {ok}, refused {refused}");
}
