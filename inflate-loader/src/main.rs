//! inflate-loader: a no_std kernel for 64-bit Xen PV. It boots as an unprivileged domU, brings
//! up netfront and a smoltcp TCP server, receives one checkpoint stream, places its pages into
//! frames the domain owns, verifies the digest and answers with a result record.
//! Layout and build: docs/inflate-loader.md.
#![no_std]
#![no_main]

mod console;
mod entry;
mod events;
mod hypercall;
mod memfuncs;
mod mm;
mod startinfo;

use core::panic::PanicInfo;

/// Rust entry, called by the assembly stub in `entry.rs` on our own stack with the start_info
/// pointer Xen passed in %rsi.
#[no_mangle]
extern "C" fn kmain(si: *const startinfo::StartInfo) -> ! {
    // SAFETY: Xen guarantees %rsi points at the mapped start_info page at entry.
    let si = unsafe { &*si };
    mm::init_p2m(si);
    console::init(si);
    mm::map_shared_info(si);
    kprintln!("inflate-loader: booting on {}, {} pages, cmdline '{}'", si.magic(), si.nr_pages, si.cmdline());
    kprintln!("inflate-loader: image ends at pfn {}, boot mapping covers {} pages, pt_base {:#x} (+{} frames), upcall mask {}",
        mm::image_end_pfn(), mm::mapped_pages(si), si.pt_base, si.nr_pt_frames, mm::upcall_mask());
    kprintln!("inflate-loader: xen time {} ns", mm::system_time_ns());
    console::flush();
    hypercall::shutdown(hypercall::SHUTDOWN_POWEROFF);
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
