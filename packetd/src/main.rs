//! packetd's executable: the raw ICMP socket, the toolstack (`xl`) and xenstore behind
//! [`packetd::node::Host`], and the poll loop.

use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use packetd::{config::Config, node::Host, node::Node, node::Out, xs::Xs};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use token_tool::{bootproto::IP_PACKET_MAX, node::NodeLedger, unix_now};

/// The laundromat node daemon: ICMP boot tokens in, loader domains out (docs/packetd.md).
#[derive(Parser)]
struct Cli {
    /// Node configuration (key = value lines).
    #[arg(long, default_value = "/etc/packetd/packetd.conf")]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve (the default).
    Run,
}

/// `xl` and xenstore.
struct Xl {
    xs: Xs,
    run_dir: PathBuf,
    sched: String,
    creating: Vec<(String, Child)>,
    reaping: Vec<Child>,
}

impl Host for Xl {
    fn create(&mut self, name: &str, cfg: &str, cap: u32) -> Result<(), String> {
        let path = self.run_dir.join(format!("{name}.cfg"));
        fs::write(&path, cfg).map_err(|e| format!("{}: {e}", path.display()))?;
        let p = path.display();
        let s = &self.sched;
        let script =
            format!("xl create -q {p} && xl sched-{s} -d {name} -c {cap} && xl domid {name}");
        let mut child = Command::new("sh");
        child.args(["-c", &script]).stdin(Stdio::null());
        let child = child.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
        self.creating
            .push((name.into(), child.map_err(|e| e.to_string())?));
        Ok(())
    }

    fn created(&mut self, name: &str) -> Option<Result<u32, String>> {
        let i = self.creating.iter().position(|c| c.0 == name)?;
        if let Ok(None) = self.creating[i].1.try_wait() {
            return None;
        }
        let out = self
            .creating
            .remove(i)
            .1
            .wait_with_output()
            .map_err(|e| e.to_string());
        Some(out.and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout);
            match text
                .trim()
                .lines()
                .last()
                .and_then(|l| l.trim().parse().ok())
            {
                Some(domid) if o.status.success() => Ok(domid),
                _ => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            }
        }))
    }

    fn alive(&mut self, domid: u32) -> bool {
        // Only a definite "no such node" means gone: a failed read keeps the guest.
        !matches!(
            self.xs.read(&format!("/local/domain/{domid}/name")),
            Ok(None)
        )
    }

    fn destroy(&mut self, name: &str) {
        match Command::new("xl")
            .args(["destroy", name])
            .stdin(Stdio::null())
            .spawn()
        {
            Ok(c) => self.reaping.push(c),
            Err(e) => eprintln!("packetd: xl destroy {name}: {e}"),
        }
    }

    fn write(&mut self, domid: u32, key: &str, value: &str) {
        let path = format!("/local/domain/{domid}/data/{key}");
        if let Err(e) = self.xs.write(&path, value.as_bytes()) {
            eprintln!("packetd: xenstore write {path}: {e}");
        }
    }

    fn lookup(&mut self, name: &str) -> Option<u32> {
        let out = Command::new("xl")
            .args(["domid", name])
            .stderr(Stdio::null())
            .output();
        String::from_utf8_lossy(&out.ok()?.stdout)
            .trim()
            .parse()
            .ok()
    }

    fn watch(&mut self, domid: u32) {
        let path = format!("/local/domain/{domid}/data/lm-topup");
        if let Err(e) = self.xs.watch(&path, &domid.to_string()) {
            eprintln!("packetd: xenstore watch {path}: {e}");
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd.unwrap_or(Cmd::Run) {
        Cmd::Run => run(&cli.config),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("packetd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn send(sock: &Socket, (dst, msg): Out) {
    let to = SockAddr::from(SocketAddrV4::new(Ipv4Addr::from(dst), 0));
    if let Err(e) = sock.send_to(&msg, &to) {
        eprintln!("packetd: send to {}: {e}", Ipv4Addr::from(dst));
    }
}

fn run(config: &PathBuf) -> anyhow::Result<()> {
    let text =
        fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let cfg = Config::parse(&text).with_context(|| format!("in {}", config.display()))?;
    let ledger = NodeLedger::open(&cfg.state)?;
    fs::create_dir_all(&cfg.run_dir).with_context(|| format!("{}", cfg.run_dir.display()))?;
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
        .context("raw ICMP socket (needs CAP_NET_RAW)")?;
    // packetd answers every ping itself; the kernel must not answer as well.
    fs::write("/proc/sys/net/ipv4/icmp_echo_ignore_all", "1").context("icmp_echo_ignore_all")?;
    let xs = Xs::connect().context("connecting to xenstored")?;
    let (run_dir, sched) = (cfg.run_dir.clone(), cfg.sched.clone());
    let host = Xl {
        xs,
        run_dir,
        sched,
        creating: vec![],
        reaping: vec![],
    };
    let t0 = Instant::now();
    let ms = || t0.elapsed().as_millis() as u64;
    let mut node = Node::new(cfg, ledger, host, ms());
    node.adopt(unix_now());
    eprintln!("packetd: node {} serving", node.ledger.node_id());
    let mut buf = [0u8; IP_PACKET_MAX];
    let mut next_tick = ms() + 1000;
    loop {
        let wait = next_tick.saturating_sub(ms()).min(1000) as u16;
        let (raw, xsr) = {
            let f = PollFlags::POLLIN;
            let mut fds = [
                PollFd::new(sock.as_fd(), f),
                PollFd::new(node.host.xs.sock.as_fd(), f),
            ];
            match poll(&mut fds, PollTimeout::from(wait)) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("poll"),
            }
            let ready = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if raw {
            let n = (&sock).read(&mut buf).context("raw socket")?;
            if let Some(out) = node.on_packet(&buf[..n], ms(), unix_now()) {
                send(&sock, out);
            }
        }
        if xsr {
            node.host.xs.recv().context("xenstore")?;
        }
        while let Some((path, token)) = node.host.xs.events.pop_front() {
            let Ok(domid) = token.parse() else { continue };
            if let Ok(Some(v)) = node.host.xs.read(&path) {
                if !v.is_empty() {
                    node.on_topup(domid, &String::from_utf8_lossy(&v));
                    node.host.xs.rm(&path).ok();
                }
            }
        }
        for out in node.poll(unix_now()) {
            send(&sock, out);
        }
        if ms() >= next_tick {
            next_tick = ms() + 1000;
            node.tick(ms(), unix_now());
            node.host
                .reaping
                .retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        }
    }
}
