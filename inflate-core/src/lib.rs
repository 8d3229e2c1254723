//! The parts of inflate-loader that are not hypercalls or rings, so `cargo test` covers them on
//! the host: the kernel command line, the book of frames the domain owns, the plan of where each
//! guest page goes, the receive state machine over the stream decoder and the result record.
//! `no_std` and allocation-free, because the loader kernel links it.
#![cfg_attr(not(test), no_std)]

pub mod boot;
pub mod cmdline;
pub mod frames;
pub mod receive;
pub mod records;
pub mod restore;
pub mod result;
#[cfg(any(test, feature = "cli"))]
pub mod synth;
pub mod xs;
