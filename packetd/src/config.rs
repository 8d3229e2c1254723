//! The node owner's configuration (docs/packetd.md §4): packetd's command-line options.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::Parser;

/// The laundromat node daemon: ICMP boot tokens in, loader domains out, tokens paid per
/// second (docs/packetd.md). Runs until killed; a node's boot starts it (packetd/node/rc).
#[derive(Parser, Clone, Debug)]
#[command(version)]
pub struct Config {
    /// Node state directory (token-tool node ledger); certificates go to certs/JOB.lmrc.
    #[arg(long)]
    pub state: PathBuf,
    /// The loader kernel that `xl` boots.
    #[arg(long)]
    pub loader: PathBuf,
    /// The xl template filled for each job (xen-configs/packetd-loader.cfg.in).
    #[arg(long)]
    pub template: PathBuf,
    /// FIRST/COUNT: COUNT (1..=64) addresses for loader domains.
    #[arg(long, value_parser = pool)]
    pub pool: (Ipv4Addr, u8),
    #[arg(long, default_value = "255.255.255.0")]
    pub netmask: Ipv4Addr,
    #[arg(long, default_value_t = 7000)]
    pub port: u16,
    #[arg(long, default_value_t = 256)]
    pub max_memory_mib: u32,
    #[arg(long, default_value_t = 1)]
    pub max_vcpus: u16,
    /// Largest k of a boot token: bounds the chain walk one packet can cause.
    #[arg(long, default_value_t = 100_000)]
    pub max_boot_count: u32,
    /// CPU cap per vCPU, percent of one physical CPU (the template's `cap`).
    #[arg(long, default_value_t = 100)]
    pub cap_percent: u32,
    /// Price: one token pays for this many MiB x seconds.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub mib_seconds_per_token: u64,
    #[arg(long, default_value_t = 30)]
    pub grace_seconds: u64,
    /// Per-source token bucket: refill per second, and burst.
    #[arg(long, default_value_t = 4)]
    pub rate_per_second: u64,
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate_burst: u64,
    /// Where the filled xl configs go.
    #[arg(long, default_value = "/run/packetd")]
    pub run_dir: PathBuf,
}

fn pool(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, n) = s.split_once('/').ok_or("expected FIRST_ADDRESS/COUNT")?;
    let n = n.parse().ok().filter(|n| (1..=64).contains(n));
    let n = n.ok_or("COUNT must be 1..=64")?;
    Ok((a.parse().map_err(|e| format!("{e}"))?, n))
}

impl Config {
    /// The i-th pool address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.pool.0).wrapping_add(i as u32))
    }

    /// The slot of the address in the first `ip=ADDRESS` of `text` (an xl config packetd
    /// wrote); None if there is none or it is not one of the pool's.
    pub fn slot_in(&self, text: &str) -> Option<usize> {
        let ip: Ipv4Addr = text.split("ip=").nth(1)?.split(' ').next()?.parse().ok()?;
        let i = u32::from(ip).checked_sub(u32::from(self.pool.0))?;
        (i < self.pool.1 as u32).then_some(i as usize)
    }
}
