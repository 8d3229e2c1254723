//! The `/dev/checkpoint` ioctl layer (docs/checkpoint-abi.md). The device's unsafe code is
//! here: ioctls with `#[repr(C)]` argument structs.

use crate::source::{CaptureOutcome, HoldTuple, PageSource};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use checkpoint_abi::dev::{
    p2m_is_ram, Capture, Hold, Round, Table, Track, ABI_VERSION, CAPTURE_RESUMED, HOLD_ARM,
    IOC_CAPTURE, IOC_GET_FACTS, IOC_NEXT_ROUND, IOC_OUTPUT_HOLD, IOC_READ_TABLE, IOC_TRACK_START,
    IOC_TRACK_STOP, PAGE_SIZE, TABLE_P2M, TABLE_P2M_CAPTURED, TABLE_P2M_FRAMES, TABLE_PAGE_TYPES,
};
pub use checkpoint_abi::dev::{Facts, DEVICE};

pub struct Device {
    file: File,
    facts: Facts,
    kernel: String,
}

/// One ioctl whose argument is `arg`. The caller guarantees `arg` is the struct the command
/// number encodes (checkpoint-abi derives each number from its struct's size) and that any buffers it points to are live and as
/// large as it says.
fn ioctl<T>(file: &File, cmd: u32, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is a valid, exclusively borrowed #[repr(C)] struct whose size matches the
    // command's encoded size; the kernel writes at most that many bytes into it. Pointers
    // inside it are set by our callers from live slices of the stated length.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), cmd as _, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Device {
    pub fn open() -> io::Result<Device> {
        let file = OpenOptions::new().read(true).write(true).open(DEVICE)?;
        let mut facts = Facts::default();
        ioctl(&file, IOC_GET_FACTS, &mut facts)?;
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
        ioctl(&self.file, IOC_READ_TABLE, &mut t)?;
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
    fn start_tracking(&mut self) -> io::Result<()> {
        ioctl(&self.file, IOC_TRACK_START, &mut Track::default())
    }
    fn next_round(&mut self, bitmap: &mut [u64]) -> io::Result<u64> {
        let mut r = Round {
            bitmap: bitmap.as_mut_ptr() as u64,
            bitmap_bytes: (bitmap.len() * 8) as u64,
            ..Default::default()
        };
        ioctl(&self.file, IOC_NEXT_ROUND, &mut r)?;
        Ok(r.dirty)
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
        match ioctl(&self.file, IOC_CAPTURE, &mut c) {
            Ok(()) if c.result == CAPTURE_RESUMED => Ok(CaptureOutcome::Restored),
            Ok(()) => Ok(CaptureOutcome::Captured {
                snapshot_pages: c.snapshot_pages,
                pause_ns: c.pause_ns,
                suspend_ns: c.suspend_ns,
            }),
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => Ok(CaptureOutcome::NoSpace {
                needed: c.snapshot_pages,
            }),
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
        let mut none = ();
        ioctl(&self.file, IOC_TRACK_STOP, &mut none)
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
        ioctl(&self.file, IOC_OUTPUT_HOLD, &mut h)
    }
    fn release_output(&mut self) -> io::Result<u64> {
        let mut h = Hold::default();
        ioctl(&self.file, IOC_OUTPUT_HOLD, &mut h)?;
        Ok(h.dropped)
    }
}
