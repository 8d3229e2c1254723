//! `token-tool boot --stage2 S --kernel K`: the uploads after the loader listens
//! (docs/bootstrap.md §1, §2). On the loader's connection: the stage-2 binary, which stage 1
//! checks against the boot token's SHA-1; then, to stage 2, the kernel, the initramfs and the
//! command line, each acknowledged; then stage 2 starts the kernel, which closes the
//! connection. Each step is timed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use loader_abi::upload::{self as up, Item};
use serde_json::json;

/// What to upload, read and checked before anything is sent.
pub struct Upload {
    pub stage2: Vec<u8>,
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
    pub cmdline: Vec<u8>,
    /// Longest wait for any one answer line (stage 1's verdict, stage 2's acks).
    pub timeout: Duration,
}

/// The user gave an input the protocol cannot carry (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// The upload ended in a refusal or a failure; `steps` has the times measured so far.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UploadFailed {
    /// `stage2-refused` (stage 1 refused the binary, exit 6), `upload-refused` (stage 2
    /// refused an item or the builder failed, exit 7), `upload-lost` (the connection broke or
    /// an answer did not come in time, exit 7).
    pub kind: &'static str,
    pub message: String,
    pub steps: serde_json::Value,
}

fn read_input(what: &str, p: &PathBuf, max: u32) -> anyhow::Result<Vec<u8>> {
    let meta =
        std::fs::metadata(p).map_err(|e| BadInput(format!("--{what} {}: {e}", p.display())))?;
    if meta.len() > max as u64 {
        return Err(BadInput(format!(
            "--{what} {}: {} bytes, the most a loader accepts is {max}",
            p.display(),
            meta.len()
        ))
        .into());
    }
    let b = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    if b.is_empty() && what != "initrd" {
        return Err(BadInput(format!("--{what} {}: empty file", p.display())).into());
    }
    Ok(b)
}

impl Upload {
    /// Read the files and check them against the protocol's bounds.
    pub fn load(
        stage2: &PathBuf,
        kernel: &PathBuf,
        initrd: Option<&PathBuf>,
        cmdline: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let stage2 = read_input("stage2", stage2, up::STAGE2_MAX)?;
        let kernel = read_input("kernel", kernel, up::KERNEL_MAX)?;
        if !kernel.starts_with(b"\x7fELF") {
            return Err(BadInput(
                "--kernel: not an ELF image (give the uncompressed vmlinux, not a bzImage)".into(),
            )
            .into());
        }
        let initrd = match initrd {
            Some(p) => read_input("initrd", p, up::INITRD_MAX)?,
            None => Vec::new(),
        };
        if cmdline.len() > up::CMDLINE_MAX as usize {
            return Err(BadInput(format!(
                "--cmdline: {} bytes, at most {}",
                cmdline.len(),
                up::CMDLINE_MAX
            ))
            .into());
        }
        up::check_cmdline(cmdline.as_bytes()).map_err(|e| BadInput(format!("--cmdline: {e}")))?;
        Ok(Upload {
            stage2,
            kernel,
            initrd,
            cmdline: cmdline.as_bytes().to_vec(),
            timeout,
        })
    }

    pub fn stage2_sha1(&self) -> [u8; 20] {
        use sha1::Digest;
        sha1::Sha1::digest(&self.stage2).into()
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// Run both uploads on `conn` (connected to the loader). Returns the steps as JSON:
/// `stage2_ms` (upload and verification), `stage2_sha1`, `kernel_ms` (greeting to the last
/// acknowledgement), `bytes`, `handover_ms` (the builder's start to the connection's close).
pub fn run(conn: TcpStream, u: &Upload, quiet: bool) -> anyhow::Result<serde_json::Value> {
    let mut steps = json!({});
    let fail = |kind, message: String, steps: &serde_json::Value| UploadFailed {
        kind,
        message,
        steps: steps.clone(),
    };
    conn.set_nodelay(true).ok();
    conn.set_read_timeout(Some(u.timeout))
        .context("setting the read timeout")?;
    conn.set_write_timeout(Some(u.timeout))
        .context("setting the write timeout")?;
    let mut w = conn.try_clone().context("cloning the connection")?;
    let mut r = BufReader::new(conn);

    // Stage 1: header + binary, one verdict line.
    let t = Instant::now();
    let lost = |what: &str, e: std::io::Error, steps: &serde_json::Value| {
        fail("upload-lost", format!("{what}: {e}"), steps)
    };
    let sent = w
        .write_all(&up::stage1_header(u.stage2.len() as u32))
        .and_then(|_| w.write_all(&u.stage2));
    // Stage 1 may have refused early and closed: its line says why.
    let line = read_line(&mut r);
    if let (Err(e), Ok(l)) = (&sent, &line) {
        if !l.starts_with(up::STAGE1_REFUSED) {
            return Err(fail("upload-lost", format!("sending stage 2: {e}"), &steps).into());
        }
    }
    let line = line.map_err(|e| lost("waiting for stage 1's verdict", e, &steps))?;
    steps["stage2_ms"] = json!(ms(t.elapsed()));
    if let Some(sum) = line.strip_prefix(up::STAGE1_OK) {
        steps["stage2_sha1"] = json!(sum);
    } else {
        let m = line.strip_prefix(up::STAGE1_REFUSED).unwrap_or(&line);
        return Err(fail(
            "stage2-refused",
            format!("the loader refused stage 2: {m}"),
            &steps,
        )
        .into());
    }

    // Stage 2: greeting, three items each acknowledged, then `booting`.
    let t = Instant::now();
    let greet = read_line(&mut r).map_err(|e| lost("waiting for stage 2's greeting", e, &steps))?;
    let Some(arena) = greet.strip_prefix(up::STAGE2_READY) else {
        return Err(fail(
            "upload-refused",
            format!("stage 2 did not greet: {greet:?}"),
            &steps,
        )
        .into());
    };
    steps["stage2_greeting"] = json!(arena);
    let total = (u.kernel.len() + u.initrd.len() + u.cmdline.len()) as u64;
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("  uploading {bytes}/{total_bytes} {bar:30} {bytes_per_sec}")
            .expect("static template"),
    );
    for (item, data) in [
        (Item::Kernel, &u.kernel),
        (Item::Initrd, &u.initrd),
        (Item::Cmdline, &u.cmdline),
    ] {
        let tag = item.tag_str();
        w.write_all(&up::item_header(item, data.len() as u32))
            .map_err(|e| lost(tag, e, &steps))?;
        for c in data.chunks(64 * 1024) {
            if let Err(e) = w.write_all(c) {
                // Stage 2 may have refused and closed: its line says why.
                let why = read_line(&mut r).unwrap_or_default();
                let m = match why.strip_prefix(up::ERROR) {
                    Some(m) => {
                        return Err(fail("upload-refused", format!("stage 2: {m}"), &steps).into())
                    }
                    None => format!("sending {tag}: {e}"),
                };
                return Err(fail("upload-lost", m, &steps).into());
            }
            bar.inc(c.len() as u64);
        }
        let ack = read_line(&mut r).map_err(|e| lost(tag, e, &steps))?;
        let want = format!("{}{tag} {}", up::ITEM_OK, data.len());
        if ack != want {
            let m = ack.strip_prefix(up::ERROR).unwrap_or(&ack);
            return Err(fail("upload-refused", format!("stage 2: {m}"), &steps).into());
        }
    }
    bar.finish_and_clear();
    steps["kernel_ms"] = json!(ms(t.elapsed()));
    steps["bytes"] = json!(total);

    let t = Instant::now();
    let line = read_line(&mut r).map_err(|e| lost("waiting for `booting`", e, &steps))?;
    if line != up::BOOTING {
        let m = line.strip_prefix(up::ERROR).unwrap_or(&line);
        return Err(fail("upload-refused", format!("stage 2: {m}"), &steps).into());
    }
    // The builder's verdict: an error line, or the connection closes at the hand-over.
    match read_line(&mut r) {
        Ok(l) if l.is_empty() => {}
        Ok(l) => {
            steps["handover_ms"] = json!(ms(t.elapsed()));
            let m = l.strip_prefix(up::ERROR).unwrap_or(&l);
            return Err(fail("upload-refused", format!("stage 2: {m}"), &steps).into());
        }
        // Stage 1 resets the connection once the FIN went out: also the hand-over.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => return Err(lost("waiting for the hand-over", e, &steps).into()),
    }
    steps["handover_ms"] = json!(ms(t.elapsed()));
    Ok(steps)
}

/// One answer line without its `\n`; "" at end of stream. Bounded by the protocol's LINE_MAX.
fn read_line(r: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut buf = Vec::new();
    r.by_ref()
        .take(up::LINE_MAX as u64)
        .read_until(b'\n', &mut buf)?;
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if !buf.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "answer line too long or cut short",
        ));
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A fake loader for the client's tests (a test double, not the real stages): it speaks
    /// docs/bootstrap.md §1-§2 with `want` as its stage2-sha1 and `boot_error` as the builder's
    /// answer (None: the connection closes, as at a hand-over).
    fn fake_loader(want: [u8; 20], boot_error: Option<&'static str>) -> TcpStream {
        use sha1::Digest;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut h = [0u8; up::STAGE1_HEADER_LEN];
            c.read_exact(&mut h).unwrap();
            let mut s2 = vec![0; up::parse_stage1_header(&h).unwrap() as usize];
            c.read_exact(&mut s2).unwrap();
            let sum: [u8; 20] = sha1::Sha1::digest(&s2).into();
            if sum != want {
                c.write_all(b"stage2 refused: sha1 does not match\n")
                    .unwrap();
                return;
            }
            c.write_all(b"stage2 ok sha1=x\nstage2 ready arena=1000000\n")
                .unwrap();
            for item in Item::ALL {
                let mut h = [0u8; up::ITEM_HEADER_LEN];
                c.read_exact(&mut h).unwrap();
                let n = match up::parse_item_header(&h, item) {
                    Ok(n) => n,
                    Err(e) => {
                        c.write_all(format!("error {e}\n").as_bytes()).unwrap();
                        return;
                    }
                };
                let mut b = vec![0; n as usize];
                c.read_exact(&mut b).unwrap();
                c.write_all(format!("ok {} {n}\n", item.tag_str()).as_bytes())
                    .unwrap();
            }
            c.write_all(b"booting\n").unwrap();
            if let Some(e) = boot_error {
                c.write_all(format!("error boot: {e}\n").as_bytes())
                    .unwrap();
            }
        });
        TcpStream::connect(addr).unwrap()
    }

    fn upload() -> Upload {
        Upload {
            stage2: b"\xeb\xfe".to_vec(),
            kernel: b"\x7fELF....".to_vec(),
            initrd: vec![7; 100_000],
            cmdline: b"quiet".to_vec(),
            timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn full_upload_reports_every_step() {
        let u = upload();
        let steps = run(fake_loader(u.stage2_sha1(), None), &u, true).unwrap();
        for k in ["stage2_ms", "kernel_ms", "handover_ms"] {
            assert!(steps[k].as_f64().unwrap() >= 0.0, "{k} in {steps}");
        }
        assert_eq!(steps["bytes"], 8 + 100_000 + 5);
        assert_eq!(steps["stage2_greeting"], "arena=1000000");
    }

    #[test]
    fn wrong_checksum_is_stage2_refused() {
        let u = upload();
        let e = run(fake_loader([0; 20], None), &u, true).unwrap_err();
        let f = e.downcast_ref::<UploadFailed>().unwrap();
        assert_eq!(f.kind, "stage2-refused");
        assert!(f.message.contains("sha1 does not match"), "{}", f.message);
        assert!(f.steps["stage2_ms"].is_number());
    }

    #[test]
    fn builder_error_is_upload_refused() {
        let u = upload();
        let e = run(fake_loader(u.stage2_sha1(), Some("no builder")), &u, true).unwrap_err();
        let f = e.downcast_ref::<UploadFailed>().unwrap();
        assert_eq!(f.kind, "upload-refused");
        assert_eq!(f.message, "stage 2: boot: no builder");
        assert!(f.steps["kernel_ms"].is_number());
    }

    #[test]
    fn bad_inputs_are_refused_before_sending() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str, b: &[u8]| {
            let p = d.path().join(n);
            std::fs::write(&p, b).unwrap();
            p
        };
        let s2 = p("s2", b"\xeb\xfe");
        let elf = p("k", b"\x7fELF");
        let t = Duration::from_secs(1);
        let msg = |r: anyhow::Result<Upload>| r.err().unwrap().to_string();
        assert!(msg(Upload::load(&d.path().join("nope"), &elf, None, "", t)).contains("--stage2"));
        assert!(msg(Upload::load(&s2, &p("bz", b"MZ.."), None, "", t)).contains("not an ELF"));
        assert!(msg(Upload::load(&s2, &p("e", b""), None, "", t)).contains("empty"));
        let big = p("big", &vec![0; up::STAGE2_MAX as usize + 1]);
        assert!(msg(Upload::load(&big, &elf, None, "", t)).contains("the most a loader accepts"));
        assert!(msg(Upload::load(&s2, &elf, None, &"x".repeat(1024), t)).contains("at most 1023"));
        assert!(msg(Upload::load(&s2, &elf, None, "a\0b", t)).contains("NUL"));
        let ok = Upload::load(&s2, &elf, Some(&p("i", b"")), "quiet", t).unwrap();
        assert_eq!(ok.initrd.len(), 0);
    }
}
