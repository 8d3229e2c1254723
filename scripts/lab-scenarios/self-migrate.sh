#!/usr/bin/env bash
# Scenario self-migrate: the guest moves itself, side by side with stock `xl migrate`, on the
# same two emulated hosts in the same run, with the same guest (the checkpoint-guest image:
# Rust-for-Linux kernel + checkpointd), memory, workload and dirty rate, measured the same way
# from outside (scripts/lib/lab-measure.sh: UDP echo probe from host 2's dom0, wall time of
# the command, bytes of the migration stream).
#   row 1 "xl migrate":          xl migrate host 1 -> host 2 (socat transport, dd counts bytes)
#   row 2 "checkpointd migrate": `checkpointd loader-config` (run in the guest) makes the
#       loader domain's xl config; dom0 of host 2 does `xl create` of it and nothing else; the
#       guest runs `checkpointd migrate` to the loader, which becomes the guest; the source
#       powers itself off. Bytes = the checkpoint stream the guest sent.
# Also in the same run: raw TCP from the guest to host 2's dom0 (the rate the stream is
# compared with), and an open TCP connection into the guest that must survive the move.
# Prints one JSON object with both rows and the ratios. If the destination cannot restore
# (the loader refuses), row 2 says so ("restore_available": false, the loader's reason), the
# source must have resumed and kept serving, and the scenario exits 1: no figure is invented.
# With --faults the fail-safe cases run after the rows (each on a fresh loader):
#   kill     the loader domain is destroyed during the pre-copy rounds
#   corrupt  one byte of the stream is flipped on the way (a relay in host 2's dom0)
#   cut      the link is lost at the capture: a relay passes the stream up to its CAPTURE
#            record, then goes silent
# each must end with the source resumed (distinct exit code, probe recovered) and the loader
# refusing or gone before its point of no return.
# usage: scripts/lab scenario self-migrate [--mem MIB] [--fill MIB] [--rate MIB_S] [--keep]
#        [--no-baseline] [--faults kill,corrupt,cut] [--timeout SECS]
# SELF_MIGRATE_OPTS: more `checkpointd migrate` options for row 2 (e.g. --send-buffer-kib 0).
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
. "$REPO_ROOT/scripts/lib/lab.sh"
. "$REPO_ROOT/scripts/lib/lab-guest.sh"
. "$REPO_ROOT/scripts/lib/lab-measure.sh"

mem=128 fill="" rate=0 keep=0 baseline=1 faults="" timeout=1800
name=smg ip=$LAB_SUBNET.121 lip=$LAB_SUBNET.61 lport=7000 raw_mib=16
while [ $# -gt 0 ]; do
    case $1 in
        --mem) mem=${2:?}; shift 2 ;;
        --fill) fill=${2:?}; shift 2 ;;
        --rate) rate=${2:?}; shift 2 ;;
        --keep) keep=1; shift ;;
        --no-baseline) baseline=0; shift ;;
        --faults) faults=${2:?}; shift 2 ;;
        --timeout) timeout=${2:?}; shift 2 ;;
        *) die "self-migrate: unknown option $1" ;;
    esac
done
[[ $mem =~ ^[0-9]+$ ]] || die "--mem must be MiB"
fill=${fill:-$((mem / 2))}
[[ $fill =~ ^[0-9]+$ ]] && [ "$fill" -lt "$mem" ] || die "--fill must be MiB below --mem"
[[ $rate =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--rate must be MiB/s"
[[ $faults =~ ^[a-z,]*$ ]] || die "--faults takes a comma-separated list (kill,corrupt,cut)"
lname=$name-dest
img=$(bash "$REPO_ROOT/scripts/build-checkpoint-guest")
loader=$(bash "$REPO_ROOT/scripts/build-inflate-loader")/inflate-loader
[ -f "$loader" ] || die "no inflate-loader build"
# lab_push_cached names files by content: the guest learns the loader kernel's path in dom0.
lpath=/var/lib/lab/images/$(sha256sum "$loader" | cut -c1-16)-inflate-loader
extra="lab.mem=$fill lab.rate=$rate lab.port=7 ckpt.migrate=1 ckpt.loadercfg=$lip,$lpath"

started=0
if [ "$(lab_hosts)" = 0 ]; then lab_up 2; started=1; fi
[ "$(lab_hosts)" -ge 2 ] || die "self-migrate needs 2 hosts (lab '$LAB_NAME' has $(lab_hosts))"
cleanup() {
    local h
    for h in 1 2; do
        lab_exec_raw "$h" 30 "" "xl destroy $name; xl destroy $lname; pkill -f 'TCP-LISTE[N]:5000'; for p in raw relay rt; do [ -f /tmp/\$p.pid ] && kill \$(cat /tmp/\$p.pid); rm -f /tmp/\$p.pid; done; true" >/dev/null 2>&1 || true
    done
    [ "$started" = 0 ] || [ "$keep" = 1 ] || lab_down
}
trap cleanup EXIT
for h in 1 2; do
    lab_exec_raw "$h" 30 "" "xl destroy $name; xl destroy $lname; rm -f /var/log/xen/console/guest-$name.log /var/log/xen/console/guest-$lname.log; true" >/dev/null 2>&1 || true
done
# Both hosts get the guest's files at the same paths (xl migrate needs them on host 2).
lab_push_cached 2 "$img/vmlinuz" >/dev/null
lab_push_cached 2 "$img/initrd.gz" >/dev/null

# json_str TEXT: TEXT as a JSON string.
json_str() { perl -e 'my $s = shift; $s =~ s/(["\\])/\\$1/g; $s =~ s/[\x00-\x1f]/ /g; print "\"$s\""' "$1"; }
console() { lab_exec_raw "$1" 30 "" "tr -d '\r' </var/log/xen/console/guest-$2.log 2>/dev/null"; }
boot_guest() {
    lab_exec_raw 1 30 "" "rm -f /var/log/xen/console/guest-$name.log" >/dev/null 2>&1 || true
    lab_guest_create 1 "$name" --kernel "$img/vmlinuz" --ramdisk "$img/initrd.gz" --memory "$mem" \
        --ip "$ip" --extra "$extra" --wait CKPT-GUEST-READY --timeout 300
    lab_exec_raw 2 90 "" "lab-probe -t $ip -p 7 -w 60" >/dev/null || die "guest does not answer UDP echo"
}

# ---------------------------------------------------------------- row 1: stock xl migrate
xl_row=null
if [ "$baseline" = 1 ]; then
    boot_guest
    lab_exec_raw 2 30 "" "setsid socat TCP-LISTEN:5000,reuseaddr SYSTEM:'xl migrate-receive' </dev/null >/tmp/mig-recv.log 2>&1 &" \
        || die "cannot start xl migrate-receive on host 2"
    xfer="dd bs=64k 2>/tmp/mig.bytes | socat - TCP:$LAB_SUBNET.2:5000"
    log "row 1: xl migrate of $name ($mem MiB, $fill MiB filled, $rate MiB/s) host 1 -> host 2"
    m=$(lab_measure_migration 2 "$ip" 7 -- lab_exec_raw 1 "$timeout" "" "xl migrate -s '' $name \"$xfer\"")
    bytes=$(lab_exec_raw 1 30 "" "sed -n 's/^\([0-9]*\) bytes.*/\1/p' /tmp/mig.bytes" || true)
    where=$(lab_exec_raw 2 30 "" "xl domid $name >/dev/null 2>&1 && echo host2 || echo lost")
    ok=false
    [ "$where" = host2 ] && grep -q '"cmd_status":0' <<<"$m" && grep -q '"recovered":true' <<<"$m" && ok=true
    xl_row=$(printf '{"method":"xl migrate","ok":%s,"bytes_sent":%s,"measure":%s}' "$ok" "${bytes:-null}" "$m")
    echo "xl-migrate row: $xl_row" >&2
    [ "$ok" = true ] || die "xl migrate failed (guest on: $where)"
    lab_exec_raw 2 30 "" "xl destroy $name" >/dev/null
fi

# ---------------------------------------------------------------- row 2: checkpointd migrate
boot_guest
cfg=$(console 1 "$name" | sed -n 's/^LOADER-CONFIG: //p')
grep -q '^kernel = ' <<<"$cfg" || die "the guest printed no loader config: $cfg"
log "loader config from \`checkpointd loader-config\` in the guest:"; sed 's/^/    /' <<<"$cfg" >&2
tmpcfg=$(mktemp); printf '%s\n' "$cfg" >"$tmpcfg"
lab_push 2 "$tmpcfg" "/etc/xen/$lname.cfg"; rm -f "$tmpcfg"
[ "$(lab_push_cached 2 "$loader")" = "$lpath" ] || die "loader kernel path mismatch"

# start_loader [HOST]: xl create of the guest-made config (default host 2); wait until it listens.
start_loader() {
    local h=${1:-2}
    lab_exec_raw "$h" 30 "" "xl destroy $lname; rm -f /var/log/xen/console/guest-$lname.log; true" >/dev/null 2>&1 || true
    lab_exec_raw "$h" 300 "" "xl create /etc/xen/$lname.cfg" >&2 || die "xl create of the loader failed"
    lab_exec_raw "$h" 150 "" "d=\$(xl domid $lname); for i in \$(seq 600); do
        [ \"\$(xenstore-read /local/domain/\$d/data/inflate-loader 2>/dev/null)\" = listening ] && exit 0; sleep 0.2; done; exit 1" \
        || die "the loader did not reach 'listening'"
}

# request LINE: one request to the guest's port 5001 from host 1's dom0.
request() { lab_exec_raw 1 120 "" "echo '$1' | timeout 100 busybox nc $ip 5001"; }

# migrate_and_wait OPTS: trigger `checkpointd migrate` in the guest and wait for its outcome:
# the arrived copy's MIGRATE-EXIT on host 2, or the source's on host 1. Exit 0 = moved.
migrate_and_wait() {
    local opts=$1 limit=$timeout t0 s
    request "migrate $lip:$lport $opts" | grep -q started || { echo "guest refused the request" >&2; return 3; }
    t0=$(date +%s)
    while [ $(( $(date +%s) - t0 )) -lt "$limit" ]; do
        s=$(lab_exec_raw 2 60 "" "for i in \$(seq 25); do $(lab_console_lines "$lname") | grep -a '^MIGRATE-EXIT' | tail -n1 | tr -d '\r' | grep . && exit 0; sleep 0.2; done; exit 1") \
            && { [ "${s#MIGRATE-EXIT }" = 0 ]; return; }
        s=$(console 1 "$name" | grep -a '^MIGRATE-EXIT' | tail -n1) && [ -n "$s" ] && { echo "source: $s" >&2; return 2; }
    done
    echo "no outcome within $limit s" >&2; return 4
}

# Raw TCP guest -> host 2's dom0, same path as the stream (host 1 bridge, wire, host 2 bridge).
# The sink times from the first byte to EOF (dd reads exactly that byte, wc counts the rest).
lab_exec_raw 2 30 "" "rm -f /tmp/raw.t; setsid sh -c 'socat -u TCP-LISTEN:5003,reuseaddr - | { dd bs=1 count=1 of=/dev/null 2>/dev/null; t0=\$(date +%s%N); n=\$(wc -c); t1=\$(date +%s%N); echo \$((n + 1)) \$t0 \$t1 >/tmp/raw.t; }' </dev/null >/dev/null 2>&1 & echo \$! >/tmp/raw.pid" \
    || die "cannot start the raw TCP sink"
sleep 1
request "rawtcp $LAB_SUBNET.2 5003 $raw_mib" | grep -q done || die "raw TCP transfer failed"
raw=$(lab_exec_raw 2 30 "" "for i in \$(seq 50); do [ -s /tmp/raw.t ] && break; sleep 0.2; done; cat /tmp/raw.t")
read -r raw_bytes raw_t0 raw_t1 <<<"$raw"
raw_s=$(awk -v a="${raw_t0:-0}" -v b="${raw_t1:-0}" 'BEGIN{ printf "%.3f", (b - a) / 1e9 }')
raw_rate=$(awk -v n="${raw_bytes:-0}" -v s="$raw_s" 'BEGIN{ if (s > 0) printf "%.3f", n / s / 1e6; else print "null" }')
log "raw TCP guest -> host 2 dom0: ${raw_bytes:-?} bytes in ${raw_s:-?} s = $raw_rate MB/s"

# An open TCP connection into the guest (its echo service on port 9), held by host 2's dom0
# across the move: one line before, one after.
lab_exec_raw 2 30 "" "rm -f /tmp/tcp.log /tmp/tcp.go; (setsid bash -c 'exec 3<>/dev/tcp/$ip/9 || exit 1; echo before >&3; read -t 20 a <&3; echo \"1 \$a\" >/tmp/tcp.log;
    while [ ! -e /tmp/tcp.go ]; do sleep 0.2; done; echo after >&3; read -t 60 b <&3; echo \"2 \$b\" >>/tmp/tcp.log' </dev/null >/dev/null 2>&1 &)" \
    || die "cannot open the TCP connection"
sleep 3
lab_exec_raw 2 30 "" "grep -qx '1 before' /tmp/tcp.log" || die "the guest's TCP echo does not answer"

start_loader
log "row 2: checkpointd migrate of $name to the loader domain $lname ($lip) on host 2"
m2=$(LAB_MEASURE_RECOVER=120 lab_measure_migration 2 "$ip" 7 -- migrate_and_wait "--downtime-ms 300 ${SELF_MIGRATE_OPTS:-}")
src_json=$(console 1 "$name" | grep -a '^{"outcome"' | tail -n1 || true)
dst_json=$(lab_exec_raw 2 30 "" "tr -d '\r' </var/log/xen/console/guest-$lname.log 2>/dev/null" | grep -a '^{"outcome"' | tail -n1 || true)
moved=false; grep -q '"cmd_status":0' <<<"$m2" && moved=true
tcp_ok=false alive=false on_host1=true
if [ "$moved" = true ]; then
    lab_exec_raw 2 30 "" "touch /tmp/tcp.go; for i in \$(seq 100); do grep -q '^2' /tmp/tcp.log 2>/dev/null && break; sleep 0.5; done; grep -qx '2 after' /tmp/tcp.log" && tcp_ok=true
    # The source acks, prints its report, waits 2 s for its console, then powers off.
    lab_exec_raw 1 60 "" "for i in \$(seq 150); do xl domid $name >/dev/null 2>&1 || exit 0; sleep 0.2; done; exit 1" && on_host1=false
    a1=$(lab_exec_raw 2 30 "" "grep -ac CKPT-ALIVE /var/log/xen/console/guest-$lname.log" || echo 0); sleep 5
    a2=$(lab_exec_raw 2 30 "" "grep -ac CKPT-ALIVE /var/log/xen/console/guest-$lname.log" || echo 0)
    [ "$a2" -gt "$a1" ] && alive=true
fi
stream_bytes=$(sed -n 's/.*"total_bytes":\([0-9]*\).*/\1/p' <<<"$src_json")
stream_rate=$(perl -e 'my $j = shift; my ($b, $ms) = (0, 0);
    while ($j =~ /"drain":false,"pages":\d+,"zero_pages":\d+,"bytes":(\d+),"millis":(\d+)/g) { $b += $1; $ms += $2 }
    print $ms > 0 ? sprintf("%.3f", $b / $ms / 1000) : "null"' "$src_json")
reason=$(sed -n 's/.*"reason":"\([^"]*\)".*/\1/p' <<<"$src_json")
# The loader's own time for the stream's last piece and END (its checks and the digest).
loader_end_ms=$(lab_exec_raw 2 30 "" "tr -d '\r' </var/log/xen/console/guest-$lname.log 2>/dev/null" \
    | sed -n 's/.*last piece and END checked in \([0-9]*\) ms.*/\1/p' | tail -n1 || true)
# Where the downtime went, from the source's report (ms).
perl -e 'my ($j, $e) = @ARGV; my %v;
    for my $k (qw(suspend_ns tables_ms digest_ms verdict_ms commit_to_arrival_ms source_pause_ms)) { ($v{$k}) = $j =~ /"$k":(\d+)/ }
    my ($pages, $ms, $same) = $j =~ /"drain":true,"pages":(\d+),"zero_pages":\d+,"bytes":\d+,"millis":(\d+).*?"unchanged_pages":(\d+)/;
    exit 0 unless defined $pages;
    printf STDERR "row 2 downtime parts: suspend %d ms; drain %d pages (%d unchanged, not sent) %d ms; tables and digest %s ms (digest %s); END -> ready %s ms (loader: last piece and END %s ms); COMMIT -> arrival %s ms; source pause %s ms\n",
        $v{suspend_ns} / 1e6, $pages, $same, $ms, map { $_ // "?" } @v{qw(tables_ms digest_ms verdict_ms)}, $e || "?", @v{qw(commit_to_arrival_ms source_pause_ms)};' \
    "${src_json:-}" "${loader_end_ms:-}" || true
ok=false; [ "$moved" = true ] && [ "$tcp_ok" = true ] && [ "$on_host1" = false ] && [ "$alive" = true ] && ok=true
self_row=$(printf '{"method":"checkpointd migrate","ok":%s,"restore_available":%s,"reason":%s,"bytes_sent":%s,"tcp_connection_survived":%s,"workload_alive":%s,"source_gone":%s,"stream_rate_mb_s":%s,"loader_end_ms":%s,"measure":%s,"source_report":%s,"arrived_report":%s}' \
    "$ok" "$moved" "$(json_str "${reason:-}")" "${stream_bytes:-null}" "$tcp_ok" "$alive" \
    "$([ "$on_host1" = false ] && echo true || echo false)" "$stream_rate" "${loader_end_ms:-null}" "$m2" "${src_json:-null}" "${dst_json:-null}")

# When the move did not happen, the fail-safe must have worked: the source answers again,
# still on host 1.
fail_safe=null
if [ "$moved" = false ]; then
    fail_safe=false
    grep -q '"recovered":true' <<<"$m2" && lab_exec_raw 1 30 "" "xl domid $name" >/dev/null 2>&1 && fail_safe=true
fi

# ---------------------------------------------------------------- fault cases (fail-safe)
# wait_source_exit SECS: the source's MIGRATE-EXIT code on host 1's console (empty if none).
wait_source_exit() {
    lab_exec_raw 1 "$(( $1 + 30 ))" "" "for i in \$(seq $(( $1 * 5 ))); do s=\$($(lab_console_lines "$name") | grep -a '^MIGRATE-EXIT' | tail -n1 | tr -d '\r'); [ -n \"\$s\" ] && { echo \${s#MIGRATE-EXIT }; exit 0; }; sleep 0.2; done; exit 1" || true
}
fault_rows=()
fault_fail=0
run_fault() {
    local f=$1 expect code serving=false on1=false loader_says="" relay_says="" t0 d
    [ "$f" = roundtrip ] && { run_roundtrip; return; }
    start_loader
    lab_exec_raw 1 30 "" ": >/var/log/xen/console/guest-$name.log" >/dev/null
    case $f in
        kill)
            expect=11
            request "migrate $lip:$lport --link-timeout 10" | grep -q started || die "fault $f: request refused"
            sleep 8
            log "fault kill: xl destroy $lname during the rounds"
            lab_exec_raw 2 60 "" "xl destroy $lname" >&2
            loader_says="destroyed during the rounds" ;;
        corrupt)
            expect=10
            relay=$(lab_push_cached 2 "$REPO_ROOT/scripts/lib/lab-relay.pl")
            lab_exec_raw 2 30 "" "setsid perl $relay 7001 $lip $lport 300000 </dev/null >/tmp/relay.log 2>&1 & echo \$! >/tmp/relay.pid" >/dev/null
            sleep 1
            request "migrate $LAB_SUBNET.2:7001 --link-timeout 10" | grep -q started || die "fault $f: request refused" ;;
        cut)
            expect=11
            # Through a relay that passes the stream up to its CAPTURE record and then goes
            # silent both ways: the link is lost exactly at the capture, however short the
            # drain that follows (watching for the output hold from outside raced with it).
            relay=$(lab_push_cached 2 "$REPO_ROOT/scripts/lib/lab-relay.pl")
            lab_exec_raw 2 30 "" "setsid perl $relay 7001 $lip $lport capture </dev/null >/tmp/relay.log 2>&1 & echo \$! >/tmp/relay.pid" >/dev/null
            sleep 1
            request "migrate $LAB_SUBNET.2:7001 --link-timeout 10 --result-timeout 20" | grep -q started || die "fault $f: request refused"
            loader_says="link cut at the capture" ;;
        roundtrip)
            run_roundtrip; return ;;
        *) die "unknown fault '$f' (kill, corrupt, cut, roundtrip)" ;;
    esac
    code=$(wait_source_exit 300)
    lab_exec_raw 2 90 "" "lab-probe -t $ip -p 7 -w 60" >/dev/null 2>&1 && serving=true
    lab_exec_raw 1 30 "" "xl domid $name" >/dev/null 2>&1 && on1=true
    if [ "$f" = corrupt ]; then
        loader_says=$(lab_exec_raw 2 30 "" "tr -d '\r' </var/log/xen/console/guest-$lname.log | grep -aiE 'corrupt|refus|checksum' | tail -n1" || true)
    fi
    if [ "$f" = corrupt ] || [ "$f" = cut ]; then
        relay_says=$(lab_exec_raw 2 30 "" "kill \$(cat /tmp/relay.pid) 2>/dev/null; cat /tmp/relay.log" || true)
        echo "$relay_says" >&2
        [ "$f" = cut ] && loader_says="relay: $(grep -a silent <<<"$relay_says" || echo 'never saw the CAPTURE record')"
    fi
    lab_exec_raw 2 30 "" "xl destroy $lname" >/dev/null 2>&1 || true
    local ok=false
    [ "$code" = "$expect" ] && [ "$serving" = true ] && [ "$on1" = true ] && ok=true
    [ "$f" = corrupt ] && ! grep -qi corrupt <<<"$loader_says" && ok=false
    [ "$f" = cut ] && ! grep -q 'CAPTURE record)' <<<"$loader_says" && ok=false
    [ "$ok" = true ] || fault_fail=1
    log "fault $f: source exit ${code:-none} (expected $expect), serving again: $serving, still on host 1: $on1; loader: $loader_says"
    fault_rows+=("$(printf '{"fault":"%s","ok":%s,"source_exit":%s,"expected_exit":%d,"source_serving":%s,"source_on_host1":%s,"loader":%s}' \
        "$f" "$ok" "${code:-null}" "$expect" "$serving" "$on1" "$(json_str "$loader_says")")")
}
# roundtrip (needs a completed move; the guest runs on host 2 as $lname):
#  1. the arrived guest checkpoints itself again (`checkpointd save` to host 2's dom0), dom0
#     exports it (`checkpointd export --xen`) and stock `xl restore` revives it in place of the
#     running copy: nothing the loader left behind may stop stock Xen from restoring it;
#  2. A->B->A: that guest moves itself back to a loader domain on host 1.
run_roundtrip() {
    local ok=false step="" rcpd cfg t
    dom0_m=null
    eval "$(bash "$REPO_ROOT/scripts/build-checkpointd")"
    rcpd=$(lab_push_cached 2 "$CHECKPOINTD_STRIPPED")
    lab_exec_raw 2 60 "" "chmod +x $rcpd; mkdir -p /mnt/rt; mountpoint -q /mnt/rt || mount -t tmpfs -o size=480M tmpfs /mnt/rt;
        setsid socat -u TCP-LISTEN:5556,reuseaddr OPEN:/mnt/rt/ck.bin,creat,trunc </dev/null >/dev/null 2>&1 & echo \$! >/tmp/rt.pid" >/dev/null
    sleep 1
    step=save
    if request "save $LAB_SUBNET.2 5556" | grep -q started \
        && lab_exec_raw 2 900 "" "for i in \$(seq 4000); do s=\$($(lab_console_lines "$lname") | grep -a '^SAVE-EXIT' | tail -n1 | tr -d '\\r'); [ -n \"\$s\" ] && { [ \"\$s\" = 'SAVE-EXIT 0' ]; exit; }; sleep 0.2; done; exit 1"; then
        step=export
        t=$(mktemp); lab_pull 1 "/etc/xen/$name.cfg" "$t"; lab_push 2 "$t" "/etc/xen/$name.cfg"; rm -f "$t"
        if lab_exec_raw 2 600 "" "$rcpd export --xen /mnt/rt/g.img --config /etc/xen/$name.cfg /mnt/rt/ck.bin && rm /mnt/rt/ck.bin" >&2; then
            step="xl restore"
            # The dom0 path's switch-over, seen from outside with the same probe: the running
            # copy goes away, stock xl restore brings back the checkpoint taken above.
            dom0_switch() {
                lab_exec_raw 2 60 "" "xl destroy $lname; rm -f /var/log/xen/console/guest-$name.log" >/dev/null 2>&1 || true
                lab_exec_raw 2 600 "" "xl restore /mnt/rt/g.img; rc=\$?; rm -f /mnt/rt/g.img; exit \$rc" >&2
            }
            dom0_m=$(lab_measure_migration 2 "$ip" 7 -- dom0_switch)
            if grep -q '"cmd_status":0' <<<"$dom0_m" && grep -q '"recovered":true' <<<"$dom0_m" \
                && lab_guest_wait 2 "$name" 'SAVE-LOG resumed from a checkpoint' 180; then
                step="A->B->A"
                log "roundtrip: the arrived guest re-checkpointed and stock xl restore revived it; now back to host 1"
                cfg=$(request "loadercfg $lip $lpath")
                grep -q '^kernel = ' <<<"$cfg" || cfg=""
                t=$(mktemp); printf '%s\n' "$cfg" | sed "s/^name = .*/name = \"$lname\"/" >"$t"
                lab_push 1 "$t" "/etc/xen/$lname.cfg"; rm -f "$t"
                lab_push_cached 1 "$loader" >/dev/null
                start_loader 1
                if request "migrate $lip:$lport" | grep -q started \
                    && lab_exec_raw 1 "$timeout" "" "for i in \$(seq $((timeout * 5))); do $(lab_console_lines "$lname") | grep -aq '^MIGRATE-EXIT 0' && exit 0; sleep 0.2; done; exit 1" \
                    && lab_exec_raw 1 90 "" "lab-probe -t $ip -p 7 -w 60" >/dev/null \
                    && lab_exec_raw 2 60 "" "for i in \$(seq 150); do xl domid $name >/dev/null 2>&1 || exit 0; sleep 0.2; done; exit 1"; then
                    ok=true step=done
                fi
            fi
        fi
    fi
    if [ "$step" = save ]; then
        # Why the arrived guest could not checkpoint itself again: its own words.
        lab_exec_raw 2 30 "" "grep -a -E '^(SAVE-|MIGRATE-|CKPT-|\\[)' /var/log/xen/console/guest-$lname.log | tail -n 40" >&2 || true
    fi
    lab_exec_raw 2 30 "" "umount /mnt/rt" >/dev/null 2>&1 || true
    [ "$ok" = true ] || fault_fail=1
    log "roundtrip: $([ "$ok" = true ] && echo "re-checkpoint + xl restore, then A->B->A: ok" || echo "failed at: $step")"
    fault_rows+=("$(printf '{"fault":"roundtrip","ok":%s,"failed_at":"%s","dom0_path_switch_over":%s}' "$ok" "$([ "$ok" = true ] || echo "$step")" "${dom0_m:-null}")")
}
if [ -n "$faults" ]; then
    # The round trip starts from the moved guest: run it first, then the fail-safe cases.
    if [[ ,$faults, == *,roundtrip,* ]]; then
        if [ "$moved" = true ]; then run_fault roundtrip
        else fault_rows+=('{"fault":"roundtrip","ok":false,"failed_at":"no completed move to start from"}'); fault_fail=1; fi
        faults=$(sed 's/roundtrip//; s/,,/,/; s/^,//; s/,$//' <<<"$faults")
        moved_now=$(lab_exec_raw 1 30 "" "xl domid $name" >/dev/null 2>&1 && echo host1 || echo elsewhere)
    fi
    if [ -n "$faults" ] && [ "$moved" = true ] && [ "${moved_now:-}" != host1 ]; then
        # The guest lives elsewhere now: start a fresh one on host 1 for the fail-safe cases.
        for h in 1 2; do lab_exec_raw "$h" 30 "" "xl destroy $lname; xl destroy $name; true" >/dev/null 2>&1 || true; done
        boot_guest
    fi
    for f in ${faults//,/ }; do run_fault "$f"; done
fi
faults_json=$(IFS=,; echo "[${fault_rows[*]:-}]")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a != "" && b != "" && a != "null" && b != "null" && b > 0) printf "%.3f", a / b; else print "null" }'; }
jget() { sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p" <<<"$1" | head -n1; }
r_down=null r_total=null r_bytes=null
if [ "$ok" = true ] && [ "$xl_row" != null ]; then
    r_down=$(ratio "$(jget "$m2" downtime_ms)" "$(jget "$xl_row" downtime_ms)")
    r_total=$(ratio "$(jget "$m2" total_s)" "$(jget "$xl_row" total_s)")
    r_bytes=$(ratio "$stream_bytes" "$(jget "$xl_row" bytes_sent)")
fi
r_rate=$(ratio "$stream_rate" "$raw_rate")
printf '{"scenario":"self-migrate","guest_mem_mib":%d,"fill_mib":%d,"dirty_rate_mib_s":%s,"rows":[%s,%s],"ratios":{"downtime_self_over_xl":%s,"total_self_over_xl":%s,"bytes_self_over_xl":%s},"raw_tcp_guest_to_dom0_mb_s":%s,"stream_over_raw_tcp":%s,"fail_safe_resumed":%s,"faults":%s}\n' \
    "$mem" "$fill" "$rate" "$xl_row" "$self_row" "$r_down" "$r_total" "$r_bytes" "$raw_rate" "$r_rate" "$fail_safe" "$faults_json"
[ "$fault_fail" = 0 ] || log "a fault case did not end with the source resumed and serving (see \"faults\")"
if [ "$ok" != true ]; then
    [ "$moved" = false ] && log "restore not available: ${reason:-no reason given}; fail-safe resume: $fail_safe"
    die "the self-migration did not complete"
fi
[ "$fault_fail" = 0 ] || die "fault cases failed"
