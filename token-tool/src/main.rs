//! `token-tool`: the broker, the customer's wallet and the node side of the hash-chain token
//! scheme, plus a benchmark. Run `token-tool help <command>` for the story behind each step.
//!
//! Exit codes: 0 ok; 1 failure of the environment (I/O, database, corrupt state);
//! 2 usage error; 3 refused (bad, forged, replayed or out-of-policy input);
//! 4 `node consume` took the last tokens and wanted more (balance exhausted); 5 `boot` got no
//! answer, or the loader did not listen, in time; 6 `boot --stage2`: the loader refused stage 2
//! (checksum or malformed upload; the loader domain powered off); 7 `boot --stage2`: stage 2
//! refused the kernel upload, the kernel did not start, or the connection broke.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use token_tool::broker::{BootGrant, Broker, BrokerError};
use token_tool::node::{LedgerError, NodeLedger};
use token_tool::wallet::{Purchase, Wallet, WalletError};
use token_tool::{
    from_hex, to_hex, unix_now, BootFields, BootToken, Certificate, Extent, TokenError, TopUp,
};

const EXIT_FAIL: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_REFUSED: u8 = 3;
const EXIT_EXHAUSTED: u8 = 4;
const EXIT_TIMEOUT: u8 = 5;
const EXIT_STAGE2_REFUSED: u8 = 6;
const EXIT_UPLOAD_FAILED: u8 = 7;

mod bootupload;
mod certq;
mod customer;
mod echo;

#[derive(Parser)]
#[command(
    name = "token-tool",
    version,
    about = "Hash-chain payment tokens for the laundromat cluster",
    long_about = "Hash-chain payment tokens for the laundromat cluster.\n\n\
The broker mints one hash chain s(i+1) = SHA-1(s(i)) per (job, node) and sells its values \
from the top: k tokens are paid for by s(n-k). The first sale goes into a boot token signed \
(HMAC-SHA1) under the secret the broker shares with the node; the node checks it, trusts the \
anchor s(n), and afterwards accepts each top-up value that hashes onto the last one it \
accepted. Unspent tokens come back as a signed redemption certificate.\n\n\
Typical flow: broker init, broker add-node, node init (on the node), broker mint, broker sell, \
wallet add, broker boot-token, wallet boot, node verify BOOT, broker sell, wallet add, \
wallet next-topup, node verify TOPUP, node consume, node redeem, broker redeem.\n\n\
Exit codes: 0 ok, 1 environment failure (I/O, database), 2 usage, 3 refused input, \
4 balance exhausted, 5 timeout (boot), 6 stage 2 refused (boot --stage2), 7 kernel upload \
refused or the kernel did not start (boot --stage2). Byte formats: docs/tokens.md, docs/bootstrap.md."
)]
struct Cli {
    /// Print results (and errors) as one JSON object on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The broker: node secrets, chains, sales, boot tokens and refunds (SQLite ledger).
    Broker(BrokerArgs),
    /// The customer's wallet: keeps bought values and produces the next top-up.
    Wallet(WalletArgs),
    /// The node (what packetd does): verify boot tokens and top-ups, keep balances.
    Node(NodeArgs),
    /// Decode a boot token, top-up or certificate file without verifying it.
    Inspect {
        /// The file to decode.
        file: PathBuf,
    },
    /// Boot a VM on a node: send the boot token to HOST in an ICMP echo request, wait for
    /// packetd's answer (resending the same token until one arrives), then wait until the
    /// loader domain listens at the address in the answer. Needs CAP_NET_RAW. Exit codes: 0
    /// accepted (and listening; with --stage2: the kernel was handed over), 3 refused (the
    /// reason is the error code), 5 no answer or no loader in time, 6 the loader refused stage
    /// 2 (its SHA-1 is not the token's, or the upload was malformed) and powered off, 7 stage 2
    /// refused the kernel upload or could not start the kernel. With --stage2 and --kernel it
    /// uploads stage 2 on the loader's connection, then the kernel, initramfs and command line
    /// (docs/bootstrap.md), and reports each step's time.
    Boot {
        /// The node's IPv4 address.
        host: std::net::Ipv4Addr,
        /// The boot token file (from `broker boot-token`).
        #[arg(long)]
        token: PathBuf,
        /// Resend the request after this many seconds without an answer.
        #[arg(long, default_value_t = 2.0)]
        retry: f64,
        /// Give up waiting for an answer after this many seconds.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
        /// Seconds (from the first request) to wait for the loader's TCP port; 0 = do not wait.
        #[arg(long, default_value_t = 120.0)]
        listen_timeout: f64,
        /// Stage 2 to upload once the loader listens (scripts/build-inflate-stage2's
        /// inflate-stage2.bin); its SHA-1 must be the token's loader SHA-1.
        #[arg(long, requires = "kernel")]
        stage2: Option<PathBuf>,
        /// The kernel (ELF image) stage 2 is to start.
        #[arg(long, requires = "stage2")]
        kernel: Option<PathBuf>,
        /// The initramfs for the kernel (default: none).
        #[arg(long, requires = "kernel")]
        initrd: Option<PathBuf>,
        /// The kernel's command line (at most 1023 bytes). `@ADDR@` in it becomes the address
        /// the node gave the domain (e.g. "console=hvc0 ip=@ADDR@").
        #[arg(long, requires = "kernel")]
        cmdline: Option<String>,
        /// Seconds to wait for each answer of the loader during the uploads.
        #[arg(long, default_value_t = 120.0)]
        upload_timeout: f64,
        /// zlib level (1-9) for the kernel, and for an initramfs not compressed already, sent
        /// to a stage 2 that inflates (version 2); compressed in the background while the node
        /// answers. 0 sends them as they are.
        #[arg(long, default_value_t = bootupload::DEFAULT_LEVEL, value_parser = clap::value_parser!(u8).range(0..=9))]
        compress_level: u8,
    },
    /// Fetch the redemption certificate of an ended job from the node that ran it, by ICMP
    /// (a certificate query, docs/packetd.md §2.1), and write it to OUT for `broker redeem`.
    /// While the job still runs the node answers "later" and the query is resent. Needs
    /// CAP_NET_RAW. Exit codes: 0 written, 3 the node has no certificate for the job
    /// (`unknown-job`), 5 none in time.
    Certificate {
        /// The node's IPv4 address.
        host: std::net::Ipv4Addr,
        #[arg(long)]
        job: u64,
        #[arg(long)]
        out: PathBuf,
        /// Resend the query after this many seconds without a certificate.
        #[arg(long, default_value_t = 1.0)]
        retry: f64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
    },
    /// Measure boot-token verifications/s and raw SHA-1 compressions/s (use a release build).
    Bench {
        /// Seconds to spend on each of the three measurements (they take turns).
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Tokens paid by the benchmark's boot token (chain steps the node checks).
        #[arg(long, default_value_t = 10)]
        count: u32,
    },
}

#[derive(Args)]
struct BrokerArgs {
    /// The broker's SQLite database.
    #[arg(long, env = "TOKEN_TOOL_BROKER_DB")]
    db: PathBuf,
    #[command(subcommand)]
    cmd: BrokerCmd,
}

#[derive(Subcommand)]
enum BrokerCmd {
    /// Create the broker database (safe to repeat).
    Init,
    /// Register a node and write the secret it shares with the broker (hex) to a file.
    /// Install that file on the node with `node init`.
    AddNode {
        /// The node's number (it appears in every token for it).
        #[arg(long)]
        node_id: u32,
        /// Where to write the secret (created with mode 0600).
        #[arg(long)]
        secret_out: PathBuf,
    },
    /// Mint a new hash chain (a new job) for a node. Only the seed and about sqrt(n)
    /// checkpoints are stored; any value is regenerated from the checkpoint below it.
    Mint {
        /// The node's number (it appears in every token for it).
        #[arg(long)]
        node_id: u32,
        /// Chain length n (tokens the job can ever buy).
        #[arg(long, default_value_t = 1_000_000)]
        length: u64,
        /// Largest number of tokens one top-up may carry (the node's bound).
        #[arg(long, default_value_t = 1000)]
        max_topup: u32,
    },
    /// Sell tokens: releases s(n - sold - count). Repeating the request with the same
    /// payment reference returns the same sale (so a lost reply costs nothing).
    Sell {
        /// The job (one chain on one node), as `broker mint` numbered it.
        #[arg(long)]
        job: u64,
        /// Tokens to sell (after the first sale: at most the job's top-up bound).
        #[arg(long)]
        count: u64,
        /// The payment's identifier in the outside payment system; one sale per reference.
        #[arg(long)]
        payment_ref: String,
        /// Write the sale (for `wallet add`) to this JSON file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Issue the boot token for a job: anchor s(n), all tokens sold so far, resource limits,
    /// signed with the node's secret. Send it to the node (packetd, or `node verify`).
    BootToken {
        /// The job (one chain on one node), as `broker mint` numbered it.
        #[arg(long)]
        job: u64,
        /// Memory the VM may use, MiB.
        #[arg(long, default_value_t = 256)]
        memory_mib: u32,
        /// Virtual CPUs the VM may use.
        #[arg(long, default_value_t = 1)]
        vcpus: u16,
        /// SHA-1 of the stage-2 loader, as 40 hex digits...
        #[arg(long, conflicts_with = "loader_file")]
        loader_sha1: Option<String>,
        /// ...or the loader file itself, hashed here.
        #[arg(long)]
        loader_file: Option<PathBuf>,
        /// Disk extent DISK:START:SECTORS:ro|rw (512-byte sectors); repeatable, at most 32.
        #[arg(long = "extent")]
        extents: Vec<String>,
        /// Validity from now, in seconds.
        #[arg(long, default_value_t = 3600, conflicts_with = "expires_at")]
        expires_in: u64,
        /// Absolute expiry (Unix seconds).
        #[arg(long)]
        expires_at: Option<u64>,
        /// Where to write the binary token.
        #[arg(long)]
        out: PathBuf,
    },
    /// Refund a node's redemption certificate (once per job): unspent balance plus values
    /// bought but never delivered to the node.
    Redeem {
        /// The certificate file written by `node redeem`.
        cert: PathBuf,
    },
    /// Show jobs and their sales.
    Show {
        /// Only this job.
        #[arg(long)]
        job: Option<u64>,
    },
    /// Check the ledger's invariants (sales tile each chain, values are on the chain).
    Check,
}

#[derive(Args)]
struct WalletArgs {
    /// The wallet file (JSON; created on first use).
    #[arg(long, env = "TOKEN_TOOL_WALLET")]
    wallet: PathBuf,
    #[command(subcommand)]
    cmd: WalletCmd,
}

#[derive(Subcommand)]
enum WalletCmd {
    /// Keep a purchase (the JSON file `broker sell --out` wrote).
    Add {
        /// The sale file.
        sale: PathBuf,
    },
    /// Record that this boot token was sent: the tokens it carries count as delivered.
    Boot {
        /// The boot token file from `broker boot-token`.
        token: PathBuf,
    },
    /// Write the top-up for the next purchase not yet delivered to the node, and count it
    /// as delivered. The guest hands it to the node (packetd), or `node verify` takes it.
    NextTopup {
        /// The job (one chain on one node), as `broker mint` numbered it.
        #[arg(long)]
        job: u64,
        #[arg(long)]
        out: PathBuf,
        /// Write the last top-up again instead (it was lost); changes nothing.
        #[arg(long)]
        resend: bool,
    },
    /// Show what the wallet holds.
    Show,
}

#[derive(Args)]
struct NodeArgs {
    /// The node's state directory (secret + ledger.json).
    #[arg(long, env = "TOKEN_TOOL_NODE_STATE")]
    state: PathBuf,
    #[command(subcommand)]
    cmd: NodeCmd,
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Set up the node's ledger with its id and the secret from `broker add-node`.
    Init {
        /// The node's number (it appears in every token for it).
        #[arg(long)]
        node_id: u32,
        /// The secret file `broker add-node` wrote.
        #[arg(long)]
        secret_file: PathBuf,
    },
    /// Verify a boot token (opens the job) or a top-up (adds to its balance); the kind is
    /// read from the file's magic. Accepted values are on disk before this returns.
    Verify {
        /// A boot token or top-up file (binary, as the broker or wallet wrote it).
        file: PathBuf,
        /// Pretend the clock says this (Unix seconds); for tests of expiry.
        #[arg(long)]
        now: Option<u64>,
    },
    /// Debit consumption from a job's balance. Exit code 4 when it asked for more than was left.
    Consume {
        /// The job (one chain on one node), as `broker mint` numbered it.
        #[arg(long)]
        job: u64,
        /// Tokens of consumption to debit.
        #[arg(long)]
        tokens: u64,
    },
    /// Show balances (one job or all).
    Balance {
        /// Only this job.
        #[arg(long)]
        job: Option<u64>,
    },
    /// Close a job and write a signed redemption certificate for its unspent tokens.
    Redeem {
        /// The job (one chain on one node), as `broker mint` numbered it.
        #[arg(long)]
        job: u64,
        #[arg(long)]
        out: PathBuf,
    },
}

/// Errors the user caused by how they called us (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

/// What `node consume` reports when the VM ran dry (exit 4).
#[derive(Debug, thiserror::Error)]
#[error("job {job}: balance exhausted (wanted {wanted}, debited {debited})")]
struct Exhausted {
    job: u64,
    wanted: u64,
    debited: u64,
    /// The debit as JSON, reported with the error.
    debit: serde_json::Value,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let (code, kind) = classify(&e);
            if json {
                let mut v = json!({"ok": false, "error": kind, "message": format!("{e:#}")});
                if let Some(x) = e.downcast_ref::<Exhausted>() {
                    v["job"] = json!(x.job);
                    v["debit"] = x.debit.clone();
                }
                if let Some(u) = e.downcast_ref::<bootupload::UploadFailed>() {
                    v["steps"] = u.steps.clone();
                }
                println!("{v}");
            }
            eprintln!("token-tool: {} ({kind})", format_args!("{e:#}"));
            ExitCode::from(code)
        }
    }
}

fn classify(e: &anyhow::Error) -> (u8, &'static str) {
    for c in e.chain() {
        if let Some(t) = c.downcast_ref::<TokenError>() {
            return (
                if t.is_refusal() {
                    EXIT_REFUSED
                } else {
                    EXIT_FAIL
                },
                t.code(),
            );
        }
        if let Some(l) = c.downcast_ref::<LedgerError>() {
            return (
                if l.is_refusal() {
                    EXIT_REFUSED
                } else {
                    EXIT_FAIL
                },
                l.code(),
            );
        }
        if let Some(b) = c.downcast_ref::<BrokerError>() {
            return (
                if b.is_refusal() {
                    EXIT_REFUSED
                } else {
                    EXIT_FAIL
                },
                b.code(),
            );
        }
        if let Some(w) = c.downcast_ref::<WalletError>() {
            return match w {
                WalletError::Token(t) => (EXIT_REFUSED, t.code()),
                WalletError::State(_) => (EXIT_REFUSED, "wallet-state"),
                _ => (EXIT_FAIL, "wallet-io"),
            };
        }
        if c.downcast_ref::<UsageError>().is_some() {
            return (EXIT_USAGE, "usage");
        }
        if c.downcast_ref::<Exhausted>().is_some() {
            return (EXIT_EXHAUSTED, "exhausted");
        }
        if let Some(n) = c.downcast_ref::<customer::NotAccepted>() {
            return (EXIT_REFUSED, n.reason);
        }
        if c.downcast_ref::<customer::TimedOut>().is_some() {
            return (EXIT_TIMEOUT, "timeout");
        }
        if let Some(u) = c.downcast_ref::<bootupload::UploadFailed>() {
            let code = match u.kind {
                "stage2-refused" => EXIT_STAGE2_REFUSED,
                _ => EXIT_UPLOAD_FAILED,
            };
            return (code, u.kind);
        }
        if c.downcast_ref::<bootupload::BadInput>().is_some() {
            return (EXIT_USAGE, "usage");
        }
    }
    (EXIT_FAIL, "error")
}

/// Print `v` as JSON, or `human` as text.
fn emit(json: bool, v: serde_json::Value, human: impl FnOnce() -> String) {
    if json {
        println!("{v}");
    } else {
        println!("{}", human());
    }
}

fn read_file(p: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

fn write_file(p: &Path, data: &[u8]) -> anyhow::Result<()> {
    std::fs::write(p, data).with_context(|| format!("writing {}", p.display()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    match cli.cmd {
        Cmd::Broker(a) => broker(json, a),
        Cmd::Wallet(a) => wallet(json, a),
        Cmd::Node(a) => node(json, a),
        Cmd::Inspect { file } => inspect(json, &file),
        Cmd::Bench { seconds, count } => bench(json, seconds, count),
        Cmd::Certificate {
            host,
            job,
            out,
            retry,
            timeout,
        } => {
            let secs = |s: f64, what: &str| {
                (s.is_finite() && (0.1..=3600.0).contains(&s))
                    .then(|| Duration::from_secs_f64(s))
                    .ok_or_else(|| UsageError(format!("--{what} must be 0.1..=3600 seconds")))
            };
            let cert = certq::fetch(host, job, secs(retry, "retry")?, secs(timeout, "timeout")?)?;
            std::fs::write(&out, &cert).with_context(|| format!("writing {}", out.display()))?;
            let (c, _) = Certificate::decode_unverified(&cert)?;
            emit(
                json,
                json!({"ok": true, "job": job, "certificate": c, "out": out}),
                || {
                    format!(
                        "job {job}: certificate for {} unspent tokens written to {}",
                        c.balance,
                        out.display()
                    )
                },
            );
            Ok(())
        }
        Cmd::Boot {
            host,
            token,
            retry,
            timeout,
            listen_timeout,
            stage2,
            kernel,
            initrd,
            cmdline,
            upload_timeout,
            compress_level,
        } => {
            let secs = |s: f64, what: &str| {
                (s.is_finite() && (0.0..=3600.0).contains(&s))
                    .then(|| Duration::from_secs_f64(s))
                    .ok_or_else(|| UsageError(format!("--{what} must be 0..=3600 seconds")))
            };
            let upload = match (&stage2, &kernel) {
                (Some(s), Some(k)) => {
                    if listen_timeout == 0.0 {
                        return Err(UsageError(
                            "--stage2 needs the loader: --listen-timeout must not be 0".into(),
                        )
                        .into());
                    }
                    let t = secs(upload_timeout, "upload-timeout")?.max(Duration::from_secs(1));
                    let c = cmdline.as_deref().unwrap_or("");
                    let mut u = bootupload::Upload::load(s, k, initrd.as_ref(), c, t)?;
                    if compress_level > 0 {
                        u.start_packing(compress_level);
                    }
                    Some(u)
                }
                _ => None,
            };
            let a = customer::BootArgs {
                host,
                token: read_file(&token)?,
                retry: secs(retry, "retry")?.max(Duration::from_millis(100)),
                timeout: secs(timeout, "timeout")?,
                listen_timeout: secs(listen_timeout, "listen-timeout")?,
                upload,
            };
            customer::boot(json, a)
        }
    }
}

fn parse_extent(s: &str) -> anyhow::Result<Extent> {
    let bad = || UsageError(format!("bad extent {s:?}: want DISK:START:SECTORS:ro|rw"));
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 4 {
        return Err(bad().into());
    }
    let writable = match parts[3] {
        "rw" => true,
        "ro" => false,
        _ => return Err(bad().into()),
    };
    Ok(Extent {
        disk: parts[0].parse().map_err(|_| bad())?,
        start_sector: parts[1].parse().map_err(|_| bad())?,
        sectors: parts[2].parse().map_err(|_| bad())?,
        writable,
    })
}

fn broker(json: bool, a: BrokerArgs) -> anyhow::Result<()> {
    if let BrokerCmd::Init = a.cmd {
        Broker::init(&a.db)?;
        emit(json, json!({"ok": true, "db": a.db}), || {
            format!("broker ledger ready: {}", a.db.display())
        });
        return Ok(());
    }
    let mut b = Broker::open(&a.db)?;
    match a.cmd {
        BrokerCmd::Init => unreachable!("handled above"),
        BrokerCmd::AddNode {
            node_id,
            secret_out,
        } => {
            let secret = b.add_node(node_id)?;
            write_secret(&secret_out, &secret)?;
            emit(
                json,
                json!({"ok": true, "node_id": node_id, "secret_file": secret_out}),
                || {
                    format!(
                        "node {node_id} added; its secret is in {} (install it with `node init`)",
                        secret_out.display()
                    )
                },
            );
        }
        BrokerCmd::Mint {
            node_id,
            length,
            max_topup,
        } => {
            let bar = indicatif::ProgressBar::new(length);
            if json {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "minting {bar:40} {pos}/{len} values ({per_sec})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let t0 = Instant::now();
            let job = b.mint(node_id, length, max_topup, |i| bar.set_position(i))?;
            bar.finish_and_clear();
            let secs = t0.elapsed().as_secs_f64();
            emit(
                json,
                json!({"ok": true, "job": job, "seconds": secs}),
                || {
                    format!(
                    "job {} on node {}: {} values minted in {:.2} s, {} checkpoints every {} values, anchor {}",
                    job.job_id,
                    node_id,
                    job.length,
                    secs,
                    job.length / job.step + 1,
                    job.step,
                    to_hex(&job.anchor)
                )
                },
            );
        }
        BrokerCmd::Sell {
            job,
            count,
            payment_ref,
            out,
        } => {
            let sale = b.sell(job, count, &payment_ref)?;
            if let Some(out) = &out {
                let p = sale.purchase();
                write_file(out, &serde_json::to_vec_pretty(&p)?)?;
            }
            emit(json, json!({"ok": true, "sale": sale}), || {
                format!(
                    "{} sale {}: {} tokens of job {} (positions {}..{}), value {}",
                    if sale.repeated { "repeated" } else { "new" },
                    sale.sale_id,
                    sale.count,
                    job,
                    sale.from,
                    sale.from + sale.count,
                    to_hex(&sale.value)
                )
            });
        }
        BrokerCmd::BootToken {
            job,
            memory_mib,
            vcpus,
            loader_sha1,
            loader_file,
            extents,
            expires_in,
            expires_at,
            out,
        } => {
            let loader_sha1 = match (loader_sha1, loader_file) {
                (Some(h), _) => token_tool::value_from_hex(&h)
                    .map_err(|e| UsageError(format!("--loader-sha1: {e}")))?,
                (None, Some(f)) => {
                    use sha1::Digest;
                    sha1::Sha1::digest(read_file(&f)?).into()
                }
                (None, None) => {
                    return Err(UsageError("give --loader-sha1 or --loader-file".into()).into())
                }
            };
            let extents = extents
                .iter()
                .map(|s| parse_extent(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let expiry = expires_at.unwrap_or_else(|| unix_now().saturating_add(expires_in));
            let grant = BootGrant {
                memory_mib,
                vcpus,
                loader_sha1,
                extents,
                expiry,
            };
            let (t, bytes) = b.boot_token(job, &grant)?;
            write_file(&out, &bytes)?;
            emit(
                json,
                json!({"ok": true, "token": t, "bytes": bytes.len(), "out": out}),
                || {
                    format!(
                    "boot token for job {job} on node {}: {} tokens, {} bytes, expires at {}, written to {}",
                    t.node_id,
                    t.count,
                    bytes.len(),
                    t.expiry,
                    out.display()
                )
                },
            );
        }
        BrokerCmd::Redeem { cert } => {
            let r = b.redeem(&read_file(&cert)?)?;
            emit(json, json!({"ok": true, "refund": r}), || {
                format!(
                    "job {}: refund {} tokens ({} unspent on the node, {} bought but never delivered)",
                    r.job_id, r.tokens, r.unspent, r.undelivered
                )
            });
        }
        BrokerCmd::Show { job } => {
            let jobs = match job {
                Some(j) => vec![b.job(j)?],
                None => b.jobs()?,
            };
            let mut out = Vec::new();
            for j in &jobs {
                out.push(json!({"job": j, "sales": b.sales(j.job_id)?}));
            }
            emit(json, json!({"ok": true, "jobs": out}), || {
                jobs.iter()
                    .map(|j| {
                        format!(
                            "job {} node {}: {} of {} values sold, bound {}",
                            j.job_id, j.node_id, j.released, j.length, j.max_topup
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        BrokerCmd::Check => {
            let problems = b.check()?;
            emit(
                json,
                json!({"ok": problems.is_empty(), "problems": problems}),
                || {
                    if problems.is_empty() {
                        "broker ledger consistent".into()
                    } else {
                        problems.join("\n")
                    }
                },
            );
            if !problems.is_empty() {
                bail!("broker ledger inconsistent: {} problem(s)", problems.len());
            }
        }
    }
    Ok(())
}

fn write_secret(p: &Path, secret: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .with_context(|| format!("creating {}", p.display()))?;
    writeln!(f, "{}", to_hex(secret))?;
    f.sync_all()?;
    Ok(())
}

fn wallet(json: bool, a: WalletArgs) -> anyhow::Result<()> {
    let mut w = Wallet::load(&a.wallet)?;
    match a.cmd {
        WalletCmd::Add { sale } => {
            let p: Purchase = serde_json::from_slice(&read_file(&sale)?)
                .map_err(|e| UsageError(format!("{}: not a sale file: {e}", sale.display())))?;
            w.add(p.clone())?;
            w.save(&a.wallet)?;
            emit(json, json!({"ok": true, "purchase": p}), || {
                format!(
                    "kept {} tokens of job {} (positions {}..{})",
                    p.count,
                    p.job_id,
                    p.from,
                    p.from + p.count as u64
                )
            });
        }
        WalletCmd::Boot { token } => {
            let job = w.booted(&read_file(&token)?)?;
            w.save(&a.wallet)?;
            let delivered = w.jobs.get(&job).map(|j| j.delivered).unwrap_or(0);
            emit(
                json,
                json!({"ok": true, "job": job, "delivered": delivered}),
                || format!("job {job}: boot token delivers the first {delivered} tokens"),
            );
        }
        WalletCmd::NextTopup { job, out, resend } => {
            let tu = if resend {
                w.last_topup(job)?
            } else {
                w.next_topup(job)?
            };
            write_file(&out, &tu.encode())?;
            w.save(&a.wallet)?;
            emit(json, json!({"ok": true, "topup": tu, "out": out}), || {
                format!(
                    "top-up of {} tokens for job {job} written to {}",
                    tu.count,
                    out.display()
                )
            });
        }
        WalletCmd::Show => {
            emit(json, json!({"ok": true, "wallet": w}), || {
                w.jobs
                    .iter()
                    .map(|(id, j)| {
                        let bought: u64 = j.purchases.iter().map(|p| p.count as u64).sum();
                        format!(
                            "job {id} node {}: {bought} tokens bought, {} delivered",
                            j.node_id, j.delivered
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(())
}

fn node(json: bool, a: NodeArgs) -> anyhow::Result<()> {
    if let NodeCmd::Init {
        node_id,
        secret_file,
    } = &a.cmd
    {
        let text = std::fs::read_to_string(secret_file)
            .with_context(|| format!("reading {}", secret_file.display()))?;
        let secret =
            from_hex(&text).map_err(|e| UsageError(format!("{}: {e}", secret_file.display())))?;
        NodeLedger::create(&a.state, *node_id, &secret)?;
        emit(
            json,
            json!({"ok": true, "node_id": node_id, "state": a.state}),
            || format!("node {node_id} ledger created in {}", a.state.display()),
        );
        return Ok(());
    }
    let mut l = NodeLedger::open(&a.state)?;
    match a.cmd {
        NodeCmd::Init { .. } => unreachable!("handled above"),
        NodeCmd::Verify { file, now } => {
            let bytes = read_file(&file)?;
            let now = now.unwrap_or_else(unix_now);
            if bytes.starts_with(&token_tool::wire::TOPUP_MAGIC) {
                let j = l.accept_topup(&bytes)?;
                emit(
                    json,
                    json!({"ok": true, "kind": "top-up", "job": j}),
                    || {
                        format!(
                            "top-up accepted: job {} balance {} ({} accepted in total)",
                            j.job_id, j.balance, j.accepted
                        )
                    },
                );
            } else {
                // Anything else is parsed as a boot token, which names what is wrong with it.
                let j = l.accept_boot(&bytes, now)?;
                emit(json, json!({"ok": true, "kind": "boot", "job": j}), || {
                    format!(
                        "boot token accepted: job {} opened with {} tokens, {} MiB, {} vCPU(s)",
                        j.job_id, j.balance, j.memory_mib, j.vcpus
                    )
                });
            }
        }
        NodeCmd::Consume { job, tokens } => {
            let d = l.consume(job, tokens)?;
            if d.exhausted {
                return Err(Exhausted {
                    job,
                    wanted: tokens,
                    debited: d.debited,
                    debit: json!(d),
                }
                .into());
            }
            emit(json, json!({"ok": true, "job": job, "debit": d}), || {
                format!("job {job}: debited {}, balance {}", d.debited, d.balance)
            });
        }
        NodeCmd::Balance { job } => {
            let jobs: Vec<_> = match job {
                Some(j) => vec![l.job(j).ok_or(TokenError::UnknownJob { job: j })?.clone()],
                None => l.jobs().cloned().collect(),
            };
            emit(
                json,
                json!({"ok": true, "node_id": l.node_id(), "jobs": jobs}),
                || {
                    jobs.iter()
                        .map(|j| {
                            format!(
                                "job {}: balance {} (accepted {}, consumed {}){}",
                                j.job_id,
                                j.balance,
                                j.accepted,
                                j.consumed,
                                if j.closed { ", closed" } else { "" }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            );
        }
        NodeCmd::Redeem { job, out } => {
            let (c, bytes) = l.redeem(job, unix_now())?;
            write_file(&out, &bytes)?;
            emit(
                json,
                json!({"ok": true, "certificate": c, "out": out}),
                || {
                    format!(
                        "job {job} closed; certificate for {} unspent tokens written to {}",
                        c.balance,
                        out.display()
                    )
                },
            );
        }
    }
    Ok(())
}

fn inspect(json: bool, file: &Path) -> anyhow::Result<()> {
    let b = read_file(file)?;
    let v = if b.starts_with(&token_tool::wire::TOPUP_MAGIC) {
        json!({"kind": "top-up", "top_up": TopUp::decode(&b)?})
    } else if b.starts_with(&token_tool::wire::CERT_MAGIC) {
        let (c, mac) = Certificate::decode_unverified(&b)?;
        json!({"kind": "certificate", "certificate": c, "mac": to_hex(&mac)})
    } else {
        let (t, mac) = BootToken::decode_unverified(&b)?;
        json!({"kind": "boot", "boot_token": t, "mac": to_hex(&mac), "bytes": b.len()})
    };
    emit(json, json!({"ok": true, "decoded": v}), || {
        serde_json::to_string_pretty(&v).unwrap_or_default()
    });
    Ok(())
}

fn bench(json: bool, seconds: f64, count: u32) -> anyhow::Result<()> {
    use std::hint::black_box;
    if !(seconds > 0.0 && seconds <= 600.0) {
        return Err(UsageError("--seconds must be in (0, 600]".into()).into());
    }
    if count == 0 {
        return Err(UsageError("--count must be at least 1".into()).into());
    }
    let dur = Duration::from_secs_f64(seconds);
    let secret = [0x5au8; 20];
    let chain = token_tool::Chain::mint([1; 20], count as u64, 1, |_| {})?;
    let token = BootToken {
        vcpus: 1,
        node_id: 1,
        memory_mib: 256,
        job_id: 1,
        expiry: u64::MAX,
        count,
        max_topup: 1000,
        nonce: [0; 16],
        anchor: chain.anchor(),
        first: chain
            .released_value(count as u64)
            .ok_or_else(|| anyhow!("chain too short"))?,
        loader_sha1: [0; 20],
        extents: vec![Extent {
            disk: 0,
            writable: true,
            start_sector: 0,
            sectors: 1 << 21,
        }],
    };
    let bytes = token.encode(&secret)?;

    // What a node does per token (packetd's ledger): parse without allocating, node id,
    // HMAC-SHA1 under the key pads hashed once, expiry, `count` chain steps.
    let key = token_tool::NodeKey::new(&secret)?;
    let check = || -> Result<u64, TokenError> {
        for _ in 0..64 {
            black_box(BootFields::check(black_box(&bytes), &key, 1, 0)?);
        }
        Ok(64)
    };
    // The same from the secret (key pads hashed per call) and decoded into a BootToken.
    let verify = || -> Result<u64, TokenError> {
        for _ in 0..64 {
            black_box(BootToken::verify(black_box(&bytes), &secret, 1, 0)?);
        }
        Ok(64)
    };
    // The raw SHA-1 compression function over 64-byte blocks, 64 blocks per call.
    use sha1::digest::{consts::U64, generic_array::GenericArray};
    let blocks = vec![GenericArray::<u8, U64>::clone_from_slice(&[0x61u8; 64]); 64];
    let mut state = [
        0x67452301u32,
        0xefcdab89,
        0x98badcfe,
        0x10325476,
        0xc3d2e1f0,
    ];
    let mut compress = || -> Result<u64, TokenError> {
        for _ in 0..16 {
            sha1::compress(&mut state, black_box(&blocks));
        }
        Ok(16 * 64)
    };
    // The three take turns in 10 ms slices, so a change of the machine's load (other work
    // beside the benchmark) hits all three alike.
    let mut done = [(0u64, 0f64); 3];
    let t0 = Instant::now();
    while t0.elapsed() < dur * 3 {
        for (i, d) in done.iter_mut().enumerate() {
            let s = Instant::now();
            while s.elapsed() < Duration::from_millis(10) {
                d.0 += match i {
                    0 => check()?,
                    1 => verify()?,
                    _ => compress()?,
                };
            }
            d.1 += s.elapsed().as_secs_f64();
        }
    }
    black_box(state);
    let [check_rate, verif_rate, comp_rate] = done.map(|(n, t)| n as f64 / t);
    let ratio = comp_rate / check_rate;
    // Inherent per node check: the message blocks after the ipad block (body + 9 bytes of
    // padding), 1 outer block, 1 per chain step. The full verification adds the 2 pad blocks.
    let body = bytes.len() - 20;
    let inherent = (body + 9).div_ceil(64) + 1 + count as usize;
    emit(
        json,
        json!({
            "ok": true,
            "boot_token_bytes": bytes.len(),
            "chain_steps": count,
            "node_checks_per_s": check_rate,
            "sha1_compressions_per_s": comp_rate,
            "compressions_per_node_check": ratio,
            "inherent_compressions_per_node_check": inherent,
            "verifications_per_s": verif_rate,
            "compressions_per_verification": comp_rate / verif_rate,
            "debug_build": cfg!(debug_assertions),
        }),
        || {
            format!(
                "node boot-token checks/s: {check_rate:.0} ({} bytes, HMAC-SHA1 with the key pads hashed once + {count} chain steps)\n\
                 raw SHA-1 compressions/s: {comp_rate:.0}\n\
                 ratio: {ratio:.2} compressions' time per check ({inherent} are inherent)\n\
                 verifications/s from the secret (key pads hashed per call, full decode): {verif_rate:.0}\n\
                 (paper: 276,500 checks/s on a 2 GHz Pentium 4){}",
                bytes.len(),
                if cfg!(debug_assertions) { "\nWARNING: debug build; use --release for real figures" } else { "" }
            )
        },
    );
    Ok(())
}
