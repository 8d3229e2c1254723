//! Hash-chain payment tokens for the laundromat cluster.
//!
//! The scheme (Evil Man §3.4, MCG §4.2): the broker mints one one-way hash chain
//! s(i+1) = SHA-1(s(i)) per (job, node), signs its anchor s(n) into a boot token under the
//! secret it shares with that node, and sells values s(n-k) little by little. The node trusts
//! the anchor once the HMAC verifies, then accepts each new value that hashes, in at most a
//! bounded number of steps, onto the last one it accepted. Byte formats: docs/tokens.md.
//!
//! Every parser returns a typed [`TokenError`]; nothing here panics on bad input.

pub mod bootproto;
pub mod chain;
pub mod error;
pub mod node;
pub mod ratelimit;
pub mod sha1block;
pub mod wallet;
pub mod wire;

#[cfg(feature = "broker")]
pub mod broker;

mod fsutil;

pub use chain::{Chain, Value, VALUE_LEN};
pub use error::TokenError;
pub use wire::{BootFields, BootToken, Certificate, Extent, NodeKey, TopUp};

/// Decode a hex string (whitespace ignored) into bytes.
pub fn from_hex(s: &str) -> Result<Vec<u8>, TokenError> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return Err(TokenError::BadHex("odd number of hex digits".into()));
    }
    let nib = |c: u8| -> Result<u8, TokenError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(TokenError::BadHex(format!(
                "not a hex digit: {:?}",
                c as char
            ))),
        }
    };
    digits
        .chunks(2)
        .map(|p| Ok((nib(p[0])? << 4) | nib(p[1])?))
        .collect()
}

/// Encode bytes as lowercase hex.
pub fn to_hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

/// Decode exactly 20 bytes of hex (a chain value, a SHA-1 digest).
pub fn value_from_hex(s: &str) -> Result<Value, TokenError> {
    let v = from_hex(s)?;
    v.as_slice()
        .try_into()
        .map_err(|_| TokenError::BadHex(format!("expected 20 bytes, got {}", v.len())))
}

/// Fresh random bytes from the OS.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], TokenError> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(b)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
