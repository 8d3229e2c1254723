//! Writes seed inputs for the cargo-fuzz targets (scripts/fuzz-tokens): valid boot tokens
//! (0, 1 and 32 extents), a top-up and a certificate, signed with the fuzz targets' secret so
//! the fuzzer starts from inputs that reach the MAC and re-encoding checks.
//! Usage: cargo run --example fuzz_seeds -- CORPUS_DIR

use std::path::PathBuf;
use token_tool::{BootToken, Certificate, Chain, Extent, TopUp};

const SECRET: &[u8] = b"fuzz-node-secret-0123";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: fuzz_seeds CORPUS_DIR")?,
    );
    let chain = Chain::mint([1; 20], 64, 8, |_| {})?;
    for (i, n_ext) in [0usize, 1, 32].into_iter().enumerate() {
        let t = BootToken {
            vcpus: 1 + i as u16,
            node_id: 1,
            memory_mib: 256,
            job_id: 42 + i as u64,
            expiry: u64::MAX,
            count: 10,
            max_topup: 100,
            nonce: [i as u8; 16],
            anchor: chain.anchor(),
            first: chain.released_value(10).ok_or("chain")?,
            loader_sha1: [0xab; 20],
            extents: (0..n_ext)
                .map(|e| Extent {
                    disk: e as u32,
                    writable: e % 2 == 0,
                    start_sector: 8 * e as u64,
                    sectors: 8,
                })
                .collect(),
        };
        write(&root, "boot_token", &format!("seed{i}"), &t.encode(SECRET)?)?;
    }
    let tu = TopUp {
        node_id: 1,
        job_id: 42,
        count: 10,
        value: chain.released_value(20).ok_or("chain")?,
    };
    write(&root, "top_up", "seed0", &tu.encode())?;
    let c = Certificate {
        node_id: 1,
        job_id: 42,
        accepted: 20,
        balance: 13,
        issued_at: 1,
        last: tu.value,
    };
    write(&root, "certificate", "seed0", &c.encode(SECRET)?)?;
    Ok(())
}

fn write(root: &std::path::Path, target: &str, name: &str, data: &[u8]) -> std::io::Result<()> {
    let dir = root.join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), data)
}
