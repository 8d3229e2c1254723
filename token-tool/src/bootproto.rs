//! The boot-token exchange between a customer and packetd (docs/packetd.md): the request is an
//! ICMP echo request whose payload is a boot token; the answer is an ICMP echo reply whose
//! payload is a [`BootReply`] (52 bytes). Both ends use these functions, so the layout has one
//! definition. Nothing here panics or allocates on bad input.

use crate::error::TokenError;
use crate::node::LedgerError;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_HEADER_LEN: usize = 8;
/// Largest IPv4 packet packetd reads: a 1500-byte frame's payload.
pub const IP_PACKET_MAX: usize = 1500;

pub const REPLY_MAGIC: [u8; 4] = *b"LMBR";
pub const REPLY_VERSION: u8 = 1;
pub const REPLY_LEN: usize = 52;

/// Reason codes on the wire (byte 6 of a reply); the index is the code. The names are the
/// token library's refusal codes plus packetd's own.
pub const REASONS: [&str; 19] = [
    "ok",
    "truncated",
    "oversized",
    "bad-magic",
    "unsupported-version",
    "too-many-extents",
    "invalid-field",
    "wrong-node",
    "bad-mac",
    "expired",
    "anchor-mismatch",
    "boot-token-reused",
    "rate-limited",
    "over-limit",
    "node-full",
    "create-failed",
    "ledger-failure",
    "unknown-job",
    "job-open",
];

const REASON_INVALID_FIELD: u8 = 6;

/// Reason code of a refusal name (None for a name that has no code).
pub fn reason_code(name: &str) -> Option<u8> {
    REASONS.iter().position(|r| *r == name).map(|i| i as u8)
}

/// What the node did with the token (byte 5 of a reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// The loader domain exists; address, port and domid are set.
    Accepted = 0,
    /// The token is not acceptable here; sending it again will not help.
    Refused = 1,
    /// Not now (node full); the token was not used, try again later.
    Later = 2,
    /// The node failed after accepting the token (e.g. `xl create`); the job is closed and its
    /// tokens are on a redemption certificate.
    Failed = 3,
}

/// The payload of packetd's echo reply.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BootReply {
    pub status: Status,
    /// Index into [`REASONS`]; 0 exactly when accepted.
    pub reason: u8,
    pub job_id: u64,
    pub addr: [u8; 4],
    pub port: u16,
    pub domid: u32,
    pub balance: u32,
    /// The last 20 bytes of the request's payload (the token's MAC), so a customer can tell
    /// the answer to its token from any other; zeros if the payload was shorter.
    #[serde(with = "crate::wire::hex20")]
    pub echo: [u8; 20],
}

impl BootReply {
    /// An answer that names no domain (refused, later, failed): `reason` is a name in
    /// [`REASONS`]; a name without a code goes out as `invalid-field`.
    pub fn answer(status: Status, reason: &str, job_id: u64, echo: [u8; 20]) -> BootReply {
        let reason = reason_code(reason).unwrap_or(REASON_INVALID_FIELD);
        let (addr, port, domid, balance) = ([0; 4], 0, 0, 0);
        BootReply {
            status,
            reason,
            job_id,
            addr,
            port,
            domid,
            balance,
            echo,
        }
    }

    /// The answer for a running loader domain: where to upload, its domid and the balance
    /// (saturated to 32 bits).
    pub fn accepted(
        job_id: u64,
        echo: [u8; 20],
        at: ([u8; 4], u16),
        domid: u32,
        balance: u64,
    ) -> BootReply {
        let balance = balance.min(u32::MAX as u64) as u32;
        let (addr, port) = at;
        let ok = Self::answer(Status::Accepted, "ok", job_id, echo);
        BootReply {
            addr,
            port,
            domid,
            balance,
            ..ok
        }
    }

    /// The answer to a boot token the ledger did not take: refused with the token's refusal
    /// code, or failed (`ledger-failure`) when the node could not keep its ledger.
    pub fn not_taken(e: &LedgerError, job_id: u64, echo: [u8; 20]) -> BootReply {
        match e.is_refusal() {
            true => Self::answer(Status::Refused, e.code(), job_id, echo),
            false => Self::answer(Status::Failed, "ledger-failure", job_id, echo),
        }
    }

    pub fn reason_name(&self) -> &'static str {
        REASONS.get(self.reason as usize).copied().unwrap_or("?")
    }

    pub fn encode(&self) -> [u8; REPLY_LEN] {
        let mut b = [0u8; REPLY_LEN];
        b[0..4].copy_from_slice(&REPLY_MAGIC);
        b[4] = REPLY_VERSION;
        b[5] = self.status as u8;
        b[6] = self.reason;
        b[8..16].copy_from_slice(&self.job_id.to_be_bytes());
        b[16..20].copy_from_slice(&self.addr);
        b[20..22].copy_from_slice(&self.port.to_be_bytes());
        b[24..28].copy_from_slice(&self.domid.to_be_bytes());
        b[28..32].copy_from_slice(&self.balance.to_be_bytes());
        b[32..52].copy_from_slice(&self.echo);
        b
    }

    pub fn decode(b: &[u8]) -> Result<BootReply, TokenError> {
        const WHAT: &str = "boot reply";
        let invalid = |field, reason| TokenError::InvalidField { field, reason };
        let b: &[u8; REPLY_LEN] = match b.len() {
            n if n < 4 || b[..4] != REPLY_MAGIC => {
                let mut found = [0u8; 4];
                found[..n.min(4)].copy_from_slice(&b[..n.min(4)]);
                return Err(TokenError::BadMagic { what: WHAT, found });
            }
            n if n < REPLY_LEN => {
                return Err(TokenError::Truncated {
                    what: WHAT,
                    need: REPLY_LEN,
                    got: n,
                })
            }
            n if n > REPLY_LEN => {
                return Err(TokenError::Oversized {
                    what: WHAT,
                    max: REPLY_LEN,
                    got: n,
                })
            }
            _ => b
                .try_into()
                .map_err(|_| invalid("length", "not 52 bytes"))?,
        };
        if b[4] != REPLY_VERSION {
            return Err(TokenError::UnsupportedVersion {
                what: WHAT,
                found: b[4],
            });
        }
        let status = match b[5] {
            0 => Status::Accepted,
            1 => Status::Refused,
            2 => Status::Later,
            3 => Status::Failed,
            _ => return Err(invalid("status", "unknown")),
        };
        let reason = b[6];
        if reason as usize >= REASONS.len() {
            return Err(invalid("reason", "unknown"));
        }
        if (status == Status::Accepted) != (reason == 0) {
            return Err(invalid("reason", "must be 0 exactly when accepted"));
        }
        if b[7] != 0 || b[22..24] != [0, 0] {
            return Err(invalid("reserved", "must be zero"));
        }
        let be32 = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut job = [0u8; 8];
        job.copy_from_slice(&b[8..16]);
        let mut echo = [0u8; 20];
        echo.copy_from_slice(&b[32..52]);
        Ok(BootReply {
            status,
            reason,
            job_id: u64::from_be_bytes(job),
            addr: [b[16], b[17], b[18], b[19]],
            port: u16::from_be_bytes([b[20], b[21]]),
            domid: be32(24),
            balance: be32(28),
            echo,
        })
    }
}

/// A certificate query (docs/packetd.md §2.1): the payload of an echo request that asks a
/// node for the redemption certificate of a closed job. 16 bytes: magic `LMCQ`, version 1,
/// three zero bytes, the job id (big-endian). The answer's payload is the certificate itself
/// (docs/tokens.md §2.3, magic `LMRC`), or a [`BootReply`]: later/`job-open` while the job
/// runs, refused/`unknown-job` when the node has no certificate for it.
pub const CERT_QUERY_MAGIC: [u8; 4] = *b"LMCQ";
pub const CERT_QUERY_LEN: usize = 16;

pub fn cert_query(job_id: u64) -> [u8; CERT_QUERY_LEN] {
    let mut q = [0u8; CERT_QUERY_LEN];
    q[..4].copy_from_slice(&CERT_QUERY_MAGIC);
    q[4] = 1;
    q[8..].copy_from_slice(&job_id.to_be_bytes());
    q
}

/// The answer to a certificate query for `job_id`, from what the node kept for the job
/// ([`NodeLedger::kept_certificate`](crate::node::NodeLedger::kept_certificate)): the
/// certificate itself, later/`job-open` while the job runs, refused with any other reason.
pub fn cert_query_answer(job_id: u64, kept: Result<Vec<u8>, &str>) -> Vec<u8> {
    kept.unwrap_or_else(|why| {
        let status = if why == "job-open" {
            Status::Later
        } else {
            Status::Refused
        };
        BootReply::answer(status, why, job_id, [0; 20])
            .encode()
            .to_vec()
    })
}

/// The job id of a well-formed certificate query, else None.
pub fn parse_cert_query(p: &[u8]) -> Option<u64> {
    let q: &[u8; CERT_QUERY_LEN] = p.try_into().ok()?;
    let ok = q[..4] == CERT_QUERY_MAGIC && q[4..8] == [1, 0, 0, 0];
    ok.then(|| u64::from_be_bytes([q[8], q[9], q[10], q[11], q[12], q[13], q[14], q[15]]))
}

/// The last 20 bytes of a request payload, zero-filled when it is shorter.
pub fn echo_of(payload: &[u8]) -> [u8; 20] {
    let mut e = [0u8; 20];
    if payload.len() >= 20 {
        e.copy_from_slice(&payload[payload.len() - 20..]);
    }
    e
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u32) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Write an ICMP echo message (`kind` request or reply) into `out`; returns its length, or
/// None when `out` is too small.
pub fn write_echo(kind: u8, id: u16, seq: u16, payload: &[u8], out: &mut [u8]) -> Option<usize> {
    let n = ICMP_HEADER_LEN + payload.len();
    let msg = out.get_mut(..n)?;
    msg[0] = kind;
    msg[1] = 0;
    msg[2..4].fill(0);
    msg[4..6].copy_from_slice(&id.to_be_bytes());
    msg[6..8].copy_from_slice(&seq.to_be_bytes());
    msg[8..].copy_from_slice(payload);
    let c = inet_checksum(msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    Some(n)
}

/// An ICMP echo message found in an IPv4 packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Echo<'a> {
    pub src: [u8; 4],
    pub kind: u8,
    pub id: u16,
    pub seq: u16,
    pub payload: &'a [u8],
}

/// Parse an IPv4 packet as a raw ICMP socket delivers it (IP header first). Returns None for
/// anything that is not a well-formed, unfragmented ICMP echo request or reply with a correct
/// checksum.
pub fn parse_echo(pkt: &[u8]) -> Option<Echo<'_>> {
    let &vihl = pkt.first()?;
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < 20 || pkt.len() < ihl + ICMP_HEADER_LEN {
        return None;
    }
    let total = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
    let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
    // More-fragments set or a non-zero offset: not a whole datagram.
    if frag & 0x3fff != 0 || pkt[9] != 1 || total < ihl + ICMP_HEADER_LEN || total > pkt.len() {
        return None;
    }
    let icmp = &pkt[ihl..total];
    if (icmp[0] != ICMP_ECHO_REQUEST && icmp[0] != ICMP_ECHO_REPLY) || icmp[1] != 0 {
        return None;
    }
    if inet_checksum(icmp) != 0 {
        return None;
    }
    Some(Echo {
        src: [pkt[12], pkt[13], pkt[14], pkt[15]],
        kind: icmp[0],
        id: u16::from_be_bytes([icmp[4], icmp[5]]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
        payload: &icmp[ICMP_HEADER_LEN..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> BootReply {
        BootReply {
            status: Status::Accepted,
            reason: 0,
            job_id: 42,
            addr: [10, 0, 0, 120],
            port: 7000,
            domid: 5,
            balance: 10,
            echo: [0xab; 20],
        }
    }

    #[test]
    fn reply_roundtrip_and_refusals() {
        let r = sample();
        let b = r.encode();
        assert_eq!(BootReply::decode(&b).unwrap(), r);
        assert_eq!(BootReply::decode(&b[..51]).unwrap_err().code(), "truncated");
        assert_eq!(
            BootReply::decode(&[b.as_slice(), &[0]].concat())
                .unwrap_err()
                .code(),
            "oversized"
        );
        assert_eq!(BootReply::decode(b"LM").unwrap_err().code(), "bad-magic");
        let mut bad = b;
        bad[6] = 8; // accepted with a reason
        assert_eq!(BootReply::decode(&bad).unwrap_err().code(), "invalid-field");
        bad[5] = 1;
        assert_eq!(BootReply::decode(&bad).unwrap().reason_name(), "bad-mac");
        bad[6] = REASONS.len() as u8;
        assert_eq!(BootReply::decode(&bad).unwrap_err().code(), "invalid-field");
    }

    #[test]
    fn answers_carry_their_reason_code() {
        let r = BootReply::answer(Status::Later, "node-full", 7, [1; 20]);
        let d = BootReply::decode(&r.encode()).unwrap();
        assert_eq!(
            (d.status, d.reason_name(), d.job_id, d.echo),
            (Status::Later, "node-full", 7, [1; 20])
        );
        assert_eq!((d.addr, d.port, d.domid, d.balance), ([0; 4], 0, 0, 0));
        // A refusal code that has no reason on the wire (a top-up's, say) still decodes.
        let r = BootReply::answer(Status::Refused, "replay", 7, [0; 20]);
        assert_eq!(
            BootReply::decode(&r.encode()).unwrap().reason_name(),
            "invalid-field"
        );
        let a = BootReply::accepted(42, [0xab; 20], ([10, 0, 0, 120], 7000), 5, 10);
        assert_eq!(a, sample());
        let rich = BootReply::accepted(42, [0; 20], ([0; 4], 0), 5, u64::MAX);
        assert_eq!(BootReply::decode(&rich.encode()).unwrap().balance, u32::MAX);
    }

    #[test]
    fn every_token_refusal_of_a_boot_token_has_a_code() {
        for name in [
            "truncated",
            "oversized",
            "bad-magic",
            "unsupported-version",
            "too-many-extents",
            "invalid-field",
            "wrong-node",
            "bad-mac",
            "expired",
            "anchor-mismatch",
            "boot-token-reused",
        ] {
            assert!(reason_code(name).is_some(), "{name}");
        }
    }

    #[test]
    fn echo_roundtrip_through_an_ip_header() {
        let mut icmp = [0u8; 100];
        let n = write_echo(ICMP_ECHO_REQUEST, 0x1234, 7, b"hello", &mut icmp).unwrap();
        let mut pkt = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        pkt.extend_from_slice(&icmp[..n]);
        let total = pkt.len() as u16;
        pkt[2..4].copy_from_slice(&total.to_be_bytes());
        let e = parse_echo(&pkt).unwrap();
        assert_eq!(
            (e.src, e.kind, e.id, e.seq, e.payload),
            ([10, 0, 0, 2], 8, 0x1234, 7, &b"hello"[..])
        );
        pkt[25] ^= 1; // corrupt the checksum
        assert!(parse_echo(&pkt).is_none());
        assert!(write_echo(0, 0, 0, &[0; 100], &mut icmp).is_none());
    }

    #[test]
    fn cert_query_roundtrip() {
        let q = cert_query(0x0102_0304_0506_0708);
        assert_eq!(&q[..8], b"LMCQ\x01\0\0\0");
        assert_eq!(parse_cert_query(&q), Some(0x0102_0304_0506_0708));
        assert_eq!(parse_cert_query(&q[..15]), None);
        let mut v2 = q;
        v2[4] = 2;
        assert_eq!(parse_cert_query(&v2), None);
    }

    #[test]
    fn cert_query_answers() {
        assert_eq!(cert_query_answer(3, Ok(b"LMRC...".to_vec())), b"LMRC...");
        let open = BootReply::decode(&cert_query_answer(3, Err("job-open"))).unwrap();
        assert_eq!(
            (open.status, open.reason_name(), open.job_id),
            (Status::Later, "job-open", 3)
        );
        let none = BootReply::decode(&cert_query_answer(4, Err("unknown-job"))).unwrap();
        assert_eq!(
            (none.status, none.reason_name()),
            (Status::Refused, "unknown-job")
        );
    }

    #[test]
    fn a_boot_token_not_taken_is_refused_or_failed() {
        let reused = LedgerError::Token(TokenError::BootTokenReused { job: 5 });
        let r = BootReply::not_taken(&reused, 5, [2; 20]);
        assert_eq!(
            (r.status, r.reason_name(), r.echo),
            (Status::Refused, "boot-token-reused", [2; 20])
        );
        let io = std::io::Error::other("disk full");
        let broken = LedgerError::Io {
            path: "ledger.json".into(),
            source: io,
        };
        let r = BootReply::not_taken(&broken, 5, [2; 20]);
        assert_eq!(
            (r.status, r.reason_name()),
            (Status::Failed, "ledger-failure")
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_cert_query(&bytes);
            let _ = parse_echo(&bytes);
            let _ = BootReply::decode(&bytes);
        }
    }
}
