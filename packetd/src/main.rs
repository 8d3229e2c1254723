//! packetd's executable: the raw ICMP socket, `sh -c` for `xl`, a small xenstore client over
//! xenstored's unix socket (the message format is inflate-core's `xs`, shared with the
//! loader; our own rather than the GPL-3.0-only xenstore-rs crate, docs/packetd.md §6), and
//! the poll loop. The options are [`Config`].

use std::io::{self, Read, Write};
use std::process::{Child, Command, Stdio};
use std::{
    net::Ipv4Addr, net::SocketAddrV4, os::fd::AsFd, os::unix::net::UnixStream, time::Duration,
    time::Instant,
};

use anyhow::Context;
use clap::Parser;
use inflate_core::xs::{self, Header, HEADER_LEN, PAYLOAD_MAX};
use nix::errno::Errno::EINTR;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use packetd::{config::Config, node::Host, node::Node};
use socket2::{Domain, Protocol, Socket, Type};
use token_tool::{bootproto::IP_PACKET_MAX, node::NodeLedger, unix_now};

struct Sys {
    xs: UnixStream,
    /// The running commands and their jobs.
    jobs: Vec<(u64, Child)>,
}

impl Host for Sys {
    fn spawn(&mut self, job: u64, script: &str) -> Result<(), String> {
        let mut c = Command::new("sh");
        c.args(["-c", script]).stdin(Stdio::null());
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        self.jobs.push((job, c.spawn().map_err(|e| e.to_string())?));
        Ok(())
    }

    fn done(&mut self) -> Option<(u64, Result<String, String>)> {
        let finished = |c: &mut (u64, Child)| !matches!(c.1.try_wait(), Ok(None));
        let i = self.jobs.iter_mut().position(finished)?;
        let (job, child) = self.jobs.swap_remove(i);
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
        let res = child.wait_with_output().map_err(|e| e.to_string());
        let res = res.and_then(|o| {
            let last = text(&o.stdout).lines().last().unwrap_or("").to_string();
            o.status.success().then_some(last).ok_or(text(&o.stderr))
        });
        Some((job, res))
    }

    /// One request and its reply (one at a time, no watches: every reply is ours).
    fn xs(&mut self, ty: u32, path: &str, value: &str) -> io::Result<Option<String>> {
        let parts = [path.as_bytes(), value.as_bytes()];
        let parts = &parts[..if ty == xs::XS_WRITE { 2 } else { 1 }];
        let mut buf = [0u8; HEADER_LEN + PAYLOAD_MAX];
        let n = xs::request(ty, 0, parts, &mut buf).ok_or(io::Error::other("long"))?;
        self.xs.write_all(&buf[..n])?;
        let mut head = [0u8; HEADER_LEN];
        self.xs.read_exact(&mut head)?;
        let h = Header::decode(&head);
        let too_long = io::Error::other("reply too long");
        let body = buf.get_mut(..h.len as usize).ok_or(too_long)?;
        self.xs.read_exact(body)?;
        let text = String::from_utf8_lossy(xs::trim_nul(body)).into_owned();
        match h.ty {
            xs::XS_ERROR if text == "ENOENT" => Ok(None),
            xs::XS_ERROR => Err(io::Error::other(format!("xenstore {path}: {text}"))),
            _ => Ok(Some(text)),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    let ledger = NodeLedger::open(&cfg.state)?;
    std::fs::create_dir_all(&cfg.run_dir).with_context(|| format!("{}", cfg.run_dir.display()))?;
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
        .context("raw ICMP socket (needs CAP_NET_RAW)")?;
    // packetd answers every ping itself; the kernel must not answer as well.
    std::fs::write("/proc/sys/net/ipv4/icmp_echo_ignore_all", "1").context("icmp_echo_ignore")?;
    let xs = UnixStream::connect("/run/xenstored/socket").context("connecting to xenstored")?;
    xs.set_read_timeout(Some(Duration::from_secs(10)))?;
    let t0 = Instant::now();
    let ms = || t0.elapsed().as_millis() as u64;
    let mut node = Node::new(cfg, ledger, Sys { xs, jobs: vec![] }, ms());
    node.adopt(unix_now());
    eprintln!("packetd: node {} serving", node.ledger.node_id());
    let (mut buf, mut next_tick, mut out) = ([0u8; IP_PACKET_MAX], ms() + 1000, vec![]);
    loop {
        // Finished commands are looked at every 100 ms, the clock every second.
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        let res = poll(&mut fds, PollTimeout::from(100u8));
        res.or_else(|e| if e == EINTR { Ok(0) } else { Err(e) })
            .context("poll")?;
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            let n = (&sock).read(&mut buf).context("raw socket")?;
            out.extend(node.on_packet(&buf[..n], ms(), unix_now()));
        }
        out.extend(node.poll(unix_now()));
        for (dst, msg) in out.drain(..) {
            let dst = Ipv4Addr::from(dst);
            if let Err(e) = sock.send_to(&msg, &SocketAddrV4::new(dst, 0).into()) {
                eprintln!("packetd: send to {dst}: {e}");
            }
        }
        if ms() >= next_tick {
            next_tick = ms() + 1000;
            node.tick(ms(), unix_now());
        }
    }
}
