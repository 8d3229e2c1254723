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
log "self-migrate: moved, faults ok"
