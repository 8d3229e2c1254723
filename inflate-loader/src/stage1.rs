//! Stage 1 of a boot (docs/bootstrap.md): a connection that starts with the stage-2 upload
//! magic carries a stage-2 binary. We check its SHA-1 against `stage2-sha1=` on our command
//! line (the boot token's loader SHA-1, which packetd passes), map it at its link address and
//! call its entry with a `loader_abi::Services` table; from then on stage 2 owns the
//! connection and we only drive the network for it. Anything wrong: one error line to the
//! client, the same on the console, and the domain powers itself off.
use crate::gnttab::GrantTable;
use crate::net::{now, NfDevice};
use crate::netfront::Netfront;
use crate::startinfo::StartInfo;
use crate::xenstore::Xenstore;
use crate::{console, events, kprintln, mm};
use core::cell::RefCell;
use core::ffi::c_void;
use loader_abi::layout::{ARENA_MAX_PAGES, ARENA_VA, PAGE_SIZE, STAGE2_REGION, STAGE2_VA};
use loader_abi::services::{Facts, Ops, Services};
use loader_abi::upload::{self, Line};
use sha1::{Digest, Sha1};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use xen_pv::hypercall::{self, MmuUpdate, MMU_NORMAL_PT_UPDATE};

/// What stage 1 needs beyond the connection: the devices it releases for stage 2.
pub struct Devices<'a> {
    pub si: &'a StartInfo,
    pub xs: &'a mut Xenstore,
    pub gt: &'a mut GrantTable,
    pub first_free: u64,
    /// Our address, for the gratuitous ARP at the hand-over.
    pub ip: [u8; 4],
}

impl Devices<'_> {
    /// Whether packetd made this loader for a boot token (its command line carries the
    /// token's stage-2 SHA-1); a loader made for a migration does not announce itself, since
    /// its address may be the still-running source guest's.
    pub fn for_boot_token(&self) -> bool {
        upload::cmdline_stage2_sha1(self.si.cmdline()).is_some()
    }
}

/// The accepted connection and the network stack that carries it.
pub struct Conn<'a, 'n, 's> {
    pub iface: &'a mut Interface,
    pub dev: &'a mut NfDevice<'n>,
    pub sockets: &'a mut SocketSet<'s>,
    pub handle: SocketHandle,
    /// The vif's event channel.
    pub port: u32,
}

impl<'s> Conn<'_, '_, 's> {
    fn sock(&mut self) -> &mut tcp::Socket<'s> {
        self.sockets.get_mut(self.handle)
    }

    fn poll(&mut self, timeout_us: u64) {
        let t = now();
        self.iface.poll(t, self.dev, self.sockets);
        let delay = self
            .iface
            .poll_delay(now(), self.sockets)
            .map(|d| d.total_micros())
            .unwrap_or(timeout_us)
            .min(timeout_us);
        if delay > 0 && self.dev.0.borrow_mut().idle_armed() {
            events::wait(&[self.port], mm::system_time_ns() + delay * 1000);
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> isize {
        let s = self.sock();
        match s.recv_slice(buf) {
            Ok(0) if !s.may_recv() => -1,
            Ok(n) => n as isize,
            Err(_) => -1,
        }
    }

    fn send(&mut self, buf: &[u8]) -> isize {
        let s = self.sock();
        if !s.may_send() {
            return -1;
        }
        s.send_slice(buf).map(|n| n as isize).unwrap_or(-1)
    }

    /// Everything queued acknowledged (0) or not within `timeout_us` (-1).
    fn flush(&mut self, timeout_us: u64) -> i64 {
        let until = mm::system_time_ns() + timeout_us * 1000;
        loop {
            self.iface.poll(now(), self.dev, self.sockets);
            let s = self.sock();
            if s.send_queue() == 0 {
                return 0;
            }
            if !s.may_send() && !s.is_active() || mm::system_time_ns() >= until {
                return -1;
            }
            self.poll(10_000);
        }
    }

    /// Close our side and let the FIN go out (at most 1 s), then forget the connection.
    fn close(&mut self) {
        self.sock().close();
        let until = mm::system_time_ns() + 1_000_000_000;
        while mm::system_time_ns() < until {
            self.iface.poll(now(), self.dev, self.sockets);
            if matches!(
                self.sock().state(),
                tcp::State::Closed | tcp::State::TimeWait | tcp::State::FinWait2
            ) {
                break;
            }
            events::wait(&[self.port], mm::system_time_ns() + 10_000_000);
        }
        self.sock().abort();
        self.iface.poll(now(), self.dev, self.sockets);
    }

    fn recv_exact(&mut self, buf: &mut [u8]) -> Result<(), &'static str> {
        let mut got = 0;
        let mut last = mm::system_time_ns();
        while got < buf.len() {
            match self.recv(&mut buf[got..]) {
                n if n < 0 => return Err("connection closed before the upload was complete"),
                0 => {
                    if mm::system_time_ns() - last > IDLE_TIMEOUT_NS {
                        return Err("no data for 30 s");
                    }
                    self.poll(50_000);
                }
                n => {
                    got += n as usize;
                    last = mm::system_time_ns();
                }
            }
        }
        Ok(())
    }

    fn send_line(&mut self, line: &Line) {
        let mut b = line.as_bytes();
        let until = mm::system_time_ns() + 5_000_000_000;
        while !b.is_empty() && mm::system_time_ns() < until {
            match self.send(b) {
                n if n < 0 => return,
                0 => self.poll(10_000),
                n => b = &b[n as usize..],
            }
        }
        let _ = self.flush(5_000_000);
    }
}

/// An upload that stops for this long is refused.
const IDLE_TIMEOUT_NS: u64 = 30_000_000_000;

/// Everything the services callbacks reach through `ctx`.
struct Ctx<'a, 'n, 's, 'd> {
    conn: Conn<'a, 'n, 's>,
    nf: &'n RefCell<Netfront>,
    dev: Devices<'d>,
    released: bool,
}

/// Serve a stage-1 upload on `conn` (its first 8 bytes are the magic, not yet consumed).
/// Never returns: stage 2 runs, or the domain powers off.
pub fn run<'n>(mut conn: Conn<'_, 'n, '_>, nf: &'n RefCell<Netfront>, dev: Devices<'_>) -> ! {
    let t0 = mm::system_time_ns();
    let remote = conn.sock().remote_endpoint();
    kprintln!("inflate-loader: stage-2 upload from {remote:?}");
    let want = match upload::cmdline_stage2_sha1(dev.si.cmdline()) {
        Some(w) => w,
        None => refuse(
            &mut conn,
            format_args!("this loader has no valid stage2-sha1= on its command line"),
        ),
    };
    let mut hdr = [0u8; upload::STAGE1_HEADER_LEN];
    if let Err(e) = conn.recv_exact(&mut hdr) {
        refuse(&mut conn, format_args!("header: {e}"));
    }
    let len = match upload::parse_stage1_header(&hdr) {
        Ok(l) => l as usize,
        Err(e) => refuse(&mut conn, format_args!("header: {e}")),
    };
    let facts = match map_region(dev.si, dev.first_free) {
        Ok(f) => f,
        Err(e) => refuse(&mut conn, format_args!("{e}")),
    };
    // SAFETY: map_region just mapped STAGE2_REGION bytes at STAGE2_VA read/write, backed by
    // frames nothing else uses, and nothing else refers to them.
    let region =
        unsafe { core::slice::from_raw_parts_mut(STAGE2_VA as *mut u8, STAGE2_REGION as usize) };
    region.fill(0);
    let mut h = Sha1::new();
    let mut got = 0;
    while got < len {
        let end = (got + 64 * 1024).min(len);
        if let Err(e) = conn.recv_exact(&mut region[got..end]) {
            refuse(&mut conn, format_args!("after {got} of {len} bytes: {e}"));
        }
        h.update(&region[got..end]);
        got = end;
    }
    let sum: [u8; 20] = h.finalize().into();
    let hex = upload::hex20(&sum);
    let hex = core::str::from_utf8(&hex).unwrap_or("?");
    if sum != want {
        let w = upload::hex20(&want);
        refuse(
            &mut conn,
            format_args!(
                "sha1 {hex} is not the boot token's {} ({len} bytes)",
                core::str::from_utf8(&w).unwrap_or("?")
            ),
        );
    }
    let ms = (mm::system_time_ns() - t0) / 1_000_000;
    kprintln!(
        "inflate-loader: stage 2 verified: {len} bytes, sha1 {hex}, {ms} ms; arena pfn {}..{} at {:#x}; calling {:#x}",
        facts.free_pfn_first, facts.free_pfn_end, facts.arena_va, STAGE2_VA
    );
    conn.send_line(&Line::new(format_args!("{}{hex}", upload::STAGE1_OK)));
    let mut ctx = Ctx {
        conn,
        nf,
        dev,
        released: false,
    };
    let ops = Ops {
        console_write: svc_console,
        recv: svc_recv,
        send: svc_send,
        poll: svc_poll,
        flush: svc_flush,
        now_ns: svc_now,
        release_devices: svc_release,
        shutdown: svc_shutdown,
    };
    // SAFETY: the callbacks below only cast ctx back to this Ctx, which lives on our stack
    // for as long as stage 2 runs (the call below never returns).
    let table = unsafe { Services::new(&mut ctx as *mut Ctx as *mut c_void, ops, facts) };
    // SAFETY: STAGE2_VA holds the verified stage-2 binary, linked at STAGE2_VA with its entry
    // as its first byte and the `extern "C" fn(*const Services) -> !` signature
    // (docs/bootstrap.md §3); its region is mapped executable.
    let entry: extern "C" fn(*const Services) -> ! = unsafe { core::mem::transmute(STAGE2_VA) };
    entry(&table)
}

/// Tell the client and the console why, then power off.
fn refuse(conn: &mut Conn<'_, '_, '_>, why: core::fmt::Arguments<'_>) -> ! {
    let line = Line::new(format_args!("{}{why}", upload::STAGE1_REFUSED));
    conn.send_line(&line);
    conn.close();
    console::write_bytes(b"inflate-loader: ");
    console::write_bytes(line.as_bytes());
    kprintln!("inflate-loader: stage 2 refused; powering off");
    console::flush();
    hypercall::shutdown(hypercall::SHUTDOWN_POWEROFF)
}

const PTE_PRESENT: u64 = 1;
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;
const PTE_FLAGS: u64 = 0xfff;
/// Leaf entries: present, writable, accessed, dirty (Xen adds the user bit for a 64-bit PV
/// guest). No NX: stage 2 executes from its region.
const LEAF: u64 = 0x63;
const ENTRIES: u64 = 512;

/// Map stage 2's region and the arena in the second GiB of virtual addresses with page
/// tables made from our own free frames (layout in loader_abi::layout). Frames from the top:
/// stage 2's region, then the L2 and L1 tables, then the arena from `first_free` up.
fn map_region(si: &StartInfo, first_free: u64) -> Result<Facts, &'static str> {
    let nr = si.nr_pages;
    let region_pages = STAGE2_REGION / PAGE_SIZE;
    let free = nr.saturating_sub(first_free);
    let base = free
        .checked_sub(region_pages + 2)
        .filter(|&b| b > ENTRIES)
        .ok_or("the domain has too little free memory for stage 2")?;
    let arena = (base - base.div_ceil(ENTRIES)).min(ARENA_MAX_PAGES);
    let l1s = 1 + arena.div_ceil(ENTRIES);
    let region_first = nr - region_pages;
    let tables_first = region_first - 1 - l1s;
    debug_assert!(first_free + arena <= tables_first);

    // The L3 table that maps the first 512 GiB (L4 slot 0): slot 1 must be free.
    // SAFETY: pt_base is the boot L4, mapped read-only in our boot mapping; entry 0 maps us.
    let l4e = unsafe { core::ptr::read_volatile(si.pt_base as *const u64) };
    let l3_mfn = (l4e & PTE_ADDR) >> 12;
    let l3_va = (mm::mfn_to_pfn(l3_mfn) << 12) as *const u64;
    // SAFETY: the boot page tables are mapped in our boot mapping at pfn << 12.
    let (l3e0, l3e1) = unsafe {
        (
            core::ptr::read_volatile(l3_va),
            core::ptr::read_volatile(l3_va.add(1)),
        )
    };
    if l3e1 & PTE_PRESENT != 0 {
        return Err("virtual addresses 1..2 GiB are already mapped");
    }
    // SAFETY: as above, the L2 under L3 slot 0.
    let l2e0 = unsafe {
        core::ptr::read_volatile((mm::mfn_to_pfn((l3e0 & PTE_ADDR) >> 12) << 12) as *const u64)
    };

    // L1 0 maps the region, L1 1.. the arena.
    let data_pfn = |i: u64| {
        if i < region_pages {
            Some(region_first + i)
        } else if i - region_pages < arena {
            Some(first_free + i - region_pages)
        } else {
            None
        }
    };
    for t in 0..l1s {
        mm::with_frame(mm::pfn_to_mfn(tables_first + 1 + t), |p| {
            for (k, e) in p.chunks_exact_mut(8).enumerate() {
                let v = data_pfn(t * ENTRIES + k as u64)
                    .map(|pfn| (mm::pfn_to_mfn(pfn) << 12) | LEAF)
                    .unwrap_or(0);
                e.copy_from_slice(&v.to_le_bytes());
            }
        });
    }
    mm::with_frame(mm::pfn_to_mfn(tables_first), |p| {
        for (k, e) in p.chunks_exact_mut(8).enumerate() {
            let k = k as u64;
            let v = if k < l1s {
                (mm::pfn_to_mfn(tables_first + 1 + k) << 12) | (l2e0 & PTE_FLAGS)
            } else {
                0
            };
            e.copy_from_slice(&v.to_le_bytes());
        }
    });
    // No writable mapping of a page-table frame may remain when Xen validates it.
    if mm::unmap_window() != 0 {
        return Err("cannot unmap the copy window");
    }
    let req = MmuUpdate {
        ptr: ((l3_mfn << 12) + 8) | MMU_NORMAL_PT_UPDATE,
        val: (mm::pfn_to_mfn(tables_first) << 12) | (l3e0 & PTE_FLAGS),
    };
    let (rc, _) = hypercall::mmu_update(&[req]);
    if rc != 0 {
        kprintln!("inflate-loader: mmu_update of L3 slot 1 failed: {rc}");
        return Err("Xen refused the page tables for stage 2");
    }
    Ok(Facts {
        start_info: si as *const StartInfo as u64,
        hypercall_page: hypercall_page(),
        nr_pages: nr,
        stage2_va: STAGE2_VA,
        stage2_bytes: STAGE2_REGION,
        stage2_pfn_first: region_first,
        free_pfn_first: first_free,
        free_pfn_end: first_free + arena,
        arena_va: ARENA_VA,
        tables_pfn_first: tables_first,
        tables_count: 1 + l1s,
    })
}

fn hypercall_page() -> u64 {
    extern "C" {
        static hypercall_page: u8;
    }
    &raw const hypercall_page as u64
}

// ---- The services callbacks. Each casts ctx back to the Ctx that `run` built.

/// # Safety
/// `ctx` is the pointer `run` put into the table, and no other reference to it is live.
unsafe fn ctx<'c>(ctx: *mut c_void) -> &'c mut Ctx<'c, 'c, 'c, 'c> {
    // SAFETY: by the caller's contract; the callbacks never nest (single vCPU, stage 2 calls
    // one at a time and none calls back into stage 2).
    unsafe { &mut *(ctx as *mut Ctx<'c, 'c, 'c, 'c>) }
}

unsafe extern "C" fn svc_console(_: *mut c_void, p: *const u8, n: usize) {
    // SAFETY: stage 2 passes a readable buffer of n bytes (Services::console).
    console::write_bytes(unsafe { core::slice::from_raw_parts(p, n) });
}

unsafe extern "C" fn svc_recv(c: *mut c_void, p: *mut u8, n: usize) -> isize {
    // SAFETY: ctx contract; stage 2 passes a writable buffer of n bytes.
    let (c, buf) = unsafe { (ctx(c), core::slice::from_raw_parts_mut(p, n)) };
    if c.released {
        return -1;
    }
    c.conn.recv(buf)
}

unsafe extern "C" fn svc_send(c: *mut c_void, p: *const u8, n: usize) -> isize {
    // SAFETY: ctx contract; stage 2 passes a readable buffer of n bytes.
    let (c, buf) = unsafe { (ctx(c), core::slice::from_raw_parts(p, n)) };
    if c.released {
        return -1;
    }
    c.conn.send(buf)
}

unsafe extern "C" fn svc_poll(c: *mut c_void, timeout_us: u64) {
    // SAFETY: ctx contract.
    let c = unsafe { ctx(c) };
    if !c.released {
        c.conn.poll(timeout_us.min(1_000_000));
    }
}

unsafe extern "C" fn svc_flush(c: *mut c_void, timeout_us: u64) -> i64 {
    // SAFETY: ctx contract.
    let c = unsafe { ctx(c) };
    if c.released {
        return -1;
    }
    c.conn.flush(timeout_us)
}

unsafe extern "C" fn svc_now(_: *mut c_void) -> u64 {
    mm::system_time_ns()
}

/// Close the connection, then hand netfront over exactly as restore's COMMIT path does
/// (`Netfront::disconnect`: backend back in InitWait, grants ended, channel closed).
unsafe extern "C" fn svc_release(c: *mut c_void) -> i64 {
    // SAFETY: ctx contract.
    let c = unsafe { ctx(c) };
    if c.released {
        return 0;
    }
    c.conn.close();
    c.released = true;
    let mac = c.nf.borrow().mac;
    announce(c.nf, mac, c.dev.ip, c.conn.port);
    let r = c.nf.borrow_mut().disconnect(c.dev.xs, c.dev.gt);
    let rc = match r {
        Ok(st) => {
            kprintln!(
                "inflate-loader: devices released for stage 2: backend state {st}, grants still active {}, xenstore idle {}",
                c.dev.gt.active,
                c.dev.xs.idle()
            );
            0
        }
        Err(e) => {
            kprintln!("inflate-loader: releasing netfront for stage 2 failed: {e}");
            -1
        }
    };
    console::flush();
    rc
}

/// One gratuitous ARP request: `ip` is at `mac`. Linux peers update an existing entry from it.
/// At the hand-over to stage 2's kernel (vif MAC) and, in a loader packetd made, when it
/// starts listening (its locally administered MAC): packetd reuses pool addresses, so peers
/// may still hold the previous guest's MAC for ours until their entries go stale.
pub fn announce(nf: &RefCell<Netfront>, mac: [u8; 6], ip: [u8; 4], port: u32) {
    let mut nf = nf.borrow_mut();
    if !nf.can_send() {
        kprintln!("inflate-loader: no room for the gratuitous ARP");
        return;
    }
    nf.send(42, |f| {
        f[..6].fill(0xff);
        f[6..12].copy_from_slice(&mac);
        f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        // Ethernet, IPv4, 6-byte MACs, 4-byte addresses, request.
        f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f[22..28].copy_from_slice(&mac);
        f[28..32].copy_from_slice(&ip);
        f[32..38].fill(0);
        f[38..42].copy_from_slice(&ip);
    });
    drop(nf);
    // Give the backend a moment to take it off the ring before the disconnect.
    events::wait(&[port], mm::system_time_ns() + 20_000_000);
}

unsafe extern "C" fn svc_shutdown(_: *mut c_void, reason: u32) -> ! {
    console::flush();
    hypercall::shutdown(reason)
}
