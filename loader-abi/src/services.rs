//! The services table: what stage 1 lends stage 2 (docs/bootstrap.md §3).
//!
//! Stage 1 keeps driving netfront, smoltcp and the console for stage 2: stage 2 calls back
//! through the function pointers below, with the opaque `ctx` stage 1 put in the table. The
//! layout is `#[repr(C)]` and versioned, so a stage 2 built separately can check it.
//!
//! Whoever builds a table vouches for its callbacks (the constructor is `unsafe`); after that
//! the methods here are safe to call. All callbacks run on stage 1's single vCPU, never
//! concurrently, and never re-enter stage 2.

use core::ffi::c_void;
use core::fmt;

/// `Services::magic`: "LMSVCTAB" as a little-endian u64.
pub const SERVICES_MAGIC: u64 = u64::from_le_bytes(*b"LMSVCTAB");

/// `Services::version`. A stage 2 refuses a table of another version.
pub const ABI_VERSION: u32 = 1;

/// Opaque pointer stage 1 passes back to every callback.
pub type Ctx = *mut c_void;

/// The callbacks, in this order. Every one takes `ctx` first.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ops {
    /// Write bytes to the domain's console (Xen's console ring, as stage 1 prints).
    pub console_write: unsafe extern "C" fn(Ctx, *const u8, usize),
    /// Copy up to `len` received bytes of the connection to `buf`. Returns the count (> 0),
    /// 0 when nothing is buffered right now (call `poll`), -1 when the peer closed and nothing
    /// is left, or the connection is gone.
    pub recv: unsafe extern "C" fn(Ctx, *mut u8, usize) -> isize,
    /// Queue up to `len` bytes for sending. Returns the count queued (0 = the send buffer is
    /// full: call `poll`), -1 when the connection can no longer send.
    pub send: unsafe extern "C" fn(Ctx, *const u8, usize) -> isize,
    /// Drive the network (netfront, TCP timers) once, then wait at most `timeout_us` for the
    /// next event on the network.
    pub poll: unsafe extern "C" fn(Ctx, u64),
    /// Drive the network until everything queued was acknowledged by the peer or `timeout_us`
    /// passed. 0 done, -1 timed out or the connection is gone.
    pub flush: unsafe extern "C" fn(Ctx, u64) -> i64,
    /// Xen system time in ns.
    pub now_ns: unsafe extern "C" fn(Ctx) -> u64,
    /// Close the connection, disconnect netfront (backend left in InitWait for a new
    /// frontend) and drain the console, as before a hand-over to another kernel. After it only
    /// `console_write`, `now_ns` and `shutdown` may be called. 0 ok, else a negative code
    /// (the console has the reason).
    pub release_devices: unsafe extern "C" fn(Ctx) -> i64,
    /// SCHEDOP_shutdown with this reason (0 poweroff, 3 crash), after draining the console.
    pub shutdown: unsafe extern "C" fn(Ctx, u32) -> !,
}

/// Plain facts about the domain (addresses are virtual addresses in the current page tables).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// Xen's start_info page.
    pub start_info: u64,
    /// The hypercall page Xen filled in for stage 1 (entry `n` at `hypercall_page + 32 * n`).
    pub hypercall_page: u64,
    /// The domain's pages (start_info.nr_pages).
    pub nr_pages: u64,
    /// Where stage 2 runs (`layout::STAGE2_VA`) and the size of its region.
    pub stage2_va: u64,
    pub stage2_bytes: u64,
    /// Stage 2's region is the frames `stage2_pfn_first ..+ stage2_bytes / 4096`.
    pub stage2_pfn_first: u64,
    /// Free frames stage 2 may use: pfns `free_pfn_first .. free_pfn_end`, mapped read/write
    /// at `arena_va` onwards in pfn order. Stage 1 uses no frame in that range.
    pub free_pfn_first: u64,
    pub free_pfn_end: u64,
    pub arena_va: u64,
    /// The frames of the page tables stage 1 made for stage 2's region and the arena (one L2,
    /// then the L1s): pfns `tables_pfn_first ..+ tables_count`. Everything from
    /// `free_pfn_end` to `nr_pages` is stage 2's region or these tables.
    pub tables_pfn_first: u64,
    pub tables_count: u64,
}

impl Facts {
    /// The arena's size in bytes.
    pub fn arena_bytes(&self) -> u64 {
        (self.free_pfn_end - self.free_pfn_first) * crate::layout::PAGE_SIZE
    }
}

/// The table itself.
#[repr(C)]
pub struct Services {
    magic: u64,
    version: u32,
    /// `size_of::<Services>()` of the builder.
    size: u32,
    ctx: Ctx,
    ops: Ops,
    pub facts: Facts,
}

/// The peer closed the connection, or it is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the connection is closed")
    }
}

/// Why a table pointer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    Null,
    BadMagic(u64),
    Version(u32),
    Size(u32),
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::Null => f.write_str("services table pointer is null"),
            TableError::BadMagic(m) => write!(f, "services table magic {m:#018x} is wrong"),
            TableError::Version(v) => write!(
                f,
                "services table version {v}, this stage 2 speaks {ABI_VERSION}"
            ),
            TableError::Size(s) => write!(
                f,
                "services table is {s} bytes, this stage 2 expects {}",
                core::mem::size_of::<Services>()
            ),
        }
    }
}

impl Services {
    /// Build a table.
    ///
    /// # Safety
    /// Every callback in `ops` must be safe to call with `ctx` and arguments that satisfy its
    /// documentation, for as long as the table is in use.
    pub const unsafe fn new(ctx: Ctx, ops: Ops, facts: Facts) -> Self {
        Services {
            magic: SERVICES_MAGIC,
            version: ABI_VERSION,
            size: core::mem::size_of::<Services>() as u32,
            ctx,
            ops,
            facts,
        }
    }

    /// Check a table passed to stage 2's entry.
    ///
    /// # Safety
    /// `p` is null or points at a readable `Services` that stays valid for `'a` and was built
    /// with [`Services::new`].
    pub unsafe fn from_raw<'a>(p: *const Services) -> Result<&'a Services, TableError> {
        if p.is_null() {
            return Err(TableError::Null);
        }
        // SAFETY: non-null and readable by the caller's contract.
        let s = unsafe { &*p };
        if s.magic != SERVICES_MAGIC {
            return Err(TableError::BadMagic(s.magic));
        }
        if s.version != ABI_VERSION {
            return Err(TableError::Version(s.version));
        }
        if s.size as usize != core::mem::size_of::<Services>() {
            return Err(TableError::Size(s.size));
        }
        Ok(s)
    }

    pub fn console(&self, s: &[u8]) {
        // SAFETY: the builder vouched for the callback (Services::new); the slice is valid.
        unsafe { (self.ops.console_write)(self.ctx, s.as_ptr(), s.len()) }
    }

    /// Received bytes copied into `buf`: Ok(0) when none are buffered right now.
    pub fn recv(&self, buf: &mut [u8]) -> Result<usize, Closed> {
        // SAFETY: as in `console`; `buf` is writable for its length.
        let n = unsafe { (self.ops.recv)(self.ctx, buf.as_mut_ptr(), buf.len()) };
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= buf.len())
            .ok_or(Closed)
    }

    /// Bytes queued for sending: Ok(0) when the send buffer is full right now.
    pub fn send(&self, buf: &[u8]) -> Result<usize, Closed> {
        // SAFETY: as in `console`.
        let n = unsafe { (self.ops.send)(self.ctx, buf.as_ptr(), buf.len()) };
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= buf.len())
            .ok_or(Closed)
    }

    pub fn poll(&self, timeout_us: u64) {
        // SAFETY: as in `console`.
        unsafe { (self.ops.poll)(self.ctx, timeout_us) }
    }

    pub fn flush(&self, timeout_us: u64) -> Result<(), Closed> {
        // SAFETY: as in `console`.
        match unsafe { (self.ops.flush)(self.ctx, timeout_us) } {
            0 => Ok(()),
            _ => Err(Closed),
        }
    }

    pub fn now_ns(&self) -> u64 {
        // SAFETY: as in `console`.
        unsafe { (self.ops.now_ns)(self.ctx) }
    }

    /// Release netfront and the connection before a hand-over; Err(code) if it failed.
    pub fn release_devices(&self) -> Result<(), i64> {
        // SAFETY: as in `console`.
        match unsafe { (self.ops.release_devices)(self.ctx) } {
            0 => Ok(()),
            e => Err(e),
        }
    }

    /// Power the domain off (reason 0) or crash it (3).
    pub fn shutdown(&self, reason: u32) -> ! {
        // SAFETY: as in `console`.
        unsafe { (self.ops.shutdown)(self.ctx, reason) }
    }

    /// Send all of `buf`, polling while the send buffer is full.
    pub fn send_all(&self, mut buf: &[u8]) -> Result<(), Closed> {
        while !buf.is_empty() {
            match self.send(buf)? {
                0 => self.poll(10_000),
                n => buf = &buf[n..],
            }
        }
        Ok(())
    }

    /// Fill `buf` completely; Err if the connection closes first or no byte arrives for
    /// `idle_timeout_ns`.
    pub fn recv_exact(&self, buf: &mut [u8], idle_timeout_ns: u64) -> Result<(), Closed> {
        let mut got = 0;
        while got < buf.len() {
            got += self.recv_some(&mut buf[got..], idle_timeout_ns)?;
        }
        Ok(())
    }

    /// Whatever is buffered, at least one byte (unless `buf` is empty), up to `buf.len()`;
    /// polls while nothing is. Err if the connection closes first or no byte arrives for
    /// `idle_timeout_ns`.
    pub fn recv_some(&self, buf: &mut [u8], idle_timeout_ns: u64) -> Result<usize, Closed> {
        if buf.is_empty() {
            return Ok(0);
        }
        let since = self.now_ns();
        loop {
            match self.recv(buf)? {
                0 => {
                    if self.now_ns().saturating_sub(since) > idle_timeout_ns {
                        return Err(Closed);
                    }
                    self.poll(50_000)
                }
                n => return Ok(n),
            }
        }
    }

    /// A `core::fmt::Write` onto the console.
    pub fn console_writer(&self) -> ConsoleWriter<'_> {
        ConsoleWriter(self)
    }
}

pub struct ConsoleWriter<'a>(&'a Services);

impl fmt::Write for ConsoleWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.console(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layout_is_fixed() {
        // docs/bootstrap.md §3 lists these offsets; a change is an ABI change.
        assert_eq!(offset_of!(Services, magic), 0);
        assert_eq!(offset_of!(Services, version), 8);
        assert_eq!(offset_of!(Services, size), 12);
        assert_eq!(offset_of!(Services, ctx), 16);
        assert_eq!(offset_of!(Services, ops), 24);
        assert_eq!(size_of::<Ops>(), 8 * 8);
        assert_eq!(offset_of!(Services, facts), 88);
        assert_eq!(size_of::<Facts>(), 11 * 8);
        assert_eq!(size_of::<Services>(), 176);
        assert_eq!(&SERVICES_MAGIC.to_le_bytes(), b"LMSVCTAB");
    }

    /// A fake stage 1 for the unit tests: a byte script to receive, a log of what was sent.
    struct FakeConn {
        input: &'static [u8],
        pos: usize,
        chunk: usize,
        sent: [u8; 64],
        nsent: usize,
        polls: u64,
    }

    impl FakeConn {
        /// A connection that delivers `input` at most `chunk` bytes a call.
        fn new(input: &'static [u8], chunk: usize) -> FakeConn {
            let (pos, sent, nsent, polls) = (0, [0; 64], 0, 0);
            FakeConn {
                input,
                pos,
                chunk,
                sent,
                nsent,
                polls,
            }
        }
    }

    unsafe extern "C" fn f_console(_: Ctx, _: *const u8, _: usize) {}
    unsafe extern "C" fn f_recv(c: Ctx, b: *mut u8, n: usize) -> isize {
        // SAFETY: tests pass a FakeConn as ctx and a writable buffer.
        let c = unsafe { &mut *(c as *mut FakeConn) };
        if c.pos == c.input.len() {
            return -1;
        }
        // Every other call finds nothing buffered, like a real connection between segments.
        c.polls += 1;
        if c.polls % 2 == 1 {
            return 0;
        }
        let k = n.min(c.chunk).min(c.input.len() - c.pos);
        // SAFETY: b is writable for n >= k bytes.
        unsafe { core::ptr::copy_nonoverlapping(c.input.as_ptr().add(c.pos), b, k) };
        c.pos += k;
        k as isize
    }
    unsafe extern "C" fn f_send(c: Ctx, b: *const u8, n: usize) -> isize {
        // SAFETY: as above.
        let c = unsafe { &mut *(c as *mut FakeConn) };
        let k = n.min(3).min(c.sent.len() - c.nsent);
        // SAFETY: b is readable for n >= k bytes.
        unsafe { core::ptr::copy_nonoverlapping(b, c.sent.as_mut_ptr().add(c.nsent), k) };
        c.nsent += k;
        k as isize
    }
    unsafe extern "C" fn f_poll(_: Ctx, _: u64) {}
    unsafe extern "C" fn f_flush(_: Ctx, _: u64) -> i64 {
        0
    }
    unsafe extern "C" fn f_now(c: Ctx) -> u64 {
        // SAFETY: as above.
        unsafe { (*(c as *mut FakeConn)).polls * 1000 }
    }
    unsafe extern "C" fn f_release(_: Ctx) -> i64 {
        -5
    }
    unsafe extern "C" fn f_shutdown(_: Ctx, _: u32) -> ! {
        panic!("shutdown")
    }

    fn table(c: &mut FakeConn) -> Services {
        let ops = Ops {
            console_write: f_console,
            recv: f_recv,
            send: f_send,
            poll: f_poll,
            flush: f_flush,
            now_ns: f_now,
            release_devices: f_release,
            shutdown: f_shutdown,
        };
        // SAFETY: the fake callbacks only touch the FakeConn, which outlives the table's use.
        unsafe { Services::new(c as *mut FakeConn as Ctx, ops, Facts::default()) }
    }

    #[test]
    fn recv_exact_and_send_all_loop_over_short_transfers() {
        let mut c = FakeConn::new(b"hello, stage two", 5);
        let t = table(&mut c);
        // SAFETY: t was built by Services::new and lives for the test.
        let s = unsafe { Services::from_raw(&t) }.unwrap();
        let mut buf = [0u8; 16];
        s.recv_exact(&mut buf, 1_000_000).unwrap();
        assert_eq!(&buf, b"hello, stage two");
        assert_eq!(s.recv_exact(&mut buf[..1], 1_000_000), Err(Closed));
        s.send_all(b"stage2 ok\n").unwrap();
        assert_eq!(s.release_devices(), Err(-5));
        assert_eq!(&c.sent[..c.nsent], b"stage2 ok\n");
    }

    #[test]
    fn from_raw_refuses_foreign_tables() {
        let mut c = FakeConn::new(b"", 1);
        let mut t = table(&mut c);
        // SAFETY: null is allowed.
        assert_eq!(
            unsafe { Services::from_raw(core::ptr::null()) }.err(),
            Some(TableError::Null)
        );
        t.version = 2;
        // SAFETY: t is a valid table for the duration of the call.
        assert_eq!(
            unsafe { Services::from_raw(&t) }.err(),
            Some(TableError::Version(2))
        );
        t.version = ABI_VERSION;
        t.magic = 7;
        // SAFETY: as above.
        assert_eq!(
            unsafe { Services::from_raw(&t) }.err(),
            Some(TableError::BadMagic(7))
        );
    }
}
