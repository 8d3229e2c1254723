#!/usr/bin/env bash
# Stage 45-self-migrate: scripts/lab-scenarios/self-migrate.sh on its own two emulated hosts,
# small enough for CI: a 128 MiB checkpoint guest (32 MiB filled, dirtied at 0.5 MiB/s), row 1
# stock `xl migrate`, row 2 `checkpointd migrate` into an inflate-loader domain made from the
# guest's own `loader-config`, then the round trip (re-checkpoint + export --xen + xl restore,
# A->B->A) and the fault cases kill, corrupt and cut. Passes when the
# guest moved itself (source gone, probe answered at the destination, an open TCP connection
# carried a line after the move, workload alive) and every fault case ended with the source
# resumed and serving; prints the scenario's JSON table either way.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
export LAB_NAME=${LAB_SELF_MIGRATE_NAME:-ci-selfmig}
export LAB_OWNER_PID=${LAB_OWNER_PID:-$$}
lab="$REPO_ROOT/scripts/lab"
"$lab" down >/dev/null 2>&1 || true
trap '"$lab" down >/dev/null 2>&1 || true' EXIT
rc=0
json=$("$lab" scenario self-migrate --mem 128 --fill 32 --rate 0.5 --faults roundtrip,kill,corrupt,cut) || rc=$?
echo "$json"
[ "$rc" = 0 ] || die "self-migrate scenario failed (exit $rc): see the table above"
grep -q '"method":"checkpointd migrate","ok":true' <<<"$json" || die "the guest did not move itself"
# Both rows are measured the same way from outside; each must be plausible: at least 32 MiB
# (the filled part) on the wire, 0 < downtime < 60 s, and downtime shorter than the whole move.
for method in "xl migrate" "checkpointd migrate"; do
    # The row alone (the JSON holds both rows and the ratios); its first figures are the
    # outside measurement.
    row=$(M=$method perl -ne 'for (split /(?=\{"method":")/) { print if /^\{"method":"\Q$ENV{M}\E"/ }' <<<"$json")
    num() { perl -ne "print \$1 if /\"$1\":([0-9.]+)/" <<<"$row"; }
    bytes=$(num bytes_sent) down=$(num downtime_ms) total=$(num total_s)
    [ -n "$bytes" ] && [ "${bytes%.*}" -ge $((32 * 1024 * 1024)) ] \
        || die "$method: only ${bytes:-no} bytes on the wire for 32 MiB of filled memory"
    awk -v d="$down" 'BEGIN{exit !(d > 0 && d < 60000)}' || die "$method: implausible downtime ${down:-none} ms"
    awk -v t="$total" -v d="$down" 'BEGIN{exit !(t * 1000 > d)}' \
        || die "$method: downtime ${down} ms longer than the whole move (${total} s)"
    log "$method: ${total} s total, ${down} ms downtime, ${bytes} bytes"
done
log "self-migrate: moved, faults ok"
