#!/usr/bin/env bash
# Stage 40-checkpoint-guest: the Rust-for-Linux guest kernel with the /dev/checkpoint module
# as a PV domU on one emulated Xen host (own lab "ckpt"): the module loads, ckpt-test
# exercises every ioctl (misuse -> errno), pre-copy rounds, a capture through Linux's Xen
# suspend sequence and the pattern P/Q property; then the guest must carry on (console
# heartbeat after the capture, answers ping). Then, in the same boot, the bad cases that need
# whole saves (ckpt.bad=1 in test-vms/checkpoint-guest/init): module reload, the 64 MiB at
# 2 MiB/s writer (throttling auto / always / off with a 1 MiB budget: converges or ends with
# exit 4, never killed, the writer left running), mm-churn (mprotect/munmap/fork/exec) during
# a save, and bytes on the wire with and without free-page elision (printed as JSON).
# CKPT_BAD=0 skips them. Cold: kernel build ~8-10 min + lab build; warm ~10 min.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
export LAB_NAME=${CKPT_LAB_NAME:-ckpt}
. "$REPO_ROOT/scripts/lib/lab.sh"
. "$REPO_ROOT/scripts/lib/lab-guest.sh"

pages=${CKPT_TEST_PAGES:-256}
bad=$([ "${CKPT_BAD:-1}" = 1 ] && echo 1 || true)
name=ckptg
ip=$LAB_SUBNET.120

img=$(bash "$REPO_ROOT/scripts/build-checkpoint-guest")

lab_stage_guest "$name"
t0=$(date +%s)
lab_guest_create 1 "$name" --kernel "$img/vmlinuz" --ramdisk "$img/initrd.gz" --memory 256 \
    --ip "$ip" --extra "ckpt.test=$pages${bad:+ ckpt.bad=1}" --wait 'CKPT-TEST-EXIT' --timeout 300
consolelog() { lab_exec_raw 1 30 "" "cat /var/log/xen/console/guest-$name.log"; }
out=$(consolelog)
grep -E '^(facts|round|capture|vcpu|page types|bad case|throttle|CKPT-)' <<<"$out" >&2 || true
grep -q 'CKPT-MODULE-LOADED' <<<"$out" || die "module did not load"
grep -q 'CKPT-TEST PASS' <<<"$out" || { tail -n 40 <<<"$out" >&2; die "ckpt-test failed"; }
# After the capture the same guest carries on: new heartbeats and network.
n1=$(grep -c 'CKPT-ALIVE' <<<"$out" || true)
lab_exec_raw 1 60 "" "busybox ping -c 3 -W 2 $ip" >&2 || die "guest does not answer ping after the capture"
sleep 5
n2=$(consolelog | grep -c 'CKPT-ALIVE' || true)
[ "$n2" -gt "$n1" ] || die "guest console stopped after the capture ($n1 -> $n2 heartbeats)"
log "checkpoint guest: test passed, alive after capture ($n1 -> $n2 heartbeats), ping ok, $(( $(date +%s) - t0 )) s"

[ -n "$bad" ] || exit 0
# The bad cases that need whole saves (same boot).
lab_guest_wait 1 "$name" 'CKPT-BAD-DONE' 1500 || { consolelog | tail -n 60 >&2; die "bad cases did not finish"; }
out=$(consolelog | tr -d '\r')
grep -E '^CKPT-BAD|MM-CHURN FAIL' <<<"$out" >&2
bad_rc() { sed -n "s/^CKPT-BAD $1 rc=//p" <<<"$out" | tail -n1; }
bad_val() { sed -n "s/^CKPT-BAD $1: \"$2\": *\([0-9]*\).*/\1/p" <<<"$out" | tail -n1; }
grep -q '^CKPT-BAD reload ok' <<<"$out" || die "module reload after the test failed"
wpid=$(sed -n 's/^CKPT-BAD writer pid=//p' <<<"$out")
# Heavy writer: auto either converges (0) or stops with the clear error (4); never killed.
case $(bad_rc writer-auto) in 0|4) ;; *) die "64 MiB at 2 MiB/s, auto: checkpointd exit $(bad_rc writer-auto)";; esac
[ "$(bad_rc writer-always)" = 0 ] || die "64 MiB at 2 MiB/s, --throttle always: exit $(bad_rc writer-always)"
grep -q "^CKPT-BAD writer-always: \"pid\": $wpid," <<<"$out" || die "--throttle always did not throttle the writer (pid $wpid)"
stopped=$(bad_val writer-always stopped_ms)
[ "${stopped:-0}" -gt 0 ] || die "the writer was throttled but never stopped"
[ "$(bad_rc writer-off)" = 4 ] || die "no throttling, 1 MiB budget: expected exit 4, got $(bad_rc writer-off)"
grep -q '^CKPT-BAD writer-off: checkpointd save: pre-copy did not converge.*the guest runs on' <<<"$out" \
    || die "no throttling, 1 MiB budget: no clear error"
grep -qE '^CKPT-BAD writer-after state=[RSD]' <<<"$out" || die "the writer is not running freely after the saves: $(grep writer-after <<<"$out")"
for s in writer-auto writer-always; do
    peak=$(bad_val $s peak_rss_kib)
    [ -n "$peak" ] && [ "$peak" -lt 65536 ] || [ "$(bad_rc $s)" = 4 ] || die "$s: checkpointd peaked at ${peak:-?} KiB"
done
[ "$(bad_rc churn)" = 0 ] || die "save during mm-churn failed: exit $(bad_rc churn)"
grep -q 'MM-CHURN FAIL' <<<"$out" && die "mm-churn saw broken memory semantics during tracking"
grep -qE '^CKPT-BAD churn-log [1-9][0-9]* ok-lines, 0 failures' <<<"$out" || die "mm-churn did not run"
[ "$(bad_rc elide-on)" = 0 ] && [ "$(bad_rc elide-off)" = 0 ] || die "the elision saves failed"
on=$(bad_val elide-on total_bytes) off=$(bad_val elide-off total_bytes)
[ -n "$on" ] && [ -n "$off" ] && [ "$on" -lt "$off" ] || die "free-page elision did not shrink the stream ($on vs $off bytes)"
lab_exec_raw 1 60 "" "busybox ping -c 3 -W 2 $ip" >&2 || die "guest does not answer ping after the bad cases"
printf '{"scenario":"checkpoint-bad-cases","guest_mib":256,"elide_on_bytes":%s,"elide_off_bytes":%s,"writer_auto_rc":%s,"writer_always_stopped_ms":%s,"writer_always_bytes":%s,"writer_off_rc":%s,"ok":true}\n' \
    "$on" "$off" "$(bad_rc writer-auto)" "$stopped" "$(bad_val writer-always total_bytes || echo null)" "$(bad_rc writer-off)"
log "bad cases: reload, heavy writer (auto rc $(bad_rc writer-auto), always: writer stopped ${stopped} ms, off: exit 4), churn ok; elision $on vs $off bytes"
