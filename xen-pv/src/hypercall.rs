//! Hypercalls through the page Xen filled in for the domain (32 bytes per entry; public/xen.h
//! numbers). The only place that issues hypercalls; every caller passes plain integers or
//! pointers to #[repr(C)] structures that live for the duration of the call. The page's address
//! is given once by `init` (inflate-loader: its `hypercall_page` symbol; stage 2: the address
//! stage 1 hands it), before the first hypercall.
use core::arch::asm;
use core::sync::atomic::{AtomicPtr, Ordering};

pub const UPDATE_VA_MAPPING: usize = 14;
pub const CONSOLE_IO: usize = 18;
pub const GRANT_TABLE_OP: usize = 20;
pub const SCHED_OP: usize = 29;
pub const EVENT_CHANNEL_OP: usize = 32;

pub const SCHEDOP_YIELD: u64 = 0;
pub const SCHEDOP_SHUTDOWN: u64 = 2;
pub const SCHEDOP_POLL: u64 = 3;
pub const SHUTDOWN_POWEROFF: u32 = 0;
pub const SHUTDOWN_CRASH: u32 = 3;

pub const UVMF_INVLPG: u64 = 2;

static HYPERCALL_PAGE: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());

/// Record where Xen's hypercall page is mapped.
///
/// # Safety
/// `page` must be the virtual address of the 4 KiB page Xen filled with hypercall stubs, mapped
/// executable for as long as hypercalls are made.
pub unsafe fn init(page: *const u8) {
    HYPERCALL_PAGE.store(page as *mut u8, Ordering::Relaxed);
}

/// Issue hypercall `nr` with up to five arguments (rdi, rsi, rdx, r10, r8).
///
/// # Safety
/// Pointer arguments must be valid for what the hypercall reads/writes.
pub unsafe fn raw(nr: usize, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let ret: i64;
    let page = HYPERCALL_PAGE.load(Ordering::Relaxed);
    debug_assert!(!page.is_null(), "xen_pv::hypercall::init was not called");
    // SAFETY: `init` gave the page Xen filled (caller's contract); each entry is a 32-byte stub
    // that clobbers rcx and r11 (syscall) and may clobber the argument registers.
    unsafe {
        let entry = page.add(nr * 32);
        asm!("call {entry}",
             entry = in(reg) entry,
             inlateout("rdi") a1 => _, inlateout("rsi") a2 => _, inlateout("rdx") a3 => _,
             inlateout("r10") a4 => _, inlateout("r8") a5 => _,
             lateout("rax") ret, lateout("rcx") _, lateout("r11") _);
    }
    ret
}

#[repr(C)]
struct SchedShutdown {
    reason: u32,
}

pub fn shutdown(reason: u32) -> ! {
    let arg = SchedShutdown { reason };
    loop {
        // SAFETY: arg lives across the call.
        unsafe { raw(SCHED_OP, SCHEDOP_SHUTDOWN, &arg as *const _ as u64, 0, 0, 0) };
    }
}

pub fn yield_cpu() {
    // SAFETY: no pointer arguments.
    unsafe { raw(SCHED_OP, SCHEDOP_YIELD, 0, 0, 0, 0) };
}

/// Xen's debug console (HYPERVISOR_console_io). Debian's Xen refuses it for a domU (EPERM);
/// we try it anyway for early failures on a debug build of Xen.
pub fn debug_write(s: &[u8]) -> i64 {
    // SAFETY: the buffer is valid for s.len() bytes.
    unsafe { raw(CONSOLE_IO, 0, s.len() as u64, s.as_ptr() as u64, 0, 0) }
}

/// Map machine frame `mfn` at virtual address `va` (which must already have an L1 table).
pub fn update_va_mapping(va: u64, pte: u64) -> i64 {
    // SAFETY: no pointer arguments; Xen validates the mapping.
    unsafe { raw(UPDATE_VA_MAPPING, va, pte, UVMF_INVLPG, 0, 0) }
}

#[repr(C)]
pub struct SchedPoll {
    pub ports: *const u32,
    pub nr_ports: u32,
    pub timeout: u64,
}

/// Block until one of `ports` is pending or until Xen system time `deadline_ns` (0 = none).
pub fn poll(ports: &[u32], deadline_ns: u64) -> i64 {
    let arg = SchedPoll {
        ports: ports.as_ptr(),
        nr_ports: ports.len() as u32,
        timeout: deadline_ns,
    };
    // SAFETY: arg and the ports slice outlive the call.
    unsafe { raw(SCHED_OP, SCHEDOP_POLL, &arg as *const _ as u64, 0, 0, 0) }
}

pub fn event_channel_op<T>(cmd: u64, arg: &mut T) -> i64 {
    // SAFETY: T is one of the #[repr(C)] evtchn_* argument structures.
    unsafe { raw(EVENT_CHANNEL_OP, cmd, arg as *mut T as u64, 0, 0, 0) }
}

pub fn grant_table_op<T>(cmd: u64, arg: &mut T, count: u32) -> i64 {
    // SAFETY: T is one of the #[repr(C)] gnttab_* argument structures.
    unsafe {
        raw(
            GRANT_TABLE_OP,
            cmd,
            arg as *mut T as u64,
            count as u64,
            0,
            0,
        )
    }
}

// ---- Restore in place: the self-service hypercalls of a 64-bit PV domU (public/xen.h,
// public/callback.h, public/memory.h, public/vcpu.h). Every wrapper returns Xen's rc unchanged
// so the caller can print it: Debian's release Xen does not say why it refuses.

pub const SET_TRAP_TABLE: usize = 0;
pub const MMU_UPDATE: usize = 1;
pub const SET_GDT: usize = 2;
pub const STACK_SWITCH: usize = 3;
pub const FPU_TASKSWITCH: usize = 5;
pub const MEMORY_OP: usize = 12;
pub const VM_ASSIST: usize = 21;
pub const SET_SEGMENT_BASE: usize = 25;
pub const MMUEXT_OP: usize = 26;
pub const CALLBACK_OP: usize = 30;

pub const DOMID_SELF: u64 = 0x7FF0;

/// `struct mmu_update`: `ptr` is a machine address whose low 2 bits select the command.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct MmuUpdate {
    pub ptr: u64,
    pub val: u64,
}
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;
pub const MMU_MACHPHYS_UPDATE: u64 = 1;

/// `HYPERVISOR_mmu_update(req, count, success_count, DOMID_SELF)`; returns rc and how many
/// requests Xen applied.
pub fn mmu_update(reqs: &[MmuUpdate]) -> (i64, u32) {
    let mut done: u32 = 0;
    // SAFETY: reqs and done outlive the call; Xen reads reqs.len() entries.
    let rc = unsafe {
        raw(
            MMU_UPDATE,
            reqs.as_ptr() as u64,
            reqs.len() as u64,
            &mut done as *mut u32 as u64,
            DOMID_SELF,
            0,
        )
    };
    (rc, done)
}

/// `struct mmuext_op` (x86_64): cmd, arg1 (mfn or linear address), arg2 (nr_ents...).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct MmuextOp {
    pub cmd: u32,
    pub _pad: u32,
    pub arg1: u64,
    pub arg2: u64,
}
pub const MMUEXT_PIN_L1_TABLE: u32 = 0;
pub const MMUEXT_UNPIN_TABLE: u32 = 4;
pub const MMUEXT_NEW_BASEPTR: u32 = 5;
pub const MMUEXT_SET_LDT: u32 = 13;
pub const MMUEXT_NEW_USER_BASEPTR: u32 = 15;
const _: () = assert!(core::mem::size_of::<MmuextOp>() == 24);

/// PIN_L1..L4 are 0..3: the command for a table of `level`.
pub const fn mmuext_pin_cmd(level: u8) -> u32 {
    MMUEXT_PIN_L1_TABLE + level as u32 - 1
}

pub fn mmuext(cmd: u32, arg1: u64, arg2: u64) -> i64 {
    let op = MmuextOp {
        cmd,
        _pad: 0,
        arg1,
        arg2,
    };
    // SAFETY: op outlives the call; count 1, no done pointer.
    unsafe {
        raw(
            MMUEXT_OP,
            &op as *const MmuextOp as u64,
            1,
            0,
            DOMID_SELF,
            0,
        )
    }
}

/// `HYPERVISOR_set_gdt(frame_list, entries)`.
pub fn set_gdt(frames: &[u64], entries: u64) -> i64 {
    // SAFETY: frames outlives the call; Xen reads ceil(entries/512) <= frames.len() of them.
    unsafe { raw(SET_GDT, frames.as_ptr() as u64, entries, 0, 0, 0) }
}

pub fn stack_switch(ss: u64, sp: u64) -> i64 {
    // SAFETY: no pointer arguments.
    unsafe { raw(STACK_SWITCH, ss, sp, 0, 0, 0) }
}

pub fn fpu_taskswitch(set: u64) -> i64 {
    // SAFETY: no pointer arguments.
    unsafe { raw(FPU_TASKSWITCH, set, 0, 0, 0, 0) }
}

pub const VMASST_CMD_ENABLE: u64 = 0;
pub fn vm_assist(cmd: u64, ty: u64) -> i64 {
    // SAFETY: no pointer arguments.
    unsafe { raw(VM_ASSIST, cmd, ty, 0, 0, 0) }
}

pub const SEGBASE_FS: u64 = 0;
pub const SEGBASE_GS_USER: u64 = 1;
pub const SEGBASE_GS_KERNEL: u64 = 2;
pub const SEGBASE_GS_USER_SEL: u64 = 3;
pub fn set_segment_base(which: u64, base: u64) -> i64 {
    // SAFETY: no pointer arguments.
    unsafe { raw(SET_SEGMENT_BASE, which, base, 0, 0, 0) }
}

/// `struct callback_register` (x86_64).
#[repr(C)]
struct CallbackRegister {
    ty: u16,
    flags: u16,
    _pad: u32,
    address: u64,
}
pub const CALLBACKOP_REGISTER: u64 = 0;
pub const CALLBACKTYPE_EVENT: u16 = 0;
pub const CALLBACKTYPE_FAILSAFE: u16 = 1;
pub const CALLBACKTYPE_SYSCALL: u16 = 2;
pub const CALLBACKF_MASK_EVENTS: u16 = 1;
pub fn callback_register(ty: u16, flags: u16, address: u64) -> i64 {
    let arg = CallbackRegister {
        ty,
        flags,
        _pad: 0,
        address,
    };
    // SAFETY: arg outlives the call.
    unsafe {
        raw(
            CALLBACK_OP,
            CALLBACKOP_REGISTER,
            &arg as *const _ as u64,
            0,
            0,
            0,
        )
    }
}

/// `struct xen_memory_reservation`.
#[repr(C)]
struct MemoryReservation {
    extent_start: u64,
    nr_extents: u64,
    extent_order: u32,
    mem_flags: u32,
    domid: u16,
}
pub const XENMEM_DECREASE_RESERVATION: u64 = 1;
/// Give frames back (for PV the extents are mfns). Returns how many Xen released, or -errno.
pub fn decrease_reservation(mfns: &[u64]) -> i64 {
    let r = MemoryReservation {
        extent_start: mfns.as_ptr() as u64,
        nr_extents: mfns.len() as u64,
        extent_order: 0,
        mem_flags: 0,
        domid: DOMID_SELF as u16,
    };
    // SAFETY: r and the extent array outlive the call; Xen only reads the extents for a
    // decrease.
    unsafe {
        raw(
            MEMORY_OP,
            XENMEM_DECREASE_RESERVATION,
            &r as *const _ as u64,
            0,
            0,
            0,
        )
    }
}

/// `struct trap_info` (x86_64), the element of set_trap_table's list.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct TrapInfo {
    pub vector: u8,
    pub flags: u8,
    pub cs: u16,
    pub _pad: u32,
    pub address: u64,
}
const _: () = assert!(core::mem::size_of::<TrapInfo>() == 16);

/// `HYPERVISOR_set_trap_table`: Xen reads entries until one with address 0; the caller's
/// slice must end with such a terminator.
pub fn set_trap_table(list: &[TrapInfo]) -> i64 {
    assert!(
        list.last().is_some_and(|t| t.address == 0),
        "trap table without terminator"
    );
    // SAFETY: list outlives the call and is terminated.
    unsafe { raw(SET_TRAP_TABLE, list.as_ptr() as u64, 0, 0, 0, 0) }
}
