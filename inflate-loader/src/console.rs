//! Output through the PV console ring (xencons_interface), which xenconsoled reads in dom0.
//! Polled: after each write we notify the backend's event channel.
use crate::startinfo::StartInfo;
use core::fmt::{self, Write};
use core::sync::atomic::{fence, Ordering};

const OUT_SIZE: u32 = 2048;

#[repr(C)]
struct Ring {
    input: [u8; 1024],
    out: [u8; 2048],
    in_cons: u32,
    in_prod: u32,
    out_cons: u32,
    out_prod: u32,
}

static mut RING: *mut Ring = core::ptr::null_mut();
static mut EVTCHN: u32 = 0;

pub fn init(si: &StartInfo) {
    let pfn = crate::mm::mfn_to_pfn(si.console_mfn);
    // SAFETY: single vCPU, no upcalls: nothing else touches these statics concurrently. The
    // console page lies in the region Xen mapped for us at pfn << 12.
    unsafe {
        RING = (pfn << 12) as *mut Ring;
        EVTCHN = si.console_evtchn;
    }
}

fn ring() -> Option<*mut Ring> {
    // SAFETY: read of a pointer-sized static on the only vCPU.
    let r = unsafe { RING };
    if r.is_null() {
        None
    } else {
        Some(r)
    }
}

pub fn write_bytes(s: &[u8]) {
    let Some(r) = ring() else {
        xen_pv::hypercall::debug_write(s);
        return;
    };
    for &b in s {
        if b == b'\n' {
            put(r, b'\r');
        }
        put(r, b);
    }
    notify();
}

fn put(r: *mut Ring, b: u8) {
    // SAFETY: r points at the mapped console page; the indices are shared with the backend,
    // hence volatile accesses and a fence before publishing.
    unsafe {
        loop {
            let cons = core::ptr::read_volatile(&raw const (*r).out_cons);
            let prod = core::ptr::read_volatile(&raw const (*r).out_prod);
            if prod.wrapping_sub(cons) < OUT_SIZE {
                core::ptr::write_volatile(&raw mut (*r).out[(prod % OUT_SIZE) as usize], b);
                fence(Ordering::SeqCst);
                core::ptr::write_volatile(&raw mut (*r).out_prod, prod.wrapping_add(1));
                return;
            }
            notify();
            xen_pv::hypercall::yield_cpu();
        }
    }
}

fn notify() {
    // SAFETY: plain read of a u32 static.
    let port = unsafe { EVTCHN };
    crate::events::send(port);
}

/// Wait until xenconsoled consumed everything (out_cons == out_prod), so nothing is lost when
/// we power off; give up after a few seconds.
pub fn flush() {
    let Some(r) = ring() else { return };
    for _ in 0..20000 {
        // SAFETY: as in put().
        let (c, p) = unsafe {
            (
                core::ptr::read_volatile(&raw const (*r).out_cons),
                core::ptr::read_volatile(&raw const (*r).out_prod),
            )
        };
        if c == p {
            return;
        }
        notify();
        xen_pv::hypercall::yield_cpu();
    }
}

/// True when the console ring is idle (hand-over check).
pub fn idle() -> bool {
    let Some(r) = ring() else { return true };
    // SAFETY: as in put().
    unsafe {
        core::ptr::read_volatile(&raw const (*r).out_cons)
            == core::ptr::read_volatile(&raw const (*r).out_prod)
    }
}

pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

#[macro_export]
macro_rules! kprintln {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::console::Console, $($arg)*);
    }};
}
