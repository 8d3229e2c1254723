//! What packetd does with a packet, a finished toolstack command and a clock tick. The side
//! effects (commands, xenstore) go through [`Host`], so tests and the fuzz target run this code
//! unchanged with a fake host.

use std::{fs, io};

use inflate_core::xs::{XS_READ, XS_RM, XS_WRITE};
use token_tool::{bootproto as bp, bootproto::BootReply, bootproto::Status, node::NodeLedger};
use token_tool::{wire::BOOT_MAGIC, wire::TOPUP_LEN, BootFields, TopUp};

use crate::config::Config;

/// The toolstack and xenstore, as packetd uses them.
pub trait Host {
    /// Start `sh -c SCRIPT` for a job; must not block for long.
    fn spawn(&mut self, job: u64, script: &str) -> Result<(), String>;
    /// A finished command: its job, and its last line of output or why it failed.
    fn done(&mut self) -> Option<(u64, Result<String, String>)>;
    /// A xenstore request, `XS_READ`, `XS_WRITE` (of `value`) or `XS_RM`: the value read;
    /// None if the node does not exist.
    fn xs(&mut self, ty: u32, path: &str, value: &str) -> io::Result<Option<String>>;
}

/// An ICMP message to send: destination and the ICMP bytes.
pub type Out = ([u8; 4], Vec<u8>);
/// Where an answer goes: source address, echo identifier and sequence number.
type Dest = ([u8; 4], u16, u16);

#[derive(Debug, Default)]
struct Job {
    id: u64,
    /// The token's MAC (None for a job adopted after a restart): a resent token is this job.
    echo: Option<[u8; 20]>,
    to: Dest,
    slot: usize,
    domid: Option<u32>,
    owed_mib_ms: u64,
    warned_at: Option<u64>,
}

pub struct Node<H: Host> {
    pub cfg: Config,
    pub ledger: NodeLedger,
    pub host: H,
    jobs: Vec<Job>,
    /// Per-source token buckets: (source, tokens x 1000, last refill ms). Fixed size; a new
    /// source evicts the one refilled longest ago.
    buckets: [([u8; 4], u64, u64); 64],
    last_tick: u64,
}

fn answer(status: Status, reason: &str, job_id: u64, echo: [u8; 20]) -> BootReply {
    let reason = bp::reason_code(reason).unwrap_or(6);
    BootReply { status, reason, job_id, addr: [0; 4], port: 0, domid: 0, balance: 0, echo }
}

fn message(to: Dest, payload: &[u8]) -> Option<Out> {
    let mut buf = [0u8; bp::IP_PACKET_MAX];
    let n = bp::write_echo(bp::ICMP_ECHO_REPLY, to.1, to.2, payload, &mut buf)?;
    (to.0 != [0; 4]).then(|| (to.0, buf[..n].to_vec()))
}

fn name(job: u64) -> String {
    format!("lm-job{job}")
}

impl<H: Host> Node<H> {
    pub fn new(cfg: Config, ledger: NodeLedger, host: H, now_ms: u64) -> Self {
        let buckets = [([0; 4], 0, 0); 64];
        Node { cfg, ledger, host, jobs: vec![], buckets, last_tick: now_ms }
    }

    /// At start: the ledger's open jobs whose loader domain still runs are taken over (after
    /// a restart of packetd they go on paying); the others are closed with a certificate.
    pub fn adopt(&mut self, unix: u64) {
        let open: Vec<u64> = self.ledger.jobs().filter(|j| !j.closed).map(|j| j.job_id).collect();
        for id in open {
            // The job's address, read back from the xl config packetd wrote for it.
            let cfg = fs::read_to_string(self.cfg.run_dir.join(format!("{}.cfg", name(id))));
            let slot = cfg.ok().and_then(|c| {
                let ip: std::net::Ipv4Addr =
                    c.split("ip=").nth(1)?.split(' ').next()?.parse().ok()?;
                let off = u32::from(ip).checked_sub(u32::from(self.cfg.pool.0))?;
                (off < self.cfg.pool.1 as u32).then_some(off as usize)
            });
            match slot.map(|slot| (slot, self.host.spawn(id, &format!("xl domid {}", name(id))))) {
                Some((slot, Ok(()))) => self.jobs.push(Job { id, slot, ..Job::default() }),
                _ => self.end(id, true, unix, "not running after a restart"),
            }
        }
    }

    fn allow(&mut self, src: [u8; 4], now_ms: u64) -> bool {
        let burst = self.cfg.rate_burst * 1000;
        let i = self.buckets.iter().position(|b| b.0 == src).unwrap_or_else(|| {
            let i = (0..64).min_by_key(|&i| (self.buckets[i].0 != [0; 4], self.buckets[i].2));
            self.buckets[i.unwrap_or(0)] = (src, burst, now_ms);
            i.unwrap_or(0)
        });
        let b = &mut self.buckets[i];
        let refill = now_ms.saturating_sub(b.2).saturating_mul(self.cfg.rate_per_second);
        (b.1, b.2) = ((b.1 + refill).min(burst), now_ms);
        b.1.checked_sub(1000).map(|left| b.1 = left).is_some()
    }

    /// One IPv4 packet from the raw socket. Returns the echo reply to send, if any.
    pub fn on_packet(&mut self, pkt: &[u8], now_ms: u64, unix: u64) -> Option<Out> {
        let e = bp::parse_echo(pkt).filter(|e| e.kind == bp::ICMP_ECHO_REQUEST)?;
        self.allow(e.src, now_ms).then_some(())?;
        let to = (e.src, e.id, e.seq);
        if e.payload.starts_with(&BOOT_MAGIC) {
            return message(to, &self.boot(e.payload, to, unix)?.encode());
        }
        if let Some(job) = bp::parse_cert_query(e.payload) {
            return message(to, &self.certificate(job));
        }
        // An ordinary ping: the node answers it like any host (RFC 1122).
        message(to, e.payload)
    }

    /// A closed job's certificate, or why not.
    fn certificate(&self, job: u64) -> Vec<u8> {
        let open = self.ledger.job(job).is_some_and(|j| !j.closed);
        let cert = fs::read(self.cfg.state.join(format!("certs/{job}.lmrc"))).ok();
        match (open, cert) {
            (false, Some(c)) => c,
            (true, _) => answer(Status::Later, "job-open", job, [0; 20]).encode().into(),
            _ => answer(Status::Refused, "unknown-job", job, [0; 20]).encode().into(),
        }
    }

    /// The answer for a running job.
    fn accepted(&self, j: &Job) -> Option<BootReply> {
        let balance = self.ledger.job(j.id).map_or(0, |s| s.balance.min(u32::MAX as u64) as u32);
        let (addr, port, domid) = (self.cfg.addr(j.slot).octets(), self.cfg.port, j.domid?);
        let ok = answer(Status::Accepted, "ok", j.id, j.echo.unwrap_or_default());
        Some(BootReply { addr, port, domid, balance, ..ok })
    }

    /// A boot token: refuse it, or start the loader domain (the answer follows in `poll`).
    fn boot(&mut self, payload: &[u8], to: Dest, unix: u64) -> Option<BootReply> {
        let echo = bp::echo_of(payload);
        if let Some(i) = self.jobs.iter().position(|j| j.echo == Some(echo)) {
            // The same token again (a resend): answer with what we know, or later.
            self.jobs[i].to = to;
            return self.accepted(&self.jobs[i]);
        }
        let refuse = |status, reason: &str, job| Some(answer(status, reason, job, echo));
        let t = match BootFields::parse(payload) {
            Ok((t, _)) => t,
            Err(e) => return refuse(Status::Refused, e.code(), 0),
        };
        let (c, id) = (&self.cfg, t.job_id);
        let over =
            t.memory_mib > c.max_memory_mib || t.vcpus > c.max_vcpus || t.count > c.max_boot_count;
        if t.node_id == self.ledger.node_id() && over {
            return refuse(Status::Refused, "over-limit", id);
        }
        let free = (0..c.pool.1 as usize).find(|s| self.jobs.iter().all(|j| j.slot != *s));
        let Some(slot) = free else { return refuse(Status::Later, "node-full", id) };
        if let Err(e) = self.ledger.accept_boot(payload, unix) {
            let failed = (Status::Failed, "ledger-failure");
            let (st, code) = if e.is_refusal() { (Status::Refused, e.code()) } else { failed };
            return refuse(st, code, id);
        }
        let path = c.run_dir.join(format!("{}.cfg", name(id)));
        let script = format!("xl create -q {} && xl domid {}", path.display(), name(id));
        let started = self.loader_cfg(slot, &t).and_then(|cfg| {
            fs::write(&path, cfg).map_err(|e| e.to_string())?;
            self.host.spawn(id, &script)
        });
        if let Err(e) = started {
            eprintln!("packetd: job {id}: cannot start xl create: {e}");
            self.end(id, false, unix, "create-failed");
            return refuse(Status::Failed, "create-failed", id);
        }
        eprintln!("packetd: job {id} accepted from {:?}: creating {}", to.0, name(id));
        self.jobs.push(Job { id, echo: Some(echo), to, slot, ..Job::default() });
        None
    }

    fn loader_cfg(&self, slot: usize, t: &BootFields) -> Result<String, String> {
        let (c, ip) = (&self.cfg, self.cfg.addr(slot));
        let [.., o2, o3] = ip.octets();
        // stage2-sha1: what the loader's stage 1 checks an uploaded stage 2 against.
        let sha = token_tool::to_hex(&t.loader_sha1);
        let extra = format!("ip={ip} netmask={} port={} stage2-sha1={sha}", c.netmask, c.port);
        let cap = c.cap_percent.saturating_mul(t.vcpus as u32);
        let template = fs::read_to_string(&c.template).map_err(|e| format!("template: {e}"))?;
        Ok(template
            .replace("@NAME@", &name(t.job_id))
            .replace("@KERNEL@", &c.loader.display().to_string())
            .replace("@EXTRA@", &extra)
            .replace("@MEMORY@", &t.memory_mib.to_string())
            .replace("@VCPUS@", &t.vcpus.to_string())
            .replace("@CAP@", &cap.to_string())
            .replace("@MAC@", &format!("00:16:3e:4c:{o2:02x}:{o3:02x}")))
    }

    /// Close the job (destroying its domain first if `destroy`): its unspent balance becomes a
    /// redemption certificate in state/certs/JOB.lmrc, which the customer fetches with a
    /// certificate query and the broker refunds once.
    fn end(&mut self, job: u64, destroy: bool, unix: u64, why: &str) {
        destroy.then(|| self.host.spawn(job, &format!("xl destroy {}", name(job))));
        let dir = self.cfg.state.join("certs");
        let what = self.ledger.redeem(job, unix).map_err(|e| e.to_string()).and_then(|(c, b)| {
            let path = dir.join(format!("{job}.lmrc"));
            let w = fs::create_dir_all(&dir).and_then(|_| fs::write(&path, b));
            w.map_err(|e| format!("certificate NOT written: {e}"))?;
            Ok(format!("certificate for {} unspent tokens {}", c.balance, path.display()))
        });
        eprintln!("packetd: job {job} closed at {unix} ({why}): {}", what.unwrap_or_else(|e| e));
    }

    /// Finished commands: answer the customers of finished creations. Call often.
    pub fn poll(&mut self, unix: u64) -> Vec<Out> {
        let mut out = vec![];
        while let Some((id, res)) = self.host.done() {
            // Other commands (`xl destroy`) are done with.
            let Some(i) = self.jobs.iter().position(|j| j.id == id && j.domid.is_none()) else {
                continue;
            };
            let j = &mut self.jobs[i];
            match res.and_then(|o| o.trim().parse().map_err(|_| format!("output {o:?}"))) {
                Ok(domid) => {
                    let how = if j.echo.is_none() { " (adopted after a restart)" } else { "" };
                    eprintln!("packetd: job {id} running as domain {domid}{how}");
                    j.domid = Some(domid);
                    let r = self.accepted(&self.jobs[i]).map(|r| r.encode());
                    out.extend(r.and_then(|r| message(self.jobs[i].to, &r)));
                }
                Err(e) => {
                    eprintln!("packetd: job {id}: xl create failed: {e}");
                    let r = answer(Status::Failed, "create-failed", id, j.echo.unwrap_or_default());
                    out.extend(message(j.to, &r.encode()));
                    let adopted = self.jobs.remove(i).echo.is_none();
                    let why = if adopted { "not running after a restart" } else { "create-failed" };
                    self.end(id, true, unix, why);
                }
            }
        }
        out
    }

    /// Once a second, for each running job: close it if its domain is gone; take the top-up
    /// the guest wrote to its `data/lm-topup`; bill memory x time; warn when the balance ran
    /// out; purge after the grace period.
    pub fn tick(&mut self, now_ms: u64, unix: u64) {
        let dt = now_ms.saturating_sub(std::mem::replace(&mut self.last_tick, now_ms));
        let (price, grace) =
            (self.cfg.mib_seconds_per_token.saturating_mul(1000), self.cfg.grace_seconds);
        let mut ended = vec![];
        for j in self.jobs.iter_mut() {
            let (Some(d), h, id) = (j.domid, &mut self.host, j.id) else { continue };
            let key = |k: &str| format!("/local/domain/{d}/{k}");
            // Only a definite "no such node" means gone: a failed read keeps the guest.
            if let Ok(None) = h.xs(XS_READ, &key("name"), "") {
                ended.push((id, false, "domain gone"));
                continue;
            }
            let hex = h.xs(XS_READ, &key("data/lm-topup"), "").ok().flatten();
            if let Some(hex) = hex.filter(|v| !v.is_empty()) {
                let _ = h.xs(XS_RM, &key("data/lm-topup"), "");
                let res = topup(&mut self.ledger, id, &hex);
                eprintln!("packetd: job {id} top-up: {res}");
                if res.starts_with("accepted") && j.warned_at.take().is_some() {
                    put(h, &key("data/lm-warning"), "");
                }
                put(h, &key("data/lm-topup-result"), &res);
            }
            let memory = self.ledger.job(id).map_or(0, |s| s.memory_mib as u64);
            j.owed_mib_ms = j.owed_mib_ms.saturating_add(dt.saturating_mul(memory));
            let debit = self.ledger.consume(id, j.owed_mib_ms / price);
            j.owed_mib_ms %= price;
            let shown =
                debit.as_ref().map(|b| put(h, &key("data/lm-balance"), &b.balance.to_string()));
            shown.unwrap_or_else(|e| eprintln!("packetd: job {id}: cannot debit: {e}"));
            if debit.is_ok_and(|b| b.exhausted) && j.warned_at.is_none() {
                eprintln!("packetd: job {id}: balance exhausted at {unix}, {grace} s of grace");
                j.warned_at = Some(unix);
                put(
                    h,
                    &key("data/lm-warning"),
                    &format!("exhausted: destroyed at {}", unix + grace),
                );
            }
            if j.warned_at.is_some_and(|w| unix >= w + grace) {
                ended.push((id, true, "purged: did not pay"));
            }
        }
        for (id, destroy, why) in ended {
            self.jobs.retain(|j| j.id != id);
            self.end(id, destroy, unix, why);
        }
    }
}

fn put(h: &mut impl Host, path: &str, value: &str) {
    if let Err(e) = h.xs(XS_WRITE, path, value) {
        eprintln!("packetd: {e}");
    }
}

/// The outcome of a top-up a guest wrote (hex): "accepted balance N" or "refused CODE".
fn topup(ledger: &mut NodeLedger, job: u64, hex: &str) -> String {
    // Whitespace aside, a top-up is 88 hex digits; anything much longer is refused unread.
    let res = match hex.len() <= 4 * TOPUP_LEN {
        true => token_tool::from_hex(hex)
            .and_then(|b| Ok((TopUp::decode(&b)?, b)))
            .map_err(|e| e.code()),
        false => Err("oversized"),
    };
    match res {
        Err(code) => format!("refused {code}"),
        Ok((t, _)) if t.job_id != job => "refused wrong-job".into(),
        Ok((_, b)) => match ledger.accept_topup(&b) {
            Ok(s) => format!("accepted balance {}", s.balance),
            Err(e) => format!("refused {}", e.code()),
        },
    }
}
