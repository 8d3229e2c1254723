#!/usr/bin/env bash
# Lab stage `bootstrap` (docs/packetd.md §7): boot tokens -> packetd -> loader domains -> the
# customer's kernel on two emulated Xen hosts, beside stock `xl create` in the same run.
#   1. broker (here, on the machine running the lab): two nodes, one chain per job, tokens;
#      each node's state and packetd go into a dom0 overlay, and packetd starts at dom0 boot;
#   2. peer: `xl create`, 2 at once on each host, timed inside that dom0 until the domain runs
#      (and again after step 3, so neither side always goes first);
#   3. ours: 4 customers at once, each in the *other* host's dom0 (the lab's hosts are not
#      reachable from this machine's network): `token-tool boot` sends the token by ICMP, and
#      is timed from its first request until the domain runs. Kernel mode (stage 2's PV
#      builder present): both rows boot the lab's guest kernel with the busybox-workload
#      initramfs and "runs" means it answers ping; otherwise both rows are loader domains and
#      "runs" means the loader accepts TCP. Prints the table and the wall-clock ratio;
#   4. refusals: forged, expired, other-node tokens, then a replay of a used token: each
#      answered with its reason; a resent running token gets the same answer, no new domain;
#      a stage 2 whose SHA-1 is not the token's is refused by the loader, which powers off;
#      the node keeps serving (a further token is accepted);
#   5. paying: a top-up written to a guest's xenstore area is credited; a guest that stops
#      paying is warned, then destroyed after its grace period; the customer fetches its
#      certificate from the node by ICMP (`token-tool certificate`) and the broker refunds it
#      once (a second time refused); a guest that ends leaves its unspent balance on a
#      certificate, fetched and refunded the same way;
#   6. packetd never exited on either host; killed on purpose, it is restarted by its rc loop,
#      takes over the running jobs and goes on billing them. Prints one JSON line.
# Env: LAB_BOOTSTRAP_NAME (lab name, default ci-boot), BOOTSTRAP_KEEP=1 keeps the hosts up,
# BOOTSTRAP_KERNEL=0|1 forces loader or kernel mode (default: kernel mode when stage 2 can boot),
# BOOTSTRAP_VMLINUX=FILE an already built guest kernel ELF (default: scripts/build-guest-kernel),
# BOOTSTRAP_ZLIB=LEVEL the customers' `token-tool boot --compress-level` (default 1; 0 = plain).
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
export LAB_NAME=${LAB_BOOTSTRAP_NAME:-ci-boot}
lab="$REPO_ROOT/scripts/lab"
fail() {
    echo "bootstrap stage FAILED: $*" >&2
    for h in 1 2; do "$lab" exec -t 30 "$h" "tail -n 25 /var/log/packetd.log" >&2 2>/dev/null || true; done
    exit 1
}
x() { local h=$1; shift; "$lab" exec -t "${T:-300}" "$h" "$*"; }
need_pkgs cpio jq

# --- build: packetd, token-tool (the customer's command), the loader -------------------------
cargo build -q --release --locked -j2 -p packetd -p token-tool >&2 || fail "cargo build"
rel=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release
loader=$(bash "$REPO_ROOT/scripts/build-inflate-loader")/inflate-loader || fail "build inflate-loader"
# Kernel mode: the 4 token guests and the `xl create` peers boot the lab's guest kernel with the
# busybox-workload initramfs (its /init brings eth0 up with lab.ip=), and "running" means the
# guest answers ping. It needs stage 2's PV builder (inflate-stage2/src/boot.rs); until that is
# in, the stage boots loader domains and "running" means the loader accepts TCP.
kernel_mode=${BOOTSTRAP_KERNEL:-auto}
if [ "$kernel_mode" = auto ]; then
    kernel_mode=1
    grep -q "not yet available" "$REPO_ROOT/inflate-stage2/src/boot.rs" 2>/dev/null && kernel_mode=0
fi
guest_mem=64
stage2=$(bash "$REPO_ROOT/scripts/build-inflate-stage2")/inflate-stage2.bin || fail "build stage 2"
if [ "$kernel_mode" = 1 ]; then
    VMLINUX=${BOOTSTRAP_VMLINUX:-$(bash "$REPO_ROOT/scripts/build-guest-kernel" | sed -n 's/^VMLINUX=//p')}
    [ -f "$VMLINUX" ] || fail "no guest kernel ($VMLINUX)"
    . "$REPO_ROOT/scripts/lib/lab.sh"
    . "$REPO_ROOT/scripts/lib/lab-guest.sh"
    guest_img=$(lab_image busybox-workload) || fail "busybox-workload image"
    guest_mem=128
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/bootstrap.XXXXXX")
trap 'rm -rf "$work"' EXIT
T_="$rel/token-tool"
tt() { "$T_" --json "$@"; }
db=$work/broker.db

# --- the broker and the two nodes --------------------------------------------------------------
root=$work/overlay
mkdir -p "$root/usr/local/sbin" "$root/usr/local/bin" "$root/etc/packetd"
tt broker --db "$db" init >/dev/null
for n in 1 2; do
    tt broker --db "$db" add-node --node-id $n --secret-out "$work/n$n.secret" >/dev/null
    tt node --state "$root/etc/packetd/node-$n" init --node-id $n --secret-file "$work/n$n.secret" >/dev/null
done
# job NODE COUNT [boot-token options...]: mint, sell COUNT, write $work/jJOB.bin; prints JOB.
job() {
    local node=$1 count=$2 j; shift 2
    j=$(tt broker --db "$db" mint --node-id "$node" --length 10000 --max-topup 100 | jq -r .job.job_id)
    tt broker --db "$db" sell --job "$j" --count "$count" --payment-ref "p$j-0" --out "$work/s$j-0.json" >/dev/null
    tt wallet --wallet "$work/w.json" add "$work/s$j-0.json" >/dev/null
    tt broker --db "$db" boot-token --job "$j" --memory-mib "${JOB_MEM:-64}" --loader-file "${JOB_LOADER:-$loader}" \
        --out "$work/j$j.bin" "$@" >/dev/null
    tt wallet --wallet "$work/w.json" boot "$work/j$j.bin" >/dev/null   # its tokens are now spent
    echo "$j"
}
# The four guests: in kernel mode their tokens carry stage 2's SHA-1.
[ "$kernel_mode" = 1 ] && export JOB_LOADER=$stage2 JOB_MEM=$guest_mem
# 2000 tokens: at 64 MiB s a token (packetd/node/rc), a 128 MiB guest pays 2 a second.
A=$(job 2 2000) B=$(job 2 2000) C=$(job 1 2000) D=$(job 1 2000)
unset JOB_LOADER JOB_MEM
P=$(job 2 10)                                                   # stops paying
F=$(job 2 10) E=$(job 2 10 --expires-at 1000000000) O=$(job 1 10)  # forged, expired, other node
# flip FILE OFFSET: invert the byte's bits (writing a constant would change nothing when the
# byte already has that value: 1 run in 256).
flip() {
    local b; b=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
    printf "\\x$(printf %02x $((b ^ 0xff)))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
flip "$work/j$F.bin" 40                                           # flip the nonce
G=$(JOB_LOADER=$stage2 job 2 10)                                  # uploads a wrong stage 2
cp "$stage2" "$work/stage2-bad.bin"
flip "$work/stage2-bad.bin" 100

strip -o "$root/usr/local/sbin/packetd" "$rel/packetd"
strip -o "$root/usr/local/bin/token-tool" "$rel/token-tool"
install -m 755 "$REPO_ROOT/packetd/node/rc" "$root/etc/packetd/rc"
install -m 644 "$REPO_ROOT/xen-configs/packetd-loader.cfg.in" "$root/etc/packetd/loader.cfg.in"
install -m 644 "$loader" "$root/etc/packetd/inflate-loader"
for f in "$work"/j*.bin; do install -m 644 "$f" "$root/etc/packetd/customer-$(basename "$f")"; done
install -m 644 "$stage2" "$root/etc/packetd/stage2.bin"
install -m 644 "$work/stage2-bad.bin" "$root/etc/packetd/stage2-bad.bin"
if [ "$kernel_mode" = 1 ]; then
    strip -o "$root/etc/packetd/vmlinux" "$VMLINUX"
    install -m 644 "$guest_img/initrd.gz" "$root/etc/packetd/initrd.gz"
fi
# customer-boot NODE_IP JOB: the customer's side, run in a dom0: one `token-tool boot`: the
# boot token by ICMP, then (kernel mode) stage 2, the kernel (compressed while the node
# answers), the initramfs and a command line whose @ADDR@ token-tool replaces by the address in
# the node's answer; then wait until the guest answers ping. Prints token-tool's JSON with
# running_ms (first request -> running) and, in kernel mode, the same object as `boot`.
cat >"$root/etc/packetd/customer-boot" <<EOF
#!/bin/bash
s=\$(date +%s%N) t="--token /etc/packetd/customer-j\$2.bin"
ms() { echo \$(( (\$(date +%s%N) - s) / 1000000 )); }
if [ $kernel_mode = 0 ]; then
    out=\$(token-tool --json boot "\$1" \$t --listen-timeout 300) || { echo "\$out"; exit 1; }
    echo "\${out%\}},\"running_ms\":\$(ms)}"; exit 0
fi
out=\$(token-tool --json boot "\$1" \$t --listen-timeout 300 --compress-level ${BOOTSTRAP_ZLIB:-1} --stage2 /etc/packetd/stage2.bin --kernel /etc/packetd/vmlinux \
    --initrd /etc/packetd/initrd.gz --cmdline "console=hvc0 lab.ip=@ADDR@") || { echo "\$out"; exit 1; }
addr=\$(echo "\$out" | sed -n 's/.*"addr":"\([0-9.]*\)".*/\1/p')
for i in \$(seq 600); do
    busybox ping -c1 -W1 "\$addr" >/dev/null 2>&1 && { echo "\${out%\}},\"running_ms\":\$(ms),\"boot\":\$out}"; exit 0; }
done
echo "\$out"; exit 4
EOF
chmod 755 "$root/etc/packetd/customer-boot"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$work/overlay.cpio"

# --- boot the hosts: packetd starts from /etc/packetd/rc at dom0 boot --------------------------
"$lab" down >/dev/null 2>&1 || true
[ "${BOOTSTRAP_KEEP:-0}" = 1 ] || trap '"$lab" down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
LAB_DOM0_OVERLAY=$work/overlay.cpio "$lab" up 2 >&2 || fail "lab up"
for h in 1 2; do
    x "$h" "for i in \$(seq 100); do grep -q 'serving' /var/log/packetd.log 2>/dev/null && exit 0; sleep 0.2; done; cat /var/log/packetd-rc.log /var/log/packetd.log; exit 1" >&2 \
        || fail "packetd not serving on host $h after boot"
done
sched=$(x 1 "xl info | sed -n 's/^xen_scheduler *: *//p'")

# --- peer: stock xl create of the same loader config, 2 at once per host -----------------------
# peer HOST I: what packetd's node would run, by hand with stock `xl create`, 1 vCPU, cap 50:
# the loader configuration (loader mode), or the same kernel, initramfs and command line as
# the token guests (kernel mode); then wait until it runs as the customer's side does.
peer_cmd() {
    local h=$1 i=$2 ip=10.0.0.$((150 + 10 * $1 + $2)) kernel=/etc/packetd/inflate-loader
    local extra="ip=$ip netmask=255.255.255.0 port=7000" probe="timeout 1 bash -c 'exec 3<>/dev/tcp/$ip/7000'"
    if [ "$kernel_mode" = 1 ]; then
        kernel=/etc/packetd/vmlinux extra="console=hvc0 lab.ip=$ip" probe="busybox ping -c1 -W1 $ip"
    fi
    cat <<EOF
sed -e 's|@NAME@|peer$i|' -e 's|@KERNEL@|$kernel|' -e 's|@EXTRA@|$extra|' \
    -e 's|@MEMORY@|$guest_mem|' -e 's|@VCPUS@|1|' -e 's|@CAP@|50|' -e 's|@MAC@|00:16:3e:4c:00:$(printf %02x $((150 + 10 * h + i)))|' \
    /etc/packetd/loader.cfg.in >/run/peer$i.cfg
[ $kernel_mode = 1 ] && echo 'ramdisk = "/etc/packetd/initrd.gz"' >>/run/peer$i.cfg
# Under emulation a vif hotplug script can time out (libxl gives up on it): such a create is
# cleaned up and retried once, timed from the retry, and reported as retried.
r=0; s=\$(date +%s%N); xl create -q /run/peer$i.cfg || { r=1; xl destroy peer$i; s=\$(date +%s%N); xl create -q /run/peer$i.cfg; } || exit 3
c=\$(( (\$(date +%s%N) - s) / 1000000 ))
for k in \$(seq 1200); do
    $probe >/dev/null 2>&1 && { echo \$(( (\$(date +%s%N) - s) / 1000000 )) \$r \$c; exit 0; }
    sleep 0.2
done; exit 4
EOF
}
# peers TAG: one batch (2 per host at once); appends to peers[], sets peer_wall_TAG.
peers=()
peer_batch() {
    local t0 h i v; t0=$(date +%s%N)
    for h in 1 2; do for i in 1 2; do
        x "$h" "$(peer_cmd $h $i)" >"$work/peer$h$i" 2>&1 &
    done; done
    wait || true
    printf -v "peer_wall_$1" %d $(( ($(date +%s%N) - t0) / 1000000 ))
    for h in 1 2; do for i in 1 2; do
        # `lab exec` returns stdout before stderr: the figures are the line "MS RETRIED
        # CREATE_MS" (CREATE_MS: when `xl create` returned).
        read -r v r c < <(grep -E '^[0-9]+ [01] [0-9]+$' "$work/peer$h$i" | tail -n1)
        [[ $v =~ ^[0-9]+$ ]] || fail "peer xl create on host $h: $(cat "$work/peer$h$i")"
        peers+=("{\"batch\":\"$1\",\"node\":$h,\"running_ms\":$v,\"created_ms\":$c,\"retried\":$([ "$r" = 1 ] && echo true || echo false)}")
        x "$h" "xl destroy peer$i" || fail "destroy peer$i"
    done; done
}
peer_batch before

# --- ours: 4 customers at once, each on the other host ----------------------------------------
t0=$(date +%s%N)
boot() { x "$1" "/etc/packetd/customer-boot 10.0.0.$2 $3"; }
boot 1 2 "$A" >"$work/boot$A" 2>&1 &
boot 1 2 "$B" >"$work/boot$B" 2>&1 &
boot 2 1 "$C" >"$work/boot$C" 2>&1 &
boot 2 1 "$D" >"$work/boot$D" 2>&1 &
wait || true
ours_wall=$(( ($(date +%s%N) - t0) / 1000000 ))
ours=()
for j in "$A" "$B" "$C" "$D"; do
    r=$(tail -n1 "$work/boot$j")
    [ "$(jq -r .ok <<<"$r" 2>/dev/null)" = true ] || fail "boot of job $j: $(cat "$work/boot$j")"
    # upload: token-tool boot's own step times (docs/bootstrap.md §5), null in loader mode.
    ours+=("$(jq -c '{node: (.host | split(".")[3] | tonumber), job, domid, answer_ms, listening_ms, running_ms, tries, upload: (.boot // {} | {stage2_ms, compress_ms, compress_wait_ms, kernel_ms, acks_ms, items, wire_bytes, handover_ms, total_ms})}' <<<"$r")")
done
echo "token boots: ${ours[*]} (wall $ours_wall ms)" >&2
# The same batch of xl create again, now beside the 4 running loaders, so neither side always
# runs first.
peer_batch after
echo "xl create: ${peers[*]} (wall $peer_wall_before ms before, $peer_wall_after ms after)" >&2
domA=$(jq -r .domid <<<"$(tail -n1 "$work/boot$A")")
[ "$(x 2 "xl list | grep -c '^lm-job'")" = 2 ] || fail "host 2 does not run exactly 2 loader domains"
[ "$(x 1 "xl list | grep -c '^lm-job'")" = 2 ] || fail "host 1 does not run exactly 2 loader domains"
cap=$(x 2 "xl sched-$sched -d lm-job$A | awk 'NR==2 {print \$NF}'")

# --- refusals, and the node keeps serving ------------------------------------------------------
refused() {  # refused JOB WANT: send from host 1 to node 2, expect exit 3 and that reason
    local out rc=0
    out=$(x 1 "token-tool --json boot 10.0.0.2 --token /etc/packetd/customer-j$1.bin --timeout 20") || rc=$?
    [ "$rc" = 3 ] && [ "$(jq -r .error <<<"$out")" = "$2" ] || fail "job $1: want refusal $2, got exit $rc: $out"
    echo "$2"
}
r_forged=$(refused "$F" bad-mac)
r_expired=$(refused "$E" expired)
r_other=$(refused "$O" wrong-node)
again=$(x 1 "token-tool --json boot 10.0.0.2 --token /etc/packetd/customer-j$A.bin --listen-timeout 0") || fail "resent token: $again"
[ "$(jq -r .domid <<<"$again")" = "$domA" ] || fail "a resent running token got another domain: $again"
[ "$(x 2 "xl list | grep -c '^lm-job'")" = 2 ] || fail "a resent token created a domain"
# A stage 2 whose SHA-1 is not the token's: the loader (stage 1) refuses it and powers off;
# packetd sees the domain gone and closes the job. (The kernel is never sent; any ELF will do.)
rc=0; out=$(x 1 "token-tool --json boot 10.0.0.2 --token /etc/packetd/customer-j$G.bin --listen-timeout 300 \
    --stage2 /etc/packetd/stage2-bad.bin --kernel /usr/local/sbin/packetd") || rc=$?
[ "$rc" = 6 ] || fail "wrong stage 2: want exit 6, got $rc: $out"
r_stage2=$(jq -r .error <<<"$out")
x 2 "for i in \$(seq 150); do xl list lm-job$G >/dev/null 2>&1 || exit 0; sleep 0.2; done; exit 1" \
    || fail "the loader that refused stage 2 still runs"
x 2 "for i in \$(seq 50); do grep -q 'job $G closed' /var/log/packetd.log && exit 0; sleep 0.2; done; exit 1" \
    || fail "packetd did not close job $G"
# The answer waits for packetd's `xl create`: 28-32 s for the token boots of a loaded run, so
# the default 60 s is too short a bound for "still serving" on a busy machine.
p=$(x 1 "token-tool --json boot 10.0.0.2 --token /etc/packetd/customer-j$P.bin --timeout 180 --listen-timeout 300") || fail "node 2 stopped serving: $p"
domP=$(jq -r .domid <<<"$p")

# --- paying: a top-up of guest A, written where the guest writes it (dom0 stands in for it) ----
tt broker --db "$db" sell --job "$A" --count 50 --payment-ref "p$A-1" --out "$work/s$A-1.json" >/dev/null
tt wallet --wallet "$work/w.json" add "$work/s$A-1.json" >/dev/null
tt wallet --wallet "$work/w.json" next-topup --job "$A" --out "$work/t$A.bin" >/dev/null
hex=$(od -An -tx1 -v "$work/t$A.bin" | tr -d ' \n')
before=$(x 2 "xenstore-read /local/domain/$domA/data/lm-balance")
topup=$(x 2 "xenstore-write /local/domain/$domA/data/lm-topup $hex; for i in \$(seq 50); do r=\$(xenstore-read /local/domain/$domA/data/lm-topup-result 2>/dev/null) && [ -n \"\$r\" ] && { echo \$r; exit 0; }; sleep 0.2; done; exit 1") \
    || fail "top-up not answered"
[[ $topup == "accepted balance "* ]] || fail "top-up: $topup"
after=${topup#accepted balance }
[ "$after" -ge $((before + 50 - 5)) ] || fail "top-up credited $before -> $after, want about +50"
# Replaying the same top-up is refused.
replay=$(x 2 "xenstore-write /local/domain/$domA/data/lm-topup $hex; sleep 2; xenstore-read /local/domain/$domA/data/lm-topup-result")
[ "$replay" = "refused replay" ] || fail "replayed top-up: $replay"

# --- the guest that stops paying: 10 tokens at 1 token/s, then 10 s of grace -------------------
purge=$(T=120 x 2 "for i in \$(seq 600); do w=\$(xenstore-read /local/domain/$domP/data/lm-warning 2>/dev/null) && [ -n \"\$w\" ] && break; sleep 0.1; done
  [ -n \"\$w\" ] || exit 3; tw=\$(date +%s%N)
  for i in \$(seq 600); do xl list lm-job$P >/dev/null 2>&1 || { echo \$(( (\$(date +%s%N) - tw) / 1000000 )) \"\$w\"; exit 0; }; sleep 0.1; done; exit 4") \
    || fail "guest $P was not warned and purged"
grace_ms=${purge%% *}
# packetd's own view: when it warned and when it decided to destroy (Unix seconds in its log).
warned=$(x 2 "sed -n 's/^packetd: job $P: balance exhausted at \([0-9]*\),.*/\1/p' /var/log/packetd.log")
purged=$(x 2 "sed -n 's/^packetd: job $P closed at \([0-9]*\) (purged.*/\1/p' /var/log/packetd.log")
[ -n "$warned" ] && [ -n "$purged" ] || fail "packetd's log lacks the warning or the purge of job $P"
grace_s=$((purged - warned))
# The grace is 10 s, checked once a second; `xl destroy` then takes seconds in emulated dom0
# (68.8 s seen from outside once, with a second 2-host lab on the machine, while packetd's log
# said 10 s: the observer polls with `xl list`, itself slow there), hence the outer bound.
[ "$grace_s" -ge 10 ] && [ "$grace_s" -le 12 ] || fail "packetd purged $grace_s s after warning (grace 10 s)"
[ "$grace_ms" -ge 9000 ] && [ "$grace_ms" -le 120000 ] || fail "domain gone $grace_ms ms after the warning was seen"
# The customer (host 1's dom0) fetches the certificate from node 2 by ICMP, then hands it to
# the broker (here).
cert() {
    x 1 "token-tool --json certificate 10.0.0.2 --job $1 --out /tmp/cert$1 --timeout 60" >&2 \
        && "$lab" pull 1 "/tmp/cert$1" "$work/cert$1"
}
cert "$P" || fail "no certificate for job $P"
tt broker --db "$db" redeem "$work/cert$P" >/dev/null || fail "broker refused the certificate"
rc=0; out=$(tt broker --db "$db" redeem "$work/cert$P") || rc=$?
[ "$rc" = 3 ] && [ "$(jq -r .error <<<"$out")" = already-refunded ] || fail "second redemption: exit $rc $out"
r_replay=$(refused "$P" boot-token-reused)
# A guest that ends (here destroyed by its owner) leaves its unspent balance as a certificate.
x 2 "xl destroy lm-job$B" || fail "destroy lm-job$B"
cert "$B" || fail "no certificate for ended job $B"
refund=$(tt broker --db "$db" redeem "$work/cert$B" | jq -r .refund.unspent)
[ "$refund" -gt 0 ] && [ "$refund" -lt 2000 ] || fail "refund of ended job $B: $refund unspent tokens"
for h in 1 2; do
    [ "$(x "$h" "grep -c 'packetd exited' /var/log/packetd.log || true")" = 0 ] || fail "packetd exited on host $h"
done
# packetd killed on host 1: the rc loop restarts it, it adopts the two running jobs, and they
# keep paying (their balance goes on falling).
x 1 "pid=\$(pidof packetd) && kill -9 \$pid" || fail "kill packetd on host 1"
adopted=$(x 1 "for i in \$(seq 100); do [ \$(grep -c 'adopted' /var/log/packetd.log) = 2 ] && break; sleep 0.2; done
  d=\$(xl domid lm-job$C); b1=\$(xenstore-read /local/domain/\$d/data/lm-balance); sleep 4
  b2=\$(xenstore-read /local/domain/\$d/data/lm-balance); echo \$(grep -c adopted /var/log/packetd.log) \$b1 \$b2") \
    || fail "after the restart: $adopted"
read -r n_adopted b1 b2 <<<"$adopted"
[ "$n_adopted" = 2 ] && [ "$b2" -lt "$b1" ] || fail "after a restart: $n_adopted jobs adopted, balance $b1 -> $b2"
[ "$(x 1 "grep -c 'packetd exited' /var/log/packetd.log")" = 1 ] || fail "packetd exited more than once on host 1"

lines=$(bash "$REPO_ROOT/scripts/packetd-lines" --json | jq .packetd_lines)
# The timing table: per node and wall clock, token boots beside both `xl create` batches.
rows=$(printf '%s\n' "${ours[@]}" | jq -s -c .) prow=$(printf '%s\n' "${peers[@]}" | jq -s -c .)
ratio=$(jq -n "$ours_wall / (($peer_wall_before + $peer_wall_after) / 2) * 100 | round / 100")
per() { jq -r --argjson n "$2" "[.[] | select(.node == \$n ${3:-}) | .running_ms | floor] | join(\", \")" <<<"$1"; }
{
    echo "bootstrap timing ($( [ "$kernel_mode" = 1 ] && echo "kernel + initramfs, until the guest answers ping" || echo "loader domains, until the loader accepts TCP"), ms; 2 at once per node):"
    printf '  %-22s %-16s %-16s %s\n' "" "node 1" "node 2" "wall, 4 at once"
    printf '  %-22s %-16s %-16s %s\n' "token boot" "$(per "$rows" 1)" "$(per "$rows" 2)" "$ours_wall"
    printf '  %-22s %-16s %-16s %s\n' "xl create (before)" "$(per "$prow" 1 'and .batch == "before"')" "$(per "$prow" 2 'and .batch == "before"')" "$peer_wall_before"
    printf '  %-22s %-16s %-16s %s\n' "xl create (after)" "$(per "$prow" 1 'and .batch == "after"')" "$(per "$prow" 2 'and .batch == "after"')" "$peer_wall_after"
    echo "  ratio: token wall / mean xl create wall = $ratio (target <= 1.0);" \
        "per batch: $(jq -n "$ours_wall / $peer_wall_before * 100 | round / 100") vs before," \
        "$(jq -n "$ours_wall / $peer_wall_after * 100 | round / 100") vs after"
} >&2
printf '{"scenario":"bootstrap","kernel_mode":%d,"ratio":%s,"scheduler":"%s","cap":%s,"token_boots":[%s],"token_wall_ms":%d,"xl_create":[%s],"xl_create_wall_ms":{"before":%d,"after":%d},"refusals":{"forged":"%s","expired":"%s","other_node":"%s","replayed":"%s","wrong_stage2":"%s"},"topup":{"before":%s,"after":%s},"purge":{"grace_s":%d,"gone_after_warning_ms":%d},"ended_job_refund":%d,"restart":{"adopted":%d,"balance_before":%d,"balance_after":%d},"packetd_lines":%d,"ok":true}\n' \
    "$kernel_mode" "$ratio" "$sched" "${cap:-null}" "$(IFS=,; echo "${ours[*]}")" "$ours_wall" "$(IFS=,; echo "${peers[*]}")" "$peer_wall_before" "$peer_wall_after" \
    "$r_forged" "$r_expired" "$r_other" "$r_replay" "$r_stage2" "$before" "$after" "$grace_s" "$grace_ms" "$refund" "$n_adopted" "$b1" "$b2" "$lines"
