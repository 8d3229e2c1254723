//! netfront: one vif, one queue, rx-copy mode. Shared tx/rx rings in granted pages, persistent
//! grants for our packet buffers, an unbound event channel for the backend, the xenstore
//! handshake (docs/inflate-loader.md "netfront"), and a clean disconnect for hand-over.
use crate::gnttab::GrantTable;
use crate::mm::{self, Page, PAGE_SIZE};
use crate::xenstore::{Buf, Xenstore, XsError};
use crate::{events, kprintln, path};
use core::sync::atomic::{fence, Ordering};

const RING_SIZE: u32 = 256;
pub const RX_BUFS: usize = 128;
pub const TX_BUFS: usize = 64;
const STATE_INITIALISING: u64 = 1;
const STATE_INITWAIT: u64 = 2;
const STATE_CONNECTED: u64 = 4;
const STATE_CLOSING: u64 = 5;
const STATE_CLOSED: u64 = 6;
const NETRXF_EXTRA_INFO: u16 = 8;
const NETRXF_MORE_DATA: u16 = 4;

#[repr(C)]
struct SringHdr {
    req_prod: u32,
    req_event: u32,
    rsp_prod: u32,
    rsp_event: u32,
    pad: [u8; 48],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct TxReq {
    gref: u32,
    offset: u16,
    flags: u16,
    id: u16,
    size: u16,
}
#[repr(C)]
#[derive(Clone, Copy)]
struct TxRsp {
    id: u16,
    status: i16,
}
#[repr(C)]
#[derive(Clone, Copy)]
struct RxReq {
    id: u16,
    pad: u16,
    gref: u32,
}
#[repr(C)]
#[derive(Clone, Copy)]
struct RxRsp {
    id: u16,
    offset: u16,
    flags: u16,
    status: i16,
}

static mut TX_RING: Page = Page([0; PAGE_SIZE]);
static mut RX_RING: Page = Page([0; PAGE_SIZE]);
static mut TX_PAGES: [Page; TX_BUFS] = [const { Page([0; PAGE_SIZE]) }; TX_BUFS];
static mut RX_PAGES: [Page; RX_BUFS] = [const { Page([0; PAGE_SIZE]) }; RX_BUFS];

#[derive(Debug)]
pub enum NetError {
    Xs(&'static str, XsError),
    Backend(&'static str),
    Grant,
    Evtchn(i64),
    BadMac,
}

impl core::fmt::Display for NetError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NetError::Xs(what, e) => write!(f, "{what}: {e}"),
            NetError::Backend(s) => write!(f, "backend: {s}"),
            NetError::Grant => write!(f, "grant table full"),
            NetError::Evtchn(rc) => write!(f, "event channel alloc failed ({rc})"),
            NetError::BadMac => write!(f, "bad mac in xenstore"),
        }
    }
}

pub struct Netfront {
    pub mac: [u8; 6],
    pub port: u32,
    backend: Buf<128>,
    backend_id: u16,
    tx_ring_ref: u32,
    rx_ring_ref: u32,
    tx_grefs: [u32; TX_BUFS],
    rx_grefs: [u32; RX_BUFS],
    tx_free: [u16; TX_BUFS],
    tx_nfree: usize,
    tx_req_prod: u32,
    tx_rsp_cons: u32,
    rx_req_prod: u32,
    rx_rsp_cons: u32,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_errors: u64,
}

fn tx_sring() -> *mut SringHdr {
    &raw mut TX_RING as *mut SringHdr
}
fn rx_sring() -> *mut SringHdr {
    &raw mut RX_RING as *mut SringHdr
}
fn tx_slot(i: u32) -> *mut TxReq {
    // SAFETY: slots start after the 64-byte header; 256 slots of 12 bytes fit in the page.
    unsafe { (tx_sring() as *mut u8).add(64 + 12 * (i % RING_SIZE) as usize) as *mut TxReq }
}
fn rx_slot(i: u32) -> *mut RxReq {
    // SAFETY: as above with 8-byte slots.
    unsafe { (rx_sring() as *mut u8).add(64 + 8 * (i % RING_SIZE) as usize) as *mut RxReq }
}
fn vread(p: *const u32) -> u32 {
    // SAFETY: p points into one of our ring pages.
    unsafe { core::ptr::read_volatile(p) }
}
fn vwrite(p: *mut u32, v: u32) {
    // SAFETY: p points into one of our ring pages.
    unsafe { core::ptr::write_volatile(p, v) }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut m = [0u8; 6];
    let mut it = s.split(':');
    for b in m.iter_mut() {
        *b = u8::from_str_radix(it.next()?, 16).ok()?;
    }
    if it.next().is_some() {
        None
    } else {
        Some(m)
    }
}

impl Netfront {
    pub fn connect(xs: &mut Xenstore, gt: &mut GrantTable) -> Result<Self, NetError> {
        let mut b = [0u8; 128];
        let backend = {
            let s = xs
                .read("device/vif/0/backend", &mut b)
                .map_err(|e| NetError::Xs("device/vif/0/backend", e))?;
            let mut p = Buf::<128>::new();
            let _ = core::fmt::Write::write_str(&mut p, s);
            p
        };
        let backend_id = xs
            .read_u64("device/vif/0/backend-id")
            .map_err(|e| NetError::Xs("backend-id", e))? as u16;
        let mac = {
            let s = xs
                .read("device/vif/0/mac", &mut b)
                .map_err(|e| NetError::Xs("mac", e))?;
            parse_mac(s).ok_or(NetError::BadMac)?
        };
        kprintln!(
            "netfront: backend {} (dom{}), mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            backend.as_str(),
            backend_id,
            mac[0],
            mac[1],
            mac[2],
            mac[3],
            mac[4],
            mac[5]
        );

        let bstate = path!("{}/state", backend.as_str());
        let st = xs
            .wait_u64(bstate.as_str(), 30_000_000_000, |s| {
                s == STATE_INITWAIT || s == STATE_CONNECTED
            })
            .map_err(|e| NetError::Xs("waiting for backend InitWait", e))?;
        kprintln!("netfront: backend state {st}");

        // Fresh rings (a previous connection may have left indices behind).
        // SAFETY: the ring pages are ours and not granted yet.
        unsafe {
            core::ptr::write_bytes(&raw mut TX_RING as *mut u8, 0, PAGE_SIZE);
            core::ptr::write_bytes(&raw mut RX_RING as *mut u8, 0, PAGE_SIZE);
            (*tx_sring()).req_event = 1;
            (*tx_sring()).rsp_event = 1;
            (*rx_sring()).req_event = 1;
            (*rx_sring()).rsp_event = 1;
        }
        let tx_ring_ref = gt
            .grant(
                backend_id,
                mm::virt_to_mfn(&raw const TX_RING as u64),
                false,
            )
            .map_err(|_| NetError::Grant)?;
        let rx_ring_ref = gt
            .grant(
                backend_id,
                mm::virt_to_mfn(&raw const RX_RING as u64),
                false,
            )
            .map_err(|_| NetError::Grant)?;
        let mut tx_grefs = [0u32; TX_BUFS];
        for (i, g) in tx_grefs.iter_mut().enumerate() {
            // SAFETY: only the address is taken.
            let va = unsafe { &raw const TX_PAGES[i] } as u64;
            *g = gt
                .grant(backend_id, mm::virt_to_mfn(va), true)
                .map_err(|_| NetError::Grant)?;
        }
        let mut rx_grefs = [0u32; RX_BUFS];
        for (i, g) in rx_grefs.iter_mut().enumerate() {
            // SAFETY: only the address is taken.
            let va = unsafe { &raw const RX_PAGES[i] } as u64;
            *g = gt
                .grant(backend_id, mm::virt_to_mfn(va), false)
                .map_err(|_| NetError::Grant)?;
        }
        let port = events::alloc_unbound(backend_id).map_err(NetError::Evtchn)?;
        events::unmask(port);

        let mut nf = Netfront {
            mac,
            port,
            backend,
            backend_id,
            tx_ring_ref,
            rx_ring_ref,
            tx_grefs,
            rx_grefs,
            tx_free: core::array::from_fn(|i| i as u16),
            tx_nfree: TX_BUFS,
            tx_req_prod: 0,
            tx_rsp_cons: 0,
            rx_req_prod: 0,
            rx_rsp_cons: 0,
            rx_packets: 0,
            tx_packets: 0,
            rx_errors: 0,
        };
        for id in 0..RX_BUFS as u16 {
            nf.post_rx(id);
        }
        nf.push_rx();

        let w = |xs: &mut Xenstore, k: &str, v: u64| {
            let p = path!("device/vif/0/{k}");
            xs.write_u64(p.as_str(), v)
                .map_err(|e| NetError::Xs("writing frontend keys", e))
        };
        w(xs, "tx-ring-ref", tx_ring_ref as u64)?;
        w(xs, "rx-ring-ref", rx_ring_ref as u64)?;
        w(xs, "event-channel", port as u64)?;
        w(xs, "request-rx-copy", 1)?;
        w(xs, "feature-rx-notify", 1)?;
        w(xs, "feature-no-csum-offload", 1)?;
        w(xs, "feature-sg", 0)?;
        w(xs, "feature-gso-tcpv4", 0)?;
        w(xs, "state", STATE_CONNECTED)?;
        xs.wait_u64(bstate.as_str(), 30_000_000_000, |s| {
            s == STATE_CONNECTED || s >= STATE_CLOSING
        })
        .map_err(|e| NetError::Xs("waiting for backend Connected", e))
        .and_then(|s| {
            if s == STATE_CONNECTED {
                Ok(())
            } else {
                Err(NetError::Backend("closed instead of connecting"))
            }
        })?;
        kprintln!("netfront: connected to dom{}, evtchn {port}, tx-ring-ref {tx_ring_ref}, rx-ring-ref {rx_ring_ref}", nf.backend_id);
        Ok(nf)
    }

    fn post_rx(&mut self, id: u16) {
        let s = rx_slot(self.rx_req_prod);
        // SAFETY: the slot is ours until we publish req_prod past it.
        unsafe {
            core::ptr::write_volatile(
                s,
                RxReq {
                    id,
                    pad: 0,
                    gref: self.rx_grefs[id as usize],
                },
            )
        };
        self.rx_req_prod = self.rx_req_prod.wrapping_add(1);
    }

    fn push_rx(&mut self) {
        self.push(rx_sring(), self.rx_req_prod);
    }

    /// Publish requests up to `prod` and notify if the backend asked (req_event).
    fn push(&self, sring: *mut SringHdr, prod: u32) {
        // SAFETY: sring is one of our ring pages.
        let (old, ev) = unsafe {
            let old = vread(&raw const (*sring).req_prod);
            fence(Ordering::SeqCst);
            vwrite(&raw mut (*sring).req_prod, prod);
            fence(Ordering::SeqCst);
            (old, vread(&raw const (*sring).req_event))
        };
        if prod.wrapping_sub(ev) < prod.wrapping_sub(old) {
            events::send(self.port);
        }
    }

    /// The next received frame, if any: calls `f` with its bytes and re-posts the buffer.
    pub fn recv<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let mut f = Some(f);
        loop {
            // SAFETY: rx_sring is our ring page.
            let prod = unsafe { vread(&raw const (*rx_sring()).rsp_prod) };
            if self.rx_rsp_cons == prod {
                // Nothing (left) to consume; the sleep path re-arms rsp_event (idle_armed).
                return None;
            }
            fence(Ordering::SeqCst);
            // SAFETY: responses up to rsp_prod are written by the backend; a response overlays
            // the request slot of the same index.
            let rsp =
                unsafe { core::ptr::read_volatile(rx_slot(self.rx_rsp_cons) as *const RxRsp) };
            self.rx_rsp_cons = self.rx_rsp_cons.wrapping_add(1);
            let id = rsp.id as usize;
            if id >= RX_BUFS {
                self.rx_errors += 1;
                continue;
            }
            let out = if rsp.status > 0
                && rsp.flags & (NETRXF_EXTRA_INFO | NETRXF_MORE_DATA) == 0
                && rsp.offset as usize + rsp.status as usize <= PAGE_SIZE
            {
                // SAFETY: the backend finished copying into buffer `id` before posting the
                // response; the buffer is ours until re-posted below.
                let data = unsafe {
                    &(&(*(&raw const RX_PAGES[id])).0)
                        [rsp.offset as usize..rsp.offset as usize + rsp.status as usize]
                };
                self.rx_packets += 1;
                f.take().map(|f| f(data))
            } else {
                self.rx_errors += 1;
                None
            };
            self.post_rx(id as u16);
            self.push_rx();
            if out.is_some() {
                return out;
            }
        }
    }

    /// Before sleeping on the vif's event channel: ask the backend for an event on the next rx
    /// response and the next tx completion (`rsp_event = cons + 1`), then re-check both rings
    /// (RING_FINAL_CHECK_FOR_RESPONSES). True when nothing is waiting, so a sleep until the event
    /// or the timeout loses nothing. Without re-arming, the backend stops notifying once the
    /// consumer has passed the last `rsp_event` and every packet waits for the poll timeout.
    pub fn idle_armed(&mut self) -> bool {
        for (sring, cons) in [
            (rx_sring(), self.rx_rsp_cons),
            (tx_sring(), self.tx_rsp_cons),
        ] {
            // SAFETY: both are our ring pages; rsp_event is ours to write, rsp_prod the
            // backend's.
            unsafe { vwrite(&raw mut (*sring).rsp_event, cons.wrapping_add(1)) };
        }
        fence(Ordering::SeqCst);
        // SAFETY: as above.
        let tx_done = unsafe { vread(&raw const (*tx_sring()).rsp_prod) } != self.tx_rsp_cons;
        !self.rx_pending() && !tx_done
    }

    /// True when a response is waiting on the rx ring.
    pub fn rx_pending(&self) -> bool {
        // SAFETY: rx_sring is our ring page.
        unsafe { vread(&raw const (*rx_sring()).rsp_prod) != self.rx_rsp_cons }
    }

    /// Collect finished transmissions.
    pub fn reap_tx(&mut self) {
        loop {
            // SAFETY: tx_sring is our ring page.
            let prod = unsafe { vread(&raw const (*tx_sring()).rsp_prod) };
            if self.tx_rsp_cons == prod {
                return;
            }
            fence(Ordering::SeqCst);
            // SAFETY: as in recv().
            let rsp =
                unsafe { core::ptr::read_volatile(tx_slot(self.tx_rsp_cons) as *const TxRsp) };
            self.tx_rsp_cons = self.tx_rsp_cons.wrapping_add(1);
            if (rsp.id as usize) < TX_BUFS && self.tx_nfree < TX_BUFS {
                self.tx_free[self.tx_nfree] = rsp.id;
                self.tx_nfree += 1;
            }
        }
    }

    pub fn can_send(&mut self) -> bool {
        self.reap_tx();
        self.tx_nfree > 0
    }

    /// Send one frame of `len` bytes built by `f`.
    pub fn send<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        self.reap_tx();
        assert!(self.tx_nfree > 0 && len <= PAGE_SIZE, "tx buffer");
        self.tx_nfree -= 1;
        let id = self.tx_free[self.tx_nfree];
        // SAFETY: buffer `id` is free (not in flight), so we may write it.
        let buf = unsafe { &mut (&mut (*(&raw mut TX_PAGES[id as usize])).0)[..len] };
        let r = f(buf);
        let s = tx_slot(self.tx_req_prod);
        // SAFETY: the slot is ours until we publish req_prod past it.
        unsafe {
            core::ptr::write_volatile(
                s,
                TxReq {
                    gref: self.tx_grefs[id as usize],
                    offset: 0,
                    flags: 0,
                    id,
                    size: len as u16,
                },
            )
        };
        self.tx_req_prod = self.tx_req_prod.wrapping_add(1);
        self.push(tx_sring(), self.tx_req_prod);
        self.tx_packets += 1;
        r
    }

    /// Disconnect for hand-over: Closing, wait for the backend to close, Closed, end every
    /// grant and close the event channel, then Initialising so the backend re-arms (InitWait)
    /// for the next frontend. Returns the backend state seen last.
    pub fn disconnect(&mut self, xs: &mut Xenstore, gt: &mut GrantTable) -> Result<u64, NetError> {
        let bstate = path!("{}/state", self.backend.as_str());
        let st = |xs: &mut Xenstore, v| {
            xs.write_u64("device/vif/0/state", v)
                .map_err(|e| NetError::Xs("frontend state", e))
        };
        st(xs, STATE_CLOSING)?;
        xs.wait_u64(bstate.as_str(), 30_000_000_000, |s| s >= STATE_CLOSING)
            .map_err(|e| NetError::Xs("waiting for backend Closing", e))?;
        st(xs, STATE_CLOSED)?;
        xs.wait_u64(bstate.as_str(), 30_000_000_000, |s| {
            s == STATE_CLOSED || s == STATE_INITWAIT
        })
        .map_err(|e| NetError::Xs("waiting for backend Closed", e))?;
        self.reap_tx();
        let mut stuck = 0;
        for r in self
            .tx_grefs
            .iter()
            .chain(self.rx_grefs.iter())
            .chain([&self.tx_ring_ref, &self.rx_ring_ref])
        {
            if !gt.end(*r) {
                stuck += 1;
            }
        }
        if stuck > 0 {
            kprintln!("netfront: {stuck} grants still mapped by the backend");
        }
        events::close(self.port);
        for k in ["tx-ring-ref", "rx-ring-ref", "event-channel"] {
            let p = path!("device/vif/0/{k}");
            let _ = xs.rm(p.as_str());
        }
        st(xs, STATE_INITIALISING)?;
        let last = xs
            .wait_u64(bstate.as_str(), 30_000_000_000, |s| s == STATE_INITWAIT)
            .map_err(|e| NetError::Xs("waiting for backend InitWait", e))?;
        self.port = 0;
        Ok(last)
    }
}
