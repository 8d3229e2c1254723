#!/usr/bin/env bash
# Stage 41-checkpoint-save: the checkpoint guest saves itself, and the saved stream is revived
# twice on the destination host: by inflate-loader in place, and by stock `xl restore`.
# One lab boot (own lab "ckpt", 2 hosts), one save:
#   1. `checkpointd save` inside the checkpoint guest (test-vms/checkpoint-guest) on host 1
#      while pattern-writer holds pattern P in 64 locked pages; the stream leaves the guest over
#      TCP to host 2's dom0 (saving into guest RAM would never converge). The guest then writes
#      Q and carries on (heartbeats, ping); in dom0 `checkpointd inspect` validates the file
#      (checksums, order, digest) and check-pattern.pl finds P, not Q, at the pattern's pfns
#      (the capture-point content). The original is destroyed.
#   2. Restore in place (docs/inflate-loader.md "Restore in place"): host 2's dom0 creates an
#      inflate-loader domain sized for the guest, with the guest's address and MAC
#      (xen-configs/inflate-loader.cfg). `inflate-send` replays the stream: with one flipped bit
#      (refused `corrupt`, the loader keeps serving), with `--abort` (`ready`, phase A undone,
#      the loader keeps serving), then with `--commit`: the loader turns its own domain into the
#      guest. Asserted from outside: the console says it is the restored copy and
#      PATTERN-P-INTACT 64/64, the module unpinned the loader's tables, ping answers, the
#      heartbeat goes on, and the domain's memory drops (xl list).
#   3. The oracle and peer: the same stream through `checkpointd export --xen` + stock
#      `xl restore` on the same host, timed the same way (start to first ping answer), with
#      the same assertions.
# The guest boots with 2-level event channels (xen.fifo_events=0), so the fault tracker's
# capture is copy-on-write (docs/fault-tracker.md); stage 45's guests keep Linux's default
# FIFO event channels, where the capture copies the whole final set: CI revives both kinds.
# Prints one JSON line. ~8 min warm on a busy 2-core machine (the save is 2.5 of them).
# Env: CKPT_LAB_NAME (default ckpt); CKPT_DEST_HOST=1 does everything on one host;
# CKPT_EVTCHN=fifo keeps FIFO event channels; CKPT_DIRTY=MIB:RATE runs the lab's dirtying workload (MIB MiB at RATE MiB/s) during the save;
# CKPT_GUEST_MEM (MiB, default 128); RESTORE_DRY_RUN=1 adds the loader's dry run (pins, GDT
# and M2P applied and undone before `ready`). A lab that is already up (scripts/lab up 2) is
# used and left up.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
export LAB_NAME=${CKPT_LAB_NAME:-ckpt}
. "$REPO_ROOT/scripts/lib/lab.sh"
. "$REPO_ROOT/scripts/lib/lab-guest.sh"

name=ckpts ip=$LAB_SUBNET.121 sport=5555 lport=7000 pages=${CKPT_PATTERN_PAGES:-64} dst=${CKPT_DEST_HOST:-2}
gmem=${CKPT_GUEST_MEM:-128}
evtchn=$(lab_evtchn_arg "${CKPT_EVTCHN:-2l}")
# Loader domain: the guest's RAM plus the loader's own footprint (image with its restore
# tables, boot mapping rounded to 4 MiB, margin): docs/restore.md "Sizing" gives the formula.
lmem=${RESTORE_LOADER_MEM:-$((gmem + 16))}
x1() { lab_exec_raw 1 "${T:-300}" "" "$*"; }
xd() { lab_exec_raw "$dst" "${T:-300}" "" "$*"; }
consolelog() { lab_exec_raw "${1:-$dst}" 30 "" "cat /var/log/xen/console/guest-$name.log" | tr -d '\r'; }
fail() {
    echo "checkpoint-save stage FAILED: $*" >&2
    { echo "--- console of $name on host $dst"; xd "tail -n 60 /var/log/xen/console/guest-$name.log"
      echo "--- xl dmesg (host $dst)"; xd "xl dmesg | tail -n 25"; xd "xl list"; } >&2 2>/dev/null || true
    exit 1
}
ping_ok() { xd "busybox ping -c 3 -W 2 $ip" >&2; }
alive() { # the console's heartbeat goes on
    local a b
    a=$(consolelog | grep -c 'CKPT-ALIVE' || true); sleep 5; b=$(consolelog | grep -c 'CKPT-ALIVE' || true)
    [ "$b" -gt "$a" ] || fail "$1: console not alive ($a -> $b heartbeats)"
}

img=$(bash "$REPO_ROOT/scripts/build-checkpoint-guest")
eval "$(bash "$REPO_ROOT/scripts/build-checkpointd")"
loader_dir=$(bash "$REPO_ROOT/scripts/build-inflate-loader") || fail "build inflate-loader"

started=0
if [ "$(lab_hosts)" = 0 ]; then lab_up "$dst"; started=1; fi
[ "$(lab_hosts)" -ge "$dst" ] || fail "destination host $dst is not up (lab '$LAB_NAME' has $(lab_hosts) hosts)"
cleanup() {
    local h
    for h in $(seq "$dst"); do
        lab_exec_raw "$h" 30 "" "xl destroy $name; pkill -f 'TCP-LISTE[N]:$sport'; rm -f /tmp/g.img; umount /mnt/ckpt" >/dev/null 2>&1 || true
    done
    [ "$started" = 0 ] || lab_down
}
trap cleanup EXIT
rcpd=$(lab_push_cached "$dst" "$CHECKPOINTD_STRIPPED")
rsend=$(lab_push_cached "$dst" "$loader_dir/inflate-send")
rchk=$(lab_push_cached "$dst" "$REPO_ROOT/test-vms/checkpoint-guest/check-pattern.pl")
xd "chmod +x $rcpd $rsend"

# 1. The guest saves itself into a tmpfs of the destination's dom0 (its root is small).
for h in 1 "$dst"; do
    lab_exec_raw "$h" 30 "" "xl destroy $name; rm -f /var/log/xen/console/guest-$name.log; pkill -f 'TCP-LISTE[N]:$sport'; umount /mnt/ckpt" >/dev/null 2>&1 || true
done
xd "mkdir -p /mnt/ckpt && mount -t tmpfs -o size=480M tmpfs /mnt/ckpt" || fail "cannot mount a tmpfs in dom0"
xd "(setsid socat -u TCP-LISTEN:$sport,reuseaddr OPEN:/mnt/ckpt/ck.bin,creat,trunc </dev/null >/tmp/ck-recv.log 2>&1 &)" \
    || fail "cannot start the receiver in dom0"
t0=$(date +%s)
lab_guest_create 1 "$name" --kernel "$img/vmlinuz" --ramdisk "$img/initrd.gz" --memory "$gmem" \
    --ip "$ip" --extra "$evtchn ckpt.save=$LAB_SUBNET.$dst:$sport ckpt.pattern=$pages${CKPT_DIRTY:+ ckpt.dirty=$CKPT_DIRTY}" --wait 'CKPT-SAVE-EXIT' --timeout 900
lab_guest_wait 1 "$name" 'PATTERN-Q-WRITTEN' 60
out=$(consolelog 1)
grep -E '^CKPT-(SAVE|PATTERN-P)' <<<"$out" >&2 || true
grep -q 'CKPT-SAVE-EXIT 0' <<<"$out" || fail "checkpointd save failed in the guest"
pfns=$(sed -n 's/^CKPT-PATTERN-PFNS //p' <<<"$out" | tr -cs '0-9' ' ')
[ "$(wc -w <<<"$pfns")" = "$pages" ] || fail "expected $pages pattern pfns, got: $pfns"
n1=$(grep -c 'CKPT-ALIVE' <<<"$out" || true)
lab_exec_raw 1 60 "" "busybox ping -c 3 -W 2 $ip" >&2 || fail "guest does not answer ping after the save"
for _ in $(seq 60); do xd "pgrep -f 'TCP-LISTE[N]:$sport' >/dev/null" || break; sleep 1; done
xd "$rcpd inspect /mnt/ckpt/ck.bin" >&2 || fail "checkpointd inspect rejected the saved checkpoint"
xd "perl $rchk /mnt/ckpt/ck.bin $pfns" >&2 || fail "the checkpoint does not hold pattern P at the capture point"
n2=$(consolelog 1 | grep -c 'CKPT-ALIVE' || true)
[ "$n2" -gt "$n1" ] || fail "guest console stopped after the save ($n1 -> $n2 heartbeats)"
save_s=$(( $(date +%s) - t0 ))
log "checkpoint save: valid stream, P at all $pages pattern pfns, guest alive ($n1 -> $n2 heartbeats), $save_s s (boot included)"
bytes=$(xd "stat -c %s /mnt/ckpt/ck.bin")
if [ "$dst" != 1 ]; then
    # The destination needs the guest's xl config and the files it names (same cached paths).
    tmpcfg=$(mktemp)
    lab_pull 1 "/etc/xen/$name.cfg" "$tmpcfg"
    lab_push "$dst" "$tmpcfg" "/etc/xen/$name-guest.cfg"; rm -f "$tmpcfg"
    lab_push_cached "$dst" "$img/vmlinuz" >/dev/null
    lab_push_cached "$dst" "$img/initrd.gz" >/dev/null
else
    xd "cp /etc/xen/$name.cfg /etc/xen/$name-guest.cfg"
fi
lab_exec_raw 1 60 "" "xl destroy $name" || fail "cannot destroy the original"

# 2. Restore in place: the loader domain, with the guest's address and MAC.
xd "rm -f /var/log/xen/console/guest-$name.log"
extra="ip=$ip netmask=255.255.255.0 port=$lport commit-timeout=60"
[ "${RESTORE_DRY_RUN:-0}" = 1 ] && extra="$extra restore-dry-run"
lab_guest_create "$dst" "$name" --kernel "$loader_dir/inflate-loader" --no-ramdisk --memory "$lmem" --ip "$ip" \
    --template "$REPO_ROOT/xen-configs/inflate-loader.cfg" --extra "$extra" --wait 'listening on' --timeout 180 \
    || fail "loader did not start"
mem_before=$(xd "xl list $name | awk 'NR == 2 { print \$3 }'")
# Refused before the point of no return: one flipped bit in the middle of the stream.
T=900 xd "$rsend $ip:$lport --file /mnt/ckpt/ck.bin --corrupt-at $((bytes / 2)) --expect corrupt" >&2 \
    || fail "a corrupted stream was not refused as corrupt"
consolelog | grep -q "result corrupt" || fail "console lacks the corrupt refusal"
# ABORT after `ready`: phase A is undone and the loader serves again.
T=900 xd "$rsend $ip:$lport --file /mnt/ckpt/ck.bin --abort --expect ready" >&2 \
    || fail "ready + ABORT did not go as specified"
consolelog | grep -q "ABORT received: discarding the guest, serving again" || fail "console lacks the ABORT undo"
# COMMIT -> first ping answer, timed in the destination's dom0.
times=$(T=1200 xd "$rsend $ip:$lport --file /mnt/ckpt/ck.bin --commit --expect ready >/tmp/commit.out 2>&1 || { cat /tmp/commit.out; exit 3; }
    c=\$(date +%s%N)
    for i in \$(seq 300); do busybox ping -c 1 -W 1 $ip >/dev/null 2>&1 && { echo \$c \$(date +%s%N); exit 0; }; done; exit 4") \
    || { xd "cat /tmp/commit.out" >&2 || true; fail "restore in place: no ping answer after COMMIT"; }
xd "cat /tmp/commit.out" >&2
read -r tc tp <<<"$times"
commit_to_ping_ms=$(( (tp - tc) / 1000000 ))
log "restore in place: COMMIT -> ping answered in $commit_to_ping_ms ms"
lab_guest_wait "$dst" "$name" 'resumed from a checkpoint' 120
lab_guest_wait "$dst" "$name" 'PATTERN-P-(INTACT|CHANGED)' 120
log_restore=$(consolelog)
grep -q "PATTERN-P-INTACT $pages/$pages" <<<"$log_restore" \
    || fail "the revived guest's buffer does not hold pattern P: $(grep PATTERN-P- <<<"$log_restore")"
grep -E '^restore: |unpinned its L4|fault tracker: ' <<<"$log_restore" >&2 || true
! grep -E '^(WARNING|BUG|Oops|Kernel panic)' <<<"$log_restore" >&2 || fail "the guest restored in place logged a kernel warning or oops"
grep -q 'revived by inflate-loader: unpinned its L4 .*: rc 0' <<<"$log_restore" || fail "the revived guest did not unpin the loader's L4"
phase_a_ms=$(grep -o 'restore: phase A: .*, [0-9]* ms$' <<<"$log_restore" | tail -n1 | sed 's/.*, \([0-9]*\) ms$/\1/')
mem_after=$mem_before
for _ in $(seq 30); do
    mem_after=$(xd "xl list $name | awk 'NR == 2 { print \$3 }'")
    [ "$mem_after" -lt "$mem_before" ] && break
    sleep 2
done
[ "$mem_after" -lt "$mem_before" ] || fail "domain memory did not drop after the restore ($mem_before -> $mem_after MiB)"
ping_ok || fail "the guest restored in place stopped answering ping"
alive "the guest restored in place"
log "restore in place: guest resumed, P intact, ping ok, alive, memory $mem_before -> $mem_after MiB"

# 3. The oracle and peer: export --xen into a FIFO read by stock xl restore, same stream.
xd "xl destroy $name; : >/var/log/xen/console/guest-$name.log"
times2=$(T=1200 xd "rm -f /tmp/g.img; mkfifo /tmp/g.img
    s=\$(date +%s%N)
    ($rcpd export --xen /tmp/g.img --config /etc/xen/$name-guest.cfg /mnt/ckpt/ck.bin </dev/null >/tmp/export.log 2>&1 &)
    xl restore /tmp/g.img >/tmp/xlr.log 2>&1 || { cat /tmp/export.log /tmp/xlr.log; exit 3; }
    r=\$(date +%s%N)
    for i in \$(seq 300); do busybox ping -c 1 -W 1 $ip >/dev/null 2>&1 && { echo \$s \$r \$(date +%s%N); exit 0; }; done; exit 4") \
    || fail "export --xen + stock xl restore of the same stream did not answer ping"
read -r s r p <<<"$times2"
xl_restore_to_ping_ms=$(( (p - s) / 1000000 ))
xl_restore_ms=$(( (r - s) / 1000000 ))
lab_guest_wait "$dst" "$name" 'resumed from a checkpoint' 120
lab_guest_wait "$dst" "$name" 'PATTERN-P-(INTACT|CHANGED)' 120
consolelog | grep -q "PATTERN-P-INTACT $pages/$pages" \
    || fail "the guest revived by xl restore does not hold pattern P: $(consolelog | grep PATTERN-P-)"
alive "the guest revived by xl restore"
! consolelog | grep -E '^(WARNING|BUG|Oops|Kernel panic)' >&2 || fail "the guest revived by xl restore logged a kernel warning or oops"
xd "xl destroy $name" >/dev/null 2>&1 || true
log "export --xen + xl restore: restore returned after $xl_restore_ms ms, ping after $xl_restore_to_ping_ms ms, P intact"

printf '{"scenario":"checkpoint-save","guest_mib":%d,"loader_mib":%d,"stream_bytes":%d,"save_s":%d,"phase_a_ms":%s,"commit_to_ping_ms":%d,"xl_export_restore_to_ping_ms":%d,"xl_export_restore_ms":%d,"mem_before_mib":%d,"mem_after_mib":%d,"refused":"corrupt","aborted":true,"ok":true}\n' \
    "$gmem" "$lmem" "$bytes" "$save_s" "${phase_a_ms:-null}" "$commit_to_ping_ms" "$xl_restore_to_ping_ms" "$xl_restore_ms" "$mem_before" "$mem_after"
