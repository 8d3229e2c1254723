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
    /// New pfns 0..fresh_end get free frames (Layout::end).
    pub fresh_end: u64,
    /// Free frames kept out of 0..fresh_end for the caller (its trampoline chain), taken from
    /// the end of the free ranges.
    pub spare: u64,
}

impl Numbering<'_> {
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
        let rings_in_free = [s.0, c.0].iter().filter(|&&p| self.is_free(p)).count() as u64;
        let usable = free - rings_in_free;
        let needed = self.fresh_end - 2 + self.spare;
        if usable < needed {
            return Err(NumberingError::NotEnoughFree {
                free: usable,
                needed,
            });
        }
        Ok(usable)
    }

    fn is_free(&self, p: u64) -> bool {
        self.free.iter().any(|r| r.contains(&p))
    }

    fn is_ring(&self, p: u64) -> bool {
        p == self.store.0 || p == self.console.0
    }

    /// Free old pfns in ascending order, rings excluded.
    fn free_pfns(&self) -> impl Iterator<Item = u64> + '_ {
        self.free
            .iter()
            .flat_map(|r| r.clone())
            .filter(|&p| !self.is_ring(p))
    }

    /// The `spare` old pfns reserved for the caller (the last free ones).
    pub fn spares(&self, out: &mut [u64]) -> Result<usize, NumberingError> {
        let usable = self.check()?;
        let n = (self.spare as usize).min(out.len());
        for (o, p) in out[..n]
            .iter_mut()
            .zip(self.free_pfns().skip((usable - self.spare) as usize))
        {
            *o = p;
        }
        Ok(n)
    }

    /// Fill `new_to_old[k]` = the old pfn that becomes new pfn k, for k < nr_pages.
    pub fn fill(&self, new_to_old: &mut [u64]) -> Result<(), NumberingError> {
        self.check()?;
        let n = self.nr_pages as usize;
        let out = new_to_old
            .get_mut(..n)
            .ok_or(NumberingError::TableTooSmall)?;
        let fresh = self.fresh_end - 2;
        let mut free = self.free_pfns();
        for (k, o) in out.iter_mut().enumerate().take(self.fresh_end as usize) {
            let k = k as u64;
            *o = if k == self.store.1 {
                self.store.0
            } else if k == self.console.1 {
                self.console.0
            } else {
                free.next().unwrap_or(u64::MAX)
            };
        }
        // Then every old pfn not used above: the loaders' frames, then the free ones left
        // (the spares last).
        let mut k = self.fresh_end as usize;
        let used = (0..self.nr_pages).filter(|&p| !self.is_ring(p) && !self.is_free(p));
        for p in used.chain(self.free_pfns().skip(fresh as usize)) {
            out[k] = p;
            k += 1;
        }
        debug_assert_eq!(k, n);
        Ok(())
    }
}
