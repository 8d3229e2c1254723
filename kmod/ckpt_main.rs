// SPDX-License-Identifier: GPL-2.0
//! `/dev/checkpoint`: a Xen PV guest copies its own memory while it runs and captures a
//! consistent checkpoint through Linux's own Xen suspend sequence. The ABI is specified in
//! docs/checkpoint-abi.md; this file implements it. The misc device and one-line wrappers
//! for kernel inlines are in ckpt_shim.c; the capture hook is kmod/patches/.
//!
//! State and locking: all module state is one [`State`] inside a kernel [`Mutex`], pinned
//! in a `KBox` that the module object ([`Checkpoint`]) owns. The shim gets a pointer to that
//! mutex when the device is registered and hands it to every entry point (ioctl, read,
//! release); the device is deregistered before the module object is dropped, and every open
//! file holds a reference on the module, so the pointer outlives every call. The shim also
//! serialises callers with an interruptible mutex of its own (a process waiting for a long
//! capture must stay freezable, or Linux's suspend sequence could not freeze it), so the
//! Rust mutex is never contended; it is what hands out `&mut State`. The capture routine
//! runs in stop_machine while the ioctl that started it holds the guard and waits: it gets
//! `&mut State` through the `arg` pointer of `xen_checkpoint_suspend` (exclusive because
//! its owner is blocked and every other CPU is stopped).

use core::ffi::{c_int, c_long, c_uint, c_ulong, c_void};
use core::ptr;
use kernel::prelude::*;
use kernel::sync::{new_mutex, Mutex};

module! {
    type: Checkpoint,
    name: "checkpoint",
    author: "laundromat",
    description: "self-checkpointing Xen PV guest: /dev/checkpoint",
    license: "GPL",
}

// The ABI shared with checkpointd and the C test program: one definition, in
// checkpoint-abi/src/abi.rs (kmod/checkpoint_abi.rs links to it; the build copies it here).
#[allow(dead_code, unreachable_pub, missing_docs, clippy::all)]
mod checkpoint_abi {
    include!("checkpoint_abi.rs");
}
use checkpoint_abi::dev::{
    Capture as CaptureArg, Facts, Hold as HoldArg, Round, Table, Throttle as ThrottleArg, Track,
    ABI_VERSION, CAPTURE_ORACLE, HOLD_ARM, IOC_CAPTURE, IOC_GET_FACTS, IOC_NEXT_ROUND,
    IOC_OUTPUT_HOLD, IOC_READ_TABLE, IOC_THROTTLE, IOC_TRACK_START, IOC_TRACK_STOP, MAX_READ_PAGES,
    P2M_INVALID, TABLE_P2M, TABLE_P2M_CAPTURED, TABLE_P2M_FRAMES, TABLE_PAGE_TYPES, THROTTLE_SET,
    TRACK_ELIDE_FREE, TRACK_FAULT, TRACK_ORACLE,
};
use checkpoint_abi::page_type::{PINNED as TYPE_PINNED, UNPOPULATED as TYPE_NOT_RAM};
use checkpoint_abi::vcpu_ctx;

mod ckpt_track;
use ckpt_track::FaultTracker;

const PAGE: usize = checkpoint_abi::dev::PAGE_SIZE;
const VCPU_CTX_BYTES: usize = vcpu_ctx::SIZE;

// errnos
const EIO: c_long = 5;
const ENOMEM: c_long = 12;
const EFAULT: c_long = 14;
const EBUSY: c_long = 16;
const EINVAL: c_long = 22;
const ENOTTY: c_long = 25;
const ENOSPC: c_long = 28;
const ENODATA: c_long = 61;
const EOPNOTSUPP: c_long = 95;

/// Reference-hash values with a meaning of their own; real hashes avoid both.
const REF_NEVER_READ: u64 = 0;
const REF_EXCLUDED: u64 = u64::MAX;

// Xen MMUEXT commands used to ask Xen whether a table page is pinned.
const MMUEXT_PIN_L1_TABLE: c_uint = 0;

/// Throttle period bounds (ms): below 10 the work item's tick cannot follow, above 10 s a
/// process would look hung.
const THROTTLE_PERIOD_MIN: u32 = 10;
const THROTTLE_PERIOD_MAX: u32 = 10_000;

/// Xen's `struct vcpu_guest_context` (x86_64), kept as bytes: the asm capture entry and
/// the kernel's xen_checkpoint_vcpu_context() fill it at the offsets of Xen's layout.
/// 64-byte aligned for FXSAVE (16 would do).
#[repr(C, align(64))]
pub struct VcpuCtx([u8; VCPU_CTX_BYTES]);

extern "C" {
    fn ckpt_shim_register(dev: *const c_void) -> c_int;
    fn ckpt_shim_deregister();
    fn ckpt_vzalloc(size: c_ulong) -> *mut c_void;
    fn ckpt_vfree(p: *mut c_void);
    fn ckpt_copy_to_user(to: *mut c_void, from: *const c_void, n: c_ulong) -> c_ulong;
    fn ckpt_copy_from_user(to: *mut c_void, from: *const c_void, n: c_ulong) -> c_ulong;
    fn ckpt_pfn_to_virt(pfn: c_ulong) -> *mut u8;
    fn ckpt_virt_to_pfn(v: *const c_void) -> c_ulong;
    fn ckpt_vmalloc_to_pfn(v: *const c_void) -> c_ulong;
    fn ckpt_cond_resched();
    fn ckpt_now_ns() -> u64;
    fn ckpt_online_cpus() -> c_uint;
    fn ckpt_xen_pv() -> c_int;
    fn ckpt_m2p_entries() -> c_ulong;
    fn ckpt_m2p() -> *const c_ulong;
    fn ckpt_pin_probe(mfn: c_ulong, pin_cmd: c_uint) -> c_int;
    fn ckpt_pin_probe_many(
        mfns: *const c_ulong,
        cmds: *const c_uint,
        n: c_uint,
        pinned: *mut u8,
    ) -> c_int;
    fn ckpt_clock_ns() -> u64;
    fn ckpt_read_cr0() -> c_ulong;
    fn ckpt_read_cr4() -> c_ulong;
    fn ckpt_unpin_table(mfn: c_ulong) -> c_int;
    fn ckpt_free_run(pfn: c_ulong) -> c_ulong;
    fn ckpt_hold_arm(saddr: u32, daddr: u32, sport: u16, dport: u16) -> c_int;
    fn ckpt_hold_disarm();
    fn ckpt_hold_release() -> u64;
    fn ckpt_throttle_set(
        pid: c_int,
        stop_ms: c_uint,
        period_ms: c_uint,
        stopped: *mut u64,
    ) -> c_int;
    fn ckpt_throttle_release(pid: c_int, stopped: *mut u64) -> c_int;
    fn ckpt_throttle_release_all();
    fn copy_from_kernel_nofault(dst: *mut c_void, src: *const c_void, size: usize) -> c_long;
    static xen_p2m_addr: *mut c_ulong;
    static xen_p2m_size: c_ulong;
    static xen_start_info: *mut u8;
    fn xen_checkpoint_suspend(
        capture: unsafe extern "C" fn(c_ulong, *mut c_void) -> c_int,
        arg: *mut c_void,
    ) -> c_int;
    fn xen_checkpoint_for_each_pgd(
        f: extern "C" fn(*mut c_void, *mut c_void, *mut c_void) -> c_int,
        arg: *mut c_void,
    ) -> c_int;
    fn xen_checkpoint_vcpu_context(ctxt: *mut VcpuCtx);
    /// The asm entry below.
    fn ckpt_capture_entry(start_info_gfn: c_ulong, state: *mut c_void) -> c_int;
}

// The capture entry: what xen_suspend calls instead of the suspend hypercall, with rdi = the
// start_info gfn and rsi = the `arg` given to xen_checkpoint_suspend, i.e. the `State`. A
// setjmp-like save of this vCPU's registers into `State::ctx` (user_regs), with rip = label
// 1 and rax = 0, so a guest revived from the checkpoint continues at 1 and returns 0
// ("resumed in a new domain") to xen_suspend. rbx holds the State pointer before it is
// saved, so the revived copy finds its State in rbx at 1. The first pass calls
// ckpt_capture_rest(gfn, state) deeper on the stack, below the saved rsp, so this frame
// (callee-saved registers and return address) stays as captured, and returns its result
// (1 = cancelled, the source carries on).
core::arch::global_asm!(
    ".pushsection .text.ckpt_capture_entry,\"ax\"",
    ".globl ckpt_capture_entry",
    ".type ckpt_capture_entry,@function",
    "ckpt_capture_entry:",
    "endbr64",
    "push rbp",
    "mov rbp, rsp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "sub rsp, 8",
    "mov rbx, rsi",
    "mov rax, [rsi + {ctx}]",
    "fxsave64 [rax]",
    "mov [rax + {r15}], r15",
    "mov [rax + {r14}], r14",
    "mov [rax + {r13}], r13",
    "mov [rax + {r12}], r12",
    "mov [rax + {rbp}], rbp",
    "mov [rax + {rbx}], rbx",
    "mov [rax + {rdx}], rdi", // rdx: start_info mfn (PV gfn == mfn)
    "lea rcx, [rip + 1f]",
    "mov [rax + {rip}], rcx", // rip
    "mov [rax + {rsp}], rsp",
    "pushfq",
    "pop rcx",
    "mov [rax + {rflags}], rcx",
    "xor ecx, ecx",
    "mov cx, cs",
    "mov [rax + {cs}], rcx",
    "mov cx, ss",
    "mov [rax + {ss}], rcx",
    "mov cx, es",
    "mov [rax + {es}], rcx",
    "mov cx, ds",
    "mov [rax + {ds}], rcx",
    "mov cx, fs",
    "mov [rax + {fs}], rcx",
    "mov cx, gs",
    "mov [rax + {gs}], rcx",
    "call {rest}", // rdi = gfn, rsi = state, both untouched since entry
    "jmp 2f",
    // The pad: inflate-loader enters a restored guest by jumping here with eax = mmuext_op
    // and rdi = {NEW_BASEPTR, guest L4}; Xen switches page tables and returns to rcx = 1:
    // with rax = 0. It must stay the 2 bytes right before 1: (the loader finds it at rip - 2).
    "syscall",
    "1:",
    // r9: the loader's L4 mfn (0 under `xl restore`), see ckpt_capture_resumed.
    "mov rdi, rbx",
    "mov rsi, r9",
    "call {resumed}",
    "xor eax, eax",
    "2:",
    "add rsp, 8",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    ".size ckpt_capture_entry, .-ckpt_capture_entry",
    ".popsection",
    ctx = const core::mem::offset_of!(State, ctx) + core::mem::offset_of!(VBuf, ptr),
    rest = sym ckpt_capture_rest,
    resumed = sym ckpt_capture_resumed,
    r15 = const vcpu_ctx::R15,
    r14 = const vcpu_ctx::R14,
    r13 = const vcpu_ctx::R13,
    r12 = const vcpu_ctx::R12,
    rbp = const vcpu_ctx::RBP,
    rbx = const vcpu_ctx::RBX,
    rdx = const vcpu_ctx::RDX,
    rip = const vcpu_ctx::RIP,
    rsp = const vcpu_ctx::RSP,
    rflags = const vcpu_ctx::RFLAGS,
    cs = const vcpu_ctx::CS,
    ss = const vcpu_ctx::SS,
    es = const vcpu_ctx::ES,
    ds = const vcpu_ctx::DS,
    fs = const vcpu_ctx::FS,
    gs = const vcpu_ctx::GS,
);

/// A vmalloc'd, zeroed array that knows its size; freed when dropped.
struct VBuf {
    ptr: *mut u8,
    bytes: usize,
}

// SAFETY: a VBuf owns its vmalloc area exclusively; vmalloc memory has no thread affinity.
unsafe impl Send for VBuf {}

impl VBuf {
    const fn empty() -> Self {
        VBuf {
            ptr: ptr::null_mut(),
            bytes: 0,
        }
    }
    fn alloc(bytes: usize) -> Option<VBuf> {
        // SAFETY: vzalloc has no preconditions; null means failure.
        let p = unsafe { ckpt_vzalloc(bytes.max(1) as c_ulong) } as *mut u8;
        if p.is_null() {
            None
        } else {
            Some(VBuf { ptr: p, bytes })
        }
    }
    fn is_empty(&self) -> bool {
        self.ptr.is_null()
    }
    fn u64s(&self) -> *mut u64 {
        self.ptr as *mut u64
    }
    /// Calls f with the pfn of every page of the buffer.
    fn for_each_pfn(&self, mut f: impl FnMut(u64)) {
        let mut off = 0;
        while off < self.bytes {
            // SAFETY: the address lies inside this live vmalloc area.
            f(unsafe { ckpt_vmalloc_to_pfn(self.ptr.add(off) as *const c_void) } as u64);
            off += PAGE;
        }
    }
}

impl Drop for VBuf {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: ptr came from vzalloc and is freed once (drop runs once).
            unsafe { ckpt_vfree(self.ptr as *mut c_void) };
        }
    }
}

/// Everything the module knows. The asm entry finds the context buffer through `ctx`.
#[repr(C)]
struct State {
    /// The capture's vCPU context (VCPU_CTX_BYTES, Xen's layout), allocated at load: a
    /// State holding it by value is built on the stack and overflowed the kernel stack.
    ctx: VBuf,
    owner: usize,
    max_pfn: u64,
    /// TRACK_START flags of the session (TRACK_ELIDE_FREE).
    track_flags: u64,
    refs: VBuf,
    /// Excluded pages the owner read before they became excluded (one bit per pfn): the
    /// capture set includes them so that they read as zeros there (docs/checkpoint-abi.md).
    zeroed: VBuf,
    round: u64,
    /// One page for pread's copies (allocated at load, excluded while a session exists).
    bounce: VBuf,
    /// One page the scan copies each page into (fault-tolerantly) before hashing it.
    scan: VBuf,
    /// Pages pread could not read since the last round (reported by the next round).
    read_faults: u64,
    // capture
    held: bool,
    snap: VBuf,
    snap_pfns: VBuf,
    snap_cap: u64,
    snap_n: u64,
    cap_p2m: VBuf,
    cap_types: VBuf,
    cap_frames: VBuf,
    n_frames: u64,
    ran: bool,
    resumed: bool,
    loader_l4: u64,
    overflow: bool,
    walk_err: bool,
    pt_pages: u64,
    scanned: u64,
    cap_unreadable: u64,
    cap_free: u64,
    clk_in: u64,
    clk_out: u64,
    /// Fault tracker: end of the vCPU state + page-type walk in the capture routine.
    clk_tables: u64,
    clk_p2m: u64,
    /// The session's fault tracker (None: the scan tracker); docs/fault-tracker.md.
    fault: Option<FaultTracker>,
    /// The final set of a fault-tracker capture, filled by the capture routine.
    cap_send: VBuf,
    /// What the fault tracker's capture step returned (0 or -errno).
    fault_err: c_long,
    /// CAPTURE_ORACLE: the capture routine also takes `oracle_digest`.
    cap_oracle: bool,
    oracle_digest: u64,
    /// Fault tracker + CAPTURE_ORACLE: pages out of the final set that differ from what the
    /// owner last read (should be 0), and the first few of them.
    oracle_diff: u64,
    oracle_diff_pfns: [u64; 8],
    /// Fault tracker + CAPTURE_ORACLE: each pfn's hash in the digest, so that a read of the
    /// final set that returns something else is counted (and logged at TRACK_STOP).
    oracle_hashes: VBuf,
    oracle_late: u64,
    oracle_late_pfns: [u64; 8],
}

impl State {
    fn new() -> Self {
        State {
            ctx: VBuf::empty(),
            owner: 0,
            max_pfn: 0,
            track_flags: 0,
            refs: VBuf::empty(),
            zeroed: VBuf::empty(),
            round: 0,
            bounce: VBuf::empty(),
            scan: VBuf::empty(),
            read_faults: 0,
            held: false,
            snap: VBuf::empty(),
            snap_pfns: VBuf::empty(),
            snap_cap: 0,
            snap_n: 0,
            cap_p2m: VBuf::empty(),
            cap_types: VBuf::empty(),
            cap_frames: VBuf::empty(),
            n_frames: 0,
            ran: false,
            resumed: false,
            loader_l4: 0,
            overflow: false,
            walk_err: false,
            pt_pages: 0,
            scanned: 0,
            cap_unreadable: 0,
            cap_free: 0,
            clk_in: 0,
            clk_out: 0,
            clk_tables: 0,
            clk_p2m: 0,
            fault: None,
            cap_send: VBuf::empty(),
            fault_err: 0,
            cap_oracle: false,
            oracle_digest: 0,
            oracle_diff: 0,
            oracle_diff_pfns: [0; 8],
            oracle_hashes: VBuf::empty(),
            oracle_late: 0,
            oracle_late_pfns: [0; 8],
        }
    }
}

type Dev = Mutex<State>;

/// The state behind the pointer the shim passes to every entry point.
///
/// # Safety
/// `dev` must be the pointer given to `ckpt_shim_register` by [`Checkpoint::init`]; it stays
/// valid until the module object drops (after deregistration, with no file open).
unsafe fn dev<'a>(dev: *const c_void) -> &'a Dev {
    // SAFETY: the caller's contract.
    unsafe { &*(dev as *const Dev) }
}

fn max_pfn() -> u64 {
    // SAFETY: exported kernel variable, fixed after boot.
    unsafe { xen_p2m_size as u64 }
}

/// Linux's raw p2m entry for pfn.
fn p2m(pfn: u64) -> u64 {
    if pfn >= max_pfn() {
        return P2M_INVALID;
    }
    // SAFETY: pfn < xen_p2m_size; the p2m array is mapped for its whole size (missing
    // ranges point at Linux's shared "missing" page) and never unmapped.
    unsafe { ptr::read_volatile(xen_p2m_addr.add(pfn as usize)) as u64 }
}

/// Calls `f(pfn, entry)` for every pfn below `n` in order, as [`p2m`] would return them:
/// the passes over all of RAM (in the capture pause and at each re-arm) read the array
/// pointer and size once instead of per pfn.
fn for_each_p2m(n: u64, mut f: impl FnMut(u64, u64)) {
    // SAFETY: exported kernel variables, fixed after boot.
    let (src, lim) = unsafe { (xen_p2m_addr as *const c_ulong, xen_p2m_size as u64) };
    for pfn in 0..n {
        let e = if pfn < lim {
            // SAFETY: as in p2m.
            unsafe { ptr::read_volatile(src.add(pfn as usize)) as u64 }
        } else {
            P2M_INVALID
        };
        f(pfn, e);
    }
}

fn is_ram(e: u64) -> bool {
    checkpoint_abi::dev::p2m_is_ram(e)
}

fn page_ptr(pfn: u64) -> *const u8 {
    // SAFETY: pure address arithmetic (__va).
    unsafe { ckpt_pfn_to_virt(pfn as c_ulong) }
}

/// Copies page `pfn` through its direct mapping into `dst` (one page) without faulting:
/// false if the mapping is gone (the balloon driver unmaps a page before it clears its p2m
/// entry, and nothing here holds it off).
fn copy_page_nofault(pfn: u64, dst: *mut u8) -> bool {
    // SAFETY: dst is one writable page (caller); copy_from_kernel_nofault tolerates an
    // unmapped source and returns non-zero instead of faulting.
    unsafe {
        copy_from_kernel_nofault(dst as *mut c_void, page_ptr(pfn) as *const c_void, PAGE) == 0
    }
}

/// True if the page's direct mapping can be read (checked without faulting). Only used in
/// stop_machine, where nothing can unmap the page between this probe and the read.
fn page_readable(pfn: u64) -> bool {
    let mut probe = 0u64;
    // SAFETY: copy_from_kernel_nofault tolerates unmapped addresses.
    unsafe {
        copy_from_kernel_nofault(
            ptr::addr_of_mut!(probe) as *mut c_void,
            page_ptr(pfn) as *const c_void,
            8,
        ) == 0
    }
}

/// Pages of the free block starting at `pfn` (0 if pfn does not start one). A hint outside
/// stop_machine (no zone lock is taken); exact inside it, where no CPU holds a zone lock.
fn free_run(pfn: u64) -> u64 {
    // SAFETY: reads struct page of a valid pfn only (the shim checks pfn_valid).
    unsafe { ckpt_free_run(pfn as c_ulong) as u64 }
}

/// 64-bit hash of one page: four lanes of xor-rotate-multiply, then a final mix. Never
/// returns REF_NEVER_READ or REF_EXCLUDED.
///
/// # Safety
/// `p` must point at 4096 readable bytes that stay mapped during the call (a module buffer,
/// or a page read in stop_machine after `page_readable`).
unsafe fn hash_page(p: *const u8) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let w = p as *const u64;
    let (mut a, mut b, mut c, mut d) = (K, K ^ 1, K ^ 2, K ^ 3);
    let mut i = 0;
    while i < PAGE / 8 {
        // SAFETY: the caller's contract; volatile because a live page may change under us
        // (a torn read is fine: the next round sees the difference).
        unsafe {
            a = (a ^ ptr::read_volatile(w.add(i)))
                .rotate_left(31)
                .wrapping_mul(K);
            b = (b ^ ptr::read_volatile(w.add(i + 1)))
                .rotate_left(29)
                .wrapping_mul(K);
            c = (c ^ ptr::read_volatile(w.add(i + 2)))
                .rotate_left(27)
                .wrapping_mul(K);
            d = (d ^ ptr::read_volatile(w.add(i + 3)))
                .rotate_left(25)
                .wrapping_mul(K);
        }
        i += 4;
    }
    let mut h = a ^ b.rotate_left(17) ^ c.rotate_left(34) ^ d.rotate_left(51);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    if h == REF_NEVER_READ || h == REF_EXCLUDED {
        h = 1;
    }
    h
}

fn to_user<T>(dst: u64, v: &T) -> Result<(), c_long> {
    to_user_bytes(dst, v as *const T as *const u8, core::mem::size_of::<T>())
}

fn to_user_bytes(dst: u64, src: *const u8, n: usize) -> Result<(), c_long> {
    // SAFETY: copy_to_user checks the user range; src is n readable kernel bytes (callers
    // pass module buffers or a reference).
    if unsafe { ckpt_copy_to_user(dst as *mut c_void, src as *const c_void, n as c_ulong) } != 0 {
        Err(-EFAULT)
    } else {
        Ok(())
    }
}

fn from_user<T: Default>(src: u64) -> Result<T, c_long> {
    let mut v = T::default();
    // SAFETY: copy_from_user checks the user range; v is a plain repr(C) struct of integers
    // (any bit pattern is valid).
    if unsafe {
        ckpt_copy_from_user(
            ptr::addr_of_mut!(v) as *mut c_void,
            src as *const c_void,
            core::mem::size_of::<T>() as c_ulong,
        )
    } != 0
    {
        return Err(-EFAULT);
    }
    Ok(v)
}

/// Sets `refs[pfn] = r` for the pfn of every page of `b` (refs: one u64 per pfn below
/// `max_pfn`, or empty; `zeroed`: the session's bitmap of excluded pages already sent).
fn mark_refs(refs: &VBuf, zeroed: &VBuf, max_pfn: u64, b: &VBuf, r: u64) {
    if refs.is_empty() {
        return;
    }
    b.for_each_pfn(|pfn| set_ref_class(refs, zeroed, max_pfn, pfn, r));
}

/// `refs[pfn] = r` for r = REF_EXCLUDED or REF_NEVER_READ. A page the owner has read that
/// becomes excluded (a buffer allocated after round 1) is remembered in `zeroed`: the
/// capture set carries it, so the checkpoint holds zeros there and not its old content.
fn set_ref_class(refs: &VBuf, zeroed: &VBuf, max_pfn: u64, pfn: u64, r: u64) {
    if pfn >= max_pfn || refs.is_empty() {
        return;
    }
    // SAFETY: refs holds max_pfn entries; vmalloc memory written through its raw pointer,
    // no Rust reference to it exists.
    let e = unsafe { &mut *refs.u64s().add(pfn as usize) };
    if !zeroed.is_empty() {
        // SAFETY: zeroed holds ceil(max_pfn/64) words (allocated with refs).
        let w = unsafe { &mut *zeroed.u64s().add((pfn / 64) as usize) };
        let bit = 1u64 << (pfn % 64);
        if r != REF_EXCLUDED {
            *w &= !bit;
        } else if *e != REF_NEVER_READ && *e != REF_EXCLUDED {
            *w |= bit;
        }
    }
    *e = r;
}

/// The oracle's kernel-log line for a page it found wrong: the tracker's bits for it, its
/// direct-map entry and the object size of its slab.
fn log_diag(f: &FaultTracker, pfn: u64, what: &str) {
    let (bits, pte, slab) = f.diag(pfn);
    pr_info!(
        "oracle: pfn {:#x} {}: bits {:#x} (send nowp always excl granted saved claimed free) pte {:#x} slab {}\n",
        pfn,
        what,
        bits,
        pte,
        slab
    );
}

fn bitmap_bytes(max_pfn: u64) -> u64 {
    max_pfn.div_ceil(64) * 8
}

impl State {
    /// The reference hash of pfn (< max_pfn, session running).
    fn ref_of(&self, pfn: u64) -> u64 {
        debug_assert!(pfn < self.max_pfn && !self.refs.is_empty());
        // SAFETY: refs holds max_pfn entries while a session exists; callers check both.
        unsafe { *self.refs.u64s().add(pfn as usize) }
    }
    fn set_ref(&mut self, pfn: u64, r: u64) {
        // SAFETY: as in ref_of.
        unsafe { *self.refs.u64s().add(pfn as usize) = r };
    }

    /// Sets the reference of every page of b to r (module buffers are excluded from
    /// tracking: their content is meaningless in a checkpoint and a revived module discards
    /// them).
    fn mark_refs(&self, b: &VBuf, r: u64) {
        mark_refs(&self.refs, &self.zeroed, self.max_pfn, b, r);
        if let Some(f) = &self.fault {
            if r == REF_EXCLUDED {
                // Excluded pages are not the fault tracker's business either.
                b.for_each_pfn(|pfn| f.ignore(pfn));
            } else {
                // A freed buffer's pages go back to the allocator: tracked (and sent) again.
                b.for_each_pfn(|pfn| f.unignore(pfn));
            }
        }
    }

    fn free_capture(&mut self) {
        let bufs = [
            core::mem::replace(&mut self.snap, VBuf::empty()),
            core::mem::replace(&mut self.snap_pfns, VBuf::empty()),
            core::mem::replace(&mut self.cap_p2m, VBuf::empty()),
            core::mem::replace(&mut self.cap_types, VBuf::empty()),
            core::mem::replace(&mut self.cap_frames, VBuf::empty()),
        ];
        for b in &bufs {
            self.mark_refs(b, REF_NEVER_READ);
        }
        drop(bufs);
        self.held = false;
        self.snap_n = 0;
        self.snap_cap = 0;
    }

    fn stop_session(&mut self) {
        // The output hold and the throttles belong to the session: a migration that ends
        // any way at all (checkpointd exits, is killed, or stops tracking) lets the guest
        // talk again and every throttled process run.
        // SAFETY: process context (ioctl, release or module exit), as unregistering needs.
        unsafe {
            ckpt_hold_release();
            ckpt_throttle_release_all();
        }
        if let Some(f) = &self.fault {
            let t = f.stats();
            pr_info!(
                "fault tracker: {} faults, {} pte marks, last arm {} protected + {} always in {} us, snapshot {} used ({} in the pause), {} mmu_update requests refused{}\n",
                t.faults,
                t.pte_marks,
                t.protected,
                t.always,
                t.arm_ns / 1000,
                t.snapshot_used,
                t.pause_copies,
                t.mmu_errors,
                if t.aborted { ", ABORTED (snapshot full)" } else { "" },
            );
        }
        if !self.oracle_hashes.is_empty() {
            let p = &self.oracle_late_pfns;
            pr_info!(
                "oracle: {} pages of the final set read back different from the capture point (first: {:#x} {:#x} {:#x} {:#x} {:#x} {:#x} {:#x} {:#x})\n",
                self.oracle_late,
                p[0],
                p[1],
                p[2],
                p[3],
                p[4],
                p[5],
                p[6],
                p[7]
            );
        }
        self.oracle_hashes = VBuf::empty();
        // The tracker goes first: after the capture it may still copy into the snapshot
        // buffer, and its hooks must be gone before anything it points at is freed.
        self.fault = None;
        self.cap_send = VBuf::empty();
        self.free_capture();
        self.refs = VBuf::empty();
        self.zeroed = VBuf::empty();
        self.scan = VBuf::empty();
        self.owner = 0;
        self.round = 0;
        self.track_flags = 0;
        self.read_faults = 0;
    }

    fn check_owner(&self, file: usize) -> Result<(), c_long> {
        if self.owner == 0 {
            Err(-EINVAL)
        } else if self.owner != file {
            Err(-EBUSY)
        } else {
            Ok(())
        }
    }
}

/// release(): ends the session this file owns.
///
/// # Safety
/// Called by the shim with the registered device pointer.
#[no_mangle]
pub unsafe extern "C" fn ckpt_rs_release(d: *const c_void, file: c_ulong) {
    // SAFETY: the caller's contract.
    let mut s = unsafe { dev(d) }.lock();
    if s.owner == file as usize {
        s.stop_session();
    }
}

/// unlocked_ioctl(): the commands of docs/checkpoint-abi.md; negative errno on failure.
///
/// # Safety
/// Called by the shim with the registered device pointer.
#[no_mangle]
pub unsafe extern "C" fn ckpt_rs_ioctl(
    d: *const c_void,
    file: c_ulong,
    cmd: c_uint,
    arg: c_ulong,
) -> c_long {
    // SAFETY: the caller's contract.
    let mut guard = unsafe { dev(d) }.lock();
    let s: &mut State = &mut guard;
    let file = file as usize;
    let arg = arg as u64;
    let r = match cmd {
        IOC_GET_FACTS => get_facts(s, arg),
        IOC_TRACK_START => track_start(s, file, arg),
        IOC_TRACK_STOP => s.check_owner(file).map_err(|_| -EINVAL).map(|()| {
            s.stop_session();
            0
        }),
        IOC_NEXT_ROUND => next_round(s, file, arg),
        IOC_CAPTURE => capture(s, file, arg),
        IOC_READ_TABLE => read_table(s, arg),
        IOC_OUTPUT_HOLD => output_hold(s, file, arg),
        IOC_THROTTLE => throttle(s, file, arg),
        _ => Err(-ENOTTY),
    };
    match r {
        Ok(v) => v,
        Err(e) => e,
    }
}

fn get_facts(s: &State, arg: u64) -> Result<c_long, c_long> {
    let si = {
        // SAFETY: plain read of an exported pointer, set at boot.
        unsafe { xen_start_info }
    };
    // SAFETY (both): xen_start_info points at the start_info page for the guest's lifetime
    // (never unmapped); the offsets are those of Xen's public start_info (x86_64).
    let rd64 = |off: usize| -> u64 { unsafe { ptr::read_unaligned(si.add(off) as *const u64) } };
    let rd32 = |off: usize| -> u32 { unsafe { ptr::read_unaligned(si.add(off) as *const u32) } };
    // SAFETY: address arithmetic only.
    let si_pfn = unsafe { ckpt_virt_to_pfn(si as *const c_void) } as u64;
    let mut state = 0;
    if s.owner != 0 {
        state |= checkpoint_abi::dev::STATE_SESSION;
    }
    if s.held {
        state |= checkpoint_abi::dev::STATE_CAPTURE_HELD;
    }
    let f = Facts {
        abi_version: ABI_VERSION,
        page_size: PAGE as u32,
        max_pfn: max_pfn(),
        nr_pages: rd64(32),
        start_info_pfn: si_pfn,
        start_info_mfn: p2m(si_pfn),
        shared_info_maddr: rd64(40),
        store_mfn: rd64(56),
        console_mfn: rd64(72),
        store_evtchn: rd32(64),
        console_evtchn: rd32(80),
        // SAFETY: plain query.
        online_cpus: unsafe { ckpt_online_cpus() },
        guest_width: 8,
        pt_levels: 4,
        state,
        p2m_frames: max_pfn().div_ceil(512),
        reserved: [0; 4],
    };
    to_user(arg, &f)?;
    Ok(0)
}

fn track_start(s: &mut State, file: usize, arg: u64) -> Result<c_long, c_long> {
    let t: Track = from_user(arg)?;
    if t.flags & !(TRACK_ELIDE_FREE | TRACK_FAULT | TRACK_ORACLE) != 0
        || t.reserved != 0
        || (t.flags & TRACK_ORACLE != 0 && t.flags & TRACK_FAULT == 0)
    {
        return Err(-EINVAL);
    }
    if s.owner != 0 {
        return Err(-EBUSY);
    }
    let n = max_pfn();
    let refs = VBuf::alloc((n as usize) * 8).ok_or(-ENOMEM)?;
    let scan = VBuf::alloc(PAGE).ok_or(-ENOMEM)?;
    let zeroed = VBuf::alloc(bitmap_bytes(n) as usize).ok_or(-ENOMEM)?;
    s.max_pfn = n;
    s.refs = refs;
    s.scan = scan;
    s.zeroed = zeroed;
    s.round = 0;
    s.read_faults = 0;
    s.track_flags = t.flags;
    s.owner = file;
    for b in [&s.refs, &s.zeroed, &s.scan, &s.bounce] {
        s.mark_refs(b, REF_EXCLUDED);
    }
    if t.flags & TRACK_FAULT != 0 {
        if let Err(e) = start_fault(s) {
            s.stop_session();
            return Err(e);
        }
    }
    Ok(0)
}

/// Starts the session's fault tracker: its buffers and ours are left out of its sets.
fn start_fault(s: &mut State) -> Result<(), c_long> {
    s.fault = Some(FaultTracker::start()?);
    for b in [&s.refs, &s.zeroed, &s.scan, &s.bounce] {
        s.mark_refs(b, REF_EXCLUDED);
    }
    if let Some(f) = &s.fault {
        // Its buffers read as zeros like ours; the rings dom0 writes are always sent.
        f.for_each_buffer_pfn(|pfn| {
            set_ref_class(&s.refs, &s.zeroed, s.max_pfn, pfn, REF_EXCLUDED)
        });
        // SAFETY: xen_start_info points at the start_info page for the guest's lifetime;
        // store_mfn and console.domU.mfn of Xen's public start_info (x86_64).
        let rings = unsafe {
            let si = xen_start_info as *const u8;
            [
                ptr::read_unaligned(si.add(56) as *const u64),
                ptr::read_unaligned(si.add(72) as *const u64),
            ]
        };
        for mfn in rings {
            if let Some(pfn) = m2p(mfn) {
                f.always(pfn);
            }
        }
    }
    Ok(())
}

fn next_round(s: &mut State, file: usize, arg: u64) -> Result<c_long, c_long> {
    let mut r: Round = from_user(arg)?;
    s.check_owner(file)?;
    let need = bitmap_bytes(s.max_pfn);
    // oracle_bitmap: only with the fault tracker's oracle mode.
    let oracle = r.oracle_bitmap != 0;
    if r.flags != 0
        || r.deferred != 0
        || r.reserved != [0; 2]
        || r.oracle_dirty != 0
        || (oracle && s.track_flags & TRACK_ORACLE == 0)
        || r.bitmap_bytes < need
    {
        return Err(-EINVAL);
    }
    let bm = VBuf::alloc(need as usize).ok_or(-ENOMEM)?;
    // SAFETY: plain clock read.
    let t0 = unsafe { ckpt_now_ns() };
    let (dirty, scanned, unreadable, free) = if s.fault.is_none() {
        scan_round(s, bm.u64s())
    } else {
        if oracle {
            // The oracle: the scan's verdict on this round, taken before the fault tracker
            // ends the round (a page the scan sees changed was written after its last read,
            // hence after the re-arm that preceded that read).
            let obm = VBuf::alloc(need as usize).ok_or(-ENOMEM)?;
            let (mut od, ..) = scan_round(s, obm.u64s());
            if let Some(f) = &s.fault {
                // Pages only the capture takes (always-dirty kinds) are not in rounds.
                // SAFETY: obm holds need bytes = ceil(max_pfn/64) words, no other reference.
                od = f.clear_deferred(unsafe {
                    core::slice::from_raw_parts_mut(obm.u64s(), need as usize / 8)
                });
            }
            to_user_bytes(r.oracle_bitmap, obm.ptr, need as usize)?;
            r.oracle_dirty = od;
        }
        let f = s.fault.as_mut().ok_or(-EINVAL)?;
        // SAFETY: bm holds need bytes = ceil(max_pfn/64) words, no other reference to it.
        let out = unsafe { core::slice::from_raw_parts_mut(bm.u64s(), need as usize / 8) };
        let dirty = f.collect(out)?;
        let st = f.stats();
        let scanned = st.protected;
        // What the capture will take besides the rounds' pages (checkpointd sizes the
        // snapshot buffer with it).
        r.deferred = st.always;
        pr_info!(
            "fault tracker round {}: {} dirty, arm {} us ({} protected, {} left writable, {} always; {} entries looked at; {} mmu_update calls, {} entries, {} us; after the walk {} us), {} faults, {} pte marks so far\n",
            s.round + 1,
            dirty,
            st.arm_ns / 1000,
            st.protected,
            st.open,
            st.always,
            st.visited,
            st.mmu_calls,
            st.mmu_entries,
            st.mmu_ns / 1000,
            st.arm_tail_ns / 1000,
            st.faults,
            st.pte_marks
        );
        let (elided, free) = if s.track_flags & TRACK_ELIDE_FREE != 0 {
            elide_free(s, bm.u64s())
        } else {
            (0, 0)
        };
        (dirty - elided, scanned, 0, free)
    };
    to_user_bytes(r.bitmap, bm.ptr, need as usize)?;
    drop(bm);
    s.round += 1;
    r.round = s.round;
    r.dirty = dirty;
    r.scanned = scanned;
    r.unreadable = unreadable + core::mem::take(&mut s.read_faults);
    r.free = free;
    // SAFETY: plain clock read.
    r.scan_ns = unsafe { ckpt_now_ns() } - t0;
    to_user(arg, &r)?;
    Ok(0)
}

/// The scan tracker's round: sets the bit (in `words`, ceil(max_pfn/64) zeroed words) of
/// every RAM pfn whose content differs from what the owner last read. Returns (dirty,
/// scanned, unreadable, free).
fn scan_round(s: &mut State, words: *mut u64) -> (u64, u64, u64, u64) {
    let (mut dirty, mut scanned, mut unreadable, mut free) = (0u64, 0u64, 0u64, 0u64);
    let elide = s.track_flags & TRACK_ELIDE_FREE != 0;
    let mut pfn = 0;
    while pfn < s.max_pfn {
        if pfn % 256 == 255 {
            // SAFETY: process context, no spinlock held (only the mutexes).
            unsafe { ckpt_cond_resched() };
        }
        let rf = s.ref_of(pfn);
        if rf == REF_EXCLUDED || !is_ram(p2m(pfn)) {
            pfn += 1;
            continue;
        }
        if elide {
            let n = free_run(pfn).min(s.max_pfn - pfn);
            if n > 0 {
                // A free block: its pages are not sent. One allocated later is written
                // (its hash then differs from its reference) and shows up as dirty.
                free += n;
                pfn += n;
                continue;
            }
        }
        // The page may be unmapped under us (balloon): copy it without faulting, then hash
        // the copy. An unreadable RAM page is reported dirty, so it is read (and counted)
        // again rather than taken as unchanged.
        let ok = copy_page_nofault(pfn, s.scan.ptr);
        let changed = if ok {
            scanned += 1;
            // SAFETY: the scan buffer is one module-owned page.
            let h = unsafe { hash_page(s.scan.ptr) };
            h != rf
        } else {
            unreadable += 1;
            true
        };
        if changed {
            dirty += 1;
            // SAFETY: bm has ceil(max_pfn/64) words.
            unsafe { *words.add((pfn / 64) as usize) |= 1 << (pfn % 64) };
        }
        pfn += 1;
    }
    (dirty, scanned, unreadable, free)
}

/// Clears the bits of pages on the buddy allocator's free lists (free-page elision for the
/// fault tracker's sets). Returns (bits cleared, free pages seen).
fn elide_free(s: &State, words: *mut u64) -> (u64, u64) {
    let (mut cleared, mut free) = (0u64, 0u64);
    let mut pfn = 0;
    while pfn < s.max_pfn {
        let n = free_run(pfn).min(s.max_pfn - pfn);
        if n == 0 {
            pfn += 1;
            continue;
        }
        free += n;
        for q in pfn..pfn + n {
            // SAFETY: words has ceil(max_pfn/64) entries and q < max_pfn.
            let w = unsafe { &mut *words.add((q / 64) as usize) };
            if *w & (1 << (q % 64)) != 0 {
                *w &= !(1 << (q % 64));
                cleared += 1;
            }
        }
        pfn += n;
    }
    (cleared, free)
}

/// Index of pfn in the (ascending) snapshot pfn list.
fn snap_slot(s: &State, pfn: u64) -> Option<usize> {
    let (mut lo, mut hi) = (0usize, s.snap_n.min(s.snap_cap) as usize);
    let pfns = s.snap_pfns.u64s();
    while lo < hi {
        let mid = (lo + hi) / 2;
        // SAFETY: mid < snap_n <= snap capacity.
        let v = unsafe { *pfns.add(mid) };
        if v == pfn {
            return Some(mid);
        } else if v < pfn {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    None
}

/// read(): page contents by pfn (offset = pfn * 4096).
///
/// # Safety
/// Called by the shim with the registered device pointer, a user buffer of `len` bytes and
/// the file position of this call.
#[no_mangle]
pub unsafe extern "C" fn ckpt_rs_read(
    d: *const c_void,
    file: c_ulong,
    buf: *mut u8,
    len: usize,
    pos: *mut i64,
) -> c_long {
    // SAFETY: the caller's contract.
    let mut guard = unsafe { dev(d) }.lock();
    let s: &mut State = &mut guard;
    // SAFETY: pos is the kernel's file-position pointer for this call.
    let off = unsafe { *pos };
    if off < 0 || off as usize % PAGE != 0 || len == 0 || len % PAGE != 0 {
        return -EINVAL;
    }
    if s.bounce.is_empty() {
        return -ENOMEM;
    }
    let n = max_pfn();
    let first = off as u64 / PAGE as u64;
    if first >= n {
        return 0;
    }
    let pages = (len / PAGE).min(MAX_READ_PAGES).min((n - first) as usize);
    let owner = s.owner == file as usize && !s.refs.is_empty();
    let bounce = s.bounce.ptr;
    for i in 0..pages {
        let pfn = first + i as u64;
        let rf = if owner { s.ref_of(pfn) } else { 0 };
        let mut track = owner && rf != REF_EXCLUDED;
        let slot = if s.held { snap_slot(s, pfn) } else { None };
        let cow = match &s.fault {
            Some(f) if s.held && rf != REF_EXCLUDED && f.in_capture(pfn) => Some(f),
            _ => None,
        };
        let from_capture = cow.is_some();
        if let Some(f) = cow {
            // The capture-point content: the pristine copy, or the page not yet written.
            if let Err(e) = f.read_page(pfn, bounce) {
                return if i == 0 { e } else { (i * PAGE) as c_long };
            }
            if !s.oracle_hashes.is_empty() {
                // SAFETY: bounce is one module-owned page; oracle_hashes holds max_pfn
                // entries.
                let (h, want) =
                    unsafe { (hash_page(bounce), *s.oracle_hashes.u64s().add(pfn as usize)) };
                if h != want {
                    if s.oracle_late < 4 {
                        log_diag(f, pfn, "read back different");
                    }
                    if (s.oracle_late as usize) < s.oracle_late_pfns.len() {
                        s.oracle_late_pfns[s.oracle_late as usize] = pfn;
                    }
                    s.oracle_late += 1;
                }
            }
        } else if let Some(k) = slot {
            // SAFETY: slot k < snap_n, each slot is one page of the snapshot buffer.
            unsafe { ptr::copy_nonoverlapping(s.snap.ptr.add(k * PAGE), bounce, PAGE) };
        } else if rf != REF_EXCLUDED && is_ram(p2m(pfn)) {
            if !copy_page_nofault(pfn, bounce) {
                // Unmapped under us: zeros, the reference stays, so the page stays dirty
                // and the next round counts it as unreadable.
                // SAFETY: bounce is one page.
                unsafe { ptr::write_bytes(bounce, 0, PAGE) };
                track = false;
                if owner {
                    s.read_faults += 1;
                }
            }
        } else {
            // SAFETY: bounce is one page.
            unsafe { ptr::write_bytes(bounce, 0, PAGE) };
            track = false;
        }
        if track {
            // SAFETY: bounce is one module-owned page.
            let h = unsafe { hash_page(bounce) };
            s.set_ref(pfn, h);
            if !from_capture {
                if let Some(f) = &s.fault {
                    f.read_done(pfn);
                }
            }
        }
        // SAFETY: buf + i*PAGE lies within the user's len bytes; copy_to_user checks it.
        if unsafe {
            ckpt_copy_to_user(
                buf.add(i * PAGE) as *mut c_void,
                bounce as *const c_void,
                PAGE as c_ulong,
            )
        } != 0
        {
            return if i == 0 {
                -EFAULT
            } else {
                (i * PAGE) as c_long
            };
        }
    }
    // SAFETY: as above.
    unsafe { *pos = off + (pages * PAGE) as i64 };
    (pages * PAGE) as c_long
}

fn read_table(s: &State, arg: u64) -> Result<c_long, c_long> {
    let mut t: Table = from_user(arg)?;
    if t.reserved != 0 {
        return Err(-EINVAL);
    }
    let (size, esz) = match t.table {
        TABLE_P2M => (max_pfn(), 8u64),
        TABLE_P2M_CAPTURED | TABLE_PAGE_TYPES | TABLE_P2M_FRAMES if !s.held => {
            return Err(-ENODATA)
        }
        TABLE_P2M_CAPTURED => (s.max_pfn, 8),
        TABLE_PAGE_TYPES => (s.max_pfn, 1),
        TABLE_P2M_FRAMES => (s.n_frames, 8),
        _ => return Err(-EINVAL),
    };
    if t.start > size || t.buf_bytes < t.count.saturating_mul(esz) {
        return Err(-EINVAL);
    }
    let n = t.count.min(size - t.start);
    if t.table == TABLE_P2M {
        // Live p2m: copy through a small stack chunk.
        let mut chunk = [0u64; 64];
        let mut done = 0u64;
        while done < n {
            let k = (n - done).min(64);
            for j in 0..k {
                chunk[j as usize] = p2m(t.start + done + j);
            }
            to_user_bytes(
                t.buf + done * 8,
                chunk.as_ptr() as *const u8,
                (k * 8) as usize,
            )?;
            done += k;
        }
    } else {
        let base = match t.table {
            TABLE_P2M_CAPTURED => s.cap_p2m.ptr,
            TABLE_PAGE_TYPES => s.cap_types.ptr,
            _ => s.cap_frames.ptr,
        };
        // SAFETY: start + n <= size entries of esz bytes are inside the buffer.
        let src = unsafe { base.add((t.start * esz) as usize) };
        to_user_bytes(t.buf, src, (n * esz) as usize)?;
    }
    t.returned = n;
    to_user(arg, &t)?;
    Ok(0)
}

fn capture(s: &mut State, file: usize, arg: u64) -> Result<c_long, c_long> {
    let mut c: CaptureArg = from_user(arg)?;
    s.check_owner(file)?;
    let need = bitmap_bytes(s.max_pfn);
    if c.flags & !CAPTURE_ORACLE != 0
        || c.snapshot_hwm != 0
        || c.oracle_digest != 0
        || c.max_snapshot_pages == 0
        || c.max_snapshot_pages > s.max_pfn
        || c.bitmap_bytes < need
        || c.vcpu_bytes < VCPU_CTX_BYTES as u64
    {
        return Err(-EINVAL);
    }
    // SAFETY: plain query.
    if unsafe { ckpt_online_cpus() } != 1 {
        return Err(-EOPNOTSUPP);
    }
    s.free_capture();
    let cap = c.max_snapshot_pages;
    let n_frames = s.max_pfn.div_ceil(512);
    let alloc = |n: usize| VBuf::alloc(n).ok_or(-ENOMEM);
    // Nothing is kept if one allocation fails (the others drop here).
    let (snap, snap_pfns, cap_p2m, cap_types, cap_frames, bm) = (
        alloc(cap as usize * PAGE)?,
        alloc(cap as usize * 8)?,
        alloc(s.max_pfn as usize * 8)?,
        alloc(s.max_pfn as usize)?,
        alloc(n_frames as usize * 8)?,
        alloc(need as usize)?,
    );
    for b in [&snap, &snap_pfns, &cap_p2m, &cap_types, &cap_frames] {
        s.mark_refs(b, REF_EXCLUDED);
    }
    s.snap = snap;
    s.snap_pfns = snap_pfns;
    s.cap_p2m = cap_p2m;
    s.cap_types = cap_types;
    s.cap_frames = cap_frames;
    s.n_frames = n_frames;
    s.snap_cap = cap;
    s.snap_n = 0;
    s.ran = false;
    s.resumed = false;
    s.loader_l4 = 0;
    s.overflow = false;
    s.walk_err = false;
    s.pt_pages = 0;
    s.scanned = 0;
    s.cap_unreadable = 0;
    s.cap_free = 0;
    // SAFETY: ctx is VCPU_CTX_BYTES bytes, allocated at load.
    unsafe { ptr::write_bytes(s.ctx.ptr, 0, VCPU_CTX_BYTES) };
    s.fault_err = 0;
    s.cap_oracle = c.flags & CAPTURE_ORACLE != 0;
    s.oracle_digest = 0;
    s.oracle_diff = 0;
    s.oracle_late = 0;
    let old = core::mem::replace(&mut s.oracle_hashes, VBuf::empty());
    s.mark_refs(&old, REF_NEVER_READ);
    drop(old);
    if s.cap_oracle && s.fault.is_some() {
        let h = VBuf::alloc(s.max_pfn as usize * 8).ok_or(-ENOMEM)?;
        s.mark_refs(&h, REF_EXCLUDED);
        s.oracle_hashes = h;
    }
    let mut bm = bm;
    if s.fault.is_some() {
        // The capture routine fills the final set in place.
        s.mark_refs(&bm, REF_EXCLUDED);
        s.cap_send = core::mem::replace(&mut bm, VBuf::empty());
    }

    // sched_clock (Xen pvclock), not ktime: CLOCK_MONOTONIC skips the suspended interval.
    // SAFETY: plain clock read.
    let t0 = unsafe { ckpt_clock_ns() };
    let sp: *mut State = s;
    // SAFETY: the kernel runs its suspend sequence and calls our entry once, in
    // stop_machine, with `sp` as its second argument; the entry follows the C ABI. `sp` is
    // exclusive: this thread holds the guard and waits in this call, every other CPU is
    // stopped while the entry runs. The pointer escapes, so `s` is re-read afterwards.
    let rc = unsafe { xen_checkpoint_suspend(ckpt_capture_entry, sp as *mut c_void) };
    // SAFETY: plain clock read.
    let t1 = unsafe { ckpt_clock_ns() };
    if s.fault.is_some() {
        bm = core::mem::replace(&mut s.cap_send, VBuf::empty());
    }
    if s.resumed {
        // We are a guest revived from this checkpoint: drop the session the source had.
        let l4 = core::mem::take(&mut s.loader_l4);
        if l4 != 0 {
            // Revived in place by inflate-loader: its page tables are still pinned.
            // SAFETY: a plain hypercall on a frame of this domain; Xen checks it.
            let rc = unsafe { ckpt_unpin_table(l4 as c_ulong) };
            pr_info!(
                "revived by inflate-loader: unpinned its L4 (mfn {:#x}): rc {}\n",
                l4,
                rc
            );
        }
        drop(bm);
        s.stop_session();
        c.result = 0;
        to_user(arg, &c)?;
        return Ok(0);
    }
    let out_of_space = s.fault_err == -ENOSPC
        || (s.fault_err == 0 && s.fault.as_ref().is_some_and(|f| f.aborted()));
    if s.fault.is_some() && rc >= 0 && s.ran && !s.walk_err && out_of_space {
        // Out of snapshot space in the pause or the resume: tracking goes on (the next
        // round reports the final set and what was written since) and the owner learns
        // what the capture needed, so that it can retry with a larger buffer.
        let needed = s.fault.as_mut().map(|f| f.cancel_capture());
        if let Some(Ok(needed)) = needed {
            // The final-set bitmap goes back to the allocator: its pages are tracked again.
            s.mark_refs(&bm, REF_NEVER_READ);
            drop(bm);
            s.free_capture();
            c.snapshot_pages = needed;
            let _ = to_user(arg, &c);
            return Err(-ENOSPC);
        }
    }
    if s.fault.is_some() && (rc < 0 || s.fault_err != 0 || !s.ran || s.walk_err) {
        // The tracker may be in copy-on-write mode for a capture that did not happen: it
        // starts over (the next round reports every page again).
        let e = if rc < 0 {
            rc as c_long
        } else if s.fault_err != 0 {
            s.fault_err
        } else {
            -EIO
        };
        if let Some(f) = &s.fault {
            // Its buffers go back to being ordinary pages once it is gone.
            f.for_each_buffer_pfn(|pfn| {
                set_ref_class(&s.refs, &s.zeroed, s.max_pfn, pfn, REF_NEVER_READ)
            });
        }
        s.fault = None;
        s.free_capture();
        if start_fault(s).is_err() {
            s.stop_session();
        }
        return Err(e);
    }
    if rc < 0 {
        s.free_capture();
        return Err(rc as c_long);
    }
    if !s.ran || s.walk_err {
        s.free_capture();
        return Err(-EIO);
    }
    c.result = 1;
    c.snapshot_pages = s.snap_n;
    c.oracle_digest = s.oracle_digest;
    if s.cap_oracle && s.fault.is_some() {
        let p = &s.oracle_diff_pfns;
        pr_info!(
            "oracle: {} pages out of the final set changed since read (first: {:#x} {:#x} {:#x} {:#x} {:#x} {:#x} {:#x} {:#x})\n",
            s.oracle_diff,
            p[0],
            p[1],
            p[2],
            p[3],
            p[4],
            p[5],
            p[6],
            p[7]
        );
        if let Some(f) = &s.fault {
            for &pfn in p.iter().take(s.oracle_diff.min(8) as usize) {
                log_diag(f, pfn, "changed unseen");
            }
        }
    }
    if let Some(f) = &s.fault {
        // Free pages were left out in the capture routine (exact there; a page freed after
        // the capture still holds capture-point content the checkpoint needs).
        let st = f.stats();
        s.cap_free = st.cap_free;
        pr_info!(
            "fault tracker capture{}: pause {} us = vCPU + page types {} us (p2m {} us, {} tables), final set {} us (probe {} us, classify {} us), walk {} us ({} protected; {} entries looked at: user {}, vmalloc {}, vmemmap {}, image {}, direct map {}; {} mmu_update calls, {} entries, {} us; after the walk {} us), copies {} us ({} pages, {} kept writable for the resume; always-dirty {}: {} tables, {} per-CPU or kernel image, {} granted)\n",
            if st.copied_all {
                " (FIFO event channels: whole set copied)"
            } else {
                ""
            },
            s.clk_out.saturating_sub(s.clk_in) / 1000,
            s.clk_tables.saturating_sub(s.clk_in) / 1000,
            s.clk_p2m.saturating_sub(s.clk_in) / 1000,
            s.pt_pages,
            st.cap_prep_ns / 1000,
            st.cap_probe_ns / 1000,
            st.cap_classify_ns / 1000,
            st.cap_walk_ns / 1000,
            st.protected,
            st.visited,
            st.walk_kinds[0],
            st.walk_kinds[1],
            st.walk_kinds[2],
            st.walk_kinds[3],
            st.walk_kinds[4],
            st.mmu_calls,
            st.mmu_entries,
            st.mmu_ns / 1000,
            st.arm_tail_ns / 1000,
            st.cap_copy_ns / 1000,
            st.pause_copies,
            st.cap_unprotected,
            st.always,
            st.always_parts[0],
            st.always_parts[1],
            st.always_parts[2]
        );
        let words = bm.u64s();
        s.snap_n = 0;
        c.snapshot_pages = (0..need as usize / 8)
            // SAFETY: bm holds need bytes.
            .map(|w| u64::from(unsafe { *words.add(w) }.count_ones()))
            .sum();
        c.snapshot_hwm = f.stats().snapshot_used;
    }
    c.pt_pages = s.pt_pages;
    c.scanned = s.scanned;
    c.unreadable = s.cap_unreadable;
    c.free = s.cap_free;
    c.pause_ns = s.clk_out.saturating_sub(s.clk_in);
    // Linux freezes sched_clock from xen_arch_pre_suspend to xen_arch_post_suspend
    // (xen_save/restore_time_memory_area), so t1 - t0 lacks about the capture's own time.
    c.suspend_ns = t1.saturating_sub(t0) + c.pause_ns;
    if s.overflow {
        let _ = to_user(arg, &c);
        s.free_capture();
        return Err(-ENOSPC);
    }
    let pfns = s.snap_pfns.u64s();
    let words = bm.u64s();
    for k in 0..s.snap_n as usize {
        // SAFETY: k < snap_n <= snap_cap; the bitmap covers max_pfn bits.
        unsafe {
            let pfn = *pfns.add(k);
            *words.add((pfn / 64) as usize) |= 1 << (pfn % 64);
        }
    }
    // Excluded pages the owner read earlier: in the set, they read as zeros.
    let z = s.zeroed.u64s();
    c.snapshot_pages = 0;
    for w in 0..need as usize / 8 {
        // SAFETY: bm and zeroed both hold need bytes.
        unsafe {
            *words.add(w) |= *z.add(w);
            c.snapshot_pages += u64::from((*words.add(w)).count_ones());
        }
    }
    to_user_bytes(c.bitmap, bm.ptr, need as usize)?;
    drop(bm);
    to_user_bytes(c.vcpu, s.ctx.ptr, VCPU_CTX_BYTES)?;
    s.held = true;
    to_user(arg, &c)?;
    Ok(0)
}

/// CKPT_IOC_OUTPUT_HOLD: arm (flags 1) or release (flags 0) the output hold; the session
/// owner only. Out: packets dropped since the hold was armed.
fn output_hold(s: &mut State, file: usize, arg: u64) -> Result<c_long, c_long> {
    let mut h: HoldArg = from_user(arg)?;
    s.check_owner(file)?;
    if h.flags & !HOLD_ARM != 0 || h.reserved != 0 || h.reserved2 != 0 || h.dropped != 0 {
        return Err(-EINVAL);
    }
    if h.flags & HOLD_ARM != 0 {
        if h.saddr == [0; 4] || h.daddr == [0; 4] || h.sport == [0; 2] || h.dport == [0; 2] {
            return Err(-EINVAL);
        }
        // SAFETY: process context; registers the netfilter hooks on first use. The C side
        // takes the network-order bytes as __be32/__be16, i.e. in memory order.
        let rc = unsafe {
            ckpt_hold_arm(
                u32::from_ne_bytes(h.saddr),
                u32::from_ne_bytes(h.daddr),
                u16::from_ne_bytes(h.sport),
                u16::from_ne_bytes(h.dport),
            )
        };
        if rc < 0 {
            return Err(rc as c_long);
        }
    } else {
        // SAFETY: process context.
        h.dropped = unsafe { ckpt_hold_release() };
    }
    to_user(arg, &h)?;
    Ok(0)
}

/// CKPT_IOC_THROTTLE: slow a process down (stop it `stop_ms` of every `period_ms`) or
/// release it; the session owner only. Out: how long the process has been stopped so far.
/// Every throttle ends with the session.
fn throttle(s: &mut State, file: usize, arg: u64) -> Result<c_long, c_long> {
    let mut t: ThrottleArg = from_user(arg)?;
    s.check_owner(file)?;
    if t.flags & !THROTTLE_SET != 0 || t.reserved != 0 || t.stopped_ns != 0 || t.pid == 0 {
        return Err(-EINVAL);
    }
    let pid = c_int::try_from(t.pid).map_err(|_| -EINVAL)?;
    let mut stopped = 0u64;
    let rc = if t.flags & THROTTLE_SET != 0 {
        if !(THROTTLE_PERIOD_MIN..=THROTTLE_PERIOD_MAX).contains(&t.period_ms)
            || t.stop_ms >= t.period_ms
        {
            return Err(-EINVAL);
        }
        // SAFETY: process context; `stopped` is a valid out pointer.
        unsafe { ckpt_throttle_set(pid, t.stop_ms, t.period_ms, &mut stopped) }
    } else {
        if t.stop_ms != 0 || t.period_ms != 0 {
            return Err(-EINVAL);
        }
        // SAFETY: process context; `stopped` is a valid out pointer.
        unsafe { ckpt_throttle_release(pid, &mut stopped) }
    };
    if rc < 0 {
        return Err(rc as c_long);
    }
    t.stopped_ns = stopped;
    to_user(arg, &t)?;
    Ok(0)
}

/// Runs on the revived guest's first instructions after the capture point (stop_machine,
/// interrupts off), with the State pointer the source's entry saved in rbx.
///
/// # Safety
/// Called only by the asm entry's resume path with that pointer.
#[no_mangle]
pub unsafe extern "C" fn ckpt_capture_resumed(state: *mut c_void, loader_l4: u64) {
    // The source armed the output hold before the capture; the copy that resumes must
    // talk at once (the hooks are unregistered when its CAPTURE ioctl returns).
    // SAFETY: a plain flag store, allowed in this atomic context.
    unsafe { ckpt_hold_disarm() };
    // SAFETY: the State of the ioctl blocked in xen_checkpoint_suspend (exclusive, see
    // capture()); in this copy of the guest that ioctl is blocked at the same point.
    let s = unsafe { &mut *(state as *mut State) };
    if let Some(f) = s.fault.as_mut() {
        f.revived();
    }
    s.resumed = true;
    s.loader_l4 = loader_l4;
}

/// Records the page-table page `pfn` at `level` (1..4) in the type map.
fn mark_table(s: &mut State, pfn: u64, level: u8, pinned: bool) {
    let types = s.cap_types.ptr;
    // SAFETY: caller checked pfn < max_pfn; cap_types has max_pfn bytes.
    unsafe {
        let t = types.add(pfn as usize);
        if *t == 0 {
            s.pt_pages += 1;
        }
        *t = level | if pinned { TYPE_PINNED } else { 0 };
    }
}

/// mfn -> pfn through Xen's M2P, checked against the p2m.
fn m2p(mfn: u64) -> Option<u64> {
    // SAFETY: plain queries of exported values.
    if mfn >= unsafe { ckpt_m2p_entries() } as u64 {
        return None;
    }
    let mut pfn: u64 = 0;
    // SAFETY: nofault read of one M2P entry (Xen's read-only table).
    let ok = unsafe {
        copy_from_kernel_nofault(
            ptr::addr_of_mut!(pfn) as *mut c_void,
            ckpt_m2p().add(mfn as usize) as *const c_void,
            8,
        )
    } == 0;
    if ok && pfn < max_pfn() && p2m(pfn) == mfn {
        Some(pfn)
    } else {
        None
    }
}

/// Walks a table page at `level` (4 = L4) and everything below it (stop_machine only).
fn walk(s: &mut State, pfn: u64, level: u8) {
    // SAFETY: pfn < max_pfn (checked by m2p or the caller).
    if unsafe { *s.cap_types.ptr.add(pfn as usize) } != 0 {
        return; // shared table, already walked
    }
    if !page_readable(pfn) {
        s.walk_err = true; // a table the guest uses is always mapped (read-only)
        return;
    }
    // Pinned or not is asked of Xen after the walk, for all tables at once (probe_pins).
    mark_table(s, pfn, level, false);
    if level == 1 {
        return;
    }
    let table = page_ptr(pfn) as *const u64;
    for i in 0..512usize {
        if level == 4 && checkpoint_abi::xen::l4_slot_is_xen(i) {
            continue; // Xen's own slots
        }
        // SAFETY: the table page is mapped (probed above; nothing unmaps it in
        // stop_machine).
        let e = unsafe { ptr::read_volatile(table.add(i)) };
        if e & 1 == 0 {
            continue;
        }
        if level <= 3 && e & 0x80 != 0 {
            continue; // superpage: no table below (not used by PV Linux)
        }
        let child_mfn = (e >> 12) & ((1u64 << 40) - 1);
        match m2p(child_mfn) {
            Some(c) => walk(s, c, level - 1),
            None => {
                s.walk_err = true;
                return;
            }
        }
    }
}

/// Xen decides pinned-ness: every table the walk marked is asked (a pin succeeds only on an
/// unpinned page, and is undone at once), PROBE_BATCH tables per multicall.
fn probe_pins(s: &mut State) {
    const PROBE_BATCH: usize = 32; // ckpt_shim.c's CKPT_PROBE_BATCH
    let mut mfns = [0 as c_ulong; PROBE_BATCH];
    let mut cmds = [0 as c_uint; PROBE_BATCH];
    let mut pfns = [0usize; PROBE_BATCH];
    let mut pinned = [0u8; PROBE_BATCH];
    let types = s.cap_types.ptr;
    let n_pfns = s.max_pfn as usize;
    let mut n = 0;
    let mut flush = |n: usize, mfns: &[c_ulong], cmds: &[c_uint], pfns: &[usize]| {
        // SAFETY: n <= PROBE_BATCH entries of each array; the tables are validated tables
        // of the levels given (the walk found them).
        if unsafe {
            ckpt_pin_probe_many(
                mfns.as_ptr(),
                cmds.as_ptr(),
                n as c_uint,
                pinned.as_mut_ptr(),
            )
        } != 0
        {
            for k in 0..n {
                // SAFETY: as above, one table.
                pinned[k] = u8::from(unsafe { ckpt_pin_probe(mfns[k], cmds[k]) } != 0);
            }
        }
        for k in 0..n {
            if pinned[k] != 0 {
                // SAFETY: pfns[k] < max_pfn; cap_types has max_pfn bytes.
                unsafe { *types.add(pfns[k]) |= TYPE_PINNED };
            }
        }
    };
    let mut pfn = 0;
    while pfn < n_pfns {
        if pfn % 8 == 0 && pfn + 8 <= n_pfns {
            // Eight type bytes at a time: tables are rare among ordinary and not-RAM pages.
            // SAFETY: cap_types (vmalloc'd, page aligned) has max_pfn bytes.
            let w = unsafe { ptr::read_unaligned(types.add(pfn) as *const u64) };
            if w == 0 || w == u64::from_ne_bytes([TYPE_NOT_RAM; 8]) {
                pfn += 8;
                continue;
            }
        }
        // SAFETY: as above.
        let level = unsafe { *types.add(pfn) } & checkpoint_abi::page_type::LEVEL_MASK;
        if (1..=4).contains(&level) {
            mfns[n] = p2m(pfn as u64) as c_ulong;
            cmds[n] = MMUEXT_PIN_L1_TABLE + (level as c_uint - 1);
            pfns[n] = pfn;
            n += 1;
            if n == PROBE_BATCH {
                flush(n, &mfns, &cmds, &pfns);
                n = 0;
            }
        }
        pfn += 1;
    }
    if n > 0 {
        flush(n, &mfns, &cmds, &pfns);
    }
}

extern "C" fn pgd_cb(pgd: *mut c_void, user_pgd: *mut c_void, arg: *mut c_void) -> c_int {
    // SAFETY: arg is the State ckpt_capture_rest passed to xen_checkpoint_for_each_pgd,
    // which calls back synchronously while ckpt_capture_rest lends it out.
    let s = unsafe { &mut *(arg as *mut State) };
    for p in [pgd, user_pgd] {
        if p.is_null() {
            continue;
        }
        // SAFETY: address arithmetic on a kernel pointer (__pa).
        let pfn = unsafe { ckpt_virt_to_pfn(p) } as u64;
        if pfn >= s.max_pfn {
            s.walk_err = true;
            return -(EIO as c_int);
        }
        walk(s, pfn, 4);
        if s.walk_err {
            return -(EIO as c_int);
        }
    }
    0
}

/// The capture proper, in stop_machine on CPU 0 with interrupts off, right after the
/// register save. Returns 1: "cancelled", the source carries on.
///
/// # Safety
/// Called only by the asm entry with the arguments xen_suspend gave it: the start_info gfn
/// and the State that capture() passed to xen_checkpoint_suspend.
#[no_mangle]
pub unsafe extern "C" fn ckpt_capture_rest(start_info_gfn: c_ulong, state: *mut c_void) -> c_int {
    // SAFETY: exclusive, see capture(): its thread waits in xen_checkpoint_suspend and every
    // other CPU is stopped.
    let s = unsafe { &mut *(state as *mut State) };
    // SAFETY: sched_clock wrapper (Xen's pvclock: usable while timekeeping is suspended).
    s.clk_in = unsafe { ckpt_clock_ns() };
    let ctx = s.ctx.ptr as *mut VcpuCtx;
    // SAFETY: ctx is this State's context buffer (Xen's layout, 5168 bytes); the kernel fills
    // its non-register part; the offsets written below are inside it.
    unsafe {
        xen_checkpoint_vcpu_context(ctx);
        let b = ctx as *mut u8;
        let flags = b.add(vcpu_ctx::FLAGS) as *mut u64;
        *flags |= vcpu_ctx::VGCF_I387_VALID;
        *(b.add(vcpu_ctx::RAX) as *mut u64) = 0;
        *(b.add(vcpu_ctx::CR0) as *mut u64) = ckpt_read_cr0() as u64;
        *(b.add(vcpu_ctx::CR4) as *mut u64) = ckpt_read_cr4() as u64;
        *(b.add(vcpu_ctx::RDX) as *mut u64) = start_info_gfn as u64;
    }

    // Page-type map: not-RAM marks first, then the tables. One pass over every pfn in the
    // pause: the pointers are taken out of `s` first so that the loop is only loads and
    // stores.
    let (dst_p2m, dst_types) = (s.cap_p2m.u64s(), s.cap_types.ptr);
    for_each_p2m(s.max_pfn, |pfn, e| {
        // SAFETY: cap_p2m and cap_types hold max_pfn entries.
        unsafe {
            *dst_p2m.add(pfn as usize) = e;
            *dst_types.add(pfn as usize) = if is_ram(e) { 0 } else { TYPE_NOT_RAM };
        }
    });
    // SAFETY: sched_clock wrapper.
    s.clk_p2m = unsafe { ckpt_clock_ns() };
    // SAFETY: the kernel calls pgd_cb for each pinned top-level table, passing `state` on.
    unsafe { xen_checkpoint_for_each_pgd(pgd_cb, state) };
    probe_pins(s);
    for i in 0..s.n_frames {
        // SAFETY: xen_p2m_addr spans n_frames pages of the p2m's virtual area.
        unsafe {
            let va = (xen_p2m_addr as *const u8).add(i as usize * PAGE);
            *s.cap_frames.u64s().add(i as usize) = ckpt_vmalloc_to_pfn(va as *const c_void) as u64;
        }
    }

    if let Some(f) = s.fault.as_mut() {
        // Fault tracker: the final set is write-protected and copied on its first write;
        // only the pages that cannot be protected are copied now.
        // SAFETY: cap_send holds ceil(max_pfn/64) words, no other reference to it.
        let send = unsafe {
            core::slice::from_raw_parts_mut(s.cap_send.u64s(), s.max_pfn.div_ceil(64) as usize)
        };
        // SAFETY: as above.
        s.clk_tables = unsafe { ckpt_clock_ns() };
        let elide = s.track_flags & TRACK_ELIDE_FREE != 0;
        s.fault_err = f.capture(send, s.snap.ptr, s.snap_cap, elide);
        s.ran = true;
        // SAFETY: as above.
        s.clk_out = unsafe { ckpt_clock_ns() };
        if s.cap_oracle {
            s.oracle_digest = capture_digest(s);
        }
        return 1;
    }
    // Snapshot: every page whose content is not what the owner last read.
    let elide = s.track_flags & TRACK_ELIDE_FREE != 0;
    // The oracle's digest is taken page by page at the moment each page is judged: pages
    // other domains write (granted buffers, rings) may change later in the pause, and the
    // checkpoint holds them as judged here.
    let zero = zero_hash();
    let mut d = 0u64;
    let mut pfn = 0;
    while pfn < s.max_pfn {
        let rf = s.ref_of(pfn);
        if rf == REF_EXCLUDED || !is_ram(p2m(pfn)) {
            d = digest_add(d, pfn, zero);
            pfn += 1;
            continue;
        }
        if elide {
            let n = free_run(pfn).min(s.max_pfn - pfn);
            if n > 0 {
                // Free at the capture point (exact here: no CPU holds a zone lock). The
                // revived guest's allocator has these pages free; their content is moot
                // (the oracle runs without elision).
                s.cap_free += n;
                for q in pfn..pfn + n {
                    d = digest_add(d, q, zero);
                }
                pfn += n;
                continue;
            }
        }
        if !page_readable(pfn) {
            // Counted and reported: the checkpoint holds what the owner last read of it.
            s.cap_unreadable += 1;
            d = digest_add(d, pfn, stream_hash(rf, zero));
            pfn += 1;
            continue;
        }
        s.scanned += 1;
        let p = page_ptr(pfn);
        // SAFETY: readable (probed above; nothing unmaps it in stop_machine).
        let h = unsafe { hash_page(p) };
        if h != rf {
            if s.snap_n < s.snap_cap {
                let dst = s.snap.ptr.wrapping_add(s.snap_n as usize * PAGE);
                // SAFETY: slot snap_n is inside the snapshot buffer; the page is readable.
                unsafe {
                    ptr::copy_nonoverlapping(p, dst, PAGE);
                    *s.snap_pfns.u64s().add(s.snap_n as usize) = pfn;
                }
                if s.cap_oracle {
                    // SAFETY: the slot just written.
                    d = digest_add(d, pfn, unsafe { hash_page(dst) });
                }
            } else {
                s.overflow = true;
            }
            s.snap_n += 1;
        } else {
            d = digest_add(d, pfn, h);
        }
        pfn += 1;
    }
    s.ran = true;
    // SAFETY: as above.
    s.clk_out = unsafe { ckpt_clock_ns() };
    if s.cap_oracle {
        s.oracle_digest = d;
    }
    1
}

static ZERO_PAGE: [u8; PAGE] = [0; PAGE];

fn zero_hash() -> u64 {
    // SAFETY: a static page.
    unsafe { hash_page(ZERO_PAGE.as_ptr()) }
}

/// One pfn's term of the oracle's digest: an order-independent sum over pfns, the same as
/// test-vms/checkpoint-guest/track-oracle.c.
fn digest_add(d: u64, pfn: u64, h: u64) -> u64 {
    let h = h ^ pfn.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    d.wrapping_add(h.wrapping_mul(0xff51_afd7_ed55_8ccd))
}

/// What the checkpoint holds for a page the capture set leaves out: what the owner last
/// read of it (its reference), or zeros if it never read it.
fn stream_hash(rf: u64, zero: u64) -> u64 {
    if rf == REF_NEVER_READ {
        zero
    } else {
        rf
    }
}

/// The fault tracker's oracle digest: memory at the capture point as the owner will read
/// it — zeros for excluded and not-RAM pfns, the pristine copy of a page of the final set
/// written since the capture, else the page itself (a page out of the final set must not
/// have changed since the owner read it; the first such differences are kept in
/// `oracle_diff*` for the kernel log). Capture routine only (stop_machine).
fn capture_digest(s: &mut State) -> u64 {
    let zero = zero_hash();
    let mut d = 0u64;
    let mut diff = 0u64;
    for pfn in 0..s.max_pfn {
        let rf = s.ref_of(pfn);
        let h = if rf == REF_EXCLUDED || !is_ram(p2m(pfn)) {
            zero
        } else if !page_readable(pfn) {
            stream_hash(rf, zero)
        } else {
            let mut p = page_ptr(pfn);
            let mut in_set = false;
            if let Some(f) = &s.fault {
                in_set = f.in_capture(pfn);
                if let Some(c) = f.pristine(pfn) {
                    p = c;
                }
            }
            // SAFETY: a pristine copy in the snapshot buffer, or a RAM page probed above
            // (nothing unmaps it in stop_machine).
            let h = unsafe { hash_page(p) };
            if !in_set && h != stream_hash(rf, zero) {
                if (diff as usize) < s.oracle_diff_pfns.len() {
                    s.oracle_diff_pfns[diff as usize] = pfn;
                }
                diff += 1;
            }
            h
        };
        if !s.oracle_hashes.is_empty() {
            // SAFETY: oracle_hashes holds max_pfn entries.
            unsafe { *s.oracle_hashes.u64s().add(pfn as usize) = h };
        }
        d = digest_add(d, pfn, h);
    }
    s.oracle_diff = diff;
    d
}

/// The module object: owns the device state.
struct Checkpoint {
    dev: Pin<KBox<Dev>>,
}

impl kernel::Module for Checkpoint {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // SAFETY: plain query.
        if unsafe { ckpt_xen_pv() } == 0 {
            pr_err!("not a Xen PV guest\n");
            return Err(ENODEV_ERR);
        }
        let dev = KBox::pin_init(new_mutex!(State::new(), "checkpoint_state"), GFP_KERNEL)?;
        {
            let mut s = dev.lock();
            s.bounce = VBuf::alloc(PAGE).ok_or(ENOMEM_ERR)?;
            s.ctx = VBuf::alloc(VCPU_CTX_BYTES).ok_or(ENOMEM_ERR)?;
        }
        let p: *const Dev = &*dev;
        // SAFETY: registers our misc device; the shim keeps `p` for its file operations,
        // valid until drop() deregisters (the box is pinned and dropped after that).
        let rc = unsafe { ckpt_shim_register(p as *const c_void) };
        if rc != 0 {
            return Err(kernel::error::Error::from_errno(rc));
        }
        pr_info!(
            "/dev/checkpoint ready (abi {}, max_pfn {})\n",
            ABI_VERSION,
            max_pfn()
        );
        Ok(Checkpoint { dev })
    }
}

const ENOMEM_ERR: kernel::error::Error = kernel::error::code::ENOMEM;
const ENODEV_ERR: kernel::error::Error = kernel::error::code::ENODEV;

impl Drop for Checkpoint {
    fn drop(&mut self) {
        // SAFETY: deregistering stops new opens; open files hold a module reference, so no
        // file is open and no entry point runs now or later.
        unsafe { ckpt_shim_deregister() };
        let mut s = self.dev.lock();
        // No session can exist (its file would hold the module), but end one anyway: the
        // output hold's hooks and the throttled processes must never outlive the module.
        s.stop_session();
        s.bounce = VBuf::empty();
        pr_info!("unloaded\n");
    }
}
