//! Booting a Linux PV kernel from inside its own domain: the pure part of what the toolstack's
//! PV domain builder does (docs/bootstrap.md, "Builder"). inflate-stage2 drives it with
//! hypercalls; everything here is `no_std`, allocation-free and tested on the host.
//!
//! - `elf`: the kernel ELF and its Xen notes, checked like Xen's libelf;
//! - `layout`: where the kernel, initrd, p2m list, start_info, rings, page tables and boot
//!   stack go in the kernel's pfns, and the initial page tables' contents;
//! - `numbering`: which of the domain's frames becomes which new pfn;
//! - `startinfo`: the start_info page.
pub mod elf;
pub mod layout;
pub mod numbering;
pub mod startinfo;

pub use elf::{ElfError, Kernel};
pub use layout::{Layout, LayoutError};
pub use numbering::{Numbering, NumberingError};
pub use startinfo::Rings;

#[cfg(test)]
mod tests;
