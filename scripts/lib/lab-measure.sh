# Measuring a migration from outside the guest, reusable by every scenario.
# shellcheck shell=bash
#
# lab_measure_migration PROBE_HOST GUEST_IP PORT -- CMD...
#   Starts lab-probe in PROBE_HOST's dom0 (a UDP datagram to GUEST_IP:PORT every 10 ms,
#   answered by the guest's echo service), runs the host-side command CMD (any migration:
#   `scripts/lab exec 1 xl migrate ...`, a self-migration trigger, ...), waits for the guest
#   to answer again, stops the probe and prints one JSON object:
#     {"cmd_status":0,"total_s":41.2,"downtime_ms":3512.0,"recovered":true,"probe":{...}}
#   total_s is the wall time of CMD on this machine; downtime_ms is the longest gap between
#   two consecutive echoes during the whole probe run (the probe sends every 10 ms, so a
#   gap of about 10 ms means no visible interruption). CMD's stdout goes to stderr.
#   LAB_MEASURE_SETTLE (s, default 3) is how long to keep probing after CMD; LAB_MEASURE_RECOVER
#   (s, default 60) bounds the wait for the guest to answer again.
lab_measure_migration() {
    local ph=$1 ip=$2 port=$3; shift 3
    [ "${1:-}" = -- ] && shift
    [ $# -gt 0 ] || die "lab_measure_migration: no command"
    local id=m$$ settle=${LAB_MEASURE_SETTLE:-3} recover=${LAB_MEASURE_RECOVER:-60}
    lab_exec_raw "$ph" 90 "" "lab-probe -t $ip -p $port -w 60" >/dev/null \
        || die "measure: guest $ip:$port does not answer from host $ph before the migration"
    lab_exec_raw "$ph" 30 "" "rm -f /tmp/$id.json; setsid lab-probe -t $ip -p $port -i 10 -o /tmp/$id.json </dev/null >/tmp/$id.log 2>&1 & echo \$! >/tmp/$id.pid" \
        || die "measure: cannot start the probe on host $ph"
    sleep 2
    local t0 t1 rc=0
    t0=$(date +%s.%N)
    "$@" >&2 || rc=$?
    t1=$(date +%s.%N)
    # Bounded wait until the guest answers again, then a short settle period.
    local recovered=true
    lab_exec_raw "$ph" "$((recover + 30))" "" "lab-probe -t $ip -p $port -w $recover" >/dev/null 2>&1 || recovered=false
    sleep "$settle"
    local probe
    probe=$(lab_exec_raw "$ph" 60 "" "kill -TERM \$(cat /tmp/$id.pid); for i in \$(seq 100); do [ -s /tmp/$id.json ] && break; sleep 0.1; done; cat /tmp/$id.json") \
        || die "measure: probe results missing on host $ph"
    local gap
    gap=$(sed -n 's/.*"max_gap_ms":\([0-9.]*\).*/\1/p' <<<"$probe")
    printf '{"cmd_status":%d,"total_s":%.3f,"downtime_ms":%s,"recovered":%s,"probe":%s}\n' \
        "$rc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" "${gap:-null}" "$recovered" "$probe"
}
