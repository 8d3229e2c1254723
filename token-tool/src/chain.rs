//! One-way hash chains: s(0) = seed, s(i+1) = SHA-1(s(i)), anchor = s(n).
//!
//! The broker must hand out s(n-k) for any k without holding a million values in memory.
//! [`Chain`] keeps the seed plus a checkpoint every `step` values (step = ceil(sqrt(n)) by
//! default): memory is (n/step + 1) * 20 bytes (about 20 KB for n = 10^6) and s(i) costs at
//! most step - 1 hashes from the checkpoint below it (about 1000, well under a millisecond).
//! Minting costs n hashes once. A smaller step trades memory for faster look-ups.

use sha1::{Digest, Sha1};

use crate::error::TokenError;

pub const VALUE_LEN: usize = 20;
pub type Value = [u8; VALUE_LEN];

/// Largest chain the broker mints (bounds memory and minting time).
pub const MAX_CHAIN_LEN: u64 = 1 << 26;

/// f(v) = SHA-1(v).
#[inline]
pub fn f(v: &Value) -> Value {
    Sha1::digest(v).into()
}

/// f^k(v). A 20-byte message is one padded SHA-1 block, so each step is exactly one call of
/// the compression function (`sha1block::walk`): k compressions in all. `f` stays the
/// reference the tests compare against.
pub fn iterate(v: &Value, k: u64) -> Value {
    crate::sha1block::walk(v, k)
}

/// A chain represented by its checkpoints; `checkpoints[j]` = s(j * step), `checkpoints[0]`
/// is the seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    len: u64,
    step: u64,
    checkpoints: Vec<Value>,
    anchor: Value,
}

impl Chain {
    /// Default checkpoint spacing: ceil(sqrt(n)), at least 1.
    pub fn default_step(len: u64) -> u64 {
        let mut s = (len as f64).sqrt() as u64;
        while s.saturating_mul(s) < len {
            s += 1;
        }
        s.max(1)
    }

    /// Mint a chain of `len` values after the seed. `progress` is called with the number of
    /// values computed so far, every 65536 values.
    pub fn mint(
        seed: Value,
        len: u64,
        step: u64,
        mut progress: impl FnMut(u64),
    ) -> Result<Chain, TokenError> {
        if len == 0 || len > MAX_CHAIN_LEN {
            return Err(TokenError::InvalidField {
                field: "chain length",
                reason: "must be 1..=2^26",
            });
        }
        if step == 0 || step > len {
            return Err(TokenError::InvalidField {
                field: "checkpoint step",
                reason: "must be 1..=length",
            });
        }
        let mut checkpoints = Vec::with_capacity((len / step + 1) as usize);
        let mut x = seed;
        checkpoints.push(x);
        for i in 1..=len {
            x = f(&x);
            if i % step == 0 {
                checkpoints.push(x);
            }
            if i % 65536 == 0 {
                progress(i);
            }
        }
        progress(len);
        Ok(Chain {
            len,
            step,
            checkpoints,
            anchor: x,
        })
    }

    /// Rebuild from stored parts, checking they are consistent in shape (not re-hashing).
    pub fn from_parts(
        len: u64,
        step: u64,
        checkpoints: Vec<Value>,
        anchor: Value,
    ) -> Result<Chain, TokenError> {
        if len == 0 || len > MAX_CHAIN_LEN || step == 0 || step > len {
            return Err(TokenError::InvalidField {
                field: "chain",
                reason: "bad length or step",
            });
        }
        if checkpoints.len() as u64 != len / step + 1 {
            return Err(TokenError::InvalidField {
                field: "chain",
                reason: "wrong number of checkpoints",
            });
        }
        Ok(Chain {
            len,
            step,
            checkpoints,
            anchor,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn step(&self) -> u64 {
        self.step
    }
    pub fn anchor(&self) -> Value {
        self.anchor
    }
    pub fn checkpoints(&self) -> &[Value] {
        &self.checkpoints
    }

    /// s(i) for 0 <= i <= n, regenerated from the nearest checkpoint below.
    pub fn value(&self, i: u64) -> Option<Value> {
        if i > self.len {
            return None;
        }
        if i == self.len {
            return Some(self.anchor);
        }
        let j = i / self.step;
        let base = self.checkpoints.get(j as usize)?;
        Some(iterate(base, i - j * self.step))
    }

    /// The value released after `released` tokens have been sold: s(n - released).
    pub fn released_value(&self, released: u64) -> Option<Value> {
        self.value(self.len.checked_sub(released)?)
    }

    /// Checkpoints as one blob (for storage).
    pub fn checkpoints_blob(&self) -> Vec<u8> {
        self.checkpoints.iter().flatten().copied().collect()
    }

    /// Split a stored blob back into checkpoints.
    pub fn checkpoints_from_blob(blob: &[u8]) -> Result<Vec<Value>, TokenError> {
        if blob.len() % VALUE_LEN != 0 {
            return Err(TokenError::InvalidField {
                field: "checkpoints",
                reason: "not a multiple of 20 bytes",
            });
        }
        Ok(blob
            .chunks_exact(VALUE_LEN)
            .map(|c| {
                let mut v = [0u8; VALUE_LEN];
                v.copy_from_slice(c);
                v
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(seed: Value, i: u64) -> Value {
        iterate(&seed, i)
    }

    #[test]
    fn sha1_of_known_input() {
        // SHA-1 of 20 zero bytes (FIPS 180 reference implementations agree on this digest).
        let z = [0u8; 20];
        assert_eq!(
            crate::to_hex(&f(&z)),
            "6768033e216468247bd031a0a2d9876d79818f8f"
        );
    }

    #[test]
    fn iterate_equals_repeated_f() {
        let mut x = [7u8; 20];
        for k in 0..40 {
            assert_eq!(iterate(&[7u8; 20], k), x);
            x = f(&x);
        }
    }

    #[test]
    fn mint_rejects_bad_parameters() {
        assert!(Chain::mint([1; 20], 0, 1, |_| {}).is_err());
        assert!(Chain::mint([1; 20], 10, 0, |_| {}).is_err());
        assert!(Chain::mint([1; 20], 10, 11, |_| {}).is_err());
        assert!(Chain::mint([1; 20], MAX_CHAIN_LEN + 1, 1, |_| {}).is_err());
    }

    #[test]
    fn default_step_is_ceil_sqrt() {
        assert_eq!(Chain::default_step(1), 1);
        assert_eq!(Chain::default_step(1_000_000), 1000);
        assert_eq!(Chain::default_step(1_000_001), 1001);
        assert_eq!(Chain::default_step(10), 4);
    }

    #[test]
    fn value_beyond_anchor_is_none() {
        let c = Chain::mint([7; 20], 100, 10, |_| {}).unwrap();
        assert!(c.value(101).is_none());
        assert!(c.released_value(101).is_none());
        assert_eq!(c.released_value(0), Some(c.anchor()));
    }

    proptest! {
        #[test]
        fn checkpointed_value_equals_naive(seed in any::<[u8; 20]>(), len in 1u64..400, step_frac in 0.0f64..1.0, i_frac in 0.0f64..=1.0) {
            let step = 1 + ((len - 1) as f64 * step_frac) as u64;
            let c = Chain::mint(seed, len, step, |_| {}).unwrap();
            let i = (len as f64 * i_frac) as u64;
            prop_assert_eq!(c.value(i).unwrap(), naive(seed, i));
            prop_assert_eq!(c.anchor(), naive(seed, len));
        }

        #[test]
        fn released_values_hash_onto_each_other(seed in any::<[u8; 20]>(), a in 0u64..200, b in 0u64..200) {
            // Selling a tokens then b more: f^b(s(n-a-b)) = s(n-a).
            let c = Chain::mint(seed, 400, 20, |_| {}).unwrap();
            let older = c.released_value(a).unwrap();
            let newer = c.released_value(a + b).unwrap();
            prop_assert_eq!(iterate(&newer, b), older);
            if b > 0 {
                // ...and never in fewer steps (one-wayness gives no shortcut back).
                prop_assert_ne!(iterate(&newer, b - 1), older);
            }
        }

        #[test]
        fn blob_roundtrip(seed in any::<[u8; 20]>(), len in 1u64..300) {
            let c = Chain::mint(seed, len, Chain::default_step(len), |_| {}).unwrap();
            let cps = Chain::checkpoints_from_blob(&c.checkpoints_blob()).unwrap();
            let d = Chain::from_parts(len, c.step(), cps, c.anchor()).unwrap();
            prop_assert_eq!(c, d);
        }
    }

    #[test]
    fn million_value_chain_with_sqrt_checkpoints() {
        let seed = [0x42; 20];
        let c = Chain::mint(seed, 1_000_000, Chain::default_step(1_000_000), |_| {}).unwrap();
        assert_eq!(c.checkpoints().len(), 1001);
        // s(n-10) and s(n-20) as the paper sells them.
        let s10 = c.released_value(10).unwrap();
        let s20 = c.released_value(20).unwrap();
        assert_eq!(iterate(&s10, 10), c.anchor());
        assert_eq!(iterate(&s20, 10), s10);
        // A value right below a checkpoint costs the most: still equals the naive walk.
        assert_eq!(
            c.value(1999).unwrap(),
            iterate(&c.value(1000).unwrap(), 999)
        );
    }
}
