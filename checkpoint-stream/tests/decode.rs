//! Decoder behaviour: valid streams, incremental feeding, and one test per rejection.

use checkpoint_stream::digest::{leaf_hash, root_of_pages, Algorithm, ZERO_LEAF};
use checkpoint_stream::format::*;
use checkpoint_stream::model::Checkpoint;
use checkpoint_stream::*;

fn page(fill: u8) -> [u8; PAGE_SIZE] {
    let mut p = [fill; PAGE_SIZE];
    p[0] = 0xAA; // never a zero page
    p
}

const MAX_PFN: u64 = 7;

/// A valid stream: round 0 sends pfns 0..=7 (2 and 5 as zero), capture, drain round re-sends
/// pfn 3 with new content and pfn 6 as zero; state; digest; end.
fn build(mut mutate: impl FnMut(&mut Encoder<Vec<u8>>, Stage) -> bool) -> Vec<u8> {
    let p: Vec<[u8; PAGE_SIZE]> = (0..8).map(|i| page(i as u8 + 1)).collect();
    let p3b = page(0x33);
    let mut e = Encoder::new(Vec::new()).unwrap();
    // `mutate` sees every stage and returns true to replace the normal record.
    let mut run = |e: &mut Encoder<Vec<u8>>, s: Stage, f: &mut dyn FnMut(&mut Encoder<Vec<u8>>)| {
        if !mutate(e, s) {
            f(e)
        }
    };
    run(&mut e, Stage::Header, &mut |e| {
        e.header(MAX_PFN, b"Linux 6.12-test").unwrap()
    });
    run(&mut e, Stage::Round0, &mut |e| e.round(0, false).unwrap());
    run(&mut e, Stage::Batch0, &mut |e| {
        let refs: Vec<PageRef<'_>> = (0..8u64)
            .map(|i| {
                (
                    i,
                    if i == 2 || i == 5 {
                        None
                    } else {
                        Some(&p[i as usize])
                    },
                )
            })
            .collect();
        e.page_batch(&refs).unwrap()
    });
    run(&mut e, Stage::Capture, &mut |e| {
        e.capture(4, 1, 12345).unwrap()
    });
    run(&mut e, Stage::Round1, &mut |e| e.round(1, true).unwrap());
    run(&mut e, Stage::Batch1, &mut |e| {
        e.page_batch(&[(3, Some(&p3b)), (6, None)]).unwrap()
    });
    run(&mut e, Stage::Types, &mut |e| {
        e.page_types(0, &[0, 1, 0, 0, 0, 2, 3, 4 | page_type::PINNED])
            .unwrap()
    });
    run(&mut e, Stage::P2m, &mut |e| {
        e.p2m(0, &[100, 101, 102, 103, 104, 105, 106, INVALID_MFN])
            .unwrap()
    });
    run(&mut e, Stage::Frames, &mut |e| e.p2m_frames(&[6]).unwrap());
    run(&mut e, Stage::Vcpu, &mut |e| {
        e.vcpu(0, VcpuKind::Basic, &[7u8; 64]).unwrap()
    });
    run(&mut e, Stage::Shared, &mut |e| {
        e.shared_info(&page(9)).unwrap()
    });
    run(&mut e, Stage::Digest, &mut |e| {
        e.digest(Algorithm::CURRENT, &expected_digest()).unwrap()
    });
    run(&mut e, Stage::End, &mut |_| {});
    e.end().unwrap()
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Stage {
    Header,
    Round0,
    Batch0,
    Capture,
    Round1,
    Batch1,
    Types,
    P2m,
    Frames,
    Vcpu,
    Shared,
    Digest,
    End,
}

fn final_page(pfn: u64) -> Option<[u8; PAGE_SIZE]> {
    match pfn {
        2 | 5 | 6 => None,
        3 => Some(page(0x33)),
        _ => Some(page(pfn as u8 + 1)),
    }
}

fn expected_digest() -> [u8; 32] {
    let pages: Vec<Option<[u8; PAGE_SIZE]>> = (0..=MAX_PFN).map(final_page).collect();
    root_of_pages(Algorithm::CURRENT, MAX_PFN, |pfn| {
        pages[pfn as usize].as_ref()
    })
}

fn valid() -> Vec<u8> {
    build(|_, _| false)
}

fn decode(data: &[u8]) -> Result<Checkpoint, Error> {
    Checkpoint::from_bytes(data)
}

/// Decode with the allocation-free path (decoder checks the digest with a leaf table).
fn decode_leaves(data: &[u8]) -> Result<(), Error> {
    let mut leaves = vec![[0u8; 32]; 64];
    struct Nop;
    impl Sink for Nop {}
    decode_slice(data, Some(&mut leaves), &mut Nop)
}

fn with(stage: Stage, f: impl Fn(&mut Encoder<Vec<u8>>)) -> Vec<u8> {
    build(move |e, s| {
        if s == stage {
            f(e);
            true
        } else {
            false
        }
    })
}

#[test]
fn valid_stream_decodes_with_last_copy_winning() {
    let data = valid();
    let c = decode(&data).unwrap();
    assert_eq!(c.max_pfn, MAX_PFN);
    assert_eq!(c.kernel, "Linux 6.12-test");
    for pfn in 0..=MAX_PFN {
        assert_eq!(c.page(pfn).copied(), final_page(pfn), "pfn {pfn}");
    }
    assert_eq!(c.rounds.len(), 2);
    assert_eq!(
        (c.rounds[0].pages, c.rounds[0].zero_pages, c.rounds[0].drain),
        (8, 2, false)
    );
    assert_eq!(
        (c.rounds[1].pages, c.rounds[1].zero_pages, c.rounds[1].drain),
        (2, 1, true)
    );
    assert_eq!(c.rounds[0].bytes, 16 + 8 + 64 + 6 * 4096);
    assert_eq!(
        c.capture,
        Capture {
            start_info_pfn: 4,
            nr_vcpus: 1,
            pause_ns: 12345
        }
    );
    assert_eq!(c.page_types[7], 4 | page_type::PINNED);
    assert_eq!(c.p2m[7], INVALID_MFN);
    let full = checkpoint_stream::model::FullCheckpoint::from_bytes(&data).unwrap();
    assert_eq!(full.p2m_frames, vec![6]);
    let again = full.write_to(Vec::new()).unwrap();
    assert_eq!(
        checkpoint_stream::model::FullCheckpoint::from_bytes(&again)
            .unwrap()
            .p2m_frames,
        vec![6]
    );
    assert_eq!(c.vcpu(0, VcpuKind::Basic), Some(&[7u8; 64][..]));
    assert_eq!(c.shared_info.as_deref(), Some(&page(9)));
    assert_eq!(c.stream_bytes, data.len() as u64);
    decode_leaves(&data).unwrap();
    assert_eq!(data.len() % 8, 0);
}

#[test]
fn feeding_one_byte_at_a_time_gives_the_same_result() {
    let data = valid();
    let mut leaves = vec![[0u8; 32]; 8];
    #[derive(Default)]
    struct Count(u64, u64);
    impl Sink for Count {
        fn page(&mut self, _: u64, d: Option<&[u8; PAGE_SIZE]>) -> Result<(), Error> {
            self.0 += 1;
            self.1 += d.is_none() as u64;
            Ok(())
        }
    }
    let mut d = Decoder::with_leaf_table(&mut leaves);
    let mut s = Count::default();
    for b in data.chunks(1) {
        d.feed(b, &mut s).unwrap();
    }
    d.finish().unwrap();
    assert_eq!((s.0, s.1), (10, 3));
    // Odd chunk sizes through the model reader.
    let c = Checkpoint::read_from(std::io::Cursor::new(&data)).unwrap();
    assert_eq!(c.compute_digest(), expected_digest());
}

#[test]
fn a_one_vcpu_checkpoint_is_valid_as_built() {
    let pages = (0..3u64)
        .map(|p| (p, Box::new(page(p as u8 + 1))))
        .collect();
    let c = Checkpoint::one_vcpu(7, "k", pages, vec![0; 8], (0..8).collect(), vec![9; 16]);
    assert_eq!(c.digest, c.compute_digest());
    assert_eq!((c.capture.start_info_pfn, c.capture.nr_vcpus), (1, 1));
    let back = decode(&c.write_to(Vec::new()).unwrap()).unwrap();
    assert_eq!((back.digest, &back.vcpus), (c.digest, &c.vcpus));
    assert_eq!((&back.pages, back.kernel.as_str()), (&c.pages, "k"));
}

#[test]
fn model_round_trips_through_write_to() {
    let c = decode(&valid()).unwrap();
    let again = c.write_to(Vec::new()).unwrap();
    let c2 = decode(&again).unwrap();
    assert_eq!(c.pages, c2.pages);
    assert_eq!(c.p2m, c2.p2m);
    assert_eq!(c.page_types, c2.page_types);
    assert_eq!(c.vcpus, c2.vcpus);
    assert_eq!(c.digest, c2.digest);
}

#[test]
fn every_truncation_is_reported_as_truncation() {
    let data = valid();
    for cut in 0..data.len() {
        let err = decode(&data[..cut]).unwrap_err();
        assert!(
            matches!(err, Error::Truncated { .. }),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn rejects_bad_magic_and_version() {
    let mut d = valid();
    d[0] = b'X';
    assert_eq!(decode(&d).unwrap_err(), Error::BadMagic);
    let mut d = valid();
    d[8] = 2;
    assert_eq!(decode(&d).unwrap_err(), Error::UnsupportedVersion(2));
}

#[test]
fn rejects_bad_header_checksum() {
    let mut d = valid();
    d[16 + 4] ^= 1; // HEADER's length field
    assert!(matches!(
        decode(&d).unwrap_err(),
        Error::BadHeaderChecksum { offset: 16 }
    ));
}

#[test]
fn rejects_bad_body_checksum_in_a_page() {
    let mut d = valid();
    // Round 0's first page data: preamble 16 + HEADER (16+48) + ROUND (16+8) + batch header
    // 16 + 8 + 64.
    let off = 16 + 64 + 24 + 16 + 72 + 100;
    d[off] ^= 0x40;
    match decode(&d).unwrap_err() {
        Error::BadChecksum {
            record: RecordType::PageBatch,
            ..
        } => {}
        e => panic!("{e}"),
    }
}

#[test]
fn rejects_bad_length() {
    let d = with(Stage::Round0, |e| {
        e.raw_record(RecordType::Round as u32, &[&[0u8; 16]])
            .unwrap()
    });
    assert!(matches!(
        decode(&d).unwrap_err(),
        Error::BadLength {
            record: RecordType::Round,
            len: 16,
            ..
        }
    ));
    // A batch whose length disagrees with its pfn list (one data page claimed, none present).
    let d = with(Stage::Batch0, |e| {
        let mut b = vec![0u8; 16];
        b[0] = 1;
        e.raw_record(RecordType::PageBatch as u32, &[&b]).unwrap()
    });
    assert!(matches!(
        decode(&d).unwrap_err(),
        Error::BadLength {
            record: RecordType::PageBatch,
            ..
        }
    ));
}

#[test]
fn rejects_unknown_type() {
    let d = with(Stage::Round0, |e| e.raw_record(0x77, &[&[0u8; 8]]).unwrap());
    assert!(matches!(
        decode(&d).unwrap_err(),
        Error::UnknownType { ty: 0x77, .. }
    ));
}

#[test]
fn rejects_pfn_out_of_range() {
    let d = with(Stage::Batch1, |e| {
        e.page_batch(&[(MAX_PFN + 1, None)]).unwrap()
    });
    assert!(matches!(
        decode(&d).unwrap_err(),
        Error::PfnOutOfRange {
            pfn: 8,
            max_pfn: 7,
            ..
        }
    ));
    let d = with(Stage::Capture, |e| e.capture(99, 1, 0).unwrap());
    assert!(matches!(
        decode(&d).unwrap_err(),
        Error::PfnOutOfRange {
            record: RecordType::Capture,
            ..
        }
    ));
    // First pfns near 2^64 (found by the fuzzer: the end used to overflow).
    let d = with(Stage::P2m, |e| e.p2m(u64::MAX - 1, &[1; 8]).unwrap());
    assert!(matches!(
        decode(&d).unwrap_err(),
        Error::PfnOutOfRange {
            record: RecordType::P2m,
            ..
        }
    ));
    let d = with(Stage::Types, |e| e.page_types(u64::MAX, &[0; 8]).unwrap());
    assert!(matches!(
        decode(&d).unwrap_err(),
        Error::PfnOutOfRange {
            record: RecordType::PageTypes,
            ..
        }
    ));
    let d = with(Stage::Frames, |e| e.p2m_frames(&[8]).unwrap());
    assert!(matches!(
        decode(&d).unwrap_err(),
        Error::PfnOutOfRange {
            record: RecordType::P2mFrames,
            ..
        }
    ));
    let d = with(Stage::P2m, |e| e.p2m(0, &[1; 9]).unwrap());
    assert!(matches!(
        decode(&d).unwrap_err(),
        Error::PfnOutOfRange {
            record: RecordType::P2m,
            ..
        }
    ));
}

#[test]
fn rejects_digest_mismatch_on_both_paths() {
    let d = with(Stage::Digest, |e| {
        e.digest(Algorithm::CURRENT, &[0x55; 32]).unwrap()
    });
    assert_eq!(decode(&d).unwrap_err(), Error::DigestMismatch);
    assert_eq!(decode_leaves(&d).unwrap_err(), Error::DigestMismatch);
    // The digest of round 0's copy of pfn 3 instead of the drained one also mismatches.
    let d = with(Stage::Batch1, |e| e.page_batch(&[(6, None)]).unwrap());
    assert_eq!(decode(&d).unwrap_err(), Error::DigestMismatch);
    assert_eq!(decode_leaves(&d).unwrap_err(), Error::DigestMismatch);
}

/// Streams written before algorithm 2 carry algorithm 1: both decode paths still verify them,
/// and an algorithm-1 root under algorithm 2 (or the reverse) mismatches.
#[test]
fn digest_algorithm_1_still_verifies_and_the_algorithms_do_not_mix() {
    let pages: Vec<Option<[u8; PAGE_SIZE]>> = (0..=MAX_PFN).map(final_page).collect();
    let root = |alg| root_of_pages(alg, MAX_PFN, |pfn| pages[pfn as usize].as_ref());
    let (r1, r2) = (root(Algorithm::Leaves), root(Algorithm::NonZeroLeaves));
    assert_ne!(r1, r2);
    let d = with(Stage::Digest, |e| e.digest(Algorithm::Leaves, &r1).unwrap());
    let c = decode(&d).unwrap();
    assert_eq!((c.digest_algorithm, c.digest), (Algorithm::Leaves, r1));
    assert_eq!(c.compute_digest_by(Algorithm::Leaves), r1);
    decode_leaves(&d).unwrap();
    for (alg, r) in [(Algorithm::Leaves, r2), (Algorithm::NonZeroLeaves, r1)] {
        let d = with(Stage::Digest, |e| e.digest(alg, &r).unwrap());
        assert_eq!(decode(&d).unwrap_err(), Error::DigestMismatch);
        assert_eq!(decode_leaves(&d).unwrap_err(), Error::DigestMismatch);
    }
}

/// A DIGEST algorithm the reader does not know is refused as such (the worked example with
/// its DIGEST's algorithm field set to 3 and both CRCs recomputed).
#[test]
fn rejects_unknown_digest_algorithm() {
    let mut d = doc_hex("example-hex");
    let at = 0x128;
    assert_eq!(d[at], 9, "the worked example's DIGEST record");
    d[at + 16] = 3;
    let body = checkpoint_stream::crc::crc32c(&d[at + 16..at + 56]);
    d[at + 8..at + 12].copy_from_slice(&body.to_le_bytes());
    let head = checkpoint_stream::crc::crc32c(&d[at..at + 12]);
    d[at + 12..at + 16].copy_from_slice(&head.to_le_bytes());
    let want = Error::Unsupported("digest algorithm other than 1 or 2");
    assert_eq!(decode(&d).unwrap_err(), want);
    assert_eq!(decode_leaves(&d).unwrap_err(), want);
}

/// docs/stream.md's algorithm-2 example: its leaf and root (computed there independently of
/// this crate) are what the crate computes.
#[test]
fn algorithm_2_example_in_docs() {
    let doc = include_str!("../../docs/stream.md");
    let value = |name: &str| {
        let m = format!("<!-- {name} -->`");
        let start = doc.find(&m).expect("marker") + m.len();
        let hex = &doc[start..start + 64];
        (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
    };
    let mut page = [0u8; PAGE_SIZE];
    page[0] = 1;
    assert_eq!(leaf_hash(Some(&page)).to_vec(), value("example-alg2-leaf"));
    let root = root_of_pages(Algorithm::NonZeroLeaves, 3, |p| (p == 2).then_some(&page));
    assert_eq!(root.to_vec(), value("example-alg2-root"));
}

#[test]
fn rejects_records_out_of_order() {
    let ooo = |d: Vec<u8>, want: RecordType| match decode(&d).unwrap_err() {
        Error::OutOfOrder { record, .. } if record == want => {}
        e => panic!("expected out-of-order {want}, got {e}"),
    };
    // PAGE_BATCH before any ROUND.
    ooo(with(Stage::Round0, |_| {}), RecordType::PageBatch);
    // Capture state before CAPTURE.
    ooo(
        with(Stage::Round0, |e| e.p2m(0, &[1]).unwrap()),
        RecordType::P2m,
    );
    // A second HEADER.
    ooo(
        with(Stage::Round0, |e| e.header(MAX_PFN, b"x").unwrap()),
        RecordType::Header,
    );
    // Round numbers that skip.
    ooo(
        with(Stage::Round1, |e| e.round(5, true).unwrap()),
        RecordType::Round,
    );
    // A drain round before CAPTURE.
    ooo(
        with(Stage::Round0, |e| e.round(0, true).unwrap()),
        RecordType::Round,
    );
    // A page batch after CAPTURE without a drain round.
    ooo(with(Stage::Round1, |_| {}), RecordType::PageBatch);
    // P2M chunks with a gap.
    ooo(
        with(Stage::P2m, |e| e.p2m(1, &[1; 7]).unwrap()),
        RecordType::P2m,
    );
    // P2M_FRAMES with more pages than the guest's p2m has.
    ooo(
        with(Stage::Frames, |e| e.p2m_frames(&[1, 2]).unwrap()),
        RecordType::P2mFrames,
    );
    // END before DIGEST.
    ooo(with(Stage::Digest, |_| {}), RecordType::End);
    // Anything but END after DIGEST.
    let d = with(Stage::End, |e| e.round(2, true).unwrap());
    ooo(d, RecordType::Round);
}

#[test]
fn rejects_missing_capture_state() {
    let d = with(Stage::Vcpu, |_| {});
    assert!(matches!(decode(&d).unwrap_err(), Error::Missing(_)));
    let d = with(Stage::Types, |_| {});
    assert!(matches!(decode(&d).unwrap_err(), Error::Missing(_)));
}

#[test]
fn rejects_trailing_data_and_bad_values() {
    let mut d = valid();
    d.extend_from_slice(&[0; 8]);
    assert!(matches!(
        decode(&d).unwrap_err(),
        Error::TrailingData { .. }
    ));
    let d = with(Stage::Types, |e| e.page_types(0, &[9; 8]).unwrap());
    assert!(matches!(
        decode(&d).unwrap_err(),
        Error::BadValue {
            record: RecordType::PageTypes,
            ..
        }
    ));
    let d = with(Stage::Vcpu, |e| {
        e.vcpu(3, VcpuKind::Basic, &[1; 8]).unwrap()
    });
    assert!(matches!(
        decode(&d).unwrap_err(),
        Error::BadValue {
            record: RecordType::Vcpu,
            ..
        }
    ));
}

#[test]
fn rejects_nonzero_padding() {
    // HEADER's kernel string is 15 bytes, so its body has one padding byte at offset
    // 16 + 16 + 47.
    let mut d = valid();
    d[16 + 16 + 47] = 1;
    assert!(matches!(
        decode(&d).unwrap_err(),
        Error::NonZeroPadding { offset: 16 }
    ));
}

#[test]
fn leaf_table_must_cover_the_guest() {
    let mut leaves = vec![ZERO_LEAF; 4];
    struct Nop;
    impl Sink for Nop {}
    let e = decode_slice(&valid(), Some(&mut leaves), &mut Nop).unwrap_err();
    assert_eq!(e, Error::LeafTableTooSmall { have: 4, need: 8 });
}

/// The bytes of the hex block between `<!-- NAME-begin -->` and `<!-- NAME-end -->` in
/// docs/stream.md.
fn doc_hex(name: &str) -> Vec<u8> {
    let doc = include_str!("../../docs/stream.md");
    let start = doc.find(&format!("<!-- {name}-begin -->")).expect("marker");
    let end = doc.find(&format!("<!-- {name}-end -->")).expect("marker");
    let mut hex = String::new();
    for line in doc[start..end].lines().filter(|l| l.starts_with("    ")) {
        // "    OFFSET: xx xx ...  # comment"
        let l = line.split('#').next().unwrap();
        let l = l.split_once(':').map(|x| x.1).unwrap_or("");
        hex.extend(l.chars().filter(|c| c.is_ascii_hexdigit()));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// The worked example of docs/stream.md, byte for byte.
#[test]
fn worked_example_in_docs_matches_the_encoder() {
    let bytes = doc_hex("example-hex");
    let mut e = Encoder::new(Vec::new()).unwrap();
    e.header(1, b"6.12").unwrap();
    e.round(0, false).unwrap();
    e.page_batch(&[(0, None), (1, None)]).unwrap();
    e.capture(1, 1, 0).unwrap();
    e.page_types(0, &[page_type::L4 | page_type::PINNED, 0])
        .unwrap();
    e.p2m(0, &[0x1000, 0x1001]).unwrap();
    e.vcpu(0, VcpuKind::Basic, &[0xAB]).unwrap();
    let root = root_of_pages(Algorithm::CURRENT, 1, |_| None);
    e.digest(Algorithm::CURRENT, &root).unwrap();
    let ours = e.end().unwrap();
    assert_eq!(
        bytes, ours,
        "docs/stream.md example differs from the encoder"
    );
    let c = decode(&bytes).unwrap();
    assert_eq!(c.max_pfn, 1);
    assert!(c.pages.is_empty());
}

/// docs/stream.md gives the decoder's size; this prints it
/// (`cargo test -p checkpoint-stream --test decode decoder_size -- --nocapture`) and keeps it
/// from growing unnoticed.
#[test]
fn decoder_size() {
    let n = core::mem::size_of::<checkpoint_stream::Decoder>();
    println!("size_of::<Decoder>() = {n} bytes");
    assert!(n <= 24 * 1024, "{n} bytes");
}

// ---- PAGE_TYPES / P2M REPEAT records ----

/// Type and p2m tables shaped like a 128 MiB Linux PV guest: 32768 RAM pfns with distinct
/// mfns and a page-table page every 145 pfns (runs of normal pages too short to repeat), then
/// unpopulated pfns up to max_pfn 262143, where Linux's rounded-up p2m ends.
fn guest_128m_tables() -> (Vec<u8>, Vec<u64>) {
    let n = 262_144;
    let ram = 32_768;
    let types = (0..n)
        .map(|p| match p {
            _ if p >= ram => page_type::UNPOPULATED,
            _ if p % 145 == 7 => page_type::L1 | page_type::PINNED,
            _ => page_type::NORMAL,
        })
        .collect();
    let p2m = (0..n as u64)
        .map(|p| {
            if p < ram as u64 {
                0x20_0000 + 3 * p
            } else {
                INVALID_MFN
            }
        })
        .collect();
    (types, p2m)
}

/// A whole stream around the tables (no pages), the tables written by `tables`; also returns
/// the bytes the tables took.
fn table_stream(
    types: &[u8],
    p2m: &[u64],
    tables: impl FnOnce(&mut Encoder<Vec<u8>>),
) -> (Vec<u8>, u64) {
    let max_pfn = types.len() as u64 - 1;
    assert_eq!(p2m.len(), types.len());
    let mut e = Encoder::new(Vec::new()).unwrap();
    e.header(max_pfn, b"tables").unwrap();
    e.round(0, false).unwrap();
    e.capture(0, 1, 0).unwrap();
    let before = e.bytes();
    tables(&mut e);
    let table_bytes = e.bytes() - before;
    e.vcpu(0, VcpuKind::Basic, &[1]).unwrap();
    e.digest(
        Algorithm::CURRENT,
        &root_of_pages(Algorithm::CURRENT, max_pfn, |_| None),
    )
    .unwrap();
    (e.end().unwrap(), table_bytes)
}

/// The tables as a writer without REPEAT sends them: literal chunks of 4096 types and 512 mfns.
fn write_literal_tables(e: &mut Encoder<Vec<u8>>, types: &[u8], p2m: &[u64]) {
    let head = |first: usize, count: usize| {
        let mut h = [0u8; 16];
        h[0..8].copy_from_slice(&(first as u64).to_le_bytes());
        h[8..12].copy_from_slice(&(count as u32).to_le_bytes());
        h
    };
    for (i, c) in types.chunks(MAX_TYPES_CHUNK).enumerate() {
        let h = head(i * MAX_TYPES_CHUNK, c.len());
        e.raw_record(RecordType::PageTypes as u32, &[&h, c])
            .unwrap();
    }
    for (i, c) in p2m.chunks(MAX_P2M_CHUNK).enumerate() {
        let h = head(i * MAX_P2M_CHUNK, c.len());
        let b: Vec<u8> = c.iter().flat_map(|m| m.to_le_bytes()).collect();
        e.raw_record(RecordType::P2m as u32, &[&h, &b]).unwrap();
    }
}

/// (PAGE_TYPES, P2M) records in a stream that carry the REPEAT flag, and all of them.
fn count_table_records(data: &[u8]) -> ([usize; 2], [usize; 2]) {
    let (mut repeat, mut all) = ([0; 2], [0; 2]);
    let mut off = 16;
    while off < data.len() {
        let ty = u32::from_le_bytes(data[off..off + 4].try_into().unwrap());
        let len = u32::from_le_bytes(data[off + 4..off + 8].try_into().unwrap()) as usize;
        let body = &data[off + 16..off + 16 + len];
        let k = match ty {
            5 => Some(0),
            6 => Some(1),
            _ => None,
        };
        if let Some(k) = k {
            all[k] += 1;
            if u32::from_le_bytes(body[12..16].try_into().unwrap()) & TABLE_FLAG_REPEAT != 0 {
                repeat[k] += 1;
            }
        }
        off += 16 + pad8(len);
    }
    (repeat, all)
}

/// Records every table call: chunks must come in order, without gaps, and no larger than a
/// literal record's.
#[derive(Default)]
struct TableCalls {
    types: Vec<u8>,
    p2m: Vec<u64>,
    calls: usize,
}

impl Sink for TableCalls {
    fn page_types(&mut self, first: u64, t: &[u8]) -> Result<(), Error> {
        assert_eq!(first, self.types.len() as u64);
        assert!(!t.is_empty() && t.len() <= MAX_TYPES_CHUNK, "{}", t.len());
        self.types.extend_from_slice(t);
        self.calls += 1;
        Ok(())
    }
    fn p2m(&mut self, first: u64, m: U64s<'_>) -> Result<(), Error> {
        assert_eq!(first, self.p2m.len() as u64);
        assert!(!m.is_empty() && m.len() <= MAX_P2M_CHUNK, "{}", m.len());
        self.p2m.extend(m.iter());
        self.calls += 1;
        Ok(())
    }
}

/// Decode `data` both ways (model; allocation-free decoder with a leaf table and a sink that
/// checks the chunks) and check both give exactly these tables.
fn assert_tables_decode_to(data: &[u8], types: &[u8], p2m: &[u64]) {
    let c = decode(data).unwrap();
    assert!(c.page_types == types, "model: page types differ");
    assert!(c.p2m == p2m, "model: p2m differs");
    let mut leaves = vec![ZERO_LEAF; types.len()];
    let mut s = TableCalls::default();
    decode_slice(data, Some(&mut leaves), &mut s).unwrap();
    assert!(s.types == types, "decoder: page types differ");
    assert!(s.p2m == p2m, "decoder: p2m differs");
}

/// Tables built from (value, run length) pieces.
fn from_runs<T: Copy>(runs: &[(T, usize)]) -> Vec<T> {
    runs.iter()
        .flat_map(|&(v, n)| std::iter::repeat_n(v, n))
        .collect()
}

#[test]
fn tables_with_runs_round_trip_exactly() {
    let (u, n, l1) = (page_type::UNPOPULATED, page_type::NORMAL, page_type::L1);
    let (mt, mp) = (REPEAT_MIN_TYPES, REPEAT_MIN_P2M);
    // Runs just under, at and over the encoder's minimum, runs several expansion chunks long,
    // adjacent runs of different values, runs at both ends.
    let types = from_runs(&[
        (u, mt),
        (n, mt - 1),
        (l1, 1),
        (n, mt),
        (u, mt + 1),
        (n, 3 * MAX_TYPES_CHUNK + 7),
        (l1 | page_type::PINNED, 2),
        (u, 2 * MAX_TYPES_CHUNK),
    ]);
    let count = types.len();
    let mut p2m: Vec<u64> = from_runs(&[
        (INVALID_MFN, mp),
        (5, mp - 1),
        (6, mp),
        (7, 1),
        (INVALID_MFN, 5 * MAX_P2M_CHUNK + 3),
    ]);
    p2m.extend(
        (0..)
            .take(count - p2m.len() - mp)
            .map(|i| 0x1000 + i as u64 / 2),
    );
    p2m.extend(std::iter::repeat_n(INVALID_MFN, mp));
    let (data, _) = table_stream(&types, &p2m, |e| {
        e.page_types(0, &types).unwrap();
        e.p2m(0, &p2m).unwrap();
    });
    let (repeat, _) = count_table_records(&data);
    assert_eq!(
        repeat,
        [5, 4],
        "REPEAT records for the runs of at least the minimum"
    );
    assert_tables_decode_to(&data, &types, &p2m);

    // Random runs, several seeds.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    for _ in 0..8 {
        let mut types = Vec::new();
        let mut p2m = Vec::new();
        while types.len() < 40_000 {
            let max = if rnd(2) == 0 { 20 } else { 9000 };
            let len = 1 + rnd(max) as usize;
            types.extend(std::iter::repeat_n(
                [0, 1, 2, 0x0F, 0x84][rnd(5) as usize],
                len,
            ));
        }
        while p2m.len() < types.len() {
            let max = if rnd(2) == 0 { 20 } else { 3000 };
            let len = 1 + rnd(max) as usize;
            let v = [INVALID_MFN, rnd(1 << 40), 0][rnd(3) as usize];
            p2m.extend(std::iter::repeat_n(v, len));
        }
        p2m.truncate(types.len());
        let (data, _) = table_stream(&types, &p2m, |e| {
            e.page_types(0, &types).unwrap();
            e.p2m(0, &p2m).unwrap();
        });
        assert_tables_decode_to(&data, &types, &p2m);
    }
}

#[test]
fn a_repeat_record_of_one_entry_expands() {
    let types = [0x84, 1, 0, 0, 0, 2, 3, 4 | page_type::PINNED];
    let p2m = [0xABC, 101, 102, 103, 104, 105, 106, INVALID_MFN];
    let d = build(|e, s| match s {
        Stage::Types => {
            e.page_types_repeat(0, 1, types[0]).unwrap();
            e.page_types(1, &types[1..]).unwrap();
            true
        }
        Stage::P2m => {
            e.p2m_repeat(0, 1, p2m[0]).unwrap();
            e.p2m(1, &p2m[1..7]).unwrap();
            e.p2m_repeat(7, 1, INVALID_MFN).unwrap();
            true
        }
        _ => false,
    });
    assert_eq!(count_table_records(&d).0, [1, 2]);
    let c = decode(&d).unwrap();
    assert_eq!((&c.page_types[..], &c.p2m[..]), (&types[..], &p2m[..]));
    decode_leaves(&d).unwrap();
}

/// A PAGE_TYPES or P2M body written field by field: first_pfn, count, flags, entries.
fn table_record(
    e: &mut Encoder<Vec<u8>>,
    ty: RecordType,
    first: u64,
    count: u32,
    flags: u32,
    entries: &[u8],
) {
    let mut h = [0u8; 16];
    h[0..8].copy_from_slice(&first.to_le_bytes());
    h[8..12].copy_from_slice(&count.to_le_bytes());
    h[12..16].copy_from_slice(&flags.to_le_bytes());
    e.raw_record(ty as u32, &[&h, entries]).unwrap();
}

#[test]
fn rejects_hostile_repeat_records() {
    use RecordType::{P2m, PageTypes};
    let err = |d: Vec<u8>| {
        let e = decode(&d).unwrap_err();
        // The allocation-free path gives the same error.
        assert_eq!(decode_leaves(&d).unwrap_err(), e);
        e
    };
    let types = |f: &dyn Fn(&mut Encoder<Vec<u8>>)| err(with(Stage::Types, f));
    let p2m = |f: &dyn Fn(&mut Encoder<Vec<u8>>)| err(with(Stage::P2m, f));

    // REPEAT holds exactly one entry.
    let e = types(&|e| table_record(e, PageTypes, 0, 8, TABLE_FLAG_REPEAT, &[0, 0]));
    assert!(
        matches!(
            e,
            Error::BadLength {
                record: PageTypes,
                len: 18,
                ..
            }
        ),
        "{e}"
    );
    let e = p2m(&|e| table_record(e, P2m, 0, 8, TABLE_FLAG_REPEAT, &[0; 16]));
    assert!(
        matches!(
            e,
            Error::BadLength {
                record: P2m,
                len: 32,
                ..
            }
        ),
        "{e}"
    );

    // Unknown flag bits, with or without REPEAT.
    for flags in [2, 3, 0x8000_0000] {
        let e = types(&|e| table_record(e, PageTypes, 0, 8, flags, &[0; 8]));
        assert!(
            matches!(
                e,
                Error::BadValue {
                    record: PageTypes,
                    ..
                }
            ),
            "{flags:#x}: {e}"
        );
        let e = p2m(&|e| table_record(e, P2m, 0, 8, flags, &[0; 64]));
        assert!(
            matches!(e, Error::BadValue { record: P2m, .. }),
            "{flags:#x}: {e}"
        );
    }
    // P2M_FRAMES keeps offset 12 reserved: no REPEAT there.
    let e = err(with(Stage::Frames, |e| {
        table_record(
            e,
            RecordType::P2mFrames,
            0,
            1,
            TABLE_FLAG_REPEAT,
            &6u64.to_le_bytes(),
        )
    }));
    assert!(
        matches!(
            e,
            Error::BadValue {
                record: RecordType::P2mFrames,
                ..
            }
        ),
        "{e}"
    );

    // A REPEAT count of 0.
    let e = types(&|e| table_record(e, PageTypes, 0, 0, TABLE_FLAG_REPEAT, &[0]));
    assert!(
        matches!(
            e,
            Error::BadValue {
                record: PageTypes,
                ..
            }
        ),
        "{e}"
    );

    // Counts past max_pfn, and hostile first pfns and counts that would overflow u64.
    let e = p2m(&|e| e.p2m_repeat(0, 9, 1).unwrap());
    assert!(
        matches!(
            e,
            Error::PfnOutOfRange {
                record: P2m,
                pfn: 8,
                max_pfn: 7,
                ..
            }
        ),
        "{e}"
    );
    let e = types(&|e| e.page_types_repeat(1, MAX_REPEAT_COUNT, 0).unwrap());
    assert!(
        matches!(
            e,
            Error::PfnOutOfRange {
                record: PageTypes,
                pfn: 0xFFFF_FFFF,
                ..
            }
        ),
        "{e}"
    );
    let e = p2m(&|e| e.p2m_repeat(u64::MAX - 1, 8, 1).unwrap());
    assert!(
        matches!(
            e,
            Error::PfnOutOfRange {
                record: P2m,
                pfn: u64::MAX,
                ..
            }
        ),
        "{e}"
    );
    let e = types(&|e| e.page_types_repeat(u64::MAX, MAX_REPEAT_COUNT, 0).unwrap());
    assert!(
        matches!(
            e,
            Error::PfnOutOfRange {
                record: PageTypes,
                pfn: u64::MAX,
                ..
            }
        ),
        "{e}"
    );

    // Invalid type bytes: unknown, pinned normal page, pinned unpopulated pfn.
    for t in [9, 0x80, 0x8F] {
        let e = types(&|e| e.page_types_repeat(0, 8, t).unwrap());
        assert!(
            matches!(
                e,
                Error::BadValue {
                    record: PageTypes,
                    ..
                }
            ),
            "{t:#x}: {e}"
        );
    }

    // Gaps and overlaps between REPEAT chunks and literal ones, either way round.
    let ooo = |e: Error, want: RecordType| {
        assert!(
            matches!(e, Error::OutOfOrder { record, .. } if record == want),
            "{e}"
        )
    };
    ooo(
        types(&|e| {
            e.page_types_repeat(0, 4, 0).unwrap();
            e.page_types(3, &[0; 5]).unwrap()
        }),
        PageTypes,
    );
    ooo(
        types(&|e| {
            e.page_types_repeat(0, 3, 0).unwrap();
            e.page_types(4, &[0; 4]).unwrap()
        }),
        PageTypes,
    );
    ooo(
        p2m(&|e| {
            e.p2m(0, &[1; 4]).unwrap();
            e.p2m_repeat(5, 3, INVALID_MFN).unwrap()
        }),
        P2m,
    );
    ooo(
        p2m(&|e| {
            e.p2m_repeat(0, 5, INVALID_MFN).unwrap();
            e.p2m_repeat(4, 4, INVALID_MFN).unwrap()
        }),
        P2m,
    );
    // A REPEAT that stops short leaves the table incomplete at DIGEST.
    let e = types(&|e| e.page_types_repeat(0, 7, 0).unwrap());
    assert!(matches!(e, Error::Missing(_)), "{e}");
}

/// The REPEAT example of docs/stream.md: exactly the encoder's bytes, and, spliced into a
/// stream of a guest with max_pfn 262143 and 32768 RAM pfns, it decodes to the tables it says.
#[test]
fn repeat_example_in_docs_decodes() {
    let bytes = doc_hex("example-repeat");
    let mut e = Encoder::new(Vec::new()).unwrap();
    e.page_types_repeat(0x8000, 0x38000, page_type::UNPOPULATED)
        .unwrap();
    e.p2m_repeat(0x8000, 0x38000, INVALID_MFN).unwrap();
    assert_eq!(
        bytes,
        e.into_inner()[16..],
        "docs/stream.md REPEAT example differs from the encoder"
    );
    assert_eq!(bytes.len(), 80);

    let (types, p2m) = guest_128m_tables();
    let mut e = Encoder::new(Vec::new()).unwrap();
    e.header(0x3FFFF, b"tables").unwrap();
    e.capture(0, 1, 0).unwrap();
    e.page_types(0, &types[..0x8000]).unwrap();
    e.p2m(0, &p2m[..0x8000]).unwrap();
    let mut data = e.into_inner();
    data.extend_from_slice(&bytes);
    let mut e = Encoder::new(Vec::new()).unwrap();
    e.vcpu(0, VcpuKind::Basic, &[1]).unwrap();
    e.digest(
        Algorithm::CURRENT,
        &root_of_pages(Algorithm::CURRENT, 0x3FFFF, |_| None),
    )
    .unwrap();
    data.extend_from_slice(&e.end().unwrap()[16..]);
    assert_tables_decode_to(&data, &types, &p2m);
}

/// The byte saving on the tables of a 128 MiB guest (max_pfn 262143, 32768 RAM pfns), sent
/// after the capture while the guest is stopped: printed with
/// `cargo test -p checkpoint-stream --test decode table_bytes -- --nocapture`.
#[test]
fn table_bytes_of_a_128_mib_guest_shrink() {
    let (types, p2m) = guest_128m_tables();
    let (old, old_bytes) = table_stream(&types, &p2m, |e| write_literal_tables(e, &types, &p2m));
    let (new, new_bytes) = table_stream(&types, &p2m, |e| {
        e.page_types(0, &types).unwrap();
        e.p2m(0, &p2m).unwrap();
    });
    // Both decode to the same tables: a reader sees no difference.
    assert_tables_decode_to(&old, &types, &p2m);
    assert_tables_decode_to(&new, &types, &p2m);
    let (repeat, all) = count_table_records(&new);
    let (_, all_old) = count_table_records(&old);
    println!(
        "128 MiB guest tables (max_pfn 262143, 32768 RAM pfns): without REPEAT {old_bytes} bytes \
         ({} PAGE_TYPES + {} P2M records), with REPEAT {new_bytes} bytes ({} + {} records, \
         {} + {} of them REPEAT)",
        all_old[0], all_old[1], all[0], all[1], repeat[0], repeat[1]
    );
    // Literal: 64 PAGE_TYPES records of 4096 types and 512 P2M records of 512 mfns.
    assert_eq!(old_bytes, 64 * (32 + 4096) + 512 * (32 + 4096));
    // With REPEAT: the RAM part as before (8 + 64 records), the rest one record per table.
    assert_eq!(new_bytes, 8 * (32 + 4096) + 40 + 64 * (32 + 4096) + 40);
    // What is left is the RAM part, one distinct mfn per pfn.
    assert!(new_bytes * 7 < old_bytes);
}
