//! inflate-loader: a no_std kernel for 64-bit Xen PV. It boots as an unprivileged domU, brings
//! up netfront and a smoltcp TCP server, receives one checkpoint stream, places its pages into
//! frames the domain owns, verifies the digest and answers with a result record, then leaves
//! its devices in the state a resuming guest needs. Layout and build: docs/inflate-loader.md.
#![no_std]
#![no_main]
// `&mut *(&raw mut STATIC)` is the way to borrow a `static mut` without the static_mut_refs
// lint; clippy's deref_addrof does not know that.
#![allow(clippy::deref_addrof)]
// Result messages are fixed 224-byte buffers: there is no heap to box them.
#![allow(clippy::result_large_err)]

mod console;
mod entry;
mod events;
mod gnttab;
mod mm;
mod net;
mod netfront;
mod restore;
mod stage1;
mod startinfo;
mod xenstore;

use core::cell::RefCell;
use core::panic::PanicInfo;
use inflate_core::frames::{FrameBook, Plan};
use inflate_core::receive::Receiver;
use inflate_core::records::Records;
use inflate_core::restore::sizing;
use xen_pv::hypercall;

/// Frame book: one bit per pfn, up to 1 GiB of loader memory.
static mut FRAME_BITS: [u64; 4096] = [0; 4096];
/// Placement plan: one loader pfn per guest pfn. Indexed up to the guest's max_pfn, which is
/// Linux's p2m size (262143 for guests up to 1 GiB of pfn space), not its RAM. The capacities
/// are inflate-core's sizing constants, so the loader-config formula cannot drift from them.
static mut PLAN_SLOTS: [u32; sizing::PLAN_SLOTS] = [0; sizing::PLAN_SLOTS];
/// Kept capture records: the page type of every guest pfn, the source p2m of every RAM pfn
/// (packed, guests up to 512 MiB of RAM) and the pfns of the guest's p2m pages.
static mut TYPES: [u8; sizing::PLAN_SLOTS] = [0; sizing::PLAN_SLOTS];
static mut INV: [u64; sizing::INDEX_SLOTS] = [0; sizing::INDEX_SLOTS];
static mut P2M_FRAMES: [u64; sizing::P2M_FRAME_SLOTS] = [0; sizing::P2M_FRAME_SLOTS];
/// The digest leaf of each loader frame, computed when the frame is written: the verification
/// at END then hashes the leaves instead of re-reading and hashing every frame, which after a
/// migration's drain would sit inside the guest's blackout. Loaders up to 512 MiB (frames
/// beyond are re-read at END).
static mut LEAVES: [[u8; 32]; sizing::INDEX_SLOTS] = [[0; 32]; sizing::INDEX_SLOTS];

/// Restore in place as the server sees it: phase A and its undo.
struct InPlace<'s> {
    si: &'s startinfo::StartInfo,
    dry_run: bool,
    armed: Option<restore::Armed>,
}

impl net::Restorer for InPlace<'_> {
    fn prepare(&mut self, rx: &mut Receiver<'_>) -> Result<(), restore::Msg> {
        let armed = restore::phase_a(rx, self.si)?;
        if self.dry_run && !restore::dry_run(&armed, rx, self.si) {
            restore::undo(armed, &mut rx.book, self.si);
            return Err(restore::Msg::new(format_args!(
                "dry run: Xen refused the guest's tables, GDT or user L4 (console has the return codes)"
            )));
        }
        self.armed = Some(armed);
        Ok(())
    }
    fn undo(&mut self, rx: &mut Receiver<'_>) {
        if let Some(a) = self.armed.take() {
            restore::undo(a, &mut rx.book, self.si);
        }
    }
}

fn status(xs: &mut xenstore::Xenstore, s: &str) {
    // Progress for the lab, readable from dom0 at /local/domain/<id>/data/inflate-loader.
    if let Err(e) = xs.write("data/inflate-loader", s) {
        kprintln!("inflate-loader: cannot write data/inflate-loader: {e}");
    }
}

/// Rust entry, called by the assembly stub in `entry.rs` on our own stack with the start_info
/// pointer Xen passed in %rsi.
#[no_mangle]
extern "C" fn kmain(si: *const startinfo::StartInfo) -> ! {
    extern "C" {
        static hypercall_page: [u8; 4096];
    }
    // SAFETY: the linker script reserves `hypercall_page` in our text and the HYPERCALL_PAGE
    // note tells Xen to fill it before entry.
    unsafe { hypercall::init(&raw const hypercall_page as *const u8) };
    // SAFETY: Xen guarantees %rsi points at the mapped start_info page at entry.
    let si = unsafe { &*si };
    mm::init_p2m(si);
    console::init(si);
    mm::map_shared_info(si);
    let boot_ns = mm::system_time_ns();
    kprintln!(
        "inflate-loader: booting on {}, {} pages, cmdline '{}'",
        si.magic(),
        si.nr_pages,
        si.cmdline()
    );
    let mapped = mm::mapped_pages(si);
    let first_free = mapped.max(mm::image_end_pfn());
    kprintln!("inflate-loader: image ends at pfn {}, boot mapping covers {} pages, pt_base {:#x} (+{} frames), upcall mask {}",
        mm::image_end_pfn(), mapped, si.pt_base, si.nr_pt_frames, mm::upcall_mask());

    let cfg = match inflate_core::cmdline::parse(si.cmdline()) {
        Ok(c) => c,
        Err(e) => {
            kprintln!("inflate-loader: bad command line: {e}");
            console::flush();
            hypercall::shutdown(hypercall::SHUTDOWN_POWEROFF);
        }
    };

    let mut xs = xenstore::Xenstore::new(si);
    status(&mut xs, "starting");
    let mut gt = match gnttab::GrantTable::init() {
        Ok(g) => g,
        Err(e) => fatal(format_args!("grant table: {e}")),
    };
    let nf = match netfront::Netfront::connect(&mut xs, &mut gt) {
        Ok(n) => n,
        Err(e) => fatal(format_args!("netfront: {e}")),
    };

    // SAFETY: kmain runs once; these are the only references ever made to these statics.
    let (bits, slots) = unsafe { (&mut *(&raw mut FRAME_BITS), &mut *(&raw mut PLAN_SLOTS)) };
    // SAFETY: as above.
    let records = unsafe {
        Records::new(
            &mut *(&raw mut TYPES),
            &mut *(&raw mut INV),
            &mut *(&raw mut P2M_FRAMES),
        )
    };
    let book = FrameBook::new(bits, si.nr_pages, first_free);
    kprintln!(
        "inflate-loader: {} frames free for guest pages (pfn {}..{})",
        book.free_count(),
        first_free,
        si.nr_pages
    );
    let mut rx = Receiver::with_records(book, Plan::new(slots), records);
    // SAFETY: as above.
    rx.cache_leaves(unsafe { &mut *(&raw mut LEAVES) });
    status(&mut xs, "listening");
    let nf = RefCell::new(nf);
    let mut inplace = InPlace {
        si,
        dry_run: cfg.restore_dry_run,
        armed: None,
    };
    let devices = stage1::Devices {
        si,
        xs: &mut xs,
        gt: &mut gt,
        first_free,
        ip: cfg.ip,
    };
    let rec = match net::serve(&nf, &cfg, &mut rx, boot_ns, &mut inplace, devices) {
        net::Outcome::Verified(rec) => rec,
        net::Outcome::Commit(rec) => {
            let armed = inplace.armed.take().expect("commit without phase A");
            kprintln!(
                "inflate-loader: committed: {} guest pages, {} stream bytes; handing over",
                rec.pages,
                rec.bytes
            );
            status(&mut xs, "committed");
            let mut nf = nf.into_inner();
            // Devices first: the resuming guest's netfront connects to a backend in InitWait.
            if let Err(e) = nf.disconnect(&mut xs, &mut gt) {
                // Still before the point of no return: the source gets no arrival and
                // resumes; we cannot serve without a network, so we power off.
                kprintln!(
                    "inflate-loader: netfront hand-over failed after COMMIT: {e}; powering off"
                );
                console::flush();
                hypercall::shutdown(hypercall::SHUTDOWN_POWEROFF);
            }
            kprintln!(
                "inflate-loader: handed over (grants still active {}, xenstore ring idle {}); phase B",
                gt.active,
                xs.idle()
            );
            status(&mut xs, "restoring");
            restore::commit(armed, &rx, si)
        }
    };
    status(&mut xs, "verified");

    // Hand-over: what a guest resuming in this domain needs (docs/inflate-loader.md).
    let mut nf = nf.into_inner();
    let (rxp, txp, rxe) = (nf.rx_packets, nf.tx_packets, nf.rx_errors);
    match nf.disconnect(&mut xs, &mut gt) {
        Ok(st) => kprintln!("inflate-loader: netfront disconnected, backend state {st}"),
        Err(e) => kprintln!("inflate-loader: netfront disconnect failed: {e}"),
    }
    kprintln!("inflate-loader: packets rx {rxp} tx {txp} rx-errors {rxe}; grants still active {}; {} guest pages held",
        gt.active, rec.pages);
    if cfg.handover_check {
        // A fresh frontend against the backend we left: it must connect, then we leave it
        // handed-over again.
        match netfront::Netfront::connect(&mut xs, &mut gt) {
            Ok(mut nf) => match nf.disconnect(&mut xs, &mut gt) {
                Ok(st) => kprintln!("inflate-loader: handover-check ok: a fresh netfront connected and disconnected, backend state {st}, grants active {}", gt.active),
                Err(e) => kprintln!("inflate-loader: handover-check FAILED at disconnect: {e}"),
            },
            Err(e) => kprintln!("inflate-loader: handover-check FAILED: fresh netfront could not connect: {e}"),
        }
    }
    status(&mut xs, "handed-over");
    console::flush();
    kprintln!("inflate-loader: hand-over done: xenstore ring idle {}, console ring drained {}, vif event channel closed; idling",
        xs.idle(), console::idle());
    console::flush();
    let port = xs.port();
    loop {
        // Nothing more to do until the guest is resumed here (next stage); sleep on the store
        // channel so the domain costs nothing.
        events::wait(&[port], mm::system_time_ns() + 10_000_000_000);
    }
}

fn fatal(args: core::fmt::Arguments<'_>) -> ! {
    kprintln!("inflate-loader: FATAL: {args}");
    console::flush();
    hypercall::shutdown(hypercall::SHUTDOWN_CRASH);
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    kprintln!("inflate-loader: PANIC: {}", info);
    console::flush();
    hypercall::shutdown(hypercall::SHUTDOWN_CRASH);
}

/// The prebuilt core of the host target references the unwinding personality even with
/// panic=abort; nothing ever unwinds here.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
