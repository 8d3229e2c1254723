#!/usr/bin/env bash
# Builds the lab's Xen host image from Debian packages: Xen hypervisor (multiboot ELF), the dom0
# kernel, a module set, and the dom0 root as a newc initramfs. Usage: build.sh OUTDIR
# Called by `scripts/lab build`, which names OUTDIR after the hash of this directory.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
recipe=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUTDIR}
need_pkgs debootstrap cpio kmod gcc libc6-dev

work="$out.work"
rm -rf "$work"
mkdir -p "$work"
root="$work/root"
pkgs=$(grep -v '^#' "$recipe/packages.list" | xargs | tr ' ' ,)
mirror=$(debian_mirror)

t0=$(date +%s)
# The debootstrap tree is kept as a tarball keyed by the package list, so changes to the init
# script or the tools rebuild in seconds.
base="$CACHE_ROOT/lab/bookworm-$(recipe_hash "$recipe/packages.list").tar"
if [ ! -e "$base" ]; then
    log "debootstrap bookworm minbase + $pkgs"
    debootstrap --variant=minbase --include="$pkgs" bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed (log: $work/debootstrap.log)"; }
    tar -C "$root" -cf "$base.tmp" . && mv "$base.tmp" "$base"
else
    log "reusing $base"
    mkdir -p "$root" && tar -C "$root" -xf "$base"
fi

# The kernel comes from the same suite as Xen; unpack it without installing it (no initramfs-tools).
cp /etc/resolv.conf "$root/etc/resolv.conf"
kpkg=$(chroot "$root" apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-6[^ ]*\).*/\1/p' | head -n1)
[ -n "$kpkg" ] || die "cannot resolve linux-image-amd64 in bookworm"
log "dom0 kernel package: $kpkg"
chroot "$root" sh -c "cd /tmp && apt-get download -q $kpkg" >"$work/kernel-download.log" 2>&1 \
    || die "apt-get download $kpkg failed (log: $work/kernel-download.log)"
mkdir -p "$work/kernel"
dpkg-deb -x "$root"/tmp/"$kpkg"_*.deb "$work/kernel"
rm -f "$root"/tmp/*.deb
kver=$(ls "$work/kernel/lib/modules")
depmod -b "$work/kernel" "$kver"

# Module set: the listed modules and everything they depend on.
mods="$work/modules"
mkdir -p "$mods/lib/modules/$kver"
cp "$work/kernel/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$mods/lib/modules/$kver/"
for m in $(grep -v '^#' "$recipe/modules.list"); do
    modprobe -d "$work/kernel" -S "$kver" --show-depends "$m" | awk '$1=="insmod"{print $2}'
done | sort -u | while read -r f; do
    rel=${f#"$work/kernel"}
    mkdir -p "$mods$(dirname "$rel")"
    cp "$f" "$mods$rel"
done
depmod -b "$mods" "$kver"

# Host tools that run in dom0 (static, so they do not depend on the root's libraries).
mkdir -p "$root/usr/local/bin" "$root/usr/local/sbin"
for src in "$recipe"/tools/*.c; do
    gcc -O2 -Wall -Wextra -static -o "$root/usr/local/bin/$(basename "$src" .c)" "$src" -lm
done
install -m 755 "$recipe/lab-agent" "$root/usr/local/sbin/lab-agent"
install -m 755 "$recipe/init" "$root/init"

# Slim the root: documentation, locales, apt caches and the kernel-less /boot are not needed.
xen_gz=$(ls "$root"/boot/xen-4.*-amd64.gz | head -n1)
gunzip -c "$xen_gz" >"$work/xen"
rm -rf "$root"/boot/* "$root"/usr/share/{doc,man,info,locale} "$root"/var/cache/apt/* \
    "$root"/var/lib/apt/lists/* "$root"/etc/resolv.conf
mkdir -p "$root/usr/share/locale"
cp -a "$mods/lib/modules" "$root/lib/"
echo "lab-dom0" >"$root/etc/hostname"
printf '127.0.0.1 localhost\n' >"$root/etc/hosts"
# Manifest: exact versions of what the image holds, kept next to the image.
{
    echo "kernel $kpkg $kver"
    chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' 'xen-*' 'libxen*' iproute2 socat
} >"$work/manifest"

log "packing dom0 initramfs"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$work/dom0.cpio"

cp "$work/kernel/boot/vmlinuz-$kver" "$out.vmlinuz.tmp"
mkdir -p "$out.new"
mv "$out.vmlinuz.tmp" "$out.new/vmlinuz"
mv "$work/xen" "$work/dom0.cpio" "$work/manifest" "$out.new/"
mv "$mods/lib/modules/$kver" "$out.new/modules"
cp "$root/bin/busybox" "$out.new/busybox"
echo "$kver" >"$out.new/kernel-version"
rm -rf "$work" "$out"
mv "$out.new" "$out"
log "lab image built in $(( $(date +%s) - t0 )) s: $out ($(du -sh "$out/dom0.cpio" | cut -f1) dom0 root)"
