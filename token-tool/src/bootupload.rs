//! `token-tool boot --stage2 S --kernel K`: the uploads after the loader listens
//! (docs/bootstrap.md §1, §2). On the loader's connection: the stage-2 binary, which stage 1
//! checks against the boot token's SHA-1; then, to stage 2, the kernel, the initramfs and the
//! command line, each acknowledged; then stage 2 starts the kernel, which closes the
//! connection. Each step is timed.
//!
//! The kernel (and an initramfs that is not compressed already) is zlib-compressed in a
//! thread started as soon as the files are read, so the work overlaps the wait for packetd's
//! answer and the loader; a stage 2 that greets with version 2 gets the compressed items
//! (`KERZ`, `INRZ`, docs/bootstrap.md §2.1), an older one the plain ones.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use loader_abi::upload::{self as up, Item};
use serde_json::json;

/// What to upload, read and checked before anything is sent.
pub struct Upload {
    pub stage2: Vec<u8>,
    pub kernel: Arc<[u8]>,
    pub initrd: Arc<[u8]>,
    pub cmdline: Vec<u8>,
    /// Longest wait for any one answer line (stage 1's verdict, stage 2's acks).
    pub timeout: Duration,
    /// The compression running in the background ([`Upload::start_packing`]).
    packer: Option<Receiver<Packed>>,
    /// Longest wait for it after stage 2's greeting ([`PACK_WAIT`]).
    pack_wait: Duration,
}

/// In the command line, replaced by the address the node gave the domain (the loader's
/// address, which the kernel keeps): the customer learns it only from the node's answer.
pub const ADDR: &str = "@ADDR@";

/// The zlib level the kernel is compressed with by default: the fastest. On the lab's
/// emulated dom0 the compression competes with the loaders for the CPU, and level 1 already
/// takes the 17.6 MB guest kernel to 4.4 MB (level 6: 3.8 MB in 8 times the time).
pub const DEFAULT_LEVEL: u8 = 1;

/// The compressed forms, where compressing pays.
#[derive(Default)]
pub struct Packed {
    pub kernel: Option<Vec<u8>>,
    pub initrd: Option<Vec<u8>>,
    /// Time the compression took (in the background).
    pub ms: f64,
}

/// Whether an initramfs is compressed already (gzip, xz, zstd, lz4, bzip2, lzma, lzo: what
/// Linux unpacks), so compressing it again would only cost time.
pub fn looks_compressed(b: &[u8]) -> bool {
    const MAGICS: [&[u8]; 7] = [
        b"\x1f\x8b",
        b"\xfd7zXZ\0",
        b"\x28\xb5\x2f\xfd",
        b"\x02\x21\x4c\x18",
        b"BZh",
        b"\x5d\0\0",
        b"\x89LZO",
    ];
    MAGICS.iter().any(|m| b.starts_with(m))
}

/// Longest wait, after stage 2's greeting, for a compression still running; stage 2 refuses
/// a connection idle for 30 s.
pub const PACK_WAIT: Duration = Duration::from_secs(10);

/// zlib at `level`, kept only when it saves at least 1/16 of the bytes.
fn pack(b: &[u8], level: u8) -> Option<Vec<u8>> {
    let z = miniz_oxide::deflate::compress_to_vec_zlib(b, level);
    (z.len() + up::ZLIB_PREFIX_LEN < b.len() - b.len() / 16).then_some(z)
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
        // Room for the longest address in place of each placeholder.
        let longest = cmdline.len() + cmdline.matches(ADDR).count() * (15 - ADDR.len());
        if longest > up::CMDLINE_MAX as usize {
            return Err(BadInput(format!(
                "--cmdline: {longest} bytes (with {ADDR} as the longest address), at most {}",
                up::CMDLINE_MAX
            ))
            .into());
        }
        up::check_cmdline(cmdline.as_bytes()).map_err(|e| BadInput(format!("--cmdline: {e}")))?;
        Ok(Upload {
            stage2,
            kernel: kernel.into(),
            initrd: initrd.into(),
            cmdline: cmdline.as_bytes().to_vec(),
            timeout,
            packer: None,
            pack_wait: PACK_WAIT,
        })
    }

    /// Start compressing the kernel, and the initramfs unless [`looks_compressed`], in a
    /// thread at zlib `level` (1..=9); [`run`] takes the result when stage 2 can use it.
    pub fn start_packing(&mut self, level: u8) {
        let (k, i) = (self.kernel.clone(), self.initrd.clone());
        let (tx, rx) = mpsc::channel();
        self.packer = Some(rx);
        std::thread::spawn(move || {
            let t = Instant::now();
            let kernel = pack(&k, level);
            let initrd = (!i.is_empty() && !looks_compressed(&i))
                .then(|| pack(&i, level))
                .flatten();
            // The upload may have gone on without it (PACK_WAIT).
            let _ = tx.send(Packed {
                kernel,
                initrd,
                ms: ms(t.elapsed()),
            });
        });
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
/// `stage2_ms` (upload and verification), `stage2_sha1`, `compress_ms` (the background
/// compression's own time) and `compress_wait_ms` (how long the upload still waited for it),
/// `kernel_ms` (greeting to the last acknowledgement, the wait included), `acks_ms` (each
/// item's acknowledgement, from the greeting), `items` (the tags sent), `bytes` (inflated) and
/// `wire_bytes` (sent), `handover_ms` (the builder's start to the connection's close).
pub fn run(conn: TcpStream, u: &mut Upload, quiet: bool) -> anyhow::Result<serde_json::Value> {
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
    // The loader's address, for @ADDR@ in the command line (taken now: a connection that
    // breaks later no longer has a peer).
    let peer = conn
        .peer_addr()
        .context("the loader's address")?
        .ip()
        .to_string();
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
    // Version 2 takes compressed items: wait for the compression if it is still running,
    // but not so long that stage 2 gives up on an idle connection: past PACK_WAIT the plain
    // items go.
    let packed = match u.packer.take() {
        Some(rx) if up::greeting_version(arena) >= 2 => {
            let w = Instant::now();
            let p = match rx.recv_timeout(u.pack_wait) {
                Ok(p) => {
                    steps["compress_ms"] = json!(p.ms);
                    p
                }
                Err(RecvTimeoutError::Timeout) => {
                    steps["compress_ms"] = json!(null);
                    Packed::default()
                }
                Err(RecvTimeoutError::Disconnected) => {
                    anyhow::bail!("the compression thread ended without a result")
                }
            };
            steps["compress_wait_ms"] = json!(ms(w.elapsed()));
            p
        }
        _ => Packed::default(),
    };
    let kernel = Wire::of(Item::Kernel, &u.kernel, packed.kernel.as_deref());
    let initrd = Wire::of(Item::Initrd, &u.initrd, packed.initrd.as_deref());
    let line = String::from_utf8_lossy(&u.cmdline).replace(ADDR, &peer);
    let cmdline = Wire::of(Item::Cmdline, line.as_bytes(), None);
    let total = (kernel.body.len() + initrd.body.len() + cmdline.body.len()) as u64;
    steps["acks_ms"] = json!({});
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("  uploading {bytes}/{total_bytes} {bar:30} {bytes_per_sec}")
            .expect("static template"),
    );
    // The items go back to back: stage 2 reads them in order, so waiting for each
    // acknowledgement would only leave the link idle between items. A reader thread takes the
    // acknowledgements as they come, timed; the first unexpected line ends it.
    let items = [&kernel, &initrd, &cmdline];
    let (acks, sent) = std::thread::scope(|sc| {
        let r = &mut r;
        let reader = sc.spawn(move || {
            let mut got = Vec::new();
            for it in items {
                match read_line(r) {
                    Ok(l) => {
                        let ok = l == it.ack;
                        got.push((l, ms(t.elapsed())));
                        if !ok {
                            return (got, None);
                        }
                    }
                    Err(e) => return (got, Some(e)),
                }
            }
            (got, None)
        });
        let mut send = || -> Result<(), (&'static str, std::io::Error)> {
            for it in items {
                w.write_all(&it.header).map_err(|e| (it.tag, e))?;
                for c in it.body.chunks(64 * 1024) {
                    w.write_all(c).map_err(|e| (it.tag, e))?;
                    bar.inc(c.len() as u64);
                }
            }
            Ok(())
        };
        let sent = send();
        (
            reader.join().expect("the acknowledgement reader panicked"),
            sent,
        )
    });
    let (lines, read_err) = acks;
    for (it, (l, at)) in items.iter().zip(&lines) {
        if *l != it.ack {
            // Stage 2 refused (and closed): its line says why.
            let m = l.strip_prefix(up::ERROR).unwrap_or(l);
            let kind = if l.is_empty() {
                "upload-lost"
            } else {
                "upload-refused"
            };
            let m = if l.is_empty() {
                format!(
                    "the connection closed before the acknowledgement of {}",
                    it.tag
                )
            } else {
                format!("stage 2: {m}")
            };
            return Err(fail(kind, m, &steps).into());
        }
        steps["acks_ms"][it.tag] = json!(at);
    }
    if let Err((tag, e)) = sent {
        return Err(lost(&format!("sending {tag}"), e, &steps).into());
    }
    if let Some(e) = read_err {
        let tag = items[lines.len().min(2)].tag;
        return Err(lost(tag, e, &steps).into());
    }
    bar.finish_and_clear();
    steps["kernel_ms"] = json!(ms(t.elapsed()));
    steps["bytes"] = json!(kernel.plain_len + initrd.plain_len + cmdline.plain_len);
    steps["wire_bytes"] = json!(total);
    steps["items"] = json!([kernel.tag, initrd.tag, cmdline.tag]);

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

/// One item as it goes on the wire: header (with a compressed item's prefix), bytes, and the
/// acknowledgement stage 2 answers.
struct Wire<'a> {
    tag: &'static str,
    header: Vec<u8>,
    body: &'a [u8],
    plain_len: usize,
    ack: String,
}

impl<'a> Wire<'a> {
    fn of(item: Item, plain: &'a [u8], z: Option<&'a [u8]>) -> Self {
        let zh = z.and_then(|z| {
            Some((
                z,
                up::zitem_header(item, z.len() as u32, plain.len() as u32)?,
            ))
        });
        match zh {
            Some((z, h)) => {
                let tag = item.tag_str_of(up::Coding::Zlib);
                Wire {
                    tag,
                    header: h.to_vec(),
                    body: z,
                    plain_len: plain.len(),
                    ack: format!(
                        "{}{tag} {} {}",
                        up::ITEM_OK,
                        z.len() + up::ZLIB_PREFIX_LEN,
                        plain.len()
                    ),
                }
            }
            None => Wire {
                tag: item.tag_str(),
                header: up::item_header(item, plain.len() as u32).to_vec(),
                body: plain,
                plain_len: plain.len(),
                ack: format!("{}{} {}", up::ITEM_OK, item.tag_str(), plain.len()),
            },
        }
    }
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
    /// docs/bootstrap.md §1-§2 with `want` as its stage2-sha1, greets with `version`, inflates
    /// compressed items with stage 2's own receiver (`loader_abi::inflate`), and has
    /// `boot_error` as the builder's answer (None: the connection closes, as at a hand-over).
    /// The channel gets each item's tag and (inflated) bytes.
    fn fake_loader(
        want: [u8; 20],
        boot_error: Option<&'static str>,
        version: u32,
    ) -> (TcpStream, std::sync::mpsc::Receiver<(String, Vec<u8>)>) {
        fake_loader_refusing(want, boot_error, version, None)
    }

    /// The same, refusing `refuse` by its header (an error line and the connection closed
    /// without reading the item's bytes), as stage 2 does for an item that does not fit.
    fn fake_loader_refusing(
        want: [u8; 20],
        boot_error: Option<&'static str>,
        version: u32,
        refuse: Option<Item>,
    ) -> (TcpStream, std::sync::mpsc::Receiver<(String, Vec<u8>)>) {
        use sha1::Digest;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
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
            let v = if version >= 2 {
                format!(" version={version}")
            } else {
                String::new()
            };
            c.write_all(format!("stage2 ok sha1=x\nstage2 ready arena=1000000{v}\n").as_bytes())
                .unwrap();
            for item in Item::ALL {
                let mut h = [0u8; up::ITEM_HEADER_LEN];
                c.read_exact(&mut h).unwrap();
                let parsed = if version >= 2 {
                    up::parse_item_header_v2(&h, item)
                } else {
                    up::parse_item_header(&h, item).map(|n| (up::Coding::Plain, n))
                };
                let (coding, n) = match parsed {
                    Ok(x) => x,
                    Err(e) => {
                        c.write_all(format!("error {e}\n").as_bytes()).unwrap();
                        return;
                    }
                };
                if refuse == Some(item) {
                    let t = item.tag_str_of(coding);
                    c.write_all(format!("error {t} of {n} bytes does not fit\n").as_bytes())
                        .unwrap();
                    return;
                }
                let mut b = vec![0; n as usize];
                c.read_exact(&mut b).unwrap();
                let tag = item.tag_str_of(coding);
                let (data, ack) = match coding {
                    up::Coding::Plain => (b, format!("ok {tag} {n}\n")),
                    up::Coding::Zlib => {
                        let m = up::parse_zlib_prefix(&b, item).unwrap() as usize;
                        let mut out = vec![0; m];
                        let mut inf = loader_abi::inflate::Inflater::new(&mut out, b.len() - 4);
                        if let Err(e) = inf.feed(&b[4..]).and_then(|_| inf.finish().map(|_| ())) {
                            c.write_all(format!("error {tag}: {e}\n").as_bytes())
                                .unwrap();
                            return;
                        }
                        (out, format!("ok {tag} {n} {m}\n"))
                    }
                };
                tx.send((tag.to_string(), data)).unwrap();
                c.write_all(ack.as_bytes()).unwrap();
            }
            c.write_all(b"booting\n").unwrap();
            if let Some(e) = boot_error {
                c.write_all(format!("error boot: {e}\n").as_bytes())
                    .unwrap();
            }
        });
        (TcpStream::connect(addr).unwrap(), rx)
    }

    fn upload() -> Upload {
        // A kernel that compresses, an initramfs that does not (random bytes).
        let mut kernel = b"\x7fELF....".to_vec();
        for i in 0..50_000u32 {
            kernel.extend_from_slice(format!("symbol_{i} ").as_bytes());
        }
        let mut x = 0x9e37_79b9u32;
        let initrd: Vec<u8> = (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        Upload {
            stage2: b"\xeb\xfe".to_vec(),
            kernel: kernel.into(),
            initrd: initrd.into(),
            cmdline: b"quiet".to_vec(),
            timeout: Duration::from_secs(10),
            packer: None,
            pack_wait: PACK_WAIT,
        }
    }

    #[test]
    fn full_upload_reports_every_step() {
        let mut u = upload();
        let (c, rx) = fake_loader(u.stage2_sha1(), None, 1);
        let steps = run(c, &mut u, true).unwrap();
        for k in ["stage2_ms", "kernel_ms", "handover_ms"] {
            assert!(steps[k].as_f64().unwrap() >= 0.0, "{k} in {steps}");
        }
        let bytes = (u.kernel.len() + 100_000 + 5) as u64;
        assert_eq!(steps["bytes"], bytes);
        assert_eq!(steps["wire_bytes"], bytes);
        assert_eq!(steps["stage2_greeting"], "arena=1000000");
        assert_eq!(steps["items"], json!(["KERN", "INRD", "CMDL"]));
        let got: Vec<_> = rx.iter().collect();
        assert_eq!(got[0], ("KERN".to_string(), u.kernel.to_vec()));
    }

    #[test]
    fn version_2_gets_the_kernel_compressed_and_inflates_it_back() {
        for version in [1, 2] {
            let mut u = upload();
            u.start_packing(DEFAULT_LEVEL);
            let (c, rx) = fake_loader(u.stage2_sha1(), None, version);
            let steps = run(c, &mut u, true).unwrap();
            let got: Vec<_> = rx.iter().collect();
            let tags: Vec<_> = got.iter().map(|g| g.0.as_str()).collect();
            if version == 2 {
                // The random initramfs does not shrink: it goes as it is.
                assert_eq!(tags, ["KERZ", "INRD", "CMDL"]);
                assert!(steps["compress_ms"].is_number() && steps["compress_wait_ms"].is_number());
                assert!(steps["wire_bytes"].as_u64() < steps["bytes"].as_u64());
                assert!(steps["acks_ms"]["KERZ"].is_number());
            } else {
                // An old stage 2 gets plain items.
                assert_eq!(tags, ["KERN", "INRD", "CMDL"]);
                assert_eq!(steps["wire_bytes"], steps["bytes"]);
            }
            assert_eq!(got[0].1, u.kernel.to_vec());
            assert_eq!(got[1].1, u.initrd.to_vec());
            assert_eq!(got[2].1, b"quiet");
        }
    }

    #[test]
    fn a_compression_still_running_after_the_wait_is_left_behind() {
        let mut u = upload();
        let (tx, rx) = mpsc::channel();
        u.packer = Some(rx);
        u.pack_wait = Duration::from_millis(100);
        let (c, got) = fake_loader(u.stage2_sha1(), None, 2);
        let steps = run(c, &mut u, true).unwrap();
        assert!(steps["compress_ms"].is_null());
        assert!(steps["compress_wait_ms"].as_f64().unwrap() >= 100.0);
        assert_eq!(got.iter().next().unwrap().0, "KERN");
        drop(tx);
    }

    #[test]
    fn an_uncompressed_initramfs_is_compressed_a_gzip_one_is_not() {
        assert!(looks_compressed(b"\x1f\x8b\x08\x00"));
        assert!(looks_compressed(b"\xfd7zXZ\0..."));
        assert!(!looks_compressed(b"070701000000"));
        let mut u = upload();
        u.initrd = b"070701".repeat(20_000).into();
        u.start_packing(1);
        let (c, rx) = fake_loader(u.stage2_sha1(), None, 2);
        run(c, &mut u, true).unwrap();
        let got: Vec<_> = rx.iter().collect();
        assert_eq!(got[1], ("INRZ".to_string(), u.initrd.to_vec()));
        let mut gz = b"\x1f\x8b".to_vec();
        gz.resize(10_002, 0);
        u.initrd = gz.into();
        u.start_packing(1);
        let (c, rx) = fake_loader(u.stage2_sha1(), None, 2);
        run(c, &mut u, true).unwrap();
        assert_eq!(rx.iter().nth(1).unwrap().0, "INRD");
    }

    #[test]
    fn the_address_placeholder_becomes_the_loaders_address() {
        let mut u = upload();
        u.cmdline = b"console=hvc0 lab.ip=@ADDR@ x=@ADDR@".to_vec();
        let (c, rx) = fake_loader(u.stage2_sha1(), None, 2);
        run(c, &mut u, true).unwrap();
        let got: Vec<_> = rx.iter().collect();
        assert_eq!(got[2].1, b"console=hvc0 lab.ip=127.0.0.1 x=127.0.0.1");
    }

    #[test]
    fn a_refused_item_is_upload_refused_with_stage_2s_reason() {
        for (item, tag) in [(Item::Kernel, "KERZ"), (Item::Initrd, "INRD")] {
            let mut u = upload();
            // Big enough not to fit in the socket buffers while the item is refused.
            let mut k = u.kernel.to_vec();
            for i in 0..3_000_000u32 {
                k.push((i.wrapping_mul(2_654_435_761) >> 24) as u8);
            }
            u.kernel = k.into();
            u.start_packing(1);
            let (c, _rx) = fake_loader_refusing(u.stage2_sha1(), None, 2, Some(item));
            let e = run(c, &mut u, true).unwrap_err();
            let f = e.downcast_ref::<UploadFailed>().unwrap();
            assert_eq!(f.kind, "upload-refused", "{item:?}: {}", f.message);
            assert!(
                f.message.starts_with(&format!("stage 2: {tag} of ")),
                "{}",
                f.message
            );
        }
    }

    #[test]
    fn wrong_checksum_is_stage2_refused() {
        let mut u = upload();
        let (c, _rx) = fake_loader([0; 20], None, 2);
        let e = run(c, &mut u, true).unwrap_err();
        let f = e.downcast_ref::<UploadFailed>().unwrap();
        assert_eq!(f.kind, "stage2-refused");
        assert!(f.message.contains("sha1 does not match"), "{}", f.message);
        assert!(f.steps["stage2_ms"].is_number());
    }

    #[test]
    fn builder_error_is_upload_refused() {
        let mut u = upload();
        u.start_packing(1);
        let (c, _rx) = fake_loader(u.stage2_sha1(), Some("no builder"), 2);
        let e = run(c, &mut u, true).unwrap_err();
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
        let near = format!("{}{ADDR}", "x".repeat(1023 - 15));
        assert!(Upload::load(&s2, &elf, None, &near, t).is_ok());
        assert!(
            msg(Upload::load(&s2, &elf, None, &format!("x{near}"), t)).contains("longest address")
        );
        let ok = Upload::load(&s2, &elf, Some(&p("i", b"")), "quiet", t).unwrap();
        assert_eq!(ok.initrd.len(), 0);
    }
}
