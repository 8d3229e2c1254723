//! The result record the loader sends back before closing the connection (spec:
//! docs/inflate-loader.md "Result record"). Fixed 256 bytes, little-endian.

pub const RECORD_LEN: usize = 256;
pub const MAGIC: [u8; 4] = *b"ILRR";
pub const VERSION: u16 = 1;
pub const MSG_MAX: usize = RECORD_LEN - 32;

/// The source's decision after a `ready` record (8 bytes on the same connection).
pub const COMMIT: [u8; 8] = *b"COMMIT\0\0";
pub const ABORT: [u8; 8] = *b"ABORT\0\0\0";

/// What the source sent after `ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Commit,
    /// `ABORT`, or any other 8 bytes: the loader discards the guest.
    Abort,
}

impl Decision {
    pub fn decode(b: &[u8; 8]) -> Decision {
        if *b == COMMIT {
            Decision::Commit
        } else {
            Decision::Abort
        }
    }
    pub fn bytes(self) -> [u8; 8] {
        match self {
            Decision::Commit => COMMIT,
            Decision::Abort => ABORT,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Status {
    /// Every page placed, digest verified.
    Ok = 0,
    /// The connection closed before the end record.
    Truncated = 1,
    /// The stream decoder rejected the bytes (framing, checksum, unknown type...).
    Corrupt = 2,
    /// The stream describes more memory than the loader has free.
    TooLarge = 3,
    /// The end-to-end digest did not match the pages received.
    DigestMismatch = 4,
    /// Another connection is already being served (or was served): refused.
    Busy = 5,
    /// A page named a pfn outside the header's range.
    PfnOutOfRange = 6,
    /// The loader failed for a reason of its own.
    Internal = 7,
    /// A real capture: digest verified over the placed frames and every restore check before
    /// the point of no return passed. The loader now waits for `COMMIT` or `ABORT`.
    Ready = 8,
    /// A verified capture that cannot become a guest in this domain; the message says why.
    Unrestorable = 9,
}

impl Status {
    pub fn from_u16(v: u16) -> Option<Status> {
        use Status::*;
        Some(match v {
            0 => Ok,
            1 => Truncated,
            2 => Corrupt,
            3 => TooLarge,
            4 => DigestMismatch,
            5 => Busy,
            6 => PfnOutOfRange,
            7 => Internal,
            8 => Ready,
            9 => Unrestorable,
            _ => return None,
        })
    }
    /// The status whose `name` is `s`.
    pub fn from_name(s: &str) -> Option<Status> {
        (0..=9)
            .filter_map(Status::from_u16)
            .find(|st| st.name() == s)
    }

    pub fn name(self) -> &'static str {
        use Status::*;
        match self {
            Ok => "ok",
            Truncated => "truncated",
            Corrupt => "corrupt",
            TooLarge => "too-large",
            DigestMismatch => "digest-mismatch",
            Busy => "busy",
            PfnOutOfRange => "pfn-out-of-range",
            Internal => "internal",
            Ready => "ready",
            Unrestorable => "unrestorable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultRecord {
    pub status: Status,
    /// Distinct guest pages placed into loader frames.
    pub pages: u64,
    /// Stream bytes received on the connection.
    pub bytes: u64,
    /// Receive time in microseconds, connection accepted to end record (or failure).
    pub micros: u64,
    /// Human-readable detail, UTF-8, at most MSG_MAX bytes (longer is cut at a char boundary).
    msg: [u8; MSG_MAX],
    msg_len: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    Short,
    BadMagic,
    BadVersion(u16),
    BadStatus(u16),
    BadMessage,
}

impl ResultRecord {
    pub fn new(status: Status, pages: u64, bytes: u64, micros: u64, msg: &str) -> Self {
        let mut n = msg.len().min(MSG_MAX);
        while !msg.is_char_boundary(n) {
            n -= 1;
        }
        let mut m = [0u8; MSG_MAX];
        m[..n].copy_from_slice(&msg.as_bytes()[..n]);
        ResultRecord {
            status,
            pages,
            bytes,
            micros,
            msg: m,
            msg_len: n as u16,
        }
    }

    pub fn message(&self) -> &str {
        core::str::from_utf8(&self.msg[..self.msg_len as usize]).unwrap_or("")
    }

    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&(self.status as u16).to_le_bytes());
        b[8..16].copy_from_slice(&self.pages.to_le_bytes());
        b[16..24].copy_from_slice(&self.bytes.to_le_bytes());
        b[24..30].copy_from_slice(&self.micros.to_le_bytes()[..6]);
        b[30..32].copy_from_slice(&self.msg_len.to_le_bytes());
        b[32..].copy_from_slice(&self.msg);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < RECORD_LEN {
            return Err(DecodeError::Short);
        }
        if b[0..4] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let v = u16::from_le_bytes([b[4], b[5]]);
        if v != VERSION {
            return Err(DecodeError::BadVersion(v));
        }
        let s = u16::from_le_bytes([b[6], b[7]]);
        let status = Status::from_u16(s).ok_or(DecodeError::BadStatus(s))?;
        let u64at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let mut m6 = [0u8; 8];
        m6[..6].copy_from_slice(&b[24..30]);
        let msg_len = u16::from_le_bytes([b[30], b[31]]);
        if msg_len as usize > MSG_MAX
            || core::str::from_utf8(&b[32..32 + msg_len as usize]).is_err()
        {
            return Err(DecodeError::BadMessage);
        }
        let mut msg = [0u8; MSG_MAX];
        msg.copy_from_slice(&b[32..RECORD_LEN]);
        Ok(ResultRecord {
            status,
            pages: u64at(8),
            bytes: u64at(16),
            micros: u64::from_le_bytes(m6),
            msg,
            msg_len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let r = ResultRecord::new(
            Status::DigestMismatch,
            1234,
            5_000_000,
            42_000_000,
            "digest mismatch: got ab, want cd",
        );
        let b = r.encode();
        assert_eq!(&b[0..4], b"ILRR");
        assert_eq!(ResultRecord::decode(&b).unwrap(), r);
        assert_eq!(
            ResultRecord::decode(&b).unwrap().message(),
            "digest mismatch: got ab, want cd"
        );
    }

    #[test]
    fn long_message_cut_at_char_boundary() {
        let s = "é".repeat(200);
        let r = ResultRecord::new(Status::Ok, 0, 0, 0, &s);
        assert!(r.message().len() <= MSG_MAX);
        assert_eq!(r.message().len() % 2, 0);
        assert_eq!(
            ResultRecord::decode(&r.encode()).unwrap().message(),
            r.message()
        );
    }

    #[test]
    fn restore_statuses_and_decisions() {
        for (st, v, n) in [
            (Status::Ready, 8, "ready"),
            (Status::Unrestorable, 9, "unrestorable"),
        ] {
            let b = ResultRecord::new(st, 5, 6, 7, "m").encode();
            assert_eq!(u16::from_le_bytes([b[6], b[7]]), v);
            assert_eq!(ResultRecord::decode(&b).unwrap().status, st);
            assert_eq!(st.name(), n);
            assert_eq!(Status::from_name(n), Some(st));
        }
        assert_eq!(Status::from_u16(10), None);
        assert_eq!(Status::from_name("too-large"), Some(Status::TooLarge));
        assert_eq!(&COMMIT, b"COMMIT\0\0");
        assert_eq!(&ABORT, b"ABORT\0\0\0");
        assert_eq!(Decision::decode(&COMMIT), Decision::Commit);
        assert_eq!(Decision::decode(&ABORT), Decision::Abort);
        assert_eq!(Decision::decode(b"COMMIT\0\x01"), Decision::Abort);
        assert_eq!(Decision::Commit.bytes(), COMMIT);
    }

    #[test]
    fn rejects_garbage() {
        let mut b = ResultRecord::new(Status::Ok, 1, 2, 3, "x").encode();
        assert_eq!(ResultRecord::decode(&b[..100]), Err(DecodeError::Short));
        b[6] = 99;
        assert_eq!(ResultRecord::decode(&b), Err(DecodeError::BadStatus(99)));
        b[0] = b'X';
        assert_eq!(ResultRecord::decode(&b), Err(DecodeError::BadMagic));
    }
}
