//! Every Xen layout constant the restore uses, in one place (x86_64 PV, Xen's public headers:
//! xen.h, arch-x86/xen.h, arch-x86/xen-x86_64.h). When the project's shared ABI crate has these,
//! this module re-exports it instead.

/// Offsets in `struct vcpu_guest_context` (x86_64), 5168 bytes.
pub mod vcpu {
    pub const SIZE: usize = 5168;
    /// FXSAVE image, 512 bytes.
    pub const FPU_CTXT: usize = 0;
    pub const FPU_LEN: usize = 512;
    pub const FLAGS: usize = 512;
    /// `struct cpu_user_regs`, 200 bytes.
    pub const USER_REGS: usize = 520;
    pub const TRAP_CTXT: usize = 720;
    pub const TRAP_ENTRIES: usize = 256;
    /// Bytes of one `struct trap_info`: vector u8, flags u8, cs u16, pad u32, address u64.
    pub const TRAP_INFO_LEN: usize = 16;
    pub const LDT_BASE: usize = 4816;
    pub const LDT_ENTS: usize = 4824;
    pub const GDT_FRAMES: usize = 4832;
    pub const GDT_FRAME_SLOTS: usize = 16;
    pub const GDT_ENTS: usize = 4960;
    pub const KERNEL_SS: usize = 4968;
    pub const KERNEL_SP: usize = 4976;
    pub const CTRLREG: usize = 4984;
    pub const DEBUGREG: usize = 5048;
    pub const EVENT_CALLBACK_EIP: usize = 5112;
    pub const FAILSAFE_CALLBACK_EIP: usize = 5120;
    pub const SYSCALL_CALLBACK_EIP: usize = 5128;
    pub const VM_ASSIST: usize = 5136;
    pub const FS_BASE: usize = 5144;
    pub const GS_BASE_KERNEL: usize = 5152;
    pub const GS_BASE_USER: usize = 5160;

    pub const CR1: usize = CTRLREG + 8;
    pub const CR3: usize = CTRLREG + 3 * 8;
    pub const RDX: usize = USER_REGS + super::regs::RDX;

    /// `flags` bits (VGCF_*).
    pub const VGCF_I387_VALID: u64 = 1 << 0;
    pub const VGCF_IN_KERNEL: u64 = 1 << 2;
    pub const VGCF_FAILSAFE_DISABLES_EVENTS: u64 = 1 << 3;
    pub const VGCF_SYSCALL_DISABLES_EVENTS: u64 = 1 << 4;
    pub const VGCF_ONLINE: u64 = 1 << 5;

    /// Xen's FIRST_RESERVED_GDT_ENTRY on x86_64: the guest may own 14 pages of GDT.
    pub const MAX_GDT_ENTS: u64 = 14 * 512;
}

/// Offsets inside `struct cpu_user_regs` (x86_64).
pub mod regs {
    pub const R15: usize = 0;
    pub const R14: usize = 8;
    pub const R13: usize = 16;
    pub const R12: usize = 24;
    pub const RBP: usize = 32;
    pub const RBX: usize = 40;
    pub const R11: usize = 48;
    pub const R10: usize = 56;
    pub const R9: usize = 64;
    pub const R8: usize = 72;
    pub const RAX: usize = 80;
    pub const RCX: usize = 88;
    pub const RDX: usize = 96;
    pub const RSI: usize = 104;
    pub const RDI: usize = 112;
    pub const ERROR_CODE: usize = 120; // u32
    pub const ENTRY_VECTOR: usize = 124; // u32
    pub const RIP: usize = 128;
    pub const CS: usize = 136; // u16
    pub const SAVED_UPCALL_MASK: usize = 140; // u8
    pub const RFLAGS: usize = 144;
    pub const RSP: usize = 152;
    pub const SS: usize = 160; // u16
    pub const ES: usize = 168;
    pub const DS: usize = 176;
    pub const FS: usize = 184;
    pub const GS: usize = 192;
    pub const SIZE: usize = 200;
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
    pub const XEN_L4_FIRST: usize = 256;
    pub const XEN_L4_LAST: usize = 271;

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
