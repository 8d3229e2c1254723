//! Minimal xenstore client over the shared ring (xs_wire.h): read, write, rm, watch, and waits
//! that combine a watch with polling. Single outstanding request; watch events that arrive while
//! waiting for a reply are only counted (callers re-read the paths they care about).
use crate::startinfo::StartInfo;
use crate::{events, mm};
use core::sync::atomic::{fence, Ordering};
use inflate_core::xs::{self, Header, HEADER_LEN};

#[repr(C)]
struct Ring {
    req: [u8; 1024],
    rsp: [u8; 1024],
    req_cons: u32,
    req_prod: u32,
    rsp_cons: u32,
    rsp_prod: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XsError {
    /// xenstored answered XS_ERROR with this errno name (ENOENT, EACCES, ...).
    Xen([u8; 16], usize),
    TooLong,
    Timeout,
    Protocol,
}

impl core::fmt::Display for XsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            XsError::Xen(b, n) => write!(
                f,
                "xenstore error {}",
                core::str::from_utf8(&b[..*n]).unwrap_or("?")
            ),
            XsError::TooLong => write!(f, "xenstore message too long"),
            XsError::Timeout => write!(f, "xenstore timeout"),
            XsError::Protocol => write!(f, "xenstore protocol error"),
        }
    }
}

pub struct Xenstore {
    ring: *mut Ring,
    port: u32,
    req_id: u32,
    pub watch_events: u64,
    buf: [u8; xs::PAYLOAD_MAX],
}

const TIMEOUT_NS: u64 = 20_000_000_000;

impl Xenstore {
    pub fn new(si: &StartInfo) -> Self {
        let pfn = mm::mfn_to_pfn(si.store_mfn);
        events::unmask(si.store_evtchn);
        Xenstore {
            ring: (pfn << 12) as *mut Ring,
            port: si.store_evtchn,
            req_id: 1,
            watch_events: 0,
            buf: [0; xs::PAYLOAD_MAX],
        }
    }

    pub fn port(&self) -> u32 {
        self.port
    }

    fn wait(&self, deadline: u64) -> Result<(), XsError> {
        if mm::system_time_ns() > deadline {
            return Err(XsError::Timeout);
        }
        events::wait(
            &[self.port],
            (mm::system_time_ns() + 10_000_000).min(deadline),
        );
        Ok(())
    }

    fn put(&mut self, mut data: &[u8], deadline: u64) -> Result<(), XsError> {
        let r = self.ring;
        while !data.is_empty() {
            // SAFETY: r points at the mapped xenstore page; the indices are shared with
            // xenstored: volatile reads, barrier before publishing the producer index.
            let n = unsafe {
                let cons = core::ptr::read_volatile(&raw const (*r).req_cons);
                let prod = core::ptr::read_volatile(&raw const (*r).req_prod);
                fence(Ordering::SeqCst);
                let n = xs::ring_put(&mut (*r).req, prod, cons, data);
                fence(Ordering::SeqCst);
                core::ptr::write_volatile(&raw mut (*r).req_prod, prod.wrapping_add(n as u32));
                n
            };
            events::send(self.port);
            data = &data[n..];
            if n == 0 {
                self.wait(deadline)?;
            }
        }
        Ok(())
    }

    fn get(&mut self, out: &mut [u8], deadline: u64) -> Result<(), XsError> {
        let r = self.ring;
        let mut got = 0;
        while got < out.len() {
            // SAFETY: as in put(), for the response ring.
            let n = unsafe {
                let prod = core::ptr::read_volatile(&raw const (*r).rsp_prod);
                let cons = core::ptr::read_volatile(&raw const (*r).rsp_cons);
                fence(Ordering::SeqCst);
                let n = xs::ring_get(&(*r).rsp, prod, cons, &mut out[got..]);
                fence(Ordering::SeqCst);
                core::ptr::write_volatile(&raw mut (*r).rsp_cons, cons.wrapping_add(n as u32));
                n
            };
            if n > 0 {
                events::send(self.port);
            }
            got += n;
            if got < out.len() && n == 0 {
                self.wait(deadline)?;
            }
        }
        Ok(())
    }

    /// Send one request and return the reply payload length (in self.buf).
    fn request(&mut self, ty: u32, parts: &[&[u8]]) -> Result<usize, XsError> {
        let mut payload = [0u8; 1024];
        let len = xs::payload(ty, parts, &mut payload).ok_or(XsError::TooLong)?;
        let id = self.req_id;
        self.req_id = self.req_id.wrapping_add(1);
        let deadline = mm::system_time_ns() + TIMEOUT_NS;
        let h = Header {
            ty,
            req_id: id,
            tx_id: 0,
            len: len as u32,
        };
        self.put(&h.encode(), deadline)?;
        self.put(&payload[..len], deadline)?;
        loop {
            let mut hb = [0u8; HEADER_LEN];
            self.get(&mut hb, deadline)?;
            let rh = Header::decode(&hb);
            if rh.len as usize > xs::PAYLOAD_MAX {
                return Err(XsError::Protocol);
            }
            let mut body = [0u8; xs::PAYLOAD_MAX];
            self.get(&mut body[..rh.len as usize], deadline)?;
            if rh.ty == xs::XS_WATCH_EVENT {
                self.watch_events += 1;
                continue;
            }
            if rh.req_id != id {
                continue;
            }
            let n = rh.len as usize;
            if rh.ty == xs::XS_ERROR {
                let e = xs::trim_nul(&body[..n]);
                let mut name = [0u8; 16];
                let k = e.len().min(16);
                name[..k].copy_from_slice(&e[..k]);
                return Err(XsError::Xen(name, k));
            }
            self.buf[..n].copy_from_slice(&body[..n]);
            return Ok(n);
        }
    }

    /// Read `path` into `out`, returning the value as a str (trailing NUL stripped).
    pub fn read<'b>(&mut self, path: &str, out: &'b mut [u8]) -> Result<&'b str, XsError> {
        let n = self.request(xs::XS_READ, &[path.as_bytes()])?;
        let v = xs::trim_nul(&self.buf[..n]);
        if v.len() > out.len() {
            return Err(XsError::TooLong);
        }
        out[..v.len()].copy_from_slice(v);
        core::str::from_utf8(&out[..v.len()]).map_err(|_| XsError::Protocol)
    }

    pub fn read_u64(&mut self, path: &str) -> Result<u64, XsError> {
        let mut b = [0u8; 32];
        let s = self.read(path, &mut b)?;
        s.trim().parse().map_err(|_| XsError::Protocol)
    }

    pub fn write(&mut self, path: &str, value: &str) -> Result<(), XsError> {
        self.request(xs::XS_WRITE, &[path.as_bytes(), value.as_bytes()])
            .map(|_| ())
    }

    pub fn write_u64(&mut self, path: &str, v: u64) -> Result<(), XsError> {
        let mut b = Buf::<24>::new();
        let _ = core::fmt::write(&mut b, format_args!("{v}"));
        self.write(path, b.as_str())
    }

    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.request(xs::XS_RM, &[path.as_bytes()]).map(|_| ())
    }

    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.request(xs::XS_WATCH, &[path.as_bytes(), token.as_bytes()])
            .map(|_| ())
    }

    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.request(xs::XS_UNWATCH, &[path.as_bytes(), token.as_bytes()])
            .map(|_| ())
    }

    /// Wait until the integer at `path` satisfies `ok`, using a watch so we sleep on the store
    /// event channel between reads.
    pub fn wait_u64(
        &mut self,
        path: &str,
        timeout_ns: u64,
        ok: impl Fn(u64) -> bool,
    ) -> Result<u64, XsError> {
        let deadline = mm::system_time_ns() + timeout_ns;
        self.watch(path, "w")?;
        let res = loop {
            match self.read_u64(path) {
                Ok(v) if ok(v) => break Ok(v),
                Ok(_) | Err(XsError::Xen(..)) => {}
                Err(e) => break Err(e),
            }
            if mm::system_time_ns() > deadline {
                break Err(XsError::Timeout);
            }
            self.drain_events(deadline.min(mm::system_time_ns() + 50_000_000));
        };
        let _ = self.unwatch(path, "w");
        res
    }

    /// Consume any watch events queued on the ring, sleeping until `deadline` for one.
    fn drain_events(&mut self, deadline: u64) {
        let r = self.ring;
        // SAFETY: volatile reads of the shared indices.
        let avail = |r: *mut Ring| unsafe {
            core::ptr::read_volatile(&raw const (*r).rsp_prod)
                != core::ptr::read_volatile(&raw const (*r).rsp_cons)
        };
        if !avail(r) {
            events::wait(&[self.port], deadline);
        }
        while avail(r) {
            // Once a message has started, finish reading it whatever the caller's deadline:
            // xenstored may publish header and body separately, and giving up in between would
            // leave the ring out of step.
            let msg_deadline = mm::system_time_ns() + TIMEOUT_NS;
            let mut hb = [0u8; HEADER_LEN];
            if self.get(&mut hb, msg_deadline).is_err() {
                return;
            }
            let rh = Header::decode(&hb);
            let mut body = [0u8; xs::PAYLOAD_MAX];
            let n = (rh.len as usize).min(xs::PAYLOAD_MAX);
            if self.get(&mut body[..n], msg_deadline).is_err() {
                return;
            }
            self.watch_events += 1;
        }
    }

    /// True when both rings are idle (every request consumed, every reply read).
    pub fn idle(&self) -> bool {
        let r = self.ring;
        // SAFETY: volatile reads of the shared indices.
        unsafe {
            core::ptr::read_volatile(&raw const (*r).req_cons)
                == core::ptr::read_volatile(&raw const (*r).req_prod)
                && core::ptr::read_volatile(&raw const (*r).rsp_cons)
                    == core::ptr::read_volatile(&raw const (*r).rsp_prod)
        }
    }
}

/// A small fixed-capacity string buffer for building paths and values.
pub struct Buf<const N: usize> {
    b: [u8; N],
    n: usize,
}

impl<const N: usize> Buf<N> {
    pub const fn new() -> Self {
        Buf { b: [0; N], n: 0 }
    }
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.b[..self.n]).unwrap_or("")
    }
}

impl<const N: usize> core::fmt::Write for Buf<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        if self.n + s.len() > N {
            return Err(core::fmt::Error);
        }
        self.b[self.n..self.n + s.len()].copy_from_slice(s.as_bytes());
        self.n += s.len();
        Ok(())
    }
}

#[macro_export]
macro_rules! path {
    ($($arg:tt)*) => {{
        let mut b = $crate::xenstore::Buf::<128>::new();
        let _ = core::fmt::Write::write_fmt(&mut b, format_args!($($arg)*));
        b
    }};
}
