#!/usr/bin/env bash
# checkpointd's Xen export against real Xen (independent of the guest kernel module): a stock
# PV guest is saved with `xl save`; checkpointd reads that image (xen-inspect), turns it into
# a checkpoint stream (xen-import, with machine frames that are not the pfns and without the
# shared info page, as a real capture has it), validates it (inspect), writes it back out as
# an xl image with its own exporter (export --xen: normalisation, synthesised shared info), and
# stock `xl restore` must resume that image: the guest runs and answers UDP echo again. Also checks our libxc record layout
# against the one xl wrote.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
export LAB_NAME=${LAB_EXPORT_NAME:-ci-export}
# This script owns its lab: it goes down when the script ends, however it ends.
export LAB_OWNER_PID=${LAB_OWNER_PID:-$$}
lab="$REPO_ROOT/scripts/lab"
ex() { "$lab" exec 1 "$@"; }
# What a failure needs to be understood from a CI log alone: the host's view of the guest,
# Xen's last messages, dom0's room, the guest's console.
fail() {
    echo "xen-export stage FAILED: $*" >&2
    {
        echo "---- host 1 at the failure ----"
        "$lab" exec -t 30 1 "xl list; xl dmesg | tail -n 20; free -m; df -m /tmp" 2>&1 || true
        echo "---- guest g1's console, last 30 lines ----"
        "$lab" guest-console-log 1 g1 2>&1 | tail -n 30 || true
    } >&2
    exit 1
}

# Stripped: a tenth of the size to push over the emulated control channel.
eval "$(bash "$REPO_ROOT/scripts/build-checkpointd")"
bin=$CHECKPOINTD_STRIPPED
"$lab" build >/dev/null
"$lab" down >/dev/null 2>&1 || true
trap '"$lab" down >/dev/null 2>&1 || true' EXIT
"$lab" up 1 >&2
"$lab" guest-create 1 g1 --memory 96 --ip 10.0.0.100 --extra "lab.mem=16 lab.rate=1" \
    --wait LAB-GUEST-READY --timeout 180 >&2 || fail "guest did not come up"
ex lab-probe -t 10.0.0.100 -w 30 >/dev/null || fail "guest does not answer before the save"
"$lab" push 1 "$bin" /root/checkpointd >&2
ex "chmod +x /root/checkpointd"

t0=$(date +%s.%N)
ex "xl save g1 /tmp/xl.img" >&2 || fail "xl save"
ex "xl list g1" >/dev/null 2>&1 && fail "guest still exists after xl save"
xl_layout=$(ex "/root/checkpointd xen-inspect /tmp/xl.img") || fail "cannot read xl's own image"
echo "$xl_layout"
# As a real capture: machine frames that are not the pfns, no shared info page.
ex "/root/checkpointd xen-import --scramble-mfns --drop-shared-info /tmp/xl.img /tmp/g1.ckpt --config-out /tmp/g1.json && rm /tmp/xl.img" >&2 \
    || fail "xen-import"
ex "/root/checkpointd inspect /tmp/g1.ckpt" || fail "inspect of the imported checkpoint"
ex "/root/checkpointd export --xen /tmp/ours.img --config /tmp/g1.json /tmp/g1.ckpt && rm /tmp/g1.ckpt" \
    || fail "export --xen"
our_layout=$(ex "/root/checkpointd xen-inspect /tmp/ours.img") || fail "cannot read our image"
echo "$our_layout"
# Same libxc record order as xl's image, apart from records we do not write (TSC_INFO, the
# CPUID/MSR policies and the optional vCPU blobs, which restore treats as optional).
norm() { sed -n 's/^libxc layout: //p' | tr ' ' '\n' \
    | grep -vE '^(X86_TSC_INFO|X86_CPUID_POLICY|X86_MSR_POLICY|X86_PV_VCPU_EXTENDED|X86_PV_VCPU_XSAVE|X86_PV_VCPU_MSRS)$' \
    | tr '\n' ' '; }
[ "$(norm <<<"$xl_layout")" = "$(norm <<<"$our_layout")" ] \
    || fail "record layout differs: xl: $(norm <<<"$xl_layout") / ours: $(norm <<<"$our_layout")"

ex "xl restore /tmp/ours.img" >&2 || fail "xl restore rejected our image"
ex lab-probe -t 10.0.0.100 -w 60 >/dev/null || fail "restored guest does not answer"
ex "xl list g1" >&2 || fail "restored guest not listed"
if "$lab" guest-console-log 1 g1 | grep -E 'Oops|BUG:|Kernel panic|general protection'; then
    fail "restored guest's console shows a kernel error"
fi
t1=$(date +%s.%N)
ex "xl destroy g1" >/dev/null 2>&1 || true
echo "xen-export: xl save -> xen-import -> export --xen -> xl restore: guest answers again ($(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s)"
