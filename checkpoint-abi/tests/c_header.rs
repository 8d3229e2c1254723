//! The C header `c/checkpoint_abi.h` is generated from the crate: this test fails when the
//! committed header differs from what the definitions give (regenerate it with
//! `CHECKPOINT_ABI_WRITE_HEADER=1 cargo test -p checkpoint-abi`), and, when a C compiler is
//! present, compiles the header so that its static asserts check C's layout of every struct
//! against the offsets Rust computed.

use checkpoint_abi::{dev, page_type, vcpu_ctx, xen};
use std::fmt::Write;
use std::path::PathBuf;
use std::process::Command;

fn c_struct(out: &mut String, name: &str, size: usize, fields: &[(&str, &str, usize)]) {
    writeln!(out, "struct {name} {{ /* {size} bytes */").unwrap();
    for (f, ty, off) in fields {
        let decl = match ty.split_once('[') {
            Some((base, n)) => format!("{base} {f}[{n}"),
            None => format!("{ty} {f}"),
        };
        writeln!(out, "\t{decl}; /* {off} */").unwrap();
    }
    writeln!(out, "}};").unwrap();
    writeln!(
        out,
        "_Static_assert(sizeof(struct {name}) == {size}, \"{name} size\");"
    )
    .unwrap();
    for (f, _, off) in fields {
        writeln!(
            out,
            "_Static_assert(offsetof(struct {name}, {f}) == {off}, \"{name}.{f}\");"
        )
        .unwrap();
    }
    out.push('\n');
}

fn header() -> String {
    let mut h = String::new();
    h.push_str(
        "/* SPDX-License-Identifier: GPL-2.0 */\n\
         /* GENERATED from checkpoint-abi/src/abi.rs by checkpoint-abi/tests/c_header.rs: do not\n \
         * edit. Regenerate: CHECKPOINT_ABI_WRITE_HEADER=1 cargo test -p checkpoint-abi\n \
         * The /dev/checkpoint ABI (docs/checkpoint-abi.md) for C programs. */\n\
         #ifndef CHECKPOINT_ABI_H\n#define CHECKPOINT_ABI_H\n\n\
         #include <stddef.h>\n#include <stdint.h>\n\n",
    );
    writeln!(h, "#define CKPT_ABI_VERSION {}", dev::ABI_VERSION).unwrap();
    writeln!(h, "#define CKPT_PAGE_SIZE {}", dev::PAGE_SIZE).unwrap();
    writeln!(h, "#define CKPT_MAX_READ_PAGES {}", dev::MAX_READ_PAGES).unwrap();
    writeln!(
        h,
        "/* Linux's _IOC(dir, 'C', nr, size) on x86_64: dir 1 write, 2 read, 3 both. */\n\
         #define CKPT_IOC(dir, nr, size) (((unsigned long)(dir) << 30) | \\\n\
         \t((unsigned long)(size) << 16) | (0x{:02X}UL << 8) | (nr))",
        dev::IOC_MAGIC
    )
    .unwrap();
    for (name, v) in dev::IOCTLS {
        writeln!(h, "#define {name} 0x{v:08X}U").unwrap();
    }
    h.push('\n');
    for (name, v) in [
        ("CKPT_TABLE_P2M", dev::TABLE_P2M),
        ("CKPT_TABLE_P2M_CAPTURED", dev::TABLE_P2M_CAPTURED),
        ("CKPT_TABLE_PAGE_TYPES", dev::TABLE_PAGE_TYPES),
        ("CKPT_TABLE_P2M_FRAMES", dev::TABLE_P2M_FRAMES),
        ("CKPT_STATE_SESSION", dev::STATE_SESSION),
        ("CKPT_STATE_CAPTURE_HELD", dev::STATE_CAPTURE_HELD),
        ("CKPT_THROTTLE_SET", dev::THROTTLE_SET),
        ("CKPT_THROTTLE_MAX", dev::THROTTLE_MAX as u32),
    ] {
        writeln!(h, "#define {name} {v}").unwrap();
    }
    for (name, v) in [
        ("CKPT_TRACK_ELIDE_FREE", dev::TRACK_ELIDE_FREE),
        ("CKPT_TRACK_FAULT", dev::TRACK_FAULT),
        ("CKPT_TRACK_ORACLE", dev::TRACK_ORACLE),
        ("CKPT_CAPTURE_ORACLE", dev::CAPTURE_ORACLE),
    ] {
        writeln!(h, "#define {name} {v}ULL").unwrap();
    }
    writeln!(h, "#define CKPT_P2M_INVALID 0x{:016X}ULL", dev::P2M_INVALID).unwrap();
    writeln!(
        h,
        "#define CKPT_P2M_IDENTITY 0x{:016X}ULL",
        dev::P2M_IDENTITY
    )
    .unwrap();
    writeln!(h, "#define CKPT_P2M_FOREIGN 0x{:016X}ULL", dev::P2M_FOREIGN).unwrap();
    h.push('\n');
    for (name, v) in page_type::NAMES {
        writeln!(h, "#define {name} 0x{v:02X}").unwrap();
    }
    writeln!(
        h,
        "#define CKPT_PT_LEVEL_MASK 0x{:02X}",
        page_type::LEVEL_MASK
    )
    .unwrap();
    writeln!(h, "#define CKPT_XEN_L4_FIRST {}", xen::L4_XEN_FIRST).unwrap();
    writeln!(h, "#define CKPT_XEN_L4_LAST {}", xen::L4_XEN_LAST).unwrap();
    h.push('\n');
    h.push_str("/* Xen's x86_64 struct vcpu_guest_context: size and byte offsets. */\n");
    writeln!(h, "#define CKPT_VCPU_CTX_BYTES {}", vcpu_ctx::SIZE).unwrap();
    for (name, off) in vcpu_ctx::OFFSETS {
        writeln!(h, "#define CKPT_VCPU_{name} {off}").unwrap();
    }
    h.push('\n');
    c_struct(
        &mut h,
        dev::Facts::C_NAME,
        dev::Facts::SIZE,
        dev::Facts::FIELDS,
    );
    c_struct(
        &mut h,
        dev::Track::C_NAME,
        dev::Track::SIZE,
        dev::Track::FIELDS,
    );
    c_struct(
        &mut h,
        dev::Round::C_NAME,
        dev::Round::SIZE,
        dev::Round::FIELDS,
    );
    c_struct(
        &mut h,
        dev::Capture::C_NAME,
        dev::Capture::SIZE,
        dev::Capture::FIELDS,
    );
    c_struct(
        &mut h,
        dev::Throttle::C_NAME,
        dev::Throttle::SIZE,
        dev::Throttle::FIELDS,
    );
    c_struct(
        &mut h,
        dev::Hold::C_NAME,
        dev::Hold::SIZE,
        dev::Hold::FIELDS,
    );
    c_struct(
        &mut h,
        dev::Table::C_NAME,
        dev::Table::SIZE,
        dev::Table::FIELDS,
    );
    h.push_str("#endif /* CHECKPOINT_ABI_H */\n");
    h
}

fn header_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("c/checkpoint_abi.h")
}

#[test]
fn committed_header_is_current() {
    let want = header();
    let path = header_path();
    if std::env::var_os("CHECKPOINT_ABI_WRITE_HEADER").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let got = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "{} is stale; regenerate with CHECKPOINT_ABI_WRITE_HEADER=1 cargo test -p checkpoint-abi",
        path.display()
    );
}

#[test]
fn c_compiler_agrees_with_the_layout() {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    if Command::new(&cc).arg("--version").output().is_err() {
        eprintln!("no C compiler ({cc}): layout not checked by C");
        return;
    }
    let dir = std::env::temp_dir().join(format!("checkpoint-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let h = dir.join("checkpoint_abi.h");
    std::fs::write(&h, header()).unwrap();
    let c = dir.join("t.c");
    std::fs::write(
        &c,
        "#include \"checkpoint_abi.h\"\nint main(void) { return 0; }\n",
    )
    .unwrap();
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-fsyntax-only"])
        .arg(&c)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        out.status.success(),
        "the C compiler disagrees with the Rust layout:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
