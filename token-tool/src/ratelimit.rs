//! A per-source rate limit for a node's ICMP answers (docs/packetd.md): one token bucket per
//! source address in a fixed table, so a flood of sources costs no memory; a new source takes
//! the slot of the one refilled longest ago (an empty slot first).

/// Sources tracked at once.
pub const SOURCES: usize = 64;

pub struct RateLimit {
    /// (source, tokens x 1000, last refill in ms).
    buckets: [([u8; 4], u64, u64); SOURCES],
    per_second: u64,
    /// Tokens x 1000 a bucket holds at most (and a new source starts with).
    burst: u64,
}

impl RateLimit {
    /// `per_second` tokens flow into each source's bucket, which holds at most `burst`.
    pub fn new(per_second: u64, burst: u64) -> RateLimit {
        let burst = burst.saturating_mul(1000);
        RateLimit {
            buckets: [([0; 4], 0, 0); SOURCES],
            per_second,
            burst,
        }
    }

    /// Whether a packet from `src` arriving at `now_ms` may be answered; it takes a token.
    pub fn allow(&mut self, src: [u8; 4], now_ms: u64) -> bool {
        let known = self.buckets.iter().position(|b| b.0 == src);
        let i = known.unwrap_or_else(|| {
            let age = |i: &usize| (self.buckets[*i].0 != [0; 4], self.buckets[*i].2);
            let i = (0..SOURCES).min_by_key(age).unwrap_or(0);
            self.buckets[i] = (src, self.burst, now_ms);
            i
        });
        let b = &mut self.buckets[i];
        let refill = now_ms.saturating_sub(b.2).saturating_mul(self.per_second);
        (b.1, b.2) = (b.1.saturating_add(refill).min(self.burst), now_ms);
        b.1.checked_sub(1000).map(|left| b.1 = left).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut r = RateLimit::new(2, 5);
        let src = [10, 0, 0, 9];
        assert_eq!((0..10).filter(|_| r.allow(src, 0)).count(), 5);
        // Another source has a bucket of its own.
        assert!(r.allow([10, 0, 0, 8], 0));
        // 2 per second: one token every 500 ms, never more than the burst.
        assert!(!r.allow(src, 499));
        assert!(r.allow(src, 500));
        assert!(!r.allow(src, 500));
        assert_eq!((0..10).filter(|_| r.allow(src, 1_000_000)).count(), 5);
        // A clock that goes back refills nothing and does not panic.
        assert!(!r.allow(src, 0));
    }

    #[test]
    fn a_new_source_takes_the_slot_refilled_longest_ago() {
        let mut r = RateLimit::new(1, 1);
        for i in 0..SOURCES as u8 {
            assert!(r.allow([10, 0, 1, i], 1000 + i as u64));
        }
        // The table is full: [10, 0, 1, 0] (refilled at 1000) gives way and starts afresh.
        assert!(r.allow([10, 0, 2, 0], 2000));
        assert!(r.allow([10, 0, 1, 0], 2000));
        // ...which evicted [10, 0, 1, 1], the next oldest; the newest still has no token.
        assert!(!r.allow([10, 0, 1, 63], 1063));
        assert!(r.buckets.iter().all(|b| b.0 != [10, 0, 1, 1]));
    }

    #[test]
    fn huge_settings_saturate() {
        let mut r = RateLimit::new(u64::MAX, u64::MAX);
        assert!((0..100).all(|i| r.allow([1, 2, 3, 4], i)));
    }
}
