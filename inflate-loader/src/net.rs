//! smoltcp over netfront, and the server: one listening socket serves the checkpoint
//! connection (or hands a stage-2 upload to `stage1`); a second socket on the same port answers any concurrent connection with a
//! "busy" result record and closes it.
use crate::netfront::Netfront;
use crate::{events, kprintln, mm};
use core::cell::RefCell;
use inflate_core::cmdline::NetConfig;
use inflate_core::receive::{FrameStore, Receiver, State};
use inflate_core::result::{ResultRecord, Status};
use smoltcp::iface::{Config, Interface, SocketSet, SocketStorage};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};

pub struct NfDevice<'n>(pub &'n RefCell<Netfront>);
pub struct Rx<'n>(&'n RefCell<Netfront>);
pub struct Tx<'n>(&'n RefCell<Netfront>);

impl RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        // smoltcp answers from inside the closure through the TxToken, which borrows the same
        // netfront: copy the frame out first so the borrow ends before `f` runs.
        let mut frame = [0u8; 2048];
        // None: the response was malformed and skipped, nothing else queued.
        let n = self
            .0
            .borrow_mut()
            .recv(|d| {
                let n = d.len().min(frame.len());
                frame[..n].copy_from_slice(&d[..n]);
                n
            })
            .unwrap_or(0);
        f(&frame[..n])
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.0.borrow_mut().send(len, f)
    }
}

impl<'n> Device for NfDevice<'n> {
    type RxToken<'a>
        = Rx<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = Tx<'a>
    where
        Self: 'a;

    fn receive(&mut self, _t: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let ready = {
            let mut nf = self.0.borrow_mut();
            nf.rx_pending() && nf.can_send()
        };
        ready.then_some((Rx(self.0), Tx(self.0)))
    }

    fn transmit(&mut self, _t: Instant) -> Option<Tx<'_>> {
        self.0.borrow_mut().can_send().then_some(Tx(self.0))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c.max_burst_size = Some(crate::netfront::TX_BUFS / 2);
        c
    }
}

/// Loader frames reached through the mapping window.
pub struct WindowStore;

impl FrameStore for WindowStore {
    fn write(&mut self, pfn: u64, data: Option<&[u8; 4096]>) {
        mm::with_frame(mm::pfn_to_mfn(pfn), |p| match data {
            Some(d) => p.copy_from_slice(d),
            None => p.fill(0),
        })
    }
    fn leaf(&mut self, pfn: u64) -> [u8; 32] {
        mm::with_frame(mm::pfn_to_mfn(pfn), |p| {
            checkpoint_stream::digest::leaf_hash(Some(p))
        })
    }
}

pub fn now() -> Instant {
    Instant::from_micros((mm::system_time_ns() / 1000) as i64)
}

fn now_us() -> u64 {
    mm::system_time_ns() / 1000
}

/// Receive buffer of the checkpoint connection: above 64 KiB smoltcp negotiates window
/// scaling, which keeps more data in flight on the slow emulated network.
const MAIN_RX_LEN: usize = 256 * 1024;
static mut MAIN_RX: [u8; MAIN_RX_LEN] = [0; MAIN_RX_LEN];

/// Restore in place, seen from the connection (docs/inflate-loader.md "Commit handshake").
pub trait Restorer {
    /// Phase A on a verified stream that carried a capture; Ok = ready for the decision.
    fn prepare(&mut self, rx: &mut Receiver<'_>) -> Result<(), crate::restore::Msg>;
    /// Undo phase A (ABORT, EOF, timeout); the receiver then gives every frame back.
    fn undo(&mut self, rx: &mut Receiver<'_>);
}

/// How serving ended.
pub enum Outcome {
    /// A stream without a capture was verified (status ok): keep the pages, hand over.
    Verified(ResultRecord),
    /// A capture passed phase A, the peer sent COMMIT, and the connection is closed.
    Commit(ResultRecord),
}

pub const COMMIT: &[u8; 8] = b"COMMIT\0\0";

/// Serve until a checkpoint has been received and verified (and, for a capture, committed).
pub fn serve(
    nf: &RefCell<Netfront>,
    cfg: &NetConfig,
    rx: &mut Receiver<'_>,
    boot_ns: u64,
    restorer: &mut dyn Restorer,
    stage1: crate::stage1::Devices<'_>,
) -> Outcome {
    let mut stage1 = Some(stage1);
    let mut mac = nf.borrow().mac;
    // Our own frames use the vif's MAC with the locally-administered bit flipped: the
    // xenstore MAC is the guest's, which may still be alive on the same segment while its
    // stream arrives (docs/inflate-loader.md).
    mac[0] ^= 0x02;
    let port = nf.borrow().port;
    if stage1.as_ref().is_some_and(|d| d.for_boot_token()) {
        crate::stage1::announce(nf, mac, cfg.ip, port);
    }
    let mut dev = NfDevice(nf);
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    config.random_seed = mm::rdtsc() ^ mm::system_time_ns();
    let mut iface = Interface::new(config, &mut dev, now());
    let [a, b, c, d] = cfg.ip;
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(IpAddress::v4(a, b, c, d), cfg.prefix_len));
    });
    if let Some([a, b, c, d]) = cfg.gateway {
        let _ = iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::new(a, b, c, d));
    }

    // SAFETY: serve() runs once (kmain never returns to call it again), so this is the only
    // reference to the buffer.
    let main_rx = unsafe { &mut *(&raw mut MAIN_RX) };
    let mut main_tx = [0u8; 4096];
    let mut busy_rx = [0u8; 1024];
    let mut busy_tx = [0u8; 1024];
    let mut storage: [SocketStorage; 2] = Default::default();
    let mut sockets = SocketSet::new(&mut storage[..]);
    // Two symmetric sockets listen on the port. A connection that arrives while no other is
    // being served becomes the served one; one that arrives during a transfer gets "busy".
    // Symmetry matters: a finished connection may still be closing when the next client
    // connects, and that client must be served, not refused.
    let handles = [
        sockets.add(tcp::Socket::new(
            tcp::SocketBuffer::new(&mut main_rx[..]),
            tcp::SocketBuffer::new(&mut main_tx[..]),
        )),
        sockets.add(tcp::Socket::new(
            tcp::SocketBuffer::new(&mut busy_rx[..]),
            tcp::SocketBuffer::new(&mut busy_tx[..]),
        )),
    ];
    for h in handles {
        sockets
            .get_mut::<tcp::Socket>(h)
            .listen(cfg.port)
            .expect("listen");
    }
    kprintln!(
        "inflate-loader: listening on {}.{}.{}.{}/{} port {} ({} ms after boot)",
        a,
        b,
        c,
        d,
        cfg.prefix_len,
        cfg.port,
        (mm::system_time_ns() - boot_ns) / 1_000_000
    );

    let mut store = WindowStore;
    let mut roles = [Role::Listen, Role::Listen];
    let mut last_report = 0u64;
    loop {
        let t = now();
        iface.poll(t, &mut dev, &mut sockets);

        for i in 0..2 {
            let serving_elsewhere = roles
                .iter()
                .enumerate()
                .any(|(k, r)| k != i && matches!(r, Role::Serve { .. } | Role::Decide { .. }));
            let s = sockets.get_mut::<tcp::Socket>(handles[i]);
            match &mut roles[i] {
                Role::Listen => {
                    if s.is_active() {
                        if !serving_elsewhere && rx.state() == State::Idle {
                            kprintln!("inflate-loader: connection from {:?}", s.remote_endpoint());
                            rx.begin(now_us());
                            roles[i] = Role::Serve { sniffed: false };
                        } else {
                            kprintln!(
                                "inflate-loader: refusing connection from {:?}: busy",
                                s.remote_endpoint()
                            );
                            let rec = ResultRecord::new(
                                Status::Busy,
                                0,
                                0,
                                0,
                                "loader busy: it serves one connection at a time",
                            );
                            roles[i] = Role::Finish { rec, sent: false };
                        }
                    }
                }
                Role::Serve { sniffed } => {
                    // The first 8 bytes tell a stage-2 upload from a checkpoint stream
                    // (docs/bootstrap.md §1); the stream's bytes stay queued for the receiver.
                    if !*sniffed {
                        // SynReceived: accepted but not yet established, data still to come.
                        let more = s.may_recv() || s.state() == tcp::State::SynReceived;
                        if s.recv_queue() < 8 && more {
                            continue;
                        }
                        let mut head = [0u8; 8];
                        let n = s.peek_slice(&mut head).unwrap_or(0);
                        if loader_abi::upload::is_stage1_magic(&head[..n]) {
                            if let Some(devices) = stage1.take() {
                                sockets.get_mut::<tcp::Socket>(handles[1 - i]).abort();
                                let conn = crate::stage1::Conn {
                                    iface: &mut iface,
                                    dev: &mut dev,
                                    sockets: &mut sockets,
                                    handle: handles[i],
                                    port,
                                };
                                crate::stage1::run(conn, nf, devices);
                            }
                        }
                        *sniffed = true;
                    }
                    let mut verdict = None;
                    while verdict.is_none() && s.can_recv() {
                        let t = now_us();
                        if let Ok(r) = s.recv(|buf| (buf.len(), rx.feed(buf, &mut store, t))) {
                            if r.is_some() {
                                // The piece that held END: its checks, the zero-filled RAM
                                // and the digest over every pfn's leaf (inside a migration's
                                // downtime).
                                kprintln!(
                                    "inflate-loader: last piece and END checked in {} ms",
                                    (now_us() - t) / 1000
                                );
                            }
                            verdict = r;
                        }
                    }
                    if verdict.is_none()
                        && !s.can_recv()
                        && matches!(
                            s.state(),
                            tcp::State::CloseWait
                                | tcp::State::LastAck
                                | tcp::State::Closed
                                | tcp::State::Closing
                                | tcp::State::TimeWait
                        )
                    {
                        verdict = rx.eof(now_us());
                    }
                    if let Some(mut rec) = verdict {
                        report(&rec);
                        if rec.status == Status::Ok && rx.records.restorable() {
                            // A real capture: phase A, then ready (and wait) or unrestorable.
                            match restorer.prepare(rx) {
                                Ok(()) => {
                                    rec = ResultRecord::new(
                                        Status::Ready,
                                        rec.pages,
                                        rec.bytes,
                                        rec.micros,
                                        "digest verified, restore checks passed; send COMMIT or ABORT",
                                    );
                                    report(&rec);
                                    let deadline_us =
                                        now_us() + cfg.commit_timeout_s as u64 * 1_000_000;
                                    roles[i] = Role::Decide {
                                        rec,
                                        sent: false,
                                        got: [0; 8],
                                        n: 0,
                                        deadline_us,
                                    };
                                    continue;
                                }
                                Err(m) => {
                                    rec = ResultRecord::new(
                                        Status::Unrestorable,
                                        rec.pages,
                                        rec.bytes,
                                        rec.micros,
                                        m.as_str(),
                                    );
                                    report(&rec);
                                    rx.reset(false);
                                }
                            }
                        } else if rec.status != Status::Ok {
                            // Frames already returned; the receiver may serve the next client.
                            rx.reset(false);
                        }
                        roles[i] = Role::Finish { rec, sent: false };
                    } else if now_us() / 1_000_000 >= last_report + 5 {
                        last_report = now_us() / 1_000_000;
                        kprintln!(
                            "inflate-loader: {} bytes received, {} pages placed",
                            rx.bytes(),
                            rx.plan.placed()
                        );
                    }
                }
                Role::Decide {
                    rec,
                    sent,
                    got,
                    n,
                    deadline_us,
                } => {
                    if !*sent && s.can_send() {
                        let _ = s.send_slice(&rec.encode());
                        *sent = true;
                    }
                    while *n < 8 && s.can_recv() {
                        let k = s
                            .recv(|b| {
                                let k = b.len().min(8 - *n);
                                got[*n..*n + k].copy_from_slice(&b[..k]);
                                (k, k)
                            })
                            .unwrap_or(0);
                        *n += k;
                    }
                    let gone = !s.may_recv() && !s.can_recv();
                    let decided = *n == 8 || gone || now_us() >= *deadline_us;
                    if !decided {
                        continue;
                    }
                    if *n == 8 && got == COMMIT {
                        kprintln!("inflate-loader: COMMIT received; closing the connection");
                        let rec = rec.clone();
                        s.close();
                        // Let the FIN go out before the devices are handed over (at most 1 s).
                        let until = now_us() + 1_000_000;
                        while now_us() < until {
                            iface.poll(now(), &mut dev, &mut sockets);
                            let st = sockets.get_mut::<tcp::Socket>(handles[i]).state();
                            if matches!(
                                st,
                                tcp::State::Closed | tcp::State::TimeWait | tcp::State::FinWait2
                            ) {
                                break;
                            }
                            events::wait(&[port], mm::system_time_ns() + 10_000_000);
                        }
                        for h in handles {
                            sockets.get_mut::<tcp::Socket>(h).abort();
                        }
                        iface.poll(now(), &mut dev, &mut sockets);
                        return Outcome::Commit(rec);
                    }
                    let why = if *n == 8 && got == b"ABORT\0\0\0" {
                        "ABORT received"
                    } else if *n == 8 {
                        "an unknown decision received"
                    } else if gone {
                        "connection closed before a decision"
                    } else {
                        "no decision within commit-timeout"
                    };
                    kprintln!("inflate-loader: {why}: discarding the guest, serving again");
                    restorer.undo(rx);
                    rx.reset(false);
                    // Close politely; Finish re-listens once the connection is gone.
                    s.close();
                    roles[i] = Role::Finish {
                        rec: rec.clone(),
                        sent: true,
                    };
                }
                Role::Finish { rec, sent } => {
                    // Drain anything still arriving after the verdict.
                    while s.can_recv() {
                        let _ = s.recv(|b| (b.len(), ()));
                    }
                    if !*sent && s.can_send() {
                        let _ = s.send_slice(&rec.encode());
                        s.close();
                        *sent = true;
                    } else if !*sent
                        && !s.may_send()
                        && !matches!(
                            s.state(),
                            tcp::State::Listen | tcp::State::SynReceived | tcp::State::SynSent
                        )
                    {
                        // The peer is gone before we could answer.
                        s.close();
                        *sent = true;
                    }
                    if *sent
                        && (matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait)
                            || !s.is_active())
                    {
                        if rec.status == Status::Ok {
                            let rec = rec.clone();
                            iface.poll(now(), &mut dev, &mut sockets);
                            for h in handles {
                                sockets.get_mut::<tcp::Socket>(h).abort();
                            }
                            iface.poll(now(), &mut dev, &mut sockets);
                            return Outcome::Verified(rec);
                        }
                        s.abort();
                        let _ = s.listen(cfg.port);
                        roles[i] = Role::Listen;
                    }
                }
            }
        }

        // Sleep until the next timer or an event on the vif.
        let t = now();
        let delay = iface
            .poll_delay(t, &sockets)
            .map(|d| d.total_micros())
            .unwrap_or(50_000)
            .min(50_000);
        if delay > 0 && nf.borrow_mut().idle_armed() {
            events::wait(&[port], mm::system_time_ns() + delay * 1000);
        }
    }
}

enum Role {
    Listen,
    /// Receiving; `sniffed` once the first bytes were seen not to be a stage-2 upload.
    Serve {
        sniffed: bool,
    },
    /// Sending a result record (verdict or busy), then closing.
    Finish {
        rec: ResultRecord,
        sent: bool,
    },
    /// `ready` sent (or being sent); waiting for the 8-byte COMMIT/ABORT decision.
    Decide {
        rec: ResultRecord,
        sent: bool,
        got: [u8; 8],
        n: usize,
        deadline_us: u64,
    },
}

fn report(rec: &ResultRecord) {
    kprintln!(
        "inflate-loader: result {}: {} ({} pages, {} bytes, {} ms)",
        rec.status.name(),
        rec.message(),
        rec.pages,
        rec.bytes,
        rec.micros / 1000
    );
}
