//! A small xenstore client over xenstored's unix socket (the wire format is inflate-core's
//! `xs` module, shared with the loader). Our own rather than the xenstore-rs crate, whose
//! GPL-3.0-only licence does not fit this GPL-2.0-only workspace (docs/packetd.md §6).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use inflate_core::xs::{self, Header, HEADER_LEN, PAYLOAD_MAX};

pub struct Xs {
    pub sock: UnixStream,
    next_id: u32,
    /// Watch events that arrived while waiting for a reply: (path, token). Bounded.
    pub events: VecDeque<(String, String)>,
}

impl Xs {
    pub fn connect() -> io::Result<Xs> {
        let sock = UnixStream::connect("/run/xenstored/socket")
            .or_else(|_| UnixStream::connect("/var/run/xenstored/socket"))?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Xs {
            sock,
            next_id: 1,
            events: VecDeque::new(),
        })
    }

    /// Read one message; watch events are queued and reported as None.
    pub fn recv(&mut self) -> io::Result<Option<(Header, Vec<u8>)>> {
        let mut h = [0u8; HEADER_LEN];
        self.sock.read_exact(&mut h)?;
        let h = Header::decode(&h);
        if h.len as usize > PAYLOAD_MAX {
            return Err(io::Error::other("xenstore message too long"));
        }
        let mut body = vec![0u8; h.len as usize];
        self.sock.read_exact(&mut body)?;
        if h.ty != xs::XS_WATCH_EVENT {
            return Ok(Some((h, body)));
        }
        if let Some((p, t)) = xs::watch_event(&body) {
            if self.events.len() < 256 {
                let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                self.events.push_back((s(p), s(t)));
            }
        }
        Ok(None)
    }

    fn request(&mut self, ty: u32, parts: &[&[u8]]) -> io::Result<Vec<u8>> {
        let mut buf = [0u8; HEADER_LEN + PAYLOAD_MAX];
        let n = xs::payload(ty, parts, &mut buf[HEADER_LEN..])
            .ok_or_else(|| io::Error::other("xenstore request too long"))?;
        let req_id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let h = Header {
            ty,
            req_id,
            tx_id: 0,
            len: n as u32,
        };
        buf[..HEADER_LEN].copy_from_slice(&h.encode());
        self.sock.write_all(&buf[..HEADER_LEN + n])?;
        loop {
            match self.recv()? {
                Some((h, body)) if h.req_id == req_id && h.ty == xs::XS_ERROR => {
                    let e = String::from_utf8_lossy(xs::trim_nul(&body)).into_owned();
                    return Err(io::Error::other(e));
                }
                Some((h, body)) if h.req_id == req_id => return Ok(body),
                _ => {}
            }
        }
    }

    /// The value at `path`, None if it does not exist.
    pub fn read(&mut self, path: &str) -> io::Result<Option<Vec<u8>>> {
        match self.request(xs::XS_READ, &[path.as_bytes()]) {
            Ok(v) => Ok(Some(xs::trim_nul(&v).to_vec())),
            Err(e) if e.to_string() == "ENOENT" => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn write(&mut self, path: &str, value: &[u8]) -> io::Result<()> {
        self.request(xs::XS_WRITE, &[path.as_bytes(), value])
            .map(drop)
    }

    pub fn rm(&mut self, path: &str) -> io::Result<()> {
        self.request(xs::XS_RM, &[path.as_bytes()]).map(drop)
    }

    pub fn watch(&mut self, path: &str, token: &str) -> io::Result<()> {
        self.request(xs::XS_WATCH, &[path.as_bytes(), token.as_bytes()])
            .map(drop)
    }
}
