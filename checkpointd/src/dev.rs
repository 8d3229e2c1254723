//! The `/dev/checkpoint` ioctl layer (docs/checkpoint-abi.md). The device's unsafe code is
//! here: ioctls with `#[repr(C)]` argument structs.

use crate::source::{CaptureOutcome, Dirtier, HoldTuple, PageSource, RoundScan};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use checkpoint_abi::dev::{
    p2m_is_ram, Capture, Hold, Round, Table, Throttle, Track, ABI_VERSION, CAPTURE_RESUMED,
    HOLD_ARM, PAGE_SIZE, TABLE_P2M, TABLE_P2M_CAPTURED, TABLE_P2M_FRAMES, TABLE_PAGE_TYPES,
    THROTTLE_SET, TRACK_ELIDE_FREE, TRACK_FAULT,
};
pub use checkpoint_abi::dev::{Facts, DEVICE};

pub struct Device {
    file: File,
    facts: Facts,
    kernel: String,
}

/// The device's ioctls, one typed function each: nix's `*_bad` forms take the command
/// number as given, so the numbers stay checkpoint-abi's, and each function accepts only the
/// struct its command encodes (docs/dependencies.md).
mod ioc {
    use checkpoint_abi::dev::{
        Capture, Facts, Hold, Round, Table, Throttle, Track, IOC_CAPTURE, IOC_GET_FACTS,
        IOC_NEXT_ROUND, IOC_OUTPUT_HOLD, IOC_READ_TABLE, IOC_THROTTLE, IOC_TRACK_START,
        IOC_TRACK_STOP,
    };
    nix::ioctl_read_bad!(get_facts, IOC_GET_FACTS, Facts);
    nix::ioctl_write_ptr_bad!(track_start, IOC_TRACK_START, Track);
    nix::ioctl_none_bad!(track_stop, IOC_TRACK_STOP);
    nix::ioctl_readwrite_bad!(next_round, IOC_NEXT_ROUND, Round);
    nix::ioctl_readwrite_bad!(capture, IOC_CAPTURE, Capture);
    nix::ioctl_readwrite_bad!(read_table, IOC_READ_TABLE, Table);
    nix::ioctl_readwrite_bad!(output_hold, IOC_OUTPUT_HOLD, Hold);
    nix::ioctl_readwrite_bad!(throttle, IOC_THROTTLE, Throttle);
}

fn done(r: nix::Result<i32>) -> io::Result<()> {
    r.map(drop).map_err(io::Error::from)
}

impl Device {
    pub fn open() -> io::Result<Device> {
        let file = OpenOptions::new().read(true).write(true).open(DEVICE)?;
        let mut facts = Facts::default();
        // SAFETY: a Facts for the command that encodes it; the kernel writes its 128 bytes.
        done(unsafe { ioc::get_facts(file.as_raw_fd(), &mut facts) })?;
        if facts.abi_version != ABI_VERSION
            || facts.page_size as usize != PAGE_SIZE
            || facts.guest_width != 8
        {
            return Err(io::Error::other(format!(
                "unsupported /dev/checkpoint (abi {}, page size {}, width {})",
                facts.abi_version, facts.page_size, facts.guest_width
            )));
        }
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        Ok(Device {
            file,
            facts,
            kernel,
        })
    }

    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    /// Pfns that are RAM now (the live p2m's own entries).
    pub fn live_ram_pages(&self) -> io::Result<u64> {
        let p2m: Vec<u64> = self.table(TABLE_P2M, self.facts.max_pfn)?;
        Ok(p2m.iter().filter(|&&e| p2m_is_ram(e)).count() as u64)
    }

    fn table<T: Default + Clone>(&self, table: u32, count: u64) -> io::Result<Vec<T>> {
        let mut v = vec![T::default(); count as usize];
        let mut t = Table {
            table,
            start: 0,
            count,
            buf: v.as_mut_ptr() as u64,
            buf_bytes: (v.len() * std::mem::size_of::<T>()) as u64,
            ..Default::default()
        };
        // SAFETY: t.buf points at v, live for this call and t.buf_bytes long.
        done(unsafe { ioc::read_table(self.file.as_raw_fd(), &mut t) })?;
        v.truncate(t.returned.min(count) as usize);
        Ok(v)
    }
}

impl PageSource for Device {
    fn pfn_count(&self) -> u64 {
        self.facts.max_pfn
    }
    fn start_info_pfn(&self) -> u64 {
        self.facts.start_info_pfn
    }
    fn kernel(&self) -> String {
        self.kernel.clone()
    }
    fn start_tracking(&mut self, elide_free: bool, fault: bool) -> io::Result<()> {
        let t = Track {
            flags: if elide_free { TRACK_ELIDE_FREE } else { 0 }
                | if fault { TRACK_FAULT } else { 0 },
            ..Default::default()
        };
        // SAFETY: the kernel reads the 16-byte Track.
        done(unsafe { ioc::track_start(self.file.as_raw_fd(), &t) })
    }
    fn next_round(&mut self, bitmap: &mut [u64]) -> io::Result<RoundScan> {
        let mut r = Round {
            bitmap: bitmap.as_mut_ptr() as u64,
            bitmap_bytes: (bitmap.len() * 8) as u64,
            ..Default::default()
        };
        // SAFETY: r.bitmap points at `bitmap`, live for this call and r.bitmap_bytes long.
        done(unsafe { ioc::next_round(self.file.as_raw_fd(), &mut r) })?;
        Ok(RoundScan {
            dirty: r.dirty,
            unreadable: r.unreadable,
            free: r.free,
            deferred: r.deferred,
        })
    }
    fn read_pages(&mut self, pfn: u64, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, pfn * PAGE_SIZE as u64)?;
        Ok(n / PAGE_SIZE)
    }
    fn capture(
        &mut self,
        max_snapshot: u64,
        snapshot: &mut [u64],
        vcpu: &mut [u8],
    ) -> io::Result<CaptureOutcome> {
        let mut c = Capture {
            max_snapshot_pages: max_snapshot,
            bitmap: snapshot.as_mut_ptr() as u64,
            bitmap_bytes: (snapshot.len() * 8) as u64,
            vcpu: vcpu.as_mut_ptr() as u64,
            vcpu_bytes: vcpu.len() as u64,
            ..Default::default()
        };
        // SAFETY: c's bitmap and vcpu point at `snapshot` and `vcpu`, live for this call and as
        // long as c says.
        match done(unsafe { ioc::capture(self.file.as_raw_fd(), &mut c) }) {
            Ok(()) if c.result == CAPTURE_RESUMED => Ok(CaptureOutcome::Restored),
            Ok(()) => Ok(CaptureOutcome::Captured {
                snapshot_pages: c.snapshot_pages,
                pause_ns: c.pause_ns,
                suspend_ns: c.suspend_ns,
                unreadable: c.unreadable,
                free: c.free,
            }),
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) => {
                Ok(CaptureOutcome::NoSpace {
                    needed: c.snapshot_pages,
                })
            }
            Err(e) => Err(e),
        }
    }
    fn captured_p2m(&mut self) -> io::Result<Vec<u64>> {
        self.table(TABLE_P2M_CAPTURED, self.facts.max_pfn)
    }
    fn captured_page_types(&mut self) -> io::Result<Vec<u8>> {
        self.table(TABLE_PAGE_TYPES, self.facts.max_pfn)
    }
    fn captured_p2m_frames(&mut self) -> io::Result<Vec<u64>> {
        self.table(TABLE_P2M_FRAMES, self.facts.p2m_frames)
    }
    fn stop_tracking(&mut self) -> io::Result<()> {
        // SAFETY: a command without argument.
        done(unsafe { ioc::track_stop(self.file.as_raw_fd()) })
    }
    fn hold_output(&mut self, t: &HoldTuple) -> io::Result<()> {
        let mut h = Hold {
            flags: HOLD_ARM,
            saddr: t.local.ip().octets(),
            daddr: t.remote.ip().octets(),
            sport: t.local.port().to_be_bytes(),
            dport: t.remote.port().to_be_bytes(),
            ..Default::default()
        };
        // SAFETY: a plain Hold, no pointers in it.
        done(unsafe { ioc::output_hold(self.file.as_raw_fd(), &mut h) })
    }
    fn release_output(&mut self) -> io::Result<u64> {
        let mut h = Hold::default();
        // SAFETY: as above.
        done(unsafe { ioc::output_hold(self.file.as_raw_fd(), &mut h) })?;
        Ok(h.dropped)
    }
    fn dirtiers(&mut self, dirty: &[u64]) -> io::Result<Vec<Dirtier>> {
        // Never this process (it carries the stream) nor init.
        crate::attrib::dirtiers(dirty, &[std::process::id(), 1])
    }
    fn throttle(&mut self, pid: u32, stop_ms: u32, period_ms: u32) -> io::Result<u64> {
        let mut t = Throttle {
            pid,
            flags: THROTTLE_SET,
            stop_ms,
            period_ms,
            ..Default::default()
        };
        // SAFETY: a plain Throttle, no pointers in it.
        done(unsafe { ioc::throttle(self.file.as_raw_fd(), &mut t) })?;
        Ok(t.stopped_ns)
    }
    fn unthrottle(&mut self, pid: u32) -> io::Result<u64> {
        let mut t = Throttle {
            pid,
            ..Default::default()
        };
        // SAFETY: as above.
        done(unsafe { ioc::throttle(self.file.as_raw_fd(), &mut t) })?;
        Ok(t.stopped_ns)
    }
    fn live_ram(&mut self) -> io::Result<Vec<u64>> {
        let p2m: Vec<u64> = self.table(TABLE_P2M, self.facts.max_pfn)?;
        let mut bm = vec![0u64; p2m.len().div_ceil(64)];
        for (pfn, e) in p2m.iter().enumerate() {
            if p2m_is_ram(*e) {
                bm[pfn / 64] |= 1 << (pfn % 64);
            }
        }
        Ok(bm)
    }
    fn snapshot_budget(&self) -> u64 {
        // The capture's own tables (p2m copy, types, snapshot pfn list) come out of the same
        // memory.
        let tables = self.facts.max_pfn * 17;
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| crate::attrib::budget_from_meminfo(&m, tables))
            .unwrap_or(self.facts.max_pfn / 8)
            .clamp(1, self.facts.max_pfn)
    }
}
