//! packetd's packet path, billing and top-ups, driven through `Node` with a fake host (named
//! as such: it records toolstack calls instead of running `xl`).

use std::collections::BTreeMap;

use clap::Parser;
use inflate_core::xs::{XS_READ, XS_RM, XS_WRITE};
use packetd::config::Config;
use packetd::node::{Host, Node};
use token_tool::bootproto::{self as bp, BootReply, Status};
use token_tool::node::NodeLedger;
use token_tool::{BootToken, Chain, TopUp};

const SECRET: &[u8] = b"node-secret-for-tests";

#[derive(Default)]
struct FakeHost {
    /// Every command started: (job, script).
    scripts: Vec<(u64, String)>,
    /// Results the next `done` calls hand out.
    results: Vec<(u64, Result<String, String>)>,
    /// The xenstore.
    store: BTreeMap<String, String>,
}

impl Host for FakeHost {
    fn spawn(&mut self, job: u64, script: &str) -> Result<(), String> {
        self.scripts.push((job, script.into()));
        Ok(())
    }
    fn done(&mut self) -> Option<(u64, Result<String, String>)> {
        (!self.results.is_empty()).then(|| self.results.remove(0))
    }
    fn xs(&mut self, ty: u32, path: &str, value: &str) -> std::io::Result<Option<String>> {
        match ty {
            XS_READ => return Ok(self.store.get(path).cloned()),
            XS_WRITE => self.store.insert(path.into(), value.into()),
            XS_RM => self.store.remove(path),
            _ => panic!("unexpected xenstore request {ty}"),
        };
        Ok(None)
    }
}

impl FakeHost {
    fn get(&self, path: &str) -> &str {
        self.store.get(path).map_or("", |s| s.as_str())
    }
    /// Domain 5 exists.
    fn running(&mut self, domid: u32) {
        self.store
            .insert(format!("/local/domain/{domid}/name"), "x".into());
    }
}

fn config(state: &std::path::Path) -> Config {
    std::fs::write(
        state.join("t.cfg.in"),
        "name=@NAME@ mem=@MEMORY@ vcpus=@VCPUS@ cap=@CAP@ extra=@EXTRA@ mac=@MAC@ k=@KERNEL@",
    )
    .unwrap();
    let d = state.display();
    let args = format!(
        "packetd --state {d} --loader /l.elf --template {d}/t.cfg.in --pool 10.0.0.120/2 --port 7000 \
         --max-memory-mib 128 --mib-seconds-per-token 64 --grace-seconds 5 --rate-per-second 1 \
         --rate-burst 30 --run-dir {d}/run"
    );
    Config::try_parse_from(args.split_whitespace()).unwrap()
}

fn token(chain: &Chain, job: u64, node: u32, memory: u32, expiry: u64) -> Vec<u8> {
    BootToken {
        vcpus: 1,
        node_id: node,
        memory_mib: memory,
        job_id: job,
        expiry,
        count: 10,
        max_topup: 100,
        nonce: [job as u8; 16],
        anchor: chain.anchor(),
        first: chain.released_value(10).unwrap(),
        loader_sha1: [0; 20],
        extents: vec![],
    }
    .encode(SECRET)
    .unwrap()
}

fn ping(src: [u8; 4], seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut icmp = [0u8; 1500];
    let n = bp::write_echo(bp::ICMP_ECHO_REQUEST, 0x4242, seq, payload, &mut icmp).unwrap();
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
    p.extend_from_slice(&src);
    p.extend_from_slice(&[10, 0, 0, 2]);
    p.extend_from_slice(&icmp[..n]);
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p
}

fn reply(out: Option<([u8; 4], Vec<u8>)>) -> BootReply {
    let (_, icmp) = out.expect("a reply");
    assert_eq!(icmp[0], bp::ICMP_ECHO_REPLY);
    assert_eq!(bp::inet_checksum(&icmp), 0);
    BootReply::decode(&icmp[8..]).unwrap()
}

fn setup() -> (tempfile::TempDir, Node<FakeHost>, Chain) {
    let d = tempfile::tempdir().unwrap();
    let ledger = NodeLedger::create(d.path(), 2, SECRET).unwrap();
    let n = Node::new(config(d.path()), ledger, FakeHost::default(), 0);
    std::fs::create_dir_all(d.path().join("run")).unwrap();
    (d, n, Chain::mint([3; 20], 1000, 32, |_| {}).unwrap())
}

fn created_cfg(d: &std::path::Path, job: u64) -> String {
    std::fs::read_to_string(d.join(format!("run/lm-job{job}.cfg"))).unwrap()
}

#[test]
fn refusals_name_their_reason_and_the_node_keeps_serving() {
    let (d, mut n, c) = setup();
    let src = [10, 0, 0, 1];
    let good = token(&c, 7, 2, 64, 5_000);
    let mut forged = good.clone();
    forged[20] ^= 1;
    let cases: [(Vec<u8>, &str); 5] = [
        (forged, "bad-mac"),
        (token(&c, 8, 2, 64, 10), "expired"),
        (token(&c, 9, 3, 64, 5_000), "wrong-node"),
        (token(&c, 10, 2, 4096, 5_000), "over-limit"),
        (good[..100].to_vec(), "truncated"),
    ];
    for (i, (t, why)) in cases.iter().enumerate() {
        let r = reply(n.on_packet(&ping(src, i as u16, t), 0, 1_000));
        assert_eq!((r.status, r.reason_name()), (Status::Refused, *why));
    }
    assert!(n.host.scripts.is_empty());
    // A valid token: no answer until xl create finished.
    assert!(n.on_packet(&ping(src, 9, &good), 0, 1_000).is_none());
    let cfg_path = d.path().join("run/lm-job7.cfg");
    assert_eq!(
        n.host.scripts[0],
        (
            7,
            format!("xl create -q {} && xl domid lm-job7", cfg_path.display())
        )
    );
    let cfg = created_cfg(d.path(), 7);
    assert!(
        cfg.contains("mem=64 vcpus=1 cap=100 extra=ip=10.0.0.120 netmask=255.255.255.0 port=7000"),
        "{cfg}"
    );
    assert!(cfg.contains("mac=00:16:3e:4c:00:78"), "{cfg}");
    assert!(
        cfg.contains(&format!("stage2-sha1={}", "00".repeat(20))),
        "{cfg}"
    );
    // The loader's own command-line parser accepts what packetd writes.
    let extra = cfg.split("extra=").nth(1).unwrap();
    let net = inflate_core::cmdline::parse(extra.split(" mac=").next().unwrap()).unwrap();
    assert_eq!(
        (net.ip, net.prefix_len, net.port),
        ([10, 0, 0, 120], 24, 7000)
    );
    // A resend while xl create runs gets no answer yet, and starts nothing.
    assert!(n.on_packet(&ping(src, 10, &good), 0, 1_000).is_none());
    assert_eq!(n.host.scripts.len(), 1);
    n.host.results.push((7, Ok("5\n".into())));
    let r = reply(n.poll(1_000).pop());
    assert_eq!(
        (r.status, r.addr, r.port, r.domid, r.balance),
        (Status::Accepted, [10, 0, 0, 120], 7000, 5, 10)
    );
    assert_eq!(r.echo, bp::echo_of(&good));
    // A resend of the same token gets the same answer; a second token for the job is refused.
    assert_eq!(reply(n.on_packet(&ping(src, 11, &good), 0, 1_000)), r);
    let other = token(&c, 7, 2, 32, 5_000);
    assert_eq!(
        reply(n.on_packet(&ping(src, 12, &other), 0, 1_000)).reason_name(),
        "boot-token-reused"
    );
    // An ordinary ping is echoed.
    let (_, icmp) = n.on_packet(&ping(src, 13, b"hello"), 0, 1_000).unwrap();
    assert_eq!(&icmp[8..], b"hello");
}

#[test]
fn sources_are_rate_limited() {
    let (_d, mut n, _) = setup();
    let answered = (0..40)
        .filter(|&i| n.on_packet(&ping([10, 0, 0, 9], i, b"x"), 0, 0).is_some())
        .count();
    assert_eq!(answered, 30);
    // Another source is not affected; the first one gets one more after a second.
    assert!(n.on_packet(&ping([10, 0, 0, 8], 0, b"x"), 0, 0).is_some());
    assert!(n
        .on_packet(&ping([10, 0, 0, 9], 0, b"x"), 1_000, 0)
        .is_some());
    assert!(n
        .on_packet(&ping([10, 0, 0, 9], 0, b"x"), 1_000, 0)
        .is_none());
}

#[test]
fn failed_create_closes_the_job_with_a_certificate() {
    let (d, mut n, c) = setup();
    assert!(n
        .on_packet(
            &ping([10, 0, 0, 1], 1, &token(&c, 7, 2, 64, 5_000)),
            0,
            1_000
        )
        .is_none());
    n.host.results.push((7, Err("no memory".into())));
    let r = reply(n.poll(1_000).pop());
    assert_eq!(
        (r.status, r.reason_name()),
        (Status::Failed, "create-failed")
    );
    assert_eq!(
        n.host.scripts.last().unwrap(),
        &(7, "xl destroy lm-job7".to_string())
    );
    let cert = std::fs::read(d.path().join("certs/7.lmrc")).unwrap();
    assert_eq!(
        token_tool::Certificate::verify(&cert, SECRET)
            .unwrap()
            .balance,
        10
    );
}

fn started(n: &mut Node<FakeHost>, c: &Chain, job: u64, domid: u32) {
    assert!(n
        .on_packet(
            &ping([10, 0, 0, 1], 1, &token(c, job, 2, 64, 5_000)),
            0,
            1_000
        )
        .is_none());
    n.host.results.push((job, Ok(domid.to_string())));
    n.host.running(domid);
    n.poll(1_000);
}

#[test]
fn billing_warns_tops_up_and_purges_after_the_grace_period() {
    let (d, mut n, c) = setup();
    started(&mut n, &c, 7, 5);
    // 64 MiB at 64 MiB.s per token: one token a second, 10 tokens.
    n.tick(4_000, 1_004);
    assert_eq!(n.ledger.job(7).unwrap().balance, 6);
    assert_eq!(n.host.get("/local/domain/5/data/lm-balance"), "6");
    // Top-up of 5 tokens, written by the guest as hex, taken at the next tick; a replay is
    // refused.
    let tu = TopUp {
        node_id: 2,
        job_id: 7,
        count: 5,
        value: c.released_value(15).unwrap(),
    };
    let hex = token_tool::to_hex(&tu.encode());
    let write_topup = |n: &mut Node<FakeHost>, v: &str| {
        n.host
            .store
            .insert("/local/domain/5/data/lm-topup".into(), v.into());
        n.tick(4_000, 1_004);
        assert!(
            !n.host.store.contains_key("/local/domain/5/data/lm-topup"),
            "taken"
        );
        n.host
            .get("/local/domain/5/data/lm-topup-result")
            .to_string()
    };
    assert_eq!(write_topup(&mut n, &hex), "accepted balance 11");
    assert_eq!(n.ledger.job(7).unwrap().balance, 11);
    assert_eq!(write_topup(&mut n, &hex), "refused replay");
    // Whatever the guest writes is refused with a reason, never a panic.
    for junk in ["zz", &"\u{e9}".repeat(100), &hex[..87], &"0".repeat(88)] {
        assert!(write_topup(&mut n, junk).starts_with("refused "), "{junk}");
    }
    n.tick(16_000, 1_016); // 12 tokens owed, 11 left: exhausted, warned
    assert!(n
        .host
        .get("/local/domain/5/data/lm-warning")
        .starts_with("exhausted"));
    n.tick(19_000, 1_019);
    assert!(
        !n.host.scripts.iter().any(|s| s.1.contains("destroy")),
        "purged too early"
    );
    n.tick(22_000, 1_022);
    assert_eq!(
        n.host.scripts.last().unwrap(),
        &(7, "xl destroy lm-job7".to_string())
    );
    let cert = std::fs::read(d.path().join("certs/7.lmrc")).unwrap();
    let cert = token_tool::Certificate::verify(&cert, SECRET).unwrap();
    assert_eq!((cert.accepted, cert.balance), (15, 0));
}

#[test]
fn a_top_up_during_the_grace_period_keeps_the_guest() {
    let (_d, mut n, c) = setup();
    started(&mut n, &c, 7, 5);
    n.tick(12_000, 1_012);
    assert!(n
        .host
        .get("/local/domain/5/data/lm-warning")
        .starts_with("exhausted"));
    let tu = TopUp {
        node_id: 2,
        job_id: 7,
        count: 50,
        value: c.released_value(60).unwrap(),
    };
    n.host.store.insert(
        "/local/domain/5/data/lm-topup".into(),
        token_tool::to_hex(&tu.encode()),
    );
    n.tick(13_000, 1_013);
    assert_eq!(n.host.get("/local/domain/5/data/lm-warning"), "");
    n.tick(20_000, 1_020);
    assert!(!n.host.scripts.iter().any(|s| s.1.contains("destroy")));
}

#[test]
fn a_guest_that_shuts_down_gets_its_balance_back_and_the_customer_fetches_it() {
    let (d, mut n, c) = setup();
    let query = |n: &mut Node<FakeHost>, job| {
        let (_, icmp) = n
            .on_packet(&ping([10, 0, 0, 3], 1, &bp::cert_query(job)), 0, 1_000)
            .unwrap();
        icmp[8..].to_vec()
    };
    assert_eq!(
        BootReply::decode(&query(&mut n, 7)).unwrap().reason_name(),
        "unknown-job"
    );
    started(&mut n, &c, 7, 5);
    let open = BootReply::decode(&query(&mut n, 7)).unwrap();
    assert_eq!(
        (open.status, open.reason_name()),
        (Status::Later, "job-open")
    );
    n.tick(3_000, 1_003);
    n.host.store.clear();
    n.tick(4_000, 1_004);
    let cert = std::fs::read(d.path().join("certs/7.lmrc")).unwrap();
    assert_eq!(
        token_tool::Certificate::verify(&cert, SECRET)
            .unwrap()
            .balance,
        7
    );
    // The customer's certificate query gets the certificate itself.
    assert_eq!(query(&mut n, 7), cert);
}

#[test]
fn a_restarted_packetd_adopts_running_jobs_and_closes_the_others() {
    let (d, mut n, c) = setup();
    for (job, seq) in [(7, 1), (8, 2), (9, 3)] {
        n.on_packet(
            &ping([10, 0, 0, 1], seq, &token(&c, job, 2, 64, 5_000)),
            0,
            1_000,
        );
    }
    // Job 9 found no address (the pool has 2); its xl config was never written.
    // packetd restarts: job 7's domain still runs (as domain 9), job 8's does not.
    let cfg = n.cfg.clone();
    drop(n);
    let ledger = NodeLedger::open(d.path()).unwrap();
    let mut n = Node::new(cfg, ledger, FakeHost::default(), 0);
    n.adopt(1_010);
    let domid = |j| (j, format!("xl domid lm-job{j}"));
    assert_eq!(n.host.scripts, [domid(7), domid(8)]);
    n.host.results = vec![(7, Ok("9".into())), (8, Err("no domain lm-job8".into()))];
    n.host.running(9);
    assert!(n.poll(1_010).is_empty(), "no customer to answer");
    assert!(d.path().join("certs/8.lmrc").exists());
    assert!(!d.path().join("certs/7.lmrc").exists());
    n.tick(2_000, 1_012);
    assert_eq!(
        n.ledger.job(7).unwrap().balance,
        8,
        "the adopted job is billed"
    );
    assert_eq!(n.host.get("/local/domain/9/data/lm-balance"), "8");
    // Its address stays taken: the next token gets the other one.
    n.on_packet(
        &ping([10, 0, 0, 1], 3, &token(&c, 11, 2, 64, 5_000)),
        0,
        1_000,
    );
    assert!(created_cfg(d.path(), 11).contains("ip=10.0.0.121"));
}
