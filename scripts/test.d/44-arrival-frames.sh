#!/usr/bin/env bash
# Stage 44-arrival-frames: the end of a migration over real raw sockets (AF_PACKET, ethertype
# 0x88B5, docs/migrate.md "Arrival") between two network namespaces joined by a veth pair,
# both ends with the guest's MAC as in a real move. `checkpointd arrival-exchange` runs the
# very functions `checkpointd migrate` runs: `announce` (the arrived copy: 3 gratuitous ARPs,
# arrival frames every 200 ms until acked) and `await` (the source after COMMIT: ack 3 times).
# Checks: matching ids are acknowledged on both sides; a different id is never acknowledged
# (the source times out with exit 3); the acks come from the helper MAC, not the guest's.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
cd "$REPO_ROOT"
command -v ip >/dev/null || need_pkgs iproute2
eval "$(bash scripts/build-checkpointd)"
B=$CHECKPOINTD
a=mgarrA$$ b=mgarrB$$
ip netns add "$a" && ip netns add "$b" || { log "cannot create network namespaces here"; exit 77; }
trap 'ip netns del "$a"; ip netns del "$b"' EXIT
ip link add veth-a netns "$a" type veth peer name veth-b netns "$b"
ip -n "$a" link set veth-a address 00:16:3e:4c:00:79 up
ip -n "$b" link set veth-b address 00:16:3e:4c:00:79 up
id=00112233445566778899aabbccddeeff
other=ffeeddccbbaa99887766554433221100

# A listener that records every 0x88B5 frame reaching the destination side (the acks).
ip netns exec "$b" perl -e '
    use Socket; socket(my $s, 17, 3, 0xB588) or die "socket: $!";  # AF_PACKET SOCK_RAW ETH_P 0x88B5
    $SIG{ALRM} = sub { exit 0 }; alarm 8;
    while (recv($s, my $f, 2048, 0)) { printf "%s %s %d\n", unpack("H12", substr($f, 6, 6)), unpack("H8", substr($f, 14, 8)), unpack("V", substr($f, 26, 4)); }
' >/tmp/$a.frames 2>&1 &
sniff=$!
sleep 0.5
ip netns exec "$a" "$B" arrival-exchange await --iface veth-a --id $id --timeout 10 >/tmp/$a.await & w=$!
sleep 0.5
t0=$(date +%s%N)
ip netns exec "$b" timeout 40 "$B" arrival-exchange announce --iface veth-b --id $id --ip 10.0.0.121 \
    || die "announce was not acknowledged"
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
wait $w || die "await did not see the arrival: $(cat /tmp/$a.await)"
wait $sniff || true
acks=$(grep -c ' 4c4e4452 2$' /tmp/$a.frames || true)
helper=$(grep ' 4c4e4452 2$' /tmp/$a.frames | grep -vc '^02163e4c0079 ' || true)
[ "$acks" -ge 1 ] || die "no ack frame seen on the wire: $(cat /tmp/$a.frames)"
[ "$helper" = 0 ] || die "an ack left with a MAC other than the helper MAC 02:16:3e:4c:00:79"
log "arrival acknowledged in $ms ms; $acks ack frame(s) from the helper MAC"

# A different migration's arrival must not satisfy the source.
ip netns exec "$b" timeout 6 "$B" arrival-exchange announce --iface veth-b --id $other --ip 10.0.0.121 >/dev/null 2>&1 & o=$!
rc=0; ip netns exec "$a" "$B" arrival-exchange await --iface veth-a --id $id --timeout 3 >/dev/null || rc=$?
kill $o 2>/dev/null || true; wait $o 2>/dev/null || true
[ "$rc" = 3 ] || die "await accepted another migration's arrival (exit $rc)"
rm -f /tmp/$a.frames /tmp/$a.await
log "arrival frames: ids matched and mismatched as specified"
