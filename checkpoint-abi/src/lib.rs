//! One definition of every binary layout shared by the guest module, checkpointd, the
//! checkpoint stream and the C test program (docs/checkpoint-abi.md).
//!
//! The definitions live in `abi.rs`, a plain file that the out-of-tree kernel module
//! `include!`s as well (it cannot depend on a cargo crate); this crate is that file as a
//! library. `c/checkpoint_abi.h` is generated from it (`tests/c_header.rs` checks that the
//! committed header is current and that a C compiler agrees with every offset).
#![no_std]

include!("abi.rs");

#[cfg(test)]
mod tests {
    use super::*;

    /// The values docs/checkpoint-abi.md lists: a change here is an ABI change.
    #[test]
    fn ioctl_numbers_match_the_spec() {
        assert_eq!(dev::IOC_GET_FACTS, 0x8080_4301);
        assert_eq!(dev::IOC_TRACK_START, 0x4010_4302);
        assert_eq!(dev::IOC_TRACK_STOP, 0x0000_4303);
        assert_eq!(dev::IOC_NEXT_ROUND, 0xC070_4304);
        assert_eq!(dev::IOC_CAPTURE, 0xC080_4305);
        assert_eq!(dev::IOC_READ_TABLE, 0xC030_4306);
        assert_eq!(dev::IOC_OUTPUT_HOLD, 0xC020_4307);
        assert_eq!(dev::IOC_THROTTLE, 0xC020_4308);
    }

    /// Offsets from docs/checkpoint-abi.md's vCPU context table.
    #[test]
    fn vcpu_offsets_match_the_spec() {
        use vcpu_ctx::*;
        let spec = [
            (FPU_CTXT, 0),
            (FLAGS, 512),
            (USER_REGS, 520),
            (RAX, 600),
            (RDX, 616),
            (RIP, 648),
            (CS, 656),
            (RFLAGS, 664),
            (RSP, 672),
            (SS, 680),
            (GS, 712),
            (TRAP_CTXT, 720),
            (LDT_BASE, 4816),
            (LDT_ENTS, 4824),
            (GDT_FRAMES, 4832),
            (GDT_ENTS, 4960),
            (KERNEL_SS, 4968),
            (KERNEL_SP, 4976),
            (CTRLREG, 4984),
            (CR3, 4984 + 24),
            (DEBUGREG, 5048),
            (EVENT_CALLBACK_EIP, 5112),
            (FAILSAFE_CALLBACK_EIP, 5120),
            (SYSCALL_CALLBACK_EIP, 5128),
            (VM_ASSIST, 5136),
            (FS_BASE, 5144),
            (GS_BASE_KERNEL, 5152),
            (GS_BASE_USER, 5160),
            (SIZE, 5168),
        ];
        for (i, (got, want)) in spec.iter().enumerate() {
            assert_eq!(got, want, "entry {i}");
        }
    }

    #[test]
    fn page_types() {
        use page_type::*;
        for t in 0..=255u8 {
            let want = matches!(t, 0 | 0x0f | 1..=4 | 0x81..=0x84);
            assert_eq!(valid(t), want, "{t:#x}");
        }
    }

    #[test]
    fn xen_l4_slots() {
        let xen: usize = (0..512).filter(|&i| xen::l4_slot_is_xen(i)).count();
        assert_eq!(xen, 16);
        assert!(!xen::l4_slot_is_xen(255) && xen::l4_slot_is_xen(256));
        assert!(xen::l4_slot_is_xen(271) && !xen::l4_slot_is_xen(272));
    }

    #[test]
    fn p2m_entries() {
        assert!(dev::p2m_is_ram(0x1234));
        assert!(!dev::p2m_is_ram(dev::P2M_INVALID));
        assert!(!dev::p2m_is_ram(dev::P2M_IDENTITY | 5));
        assert!(!dev::p2m_is_ram(dev::P2M_FOREIGN | 5));
        assert_eq!(dev::bitmap_bytes(65), 16);
    }
}
