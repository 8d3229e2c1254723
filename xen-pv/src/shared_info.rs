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
