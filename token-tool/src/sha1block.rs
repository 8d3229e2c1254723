//! SHA-1 straight through its compression function, for the two fixed shapes a node checks:
//! a chain step (a 20-byte message is exactly one padded block) and an HMAC whose key pads
//! were hashed once. No hasher object, no buffering, no allocation.
//!
//! On x86-64 with the SHA extensions (checked per call; std caches the answer) the state stays
//! in vector registers from the first block to the last: a chain step's output registers are
//! the next step's message registers as they are, and the inner digest of an HMAC is the outer
//! block's message the same way. So a check costs its compressions and little else.
//! Elsewhere the `sha1` crate's compression function does the work. Tests compare both paths
//! with the `sha1` and `hmac` crates.

use sha1::digest::{consts::U64, generic_array::GenericArray};

pub(crate) type State = [u32; 5];
pub(crate) const IV: State = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0];

fn shani() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("sha")
        && std::arch::is_x86_feature_detected!("sse4.1");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Compress whole 64-byte blocks (`blocks.len()` a multiple of 64; a tail is ignored).
pub(crate) fn compress(state: &mut State, blocks: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    if shani() {
        // SAFETY: the CPU has the SHA extensions and SSE4.1 (checked just above).
        unsafe { ni::compress(state, blocks) };
        return;
    }
    soft_compress(state, blocks)
}

fn soft_compress(state: &mut State, blocks: &[u8]) {
    for b in blocks.chunks_exact(64) {
        sha1::compress(
            state,
            core::slice::from_ref(GenericArray::<u8, U64>::from_slice(b)),
        );
    }
}

/// The last block(s) of a message of `total` bytes whose unhashed rest is `tail` (< 64
/// bytes): tail, 0x80, zeros, the length in bits. Returns the buffer and its used length.
fn pad(tail: &[u8], total: u64) -> ([u8; 128], usize) {
    let mut last = [0u8; 128];
    last[..tail.len()].copy_from_slice(tail);
    last[tail.len()] = 0x80;
    let n = if tail.len() < 56 { 64 } else { 128 };
    last[n - 8..n].copy_from_slice(&total.wrapping_mul(8).to_be_bytes());
    (last, n)
}

/// Finish a message with the portable compression: `state` has absorbed `prefix_len` bytes
/// (a multiple of 64), `data` is the rest. Returns the digest.
fn soft_finish(mut state: State, prefix_len: u64, data: &[u8]) -> [u8; 20] {
    let full = data.len() & !63;
    soft_compress(&mut state, &data[..full]);
    let (last, n) = pad(&data[full..], prefix_len + data.len() as u64);
    soft_compress(&mut state, &last[..n]);
    digest(&state)
}

fn digest(state: &State) -> [u8; 20] {
    let mut out = [0u8; 20];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// HMAC-SHA1 of `data` from the key's two pad states (the state after the block key ^ ipad,
/// and after key ^ opad): the message blocks, then one outer block.
pub(crate) fn mac(inner: &State, outer: &State, data: &[u8]) -> [u8; 20] {
    #[cfg(target_arch = "x86_64")]
    if shani() {
        // SAFETY: the CPU has the SHA extensions and SSE4.1 (checked just above).
        return unsafe { ni::mac(inner, outer, data) };
    }
    soft_mac(inner, outer, data)
}

fn soft_mac(inner: &State, outer: &State, data: &[u8]) -> [u8; 20] {
    soft_finish(*outer, 64, &soft_finish(*inner, 64, data))
}

/// f^k(v), f = SHA-1 of a 20-byte value: k compressions.
pub fn walk(v: &[u8; 20], k: u64) -> [u8; 20] {
    #[cfg(target_arch = "x86_64")]
    if shani() {
        // SAFETY: the CPU has the SHA extensions and SSE4.1 (checked just above).
        return unsafe { ni::walk(v, k) };
    }
    soft_walk(v, k)
}

fn soft_walk(v: &[u8; 20], k: u64) -> [u8; 20] {
    let mut x = *v;
    for _ in 0..k {
        x = soft_finish(IV, 0, &x);
    }
    x
}

/// The SHA extensions (SHA1RNDS4 does 4 rounds; SHA1NEXTE derives the next E from the A four
/// rounds back; SHA1MSG1/2 extend the message schedule). Lane 3 holds A, or E, or W[4j].
#[cfg(target_arch = "x86_64")]
mod ni {
    use core::arch::x86_64::*;

    use super::State;

    /// A state as registers: A..D in lanes 3..0, E in lane 3 (lanes 0-2 zero).
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn load_state(s: &State) -> (__m128i, __m128i) {
        let s = s.map(|w| w as i32);
        (
            _mm_set_epi32(s[0], s[1], s[2], s[3]),
            _mm_set_epi32(s[4], 0, 0, 0),
        )
    }

    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn state(abcd: __m128i, e: __m128i) -> State {
        [
            _mm_extract_epi32::<3>(abcd),
            _mm_extract_epi32::<2>(abcd),
            _mm_extract_epi32::<1>(abcd),
            _mm_extract_epi32::<0>(abcd),
            _mm_extract_epi32::<3>(e),
        ]
        .map(|w| w as u32)
    }

    /// A 64-byte block's 16 big-endian words, W[4j] in lane 3 of m[j].
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn load(b: &[u8]) -> [__m128i; 4] {
        assert!(b.len() >= 64);
        // Reversing all 16 bytes turns four big-endian words into lanes 3..0.
        let rev = _mm_set_epi64x(0x0001_0203_0405_0607, 0x0809_0a0b_0c0d_0e0f);
        [0usize, 16, 32, 48].map(|o| {
            // SAFETY: o + 16 <= 64 <= b.len(); loadu takes any alignment.
            let x = unsafe { _mm_loadu_si128(b.as_ptr().add(o).cast()) };
            _mm_shuffle_epi8(x, rev)
        })
    }

    /// One compression: `abcd` and `e` (as [`load_state`] makes them) absorb the 16 message
    /// words in `m`.
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn block(abcd: __m128i, e: __m128i, mut m: [__m128i; 4]) -> (__m128i, __m128i) {
        let (mut x, mut prev) = (abcd, abcd);
        // Rounds 4g..4g+4 with round function f; W for g >= 4 from the four groups before.
        macro_rules! group {
            ($g:literal, $f:literal) => {{
                if $g >= 4 {
                    let t = _mm_sha1msg1_epu32(m[$g % 4], m[($g + 1) % 4]);
                    let t = _mm_xor_si128(t, m[($g + 2) % 4]);
                    m[$g % 4] = _mm_sha1msg2_epu32(t, m[($g + 3) % 4]);
                }
                let ew = if $g == 0 {
                    _mm_add_epi32(e, m[0])
                } else {
                    _mm_sha1nexte_epu32(prev, m[$g % 4])
                };
                prev = x;
                x = _mm_sha1rnds4_epu32::<$f>(x, ew);
            }};
        }
        group!(0, 0);
        group!(1, 0);
        group!(2, 0);
        group!(3, 0);
        group!(4, 0);
        group!(5, 1);
        group!(6, 1);
        group!(7, 1);
        group!(8, 1);
        group!(9, 1);
        group!(10, 2);
        group!(11, 2);
        group!(12, 2);
        group!(13, 2);
        group!(14, 2);
        group!(15, 3);
        group!(16, 3);
        group!(17, 3);
        group!(18, 3);
        group!(19, 3);
        (_mm_add_epi32(x, abcd), _mm_sha1nexte_epu32(prev, e))
    }

    /// The message of a 20-byte input whose digest is in `abcd`, `e`: W0..W4 = H0..H4 lane
    /// for lane, W5 = the 0x80 padding byte, W15 = the length in bits.
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn digest_message(abcd: __m128i, e: __m128i, bits: i32) -> [__m128i; 4] {
        let pad = _mm_set_epi32(0, i32::MIN, 0, 0);
        [
            abcd,
            _mm_or_si128(e, pad),
            _mm_setzero_si128(),
            _mm_set_epi32(0, 0, 0, bits),
        ]
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) fn compress(s: &mut State, blocks: &[u8]) {
        let (mut abcd, mut e) = load_state(s);
        for b in blocks.chunks_exact(64) {
            (abcd, e) = block(abcd, e, load(b));
        }
        *s = state(abcd, e);
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) fn mac(inner: &State, outer: &State, data: &[u8]) -> [u8; 20] {
        let (mut abcd, mut e) = load_state(inner);
        let full = data.len() & !63;
        for b in data[..full].chunks_exact(64) {
            (abcd, e) = block(abcd, e, load(b));
        }
        let (last, n) = super::pad(&data[full..], 64 + data.len() as u64);
        for b in last[..n].chunks_exact(64) {
            (abcd, e) = block(abcd, e, load(b));
        }
        // The outer message: the 20-byte inner digest after the 64-byte opad block.
        let (oa, oe) = load_state(outer);
        let (abcd, e) = block(oa, oe, digest_message(abcd, e, (64 + 20) * 8));
        super::digest(&state(abcd, e))
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) fn walk(v: &[u8; 20], k: u64) -> [u8; 20] {
        let (iv_abcd, iv_e) = load_state(&super::IV);
        let mut b = [0u8; 64];
        b[..20].copy_from_slice(v);
        let [w0, w1, ..] = load(&b);
        let (mut abcd, mut e) = (w0, _mm_and_si128(w1, _mm_set_epi32(-1, 0, 0, 0)));
        for _ in 0..k {
            // The digest is the next step's message as it is.
            (abcd, e) = block(iv_abcd, iv_e, digest_message(abcd, e, 20 * 8));
        }
        super::digest(&state(abcd, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sha1::{Digest, Sha1};

    fn reference_walk(v: &[u8; 20], k: u64) -> [u8; 20] {
        let mut x = *v;
        for _ in 0..k {
            x = Sha1::digest(x).into();
        }
        x
    }

    #[test]
    fn walk_of_known_value() {
        // SHA-1("") is not reachable from a 20-byte value; SHA-1 of 20 zero bytes is.
        let z = [0u8; 20];
        assert_eq!(walk(&z, 0), z);
        assert_eq!(
            crate::to_hex(&walk(&z, 1)),
            "6768033e216468247bd031a0a2d9876d79818f8f"
        );
    }

    proptest! {
        #[test]
        fn walk_matches_the_hasher(v in any::<[u8; 20]>(), k in 0u64..40) {
            prop_assert_eq!(walk(&v, k), reference_walk(&v, k));
            prop_assert_eq!(soft_walk(&v, k), reference_walk(&v, k));
        }

        #[test]
        fn mac_matches_hmac(key in proptest::collection::vec(any::<u8>(), 0..=64), data in proptest::collection::vec(any::<u8>(), 0..400)) {
            use hmac::{Hmac, Mac};
            let mut m = Hmac::<sha1::Sha1>::new_from_slice(&key).unwrap();
            m.update(&data);
            let want: [u8; 20] = m.finalize().into_bytes().into();
            let pads = [0x36u8, 0x5c].map(|x| {
                let mut b = [x; 64];
                b.iter_mut().zip(&key).for_each(|(b, k)| *b ^= k);
                let (mut s, mut t) = (IV, IV);
                compress(&mut s, &b);
                soft_compress(&mut t, &b);
                assert_eq!(s, t);
                s
            });
            prop_assert_eq!(mac(&pads[0], &pads[1], &data), want);
            prop_assert_eq!(soft_mac(&pads[0], &pads[1], &data), want);
        }
    }
}
