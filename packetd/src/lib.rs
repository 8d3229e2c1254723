//! packetd, the laundromat node's one privileged daemon (docs/packetd.md). It answers ICMP
//! echo requests whose payload is a boot token by creating a loader domain with the unmodified
//! toolstack, bills the job for memory x time from the node ledger, takes top-ups the guest
//! writes to its xenstore area, purges a guest that stops paying after a grace period, and
//! hands out the redemption certificate of an ended job. The library part exists so tests and
//! the fuzz target drive the same code as the daemon.

pub mod config;
pub mod node;
