//! The system calls `checkpointd migrate` needs beyond files and sockets: raw Ethernet
//! frames (AF_PACKET), the interface that owns an address, Ctrl-C, power-off. Through nix's
//! safe wrappers where it has them (docs/dependencies.md); the rest (the signal handler, the
//! AF_PACKET socket for one ethertype and its bind) is the migrate path's only unsafe code.

use nix::errno::Errno;
use nix::ifaddrs::getifaddrs;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::socket::{recv, send, setsockopt, sockopt, MsgFlags};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set by SIGINT/SIGTERM once [`catch_interrupts`] ran.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C and SIGTERM set [`INTERRUPTED`] instead of killing the process, so a migration
/// can put the guest back the way it was.
pub fn catch_interrupts() {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler is async-signal-safe (one atomic store).
        let _ = unsafe { sigaction(sig, &action) };
    }
}

/// Flush file systems and power the guest off (its domain goes away). Returns only if the
/// kernel refused.
pub fn power_off() -> io::Error {
    nix::unistd::sync();
    match reboot(RebootMode::RB_POWER_OFF) {
        Err(e) => e.into(),
        Ok(never) => match never {},
    }
}

/// Make a socket's close a reset (SO_LINGER 0): no FIN, nothing left to retransmit.
pub fn abandon(s: &impl AsFd) {
    let reset = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = setsockopt(s, sockopt::Linger, &reset);
}

/// Set a socket's send buffer (SO_SNDBUF; Linux doubles the value for its bookkeeping).
pub fn set_send_buffer(s: &impl AsFd, bytes: usize) -> io::Result<()> {
    setsockopt(s, sockopt::SndBuf, &bytes).map_err(io::Error::from)
}

/// The name of the interface that holds IPv4 address `ip`.
pub fn iface_with_addr(ip: Ipv4Addr) -> io::Result<String> {
    getifaddrs()?
        .find(|a| {
            a.address
                .as_ref()
                .and_then(|s| s.as_sockaddr_in())
                .is_some_and(|sin| sin.ip() == ip)
        })
        .map(|a| a.interface_name)
        .ok_or_else(|| io::Error::other(format!("no interface has address {ip}")))
}

/// A raw Ethernet socket bound to one interface and one ethertype.
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    pub fn open(ifindex: u32, ethertype: u16) -> io::Result<PacketSocket> {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                ethertype.to_be() as i32,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll zero-initialised, then the fields bind(2) reads are set.
        let r = unsafe {
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ethertype.to_be();
            sll.sll_ifindex = ifindex as i32;
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd })
    }

    /// Send one whole frame (Ethernet header included).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        send(self.fd.as_raw_fd(), frame, MsgFlags::empty())?;
        Ok(())
    }

    /// Receive one frame into `buf` within `timeout`; `None` when none came.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let wait = PollTimeout::try_from(left.min(Duration::from_secs(60)))
                .unwrap_or(PollTimeout::MAX);
            let mut pfd = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut pfd, wait) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
                Ok(0) if left.is_zero() => return Ok(None),
                Ok(0) => continue,
                Ok(_) => {}
            }
            match recv(self.fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
                Err(Errno::EINTR | Errno::EAGAIN) => continue,
                Err(e) => return Err(e.into()),
                Ok(n) => return Ok(Some(n)),
            }
        }
    }
}
