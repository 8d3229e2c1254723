//! Every Xen layout constant the restore uses, in one place (x86_64 PV, Xen's public headers:
//! xen.h, arch-x86/xen.h, arch-x86/xen-x86_64.h). The vcpu_guest_context layout and Xen's L4
//! slots come from the project's ABI crate (checkpoint-abi); start_info, page-table bits and
//! hypercall values are defined here.

/// Offsets in `struct vcpu_guest_context` (x86_64), 5168 bytes: the project's ABI crate.
pub mod vcpu {
    pub use checkpoint_abi::vcpu_ctx::{
        CR1, CR3, CTRLREG, DEBUGREG, EVENT_CALLBACK_EIP, FAILSAFE_CALLBACK_EIP, FLAGS, FPU_CTXT,
        FS_BASE, GDT_ENTS, GDT_FRAMES, GDT_FRAME_ENTRIES as GDT_FRAME_SLOTS, GS_BASE_KERNEL,
        GS_BASE_USER, KERNEL_SP, KERNEL_SS, LDT_BASE, LDT_ENTS, RDX, SIZE, SYSCALL_CALLBACK_EIP,
        TRAP_CTXT, TRAP_ENTRIES, USER_REGS, VGCF_FAILSAFE_DISABLES_EVENTS, VGCF_I387_VALID,
        VGCF_IN_KERNEL, VGCF_ONLINE, VGCF_SYSCALL_DISABLES_EVENTS, VM_ASSIST,
    };
    /// FXSAVE image, 512 bytes.
    pub const FPU_LEN: usize = 512;
    /// Bytes of one `struct trap_info`: vector u8, flags u8, cs u16, pad u32, address u64.
    pub const TRAP_INFO_LEN: usize = core::mem::size_of::<checkpoint_abi::vcpu_ctx::TrapInfo>();
    /// Xen's FIRST_RESERVED_GDT_ENTRY on x86_64: the guest may own 14 pages of GDT.
    pub const MAX_GDT_ENTS: u64 = 14 * 512;
}

/// Offsets inside `struct cpu_user_regs` (x86_64), from the ABI crate's struct.
pub mod regs {
    use checkpoint_abi::vcpu_ctx::CpuUserRegs as R;
    use core::mem::offset_of;
    pub const R15: usize = offset_of!(R, r15);
    pub const R14: usize = offset_of!(R, r14);
    pub const R13: usize = offset_of!(R, r13);
    pub const R12: usize = offset_of!(R, r12);
    pub const RBP: usize = offset_of!(R, rbp);
    pub const RBX: usize = offset_of!(R, rbx);
    pub const R11: usize = offset_of!(R, r11);
    pub const R10: usize = offset_of!(R, r10);
    pub const R9: usize = offset_of!(R, r9);
    pub const R8: usize = offset_of!(R, r8);
    pub const RAX: usize = offset_of!(R, rax);
    pub const RCX: usize = offset_of!(R, rcx);
    pub const RDX: usize = offset_of!(R, rdx);
    pub const RSI: usize = offset_of!(R, rsi);
    pub const RDI: usize = offset_of!(R, rdi);
    pub const ERROR_CODE: usize = offset_of!(R, error_code); // u32
    pub const ENTRY_VECTOR: usize = offset_of!(R, entry_vector); // u32
    pub const RIP: usize = offset_of!(R, rip);
    pub const CS: usize = offset_of!(R, cs); // u16
    pub const SAVED_UPCALL_MASK: usize = offset_of!(R, saved_upcall_mask); // u8
    pub const RFLAGS: usize = offset_of!(R, rflags);
    pub const RSP: usize = offset_of!(R, rsp);
    pub const SS: usize = offset_of!(R, ss); // u16 (then padding to 8 bytes, as es..gs)
    pub const ES: usize = offset_of!(R, es);
    pub const DS: usize = offset_of!(R, ds);
    pub const FS: usize = offset_of!(R, fs);
    pub const GS: usize = offset_of!(R, gs);
    pub const SIZE: usize = core::mem::size_of::<R>();
}

/// Offsets in `struct start_info` (x86_64).
pub mod start_info {
    pub const MAGIC: usize = 0;
    pub const MAGIC_LEN: usize = 32;
    pub const NR_PAGES: usize = 32;
    pub const SHARED_INFO: usize = 40;
    pub const FLAGS: usize = 48; // u32
    pub const STORE_MFN: usize = 56;
    pub const STORE_EVTCHN: usize = 64; // u32
    pub const CONSOLE_MFN: usize = 72;
    pub const CONSOLE_EVTCHN: usize = 80; // u32
    pub const PT_BASE: usize = 88;
    pub const MFN_LIST: usize = 104;
    pub const CMD_LINE: usize = 128;
    /// Every 64-bit PV start_info magic begins like this ("xen-3.0-x86_64").
    pub const MAGIC_PREFIX: &[u8] = b"xen-3.0-";
}

/// Page-table entries (x86_64 long mode, 4 levels).
pub mod pte {
    pub const PRESENT: u64 = 1 << 0;
    pub const RW: u64 = 1 << 1;
    pub const USER: u64 = 1 << 2;
    /// PSE: a superpage at L2/L3 (PV guests cannot migrate them).
    pub const PSE: u64 = 1 << 7;
    pub const NX: u64 = 1 << 63;
    /// Frame number bits 12..=51.
    pub const FRAME: u64 = 0x000f_ffff_ffff_f000;
    pub const ENTRIES: usize = 512;
    /// L4 slots HYPERVISOR_VIRT_START..END of 64-bit PV: Xen's own mappings, refilled by Xen
    /// when it validates the L4.
    pub use checkpoint_abi::xen::{L4_XEN_FIRST as XEN_L4_FIRST, L4_XEN_LAST as XEN_L4_LAST};

    /// Index of `va` in the table of `level` (1..=4).
    pub const fn index(va: u64, level: u8) -> usize {
        ((va >> (12 + 9 * (level as u32 - 1))) & 511) as usize
    }
}

/// Hypercall argument values the loader builds from restore lists.
pub mod hypercall {
    /// `mmu_update` request type in the low bits of `ptr`: set M2P[ptr >> 12] = val.
    pub const MMU_MACHPHYS_UPDATE: u64 = 1;
    /// `mmuext_op` commands MMUEXT_PIN_L1_TABLE..MMUEXT_PIN_L4_TABLE are 0..=3.
    pub const fn mmuext_pin_cmd(level: u8) -> u32 {
        level as u32 - 1
    }
}

/// An invalid entry of the guest's p2m (Linux's INVALID_P2M_ENTRY).
pub const INVALID_P2M_ENTRY: u64 = !0;

pub const PAGE_SHIFT: u32 = 12;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_adds_up() {
        use vcpu::*;
        assert_eq!(USER_REGS + regs::SIZE, TRAP_CTXT);
        assert_eq!(TRAP_CTXT + TRAP_ENTRIES * TRAP_INFO_LEN, LDT_BASE);
        assert_eq!(GDT_FRAMES + 8 * GDT_FRAME_SLOTS, GDT_ENTS);
        assert_eq!(CTRLREG + 64, DEBUGREG);
        assert_eq!(DEBUGREG + 64, EVENT_CALLBACK_EIP);
        assert_eq!(GS_BASE_USER + 8, SIZE);
        assert_eq!(RDX, 616, "docs/xen-export.md");
        assert_eq!((CR1, CR3), (4992, 5008));
        assert_eq!(pte::index(0xffff_ffff_8000_0000, 4), 511);
        assert_eq!(pte::index(0xffff_ffff_8000_0000, 3), 510);
        assert_eq!(pte::index(0x20_3000, 1), 3);
        assert_eq!(pte::index(0x20_3000, 2), 1);
    }
}
