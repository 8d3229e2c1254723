//! The new kernel's start_info page (public/xen.h `struct start_info`, x86_64), filled as the
//! toolstack's `start_info_x86_64` does, with the domain's own shared_info, xenstore and console
//! (the loader's rings, which xenstored and xenconsoled already serve).
use super::layout::{Layout, PAGE};
use crate::restore::xen::start_info as off;

/// start_info: the fields the restore does not use.
pub const NR_PT_FRAMES: usize = 96;
pub const MOD_START: usize = 112;
pub const MOD_LEN: usize = 120;
pub const FIRST_P2M_PFN: usize = 1152;
pub const NR_P2M_FRAMES: usize = 1160;
/// MAX_GUEST_CMDLINE.
pub const CMDLINE_MAX: usize = 1024;
pub const MAGIC: &[u8] = b"xen-3.0-x86_64";

/// What the domain already has and the new kernel adopts: the loader's own start_info values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rings {
    /// Machine address of shared_info.
    pub shared_info: u64,
    pub store_mfn: u64,
    pub store_evtchn: u32,
    pub console_mfn: u64,
    pub console_evtchn: u32,
}

/// Write the start_info page. `cmdline` longer than 1023 bytes is cut there (as strncpy into
/// MAX_GUEST_CMDLINE with the last byte NUL); a NUL inside it ends it.
pub fn write(layout: &Layout, rings: &Rings, cmdline: &[u8], out: &mut [u8; PAGE as usize]) {
    out.fill(0);
    let mut put = |o: usize, v: &[u8]| out[o..o + v.len()].copy_from_slice(v);
    put(off::MAGIC, MAGIC);
    put(off::NR_PAGES, &layout.nr_pages.to_le_bytes());
    put(off::SHARED_INFO, &rings.shared_info.to_le_bytes());
    put(off::FLAGS, &layout.flags.to_le_bytes());
    put(off::STORE_MFN, &rings.store_mfn.to_le_bytes());
    put(off::STORE_EVTCHN, &rings.store_evtchn.to_le_bytes());
    put(off::CONSOLE_MFN, &rings.console_mfn.to_le_bytes());
    put(off::CONSOLE_EVTCHN, &rings.console_evtchn.to_le_bytes());
    put(off::PT_BASE, &layout.va(layout.pgtables.pfn).to_le_bytes());
    put(NR_PT_FRAMES, &layout.mappings[0].tables.to_le_bytes());
    put(off::MFN_LIST, &layout.p2m.vstart.to_le_bytes());
    if layout.p2m_outside {
        put(FIRST_P2M_PFN, &layout.p2m.pfn.to_le_bytes());
        put(NR_P2M_FRAMES, &layout.p2m_seg_pages.to_le_bytes());
    }
    if layout.initrd.is_some() {
        put(MOD_START, &layout.mod_start.to_le_bytes());
        put(MOD_LEN, &layout.mod_len.to_le_bytes());
    }
    let n = cmdline
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(cmdline.len())
        .min(CMDLINE_MAX - 1);
    put(off::CMD_LINE, &cmdline[..n]);
}
