//! Seeds for packetd's `packet` fuzz target (packetd/fuzz, input layout in its header): signed
//! boot tokens for the fuzz node (node 2, its secret), a top-up, a plain ping, a certificate
//! query and a clock tick. Here rather than in packetd because it is token-format tooling, not
//! the daemon. Usage: packetd_fuzz_seeds DIR (scripts/fuzz-packetd runs it)
use token_tool::{BootToken, Chain, Extent, TopUp};

fn main() {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: packetd_fuzz_seeds DIR"),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let chain = Chain::mint([4; 20], 1000, 32, |_| {}).unwrap();
    for (i, (job, mem, ext)) in [(1u64, 64u32, 0usize), (2, 128, 1), (3, 4096, 2)]
        .iter()
        .enumerate()
    {
        let t = BootToken {
            vcpus: 1,
            node_id: 2,
            memory_mib: *mem,
            job_id: *job,
            expiry: u64::MAX,
            count: 10,
            max_topup: 100,
            nonce: [i as u8; 16],
            anchor: chain.anchor(),
            first: chain.released_value(10).unwrap(),
            loader_sha1: [0; 20],
            extents: vec![
                Extent {
                    disk: 0,
                    writable: true,
                    start_sector: 0,
                    sectors: 8
                };
                *ext
            ],
        };
        let mut seed = vec![0u8, 10, 0, 0, 1];
        seed.extend(t.encode(b"fuzz-node-secret-0123").unwrap());
        std::fs::write(dir.join(format!("token-{i}")), seed).unwrap();
    }
    let tu = TopUp {
        node_id: 2,
        job_id: 1,
        count: 5,
        value: chain.released_value(15).unwrap(),
    };
    let mut seed = vec![2u8];
    seed.extend(token_tool::to_hex(&tu.encode()).bytes());
    std::fs::write(dir.join("topup"), seed).unwrap();
    std::fs::write(dir.join("ping"), [0u8, 10, 0, 0, 9, b'h', b'i']).unwrap();
    std::fs::write(dir.join("tick"), [3u8]).unwrap();
    let mut seed = vec![0u8, 10, 0, 0, 1];
    seed.extend(token_tool::bootproto::cert_query(1));
    std::fs::write(dir.join("cert-query"), seed).unwrap();
}
