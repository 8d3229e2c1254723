//! The transfer pad. The only guest state no hypercall can set is the general registers and
//! rip; the loader loads the registers itself and enters the guest through a 2-byte `syscall`
//! (0f 05) that the checkpoint module places right before its resume label, i.e. at rip - 2 of
//! the captured context. Executed with `mmuext_op NEW_BASEPTR`, it switches to the guest's
//! tables and returns to rcx = rip. So rip - 2 must be mapped, executable and hold 0f 05 in
//! the guest's *localised* tables; this walk proves it before the point of no return.
use super::xen::pte;
use super::{FrameAccess, MachineFrames};
use checkpoint_stream::PAGE_SIZE;

/// The `syscall` instruction.
pub const SYSCALL: [u8; 2] = [0x0f, 0x05];

/// Where the pad is: its virtual address and the machine frame of its page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pad {
    pub va: u64,
    pub mfn: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadError {
    /// rip - 2 is not a canonical kernel address.
    NonCanonical {
        va: u64,
    },
    /// The two bytes cross a page boundary (the loader maps one page).
    Straddles {
        va: u64,
    },
    /// The entry of `level` on the way is not present.
    NotMapped {
        va: u64,
        level: u8,
    },
    /// NX is set at `level`.
    NotExecutable {
        va: u64,
        level: u8,
    },
    Superpage {
        va: u64,
        level: u8,
    },
    /// A table or the page on the way is not a frame of this domain.
    ForeignFrame {
        va: u64,
        level: u8,
        mfn: u64,
    },
    /// The bytes at rip - 2 are not `syscall`.
    NotSyscall {
        va: u64,
        found: [u8; 2],
    },
}

impl core::fmt::Display for PadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            PadError::NonCanonical { va } => write!(f, "pad {va:#x}: not a canonical address"),
            PadError::Straddles { va } => write!(f, "pad {va:#x} crosses a page boundary"),
            PadError::NotMapped { va, level } => {
                write!(f, "pad {va:#x}: L{level} entry not present")
            }
            PadError::NotExecutable { va, level } => {
                write!(f, "pad {va:#x}: L{level} entry has NX set")
            }
            PadError::Superpage { va, level } => {
                write!(f, "pad {va:#x}: L{level} entry is a superpage")
            }
            PadError::ForeignFrame { va, level, mfn } => write!(
                f,
                "pad {va:#x}: L{level} entry names mfn {mfn:#x}, not a frame of this domain"
            ),
            PadError::NotSyscall { va, found } => write!(
                f,
                "pad {va:#x} holds {:02x} {:02x}, not syscall (0f 05): module without the pad?",
                found[0], found[1]
            ),
        }
    }
}

fn read(access: &mut impl FrameAccess, loader_pfn: u64, buf: &mut [u8; PAGE_SIZE]) {
    access.with_frame(loader_pfn, &mut |p| buf.copy_from_slice(p));
}

/// Walk the localised tables from the kernel L4 `cr3_mfn` to `rip - 2`.
pub fn find(
    cr3_mfn: u64,
    rip: u64,
    frames: &impl MachineFrames,
    access: &mut impl FrameAccess,
) -> Result<Pad, PadError> {
    let va = rip.wrapping_sub(2);
    // Canonical upper half: bits 47..=63 all set (the pad is kernel text).
    if va >> 47 != 0x1_ffff {
        return Err(PadError::NonCanonical { va });
    }
    if va & 0xfff == 0xfff {
        return Err(PadError::Straddles { va });
    }
    let mut buf = [0u8; PAGE_SIZE];
    let mut mfn = cr3_mfn;
    for level in (1..=4u8).rev() {
        let lp = frames
            .loader_pfn(mfn)
            .ok_or(PadError::ForeignFrame { va, level, mfn })?;
        read(access, lp, &mut buf);
        let e = super::pagetable::entry(&buf, pte::index(va, level));
        if e & pte::PRESENT == 0 {
            return Err(PadError::NotMapped { va, level });
        }
        if e & pte::NX != 0 {
            return Err(PadError::NotExecutable { va, level });
        }
        if level > 1 && e & pte::PSE != 0 {
            return Err(PadError::Superpage { va, level });
        }
        mfn = (e & pte::FRAME) >> 12;
    }
    let lp = frames
        .loader_pfn(mfn)
        .ok_or(PadError::ForeignFrame { va, level: 0, mfn })?;
    read(access, lp, &mut buf);
    let o = (va & 0xfff) as usize;
    let found = [buf[o], buf[o + 1]];
    if found != SYSCALL {
        return Err(PadError::NotSyscall { va, found });
    }
    Ok(Pad { va, mfn })
}
