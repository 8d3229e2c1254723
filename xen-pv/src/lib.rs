//! The hand-over layer of a 64-bit Xen PV domU that gives its own domain to another kernel.
//!
//! Two users: inflate-loader's restore in place (the loader becomes a checkpointed guest) and
//! inflate-stage2's kernel boot (the loader domain becomes a freshly built Linux PV guest).
//! Both need the same self-service hypercalls (public/xen.h numbering), the same M2P and pin
//! batches, the same reset of shared_info's event state, a page mapped at the same virtual
//! address in the old and the new page tables, and a last jump that switches CR3 with
//! `mmuext_op(NEW_BASEPTR)`. Names follow Xen's headers.
#![no_std]

pub mod hypercall;
pub mod jump;
pub mod mmu;
pub mod shared_info;
