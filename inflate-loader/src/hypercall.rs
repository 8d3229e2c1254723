//! Hypercalls through the page Xen filled in at `hypercall_page` (32 bytes per entry).
//! The only place that issues hypercalls; every caller passes plain integers or pointers to
//! #[repr(C)] structures that live for the duration of the call.
use core::arch::asm;

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

extern "C" {
    static hypercall_page: [u8; 4096];
}

/// Issue hypercall `nr` with up to five arguments (rdi, rsi, rdx, r10, r8).
///
/// # Safety
/// Pointer arguments must be valid for what the hypercall reads/writes.
pub unsafe fn raw(nr: usize, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let ret: i64;
    // SAFETY: the hypercall page is filled by Xen before entry; each entry is a 32-byte stub
    // that clobbers rcx and r11 (syscall) and may clobber the argument registers.
    unsafe {
        let entry = (&raw const hypercall_page as *const u8).add(nr * 32);
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
