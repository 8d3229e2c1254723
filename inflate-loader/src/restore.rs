//! Restore in place: this domain becomes the checkpointed guest (docs/inflate-loader.md,
//! "Restore in place"). The pure work (validation, translation, localising the page tables,
//! p2m and start_info rewrite, decoding the vCPU, finding the pad) is `inflate_core::restore`;
//! this module does what needs Xen: the frame window, the pad's mapping in our own tables, the
//! dry run, and phase B's hypercalls in their order, each with its return code on the console.
use crate::startinfo::StartInfo;
use crate::{console, kprintln, mm};
use inflate_core::frames::FrameBook;
use inflate_core::receive::Receiver;
use inflate_core::restore::{self, FrameAccess, MachineFrames, OwnDomain, Prepared};
use xen_pv::hypercall::{self as hc, TrapInfo};
use xen_pv::jump::{self, Transfer};
use xen_pv::mmu;

/// Loader frames for inflate-core: machine frames through our p2m, contents through the
/// copy window.
pub struct Frames;

impl MachineFrames for Frames {
    fn mfn(&self, loader_pfn: u64) -> u64 {
        mm::pfn_to_mfn(loader_pfn)
    }
    fn loader_pfn(&self, mfn: u64) -> Option<u64> {
        mm::own_pfn_of_mfn(mfn)
    }
}

impl FrameAccess for Frames {
    fn with_frame(&mut self, loader_pfn: u64, f: &mut dyn FnMut(&mut [u8; 4096])) {
        mm::with_frame(mm::pfn_to_mfn(loader_pfn), |p| f(p))
    }
}

/// One bit per loader pfn: set for the frames the restored guest uses (its RAM and our
/// store and console rings). Filled at the end of phase A, before any M2P change; B8 gives
/// back every other frame.
static mut GUEST_FRAMES: [u64; 4096] = [0; 4096];

fn guest_bits() -> &'static mut [u64; 4096] {
    // SAFETY: single vCPU, no reentrancy: phase A fills it, phase B reads it, never at once.
    unsafe { &mut *(&raw mut GUEST_FRAMES) }
}

fn is_guest_frame(pfn: u64) -> bool {
    guest_bits()
        .get((pfn / 64) as usize)
        .is_some_and(|w| w & (1 << (pfn % 64)) != 0)
}

/// Phase A's result: the guest is ready to be entered, nothing irreversible done yet.
pub struct Armed {
    pub prepared: Prepared,
    /// Loader pfns of the L3, L2, L1 chain that maps the pad in our own tables.
    chain: [u64; 3],
    l4_slot: usize,
    /// Our pfns of the store and console rings, taken before any M2P change (after B2 the
    /// M2P names the guest's pfns for those frames).
    store_lpfn: Option<u64>,
    console_lpfn: Option<u64>,
}

/// Bounded text for a result record's message.
pub type Msg = heapless_msg::Msg;

mod heapless_msg {
    /// A short UTF-8 message in a fixed buffer (result records carry at most 224 bytes).
    pub struct Msg {
        b: [u8; 224],
        n: usize,
    }
    impl Msg {
        pub fn new(args: core::fmt::Arguments<'_>) -> Msg {
            let mut m = Msg { b: [0; 224], n: 0 };
            let _ = core::fmt::write(&mut m, args);
            m
        }
        pub fn as_str(&self) -> &str {
            core::str::from_utf8(&self.b[..self.n]).unwrap_or("?")
        }
    }
    impl core::fmt::Write for Msg {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            for c in s.chars() {
                let mut t = [0u8; 4];
                let e = c.encode_utf8(&mut t);
                if self.n + e.len() > self.b.len() {
                    return Ok(());
                }
                self.b[self.n..self.n + e.len()].copy_from_slice(e.as_bytes());
                self.n += e.len();
            }
            Ok(())
        }
    }
}

macro_rules! msg {
    ($($t:tt)*) => { Msg::new(format_args!($($t)*)) };
}

fn own(si: &StartInfo) -> OwnDomain {
    OwnDomain {
        store_mfn: si.store_mfn,
        store_evtchn: si.store_evtchn,
        console_mfn: si.console_mfn,
        console_evtchn: si.console_evtchn,
        shared_info: si.shared_info,
    }
}

fn boot_l4_pfn(si: &StartInfo) -> u64 {
    si.pt_base >> 12
}

/// Phase A (recoverable): prepare the guest's frames, then map the pad. On error everything
/// this function did is undone; the caller abandons the plan.
pub fn phase_a(rx: &mut Receiver<'_>, si: &StartInfo) -> Result<Armed, Msg> {
    let t0 = mm::system_time_ns();
    let (store_lpfn, console_lpfn) = (
        mm::own_pfn_of_mfn(si.store_mfn),
        mm::own_pfn_of_mfn(si.console_mfn),
    );
    let prepared = {
        restore::prepare(
            &rx.records,
            &mut rx.plan,
            &mut rx.book,
            &Frames,
            &mut Frames,
            &own(si),
        )
        .map_err(|e| msg!("restore check failed: {e}"))?
    };
    kprintln!(
        "restore: phase A: {} RAM pages, max_pfn {}, start_info pfn {}, store pfn {}, console pfn {}, pad at {:#x} (mfn {:#x}), {} ms",
        prepared.ram_pages,
        prepared.max_pfn,
        prepared.start_info_pfn,
        prepared.store_pfn,
        prepared.console_pfn,
        prepared.pad.va,
        prepared.pad.mfn,
        (mm::system_time_ns() - t0) / 1_000_000
    );
    let bits = guest_bits();
    bits.fill(0);
    let mut n = 0u64;
    for (mfn, _) in prepared.m2p_updates(&rx.records, &rx.plan, &Frames) {
        if let Some(p) = mm::own_pfn_of_mfn(mfn).filter(|&p| p < bits.len() as u64 * 64) {
            bits[(p / 64) as usize] |= 1 << (p % 64);
            n += 1;
        }
    }
    kprintln!("restore: phase A: {n} loader frames become the guest's ({} page tables, {} PTEs localised, {} pinned)",
        prepared.page_tables, prepared.ptes, prepared.pinned);
    let (chain, l4_slot) = map_pad(&mut rx.book, si, prepared.pad.va, prepared.pad.mfn)?;
    Ok(Armed {
        prepared,
        chain,
        l4_slot,
        store_lpfn,
        console_lpfn,
    })
}

/// Map the pad page at its own virtual address in our tables: a fresh L3 -> L2 -> L1 chain
/// hung off an empty slot of our boot L4 (which is pinned, so only mmu_update may write it).
fn map_pad(
    book: &mut FrameBook<'_>,
    si: &StartInfo,
    va: u64,
    pad_mfn: u64,
) -> Result<([u64; 3], usize), Msg> {
    let slot = mmu::va_indices(va)[0];
    // SAFETY: our boot L4 is mapped read-only at pt_base (Xen's domain builder maps the boot
    // page tables inside our initial mapping); one aligned u64 read.
    let e4 = unsafe { core::ptr::read_volatile((si.pt_base as *const u64).add(slot)) };
    let mut chain = [0u64; 3];
    for (k, c) in chain.iter_mut().enumerate() {
        *c = match book.alloc() {
            Some(p) => p,
            None => {
                for &p in &chain[..k] {
                    book.release(p);
                }
                return Err(msg!("no free frame for the pad's page-table chain"));
            }
        };
    }
    let mfn = |p: u64| mm::pfn_to_mfn(p);
    let c = match mmu::chain_for(va, pad_mfn, chain.map(mfn), e4) {
        Ok(c) => c,
        Err(e) => {
            for &p in &chain {
                book.release(p);
            }
            return Err(match e {
                mmu::ChainError::XenSlot(_) => msg!("pad address {va:#x} lies in Xen's L4 slots"),
                mmu::ChainError::SlotInUse(s) => msg!(
                    "pad address {va:#x} collides with the loader's own mappings (L4 slot {s})"
                ),
            });
        }
    };
    for (t, i, e) in c.tables {
        mm::with_frame(t, |p| {
            p.fill(0);
            p[i * 8..i * 8 + 8].copy_from_slice(&e.to_le_bytes());
        });
    }
    // No writable mapping of a future page table may remain when Xen validates the chain.
    let rc = mm::unmap_window();
    let rc2 = mmu::hook(mm::pfn_to_mfn(boot_l4_pfn(si)), &c);
    kprintln!("restore: A7 pad chain L3/L2/L1 at loader pfns {:?} in L4 slot {}: unmap window rc {rc}, mmu_update rc {rc2}", chain, c.l4_slot);
    if rc != 0 || rc2 != 0 {
        for &p in &chain {
            book.release(p);
        }
        return Err(msg!(
            "Xen refused the pad's mapping: unmap rc {rc}, mmu_update rc {rc2}"
        ));
    }
    Ok((chain, c.l4_slot))
}

/// Undo phase A (ABORT, EOF, timeout, or a failed check after the pad was mapped): unhook the
/// pad chain and give its frames back. The caller abandons the plan (every guest frame).
pub fn undo(armed: Armed, book: &mut FrameBook<'_>, si: &StartInfo) {
    let rc = mmu::set_entry(mm::pfn_to_mfn(boot_l4_pfn(si)), armed.l4_slot, 0);
    for &p in &armed.chain {
        book.release(p);
    }
    kprintln!("restore: undone: pad chain unhooked (mmu_update rc {rc}), frames returned");
}

fn m2p_batch(armed: &Armed, rx: &Receiver<'_>) -> (i64, u64) {
    mmu::machphys(armed.prepared.m2p_updates(&rx.records, &rx.plan, &Frames))
}

/// The dry run's undo of B2: every frame back to the loader pfn it has in our p2m.
fn m2p_back(
    rx: &Receiver<'_>,
    max_pfn: u64,
    store: Option<u64>,
    console: Option<u64>,
) -> (i64, u64) {
    let placed = (0..=max_pfn)
        .filter_map(|p| rx.plan.lookup(p))
        .map(|lp| (mm::pfn_to_mfn(lp), lp));
    let rings = [store, console]
        .into_iter()
        .flatten()
        .map(|lp| (mm::pfn_to_mfn(lp), lp));
    mmu::machphys(placed.chain(rings))
}

/// Pin (or unpin) every table the guest had pinned. Returns the first failing rc, the number
/// that succeeded, and the first failure's (level, mfn).
fn pins(armed: &Armed, rx: &Receiver<'_>, pin: bool) -> (i64, u64, (u8, u64)) {
    let (mut first, mut ok, mut at) = (0i64, 0u64, (0u8, 0u64));
    for (level, mfn) in armed.prepared.pins(&rx.records, &rx.plan, &Frames) {
        let cmd = if pin {
            hc::mmuext_pin_cmd(level)
        } else {
            hc::MMUEXT_UNPIN_TABLE
        };
        let rc = hc::mmuext(cmd, mfn, 0);
        if rc == 0 {
            ok += 1;
        } else if first == 0 {
            first = rc;
            at = (level, mfn);
        }
    }
    (first, ok, at)
}

fn gdt_frames(p: &Prepared) -> ([u64; 16], usize) {
    let n = (p.vcpu.gdt_ents as usize).div_ceil(512).min(16);
    let mut f = [0u64; 16];
    f[..n].copy_from_slice(&p.vcpu.gdt_frames[..n]);
    (f, n)
}

/// The recipe's dry run (kernel option `restore-dry-run`): the M2P updates, pins, GDT and
/// user base pointer on the real tables, each rc printed, then all of it undone. Proves Xen's
/// type checks accept the localised tables without crossing the point of no return.
pub fn dry_run(armed: &Armed, rx: &Receiver<'_>, si: &StartInfo) -> bool {
    let _ = si;
    let (rc1, n1) = m2p_batch(armed, rx);
    kprintln!("restore: dry run B2 machphys updates: rc {rc1}, {n1} done");
    let (rc2, n2, at) = pins(armed, rx, true);
    kprintln!(
        "restore: dry run B3 pins: rc {rc2}, {n2} pinned (first failure L{} mfn {:#x})",
        at.0,
        at.1
    );
    let (frames, n) = gdt_frames(&armed.prepared);
    let rc3 = hc::set_gdt(&frames[..n], armed.prepared.vcpu.gdt_ents);
    let rc4 = hc::mmuext(hc::MMUEXT_SET_LDT, 0, 0);
    kprintln!(
        "restore: dry run B4 set_gdt({} frames, {} entries): rc {rc3}; SET_LDT(0): rc {rc4}",
        n,
        armed.prepared.vcpu.gdt_ents
    );
    let cr1 = armed.prepared.vcpu.ctrlreg[1] >> 12;
    let rc5 = if cr1 != 0 {
        hc::mmuext(hc::MMUEXT_NEW_USER_BASEPTR, cr1, 0)
    } else {
        0
    };
    kprintln!("restore: dry run B5 NEW_USER_BASEPTR({cr1:#x}): rc {rc5}");
    // Undo in reverse.
    let u5 = hc::mmuext(hc::MMUEXT_NEW_USER_BASEPTR, 0, 0);
    let u3 = hc::set_gdt(&[], 0);
    let (u2, n2u, _) = pins(armed, rx, false);
    let (u1, n1u) = m2p_back(
        rx,
        armed.prepared.max_pfn,
        armed.store_lpfn,
        armed.console_lpfn,
    );
    kprintln!("restore: dry run undone: user baseptr rc {u5}, set_gdt(0) rc {u3}, unpin rc {u2} ({n2u}), machphys back rc {u1} ({n1u})");
    let ok = rc1 == 0 && rc2 == 0 && rc3 == 0 && rc4 == 0 && rc5 == 0;
    kprintln!(
        "restore: dry run {}",
        if ok {
            "ok: Xen accepts the guest's tables, GDT and user L4"
        } else {
            "FAILED"
        }
    );
    ok
}

fn fatal_after_commit(step: &str, rc: i64) -> ! {
    kprintln!("restore: {step} FAILED (rc {rc}) after the point of no return; crashing the domain");
    console::flush();
    hc::shutdown(hc::SHUTDOWN_CRASH);
}

fn check(step: &str, rc: i64) {
    kprintln!("restore: {step}: rc {rc}");
    if rc != 0 {
        fatal_after_commit(step, rc);
    }
}

/// Phase B: the point of no return is its first hypercall. Devices are handed over and the
/// connection is closed before this is called.
pub fn commit(armed: Armed, rx: &Receiver<'_>, si: &StartInfo) -> ! {
    let p = &armed.prepared;
    let v = &p.vcpu;
    console::flush();
    // B1: the window is already unmapped (A7); nothing else maps a guest frame writably.
    let rc = mm::unmap_window();
    check("B1 unmap copy window", rc);
    // B2: M2P for every guest frame.
    let (rc, n) = m2p_batch(&armed, rx);
    kprintln!("restore: B2 machphys updates: {n} done");
    check("B2 machphys updates", rc);
    // B3: pins (Xen validates each table recursively).
    let (rc, n, at) = pins(&armed, rx, true);
    kprintln!(
        "restore: B3 pins: {n} pinned (first failure L{} mfn {:#x})",
        at.0,
        at.1
    );
    check("B3 pins", rc);
    // B4: GDT and LDT.
    let (frames, nf) = gdt_frames(p);
    check("B4 set_gdt", hc::set_gdt(&frames[..nf], v.gdt_ents));
    check("B4 SET_LDT(0, 0)", hc::mmuext(hc::MMUEXT_SET_LDT, 0, 0));
    // B5: the rest of the vCPU state that has a self-service hypercall.
    check(
        "B5 stack_switch",
        hc::stack_switch(v.kernel_ss, v.kernel_sp),
    );
    const VGCF_FAILSAFE_DISABLES_EVENTS: u64 = 1 << 3;
    const VGCF_SYSCALL_DISABLES_EVENTS: u64 = 1 << 4;
    let mask = |bit: u64| {
        if v.flags & bit != 0 {
            hc::CALLBACKF_MASK_EVENTS
        } else {
            0
        }
    };
    check(
        "B5 event callback",
        hc::callback_register(hc::CALLBACKTYPE_EVENT, 0, v.event_callback_eip),
    );
    check(
        "B5 failsafe callback",
        hc::callback_register(
            hc::CALLBACKTYPE_FAILSAFE,
            mask(VGCF_FAILSAFE_DISABLES_EVENTS),
            v.failsafe_callback_eip,
        ),
    );
    check(
        "B5 syscall callback",
        hc::callback_register(
            hc::CALLBACKTYPE_SYSCALL,
            mask(VGCF_SYSCALL_DISABLES_EVENTS),
            v.syscall_callback_eip,
        ),
    );
    for ty in 0..64u64 {
        if v.vm_assist & (1 << ty) != 0 {
            check("B5 vm_assist", hc::vm_assist(hc::VMASST_CMD_ENABLE, ty));
        }
    }
    // Linux enables runstate_update_flag at boot; Xen may not offer it, so only report.
    kprintln!(
        "restore: B5 vm_assist(runstate_update_flag): rc {}",
        hc::vm_assist(hc::VMASST_CMD_ENABLE, 5)
    );
    let cr1 = v.ctrlreg[1] >> 12;
    if cr1 != 0 {
        check(
            "B5 NEW_USER_BASEPTR",
            hc::mmuext(hc::MMUEXT_NEW_USER_BASEPTR, cr1, 0),
        );
    }
    kprintln!("restore: B5 cr4 <- {:#x}", v.ctrlreg[4]);
    console::flush();
    // SAFETY: a PV kernel's `mov cr4` is emulated by Xen (only the bits a PV guest may own
    // are taken); it touches no memory.
    unsafe { core::arch::asm!("mov cr4, {}", in(reg) v.ctrlreg[4], options(nostack)) };
    if let Some(xcr0) = p.xcr0 {
        kprintln!("restore: B5 xcr0 <- {xcr0:#x}");
        console::flush();
        // SAFETY: xsetbv is emulated for PV guests; rcx = 0 selects XCR0.
        unsafe {
            core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") xcr0 as u32, in("edx") (xcr0 >> 32) as u32, options(nostack))
        };
    }
    check("B5 fpu_taskswitch(0)", hc::fpu_taskswitch(0));
    // B6: shared_info as after a toolstack restore: no pending events, every channel masked,
    // this vCPU's upcalls still masked (Linux re-registers vcpu_info and unmasks itself).
    shared_info_fixup(p.max_pfn);
    kprintln!(
        "restore: B6 shared_info: pending cleared, all channels masked, max_pfn {}",
        p.max_pfn + 1
    );
    // B7: segments: the user gs selector first (loading it clears the base), then the bases.
    check(
        "B7 gs user selector",
        hc::set_segment_base(hc::SEGBASE_GS_USER_SEL, v.user_regs.gs as u64),
    );
    check(
        "B7 fs base",
        hc::set_segment_base(hc::SEGBASE_FS, v.fs_base),
    );
    check(
        "B7 gs user base",
        hc::set_segment_base(hc::SEGBASE_GS_USER, v.gs_base_user),
    );
    check(
        "B7 gs kernel base",
        hc::set_segment_base(hc::SEGBASE_GS_KERNEL, v.gs_base_kernel),
    );
    // B8: give back every loader frame the guest does not use.
    give_back(&armed, si);
    // Prepare the transfer block while our own code and data are still all we touch.
    let mut t = Transfer {
        fpu: [0; 512],
        rbx: v.user_regs.rbx,
        rbp: v.user_regs.rbp,
        r12: v.user_regs.r12,
        r13: v.user_regs.r13,
        r14: v.user_regs.r14,
        r15: v.user_regs.r15,
        rsp: v.user_regs.rsp,
        pad_va: p.pad.va,
        loader_l4_mfn: mm::pfn_to_mfn(boot_l4_pfn(si)),
        op: jump::new_baseptr(v.ctrlreg[3] >> 12),
    };
    t.fpu.copy_from_slice(&v.fpu_ctxt[..]);
    jump::set(t);
    // B9: the trap table goes last: from here a fault of ours vectors into guest code.
    let mut compact = [restore::vcpu::TrapInfo::default(); restore::vcpu::TRAP_TABLE_MAX];
    let n = v.trap_table(&mut compact);
    let mut traps = [TrapInfo::default(); restore::vcpu::TRAP_TABLE_MAX];
    for (t, c) in traps.iter_mut().zip(&compact[..n]) {
        *t = TrapInfo {
            vector: c.vector,
            flags: c.flags,
            cs: c.cs,
            _pad: 0,
            address: c.address,
        };
    }
    kprintln!(
        "restore: B9 set_trap_table ({} entries); B10 jump to the pad at {:#x}, guest L4 mfn {:#x}",
        n - 1,
        p.pad.va,
        v.ctrlreg[3] >> 12
    );
    console::flush();
    let rc = hc::set_trap_table(&traps[..n]);
    if rc != 0 {
        fatal_after_commit("B9 set_trap_table", rc);
    }
    // SAFETY: every piece of vCPU state is the guest's now (B2-B9), the pad is mapped (A7),
    // the transfer block is set.
    unsafe { jump::enter() }
}

fn shared_info_fixup(max_pfn: u64) {
    // SAFETY: shared_info is mapped writable at boot and stays mapped.
    unsafe { xen_pv::shared_info::reset_events(mm::shared_info_page(), max_pfn + 1) };
}

/// B8: XENMEM_decrease_reservation for every loader frame that is not a guest frame, except
/// our boot L4 (still pinned and current; the guest unpins it) and the store and console
/// rings (the guest adopts them). Frames still mapped by our tables stay alive until the
/// guest's unpin drops the last reference; the others are freed at once, so nothing below
/// touches an unmapped frame again.
fn give_back(armed: &Armed, si: &StartInfo) {
    let keep = [
        boot_l4_pfn(si),
        armed.store_lpfn.unwrap_or(u64::MAX),
        armed.console_lpfn.unwrap_or(u64::MAX),
    ];
    let mut batch = [0u64; 512];
    let (mut n, mut asked, mut freed, mut first_rc) = (0usize, 0u64, 0u64, 0i64);
    let flush = |b: &[u64], freed: &mut u64, first_rc: &mut i64| {
        let rc = hc::decrease_reservation(b);
        if rc >= 0 {
            *freed += rc as u64;
        }
        if rc != b.len() as i64 && *first_rc == 0 {
            *first_rc = if rc < 0 { rc } else { -1 };
        }
    };
    for pfn in 0..mm::nr_pages() {
        if keep.contains(&pfn) || is_guest_frame(pfn) {
            continue;
        }
        batch[n] = mm::pfn_to_mfn(pfn);
        n += 1;
        asked += 1;
        if n == batch.len() {
            flush(&batch[..n], &mut freed, &mut first_rc);
            n = 0;
        }
    }
    if n > 0 {
        flush(&batch[..n], &mut freed, &mut first_rc);
    }
    kprintln!("restore: B8 decrease_reservation: {freed} of {asked} loader frames given back (first short batch rc {first_rc})");
}
