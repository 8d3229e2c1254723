//! checkpointd: take a checkpoint of the running Xen PV guest it runs in (through the
//! `/dev/checkpoint` module), inspect checkpoint files, and export them as xl save images.

mod arrival;
mod attrib;
mod dev;
mod inspect;
mod loader_config;
mod migrate;
mod save;
mod source;
mod sys;
use checkpointd::xen;

use anyhow::{bail, Context, Result};
use checkpoint_stream::model::FullCheckpoint;
use clap::{Parser, Subcommand};
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(version, about = "Self-checkpointing for Xen PV guests (laundromat)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Pre-copy options shared by `save` and `migrate`.
#[derive(clap::Args)]
struct Precopy {
    /// Most pre-copy rounds.
    #[arg(long, default_value_t = 8)]
    max_rounds: u32,
    /// Capture once a round's dirty set is at most this many pages.
    #[arg(long, default_value_t = 256)]
    small_dirty: u64,
    /// Send pages on the guest's free lists too (default: left out; a page allocated later
    /// is written, hence dirty, hence sent).
    #[arg(long)]
    no_elide_free: bool,
    /// Dirty tracker: `fault` (write faults, copy-on-write at the capture; the capture pause
    /// does not grow with memory) or `scan` (hashes every page every round; the oracle).
    #[arg(long, value_enum, default_value_t = save::Tracker::Fault)]
    tracker: save::Tracker,
    /// When pre-copy stops converging, slow down the processes that dirty most: `auto` only
    /// when the dirty set does not fit the snapshot budget, `always` whenever it stops
    /// shrinking, `off` never (a set over the budget is then an error).
    #[arg(long, value_enum, default_value_t = save::ThrottleMode::Auto)]
    throttle: save::ThrottleMode,
    /// Extra pre-copy rounds allowed while throttling.
    #[arg(long, default_value_t = 6)]
    throttle_rounds: u32,
    /// Cap the capture's snapshot buffer (MiB); half the guest's available memory caps it
    /// anyway.
    #[arg(long, value_name = "MIB")]
    max_snapshot_mib: Option<u64>,
    /// Give up once the stream is longer than this (MiB); the rounds bound it anyway.
    #[arg(long, value_name = "MIB")]
    max_stream_mib: Option<u64>,
}

impl Precopy {
    fn convergence(&self) -> save::Convergence {
        save::Convergence {
            elide_free: !self.no_elide_free,
            tracker: self.tracker,
            throttle: self.throttle,
            throttle_rounds: self.throttle_rounds,
            max_snapshot_pages: self.max_snapshot_mib.map(|m| (m << 20) / 4096),
            max_stream_bytes: self.max_stream_mib.map(|m| m << 20),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Checkpoint this guest into FILE: pre-copy rounds, the capture, the drain.
    ///
    /// When the dirty set stops shrinking and does not fit the snapshot budget, the
    /// processes that dirty most are slowed down (SIGSTOP/SIGCONT duty cycle by the module,
    /// released after the capture or with the session) and reported.
    ///
    /// Exit codes: 0 saved (or this is the restored copy); 1 error; 2 usage; 4 pre-copy did
    /// not converge within its bounds (nothing captured, the guest runs on).
    #[command(verbatim_doc_comment)]
    Save {
        /// Output file; `-` writes the stream to stdout (the summary then goes to stderr).
        file: PathBuf,
        #[command(flatten)]
        precopy: Precopy,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// Move this running guest to an inflate-loader domain on another Xen host (docs/migrate.md).
    ///
    /// Pre-copy rounds stream the guest's memory to the loader at HOST[:PORT] (default port
    /// 7000) while it runs; once the rest fits the downtime target the guest is captured,
    /// its IP output held (only this connection may send), the last pages drained. The
    /// loader verifies everything and answers `ready`; then COMMIT, the loader becomes the
    /// guest, the copy there announces itself (gratuitous ARP + arrival frames), this copy
    /// acks and powers off. Any refusal, loss of the link, Ctrl-C or timeout before that
    /// puts this guest back exactly as it was.
    ///
    /// Exit codes: 0 moved (source, then power-off) or arrived (the copy at the destination);
    /// 1 not started (nothing stopped); 2 usage; 3 arrived without the source's ack;
    /// 10 loader refused; 11 link lost or loader silent; 12 COMMIT sent but no arrival (both
    /// copies may run); 13 interrupted (Ctrl-C/SIGTERM); 14 --timeout before the capture;
    /// 15 pre-copy or capture failed in this guest. From 10 on the guest runs on here.
    #[command(verbatim_doc_comment)]
    Migrate {
        /// The loader: HOST or HOST:PORT (IPv4).
        dest: String,
        /// Switch over once the estimated drain takes at most this long (ms).
        #[arg(long, default_value_t = 300)]
        downtime_ms: u64,
        /// Cap the stream at this many MiB/s (default: no cap).
        #[arg(long, value_name = "MIB_PER_S")]
        bandwidth: Option<f64>,
        /// Give up if the capture has not happened after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Seconds to wait for the loader's verdict after the stream's end.
        #[arg(long, default_value_t = 120)]
        result_timeout: u64,
        /// Seconds to wait for the arrival frame after COMMIT.
        #[arg(long, default_value_t = 60)]
        arrival_timeout: u64,
        /// A send that makes no progress for this many seconds means the link is gone.
        #[arg(long, default_value_t = 30)]
        link_timeout: u64,
        /// The migration connection's send buffer (KiB; 0: the kernel's autotuning). The
        /// kernel writes what waits there during each round, so it is dirty again in the
        /// next one: keep it near what the link carries in flight.
        #[arg(long, value_name = "KIB", default_value_t = 256)]
        send_buffer_kib: usize,
        #[command(flatten)]
        precopy: Precopy,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// Print the xl config of an inflate-loader domain sized for this guest.
    LoaderConfig {
        /// The loader's own (temporary) IPv4 address on the guest's network.
        #[arg(long)]
        ip: String,
        #[arg(long, default_value = "255.255.255.0")]
        netmask: String,
        #[arg(long, default_value_t = migrate::DEFAULT_PORT)]
        port: u16,
        #[arg(long)]
        gateway: Option<String>,
        /// Path of the inflate-loader kernel on the destination host.
        #[arg(long, default_value = "/usr/lib/laundromat/inflate-loader")]
        kernel: String,
        /// Domain name (default: this guest's xl name + "-dest").
        #[arg(long)]
        name: Option<String>,
        /// Bridge (default: the one this guest's vif backend uses).
        #[arg(long)]
        bridge: Option<String>,
    },
    /// Run one side of the arrival exchange on an interface (for tests of the raw frames
    /// between two network namespaces; `migrate` runs the same code).
    #[command(hide = true)]
    ArrivalExchange {
        /// `announce` (the arrived copy) or `await` (the source after COMMIT).
        role: String,
        #[arg(long)]
        iface: String,
        /// Migration id, 32 hex digits.
        #[arg(long)]
        id: String,
        /// The guest's IPv4 address (for the gratuitous ARPs of `announce`).
        #[arg(long, default_value = "0.0.0.0")]
        ip: std::net::Ipv4Addr,
        /// The guest's MAC (for `await`: acks go out from its helper MAC).
        #[arg(long)]
        mac: Option<String>,
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Validate a checkpoint file completely and summarise it.
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print the first 8 bytes (little-endian u64) of pages of a checkpoint, one line per pfn.
    Peek {
        file: PathBuf,
        /// Pfns, decimal or 0x-hex.
        #[arg(required = true)]
        pfns: Vec<String>,
    },
    /// Convert a checkpoint into another format.
    Export {
        /// Write an xl save image (for `xl restore`) to this path.
        #[arg(long, value_name = "OUT")]
        xen: PathBuf,
        /// The checkpoint file.
        file: PathBuf,
        /// xl config (xl.cfg text) embedded for the restored domain; default: a minimal one.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Domain name in the default config.
        #[arg(long, default_value = "restored")]
        name: String,
        /// Xen version recorded in the image's domain header.
        #[arg(long, default_value = "4.17")]
        xen_version: String,
    },
    /// Decode an xl save image (ours or `xl save`'s) and print its structure.
    XenInspect {
        image: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Turn an `xl save` image of a 64-bit PV guest into a checkpoint file.
    XenImport {
        image: PathBuf,
        out: PathBuf,
        /// Also write the image's embedded domain config here (to pass to `export --config`).
        #[arg(long)]
        config_out: Option<PathBuf>,
        /// Give the checkpoint a non-identity p2m and machine frames in its page tables and
        /// vCPU state, as a real capture has (a test of export's normalisation).
        #[arg(long)]
        scramble_mfns: bool,
        /// Leave out the image's shared info page (export then synthesises one).
        #[arg(long)]
        drop_shared_info: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Migrate {
            dest,
            downtime_ms,
            bandwidth,
            timeout,
            result_timeout,
            arrival_timeout,
            link_timeout,
            send_buffer_kib,
            precopy,
            json,
            quiet,
        } => {
            let secs = Duration::from_secs;
            let opts = migrate::Options {
                dest,
                downtime_ms,
                bandwidth: bandwidth.map(|m| (m * 1048576.0) as u64),
                timeout: secs(timeout),
                connect_timeout: secs(10),
                link_timeout: secs(link_timeout),
                send_buffer: (send_buffer_kib > 0).then_some(send_buffer_kib << 10),
                result_timeout: secs(result_timeout),
                arrival_timeout: secs(arrival_timeout),
                max_rounds: precopy.max_rounds,
                small_dirty: precopy.small_dirty,
                conv: precopy.convergence(),
                progress: !quiet,
            };
            std::process::exit(cmd_migrate(opts, json) as i32)
        }
        Cmd::ArrivalExchange {
            role,
            iface,
            id,
            ip,
            mac,
            timeout,
        } => {
            let mut idb = [0u8; 16];
            if id.len() != 32 {
                bail!("--id must be 32 hex digits");
            }
            for (i, b) in idb.iter_mut().enumerate() {
                *b = u8::from_str_radix(&id[2 * i..2 * i + 2], 16).context("--id must be hex")?;
            }
            let ifindex: u32 = std::fs::read_to_string(format!("/sys/class/net/{iface}/ifindex"))
                .with_context(|| format!("no interface {iface}"))?
                .trim()
                .parse()?;
            let mut link = EthLink {
                ifname: iface.clone(),
                sock: sys::PacketSocket::open(ifindex, arrival::ETHERTYPE)?,
            };
            let ok = match role.as_str() {
                "announce" => migrate::announce(&mut link, &idb, ip)?,
                "await" => {
                    let mac = match mac {
                        Some(m) => arrival::parse_mac(&m).context("--mac")?,
                        None => migrate::Link::mac(&link)?,
                    };
                    migrate::await_arrival(&mut link, &idb, mac, Duration::from_secs(timeout))?
                }
                _ => bail!("role must be announce or await"),
            };
            println!("{role}: {}", if ok { "acknowledged" } else { "timed out" });
            std::process::exit(if ok { 0 } else { 3 })
        }
        Cmd::LoaderConfig {
            ip,
            netmask,
            port,
            gateway,
            kernel,
            name,
            bridge,
        } => {
            let dev = dev::Device::open().with_context(|| format!("opening {}", dev::DEVICE))?;
            let mut xs = loader_config::Xenstore::open()?;
            let (mac, vif_bridge) = loader_config::guest_vif(&mut xs)?;
            let name = match name {
                Some(n) => n,
                None => format!("{}-dest", xs.read("name")?),
            };
            // The loader's own sizing rule (inflate-core), fed with what this guest has.
            let ram = dev.live_ram_pages().context("reading the p2m")?;
            let sz = inflate_core::restore::sizing::loader_domain(
                ram,
                dev.facts().max_pfn.saturating_sub(1),
                loader_config::possible_cpus(),
                &inflate_core::restore::sizing::LoaderFootprint::CURRENT,
            )
            .map_err(|e| anyhow::anyhow!("this guest does not fit a loader domain: {e}"))?;
            let spec = loader_config::LoaderSpec {
                name,
                kernel,
                memory_mib: sz.memory_mib,
                maxmem_mib: sz.maxmem_mib,
                vcpus: sz.vcpus,
                mac,
                bridge: bridge.unwrap_or(vif_bridge),
                ip,
                netmask,
                port,
                gateway,
            };
            print!("{}", loader_config::render(&spec));
            Ok(())
        }
        Cmd::Save {
            file,
            precopy,
            json,
            quiet,
        } => cmd_save(&file, &precopy, json, quiet),
        Cmd::Inspect { file, json } => {
            let c = read_checkpoint(&file)?;
            let s = inspect::summarise(&c);
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", inspect::human(&s));
            }
            Ok(())
        }
        Cmd::Peek { file, pfns } => {
            let c = read_checkpoint(&file)?;
            for p in pfns {
                let pfn = match p.strip_prefix("0x") {
                    Some(h) => u64::from_str_radix(h, 16),
                    None => p.parse(),
                }
                .with_context(|| format!("bad pfn {p}"))?;
                if pfn > c.checkpoint.max_pfn {
                    bail!(
                        "pfn {pfn:#x} is beyond the checkpoint (max pfn {:#x})",
                        c.checkpoint.max_pfn
                    );
                }
                let head = c
                    .checkpoint
                    .page(pfn)
                    .map(|pg| u64::from_le_bytes(pg[..8].try_into().unwrap()))
                    .unwrap_or(0);
                println!("{pfn:#x} {head:#018x}");
            }
            Ok(())
        }
        Cmd::Export {
            xen,
            file,
            config,
            name,
            xen_version,
        } => {
            let c = read_checkpoint(&file)?;
            let cfg = match config {
                Some(p) => std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?,
                None => xen::default_config(&name, &c),
            };
            let v = xen_version
                .split_once('.')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
            let Some(v) = v else {
                bail!("--xen-version must look like 4.17")
            };
            let out = BufWriter::new(
                File::create(&xen).with_context(|| format!("creating {}", xen.display()))?,
            );
            let s = xen::export(&c, &cfg, v, out)
                .with_context(|| format!("exporting {}", file.display()))?;
            println!(
                "wrote {}: {} bytes, {} pages ({} page tables, {} PTEs normalised), {} unpopulated pfns, {} PAGE_DATA records",
                xen.display(),
                s.bytes,
                s.pages,
                s.page_tables,
                s.ptes_rewritten,
                s.unpopulated,
                s.page_data_records
            );
            Ok(())
        }
        Cmd::XenInspect { image, json } => {
            let data =
                std::fs::read(&image).with_context(|| format!("reading {}", image.display()))?;
            let img =
                xen::image::parse(&data).with_context(|| format!("parsing {}", image.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&img)?);
            } else {
                let cfg_kind = if img.mandatory_flags & xen::XL_FLAG_JSON != 0 {
                    "JSON"
                } else {
                    "xl.cfg text"
                };
                println!(
                    "xl flags {:#x}/{:#x}, config {} bytes ({cfg_kind}), libxc v{} Xen {}.{}",
                    img.mandatory_flags,
                    img.optional_flags,
                    img.config.len(),
                    img.libxc_version,
                    img.xen_version.0,
                    img.xen_version.1
                );
                println!(
                    "guest width {} levels {}, p2m pfns {}..={}, {} p2m frames",
                    img.guest_width,
                    img.pt_levels,
                    img.p2m_start,
                    img.p2m_end,
                    img.p2m_frames.len()
                );
                let mut hist = std::collections::BTreeMap::new();
                for t in img.types.values() {
                    *hist.entry(*t).or_insert(0u64) += 1;
                }
                println!(
                    "pages {} in {} PAGE_DATA records; types {:?}",
                    img.pages.len(),
                    img.page_data_records,
                    hist
                );
                println!("libxc layout: {}", img.libxc_layout().join(" "));
                for r in img.records.iter().filter(|r| r.name != "PAGE_DATA") {
                    println!(
                        "  {:>10} {:<6} {:<22} {:>6} bytes",
                        r.offset, r.stream, r.name, r.length
                    );
                }
            }
            Ok(())
        }
        Cmd::XenImport {
            image,
            out,
            config_out,
            scramble_mfns,
            drop_shared_info,
        } => {
            let data =
                std::fs::read(&image).with_context(|| format!("reading {}", image.display()))?;
            let img =
                xen::image::parse(&data).with_context(|| format!("parsing {}", image.display()))?;
            let c = img.to_checkpoint_with(xen::image::ImportOptions {
                scramble_mfns,
                drop_shared_info,
            })?;
            if let Some(p) = config_out {
                let cfg = String::from_utf8_lossy(&img.config)
                    .trim_end_matches('\0')
                    .to_string();
                std::fs::write(&p, cfg).with_context(|| format!("writing {}", p.display()))?;
            }
            let f = BufWriter::new(
                File::create(&out).with_context(|| format!("creating {}", out.display()))?,
            );
            c.write_to(f)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "wrote {}: {} pfns, {} non-zero pages",
                out.display(),
                c.checkpoint.max_pfn + 1,
                c.checkpoint.pages.len()
            );
            Ok(())
        }
    }
}

fn read_checkpoint(file: &Path) -> Result<FullCheckpoint> {
    let f = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    FullCheckpoint::read_from(BufReader::new(f))
        .with_context(|| format!("{} is not a valid checkpoint", file.display()))
}

fn cmd_save(file: &Path, precopy: &Precopy, json: bool, quiet: bool) -> Result<()> {
    let t0 = Instant::now();
    let mut dev = dev::Device::open().with_context(|| format!("opening {}", dev::DEVICE))?;
    if !quiet {
        eprintln!("{}", facts_line(dev.facts()));
    }
    let to_stdout = file.as_os_str() == "-";
    let out: Box<dyn std::io::Write> = if to_stdout {
        Box::new(BufWriter::new(std::io::stdout().lock()))
    } else {
        Box::new(BufWriter::new(
            File::create(file).with_context(|| format!("creating {}", file.display()))?,
        ))
    };
    let policy = save::Policy {
        max_rounds: precopy.max_rounds,
        small_dirty: precopy.small_dirty,
        conv: precopy.convergence(),
        ..Default::default()
    };
    let outcome = match save::save(&mut dev, out, &policy, !quiet) {
        Ok(o) => o,
        Err(
            e @ (save::SaveError::DoesNotConverge { .. }
            | save::SaveError::NoConvergence(_)
            | save::SaveError::StreamBound { .. }
            | save::SaveError::SnapshotAlloc { .. }),
        ) => {
            // Tracking ends with the device file; the guest runs on as it was.
            drop(dev);
            eprintln!("checkpointd save: {e}");
            eprintln!("peak memory of checkpointd: {} KiB", peak_rss_kib());
            std::process::exit(EXIT_NO_CONVERGENCE);
        }
        Err(e) => return Err(e.into()),
    };
    let mut text = String::new();
    match outcome {
        // Running in the revived copy: the file belongs to the source's timeline.
        save::SaveOutcome::Restored => {
            text.push_str("resumed from a checkpoint (this is the restored guest)\n")
        }
        save::SaveOutcome::Saved(s) if json => {
            let mut v = serde_json::to_value(&s)?;
            v["peak_rss_kib"] = peak_rss_kib().into();
            text = serde_json::to_string_pretty(&v)? + "\n"
        }
        save::SaveOutcome::Saved(s) => {
            use std::fmt::Write as _;
            let _ = writeln!(
                text,
                "saved {} in {:.2} s ({} tracker): {} rounds, {} bytes, pre-copy stopped: {:?}",
                file.display(),
                t0.elapsed().as_secs_f64(),
                s.tracker,
                s.rounds.len(),
                s.total_bytes,
                s.stop_reason
            );
            for r in &s.rounds {
                let _ = writeln!(text, "{}", r.line());
            }
            let _ = writeln!(text, "{}", s.capture_line());
            let drain = s.rounds.last();
            let _ = writeln!(
                text,
                "  free-page elision {}: {} free pages left out at the capture; unreadable pages: {} in rounds, {} at the capture",
                if s.elide_free { "on" } else { "off" },
                drain.map_or(0, |r| r.free_pages),
                s.rounds.iter().filter(|r| !r.drain).map(|r| r.unreadable_pages).sum::<u64>(),
                drain.map_or(0, |r| r.unreadable_pages),
            );
            for t in &s.throttled {
                let _ = writeln!(
                    text,
                    "  throttled pid {} ({}): {} dirty pages when picked, up to {}% stopped, {} ms stopped over {} rounds",
                    t.pid, t.comm, t.dirty_pages, t.stop_pct, t.stopped_ms, t.rounds
                );
            }
            let _ = writeln!(text, "  peak memory of checkpointd: {} KiB", peak_rss_kib());
        }
    }
    // With the stream on stdout the summary must not mix into it.
    if to_stdout {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
    Ok(())
}

/// `checkpointd save`'s exit code when pre-copy could not converge within its bounds (the
/// guest runs on, nothing was captured).
const EXIT_NO_CONVERGENCE: i32 = 4;

/// This process's peak resident memory (VmHWM), 0 if unknown.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn facts_line(f: &dev::Facts) -> String {
    format!(
        "guest: {} pfns ({} MiB), start_info pfn {:#x}, {} online cpu(s)",
        f.max_pfn,
        (f.max_pfn * 4096) >> 20,
        f.start_info_pfn,
        f.online_cpus
    )
}

/// The raw link of `checkpointd migrate`: a packet socket on the migration's interface.
struct EthLink {
    ifname: String,
    sock: sys::PacketSocket,
}

impl migrate::Link for EthLink {
    fn mac(&self) -> std::io::Result<arrival::Mac> {
        let p = format!("/sys/class/net/{}/address", self.ifname);
        let s = std::fs::read_to_string(&p)?;
        arrival::parse_mac(&s).ok_or_else(|| std::io::Error::other(format!("bad MAC in {p}")))
    }
    fn send(&mut self, f: &[u8]) -> std::io::Result<()> {
        self.sock.send(f)
    }
    fn recv(&mut self, t: Duration) -> std::io::Result<Option<Vec<u8>>> {
        let mut b = vec![0u8; 2048];
        Ok(self.sock.recv(&mut b, t)?.map(|n| {
            b.truncate(n);
            b
        }))
    }
}

fn cmd_migrate(opts: migrate::Options, json: bool) -> u8 {
    let t0 = Instant::now();
    sys::catch_interrupts();
    let not_started = |why: String| {
        if json {
            println!(
                "{}",
                serde_json::json!({"outcome": "not-started", "exit_code": 1, "reason": why})
            );
        } else {
            eprintln!("checkpointd migrate: not started, the guest runs on here: {why}");
        }
        migrate::Outcome::NotStarted.exit_code()
    };
    let setup = || -> Result<_> {
        let dest = migrate::resolve(&opts.dest).map_err(anyhow::Error::msg)?;
        let dev = dev::Device::open().with_context(|| format!("opening {}", dev::DEVICE))?;
        if dev.facts().online_cpus != 1 {
            bail!(
                "{} vCPUs are online; the capture needs exactly 1 (offline the others)",
                dev.facts().online_cpus
            );
        }
        let conn = std::net::TcpStream::connect_timeout(&dest.into(), opts.connect_timeout)
            .with_context(|| format!("connecting to the loader at {dest}"))?;
        let std::net::SocketAddr::V4(local) = conn.local_addr()? else {
            bail!("not an IPv4 connection")
        };
        let ifname = sys::iface_with_addr(*local.ip())?;
        let ifindex: u32 = std::fs::read_to_string(format!("/sys/class/net/{ifname}/ifindex"))?
            .trim()
            .parse()
            .context("interface index")?;
        let mac_s = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))?;
        let mac = arrival::parse_mac(&mac_s).context("interface MAC")?;
        let mut id = [0u8; 16];
        std::io::Read::read_exact(&mut File::open("/dev/urandom")?, &mut id)?;
        Ok((dev, conn, ifname, ifindex, mac, id))
    };
    let (mut dev, conn, ifname, ifindex, mac, id) = match setup() {
        Ok(v) => v,
        Err(e) => return not_started(format!("{e:#}")),
    };
    if !json && opts.progress {
        eprintln!(
            "{}; migration {} to {} over {ifname}",
            facts_line(dev.facts()),
            arrival::fmt_id(&id),
            opts.dest
        );
    }
    let mut open_link = || -> std::io::Result<Box<dyn migrate::Link>> {
        Ok(Box::new(EthLink {
            ifname: ifname.clone(),
            sock: sys::PacketSocket::open(ifindex, arrival::ETHERTYPE)?,
        }))
    };
    let w = migrate::World {
        conn,
        link: &mut open_link,
        cancel: &sys::INTERRUPTED,
        id,
        guest_mac: mac,
    };
    let rep = migrate::migrate(&mut dev, w, &opts, t0);
    if json {
        // One line, so consoles and scripts can pick it out.
        println!("{}", serde_json::to_string(&rep).unwrap_or_default());
    } else {
        print!("{}", migrate::human(&rep));
    }
    if rep.outcome == migrate::Outcome::Moved {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        // Let the console carry the report out before the domain goes away (the guest
        // already runs at the destination: this costs nothing but the source's lifetime).
        std::thread::sleep(Duration::from_secs(2));
        let e = sys::power_off();
        // Exiting would release the output hold: two copies would talk. Stay silent.
        eprintln!(
            "checkpointd migrate: power-off refused ({e}); holding this copy's output forever"
        );
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    rep.exit_code
}
