//! How big the loader domain must be to become a given guest (docs/restore.md has the
//! formula). One function, [`loader_domain`], used by the command that writes the loader's xl
//! config; the table capacities here are the ones the loader allocates, so the two agree.
use checkpoint_stream::PAGE_SIZE;

/// Guest pfns the loader's plan and page-type tables describe: max_pfn must be below this.
/// Linux rounds a PV guest's p2m up to a multiple of 262144 pfns whatever its RAM, so this
/// covers guests below 1 GiB (docs/restore.md). The loader's statics use these constants.
pub const PLAN_SLOTS: usize = 1 << 18;
/// Machine frames the p2m index holds: guest RAM up to 512 MiB.
pub const INDEX_SLOTS: usize = 1 << 17;
/// Entries of the p2m frame list (one per 512 pfns).
pub const P2M_FRAME_SLOTS: usize = PLAN_SLOTS / 512;
/// Bytes of the restore tables: plan (u32 per pfn), page types (u8 per pfn), p2m index (u64
/// per RAM page), p2m frame list (u64 each).
pub const TABLE_BYTES: u64 = (PLAN_SLOTS * 5 + INDEX_SLOTS * 8 + P2M_FRAME_SLOTS * 8) as u64;

/// Bytes of the loader's digest-leaf cache (`Receiver::cache_leaves`): one 32-byte leaf for
/// each of the first `INDEX_SLOTS` loader frames.
pub const LEAF_CACHE_BYTES: u64 = (INDEX_SLOTS * 32) as u64;

const PAGES_PER_MIB: u64 = (1 << 20) / PAGE_SIZE as u64;
/// Xen's PV domain builder maps the boot structures up to a 4 MiB boundary; the loader keeps
/// everything below it.
const BOOT_ALIGN_PAGES: u64 = 1024;
/// After the image: start_info, xenstore and console pages, the boot stack, and the builder's
/// 512 KiB of padding.
const BOOT_FIXED_PAGES: u64 = 4 + 128;

/// What the loader itself occupies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderFootprint {
    /// The loader image in memory (text, data and .bss with its restore tables), KiB.
    pub image_kib: u64,
    /// Margin on top, KiB.
    pub slack_kib: u64,
    /// Table capacities (see the constants).
    pub plan_slots: u64,
    pub index_slots: u64,
    /// Loader pages its frame book covers.
    pub book_pages: u64,
}

impl LoaderFootprint {
    /// The loader as built from this tree: about 2 MiB of image and buffers plus the restore
    /// tables and the leaf cache, 4 MiB of margin, a frame book of 1 GiB. `checkpointd
    /// loader-config` can measure the image instead (`image_kib` from [`elf_memory_span`] of
    /// the loader ELF).
    pub const CURRENT: LoaderFootprint = LoaderFootprint {
        image_kib: 2048 + (TABLE_BYTES + LEAF_CACHE_BYTES) / 1024,
        slack_kib: 4096,
        plan_slots: PLAN_SLOTS as u64,
        index_slots: INDEX_SLOTS as u64,
        book_pages: 1 << 18,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// xl `memory` and `maxmem`, MiB.
    pub memory_mib: u64,
    pub maxmem_mib: u64,
    /// xl `vcpus` / `maxvcpus`: the guest's (Linux registers runstate for every possible CPU).
    pub vcpus: u32,
    /// Pages: the boot region the loader keeps, the guest's RAM, the margin.
    pub boot_pages: u64,
    pub guest_pages: u64,
    pub slack_pages: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizingError {
    TooManyPfns { pfns: u64, slots: u64 },
    TooMuchRam { ram: u64, slots: u64 },
    RamAbovePfns { ram: u64, pfns: u64 },
    Vcpus(u32),
}

impl core::fmt::Display for SizingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            SizingError::TooManyPfns { pfns, slots } => {
                write!(
                    f,
                    "guest has {pfns} pfns, the loader describes at most {slots}"
                )
            }
            SizingError::TooMuchRam { ram, slots } => {
                write!(
                    f,
                    "guest has {ram} RAM pages, the loader holds at most {slots}"
                )
            }
            SizingError::RamAbovePfns { ram, pfns } => {
                write!(f, "{ram} RAM pages cannot fit {pfns} pfns")
            }
            SizingError::Vcpus(n) => write!(f, "{n} vCPUs: need 1..=128"),
        }
    }
}

/// Pages Xen's builder puts before the loader's first free frame in a domain of `pages`.
fn boot_pages(image_pages: u64, pages: u64) -> u64 {
    let p2m_list = (pages * 8).div_ceil(PAGE_SIZE as u64);
    let mapped = image_pages + p2m_list + BOOT_FIXED_PAGES;
    // Boot page tables: one L1 per 2 MiB mapped, an L2 per GiB, an L3 and an L4.
    let tables = mapped.div_ceil(512) + mapped.div_ceil(512 * 512) + 2;
    (mapped + tables).div_ceil(BOOT_ALIGN_PAGES) * BOOT_ALIGN_PAGES
}

/// The loader domain for a guest with `ram_pages` RAM pages, pfns 0..=`max_pfn` and `vcpus`
/// vCPUs: pages M = R + B(M) + S, where B is the boot region the loader keeps (image, p2m list
/// of M entries, start_info, rings, boot tables, padding, rounded up to 4 MiB) and S the
/// margin; memory = maxmem = ceil(M / 256) MiB.
pub fn loader_domain(
    ram_pages: u64,
    max_pfn: u64,
    vcpus: u32,
    fp: &LoaderFootprint,
) -> Result<Sizing, SizingError> {
    let pfns = max_pfn.saturating_add(1);
    if pfns > fp.plan_slots {
        return Err(SizingError::TooManyPfns {
            pfns,
            slots: fp.plan_slots,
        });
    }
    if ram_pages > pfns {
        return Err(SizingError::RamAbovePfns {
            ram: ram_pages,
            pfns,
        });
    }
    let slots = fp.index_slots.min(fp.book_pages);
    if ram_pages > slots {
        return Err(SizingError::TooMuchRam {
            ram: ram_pages,
            slots,
        });
    }
    if vcpus == 0 || vcpus > 128 {
        return Err(SizingError::Vcpus(vcpus));
    }
    let image_pages = fp.image_kib.div_ceil(4);
    let slack_pages = fp.slack_kib.div_ceil(4);
    // B grows with M (the p2m list): iterate to the fixed point (two or three rounds).
    let mut total = ram_pages + slack_pages;
    let boot = loop {
        let b = boot_pages(image_pages, total);
        let t = ram_pages + b + slack_pages;
        if t <= total {
            break b;
        }
        total = t;
    };
    let total = ram_pages + boot + slack_pages;
    if total > fp.book_pages {
        return Err(SizingError::TooMuchRam {
            ram: ram_pages,
            slots: fp.book_pages.saturating_sub(boot + slack_pages),
        });
    }
    let mib = total.div_ceil(PAGES_PER_MIB);
    Ok(Sizing {
        memory_mib: mib,
        maxmem_mib: mib,
        vcpus,
        boot_pages: boot,
        guest_pages: ram_pages,
        slack_pages,
    })
}

/// Bytes from the lowest to the highest address of an ELF64 image's PT_LOAD segments (memory
/// size, .bss included), or None if `elf` is not a little-endian ELF64 with loadable segments.
pub fn elf_memory_span(elf: &[u8]) -> Option<u64> {
    let u16at = |o: usize| {
        Some(u16::from_le_bytes(
            elf.get(o..o.checked_add(2)?)?.try_into().ok()?,
        ))
    };
    let u64at = |o: usize| {
        Some(u64::from_le_bytes(
            elf.get(o..o.checked_add(8)?)?.try_into().ok()?,
        ))
    };
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = usize::try_from(u64at(0x20)?).ok()?;
    let phentsize = u16at(0x36)? as usize;
    let phnum = u16at(0x38)? as usize;
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if phentsize < 0x38 || ph.checked_add(0x38)? > elf.len() {
            return None;
        }
        if u32::from_le_bytes(elf[ph..ph + 4].try_into().ok()?) != 1 {
            continue; // not PT_LOAD
        }
        let vaddr = u64at(ph + 0x10)?;
        let memsz = u64at(ph + 0x28)?;
        lo = lo.min(vaddr);
        hi = hi.max(vaddr.checked_add(memsz)?);
    }
    (hi > lo).then(|| hi - lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_128_mib_capture_needs_about_144_mib() {
        // The lab's checkpoint guest: 32768 RAM pages, Linux's p2m of 262144 pfns.
        let s = loader_domain(32768, 262143, 1, &LoaderFootprint::CURRENT).unwrap();
        std::eprintln!("sizing, 128 MiB capture: {s:?}");
        assert_eq!(s.guest_pages, 32768);
        assert_eq!(s.boot_pages % 1024, 0);
        assert!(
            s.boot_pages >= 2048,
            "image + tables exceed 4 MiB: {}",
            s.boot_pages
        );
        assert_eq!(
            s.memory_mib,
            (32768 + s.boot_pages + s.slack_pages).div_ceil(256)
        );
        assert!((136..=148).contains(&s.memory_mib), "{s:?}");
        assert_eq!(s.maxmem_mib, s.memory_mib);
        // Sized by RAM, not by max_pfn: 262144 pfns would be 1 GiB.
        let bigger = loader_domain(65536, 262143, 2, &LoaderFootprint::CURRENT).unwrap();
        assert_eq!(bigger.memory_mib - s.memory_mib, 128);
        assert_eq!(bigger.vcpus, 2);
    }

    #[test]
    fn boot_region_follows_the_p2m_list() {
        // A 64 MiB loader without tables (the verify-only loader): one 4 MiB boot region.
        assert_eq!(boot_pages(487, 16384), 1024);
        // A p2m list of 4 MiB (512K pages) needs a second 4 MiB step.
        assert_eq!(boot_pages(487, 1 << 19), 2048);
    }

    #[test]
    fn limits_are_errors() {
        let fp = LoaderFootprint::CURRENT;
        assert_eq!(
            loader_domain(10, PLAN_SLOTS as u64, 1, &fp),
            Err(SizingError::TooManyPfns {
                pfns: PLAN_SLOTS as u64 + 1,
                slots: PLAN_SLOTS as u64
            })
        );
        assert!(matches!(
            loader_domain(INDEX_SLOTS as u64 + 1, 262143, 1, &fp),
            Err(SizingError::TooMuchRam { .. })
        ));
        assert!(matches!(
            loader_domain(11, 9, 1, &fp),
            Err(SizingError::RamAbovePfns { .. })
        ));
        assert_eq!(loader_domain(1, 9, 0, &fp), Err(SizingError::Vcpus(0)));
        // The largest guest the tables hold still fits the frame book.
        assert!(loader_domain(INDEX_SLOTS as u64, 262143, 1, &fp).is_ok());
    }

    #[test]
    fn elf_span_covers_bss() {
        let mut e = vec![0u8; 0x40 + 2 * 0x38];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        for (i, (ty, va, mem)) in [(1u32, 0u64, 0x2000u64), (1, 0x2000, 0x1f_0000)]
            .into_iter()
            .enumerate()
        {
            let ph = 0x40 + i * 0x38;
            e[ph..ph + 4].copy_from_slice(&ty.to_le_bytes());
            e[ph + 0x10..ph + 0x18].copy_from_slice(&va.to_le_bytes());
            e[ph + 0x28..ph + 0x30].copy_from_slice(&mem.to_le_bytes());
        }
        assert_eq!(elf_memory_span(&e), Some(0x1f_2000));
        assert_eq!(elf_memory_span(&e[..0x50]), None);
        assert_eq!(elf_memory_span(b"not an elf"), None);
    }
}
