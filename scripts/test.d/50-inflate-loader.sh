#!/usr/bin/env bash
# inflate-loader on two emulated Xen hosts (docs/inflate-loader.md "Lab scenario"):
#   1. boot the loader domain on host 2 with `xl create`, time it until the loader says it
#      listens (xenstore data/inflate-loader = listening), measured inside dom0;
#   2. from host 1's dom0 send it a truncated, a corrupted and a too-large stream: each must be
#      refused with the right status on the wire and on its console, and the loader stays up;
#   3. send a good synthetic checkpoint while a second connection is refused as busy: result ok,
#      digest verified, with the throughput;
#   4. plain dom0-to-dom0 TCP of the same stream file in the same run, for comparison;
#   5. check the hand-over: backend back in InitWait, frontend Initialising, no grants left,
#      and (kernel option handover-check) a fresh netfront connected to that backend and left;
#   6. destroy the domain. Prints a JSON summary line and the figures.
# Env: INFLATE_PAGES (default 4096 = 16 MiB), LAB_INFLATE_NAME (lab name, default ci-inflate),
#      INFLATE_KEEP=1 keeps the hosts up.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
export LAB_NAME=${LAB_INFLATE_NAME:-ci-inflate}
# This script owns its lab (it goes down when the script ends) unless INFLATE_KEEP=1.
if [ "${INFLATE_KEEP:-0}" = 1 ]; then unset LAB_OWNER_PID; else export LAB_OWNER_PID=${LAB_OWNER_PID:-$$}; fi
lab="$REPO_ROOT/scripts/lab"
pages=${INFLATE_PAGES:-4096}
name=inflate port=7000 ip=10.0.0.60 mem=64
fail() { echo "inflate-loader stage FAILED: $*" >&2; "$lab" exec 2 "tail -n 30 /var/log/xen/console/guest-$name.log" >&2 2>/dev/null || true; exit 1; }
x1() { "$lab" exec -t "${T:-300}" 1 "$*"; }
x2() { "$lab" exec -t "${T:-300}" 2 "$*"; }

out=$(bash "$REPO_ROOT/scripts/build-inflate-loader") || fail "build"
loader=$out/inflate-loader
"$lab" down >/dev/null 2>&1 || true
[ "${INFLATE_KEEP:-0}" = 1 ] || trap '"$lab" down >/dev/null 2>&1 || true' EXIT
"$lab" up 2 >&2 || fail "lab up"

for h in 1 2; do
    "$lab" push "$h" "$out/inflate-send" /usr/local/bin/inflate-send >&2 || fail "push inflate-send"
    "$lab" exec "$h" "chmod +x /usr/local/bin/inflate-send" || fail "chmod"
done
# First create through the lab helper (pushes the kernel and the filled template), then
# destroy and time a clean `xl create` inside dom0.
"$lab" guest-create 2 "$name" --kernel "$loader" --no-ramdisk --memory $mem --ip $ip \
    --template "$REPO_ROOT/xen-configs/inflate-loader.cfg" \
    --extra "ip=$ip netmask=255.255.255.0 port=$port handover-check" --wait listening --timeout 120 >&2 || fail "first boot"
x2 "xl destroy $name" || fail "destroy"
times=$(x2 "s=\$(date +%s%N); xl create -q /etc/xen/$name.cfg >/dev/null || exit 3
  c=\$(( (\$(date +%s%N) - s) / 1000000 )); d=\$(xl domid $name)
  for i in \$(seq 1200); do
    [ \"\$(xenstore-read /local/domain/\$d/data/inflate-loader 2>/dev/null)\" = listening ] && { echo \$c \$(( (\$(date +%s%N) - s) / 1000000 )); exit 0; }
    sleep 0.05
  done; exit 4") || fail "loader did not report listening after xl create"
domid=$(x2 "xl domid $name")
read -r create boot <<<"$times"
echo "boot: xl create returned after $create ms, loader listening $boot ms after xl create (domid $domid)"

# Refusals: the loader must answer each with the matching status and keep serving.
x1 "inflate-send $ip:$port --pages 1024 --truncate-at 100000 --expect truncated" || fail "truncated stream not refused as truncated"
x1 "inflate-send $ip:$port --pages 1024 --corrupt-at 200000 --expect corrupt" || fail "corrupted stream not refused as corrupt"
x1 "inflate-send $ip:$port --header-only 99999 --expect too-large" || fail "oversized stream not refused as too-large"
log=$(x2 "cat /var/log/xen/console/guest-$name.log")
for s in "result truncated" "result corrupt" "result too-large"; do
    grep -q "$s" <<<"$log" || fail "console lacks '$s'"
done

# The good stream, with a second connection that must be refused as busy.
x1 "inflate-send --pages $pages --write /tmp/stream.bin" >/dev/null || fail "write stream"
res=$(T=900 x1 "inflate-send $ip:$port --file /tmp/stream.bin --second") || fail "good stream not verified: $res"
echo "$res"
loader_mbs=$(sed -n 's/.*: \([0-9.]*\) MB\/s$/\1/p' <<<"$res")
grep -q "second connection: status=busy" <<<"$res" || fail "second connection not refused as busy"
# The loader's own view: bytes over its receive time (accept to verified result).
loader_side=$(sed -n 's/^result: .* bytes=\([0-9]*\) loader_micros=\([0-9]*\) .*/\1 \2/p' <<<"$res" | awk '{ printf "%.2f", $1 / $2 }')

# Plain TCP between the two dom0s, same bytes.
x2 "[ -f /tmp/sink.pid ] && kill \$(cat /tmp/sink.pid) 2>/dev/null; setsid socat -u TCP-LISTEN:7001,reuseaddr OPEN:/dev/null </dev/null >/dev/null 2>&1 & echo \$! >/tmp/sink.pid" || fail "start TCP sink"
sleep 1
tcp=$(T=900 x1 "s=\$(date +%s%N); socat -u OPEN:/tmp/stream.bin TCP:10.0.0.2:7001 || exit 3; e=\$(date +%s%N); b=\$(stat -c %s /tmp/stream.bin); awk -v b=\$b -v ns=\$((e - s)) 'BEGIN{printf \"%.2f\", b / (ns / 1e9) / 1e6}'") || fail "dom0-to-dom0 TCP"
echo "dom0-to-dom0 TCP: $tcp MB/s"

# Hand-over: wait for the loader to finish it, then look at the backend from dom0.
x2 "for i in \$(seq 600); do [ \"\$(xenstore-read /local/domain/$domid/data/inflate-loader)\" = handed-over ] && exit 0; sleep 0.1; done; exit 1" \
    || fail "loader did not report handed-over"
bstate=$(x2 "xenstore-read /local/domain/0/backend/vif/$domid/0/state")
fstate=$(x2 "xenstore-read /local/domain/$domid/device/vif/0/state")
log=$(x2 "cat /var/log/xen/console/guest-$name.log")
grep -q "grants still active 0;" <<<"$log" || fail "grants left active after hand-over"
grep -q "refusing connection .*: busy" <<<"$log" || fail "console lacks the busy refusal"
grep -q "result ok: 4096 pages placed, digest verified\|result ok: $pages pages placed, digest verified" <<<"$log" || fail "console lacks the verified result"
grep -q "xenstore ring idle true" <<<"$log" || fail "xenstore ring not idle after hand-over"
# The loader connected a fresh netfront to the backend it had left, and handed it over again.
grep -q "handover-check ok" <<<"$log" || fail "a fresh netfront could not connect after the hand-over"
[ "$bstate" = 2 ] || fail "backend state $bstate after hand-over (want 2, InitWait)"
[ "$fstate" = 1 ] || fail "frontend state $fstate after hand-over (want 1, Initialising)"
echo "hand-over: backend state $bstate (InitWait), frontend $fstate, 0 grants active, rings idle; a fresh netfront connected to it"
x2 "xl destroy $name" || fail "destroy"

size=$(stat -c %s "$loader")
loc=$(cat "$REPO_ROOT"/inflate-loader/src/*.rs | grep -cv '^\s*\(//.*\)\?$')
# Lines inside unsafe blocks / unsafe fns (brace depth from the line that opens them).
unsafe_lines=$(awk '{ l=$0; sub(/\/\/.*/, "", l)
    if (d > 0) { n++; d += gsub(/\{/, "{", l) - gsub(/\}/, "}", l); if (d < 0) d = 0; next }
    if (l ~ /unsafe[ ]*(\{|fn|extern)/) { n++; d = gsub(/\{/, "{", l) - gsub(/\}/, "}", l); if (d < 0) d = 0 } }
    END { print n + 0 }' "$REPO_ROOT"/inflate-loader/src/*.rs)
printf '{"scenario":"inflate-loader","pages":%d,"xl_create_ms":%s,"boot_ms":%s,"loader_mb_s":%s,"loader_side_mb_s":%s,"dom0_tcp_mb_s":%s,"binary_bytes":%d,"kernel_loc":%d,"unsafe_lines":%d,"backend_state_after":%s,"ok":true}\n' \
    "$pages" "$create" "$boot" "${loader_mbs:-null}" "${loader_side:-null}" "$tcp" "$size" "$loc" "$unsafe_lines" "$bstate"
