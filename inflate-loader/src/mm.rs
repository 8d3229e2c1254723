//! Memory: machine/pseudo-physical translation, the shared_info page, a mapping window for
//! frames outside our initial mapping, and the walk of Xen's boot page tables that tells us
//! how much of our memory is mapped. Xen maps pfn N at virtual address N << 12.
use crate::startinfo::StartInfo;
use core::sync::atomic::{AtomicU64, Ordering};
use xen_pv::hypercall::update_va_mapping;

pub const PAGE_SIZE: usize = 4096;
const MACH2PHYS_VIRT_START: u64 = 0xFFFF_8000_0000_0000;
const PTE_PRESENT: u64 = 1;
const PTE_RW: u64 = 2;
const PTE_ACCESSED: u64 = 0x20;
const PTE_DIRTY: u64 = 0x40;
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Virtual pages we remap to foreign or far frames: shared_info, grant table frames, and the
/// copy window. The frames Xen originally put behind them stay ours but unused.
#[repr(C, align(4096))]
pub struct Page(pub [u8; PAGE_SIZE]);

pub const GNTTAB_FRAMES: usize = 4;
pub const WINDOW_SLOTS: usize = 1;

static mut SHARED_INFO_VA: Page = Page([0; PAGE_SIZE]);
pub static mut GNTTAB_VA: [Page; GNTTAB_FRAMES] = [const { Page([0; PAGE_SIZE]) }; GNTTAB_FRAMES];
static mut WINDOW_VA: [Page; WINDOW_SLOTS] = [const { Page([0; PAGE_SIZE]) }; WINDOW_SLOTS];

static P2M: AtomicU64 = AtomicU64::new(0);
static NR_PAGES: AtomicU64 = AtomicU64::new(0);

pub fn init_p2m(si: &StartInfo) {
    P2M.store(si.mfn_list, Ordering::Relaxed);
    NR_PAGES.store(si.nr_pages, Ordering::Relaxed);
}

pub fn pfn_to_mfn(pfn: u64) -> u64 {
    let p2m = P2M.load(Ordering::Relaxed) as *const u64;
    assert!(pfn < NR_PAGES.load(Ordering::Relaxed), "pfn out of range");
    // SAFETY: Xen maps the p2m list (nr_pages entries) read/write for us at mfn_list.
    unsafe { core::ptr::read_volatile(p2m.add(pfn as usize)) }
}

pub fn mfn_to_pfn(mfn: u64) -> u64 {
    // SAFETY: the read-only machine-to-phys table is mapped into every 64-bit PV guest at
    // MACH2PHYS_VIRT_START; an entry is 8 bytes.
    unsafe { core::ptr::read_volatile((MACH2PHYS_VIRT_START as *const u64).add(mfn as usize)) }
}

/// Our own pfn of machine frame `mfn`, or None if the frame is not ours (the M2P entry of a
/// frame we own points back at a pfn whose p2m entry is that frame). Only for frames this
/// domain owns or had: the M2P is not mapped for every machine address.
pub fn own_pfn_of_mfn(mfn: u64) -> Option<u64> {
    let pfn = mfn_to_pfn(mfn);
    (pfn < NR_PAGES.load(Ordering::Relaxed) && pfn_to_mfn(pfn) == mfn).then_some(pfn)
}

pub fn nr_pages() -> u64 {
    NR_PAGES.load(Ordering::Relaxed)
}

/// Remove the copy window's mapping: before pinning or set_gdt no writable mapping of a
/// future page table or GDT frame may remain (Xen refuses the type change).
pub fn unmap_window() -> i64 {
    // SAFETY: only the address is taken.
    let va = unsafe { &raw mut WINDOW_VA[0] } as u64;
    update_va_mapping(va, 0)
}

/// The live shared_info page (mapped at boot).
pub fn shared_info_page() -> *mut u8 {
    shared_info()
}

pub fn virt_to_mfn(va: u64) -> u64 {
    pfn_to_mfn(va >> 12)
}

fn pte(mfn: u64) -> u64 {
    (mfn << 12) | PTE_PRESENT | PTE_RW | PTE_ACCESSED | PTE_DIRTY
}

/// Map a machine address's frame at `va` or panic with Xen's error.
fn map_at(va: u64, mfn: u64) {
    let rc = update_va_mapping(va, pte(mfn));
    assert!(rc == 0, "update_va_mapping failed");
}

pub fn map_shared_info(si: &StartInfo) {
    let va = &raw const SHARED_INFO_VA as u64;
    map_at(va, si.shared_info >> 12);
}

/// Map the grant table frames Xen returned.
pub fn map_gnttab_frame(i: usize, mfn: u64) -> *mut u8 {
    // SAFETY: only the address is taken.
    let va = unsafe { &raw mut GNTTAB_VA[i] } as u64;
    map_at(va, mfn);
    va as *mut u8
}

/// Run `f` over the 4 KiB of machine frame `mfn`, mapped through the copy window.
pub fn with_frame<R>(mfn: u64, f: impl FnOnce(&mut [u8; PAGE_SIZE]) -> R) -> R {
    // SAFETY: only the address is taken.
    let va = unsafe { &raw mut WINDOW_VA[0] } as u64;
    map_at(va, mfn);
    // SAFETY: the window now maps `mfn` read/write and nothing else aliases it while f runs
    // (single vCPU, the window is only used here, not reentrantly).
    let page = unsafe { &mut (*(va as *mut Page)).0 };
    f(page)
}

fn shared_info() -> *mut u8 {
    &raw mut SHARED_INFO_VA as *mut u8
}

const EVTCHN_PENDING_OFF: usize = 2048;

pub fn shared_info_clear_pending(port: u32) {
    let word = (port / 64) as usize;
    let bit = port % 64;
    // SAFETY: shared_info is mapped; the pending words are shared with Xen, so an atomic
    // fetch_and (lock and) clears just our bit.
    unsafe {
        let w = &*(shared_info().add(EVTCHN_PENDING_OFF + word * 8) as *const AtomicU64);
        w.fetch_and(!(1u64 << bit), Ordering::SeqCst);
    }
}

/// vcpu 0's evtchn_upcall_mask byte (must stay 1: we take no upcalls).
pub fn upcall_mask() -> u8 {
    // SAFETY: byte 1 of vcpu_info[0] at the start of shared_info.
    unsafe { core::ptr::read_volatile(shared_info().add(1)) }
}

pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no memory effects; PV guests may execute it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Xen system time in ns from vcpu 0's pvclock in shared_info.
pub fn system_time_ns() -> u64 {
    use xen_pv::shared_info::{TimeInfo, VCPU0_TIME};
    let base = shared_info().wrapping_add(VCPU0_TIME);
    loop {
        // SAFETY: reads of the vcpu_time_info fields, retried while Xen updates them (odd or
        // changed version).
        unsafe {
            let ver = core::ptr::read_volatile(base as *const u32);
            core::sync::atomic::fence(Ordering::SeqCst);
            let t = TimeInfo {
                tsc_timestamp: core::ptr::read_volatile(base.add(8) as *const u64),
                system_time: core::ptr::read_volatile(base.add(16) as *const u64),
                tsc_to_system_mul: core::ptr::read_volatile(base.add(24) as *const u32),
                tsc_shift: core::ptr::read_volatile(base.add(28) as *const i8),
            };
            let tsc = core::arch::x86_64::_rdtsc();
            core::sync::atomic::fence(Ordering::SeqCst);
            let ver2 = core::ptr::read_volatile(base as *const u32);
            if ver & 1 != 0 || ver != ver2 {
                continue;
            }
            return t.ns_at(tsc);
        }
    }
}

/// Walk Xen's boot page tables from pt_base and return the end of the contiguous mapping that
/// starts at virtual address 0 (in pages).
pub fn mapped_pages(si: &StartInfo) -> u64 {
    let l4 = si.pt_base as *const u64;
    let mut n = 0u64;
    let table_va = |e: u64| (mfn_to_pfn((e & PTE_ADDR) >> 12) << 12) as *const u64;
    // SAFETY: the boot page tables are mapped (read-only) inside the region Xen set up for us;
    // each present entry's frame is one of those tables.
    unsafe {
        let e4 = *l4;
        if e4 & PTE_PRESENT == 0 {
            return 0;
        }
        let l3 = table_va(e4);
        let e3 = *l3;
        if e3 & PTE_PRESENT == 0 {
            return 0;
        }
        let l2 = table_va(e3);
        for i2 in 0..512 {
            let e2 = *l2.add(i2);
            if e2 & PTE_PRESENT == 0 {
                return n;
            }
            let l1 = table_va(e2);
            for i1 in 0..512 {
                if *l1.add(i1) & PTE_PRESENT == 0 {
                    return n;
                }
                n += 1;
            }
        }
    }
    n
}

pub fn image_end_pfn() -> u64 {
    extern "C" {
        static __image_end: u8;
    }
    (&raw const __image_end as u64).div_ceil(PAGE_SIZE as u64)
}
