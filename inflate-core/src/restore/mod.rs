//! Restore in place: the pure logic by which the loader domain becomes the checkpointed guest
//! (docs/restore.md). The loader receives and verifies the stream (`receive`), then calls
//! [`prepare`], which does every step before the point of no return over the frames the guest
//! now occupies: validation (what Xen's own restore would refuse), translation of the source
//! machine frames to this domain's, localisation of every page table, the guest's p2m and
//! start_info rewrite, the decoded vCPU context and the walk to the transfer pad. What is left
//! for the loader are hypercalls fed from [`Prepared`]'s lists (M2P updates, pins) and its
//! fields (vCPU state), then the jump.
//!
//! Laid out like Xen's restore for x86 PV guests; the code is this project's own. Every Xen
//! layout constant is in [`xen`]. Pages are reached through the caller's [`FrameAccess`] and
//! machine frames through its [`MachineFrames`], so the loader runs this over its copy window
//! and the tests over memory.
pub mod p2m;
pub mod pad;
pub mod pagetable;
pub mod sizing;
pub mod startinfo;
pub mod vcpu;
pub mod xen;

use crate::frames::{FrameBook, Plan};
use crate::records::{is_ram, Records, Shortfall};
use checkpoint_stream::{page_type, PAGE_SIZE};
use pad::{Pad, PadError};
use pagetable::PteError;
pub use startinfo::OwnDomain;
use vcpu::VcpuContext;

/// This domain's machine frames (the loader: its p2m list and the M2P).
pub trait MachineFrames {
    /// The machine frame behind loader pfn `loader_pfn`.
    fn mfn(&self, loader_pfn: u64) -> u64;
    /// The loader pfn of machine frame `mfn` if this domain owns it.
    fn loader_pfn(&self, mfn: u64) -> Option<u64>;
}

/// Read and write access to the contents of this domain's frames.
pub trait FrameAccess {
    fn with_frame(&mut self, loader_pfn: u64, f: &mut dyn FnMut(&mut [u8; PAGE_SIZE]));
}

/// Why a verified capture cannot become a guest in this domain. Display gives the message
/// of the `unrestorable` result record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreError {
    /// The stream has no P2M_FRAMES: not a capture a restore can act on.
    NotACapture,
    /// The loader's tables are too small for this capture.
    Storage(Shortfall),
    /// Only single-vCPU captures can be restored.
    Vcpus(u32),
    /// No 5168-byte BASIC state for vCPU 0.
    NoVcpu,
    /// Not every pfn's type is known.
    TypesMissing,
    P2mFrameCount {
        have: u64,
        need: u64,
    },
    /// Two pfns map the same source machine frame.
    DuplicateMfn {
        mfn: u64,
        pfn: u64,
    },
    /// The p2m gives a machine frame to a pfn typed "not RAM".
    P2mNotRam {
        pfn: u64,
        mfn: u64,
    },
    /// RAM pfns without a machine frame at the source.
    RamWithoutMfn {
        ram: u64,
        mapped: u64,
    },
    /// A RAM pfn has no frame here (internal: the receiver fills them).
    RamNotPlaced {
        pfn: u64,
    },
    /// vCPU 0's rdx does not name the start_info page (the capture ABI says it must).
    StartInfoMfn {
        rdx: u64,
        pfn: u64,
    },
    /// The start_info page does not carry a 64-bit PV magic.
    StartInfoMagic {
        pfn: u64,
    },
    /// start_info, xenstore or console pfn out of range, not an ordinary RAM page, or shared.
    Ring {
        what: &'static str,
        pfn: u64,
        ty: u8,
    },
    VcpuFrame {
        what: &'static str,
        mfn: u64,
    },
    VcpuFrameType {
        what: &'static str,
        pfn: u64,
        ty: u8,
        need: &'static str,
    },
    GdtEnts(u64),
    P2mFrameType {
        index: usize,
        pfn: u64,
        ty: u8,
    },
    ForeignPte {
        pfn: u64,
        level: u8,
        index: usize,
        mfn: u64,
    },
    Superpage {
        pfn: u64,
        level: u8,
        index: usize,
    },
    Pad(PadError),
}

impl core::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use RestoreError::*;
        match *self {
            NotACapture => write!(f, "no P2M_FRAMES record: not a capture a restore can use"),
            Storage(s) => write!(f, "loader tables too small: {s}"),
            Vcpus(n) => write!(f, "capture has {n} vCPUs, only 1 is supported"),
            NoVcpu => write!(f, "no BASIC state for vCPU 0"),
            TypesMissing => write!(f, "page types missing"),
            P2mFrameCount { have, need } => write!(f, "{have} p2m frames, need {need}"),
            DuplicateMfn { mfn, pfn } => {
                write!(f, "p2m maps mfn {mfn:#x} twice (second at pfn {pfn:#x})")
            }
            P2mNotRam { pfn, mfn } => {
                write!(f, "p2m maps pfn {pfn:#x} (typed not RAM) to mfn {mfn:#x}")
            }
            RamWithoutMfn { ram, mapped } => {
                write!(
                    f,
                    "{ram} RAM pfns but {mapped} of them have a machine frame"
                )
            }
            RamNotPlaced { pfn } => write!(f, "RAM pfn {pfn:#x} has no frame"),
            StartInfoMfn { rdx, pfn } => {
                write!(
                    f,
                    "vCPU 0 rdx {rdx:#x} is not the start_info page (pfn {pfn:#x})"
                )
            }
            StartInfoMagic { pfn } => write!(f, "start_info pfn {pfn:#x} has no xen-3.0 magic"),
            Ring { what, pfn, ty } => write!(
                f,
                "{what} pfn {pfn:#x} (type {ty:#x}) is not a distinct ordinary RAM page"
            ),
            VcpuFrame { what, mfn } => {
                write!(
                    f,
                    "vCPU {what} refers to mfn {mfn:#x}, not in the guest's p2m"
                )
            }
            VcpuFrameType {
                what,
                pfn,
                ty,
                need,
            } => write!(
                f,
                "vCPU {what} is pfn {pfn:#x} of type {ty:#x}, need {need}"
            ),
            GdtEnts(n) => write!(f, "GDT entry count {n} out of range"),
            P2mFrameType { index, pfn, ty } => write!(
                f,
                "p2m frame {index} is pfn {pfn:#x} of type {ty:#x}, need an ordinary page"
            ),
            ForeignPte {
                pfn,
                level,
                index,
                mfn,
            } => write!(
                f,
                "page table pfn {pfn:#x} (L{level}) entry {index} maps mfn {mfn:#x}, not in the p2m"
            ),
            Superpage { pfn, level, index } => {
                write!(
                    f,
                    "page table pfn {pfn:#x} (L{level}) entry {index} is a superpage"
                )
            }
            Pad(e) => write!(f, "{e}"),
        }
    }
}

/// Source machine frame and pfn -> this domain's machine frame.
pub struct Xlate<'x, 'a, M: MachineFrames> {
    pub records: &'x Records<'a>,
    pub plan: &'x Plan<'a>,
    pub frames: &'x M,
    pub own: &'x OwnDomain,
    pub store_pfn: u64,
    pub console_pfn: u64,
}

impl<M: MachineFrames> Xlate<'_, '_, M> {
    /// The machine frame guest pfn `pfn` has in this domain: the domain's own rings for the
    /// xenstore and console pfns, the planned frame for other RAM, none for the rest.
    pub fn new_mfn(&self, pfn: u64) -> Option<u64> {
        if pfn == self.store_pfn {
            return Some(self.own.store_mfn);
        }
        if pfn == self.console_pfn {
            return Some(self.own.console_mfn);
        }
        if !is_ram(self.records.page_type(pfn)) {
            return None;
        }
        self.plan.lookup(pfn).map(|l| self.frames.mfn(l))
    }

    /// Source machine frame -> this domain's machine frame.
    pub fn localise(&self, src_mfn: u64) -> Option<u64> {
        self.new_mfn(self.records.pfn_of_source_mfn(src_mfn)?)
    }
}

/// What `prepare` established: everything the loader's hypercalls need.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub max_pfn: u64,
    pub ram_pages: u64,
    pub start_info_pfn: u64,
    /// The start_info page's machine frame here (vCPU rdx at resume, as Xen's restore sets it).
    pub start_info_mfn: u64,
    pub store_pfn: u64,
    pub console_pfn: u64,
    pub own: OwnDomain,
    /// vCPU 0, with gdt_frames, ctrlreg[3], ctrlreg[1] and rdx translated to this domain's
    /// machine frames, and VGCF_online set.
    pub vcpu: VcpuContext,
    pub pad: Pad,
    /// XCR0 from the capture's XSAVE record; None when the stream has none (the capture ABI
    /// gives only the FXSAVE image; see docs/restore.md).
    pub xcr0: Option<u64>,
    pub page_tables: u64,
    pub ptes: u64,
    pub pinned: u64,
    /// Frames given back to the book: the xenstore and console pfns' and pages sent for pfns
    /// that are not RAM.
    pub released: u64,
}

impl Prepared {
    pub fn xlate<'x, 'a, M: MachineFrames>(
        &'x self,
        records: &'x Records<'a>,
        plan: &'x Plan<'a>,
        frames: &'x M,
    ) -> Xlate<'x, 'a, M> {
        Xlate {
            records,
            plan,
            frames,
            own: &self.own,
            store_pfn: self.store_pfn,
            console_pfn: self.console_pfn,
        }
    }

    /// `(mfn, pfn)` for every RAM pfn: the M2P entries to set (`MMU_MACHPHYS_UPDATE`).
    pub fn m2p_updates<'x, 'a, M: MachineFrames>(
        &'x self,
        records: &'x Records<'a>,
        plan: &'x Plan<'a>,
        frames: &'x M,
    ) -> impl Iterator<Item = (u64, u64)> + 'x {
        let x = self.xlate(records, plan, frames);
        (0..=self.max_pfn).filter_map(move |pfn| x.new_mfn(pfn).map(|m| (m, pfn)))
    }

    /// `(level, mfn)` of every pinned page table, in pfn order.
    pub fn pins<'x, 'a, M: MachineFrames>(
        &'x self,
        records: &'x Records<'a>,
        plan: &'x Plan<'a>,
        frames: &'x M,
    ) -> impl Iterator<Item = (u8, u64)> + 'x {
        let x = self.xlate(records, plan, frames);
        (0..=self.max_pfn).filter_map(move |pfn| {
            let t = records.page_type(pfn);
            let level = table_level(t)?;
            (t & page_type::PINNED != 0).then(|| (level, x.new_mfn(pfn).unwrap_or(0)))
        })
    }
}

/// The level of a page-table type byte, None for other pages.
pub fn table_level(t: u8) -> Option<u8> {
    let l = t & !page_type::PINNED;
    (page_type::L1..=page_type::L4).contains(&l).then_some(l)
}

fn base_type(t: u8) -> u8 {
    t & !page_type::PINNED
}

fn read(access: &mut impl FrameAccess, loader_pfn: u64, buf: &mut [u8; PAGE_SIZE]) {
    access.with_frame(loader_pfn, &mut |p| buf.copy_from_slice(p));
}

fn write(access: &mut impl FrameAccess, loader_pfn: u64, buf: &[u8; PAGE_SIZE]) {
    access.with_frame(loader_pfn, &mut |p| p.copy_from_slice(buf));
}

fn pte_error(pfn: u64, level: u8, e: PteError) -> RestoreError {
    match e {
        PteError::Unmapped { index, frame } => RestoreError::ForeignPte {
            pfn,
            level,
            index,
            mfn: frame,
        },
        PteError::Superpage { index } => RestoreError::Superpage { pfn, level, index },
    }
}

/// Every restore step before the point of no return (see the module doc). On error nothing
/// outside the guest's frames has changed; the caller discards the guest (`Plan::abandon`).
pub fn prepare<M: MachineFrames, A: FrameAccess>(
    records: &Records<'_>,
    plan: &mut Plan<'_>,
    book: &mut FrameBook<'_>,
    frames: &M,
    access: &mut A,
    own: &OwnDomain,
) -> Result<Prepared, RestoreError> {
    use RestoreError as E;
    if !records.restorable() {
        return Err(E::NotACapture);
    }
    if let Some(s) = records.shortfall() {
        return Err(E::Storage(s));
    }
    let capture = *records.capture().ok_or(E::NotACapture)?;
    if capture.nr_vcpus != 1 {
        return Err(E::Vcpus(capture.nr_vcpus));
    }
    let raw = records.vcpu0_basic().ok_or(E::NoVcpu)?;
    if !records.has_types() {
        return Err(E::TypesMissing);
    }
    let max_pfn = records.max_pfn();
    let need = max_pfn / p2m::PER_PAGE + 1;
    let have = records.p2m_frames().len() as u64;
    if have != need {
        return Err(E::P2mFrameCount { have, need });
    }
    let ty = |pfn: u64| records.page_type(pfn);

    // The source p2m and the page types must agree: one machine frame per RAM pfn.
    let mut prev = None;
    for (mfn, pfn) in records.source_frames() {
        if prev == Some(mfn) {
            return Err(E::DuplicateMfn { mfn, pfn });
        }
        prev = Some(mfn);
        if !is_ram(ty(pfn)) {
            return Err(E::P2mNotRam { pfn, mfn });
        }
    }
    let ram_pages = records.ram_pages();
    if records.mapped_frames() != ram_pages {
        return Err(E::RamWithoutMfn {
            ram: ram_pages,
            mapped: records.mapped_frames(),
        });
    }
    for pfn in 0..=max_pfn {
        if is_ram(ty(pfn)) && !plan.is_placed(pfn) {
            return Err(E::RamNotPlaced { pfn });
        }
    }

    // start_info and the two rings it names (as pfns, at the capture point).
    let si_pfn = capture.start_info_pfn;
    let ordinary = |what, pfn: u64| {
        if pfn > max_pfn || ty(pfn) != page_type::NORMAL {
            Err(E::Ring {
                what,
                pfn,
                ty: ty(pfn),
            })
        } else {
            Ok(())
        }
    };
    ordinary("start_info", si_pfn)?;
    let ctx = VcpuContext::decode(raw);
    if records.pfn_of_source_mfn(ctx.user_regs.rdx) != Some(si_pfn) {
        return Err(E::StartInfoMfn {
            rdx: ctx.user_regs.rdx,
            pfn: si_pfn,
        });
    }
    let si_frame = plan.lookup(si_pfn).ok_or(E::RamNotPlaced { pfn: si_pfn })?;
    let mut buf = [0u8; PAGE_SIZE];
    read(access, si_frame, &mut buf);
    let (store_pfn, console_pfn) =
        startinfo::ring_pfns(&buf).ok_or(E::StartInfoMagic { pfn: si_pfn })?;
    ordinary("xenstore ring", store_pfn)?;
    ordinary("console ring", console_pfn)?;
    if store_pfn == si_pfn || store_pfn == console_pfn {
        return Err(E::Ring {
            what: "xenstore ring (shared)",
            pfn: store_pfn,
            ty: 0,
        });
    }
    if console_pfn == si_pfn {
        return Err(E::Ring {
            what: "console ring (shared)",
            pfn: console_pfn,
            ty: 0,
        });
    }

    // vCPU frames, as Xen's restore checks them.
    let src_pfn = |what, mfn| {
        records
            .pfn_of_source_mfn(mfn)
            .ok_or(E::VcpuFrame { what, mfn })
    };
    if ctx.gdt_ents > xen::vcpu::MAX_GDT_ENTS {
        return Err(E::GdtEnts(ctx.gdt_ents));
    }
    let mut gdt_pfns = [0u64; xen::vcpu::GDT_FRAME_SLOTS];
    for (i, slot) in gdt_pfns.iter_mut().enumerate().take(ctx.gdt_frame_count()) {
        let pfn = src_pfn("GDT frame", ctx.gdt_frames[i])?;
        if ty(pfn) != page_type::NORMAL {
            return Err(E::VcpuFrameType {
                what: "GDT frame",
                pfn,
                ty: ty(pfn),
                need: "an ordinary page",
            });
        }
        *slot = pfn;
    }
    let l4 = |what, mfn| {
        let pfn = src_pfn(what, mfn)?;
        if base_type(ty(pfn)) != page_type::L4 {
            return Err(E::VcpuFrameType {
                what,
                pfn,
                ty: ty(pfn),
                need: "an L4 table",
            });
        }
        Ok(pfn)
    };
    let cr3_pfn = l4("cr3", ctx.cr3_frame())?;
    let cr1_pfn = ctx.user_l4_frame().map(|m| l4("cr1", m)).transpose()?;

    for (index, &pfn) in records.p2m_frames().iter().enumerate() {
        if ty(pfn) != page_type::NORMAL || pfn == store_pfn || pfn == console_pfn {
            return Err(E::P2mFrameType {
                index,
                pfn,
                ty: ty(pfn),
            });
        }
    }

    let x = Xlate {
        records,
        plan,
        frames,
        own,
        store_pfn,
        console_pfn,
    };
    let map = |m| x.localise(m);
    // Check every page table on a copy first, so a refusal leaves the tables as received.
    let mut page_tables = 0;
    let mut pinned = 0;
    for pfn in 0..=max_pfn {
        let Some(level) = table_level(ty(pfn)) else {
            continue;
        };
        page_tables += 1;
        pinned += (ty(pfn) & page_type::PINNED != 0) as u64;
        let f = plan.lookup(pfn).ok_or(E::RamNotPlaced { pfn })?;
        read(access, f, &mut buf);
        pagetable::rewrite(&mut buf, level, map).map_err(|e| pte_error(pfn, level, e))?;
    }

    // From here on only the guest's frames change.
    let mut ptes = 0;
    for pfn in 0..=max_pfn {
        let Some(level) = table_level(ty(pfn)) else {
            continue;
        };
        let f = plan.lookup(pfn).ok_or(E::RamNotPlaced { pfn })?;
        read(access, f, &mut buf);
        ptes += pagetable::rewrite(&mut buf, level, map).map_err(|e| pte_error(pfn, level, e))?;
        write(access, f, &buf);
    }
    for (index, &pfn) in records.p2m_frames().iter().enumerate() {
        let f = plan.lookup(pfn).ok_or(E::RamNotPlaced { pfn })?;
        p2m::fill_page(&mut buf, index as u64, |p| x.new_mfn(p));
        write(access, f, &buf);
    }
    read(access, si_frame, &mut buf);
    startinfo::rewrite(&mut buf, max_pfn, own);
    write(access, si_frame, &buf);

    // vCPU 0 in this domain's frames.
    let n_gdt = ctx.gdt_frame_count();
    let mut vcpu = ctx;
    let new = |pfn| x.new_mfn(pfn).ok_or(E::RamNotPlaced { pfn });
    let start_info_mfn = new(si_pfn)?;
    vcpu.user_regs.rdx = start_info_mfn;
    for (i, &pfn) in gdt_pfns.iter().enumerate().take(n_gdt) {
        vcpu.gdt_frames[i] = new(pfn)?;
    }
    vcpu.ctrlreg[3] = new(cr3_pfn)? << xen::PAGE_SHIFT;
    if let Some(p) = cr1_pfn {
        vcpu.ctrlreg[1] = new(p)? << xen::PAGE_SHIFT;
    }
    vcpu.flags |= xen::vcpu::VGCF_ONLINE;
    let pad = pad::find(vcpu.cr3_frame(), vcpu.user_regs.rip, frames, access).map_err(E::Pad)?;

    let xcr0 = records
        .vcpu0_xsave()
        .filter(|x| x.len() >= 8)
        .map(|x| u64::from_le_bytes(x[..8].try_into().unwrap()));

    // Frames whose contents the guest does not keep go back to the book: the rings' (the
    // guest adopts this domain's) and any page sent for a pfn that is not RAM.
    let mut released = 0;
    for pfn in 0..=max_pfn {
        if (pfn == store_pfn || pfn == console_pfn || !is_ram(ty(pfn)))
            && plan.unplace(pfn, book).is_some()
        {
            released += 1;
        }
    }
    Ok(Prepared {
        max_pfn,
        ram_pages,
        start_info_pfn: si_pfn,
        start_info_mfn,
        store_pfn,
        console_pfn,
        own: *own,
        vcpu,
        pad,
        xcr0,
        page_tables,
        ptes,
        pinned,
        released,
    })
}

#[cfg(test)]
mod real_capture;
#[cfg(test)]
mod tests;
