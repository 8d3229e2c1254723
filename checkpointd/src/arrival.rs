//! The frames a migration ends with (docs/migrate.md "Arrival"): the copy that resumes on
//! the destination broadcasts arrival frames and gratuitous ARPs; the source answers with
//! acks. Pure byte layouts, so both ends and the tests share one definition.

use std::net::Ipv4Addr;

/// Ethertype of arrival and ack frames (IEEE 802 local experimental ethertype 1).
pub const ETHERTYPE: u16 = 0x88B5;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const MAGIC: [u8; 8] = *b"LNDRARRV";
pub const VERSION: u32 = 1;
/// Payload after the 14-byte Ethernet header.
pub const PAYLOAD_LEN: usize = 64;
pub const FRAME_LEN: usize = 14 + PAYLOAD_LEN;
pub const BROADCAST: [u8; 6] = [0xff; 6];
/// Ethernet frames shorter than this are padded (without FCS).
const MIN_FRAME: usize = 60;

pub type Mac = [u8; 6];
pub type MigrationId = [u8; 16];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Sent by the copy that resumed on the destination.
    Arrived = 1,
    /// Sent by the source once it saw an arrival frame with its id.
    Ack = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub src: Mac,
    pub kind: Kind,
    pub id: MigrationId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame too short ({0} bytes)")]
    Short(usize),
    #[error("not an arrival frame (ethertype {0:#06x})")]
    Ethertype(u16),
    #[error("bad magic")]
    Magic,
    #[error("unsupported version {0}")]
    Version(u32),
    #[error("unknown kind {0}")]
    Kind(u32),
    #[error("reserved bytes are not zero")]
    Reserved,
}

/// The MAC a helper of a migration uses for its own frames while the guest's MAC belongs
/// to the other copy: the guest's MAC with the locally-administered bit toggled.
pub fn helper_mac(guest: Mac) -> Mac {
    let mut m = guest;
    m[0] ^= 0x02;
    m
}

/// Broadcast arrival/ack frame: Ethernet header, then magic | u32 version | u32 kind |
/// 16-byte id | 32 zero bytes (integers little-endian).
pub fn encode(src: Mac, kind: Kind, id: &MigrationId) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    let p = &mut f[14..];
    p[0..8].copy_from_slice(&MAGIC);
    p[8..12].copy_from_slice(&VERSION.to_le_bytes());
    p[12..16].copy_from_slice(&(kind as u32).to_le_bytes());
    p[16..32].copy_from_slice(id);
    f
}

/// Parse a received frame (Ethernet header included; trailing padding allowed).
pub fn decode(f: &[u8]) -> Result<Frame, FrameError> {
    if f.len() < FRAME_LEN {
        return Err(FrameError::Short(f.len()));
    }
    let et = u16::from_be_bytes([f[12], f[13]]);
    if et != ETHERTYPE {
        return Err(FrameError::Ethertype(et));
    }
    let p = &f[14..FRAME_LEN];
    if p[0..8] != MAGIC {
        return Err(FrameError::Magic);
    }
    let u32at = |o: usize| u32::from_le_bytes(p[o..o + 4].try_into().unwrap());
    let v = u32at(8);
    if v != VERSION {
        return Err(FrameError::Version(v));
    }
    let kind = match u32at(12) {
        1 => Kind::Arrived,
        2 => Kind::Ack,
        k => return Err(FrameError::Kind(k)),
    };
    if p[32..64].iter().any(|&b| b != 0) {
        return Err(FrameError::Reserved);
    }
    Ok(Frame {
        src: f[6..12].try_into().unwrap(),
        kind,
        id: p[16..32].try_into().unwrap(),
    })
}

/// A gratuitous ARP (a broadcast request for our own address, RFC 5227's announcement):
/// switches learn where `mac` is, neighbours update their caches.
pub fn gratuitous_arp(mac: Mac, ip: Ipv4Addr) -> [u8; MIN_FRAME] {
    let mut f = [0u8; MIN_FRAME];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    let a = &mut f[14..42];
    a[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    a[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    a[4] = 6;
    a[5] = 4;
    a[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    a[8..14].copy_from_slice(&mac);
    a[14..18].copy_from_slice(&ip.octets());
    // target hardware address stays zero
    a[24..28].copy_from_slice(&ip.octets());
    f
}

/// Parse "aa:bb:cc:dd:ee:ff" (as /sys/class/net/*/address and xenstore write it).
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut m = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in m.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(m)
}

pub fn fmt_mac(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn fmt_id(id: &MigrationId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: MigrationId = *b"0123456789abcdef";
    const MAC: Mac = [0x00, 0x16, 0x3e, 0x4c, 0x00, 0x79];

    #[test]
    fn the_spec_example_encodes_byte_for_byte() {
        // docs/migrate.md "Arrival", example frame.
        let f = encode(MAC, Kind::Arrived, &ID);
        let hex: String = f.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "ffffffffffff00163e4c007988b5\
             4c4e445241525256\
             01000000\
             01000000\
             30313233343536373839616263646566\
             0000000000000000000000000000000000000000000000000000000000000000"
        );
        assert_eq!(
            decode(&f).unwrap(),
            Frame {
                src: MAC,
                kind: Kind::Arrived,
                id: ID
            }
        );
    }

    #[test]
    fn acks_round_trip_and_padding_is_allowed() {
        let mut f = encode(helper_mac(MAC), Kind::Ack, &ID).to_vec();
        f.extend_from_slice(&[0xAA; 4]);
        let d = decode(&f).unwrap();
        assert_eq!(d.kind, Kind::Ack);
        assert_eq!(d.src, [0x02, 0x16, 0x3e, 0x4c, 0x00, 0x79]);
    }

    #[test]
    fn every_damage_is_refused_with_its_reason() {
        let good = encode(MAC, Kind::Arrived, &ID);
        assert_eq!(decode(&good[..77]), Err(FrameError::Short(77)));
        let mut f = good;
        f[13] = 0xB6;
        assert_eq!(decode(&f), Err(FrameError::Ethertype(0x88B6)));
        let mut f = good;
        f[14] = b'X';
        assert_eq!(decode(&f), Err(FrameError::Magic));
        let mut f = good;
        f[22] = 2;
        assert_eq!(decode(&f), Err(FrameError::Version(2)));
        let mut f = good;
        f[26] = 3;
        assert_eq!(decode(&f), Err(FrameError::Kind(3)));
        let mut f = good;
        f[77] = 1;
        assert_eq!(decode(&f), Err(FrameError::Reserved));
        // Any single-byte change of the payload is either refused or changes the id/src.
        for i in 0..FRAME_LEN {
            let mut f = good;
            f[i] ^= 0x5a;
            if let Ok(d) = decode(&f) {
                assert!(
                    d.id != ID || d.src != MAC || i < 6,
                    "byte {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn gratuitous_arp_layout() {
        let f = gratuitous_arp(MAC, Ipv4Addr::new(10, 0, 0, 121));
        assert_eq!(&f[0..6], &BROADCAST);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&f[22..28], &MAC);
        assert_eq!(&f[28..32], &[10, 0, 0, 121]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[10, 0, 0, 121]);
        assert_eq!(f.len(), 60);
    }

    #[test]
    fn macs_parse_and_print() {
        assert_eq!(parse_mac("00:16:3e:4c:00:79\n"), Some(MAC));
        assert_eq!(fmt_mac(&MAC), "00:16:3e:4c:00:79");
        for bad in [
            "",
            "00:16:3e:4c:00",
            "00:16:3e:4c:00:79:01",
            "0:16:3e:4c:00:79",
            "zz:16:3e:4c:00:79",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert_eq!(helper_mac(helper_mac(MAC)), MAC);
    }
}
