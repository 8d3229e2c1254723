//! Grant table v1: GNTTABOP_setup_table gives the machine frames of our table, which we map and
//! fill with entries granting a backend access to single pages.
use crate::mm::{self, GNTTAB_FRAMES};
use core::sync::atomic::{fence, AtomicU16, Ordering};
use xen_pv::hypercall::grant_table_op;

const GNTTABOP_SETUP_TABLE: u64 = 2;
const GTF_PERMIT_ACCESS: u16 = 1;
const GTF_READONLY: u16 = 4;
const GTF_READING: u16 = 8;
const GTF_WRITING: u16 = 16;
/// Refs below this are reserved for the toolstack (xenstore/console).
const FIRST_REF: u32 = 8;
pub const NR_REFS: u32 = (GNTTAB_FRAMES * 4096 / 8) as u32;

#[repr(C)]
struct SetupTable {
    dom: u16,
    nr_frames: u32,
    status: i16,
    frame_list: *mut u64,
}

#[repr(C)]
struct Entry {
    flags: u16,
    domid: u16,
    frame: u32,
}

pub struct GrantTable {
    entries: *mut Entry,
    used: [u64; (NR_REFS as usize).div_ceil(64)],
    pub active: u32,
}

#[derive(Debug)]
pub enum GntError {
    Setup(i64, i16),
    Full,
}

impl core::fmt::Display for GntError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            GntError::Setup(rc, st) => {
                write!(f, "GNTTABOP_setup_table failed: rc {rc}, status {st}")
            }
            GntError::Full => write!(f, "no free grant reference"),
        }
    }
}

impl GrantTable {
    pub fn init() -> Result<Self, GntError> {
        let mut frames = [0u64; GNTTAB_FRAMES];
        let mut st = SetupTable {
            dom: crate::events::DOMID_SELF,
            nr_frames: GNTTAB_FRAMES as u32,
            status: 0,
            frame_list: frames.as_mut_ptr(),
        };
        let rc = grant_table_op(GNTTABOP_SETUP_TABLE, &mut st, 1);
        if rc != 0 || st.status != 0 {
            return Err(GntError::Setup(rc, st.status));
        }
        let mut base = core::ptr::null_mut();
        for (i, &f) in frames.iter().enumerate() {
            let va = mm::map_gnttab_frame(i, f);
            if i == 0 {
                base = va;
            }
        }
        Ok(GrantTable {
            entries: base as *mut Entry,
            used: [0; (NR_REFS as usize).div_ceil(64)],
            active: 0,
        })
    }

    /// Grant `domid` access to machine frame `mfn`; returns the grant reference.
    pub fn grant(&mut self, domid: u16, mfn: u64, readonly: bool) -> Result<u32, GntError> {
        let r = (FIRST_REF..NR_REFS)
            .find(|&r| self.used[r as usize / 64] & (1 << (r % 64)) == 0)
            .ok_or(GntError::Full)?;
        self.used[r as usize / 64] |= 1 << (r % 64);
        // SAFETY: r < NR_REFS, inside the mapped table frames (contiguous virtual pages). The
        // frame and domid must be visible before the flags make the entry valid.
        unsafe {
            let e = self.entries.add(r as usize);
            core::ptr::write_volatile(&raw mut (*e).domid, domid);
            core::ptr::write_volatile(&raw mut (*e).frame, mfn as u32);
            fence(Ordering::SeqCst);
            core::ptr::write_volatile(
                &raw mut (*e).flags,
                GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 },
            );
        }
        self.active += 1;
        Ok(r)
    }

    /// End access through `r`. False if the backend still has it mapped (the entry stays).
    pub fn end(&mut self, r: u32) -> bool {
        // SAFETY: r is a ref we handed out; flags is updated by Xen too, so compare-exchange
        // it to 0 only while neither GTF_reading nor GTF_writing is set.
        let ok = unsafe {
            let flags = &*(&raw mut (*self.entries.add(r as usize)).flags as *const AtomicU16);
            let mut cur = flags.load(Ordering::SeqCst);
            loop {
                if cur & (GTF_READING | GTF_WRITING) != 0 {
                    break false;
                }
                match flags.compare_exchange(cur, 0, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(_) => break true,
                    Err(c) => cur = c,
                }
            }
        };
        if ok {
            self.used[r as usize / 64] &= !(1 << (r % 64));
            self.active -= 1;
        }
        ok
    }
}
