#!/usr/bin/env bash
# Stage 52-restore-in-place (docs/inflate-loader.md "Restore in place"), two emulated Xen hosts:
#   1. the checkpoint guest (test-vms/checkpoint-guest) on host 1 saves itself (`checkpointd
#      save`, pattern P in 64 locked pages) to host 2's dom0; then the original is destroyed;
#   2. host 2's dom0 creates an inflate-loader domain sized for the guest, with the guest's
#      MAC and address (xen-configs/inflate-loader.cfg);
#   3. refusal: the stream with one corrupted byte must be refused before the point of no
#      return, and the loader must keep serving;
#   4. the stream with `--abort` (the loader undoes phase A and serves again), then with
#      `inflate-send --commit`: the loader reports `ready`, gets COMMIT and
#      turns its own domain into the guest. Asserted from outside: the guest's console says it
#      is the restored copy and PATTERN-P-INTACT 64/64, it answers ping, and its domain's
#      memory drops once it unpinned the loader's tables (xl list);
#   5. the oracle and peer: the same stream through `checkpointd export --xen` + stock
#      `xl restore` on the same host, timed the same way (start to first ping answer).
# Prints one JSON line. Env: RESTORE_LAB_NAME (default ci-restore), RESTORE_KEEP=1 keeps the
# lab up, RESTORE_REUSE=1 reuses the stream saved by an earlier run on a kept lab,
# RESTORE_DRY_RUN=1 adds the loader's dry run (pins, GDT and M2P applied and undone before
# `ready`), RESTORE_GUEST_MEM (MiB, default 128).
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
# About 8 min warm (the guest's own save is 2.5 of them). RESTORE_STAGE=0 skips it.
if [ "${RESTORE_STAGE:-1}" = 0 ]; then
    echo "restore-in-place: skipped (RESTORE_STAGE=0)"
    exit 77
fi
export LAB_NAME=${RESTORE_LAB_NAME:-ci-restore}
# This script owns its lab (down when it ends) unless RESTORE_KEEP=1 (then bring the lab up
# yourself with `scripts/lab up 2`, and take it down with `scripts/lab down`).
if [ "${RESTORE_KEEP:-0}" = 1 ]; then unset LAB_OWNER_PID; else export LAB_OWNER_PID=${LAB_OWNER_PID:-$$}; fi
. "$REPO_ROOT/scripts/lib/lab.sh"
. "$REPO_ROOT/scripts/lib/lab-guest.sh"

name=ckri ip=$LAB_SUBNET.122 sport=5556 lport=7000 pages=64
gmem=${RESTORE_GUEST_MEM:-128}
# Loader domain: the guest's RAM plus the loader's own footprint (image, restore tables, boot
# mapping rounded to 4 MiB): docs/inflate-loader.md "Sizing".
lmem=${RESTORE_LOADER_MEM:-$((gmem + 16))}
x1() { lab_exec_raw 1 "${T:-300}" "" "$*"; }
x2() { lab_exec_raw 2 "${T:-300}" "" "$*"; }
consolelog() { x2 "cat /var/log/xen/console/guest-$name.log" | tr -d '\r'; }
fail() {
    echo "restore-in-place stage FAILED: $*" >&2
    { echo "--- loader/guest console (host 2)"; x2 "tail -n 60 /var/log/xen/console/guest-$name.log"
      echo "--- xl dmesg (host 2)"; x2 "xl dmesg | tail -n 25"; x2 "xl list"; } >&2 2>/dev/null || true
    exit 1
}

loader_dir=$(bash "$REPO_ROOT/scripts/build-inflate-loader") || fail "build inflate-loader"
img=$(bash "$REPO_ROOT/scripts/build-checkpoint-guest") || fail "build checkpoint guest"
eval "$(bash "$REPO_ROOT/scripts/build-checkpointd")"
cpd_small=$CHECKPOINTD_STRIPPED

started=0
if [ "$(lab_hosts)" = 0 ]; then lab_up 2 >&2; started=1; fi
[ "$(lab_hosts)" -ge 2 ] || fail "lab '$LAB_NAME' needs 2 hosts"
cleanup() {
    [ "${RESTORE_KEEP:-0}" = 1 ] && return 0
    x1 "xl destroy $name" >/dev/null 2>&1 || true
    x2 "xl destroy $name; pkill -f 'TCP-LISTE[N]:$sport'; rm -f /tmp/ck.bin /tmp/g.img" >/dev/null 2>&1 || true
    [ "$started" = 0 ] || lab_down
}
trap cleanup EXIT
rsend=$(lab_push_cached 2 "$loader_dir/inflate-send")
rcpd=$(lab_push_cached 2 "$cpd_small")
x2 "chmod +x $rsend $rcpd"

# 1. The guest saves itself to host 2's dom0; then the original goes away.
if [ "${RESTORE_REUSE:-0}" = 1 ] && x2 "test -s /tmp/ck.bin && test -s /tmp/ck.pfns && test -s /etc/xen/$name-guest.cfg" 2>/dev/null; then
    log "reusing the stream saved by an earlier run"
else
    x1 "xl destroy $name; rm -f /var/log/xen/console/guest-$name.log" >/dev/null 2>&1 || true
    x2 "xl destroy $name; rm -f /tmp/ck.bin /tmp/ck.pfns; pkill -f 'TCP-LISTE[N]:$sport'" >/dev/null 2>&1 || true
    x2 "(setsid socat -u TCP-LISTEN:$sport,reuseaddr OPEN:/tmp/ck.bin,creat,trunc </dev/null >/tmp/ck-recv.log 2>&1 &)" \
        || fail "cannot start the receiver in host 2's dom0"
    t0=$(date +%s)
    lab_guest_create 1 "$name" --kernel "$img/vmlinuz" --ramdisk "$img/initrd.gz" --memory "$gmem" \
        --ip "$ip" --extra "ckpt.save=$LAB_SUBNET.2:$sport ckpt.pattern=$pages" --wait 'CKPT-SAVE-EXIT' --timeout 900 >&2
    out=$(x1 "cat /var/log/xen/console/guest-$name.log" | tr -d '\r')
    grep -E '^CKPT-SAVE' <<<"$out" >&2 || true
    grep -q 'CKPT-SAVE-EXIT 0' <<<"$out" || fail "checkpointd save failed in the guest"
    pfns=$(sed -n 's/^CKPT-PATTERN-PFNS //p' <<<"$out" | head -n1)
    [ "$(wc -w <<<"$pfns")" = "$pages" ] || fail "expected $pages pattern pfns, got: $pfns"
    for _ in $(seq 60); do x2 "pgrep -f 'TCP-LISTE[N]:$sport' >/dev/null" || break; sleep 1; done
    x2 "$rcpd inspect /tmp/ck.bin" >&2 || fail "checkpointd inspect rejected the saved stream"
    x2 "echo '$pfns' >/tmp/ck.pfns"
    # The guest's own xl config and files, for the oracle (stock xl restore) on host 2.
    tmpcfg=$(mktemp)
    lab_pull 1 "/etc/xen/$name.cfg" "$tmpcfg"
    lab_push 2 "$tmpcfg" "/etc/xen/$name-guest.cfg"; rm -f "$tmpcfg"
    lab_push_cached 2 "$img/vmlinuz" >/dev/null
    lab_push_cached 2 "$img/initrd.gz" >/dev/null
    x1 "xl destroy $name" || fail "cannot destroy the original"
    log "guest saved itself to host 2 in $(( $(date +%s) - t0 )) s (boot included); original destroyed"
fi
bytes=$(x2 "stat -c %s /tmp/ck.bin")

# 2. The loader domain, with the guest's address and MAC.
x2 "xl destroy $name; rm -f /var/log/xen/console/guest-$name.log" >/dev/null 2>&1 || true
extra="ip=$ip netmask=255.255.255.0 port=$lport commit-timeout=60"
[ "${RESTORE_DRY_RUN:-0}" = 1 ] && extra="$extra restore-dry-run"
lab_guest_create 2 "$name" --kernel "$loader_dir/inflate-loader" --no-ramdisk --memory "$lmem" --ip "$ip" \
    --template "$REPO_ROOT/xen-configs/inflate-loader.cfg" --extra "$extra" --wait 'listening on' --timeout 180 >&2 \
    || fail "loader did not start"
mem_before=$(x2 "xl list $name | awk 'NR == 2 { print \$3 }'")

# 3. Refusal before the point of no return: one flipped bit in the middle of the stream.
T=900 x2 "$rsend $ip:$lport --file /tmp/ck.bin --corrupt-at $((bytes / 2)) --expect corrupt" >&2 \
    || fail "a corrupted stream was not refused as corrupt"
consolelog | grep -q "result corrupt" || fail "console lacks the corrupt refusal"

# ABORT after `ready`: phase A is undone and the loader serves again.
T=900 x2 "$rsend $ip:$lport --file /tmp/ck.bin --abort --expect ready" >&2 \
    || fail "ready + ABORT did not go as specified"
consolelog | grep -q "ABORT received: discarding the guest, serving again" || fail "console lacks the ABORT undo"

# 4. Restore in place. COMMIT -> first ping answer, timed in host 2's dom0.
times=$(T=1200 x2 "$rsend $ip:$lport --file /tmp/ck.bin --commit --expect ready >/tmp/commit.out 2>&1 || { cat /tmp/commit.out; exit 3; }
    c=\$(date +%s%N)
    for i in \$(seq 300); do busybox ping -c 1 -W 1 $ip >/dev/null 2>&1 && { echo \$c \$(date +%s%N); exit 0; }; done; exit 4") \
    || { x2 "cat /tmp/commit.out" >&2 || true; fail "restore in place: no ping answer after COMMIT (rc $?)"; }
x2 "cat /tmp/commit.out" >&2
read -r tc tp <<<"$times"
commit_to_ping_ms=$(( (tp - tc) / 1000000 ))
log "restore in place: COMMIT -> ping answered in $commit_to_ping_ms ms"
lab_guest_wait 2 "$name" 'resumed from a checkpoint' 120
lab_guest_wait 2 "$name" 'PATTERN-P-(INTACT|CHANGED)' 120
consolelog | grep -q "PATTERN-P-INTACT $pages/$pages" \
    || fail "the revived guest's buffer does not hold pattern P: $(consolelog | grep PATTERN-P-)"
log_restore=$(consolelog)
grep -E '^restore: |unpinned its L4' <<<"$log_restore" >&2 || true
grep -q 'revived by inflate-loader: unpinned its L4 .*: rc 0' <<<"$log_restore" || fail "the revived guest did not unpin the loader's L4"
mem_after=$mem_before
for _ in $(seq 30); do
    mem_after=$(x2 "xl list $name | awk 'NR == 2 { print \$3 }'")
    [ "$mem_after" -lt "$mem_before" ] && break
    sleep 2
done
[ "$mem_after" -lt "$mem_before" ] || fail "domain memory did not drop after the restore ($mem_before -> $mem_after MiB)"
x2 "busybox ping -c 3 -W 2 $ip" >&2 || fail "revived guest stopped answering ping"
log "restore in place: guest resumed, P intact, ping ok, memory $mem_before -> $mem_after MiB"

# 5. The oracle and peer: export --xen + stock xl restore of the same stream, same host.
x2 "xl destroy $name; : >/var/log/xen/console/guest-$name.log"
times2=$(T=1200 x2 "rm -f /tmp/g.img; mkfifo /tmp/g.img
    s=\$(date +%s%N)
    ($rcpd export --xen /tmp/g.img --config /etc/xen/$name-guest.cfg /tmp/ck.bin </dev/null >/tmp/export.log 2>&1 &)
    xl restore /tmp/g.img >/tmp/xlr.log 2>&1 || { cat /tmp/export.log /tmp/xlr.log; exit 3; }
    r=\$(date +%s%N)
    for i in \$(seq 300); do busybox ping -c 1 -W 1 $ip >/dev/null 2>&1 && { echo \$s \$r \$(date +%s%N); exit 0; }; done; exit 4") \
    || fail "oracle: export --xen + xl restore of the same stream did not answer ping"
read -r s r p <<<"$times2"
xl_restore_to_ping_ms=$(( (p - s) / 1000000 ))
xl_restore_ms=$(( (r - s) / 1000000 ))
lab_guest_wait 2 "$name" 'PATTERN-P-(INTACT|CHANGED)' 120
x2 "xl destroy $name" >/dev/null 2>&1 || true
log "oracle: export --xen + xl restore: restore returned after $xl_restore_ms ms, ping after $xl_restore_to_ping_ms ms"

phase_a_ms=$(grep -o 'restore: phase A: .*, \([0-9]*\) ms$' <<<"$log_restore" | tail -n1 | sed 's/.*, \([0-9]*\) ms$/\1/')
printf '{"scenario":"restore-in-place","guest_mib":%d,"loader_mib":%d,"stream_bytes":%d,"phase_a_ms":%s,"commit_to_ping_ms":%d,"xl_export_restore_to_ping_ms":%d,"xl_export_restore_ms":%d,"mem_before_mib":%d,"mem_after_mib":%d,"refused":"corrupt","aborted":true,"ok":true}\n' \
    "$gmem" "$lmem" "$bytes" "${phase_a_ms:-null}" "$commit_to_ping_ms" "$xl_restore_to_ping_ms" "$xl_restore_ms" "$mem_before" "$mem_after"
