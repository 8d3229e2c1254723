#!/usr/bin/env bash
# A small migrate-baseline on two emulated Xen hosts: `xl migrate` of a 128 MiB busybox-workload
# guest dirtying 0.5 MiB/s of 16 MiB, over socat. Checks that the guest ends up running on host 2 and answers
# UDP echo there, that the measured downtime and byte count are plausible, and prints the JSON.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
export LAB_NAME=${LAB_MIGRATE_NAME:-ci-migrate}
# This script owns its lab: it goes down when the script ends, however it ends.
export LAB_OWNER_PID=${LAB_OWNER_PID:-$$}
lab="$REPO_ROOT/scripts/lab"
fail() { echo "migrate-baseline stage FAILED: $*" >&2; exit 1; }
"$lab" down >/dev/null 2>&1 || true
trap '"$lab" down >/dev/null 2>&1 || true' EXIT
json=$("$lab" scenario migrate-baseline --mem 128 --fill 16 --rate 0.5) || fail "scenario failed"
echo "$json"
num() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$json" | head -n1; }
grep -q '"ok":true' <<<"$json" || fail "not ok"
bytes=$(num bytes_sent) down=$(num downtime_ms) total=$(num total_s)
[ -n "$bytes" ] && [ "$bytes" -ge $((100 * 1024 * 1024)) ] || fail "only ${bytes:-no} bytes sent for a 128 MiB guest"
awk -v d="$down" 'BEGIN{exit !(d > 0 && d < 60000)}' || fail "implausible downtime ${down} ms"
awk -v t="$total" -v d="$down" 'BEGIN{exit !(t * 1000 > d)}' || fail "downtime longer than the whole migration"
echo "migrate-baseline (128 MiB, 0.5 MiB/s): ${total} s total, ${down} ms downtime, ${bytes} bytes"
