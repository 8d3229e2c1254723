//! packetd's whole packet path (IPv4 + ICMP parsing, rate limit, boot-token checks, the node
//! ledger, creation, answers), top-ups and billing ticks, on one long-lived node whose host
//! is a fake (named as such: it records toolstack calls and creates every domain at once).
//! Input: byte 0 selects what the rest is: 0 = an ICMP echo payload from source bytes 1..5
//! (wrapped in a valid IPv4/ICMP packet so the checks behind the checksum are reached), 1 = a
//! raw packet, 2 = a guest's top-up text (written to domain 5's xenstore area, then a tick),
//! 3 = a clock tick. Certificate queries come as echo payloads (mode 0). Never panics, every
//! answer is a well-formed echo reply.
#![no_main]
use std::cell::RefCell;
use std::collections::BTreeMap;

use clap::Parser;
use inflate_core::xs::{XS_READ, XS_WRITE};
use libfuzzer_sys::fuzz_target;
use packetd::config::Config;
use packetd::node::{Host, Node};
use token_tool::bootproto as bp;
use token_tool::node::NodeLedger;

/// Fake host: every command succeeds at once and prints domid 5; domain 5 always exists.
#[derive(Default)]
struct FakeHost {
    pending: Vec<u64>,
    store: BTreeMap<String, String>,
}
impl Host for FakeHost {
    fn spawn(&mut self, job: u64, script: &str) -> Result<(), String> {
        assert!(script.len() < 4096);
        self.pending.push(job);
        Ok(())
    }
    fn done(&mut self) -> Option<(u64, Result<String, String>)> {
        self.pending.pop().map(|j| (j, Ok("5".into())))
    }
    fn xs(&mut self, ty: u32, path: &str, value: &str) -> std::io::Result<Option<String>> {
        if path == "/local/domain/5/name" {
            return Ok(Some("x".into()));
        }
        match ty {
            XS_READ => return Ok(self.store.get(path).cloned()),
            XS_WRITE => self.store.insert(path.into(), value.into()),
            _ => self.store.remove(path),
        };
        Ok(None)
    }
}

pub const SECRET: &[u8] = b"fuzz-node-secret-0123";

thread_local! {
    static NODE: RefCell<(Node<FakeHost>, u64)> = RefCell::new({
        let dir = std::env::temp_dir().join(format!("packetd-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ledger = NodeLedger::create(&dir, 2, SECRET).unwrap();
        std::fs::write(dir.join("t.in"), "name=@NAME@ memory=@MEMORY@ extra=\"@EXTRA@\"").unwrap();
        let d = dir.display();
        let args = format!(
            "packetd --state {d} --loader /l --template {d}/t.in --pool 10.0.0.120/4 \
             --rate-per-second 1000 --rate-burst 100000 --max-memory-mib 256 --run-dir {d}"
        );
        let cfg = Config::try_parse_from(args.split_whitespace()).unwrap();
        (Node::new(cfg, ledger, FakeHost::default(), 0), 0)
    });
}

fn check(out: Option<([u8; 4], Vec<u8>)>) {
    if let Some((_, icmp)) = out {
        assert_eq!(icmp[0], bp::ICMP_ECHO_REPLY);
        assert_eq!(bp::inet_checksum(&icmp), 0);
        assert!(icmp.len() <= bp::IP_PACKET_MAX);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    NODE.with(|n| {
        let (node, clock) = &mut *n.borrow_mut();
        *clock += 7;
        let unix = 1_000 + *clock / 1000;
        match mode % 4 {
            0 if rest.len() >= 4 => {
                let mut icmp = [0u8; bp::IP_PACKET_MAX];
                let Some(len) =
                    bp::write_echo(bp::ICMP_ECHO_REQUEST, 1, 2, &rest[4..], &mut icmp[..1480])
                else {
                    return;
                };
                let mut pkt = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
                pkt.extend_from_slice(&rest[..4]);
                pkt.extend_from_slice(&[10, 0, 0, 2]);
                pkt.extend_from_slice(&icmp[..len]);
                let total = pkt.len() as u16;
                pkt[2..4].copy_from_slice(&total.to_be_bytes());
                check(node.on_packet(&pkt, *clock, unix));
            }
            1 => check(node.on_packet(rest, *clock, unix)),
            2 => {
                let v = String::from_utf8_lossy(rest).into_owned();
                node.host
                    .store
                    .insert("/local/domain/5/data/lm-topup".into(), v);
                node.tick(*clock, unix);
            }
            _ => node.tick(*clock, unix),
        }
        for out in node.poll(unix) {
            check(Some(out));
        }
    });
});
