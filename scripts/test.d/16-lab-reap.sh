#!/usr/bin/env bash
# The lab cleans up after itself (scripts/lib/lab.sh, "Who owns a lab"), checked with real
# QEMU processes but without waiting for Xen to boot (each case lives a few seconds):
#   1. a stage killed with SIGKILL while its host boots (stage 20-lab-smoke itself, under its
#      own lab name): no QEMU of that lab may remain;
#   2. a script that set its own EXIT trap and is interrupted (SIGTERM) inside lab_up: its
#      trap still runs (lab_up does not replace it) and no QEMU remains;
#   3. hosts left over by a run whose reaper died too: `lab up` (lab_reap_leftovers, its first
#      step) takes them down.
# Prints how long each cleanup took. Uses lab names reap-1..3 (prefix: LAB_REAP_NAME).
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
prefix=${LAB_REAP_NAME:-reap}
export LAB_NAME=$prefix-1
. "$REPO_ROOT/scripts/lib/lab.sh"
fail() { echo "lab reap test FAILED: $*" >&2; exit 1; }
need_pkgs qemu-system-x86 socat
lab_build >/dev/null

# use_lab NAME: point the lab functions at lab NAME.
use_lab() { LAB_NAME=$1; LAB_RUN=$CACHE_ROOT/run/$LAB_NAME; }
# Whatever happens, none of this test's labs stays up.
cleanup() {
    local n
    for n in 1 2 3; do use_lab "$prefix-$n"; LAB_OWNER_PID=$$ lab_down >/dev/null 2>&1 || true; done
    [ -z "${sleeper:-}" ] || kill "$sleeper" 2>/dev/null || true
}
trap cleanup EXIT
# wait_for WHAT SECS CMD...: poll CMD every 0.2 s; prints the seconds it took.
wait_for() {
    local what=$1 secs=$2 t0; shift 2; t0=$(date +%s.%N)
    until "$@"; do
        awk -v a="$t0" -v b="$(date +%s.%N)" -v s="$secs" 'BEGIN{exit !(b-a > s)}' && fail "$what (after $secs s)"
        sleep 0.2
    done
    awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'
}
has_qemu() { [ -n "$(lab_qemu_pids)" ]; }
no_qemu() { [ -z "$(lab_qemu_pids)" ]; }

# 1. SIGKILL a real stage while its host boots.
use_lab "$prefix-1"
lab_reap_leftovers
env -u LAB_OWNER_PID LAB_SMOKE_NAME="$LAB_NAME" bash "$REPO_ROOT/scripts/test.d/20-lab-smoke.sh" \
    >"$CACHE_ROOT/run/$prefix-1.stage.log" 2>&1 &
stage=$!
wait_for "stage 20 started no QEMU" 900 has_qemu >/dev/null
qemu=$(lab_qemu_pids | xargs)
kill -9 "$stage" 2>/dev/null \
    || fail "stage 20 ended by itself before it could be killed: $(tail -n 3 "$CACHE_ROOT/run/$prefix-1.stage.log" | tr '\n' ' ')"
wait "$stage" 2>/dev/null || true
took=$(wait_for "QEMU $qemu of lab $LAB_NAME still running after its stage was killed" 20 no_qemu)
log "reap 1: stage 20 (pid $stage) killed with SIGKILL while booting; its QEMU ($qemu) gone ${took} s later"

# 2. A caller's own EXIT trap survives lab_up, and runs when the caller is interrupted.
use_lab "$prefix-2"
lab_reap_leftovers
marker=$CACHE_ROOT/run/$prefix-2.trap
rm -f "$marker"
env -u LAB_OWNER_PID LAB_NAME="$LAB_NAME" MARKER="$marker" bash -c '
    . "$1/scripts/lib/common.sh"; . "$1/scripts/lib/lab.sh"
    trap "echo ran >\"\$MARKER\"; lab_down" EXIT
    lab_up 1' _ "$REPO_ROOT" >"$CACHE_ROOT/run/$prefix-2.log" 2>&1 &
caller=$!
wait_for "the caller started no QEMU" 120 has_qemu >/dev/null
qemu=$(lab_qemu_pids | xargs)
kill -TERM "$caller"
wait "$caller" 2>/dev/null || true
took=$(wait_for "QEMU $qemu still running after SIGTERM to its caller" 20 no_qemu)
[ -s "$marker" ] || fail "the caller's EXIT trap did not run: lab_up replaced it"
log "reap 2: caller interrupted in lab_up: its own EXIT trap ran, QEMU ($qemu) gone ${took} s later"

# 3. Leftovers whose reaper is gone too: the next `lab up` of that name reaps them.
use_lab "$prefix-3"
lab_reap_leftovers
sleep 600 &
sleeper=$!
(LAB_OWNER_PID=$sleeper lab_up 1 >"$CACHE_ROOT/run/$prefix-3.log" 2>&1) &
upper=$!
wait_for "lab_up started no QEMU" 120 has_qemu >/dev/null
qemu=$(lab_qemu_pids | xargs)
# Kill everything but QEMU: the booting lab_up, its reaper, then the owner.
kill -9 "$upper" 2>/dev/null || true
kill -9 "$(cat "$LAB_RUN/reaper.pid")" 2>/dev/null || true
kill "$sleeper"; wait "$sleeper" 2>/dev/null || true; sleeper=""
sleep 2
has_qemu || fail "setup: the leftover QEMU died by itself"
t0=$(date +%s.%N)
lab_reap_leftovers
took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
no_qemu || fail "lab up did not reap the leftover QEMU ($qemu)"
[ "$(lab_hosts)" = 0 ] || fail "lab still reports hosts after reaping"
log "reap 3: leftover QEMU ($qemu) without owner or reaper reaped by the next lab up in ${took} s"
echo "lab reap: ok"
