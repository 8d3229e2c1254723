//! shared_info's event state at a hand-over (public/xen.h, x86_64 layout): the new kernel
//! starts with no event pending, every channel masked and vCPU 0's upcalls masked, which is
//! what Xen's restore leaves and what Linux expects before it binds its channels.

/// Offsets in `struct shared_info` (x86_64).
pub const VCPU0_UPCALL_PENDING: usize = 0;
pub const VCPU0_UPCALL_MASK: usize = 1;
pub const VCPU0_PENDING_SEL: usize = 8;
pub const EVTCHN_PENDING: usize = 2048;
pub const EVTCHN_MASK: usize = 2560;
pub const ARCH_MAX_PFN: usize = 3088;
pub const ARCH_PFN_TO_MFN_FRAME_LIST_LIST: usize = 3096;

/// Clear vCPU 0's pending upcall and selector and every pending bit, mask every channel, keep
/// the upcall mask set, and set `arch.max_pfn` (and clear the frame list list Linux rebuilds).
///
/// # Safety
/// `s` must point at the domain's shared_info page, mapped writable.
pub unsafe fn reset_events(s: *mut u8, max_pfn: u64) {
    // SAFETY: caller's contract; the offsets are inside the 4 KiB page.
    unsafe {
        core::ptr::write_volatile(s.add(VCPU0_UPCALL_PENDING), 0u8);
        core::ptr::write_volatile(s.add(VCPU0_UPCALL_MASK), 1u8);
        core::ptr::write_volatile(s.add(VCPU0_PENDING_SEL) as *mut u64, 0);
        for w in 0..64 {
            core::ptr::write_volatile((s.add(EVTCHN_MASK) as *mut u64).add(w), u64::MAX);
            core::ptr::write_volatile((s.add(EVTCHN_PENDING) as *mut u64).add(w), 0);
        }
        core::ptr::write_volatile(s.add(ARCH_MAX_PFN) as *mut u64, max_pfn);
        core::ptr::write_volatile(s.add(ARCH_PFN_TO_MFN_FRAME_LIST_LIST) as *mut u64, 0);
    }
}

/// Offset of vCPU 0's `struct vcpu_time_info` in shared_info.
pub const VCPU0_TIME: usize = 32;

/// One consistent read of `struct vcpu_time_info` (public/xen.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeInfo {
    pub tsc_timestamp: u64,
    pub system_time: u64,
    pub tsc_to_system_mul: u32,
    pub tsc_shift: i8,
}

impl TimeInfo {
    /// Xen system time (ns) at TSC value `tsc`. A TSC below the stamp (read on another physical
    /// CPU than the stamp's, or just before Xen refreshed it) counts as the stamp itself: a
    /// wrapped difference would put the time centuries ahead and make every deadline taken from
    /// it unreachable.
    pub fn ns_at(&self, tsc: u64) -> u64 {
        let mut delta = tsc.saturating_sub(self.tsc_timestamp);
        if self.tsc_shift >= 0 {
            delta <<= self.tsc_shift;
        } else {
            delta >>= -self.tsc_shift;
        }
        self.system_time + ((delta as u128 * self.tsc_to_system_mul as u128) >> 32) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::TimeInfo;

    // A 2 GHz TSC: mul = 2^32 / 2 with shift 0 gives 0.5 ns per cycle.
    const T: TimeInfo = TimeInfo {
        tsc_timestamp: 1_000_000,
        system_time: 5_000_000_000,
        tsc_to_system_mul: 1 << 31,
        tsc_shift: 0,
    };

    #[test]
    fn advances_with_the_tsc() {
        assert_eq!(T.ns_at(1_000_000), 5_000_000_000);
        assert_eq!(T.ns_at(3_000_000), 5_001_000_000);
        let shifted = TimeInfo { tsc_shift: -1, ..T };
        assert_eq!(shifted.ns_at(3_000_000), 5_000_500_000);
        let up = TimeInfo { tsc_shift: 1, ..T };
        assert_eq!(up.ns_at(3_000_000), 5_002_000_000);
    }

    #[test]
    fn a_tsc_below_the_stamp_does_not_wrap() {
        assert_eq!(T.ns_at(999_990), 5_000_000_000);
        assert_eq!(T.ns_at(0), 5_000_000_000);
    }
}
