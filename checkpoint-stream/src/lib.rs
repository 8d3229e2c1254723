//! The laundromat checkpoint stream (docs/stream.md): a versioned sequence of framed,
//! checksummed, 8-byte aligned little-endian records carrying a guest's pages over pre-copy
//! rounds, its state at the capture point, and an end-to-end digest.
//!
//! `no_std` and allocation-free: [`Decoder`] takes byte slices as they arrive and calls a
//! [`Sink`]; [`Encoder`] writes to any [`Output`]. The `std` feature adds `io::Write` output
//! and [`model::Checkpoint`], a whole checkpoint held in memory.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

pub mod crc;
pub mod decode;
pub mod digest;
pub mod encode;
pub mod format;
#[cfg(feature = "std")]
pub mod model;

pub use decode::{decode_slice, Capture, Decoder, Error, Header, Phase, Sink, U64s};
pub use encode::{Encoder, Output, PageRef};
pub use format::{page_type, RecordType, VcpuKind, INVALID_MFN, PAGE_SIZE};
