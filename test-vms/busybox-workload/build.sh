#!/usr/bin/env bash
# Recipe of the busybox-workload test guest: a gzip'd newc initramfs with static busybox, the
# lab-workload program and the Xen PV frontend modules of the lab kernel, plus that kernel.
# usage: build.sh LAB_IMAGE_DIR OUTDIR     (called by `scripts/lab image busybox-workload`)
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib/common.sh"
recipe=$(cd "$(dirname "$0")" && pwd)
img=${1:?usage: build.sh LAB_IMAGE_DIR OUTDIR}
out=${2:?usage: build.sh LAB_IMAGE_DIR OUTDIR}
need_pkgs gcc libc6-dev cpio gzip
work="$out.work"
rm -rf "$work"; mkdir -p "$work/root"/{bin,dev,proc,sys,tmp,lib/modules}
r="$work/root"
cp "$img/busybox" "$r/bin/busybox"
gcc -O2 -Wall -Wextra -static -o "$r/bin/lab-workload" "$recipe/workload.c"
install -m 755 "$recipe/init" "$r/init"
# Frontends in load order (the init script loads them alphabetically; they have no deps).
for m in xen-netfront xen-blkfront; do
    f=$(find "$img/modules" -name "$m.ko*" | head -n1)
    [ -n "$f" ] || die "module $m not in the lab image"
    cp "$f" "$r/lib/modules/"
done
(cd "$r" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -n -9 >"$work/initrd.gz"
mkdir -p "$out.new"
mv "$work/initrd.gz" "$out.new/initrd.gz"
cp "$img/vmlinuz" "$out.new/vmlinuz"
echo "kernel $(cat "$img/kernel-version")" >"$out.new/manifest"
rm -rf "$work" "$out"
mv "$out.new" "$out"
