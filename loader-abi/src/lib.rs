//! What stage 1 (inflate-loader) hands an uploaded stage 2 (inflate-stage2), in one place:
//!
//! - [`Services`]: the `#[repr(C)]` table stage 1 passes to stage 2's entry (console, the
//!   accepted TCP connection, start_info, the hypercall page, free frames, device release);
//! - [`layout`]: the fixed virtual addresses both sides agree on;
//! - [`upload`]: the stage-1 upload (stage-2 binary) and the stage-2 upload (kernel,
//!   initramfs, command line) wire formats, with their bounds;
//! - [`inflate`] (feature `inflate`): the bounded receiver of a compressed item.
//!
//! The byte-level specification is docs/bootstrap.md; its worked examples are tested against
//! this crate. no_std, testable on the host; no dependencies unless `inflate` is on
//! (`miniz_oxide` without its allocator).
#![no_std]

#[cfg(feature = "inflate")]
pub mod inflate;
pub mod layout;
#[cfg(feature = "memfuncs")]
pub mod memfuncs;
pub mod services;
pub mod upload;

pub use services::{Services, ABI_VERSION, SERVICES_MAGIC};
