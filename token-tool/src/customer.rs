//! `token-tool boot`: the customer's side of the boot-token exchange (docs/packetd.md §3).
//! It sends the token in an ICMP echo request, waits for packetd's answer (resending the same
//! token, which packetd recognises, until one arrives), then waits until the loader domain
//! accepts TCP connections at the address in the answer. With `--stage2`, it then uploads
//! stage 2 and the kernel on that connection (`bootupload`).

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use token_tool::bootproto::{self as bp, BootReply, Status};

/// The node answered, but not with "accepted".
#[derive(Debug, thiserror::Error)]
#[error("node {host} did not start the VM: {status:?}")]
pub struct NotAccepted {
    pub host: Ipv4Addr,
    pub status: Status,
    pub reason: &'static str,
}

/// No answer in time, or the loader never listened.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TimedOut(pub String);

pub struct BootArgs {
    pub host: Ipv4Addr,
    pub token: Vec<u8>,
    pub retry: Duration,
    pub timeout: Duration,
    pub listen_timeout: Duration,
    /// Stage 2, kernel, initramfs, command line to upload once the loader listens.
    pub upload: Option<crate::bootupload::Upload>,
}

pub fn boot(json: bool, mut a: BootArgs) -> anyhow::Result<()> {
    // Parse locally first: a malformed file is the customer's mistake, not the node's.
    let (t, _) = token_tool::BootToken::decode_unverified(&a.token)?;
    let echo = bp::echo_of(&a.token);
    let t0 = Instant::now();
    let (reply, tries) =
        crate::echo::exchange(a.host, &a.token, a.retry, a.timeout, "answer", |p| {
            BootReply::decode(p).ok().filter(|r| r.echo == echo)
        })?;
    let answer_ms = t0.elapsed().as_secs_f64() * 1e3;
    if reply.status != Status::Accepted {
        let err = NotAccepted {
            host: a.host,
            status: reply.status,
            reason: reply.reason_name(),
        };
        return Err(err.into());
    }
    let addr = Ipv4Addr::from(reply.addr);
    let mut listening_ms = None;
    let mut conn = None;
    if !a.listen_timeout.is_zero() {
        let target = SocketAddrV4::new(addr, reply.port).into();
        loop {
            if let Ok(c) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                listening_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
                conn = Some(c);
                break;
            }
            if t0.elapsed() >= a.listen_timeout {
                let m = format!(
                    "the loader at {addr}:{} did not listen in {:?}",
                    reply.port, a.listen_timeout
                );
                return Err(TimedOut(m).into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let mut steps = None;
    if let (Some(u), Some(c)) = (&mut a.upload, conn) {
        if u.stage2_sha1() != t.loader_sha1 {
            eprintln!(
                "token-tool: warning: stage 2's SHA-1 {} is not the token's {}: the loader will refuse it",
                token_tool::to_hex(&u.stage2_sha1()),
                token_tool::to_hex(&t.loader_sha1)
            );
        }
        let base = json!({"job": t.job_id, "addr": addr.to_string(), "domid": reply.domid,
            "answer_ms": (answer_ms * 10.0).round() / 10.0,
            "listening_ms": listening_ms.map(|m| (m * 10.0).round() / 10.0)});
        match crate::bootupload::run(c, u, json) {
            Ok(s) => steps = Some(s),
            Err(mut e) => {
                if let Some(f) = e.downcast_mut::<crate::bootupload::UploadFailed>() {
                    merge(&mut f.steps, &base);
                    f.steps["total_ms"] = json!((t0.elapsed().as_secs_f64() * 1e4).round() / 10.0);
                }
                return Err(e);
            }
        }
    }
    let total_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut v = json!({
        "ok": true, "host": a.host.to_string(), "job": t.job_id, "status": "accepted",
        "addr": addr.to_string(), "port": reply.port, "domid": reply.domid,
        "balance": reply.balance, "tries": tries,
        "answer_ms": (answer_ms * 10.0).round() / 10.0,
        "listening_ms": listening_ms.map(|m| (m * 10.0).round() / 10.0),
    });
    if let Some(s) = &steps {
        merge(&mut v, s);
        v["total_ms"] = json!((total_ms * 10.0).round() / 10.0);
    }
    if json {
        println!("{v}");
    } else {
        println!(
            "job {} accepted by {}: domain {} at {addr}:{}, balance {}",
            t.job_id, a.host, reply.domid, reply.port, reply.balance
        );
        println!("  answer after {answer_ms:.1} ms ({tries} request(s))");
        if let Some(m) = listening_ms {
            println!("  loader listening after {m:.1} ms");
        }
        if let Some(s) = &steps {
            let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "  stage 2 uploaded and verified in {:.1} ms (sha1 {})",
                f("stage2_ms"),
                s["stage2_sha1"].as_str().unwrap_or("?")
            );
            if s["compress_ms"].is_number() {
                println!(
                    "  compressed in the background in {:.1} ms (the upload waited {:.1} ms for it)",
                    f("compress_ms"),
                    f("compress_wait_ms")
                );
            }
            println!(
                "  kernel, initramfs and command line ({} bytes, {} on the wire as {}) uploaded in {:.1} ms",
                s["bytes"],
                s["wire_bytes"],
                s["items"].as_array().map(|a| a.iter().filter_map(|t| t.as_str()).collect::<Vec<_>>().join("+")).unwrap_or_default(),
                f("kernel_ms")
            );
            println!("  boot hand-over after {:.1} ms", f("handover_ms"));
            println!("  total {total_ms:.1} ms from the first request");
        }
    }
    Ok(())
}

/// Copy `from`'s fields into the object `into`.
fn merge(into: &mut serde_json::Value, from: &serde_json::Value) {
    if let (Some(i), Some(f)) = (into.as_object_mut(), from.as_object()) {
        for (k, v) in f {
            i.insert(k.clone(), v.clone());
        }
    }
}
