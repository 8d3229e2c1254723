//! Event channels, polled: the vCPU keeps events masked (evtchn_upcall_mask stays 1 and no
//! callback is registered), and waits with SCHEDOP_poll, which wakes on a pending port
//! regardless of the mask. See docs/inflate-loader.md for why.
use xen_pv::hypercall::{event_channel_op, poll};

const EVTCHNOP_CLOSE: u64 = 3;
const EVTCHNOP_SEND: u64 = 4;
const EVTCHNOP_ALLOC_UNBOUND: u64 = 6;
const EVTCHNOP_UNMASK: u64 = 9;
pub const DOMID_SELF: u16 = 0x7ff0;

#[repr(C)]
struct Port {
    port: u32,
}

#[repr(C)]
struct AllocUnbound {
    dom: u16,
    remote_dom: u16,
    port: u32,
}

pub fn send(port: u32) {
    let mut a = Port { port };
    event_channel_op(EVTCHNOP_SEND, &mut a);
}

pub fn unmask(port: u32) {
    let mut a = Port { port };
    event_channel_op(EVTCHNOP_UNMASK, &mut a);
}

pub fn close(port: u32) -> i64 {
    let mut a = Port { port };
    event_channel_op(EVTCHNOP_CLOSE, &mut a)
}

/// A fresh port that `remote` can bind to.
pub fn alloc_unbound(remote: u16) -> Result<u32, i64> {
    let mut a = AllocUnbound {
        dom: DOMID_SELF,
        remote_dom: remote,
        port: 0,
    };
    let rc = event_channel_op(EVTCHNOP_ALLOC_UNBOUND, &mut a);
    if rc < 0 {
        Err(rc)
    } else {
        Ok(a.port)
    }
}

/// Clear the pending bit of `port` in shared_info (we consume events by polling rings).
pub fn clear_pending(port: u32) {
    crate::mm::shared_info_clear_pending(port);
}

/// Sleep until one of `ports` is signalled or Xen time reaches `deadline_ns`.
pub fn wait(ports: &[u32], deadline_ns: u64) {
    poll(ports, deadline_ns);
    for &p in ports {
        clear_pending(p);
    }
}
