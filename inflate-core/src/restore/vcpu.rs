//! Xen's x86_64 `vcpu_guest_context`, decoded into fields the loader sets one hypercall (or
//! instruction) at a time, and encoded back (for tests and tools).
use super::xen::{regs, vcpu as off};

fn rd64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}
fn rd32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn rd16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn wr(b: &mut [u8], o: usize, v: &[u8]) {
    b[o..o + v.len()].copy_from_slice(v);
}

/// `struct cpu_user_regs` and `struct trap_info`: the project's ABI crate's definitions (the
/// decoded context uses them as they are; padding fields are written as zero).
pub use checkpoint_abi::vcpu_ctx::{CpuUserRegs as UserRegs, TrapInfo, VcpuGuestContext};

/// Largest `set_trap_table` list: every vector plus the terminating zero entry.
pub const TRAP_TABLE_MAX: usize = off::TRAP_ENTRIES + 1;

/// Xen's `vcpu_guest_context` as the project's ABI crate defines it, decoded from and encoded
/// to the 5168-byte layout without unsafe code. Fields are reached through `Deref`
/// (`ctx.user_regs.rip`, `ctx.ctrlreg[3]`, `ctx.fpu_ctxt` ...).
#[derive(Clone, Copy)]
pub struct VcpuContext(pub VcpuGuestContext);

impl core::ops::Deref for VcpuContext {
    type Target = VcpuGuestContext;
    fn deref(&self) -> &VcpuGuestContext {
        &self.0
    }
}

impl core::ops::DerefMut for VcpuContext {
    fn deref_mut(&mut self) -> &mut VcpuGuestContext {
        &mut self.0
    }
}

impl core::fmt::Debug for VcpuContext {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VcpuContext")
            .field("flags", &self.flags)
            .field("user_regs", &self.user_regs)
            .field("gdt_frames", &self.gdt_frames)
            .field("gdt_ents", &self.gdt_ents)
            .field("kernel_ss", &self.kernel_ss)
            .field("kernel_sp", &self.kernel_sp)
            .field("ctrlreg", &self.ctrlreg)
            .field("fs_base", &self.fs_base)
            .field("gs_base_kernel", &self.gs_base_kernel)
            .field("gs_base_user", &self.gs_base_user)
            .finish_non_exhaustive()
    }
}

/// Two contexts are equal when their 5168-byte layouts are (padding is not state).
impl PartialEq for VcpuContext {
    fn eq(&self, other: &Self) -> bool {
        self.encode() == other.encode()
    }
}

impl Eq for VcpuContext {}

impl VcpuContext {
    pub fn decode(b: &[u8; off::SIZE]) -> VcpuContext {
        let r = off::USER_REGS;
        let q = |o: usize| rd64(b, r + o);
        let user_regs = UserRegs {
            r15: q(regs::R15),
            r14: q(regs::R14),
            r13: q(regs::R13),
            r12: q(regs::R12),
            rbp: q(regs::RBP),
            rbx: q(regs::RBX),
            r11: q(regs::R11),
            r10: q(regs::R10),
            r9: q(regs::R9),
            r8: q(regs::R8),
            rax: q(regs::RAX),
            rcx: q(regs::RCX),
            rdx: q(regs::RDX),
            rsi: q(regs::RSI),
            rdi: q(regs::RDI),
            error_code: rd32(b, r + regs::ERROR_CODE),
            entry_vector: rd32(b, r + regs::ENTRY_VECTOR),
            rip: q(regs::RIP),
            cs: rd16(b, r + regs::CS),
            saved_upcall_mask: b[r + regs::SAVED_UPCALL_MASK],
            rflags: q(regs::RFLAGS),
            rsp: q(regs::RSP),
            ss: rd16(b, r + regs::SS),
            es: rd16(b, r + regs::ES),
            ds: rd16(b, r + regs::DS),
            fs: rd16(b, r + regs::FS),
            gs: rd16(b, r + regs::GS),
            ..UserRegs::default()
        };
        let mut trap_ctxt = [TrapInfo::default(); off::TRAP_ENTRIES];
        for (i, t) in trap_ctxt.iter_mut().enumerate() {
            let o = off::TRAP_CTXT + i * off::TRAP_INFO_LEN;
            *t = TrapInfo {
                vector: b[o],
                flags: b[o + 1],
                cs: rd16(b, o + 2),
                pad: 0,
                address: rd64(b, o + 8),
            };
        }
        let arr8 = |o: usize| core::array::from_fn(|i| rd64(b, o + 8 * i));
        VcpuContext(VcpuGuestContext {
            fpu_ctxt: b[off::FPU_CTXT..off::FPU_CTXT + off::FPU_LEN]
                .try_into()
                .unwrap(),
            flags: rd64(b, off::FLAGS),
            user_regs,
            trap_ctxt,
            ldt_base: rd64(b, off::LDT_BASE),
            ldt_ents: rd64(b, off::LDT_ENTS),
            gdt_frames: core::array::from_fn(|i| rd64(b, off::GDT_FRAMES + 8 * i)),
            gdt_ents: rd64(b, off::GDT_ENTS),
            kernel_ss: rd64(b, off::KERNEL_SS),
            kernel_sp: rd64(b, off::KERNEL_SP),
            ctrlreg: arr8(off::CTRLREG),
            debugreg: arr8(off::DEBUGREG),
            event_callback_eip: rd64(b, off::EVENT_CALLBACK_EIP),
            failsafe_callback_eip: rd64(b, off::FAILSAFE_CALLBACK_EIP),
            syscall_callback_eip: rd64(b, off::SYSCALL_CALLBACK_EIP),
            vm_assist: rd64(b, off::VM_ASSIST),
            fs_base: rd64(b, off::FS_BASE),
            gs_base_kernel: rd64(b, off::GS_BASE_KERNEL),
            gs_base_user: rd64(b, off::GS_BASE_USER),
        })
    }

    /// The 5168-byte layout (padding zero).
    pub fn encode(&self) -> [u8; off::SIZE] {
        let mut b = [0u8; off::SIZE];
        b[..off::FPU_LEN].copy_from_slice(&self.fpu_ctxt);
        wr(&mut b, off::FLAGS, &self.flags.to_le_bytes());
        let u = &self.user_regs;
        let r = off::USER_REGS;
        for (o, v) in [
            (regs::R15, u.r15),
            (regs::R14, u.r14),
            (regs::R13, u.r13),
            (regs::R12, u.r12),
            (regs::RBP, u.rbp),
            (regs::RBX, u.rbx),
            (regs::R11, u.r11),
            (regs::R10, u.r10),
            (regs::R9, u.r9),
            (regs::R8, u.r8),
            (regs::RAX, u.rax),
            (regs::RCX, u.rcx),
            (regs::RDX, u.rdx),
            (regs::RSI, u.rsi),
            (regs::RDI, u.rdi),
            (regs::RIP, u.rip),
            (regs::RFLAGS, u.rflags),
            (regs::RSP, u.rsp),
        ] {
            wr(&mut b, r + o, &v.to_le_bytes());
        }
        wr(&mut b, r + regs::ERROR_CODE, &u.error_code.to_le_bytes());
        wr(
            &mut b,
            r + regs::ENTRY_VECTOR,
            &u.entry_vector.to_le_bytes(),
        );
        b[r + regs::SAVED_UPCALL_MASK] = u.saved_upcall_mask;
        for (o, v) in [
            (regs::CS, u.cs),
            (regs::SS, u.ss),
            (regs::ES, u.es),
            (regs::DS, u.ds),
            (regs::FS, u.fs),
            (regs::GS, u.gs),
        ] {
            wr(&mut b, r + o, &v.to_le_bytes());
        }
        for (i, t) in self.trap_ctxt.iter().enumerate() {
            let o = off::TRAP_CTXT + i * off::TRAP_INFO_LEN;
            b[o] = t.vector;
            b[o + 1] = t.flags;
            wr(&mut b, o + 2, &t.cs.to_le_bytes());
            wr(&mut b, o + 8, &t.address.to_le_bytes());
        }
        for (o, v) in [
            (off::LDT_BASE, self.ldt_base),
            (off::LDT_ENTS, self.ldt_ents),
            (off::GDT_ENTS, self.gdt_ents),
            (off::KERNEL_SS, self.kernel_ss),
            (off::KERNEL_SP, self.kernel_sp),
            (off::EVENT_CALLBACK_EIP, self.event_callback_eip),
            (off::FAILSAFE_CALLBACK_EIP, self.failsafe_callback_eip),
            (off::SYSCALL_CALLBACK_EIP, self.syscall_callback_eip),
            (off::VM_ASSIST, self.vm_assist),
            (off::FS_BASE, self.fs_base),
            (off::GS_BASE_KERNEL, self.gs_base_kernel),
            (off::GS_BASE_USER, self.gs_base_user),
        ] {
            wr(&mut b, o, &v.to_le_bytes());
        }
        for i in 0..off::GDT_FRAME_SLOTS {
            wr(
                &mut b,
                off::GDT_FRAMES + 8 * i,
                &self.gdt_frames[i].to_le_bytes(),
            );
        }
        for i in 0..8 {
            wr(&mut b, off::CTRLREG + 8 * i, &self.ctrlreg[i].to_le_bytes());
            wr(
                &mut b,
                off::DEBUGREG + 8 * i,
                &self.debugreg[i].to_le_bytes(),
            );
        }
        b
    }

    /// GDT frames in use.
    pub fn gdt_frame_count(&self) -> usize {
        self.gdt_ents.div_ceil(512) as usize
    }

    /// The kernel L4's machine frame (CR3).
    pub fn cr3_frame(&self) -> u64 {
        self.ctrlreg[3] >> 12
    }

    /// The user-mode L4's machine frame (CR1), if the guest has one.
    pub fn user_l4_frame(&self) -> Option<u64> {
        (self.ctrlreg[1] != 0).then_some(self.ctrlreg[1] >> 12)
    }

    /// The list `set_trap_table` takes: every entry with a handler, in vector order, then the
    /// zero entry that ends the list (Xen stops at the first entry whose address is 0, so
    /// unused vectors must be left out, not passed as zeros). Returns the entries written,
    /// terminator included.
    pub fn trap_table(&self, out: &mut [TrapInfo; TRAP_TABLE_MAX]) -> usize {
        let mut n = 0;
        for t in self.trap_ctxt.iter().filter(|t| t.address != 0) {
            out[n] = TrapInfo { pad: 0, ..*t };
            n += 1;
        }
        out[n] = TrapInfo::default();
        n + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_reads_documented_offsets_and_encode_inverts_it() {
        let mut b = [0u8; off::SIZE];
        for (i, x) in b.iter_mut().enumerate() {
            *x = (i * 7 + 3) as u8;
        }
        // Padding bytes do not survive encode: clear them so the round trip is exact.
        let r = off::USER_REGS;
        for (o, n) in [
            (regs::CS + 2, 2),
            (regs::SAVED_UPCALL_MASK + 1, 3),
            (regs::SS + 2, 6),
            (regs::ES + 2, 6),
            (regs::DS + 2, 6),
            (regs::FS + 2, 6),
            (regs::GS + 2, 6),
        ] {
            b[r + o..r + o + n].fill(0);
        }
        for i in 0..off::TRAP_ENTRIES {
            let o = off::TRAP_CTXT + i * off::TRAP_INFO_LEN + 4;
            b[o..o + 4].fill(0);
        }
        let c = VcpuContext::decode(&b);
        assert_eq!(c.user_regs.rip, rd64(&b, 520 + 128));
        assert_eq!(c.user_regs.rdx, rd64(&b, 616));
        assert_eq!(c.ctrlreg[3], rd64(&b, 5008));
        assert_eq!(c.gs_base_user, rd64(&b, 5160));
        assert_eq!(c.trap_ctxt[255].address, rd64(&b, 720 + 255 * 16 + 8));
        assert_eq!(c.encode(), b);
    }

    #[test]
    fn trap_table_skips_empty_vectors_and_ends_with_zero() {
        let mut c = VcpuContext::decode(&[0u8; off::SIZE]);
        for v in [0u8, 3, 14, 0x80] {
            c.trap_ctxt[v as usize] = TrapInfo {
                vector: v,
                flags: if v == 0x80 { 3 } else { 0 },
                cs: 0xe033,
                pad: 0,
                address: 0xffff_ffff_8100_0000 + v as u64,
            };
        }
        let mut out = [TrapInfo::default(); TRAP_TABLE_MAX];
        let n = c.trap_table(&mut out);
        assert_eq!(n, 5);
        assert_eq!(
            out[..4].iter().map(|t| t.vector).collect::<Vec<_>>(),
            [0, 3, 14, 0x80]
        );
        assert_eq!(out[3].flags, 3);
        assert_eq!((out[4].vector, out[4].cs, out[4].address), (0, 0, 0));
        let mut full = c;
        full.trap_ctxt = [TrapInfo {
            address: 1,
            ..Default::default()
        }; 256];
        assert_eq!(full.trap_table(&mut out), 257);
    }
}
