//! What packetd does with a packet, a finished toolstack command and a clock tick. The side
//! effects (commands, xenstore) go through [`Host`], so tests and the fuzz target run this code
//! unchanged with a fake host. The token rules, the ledger, the certificates and the rate
//! limit are the token library's (token-tool); what is here is the node's part.

use std::{fs, io};

use inflate_core::xs::{XS_READ, XS_RM, XS_WRITE};
use token_tool::bootproto::{self as bp, BootReply, Status};
use token_tool::{node::NodeLedger, ratelimit::RateLimit, wire::BOOT_MAGIC, BootFields};

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
    limit: RateLimit,
    last_tick: u64,
}

fn message(to: Dest, payload: &[u8]) -> Option<Out> {
    let mut buf = [0u8; bp::IP_PACKET_MAX];
    let n = bp::write_echo(bp::ICMP_ECHO_REPLY, to.1, to.2, payload, &mut buf)?;
    (to.0 != [0; 4]).then(|| (to.0, buf[..n].to_vec()))
}

/// Why a job found open at start is closed.
const LOST: &str = "not running after a restart";

fn name(job: u64) -> String {
    format!("lm-job{job}")
}

impl<H: Host> Node<H> {
    pub fn new(cfg: Config, ledger: NodeLedger, host: H, now_ms: u64) -> Self {
        let limit = RateLimit::new(cfg.rate_per_second, cfg.rate_burst);
        let (jobs, last_tick) = (vec![], now_ms);
        Node {
            cfg,
            ledger,
            host,
            jobs,
            limit,
            last_tick,
        }
    }

    /// At start: the ledger's open jobs whose loader domain still runs are taken over (after
    /// a restart of packetd they go on paying); the others are closed with a certificate.
    pub fn adopt(&mut self, unix: u64) {
        let open = self.ledger.jobs().filter(|j| !j.closed);
        for id in open.map(|j| j.job_id).collect::<Vec<_>>() {
            let name = name(id);
            // The job's address, read back from the xl config packetd wrote for it.
            let cfg = fs::read_to_string(self.cfg.run_dir.join(format!("{name}.cfg")));
            let slot = cfg.ok().and_then(|c| self.cfg.slot_in(&c));
            match slot.map(|s| (s, self.host.spawn(id, &format!("xl domid {name}")))) {
                Some((slot, Ok(()))) => self.jobs.push(Job {
                    id,
                    slot,
                    ..Job::default()
                }),
                _ => self.end(id, true, unix, LOST),
            }
        }
    }

    /// One IPv4 packet from the raw socket. Returns the echo reply to send, if any.
    pub fn on_packet(&mut self, pkt: &[u8], now_ms: u64, unix: u64) -> Option<Out> {
        let e = bp::parse_echo(pkt).filter(|e| e.kind == bp::ICMP_ECHO_REQUEST)?;
        self.limit.allow(e.src, now_ms).then_some(())?;
        let to = (e.src, e.id, e.seq);
        if e.payload.starts_with(&BOOT_MAGIC) {
            return message(to, &self.boot(e.payload, to, unix)?.encode());
        }
        if let Some(job) = bp::parse_cert_query(e.payload) {
            let kept = self.ledger.kept_certificate(job);
            return message(to, &bp::cert_query_answer(job, kept));
        }
        // An ordinary ping: the node answers it like any host (RFC 1122).
        message(to, e.payload)
    }

    /// The answer for a running job.
    fn accepted(&self, j: &Job) -> Option<BootReply> {
        let balance = self.ledger.job(j.id).map_or(0, |s| s.balance);
        let at = (self.cfg.addr(j.slot).octets(), self.cfg.port);
        let echo = j.echo.unwrap_or_default();
        Some(BootReply::accepted(j.id, echo, at, j.domid?, balance))
    }

    /// A boot token: refuse it, or start the loader domain (the answer follows in `poll`).
    fn boot(&mut self, payload: &[u8], to: Dest, unix: u64) -> Option<BootReply> {
        let echo = bp::echo_of(payload);
        if let Some(i) = self.jobs.iter().position(|j| j.echo == Some(echo)) {
            // The same token again (a resend): answer with what we know, or later.
            self.jobs[i].to = to;
            return self.accepted(&self.jobs[i]);
        }
        let refuse = |status, reason: &str, job| Some(BootReply::answer(status, reason, job, echo));
        let t = match BootFields::parse(payload) {
            Ok((t, _)) => t,
            Err(e) => return refuse(Status::Refused, e.code(), 0),
        };
        let (c, id) = (&self.cfg, t.job_id);
        let over = t.memory_mib > c.max_memory_mib || t.vcpus > c.max_vcpus;
        if t.node_id == self.ledger.node_id() && (over || t.count > c.max_boot_count) {
            return refuse(Status::Refused, "over-limit", id);
        }
        let free = (0..c.pool.1 as usize).find(|s| self.jobs.iter().all(|j| j.slot != *s));
        let Some(slot) = free else {
            return refuse(Status::Later, "node-full", id);
        };
        if let Err(e) = self.ledger.accept_boot(payload, unix) {
            return Some(BootReply::not_taken(&e, id, echo));
        }
        let name = name(id);
        let path = c.run_dir.join(format!("{name}.cfg"));
        let script = format!("xl create -q {} && xl domid {name}", path.display());
        let started = self.loader_cfg(slot, &t).and_then(|cfg| {
            fs::write(&path, cfg).map_err(|e| e.to_string())?;
            self.host.spawn(id, &script)
        });
        if let Err(e) = started {
            eprintln!("packetd: job {id}: cannot start xl create: {e}");
            self.end(id, false, unix, "create-failed");
            return refuse(Status::Failed, "create-failed", id);
        }
        let src = to.0;
        eprintln!("packetd: job {id} accepted from {src:?}: creating {name}");
        let job = Job {
            id,
            slot,
            to,
            echo: Some(echo),
            ..Job::default()
        };
        self.jobs.push(job);
        None
    }

    fn loader_cfg(&self, slot: usize, t: &BootFields) -> Result<String, String> {
        let (c, ip) = (&self.cfg, self.cfg.addr(slot));
        let [.., o2, o3] = ip.octets();
        // stage2-sha1: what the loader's stage 1 checks an uploaded stage 2 against.
        let sha = token_tool::to_hex(&t.loader_sha1);
        let (mask, port) = (c.netmask, c.port);
        let extra = format!("ip={ip} netmask={mask} port={port} stage2-sha1={sha}");
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
    /// redemption certificate, which the customer fetches with a certificate query and the
    /// broker refunds once.
    fn end(&mut self, job: u64, destroy: bool, unix: u64, why: &str) {
        destroy.then(|| self.host.spawn(job, &format!("xl destroy {}", name(job))));
        let what = self.ledger.close(job, unix).map(|(c, p)| {
            let (b, p) = (c.balance, p.display());
            format!("certificate for {b} unspent tokens {p}")
        });
        let what = what.unwrap_or_else(|e| e.to_string());
        eprintln!("packetd: job {job} closed at {unix} ({why}): {what}");
    }

    /// Finished commands: answer the customers of finished creations. Call often.
    pub fn poll(&mut self, unix: u64) -> Vec<Out> {
        let mut out = vec![];
        while let Some((id, res)) = self.host.done() {
            // Other commands (`xl destroy`) are done with.
            let creating = |j: &Job| j.id == id && j.domid.is_none();
            let Some(i) = self.jobs.iter().position(creating) else {
                continue;
            };
            let j = &mut self.jobs[i];
            match res.and_then(|o| o.trim().parse().map_err(|_| format!("output {o:?}"))) {
                Ok(domid) => {
                    let how = j.echo.map_or(" (adopted after a restart)", |_| "");
                    eprintln!("packetd: job {id} running as domain {domid}{how}");
                    j.domid = Some(domid);
                    let r = self.accepted(&self.jobs[i]).map(|r| r.encode());
                    out.extend(r.and_then(|r| message(self.jobs[i].to, &r)));
                }
                Err(e) => {
                    eprintln!("packetd: job {id}: xl create failed: {e}");
                    let echo = j.echo.unwrap_or_default();
                    let r = BootReply::answer(Status::Failed, "create-failed", id, echo);
                    out.extend(message(j.to, &r.encode()));
                    let adopted = self.jobs.remove(i).echo.is_none();
                    let why = if adopted { LOST } else { "create-failed" };
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
        let price = self.cfg.mib_seconds_per_token.saturating_mul(1000);
        let grace = self.cfg.grace_seconds;
        let mut ended = vec![];
        for j in self.jobs.iter_mut() {
            let (Some(d), h, id) = (j.domid, &mut self.host, j.id) else {
                continue;
            };
            let key = |k: &str| format!("/local/domain/{d}/data/{k}");
            // Only a definite "no such node" means gone: a failed read keeps the guest.
            if let Ok(None) = h.xs(XS_READ, &format!("/local/domain/{d}/name"), "") {
                ended.push((id, false, "domain gone"));
                continue;
            }
            let hex = h.xs(XS_READ, &key("lm-topup"), "").ok().flatten();
            if let Some(hex) = hex.filter(|v| !v.is_empty()) {
                let _ = h.xs(XS_RM, &key("lm-topup"), "");
                let res = match self.ledger.accept_topup_hex(id, &hex) {
                    Ok(s) => format!("accepted balance {}", s.balance),
                    Err(code) => format!("refused {code}"),
                };
                eprintln!("packetd: job {id} top-up: {res}");
                if res.starts_with("accepted") && j.warned_at.take().is_some() {
                    put(h, &key("lm-warning"), "");
                }
                put(h, &key("lm-topup-result"), &res);
            }
            let debit = self.ledger.bill(id, &mut j.owed_mib_ms, dt, price);
            match &debit {
                Ok(b) => put(h, &key("lm-balance"), &b.balance.to_string()),
                Err(e) => eprintln!("packetd: job {id}: cannot debit: {e}"),
            }
            if debit.is_ok_and(|b| b.exhausted) && j.warned_at.is_none() {
                eprintln!("packetd: job {id}: balance exhausted at {unix}, {grace} s of grace");
                j.warned_at = Some(unix);
                let warning = format!("exhausted: destroyed at {}", unix + grace);
                put(h, &key("lm-warning"), &warning);
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
