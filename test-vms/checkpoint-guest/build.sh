#!/usr/bin/env bash
# Recipe of the checkpoint-guest test image: the Rust-for-Linux guest kernel
# (scripts/build-guest-kernel), a gzip'd newc initramfs with static busybox (from the lab
# image), the checkpoint module (scripts/build-checkpoint-kmod), ckpt-test (ABI exercise +
# pattern P/Q check), lab-workload and checkpointd (scripts/build-checkpointd).
# usage: build.sh LAB_IMAGE_DIR OUTDIR
# The image depends on the kernel and module too, so callers key OUTDIR on KMOD's path
# (scripts/build-checkpoint-guest does).
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
gcc -O2 -Wall -Wextra -static -o "$r/bin/mm-churn" "$recipe/mm-churn.c"
gcc -O2 -Wall -Wextra -static -I "$REPO_ROOT/checkpoint-abi/c" -o "$r/bin/track-oracle" "$recipe/track-oracle.c"
# The lab's memory-dirtying workload (read from its recipe, not copied): ckpt.dirty=MIB:RATE.
gcc -O2 -Wall -Wextra -static -o "$r/bin/lab-workload" "$REPO_ROOT/test-vms/busybox-workload/workload.c"
cp "$KMOD" "$r/lib/modules/checkpoint.ko"
# checkpointd: the static build scripts/build-checkpointd caches (CHECKPOINTD, when the caller
# already has it). No image without it.
[ -n "${CHECKPOINTD:-}" ] || eval "$(bash "$REPO_ROOT/scripts/build-checkpointd")"
cp "${CHECKPOINTD:-$CHECKPOINTD_STRIPPED}" "$r/bin/checkpointd"
install -m 755 "$recipe/init" "$r/init"
install -m 755 "$recipe/migrate-request" "$r/bin/migrate-request"
(cd "$r" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -n -9 >"$work/initrd.gz"
mkdir -p "$out.new"
mv "$work/initrd.gz" "$out.new/initrd.gz"
cp "$BZIMAGE" "$out.new/vmlinuz"
# What built the kernel and module (resolved when the trixie root was made, recorded there).
{ printf 'kernel %s\nkmod %s\n' "$KERNEL_KEY" "$KMOD"
  grep -E '^(linux-source-6.12|rustc|rust-src|bindgen|clang-19|lld-19) ' "$(bash "$REPO_ROOT/scripts/trixie-root")/.versions"
} >"$out.new/manifest"
rm -rf "$work" "$out"
mv "$out.new" "$out"
