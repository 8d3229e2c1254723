//! smoltcp over netfront, and the server: one listening socket serves the checkpoint
//! connection; a second socket on the same port answers any concurrent connection with a
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
        let n = loop {
            if let Some(n) = self.0.borrow_mut().recv(|d| {
                let n = d.len().min(frame.len());
                frame[..n].copy_from_slice(&d[..n]);
                n
            }) {
                break n;
            }
            // receive() saw a response but it was malformed and skipped; nothing else queued.
            break 0;
        };
        f(&frame[..n])
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.0.borrow_mut().send(len, f)
    }
}

impl<'n> Device for NfDevice<'n> {
    type RxToken<'a> = Rx<'a> where Self: 'a;
    type TxToken<'a> = Tx<'a> where Self: 'a;

    fn receive(&mut self, _t: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let ready = {
            let mut nf = self.0.borrow_mut();
            nf.rx_pending() && nf.can_send()
        };
        ready.then(|| (Rx(self.0), Tx(self.0)))
    }

    fn transmit(&mut self, _t: Instant) -> Option<Tx<'_>> {
        self.0.borrow_mut().can_send().then(|| Tx(self.0))
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
        mm::with_frame(mm::pfn_to_mfn(pfn), |p| checkpoint_stream::digest::leaf_hash(Some(p)))
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

/// Serve until a checkpoint has been received and verified; returns its result record.
pub fn serve(nf: &RefCell<Netfront>, cfg: &NetConfig, rx: &mut Receiver<'_>, boot_ns: u64) -> ResultRecord {
    let mac = nf.borrow().mac;
    let port = nf.borrow().port;
    let mut dev = NfDevice(nf);
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    config.random_seed = mm::rdtsc() ^ mm::system_time_ns();
    let mut iface = Interface::new(config, &mut dev, now());
    let [a, b, c, d] = cfg.ip;
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(IpAddress::v4(a, b, c, d), cfg.prefix_len));
    });
    if let Some([a, b, c, d]) = cfg.gateway {
        let _ = iface.routes_mut().add_default_ipv4_route(Ipv4Address::new(a, b, c, d));
    }

    // SAFETY: serve() runs once (kmain never returns to call it again), so this is the only
    // reference to the buffer.
    let main_rx = unsafe { &mut *(&raw mut MAIN_RX) };
    let mut main_tx = [0u8; 4096];
    let mut busy_rx = [0u8; 1024];
    let mut busy_tx = [0u8; 1024];
    let mut storage: [SocketStorage; 2] = Default::default();
    let mut sockets = SocketSet::new(&mut storage[..]);
    let main = sockets.add(tcp::Socket::new(tcp::SocketBuffer::new(&mut main_rx[..]), tcp::SocketBuffer::new(&mut main_tx[..])));
    let busy = sockets.add(tcp::Socket::new(tcp::SocketBuffer::new(&mut busy_rx[..]), tcp::SocketBuffer::new(&mut busy_tx[..])));
    sockets.get_mut::<tcp::Socket>(main).listen(cfg.port).expect("listen");
    sockets.get_mut::<tcp::Socket>(busy).listen(cfg.port).expect("listen");
    kprintln!("inflate-loader: listening on {}.{}.{}.{}/{} port {} ({} ms after boot)",
        a, b, c, d, cfg.prefix_len, cfg.port, (mm::system_time_ns() - boot_ns) / 1_000_000);

    let mut store = WindowStore;
    let mut pending: Option<ResultRecord> = None;
    let mut busy_sent = false;
    let mut last_report = 0u64;
    loop {
        let t = now();
        iface.poll(t, &mut dev, &mut sockets);

        // The checkpoint connection.
        let s = sockets.get_mut::<tcp::Socket>(main);
        if s.is_active() && rx.state() == State::Idle && pending.is_none() {
            kprintln!("inflate-loader: connection from {:?}", s.remote_endpoint());
            rx.begin(now_us());
        }
        while rx.state() == State::Receiving && s.can_recv() {
            let res = s.recv(|buf| {
                let r = rx.feed(buf, &mut store, now_us());
                (buf.len(), r)
            });
            if let Ok(Some(rec)) = res {
                report(&rec);
                pending = Some(rec);
            }
        }
        if rx.state() == State::Receiving && !s.can_recv()
            && matches!(s.state(), tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closed | tcp::State::Closing | tcp::State::TimeWait)
        {
            if let Some(rec) = rx.eof(now_us()) {
                report(&rec);
                pending = Some(rec);
            }
        }
        if rx.state() == State::Receiving && now_us() / 1_000_000 >= last_report + 5 {
            last_report = now_us() / 1_000_000;
            kprintln!("inflate-loader: {} bytes received, {} pages placed", rx.bytes(), rx.plan.placed());
        }
        if let Some(rec) = &pending {
            // Drain anything still arriving after the verdict.
            while s.can_recv() {
                let _ = s.recv(|b| (b.len(), ()));
            }
            if s.can_send() && s.send_queue() == 0 && s.state() != tcp::State::Closed {
                if s.may_send() {
                    let _ = s.send_slice(&rec.encode());
                }
                s.close();
            }
            if matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait) || !s.is_active() {
                let rec = pending.take().unwrap();
                if rec.status == Status::Ok {
                    s.abort();
                    iface.poll(now(), &mut dev, &mut sockets);
                    return rec;
                }
                rx.reset(false);
                let s = sockets.get_mut::<tcp::Socket>(main);
                s.abort();
                let _ = s.listen(cfg.port);
                kprintln!("inflate-loader: listening again on port {}", cfg.port);
            }
        } else if !s.is_active() && !s.is_listening() {
            rx.reset(false);
            let _ = s.listen(cfg.port);
        }

        // Any other connection: refuse with a busy record.
        let s = sockets.get_mut::<tcp::Socket>(busy);
        if s.is_active() && !busy_sent && s.may_send() {
            let rec = ResultRecord::new(Status::Busy, 0, 0, 0, "loader busy: it serves one connection at a time");
            kprintln!("inflate-loader: refusing second connection from {:?}: busy", s.remote_endpoint());
            let _ = s.send_slice(&rec.encode());
            s.close();
            busy_sent = true;
        }
        while s.can_recv() {
            let _ = s.recv(|b| (b.len(), ()));
        }
        if busy_sent && (matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait)) {
            s.abort();
            let _ = s.listen(cfg.port);
            busy_sent = false;
        }

        // Sleep until the next timer or an event on the vif.
        let t = now();
        let delay = iface.poll_delay(t, &sockets).map(|d| d.total_micros()).unwrap_or(50_000).min(50_000);
        if delay > 0 && !nf.borrow_mut().rx_pending() {
            events::wait(&[port], mm::system_time_ns() + delay * 1000);
        }
    }
}

fn report(rec: &ResultRecord) {
    kprintln!("inflate-loader: result {}: {} ({} pages, {} bytes, {} ms)",
        rec.status.name(), rec.message(), rec.pages, rec.bytes, rec.micros / 1000);
}
