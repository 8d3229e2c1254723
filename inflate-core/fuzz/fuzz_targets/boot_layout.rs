//! Fuzz the kernel side of stage 2's builder: `boot::Kernel::parse` (an uploaded kernel ELF
//! and its Xen notes), then the layout, every initial page table, start_info, every kernel
//! page and the frame numbering for whatever parses. Input: 8 bytes nr_pages, 8 bytes initrd
//! length, then the ELF. Every input must end in a typed error or a layout whose invariants
//! hold, never a panic.
#![no_main]

use inflate_core::boot::{startinfo, Kernel, Layout, Numbering, Rings};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let nr = u64::from_le_bytes(data[..8].try_into().unwrap()) % (1 << 18) + 1;
    let initrd = u64::from_le_bytes(data[8..16].try_into().unwrap()) % (256 << 20);
    let Ok(k) = Kernel::parse(&data[16..]) else {
        return;
    };
    let mut page = [0u8; 4096];
    for i in 0..k.pages().min(64) {
        k.page(i, &mut page);
    }
    let Ok(l) = Layout::new(&k, nr, initrd) else {
        return;
    };
    assert!(l.end <= nr && l.mapped_pages() <= nr && l.kernel.end() <= l.mapped_pages());
    assert!(l.start_info_pfn < l.mapped_pages() && l.bootstack_pfn < l.mapped_pages());
    for (p, level) in l.page_tables() {
        assert!((1..=4).contains(&level) && p < l.end);
        assert!(l.write_table(p, &|x| x + 7, &mut page));
    }
    let rings = Rings {
        shared_info: 0x1000,
        store_mfn: 1,
        store_evtchn: 1,
        console_mfn: 2,
        console_evtchn: 2,
    };
    startinfo::write(&l, &rings, b"console=hvc0", &mut page);
    if nr <= 1 << 16 {
        let free = [2..nr];
        let n = Numbering {
            nr_pages: nr,
            free: &free,
            store: (0, l.xenstore_pfn),
            console: (1, l.console_pfn),
            fixed: None,
            fresh_end: l.end,
            spare: 3,
        };
        let mut t = vec![0u64; nr as usize];
        if n.fill(&mut t).is_ok() {
            let mut seen = vec![false; nr as usize];
            for &o in &t {
                assert!(!seen[o as usize], "old pfn {o} twice");
                seen[o as usize] = true;
            }
        }
    }
});
