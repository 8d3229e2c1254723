#!/usr/bin/env bash
# Stage 42-fault-tracker: the fault tracker against the scan tracker (its oracle) in the
# checkpoint guest on one emulated Xen host (own lab "trk"), under a mixed workload (64 MiB
# rewritten at 2 MiB/s, file copies in a tmpfs, pings to the host, a fork/exec loop).
# track-oracle (test-vms/checkpoint-guest) runs, in one boot: the fault tracker with the
# scan's hashes kept (every page the scan saw change in a round must be in the fault set),
# then the scan tracker (and with TRACK_FIGURES=1 the fault tracker alone); after each
# capture the digest of what a checkpoint would hold must equal the module's digest of
# memory at the capture point. Prints pages per round, capture pause, snapshot pages used
# and a page writer's throughput with/without tracking. The guest must carry on.
# Env: TRACK_ROUNDS (4), TRACK_SNAPSHOT_PAGES (12288, the least; more if the last round
# was bigger), TRACK_LAB_NAME (trk), TRACK_FIGURES=1 (adds the fault tracker alone; a digest
# mismatch does not stop the run before the other trackers' figures, it still fails),
# TRACK_EVTCHN (2l; fifo = the kernel's default event channels, whole-set copy at capture).
# About 4-6 min warm on a 2-core host.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
export LAB_NAME=${TRACK_LAB_NAME:-trk}
. "$REPO_ROOT/scripts/lib/lab.sh"
. "$REPO_ROOT/scripts/lib/lab-guest.sh"

rounds=${TRACK_ROUNDS:-4}
# 2-level event channels: with FIFO ones Xen writes the event array without a guest fault and
# the capture falls back to copying the whole final set (docs/fault-tracker.md); the
# copy-on-write capture is what this stage checks. TRACK_EVTCHN=fifo keeps Linux's default.
evtchn=$(lab_evtchn_arg "${TRACK_EVTCHN:-2l}")
snap=${TRACK_SNAPSHOT_PAGES:-12288}
name=trkg
ip=$LAB_SUBNET.122

img=$(bash "$REPO_ROOT/scripts/build-checkpoint-guest")

lab_stage_guest "$name"
t0=$(date +%s)
lab_guest_create 1 "$name" --kernel "$img/vmlinuz" --ramdisk "$img/initrd.gz" --memory 256 \
    --ip "$ip" --extra "ckpt.oracle=$rounds:$snap${TRACK_FIGURES:+:figures} $evtchn" --wait 'TRACK-ORACLE-EXIT' --timeout 1500
consolelog() { lab_exec_raw 1 30 "" "cat /var/log/xen/console/guest-$name.log"; }
out=$(consolelog | tr -d '\r')
grep -E '^TRACK-ORACLE' <<<"$out" >&2 || true
# The module's own account of each round and capture (where the pause goes).
grep -E 'fault tracker (round|capture)|fault tracker:' <<<"$out" | sed 's/^.*checkpoint: /  kernel: /' | awk '!seen[$0]++' >&2 || true
grep -q 'CKPT-MODULE-LOADED' <<<"$out" || die "module did not load"
grep -q '^TRACK-ORACLE PASS' <<<"$out" || { tail -n 40 <<<"$out" >&2; die "track-oracle failed"; }
# PASS means each check ran: the oracle over rounds 2.., and one digest per tracker, equal.
grep -Eq '^TRACK-ORACLE fault\+oracle oracle: [0-9]+ scan-dirty pages over rounds 2\.\.[0-9]+, 0 not in' <<<"$out" \
    || die "no oracle verdict"
digests=$(grep -E '^TRACK-ORACLE [a-z+]+ digest: stream [0-9a-f]+ memory at capture [0-9a-f]+$' <<<"$out" || true)
[ "$(grep -c . <<<"$digests")" -ge 2 ] || die "fewer than 2 digest checks"
awk '$5 != $9 { exit 1 }' <<<"$digests" || die "a digest differs"
n1=$(grep -c 'CKPT-ALIVE' <<<"$out" || true)
lab_exec_raw 1 60 "" "busybox ping -c 3 -W 2 $ip" >&2 || die "guest does not answer ping after the captures"
sleep 5
n2=$(consolelog | grep -c 'CKPT-ALIVE' || true)
[ "$n2" -gt "$n1" ] || die "guest console stopped after the captures ($n1 -> $n2 heartbeats)"
log "fault tracker: oracle and digests passed, guest alive ($n1 -> $n2 heartbeats), $(( $(date +%s) - t0 )) s"
