#!/usr/bin/env bash
# Scenario migrate-baseline: stock `xl migrate` of the busybox-workload guest from host 1 to
# host 2 over socat (no ssh), measured from outside (scripts/lib/lab-measure.sh). Prints one
# JSON object on stdout. Brings 2 hosts up if the lab is down, and down again at the end.
# usage: scripts/lab scenario migrate-baseline [--mem MIB] [--fill MIB] [--rate MIB_S] [--keep]
#        [--timeout SECS]
#   --mem   guest memory (default 256)      --fill  memory the workload keeps filled (default mem/2)
#   --rate  MiB/s the workload rewrites (default 0)   --keep  leave the hosts up afterwards
#   --timeout  seconds before `xl migrate` is killed (default 3600; emulation is slow)
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
. "$REPO_ROOT/scripts/lib/lab.sh"
. "$REPO_ROOT/scripts/lib/lab-guest.sh"
. "$REPO_ROOT/scripts/lib/lab-measure.sh"

mem=256 fill="" rate=0 keep=0 name=mig ip=$LAB_SUBNET.100 port=7 timeout=3600
while [ $# -gt 0 ]; do
    case $1 in
        --mem) mem=${2:?}; shift 2 ;;
        --fill) fill=${2:?}; shift 2 ;;
        --rate) rate=${2:?}; shift 2 ;;
        --keep) keep=1; shift ;;
        --timeout) timeout=${2:?}; shift 2 ;;
        *) die "migrate-baseline: unknown option $1" ;;
    esac
done
[[ $mem =~ ^[0-9]+$ ]] || die "--mem must be MiB"
fill=${fill:-$((mem / 2))}
[[ $fill =~ ^[0-9]+$ ]] && [ "$fill" -lt "$mem" ] || die "--fill must be MiB below --mem"
[[ $rate =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--rate must be MiB/s"
[[ $timeout =~ ^[0-9]+$ ]] || die "--timeout must be seconds"

started=0
if [ "$(lab_hosts)" = 0 ]; then
    lab_up 2; started=1
fi
[ "$(lab_hosts)" -ge 2 ] || die "migrate-baseline needs 2 hosts (lab '$LAB_NAME' has $(lab_hosts))"
cleanup() {
    lab_exec_raw 1 30 "" "xl destroy $name" >/dev/null 2>&1 || true
    lab_exec_raw 2 30 "" "xl destroy $name; pkill -f 'socat TCP-LISTEN:5000' || true" >/dev/null 2>&1 || true
    [ "$started" = 0 ] || [ "$keep" = 1 ] || lab_down
}
trap cleanup EXIT

lab_exec_raw 1 30 "" "xl destroy $name" >/dev/null 2>&1 || true
lab_exec_raw 2 30 "" "xl destroy $name" >/dev/null 2>&1 || true
lab_guest_create 1 "$name" --memory "$mem" --ip "$ip" \
    --extra "lab.mem=$fill lab.rate=$rate lab.port=$port" --wait LAB-GUEST-READY --timeout 240

# Receiver on host 2: socat hands the connection to `xl migrate-receive` (one migration).
lab_exec_raw 2 30 "" "setsid socat TCP-LISTEN:5000,reuseaddr SYSTEM:'xl migrate-receive' </dev/null >/tmp/mig-recv.log 2>&1 &" \
    || die "cannot start the receiver on host 2"
# Sender: with -s \"\" xl runs its last argument as the transport; dd counts the bytes sent.
xfer="dd bs=64k 2>/tmp/mig.bytes | socat - TCP:$LAB_SUBNET.2:5000"
log "migrating $name ($mem MiB, $fill MiB filled, dirty rate $rate MiB/s) host 1 -> host 2"
m=$(lab_measure_migration 2 "$ip" "$port" -- \
    lab_exec_raw 1 "$timeout" "" "xl migrate -s '' $name \"$xfer\"")
bytes=$(lab_exec_raw 1 30 "" "sed -n 's/^\([0-9]*\) bytes.*/\1/p' /tmp/mig.bytes" || true)
where=$(lab_exec_raw 2 30 "" "xl domid $name >/dev/null 2>&1 && echo host2 || echo lost")
ok=false
[ "$where" = host2 ] && grep -q '"cmd_status":0' <<<"$m" && grep -q '"recovered":true' <<<"$m" && ok=true
printf '{"scenario":"migrate-baseline","guest_mem_mib":%d,"fill_mib":%d,"dirty_rate_mib_s":%s,"transport":"socat","bytes_sent":%s,"ok":%s,"measure":%s}\n' \
    "$mem" "$fill" "$rate" "${bytes:-null}" "$ok" "$m"
[ "$ok" = true ] || die "migration failed (guest on: $where)"
