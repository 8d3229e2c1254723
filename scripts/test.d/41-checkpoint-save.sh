#!/usr/bin/env bash
# Stage 41-checkpoint-save: `checkpointd save` inside the checkpoint guest on emulated Xen
# (own lab "ckpt", one host) while pattern-writer holds pattern P in 64 locked pages; the
# stream leaves the guest over TCP to dom0 (saving into guest RAM would never converge).
# Then: the guest writes Q and carries on (heartbeats, ping); in dom0 `checkpointd inspect`
# validates the file (checksums, order, digest) and check-pattern.pl finds P, not Q, at the
# pattern's pfns (the capture-point content). Finally the independent proof: `checkpointd
# export --xen` turns it into an xl save image, the original is destroyed and stock
# `xl restore` must resume the guest from the capture point: it reports it is the restored
# copy, answers ping and its console carries on. ~6 min warm on a busy 2-core machine.
# By default the lab has 2 hosts and the guest streams its checkpoint to host 2's dom0, which
# validates, exports and restores it there: the guest moves itself to another Xen host, and
# the revived guest must find pattern P in its buffer. CKPT_DEST_HOST=1 keeps it on one host.
# CKPT_DIRTY=MIB:RATE runs the lab's dirtying workload (MIB MiB at RATE MiB/s) during the save.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
export LAB_NAME=${CKPT_LAB_NAME:-ckpt}
. "$REPO_ROOT/scripts/lib/lab.sh"
. "$REPO_ROOT/scripts/lib/lab-guest.sh"

name=ckpts ip=$LAB_SUBNET.121 port=5555 pages=${CKPT_PATTERN_PAGES:-64} dst=${CKPT_DEST_HOST:-2}
img=$(bash "$REPO_ROOT/scripts/build-checkpoint-guest")
eval "$(bash "$REPO_ROOT/scripts/build-checkpointd")"
cpd=$CHECKPOINTD_STRIPPED

started=0
if [ "$(lab_hosts)" = 0 ]; then lab_up "$dst"; started=1; fi
[ "$(lab_hosts)" -ge "$dst" ] || die "destination host $dst is not up (lab '$LAB_NAME' has $(lab_hosts) hosts)"
cleanup() {
    local h
    for h in $(seq "$dst"); do
        lab_exec_raw "$h" 30 "" "xl destroy $name; pkill -f 'TCP-LISTEN:$port' ; rm -f /tmp/ck.bin; umount /mnt/ckpt" >/dev/null 2>&1 || true
    done
    [ "$started" = 0 ] || lab_down
}
trap cleanup EXIT
lab_exec_raw 1 30 "" "xl destroy $name; rm -f /var/log/xen/console/guest-$name.log /tmp/ck.bin" >/dev/null 2>&1 || true
lab_exec_raw "$dst" 30 "" "xl destroy $name; rm -f /var/log/xen/console/guest-$name.log /tmp/ck.bin" >/dev/null 2>&1 || true
lab_exec_raw "$dst" 30 "" "(setsid socat -u TCP-LISTEN:$port,reuseaddr OPEN:/tmp/ck.bin,creat,trunc </dev/null >/tmp/ck-recv.log 2>&1 &)" \
    || die "cannot start the receiver in dom0"
t0=$(date +%s)
lab_guest_create 1 "$name" --kernel "$img/vmlinuz" --ramdisk "$img/initrd.gz" --memory 256 \
    --ip "$ip" --extra "ckpt.save=$LAB_SUBNET.$dst:$port ckpt.pattern=$pages${CKPT_DIRTY:+ ckpt.dirty=$CKPT_DIRTY}" --wait 'CKPT-SAVE-EXIT' --timeout 900
lab_guest_wait 1 "$name" 'PATTERN-Q-WRITTEN' 60
consolelog() { lab_exec_raw "${1:-1}" 30 "" "cat /var/log/xen/console/guest-$name.log"; }
out=$(consolelog | tr -d '\r')
grep -E '^CKPT-(SAVE|PATTERN-P)' <<<"$out" >&2 || true
grep -q 'CKPT-SAVE-EXIT 0' <<<"$out" || die "checkpointd save failed in the guest"
pfns=$(sed -n 's/^CKPT-PATTERN-PFNS //p' <<<"$out" | tr -cs '0-9' ' ')
[ "$(wc -w <<<"$pfns")" = "$pages" ] || die "expected $pages pattern pfns, got: $pfns"
n1=$(grep -c 'CKPT-ALIVE' <<<"$out" || true)
lab_exec_raw 1 60 "" "busybox ping -c 3 -W 2 $ip" >&2 || die "guest does not answer ping after the save"
rcpd=$(lab_push_cached "$dst" "$cpd")
rchk=$(lab_push_cached "$dst" "$REPO_ROOT/test-vms/checkpoint-guest/check-pattern.pl")
lab_exec_raw "$dst" 300 "" "chmod +x $rcpd && $rcpd inspect /tmp/ck.bin" >&2 || die "checkpointd inspect rejected the saved checkpoint"
lab_exec_raw "$dst" 300 "" "perl $rchk /tmp/ck.bin $pfns" >&2 || die "the checkpoint does not hold pattern P at the capture point"
n2=$(consolelog | grep -c 'CKPT-ALIVE' || true)
[ "$n2" -gt "$n1" ] || die "guest console stopped after the save ($n1 -> $n2 heartbeats)"
log "checkpoint save: valid stream, P at all $pages pattern pfns, guest alive ($n1 -> $n2 heartbeats), $(( $(date +%s) - t0 )) s"

# Stock Xen revives the self-made checkpoint. dom0's root is small: work in a tmpfs.
if [ "$dst" != 1 ]; then
    # The destination needs the guest's xl config and the files it names (same cached paths).
    tmpcfg=$(mktemp)
    lab_pull 1 "/etc/xen/$name.cfg" "$tmpcfg"
    lab_push "$dst" "$tmpcfg" "/etc/xen/$name.cfg"; rm -f "$tmpcfg"
    lab_push_cached "$dst" "$img/vmlinuz" >/dev/null
    lab_push_cached "$dst" "$img/initrd.gz" >/dev/null
fi
lab_exec_raw "$dst" 300 "" "mkdir -p /mnt/ckpt && mount -t tmpfs -o size=480M tmpfs /mnt/ckpt && mv /tmp/ck.bin /mnt/ckpt/ &&
    $rcpd export --xen /mnt/ckpt/g.img --config /etc/xen/$name.cfg /mnt/ckpt/ck.bin && rm /mnt/ckpt/ck.bin" >&2 \
    || die "checkpointd export --xen failed"
lab_exec_raw 1 60 "" "xl destroy $name && : >/var/log/xen/console/guest-$name.log" || die "cannot destroy the original"
t1=$(date +%s)
lab_exec_raw "$dst" 300 "" "xl restore /mnt/ckpt/g.img && rm /mnt/ckpt/g.img" >&2 || die "stock xl restore rejected the exported checkpoint"
lab_guest_wait "$dst" "$name" 'resumed from a checkpoint' 120
# The revived pattern-writer checks its buffer before writing Q: P must have come back.
lab_guest_wait "$dst" "$name" 'PATTERN-P-(INTACT|CHANGED)' 60
consolelog "$dst" | grep -q "PATTERN-P-INTACT $pages/$pages" \
    || die "the restored guest's buffer does not hold pattern P: $(consolelog "$dst" | grep PATTERN-P- | tr -d '\r')"
lab_exec_raw "$dst" 60 "" "busybox ping -c 3 -W 2 $ip" >&2 || die "restored guest does not answer ping"
r1=$(consolelog "$dst" | grep -c 'CKPT-ALIVE' || true)
sleep 5
r2=$(consolelog "$dst" | grep -c 'CKPT-ALIVE' || true)
[ "$r2" -gt "$r1" ] || die "restored guest's console is not alive ($r1 -> $r2 heartbeats)"
log "xl restore on host $dst of the self-made checkpoint: guest resumed from the capture point, ping ok, alive ($r1 -> $r2 heartbeats), restore+resume $(( $(date +%s) - t1 )) s"
