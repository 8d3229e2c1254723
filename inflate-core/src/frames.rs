//! Frame bookkeeping and the placement plan.
//!
//! `FrameBook` records which of the domain's pseudo-physical frames are free: everything below
//! `first_free` (kernel image, boot structures, page tables) and any frame the kernel reserves
//! later is never handed out. `Plan` maps each guest pfn of the incoming checkpoint to one of
//! our frames; a page sent again in a later pre-copy round lands in the frame it got first.
//! Both work over caller-provided storage so the kernel needs no heap.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanError {
    /// The header's pfn range does not fit the plan's table (`slots` entries).
    TooManyPfns { pfns: u64, slots: u64 },
    /// The guest's RAM (pages of a type other than "not RAM") needs more frames than the
    /// loader can give: `ram` RAM pfns known so far, `frames` = frames placed + free.
    RamTooLarge { ram: u64, frames: u64 },
    /// No free frame was left for a page of pfn `pfn` (after `placed` pages).
    OutOfFrames { pfn: u64, placed: u64 },
    /// A page names a pfn beyond the header's max_pfn.
    PfnOutOfRange { pfn: u64, max_pfn: u64 },
    /// Pages arrived before the header fixed the plan's size.
    NotStarted,
}

impl core::fmt::Display for PlanError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PlanError::TooManyPfns { pfns, slots } => {
                write!(f, "stream has {pfns} pfns, the loader's plan holds {slots}")
            }
            PlanError::RamTooLarge { ram, frames } => write!(
                f,
                "guest RAM is at least {ram} pages, the loader has {frames} frames for it"
            ),
            PlanError::OutOfFrames { pfn, placed } => {
                write!(f, "no free frame for pfn {pfn} after {placed} pages placed")
            }
            PlanError::PfnOutOfRange { pfn, max_pfn } => {
                write!(f, "pfn {pfn} beyond max_pfn {max_pfn}")
            }
            PlanError::NotStarted => write!(f, "page before header"),
        }
    }
}

pub struct FrameBook<'a> {
    /// One bit per pfn, 1 = in use.
    used: &'a mut [u64],
    nr_pages: u64,
    free: u64,
    /// Next pfn to try in `alloc` (frames are handed out in ascending order).
    cursor: u64,
}

impl<'a> FrameBook<'a> {
    /// Frames `[0, first_free)` are in use; `[first_free, nr_pages)` free. `storage` must hold
    /// at least `nr_pages` bits; frames beyond its capacity are treated as absent.
    pub fn new(storage: &'a mut [u64], nr_pages: u64, first_free: u64) -> Self {
        let nr_pages = nr_pages.min(storage.len() as u64 * 64);
        storage.fill(0);
        let mut b = FrameBook {
            used: storage,
            nr_pages,
            free: nr_pages,
            cursor: 0,
        };
        for pfn in 0..first_free.min(nr_pages) {
            b.reserve(pfn);
        }
        b.cursor = first_free.min(nr_pages);
        b
    }

    pub fn nr_pages(&self) -> u64 {
        self.nr_pages
    }

    pub fn free_count(&self) -> u64 {
        self.free
    }

    pub fn is_used(&self, pfn: u64) -> bool {
        pfn >= self.nr_pages || self.used[(pfn / 64) as usize] & (1 << (pfn % 64)) != 0
    }

    /// Mark a frame used (idempotent). Returns false if it was already used or absent.
    pub fn reserve(&mut self, pfn: u64) -> bool {
        if self.is_used(pfn) {
            return false;
        }
        self.used[(pfn / 64) as usize] |= 1 << (pfn % 64);
        self.free -= 1;
        true
    }

    pub fn alloc(&mut self) -> Option<u64> {
        if self.free == 0 {
            return None;
        }
        for _ in 0..2 {
            while self.cursor < self.nr_pages {
                let pfn = self.cursor;
                self.cursor += 1;
                if self.reserve(pfn) {
                    return Some(pfn);
                }
            }
            self.cursor = 0;
        }
        None
    }

    pub fn release(&mut self, pfn: u64) {
        if pfn < self.nr_pages && self.is_used(pfn) {
            self.used[(pfn / 64) as usize] &= !(1 << (pfn % 64));
            self.free += 1;
        }
    }
}

const UNPLACED: u32 = u32::MAX;

/// Guest pfn -> loader pfn. The table is indexed by guest pfn up to the header's max_pfn (a
/// real capture's max_pfn is Linux's p2m size, far above its RAM), but frames are only taken
/// for pages that arrive (and, at the end, for RAM pfns never sent: see `Receiver`). So the
/// memory a guest needs is its RAM, and the table costs 4 bytes per pfn.
pub struct Plan<'a> {
    slots: &'a mut [u32],
    max_pfn: Option<u64>,
    placed: u64,
}

impl<'a> Plan<'a> {
    pub fn new(storage: &'a mut [u32]) -> Self {
        Plan {
            slots: storage,
            max_pfn: None,
            placed: 0,
        }
    }

    /// Pfns the table can describe (`max_pfn` must be below this).
    pub fn capacity(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Start a plan for a guest whose pfns run 0..=max_pfn. Fails only when the table cannot
    /// describe that many pfns; whether the guest's RAM fits is known later (page types).
    pub fn start(&mut self, max_pfn: u64) -> Result<(), PlanError> {
        let pfns = max_pfn.saturating_add(1);
        // Loader pfns are stored as u32; UNPLACED is u32::MAX.
        if pfns > self.capacity() {
            return Err(PlanError::TooManyPfns {
                pfns,
                slots: self.capacity(),
            });
        }
        self.slots[..pfns as usize].fill(UNPLACED);
        self.max_pfn = Some(max_pfn);
        self.placed = 0;
        Ok(())
    }

    /// Where guest pfn `pfn` goes, allocating a frame the first time it is seen.
    pub fn place(&mut self, pfn: u64, book: &mut FrameBook) -> Result<u64, PlanError> {
        let max_pfn = self.max_pfn.ok_or(PlanError::NotStarted)?;
        if pfn > max_pfn {
            return Err(PlanError::PfnOutOfRange { pfn, max_pfn });
        }
        let slot = &mut self.slots[pfn as usize];
        if *slot != UNPLACED {
            return Ok(*slot as u64);
        }
        let f = book
            .alloc()
            .filter(|&f| f < UNPLACED as u64)
            .ok_or(PlanError::OutOfFrames {
                pfn,
                placed: self.placed,
            })?;
        *slot = f as u32;
        self.placed += 1;
        Ok(f)
    }

    /// Whether `pfn` already has a frame (out-of-range pfns have none).
    pub fn is_placed(&self, pfn: u64) -> bool {
        self.lookup(pfn).is_some()
    }

    pub fn lookup(&self, pfn: u64) -> Option<u64> {
        let max = self.max_pfn?;
        if pfn > max || self.slots[pfn as usize] == UNPLACED {
            None
        } else {
            Some(self.slots[pfn as usize] as u64)
        }
    }

    /// Take guest pfn `pfn`'s frame away from the plan and give it back to `book`
    /// (restore: pfns whose contents are not kept, e.g. the xenstore and console rings).
    pub fn unplace(&mut self, pfn: u64, book: &mut FrameBook) -> Option<u64> {
        let f = self.lookup(pfn)?;
        self.slots[pfn as usize] = UNPLACED;
        self.placed -= 1;
        book.release(f);
        Some(f)
    }

    /// Distinct guest pfns placed so far.
    pub fn placed(&self) -> u64 {
        self.placed
    }

    pub fn max_pfn(&self) -> Option<u64> {
        self.max_pfn
    }

    /// Give every placed frame back to `book` and forget the plan (after a refused stream).
    pub fn abandon(&mut self, book: &mut FrameBook) {
        if let Some(max) = self.max_pfn.take() {
            for s in self.slots[..=max as usize].iter_mut() {
                if *s != UNPLACED {
                    book.release(*s as u64);
                    *s = UNPLACED;
                }
            }
        }
        self.placed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn book_reserves_kernel_frames_and_allocates_ascending() {
        let mut st = [0u64; 2];
        let mut b = FrameBook::new(&mut st, 100, 10);
        assert_eq!(b.free_count(), 90);
        assert!(b.is_used(9) && !b.is_used(10));
        assert_eq!(b.alloc(), Some(10));
        assert!(b.reserve(50));
        assert!(!b.reserve(50));
        let mut got = vec![];
        while let Some(p) = b.alloc() {
            got.push(p);
        }
        assert_eq!(got.len(), 88);
        assert!(!got.contains(&50) && got.iter().all(|&p| (11..100).contains(&p)));
        assert_eq!(b.free_count(), 0);
        b.release(42);
        assert_eq!(b.alloc(), Some(42));
    }

    #[test]
    fn book_clamps_to_storage() {
        let mut st = [0u64; 1];
        let b = FrameBook::new(&mut st, 1000, 0);
        assert_eq!(b.nr_pages(), 64);
        assert!(b.is_used(64));
    }

    #[test]
    fn plan_places_each_pfn_once() {
        let mut st = [0u64; 4];
        let mut b = FrameBook::new(&mut st, 256, 16);
        let mut slots = [0u32; 256];
        let mut p = Plan::new(&mut slots);
        assert_eq!(p.place(0, &mut b), Err(PlanError::NotStarted));
        p.start(99).unwrap();
        let a = p.place(5, &mut b).unwrap();
        let c = p.place(7, &mut b).unwrap();
        assert_ne!(a, c);
        assert_eq!(
            p.place(5, &mut b).unwrap(),
            a,
            "a resent page reuses its frame"
        );
        assert_eq!(p.placed(), 2);
        assert!(a >= 16 && c >= 16);
        assert_eq!(
            p.place(100, &mut b),
            Err(PlanError::PfnOutOfRange {
                pfn: 100,
                max_pfn: 99
            })
        );
        assert_eq!(p.lookup(7), Some(c));
        assert_eq!(p.lookup(8), None);
        p.abandon(&mut b);
        assert_eq!(b.free_count(), 240);
        assert_eq!(p.lookup(7), None);
    }

    #[test]
    fn plan_is_indexed_by_pfn_but_takes_frames_per_page() {
        // A guest with a huge pfn range (a real capture's max_pfn is the p2m size) and few
        // pages fits as long as the pages fit; only the table bounds the range.
        let mut st = [0u64; 4];
        let mut b = FrameBook::new(&mut st, 256, 200);
        let mut slots = vec![0u32; 4096];
        let mut p = Plan::new(&mut slots);
        assert_eq!(
            p.start(4096),
            Err(PlanError::TooManyPfns {
                pfns: 4097,
                slots: 4096
            })
        );
        p.start(4095).unwrap();
        for pfn in 0..56 {
            p.place(pfn * 73, &mut b).unwrap();
        }
        assert_eq!(
            p.place(4000, &mut b),
            Err(PlanError::OutOfFrames {
                pfn: 4000,
                placed: 56
            })
        );
        let f = p.unplace(73, &mut b).unwrap();
        assert_eq!(b.free_count(), 1);
        assert!(!p.is_placed(73));
        assert_eq!(p.place(4000, &mut b), Ok(f), "the released frame is reused");
    }
}
