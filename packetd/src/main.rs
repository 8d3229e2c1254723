//! packetd's executable: the raw ICMP socket, `sh -c` for `xl`, a small xenstore client over
//! xenstored's unix socket (the message format is inflate-core's `xs`, shared with the
//! loader; our own rather than the GPL-3.0-only xenstore-rs crate, docs/packetd.md §6), and
//! the poll loop. The options are [`Config`].

use std::io::{self, Read, Write};
use std::process::{Child, Command, Stdio};
use std::{net::Ipv4Addr, os::fd::AsFd, os::unix::net::UnixStream, time::Duration, time::Instant};

use anyhow::Context;
use clap::Parser;
use inflate_core::xs::{self, Header, HEADER_LEN, PAYLOAD_MAX};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use packetd::{config::Config, node::Host, node::Node};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use token_tool::{bootproto::IP_PACKET_MAX, node::NodeLedger, unix_now};

struct Sys {
    xs: UnixStream,
    children: Vec<(u64, Child)>,
}

impl Host for Sys {
    fn spawn(&mut self, job: u64, script: &str) -> Result<(), String> {
        let mut c = Command::new("sh");
        c.args(["-c", script]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        self.children.push((job, c.spawn().map_err(|e| e.to_string())?));
        Ok(())
    }

    fn done(&mut self) -> Option<(u64, Result<String, String>)> {
        let i = self.children.iter_mut().position(|c| !matches!(c.1.try_wait(), Ok(None)))?;
        let (job, child) = self.children.swap_remove(i);
        let res = child.wait_with_output().map_err(|e| e.to_string()).and_then(|o| {
            let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
            let last = text(&o.stdout).lines().last().unwrap_or("").to_string();
            o.status.success().then_some(last).ok_or_else(|| text(&o.stderr))
        });
        Some((job, res))
    }

    /// One request and its reply (one at a time, no watches: every reply is ours).
    fn xs(&mut self, ty: u32, path: &str, value: &str) -> io::Result<Option<String>> {
        let parts = [path.as_bytes(), value.as_bytes()];
        let parts = if ty == xs::XS_WRITE { &parts[..] } else { &parts[..1] };
        let mut buf = [0u8; HEADER_LEN + PAYLOAD_MAX];
        let len = xs::payload(ty, parts, &mut buf[HEADER_LEN..]).ok_or(io::Error::other("long"))?;
        let h = Header { ty, req_id: 0, tx_id: 0, len: len as u32 };
        buf[..HEADER_LEN].copy_from_slice(&h.encode());
        self.xs.write_all(&buf[..HEADER_LEN + len])?;
        self.xs.read_exact(&mut buf[..HEADER_LEN])?;
        let h = Header::decode(buf[..HEADER_LEN].try_into().map_err(io::Error::other)?);
        let body = buf.get_mut(..h.len as usize).ok_or(io::Error::other("reply too long"))?;
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
    let mut node = Node::new(cfg, ledger, Sys { xs, children: vec![] }, ms());
    node.adopt(unix_now());
    eprintln!("packetd: node {} serving", node.ledger.node_id());
    let (mut buf, mut next_tick, mut out) = ([0u8; IP_PACKET_MAX], ms() + 1000, vec![]);
    loop {
        // Finished commands are looked at every 100 ms, the clock every second.
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        let res = poll(&mut fds, PollTimeout::from(100u8));
        res.or_else(|e| if e == nix::errno::Errno::EINTR { Ok(0) } else { Err(e) })
            .context("poll")?;
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            let n = (&sock).read(&mut buf).context("raw socket")?;
            out.extend(node.on_packet(&buf[..n], ms(), unix_now()));
        }
        out.extend(node.poll(unix_now()));
        for (dst, msg) in out.drain(..) {
            let to = SockAddr::from(std::net::SocketAddrV4::new(Ipv4Addr::from(dst), 0));
            let res = sock.send_to(&msg, &to);
            res.map_err(|e| eprintln!("packetd: send to {}: {e}", Ipv4Addr::from(dst))).ok();
        }
        if ms() >= next_tick {
            next_tick = ms() + 1000;
            node.tick(ms(), unix_now());
        }
    }
}
