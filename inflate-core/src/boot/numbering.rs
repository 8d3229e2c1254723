//! The new pfn numbering of the domain's own frames. The kernel sees pfns 0..nr_pages; every
//! frame of the domain gets exactly one of them:
//! - pfns below `Layout::end` (everything the builder writes or maps) get frames nobody uses
//!   (the free ranges stage 1 hands over), in ascending order, except that the layout's
//!   xenstore and console pfns get the domain's live rings;
//! - the pfns after that get every other frame in ascending old pfn order (the loaders' image,
//!   their page tables, buffers, Xen's old p2m list and start_info), then the free frames left.
//!
//! So nothing the running loader still uses is written or mapped writable by the new tables,
//! and after the switch all of it is ordinary RAM of the new kernel.
use core::fmt;
use core::ops::Range;

/// Bound on the free ranges (each pfn's lookup walks them).
pub const MAX_FREE_RANGES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberingError {
    /// A free range is empty, unsorted, overlapping or beyond nr_pages.
    BadFreeRanges,
    /// A ring's old pfn is beyond nr_pages, or both rings are one frame.
    BadRing,
    /// Fewer free frames than the layout writes (free, needed).
    NotEnoughFree { free: u64, needed: u64 },
    /// The output table is shorter than nr_pages.
    TableTooSmall,
    /// The fixed run overlaps free frames, rings or the end of the fresh region.
    BadFixed,
}

impl fmt::Display for NumberingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NumberingError::BadFreeRanges => write!(f, "bad free frame ranges"),
            NumberingError::BadRing => write!(f, "bad xenstore/console ring frame"),
            NumberingError::NotEnoughFree { free, needed } => write!(
                f,
                "{free} free frames, the kernel's layout needs {needed}: give the domain more memory"
            ),
            NumberingError::TableTooSmall => write!(f, "numbering table too small"),
            NumberingError::BadFixed => write!(f, "bad initrd frames"),
        }
    }
}

/// The inputs: old pfns are the loader's numbering (its p2m list).
#[derive(Debug, Clone, Copy)]
pub struct Numbering<'a> {
    pub nr_pages: u64,
    /// Old pfns nobody uses, sorted, disjoint.
    pub free: &'a [Range<u64>],
    /// (old pfn, new pfn) of the xenstore and console rings.
    pub store: (u64, u64),
    pub console: (u64, u64),
    /// Frames that already hold what a run of new pfns needs (the initrd as received):
    /// (first new pfn, first old pfn, count); the old pfns must not be free.
    pub fixed: Option<(u64, u64, u64)>,
    /// New pfns 0..fresh_end get free frames (Layout::end), except rings and `fixed`.
    pub fresh_end: u64,
    /// Free frames kept out of 0..fresh_end for the caller (its trampoline chain), taken from
    /// the end of the free ranges.
    pub spare: u64,
}

impl Numbering<'_> {
    /// Validate; returns how many free frames phase 1 takes.
    fn check(&self) -> Result<u64, NumberingError> {
        if self.free.len() > MAX_FREE_RANGES {
            return Err(NumberingError::BadFreeRanges);
        }
        let mut last = 0u64;
        let mut free = 0u64;
        for (i, r) in self.free.iter().enumerate() {
            if r.start >= r.end || r.end > self.nr_pages || (i > 0 && r.start < last) {
                return Err(NumberingError::BadFreeRanges);
            }
            last = r.end;
            free += r.end - r.start;
        }
        let (s, c) = (self.store, self.console);
        if s.0 >= self.nr_pages || c.0 >= self.nr_pages || s.0 == c.0 || s.1 == c.1 {
            return Err(NumberingError::BadRing);
        }
        if s.1 >= self.fresh_end || c.1 >= self.fresh_end || self.fresh_end > self.nr_pages {
            return Err(NumberingError::BadRing);
        }
        let mut fixed_pages = 0;
        if let Some((new, old, n)) = self.fixed {
            let bad = new.checked_add(n).is_none_or(|e| e > self.fresh_end)
                || old.checked_add(n).is_none_or(|e| e > self.nr_pages)
                || (old..old + n).any(|p| self.is_free(p) || self.is_ring(p))
                || [s.1, c.1].iter().any(|r| (new..new + n).contains(r));
            if bad {
                return Err(NumberingError::BadFixed);
            }
            fixed_pages = n;
        }
        let rings_in_free = [s.0, c.0].iter().filter(|&&p| self.is_free(p)).count() as u64;
        let usable = free - rings_in_free;
        let taken = self.fresh_end - 2 - fixed_pages;
        let needed = taken + self.spare;
        if usable < needed {
            return Err(NumberingError::NotEnoughFree {
                free: usable,
                needed,
            });
        }
        Ok(taken)
    }

    fn is_free(&self, p: u64) -> bool {
        self.free.iter().any(|r| r.contains(&p))
    }

    fn is_ring(&self, p: u64) -> bool {
        p == self.store.0 || p == self.console.0
    }

    fn is_fixed_old(&self, p: u64) -> bool {
        self.fixed.is_some_and(|(_, o, n)| p >= o && p < o + n)
    }

    /// Free old pfns in ascending order, rings excluded.
    fn free_pfns(&self) -> impl Iterator<Item = u64> + '_ {
        self.free
            .iter()
            .flat_map(|r| r.clone())
            .filter(|&p| !self.is_ring(p))
    }

    /// The `i`-th of `free_pfns` without walking them (O(ranges)).
    fn nth_free(&self, mut i: u64) -> Option<u64> {
        for r in self.free {
            let mut p = r.start;
            while p < r.end {
                // Skip ring pfns one by one; jump over the rest of the range otherwise.
                let next_ring = [self.store.0, self.console.0]
                    .into_iter()
                    .filter(|&x| x >= p && x < r.end)
                    .min()
                    .unwrap_or(r.end);
                let run = next_ring - p;
                if i < run {
                    return Some(p + i);
                }
                i -= run;
                p = next_ring + 1;
            }
        }
        None
    }

    /// The old pfn that becomes new pfn `k`, for k < fresh_end.
    pub fn old_of(&self, k: u64) -> Result<u64, NumberingError> {
        self.check()?;
        self.old_of_checked(k).ok_or(NumberingError::BadRing)
    }

    fn old_of_checked(&self, k: u64) -> Option<u64> {
        if k >= self.fresh_end {
            return None;
        }
        if k == self.store.1 {
            return Some(self.store.0);
        }
        if k == self.console.1 {
            return Some(self.console.0);
        }
        let mut rank = k - [self.store.1, self.console.1]
            .iter()
            .filter(|&&r| r < k)
            .count() as u64;
        if let Some((new, old, n)) = self.fixed {
            if k >= new && k < new + n {
                return Some(old + (k - new));
            }
            if k >= new + n {
                rank -= n;
            }
        }
        self.nth_free(rank)
    }

    /// The `spare` old pfns reserved for the caller (the last free ones).
    pub fn spares(&self, out: &mut [u64]) -> Result<usize, NumberingError> {
        let taken = self.check()?;
        let usable = self.free_pfns().count() as u64;
        let n = (self.spare as usize).min(out.len());
        for (o, p) in out[..n].iter_mut().zip(
            self.free_pfns()
                .skip((usable - self.spare).max(taken) as usize),
        ) {
            *o = p;
        }
        Ok(n)
    }

    /// Every (new pfn, old pfn), new pfns 0..nr_pages in order.
    pub fn pairs(&self) -> Result<impl Iterator<Item = (u64, u64)> + '_, NumberingError> {
        let taken = self.check()?;
        let fresh = (0..self.fresh_end).map(|k| self.old_of_checked(k).unwrap_or(u64::MAX));
        // Then every old pfn not used above: the loaders' frames, then the free ones left
        // (the spares last).
        let used = (0..self.nr_pages)
            .filter(|&p| !self.is_ring(p) && !self.is_free(p) && !self.is_fixed_old(p));
        let rest = self.free_pfns().skip(taken as usize);
        Ok(fresh
            .chain(used)
            .chain(rest)
            .enumerate()
            .map(|(k, o)| (k as u64, o)))
    }

    /// Fill `new_to_old[k]` = the old pfn that becomes new pfn k, for k < nr_pages.
    pub fn fill(&self, new_to_old: &mut [u64]) -> Result<(), NumberingError> {
        let out = new_to_old
            .get_mut(..self.nr_pages as usize)
            .ok_or(NumberingError::TableTooSmall)?;
        for (k, o) in self.pairs()? {
            out[k as usize] = o;
        }
        Ok(())
    }
}
