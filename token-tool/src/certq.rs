//! `token-tool certificate`: the customer fetches the redemption certificate of an ended job
//! from the node by ICMP (docs/packetd.md §2.1): an echo request carrying a certificate query,
//! resent until the node answers with the certificate, or says why not.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::Context;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use token_tool::bootproto::{self as bp, BootReply, Status};
use token_tool::Certificate;

use crate::customer::{NotAccepted, TimedOut};

/// Ask `host` for job `job`'s certificate every `retry` until it answers or `timeout` passes.
/// A node that says the job still runs is asked again. Returns the certificate's bytes.
pub fn fetch(
    host: Ipv4Addr,
    job: u64,
    retry: Duration,
    timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
        .context("raw ICMP socket (needs root or CAP_NET_RAW)")?;
    let to = SockAddr::from(SocketAddrV4::new(host, 0));
    let id = u16::from_be_bytes(token_tool::random_bytes::<2>()?);
    let (mut msg, mut buf) = ([0u8; 64], [0u8; bp::IP_PACKET_MAX]);
    let n = bp::write_echo(bp::ICMP_ECHO_REQUEST, id, 1, &bp::cert_query(job), &mut msg)
        .context("query")?;
    let t0 = Instant::now();
    loop {
        if t0.elapsed() >= timeout {
            let m = format!("no certificate for job {job} from {host} in {timeout:?}");
            return Err(TimedOut(m).into());
        }
        sock.send_to(&msg[..n], &to).context("sending the query")?;
        let resend_at = t0.elapsed() + retry;
        while let Some(left) = resend_at.checked_sub(t0.elapsed()).filter(|d| !d.is_zero()) {
            sock.set_read_timeout(Some(left))?;
            let len = match (&sock).read(&mut buf) {
                Ok(len) => len,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => return Err(e).context("receiving"),
            };
            let Some(e) = bp::parse_echo(&buf[..len]) else {
                continue;
            };
            if e.kind != bp::ICMP_ECHO_REPLY || e.src != host.octets() || e.id != id {
                continue;
            }
            if let Ok((c, _)) = Certificate::decode_unverified(e.payload) {
                if c.job_id == job {
                    return Ok(e.payload.to_vec());
                }
            }
            match BootReply::decode(e.payload) {
                Ok(r) if r.job_id == job && r.status == Status::Later => {}
                Ok(r) if r.job_id == job => {
                    let reason = r.reason_name();
                    return Err(NotAccepted {
                        host,
                        status: r.status,
                        reason,
                    }
                    .into());
                }
                _ => {}
            }
        }
    }
}
