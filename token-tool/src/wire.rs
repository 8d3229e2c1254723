//! Binary formats: boot token, top-up, redemption certificate. All integers big-endian.
//! docs/tokens.md specifies each byte; keep the two in step (a test parses the doc's example).
//!
//! Parsers check the length before anything else, then the magic and version, and never
//! index out of bounds: every read goes through [`Reader`], which returns `Truncated`.

use crate::chain::{iterate, Value, VALUE_LEN};
use crate::error::TokenError;
use crate::sha1block::{self, State};

pub const BOOT_MAGIC: [u8; 4] = *b"LMBT";
pub const TOPUP_MAGIC: [u8; 4] = *b"LMTU";
pub const CERT_MAGIC: [u8; 4] = *b"LMRC";
pub const VERSION: u8 = 1;

pub const MAC_LEN: usize = 20;
pub const BOOT_FIXED_LEN: usize = 116;
pub const EXTENT_LEN: usize = 24;
pub const MAX_EXTENTS: usize = 32;
/// Smallest boot token (no extents), MAC included.
pub const BOOT_MIN_LEN: usize = BOOT_FIXED_LEN + MAC_LEN;
/// Largest boot token: 904 bytes, well inside one ICMP echo payload on a 1500-byte link
/// (1500 - 20 IP - 8 ICMP = 1472), leaving 568 bytes for whatever framing packetd adds.
pub const BOOT_MAX_LEN: usize = BOOT_MIN_LEN + MAX_EXTENTS * EXTENT_LEN;
pub const ICMP_ECHO_PAYLOAD_MAX: usize = 1472;
pub const TOPUP_LEN: usize = 44;
pub const CERT_LEN: usize = 84;

/// Secrets shorter than this are refused: HMAC-SHA1 wants at least the digest length.
pub const MIN_SECRET_LEN: usize = 16;
pub const MAX_SECRET_LEN: usize = 64;

const _: () = assert!(BOOT_MAX_LEN <= ICMP_ECHO_PAYLOAD_MAX);

/// A region of a node disk the VM may use, in 512-byte sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Extent {
    /// Index of the disk (volume) on the node.
    pub disk: u32,
    pub writable: bool,
    pub start_sector: u64,
    pub sectors: u64,
}

/// The signed content of a boot token.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootToken {
    pub vcpus: u16,
    pub node_id: u32,
    pub memory_mib: u32,
    pub job_id: u64,
    /// Unix seconds (UTC) after which the node refuses the token.
    pub expiry: u64,
    /// k: the number of tokens `first` pays for, f^k(first) = anchor.
    pub count: u32,
    /// Largest m the node accepts in one top-up.
    pub max_topup: u32,
    #[serde(with = "hex16")]
    pub nonce: [u8; 16],
    #[serde(with = "hex20")]
    pub anchor: Value,
    #[serde(with = "hex20")]
    pub first: Value,
    #[serde(with = "hex20")]
    pub loader_sha1: [u8; 20],
    pub extents: Vec<Extent>,
}

/// A top-up: the next released chain value for a job, and how many tokens it adds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopUp {
    pub node_id: u32,
    pub job_id: u64,
    pub count: u32,
    #[serde(with = "hex20")]
    pub value: Value,
}

/// A redemption certificate, signed by the node under the secret it shares with the broker.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Certificate {
    pub node_id: u32,
    pub job_id: u64,
    /// Tokens the node accepted for this job in total (boot token count + top-ups).
    pub accepted: u64,
    /// Tokens left unspent.
    pub balance: u64,
    pub issued_at: u64,
    #[serde(with = "hex20")]
    pub last: Value,
}

fn check_secret(secret: &[u8]) -> Result<(), TokenError> {
    if secret.len() < MIN_SECRET_LEN || secret.len() > MAX_SECRET_LEN {
        return Err(TokenError::InvalidField {
            field: "secret",
            reason: "must be 16..=64 bytes",
        });
    }
    Ok(())
}

/// HMAC-SHA1(secret, data).
pub fn hmac_sha1(secret: &[u8], data: &[u8]) -> Result<[u8; MAC_LEN], TokenError> {
    Ok(NodeKey::new(secret)?.mac(data))
}

/// A node's HMAC key with its two key-pad blocks already hashed: the SHA-1 states after
/// (key ^ ipad) and after (key ^ opad). A node computes it once, so a check costs only the
/// message blocks and the one outer block.
#[derive(Clone)]
pub struct NodeKey {
    inner: State,
    outer: State,
}

impl NodeKey {
    pub fn new(secret: &[u8]) -> Result<NodeKey, TokenError> {
        check_secret(secret)?;
        // A key of at most 64 bytes is used as it is, zero-padded to one block (RFC 2104).
        let pad = |x: u8| {
            let mut b = [x; 64];
            b.iter_mut().zip(secret).for_each(|(b, k)| *b ^= k);
            let mut s = sha1block::IV;
            sha1block::compress(&mut s, &b);
            s
        };
        Ok(NodeKey {
            inner: pad(0x36),
            outer: pad(0x5c),
        })
    }

    /// HMAC-SHA1(secret, data).
    pub fn mac(&self, data: &[u8]) -> [u8; MAC_LEN] {
        sha1block::mac(&self.inner, &self.outer, data)
    }

    fn verify(&self, data: &[u8], mac: &[u8], what: &'static str) -> Result<(), TokenError> {
        let m = self.mac(data);
        // Constant-time comparison: every byte is looked at.
        let diff = m.iter().zip(mac).fold(0u8, |d, (a, b)| d | (a ^ b));
        match diff == 0 && mac.len() == MAC_LEN {
            true => Ok(()),
            false => Err(TokenError::BadMac { what }),
        }
    }
}

impl core::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("NodeKey(..)")
    }
}

fn verify_mac(
    secret: &[u8],
    data: &[u8],
    mac: &[u8],
    what: &'static str,
) -> Result<(), TokenError> {
    NodeKey::new(secret)?.verify(data, mac, what)
}

/// Bounds-checked big-endian reader.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], TokenError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(TokenError::Truncated {
                what: self.what,
                need: self.pos.saturating_add(n),
                got: self.buf.len(),
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], TokenError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, TokenError> {
        Ok(self.arr::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, TokenError> {
        Ok(u16::from_be_bytes(self.arr()?))
    }
    fn u32(&mut self) -> Result<u32, TokenError> {
        Ok(u32::from_be_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, TokenError> {
        Ok(u64::from_be_bytes(self.arr()?))
    }
}

/// Common header check: exact length window, magic, version.
/// Checks length, magic and version, and returns a reader positioned after them.
fn open<'a>(
    bytes: &'a [u8],
    magic: [u8; 4],
    what: &'static str,
    min: usize,
    max: usize,
) -> Result<Reader<'a>, TokenError> {
    check_header(bytes, magic, what, min, max)?;
    let mut r = Reader::new(bytes, what);
    r.take(5)?;
    Ok(r)
}

/// The three reserved bytes that follow magic and version in top-ups and certificates.
fn take_reserved(r: &mut Reader<'_>) -> Result<(), TokenError> {
    if r.take(3)? != [0, 0, 0] {
        return Err(TokenError::InvalidField {
            field: "reserved",
            reason: "must be zero",
        });
    }
    Ok(())
}

/// Magic, version and three reserved zero bytes: the start of a top-up or certificate.
fn fixed_header(magic: [u8; 4], capacity: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(capacity);
    b.extend_from_slice(&magic);
    b.push(VERSION);
    b.extend_from_slice(&[0, 0, 0]);
    b
}

fn check_header(
    bytes: &[u8],
    magic: [u8; 4],
    what: &'static str,
    min: usize,
    max: usize,
) -> Result<(), TokenError> {
    if bytes.len() > max {
        return Err(TokenError::Oversized {
            what,
            max,
            got: bytes.len(),
        });
    }
    if bytes.len() < 5 {
        // Say "not a ..." rather than "truncated" when even the magic is wrong.
        if bytes.len() >= 4 && bytes[..4] != magic {
            return Err(TokenError::BadMagic {
                what,
                found: [bytes[0], bytes[1], bytes[2], bytes[3]],
            });
        }
        return Err(TokenError::Truncated {
            what,
            need: min,
            got: bytes.len(),
        });
    }
    let found = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if found != magic {
        return Err(TokenError::BadMagic { what, found });
    }
    if bytes[4] != VERSION {
        return Err(TokenError::UnsupportedVersion {
            what,
            found: bytes[4],
        });
    }
    if bytes.len() < min {
        return Err(TokenError::Truncated {
            what,
            need: min,
            got: bytes.len(),
        });
    }
    Ok(())
}

fn check_counts(vcpus: u16, memory_mib: u32, count: u32, max_topup: u32) -> Result<(), TokenError> {
    for (field, v) in [
        ("vcpus", vcpus as u32),
        ("memory_mib", memory_mib),
        ("count", count),
        ("max_topup", max_topup),
    ] {
        if v == 0 {
            return Err(TokenError::InvalidField {
                field,
                reason: "must be at least 1",
            });
        }
    }
    Ok(())
}

fn check_extent(e: &Extent) -> Result<(), TokenError> {
    if e.sectors == 0 {
        return Err(TokenError::InvalidField {
            field: "extent",
            reason: "zero sectors",
        });
    }
    if e.start_sector.checked_add(e.sectors).is_none() {
        return Err(TokenError::InvalidField {
            field: "extent",
            reason: "end overflows",
        });
    }
    Ok(())
}

impl BootToken {
    const WHAT: &'static str = "boot token";

    /// Encoded length with MAC.
    pub fn encoded_len(&self) -> usize {
        BOOT_MIN_LEN + self.extents.len() * EXTENT_LEN
    }

    fn validate(&self) -> Result<(), TokenError> {
        if self.extents.len() > MAX_EXTENTS {
            return Err(TokenError::TooManyExtents {
                found: self.extents.len(),
                max: MAX_EXTENTS,
            });
        }
        check_counts(self.vcpus, self.memory_mib, self.count, self.max_topup)?;
        self.extents.iter().try_for_each(check_extent)
    }

    /// The signed part (everything before the MAC).
    pub fn encode_body(&self) -> Result<Vec<u8>, TokenError> {
        self.validate()?;
        let mut b = Vec::with_capacity(self.encoded_len());
        b.extend_from_slice(&BOOT_MAGIC);
        b.push(VERSION);
        b.push(self.extents.len() as u8);
        b.extend_from_slice(&self.vcpus.to_be_bytes());
        b.extend_from_slice(&self.node_id.to_be_bytes());
        b.extend_from_slice(&self.memory_mib.to_be_bytes());
        b.extend_from_slice(&self.job_id.to_be_bytes());
        b.extend_from_slice(&self.expiry.to_be_bytes());
        b.extend_from_slice(&self.count.to_be_bytes());
        b.extend_from_slice(&self.max_topup.to_be_bytes());
        b.extend_from_slice(&self.nonce);
        b.extend_from_slice(&self.anchor);
        b.extend_from_slice(&self.first);
        b.extend_from_slice(&self.loader_sha1);
        for e in &self.extents {
            b.extend_from_slice(&e.disk.to_be_bytes());
            b.extend_from_slice(&(e.writable as u32).to_be_bytes());
            b.extend_from_slice(&e.start_sector.to_be_bytes());
            b.extend_from_slice(&e.sectors.to_be_bytes());
        }
        Ok(b)
    }

    /// Sign under the node's secret: body || HMAC-SHA1(secret, body).
    pub fn encode(&self, secret: &[u8]) -> Result<Vec<u8>, TokenError> {
        let mut b = self.encode_body()?;
        let mac = hmac_sha1(secret, &b)?;
        b.extend_from_slice(&mac);
        Ok(b)
    }

    /// Parse without checking the MAC (for wallets and tools that lack the secret).
    /// Returns the token and its MAC.
    pub fn decode_unverified(bytes: &[u8]) -> Result<(BootToken, [u8; MAC_LEN]), TokenError> {
        let (f, mac) = BootFields::parse(bytes)?;
        let extents = bytes[BOOT_FIXED_LEN..bytes.len() - MAC_LEN]
            .chunks_exact(EXTENT_LEN)
            .map(extent)
            .collect::<Result<_, _>>()?;
        Ok((f.with_extents(extents), mac))
    }

    /// Everything a node checks that needs no state: format, node id, HMAC, expiry, and
    /// f^count(first) = anchor. Cheap checks come first; the chain walk (count hashes) runs
    /// only on tokens whose HMAC verified, so a forger cannot make the node hash much.
    pub fn verify(
        bytes: &[u8],
        secret: &[u8],
        this_node: u32,
        now: u64,
    ) -> Result<BootToken, TokenError> {
        BootFields::check(bytes, &NodeKey::new(secret)?, this_node, now)?;
        Ok(Self::decode_unverified(bytes)?.0)
    }
}

/// One extent's 24 bytes.
fn extent(b: &[u8]) -> Result<Extent, TokenError> {
    let mut r = Reader::new(b, BootToken::WHAT);
    let (disk, flags) = (r.u32()?, r.u32()?);
    if flags > 1 {
        return Err(TokenError::InvalidField {
            field: "extent flags",
            reason: "unknown bits set",
        });
    }
    Ok(Extent {
        disk,
        writable: flags == 1,
        start_sector: r.u64()?,
        sectors: r.u64()?,
    })
}

/// A boot token's fixed-size fields, i.e. all but the extents, which [`BootFields::parse`]
/// checks in place. Parsing allocates nothing: this is what a node reads from every packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootFields {
    pub vcpus: u16,
    pub node_id: u32,
    pub memory_mib: u32,
    pub job_id: u64,
    pub expiry: u64,
    pub count: u32,
    pub max_topup: u32,
    pub nonce: [u8; 16],
    pub anchor: Value,
    pub first: Value,
    pub loader_sha1: [u8; 20],
    /// Number of extents.
    pub extents: u8,
}

impl BootFields {
    /// Parse and check the format (every extent included) without the MAC check.
    #[inline]
    pub fn parse(bytes: &[u8]) -> Result<(BootFields, [u8; MAC_LEN]), TokenError> {
        let what = BootToken::WHAT;
        let mut r = open(bytes, BOOT_MAGIC, what, BOOT_MIN_LEN, BOOT_MAX_LEN)?;
        let n_ext = r.u8()? as usize;
        if n_ext > MAX_EXTENTS {
            return Err(TokenError::TooManyExtents {
                found: n_ext,
                max: MAX_EXTENTS,
            });
        }
        let expect = BOOT_MIN_LEN + n_ext * EXTENT_LEN;
        if bytes.len() != expect {
            return Err(match bytes.len() < expect {
                true => TokenError::Truncated {
                    what,
                    need: expect,
                    got: bytes.len(),
                },
                false => TokenError::Oversized {
                    what,
                    max: expect,
                    got: bytes.len(),
                },
            });
        }
        let f = BootFields {
            vcpus: r.u16()?,
            node_id: r.u32()?,
            memory_mib: r.u32()?,
            job_id: r.u64()?,
            expiry: r.u64()?,
            count: r.u32()?,
            max_topup: r.u32()?,
            nonce: r.arr()?,
            anchor: r.arr()?,
            first: r.arr()?,
            loader_sha1: r.arr()?,
            extents: n_ext as u8,
        };
        for e in r.take(n_ext * EXTENT_LEN)?.chunks_exact(EXTENT_LEN) {
            check_extent(&extent(e)?)?;
        }
        check_counts(f.vcpus, f.memory_mib, f.count, f.max_topup)?;
        Ok((f, r.arr()?))
    }

    /// What a node checks per boot token, in this order: format, node id, HMAC under the
    /// node's precomputed key, expiry, f^count(first) = anchor. The chain walk (count
    /// compressions) runs only on a token whose HMAC verified, so a forger cannot make the
    /// node hash much.
    pub fn check(
        bytes: &[u8],
        key: &NodeKey,
        this_node: u32,
        now: u64,
    ) -> Result<BootFields, TokenError> {
        let (t, mac) = Self::parse(bytes)?;
        if t.node_id != this_node {
            return Err(TokenError::WrongNode {
                token_node: t.node_id,
                this_node,
            });
        }
        key.verify(&bytes[..bytes.len() - MAC_LEN], &mac, BootToken::WHAT)?;
        if now > t.expiry {
            return Err(TokenError::Expired {
                expiry: t.expiry,
                now,
            });
        }
        if iterate(&t.first, t.count as u64) != t.anchor {
            return Err(TokenError::AnchorMismatch { count: t.count });
        }
        Ok(t)
    }

    fn with_extents(self, extents: Vec<Extent>) -> BootToken {
        let f = self;
        BootToken {
            vcpus: f.vcpus,
            node_id: f.node_id,
            memory_mib: f.memory_mib,
            job_id: f.job_id,
            expiry: f.expiry,
            count: f.count,
            max_topup: f.max_topup,
            nonce: f.nonce,
            anchor: f.anchor,
            first: f.first,
            loader_sha1: f.loader_sha1,
            extents,
        }
    }
}

impl TopUp {
    const WHAT: &'static str = "top-up";

    pub fn encode(&self) -> Vec<u8> {
        let mut b = fixed_header(TOPUP_MAGIC, TOPUP_LEN);
        b.extend_from_slice(&self.node_id.to_be_bytes());
        b.extend_from_slice(&self.job_id.to_be_bytes());
        b.extend_from_slice(&self.count.to_be_bytes());
        b.extend_from_slice(&self.value);
        b
    }

    pub fn decode(bytes: &[u8]) -> Result<TopUp, TokenError> {
        let mut r = open(bytes, TOPUP_MAGIC, Self::WHAT, TOPUP_LEN, TOPUP_LEN)?;
        take_reserved(&mut r)?;
        let node_id = r.u32()?;
        let job_id = r.u64()?;
        let count = r.u32()?;
        if count == 0 {
            return Err(TokenError::InvalidField {
                field: "count",
                reason: "must be at least 1",
            });
        }
        let value = r.arr::<VALUE_LEN>()?;
        Ok(TopUp {
            node_id,
            job_id,
            count,
            value,
        })
    }
}

impl Certificate {
    const WHAT: &'static str = "redemption certificate";

    pub fn encode(&self, secret: &[u8]) -> Result<Vec<u8>, TokenError> {
        if self.balance > self.accepted {
            return Err(TokenError::InvalidField {
                field: "balance",
                reason: "exceeds accepted tokens",
            });
        }
        let mut b = fixed_header(CERT_MAGIC, CERT_LEN);
        b.extend_from_slice(&self.node_id.to_be_bytes());
        b.extend_from_slice(&self.job_id.to_be_bytes());
        b.extend_from_slice(&self.accepted.to_be_bytes());
        b.extend_from_slice(&self.balance.to_be_bytes());
        b.extend_from_slice(&self.issued_at.to_be_bytes());
        b.extend_from_slice(&self.last);
        let mac = hmac_sha1(secret, &b)?;
        b.extend_from_slice(&mac);
        Ok(b)
    }

    /// Parse without the MAC check; returns the certificate and its MAC.
    pub fn decode_unverified(bytes: &[u8]) -> Result<(Certificate, [u8; MAC_LEN]), TokenError> {
        let mut r = open(bytes, CERT_MAGIC, Self::WHAT, CERT_LEN, CERT_LEN)?;
        take_reserved(&mut r)?;
        let node_id = r.u32()?;
        let job_id = r.u64()?;
        let accepted = r.u64()?;
        let balance = r.u64()?;
        let issued_at = r.u64()?;
        let last = r.arr()?;
        let mac = r.arr()?;
        if balance > accepted {
            return Err(TokenError::InvalidField {
                field: "balance",
                reason: "exceeds accepted tokens",
            });
        }
        Ok((
            Certificate {
                node_id,
                job_id,
                accepted,
                balance,
                issued_at,
                last,
            },
            mac,
        ))
    }

    /// Parse and check the MAC under the node's secret.
    pub fn verify(bytes: &[u8], secret: &[u8]) -> Result<Certificate, TokenError> {
        let (c, mac) = Self::decode_unverified(bytes)?;
        verify_mac(secret, &bytes[..bytes.len() - MAC_LEN], &mac, Self::WHAT)?;
        Ok(c)
    }
}

macro_rules! hex_serde {
    ($name:ident, $n:expr) => {
        pub(crate) mod $name {
            use serde::{de::Error, Deserialize, Deserializer, Serializer};
            pub fn serialize<S: Serializer>(v: &[u8; $n], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&crate::to_hex(v))
            }
            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; $n], D::Error> {
                let s = String::deserialize(d)?;
                let v = crate::from_hex(&s).map_err(D::Error::custom)?;
                v.as_slice()
                    .try_into()
                    .map_err(|_| D::Error::custom(concat!("expected ", stringify!($n), " bytes")))
            }
        }
    };
}
hex_serde!(hex16, 16);
hex_serde!(hex20, 20);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Chain;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"0123456789abcdefghij";

    pub(crate) fn sample(count: u32, extents: usize) -> (BootToken, Chain) {
        let c = Chain::mint([9; 20], 1000, 32, |_| {}).unwrap();
        let t = BootToken {
            vcpus: 1,
            node_id: 3,
            memory_mib: 256,
            job_id: 77,
            expiry: 2_000_000_000,
            count,
            max_topup: 100,
            nonce: [5; 16],
            anchor: c.anchor(),
            first: c.released_value(count as u64).unwrap(),
            loader_sha1: [0xaa; 20],
            extents: (0..extents)
                .map(|i| Extent {
                    disk: i as u32,
                    writable: i % 2 == 0,
                    start_sector: 2048,
                    sectors: 4096,
                })
                .collect(),
        };
        (t, c)
    }

    #[test]
    fn boot_roundtrip_and_verify() {
        let (t, _) = sample(10, 2);
        let b = t.encode(SECRET).unwrap();
        assert_eq!(b.len(), 136 + 48);
        assert_eq!(BootToken::verify(&b, SECRET, 3, 1_000).unwrap(), t);
    }

    #[test]
    fn largest_token_fits_icmp_payload() {
        let (t, _) = sample(10, MAX_EXTENTS);
        let b = t.encode(SECRET).unwrap();
        assert_eq!(b.len(), BOOT_MAX_LEN);
        assert!(b.len() <= ICMP_ECHO_PAYLOAD_MAX);
        let (t2, _) = sample(10, MAX_EXTENTS + 1);
        assert_eq!(t2.encode(SECRET).unwrap_err().code(), "too-many-extents");
    }

    #[test]
    fn each_refusal_has_its_error() {
        let (t, _) = sample(10, 1);
        let b = t.encode(SECRET).unwrap();
        let code = |r: Result<BootToken, TokenError>| r.unwrap_err().code();
        assert_eq!(
            code(BootToken::verify(&b, b"another-secret-20byt", 3, 0)),
            "bad-mac"
        );
        assert_eq!(code(BootToken::verify(&b, SECRET, 4, 0)), "wrong-node");
        assert_eq!(
            code(BootToken::verify(&b, SECRET, 3, 2_000_000_001)),
            "expired"
        );
        assert_eq!(
            code(BootToken::verify(&b[..b.len() - 1], SECRET, 3, 0)),
            "truncated"
        );
        assert_eq!(code(BootToken::verify(&b[..3], SECRET, 3, 0)), "truncated");
        let mut long = b.clone();
        long.push(0);
        assert_eq!(code(BootToken::verify(&long, SECRET, 3, 0)), "oversized");
        assert_eq!(
            code(BootToken::verify(&vec![0u8; 2000], SECRET, 3, 0)),
            "oversized"
        );
        assert_eq!(
            code(BootToken::verify(&[0x13; 150], SECRET, 3, 0)),
            "bad-magic"
        );
        let mut v2 = b.clone();
        v2[4] = 2;
        assert_eq!(
            code(BootToken::verify(&v2, SECRET, 3, 0)),
            "unsupported-version"
        );
        // Flip one bit of the anchor: the MAC catches it.
        let mut tampered = b.clone();
        tampered[60] ^= 1;
        assert_eq!(code(BootToken::verify(&tampered, SECRET, 3, 0)), "bad-mac");
        // A correctly signed token whose count lies about the chain.
        let mut lie = t.clone();
        lie.count = 9;
        assert_eq!(
            code(BootToken::verify(
                &lie.encode(SECRET).unwrap(),
                SECRET,
                3,
                0
            )),
            "anchor-mismatch"
        );
        // Short secrets are refused outright.
        assert_eq!(t.encode(b"short").unwrap_err().code(), "invalid-field");
    }

    #[test]
    fn topup_and_cert_roundtrip() {
        let tu = TopUp {
            node_id: 1,
            job_id: 2,
            count: 10,
            value: [3; 20],
        };
        let b = tu.encode();
        assert_eq!(b.len(), TOPUP_LEN);
        assert_eq!(TopUp::decode(&b).unwrap(), tu);
        assert_eq!(TopUp::decode(&b[..43]).unwrap_err().code(), "truncated");
        let mut zero = b.clone();
        zero[23] = 0;
        assert_eq!(TopUp::decode(&zero).unwrap_err().code(), "invalid-field");

        let c = Certificate {
            node_id: 1,
            job_id: 2,
            accepted: 20,
            balance: 7,
            issued_at: 99,
            last: [4; 20],
        };
        let b = c.encode(SECRET).unwrap();
        assert_eq!(b.len(), CERT_LEN);
        assert_eq!(Certificate::verify(&b, SECRET).unwrap(), c);
        let mut forged = b.clone();
        forged[39] = 99; // raise the balance
        assert_eq!(
            Certificate::verify(&forged, SECRET).unwrap_err().code(),
            "bad-mac"
        );
    }

    #[test]
    fn parsers_tell_formats_apart() {
        let tu = TopUp {
            node_id: 1,
            job_id: 2,
            count: 10,
            value: [3; 20],
        }
        .encode();
        assert_eq!(
            BootToken::decode_unverified(&tu).unwrap_err().code(),
            "bad-magic"
        );
        assert_eq!(
            Certificate::decode_unverified(&tu).unwrap_err().code(),
            "bad-magic"
        );
        let (t, _) = sample(1, 0);
        let bt = t.encode(SECRET).unwrap();
        assert_eq!(TopUp::decode(&bt).unwrap_err().code(), "oversized");
    }

    proptest! {
        #[test]
        fn node_key_mac_is_hmac_sha1(key in proptest::collection::vec(any::<u8>(), 16..=64), data in proptest::collection::vec(any::<u8>(), 0..1000)) {
            use hmac::{Hmac, Mac};
            let mut m = Hmac::<sha1::Sha1>::new_from_slice(&key).unwrap();
            m.update(&data);
            let want: [u8; 20] = m.finalize().into_bytes().into();
            prop_assert_eq!(NodeKey::new(&key).unwrap().mac(&data), want);
            let mut bad = want;
            bad[19] ^= 1;
            prop_assert!(NodeKey::new(&key).unwrap().verify(&data, &bad, "x").is_err());
            prop_assert!(NodeKey::new(&key).unwrap().verify(&data, &want[..19], "x").is_err());
        }

        #[test]
        fn boot_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
            let _ = BootToken::verify(&bytes, SECRET, 3, 0);
            let _ = TopUp::decode(&bytes);
            let _ = Certificate::verify(&bytes, SECRET);
        }

        #[test]
        fn boot_parser_never_panics_near_valid(pos in 0usize..184, val in any::<u8>(), cut in 0usize..200) {
            let (t, _) = sample(10, 2);
            let mut b = t.encode(SECRET).unwrap();
            b[pos] = val;
            b.truncate(cut);
            let _ = BootToken::verify(&b, SECRET, 3, 0);
        }

        #[test]
        fn any_single_byte_change_is_refused(pos in 0usize..184, delta in 1u8..=255) {
            let (t, _) = sample(10, 2);
            let mut b = t.encode(SECRET).unwrap();
            b[pos] = b[pos].wrapping_add(delta);
            prop_assert!(BootToken::verify(&b, SECRET, 3, 0).is_err());
        }
    }
}
