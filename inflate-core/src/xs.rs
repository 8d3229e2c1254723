//! Xenstore wire protocol (xs_wire.h): message header, request encoding, response parsing,
//! and the byte-ring arithmetic shared by the xenstore and console rings.

pub const HEADER_LEN: usize = 16;
pub const PAYLOAD_MAX: usize = 4096;

pub const XS_DIRECTORY: u32 = 1;
pub const XS_READ: u32 = 2;
pub const XS_WATCH: u32 = 4;
pub const XS_UNWATCH: u32 = 5;
pub const XS_WRITE: u32 = 11;
pub const XS_RM: u32 = 13;
pub const XS_WATCH_EVENT: u32 = 15;
pub const XS_ERROR: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub ty: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.ty.to_le_bytes());
        b[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        b[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }
    pub fn decode(b: &[u8; HEADER_LEN]) -> Header {
        let w = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        Header {
            ty: w(0),
            req_id: w(4),
            tx_id: w(8),
            len: w(12),
        }
    }
}

/// Build a request's payload: the parts joined, each NUL-terminated except the last of a
/// WRITE (whose value is raw bytes). Returns the payload length, or None if it does not fit.
pub fn payload(ty: u32, parts: &[&[u8]], out: &mut [u8]) -> Option<usize> {
    let mut n = 0;
    for (i, p) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let nul = !(ty == XS_WRITE && last);
        let need = p.len() + nul as usize;
        if n + need > out.len() {
            return None;
        }
        out[n..n + p.len()].copy_from_slice(p);
        n += p.len();
        if nul {
            out[n] = 0;
            n += 1;
        }
    }
    Some(n)
}

/// Build a whole request in `out`: the header (transaction 0), then the payload of `parts`
/// as [`payload`] lays it out. Returns the request's length, or None if it does not fit.
pub fn request(ty: u32, req_id: u32, parts: &[&[u8]], out: &mut [u8]) -> Option<usize> {
    let (head, body) = out.split_at_mut_checked(HEADER_LEN)?;
    let len = payload(ty, parts, body)?;
    let tx_id = 0;
    head.copy_from_slice(
        &Header {
            ty,
            req_id,
            tx_id,
            len: len as u32,
        }
        .encode(),
    );
    Some(HEADER_LEN + len)
}

/// Strip one trailing NUL (xenstored terminates READ replies inconsistently across versions).
pub fn trim_nul(b: &[u8]) -> &[u8] {
    b.strip_suffix(&[0]).unwrap_or(b)
}

/// Split a WATCH_EVENT payload into (path, token).
pub fn watch_event(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut it = b.split(|&c| c == 0);
    let path = it.next()?;
    let token = it.next()?;
    Some((path, token))
}

/// Copy as much of `data` as fits into a ring of `ring.len()` (a power of two) bytes whose
/// producer index is `prod` and consumer `cons`. Returns the bytes written; the caller
/// publishes `prod + n` after a write barrier.
pub fn ring_put(ring: &mut [u8], prod: u32, cons: u32, data: &[u8]) -> usize {
    let size = ring.len() as u32;
    let free = size - prod.wrapping_sub(cons).min(size);
    let n = (free as usize).min(data.len());
    for (i, &b) in data[..n].iter().enumerate() {
        ring[(prod.wrapping_add(i as u32) % size) as usize] = b;
    }
    n
}

/// Copy out up to `out.len()` unread bytes. Returns the bytes read; the caller publishes
/// `cons + n`.
pub fn ring_get(ring: &[u8], prod: u32, cons: u32, out: &mut [u8]) -> usize {
    let size = ring.len() as u32;
    let avail = prod.wrapping_sub(cons).min(size) as usize;
    let n = avail.min(out.len());
    for (i, o) in out[..n].iter_mut().enumerate() {
        *o = ring[(cons.wrapping_add(i as u32) % size) as usize];
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip() {
        let h = Header {
            ty: XS_READ,
            req_id: 7,
            tx_id: 0,
            len: 12,
        };
        assert_eq!(Header::decode(&h.encode()), h);
    }

    #[test]
    fn request_is_header_then_payload() {
        let mut b = [0u8; 64];
        let n = request(XS_WRITE, 9, &[b"a/b", b"v"], &mut b).unwrap();
        assert_eq!(n, HEADER_LEN + 5);
        let h = Header::decode(b[..HEADER_LEN].try_into().unwrap());
        assert_eq!((h.ty, h.req_id, h.tx_id, h.len), (XS_WRITE, 9, 0, 5));
        assert_eq!(&b[HEADER_LEN..n], b"a/b\0v");
        assert_eq!(request(XS_READ, 0, &[&[b'x'; 48]], &mut b), None);
        assert_eq!(request(XS_READ, 0, &[], &mut b[..4]), None);
    }

    #[test]
    fn payload_terminates_paths_not_write_values() {
        let mut b = [0u8; 64];
        let n = payload(XS_WRITE, &[b"device/vif/0/state", b"4"], &mut b).unwrap();
        assert_eq!(&b[..n], b"device/vif/0/state\x004");
        let n = payload(XS_WATCH, &[b"backend/x", b"tok"], &mut b).unwrap();
        assert_eq!(&b[..n], b"backend/x\0tok\0");
        assert_eq!(payload(XS_READ, &[&[b'a'; 64]], &mut b), None);
    }

    #[test]
    fn watch_event_split() {
        assert_eq!(watch_event(b"a/b\0t1\0"), Some((&b"a/b"[..], &b"t1"[..])));
        assert_eq!(watch_event(b"nonul"), None);
        assert_eq!(trim_nul(b"4\0"), b"4");
    }

    #[test]
    fn ring_wraps_and_respects_space() {
        let mut ring = [0u8; 8];
        // producer at 6, consumer at 4: 2 used, 6 free
        assert_eq!(ring_put(&mut ring, 6, 4, b"abcdefgh"), 6);
        let mut out = [0u8; 16];
        assert_eq!(ring_get(&ring, 12, 6, &mut out), 6);
        assert_eq!(&out[..6], b"abcdef");
        // full ring takes nothing; wrapped u32 indices work
        assert_eq!(ring_put(&mut ring, 3, u32::MAX - 4, b"x"), 0);
        assert_eq!(ring_get(&ring, 5, 5, &mut out), 0);
    }
}
