//! The customer's side of an ICMP exchange with a node (docs/packetd.md §2): a payload in echo
//! requests, resent until the node's answer arrives. `token-tool boot` and `token-tool
//! certificate` both talk to packetd this way.

use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::Context;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use token_tool::bootproto as bp;

use crate::customer::TimedOut;

/// Send `payload` to `host` in an ICMP echo request (raw socket, random identifier, the
/// sequence number counting the requests), again every `retry`, until `answer` takes the
/// payload of one of the host's echo replies to us (returns Some), or fail with [`TimedOut`]
/// ("no WHAT from HOST in TIMEOUT") once `timeout` has passed. Returns the answer and the
/// number of requests sent.
pub fn exchange<T>(
    host: Ipv4Addr,
    payload: &[u8],
    retry: Duration,
    timeout: Duration,
    what: &str,
    mut answer: impl FnMut(&[u8]) -> Option<T>,
) -> anyhow::Result<(T, u16)> {
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
        .context("raw ICMP socket (needs root or CAP_NET_RAW)")?;
    let to = SockAddr::from(SocketAddrV4::new(host, 0));
    let id = u16::from_be_bytes(token_tool::random_bytes::<2>()?);
    let (mut msg, mut buf) = ([0u8; bp::IP_PACKET_MAX], [0u8; bp::IP_PACKET_MAX]);
    let t0 = Instant::now();
    let mut tries = 0u16;
    loop {
        if t0.elapsed() >= timeout {
            return Err(TimedOut(format!("no {what} from {host} in {timeout:?}")).into());
        }
        tries = tries.wrapping_add(1);
        let n = bp::write_echo(bp::ICMP_ECHO_REQUEST, id, tries, payload, &mut msg)
            .context("the request does not fit in one packet")?;
        sock.send_to(&msg[..n], &to)
            .context("sending the echo request")?;
        let resend_at = t0.elapsed() + retry;
        while let Some(left) = resend_at.checked_sub(t0.elapsed()).filter(|d| !d.is_zero()) {
            sock.set_read_timeout(Some(left))?;
            let n = match (&sock).read(&mut buf) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) => return Err(e).context("receiving"),
            };
            // Every ICMP message of this host arrives here: keep only the node's replies to us.
            let Some(e) = bp::parse_echo(&buf[..n]) else {
                continue;
            };
            if e.kind != bp::ICMP_ECHO_REPLY || e.src != host.octets() || e.id != id {
                continue;
            }
            if let Some(a) = answer(e.payload) {
                return Ok((a, tries));
            }
        }
    }
}
