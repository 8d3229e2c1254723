//! Golden structure checks of the exporter, read back with our own xl image reader.

use super::image::parse;
use super::*;

use super::sample::{guest, mfn, pte, MAX_PFN};

fn export_bytes(c: &FullCheckpoint) -> Result<Vec<u8>, ExportError> {
    let mut v = Vec::new();
    export(c, "name = \"t\"\n", (4, 17), &mut v)?;
    Ok(v)
}

#[test]
fn image_has_xl_libxl_and_libxc_structure() {
    let data = export_bytes(&guest()).unwrap();
    assert_eq!(&data[..32], XL_MAGIC);
    // The xl header and config are not padded (neither does xl); the streams are.
    let libxl_start = 48 + 4 + "name = \"t\"\n".len();
    assert_eq!(
        (data.len() - libxl_start) % 8,
        0,
        "libxl/libxc records are 8-byte aligned"
    );
    let img = parse(&data).unwrap();
    assert_eq!(img.mandatory_flags, XL_FLAG_STREAM_V2);
    assert_eq!(img.config, b"name = \"t\"\n");
    assert_eq!(
        (
            img.libxc_version,
            img.domain_type,
            img.page_shift,
            img.xen_version
        ),
        (3, 1, 12, (4, 17))
    );
    assert_eq!((img.guest_width, img.pt_levels), (8, 4));
    assert_eq!(
        img.libxc_layout(),
        [
            "X86_PV_INFO",
            "STATIC_DATA_END",
            "X86_PV_P2M_FRAMES",
            "PAGE_DATA",
            "SHARED_INFO",
            "X86_PV_VCPU_BASIC",
            "END"
        ]
    );
    let libxl: Vec<_> = img
        .records
        .iter()
        .filter(|r| r.stream == "libxl")
        .map(|r| r.name)
        .collect();
    assert_eq!(libxl, ["LIBXC_CONTEXT", "END"]);
    assert_eq!((img.p2m_start, img.p2m_end), (0, MAX_PFN as u32));
    assert_eq!(img.p2m_frames, vec![40, 41, 42]);
    assert_eq!(img.page_data_records, 2, "1101 pfns in batches of 1024");
}

#[test]
fn page_types_and_pages_follow_the_checkpoint() {
    let c = guest();
    let img = parse(&export_bytes(&c).unwrap()).unwrap();
    assert_eq!(
        img.types.len() as u64,
        MAX_PFN + 1,
        "every pfn is described"
    );
    assert_eq!(img.types[&10], 0xC, "pinned L4");
    assert_eq!(img.types[&11], 0x3);
    assert_eq!(img.types[&12], 0x2);
    assert_eq!(img.types[&13], 0x9, "pinned L1");
    assert_eq!(img.types[&5], pfinfo::XTAB);
    assert!(!img.pages.contains_key(&5), "XTAB carries no data");
    assert_eq!(
        img.pages.len() as u64,
        MAX_PFN,
        "all populated pfns, zero pages included"
    );
    for pfn in 20..30u64 {
        assert_eq!(img.pages[&pfn][..8], pfn.to_le_bytes());
    }
}

#[test]
fn page_tables_are_normalised_to_pfns() {
    let img = parse(&export_bytes(&guest()).unwrap()).unwrap();
    let e = |pfn: u64, i: usize| {
        u64::from_le_bytes(img.pages[&pfn][i * 8..i * 8 + 8].try_into().unwrap())
    };
    assert_eq!(e(10, 0), (11 << 12) | 0x67, "L4 -> L3 as a pfn, flags kept");
    assert_eq!(e(10, 511), (11 << 12) | 0x63);
    assert_eq!(e(10, 256), 0, "Xen's L4 slots are cleared");
    assert_eq!(e(11, 0), (12 << 12) | 0x67);
    assert_eq!(e(12, 3), (13 << 12) | 0x67);
    assert_eq!(e(13, 9), (29 << 12) | 0x8000_0000_0000_0067, "NX bit kept");
    assert_eq!(e(13, 10), 0);
}

#[test]
fn vcpu_context_is_normalised_and_the_shared_info_synthesised() {
    let img = parse(&export_bytes(&guest()).unwrap()).unwrap();
    let (id, ty, ctx) = &img.vcpus[0];
    assert_eq!(
        (*id, *ty, ctx.len()),
        (0, rec::X86_PV_VCPU_BASIC, vcpu::SIZE)
    );
    assert_eq!(get64(ctx, vcpu::RDX), 1, "start_info pfn");
    assert_eq!(get64(ctx, vcpu::GDT_FRAMES), 14);
    assert_eq!(get64(ctx, vcpu::CR3), 10 << 12);
    assert_eq!(get64(ctx, vcpu::CR1), 1 | (15 << 12));
    let sh = img.shared_info.unwrap();
    assert_eq!(get64(&sh, shinfo::ARCH_MAX_PFN), MAX_PFN + 1);
    assert_eq!(sh[shinfo::VCPU_INFO_UPCALL_MASK0], 1);
}

#[test]
fn export_refuses_what_restore_would_refuse() {
    let mut c = guest();
    c.p2m_frames.clear();
    assert!(matches!(export_bytes(&c), Err(ExportError::NoP2mFrames)));

    let mut c = guest();
    c.checkpoint.pages.get_mut(&12).unwrap()[8..16]
        .copy_from_slice(&((0x1234u64 << 12) | 1).to_le_bytes());
    assert!(matches!(
        export_bytes(&c),
        Err(ExportError::ForeignPte {
            pfn: 12,
            level: 2,
            index: 1,
            mfn: 0x1234
        })
    ));

    let mut c = guest();
    c.checkpoint.pages.get_mut(&12).unwrap()[8..16]
        .copy_from_slice(&(pte(20, 0x80 | 1)).to_le_bytes());
    assert!(matches!(
        export_bytes(&c),
        Err(ExportError::Superpage { pfn: 12, .. })
    ));

    let mut c = guest();
    c.checkpoint.page_types[10] = page_type::NORMAL;
    assert!(matches!(
        export_bytes(&c),
        Err(ExportError::VcpuFrameType { what: "cr3", .. })
    ));

    let mut c = guest();
    c.checkpoint.page_types[41] = page_type::L1;
    assert!(matches!(
        export_bytes(&c),
        Err(ExportError::P2mFrameType {
            index: 1,
            pfn: 41,
            ..
        })
    ));

    let mut c = guest();
    c.checkpoint.vcpus[0].data.truncate(100);
    assert!(matches!(export_bytes(&c), Err(ExportError::NoVcpu { .. })));
}

#[test]
fn import_then_export_reproduces_the_image() {
    // An image, read back as a checkpoint (identity p2m) and exported again, is the same
    // bytes: the path used to test the exporter against real `xl save` images in the lab.
    let first = export_bytes(&guest()).unwrap();
    let c2 = parse(&first).unwrap().to_checkpoint().unwrap();
    let mut again = Vec::new();
    export(&c2, "name = \"t\"\n", (4, 17), &mut again).unwrap();
    assert!(first == again, "re-export differs");
    // And it survives the checkpoint stream in between.
    let bytes = c2.write_to(Vec::new()).unwrap();
    let c3 = FullCheckpoint::from_bytes(&bytes).unwrap();
    let mut third = Vec::new();
    export(&c3, "name = \"t\"\n", (4, 17), &mut third).unwrap();
    assert!(first == third);
}

#[test]
fn json_configs_are_flagged_and_nul_terminated_like_xl_writes_them() {
    let mut v = Vec::new();
    export(&guest(), "{\"c_info\": {}}", (4, 17), &mut v).unwrap();
    let img = parse(&v).unwrap();
    assert_eq!(img.mandatory_flags, XL_FLAG_STREAM_V2 | XL_FLAG_JSON);
    assert_eq!(img.config, b"{\"c_info\": {}}\0");
}

#[test]
fn scrambled_import_is_undone_by_export() {
    // Import with machine frames that are not the pfns (as a real capture has them): the
    // exporter's normalisation must give back exactly the original image.
    let first = export_bytes(&guest()).unwrap();
    let opts = image::ImportOptions {
        scramble_mfns: true,
        drop_shared_info: false,
    };
    let c2 = parse(&first).unwrap().to_checkpoint_with(opts).unwrap();
    assert_ne!(c2.checkpoint.p2m[10], 10);
    assert_ne!(
        get64(c2.checkpoint.vcpu(0, VcpuKind::Basic).unwrap(), vcpu::CR3),
        10 << 12
    );
    let mut again = Vec::new();
    export(&c2, "name = \"t\"\n", (4, 17), &mut again).unwrap();
    assert!(
        first == again,
        "normalisation did not undo the scrambled frames"
    );
}

#[test]
fn reader_rejects_damaged_images() {
    let data = export_bytes(&guest()).unwrap();
    assert!(matches!(
        parse(&data[..data.len() - 8]),
        Err(image::ImageError::Truncated(_))
    ));
    let mut d = data.clone();
    d[0] = b'Y';
    assert!(matches!(parse(&d), Err(image::ImageError::BadMagic)));
}

#[test]
fn restore_localisation_inverts_this_normalisation() {
    // The loader's restore (inflate_core::restore::pagetable) applied to what the exporter
    // wrote, with pfn -> the original mfn, gives back every table of the guest as captured
    // (Xen's L4 slots excepted: both sides clear them).
    let c = guest();
    let k = &c.checkpoint;
    let img = parse(&export_bytes(&c).unwrap()).unwrap();
    let mut tables = 0;
    for pfn in 0..=MAX_PFN {
        let t = k.page_types[pfn as usize] & !page_type::PINNED;
        if !(page_type::L1..=page_type::L4).contains(&t) {
            continue;
        }
        tables += 1;
        let mut page = *img.pages[&pfn];
        inflate_core::restore::pagetable::rewrite(&mut page, t, |p| Some(k.p2m[p as usize]))
            .unwrap();
        let mut want = **k.pages.get(&pfn).unwrap();
        if t == page_type::L4 {
            use checkpoint_abi::xen::{L4_XEN_FIRST, L4_XEN_LAST};
            want[L4_XEN_FIRST * 8..(L4_XEN_LAST + 1) * 8].fill(0);
        }
        assert!(page == want, "pfn {pfn}: localise(normalise(t)) != t");
    }
    assert_eq!(tables, 5);
}

/// Offset of the first libxc record of type `ty` in an exported image (the image's own
/// reader finds it), and its body length.
fn record_at(data: &[u8], ty: u32) -> (usize, usize) {
    let img = parse(data).unwrap();
    let r = img
        .records
        .iter()
        .find(|r| r.stream == "libxc" && r.ty == ty)
        .unwrap();
    (r.offset, r.length as usize)
}

fn put32(d: &mut [u8], o: usize, v: u32) {
    d[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

fn import(data: &[u8]) -> Result<FullCheckpoint, image::ImageError> {
    parse(data)?.to_checkpoint()
}

#[test]
fn importer_sizes_nothing_from_the_p2m_end_alone() {
    // A p2m end of 2^24 - 1 (64 GiB of pfns) in an image that lists 1101 pfns: refused
    // before any per-pfn array is allocated.
    let mut d = export_bytes(&guest()).unwrap();
    let (at, _) = record_at(&d, rec::X86_PV_P2M_FRAMES);
    put32(&mut d, at + 8 + 4, (1 << 24) - 1);
    let e = import(&d).unwrap_err().to_string();
    assert!(e.contains("lists 1101 pfns"), "{e}");
    // Above what the checkpoint model holds at all.
    put32(&mut d, at + 8 + 4, u32::MAX);
    let e = import(&d).unwrap_err().to_string();
    assert!(e.contains("p2m range"), "{e}");
}

#[test]
fn importer_refuses_inconsistent_counts() {
    let data = export_bytes(&guest()).unwrap();
    // PAGE_DATA claiming more pfns than its record holds (count * 8 near 2^35).
    let mut d = data.clone();
    let (at, _) = record_at(&d, rec::PAGE_DATA);
    put32(&mut d, at + 8, u32::MAX);
    assert!(parse(&d)
        .unwrap_err()
        .to_string()
        .contains("shorter than its pfn list"));
    // A p2m frame list of the wrong length for the p2m end.
    let mut d = data.clone();
    let (at, _) = record_at(&d, rec::X86_PV_P2M_FRAMES);
    put32(&mut d, at + 8 + 4, 400); // pfns 0..=400 need one frame, the record has three
    assert!(import(&d).is_err());
    // Reserved bits in a PAGE_DATA entry.
    let mut d = data.clone();
    let (at, _) = record_at(&d, rec::PAGE_DATA);
    d[at + 16 + 6] |= 0x10;
    assert!(parse(&d).unwrap_err().to_string().contains("reserved bits"));
    // A second basic state for vCPU 0 (the record repeated in place of SHARED_INFO).
    let mut d = data.clone();
    let (si, _) = record_at(&d, rec::SHARED_INFO);
    let (vc, vlen) = record_at(&d, rec::X86_PV_VCPU_BASIC);
    let vrec = d[vc..vc + 8 + vlen].to_vec();
    d.splice(si..si + 8 + PAGE_SIZE, vrec);
    assert!(parse(&d).unwrap_err().to_string().contains("second record"));
}

#[test]
fn importer_refuses_vcpu_frames_outside_the_image() {
    let mut c = guest();
    // An identity p2m so the image's vCPU frames are plain pfns after export.
    let ctx = &mut c.checkpoint.vcpus[0].data;
    put64(ctx, vcpu::CR3, mfn(10) << 12);
    let mut d = export_bytes(&c).unwrap();
    let (at, _) = record_at(&d, rec::X86_PV_VCPU_BASIC);
    let ctx = at + 8 + 8;
    put64(&mut d[ctx..], vcpu::CR3, !0xfff);
    let opts = image::ImportOptions {
        scramble_mfns: true,
        drop_shared_info: false,
    };
    let e = parse(&d)
        .unwrap()
        .to_checkpoint_with(opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cr3"), "{e}");
    put64(&mut d[ctx..], vcpu::CR3, 10 << 12);
    put64(&mut d[ctx..], vcpu::RDX, 5); // start_info on the unpopulated pfn
    let e = parse(&d).unwrap().to_checkpoint().unwrap_err().to_string();
    assert!(e.contains("start_info"), "{e}");
}

#[test]
fn export_refuses_duplicate_mfns() {
    let mut c = guest();
    c.checkpoint.p2m[30] = c.checkpoint.p2m[20];
    assert!(matches!(
        export_bytes(&c),
        Err(ExportError::DuplicateMfn(20, 30, _))
    ));
}

#[test]
fn imports_are_streams_the_decoder_accepts() {
    let data = export_bytes(&guest()).unwrap();
    for scramble_mfns in [false, true] {
        for drop_shared_info in [false, true] {
            let opts = image::ImportOptions {
                scramble_mfns,
                drop_shared_info,
            };
            let c = parse(&data).unwrap().to_checkpoint_with(opts).unwrap();
            let bytes = c.write_to(Vec::new()).unwrap();
            let back = FullCheckpoint::from_bytes(&bytes).expect("the decoder refused an import");
            let (a, b) = (&back.checkpoint, &c.checkpoint);
            assert!(a.pages == b.pages && a.page_types == b.page_types && a.p2m == b.p2m);
            assert!(a.vcpus == b.vcpus && a.shared_info == b.shared_info && a.digest == b.digest);
            assert_eq!(back.p2m_frames, c.p2m_frames);
        }
    }
}
