//! Which processes dirty memory: each process's writable mappings are looked up in its
//! `/proc/PID/pagemap` (the pfn behind every present page; root only) and counted against
//! a round's dirty bitmap. Used to pick the processes to slow down when pre-copy stops
//! converging (docs/migrate.md "Convergence"). Kernel-side writes (page cache, sockets) are
//! not attributed to anyone. Memory use is bounded: one chunk of pagemap entries at a time.

use crate::source::Dirtier;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_PFN_MASK: u64 = (1 << 55) - 1;
/// Entries read per pread.
const CHUNK: usize = 512;

/// Counts, for every process except `exclude`, the present pages of its writable mappings
/// whose pfn is set in `dirty`; most first, processes with none left out.
pub fn dirtiers(dirty: &[u64], exclude: &[u32]) -> io::Result<Vec<Dirtier>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc")? {
        let Ok(e) = e else { continue };
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if exclude.contains(&pid) {
            continue;
        }
        // A process may exit at any point: whatever fails is skipped.
        let Ok(n) = count_process(pid, dirty) else {
            continue;
        };
        if n > 0 {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            out.push(Dirtier {
                pid,
                comm,
                dirty: n,
            });
        }
    }
    out.sort_by(|a, b| b.dirty.cmp(&a.dirty).then(a.pid.cmp(&b.pid)));
    Ok(out)
}

fn count_process(pid: u32, dirty: &[u64]) -> io::Result<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let pm = File::open(format!("/proc/{pid}/pagemap"))?;
    let mut n = 0;
    let mut buf = vec![0u8; CHUNK * 8];
    for (start, end) in writable_ranges(&maps) {
        let (mut page, last) = (start / 4096, end / 4096);
        while page < last {
            let k = ((last - page) as usize).min(CHUNK);
            let got = pm.read_at(&mut buf[..k * 8], page * 8)?;
            if got == 0 {
                break;
            }
            n += count_entries(&buf[..got - got % 8], dirty);
            page += (got / 8) as u64;
        }
    }
    Ok(n)
}

/// The address ranges of the writable mappings in a `/proc/PID/maps` text.
pub fn writable_ranges(maps: &str) -> Vec<(u64, u64)> {
    maps.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let range = f.next()?;
            let perms = f.next()?;
            if perms.as_bytes().get(1) != Some(&b'w') {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let a = u64::from_str_radix(a, 16).ok()?;
            let b = u64::from_str_radix(b, 16).ok()?;
            (a < b).then_some((a, b))
        })
        .collect()
}

/// How many pagemap entries in `raw` are present pages whose pfn is set in `dirty`.
pub fn count_entries(raw: &[u8], dirty: &[u64]) -> u64 {
    raw.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .filter(|&e| e & PM_PRESENT != 0)
        .map(|e| e & PM_PFN_MASK)
        .filter(|&pfn| {
            dirty
                .get((pfn / 64) as usize)
                .is_some_and(|w| w >> (pfn % 64) & 1 != 0)
        })
        .count() as u64
}

/// Snapshot pages the guest can afford: half of MemAvailable (the rest stays for the
/// guest's own work, the capture's tables and checkpointd), in pages. `meminfo` is the text
/// of /proc/meminfo; `None` if it has no MemAvailable line.
pub fn budget_from_meminfo(meminfo: &str, table_bytes: u64) -> Option<u64> {
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((kib * 1024 / 2).saturating_sub(table_bytes) / 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_ranges_from_maps() {
        let maps = "00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/x\n\
                    00651000-00652000 rw-p 00051000 08:02 173521 /usr/bin/x\n\
                    7f0000000000-7f0004000000 rw-p 00000000 00:00 0 \n\
                    ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]\n\
                    garbage line\n";
        assert_eq!(
            writable_ranges(maps),
            vec![(0x651000, 0x652000), (0x7f0000000000, 0x7f0004000000)]
        );
    }

    #[test]
    fn entries_count_only_present_dirty_pfns() {
        let mut dirty = vec![0u64; 2];
        dirty[0] |= 1 << 5;
        dirty[1] |= 1 << 3; // pfn 67
        let e = |present: bool, pfn: u64| ((present as u64) << 63 | pfn).to_le_bytes();
        let raw: Vec<u8> = [
            e(true, 5),
            e(true, 6),
            e(false, 5),
            e(true, 67),
            e(true, 1 << 40),
        ]
        .concat();
        assert_eq!(count_entries(&raw, &dirty), 2);
    }

    #[test]
    fn budget_is_half_of_available_minus_tables() {
        let m = "MemTotal: 250000 kB\nMemFree: 100000 kB\nMemAvailable: 81920 kB\n";
        assert_eq!(budget_from_meminfo(m, 0), Some(10240));
        assert_eq!(budget_from_meminfo(m, 4096 * 240), Some(10000));
        assert_eq!(budget_from_meminfo("MemTotal: 5 kB\n", 0), None);
    }

    #[test]
    fn this_process_is_found_writing_its_own_pages() {
        // Real /proc of the test host: a buffer we touch must be attributed to us when its
        // pfns are in the set. Without the right to read pfns (not root) pagemap gives 0.
        let buf = vec![1u8; 64 * 4096];
        let me = std::process::id();
        let pm = File::open(format!("/proc/{me}/pagemap")).unwrap();
        let mut raw = [0u8; 8];
        pm.read_at(&mut raw, buf.as_ptr() as u64 / 4096 * 8)
            .unwrap();
        let pfn = u64::from_le_bytes(raw) & PM_PFN_MASK;
        if pfn == 0 {
            eprintln!("pagemap hides pfns here (not root): skipped");
            return;
        }
        let mut dirty = vec![0u64; (pfn / 64 + 1) as usize];
        dirty[(pfn / 64) as usize] |= 1 << (pfn % 64);
        let d = dirtiers(&dirty, &[]).unwrap();
        assert!(d.iter().any(|x| x.pid == me && x.dirty >= 1), "{d:?}");
        assert!(!dirtiers(&dirty, &[me]).unwrap().iter().any(|x| x.pid == me));
        drop(buf);
    }
}
