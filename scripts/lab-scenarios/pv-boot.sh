#!/usr/bin/env bash
# Lab scenario `pv-boot` (docs/bootstrap.md, "Builder"): the project's guest kernel and the
# checkpoint guest's initramfs started through a loader domain (stage 1 -> stage 2 -> the
# in-domain PV builder), and in the same run by stock `xl create` of the same kernel, initramfs
# and command line, on one emulated Xen host. From dom0, for each row: the time to the kernel's
# first console line, to the initramfs's marker (CKPT-MODULE-LOADED: /init ran, the network is
# configured) and to the first ping answer; for the loader also the upload's steps. Then a
# kernel cut after 1 MiB must be refused by the builder (`error boot: kernel: ...`) and the
# loader domain must go away. One JSON line at the end. Env: LAB_NAME (default pvboot), PVBOOT_MEM (MiB, default 128),
# PVBOOT_KEEP=1 keeps the host up, PVBOOT_VMLINUX and PVBOOT_INITRD (below), PVBOOT_ZLIB=LEVEL
# (default 1; 0 = plain items): the kernel goes to stage 2 zlib-compressed (KERZ, §2.1),
# compressed in dom0 before the loader's `xl create` (token-tool does it in the background
# while packetd answers), the compression's own time reported as compress_ms.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
export LAB_NAME=${LAB_NAME:-pvboot}
. "$REPO_ROOT/scripts/lib/lab.sh"
lab="$REPO_ROOT/scripts/lab"
mem=${PVBOOT_MEM:-128}
ip=$LAB_SUBNET.131 peer_ip=$LAB_SUBNET.132 bad_ip=$LAB_SUBNET.133 port=7000
x() { "$lab" exec -t "${T:-300}" 1 "$*"; }
fail() {
    echo "pv-boot FAILED: $*" >&2
    x "tail -n 60 /var/log/xen/console/guest-pvb.log; xl dmesg | tail -n 30" >&2 2>/dev/null || true
    exit 1
}

loader=$(bash "$REPO_ROOT/scripts/build-inflate-loader")/inflate-loader || fail "build inflate-loader"
s2=$(bash "$REPO_ROOT/scripts/build-inflate-stage2") || fail "build inflate-stage2"
# PVBOOT_VMLINUX / PVBOOT_INITRD: an already built guest kernel ELF and initramfs (default: the
# project's guest kernel and the checkpoint guest's initramfs, built or taken from the cache).
vmlinux=${PVBOOT_VMLINUX:-$(bash "$REPO_ROOT/scripts/build-guest-kernel" | sed -n 's/^VMLINUX=//p')}
initrd=${PVBOOT_INITRD:-$(bash "$REPO_ROOT/scripts/build-checkpoint-guest")/initrd.gz} \
    || fail "build the checkpoint guest image"
[ -f "$vmlinux" ] && [ -f "$initrd" ] || fail "no guest kernel ($vmlinux) or initramfs ($initrd)"
work=$(mktemp -d "${TMPDIR:-/tmp}/pv-boot.XXXXXX")
trap 'rm -rf "$work"' EXIT
# The upload carries the ELF without its symbol table (what a customer would send).
strip -o "$work/vmlinux" "$vmlinux"
cmdline="console=hvc0 lab.ip=$ip"

if [ "$(lab_hosts)" -lt 1 ]; then
    [ "${PVBOOT_KEEP:-0}" = 1 ] || trap '"$lab" down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
    "$lab" up 1 >&2 || fail "lab up"
fi
for f in "$loader:/root/inflate-loader" "$s2/inflate-stage2.bin:/root/stage2.bin" \
         "$work/vmlinux:/root/vmlinux" "$initrd:/root/initrd.gz" \
         "$REPO_ROOT/scripts/lab-scenarios/pv-boot-client.py:/root/pv-boot-client.py"; do
    "$lab" push 1 "${f%%:*}" "${f#*:}" >/dev/null || fail "push ${f%%:*}"
done
sha1=$(cat "$s2/inflate-stage2.sha1")
mac() { printf '00:16:3e:4c:%02x:%02x' "$(cut -d. -f3 <<<"$1")" "$(cut -d. -f4 <<<"$1")"; }

# Console watcher in dom0: prints ms (since its start) of the first console line, of the
# marker and of the first ping answer for guest NAME at IP.
"$lab" exec -i 1 "cat >/root/watch.sh" <<'W' || fail "push watcher"
name=$1 ip=$2 t0=$3 first=0 marker=0 ping=0 log=/var/log/xen/console/guest-$1.log
now() { echo $(( ($(date +%s%N) - t0) / 1000000 )); }
while [ "$(now)" -lt 240000 ]; do
    [ "$first" != 0 ] || { grep -qaE 'Linux version|Booting' "$log" 2>/dev/null && first=$(now); }
    [ "$marker" != 0 ] || { grep -qa 'CKPT-MODULE-' "$log" 2>/dev/null && marker=$(now); }
    if [ "$marker" != 0 ] && busybox ping -c1 -W1 "$ip" >/dev/null 2>&1; then ping=$(now); break; fi
    sleep 0.1
done
echo "$first $marker $ping"
W

# --- ours: loader domain, stage 2, kernel ---------------------------------------------------
x "xl destroy pvb 2>/dev/null; xl destroy pvbpeer 2>/dev/null; xl destroy pvbbad 2>/dev/null; rm -f /var/log/xen/console/guest-pvb*.log; true"
sed -e "s|@NAME@|pvb|" -e "s|@KERNEL@|/root/inflate-loader|" -e "s|@MEMORY@|$mem|g" \
    -e "s|@EXTRA@|ip=$ip netmask=255.255.255.0 port=$port stage2-sha1=$sha1|" -e "s|@MAC@|$(mac "$ip")|" \
    "$REPO_ROOT/xen-configs/inflate-loader.cfg" >"$work/pvb.cfg"
"$lab" push 1 "$work/pvb.cfg" /etc/xen/pvb.cfg >/dev/null
zlevel=${PVBOOT_ZLIB:-1}
zarg=
if [ "$zlevel" != 0 ]; then
    zms=$(x "t=\$(date +%s%N); python3 -c 'import sys, zlib; open(sys.argv[2], \"wb\").write(zlib.compress(open(sys.argv[1], \"rb\").read(), $zlevel))' /root/vmlinux /root/vmlinux.zz && echo \$(( (\$(date +%s%N) - t) / 1000000 ))") \
        || fail "compress the kernel in dom0"
    zarg=/root/vmlinux.zz
fi
ours=$(T=400 x "t0=\$(date +%s%N); xl create -q /etc/xen/pvb.cfg || exit 3
  for i in \$(seq 600); do [ \"\$(xenstore-read /local/domain/\$(xl domid pvb)/data/inflate-loader 2>/dev/null)\" = listening ] && break; sleep 0.1; done
  t1=\$(date +%s%N)
  python3 /root/pv-boot-client.py $ip $port /root/stage2.bin /root/vmlinux /root/initrd.gz '$cmdline' $zarg >/root/client.json || { cat /root/client.json; exit 4; }
  t2=\$(date +%s%N)
  w=\$(bash /root/watch.sh pvb $ip \$t2)
  echo \$(( (t1 - t0) / 1000000 )) \$(( (t2 - t0) / 1000000 )) \$w; cat /root/client.json") \
    || fail "loader boot: $ours"
echo "$ours" >&2
read -r o_listen o_upload o_first o_marker o_ping <<<"$(head -n1 <<<"$ours")"
x "xl destroy pvb" >/dev/null 2>&1 || true
client=$(tail -n1 <<<"$ours")
x "grep -a 'boot: ' /var/log/xen/console/guest-pvb.log | head -n 20; grep -a -m3 -E 'Linux version|CKPT-MODULE|Hypervisor detected' /var/log/xen/console/guest-pvb.log" >&2
num() { [[ ${1:-} =~ ^[0-9]+$ ]] && [ "$1" != 0 ]; }
num "$o_first" || fail "the kernel booted by stage 2 printed nothing"
num "$o_marker" || fail "the kernel booted by stage 2 never reached its initramfs marker"
num "$o_ping" || fail "the kernel booted by stage 2 never answered ping"

# --- a kernel the builder must refuse in phase A: cut after 1 MiB (segments outside the file).
# The client gets `error boot: kernel: ...`, the loader domain powers itself off.
# Its own address: dom0 now knows .131 by the booted kernel's MAC, not a new loader's.
head -c 1048576 "$work/vmlinux" >"$work/vmlinux.cut"
"$lab" push 1 "$work/vmlinux.cut" /root/vmlinux.cut >/dev/null || fail "push vmlinux.cut"
sed -e "s|@NAME@|pvbbad|" -e "s|@KERNEL@|/root/inflate-loader|" -e "s|@MEMORY@|$mem|g" \
    -e "s|@EXTRA@|ip=$bad_ip netmask=255.255.255.0 port=$port stage2-sha1=$sha1|" -e "s|@MAC@|$(mac "$bad_ip")|" \
    "$REPO_ROOT/xen-configs/inflate-loader.cfg" >"$work/pvbbad.cfg"
"$lab" push 1 "$work/pvbbad.cfg" /etc/xen/pvbbad.cfg >/dev/null
refused=$(T=300 x "xl create -q /etc/xen/pvbbad.cfg || exit 3
  for i in \$(seq 600); do [ \"\$(xenstore-read /local/domain/\$(xl domid pvbbad)/data/inflate-loader 2>/dev/null)\" = listening ] && break; sleep 0.1; done
  python3 /root/pv-boot-client.py $bad_ip $port /root/stage2.bin /root/vmlinux.cut /dev/null '$cmdline' && exit 5
  for i in \$(seq 100); do xl domid pvbbad >/dev/null 2>&1 || { echo gone; exit 0; }; sleep 0.1; done; echo still-there") \
    || fail "cut kernel: $refused"
grep -q '"error": "error boot: kernel: ' <<<"$refused" && grep -q '^gone$' <<<"$refused" \
    || fail "a cut kernel was not refused by the builder with its reason, or the domain stayed: $refused"
echo "refused as expected: $(head -n1 <<<"$refused")" >&2

# --- peer: stock xl create of the same kernel, initramfs and command line ------------------
cat >"$work/peer.cfg" <<C
name = "pvbpeer"
type = "pv"
kernel = "/root/vmlinux"
ramdisk = "/root/initrd.gz"
extra = "console=hvc0 lab.ip=$peer_ip"
memory = $mem
maxmem = $mem
vcpus = 1
vif = [ "bridge=xenbr0,mac=$(mac "$peer_ip")" ]
on_crash = "preserve"
C
"$lab" push 1 "$work/peer.cfg" /etc/xen/pvbpeer.cfg >/dev/null
peer=$(T=400 x "t0=\$(date +%s%N); xl create -q /etc/xen/pvbpeer.cfg || exit 3; t1=\$(date +%s%N)
  echo \$(( (t1 - t0) / 1000000 )) \$(bash /root/watch.sh pvbpeer $peer_ip \$t0)") || fail "peer: $peer"
read -r p_create p_first p_marker p_ping <<<"$peer"
num "$p_marker" && num "$p_ping" || fail "xl create of the same kernel did not reach its marker and ping: $peer"
x "xl destroy pvbpeer" >/dev/null 2>&1 || true
printf '{"scenario":"pv-boot","memory_mib":%s,"zlib_level":%s,"compress_ms":%s,"loader_listening_ms":%s,"upload_done_ms":%s,"upload":%s,"ours_after_upload":{"first_console_ms":%s,"marker_ms":%s,"ping_ms":%s},"ours_from_xl_create":{"marker_ms":%s,"ping_ms":%s},"xl_create":{"returned_ms":%s,"first_console_ms":%s,"marker_ms":%s,"ping_ms":%s},"ok":true}\n' \
    "$mem" "$zlevel" "${zms:-0}" "$o_listen" "$o_upload" "$client" "$o_first" "$o_marker" "$o_ping" \
    "$((o_upload + o_marker))" "$((o_upload + o_ping))" "$p_create" "$p_first" "$p_marker" "$p_ping"
