//! The `/dev/checkpoint` ioctl layer (docs/checkpoint-abi.md). All unsafe code of checkpointd
//! is here: three ioctls with `#[repr(C)]` argument structs.

use crate::source::{CaptureOutcome, PageSource};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

pub const DEVICE: &str = "/dev/checkpoint";

const IOC_GET_FACTS: u64 = 0x8080_4301;
const IOC_TRACK_START: u64 = 0x4010_4302;
const IOC_TRACK_STOP: u64 = 0x0000_4303;
const IOC_NEXT_ROUND: u64 = 0xC040_4304;
const IOC_CAPTURE: u64 = 0xC080_4305;
const IOC_READ_TABLE: u64 = 0xC030_4306;

const TABLE_P2M_CAPTURED: u32 = 2;
const TABLE_PAGE_TYPES: u32 = 3;
const TABLE_P2M_FRAMES: u32 = 4;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Facts {
    pub abi_version: u32,
    pub page_size: u32,
    pub max_pfn: u64,
    pub nr_pages: u64,
    pub start_info_pfn: u64,
    pub start_info_mfn: u64,
    pub shared_info_maddr: u64,
    pub store_mfn: u64,
    pub console_mfn: u64,
    pub store_evtchn: u32,
    pub console_evtchn: u32,
    pub online_cpus: u32,
    pub guest_width: u32,
    pub pt_levels: u32,
    pub state: u32,
    pub p2m_frames: u64,
    pub reserved: [u64; 4],
}

#[repr(C)]
#[derive(Default)]
struct Track {
    flags: u64,
    reserved: u64,
}

#[repr(C)]
#[derive(Default)]
struct Round {
    bitmap: u64,
    bitmap_bytes: u64,
    flags: u64,
    round: u64,
    dirty: u64,
    scanned: u64,
    scan_ns: u64,
    reserved: u64,
}

#[repr(C)]
#[derive(Default)]
struct Capture {
    flags: u64,
    max_snapshot_pages: u64,
    bitmap: u64,
    bitmap_bytes: u64,
    vcpu: u64,
    vcpu_bytes: u64,
    result: u64,
    snapshot_pages: u64,
    pause_ns: u64,
    suspend_ns: u64,
    pt_pages: u64,
    scanned: u64,
    reserved: [u64; 4],
}

#[repr(C)]
#[derive(Default)]
struct Table {
    table: u32,
    reserved: u32,
    start: u64,
    count: u64,
    buf: u64,
    buf_bytes: u64,
    returned: u64,
}

const _: () = {
    assert!(std::mem::size_of::<Facts>() == 128);
    assert!(std::mem::size_of::<Track>() == 16);
    assert!(std::mem::size_of::<Round>() == 64);
    assert!(std::mem::size_of::<Capture>() == 128);
    assert!(std::mem::size_of::<Table>() == 48);
};

pub struct Device {
    file: File,
    facts: Facts,
    kernel: String,
}

/// One ioctl whose argument is `arg`. The caller guarantees `arg` is the struct the command
/// number encodes (checked above by size) and that any buffers it points to are live and as
/// large as it says.
fn ioctl<T>(file: &File, cmd: u64, arg: &mut T) -> io::Result<()> {
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
        if facts.abi_version != 1 || facts.page_size != 4096 || facts.guest_width != 8 {
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
        let n = self.file.read_at(buf, pfn * 4096)?;
        Ok(n / 4096)
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
            Ok(()) if c.result == 0 => Ok(CaptureOutcome::Restored),
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
}
