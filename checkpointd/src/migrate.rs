//! `checkpointd migrate HOST[:PORT]`: the guest moves itself to an inflate-loader domain
//! (docs/migrate.md). Pre-copy rounds, the capture and the drain go straight to the loader
//! as a checkpoint stream; then the commit handshake: the loader's result record, COMMIT or
//! ABORT, the arrival frames of the copy that resumed there, acks, power-off. Every failure
//! before the arrival puts the source back as it was (output released, session ended).

use crate::arrival::{self, Kind, Mac, MigrationId};
use crate::save::{self, Policy, SaveError, SaveOutcome, SaveSummary};
use crate::source::{HoldTuple, PageSource};
use inflate_core::result::{ResultRecord, Status, ABORT, COMMIT, RECORD_LEN};
use serde::Serialize;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The loader's default port (its `port=` option in the lab's loader configs).
pub const DEFAULT_PORT: u16 = 7000;
/// Arrival frames: one every 200 ms for at most 30 s; the source acks 3 times.
pub const ANNOUNCE_EVERY: Duration = Duration::from_millis(200);
pub const ANNOUNCE_FOR: Duration = Duration::from_secs(30);
pub const ACKS: u32 = 3;
pub const GRATUITOUS_ARPS: u32 = 3;

/// How a migration ended, and the exit status that says so (docs/migrate.md "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Source: the guest runs at the destination; this copy powers off.
    Moved,
    /// Destination copy: arrived and acknowledged by the source.
    Arrived,
    /// Destination copy: arrived, but no ack came (the source may still run).
    ArrivedUnacked,
    /// Could not start (device, address, connection): nothing was stopped.
    NotStarted,
    /// The loader refused the checkpoint (any result other than `ready`).
    Refused,
    /// The connection failed or the loader went silent before its verdict.
    LinkLost,
    /// COMMIT was sent but no arrival frame came in time.
    NoArrival,
    /// Ctrl-C / SIGTERM before the commit.
    Aborted,
    /// `--timeout` passed before the capture.
    TimedOut,
    /// Pre-copy or the capture failed in the guest itself.
    CaptureFailed,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Moved | Outcome::Arrived => 0,
            Outcome::NotStarted => 1,
            Outcome::ArrivedUnacked => 3,
            Outcome::Refused => 10,
            Outcome::LinkLost => 11,
            Outcome::NoArrival => 12,
            Outcome::Aborted => 13,
            Outcome::TimedOut => 14,
            Outcome::CaptureFailed => 15,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub dest: String,
    pub downtime_ms: u64,
    /// Bytes per second, None = unlimited.
    pub bandwidth: Option<u64>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub link_timeout: Duration,
    /// SO_SNDBUF of the migration connection in bytes (None: the kernel's autotuning).
    pub send_buffer: Option<usize>,
    pub result_timeout: Duration,
    pub arrival_timeout: Duration,
    pub max_rounds: u32,
    pub small_dirty: u64,
    /// Bounds, free-page elision and throttling (shared with `save`).
    pub conv: save::Convergence,
    pub progress: bool,
}

/// What the loader said (its result record).
#[derive(Debug, Clone, Serialize)]
pub struct LoaderVerdict {
    pub status: String,
    pub message: String,
    pub pages: u64,
    pub bytes: u64,
    pub receive_us: u64,
}

impl From<&ResultRecord> for LoaderVerdict {
    fn from(r: &ResultRecord) -> Self {
        LoaderVerdict {
            status: r.status.name().to_string(),
            message: r.message().to_string(),
            pages: r.pages,
            bytes: r.bytes,
            receive_us: r.micros,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub outcome: Outcome,
    pub exit_code: u8,
    /// Why the migration did not complete (None when it did).
    pub reason: Option<String>,
    pub migration_id: String,
    pub destination: String,
    pub save: Option<SaveSummary>,
    pub loader: Option<LoaderVerdict>,
    /// Connect to END sent.
    pub stream_ms: u64,
    /// END sent to the loader's verdict.
    pub verdict_ms: Option<u64>,
    /// COMMIT sent to the arrival frame.
    pub commit_to_arrival_ms: Option<u64>,
    /// The source's own view of its pause: capture suspend + drain + verdict + arrival.
    pub source_pause_ms: Option<u64>,
    /// Packets the output hold dropped (when it was released here).
    pub held_packets_dropped: Option<u64>,
    pub total_ms: u64,
}

/// Raw Ethernet access for the arrival exchange (a packet socket in production).
pub trait Link {
    /// The interface's MAC now (a revived copy may find a new one).
    fn mac(&self) -> io::Result<Mac>;
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
    /// One frame of our ethertype within `timeout`, or None.
    fn recv(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>>;
}

/// The destination copy's side: announce ourselves until the source acks (or 30 s pass).
/// Returns whether an ack with our id came. Send errors are retried on the next tick: right
/// after the resume the network frontend may still be reconnecting.
pub fn announce(link: &mut dyn Link, id: &MigrationId, ip: Ipv4Addr) -> io::Result<bool> {
    let end = Instant::now() + ANNOUNCE_FOR;
    let mut arps_sent = false;
    let mut last_err = None;
    let mut mac = None;
    while Instant::now() < end {
        if mac.is_none() {
            mac = link.mac().map_err(|e| last_err = Some(e)).ok();
        }
        if let Some(m) = mac {
            if !arps_sent {
                arps_sent = (0..GRATUITOUS_ARPS)
                    .all(|_| link.send(&arrival::gratuitous_arp(m, ip)).is_ok());
            }
            if let Err(e) = link.send(&arrival::encode(m, Kind::Arrived, id)) {
                last_err = Some(e);
            }
        }
        let tick = Instant::now() + ANNOUNCE_EVERY;
        while let Some(left) = tick.checked_duration_since(Instant::now()) {
            let f = match link.recv(left) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    last_err = Some(e);
                    std::thread::sleep(left);
                    break;
                }
            };
            if let Ok(a) = arrival::decode(&f) {
                if a.kind == Kind::Ack && a.id == *id {
                    if let Some(m) = mac {
                        // Once more, in case a stray frame moved our MAC back to the source.
                        let _ = link.send(&arrival::gratuitous_arp(m, ip));
                    }
                    return Ok(true);
                }
            }
        }
    }
    match last_err {
        Some(e) if !arps_sent => Err(e),
        _ => Ok(false),
    }
}

/// The source's side after COMMIT: wait for an arrival frame with our id, then ack it
/// (from the helper MAC, so switches keep the guest's MAC where the guest now is).
pub fn await_arrival(
    link: &mut dyn Link,
    id: &MigrationId,
    guest_mac: Mac,
    timeout: Duration,
) -> io::Result<bool> {
    let end = Instant::now() + timeout;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        let Some(f) = link.recv(left)? else { break };
        if let Ok(a) = arrival::decode(&f) {
            if a.kind == Kind::Arrived && a.id == *id {
                let ack = arrival::encode(arrival::helper_mac(guest_mac), Kind::Ack, id);
                for _ in 0..ACKS {
                    link.send(&ack)?;
                }
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Read the loader's 256-byte result record within `timeout`, giving up early on `cancel`
/// (the reader must have a short read timeout of its own).
pub fn read_verdict<R: Read>(
    conn: &mut R,
    timeout: Duration,
    cancel: Option<&AtomicBool>,
) -> Result<ResultRecord, String> {
    let mut b = [0u8; RECORD_LEN];
    let mut got = 0;
    let end = Instant::now() + timeout;
    while got < RECORD_LEN {
        if Instant::now() >= end {
            return Err(format!(
                "no verdict from the loader within {} s",
                timeout.as_secs()
            ));
        }
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err("interrupted while waiting for the loader's verdict".into());
        }
        match conn.read(&mut b[got..]) {
            Ok(0) => {
                return Err(format!(
                "the loader closed the connection after {got} of {RECORD_LEN} bytes of its verdict"
            ))
            }
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(format!("reading the loader's verdict: {e}")),
        }
    }
    ResultRecord::decode(&b).map_err(|e| format!("the loader's verdict is malformed: {e:?}"))
}

/// Caps a writer at `rate` bytes per second (`--bandwidth`).
pub struct Throttle<W> {
    inner: W,
    rate: Option<u64>,
    start: Instant,
    sent: u64,
}

impl<W> Throttle<W> {
    pub fn new(inner: W, rate: Option<u64>) -> Self {
        Throttle {
            inner,
            rate: rate.filter(|&r| r > 0),
            start: Instant::now(),
            sent: 0,
        }
    }
}

impl<W: Write> Write for Throttle<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(&buf[..buf.len().min(64 << 10)])?;
        self.sent += n as u64;
        if let Some(r) = self.rate {
            let due = Duration::from_secs_f64(self.sent as f64 / r as f64);
            if let Some(wait) = due.checked_sub(self.start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Parse HOST[:PORT] (port default [`DEFAULT_PORT`]) to one IPv4 address.
pub fn resolve(dest: &str) -> Result<SocketAddrV4, String> {
    let with_port = if dest
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        dest.to_string()
    } else {
        format!("{dest}:{DEFAULT_PORT}")
    };
    let addrs = with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {dest}: {e}"))?;
    addrs
        .filter_map(|a| match a {
            SocketAddr::V4(v4) => Some(v4),
            SocketAddr::V6(_) => None,
        })
        .next()
        .ok_or_else(|| format!("{dest} has no IPv4 address (the loader speaks IPv4 only)"))
}

/// Everything the migration needs from the world around the guest, so the protocol logic
/// can be tested with fakes.
pub struct World<'a> {
    pub conn: TcpStream,
    /// Opens the raw link on the interface that carries the migration connection.
    pub link: &'a mut dyn FnMut() -> io::Result<Box<dyn Link>>,
    pub cancel: &'static AtomicBool,
    pub id: MigrationId,
    /// The guest's MAC on that interface before the move.
    pub guest_mac: Mac,
}

/// Run a migration of `src` over `w.conn`. In the copy that resumes at the destination this
/// returns Arrived/ArrivedUnacked; in the source everything else. The caller prints the
/// report and powers off on Moved.
pub fn migrate<S: PageSource>(src: &mut S, w: World<'_>, opts: &Options, t0: Instant) -> Report {
    let World {
        conn,
        link,
        cancel,
        id,
        guest_mac,
    } = w;
    let mut rep = Report {
        outcome: Outcome::Moved,
        exit_code: 0,
        reason: None,
        migration_id: arrival::fmt_id(&id),
        destination: opts.dest.clone(),
        save: None,
        loader: None,
        stream_ms: 0,
        verdict_ms: None,
        commit_to_arrival_ms: None,
        source_pause_ms: None,
        held_packets_dropped: None,
        total_ms: 0,
    };
    let finish = |mut rep: Report, outcome: Outcome, reason: Option<String>| {
        rep.outcome = outcome;
        rep.exit_code = outcome.exit_code();
        rep.reason = reason;
        rep.total_ms = t0.elapsed().as_millis() as u64;
        rep
    };
    // The source is put back: output released, session (and capture) ended.
    let resume = |src: &mut S, rep: &mut Report| {
        rep.held_packets_dropped = src.release_output().ok();
        let _ = src.stop_tracking();
    };
    let (local, remote) = match (conn.local_addr(), conn.peer_addr()) {
        (Ok(SocketAddr::V4(l)), Ok(SocketAddr::V4(r))) => (l, r),
        other => {
            return finish(
                rep,
                Outcome::NotStarted,
                Some(format!("not an IPv4 connection: {other:?}")),
            )
        }
    };
    let _ = conn.set_write_timeout(Some(opts.link_timeout));
    // What sits in the socket's send buffer was written by the kernel during the round,
    // so it is in the next dirty set: a buffer sized for the link, not autotuned to
    // megabytes, keeps that small.
    if let Some(bytes) = opts.send_buffer {
        if let Err(e) = crate::sys::set_send_buffer(&conn, bytes) {
            return finish(
                rep,
                Outcome::NotStarted,
                Some(format!("cannot size the send buffer: {e}")),
            );
        }
    }
    let policy = Policy {
        max_rounds: opts.max_rounds,
        small_dirty: opts.small_dirty,
        conv: opts.conv,
        downtime_ms: Some(opts.downtime_ms),
        deadline: Some(t0 + opts.timeout),
        cancel: Some(cancel),
        hold: Some(HoldTuple { local, remote }),
        ..Policy::default()
    };
    // Unbuffered: nothing of the stream may sit in this process's memory at the capture
    // point, or the copy that resumes at the destination would hold it too.
    let mut out = Throttle::new(&conn, opts.bandwidth);
    let outcome = save::stream(src, &mut out, &policy, opts.progress);
    rep.stream_ms = t0.elapsed().as_millis() as u64;
    let summary = match outcome {
        Ok(SaveOutcome::Saved(s)) => s,
        Ok(SaveOutcome::Restored) => {
            // We are the copy that resumes at the destination. Its connection led to the
            // loader, which is now this very domain: drop it without a FIN or retransmits.
            crate::sys::abandon(&conn);
            drop(conn);
            let r = link().and_then(|mut l| announce(l.as_mut(), &id, *local.ip()));
            return match r {
                Ok(true) => finish(rep, Outcome::Arrived, None),
                Ok(false) => finish(
                    rep,
                    Outcome::ArrivedUnacked,
                    Some("no ack from the source within 30 s".into()),
                ),
                Err(e) => finish(
                    rep,
                    Outcome::ArrivedUnacked,
                    Some(format!("cannot announce the arrival: {e}")),
                ),
            };
        }
        Err(e) => {
            resume(src, &mut rep);
            let (o, why) = match e {
                SaveError::Cancelled => (Outcome::Aborted, e.to_string()),
                SaveError::TimedOut => (Outcome::TimedOut, e.to_string()),
                SaveError::Write(ref we) => {
                    // The loader may have refused and closed: its record says why.
                    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                    let mut c = &conn;
                    match read_verdict(&mut c, Duration::from_secs(2), None) {
                        Ok(r) => {
                            rep.loader = Some(LoaderVerdict::from(&r));
                            (
                                Outcome::Refused,
                                format!(
                                    "the loader refused during the stream: {} ({})",
                                    r.status.name(),
                                    r.message()
                                ),
                            )
                        }
                        Err(_) => (
                            Outcome::LinkLost,
                            format!("the connection to the loader failed: {we}"),
                        ),
                    }
                }
                other => (Outcome::CaptureFailed, other.to_string()),
            };
            return finish(rep, o, Some(why));
        }
    };
    let t_end = Instant::now();
    let drain_ms = summary
        .rounds
        .last()
        .filter(|r| r.drain)
        .map_or(0, |r| r.millis);
    let suspend_ms = summary.suspend_ns / 1_000_000;
    rep.save = Some(summary);

    // The verdict. Short socket reads so Ctrl-C is seen at once.
    let _ = conn.set_read_timeout(Some(Duration::from_millis(250)));
    let mut c = &conn;
    let verdict = read_verdict(&mut c, opts.result_timeout, Some(cancel));
    rep.verdict_ms = Some(t_end.elapsed().as_millis() as u64);
    let rec = match verdict {
        Ok(r) => r,
        Err(why) => {
            resume(src, &mut rep);
            let o = if cancel.load(Ordering::Relaxed) {
                Outcome::Aborted
            } else {
                Outcome::LinkLost
            };
            return finish(rep, o, Some(why));
        }
    };
    rep.loader = Some(LoaderVerdict::from(&rec));
    if rec.status != Status::Ready {
        resume(src, &mut rep);
        let why = format!(
            "the loader refused: {} ({})",
            rec.status.name(),
            rec.message()
        );
        return finish(rep, Outcome::Refused, Some(why));
    }
    // Open the link before COMMIT so no early arrival frame is missed.
    let mut l = match link() {
        Ok(l) => l,
        Err(e) => {
            let _ = (&conn).write_all(&ABORT);
            resume(src, &mut rep);
            let why = format!("cannot open the raw link for the arrival frames: {e}");
            return finish(rep, Outcome::NotStarted, Some(why));
        }
    };
    if cancel.load(Ordering::Relaxed) {
        let _ = (&conn).write_all(&ABORT);
        resume(src, &mut rep);
        return finish(
            rep,
            Outcome::Aborted,
            Some("interrupted before the commit; sent ABORT".into()),
        );
    }
    if let Err(e) = (&conn).write_all(&COMMIT).and_then(|_| (&conn).flush()) {
        resume(src, &mut rep);
        let why = format!("sending COMMIT failed: {e}");
        return finish(rep, Outcome::LinkLost, Some(why));
    }
    let t_commit = Instant::now();
    let arrived = await_arrival(l.as_mut(), &id, guest_mac, opts.arrival_timeout);
    rep.commit_to_arrival_ms = Some(t_commit.elapsed().as_millis() as u64);
    match arrived {
        Ok(true) => {
            rep.source_pause_ms = Some(
                suspend_ms
                    + drain_ms
                    + rep.verdict_ms.unwrap_or(0)
                    + rep.commit_to_arrival_ms.unwrap_or(0),
            );
            finish(rep, Outcome::Moved, None)
        }
        Ok(false) => {
            resume(src, &mut rep);
            let why = format!(
                "COMMIT sent but no arrival frame within {} s; resumed here (if the destination does run, there are now two copies)",
                opts.arrival_timeout.as_secs()
            );
            finish(rep, Outcome::NoArrival, Some(why))
        }
        Err(e) => {
            resume(src, &mut rep);
            let why = format!("waiting for the arrival frame: {e}; resumed here");
            finish(rep, Outcome::NoArrival, Some(why))
        }
    }
}

/// Human-readable report.
pub fn human(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let what = match r.outcome {
        Outcome::Moved => "moved: the guest runs at the destination; this copy powers off",
        Outcome::Arrived => "arrived",
        Outcome::ArrivedUnacked => "arrived (the source did not acknowledge)",
        Outcome::NotStarted => "not started; the guest runs on here",
        Outcome::Refused => "refused by the loader; the guest runs on here",
        Outcome::LinkLost => "link to the loader lost; the guest runs on here",
        Outcome::NoArrival => "no arrival after COMMIT; the guest runs on here",
        Outcome::Aborted => "aborted; the guest runs on here",
        Outcome::TimedOut => "timed out; the guest runs on here",
        Outcome::CaptureFailed => "capture failed; the guest runs on here",
    };
    let _ = writeln!(
        t,
        "migration {} to {}: {what} (exit {})",
        r.migration_id, r.destination, r.exit_code
    );
    if let Some(why) = &r.reason {
        let _ = writeln!(t, "  reason: {why}");
    }
    if let Some(s) = &r.save {
        let total: u64 = s.rounds.iter().map(|x| x.bytes).sum();
        let _ = writeln!(
            t,
            "  {} rounds, {} bytes, pre-copy stopped: {:?} (drain estimate {} ms)",
            s.rounds.len(),
            total,
            s.stop_reason,
            s.drain_estimate_ms
        );
        for x in &s.rounds {
            let _ = writeln!(t, "{}", x.line());
        }
        let _ = writeln!(t, "{}", s.capture_line());
        for p in &s.throttled {
            let _ = writeln!(
                t,
                "  throttled pid {} ({}): up to {}% stopped, {} ms stopped over {} rounds",
                p.pid, p.comm, p.stop_pct, p.stopped_ms, p.rounds
            );
        }
    }
    if let Some(l) = &r.loader {
        let _ = writeln!(
            t,
            "  loader: {} ({}), {} pages, {} bytes in {:.3} s",
            l.status,
            l.message,
            l.pages,
            l.bytes,
            l.receive_us as f64 / 1e6
        );
    }
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
    let _ = writeln!(
        t,
        "  stream {} ms, verdict {}, commit->arrival {}, source pause {}, total {} ms",
        r.stream_ms,
        opt(r.verdict_ms),
        opt(r.commit_to_arrival_ms),
        opt(r.source_pause_ms),
        r.total_ms
    );
    if let Some(d) = r.held_packets_dropped {
        let _ = writeln!(t, "  output hold released; it dropped {d} packets");
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::save::tests::FakeGuest;
    use checkpoint_stream::model::FullCheckpoint;
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// A link between two fakes: frames sent by one end arrive at the other.
    struct FakeLink {
        mac: Mac,
        tx: mpsc::Sender<Vec<u8>>,
        rx: mpsc::Receiver<Vec<u8>>,
        sent: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
        /// The first this-many sends fail (a frontend still reconnecting).
        fail_first: u32,
    }

    impl Link for FakeLink {
        fn mac(&self) -> io::Result<Mac> {
            Ok(self.mac)
        }
        fn send(&mut self, f: &[u8]) -> io::Result<()> {
            if self.fail_first > 0 {
                self.fail_first -= 1;
                return Err(io::Error::from_raw_os_error(libc::ENETDOWN));
            }
            self.sent.lock().unwrap().push(f.to_vec());
            let _ = self.tx.send(f.to_vec());
            Ok(())
        }
        fn recv(&mut self, t: Duration) -> io::Result<Option<Vec<u8>>> {
            Ok(self.rx.recv_timeout(t).ok())
        }
    }

    fn link_pair(mac: Mac) -> (FakeLink, FakeLink) {
        let (a_tx, b_rx) = mpsc::channel();
        let (b_tx, a_rx) = mpsc::channel();
        let s = || std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        (
            FakeLink {
                mac,
                tx: a_tx,
                rx: a_rx,
                sent: s(),
                fail_first: 0,
            },
            FakeLink {
                mac,
                tx: b_tx,
                rx: b_rx,
                sent: s(),
                fail_first: 0,
            },
        )
    }

    const ID: MigrationId = [7; 16];
    const MAC: Mac = [0x00, 0x16, 0x3e, 0x4c, 0, 0x79];

    #[test]
    fn arrival_exchange_between_two_ends() {
        let (mut dest, mut source) = link_pair(MAC);
        let dest_sent = dest.sent.clone();
        let h = std::thread::spawn(move || {
            announce(&mut dest, &ID, Ipv4Addr::new(10, 0, 0, 121)).unwrap()
        });
        // A stranger's arrival (other id) is ignored.
        source
            .tx
            .send(arrival::encode(MAC, Kind::Arrived, &[1; 16]).to_vec())
            .unwrap();
        assert!(await_arrival(&mut source, &ID, MAC, Duration::from_secs(5)).unwrap());
        assert!(h.join().unwrap(), "the destination saw the ack");
        let sent = source.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), ACKS as usize);
        for f in &sent {
            let a = arrival::decode(f).unwrap();
            assert_eq!((a.kind, a.id), (Kind::Ack, ID));
            assert_eq!(
                a.src,
                arrival::helper_mac(MAC),
                "acks never use the guest's MAC"
            );
        }
        let d = dest_sent.lock().unwrap().clone();
        assert!(d.len() >= 5, "3 ARPs, >= 1 arrival, 1 final ARP");
        assert!(d[..3].iter().all(|f| f[12..14] == [0x08, 0x06]));
        assert_eq!(arrival::decode(&d[3]).unwrap().kind, Kind::Arrived);
    }

    #[test]
    fn announcing_survives_a_link_that_is_not_up_yet() {
        let (mut dest, mut source) = link_pair(MAC);
        dest.fail_first = 6;
        let h = std::thread::spawn(move || {
            announce(&mut dest, &ID, Ipv4Addr::new(10, 0, 0, 121)).unwrap()
        });
        assert!(await_arrival(&mut source, &ID, MAC, Duration::from_secs(5)).unwrap());
        assert!(h.join().unwrap());
    }

    #[test]
    fn the_source_gives_up_without_an_arrival() {
        let (_dest, mut source) = link_pair(MAC);
        let t = Instant::now();
        assert!(!await_arrival(&mut source, &ID, MAC, Duration::from_millis(300)).unwrap());
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert!(source.sent.lock().unwrap().is_empty());
    }

    #[test]
    fn throttle_caps_the_rate() {
        let mut w = Throttle::new(Vec::new(), Some(2_000_000));
        let t = Instant::now();
        w.write_all(&vec![1u8; 400_000]).unwrap();
        let el = t.elapsed();
        assert!(el >= Duration::from_millis(190), "{el:?}");
        assert_eq!(w.inner.len(), 400_000);
    }

    #[test]
    fn resolve_defaults_the_port() {
        assert_eq!(
            resolve("10.0.0.61").unwrap(),
            "10.0.0.61:7000".parse().unwrap()
        );
        assert_eq!(
            resolve("10.0.0.61:7100").unwrap(),
            "10.0.0.61:7100".parse().unwrap()
        );
        assert!(resolve("no such host.invalid").is_err());
    }

    #[test]
    fn exit_codes_are_distinct() {
        use Outcome::*;
        let all = [
            Moved,
            Arrived,
            ArrivedUnacked,
            NotStarted,
            Refused,
            LinkLost,
            NoArrival,
            Aborted,
            TimedOut,
            CaptureFailed,
        ];
        let mut codes: Vec<u8> = all
            .iter()
            .filter(|o| !matches!(o, Arrived))
            .map(|o| o.exit_code())
            .collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), all.len() - 1, "only Moved and Arrived share 0");
        assert_ne!(Refused.exit_code(), 2, "2 is clap's usage error");
    }

    /// What the fake loader got after its record, and the stream it decoded.
    type LoaderSaw = (Vec<u8>, Option<FullCheckpoint>);

    /// A loader for the tests: reads the stream to END, checks it decodes, answers with
    /// `status` and returns what the source sent after the record.
    fn fake_loader(
        status: Status,
        after: Duration,
    ) -> (SocketAddr, std::thread::JoinHandle<LoaderSaw>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut stream = Vec::new();
            let mut dec = None;
            let mut buf = vec![0u8; 1 << 16];
            // Read until the source pauses (it waits for our verdict), then decode.
            c.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            loop {
                match c.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => stream.extend_from_slice(&buf[..n]),
                    Err(_) => {
                        if let Ok(ck) = FullCheckpoint::from_bytes(&stream) {
                            dec = Some(ck);
                            break;
                        }
                    }
                }
            }
            std::thread::sleep(after);
            let rec = ResultRecord::new(status, 1, stream.len() as u64, 5, "test loader");
            let _ = c.write_all(&rec.encode());
            let mut rest = Vec::new();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut b = [0u8; 8];
            if let Ok(()) = c.read_exact(&mut b) {
                rest.extend_from_slice(&b);
            }
            (rest, dec)
        });
        (addr, h)
    }

    fn opts() -> Options {
        Options {
            dest: "test".into(),
            downtime_ms: 300,
            bandwidth: None,
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            link_timeout: Duration::from_secs(5),
            send_buffer: Some(64 << 10),
            result_timeout: Duration::from_secs(5),
            arrival_timeout: Duration::from_secs(5),
            max_rounds: 8,
            small_dirty: 256,
            conv: save::Convergence::default(),
            progress: false,
        }
    }

    fn run_against(
        status: Status,
        g: &mut FakeGuest,
        cancel: &'static AtomicBool,
        dest_link: Option<FakeLink>,
    ) -> (Report, Vec<u8>, Option<FullCheckpoint>) {
        let (addr, h) = fake_loader(status, Duration::from_millis(50));
        let conn = TcpStream::connect(addr).unwrap();
        let (mut dest, source) = link_pair(MAC);
        if let Some(d) = dest_link {
            dest = d;
        }
        // The destination copy, played by a thread that announces once COMMIT went out.
        let announcer = std::thread::spawn(move || {
            let _ = announce(&mut dest, &ID, Ipv4Addr::new(10, 0, 0, 121));
        });
        let mut source = Some(source);
        let mut open = || -> io::Result<Box<dyn Link>> {
            Ok(Box::new(source.take().expect("link opened once")))
        };
        let w = World {
            conn,
            link: &mut open,
            cancel,
            id: ID,
            guest_mac: MAC,
        };
        let rep = migrate(g, w, &opts(), Instant::now());
        let (rest, dec) = h.join().unwrap();
        drop(announcer);
        (rep, rest, dec)
    }

    #[test]
    fn ready_then_commit_then_arrival_is_a_move() {
        static NO: AtomicBool = AtomicBool::new(false);
        let mut g = FakeGuest::new(1500, 5);
        let (rep, rest, dec) = run_against(Status::Ready, &mut g, &NO, None);
        assert_eq!(rep.outcome, Outcome::Moved, "{}", human(&rep));
        assert_eq!(rest, COMMIT);
        assert!(dec.is_some(), "the loader got a complete, valid stream");
        assert!(
            g.held.is_some(),
            "a moved source keeps its output held until power-off"
        );
        assert_eq!(g.holds_armed, 1);
        assert_eq!(rep.loader.as_ref().unwrap().status, "ready");
        assert!(rep.source_pause_ms.is_some());
    }

    #[test]
    fn a_refusal_resumes_the_source_and_sends_nothing_more() {
        static NO: AtomicBool = AtomicBool::new(false);
        for st in [Status::Unrestorable, Status::Ok, Status::DigestMismatch] {
            let mut g = FakeGuest::new(1000, 5);
            let (rep, rest, _) = run_against(st, &mut g, &NO, None);
            assert_eq!(rep.outcome, Outcome::Refused, "{st:?}");
            assert_eq!(rep.exit_code, 10);
            assert!(rest.is_empty(), "no COMMIT/ABORT after a refusal");
            assert!(g.held.is_none(), "the output hold is released");
            assert_eq!(rep.held_packets_dropped, Some(7));
            assert!(rep.reason.unwrap().contains(st.name()));
        }
    }

    #[test]
    fn ctrl_c_after_ready_sends_abort_and_resumes() {
        static YES: AtomicBool = AtomicBool::new(false);
        let mut g = FakeGuest::new(1000, 5);
        let (addr, h) = fake_loader(Status::Ready, Duration::from_millis(300));
        let conn = TcpStream::connect(addr).unwrap();
        let mut open = || -> io::Result<Box<dyn Link>> { Ok(Box::new(link_pair(MAC).1)) };
        let w = World {
            conn,
            link: &mut open,
            cancel: &YES,
            id: ID,
            guest_mac: MAC,
        };
        // Interrupt once the stream is out (the fake loader answers 300 ms later).
        let t = std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(150));
            YES.store(true, Ordering::Relaxed);
        });
        let rep = migrate(&mut g, w, &opts(), Instant::now());
        t.join().unwrap();
        let (rest, _) = h.join().unwrap();
        assert!(matches!(rep.outcome, Outcome::Aborted), "{}", human(&rep));
        assert_eq!(rep.exit_code, 13);
        // Either the interrupt came before the verdict (nothing sent) or after it (ABORT).
        assert!(rest.is_empty() || rest == ABORT, "{rest:?}");
        assert!(g.held.is_none());
    }

    #[test]
    fn a_loader_that_dies_is_a_lost_link() {
        static NO: AtomicBool = AtomicBool::new(false);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut b = vec![0u8; 100_000];
            let _ = c.read_exact(&mut b);
            // dies: closes without a verdict
        });
        let conn = TcpStream::connect(addr).unwrap();
        let mut g = FakeGuest::new(3000, 5);
        let mut open = || -> io::Result<Box<dyn Link>> { Ok(Box::new(link_pair(MAC).1)) };
        let w = World {
            conn,
            link: &mut open,
            cancel: &NO,
            id: ID,
            guest_mac: MAC,
        };
        let rep = migrate(&mut g, w, &opts(), Instant::now());
        h.join().unwrap();
        assert_eq!(rep.outcome, Outcome::LinkLost, "{}", human(&rep));
        assert_eq!(rep.exit_code, 11);
        assert!(g.held.is_none());
    }

    #[test]
    fn commit_without_arrival_resumes_with_its_own_code() {
        static NO: AtomicBool = AtomicBool::new(false);
        let mut g = FakeGuest::new(1000, 5);
        let (addr, h) = fake_loader(Status::Ready, Duration::from_millis(10));
        let conn = TcpStream::connect(addr).unwrap();
        let (_dest, source) = link_pair(MAC);
        let mut source = Some(source);
        let mut open = || -> io::Result<Box<dyn Link>> { Ok(Box::new(source.take().unwrap())) };
        let w = World {
            conn,
            link: &mut open,
            cancel: &NO,
            id: ID,
            guest_mac: MAC,
        };
        let o = Options {
            arrival_timeout: Duration::from_millis(400),
            ..opts()
        };
        let rep = migrate(&mut g, w, &o, Instant::now());
        let (rest, _) = h.join().unwrap();
        assert_eq!(rest, COMMIT);
        assert_eq!(rep.outcome, Outcome::NoArrival);
        assert_eq!(rep.exit_code, 12);
        assert!(g.held.is_none());
    }

    #[test]
    fn the_revived_copy_announces_itself() {
        static NO: AtomicBool = AtomicBool::new(false);
        let mut g = FakeGuest::new(1000, 5);
        g.resume_at_capture = true;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let conn = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (dest, mut source) = link_pair(MAC);
        let mut dest = Some(dest);
        let mut open = || -> io::Result<Box<dyn Link>> { Ok(Box::new(dest.take().unwrap())) };
        let src = std::thread::spawn(move || {
            await_arrival(&mut source, &ID, MAC, Duration::from_secs(5)).unwrap()
        });
        let w = World {
            conn,
            link: &mut open,
            cancel: &NO,
            id: ID,
            guest_mac: MAC,
        };
        // Nobody reads the connection: an unbounded send buffer lets round 0 complete.
        let o = Options {
            send_buffer: None,
            ..opts()
        };
        let rep = migrate(&mut g, w, &o, Instant::now());
        assert!(src.join().unwrap());
        assert_eq!(rep.outcome, Outcome::Arrived, "{}", human(&rep));
        assert_eq!(rep.exit_code, 0);
    }

    #[test]
    fn verdict_reader_bounds_and_validates() {
        let mut short: &[u8] = &[0u8; 10];
        assert!(read_verdict(&mut short, Duration::from_secs(1), None)
            .unwrap_err()
            .contains("closed"));
        let mut bad: &[u8] = &[0u8; RECORD_LEN];
        assert!(read_verdict(&mut bad, Duration::from_secs(1), None)
            .unwrap_err()
            .contains("malformed"));
        let rec = ResultRecord::new(Status::Ready, 3, 4, 5, "ok").encode();
        let mut good: &[u8] = &rec;
        assert_eq!(
            read_verdict(&mut good, Duration::from_secs(1), None)
                .unwrap()
                .status,
            Status::Ready
        );
    }
}
