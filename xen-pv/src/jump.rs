//! The last instructions of a hand-over. Restore in place (this part): enter the restored
//! guest at its capture point.
//!
//! Only rip, rsp and the general registers of a running vCPU cannot be set by hypercall
//! (`VCPUOP_initialise` refuses a vCPU that is already up). So the loader loads the captured
//! callee-saved registers and rsp itself and jumps to the guest's 2-byte `syscall` pad, which
//! lies right before the capture's resume label and is mapped at the same virtual address in
//! the loader's tables. With eax = mmuext_op and rdi = {NEW_BASEPTR, guest L4}, Xen switches
//! to the guest's page tables and returns to rcx = the resume label with rax = 0: "resumed in
//! a new domain". r9 carries the loader's L4 mfn so the guest can unpin it afterwards.
use crate::hypercall::{MmuextOp, DOMID_SELF, MMUEXT_NEW_BASEPTR, MMUEXT_OP};
use core::arch::asm;

/// Everything the final sequence reads, in one block addressed through one register (rbx and
/// rbp cannot be asm operands, and no stack may be used once rsp is the guest's).
#[repr(C, align(16))]
pub struct Transfer {
    /// FXSAVE image of the capture point (fxrstor64 needs 16-byte alignment).
    pub fpu: [u8; 512],
    pub rbx: u64,
    pub rbp: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rsp: u64,
    /// Virtual address of the `syscall` pad (captured rip - 2).
    pub pad_va: u64,
    /// Our own (pinned) boot L4, handed to the guest in r9.
    pub loader_l4_mfn: u64,
    /// The op Xen reads before switching: {NEW_BASEPTR, guest L4 mfn}.
    pub op: MmuextOp,
}

const _: () = assert!(core::mem::offset_of!(Transfer, rbx) == 512);
const _: () = assert!(core::mem::offset_of!(Transfer, rsp) == 560);
const _: () = assert!(core::mem::offset_of!(Transfer, pad_va) == 568);
const _: () = assert!(core::mem::offset_of!(Transfer, loader_l4_mfn) == 576);
const _: () = assert!(core::mem::offset_of!(Transfer, op) == 584);

static mut TRANSFER: Transfer = Transfer {
    fpu: [0; 512],
    rbx: 0,
    rbp: 0,
    r12: 0,
    r13: 0,
    r14: 0,
    r15: 0,
    rsp: 0,
    pad_va: 0,
    loader_l4_mfn: 0,
    op: MmuextOp {
        cmd: 0,
        _pad: 0,
        arg1: 0,
        arg2: 0,
    },
};

/// Fill the transfer block. `guest_l4_mfn` becomes the op's argument.
pub fn set(t: Transfer) {
    // SAFETY: single vCPU, called once before `enter`; nothing else references TRANSFER.
    unsafe { TRANSFER = t };
}

/// The NEW_BASEPTR op for `guest_l4_mfn`.
pub const fn new_baseptr(guest_l4_mfn: u64) -> MmuextOp {
    MmuextOp {
        cmd: MMUEXT_NEW_BASEPTR,
        _pad: 0,
        arg1: guest_l4_mfn,
        arg2: 0,
    }
}

/// Enter the guest. Never returns: on success the guest runs; if Xen refuses the switch it
/// returns to the resume label inside the loader's tables, where the guest's next instruction
/// faults and Xen crashes the domain (the trap table is already the guest's).
///
/// # Safety
/// Every other piece of vCPU state must already be the guest's (GDT, callbacks, stack_switch,
/// segment bases, pins, trap table), the pad must be mapped executable at `pad_va`, and
/// `set` must have been called.
pub unsafe fn enter() -> ! {
    // SAFETY: per the contract above. The asm reads only TRANSFER (mapped, ours); after
    // `mov rsp` it touches no memory of its own; Xen reads the op before it switches CR3.
    unsafe {
        asm!(
            "fxrstor64 [rax]",
            "mov rbx, [rax + 512]",
            "mov rbp, [rax + 520]",
            "mov r12, [rax + 528]",
            "mov r13, [rax + 536]",
            "mov r14, [rax + 544]",
            "mov r15, [rax + 552]",
            "mov r9, [rax + 576]",
            "lea rdi, [rax + 584]",
            "mov rcx, [rax + 568]",
            "mov rsp, [rax + 560]",
            "mov esi, 1",
            "xor edx, edx",
            "mov r10d, {domid}",
            "mov eax, {mmuext}",
            "jmp rcx",
            in("rax") &raw const TRANSFER,
            domid = const DOMID_SELF,
            mmuext = const MMUEXT_OP,
            options(noreturn)
        )
    }
}

// ---- Boot: enter a freshly built kernel through a trampoline page. ----
//
// A kernel built inside this domain has page tables of its own that do not map our code. The
// trampoline is one page mapped at the same virtual address in our tables (a chain, see
// `mmu::chain_for`) and in the new kernel's (it is a page of the new bootstrap region). It
// issues one `mmuext_op` with two ops: NEW_BASEPTR (Xen switches CR3 to the new L4 and returns
// into the same page, now through the new tables) and UNPIN of our old L4 (Xen tears our
// tables down; preemptible: a continuation re-executes the `syscall`, which is why the ops live
// in the page too). Then it loads the entry registers the toolstack's builder gives a new PV
// kernel (rsi = start_info, rsp = top of the boot stack, everything else 0) and jumps to the
// entry. If Xen refuses, it stores rc in the page and crashes the domain.
core::arch::global_asm!(
    r#"
    .pushsection .rodata.xen_pv_trampoline,"a",@progbits
    .balign 16
    .globl xen_pv_trampoline_start
xen_pv_trampoline_start:
    mov eax, {mmuext}
    lea rdi, [rip + 20f]
    mov esi, 2
    xor edx, edx
    mov r10d, {domid}
    syscall
    test rax, rax
    jnz 10f
    mov rsi, [rip + 21f]
    mov rsp, [rip + 22f]
    mov rcx, [rip + 23f]
    xor eax, eax
    xor ebx, ebx
    xor edx, edx
    xor edi, edi
    xor ebp, ebp
    xor r8d, r8d
    xor r9d, r9d
    xor r10d, r10d
    xor r11d, r11d
    xor r12d, r12d
    xor r13d, r13d
    xor r14d, r14d
    xor r15d, r15d
    jmp rcx
10:
    mov [rip + 24f], rax
    mov eax, {sched_op}
    mov edi, {shutdown}
    lea rsi, [rip + 25f]
    syscall
    ud2
    .org xen_pv_trampoline_start + 0x80
20: .fill 48, 1, 0
21: .quad 0
22: .quad 0
23: .quad 0
24: .quad 0
25: .long {crash}
    .long 0
    .globl xen_pv_trampoline_end
xen_pv_trampoline_end:
    .popsection
"#,
    mmuext = const crate::hypercall::MMUEXT_OP,
    domid = const DOMID_SELF,
    sched_op = const crate::hypercall::SCHED_OP,
    shutdown = const crate::hypercall::SCHEDOP_SHUTDOWN,
    crash = const crate::hypercall::SHUTDOWN_CRASH,
);

extern "C" {
    static xen_pv_trampoline_start: u8;
    static xen_pv_trampoline_end: u8;
}

/// Offsets of the trampoline's data (the `.org` above).
pub const TRAMPOLINE_OPS: usize = 0x80;
pub const TRAMPOLINE_RSI: usize = TRAMPOLINE_OPS + 48;
pub const TRAMPOLINE_RSP: usize = TRAMPOLINE_RSI + 8;
pub const TRAMPOLINE_ENTRY: usize = TRAMPOLINE_RSP + 8;
/// Where the trampoline leaves Xen's rc if the switch failed.
pub const TRAMPOLINE_RC: usize = TRAMPOLINE_ENTRY + 8;

/// What the new kernel is entered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    /// The new kernel's L4 (pinned before the jump).
    pub new_l4_mfn: u64,
    /// Our own L4, unpinned by the trampoline once the new one is current.
    pub old_l4_mfn: u64,
    pub start_info_va: u64,
    pub stack_top: u64,
    pub entry: u64,
}

/// The trampoline's code, as assembled into this binary.
pub fn trampoline_code() -> &'static [u8] {
    // SAFETY: both symbols delimit the read-only blob above, in one section, start first.
    unsafe {
        let a = &raw const xen_pv_trampoline_start;
        let b = &raw const xen_pv_trampoline_end;
        core::slice::from_raw_parts(a, b as usize - a as usize)
    }
}

/// The trampoline page for `e`: code, then the two ops and the entry values.
pub fn trampoline_page(e: &BootEntry, page: &mut [u8; 4096]) {
    page.fill(0);
    let code = trampoline_code();
    page[..code.len()].copy_from_slice(code);
    let ops = [
        MmuextOp {
            cmd: MMUEXT_NEW_BASEPTR,
            _pad: 0,
            arg1: e.new_l4_mfn,
            arg2: 0,
        },
        MmuextOp {
            cmd: crate::hypercall::MMUEXT_UNPIN_TABLE,
            _pad: 0,
            arg1: e.old_l4_mfn,
            arg2: 0,
        },
    ];
    for (i, op) in ops.iter().enumerate() {
        let o = TRAMPOLINE_OPS + i * 24;
        page[o..o + 4].copy_from_slice(&op.cmd.to_le_bytes());
        page[o + 8..o + 16].copy_from_slice(&op.arg1.to_le_bytes());
        page[o + 16..o + 24].copy_from_slice(&op.arg2.to_le_bytes());
    }
    page[TRAMPOLINE_RSI..TRAMPOLINE_RSI + 8].copy_from_slice(&e.start_info_va.to_le_bytes());
    page[TRAMPOLINE_RSP..TRAMPOLINE_RSP + 8].copy_from_slice(&e.stack_top.to_le_bytes());
    page[TRAMPOLINE_ENTRY..TRAMPOLINE_ENTRY + 8].copy_from_slice(&e.entry.to_le_bytes());
}

/// Jump to the trampoline page at `va`.
///
/// # Safety
/// `va` must map (executable, in the current tables) a page written by `trampoline_page`
/// whose frame the new tables map at the same address; the new L4 must be pinned, the M2P
/// and every other piece of state the new kernel expects already set.
pub unsafe fn enter_trampoline(va: u64) -> ! {
    // SAFETY: per the contract; the trampoline touches only its own page.
    unsafe { asm!("jmp {}", in(reg) va, options(noreturn)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trampoline_fits_its_page_and_carries_its_ops() {
        let code = trampoline_code();
        assert_eq!(code.len(), TRAMPOLINE_RC + 8 + 8);
        assert_eq!(
            &code[..5],
            &[0xb8, 26, 0, 0, 0],
            "mov eax, __HYPERVISOR_mmuext_op"
        );
        let e = BootEntry {
            new_l4_mfn: 0x1234,
            old_l4_mfn: 0x5678,
            start_info_va: 0xffff_ffff_81a1_8000,
            stack_top: 0xffff_ffff_81a3_0000,
            entry: 0xffff_ffff_818f_69f0,
        };
        let mut p = [0xffu8; 4096];
        trampoline_page(&e, &mut p);
        let q = |o: usize| u64::from_le_bytes(p[o..o + 8].try_into().unwrap());
        assert_eq!(q(TRAMPOLINE_OPS) & 0xffff_ffff, MMUEXT_NEW_BASEPTR as u64);
        assert_eq!(q(TRAMPOLINE_OPS + 8), 0x1234);
        assert_eq!(
            q(TRAMPOLINE_OPS + 24) & 0xffff_ffff,
            4,
            "MMUEXT_UNPIN_TABLE"
        );
        assert_eq!(q(TRAMPOLINE_OPS + 32), 0x5678);
        assert_eq!(q(TRAMPOLINE_RSI), e.start_info_va);
        assert_eq!(q(TRAMPOLINE_RSP), e.stack_top);
        assert_eq!(q(TRAMPOLINE_ENTRY), e.entry);
        assert_eq!(q(TRAMPOLINE_RC), 0);
        assert_eq!(q(TRAMPOLINE_RC + 8) & 0xffff_ffff, 3, "SHUTDOWN_crash");
        assert!(p[TRAMPOLINE_RC + 16..].iter().all(|&b| b == 0));
    }
}
