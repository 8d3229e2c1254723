// SPDX-License-Identifier: GPL-2.0
//
// The one definition of the binary layouts that the guest module (kmod/), checkpointd, the
// checkpoint stream and the C test program share: the `/dev/checkpoint` ioctl ABI
// (docs/checkpoint-abi.md), Xen's x86_64 `vcpu_guest_context`, the page-type byte and the
// L4 slots Xen keeps for itself.
//
// This file is plain Rust with no crate-level attributes and no dependencies beyond `core`,
// because two builds read it: the `checkpoint-abi` crate (src/lib.rs `include!`s it) and the
// out-of-tree kernel module (kmod/ckpt_main.rs `include!`s it through the kmod/checkpoint_abi.rs
// link; scripts/build-checkpoint-kmod copies it next to the module's sources). The C header
// checkpoint-abi/c/checkpoint_abi.h is generated from it and checked by the crate's tests.

/// Declares a `#[repr(C)]` ABI struct plus its field table (name, C type, offset) for the
/// C header generator, and asserts its size at compile time.
macro_rules! abi_struct {
    (
        $(#[$meta:meta])*
        $name:ident = $cname:literal, size $size:literal {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty = $cty:literal ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty ),*
        }
        impl $name {
            /// The struct's C name (docs/checkpoint-abi.md and the generated header).
            pub const C_NAME: &'static str = $cname;
            /// Size in bytes, as specified.
            pub const SIZE: usize = $size;
            /// Every field: (name, C declaration type, byte offset).
            pub const FIELDS: &'static [(&'static str, &'static str, usize)] =
                &[$( (stringify!($field), $cty, core::mem::offset_of!($name, $field)) ),*];
        }
        const _: () = assert!(core::mem::size_of::<$name>() == $size);
    };
}

/// The `/dev/checkpoint` character device: ioctl numbers, argument structs, table ids and
/// the raw p2m entry encoding it reports.
pub mod dev {
    /// Path of the device node.
    pub const DEVICE: &str = "/dev/checkpoint";
    /// `ckpt_facts.abi_version` of this definition (2: unreadable/free counts, free-page
    /// elision, throttling).
    pub const ABI_VERSION: u32 = 2;
    /// Guest page size.
    pub const PAGE_SIZE: usize = 4096;
    /// Most pages one `pread` copies.
    pub const MAX_READ_PAGES: usize = 256;
    /// ioctl magic letter `'C'`.
    pub const IOC_MAGIC: u32 = 0x43;

    /// Linux's `_IOC(dir, 'C', nr, size)` on x86_64 (dir 1 = write, 2 = read).
    pub const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
        (dir << 30) | ((size as u32) << 16) | (IOC_MAGIC << 8) | nr
    }
    const IOC_NONE: u32 = 0;
    const IOC_WRITE: u32 = 1;
    const IOC_READ: u32 = 2;

    /// `_IOR('C', 1, struct ckpt_facts)`.
    pub const IOC_GET_FACTS: u32 = ioc(IOC_READ, 1, Facts::SIZE);
    /// `_IOW('C', 2, struct ckpt_track)`.
    pub const IOC_TRACK_START: u32 = ioc(IOC_WRITE, 2, Track::SIZE);
    /// `_IO('C', 3)`.
    pub const IOC_TRACK_STOP: u32 = ioc(IOC_NONE, 3, 0);
    /// `_IOWR('C', 4, struct ckpt_round)`.
    pub const IOC_NEXT_ROUND: u32 = ioc(IOC_READ | IOC_WRITE, 4, Round::SIZE);
    /// `_IOWR('C', 5, struct ckpt_capture)`.
    pub const IOC_CAPTURE: u32 = ioc(IOC_READ | IOC_WRITE, 5, Capture::SIZE);
    /// `_IOWR('C', 6, struct ckpt_table)`.
    pub const IOC_READ_TABLE: u32 = ioc(IOC_READ | IOC_WRITE, 6, Table::SIZE);
    /// `_IOWR('C', 7, struct ckpt_hold)`.
    pub const IOC_OUTPUT_HOLD: u32 = ioc(IOC_READ | IOC_WRITE, 7, Hold::SIZE);
    /// `_IOWR('C', 8, struct ckpt_throttle)`.
    pub const IOC_THROTTLE: u32 = ioc(IOC_READ | IOC_WRITE, 8, Throttle::SIZE);

    /// Every ioctl: (C name, value), for the header generator.
    pub const IOCTLS: &[(&str, u32)] = &[
        ("CKPT_IOC_GET_FACTS", IOC_GET_FACTS),
        ("CKPT_IOC_TRACK_START", IOC_TRACK_START),
        ("CKPT_IOC_TRACK_STOP", IOC_TRACK_STOP),
        ("CKPT_IOC_NEXT_ROUND", IOC_NEXT_ROUND),
        ("CKPT_IOC_CAPTURE", IOC_CAPTURE),
        ("CKPT_IOC_READ_TABLE", IOC_READ_TABLE),
        ("CKPT_IOC_OUTPUT_HOLD", IOC_OUTPUT_HOLD),
        ("CKPT_IOC_THROTTLE", IOC_THROTTLE),
    ];

    /// `ckpt_track.flags`: leave pages on the guest's free lists out of rounds and capture.
    pub const TRACK_ELIDE_FREE: u64 = 1;
    /// `ckpt_track.flags`: the page-fault tracker instead of the content scan (`EINVAL`
    /// from a module without one).
    pub const TRACK_FAULT: u64 = 2;
    /// `ckpt_track.flags`: with TRACK_FAULT, keep the scan's hashes as well and report the
    /// scan's dirty set next to the tracker's (`ckpt_round.oracle_bitmap`).
    pub const TRACK_ORACLE: u64 = 4;

    /// `ckpt_capture.flags`: also hash every page as the owner would read it after the
    /// capture (`oracle_digest`; page-fault tracker's oracle, `EINVAL` without it).
    pub const CAPTURE_ORACLE: u64 = 1;

    /// `ckpt_throttle.flags`: throttle the process (0 releases it).
    pub const THROTTLE_SET: u32 = 1;
    /// Most processes throttled at once.
    pub const THROTTLE_MAX: usize = 8;

    /// `ckpt_hold.flags`: arm the output hold (0 releases it).
    pub const HOLD_ARM: u32 = 1;

    /// `ckpt_table.table`: the live p2m (u64 per pfn).
    pub const TABLE_P2M: u32 = 1;
    /// The p2m at the capture point (u64 per pfn).
    pub const TABLE_P2M_CAPTURED: u32 = 2;
    /// Page types at the capture point (u8 per pfn, see `page_type`).
    pub const TABLE_PAGE_TYPES: u32 = 3;
    /// Pfns of the pages holding Linux's p2m array (u64 per p2m page).
    pub const TABLE_P2M_FRAMES: u32 = 4;

    /// `ckpt_facts.state` bit: a tracking session exists.
    pub const STATE_SESSION: u32 = 1;
    /// `ckpt_facts.state` bit: a capture is held.
    pub const STATE_CAPTURE_HELD: u32 = 2;

    /// `ckpt_capture.result`: this is the guest that took the capture.
    pub const CAPTURE_SOURCE: u64 = 1;
    /// `ckpt_capture.result`: this is a copy revived from the capture.
    pub const CAPTURE_RESUMED: u64 = 0;

    /// Raw p2m entry: no memory behind the pfn.
    pub const P2M_INVALID: u64 = u64::MAX;
    /// Raw p2m entry bit 62: identity frame (not RAM).
    pub const P2M_IDENTITY: u64 = 1 << 62;
    /// Raw p2m entry bit 63: foreign frame.
    pub const P2M_FOREIGN: u64 = 1 << 63;

    /// Whether a raw p2m entry is the guest's own RAM.
    pub const fn p2m_is_ram(e: u64) -> bool {
        e != P2M_INVALID && e & (P2M_IDENTITY | P2M_FOREIGN) == 0
    }

    /// Bytes of a dirty/snapshot bitmap covering `max_pfn` pfns (whole u64 words).
    pub const fn bitmap_bytes(max_pfn: u64) -> u64 {
        max_pfn.div_ceil(64) * 8
    }

    abi_struct! {
        /// `CKPT_IOC_GET_FACTS` output.
        Facts = "ckpt_facts", size 128 {
            abi_version: u32 = "uint32_t",
            page_size: u32 = "uint32_t",
            max_pfn: u64 = "uint64_t",
            nr_pages: u64 = "uint64_t",
            start_info_pfn: u64 = "uint64_t",
            start_info_mfn: u64 = "uint64_t",
            shared_info_maddr: u64 = "uint64_t",
            store_mfn: u64 = "uint64_t",
            console_mfn: u64 = "uint64_t",
            store_evtchn: u32 = "uint32_t",
            console_evtchn: u32 = "uint32_t",
            online_cpus: u32 = "uint32_t",
            guest_width: u32 = "uint32_t",
            pt_levels: u32 = "uint32_t",
            state: u32 = "uint32_t",
            p2m_frames: u64 = "uint64_t",
            reserved: [u64; 4] = "uint64_t[4]",
        }
    }

    abi_struct! {
        /// `CKPT_IOC_TRACK_START` input.
        Track = "ckpt_track", size 16 {
            flags: u64 = "uint64_t",
            reserved: u64 = "uint64_t",
        }
    }

    abi_struct! {
        /// `CKPT_IOC_NEXT_ROUND` input/output.
        Round = "ckpt_round", size 112 {
            bitmap: u64 = "uint64_t",
            bitmap_bytes: u64 = "uint64_t",
            flags: u64 = "uint64_t",
            round: u64 = "uint64_t",
            dirty: u64 = "uint64_t",
            scanned: u64 = "uint64_t",
            scan_ns: u64 = "uint64_t",
            unreadable: u64 = "uint64_t",
            free: u64 = "uint64_t",
            oracle_bitmap: u64 = "uint64_t",
            oracle_dirty: u64 = "uint64_t",
            deferred: u64 = "uint64_t",
            reserved: [u64; 2] = "uint64_t[2]",
        }
    }

    abi_struct! {
        /// `CKPT_IOC_CAPTURE` input/output.
        Capture = "ckpt_capture", size 128 {
            flags: u64 = "uint64_t",
            max_snapshot_pages: u64 = "uint64_t",
            bitmap: u64 = "uint64_t",
            bitmap_bytes: u64 = "uint64_t",
            vcpu: u64 = "uint64_t",
            vcpu_bytes: u64 = "uint64_t",
            result: u64 = "uint64_t",
            snapshot_pages: u64 = "uint64_t",
            pause_ns: u64 = "uint64_t",
            suspend_ns: u64 = "uint64_t",
            pt_pages: u64 = "uint64_t",
            scanned: u64 = "uint64_t",
            unreadable: u64 = "uint64_t",
            free: u64 = "uint64_t",
            snapshot_hwm: u64 = "uint64_t",
            oracle_digest: u64 = "uint64_t",
        }
    }

    abi_struct! {
        /// `CKPT_IOC_THROTTLE` input/output: slow one process (its whole thread group) by
        /// stopping it `stop_ms` out of every `period_ms`, or release it.
        Throttle = "ckpt_throttle", size 32 {
            pid: u32 = "uint32_t",
            flags: u32 = "uint32_t",
            stop_ms: u32 = "uint32_t",
            period_ms: u32 = "uint32_t",
            stopped_ns: u64 = "uint64_t",
            reserved: u64 = "uint64_t",
        }
    }

    abi_struct! {
        /// `CKPT_IOC_OUTPUT_HOLD` input/output: the one IPv4 TCP connection that may still
        /// send while the hold is armed; addresses and ports in network byte order.
        Hold = "ckpt_hold", size 32 {
            flags: u32 = "uint32_t",
            reserved: u32 = "uint32_t",
            saddr: [u8; 4] = "uint8_t[4]",
            daddr: [u8; 4] = "uint8_t[4]",
            sport: [u8; 2] = "uint8_t[2]",
            dport: [u8; 2] = "uint8_t[2]",
            reserved2: u32 = "uint32_t",
            dropped: u64 = "uint64_t",
        }
    }

    abi_struct! {
        /// `CKPT_IOC_READ_TABLE` input/output.
        Table = "ckpt_table", size 48 {
            table: u32 = "uint32_t",
            reserved: u32 = "uint32_t",
            start: u64 = "uint64_t",
            count: u64 = "uint64_t",
            buf: u64 = "uint64_t",
            buf_bytes: u64 = "uint64_t",
            returned: u64 = "uint64_t",
        }
    }
}

/// The page-type byte: one per pfn in `CKPT_TABLE_PAGE_TYPES` and in the checkpoint stream's
/// PAGE_TYPES record. Level in bits 0..=3, bit 7 pinned.
pub mod page_type {
    /// An ordinary page.
    pub const NORMAL: u8 = 0;
    /// An L1 page table.
    pub const L1: u8 = 1;
    /// An L2 page table.
    pub const L2: u8 = 2;
    /// An L3 page table.
    pub const L3: u8 = 3;
    /// An L4 page table.
    pub const L4: u8 = 4;
    /// No RAM behind this pfn (p2m entry invalid, identity or foreign).
    pub const UNPOPULATED: u8 = 0x0F;
    /// Flag: the table is pinned.
    pub const PINNED: u8 = 0x80;
    /// The level bits.
    pub const LEVEL_MASK: u8 = 0x0F;

    /// Whether a type byte is one the format allows.
    pub const fn valid(t: u8) -> bool {
        match t & !PINNED {
            NORMAL | UNPOPULATED => t & PINNED == 0,
            L1..=L4 => true,
            _ => false,
        }
    }

    /// Every named value: (C name, value), for the header generator.
    pub const NAMES: &[(&str, u8)] = &[
        ("CKPT_PT_NORMAL", NORMAL),
        ("CKPT_PT_L1", L1),
        ("CKPT_PT_L2", L2),
        ("CKPT_PT_L3", L3),
        ("CKPT_PT_L4", L4),
        ("CKPT_PT_NOT_RAM", UNPOPULATED),
        ("CKPT_PT_PINNED", PINNED),
    ];
}

/// Xen's x86_64 PV address-space facts the page-table walkers share.
pub mod xen {
    /// First L4 slot Xen keeps for itself in every 64-bit PV top-level table
    /// (HYPERVISOR_VIRT_START); Xen rebuilds these slots, guests and exporters skip them.
    pub const L4_XEN_FIRST: usize = 256;
    /// Last L4 slot Xen keeps (inclusive; HYPERVISOR_VIRT_END is the start of slot 272).
    pub const L4_XEN_LAST: usize = 271;

    /// Whether L4 slot `i` belongs to Xen.
    pub const fn l4_slot_is_xen(i: usize) -> bool {
        i >= L4_XEN_FIRST && i <= L4_XEN_LAST
    }
}

/// Xen's `struct vcpu_guest_context` for x86_64 guests (public/arch-x86/xen.h with
/// xen-x86_64.h), as the module fills it and the stream's VCPU Basic record carries it.
/// The structs give the layout; the constants are byte offsets into it.
pub mod vcpu_ctx {
    use core::mem::offset_of;

    /// `struct cpu_user_regs` (x86_64).
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct CpuUserRegs {
        pub r15: u64,
        pub r14: u64,
        pub r13: u64,
        pub r12: u64,
        pub rbp: u64,
        pub rbx: u64,
        pub r11: u64,
        pub r10: u64,
        pub r9: u64,
        pub r8: u64,
        pub rax: u64,
        pub rcx: u64,
        pub rdx: u64,
        pub rsi: u64,
        pub rdi: u64,
        pub error_code: u32,
        pub entry_vector: u32,
        pub rip: u64,
        pub cs: u16,
        pub pad0: u16,
        pub saved_upcall_mask: u8,
        pub pad1: [u8; 3],
        pub rflags: u64,
        pub rsp: u64,
        pub ss: u16,
        pub pad2: [u16; 3],
        pub es: u16,
        pub pad3: [u16; 3],
        pub ds: u16,
        pub pad4: [u16; 3],
        pub fs: u16,
        pub pad5: [u16; 3],
        pub gs: u16,
        pub pad6: [u16; 3],
    }

    /// `struct trap_info`.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct TrapInfo {
        pub vector: u8,
        pub flags: u8,
        pub cs: u16,
        pub pad: u32,
        pub address: u64,
    }

    /// `struct vcpu_guest_context` (x86_64).
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct VcpuGuestContext {
        pub fpu_ctxt: [u8; 512],
        pub flags: u64,
        pub user_regs: CpuUserRegs,
        pub trap_ctxt: [TrapInfo; 256],
        pub ldt_base: u64,
        pub ldt_ents: u64,
        pub gdt_frames: [u64; 16],
        pub gdt_ents: u64,
        pub kernel_ss: u64,
        pub kernel_sp: u64,
        pub ctrlreg: [u64; 8],
        pub debugreg: [u64; 8],
        pub event_callback_eip: u64,
        pub failsafe_callback_eip: u64,
        pub syscall_callback_eip: u64,
        pub vm_assist: u64,
        pub fs_base: u64,
        pub gs_base_kernel: u64,
        pub gs_base_user: u64,
    }

    /// Size of the context in bytes.
    pub const SIZE: usize = core::mem::size_of::<VcpuGuestContext>();
    const _: () = assert!(SIZE == 5168);
    const _: () = assert!(core::mem::size_of::<CpuUserRegs>() == 200);
    const _: () = assert!(core::mem::size_of::<TrapInfo>() == 16);

    const REGS: usize = offset_of!(VcpuGuestContext, user_regs);
    const CTRL: usize = offset_of!(VcpuGuestContext, ctrlreg);

    pub const FPU_CTXT: usize = offset_of!(VcpuGuestContext, fpu_ctxt);
    pub const FLAGS: usize = offset_of!(VcpuGuestContext, flags);
    pub const USER_REGS: usize = REGS;
    pub const R15: usize = REGS + offset_of!(CpuUserRegs, r15);
    pub const R14: usize = REGS + offset_of!(CpuUserRegs, r14);
    pub const R13: usize = REGS + offset_of!(CpuUserRegs, r13);
    pub const R12: usize = REGS + offset_of!(CpuUserRegs, r12);
    pub const RBP: usize = REGS + offset_of!(CpuUserRegs, rbp);
    pub const RBX: usize = REGS + offset_of!(CpuUserRegs, rbx);
    pub const RAX: usize = REGS + offset_of!(CpuUserRegs, rax);
    pub const RCX: usize = REGS + offset_of!(CpuUserRegs, rcx);
    pub const RDX: usize = REGS + offset_of!(CpuUserRegs, rdx);
    pub const RSI: usize = REGS + offset_of!(CpuUserRegs, rsi);
    pub const RDI: usize = REGS + offset_of!(CpuUserRegs, rdi);
    pub const RIP: usize = REGS + offset_of!(CpuUserRegs, rip);
    pub const CS: usize = REGS + offset_of!(CpuUserRegs, cs);
    pub const RFLAGS: usize = REGS + offset_of!(CpuUserRegs, rflags);
    pub const RSP: usize = REGS + offset_of!(CpuUserRegs, rsp);
    pub const SS: usize = REGS + offset_of!(CpuUserRegs, ss);
    pub const ES: usize = REGS + offset_of!(CpuUserRegs, es);
    pub const DS: usize = REGS + offset_of!(CpuUserRegs, ds);
    pub const FS: usize = REGS + offset_of!(CpuUserRegs, fs);
    pub const GS: usize = REGS + offset_of!(CpuUserRegs, gs);
    pub const TRAP_CTXT: usize = offset_of!(VcpuGuestContext, trap_ctxt);
    pub const LDT_BASE: usize = offset_of!(VcpuGuestContext, ldt_base);
    pub const LDT_ENTS: usize = offset_of!(VcpuGuestContext, ldt_ents);
    pub const GDT_FRAMES: usize = offset_of!(VcpuGuestContext, gdt_frames);
    pub const GDT_ENTS: usize = offset_of!(VcpuGuestContext, gdt_ents);
    pub const KERNEL_SS: usize = offset_of!(VcpuGuestContext, kernel_ss);
    pub const KERNEL_SP: usize = offset_of!(VcpuGuestContext, kernel_sp);
    pub const CTRLREG: usize = CTRL;
    pub const CR0: usize = CTRL;
    pub const CR1: usize = CTRL + 8;
    pub const CR3: usize = CTRL + 3 * 8;
    pub const CR4: usize = CTRL + 4 * 8;
    pub const DEBUGREG: usize = offset_of!(VcpuGuestContext, debugreg);
    pub const EVENT_CALLBACK_EIP: usize = offset_of!(VcpuGuestContext, event_callback_eip);
    pub const FAILSAFE_CALLBACK_EIP: usize = offset_of!(VcpuGuestContext, failsafe_callback_eip);
    pub const SYSCALL_CALLBACK_EIP: usize = offset_of!(VcpuGuestContext, syscall_callback_eip);
    pub const VM_ASSIST: usize = offset_of!(VcpuGuestContext, vm_assist);
    pub const FS_BASE: usize = offset_of!(VcpuGuestContext, fs_base);
    pub const GS_BASE_KERNEL: usize = offset_of!(VcpuGuestContext, gs_base_kernel);
    pub const GS_BASE_USER: usize = offset_of!(VcpuGuestContext, gs_base_user);
    /// Entries of `trap_ctxt`.
    pub const TRAP_ENTRIES: usize = 256;
    /// Entries of `gdt_frames`.
    pub const GDT_FRAME_ENTRIES: usize = 16;

    /// `flags`: the FPU image is valid.
    pub const VGCF_I387_VALID: u64 = 1 << 0;
    /// `flags`: the vCPU is in kernel mode.
    pub const VGCF_IN_KERNEL: u64 = 1 << 2;
    /// `flags`: failsafe callback disables events.
    pub const VGCF_FAILSAFE_DISABLES_EVENTS: u64 = 1 << 3;
    /// `flags`: syscall callback disables events.
    pub const VGCF_SYSCALL_DISABLES_EVENTS: u64 = 1 << 4;
    /// `flags`: the vCPU is online.
    pub const VGCF_ONLINE: u64 = 1 << 5;

    /// Every named offset: (C name suffix, offset), for the header generator.
    pub const OFFSETS: &[(&str, usize)] = &[
        ("FPU_CTXT", FPU_CTXT),
        ("FLAGS", FLAGS),
        ("USER_REGS", USER_REGS),
        ("R15", R15),
        ("R14", R14),
        ("R13", R13),
        ("R12", R12),
        ("RBP", RBP),
        ("RBX", RBX),
        ("RAX", RAX),
        ("RCX", RCX),
        ("RDX", RDX),
        ("RSI", RSI),
        ("RDI", RDI),
        ("RIP", RIP),
        ("CS", CS),
        ("RFLAGS", RFLAGS),
        ("RSP", RSP),
        ("SS", SS),
        ("ES", ES),
        ("DS", DS),
        ("FS", FS),
        ("GS", GS),
        ("TRAP_CTXT", TRAP_CTXT),
        ("LDT_BASE", LDT_BASE),
        ("LDT_ENTS", LDT_ENTS),
        ("GDT_FRAMES", GDT_FRAMES),
        ("GDT_ENTS", GDT_ENTS),
        ("KERNEL_SS", KERNEL_SS),
        ("KERNEL_SP", KERNEL_SP),
        ("CTRLREG", CTRLREG),
        ("CR0", CR0),
        ("CR1", CR1),
        ("CR3", CR3),
        ("CR4", CR4),
        ("DEBUGREG", DEBUGREG),
        ("EVENT_CALLBACK_EIP", EVENT_CALLBACK_EIP),
        ("FAILSAFE_CALLBACK_EIP", FAILSAFE_CALLBACK_EIP),
        ("SYSCALL_CALLBACK_EIP", SYSCALL_CALLBACK_EIP),
        ("VM_ASSIST", VM_ASSIST),
        ("FS_BASE", FS_BASE),
        ("GS_BASE_KERNEL", GS_BASE_KERNEL),
        ("GS_BASE_USER", GS_BASE_USER),
    ];
}
