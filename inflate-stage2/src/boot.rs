//! The PV domain builder and hand-over jump (docs/bootstrap.md §4). Placeholder until the
//! builder lands: it refuses, so stage 2 reports that to the client and powers off.
use core::convert::Infallible;
use core::fmt;
use core::ops::Range;
use loader_abi::Services;

/// Why the kernel could not be started.
#[derive(Debug)]
pub enum BootError {
    NotAvailable,
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootError::NotAvailable => f.write_str("PV builder not yet available in this stage 2"),
        }
    }
}

/// Build the PV domain for `kernel` (ELF), `initrd` and `cmdline` from inside this domain and
/// jump to the kernel; returns only on failure (before the point of no return). `free`: the
/// pfns nothing uses (the arena after the initramfs).
pub fn boot_kernel(
    _svc: &Services,
    _kernel: &[u8],
    _initrd: &[u8],
    _cmdline: &str,
    _free: Range<u64>,
) -> Result<Infallible, BootError> {
    Err(BootError::NotAvailable)
}
