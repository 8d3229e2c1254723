//! inflate-send: the lab's client for inflate-loader. Sends a checkpoint stream (a file, or a
//! synthetic one) over TCP, optionally damaged on purpose, reads the loader's result record and
//! prints it with the throughput. Exit status 0 when the result is the one expected. After a
//! `ready` result it can send the source's decision (`--commit` / `--abort`), which is how the
//! lab drives a restore before `checkpointd migrate` does.
use anyhow::{bail, Context, Result};
use clap::Parser;
use inflate_core::result::{Decision, ResultRecord, Status, RECORD_LEN};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Send a checkpoint stream to inflate-loader and report its verdict")]
struct Args {
    /// Loader address, HOST:PORT.
    addr: Option<String>,
    /// Stream file to send (default: a synthetic checkpoint of --pages pages).
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// Pages of the synthetic checkpoint.
    #[arg(long, default_value_t = 4096)]
    pages: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the stream to this file instead of sending it.
    #[arg(long)]
    write: Option<std::path::PathBuf>,
    /// Send only the start of a stream whose guest claims N+1 pages of RAM (HEADER with
    /// max_pfn = N, CAPTURE, PAGE_TYPES): tests the size check without a huge stream.
    #[arg(long, value_name = "MAX_PFN")]
    header_only: Option<u64>,
    /// On a `ready` result, send COMMIT: the loader then restores the guest in place.
    #[arg(long, conflicts_with = "abort")]
    commit: bool,
    /// On a `ready` result, send ABORT: the loader discards the guest and keeps serving.
    #[arg(long)]
    abort: bool,
    /// Flip one bit at this byte offset before sending.
    #[arg(long)]
    corrupt_at: Option<usize>,
    /// Send only this many bytes, then close the sending side.
    #[arg(long)]
    truncate_at: Option<usize>,
    /// While sending, open a second connection and expect it to be refused with "busy".
    #[arg(long)]
    second: bool,
    /// Expected result status name (ok, truncated, corrupt, too-large, digest-mismatch, busy,
    /// pfn-out-of-range, internal, ready, unrestorable).
    #[arg(long, default_value = "ok")]
    expect: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

fn read_record(s: &mut TcpStream) -> Result<ResultRecord> {
    let mut b = [0u8; RECORD_LEN];
    s.read_exact(&mut b)
        .context("reading the result record (connection closed early?)")?;
    ResultRecord::decode(&b).map_err(|e| anyhow::anyhow!("malformed result record: {e:?}"))
}

fn print(label: &str, r: &ResultRecord) {
    println!(
        "{label}: status={} pages={} bytes={} loader_micros={} message=\"{}\"",
        r.status.name(),
        r.pages,
        r.bytes,
        r.micros,
        r.message()
    );
}

fn main() -> Result<()> {
    let a = Args::parse();
    if Status::from_name(&a.expect).is_none() {
        bail!("--expect {}: not a result status name", a.expect);
    }
    let mut data = match &a.file {
        Some(f) => std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
        None if a.header_only.is_some() => inflate_core::synth::ram_claim(a.header_only.unwrap()),
        None => {
            if a.pages == 0 {
                bail!("--pages must be at least 1");
            }
            inflate_core::synth::stream(a.pages - 1, a.seed)
        }
    };
    if let Some(w) = &a.write {
        std::fs::write(w, &data).with_context(|| format!("writing {}", w.display()))?;
        println!("wrote {} bytes to {}", data.len(), w.display());
        return Ok(());
    }
    let addr = a
        .addr
        .as_deref()
        .context("an address HOST:PORT is required unless --write")?;
    if let Some(o) = a.corrupt_at {
        let n = data.len();
        *data
            .get_mut(o)
            .with_context(|| format!("--corrupt-at {o} beyond the stream's {n} bytes"))? ^= 0x10;
    }
    let send_len = a.truncate_at.unwrap_or(data.len()).min(data.len());
    let t = Duration::from_secs(a.timeout);
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(t))?;
    s.set_write_timeout(Some(t))?;
    s.set_nodelay(true)?;
    let t0 = Instant::now();
    let first = send_len.min(64 * 1024);
    s.write_all(&data[..first]).context("sending")?;
    let mut ok = true;
    if a.second {
        let mut s2 =
            TcpStream::connect(addr).with_context(|| format!("second connection to {addr}"))?;
        s2.set_read_timeout(Some(t))?;
        let r2 = read_record(&mut s2)?;
        print("second connection", &r2);
        ok &= r2.status.name() == "busy";
    }
    // The loader may give its verdict early (too large, corrupt): read the record on a thread
    // and stop sending once it is there.
    let mut rs = s.try_clone()?;
    let (tx, rxc) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(read_record(&mut rs));
    });
    let mut sent = first;
    let mut early = None;
    while sent < send_len {
        if let Ok(r) = rxc.try_recv() {
            early = Some(r);
            break;
        }
        let n = (send_len - sent).min(64 * 1024);
        if let Err(e) = s.write_all(&data[sent..sent + n]) {
            eprintln!("sending stopped after {sent} bytes: {e}");
            break;
        }
        sent += n;
    }
    if early.is_none() && send_len < data.len() {
        s.shutdown(Shutdown::Write)?;
    }
    let r = match early {
        Some(r) => r?,
        None => rxc.recv().context("reader thread")??,
    };
    let secs = t0.elapsed().as_secs_f64();
    print("result", &r);
    println!(
        "sent {} bytes in {:.2} s: {:.2} MB/s",
        sent,
        secs,
        sent as f64 / secs / 1e6
    );
    ok &= r.status.name() == a.expect;
    if r.status == Status::Ready && (a.commit || a.abort) {
        let d = if a.commit {
            Decision::Commit
        } else {
            Decision::Abort
        };
        let t1 = Instant::now();
        s.write_all(&d.bytes()).context("sending the decision")?;
        // The loader sends nothing more: wait until it closes the connection.
        let mut rest = Vec::new();
        let closed = s.read_to_end(&mut rest);
        println!(
            "sent {}; loader {} after {:.2} s{}",
            if a.commit { "COMMIT" } else { "ABORT" },
            match closed {
                Ok(_) => "closed the connection",
                Err(_) => "did not close the connection",
            },
            t1.elapsed().as_secs_f64(),
            if rest.is_empty() {
                String::new()
            } else {
                format!(" ({} unexpected bytes after the record)", rest.len())
            }
        );
        ok &= closed.is_ok() && rest.is_empty();
    }
    if !ok {
        bail!("unexpected result (wanted {})", a.expect);
    }
    Ok(())
}
