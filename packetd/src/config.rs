//! The node owner's configuration: `key = value` lines, `#` comments (docs/packetd.md §4).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};

#[derive(Clone, Debug)]
pub struct Config {
    /// Node state directory (token-tool node ledger: secret + ledger.json) and certificates.
    pub state: PathBuf,
    /// The loader kernel and the xl template filled for each job.
    pub loader: PathBuf,
    pub template: String,
    /// Addresses handed to loader domains: `pool_len` addresses from `pool_first`.
    pub pool_first: Ipv4Addr,
    pub pool_len: u8,
    pub netmask: Ipv4Addr,
    pub port: u16,
    pub max_memory_mib: u32,
    pub max_vcpus: u16,
    /// Largest k of a boot token: bounds the chain walk one packet can cause.
    pub max_boot_count: u32,
    /// Credit-scheduler cap per vCPU, percent of one physical CPU.
    pub cap_percent: u32,
    /// `credit` or `credit2`: which `xl sched-*` sets the cap.
    pub sched: String,
    /// Price: one token buys this many MiB x seconds.
    pub mib_seconds_per_token: u64,
    pub grace_seconds: u64,
    /// Per-source token bucket: refill per second and burst.
    pub rate_per_second: u32,
    pub rate_burst: u32,
    /// Where packetd writes a loader domain's xl config.
    pub run_dir: PathBuf,
}

impl Config {
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let mut kv = std::collections::HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| anyhow!("line {}: expected key = value", i + 1))?;
            kv.insert(k.trim().to_string(), v.trim().to_string());
        }
        let get = |k: &str| kv.get(k).cloned().ok_or_else(|| anyhow!("missing key {k}"));
        let num = |k: &str, default: u64| -> anyhow::Result<u64> {
            kv.get(k).map_or(Ok(default), |v| {
                v.parse().with_context(|| format!("key {k}"))
            })
        };
        let template_path = PathBuf::from(get("template")?);
        let template = std::fs::read_to_string(&template_path)
            .with_context(|| format!("reading {}", template_path.display()))?;
        let (first, len) = get("pool")?
            .split_once('/')
            .map(|(a, n)| (a.to_string(), n.to_string()))
            .ok_or_else(|| anyhow!("pool must be FIRST_ADDRESS/COUNT"))?;
        let c = Config {
            state: get("state")?.into(),
            loader: get("loader")?.into(),
            template,
            pool_first: first.parse().context("pool address")?,
            pool_len: len.parse().context("pool count")?,
            netmask: kv.get("netmask").map_or("255.255.255.0", |s| s).parse()?,
            port: num("port", 7000)? as u16,
            max_memory_mib: num("max_memory_mib", 256)? as u32,
            max_vcpus: num("max_vcpus", 1)? as u16,
            max_boot_count: num("max_boot_count", 100_000)? as u32,
            cap_percent: num("cap_percent", 100)? as u32,
            sched: kv.get("sched").cloned().unwrap_or_else(|| "credit".into()),
            mib_seconds_per_token: num("mib_seconds_per_token", 1024)?.max(1),
            grace_seconds: num("grace_seconds", 30)?,
            rate_per_second: num("rate_per_second", 4)? as u32,
            rate_burst: num("rate_burst", 8)?.max(1) as u32,
            run_dir: kv.get("run_dir").map_or("/run/packetd", |s| s).into(),
        };
        if !matches!(c.sched.as_str(), "credit" | "credit2") {
            bail!("sched must be credit or credit2");
        }
        if c.pool_len == 0 || c.pool_len > 64 {
            bail!("pool count must be 1..=64");
        }
        Ok(c)
    }

    /// The i-th pool address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.pool_first).wrapping_add(i as u32))
    }
}
