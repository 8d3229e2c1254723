#!/usr/bin/env bash
# Token CLI stage: the README's token walkthrough on a real 10^6-value chain, through the
# built binary and the files a user would handle, then a short benchmark run to check it
# prints both rates and their ratio (figures are not asserted: machines differ).
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
cd "$REPO_ROOT"
cargo build -q --locked -p token-tool
T=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/token-tool
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
cd "$d"

expect() { # expect PATTERN COMMAND...: run, show the output, insist on the pattern
    local pat=$1; shift
    local out
    out=$("$@" 2>&1) || die "failed: $* -> $out"
    printf '  %s\n' "$out" >&2
    grep -qE -- "$pat" <<<"$out" || die "'$*' did not print /$pat/"
}
refuse() { # refuse CODE COMMAND...: must exit 3 naming CODE
    local code=$1; shift
    local out rc=0
    out=$("$@" 2>&1) || rc=$?
    [ "$rc" -eq 3 ] && grep -q "($code)" <<<"$out" || die "expected refusal $code from '$*', got exit $rc: $out"
    printf '  refused as expected: %s\n' "$out" >&2
}

head -c 4096 /dev/urandom >loader.bin
expect 'ready' "$T" broker --db b.db init
expect 'node 1 added' "$T" broker --db b.db add-node --node-id 1 --secret-out n1.secret
expect 'ledger created' "$T" node --state node1 init --node-id 1 --secret-file n1.secret
expect '1000000 values minted.*1001 checkpoints' "$T" broker --db b.db mint --node-id 1 --length 1000000 --max-topup 100
expect 'new sale 1: 10 tokens' "$T" broker --db b.db sell --job 1 --count 10 --payment-ref pay-1 --out s1.json
expect 'kept 10' "$T" wallet --wallet w.json add s1.json
expect '10 tokens, 160 bytes' "$T" broker --db b.db boot-token --job 1 --loader-file loader.bin --extent 0:0:2048:rw --out boot.bin
expect 'first 10 tokens' "$T" wallet --wallet w.json boot boot.bin
expect 'opened with 10 tokens' "$T" node --state node1 verify boot.bin
refuse boot-token-reused "$T" node --state node1 verify boot.bin
expect 'new sale 2' "$T" broker --db b.db sell --job 1 --count 10 --payment-ref pay-2 --out s2.json
expect 'repeated sale 2' "$T" broker --db b.db sell --job 1 --count 10 --payment-ref pay-2
expect 'kept 10' "$T" wallet --wallet w.json add s2.json
expect 'top-up of 10' "$T" wallet --wallet w.json next-topup --job 1 --out t1.bin
expect 'balance 20' "$T" node --state node1 verify t1.bin
refuse replay "$T" node --state node1 verify t1.bin
expect 'balance 13' "$T" node --state node1 consume --job 1 --tokens 7
expect 'certificate for 13' "$T" node --state node1 redeem --job 1 --out cert.bin
expect 'refund 13 tokens' "$T" broker --db b.db redeem cert.bin
refuse already-refunded "$T" broker --db b.db redeem cert.bin
expect 'consistent' "$T" broker --db b.db check

expect 'node boot-token checks/s: [0-9]+.*' "$T" bench --seconds 0.2
expect 'verifications/s from the secret .*: [0-9]+' "$T" bench --seconds 0.2
expect '"compressions_per_node_check":[0-9.]+' "$T" --json bench --seconds 0.2
log "tokens: walkthrough and bench output ok"
