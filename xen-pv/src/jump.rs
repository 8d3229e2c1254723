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
