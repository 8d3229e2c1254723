//! The PV domain builder run from inside the domain, and the hand-over to the new kernel
//! (docs/bootstrap.md, "Builder"). The pure work (the kernel's ELF and notes, the layout the
//! toolstack's builder would make, the initial page tables, start_info, the new pfn numbering)
//! is `inflate_core::boot`; this module writes it into the domain's free frames and does what
//! needs Xen, each hypercall's rc on the console:
//!
//! Phase A (recoverable; an error goes to the client and the domain powers off):
//! parse and lay out; write the kernel's pages, the p2m list, start_info, the page tables, the
//! boot stack and the trampoline into free frames through stage 1's arena (the initrd stays in
//! the frames it arrived in); unmap the arena's view of every new table frame; map the
//! trampoline at its kernel address in our own tables; pin the new L4 (Xen validates the whole
//! tree).
//!
//! Phase B (no way back): release the devices (stage 1: netfront to InitWait, connection
//! closed, console drained); M2P for every frame of the domain in the new numbering; shared_info
//! events reset; kernel stack; vm_assist; jump to the trampoline, which switches to the new L4,
//! unpins ours and enters the kernel.
use core::convert::Infallible;
use core::fmt::{self, Write};
use core::ops::Range;
use inflate_core::boot::layout::{Layout, PAGE};
use inflate_core::boot::{
    startinfo, ElfError, Kernel, LayoutError, Numbering, NumberingError, Rings,
};
use loader_abi::Services;
use xen_pv::hypercall as hc;
use xen_pv::{jump, mmu, shared_info};

/// Why the kernel could not be started (phase A only: after it, failures crash the domain).
#[derive(Debug)]
pub enum BootError {
    Elf(ElfError),
    Layout(LayoutError),
    Numbering(NumberingError),
    /// Something of this domain is not as stage 1 described it.
    Domain(&'static str),
    /// Xen refused a step (step, rc).
    Xen(&'static str, i64),
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootError::Elf(e) => write!(f, "kernel: {e}"),
            BootError::Layout(e) => write!(f, "layout: {e}"),
            BootError::Numbering(e) => write!(f, "memory: {e}"),
            BootError::Domain(s) => write!(f, "domain: {s}"),
            BootError::Xen(s, rc) => write!(f, "Xen refused {s} (rc {rc})"),
        }
    }
}

macro_rules! say {
    ($svc:expr, $($a:tt)*) => {{
        let _ = writeln!($svc.console_writer(), $($a)*);
    }};
}

/// 64-bit PV kernel stack segment (public/arch-x86/xen-x86_64.h FLAT_KERNEL_SS).
const FLAT_KERNEL_SS: u64 = 0xe02b;
/// VMASST_TYPE_writable_pagetables.
const VMASST_WRITABLE_PAGETABLES: u64 = 2;
/// The read-only M2P every 64-bit PV guest sees (public/arch-x86/xen-x86_64.h).
const MACH2PHYS_VIRT_START: u64 = 0xFFFF_8000_0000_0000;

/// The fields of our own start_info the builder reads.
struct Own {
    nr_pages: u64,
    shared_info: u64,
    store_mfn: u64,
    store_evtchn: u32,
    console_mfn: u64,
    console_evtchn: u32,
    pt_base: u64,
    mfn_list: u64,
}

impl Own {
    fn read(va: u64) -> Own {
        // SAFETY: stage 1 hands the address of Xen's start_info page, mapped read-only in its
        // boot mapping for the domain's life; the page is 4 KiB, copied out in one read.
        let page = unsafe { core::ptr::read_volatile(va as *const [u8; 4096]) };
        let q = |o: usize| u64::from_le_bytes(page[o..o + 8].try_into().unwrap_or([0; 8]));
        let d = |o: usize| u32::from_le_bytes(page[o..o + 4].try_into().unwrap_or([0; 4]));
        // Offsets: public/xen.h `struct start_info`, x86_64.
        Own {
            nr_pages: q(32),
            shared_info: q(40),
            store_mfn: q(56),
            store_evtchn: d(64),
            console_mfn: q(72),
            console_evtchn: d(80),
            pt_base: q(88),
            mfn_list: q(104),
        }
    }

    /// Our p2m: old pfn -> mfn (0 outside, which no table validation accepts).
    fn mfn(&self, pfn: u64) -> u64 {
        if pfn >= self.nr_pages {
            return 0;
        }
        // SAFETY: Xen maps our p2m list (nr_pages entries) at mfn_list for the domain's life.
        unsafe { core::ptr::read_volatile((self.mfn_list as *const u64).add(pfn as usize)) }
    }

    /// Our pfn of `mfn`, if we own it (M2P, checked against our p2m).
    fn pfn(&self, mfn: u64) -> Option<u64> {
        // SAFETY: the M2P is mapped read-only in every 64-bit PV guest; entries of our own
        // frames are valid.
        let p = unsafe {
            core::ptr::read_volatile((MACH2PHYS_VIRT_START as *const u64).add(mfn as usize))
        };
        (p < self.nr_pages && self.mfn(p) == mfn).then_some(p)
    }
}

/// Stage 1's arena: free frame `first + i` is mapped read/write at `va + i * 4096`.
struct Arena {
    va: u64,
    first: u64,
    end: u64,
}

impl Arena {
    fn page_va(&self, old_pfn: u64) -> Option<u64> {
        (old_pfn >= self.first && old_pfn < self.end)
            .then(|| self.va + (old_pfn - self.first) * PAGE)
    }
    fn page(&self, old_pfn: u64) -> Result<&'static mut [u8; 4096], BootError> {
        let va = self.page_va(old_pfn).ok_or(BootError::Domain(
            "a frame of the new layout is outside the arena",
        ))?;
        // SAFETY: the arena is ours (stage 1 maps it for stage 2 alone); each frame is written
        // through one such reference at a time, which the caller drops before the next.
        Ok(unsafe { &mut *(va as *mut [u8; 4096]) })
    }
    fn pfn_of(&self, va: u64) -> Option<u64> {
        let i = va.checked_sub(self.va)? / PAGE;
        (self.first + i < self.end).then_some(self.first + i)
    }
}

/// A page of our own to map shared_info at (we only know its machine address).
#[repr(C, align(4096))]
struct Page([u8; 4096]);
static mut SHARED_INFO_VA: Page = Page([0; 4096]);

/// Build the PV domain for `kernel` (ELF), `initrd` and `cmdline` from inside this domain and
/// jump to the kernel; returns only on failure before the point of no return. `free`: the
/// pfns nothing uses (the arena after the initramfs).
pub fn boot_kernel(
    svc: &Services,
    kernel: &[u8],
    initrd: &[u8],
    cmdline: &str,
    free: Range<u64>,
) -> Result<Infallible, BootError> {
    let t0 = svc.now_ns();
    let f = svc.facts;
    // SAFETY: stage 1 gives the page Xen filled for this domain, mapped in its text.
    unsafe { hc::init(f.hypercall_page as *const u8) };
    let own = Own::read(f.start_info);
    let arena = Arena {
        va: f.arena_va,
        first: f.free_pfn_first,
        end: f.free_pfn_end,
    };
    let k = Kernel::parse(kernel).map_err(BootError::Elf)?;
    let l = Layout::new(&k, own.nr_pages, initrd.len() as u64).map_err(BootError::Layout)?;
    let store_old = own
        .pfn(own.store_mfn)
        .ok_or(BootError::Domain("the xenstore ring is not our frame"))?;
    let console_old = own
        .pfn(own.console_mfn)
        .ok_or(BootError::Domain("the console ring is not our frame"))?;
    // The initrd stays in the frames it was received into.
    let fixed = match l.initrd {
        Some(seg) => {
            let va = initrd.as_ptr() as u64;
            if !va.is_multiple_of(PAGE) {
                return Err(BootError::Domain("the initrd does not start on a page"));
            }
            let first = arena
                .pfn_of(va)
                .ok_or(BootError::Domain("the initrd is not in the arena"))?;
            Some((seg.pfn, first, seg.pages))
        }
        None => None,
    };
    let free_ranges = [free];
    let num = Numbering {
        nr_pages: own.nr_pages,
        free: &free_ranges,
        store: (store_old, l.xenstore_pfn),
        console: (console_old, l.console_pfn),
        fixed,
        fresh_end: l.end,
        spare: 3,
    };
    let old = |new: u64| num.old_of(new).map_err(BootError::Numbering);
    let mfn = |new: u64| num.old_of(new).map(|o| own.mfn(o)).unwrap_or(0);
    let mut spares = [0u64; 3];
    num.spares(&mut spares).map_err(BootError::Numbering)?;
    let old_l4_mfn = own.mfn(own.pt_base >> 12);
    let new_l4_mfn = mfn(l.l4_pfn());
    say!(
        svc,
        "boot: kernel entry {:#x}, {} pages at pfn {}; initrd {} bytes at pfn {}; start_info pfn {}, xenstore {}, console {}; {} page tables at pfn {} (L4 mfn {:#x}); stack pfn {}; mapped {} pages; p2m list at {:#x} (pfn {}); {} of {} pages in the layout",
        l.entry,
        l.kernel.pages,
        l.kernel.pfn,
        initrd.len(),
        l.initrd.map_or(0, |s| s.pfn),
        l.start_info_pfn,
        l.xenstore_pfn,
        l.console_pfn,
        l.page_tables().count(),
        l.pgtables.pfn,
        new_l4_mfn,
        l.bootstack_pfn,
        l.mapped_pages(),
        l.p2m.vstart,
        l.p2m.pfn,
        l.end,
        own.nr_pages
    );

    // A1: the kernel's pages, by physical address.
    for i in 0..l.kernel.pages {
        k.page(i, arena.page(old(l.kernel.pfn + i)?)?);
    }
    if let Some(h) = l.hypercall_pfn {
        // Xen's hypercall page for 64-bit PV is position independent: ours is the kernel's.
        // SAFETY: stage 1's hypercall page is mapped readable (it runs from it).
        let src = unsafe { &*(f.hypercall_page as *const [u8; 4096]) };
        arena.page(old(h)?)?.copy_from_slice(src);
    }
    // A2: the initrd's last page is zero after its bytes (mod_len is page-rounded).
    if let Some(seg) = l.initrd {
        let tail = (seg.pages * PAGE) as usize - initrd.len();
        if tail > 0 {
            let p = arena.page(old(seg.end() - 1)?)?;
            p[4096 - tail..].fill(0);
        }
    }
    // A3: the p2m list in the new numbering.
    let pairs = num.pairs().map_err(BootError::Numbering)?;
    let mut page: Option<&mut [u8; 4096]> = None;
    for (new, o) in pairs {
        if new % 512 == 0 {
            let p = arena.page(old(l.p2m.pfn + new / 512)?)?;
            p.fill(0);
            page = Some(p);
        }
        if let Some(p) = page.as_deref_mut() {
            let at = (new % 512) as usize * 8;
            p[at..at + 8].copy_from_slice(&own.mfn(o).to_le_bytes());
        }
    }
    // A4: start_info with our shared_info and rings.
    let rings = Rings {
        shared_info: own.shared_info,
        store_mfn: own.store_mfn,
        store_evtchn: own.store_evtchn,
        console_mfn: own.console_mfn,
        console_evtchn: own.console_evtchn,
    };
    startinfo::write(
        &l,
        &rings,
        cmdline.as_bytes(),
        arena.page(old(l.start_info_pfn)?)?,
    );
    // A5: the initial page tables, then the boot stack.
    for (pfn, _) in l.page_tables() {
        if !l.write_table(pfn, &mfn, arena.page(old(pfn)?)?) {
            return Err(BootError::Domain("page-table numbering"));
        }
    }
    arena.page(old(l.bootstack_pfn)?)?.fill(0);
    // A6: the trampoline: the first padding page after the boot stack.
    let tramp_pfn = l.bootstack_pfn + 1;
    if tramp_pfn >= l.mapped_pages() {
        return Err(BootError::Domain("no padding page for the trampoline"));
    }
    let entry = jump::BootEntry {
        new_l4_mfn,
        old_l4_mfn,
        start_info_va: l.start_info_va(),
        stack_top: l.boot_rsp(),
        entry: l.entry,
    };
    jump::trampoline_page(&entry, arena.page(old(tramp_pfn)?)?);
    let t_written = svc.now_ns();
    // A7: no writable mapping of a future page table may remain: unmap the arena's view of
    // every new table frame.
    let mut unmap_rc = 0;
    let mut unmapped = 0;
    for (pfn, _) in l.page_tables() {
        let va = arena.page_va(old(pfn)?).unwrap_or(0);
        let rc = hc::update_va_mapping(va, 0);
        if rc != 0 && unmap_rc == 0 {
            unmap_rc = rc;
        }
        unmapped += 1;
    }
    say!(
        svc,
        "boot: A7 arena view of {unmapped} table frames removed: first rc {unmap_rc}"
    );
    if unmap_rc != 0 {
        return Err(BootError::Xen(
            "unmapping the new tables' arena view",
            unmap_rc,
        ));
    }
    // A8: the trampoline at its kernel address in our tables (L4 slot 511).
    let tramp_va = l.va(tramp_pfn);
    let slot = mmu::va_indices(tramp_va)[0];
    // SAFETY: our boot L4 is mapped read-only at pt_base in stage 1's boot mapping.
    let e4 = unsafe { core::ptr::read_volatile((own.pt_base as *const u64).add(slot)) };
    let chain = mmu::chain_for(tramp_va, mfn(tramp_pfn), spares.map(|p| own.mfn(p)), e4)
        .map_err(|_| BootError::Domain("the kernel's L4 slot is in use in our tables"))?;
    for ((t, i, e), &p) in chain.tables.iter().zip(&spares) {
        let _ = t;
        let pg = arena.page(p)?;
        pg.fill(0);
        pg[*i * 8..*i * 8 + 8].copy_from_slice(&e.to_le_bytes());
    }
    let mut rc_unmap_chain = 0;
    for &p in &spares {
        let rc = hc::update_va_mapping(arena.page_va(p).unwrap_or(0), 0);
        if rc != 0 {
            rc_unmap_chain = rc;
        }
    }
    let rc_hook = mmu::hook(old_l4_mfn, &chain);
    say!(
        svc,
        "boot: A8 trampoline at {tramp_va:#x} (pfn {tramp_pfn}) in our L4 slot {slot}: unmap rc {rc_unmap_chain}, mmu_update rc {rc_hook}"
    );
    if rc_unmap_chain != 0 || rc_hook != 0 {
        return Err(BootError::Xen(
            "mapping the trampoline",
            rc_unmap_chain | rc_hook,
        ));
    }
    // A9: pin the new L4: Xen validates every table and entry of the new tree now, while we
    // can still say no to the client.
    let rc = hc::mmuext(hc::mmuext_pin_cmd(4), new_l4_mfn, 0);
    say!(svc, "boot: A9 pin new L4 (mfn {new_l4_mfn:#x}): rc {rc}");
    if rc != 0 {
        let _ = mmu::unhook(old_l4_mfn, &chain);
        return Err(BootError::Xen("the new page tables (pin L4)", rc));
    }
    let t_a = svc.now_ns();
    say!(
        svc,
        "boot: phase A done in {} ms (writing {} ms); phase B",
        (t_a - t0) / 1_000_000,
        (t_written - t0) / 1_000_000
    );

    // ---- Phase B: the point of no return is the device release. ----
    if let Err(e) = svc.release_devices() {
        fatal(svc, "B1 release devices", e);
    }
    say!(svc, "boot: B1 devices released");
    let pairs = num.pairs().map_err(BootError::Numbering)?;
    let (rc, n) = mmu::machphys(pairs.map(|(new, o)| (own.mfn(o), new)));
    say!(
        svc,
        "boot: B2 machphys updates: rc {rc}, {n} of {} done",
        own.nr_pages
    );
    if rc != 0 || n != own.nr_pages {
        fatal(svc, "B2 machphys updates", rc);
    }
    let shinfo = &raw mut SHARED_INFO_VA as u64;
    let rc = hc::update_va_mapping(
        shinfo,
        own.shared_info
            | mmu::_PAGE_PRESENT
            | mmu::_PAGE_RW
            | mmu::_PAGE_ACCESSED
            | mmu::_PAGE_DIRTY,
    );
    check(svc, "B3 map shared_info", rc);
    // SAFETY: the page now maps this domain's shared_info, writable.
    unsafe { shared_info::reset_events(shinfo as *mut u8, 0) };
    say!(
        svc,
        "boot: B3 shared_info: no event pending, every channel masked, upcalls masked"
    );
    check(
        svc,
        "B4 stack_switch",
        hc::stack_switch(FLAT_KERNEL_SS, l.boot_rsp()),
    );
    if k.features_required & 1 != 0 {
        check(
            svc,
            "B5 vm_assist(writable_pagetables)",
            hc::vm_assist(hc::VMASST_CMD_ENABLE, VMASST_WRITABLE_PAGETABLES),
        );
    }
    say!(
        svc,
        "boot: B6 jump to the trampoline at {tramp_va:#x}: NEW_BASEPTR {new_l4_mfn:#x}, unpin {old_l4_mfn:#x}, entry {:#x} rsi {:#x} rsp {:#x}; {} ms after the upload",
        l.entry,
        l.start_info_va(),
        l.boot_rsp(),
        (svc.now_ns() - t0) / 1_000_000
    );
    // SAFETY: the trampoline page is mapped executable at tramp_va in our tables (A8) and at
    // the same address in the new ones, the new L4 is pinned (A9), the M2P is the new
    // numbering (B2), and nothing of ours is used after the switch.
    unsafe { jump::enter_trampoline(tramp_va) }
}

fn check(svc: &Services, step: &str, rc: i64) {
    say!(svc, "boot: {step}: rc {rc}");
    if rc != 0 {
        fatal(svc, step, rc);
    }
}

fn fatal(svc: &Services, step: &str, rc: i64) -> ! {
    say!(
        svc,
        "boot: {step} FAILED (rc {rc}) after the point of no return; crashing the domain"
    );
    svc.shutdown(3)
}
