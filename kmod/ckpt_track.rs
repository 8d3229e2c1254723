// SPDX-License-Identifier: GPL-2.0
//! The fault tracker: dirty pages found by write faults instead of by hashing memory, and a
//! copy-on-write snapshot at capture (docs/fault-tracker.md has the design and the proof
//! obligations; this comment only says how the code is laid out).
//!
//! Kernel side (kmod/patches/0002): a fault hook called first in x86's page-fault handler,
//! a PTE hook that sees every PTE value Xen PV code makes from a pfn or installs, the range
//! of each CPU's static per-CPU area, a walk over the writable grants and a grant-end hook.
//! The C glue (ckpt_track_glue.c) only wraps inlines; every decision is made here.
//!
//! Arming (in stop_machine, at start and at every collect): every writable L1 entry that
//! maps guest RAM is write-protected, by kind of address:
//! - user addresses (L4 slots 0..255): RW cleared; Linux's own write-fault path makes the
//!   entry writable again (like soft-dirty tracking), and the PTE hook sees that value;
//! - the direct map and the struct-page array (vmemmap): RW cleared and the software bit
//!   [`SOFT_WP`] set; our fault hook marks the page and restores RW;
//! - every other kernel alias (kernel image, vmalloc incl. stacks, modules, fixmap) and the
//!   per-CPU areas are never protected (Xen and the fault path itself write there): the
//!   pages they map are dirty in every round and copied in the capture pause, as are page
//!   tables, pages granted writable to another domain, and pages whose p2m entry changed.
//! A page written in two rounds in a row is left writable for the next [`HOT_ROUNDS`]
//! rounds and reported dirty in each (it would be resent anyway; protecting it again only
//! costs its writer a fault per round).
//!
//! Concurrency: the hooks run in any context with interrupts or preemption off and touch
//! only atomics and the tracker's vmalloc'd buffers (which are never protected: their
//! vmalloc alias is not, and nothing writes their direct-map alias). The owner's calls
//! (start, collect, capture, read_page, stop) are serialised by the module's lock.

use core::ffi::{c_int, c_long, c_uint, c_ulong, c_void};
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};

// Linux's p2m, read the module's one way (docs/checkpoint-abi.md for the entry bits).
use super::{for_each_p2m, is_ram, p2m};

const PAGE: usize = 4096;
const EIO: c_long = 5;
const ENOMEM: c_long = 12;
const ENOSPC: c_long = 28;
const EOPNOTSUPP: c_long = 95;

// x86 page-fault error code and PTE bits.
const PF_PROT: c_ulong = 1 << 0;
const PF_WRITE: c_ulong = 1 << 1;
const PF_USER: c_ulong = 1 << 2;
const PTE_PRESENT: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_PSE: u64 = 1 << 7;
/// Linux's _PAGE_SPECIAL (pfn mappings): never protected, Linux has no page behind them.
const PTE_SPECIAL: u64 = 1 << 9;
/// Software bit 11 (Linux's soft-dirty bit, not configured in the guest kernel): "the
/// tracker write-protected this kernel entry, it was writable". Xen PV lets guests use
/// bits 9-11 of an L1 entry; bits 52-62 are refused.
pub(crate) const SOFT_WP: u64 = 1 << 11;
const MFN_MASK: u64 = ((1u64 << 40) - 1) << 12;

/// mmu_update requests per hypercall while arming.
const BATCH: usize = 128;

/// A page written in two rounds in a row is left writable for this many rounds (and
/// reported dirty in each), then write-protected again to see whether it is still written.
/// A page rewritten all the time is sent in every round anyway; protecting it again at
/// every re-arm only costs its writer a fault per round (under TCG the dearest part of
/// tracking). A page written once is protected again at once, as before.
const HOT_ROUNDS: u8 = 3;

extern "C" {
    fn ckpt_vzalloc(size: c_ulong) -> *mut c_void;
    fn ckpt_vfree(p: *mut c_void);
    fn ckpt_pfn_to_virt(pfn: c_ulong) -> *mut u8;
    fn ckpt_virt_to_pfn(v: *const c_void) -> c_ulong;
    fn ckpt_clock_ns() -> u64;

    fn ckpt_track_hooks(on: c_int);
    fn ckpt_track_sync();
    fn ckpt_track_stop_machine(
        f: unsafe extern "C" fn(*mut c_void) -> c_int,
        arg: *mut c_void,
    ) -> c_int;
    fn ckpt_track_kernel_pte(address: c_ulong) -> *mut u64;
    fn ckpt_track_pte_cmpxchg(ptep: *mut u64, old: u64, new: u64) -> c_int;
    fn ckpt_track_mmu_update(reqs: *const u64, count: c_uint) -> c_int;
    fn ckpt_track_flush_all();
    fn ckpt_track_percpu(cpu: c_uint, start: *mut c_ulong, size: *mut c_ulong);
    fn ckpt_track_nr_cpus() -> c_uint;
    fn ckpt_track_for_each_grant(
        f: unsafe extern "C" fn(c_ulong, *mut c_void),
        arg: *mut c_void,
    ) -> c_int;
    fn ckpt_track_page_offset() -> c_ulong;
    fn ckpt_track_vmemmap() -> c_ulong;
    fn ckpt_track_irq_save() -> c_ulong;
    fn ckpt_track_irq_restore(flags: c_ulong);
    fn ckpt_track_m2p(mfn: c_ulong) -> c_ulong;
    fn ckpt_track_classify(
        free_words: *mut c_ulong,
        small_words: *mut c_ulong,
        max_pfn: c_ulong,
        max_obj: c_ulong,
    ) -> c_ulong;
    fn ckpt_track_kmalloc_class(bytes: c_ulong) -> c_ulong;
    fn ckpt_track_kmalloc_probe(frames: c_ulong);
    fn ckpt_track_syscore(on: c_int);
    fn ckpt_track_evtchn_fifo() -> c_int;
    fn ckpt_track_grant_frames() -> c_ulong;
    fn xen_checkpoint_for_each_pgd(
        f: extern "C" fn(*mut c_void, *mut c_void, *mut c_void) -> c_int,
        arg: *mut c_void,
    ) -> c_int;

    static xen_p2m_size: c_ulong;
}

/// Figures for the caller (ckpt_round / ckpt_capture fields, kernel log).
#[derive(Clone, Copy, Default)]
pub(crate) struct Stats {
    /// Write faults the hook handled (direct map / vmemmap), since start.
    pub(crate) faults: u64,
    /// Writable PTE values the PTE hook saw for RAM pages, since start.
    pub(crate) pte_marks: u64,
    /// Entries write-protected by the last arming walk.
    pub(crate) protected: u64,
    /// Pages the last arming left writable (HOT_ROUNDS).
    pub(crate) open: u64,
    /// Pages dirty in every round (unprotectable aliases, tables, grants, per-CPU).
    pub(crate) always: u64,
    /// Time of the last arming walk (stop_machine), ns.
    pub(crate) arm_ns: u64,
    /// Snapshot slots in use (pause copies + copy-on-write copies).
    pub(crate) snapshot_used: u64,
    /// Of which copied in the capture pause.
    pub(crate) pause_copies: u64,
    /// mmu_update requests Xen refused (arming: should stay 0; disarming: entries whose
    /// page became a page table since it was protected).
    pub(crate) mmu_errors: u64,
    /// The capture step: pages of the final set left out as free (elision), pages copied
    /// in the pause because Xen may write them while Linux resumes (small kmalloc slabs,
    /// free pages), and its phases: final set + classification, walk, copies (ns).
    pub(crate) cap_free: u64,
    pub(crate) cap_unprotected: u64,
    pub(crate) cap_prep_ns: u64,
    pub(crate) cap_walk_ns: u64,
    pub(crate) cap_copy_ns: u64,
    /// The capture's final-set step in detail: the kmalloc probe, the struct-page pass (ns).
    pub(crate) cap_probe_ns: u64,
    pub(crate) cap_classify_ns: u64,
    /// The last arming walk in detail: mmu_update hypercalls, entries they carried, time in
    /// them, L1 entries looked at, and the time after the page-table walk (grants, p2m).
    pub(crate) mmu_calls: u64,
    pub(crate) mmu_entries: u64,
    pub(crate) mmu_ns: u64,
    pub(crate) visited: u64,
    pub(crate) walk_kinds: [u64; 5],
    /// Of `always`: table pages, per-CPU and slot-511 pages, granted pages.
    pub(crate) always_parts: [u64; 3],
    pub(crate) arm_tail_ns: u64,
    /// The capture copied the whole final set in the pause (FIFO event channels).
    pub(crate) copied_all: bool,
    /// The snapshot buffer ran out after the capture: the capture is void.
    pub(crate) aborted: bool,
}

/// A bitmap of `bits` bits in a vmalloc'd buffer, usable from any context.
struct Bits {
    w: *const AtomicU64,
    words: usize,
}

impl Bits {
    fn alloc(bits: u64) -> Result<Bits, c_long> {
        let words = bits.div_ceil(64) as usize;
        let p = valloc(words * 8)?;
        Ok(Bits {
            w: p as *const AtomicU64,
            words,
        })
    }
    fn word(&self, i: usize) -> &AtomicU64 {
        debug_assert!(i < self.words);
        // SAFETY: i < words (callers pass pfn < max_pfn); the buffer lives as long as self
        // and is only accessed atomically.
        unsafe { &*self.w.add(i) }
    }
    fn set(&self, pfn: u64) -> bool {
        let m = 1u64 << (pfn % 64);
        self.word((pfn / 64) as usize).fetch_or(m, Ordering::AcqRel) & m != 0
    }
    fn get(&self, pfn: u64) -> bool {
        self.word((pfn / 64) as usize).load(Ordering::Acquire) & (1u64 << (pfn % 64)) != 0
    }
    fn clear(&self, pfn: u64) {
        self.word((pfn / 64) as usize)
            .fetch_and(!(1u64 << (pfn % 64)), Ordering::AcqRel);
    }
    fn clear_all(&self) {
        for i in 0..self.words {
            self.word(i).store(0, Ordering::Relaxed);
        }
    }
    fn free(&mut self) {
        vfree(self.w as *mut c_void);
        self.w = ptr::null();
        self.words = 0;
    }
}

fn valloc(bytes: usize) -> Result<*mut c_void, c_long> {
    // SAFETY: vzalloc has no preconditions; null means failure.
    let p = unsafe { ckpt_vzalloc(bytes.max(1) as c_ulong) };
    if p.is_null() {
        Err(-ENOMEM)
    } else {
        Ok(p)
    }
}

fn vfree(p: *mut c_void) {
    if !p.is_null() {
        // SAFETY: p came from ckpt_vzalloc and its owner forgets it after this call.
        unsafe { ckpt_vfree(p) };
    }
}

/// Everything the hooks reach. Lives in a vmalloc'd block (never write-protected, see the
/// module comment) published through [`LIVE`].
struct Inner {
    max_pfn: u64,
    page_offset: u64,
    vmemmap: u64,
    vmemmap_end: u64,
    /// Written by any context during a round; swapped out by collect.
    dirty: Bits,
    /// Pages a write was noted for since the last arming (faults, PTE-hook marks, ended
    /// grants): the candidates to be left writable.
    wrote: Bits,
    /// Pages the last arming left writable (see HOT_ROUNDS): dirty in the round that
    /// follows. `hot_left[pfn]`: arms to go before the page is protected again.
    open: Bits,
    /// Pages written (or left writable) in the round before the one just ended.
    prev: Bits,
    hot_left: *mut u8,
    open_n: u64,
    /// Pages a round reported that the owner has not read since: reported again by the
    /// next round and part of the capture's final set, as the ABI promises for both
    /// trackers ("a page the caller does not read stays dirty"). Owner calls only.
    pending: Bits,
    /// Pfns never protected (per-CPU areas); dirty in every round.
    excl: Bits,
    /// Pages dirty in every round, found by the last arming walk.
    always: Bits,
    /// `always` of the arming before: a page that left it (a vmap undone) is dirty once.
    was_always: Bits,
    /// Writable grants seen by the last grant walk (the grant table is unmapped during
    /// the capture, so the capture uses these).
    granted: Bits,
    /// Pfns the caller excluded (its own buffers): never reported, never copied.
    ignore: Bits,
    /// Linux's p2m at the last collect: a changed entry (balloon) makes the pfn dirty.
    p2m_prev: *mut u64,
    /// The capture's walk: the pfn of the L1 table mapping each 2 MiB of the direct map
    /// (u64::MAX: none), so that only the entries of the final set are looked at.
    dm_tables: *mut u64,
    dm_n: usize,
    /// mmu_update batch: BATCH (ptr, val) pairs.
    batch: *mut u64,
    batch_n: usize,
    // Copy-on-write after the capture.
    cow: AtomicBool,
    send: Bits,
    claimed: Bits,
    saved: Bits,
    /// Capture: pages of the final set copied in the pause and left writable (Xen may
    /// write them during the resume), and the free pages at the capture point.
    nowp: Bits,
    freeb: Bits,
    /// Set while the capture's walk protects the final set (less `nowp`).
    capture_walk: bool,
    /// The syscore callback is registered (it walks the grants just before the capture).
    syscore: bool,
    /// Kernel addresses the capture's walk skips (the snapshot buffer: ignored pages).
    skip_lo: u64,
    skip_hi: u64,
    cap_free: u64,
    cap_unprotected: u64,
    cap_prep_ns: u64,
    cap_walk_ns: u64,
    cap_copy_ns: u64,
    cap_probe_ns: u64,
    cap_classify_ns: u64,
    mmu_calls: u64,
    mmu_entries: u64,
    mmu_ns: u64,
    visited: u64,
    /// The capture walk's entries by kind: user, other kernel (vmalloc, ...), vmemmap,
    /// kernel image and modules (L4 slot 511), direct map (final set only).
    walk_kinds: [u64; 5],
    /// Of the always-dirty pages of the last arming: table pages, per-CPU and slot-511
    /// pages (`excl`), granted pages.
    always_tables: u64,
    always_excl: u64,
    always_granted: u64,
    arm_tail_ns: u64,
    copied_all: bool,
    /// The capture removed every protection (FIFO): a void capture cannot be cancelled.
    unprotected: bool,
    /// slot + 1 of the pristine copy of a pfn, 0 = none.
    slot_of: *const AtomicU32,
    snap: *mut u8,
    snap_cap: u64,
    snap_next: AtomicU64,
    aborted: AtomicBool,
    // Figures.
    faults: AtomicU64,
    pte_marks: AtomicU64,
    protected: u64,
    always_n: u64,
    arm_ns: u64,
    pause_copies: u64,
    mmu_errors: u64,
    walk_err: bool,
    /// Set while a walk restores every protected kernel entry (stop, revived guest).
    disarm: bool,
    /// Set while a walk only collects the pages writable through L4 slot 511.
    prepass: bool,
    first_pgd: bool,
}

/// The tracker the hooks use; null while none is live.
static LIVE: AtomicPtr<Inner> = AtomicPtr::new(ptr::null_mut());

fn live() -> Option<&'static Inner> {
    let p = LIVE.load(Ordering::Acquire);
    // SAFETY: LIVE is non-null only while the Inner it points to is alive; it is cleared
    // and a grace period waited for (ckpt_track_sync) before the block is freed, and every
    // hook runs with interrupts or preemption off.
    unsafe { p.as_ref() }
}

/// mfn -> pfn through Xen's M2P, checked against the p2m (None: not this guest's RAM).
/// Writes nothing but its stack (it runs in the fault hook).
fn m2p(mfn: u64) -> Option<u64> {
    // SAFETY: reads one M2P entry with an exception-table fixup.
    let pfn = unsafe { ckpt_track_m2p(mfn as c_ulong) } as u64;
    (pfn != u64::MAX && p2m(pfn) == mfn).then_some(pfn)
}

fn pte_pfn(e: u64) -> Option<u64> {
    m2p((e & MFN_MASK) >> 12)
}

impl Inner {
    fn in_direct_map(&self, va: u64) -> bool {
        va >= self.page_offset && va < self.page_offset + self.max_pfn * PAGE as u64
    }
    fn in_vmemmap(&self, va: u64) -> bool {
        va >= self.vmemmap && va < self.vmemmap_end
    }

    /// The pristine copy of `pfn` before its first write after the capture. Any context.
    fn cow_save(&self, pfn: u64) {
        if pfn >= self.max_pfn || !self.send.get(pfn) || self.ignore.get(pfn) {
            return;
        }
        if self.claimed.set(pfn) {
            // Someone else copies it (or read it): wait until the copy is complete.
            while !self.saved.get(pfn) {
                core::hint::spin_loop();
            }
            return;
        }
        let slot = self.snap_next.fetch_add(1, Ordering::AcqRel);
        if slot < self.snap_cap {
            // SAFETY: slot < snap_cap pages of the snapshot buffer; the page is RAM and
            // mapped in the direct map (readable even while write-protected).
            unsafe {
                ptr::copy_nonoverlapping(
                    ckpt_pfn_to_virt(pfn as c_ulong),
                    self.snap.add(slot as usize * PAGE),
                    PAGE,
                );
                (*self.slot_of.add(pfn as usize)).store(slot as u32 + 1, Ordering::Release);
            }
        } else {
            self.aborted.store(true, Ordering::Release);
        }
        self.saved.set(pfn);
    }

    /// A write is about to be possible on `pfn`. After the capture the page is also marked
    /// dirty: if the capture turns out void, tracking goes on from there
    /// ([`FaultTracker::cancel_capture`]).
    fn note_write(&self, pfn: u64) {
        if self.cow.load(Ordering::Acquire) {
            self.cow_save(pfn);
        }
        if pfn < self.max_pfn {
            self.dirty.set(pfn);
            self.wrote.set(pfn);
        }
    }
}

/// Called by the kernel first thing for every page fault, interrupts off.
#[no_mangle]
pub(crate) extern "C" fn ckpt_track_fault(error_code: c_ulong, address: c_ulong) -> bool {
    if error_code & (PF_PROT | PF_WRITE | PF_USER) != PF_PROT | PF_WRITE {
        return false;
    }
    let Some(t) = live() else { return false };
    let va = address as u64;
    if !t.in_direct_map(va) && !t.in_vmemmap(va) {
        return false;
    }
    // SAFETY: walks the current (kernel half shared) tables with interrupts off.
    let ptep = unsafe { ckpt_track_kernel_pte(address) };
    if ptep.is_null() {
        return false;
    }
    loop {
        // SAFETY: ptep points at a live L1 entry (tables are not freed while interrupts
        // are off); a volatile read because Xen and other CPUs update it.
        let old = unsafe { ptr::read_volatile(ptep) };
        if old & (PTE_PRESENT | PTE_RW | SOFT_WP) != PTE_PRESENT | SOFT_WP {
            return false; // not ours: Linux decides (spurious fault, oops, ...)
        }
        if let Some(pfn) = pte_pfn(old) {
            t.note_write(pfn);
        }
        // SAFETY: cmpxchg of that entry, emulated atomically by Xen.
        if unsafe { ckpt_track_pte_cmpxchg(ptep, old, (old | PTE_RW) & !SOFT_WP) } != 0 {
            t.faults.fetch_add(1, Ordering::Relaxed);
            return true;
        }
    }
}

/// Called by the kernel with every PTE value (machine format) Xen PV code makes from a pfn
/// or installs. Returns the value to use.
#[no_mangle]
pub(crate) extern "C" fn ckpt_track_pte(val: c_ulong) -> c_ulong {
    let mut v = val as u64;
    if v & (PTE_PRESENT | PTE_RW) != PTE_PRESENT | PTE_RW {
        // Read-only: a kept SOFT_WP still means "was writable" (Linux changed other bits
        // of an entry we protected).
        return val;
    }
    v &= !SOFT_WP;
    if let Some(t) = live() {
        if let Some(pfn) = pte_pfn(v) {
            t.pte_marks.fetch_add(1, Ordering::Relaxed);
            t.note_write(pfn);
        }
    }
    v as c_ulong
}

/// Called by the kernel when a grant ends: the other domain may have written the page.
#[no_mangle]
pub(crate) extern "C" fn ckpt_track_grant_end(gfn: c_ulong) {
    if let Some(t) = live() {
        if let Some(pfn) = m2p(gfn as u64) {
            t.note_write(pfn);
        }
    }
}

/// Called by Linux's suspend sequence (syscore suspend: stop_machine, interrupts off) just
/// before it unmaps the grant table, i.e. just before the capture routine: the writable
/// grants as they are at the capture point (netfront re-grants receive buffers between
/// rounds; a page granted after the last round and written by the backend after the
/// capture would otherwise escape copy-on-write).
#[no_mangle]
pub(crate) extern "C" fn ckpt_track_pre_capture() {
    let Some(t) = live() else { return };
    if t.cow.load(Ordering::Acquire) {
        return;
    }
    t.granted.clear_all();
    // SAFETY: grant_cb only reads `t` through a shared reference and sets atomic bits.
    unsafe { ckpt_track_for_each_grant(grant_cb, t as *const Inner as *mut c_void) };
}

/// Ends an arming walk's pending mmu_updates.
fn flush_batch(t: &mut Inner) {
    if t.batch_n == 0 {
        return;
    }
    // SAFETY: sched_clock wrapper.
    let t0 = unsafe { ckpt_clock_ns() };
    // SAFETY: batch holds batch_n valid (ptr, val) pairs; Xen validates each update.
    t.mmu_errors += unsafe { ckpt_track_mmu_update(t.batch, t.batch_n as c_uint) } as u64;
    // SAFETY: as above.
    t.mmu_ns += unsafe { ckpt_clock_ns() } - t0;
    t.mmu_calls += 1;
    t.mmu_entries += t.batch_n as u64;
    t.batch_n = 0;
}

fn queue_update(t: &mut Inner, table_mfn: u64, idx: usize, val: u64) {
    // SAFETY: batch has 2*BATCH u64s and batch_n < BATCH here.
    unsafe {
        *t.batch.add(2 * t.batch_n) = (table_mfn << 12) | (idx as u64 * 8); // MMU_NORMAL_PT_UPDATE = 0
        *t.batch.add(2 * t.batch_n + 1) = val;
    }
    t.batch_n += 1;
    if t.batch_n == BATCH {
        flush_batch(t);
    }
}

fn canonical(va: u64) -> u64 {
    if va & (1 << 47) != 0 {
        va | 0xffff_0000_0000_0000
    } else {
        va
    }
}

/// A page-table page: Xen changes it without a guest fault, so it is always dirty.
fn note_table(t: &mut Inner, pfn: u64) {
    if !t.always.set(pfn) {
        t.always_tables += 1;
    }
}

/// Walks the table at `pfn` (level 4..1) whose entries map from `base`.
fn walk(t: &mut Inner, pfn: u64, level: u8, base: u64, l4_kernel: bool) {
    note_table(t, pfn);
    // SAFETY: pfn is RAM (checked by m2p); table pages are mapped in the direct map.
    let tbl = unsafe { ckpt_pfn_to_virt(pfn as c_ulong) } as *const u64;
    let table_mfn = p2m(pfn);
    let span = 1u64 << (12 + 9 * (level as u64 - 1));
    for idx in 0..512usize {
        if level == 4 {
            // Xen's slots; the kernel half is walked once, through the first pgd (init_mm).
            if (256..272).contains(&idx) || (idx >= 256 && !l4_kernel) {
                continue;
            }
        }
        // SAFETY: idx < 512 entries of a live table page; nothing changes it (stop_machine).
        let e = unsafe { ptr::read_volatile(tbl.add(idx)) };
        if e & PTE_PRESENT == 0 {
            continue;
        }
        let va = canonical(base + idx as u64 * span);
        if level > 1 {
            if e & PTE_PSE != 0 {
                continue; // PV guests have no superpages
            }
            match pte_pfn(e) {
                Some(child)
                    if level == 2
                        && t.capture_walk
                        && va >= t.skip_lo
                        && va + (1 << 21) <= t.skip_hi =>
                {
                    // 2 MiB of the snapshot buffer: ignored pages, nothing to look at.
                    note_table(t, child);
                }
                Some(child) if level == 2 && t.capture_walk && t.in_direct_map(va) => {
                    // The direct map's L1 tables: only the entries of the final set matter
                    // here (capture_direct_map), not all of RAM.
                    note_table(t, child);
                    let k = ((va - t.page_offset) >> 21) as usize;
                    if k < t.dm_n {
                        // SAFETY: dm_tables has dm_n entries.
                        unsafe { *t.dm_tables.add(k) = child };
                    }
                }
                Some(child) => walk(t, child, level - 1, va, false),
                None => t.walk_err = true,
            }
            continue;
        }
        t.visited += 1;
        if t.capture_walk {
            let kind = if va < (1 << 47) {
                0
            } else if t.in_vmemmap(va) {
                2
            } else if va >= 0xffff_ffff_8000_0000 {
                3
            } else {
                1
            };
            t.walk_kinds[kind] += 1;
            capture_entry(t, table_mfn, idx, e, va);
            continue;
        }
        let Some(p) = pte_pfn(e) else { continue };
        if t.prepass {
            // Slot 511 (kernel image, modules, fixmap): Xen PV Linux maps the image through
            // the same L1 tables as the direct map, so these entries are never protected.
            if e & PTE_RW != 0 {
                t.excl.set(p);
            }
            continue;
        }
        let user = va < (1 << 47);
        let protectable = user || t.in_direct_map(va) || t.in_vmemmap(va);
        if t.disarm {
            if !user && e & (PTE_RW | SOFT_WP) == SOFT_WP {
                queue_update(t, table_mfn, idx, (e | PTE_RW) & !SOFT_WP);
            }
            continue;
        }
        if e & PTE_RW == 0 {
            continue;
        }
        if !protectable || (user && e & PTE_SPECIAL != 0) || (!user && t.excl.get(p)) {
            t.always.set(p);
            continue;
        }
        if t.open.get(p) {
            continue; // left writable for now: dirty in the next round
        }
        let new = if user {
            e & !PTE_RW
        } else {
            (e & !PTE_RW) | SOFT_WP
        };
        queue_update(t, table_mfn, idx, new);
        t.protected += 1;
    }
}

/// The capture's walk of the direct map: the entries of the pages of the final set and of
/// the `nowp` pages (the only ones capture_entry changes there), found through the L1
/// tables the page-table walk recorded, instead of every entry of RAM.
fn capture_direct_map(t: &mut Inner) {
    for w in 0..t.send.words {
        let mut m = t.send.word(w).load(Ordering::Relaxed) | t.nowp.word(w).load(Ordering::Relaxed);
        while m != 0 {
            let p = w as u64 * 64 + m.trailing_zeros() as u64;
            m &= m - 1;
            let k = (p / 512) as usize;
            if k >= t.dm_n {
                break;
            }
            // SAFETY: k < dm_n.
            let tp = unsafe { *t.dm_tables.add(k) };
            if tp == u64::MAX {
                continue;
            }
            // SAFETY: tp is a table page the walk found (RAM, mapped in the direct map).
            let tbl = unsafe { ckpt_pfn_to_virt(tp as c_ulong) } as *const u64;
            let idx = (p % 512) as usize;
            // SAFETY: idx < 512 entries of a live table page; nothing changes it.
            let e = unsafe { ptr::read_volatile(tbl.add(idx)) };
            if e & PTE_PRESENT == 0 {
                continue;
            }
            t.visited += 1;
            t.walk_kinds[4] += 1;
            capture_entry(t, p2m(tp), idx, e, t.page_offset + p * PAGE as u64);
        }
    }
}

/// The capture's walk, one L1 entry: the final set (less `nowp`) becomes write-protected,
/// `nowp` pages become writable, the pages no fault can catch join `always`. Only writable or
/// tracker-protected entries are looked at, and direct-map entries need no M2P lookup: the
/// walk's cost is the updates, about one per page written since the last round.
fn capture_entry(t: &mut Inner, table_mfn: u64, idx: usize, e: u64, va: u64) {
    if e & (PTE_RW | SOFT_WP) == 0 {
        return;
    }
    let user = va < (1 << 47);
    let protect = |e: u64| {
        if user {
            e & !PTE_RW
        } else {
            (e & !PTE_RW) | SOFT_WP
        }
    };
    let p = if t.in_direct_map(va) {
        (va - t.page_offset) / PAGE as u64
    } else if !user && va >= t.skip_lo && va < t.skip_hi {
        return;
    } else {
        match pte_pfn(e) {
            Some(p) => p,
            None => return,
        }
    };
    let protectable = user || t.in_direct_map(va) || t.in_vmemmap(va);
    if !protectable || (user && e & PTE_SPECIAL != 0) || (!user && t.excl.get(p)) {
        if e & PTE_RW != 0 {
            t.always.set(p);
        }
        return;
    }
    let keep = t.send.get(p) && !t.nowp.get(p);
    if keep && e & PTE_RW != 0 {
        queue_update(t, table_mfn, idx, protect(e));
        t.protected += 1;
    } else if !keep && !user && t.nowp.get(p) && e & (PTE_RW | SOFT_WP) == SOFT_WP {
        queue_update(t, table_mfn, idx, (e | PTE_RW) & !SOFT_WP);
    }
}

extern "C" fn pgd_cb(pgd: *mut c_void, user_pgd: *mut c_void, arg: *mut c_void) -> c_int {
    // SAFETY: arg is the &mut Inner the walk was started with (stop_machine: ours alone).
    let t = unsafe { &mut *(arg as *mut Inner) };
    // SAFETY: __pa of kernel pointers to pgd pages.
    let pfn = unsafe { ckpt_virt_to_pfn(pgd) } as u64;
    let first = core::mem::replace(&mut t.first_pgd, false);
    if first && !t.disarm && !t.capture_walk {
        // First the pages writable through slot 511: they must stay writable there.
        // SAFETY: the pgd page is mapped; nothing changes it (stop_machine).
        let e = unsafe { ptr::read_volatile((pgd as *const u64).add(511)) };
        if e & PTE_PRESENT != 0 {
            if let Some(l3) = pte_pfn(e) {
                t.prepass = true;
                walk(t, l3, 3, canonical(511 << 39), false);
                t.prepass = false;
            }
        }
    }
    walk(t, pfn, 4, 0, first);
    if !user_pgd.is_null() {
        // The user-mode companion L4 shares the L3s walked above: only the page itself.
        // SAFETY: as above.
        t.always.set(unsafe { ckpt_virt_to_pfn(user_pgd) } as u64);
    }
    0
}

unsafe extern "C" fn grant_cb(gfn: c_ulong, arg: *mut c_void) {
    // SAFETY: arg is the &Inner of the walk.
    let t = unsafe { &*(arg as *const Inner) };
    if let Some(pfn) = m2p(gfn as u64) {
        t.granted.set(pfn);
    }
}

/// The arming walk (or, with `disarm`, its undo). Nothing else runs (stop_machine or the
/// capture routine).
fn arm(t: &mut Inner, grants: bool) -> c_long {
    // SAFETY: sched_clock wrapper.
    let t0 = unsafe { ckpt_clock_ns() };
    if !t.capture_walk {
        for w in 0..t.always.words {
            let a = t.always.word(w).swap(0, Ordering::Relaxed);
            t.was_always.word(w).store(a, Ordering::Relaxed);
        }
    }
    // The capture walk adds to the last arming's set: a page that left it since may have
    // changed unseen, and rounds do not report these pages, so the capture takes them.
    t.protected = 0;
    t.first_pgd = true;
    t.batch_n = 0;
    t.mmu_calls = 0;
    t.mmu_entries = 0;
    t.mmu_ns = 0;
    t.visited = 0;
    t.walk_kinds = [0; 5];
    t.always_tables = 0;
    t.always_excl = 0;
    t.always_granted = 0;
    if !t.disarm && !t.capture_walk {
        fold_open(t);
        plan_open(t);
    }
    if t.capture_walk {
        for k in 0..t.dm_n {
            // SAFETY: dm_tables has dm_n entries.
            unsafe { *t.dm_tables.add(k) = u64::MAX };
        }
    }
    // SAFETY: the kernel calls pgd_cb for init_mm's pgd first, then every pgd on its list.
    unsafe { xen_checkpoint_for_each_pgd(pgd_cb, t as *mut Inner as *mut c_void) };
    if t.capture_walk {
        capture_direct_map(t);
    }
    flush_batch(t);
    // SAFETY: plain hypercall.
    unsafe { ckpt_track_flush_all() };
    // SAFETY: sched_clock wrapper.
    let t_tail = unsafe { ckpt_clock_ns() };
    let mut rc = 0;
    if !t.disarm {
        if grants {
            t.granted.clear_all();
            // SAFETY: grant_cb only reads t through a shared reference.
            if unsafe { ckpt_track_for_each_grant(grant_cb, t as *mut Inner as *mut c_void) } != 0 {
                rc = -EOPNOTSUPP;
            }
        }
        for w in 0..t.excl.words {
            let (e, g) = (
                t.excl.word(w).load(Ordering::Relaxed),
                t.granted.word(w).load(Ordering::Relaxed),
            );
            let x = e | g;
            let ign = t.ignore.word(w).load(Ordering::Relaxed);
            t.always_excl += (e & !ign).count_ones() as u64;
            t.always_granted += (g & !e & !ign).count_ones() as u64;
            let a = t.always.word(w);
            a.store((a.load(Ordering::Relaxed) | x) & !ign, Ordering::Relaxed);
        }
        let prevs = t.p2m_prev;
        let tr: &Inner = t;
        for_each_p2m(tr.max_pfn, |pfn, e| {
            // SAFETY: p2m_prev has max_pfn entries.
            let prev = unsafe { &mut *prevs.add(pfn as usize) };
            if e != *prev {
                *prev = e;
                if is_ram(e) {
                    // Repopulated by Xen: dirty for the round (rounds report `dirty`) and
                    // for a capture walk (the final set takes `always`).
                    tr.dirty.set(pfn);
                    tr.always.set(pfn);
                }
            }
        });
        let mut n = 0;
        for w in 0..t.always.words {
            let a = t.always.word(w).load(Ordering::Relaxed);
            n += a.count_ones() as u64;
            if !t.capture_walk {
                // Left the always-dirty kinds since the last arming (not reported by the
                // rounds while it was one): dirty once.
                let left = t.was_always.word(w).load(Ordering::Relaxed) & !a;
                if left != 0 {
                    t.dirty.word(w).fetch_or(left, Ordering::Relaxed);
                }
            }
        }
        t.always_n = n;
    }
    // SAFETY: as above.
    let t_end = unsafe { ckpt_clock_ns() };
    t.arm_ns = t_end - t0;
    t.arm_tail_ns = t_end - t_tail;
    if t.walk_err {
        rc = -EIO;
    }
    rc
}

unsafe extern "C" fn arm_cb(arg: *mut c_void) -> c_int {
    // SAFETY: arg is the tracker's Inner; stop_machine runs us alone.
    let t = unsafe { &mut *(arg as *mut Inner) };
    arm(t, true) as c_int
}

/// The pages left writable by the last arming were written or not: either way they are
/// dirty in the round that ends now.
fn fold_open(t: &Inner) {
    for w in 0..t.open.words {
        let o = t.open.word(w).load(Ordering::Relaxed);
        if o != 0 {
            t.dirty.word(w).fetch_or(o, Ordering::Relaxed);
        }
    }
}

/// Which pages this arming leaves writable (HOT_ROUNDS): a page written in the round just
/// ended and in the one before, for HOT_ROUNDS rounds; a page at the end of its rounds is
/// protected again (if it is still written, it faults once and opens again).
fn plan_open(t: &mut Inner) {
    let mut n = 0;
    for w in 0..t.open.words {
        let wrote = t.wrote.word(w).swap(0, Ordering::Relaxed);
        let was = t.open.word(w).load(Ordering::Relaxed);
        let prev = t.prev.word(w).swap(wrote | was, Ordering::Relaxed);
        let mut cand = was | (wrote & prev);
        let mut now = 0u64;
        while cand != 0 {
            let b = cand.trailing_zeros();
            cand &= cand - 1;
            let pfn = w * 64 + b as usize;
            // SAFETY: hot_left has max_pfn bytes (bits above max_pfn are never set);
            // nothing else runs (stop_machine).
            let h = unsafe { &mut *t.hot_left.add(pfn) };
            *h = if was & (1 << b) != 0 {
                h.saturating_sub(1)
            } else {
                HOT_ROUNDS
            };
            if *h > 0 {
                now |= 1 << b;
            }
        }
        if now | was != 0 {
            t.open.word(w).store(now, Ordering::Relaxed);
        }
        n += now.count_ones() as u64;
    }
    t.open_n = n;
}

/// Moves the dirty pages of the round just ended into `out` (OR) and clears them.
fn take_round(t: &Inner, out: &mut [u64]) {
    for (w, o) in out.iter_mut().enumerate().take(t.dirty.words) {
        let v = t.dirty.word(w).swap(0, Ordering::AcqRel)
            | t.always.word(w).load(Ordering::Relaxed)
            | t.granted.word(w).load(Ordering::Relaxed)
            | t.pending.word(w).load(Ordering::Relaxed);
        *o |= v & !t.ignore.word(w).load(Ordering::Relaxed);
    }
}

/// The fault tracker of one session.
pub(crate) struct FaultTracker {
    inner: *mut Inner,
}

// SAFETY: the tracker is owned by the session (under the module's lock); the hooks reach
// the same block only through atomics.
unsafe impl Send for FaultTracker {}

impl FaultTracker {
    /// Starts tracking: allocates, installs the hooks and write-protects (stop_machine).
    /// Every RAM page is dirty in the first round.
    pub(crate) fn start() -> Result<FaultTracker, c_long> {
        if !LIVE.load(Ordering::Acquire).is_null() {
            return Err(-(16 as c_long)); // EBUSY
        }
        // SAFETY: exported kernel variable, fixed after boot.
        let max_pfn = unsafe { xen_p2m_size } as u64;
        let p = valloc(core::mem::size_of::<Inner>())? as *mut Inner;
        let t = FaultTracker { inner: p };
        // SAFETY: the zeroed block is ours; every field is valid when zero except the
        // buffers, filled below (drop frees what was allocated).
        let i = unsafe { &mut *p };
        i.max_pfn = max_pfn;
        // SAFETY: plain queries.
        i.page_offset = unsafe { ckpt_track_page_offset() } as u64;
        i.vmemmap = unsafe { ckpt_track_vmemmap() } as u64;
        i.vmemmap_end = i.vmemmap + max_pfn * 64;
        i.dirty = Bits::alloc(max_pfn)?;
        i.wrote = Bits::alloc(max_pfn)?;
        i.open = Bits::alloc(max_pfn)?;
        i.prev = Bits::alloc(max_pfn)?;
        i.hot_left = valloc(max_pfn as usize)? as *mut u8;
        i.dm_n = max_pfn.div_ceil(512) as usize;
        i.dm_tables = valloc(i.dm_n * 8)? as *mut u64;
        i.pending = Bits::alloc(max_pfn)?;
        i.excl = Bits::alloc(max_pfn)?;
        i.always = Bits::alloc(max_pfn)?;
        i.was_always = Bits::alloc(max_pfn)?;
        i.granted = Bits::alloc(max_pfn)?;
        i.ignore = Bits::alloc(max_pfn)?;
        i.send = Bits::alloc(max_pfn)?;
        i.claimed = Bits::alloc(max_pfn)?;
        i.saved = Bits::alloc(max_pfn)?;
        i.nowp = Bits::alloc(max_pfn)?;
        i.freeb = Bits::alloc(max_pfn)?;
        i.p2m_prev = valloc(max_pfn as usize * 8)? as *mut u64;
        i.slot_of = valloc(max_pfn as usize * 4)? as *const AtomicU32;
        i.batch = valloc(BATCH * 16)? as *mut u64;
        // SAFETY: plain query.
        for cpu in 0..unsafe { ckpt_track_nr_cpus() } {
            let (mut start, mut size): (c_ulong, c_ulong) = (0, 0);
            // SAFETY: out-pointers to locals.
            unsafe { ckpt_track_percpu(cpu, &mut start, &mut size) };
            let (s, e) = (start as u64, start as u64 + size as u64);
            let mut va = s & !(PAGE as u64 - 1);
            while va < e {
                if i.in_direct_map(va) {
                    i.excl.set((va - i.page_offset) / PAGE as u64);
                }
                va += PAGE as u64;
            }
        }
        for_each_buffer_pfn(i, |pfn| {
            if pfn < max_pfn {
                i.ignore.set(pfn);
            }
        });
        let prevs = i.p2m_prev;
        for_each_p2m(max_pfn, |pfn, e| {
            // SAFETY: p2m_prev has max_pfn entries.
            unsafe { *prevs.add(pfn as usize) = e };
            if is_ram(e) {
                i.dirty.set(pfn);
            }
        });
        i.syscore = true;
        LIVE.store(p, Ordering::Release);
        // SAFETY: the hooks only reach `LIVE`, which is now complete; process context.
        unsafe {
            ckpt_track_hooks(1);
            ckpt_track_syscore(1);
        }
        // SAFETY: arm_cb gets our block and runs alone.
        let rc = unsafe { ckpt_track_stop_machine(arm_cb, p as *mut c_void) };
        if rc != 0 {
            drop(t);
            return Err(rc as c_long);
        }
        Ok(t)
    }

    /// Leaves `pfn` out of every report and copy (the caller's own buffers: a checkpoint
    /// holds zeros there).
    pub(crate) fn ignore(&self, pfn: u64) {
        let t = self.inner();
        if pfn < t.max_pfn {
            t.ignore.set(pfn);
        }
    }

    /// Undoes [`FaultTracker::ignore`] (a buffer of the caller was freed): the page is an
    /// ordinary page again, dirty in this round since its content changed unseen.
    pub(crate) fn unignore(&self, pfn: u64) {
        let t = self.inner();
        if pfn < t.max_pfn && t.ignore.get(pfn) {
            t.ignore.clear(pfn);
            t.dirty.set(pfn);
        }
    }

    /// Clears in `words` (ceil(max_pfn/64) words) the pages rounds do not report because
    /// only the capture can take them (the always-dirty kinds): the oracle's comparison
    /// leaves them out; the capture digest covers them.
    pub(crate) fn clear_deferred(&self, words: &mut [u64]) -> u64 {
        let t = self.inner();
        let mut n = 0;
        for (w, o) in words.iter_mut().enumerate().take(t.always.words) {
            *o &= !t.always.word(w).load(Ordering::Relaxed);
            n += o.count_ones() as u64;
        }
        n
    }

    /// The owner read `pfn` (before the capture): it is no longer pending. A write after
    /// the read faults and makes it dirty again.
    pub(crate) fn read_done(&self, pfn: u64) {
        let t = self.inner();
        if pfn < t.max_pfn {
            t.pending.clear(pfn);
        }
    }

    /// Makes `pfn` dirty in every round and copied in the capture pause, never protected
    /// (pages another domain writes without a grant: the xenstore and console rings).
    pub(crate) fn always(&self, pfn: u64) {
        let t = self.inner();
        if pfn < t.max_pfn {
            t.excl.set(pfn);
        }
    }

    /// Calls `f` with the pfn of every page of the tracker's buffers that a checkpoint
    /// should hold as zeros (all but the small block the hooks reach).
    pub(crate) fn for_each_buffer_pfn(&self, f: impl FnMut(u64)) {
        for_each_buffer_pfn(self.inner(), f);
    }

    fn inner(&self) -> &Inner {
        // SAFETY: inner is valid for the tracker's life.
        unsafe { &*self.inner }
    }

    /// Ends a round: ORs the pages dirty since the last call (or start) into `out`, and
    /// write-protects again. A page reported must be read after this call returns.
    pub(crate) fn collect(&mut self, out: &mut [u64]) -> Result<u64, c_long> {
        unsafe extern "C" fn cb(arg: *mut c_void) -> c_int {
            // SAFETY: as arm_cb.
            let t = unsafe { &mut *(arg as *mut Inner) };
            let rc = arm(t, true);
            if rc != 0 {
                return rc as c_int;
            }
            // The round's out-bitmap is the tracker's `send` buffer (unused until capture).
            // What it reports stays pending until the owner reads it. The always-dirty
            // pages are not reported: the capture copies them in any case, so sending them
            // in every round (about 2000 pages) would only slow pre-copy down.
            let s = &t.send;
            for w in 0..s.words {
                let v = (t.dirty.word(w).swap(0, Ordering::AcqRel)
                    | t.pending.word(w).load(Ordering::Relaxed))
                    & !t.ignore.word(w).load(Ordering::Relaxed);
                s.word(w).store(v, Ordering::Relaxed);
                t.pending.word(w).store(v, Ordering::Relaxed);
            }
            0
        }
        if self.inner().cow.load(Ordering::Acquire) {
            return Err(-(16 as c_long)); // EBUSY: the session has captured
        }
        // SAFETY: cb gets our block and runs alone.
        let rc = unsafe { ckpt_track_stop_machine(cb, self.inner as *mut c_void) };
        if rc != 0 {
            return Err(rc as c_long);
        }
        let t = self.inner();
        let mut n = 0;
        for (w, o) in out.iter_mut().enumerate().take(t.send.words) {
            let v = t.send.word(w).swap(0, Ordering::Relaxed);
            *o |= v;
            n += v.count_ones() as u64;
        }
        Ok(n)
    }

    /// Inside the capture routine (interrupts off, nothing else runs): the final set goes
    /// into `send` and becomes copy-on-write: its pages stay write-protected and are copied
    /// on their first write; the pages that cannot be protected (other aliases, tables,
    /// grants, per-CPU) and those Xen may write while Linux resumes (see below) are copied
    /// now. With `elide`, free pages are left out of the set. `snap` is the snapshot
    /// buffer (`cap` pages, owned by the caller until stop).
    pub(crate) fn capture(
        &mut self,
        send: &mut [u64],
        snap: *mut u8,
        cap: u64,
        elide: bool,
    ) -> c_long {
        // SAFETY: nothing else runs; the hooks only use atomics of this block.
        let t = unsafe { &mut *self.inner };
        if t.cow.load(Ordering::Acquire) {
            return -(16 as c_long); // EBUSY: one capture per session
        }
        // SAFETY: sched_clock wrapper.
        let t0 = unsafe { ckpt_clock_ns() };
        t.snap = snap;
        t.snap_cap = cap;
        t.skip_lo = snap as u64;
        t.skip_hi = snap as u64 + cap * PAGE as u64;
        t.snap_next.store(0, Ordering::Relaxed);
        t.claimed.clear_all();
        t.saved.clear_all();
        t.nowp.clear_all();
        t.freeb.clear_all();
        t.unprotected = false;
        // Linux's resume path (after this routine returns) kmallocs the grant table's frame
        // list and has Xen write it (GNTTABOP_setup_table); a Xen write into a
        // write-protected page fails and Linux BUGs. So: every page of a slab cache that
        // allocation may use stays writable (`nowp`; copied now if in the final set), and
        // the probe makes sure such a cache has a free object in an existing slab.
        // SAFETY: a hypercall with its answer on this (vmalloc'd) stack.
        let frames = match unsafe { ckpt_track_grant_frames() } {
            0 => 64,
            n => n,
        };
        // SAFETY: kmalloc/kfree pairs (GFP_ATOMIC); a plain query.
        let class = unsafe {
            ckpt_track_kmalloc_probe(frames);
            ckpt_track_kmalloc_class(frames * 8)
        };
        // SAFETY: sched_clock wrapper.
        let tp = unsafe { ckpt_clock_ns() };
        t.cap_probe_ns = tp - t0;
        // The final set: written since the last collect (the probe included), the pages
        // left writable by it, plus the always-dirty pages.
        fold_open(t);
        take_round(t, send);
        // SAFETY: both bitmaps hold ceil(max_pfn/64) words; nothing else runs.
        unsafe {
            ckpt_track_classify(
                if elide {
                    t.freeb.w as *mut c_ulong
                } else {
                    ptr::null_mut()
                },
                t.nowp.w as *mut c_ulong,
                t.max_pfn as c_ulong,
                class,
            )
        };
        // SAFETY: sched_clock wrapper.
        t.cap_classify_ns = unsafe { ckpt_clock_ns() } - tp;
        let mut left_out = 0u64;
        for (w, v) in send.iter_mut().enumerate().take(t.send.words) {
            if elide {
                let free = t.freeb.word(w).load(Ordering::Relaxed);
                left_out += (*v & free).count_ones() as u64;
                *v &= !free;
            }
            t.send.word(w).store(*v, Ordering::Relaxed);
        }
        t.cap_free = left_out;
        // SAFETY: a plain query.
        t.copied_all = unsafe { ckpt_track_evtchn_fifo() } != 0;
        if t.copied_all {
            // FIFO event channels: Xen writes pages of the set (the event array, the control
            // blocks) without a fault, and nothing says which: the whole set is copied now
            // and the protection removed before the resume. A set larger than the buffer
            // voids the capture before anything changes, so tracking can go on.
            let n: u64 = send.iter().map(|v| u64::from(v.count_ones())).sum();
            if n > cap {
                t.snap_next.store(n, Ordering::Release);
                return -ENOSPC;
            }
            t.unprotected = true;
            t.cow.store(true, Ordering::Release);
            for pfn in 0..t.max_pfn {
                if t.send.get(pfn) {
                    t.cow_save(pfn);
                }
            }
            t.pause_copies = t.snap_next.load(Ordering::Relaxed).min(cap);
            t.disarm = true;
            let _ = arm(t, false);
            t.disarm = false;
            // SAFETY: as above.
            let t3 = unsafe { ckpt_clock_ns() };
            t.cap_prep_ns = t3 - t0;
            t.cap_walk_ns = 0;
            t.cap_copy_ns = 0;
            return if t.aborted.load(Ordering::Acquire) {
                -ENOSPC
            } else {
                0
            };
        }
        // SAFETY: as above.
        let t1 = unsafe { ckpt_clock_ns() };
        t.capture_walk = true;
        let rc = arm(t, false);
        t.capture_walk = false;
        // SAFETY: as above.
        let t2 = unsafe { ckpt_clock_ns() };
        if rc != 0 {
            return rc;
        }
        // The pages no fault can catch join the set; they and the `nowp` pages of the set
        // are copied now.
        let mut unprot = 0u64;
        for (w, v) in send.iter_mut().enumerate().take(t.send.words) {
            *v |= t.always.word(w).load(Ordering::Relaxed)
                & !t.ignore.word(w).load(Ordering::Relaxed);
            t.send.word(w).store(*v, Ordering::Relaxed);
            unprot += (t.nowp.word(w).load(Ordering::Relaxed) & *v).count_ones() as u64;
        }
        t.cap_unprotected = unprot;
        t.cow.store(true, Ordering::Release);
        for w in 0..t.send.words {
            let mut now = (t.always.word(w).load(Ordering::Relaxed)
                | t.nowp.word(w).load(Ordering::Relaxed))
                & t.send.word(w).load(Ordering::Relaxed);
            while now != 0 {
                let b = now.trailing_zeros() as u64;
                now &= now - 1;
                t.cow_save(w as u64 * 64 + b);
            }
        }
        t.pause_copies = t.snap_next.load(Ordering::Relaxed).min(cap);
        // SAFETY: as above.
        let t3 = unsafe { ckpt_clock_ns() };
        t.cap_prep_ns = t1 - t0;
        t.cap_walk_ns = t2 - t1;
        t.cap_copy_ns = t3 - t2;
        if t.aborted.load(Ordering::Acquire) {
            return -ENOSPC;
        }
        0
    }

    /// After a capture that did not hold (the snapshot buffer ran out in the pause or while
    /// Linux resumed, before the owner read anything):
    /// copy-on-write ends and tracking goes on, instead of starting over with every page
    /// dirty. The owner read none of the final set since the capture, so it is dirty again,
    /// with every page written since (`note_write` marks them in copy-on-write mode too).
    /// The pages the capture left writable for the resume are in that set; the next round's
    /// arming protects them again. Returns the snapshot pages the capture needed. Fails
    /// (the caller then starts over) once a FIFO capture removed every protection.
    pub(crate) fn cancel_capture(&mut self) -> Result<u64, c_long> {
        unsafe extern "C" fn cb(arg: *mut c_void) -> c_int {
            // SAFETY: as arm_cb.
            let t = unsafe { &mut *(arg as *mut Inner) };
            t.cow.store(false, Ordering::Release);
            // The free pages the capture left out of the set too: one written since the
            // last round may still be writable, so an allocation now would go unseen.
            for w in 0..t.send.words {
                let v = (t.send.word(w).swap(0, Ordering::Relaxed)
                    | t.freeb.word(w).load(Ordering::Relaxed))
                    & !t.always.word(w).load(Ordering::Relaxed)
                    & !t.ignore.word(w).load(Ordering::Relaxed);
                t.dirty.word(w).fetch_or(v, Ordering::Relaxed);
            }
            t.freeb.clear_all();
            t.claimed.clear_all();
            t.saved.clear_all();
            t.nowp.clear_all();
            for pfn in 0..t.max_pfn as usize {
                // SAFETY: slot_of has max_pfn entries. A stale slot would hand a later
                // capture's reader another page's copy.
                unsafe { (*t.slot_of.add(pfn)).store(0, Ordering::Relaxed) };
            }
            // The caller frees the buffer once this returns; nothing copies into it now.
            t.snap = ptr::null_mut();
            t.snap_cap = 0;
            t.skip_lo = 0;
            t.skip_hi = 0;
            t.aborted.store(false, Ordering::Release);
            0
        }
        let t = self.inner();
        if t.unprotected {
            return Err(-EIO);
        }
        let needed = t.snap_next.load(Ordering::Acquire);
        // SAFETY: cb gets our block and runs alone.
        let rc = unsafe { ckpt_track_stop_machine(cb, self.inner as *mut c_void) };
        if rc != 0 {
            return Err(rc as c_long);
        }
        self.inner().snap_next.store(0, Ordering::Release);
        Ok(needed)
    }

    /// The capture-point content of `pfn` into `dst` (one page): the pristine copy, or the
    /// live page if it was not written since the capture (then it is marked sent, so a
    /// later write needs no copy). Each pfn of the set is read once.
    pub(crate) fn read_page(&self, pfn: u64, dst: *mut u8) -> Result<(), c_long> {
        let t = self.inner();
        if t.aborted.load(Ordering::Acquire) {
            return Err(-ENOSPC);
        }
        if pfn >= t.max_pfn || !t.cow.load(Ordering::Acquire) || !t.send.get(pfn) {
            return Err(-EIO);
        }
        // SAFETY: irq state save/restore pair around the claim and the copy, so no write
        // on this CPU can interleave (writers on other CPUs wait for `saved`).
        let flags = unsafe { ckpt_track_irq_save() };
        if !t.claimed.set(pfn) {
            // SAFETY: dst is one page; the page is RAM and still pristine (every mapping
            // was protected at capture, and writers wait for `saved`).
            unsafe { ptr::copy_nonoverlapping(ckpt_pfn_to_virt(pfn as c_ulong), dst, PAGE) };
            t.saved.set(pfn);
            // SAFETY: as above.
            unsafe { ckpt_track_irq_restore(flags) };
            return Ok(());
        }
        // SAFETY: as above.
        unsafe { ckpt_track_irq_restore(flags) };
        while !t.saved.get(pfn) {
            core::hint::spin_loop();
        }
        // SAFETY: slot_of has max_pfn entries.
        let slot = unsafe { (*t.slot_of.add(pfn as usize)).load(Ordering::Acquire) };
        if slot == 0 {
            return Err(if t.aborted.load(Ordering::Acquire) {
                -ENOSPC
            } else {
                -EIO // read twice
            });
        }
        // SAFETY: slot-1 < snap_cap pages of the snapshot buffer, written before `saved`.
        unsafe { ptr::copy_nonoverlapping(t.snap.add((slot as usize - 1) * PAGE), dst, PAGE) };
        Ok(())
    }

    /// The pristine copy of `pfn` saved since the capture, if any (for the oracle's digest,
    /// taken in the capture routine).
    pub(crate) fn pristine(&self, pfn: u64) -> Option<*const u8> {
        let t = self.inner();
        if pfn >= t.max_pfn || !t.saved.get(pfn) {
            return None;
        }
        // SAFETY: slot_of has max_pfn entries.
        let slot = unsafe { (*t.slot_of.add(pfn as usize)).load(Ordering::Acquire) };
        // SAFETY: slot-1 < snap_cap pages of the snapshot buffer.
        (slot != 0).then(|| unsafe { t.snap.add((slot as usize - 1) * PAGE) } as *const u8)
    }

    /// The snapshot buffer ran out since the capture: the capture is void.
    pub(crate) fn aborted(&self) -> bool {
        self.inner().aborted.load(Ordering::Acquire)
    }

    /// Diagnostics for a page of the final set: its bits (send, nowp, always, excl,
    /// granted, saved, claimed, free at capture), the direct-map entry, the slab object size.
    pub(crate) fn diag(&self, pfn: u64) -> (u64, u64, u64) {
        let t = self.inner();
        if pfn >= t.max_pfn {
            return (0, 0, 0);
        }
        let mut b = 0u64;
        for (i, x) in [
            &t.send, &t.nowp, &t.always, &t.excl, &t.granted, &t.saved, &t.claimed, &t.freeb,
        ]
        .iter()
        .enumerate()
        {
            if x.get(pfn) {
                b |= 1 << i;
            }
        }
        // SAFETY: a page-table walk of a kernel address with interrupts off.
        let e = unsafe {
            let f = ckpt_track_irq_save();
            let p = ckpt_track_kernel_pte((t.page_offset + pfn * PAGE as u64) as c_ulong);
            let e = if p.is_null() {
                0
            } else {
                ptr::read_volatile(p)
            };
            ckpt_track_irq_restore(f);
            e
        };
        extern "C" {
            fn ckpt_track_slab_size(pfn: c_ulong) -> c_ulong;
        }
        // SAFETY: a plain query.
        (b, e, unsafe { ckpt_track_slab_size(pfn as c_ulong) } as u64)
    }

    /// Whether `pfn` is in the final set (after capture).
    pub(crate) fn in_capture(&self, pfn: u64) -> bool {
        let t = self.inner();
        pfn < t.max_pfn && t.cow.load(Ordering::Acquire) && t.send.get(pfn)
    }

    pub(crate) fn stats(&self) -> Stats {
        let t = self.inner();
        Stats {
            faults: t.faults.load(Ordering::Relaxed),
            pte_marks: t.pte_marks.load(Ordering::Relaxed),
            protected: t.protected,
            open: t.open_n,
            always: t.always_n,
            arm_ns: t.arm_ns,
            snapshot_used: t.snap_next.load(Ordering::Relaxed).min(t.snap_cap),
            pause_copies: t.pause_copies,
            mmu_errors: t.mmu_errors,
            cap_free: t.cap_free,
            cap_unprotected: t.cap_unprotected,
            cap_prep_ns: t.cap_prep_ns,
            cap_walk_ns: t.cap_walk_ns,
            cap_copy_ns: t.cap_copy_ns,
            cap_probe_ns: t.cap_probe_ns,
            cap_classify_ns: t.cap_classify_ns,
            mmu_calls: t.mmu_calls,
            mmu_entries: t.mmu_entries,
            mmu_ns: t.mmu_ns,
            visited: t.visited,
            walk_kinds: t.walk_kinds,
            always_parts: [t.always_tables, t.always_excl, t.always_granted],
            arm_tail_ns: t.arm_tail_ns,
            copied_all: t.copied_all,
            aborted: t.aborted.load(Ordering::Relaxed),
        }
    }

    /// In a guest revived from the capture (inside the capture routine, nothing else
    /// runs): restores every protected kernel entry and removes the hooks. The buffers
    /// read as zeros here; drop frees them.
    pub(crate) fn revived(&mut self) {
        // SAFETY: nothing else runs.
        let t = unsafe { &mut *self.inner };
        disarm_all(t);
    }
}

/// Ends copy-on-write and tracking: every protected kernel entry writable again, the hooks
/// removed, no live tracker.
fn disarm_all(t: &mut Inner) {
    t.cow.store(false, Ordering::Release);
    t.disarm = true;
    t.walk_err = false;
    let _ = arm(t, false);
    // SAFETY: plain stores of the kernel's hook pointers.
    unsafe { ckpt_track_hooks(0) };
    LIVE.store(ptr::null_mut(), Ordering::Release);
}

impl Drop for FaultTracker {
    /// Stops tracking: restores every protected kernel entry (user entries stay read-only:
    /// Linux's fault path makes them writable again), removes the hooks, waits for their
    /// callers, frees.
    fn drop(&mut self) {
        if self.inner.is_null() {
            return;
        }
        if LIVE.load(Ordering::Acquire) == self.inner {
            unsafe extern "C" fn cb(arg: *mut c_void) -> c_int {
                // SAFETY: as arm_cb.
                let t = unsafe { &mut *(arg as *mut Inner) };
                disarm_all(t);
                0
            }
            // SAFETY: cb gets our block and runs alone.
            if unsafe { ckpt_track_stop_machine(cb, self.inner as *mut c_void) } != 0 {
                // stop_machine cannot fail with NULL cpus; if it did, unhook anyway.
                // SAFETY: as above.
                unsafe { ckpt_track_hooks(0) };
                LIVE.store(ptr::null_mut(), Ordering::Release);
            }
        }
        // SAFETY: waits for every hook caller that may still see the block.
        unsafe { ckpt_track_sync() };
        // SAFETY: no hook reaches the block any more; we own it.
        let t = unsafe { &mut *self.inner };
        if t.syscore {
            // SAFETY: process context (drop runs from the owner's calls or module exit).
            unsafe { ckpt_track_syscore(0) };
            t.syscore = false;
        }
        for b in [
            &mut t.dirty,
            &mut t.wrote,
            &mut t.open,
            &mut t.prev,
            &mut t.pending,
            &mut t.excl,
            &mut t.always,
            &mut t.was_always,
            &mut t.granted,
            &mut t.ignore,
            &mut t.send,
            &mut t.claimed,
            &mut t.saved,
            &mut t.nowp,
            &mut t.freeb,
        ] {
            b.free();
        }
        vfree(t.p2m_prev as *mut c_void);
        vfree(t.hot_left as *mut c_void);
        vfree(t.dm_tables as *mut c_void);
        vfree(t.slot_of as *mut c_void);
        vfree(t.batch as *mut c_void);
        vfree(self.inner as *mut c_void);
        self.inner = ptr::null_mut();
    }
}

/// Calls `f` with the pfn of every page of the tracker's buffers except the `Inner` block
/// (that one is part of the checkpoint: a revived guest needs it to undo the protection).
fn for_each_buffer_pfn(t: &Inner, mut f: impl FnMut(u64)) {
    extern "C" {
        fn ckpt_vmalloc_to_pfn(v: *const c_void) -> c_ulong;
    }
    let mut each = |p: *const c_void, bytes: usize| {
        let mut off = 0;
        while off < bytes {
            // SAFETY: the address lies inside a live vmalloc area of ours.
            f(unsafe { ckpt_vmalloc_to_pfn((p as *const u8).add(off) as *const c_void) } as u64);
            off += PAGE;
        }
    };
    let bits = t.dirty.words * 8;
    for b in [
        &t.dirty,
        &t.pending,
        &t.wrote,
        &t.open,
        &t.prev,
        &t.excl,
        &t.always,
        &t.was_always,
        &t.granted,
        &t.ignore,
        &t.send,
        &t.claimed,
        &t.saved,
        &t.nowp,
        &t.freeb,
    ] {
        each(b.w as *const c_void, bits);
    }
    each(t.hot_left as *const c_void, t.max_pfn as usize);
    each(t.dm_tables as *const c_void, t.dm_n * 8);
    each(t.p2m_prev as *const c_void, t.max_pfn as usize * 8);
    each(t.slot_of as *const c_void, t.max_pfn as usize * 4);
    each(t.batch as *const c_void, BATCH * 16);
}
