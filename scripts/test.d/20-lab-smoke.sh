#!/usr/bin/env bash
# Lab smoke test: build (cached), one emulated Xen host up, the control channel checked (exit
# status, stderr, binary push/pull), the busybox-workload guest created, its console line seen,
# its UDP echo answered, the guest destroyed, the host down. Runs in its own lab (LAB_NAME=smoke)
# so it does not disturb a developer's lab. Prints the time of each step.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
export LAB_NAME=${LAB_SMOKE_NAME:-smoke}
# This script owns its lab: it goes down when the script ends, however it ends.
export LAB_OWNER_PID=${LAB_OWNER_PID:-$$}
lab="$REPO_ROOT/scripts/lab"
t0=$(date +%s)
step() { log "smoke: $1 ($(( $(date +%s) - t0 )) s)"; }
fail() { echo "lab smoke FAILED: $*" >&2; exit 1; }

"$lab" down >/dev/null 2>&1 || true
trap '"$lab" down >/dev/null 2>&1 || true' EXIT

"$lab" build || fail "build"
step "built"
"$lab" up 1 || fail "host did not come up"
step "host up"

# Control channel: stdout, stderr and the exit status come back separately and exactly.
errf=$(mktemp)
rc=0
out=$("$lab" exec 1 'echo out; echo err >&2; exit 7' 2>"$errf") || rc=$?
[ "$rc" = 7 ] || fail "exit status 7 came back as $rc"
[ "$out" = out ] || fail "stdout was '$out'"
[ "$(cat "$errf")" = err ] || fail "stderr was '$(cat "$errf")'"
head -c 300000 /dev/urandom >"$errf.bin"
"$lab" push 1 "$errf.bin" /tmp/smoke.bin || fail "push"
"$lab" pull 1 /tmp/smoke.bin "$errf.back" || fail "pull"
cmp -s "$errf.bin" "$errf.back" || fail "pulled file differs from the pushed one"
rm -f "$errf" "$errf.bin" "$errf.back"
"$lab" exec 1 'xl info' | grep -q '^xen_major *: 4' || fail "xl info does not report Xen 4"
step "control channel ok"

"$lab" guest-create 1 smoke-guest --memory 128 --ip 10.0.0.100 --extra "lab.mem=16 lab.rate=1" \
    --wait 'LAB-GUEST-READY ip=10.0.0.100' --timeout 300 || fail "guest did not print its ready line"
step "guest console line seen"
"$lab" exec 1 'lab-probe -t 10.0.0.100 -w 60' >/dev/null || fail "guest does not answer UDP echo"
step "guest answers UDP echo"
"$lab" exec 1 'xl destroy smoke-guest' || fail "xl destroy"
if "$lab" exec 1 'xl domid smoke-guest' >/dev/null 2>&1; then fail "guest still exists after destroy"; fi
step "guest destroyed"
"$lab" down
step "host down"
echo "lab smoke: ok in $(( $(date +%s) - t0 )) s"
