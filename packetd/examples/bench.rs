//! Boot-token checks per second as packetd makes them (`BootToken::verify_keyed` with the
//! node key computed once, as `NodeLedger` holds it; a 160-byte token, k = 10) beside raw
//! SHA-1 compressions per second on the same machine, measured as `token-tool bench` does.
//! Prints one JSON line. Usage: cargo run --release -p packetd --example bench [SECONDS]
use std::time::Instant;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let seconds = std::env::args().nth(1).map_or(Ok(3.0), |s| s.parse())?;
    bench(seconds)
}

fn bench(seconds: f64) -> anyhow::Result<()> {
    use std::hint::black_box;
    use token_tool::{BootToken, Chain, Extent, NodeKey};
    anyhow::ensure!(
        seconds > 0.0 && seconds <= 600.0,
        "--seconds must be in (0, 600]"
    );
    let dur = std::time::Duration::from_secs_f64(seconds);
    let secret = [0x5au8; 20];
    let chain = Chain::mint([1; 20], 10, 1, |_| {})?;
    let extent = Extent {
        disk: 0,
        writable: true,
        start_sector: 0,
        sectors: 1 << 21,
    };
    let token = BootToken {
        vcpus: 1,
        node_id: 1,
        memory_mib: 256,
        job_id: 1,
        expiry: u64::MAX,
        count: 10,
        max_topup: 1000,
        nonce: [0; 16],
        anchor: chain.anchor(),
        first: chain.released_value(10).context("chain")?,
        loader_sha1: [0; 20],
        extents: vec![extent],
    };
    let bytes = token.encode(&secret)?;
    // The node computes its key pads once, as NodeLedger::open does.
    let key = NodeKey::new(&secret)?;
    let (mut checks, t0) = (0u64, Instant::now());
    while t0.elapsed() < dur {
        for _ in 0..1000 {
            black_box(BootToken::verify_keyed(black_box(&bytes), &key, 1, 0)?);
        }
        checks += 1000;
    }
    let check_rate = checks as f64 / t0.elapsed().as_secs_f64();
    use sha1::digest::{consts::U64, generic_array::GenericArray};
    let blocks = vec![GenericArray::<u8, U64>::clone_from_slice(&[0x61; 64]); 64];
    let mut state = [
        0x67452301u32,
        0xefcdab89,
        0x98badcfe,
        0x10325476,
        0xc3d2e1f0,
    ];
    let (mut comps, t0) = (0u64, Instant::now());
    while t0.elapsed() < dur {
        for _ in 0..256 {
            sha1::compress(&mut state, black_box(&blocks));
        }
        comps += 256 * 64;
    }
    black_box(state);
    let comp_rate = comps as f64 / t0.elapsed().as_secs_f64();
    // The same function called with one block at a time, as a chain step must be (each step
    // needs the previous result): with SHA-NI the per-call set-up is a visible share.
    let (mut single, t0) = (0u64, Instant::now());
    while t0.elapsed() < dur {
        for b in blocks.iter().cycle().take(16384) {
            sha1::compress(&mut state, black_box(core::slice::from_ref(b)));
        }
        single += 16384;
    }
    black_box(state);
    let single_rate = single as f64 / t0.elapsed().as_secs_f64();
    // Inherent: 3 inner blocks (140-byte body after the ipad block) + 1 outer + 10 steps.
    let v = serde_json::json!({
        "token_bytes": bytes.len(), "chain_steps": 10, "checks_per_s": check_rate.round(),
        "sha1_compressions_per_s": comp_rate.round(),
        "compressions_per_check": (comp_rate / check_rate * 100.0).round() / 100.0,
        "sha1_single_block_calls_per_s": single_rate.round(),
        "single_block_calls_per_check": (single_rate / check_rate * 100.0).round() / 100.0,
        "inherent_compressions_per_check": 14,
    });
    println!("{v}");
    Ok(())
}
