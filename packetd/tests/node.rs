//! packetd's packet path, billing and top-ups, driven through `Node` with a fake host (named
//! as such: it records toolstack calls instead of running `xl`).

use packetd::config::Config;
use packetd::node::{Host, Node};
use token_tool::bootproto::{self as bp, BootReply, Status};
use token_tool::node::NodeLedger;
use token_tool::{BootToken, Chain, TopUp};

const SECRET: &[u8] = b"node-secret-for-tests";

#[derive(Default)]
struct FakeHost {
    created: Vec<(String, String, u32)>,
    result: Option<Result<u32, String>>,
    alive: bool,
    destroyed: Vec<String>,
    writes: Vec<(u32, String, String)>,
    running: Vec<(String, u32)>,
}

impl Host for FakeHost {
    fn create(&mut self, name: &str, cfg: &str, cap: u32) -> Result<(), String> {
        self.created.push((name.into(), cfg.into(), cap));
        Ok(())
    }
    fn created(&mut self, _: &str) -> Option<Result<u32, String>> {
        self.result.take()
    }
    fn alive(&mut self, _: u32) -> bool {
        self.alive
    }
    fn destroy(&mut self, name: &str) {
        self.destroyed.push(name.into());
    }
    fn write(&mut self, domid: u32, key: &str, value: &str) {
        self.writes.push((domid, key.into(), value.into()));
    }
    fn watch(&mut self, _: u32) {}
    fn lookup(&mut self, name: &str) -> Option<u32> {
        self.running.iter().find(|r| r.0 == name).map(|r| r.1)
    }
}

fn config(state: &std::path::Path) -> Config {
    std::fs::write(
        state.join("t.cfg.in"),
        "name=@NAME@ mem=@MEMORY@ vcpus=@VCPUS@ extra=@EXTRA@ mac=@MAC@ k=@KERNEL@",
    )
    .unwrap();
    Config::parse(&format!(
        "state = {0}\nloader = /l.elf\ntemplate = {0}/t.cfg.in\npool = 10.0.0.120/2\nport = 7000\n\
         max_memory_mib = 128\nmib_seconds_per_token = 64\ngrace_seconds = 5\nrate_per_second = 1\nrate_burst = 30\n",
        state.display()
    ))
    .unwrap()
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
    (d, n, Chain::mint([3; 20], 1000, 32, |_| {}).unwrap())
}

#[test]
fn refusals_name_their_reason_and_the_node_keeps_serving() {
    let (_d, mut n, c) = setup();
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
    assert!(n.host.created.is_empty());
    // A valid token: no answer until xl create finished.
    assert!(n.on_packet(&ping(src, 9, &good), 0, 1_000).is_none());
    let (name, cfg, cap) = n.host.created[0].clone();
    assert_eq!((name.as_str(), cap), ("lm-job7", 100));
    assert!(
        cfg.contains("mem=64 vcpus=1 extra=ip=10.0.0.120 netmask=255.255.255.0 port=7000"),
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
    n.host.result = Some(Ok(5));
    let r = reply(n.poll(1_000).pop());
    assert_eq!(
        (r.status, r.addr, r.port, r.domid, r.balance),
        (Status::Accepted, [10, 0, 0, 120], 7000, 5, 10)
    );
    assert_eq!(r.echo, bp::echo_of(&good));
    // A retry of the same token gets the same answer; a second token for the job is refused.
    assert_eq!(reply(n.on_packet(&ping(src, 10, &good), 0, 1_000)), r);
    let other = token(&c, 7, 2, 32, 5_000);
    assert_eq!(
        reply(n.on_packet(&ping(src, 11, &other), 0, 1_000)).reason_name(),
        "boot-token-reused"
    );
    // An ordinary ping is echoed.
    let (_, icmp) = n.on_packet(&ping(src, 12, b"hello"), 0, 1_000).unwrap();
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
    n.host.result = Some(Err("no memory".into()));
    let r = reply(n.poll(1_000).pop());
    assert_eq!(
        (r.status, r.reason_name()),
        (Status::Failed, "create-failed")
    );
    let cert = std::fs::read(d.path().join("certs/7.lmrc")).unwrap();
    assert_eq!(
        token_tool::Certificate::verify(&cert, SECRET)
            .unwrap()
            .balance,
        10
    );
}

#[test]
fn billing_warns_tops_up_and_purges_after_the_grace_period() {
    let (d, mut n, c) = setup();
    assert!(n
        .on_packet(
            &ping([10, 0, 0, 1], 1, &token(&c, 7, 2, 64, 5_000)),
            0,
            1_000
        )
        .is_none());
    n.host.result = Some(Ok(5));
    n.host.alive = true;
    n.poll(1_000);
    // 64 MiB at 64 MiB.s per token: one token a second, 10 tokens.
    n.tick(4_000, 1_004);
    assert_eq!(n.ledger.job(7).unwrap().balance, 6);
    // Top-up of 5 tokens, written by the guest as hex; a replay is refused.
    let tu = TopUp {
        node_id: 2,
        job_id: 7,
        count: 5,
        value: c.released_value(15).unwrap(),
    };
    let hex = token_tool::to_hex(&tu.encode());
    n.on_topup(5, &hex);
    assert_eq!(n.ledger.job(7).unwrap().balance, 11);
    n.on_topup(5, &hex);
    assert_eq!(n.host.writes.last().unwrap().2, "refused replay");
    // Whatever the guest writes is refused with a reason, never a panic.
    for junk in ["", "zz", &"\u{e9}".repeat(100), &hex[..87]] {
        n.on_topup(5, junk);
        assert!(n.host.writes.last().unwrap().2.starts_with("refused "));
    }
    n.tick(16_000, 1_016); // 12 tokens owed, 11 left: exhausted, warned
    assert!(n
        .host
        .writes
        .iter()
        .any(|w| w.1 == "lm-warning" && w.2.starts_with("exhausted")));
    n.tick(19_000, 1_019);
    assert!(
        n.host.destroyed.is_empty(),
        "purged before the grace period ended"
    );
    n.tick(22_000, 1_022);
    assert_eq!(n.host.destroyed, ["lm-job7"]);
    let cert = std::fs::read(d.path().join("certs/7.lmrc")).unwrap();
    let cert = token_tool::Certificate::verify(&cert, SECRET).unwrap();
    assert_eq!((cert.accepted, cert.balance), (15, 0));
}

#[test]
fn a_guest_that_shuts_down_gets_its_balance_back_as_a_certificate() {
    let (d, mut n, c) = setup();
    n.on_packet(
        &ping([10, 0, 0, 1], 1, &token(&c, 7, 2, 64, 5_000)),
        0,
        1_000,
    );
    n.host.result = Some(Ok(5));
    n.host.alive = true;
    n.poll(1_000);
    n.tick(3_000, 1_003);
    n.host.alive = false;
    n.tick(4_000, 1_004);
    let cert = std::fs::read(d.path().join("certs/7.lmrc")).unwrap();
    assert_eq!(
        token_tool::Certificate::verify(&cert, SECRET)
            .unwrap()
            .balance,
        7
    );
}

#[test]
fn a_restarted_packetd_adopts_running_jobs_and_closes_the_others() {
    let (d, mut n, c) = setup();
    let run = d.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    n.cfg.run_dir = run.clone();
    for (job, seq) in [(7, 1), (8, 2)] {
        n.on_packet(
            &ping([10, 0, 0, 1], seq, &token(&c, job, 2, 64, 5_000)),
            0,
            1_000,
        );
        let (name, cfg, _) = n.host.created.last().unwrap().clone();
        std::fs::write(run.join(format!("{name}.cfg")), cfg).unwrap();
    }
    // packetd restarts: job 7's domain still runs (as domain 9), job 8's does not.
    let cfg = n.cfg.clone();
    drop(n);
    let ledger = NodeLedger::open(d.path()).unwrap();
    let host = FakeHost {
        running: vec![("lm-job7".into(), 9)],
        alive: true,
        ..FakeHost::default()
    };
    let mut n = Node::new(cfg, ledger, host, 0);
    n.adopt(1_010);
    assert!(d.path().join("certs/8.lmrc").exists());
    assert!(!d.path().join("certs/7.lmrc").exists());
    n.tick(2_000, 1_012);
    assert_eq!(
        n.ledger.job(7).unwrap().balance,
        8,
        "the adopted job is billed"
    );
    assert!(n
        .host
        .writes
        .iter()
        .any(|w| w.0 == 9 && w.1 == "lm-balance"));
    // Its address stays taken: the next token gets the other one.
    n.on_packet(
        &ping([10, 0, 0, 1], 3, &token(&c, 11, 2, 64, 5_000)),
        0,
        1_000,
    );
    assert!(
        n.host.created[0].1.contains("ip=10.0.0.121"),
        "{}",
        n.host.created[0].1
    );
}
