#!/usr/bin/env bash
# The lab's control channel without Xen: the real dom0 agent (lab-agent --stdio, behind socat
# playing QEMU's unix-socket chardev) and the real host client, through the same lab_exec_raw,
# lab_push and lab_pull the lab uses. Checks exit status and stdout/stderr separation, stdin,
# binary transfers of several MB with checksums, large output, the timeout kill, background
# children, and a clear error when the channel is missing. Takes seconds.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
. "$REPO_ROOT/scripts/lib/lab.sh"
need_pkgs socat
export LAB_STALL_TIMEOUT=10
fail() { echo "lab channel test FAILED: $*" >&2; exit 1; }

tmp=$(mktemp -d)
LAB_RUN=$tmp/run
mkdir -p "$LAB_RUN/host1" "$tmp/agent" "$tmp/home"
echo 1 >"$LAB_RUN/hosts"
LAB_AGENT_DIR=$tmp/agent HOME=$tmp/home socat "UNIX-LISTEN:$LAB_RUN/host1/ctl0.sock,fork" \
    EXEC:"perl $REPO_ROOT/scripts/lab-dom0/lab-agent --stdio" 2>"$tmp/socat.log" &
socat_pid=$!
cleanup() {
    kill "$socat_pid" 2>/dev/null || true
    [ -s "$tmp/bg.pid" ] && kill "$(cat "$tmp/bg.pid")" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
for _ in $(seq 50); do [ -S "$LAB_RUN/host1/ctl0.sock" ] && break; sleep 0.1; done

rc=0
out=$(lab_exec_raw 1 30 "" 'echo out; echo err >&2; exit 7' 2>"$tmp/err") || rc=$?
[ "$rc" = 7 ] || fail "exit status 7 came back as $rc"
[ "$out" = out ] || fail "stdout was '$out'"
[ "$(cat "$tmp/err")" = err ] || fail "stderr was '$(cat "$tmp/err")'"

printf 'line1\nline2\n' >"$tmp/in"
[ "$(lab_exec_raw 1 30 "$tmp/in" 'wc -l')" = 2 ] || fail "stdin not forwarded"

head -c 5000000 /dev/urandom >"$tmp/blob"
lab_push 1 "$tmp/blob" "$tmp/remote/blob" || fail "push"
cmp -s "$tmp/blob" "$tmp/remote/blob" || fail "pushed file differs"
lab_pull 1 "$tmp/remote/blob" "$tmp/back" || fail "pull"
cmp -s "$tmp/blob" "$tmp/back" || fail "pulled file differs"

n=$(lab_exec_raw 1 60 "" 'head -c 20000000 /dev/zero' | wc -c)
[ "$n" = 20000000 ] || fail "large output truncated: $n bytes"

t0=$(date +%s); rc=0
lab_exec_raw 1 2 "" 'sleep 30' 2>/dev/null || rc=$?
[ "$rc" = 124 ] || fail "timeout gave status $rc, not 124"
[ $(( $(date +%s) - t0 )) -lt 15 ] || fail "timeout kill took too long"

t0=$(date +%s)
[ "$(lab_exec_raw 1 30 "" "sleep 60 </dev/null >/dev/null 2>&1 & echo \$! >$tmp/bg.pid; echo started")" = started ] \
    || fail "background child"
[ $(( $(date +%s) - t0 )) -lt 10 ] || fail "a background child held the channel"

rc=0
msg=$( (LAB_RUN=$tmp/none; lab_exec_raw 1 5 "" true) 2>&1) || rc=$?
[ "$rc" != 0 ] && grep -q "no control socket" <<<"$msg" || fail "missing channel not reported clearly: $msg"
echo "lab channel: ok"
