//! inflate-stage2: the stage 2 of a boot (docs/bootstrap.md). inflate-loader (stage 1) checks
//! this flat binary's SHA-1 against the boot token, maps it at `loader_abi::layout::STAGE2_VA`
//! and calls [`stage2_entry`] with its services table. Stage 2 then owns the customer's TCP
//! connection: it receives a kernel, an initramfs and a command line (§2), each bounded and
//! acknowledged, into the arena of free frames (the kernel and the initramfs possibly
//! zlib-compressed, inflated as they arrive: §2.1), and hands them to the PV builder
//! (`boot::boot_kernel`). Any error: one `error ...` line to the client and on the console,
//! then the domain powers off, so nothing half-built is left running.
#![no_std]
#![no_main]
// Error lines are fixed 200-byte buffers: there is no heap to box them.
#![allow(clippy::result_large_err)]

mod boot;

use core::fmt::Write;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicPtr, Ordering};
use loader_abi::inflate::Inflater;
use loader_abi::upload::{self, Coding, Item, Line};
use loader_abi::Services;

/// The table, for the panic handler.
static SERVICES: AtomicPtr<Services> = AtomicPtr::new(core::ptr::null_mut());

/// An upload that stops for this long is refused.
const IDLE_TIMEOUT_NS: u64 = 30_000_000_000;
/// Reason codes of SCHEDOP_shutdown.
const POWEROFF: u32 = 0;
const CRASH: u32 = 3;

macro_rules! say {
    ($svc:expr, $($a:tt)*) => {{
        let _ = writeln!($svc.console_writer(), $($a)*);
    }};
}

/// Entry point: the first byte of the binary. Runs on stage 1's stack; never returns.
#[no_mangle]
#[link_section = ".text.entry"]
extern "C" fn stage2_entry(table: *const Services) -> ! {
    // SAFETY: stage 1 passes a pointer to its table, valid while we run (it never returns
    // to stage 1); from_raw checks magic, version and size before anything is used.
    let svc = match unsafe { Services::from_raw(table) } {
        Ok(s) => s,
        Err(_) => loop {
            // Nothing can be reported without a table; stage 1 would not have called us
            // with a foreign one.
            core::hint::spin_loop();
        },
    };
    SERVICES.store(table as *mut Services, Ordering::Relaxed);
    let f = svc.facts;
    say!(
        svc,
        "inflate-stage2: running at {:#x}; arena pfn {}..{} ({} KiB) at {:#x}",
        f.stage2_va,
        f.free_pfn_first,
        f.free_pfn_end,
        f.arena_bytes() / 1024,
        f.arena_va
    );
    match receive_and_boot(svc) {
        Ok(never) => match never {},
        Err(line) => {
            svc.console(b"inflate-stage2: ");
            svc.console(line.as_bytes());
            let _ = svc.send_all(line.as_bytes());
            let _ = svc.flush(2_000_000);
            // Close the connection (the client sees the end at once) and leave the vif's
            // backend clean before the domain goes.
            let _ = svc.release_devices();
            say!(svc, "inflate-stage2: powering off");
            svc.shutdown(POWEROFF)
        }
    }
}

/// The upload of §2, then the builder. Err = the line to send before powering off.
fn receive_and_boot(svc: &Services) -> Result<core::convert::Infallible, Line> {
    let f = svc.facts;
    let arena_len = f.arena_bytes() as usize;
    // SAFETY: stage 1 mapped the arena read/write for us alone (Facts docs); nothing else
    // refers to it.
    let arena = unsafe { core::slice::from_raw_parts_mut(f.arena_va as *mut u8, arena_len) };
    let greeting = Line::new(format_args!(
        "{}arena={arena_len} version={}",
        upload::STAGE2_READY,
        upload::STAGE2_VERSION
    ));
    send_line(svc, &greeting)?;

    let (kernel, rest) = receive_item(svc, Item::Kernel, arena)?;
    // The initramfs starts on the next page, so each item is a whole run of frames.
    let skip = rest.len() - rest.len() / 4096 * 4096;
    let (initrd, _) = receive_item(svc, Item::Initrd, &mut rest[skip..])?;
    let mut cmd = [0u8; upload::CMDLINE_MAX as usize];
    let (cmdline, _) = receive_item(svc, Item::Cmdline, &mut cmd)?;
    upload::check_cmdline(cmdline).map_err(|e| err(format_args!("CMDL: {e}")))?;
    let cmdline = core::str::from_utf8(cmdline)
        .map_err(|_| err(format_args!("CMDL: the command line is not UTF-8")))?;
    // Frames after the initramfs's last page are the builder's.
    let used = (initrd.as_ptr() as u64 + initrd.len() as u64 - f.arena_va).div_ceil(4096);
    let free = f.free_pfn_first + used..f.free_pfn_end;

    send_line(svc, &Line::new(format_args!("{}", upload::BOOTING)))?;
    say!(
        svc,
        "inflate-stage2: kernel {} bytes, initramfs {} bytes, cmdline {} bytes: starting the builder",
        kernel.len(),
        initrd.len(),
        cmdline.len()
    );
    match boot::boot_kernel(svc, kernel, initrd, cmdline, free) {
        Ok(never) => match never {},
        Err(e) => Err(err(format_args!("boot: {e}"))),
    }
}

fn err(args: core::fmt::Arguments<'_>) -> Line {
    Line::new(format_args!("{}{args}", upload::ERROR))
}

fn send_line(svc: &Services, l: &Line) -> Result<(), Line> {
    svc.send_all(l.as_bytes())
        .map_err(|e| err(format_args!("sending: {e}")))
}

/// Receive one item's header and bytes into the start of `space` (inflating a compressed
/// item there); acknowledge it. Returns the item and the space after it.
fn receive_item<'a>(
    svc: &Services,
    item: Item,
    space: &'a mut [u8],
) -> Result<(&'a mut [u8], &'a mut [u8]), Line> {
    let t0 = svc.now_ns();
    let mut hdr = [0u8; upload::ITEM_HEADER_LEN];
    svc.recv_exact(&mut hdr, IDLE_TIMEOUT_NS)
        .map_err(|e| err(format_args!("{} header: {e}", item.tag_str())))?;
    let (coding, len) =
        upload::parse_item_header_v2(&hdr, item).map_err(|e| err(format_args!("{e}")))?;
    let tag = item.tag_str_of(coding);
    let len = len as usize;
    let size = match coding {
        Coding::Plain => len,
        Coding::Zlib => {
            let mut p = [0u8; upload::ZLIB_PREFIX_LEN];
            svc.recv_exact(&mut p, IDLE_TIMEOUT_NS)
                .map_err(|e| err(format_args!("{tag} prefix: {e}")))?;
            upload::parse_zlib_prefix(&p, item).map_err(|e| err(format_args!("{e}")))? as usize
        }
    };
    if size > space.len() {
        return Err(err(format_args!(
            "{tag} of {size} bytes does not fit: {} bytes of this domain's memory are left",
            space.len()
        )));
    }
    let (this, rest) = space.split_at_mut(size);
    match coding {
        Coding::Plain => svc
            .recv_exact(this, IDLE_TIMEOUT_NS)
            .map_err(|e| err(format_args!("{tag}: {e} ({len} bytes announced)")))?,
        Coding::Zlib => receive_zlib(svc, tag, this, len - upload::ZLIB_PREFIX_LEN)?,
    }
    let ms = (svc.now_ns() - t0) / 1_000_000;
    let ack = match coding {
        Coding::Plain => Line::new(format_args!("{}{tag} {len}", upload::ITEM_OK)),
        Coding::Zlib => Line::new(format_args!("{}{tag} {len} {size}", upload::ITEM_OK)),
    };
    // The client waits for the acknowledgement: on its way first (poll sends it), then the
    // console, which may have to wait for dom0 to drain its ring.
    send_line(svc, &ack)?;
    svc.poll(0);
    say!(
        svc,
        "inflate-stage2: {tag} {len} bytes ({size} inflated) in {ms} ms"
    );
    Ok((this, rest))
}

/// The zlib stream of a compressed item, `zlen` bytes, inflated into all of `out` as it
/// arrives (`loader_abi::inflate`: bounded by `out`, checked to its Adler-32).
fn receive_zlib(svc: &Services, tag: &str, out: &mut [u8], zlen: usize) -> Result<(), Line> {
    let mut buf = [0u8; 32 * 1024];
    let mut inf = Inflater::new(out, zlen);
    while inf.remaining() > 0 {
        let want = inf.remaining().min(buf.len());
        let n = svc
            .recv_some(&mut buf[..want], IDLE_TIMEOUT_NS)
            .map_err(|e| {
                err(format_args!(
                    "{tag}: {e} ({} of {zlen} compressed bytes received)",
                    zlen - inf.remaining()
                ))
            })?;
        // Tell the sender about the room just made before spending the CPU on inflating,
        // so the next bytes travel meanwhile.
        svc.poll(0);
        inf.feed(&buf[..n])
            .map_err(|e| err(format_args!("{tag}: {e}")))?;
    }
    inf.finish()
        .map(|_| ())
        .map_err(|e| err(format_args!("{tag}: {e}")))
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    let p = SERVICES.load(Ordering::Relaxed);
    if !p.is_null() {
        // SAFETY: set from the checked table on entry; it stays valid while we run.
        let svc = unsafe { &*p };
        say!(svc, "inflate-stage2: PANIC: {info}");
        svc.shutdown(CRASH)
    }
    loop {
        core::hint::spin_loop();
    }
}

/// The prebuilt core of the host target references the unwinding personality even with
/// panic=abort; nothing ever unwinds here.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
