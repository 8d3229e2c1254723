//! The paper's story through the real CLI (buy 10, boot, buy 10 more, top up, consume,
//! refund), then every attack, each refused with its own error code and exit status 3.

mod common;
use common::{ok, refused, tt};

use std::path::Path;
use token_tool::{from_hex, BootToken, TopUp};

fn setup(d: &Path) {
    ok(d, &["broker", "--db", "b.db", "init"]);
    ok(
        d,
        &[
            "broker",
            "--db",
            "b.db",
            "add-node",
            "--node-id",
            "1",
            "--secret-out",
            "n1.secret",
        ],
    );
    ok(
        d,
        &[
            "node",
            "--state",
            "node1",
            "init",
            "--node-id",
            "1",
            "--secret-file",
            "n1.secret",
        ],
    );
    let j = ok(
        d,
        &[
            "broker",
            "--db",
            "b.db",
            "mint",
            "--node-id",
            "1",
            "--length",
            "5000",
            "--max-topup",
            "10",
        ],
    );
    assert_eq!(j["job"]["job_id"], 1);
    std::fs::write(d.join("loader.bin"), b"stage-2 loader").unwrap();
}

fn boot_token(d: &Path, job: &str, out: &str, extra: &[&str]) {
    let mut args = vec![
        "broker",
        "--db",
        "b.db",
        "boot-token",
        "--job",
        job,
        "--memory-mib",
        "128",
        "--vcpus",
        "1",
        "--loader-file",
        "loader.bin",
        "--extent",
        "0:2048:4096:rw",
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    ok(d, &args);
}

fn balance(d: &Path, job: &str) -> u64 {
    ok(d, &["node", "--state", "node1", "balance", "--job", job])["jobs"][0]["balance"]
        .as_u64()
        .unwrap()
}

#[test]
fn paper_story_end_to_end() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);

    // Buy 10 and boot.
    let s1 = ok(
        d,
        &[
            "broker",
            "--db",
            "b.db",
            "sell",
            "--job",
            "1",
            "--count",
            "10",
            "--payment-ref",
            "pay-1",
            "--out",
            "s1.json",
        ],
    );
    assert_eq!(s1["sale"]["from"], 0);
    ok(d, &["wallet", "--wallet", "w.json", "add", "s1.json"]);
    boot_token(d, "1", "boot.bin", &[]);
    let bytes = std::fs::read(d.join("boot.bin")).unwrap();
    assert!(bytes.len() <= 1472, "fits one ICMP echo payload");
    ok(d, &["wallet", "--wallet", "w.json", "boot", "boot.bin"]);
    let v = ok(d, &["node", "--state", "node1", "verify", "boot.bin"]);
    assert_eq!(v["kind"], "boot");
    assert_eq!(balance(d, "1"), 10);

    // Buy 10 more and top up.
    ok(
        d,
        &[
            "broker",
            "--db",
            "b.db",
            "sell",
            "--job",
            "1",
            "--count",
            "10",
            "--payment-ref",
            "pay-2",
            "--out",
            "s2.json",
        ],
    );
    ok(d, &["wallet", "--wallet", "w.json", "add", "s2.json"]);
    ok(
        d,
        &[
            "wallet",
            "--wallet",
            "w.json",
            "next-topup",
            "--job",
            "1",
            "--out",
            "t1.bin",
        ],
    );
    // The first copy is "lost"; the wallet writes it again.
    std::fs::remove_file(d.join("t1.bin")).unwrap();
    ok(
        d,
        &[
            "wallet",
            "--wallet",
            "w.json",
            "next-topup",
            "--job",
            "1",
            "--out",
            "t1.bin",
            "--resend",
        ],
    );
    let v = ok(d, &["node", "--state", "node1", "verify", "t1.bin"]);
    assert_eq!(v["kind"], "top-up");
    // Nothing left to send until the next purchase.
    let r = common::tt(
        d,
        &[
            "wallet",
            "--wallet",
            "w.json",
            "next-topup",
            "--job",
            "1",
            "--out",
            "t9.bin",
        ],
    );
    assert_eq!(
        (r.code, r.json["error"].as_str()),
        (3, Some("wallet-state"))
    );
    assert_eq!(balance(d, "1"), 20);

    // Consume.
    let c = ok(
        d,
        &[
            "node", "--state", "node1", "consume", "--job", "1", "--tokens", "7",
        ],
    );
    assert_eq!(c["debit"]["balance"], 13);

    // Buy 10 more that never reach the node, then refund: 13 unspent + 10 undelivered.
    ok(
        d,
        &[
            "broker",
            "--db",
            "b.db",
            "sell",
            "--job",
            "1",
            "--count",
            "10",
            "--payment-ref",
            "pay-3",
            "--out",
            "s3.json",
        ],
    );
    ok(
        d,
        &[
            "node", "--state", "node1", "redeem", "--job", "1", "--out", "cert.bin",
        ],
    );
    let r = ok(d, &["broker", "--db", "b.db", "redeem", "cert.bin"]);
    assert_eq!(r["refund"]["tokens"], 23);
    assert_eq!(r["refund"]["unspent"], 13);
    assert_eq!(r["refund"]["undelivered"], 10);

    // Refund exactly once; the closed job takes nothing more.
    refused(
        d,
        &["broker", "--db", "b.db", "redeem", "cert.bin"],
        "already-refunded",
    );
    ok(d, &["wallet", "--wallet", "w.json", "add", "s3.json"]);
    ok(
        d,
        &[
            "wallet",
            "--wallet",
            "w.json",
            "next-topup",
            "--job",
            "1",
            "--out",
            "t2.bin",
        ],
    );
    refused(
        d,
        &["node", "--state", "node1", "verify", "t2.bin"],
        "job-closed",
    );
    ok(d, &["broker", "--db", "b.db", "check"]);
}

#[test]
fn every_attack_is_refused_with_its_own_error() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let node = |f: &str| {
        vec!["node", "--state", "node1", "verify", f]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let refuse = |file: &str, code: &str| {
        let a = node(file);
        let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        refused(d, &a, code)
    };

    ok(
        d,
        &[
            "broker",
            "--db",
            "b.db",
            "sell",
            "--job",
            "1",
            "--count",
            "10",
            "--payment-ref",
            "p1",
            "--out",
            "s1.json",
        ],
    );
    boot_token(d, "1", "boot.bin", &[]);
    let genuine = std::fs::read(d.join("boot.bin")).unwrap();

    // Counterfeit: a well-formed token for this node signed with a guessed secret.
    let (mut forged, _) = BootToken::decode_unverified(&genuine).unwrap();
    forged.job_id = 99;
    forged.memory_mib = 65536;
    std::fs::write(
        d.join("forged.bin"),
        forged.encode(b"guessed-secret-123456").unwrap(),
    )
    .unwrap();
    let msg = refuse("forged.bin", "bad-mac");
    assert!(msg.contains("HMAC"), "{msg}");
    // Tampered: the genuine token with more memory asked for.
    let mut tampered = genuine.clone();
    tampered[13] ^= 0x40;
    std::fs::write(d.join("tampered.bin"), &tampered).unwrap();
    refuse("tampered.bin", "bad-mac");

    // Token for another node: genuine, signed for node 2.
    ok(
        d,
        &[
            "broker",
            "--db",
            "b.db",
            "add-node",
            "--node-id",
            "2",
            "--secret-out",
            "n2.secret",
        ],
    );
    ok(
        d,
        &[
            "broker",
            "--db",
            "b.db",
            "mint",
            "--node-id",
            "2",
            "--length",
            "100",
            "--max-topup",
            "10",
        ],
    );
    ok(
        d,
        &[
            "broker",
            "--db",
            "b.db",
            "sell",
            "--job",
            "2",
            "--count",
            "5",
            "--payment-ref",
            "p-node2",
        ],
    );
    boot_token(d, "2", "boot-node2.bin", &[]);
    let msg = refuse("boot-node2.bin", "wrong-node");
    assert!(msg.contains("node 2"), "{msg}");

    // Expired: genuine token whose expiry has passed.
    ok(
        d,
        &[
            "broker",
            "--db",
            "b.db",
            "mint",
            "--node-id",
            "1",
            "--length",
            "100",
            "--max-topup",
            "10",
        ],
    );
    ok(
        d,
        &[
            "broker",
            "--db",
            "b.db",
            "sell",
            "--job",
            "3",
            "--count",
            "5",
            "--payment-ref",
            "p-exp",
        ],
    );
    boot_token(d, "3", "expired.bin", &["--expires-at", "1000"]);
    refuse("expired.bin", "expired");

    // Truncated, oversized and random bytes.
    std::fs::write(d.join("trunc.bin"), &genuine[..genuine.len() - 7]).unwrap();
    refuse("trunc.bin", "truncated");
    std::fs::write(d.join("trunc2.bin"), &genuine[..20]).unwrap();
    refuse("trunc2.bin", "truncated");
    let mut long = genuine.clone();
    long.extend_from_slice(&[0; 24]);
    std::fs::write(d.join("over.bin"), &long).unwrap();
    refuse("over.bin", "oversized");
    std::fs::write(d.join("huge.bin"), vec![0x4c; 4000]).unwrap();
    refuse("huge.bin", "oversized");
    let mut x = 0x9e3779b97f4a7c15u64;
    let random: Vec<u8> = (0..160)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(d.join("random.bin"), &random).unwrap();
    refuse("random.bin", "bad-magic");
    std::fs::write(d.join("empty.bin"), b"").unwrap();
    refuse("empty.bin", "truncated");

    // None of that opened a job or changed anything.
    assert_eq!(
        ok(d, &["node", "--state", "node1", "balance"])["jobs"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // The genuine token works once; the second time it is refused.
    ok(d, &["node", "--state", "node1", "verify", "boot.bin"]);
    refuse("boot.bin", "boot-token-reused");

    // Two more purchases of 10 (bound 10). Skipping the first: 20 steps > bound.
    let s2 = ok(
        d,
        &[
            "broker",
            "--db",
            "b.db",
            "sell",
            "--job",
            "1",
            "--count",
            "10",
            "--payment-ref",
            "p2",
            "--out",
            "s2.json",
        ],
    );
    let s3 = ok(
        d,
        &[
            "broker",
            "--db",
            "b.db",
            "sell",
            "--job",
            "1",
            "--count",
            "10",
            "--payment-ref",
            "p3",
            "--out",
            "s3.json",
        ],
    );
    let val = |s: &serde_json::Value| -> [u8; 20] {
        from_hex(s["sale"]["value"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap()
    };
    let skip = TopUp {
        node_id: 1,
        job_id: 1,
        count: 20,
        value: val(&s3),
    };
    std::fs::write(d.join("skip.bin"), skip.encode()).unwrap();
    let msg = refuse("skip.bin", "skip-past-bound");
    assert!(msg.contains("bound of 10"), "{msg}");
    // Lying about the count to stay under the bound does not help either.
    let lie = TopUp {
        count: 10,
        ..skip.clone()
    };
    std::fs::write(d.join("lie.bin"), lie.encode()).unwrap();
    refuse("lie.bin", "chain-mismatch");
    // A made-up value.
    let fake = TopUp {
        node_id: 1,
        job_id: 1,
        count: 5,
        value: [0x33; 20],
    };
    std::fs::write(d.join("fake.bin"), fake.encode()).unwrap();
    refuse("fake.bin", "chain-mismatch");

    // In order they go through; a replay of either is refused, also after a "restart"
    // (every CLI call is a fresh process reading the ledger from disk).
    let t2 = TopUp {
        node_id: 1,
        job_id: 1,
        count: 10,
        value: val(&s2),
    };
    std::fs::write(d.join("t2.bin"), t2.encode()).unwrap();
    let t3 = TopUp {
        node_id: 1,
        job_id: 1,
        count: 10,
        value: val(&s3),
    };
    std::fs::write(d.join("t3.bin"), t3.encode()).unwrap();
    ok(d, &["node", "--state", "node1", "verify", "t2.bin"]);
    ok(d, &["node", "--state", "node1", "verify", "t3.bin"]);
    refuse("t2.bin", "replay");
    refuse("t3.bin", "replay");
    // The boot token's first value resent as a top-up.
    let (bt, _) = BootToken::decode_unverified(&genuine).unwrap();
    let t1 = TopUp {
        node_id: 1,
        job_id: 1,
        count: 10,
        value: bt.first,
    };
    std::fs::write(d.join("t1.bin"), t1.encode()).unwrap();
    refuse("t1.bin", "replay");
    // A top-up for another node's job, and for an unknown job.
    let other = TopUp {
        node_id: 2,
        ..t3.clone()
    };
    std::fs::write(d.join("other.bin"), other.encode()).unwrap();
    refuse("other.bin", "wrong-node");
    let unknown = TopUp {
        job_id: 77,
        ..t3.clone()
    };
    std::fs::write(d.join("unknown.bin"), unknown.encode()).unwrap();
    refuse("unknown.bin", "unknown-job");
    assert_eq!(balance(d, "1"), 30);

    // A forged certificate (unspent balance raised from 20 to 30) is refused by the broker.
    ok(
        d,
        &[
            "node", "--state", "node1", "consume", "--job", "1", "--tokens", "10",
        ],
    );
    ok(
        d,
        &[
            "node", "--state", "node1", "redeem", "--job", "1", "--out", "cert.bin",
        ],
    );
    let mut cert = std::fs::read(d.join("cert.bin")).unwrap();
    assert_eq!(cert[35], 20);
    cert[35] = 30;
    std::fs::write(d.join("cert-forged.bin"), &cert).unwrap();
    refused(
        d,
        &["broker", "--db", "b.db", "redeem", "cert-forged.bin"],
        "bad-mac",
    );
    let r = ok(d, &["broker", "--db", "b.db", "redeem", "cert.bin"]);
    assert_eq!(r["refund"]["tokens"], 20);
}

#[test]
fn exit_codes_for_usage_exhaustion_and_environment() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // Usage: unknown subcommand, bad extent syntax.
    assert_eq!(tt(d, &["node", "--state", "x", "frobnicate"]).code, 2);
    setup(d);
    ok(
        d,
        &[
            "broker",
            "--db",
            "b.db",
            "sell",
            "--job",
            "1",
            "--count",
            "3",
            "--payment-ref",
            "p",
        ],
    );
    let r = tt(
        d,
        &[
            "broker",
            "--db",
            "b.db",
            "boot-token",
            "--job",
            "1",
            "--loader-file",
            "loader.bin",
            "--extent",
            "0:zz",
            "--out",
            "b.bin",
        ],
    );
    assert_eq!((r.code, r.json["error"].as_str()), (2, Some("usage")));
    // Environment: no broker database there.
    let r = tt(d, &["broker", "--db", "missing.db", "show"]);
    assert_eq!(
        (r.code, r.json["error"].as_str()),
        (1, Some("not-initialised"))
    );
    // Exhaustion: exit 4, balance debited to zero.
    boot_token(d, "1", "boot.bin", &[]);
    ok(d, &["node", "--state", "node1", "verify", "boot.bin"]);
    let r = tt(
        d,
        &[
            "node", "--state", "node1", "consume", "--job", "1", "--tokens", "5",
        ],
    );
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert_eq!(r.json["debit"]["balance"], 0);
    assert_eq!(r.json["debit"]["debited"], 3);
}
