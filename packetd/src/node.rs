//! What packetd does with a packet, a finished `xl create`, a top-up and a clock tick. The
//! side effects (toolstack, xenstore) go through [`Host`], so tests and the fuzz target run
//! this code unchanged with a fake host.

use std::path::Path;

use token_tool::bootproto::{self as bp, BootReply, Status};
use token_tool::node::NodeLedger;
use token_tool::wire::BOOT_MAGIC;
use token_tool::{BootToken, TopUp};

use crate::config::Config;

/// The toolstack and xenstore, as packetd uses them.
pub trait Host {
    /// Start `xl create` of `cfg` (then set the CPU cap); must not block for long.
    fn create(&mut self, name: &str, cfg: &str, cap: u32) -> Result<(), String>;
    /// The domid once that creation finished, or why it failed; None while it runs.
    fn created(&mut self, name: &str) -> Option<Result<u32, String>>;
    fn alive(&mut self, domid: u32) -> bool;
    fn destroy(&mut self, name: &str);
    /// Write `data/KEY` of the domain; watch its `data/lm-topup`.
    fn write(&mut self, domid: u32, key: &str, value: &str);
    fn watch(&mut self, domid: u32);
    /// The domid of a running domain, by name.
    fn lookup(&mut self, name: &str) -> Option<u32>;
}

/// An ICMP message to send: destination and the ICMP bytes.
pub type Out = ([u8; 4], Vec<u8>);

#[derive(Debug)]
struct Job {
    job_id: u64,
    echo: [u8; 20],
    /// Where the answer goes (the latest copy of the request).
    to: ([u8; 4], u16, u16),
    slot: usize,
    name: String,
    memory_mib: u32,
    domid: Option<u32>,
    reply: Option<BootReply>,
    owed_mib_ms: u64,
    warned_at: Option<u64>,
}

pub struct Node<H: Host> {
    pub cfg: Config,
    pub ledger: NodeLedger,
    pub host: H,
    jobs: Vec<Job>,
    /// Per-source token buckets: (source, tokens x 1000, last refill ms). Fixed size; a new
    /// source evicts the one that was refilled longest ago.
    buckets: [([u8; 4], u64, u64); 64],
    last_tick: u64,
}

fn refusal(status: Status, reason: &str, job_id: u64, echo: [u8; 20]) -> BootReply {
    let reason = bp::reason_code(reason).unwrap_or(6);
    BootReply {
        status,
        reason,
        job_id,
        addr: [0; 4],
        port: 0,
        domid: 0,
        balance: 0,
        echo,
    }
}

fn reply_msg(to: ([u8; 4], u16, u16), payload: &[u8]) -> Option<Out> {
    let mut buf = [0u8; bp::IP_PACKET_MAX];
    let n = bp::write_echo(bp::ICMP_ECHO_REPLY, to.1, to.2, payload, &mut buf)?;
    Some((to.0, buf[..n].to_vec()))
}

impl<H: Host> Node<H> {
    pub fn new(cfg: Config, ledger: NodeLedger, host: H, now_ms: u64) -> Self {
        Node {
            cfg,
            ledger,
            host,
            jobs: Vec::new(),
            buckets: [([0; 4], 0, 0); 64],
            last_tick: now_ms,
        }
    }

    /// At start: take over the open jobs of the ledger whose loader domain still runs (after a
    /// restart of packetd they keep paying); close the others with a certificate.
    pub fn adopt(&mut self, unix: u64) {
        let open: Vec<_> = self.ledger.jobs().filter(|j| !j.closed).cloned().collect();
        for js in open {
            let name = format!("lm-job{}", js.job_id);
            let cfg = std::fs::read_to_string(self.cfg.run_dir.join(format!("{name}.cfg")));
            let slot = cfg.ok().and_then(|c| {
                let ip = c.split("ip=").nth(1)?.split_whitespace().next()?;
                let off = u32::from(ip.parse::<std::net::Ipv4Addr>().ok()?)
                    .checked_sub(u32::from(self.cfg.pool_first))?;
                (off < self.cfg.pool_len as u32).then_some(off as usize)
            });
            let job = Job {
                job_id: js.job_id,
                echo: [0; 20],
                to: ([0; 4], 0, 0),
                slot: slot.unwrap_or(usize::MAX),
                name,
                memory_mib: js.memory_mib,
                domid: None,
                reply: None,
                owed_mib_ms: 0,
                warned_at: None,
            };
            match (self.host.lookup(&job.name), slot) {
                (Some(domid), Some(_)) => {
                    eprintln!("packetd: job {} adopted: domain {domid}", job.job_id);
                    self.host.watch(domid);
                    let reply = refusal(Status::Accepted, "ok", job.job_id, job.echo);
                    self.jobs.push(Job {
                        domid: Some(domid),
                        reply: Some(reply),
                        ..job
                    });
                }
                (domid, _) => {
                    if domid.is_some() {
                        self.host.destroy(&job.name);
                    }
                    self.finish(job, unix, "not running after a restart");
                }
            }
        }
    }

    fn allow(&mut self, src: [u8; 4], now_ms: u64) -> bool {
        let (burst, rate) = (
            self.cfg.rate_burst as u64 * 1000,
            self.cfg.rate_per_second as u64,
        );
        let i = match self.buckets.iter().position(|b| b.0 == src) {
            Some(i) => i,
            None => {
                let i = (0..64).min_by_key(|&i| (self.buckets[i].0 != [0; 4], self.buckets[i].2));
                let i = i.unwrap_or(0);
                self.buckets[i] = (src, burst, now_ms);
                i
            }
        };
        let b = &mut self.buckets[i];
        b.1 = (b.1 + now_ms.saturating_sub(b.2).saturating_mul(rate)).min(burst);
        b.2 = now_ms;
        if b.1 < 1000 {
            return false;
        }
        b.1 -= 1000;
        true
    }

    /// One IPv4 packet from the raw socket. Returns the echo reply to send, if any.
    pub fn on_packet(&mut self, pkt: &[u8], now_ms: u64, unix: u64) -> Option<Out> {
        let e = bp::parse_echo(pkt).filter(|e| e.kind == bp::ICMP_ECHO_REQUEST)?;
        if !self.allow(e.src, now_ms) {
            return None;
        }
        let to = (e.src, e.id, e.seq);
        if !e.payload.starts_with(&BOOT_MAGIC) {
            // An ordinary ping: the node answers it like any host (RFC 1122).
            return reply_msg(to, e.payload);
        }
        let r = self.boot(e.payload, to, unix)?;
        reply_msg(to, &r.encode())
    }

    /// A boot token: refuse it, or start the loader domain (the answer follows in `poll`).
    fn boot(&mut self, payload: &[u8], to: ([u8; 4], u16, u16), unix: u64) -> Option<BootReply> {
        let echo = bp::echo_of(payload);
        if let Some(j) = self.jobs.iter_mut().find(|j| j.echo == echo) {
            // The same token again (a retry): answer with what we know, or later.
            j.to = to;
            return j.reply.clone();
        }
        let t = match BootToken::decode_unverified(payload) {
            Ok((t, _)) => t,
            Err(e) => return Some(refusal(Status::Refused, e.code(), 0, echo)),
        };
        let c = &self.cfg;
        let over =
            t.memory_mib > c.max_memory_mib || t.vcpus > c.max_vcpus || t.count > c.max_boot_count;
        if t.node_id == self.ledger.node_id() && over {
            return Some(refusal(Status::Refused, "over-limit", t.job_id, echo));
        }
        let Some(slot) = (0..c.pool_len as usize).find(|s| self.jobs.iter().all(|j| j.slot != *s))
        else {
            return Some(refusal(Status::Later, "node-full", t.job_id, echo));
        };
        if let Err(e) = self.ledger.accept_boot(payload, unix) {
            let (status, code) = match e.is_refusal() {
                true => (Status::Refused, e.code()),
                false => (Status::Failed, "ledger-failure"),
            };
            return Some(refusal(status, code, t.job_id, echo));
        }
        let name = format!("lm-job{}", t.job_id);
        let cfg = self.loader_cfg(&name, slot, &t);
        let cap = c.cap_percent.saturating_mul(t.vcpus as u32);
        let mut job = Job {
            job_id: t.job_id,
            echo,
            to,
            slot,
            name,
            memory_mib: t.memory_mib,
            domid: None,
            reply: None,
            owed_mib_ms: 0,
            warned_at: None,
        };
        if let Err(e) = self.host.create(&job.name, &cfg, cap) {
            eprintln!("packetd: job {}: cannot start xl create: {e}", t.job_id);
            job.reply = Some(refusal(Status::Failed, "create-failed", t.job_id, echo));
            let r = job.reply.clone();
            self.finish(job, unix, "create-failed");
            return r;
        }
        eprintln!(
            "packetd: job {} accepted from {:?}: creating {}",
            t.job_id, to.0, job.name
        );
        self.jobs.push(job);
        None
    }

    fn loader_cfg(&self, name: &str, slot: usize, t: &BootToken) -> String {
        let ip = self.cfg.addr(slot);
        let o = ip.octets();
        // stage2-sha1: what the loader's stage 1 is to check an uploaded stage 2 against (the
        // token's loader SHA-1); today's loader ignores the word.
        let extra = format!(
            "ip={ip} netmask={} port={} stage2-sha1={}",
            self.cfg.netmask,
            self.cfg.port,
            token_tool::to_hex(&t.loader_sha1)
        );
        self.cfg
            .template
            .replace("@NAME@", name)
            .replace("@KERNEL@", &self.cfg.loader.display().to_string())
            .replace("@EXTRA@", &extra)
            .replace("@MEMORY@", &t.memory_mib.to_string())
            .replace("@VCPUS@", &t.vcpus.to_string())
            .replace("@MAC@", &format!("00:16:3e:4c:{:02x}:{:02x}", o[2], o[3]))
    }

    /// Close the job: its unspent balance becomes a redemption certificate in the state
    /// directory (certs/JOB.lmrc), which the broker refunds once.
    fn finish(&mut self, job: Job, unix: u64, why: &str) {
        match self.ledger.redeem(job.job_id, unix) {
            Ok((c, bytes)) => {
                let dir = self.cfg.state.join("certs");
                let path = dir.join(format!("{}.lmrc", job.job_id));
                let w = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, bytes));
                eprintln!(
                    "packetd: job {} closed at {unix} ({why}): certificate for {} unspent tokens {}",
                    job.job_id,
                    c.balance,
                    w.map_or_else(|e| format!("NOT written: {e}"), |_| path_str(&path))
                );
            }
            Err(e) => eprintln!(
                "packetd: job {} closed at {unix} ({why}), no certificate: {e}",
                job.job_id
            ),
        }
    }

    /// Finished creations: answer their customers. Call often.
    pub fn poll(&mut self, unix: u64) -> Vec<Out> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.jobs.len() {
            if self.jobs[i].domid.is_some() || self.jobs[i].reply.is_some() {
                i += 1;
                continue;
            }
            let Some(res) = self.host.created(&self.jobs[i].name) else {
                i += 1;
                continue;
            };
            let balance = self
                .ledger
                .job(self.jobs[i].job_id)
                .map_or(0, |j| j.balance);
            let j = &mut self.jobs[i];
            match res {
                Ok(domid) => {
                    eprintln!("packetd: job {} running as domain {domid}", j.job_id);
                    let addr = self.cfg.addr(j.slot).octets();
                    let balance = balance.min(u32::MAX as u64) as u32;
                    let r = BootReply {
                        addr,
                        port: self.cfg.port,
                        domid,
                        balance,
                        ..refusal(Status::Accepted, "ok", j.job_id, j.echo)
                    };
                    j.domid = Some(domid);
                    j.reply = Some(r.clone());
                    out.extend(reply_msg(j.to, &r.encode()));
                    self.host.watch(domid);
                    i += 1;
                }
                Err(e) => {
                    eprintln!("packetd: job {}: xl create failed: {e}", j.job_id);
                    let r = refusal(Status::Failed, "create-failed", j.job_id, j.echo);
                    out.extend(reply_msg(j.to, &r.encode()));
                    let job = self.jobs.remove(i);
                    self.host.destroy(&job.name);
                    self.finish(job, unix, "create-failed");
                }
            }
        }
        out
    }

    /// A value the guest wrote to its `data/lm-topup` (hex of a top-up).
    pub fn on_topup(&mut self, domid: u32, hex: &str) {
        let Some(j) = self.jobs.iter_mut().find(|j| j.domid == Some(domid)) else {
            return;
        };
        // Whitespace aside, a top-up is 88 hex digits; anything much longer is refused unread.
        let res = match hex.len() <= 4 * token_tool::wire::TOPUP_LEN {
            true => token_tool::from_hex(hex).and_then(|b| TopUp::decode(&b).map(|t| (t, b))),
            false => Err(token_tool::TokenError::Oversized {
                what: "top-up",
                max: 4 * token_tool::wire::TOPUP_LEN,
                got: hex.len(),
            }),
        };
        let msg = match res {
            Ok((t, _)) if t.job_id != j.job_id => "refused wrong-job".to_string(),
            Ok((_, b)) => match self.ledger.accept_topup(&b) {
                Ok(s) => {
                    if s.balance > 0 && j.warned_at.take().is_some() {
                        self.host.write(domid, "lm-warning", "");
                    }
                    format!("accepted balance {}", s.balance)
                }
                Err(e) => format!("refused {}", e.code()),
            },
            Err(e) => format!("refused {}", e.code()),
        };
        eprintln!("packetd: job {} top-up: {msg}", j.job_id);
        self.host.write(domid, "lm-topup-result", &msg);
    }

    /// Once a second: bill memory x time, warn, purge after the grace period, close the
    /// jobs whose domain is gone.
    pub fn tick(&mut self, now_ms: u64, unix: u64) {
        let dt = now_ms.saturating_sub(self.last_tick);
        self.last_tick = now_ms;
        let price = self.cfg.mib_seconds_per_token.saturating_mul(1000);
        let mut i = 0;
        while i < self.jobs.len() {
            let Some(domid) = self.jobs[i].domid else {
                i += 1;
                continue;
            };
            if !self.host.alive(domid) {
                let job = self.jobs.remove(i);
                self.finish(job, unix, "domain gone");
                continue;
            }
            let j = &mut self.jobs[i];
            j.owed_mib_ms = j
                .owed_mib_ms
                .saturating_add(dt.saturating_mul(j.memory_mib as u64));
            let tokens = j.owed_mib_ms / price;
            j.owed_mib_ms %= price;
            let debit = match self.ledger.consume(j.job_id, tokens) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("packetd: job {}: cannot debit: {e}", j.job_id);
                    i += 1;
                    continue;
                }
            };
            self.host
                .write(domid, "lm-balance", &debit.balance.to_string());
            if debit.exhausted && j.warned_at.is_none() {
                let g = self.cfg.grace_seconds;
                eprintln!(
                    "packetd: job {}: balance exhausted at {unix}, {g} s of grace",
                    j.job_id
                );
                j.warned_at = Some(unix);
                self.host.write(
                    domid,
                    "lm-warning",
                    &format!("exhausted: destroyed at {}", unix + g),
                );
            }
            if j.warned_at
                .is_some_and(|w| unix >= w + self.cfg.grace_seconds)
            {
                let job = self.jobs.remove(i);
                self.host.destroy(&job.name);
                self.finish(job, unix, "purged: did not pay");
                continue;
            }
            i += 1;
        }
    }
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}
