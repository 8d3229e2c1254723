#!/usr/bin/env bash
# Recipe of the checkpoint-guest test image: the Rust-for-Linux guest kernel
# (scripts/build-guest-kernel), a gzip'd newc initramfs with static busybox (from the lab
# image), the checkpoint module (scripts/build-checkpoint-kmod), ckpt-test (ABI exercise +
# pattern P/Q check) and checkpointd when the crate exists.
# usage: build.sh LAB_IMAGE_DIR OUTDIR
# The image depends on the kernel and module too, so callers key OUTDIR on KMOD's path
# (scripts/test.d/40-checkpoint-guest.sh does).
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib/common.sh"
recipe=$(cd "$(dirname "$0")" && pwd)
img=${1:?usage: build.sh LAB_IMAGE_DIR OUTDIR}
out=${2:?usage: build.sh LAB_IMAGE_DIR OUTDIR}
need_pkgs gcc libc6-dev cpio gzip
eval "$(bash "$REPO_ROOT/scripts/build-checkpoint-kmod")"
work="$out.work"
rm -rf "$work"; mkdir -p "$work/root"/{bin,dev,proc,sys,tmp,lib/modules}
r="$work/root"
cp "$img/busybox" "$r/bin/busybox"
gcc -O2 -Wall -Wextra -static -I "$REPO_ROOT/checkpoint-abi/c" -o "$r/bin/ckpt-test" "$recipe/ckpt-test.c"
gcc -O2 -Wall -Wextra -static -o "$r/bin/pattern-writer" "$recipe/pattern-writer.c"
# The lab's memory-dirtying workload (read from its recipe, not copied): ckpt.dirty=MIB:RATE.
gcc -O2 -Wall -Wextra -static -o "$r/bin/lab-workload" "$REPO_ROOT/test-vms/busybox-workload/workload.c"
cp "$KMOD" "$r/lib/modules/checkpoint.ko"
if [ -f "$REPO_ROOT/checkpointd/Cargo.toml" ]; then
    log "building checkpointd (static)"
    (cd "$REPO_ROOT" && RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release --locked -p checkpointd --target x86_64-unknown-linux-gnu >&2) \
        && cp "$REPO_ROOT/target/x86_64-unknown-linux-gnu/release/checkpointd" "$r/bin/" \
        || log "checkpointd did not build; image goes without it"
fi
install -m 755 "$recipe/init" "$r/init"
(cd "$r" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -n -9 >"$work/initrd.gz"
mkdir -p "$out.new"
mv "$work/initrd.gz" "$out.new/initrd.gz"
cp "$BZIMAGE" "$out.new/vmlinuz"
printf 'kernel %s\nkmod %s\n' "$KERNEL_KEY" "$KMOD" >"$out.new/manifest"
rm -rf "$work" "$out"
mv "$out.new" "$out"
