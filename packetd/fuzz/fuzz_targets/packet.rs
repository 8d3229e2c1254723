//! packetd's whole packet path (IPv4 + ICMP parsing, rate limit, boot-token checks, the node
//! ledger, creation, answers), top-ups and billing ticks, on one long-lived node whose host
//! is a fake (named as such: it records toolstack calls and creates every domain at once).
//! Input: byte 0 selects what the rest is: 0 = an ICMP echo payload from source bytes 1..5
//! (wrapped in a valid IPv4/ICMP packet so the checks behind the checksum are reached), 1 = a
//! raw packet, 2 = a guest's top-up text, 3 = a clock tick. Never panics, every answer is a
//! well-formed echo reply.
#![no_main]
use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use packetd::config::Config;
use packetd::node::{Host, Node};
use token_tool::bootproto as bp;
use token_tool::node::NodeLedger;

struct FakeHost;
impl Host for FakeHost {
    fn create(&mut self, _: &str, cfg: &str, _: u32) -> Result<(), String> {
        assert!(cfg.len() < 4096);
        Ok(())
    }
    fn created(&mut self, _: &str) -> Option<Result<u32, String>> {
        Some(Ok(5))
    }
    fn alive(&mut self, _: u32) -> bool {
        true
    }
    fn destroy(&mut self, _: &str) {}
    fn write(&mut self, _: u32, _: &str, _: &str) {}
    fn watch(&mut self, _: u32) {}
    fn lookup(&mut self, _: &str) -> Option<u32> {
        None
    }
}

pub const SECRET: &[u8] = b"fuzz-node-secret-0123";

thread_local! {
    static NODE: RefCell<(Node<FakeHost>, u64)> = RefCell::new({
        let dir = std::env::temp_dir().join(format!("packetd-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ledger = NodeLedger::create(&dir, 2, SECRET).unwrap();
        std::fs::write(dir.join("t.in"), "name=@NAME@ memory=@MEMORY@ extra=\"@EXTRA@\"").unwrap();
        let cfg = format!(
            "state = {0}\nloader = /l\ntemplate = {0}/t.in\npool = 10.0.0.120/4\n\
             rate_per_second = 1000\nrate_burst = 100000\nmax_memory_mib = 256\n",
            dir.display()
        );
        (Node::new(Config::parse(&cfg).unwrap(), ledger, FakeHost, 0), 0)
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
    let Some((&mode, rest)) = data.split_first() else { return };
    NODE.with(|n| {
        let (node, clock) = &mut *n.borrow_mut();
        *clock += 7;
        let unix = 1_000 + *clock / 1000;
        match mode % 4 {
            0 if rest.len() >= 4 => {
                let mut icmp = [0u8; bp::IP_PACKET_MAX];
                let Some(len) = bp::write_echo(bp::ICMP_ECHO_REQUEST, 1, 2, &rest[4..], &mut icmp[..1480]) else {
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
            2 => node.on_topup(5, &String::from_utf8_lossy(rest)),
            _ => node.tick(*clock, unix),
        }
        for out in node.poll(unix) {
            check(Some(out));
        }
    });
});
