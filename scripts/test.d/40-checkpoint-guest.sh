#!/usr/bin/env bash
# Stage 40-checkpoint-guest: the Rust-for-Linux guest kernel with the /dev/checkpoint module
# as a PV domU on one emulated Xen host (own lab "ckpt"): the module loads, ckpt-test
# exercises every ioctl (misuse -> errno), pre-copy rounds, a capture through Linux's Xen
# suspend sequence and the pattern P/Q property; then the guest must carry on (console
# heartbeat after the capture, answers ping). Cold: kernel build ~8-10 min + lab build.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
export LAB_NAME=${CKPT_LAB_NAME:-ckpt}
. "$REPO_ROOT/scripts/lib/lab.sh"
. "$REPO_ROOT/scripts/lib/lab-guest.sh"

pages=${CKPT_TEST_PAGES:-256}
name=ckptg
ip=$LAB_SUBNET.120

img=$(bash "$REPO_ROOT/scripts/build-checkpoint-guest")

started=0
if [ "$(lab_hosts)" = 0 ]; then lab_up 1; started=1; fi
cleanup() {
    lab_exec_raw 1 30 "" "xl destroy $name" >/dev/null 2>&1 || true
    [ "$started" = 0 ] || lab_down
}
trap cleanup EXIT
lab_exec_raw 1 30 "" "xl destroy $name; rm -f /var/log/xen/console/guest-$name.log" >/dev/null 2>&1 || true
t0=$(date +%s)
lab_guest_create 1 "$name" --kernel "$img/vmlinuz" --ramdisk "$img/initrd.gz" --memory 256 \
    --ip "$ip" --extra "ckpt.test=$pages" --wait 'CKPT-TEST-EXIT' --timeout 300
consolelog() { lab_exec_raw 1 30 "" "cat /var/log/xen/console/guest-$name.log"; }
out=$(consolelog)
grep -E '^(facts|round|capture|vcpu|page types|CKPT-)' <<<"$out" >&2 || true
grep -q 'CKPT-MODULE-LOADED' <<<"$out" || die "module did not load"
grep -q 'CKPT-TEST PASS' <<<"$out" || { tail -n 40 <<<"$out" >&2; die "ckpt-test failed"; }
# After the capture the same guest carries on: new heartbeats and network.
n1=$(grep -c 'CKPT-ALIVE' <<<"$out" || true)
lab_exec_raw 1 60 "" "busybox ping -c 3 -W 2 $ip" >&2 || die "guest does not answer ping after the capture"
sleep 5
n2=$(consolelog | grep -c 'CKPT-ALIVE' || true)
[ "$n2" -gt "$n1" ] || die "guest console stopped after the capture ($n1 -> $n2 heartbeats)"
log "checkpoint guest: test passed, alive after capture ($n1 -> $n2 heartbeats), ping ok, $(( $(date +%s) - t0 )) s"
