# Guests of the lab: test-vms/ images and xl create through xen-configs/ templates.
# shellcheck shell=bash

# lab_image RECIPE: build (or reuse) the guest image of test-vms/RECIPE; prints its directory.
# The name is the hash of the recipe, of the lab image whose kernel and modules it uses and of
# the C toolchain that links its static programs.
lab_image() {
    local recipe=$1 rdir="$REPO_ROOT/test-vms/$1" img hash out
    [ -x "$rdir/build.sh" ] || die "no guest recipe test-vms/$recipe (needs build.sh)"
    img=$(lab_build)
    need_pkgs gcc libc6-dev
    hash=$( { recipe_hash "$rdir"; basename "$img"; dpkg-query -W gcc libc6-dev; } | sha256sum | cut -c1-16)
    out="$CACHE_ROOT/images/$recipe-$hash"
    build_image_once "$out" "$recipe-$hash" bash "$rdir/build.sh" "$img" "$out" \
        || die "guest image $recipe failed to build"
    echo "$out"
}

# Put a file into dom0 under a content-addressed name (pushed once per host boot).
lab_push_cached() {
    local h=$1 f=$2 sum dst
    sum=$(sha256sum "$f" | cut -c1-16)
    dst=/var/lib/lab/images/$sum-$(basename "$f")
    if ! lab_exec_raw "$h" 30 "" "test -f $dst" >/dev/null 2>&1; then
        lab_push "$h" "$f" "$dst"
    fi
    echo "$dst"
}

lab_guest_create() {
    [ $# -ge 2 ] || die "usage: scripts/lab guest-create HOST NAME [options] (see scripts/lab help)"
    local h=$1 name=$2; shift 2
    check_host "$h"
    [[ $name =~ ^[A-Za-z0-9_.-]{1,40}$ ]] || die "guest name '$name' must be [A-Za-z0-9_.-]{1,40}"
    local kernel="" ramdisk="" noramdisk=0 mem=256 ip="$LAB_SUBNET.100" extra="" vif=1 \
        tmpl="$REPO_ROOT/xen-configs/guest.cfg.in" wait="" timeout=180
    while [ $# -gt 0 ]; do
        case $1 in
            --kernel) kernel=${2:?}; shift 2 ;;
            --ramdisk) ramdisk=${2:?}; shift 2 ;;
            --no-ramdisk) noramdisk=1; shift ;;
            --memory) mem=${2:?}; shift 2 ;;
            --ip) ip=${2:?}; shift 2 ;;
            --extra) extra=${2?}; shift 2 ;;
            --template) tmpl=${2:?}; shift 2 ;;
            --no-vif) vif=0; shift ;;
            --wait) wait=${2:?}; shift 2 ;;
            --timeout) timeout=${2:?}; shift 2 ;;
            *) die "guest-create: unknown option $1" ;;
        esac
    done
    [[ $mem =~ ^[0-9]+$ ]] && [ "$mem" -ge 16 ] || die "--memory must be MiB >= 16"
    [[ $ip =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--ip must be an IPv4 address"
    [ -f "$tmpl" ] || die "no template $tmpl"
    if [ -z "$kernel" ]; then
        local gi; gi=$(lab_image busybox-workload)
        kernel=$gi/vmlinuz
        [ -n "$ramdisk" ] || [ "$noramdisk" = 1 ] || ramdisk=$gi/initrd.gz
    fi
    [ "$noramdisk" = 1 ] && ramdisk=""
    [ -f "$kernel" ] || die "no kernel file $kernel"
    [ -z "$ramdisk" ] || [ -f "$ramdisk" ] || die "no ramdisk file $ramdisk"
    local rk rr="" mac cfg
    rk=$(lab_push_cached "$h" "$kernel")
    [ -z "$ramdisk" ] || rr=$(lab_push_cached "$h" "$ramdisk")
    mac=$(printf '00:16:3e:4c:%02x:%02x' "$(cut -d. -f3 <<<"$ip")" "$(cut -d. -f4 <<<"$ip")")
    extra="console=hvc0 lab.ip=$ip $extra"
    cfg=$(mktemp)
    sed -e "s|@NAME@|$name|g" -e "s|@KERNEL@|$rk|g" -e "s|@RAMDISK@|$rr|g" -e "s|@MEMORY@|$mem|g" \
        -e "s|@EXTRA@|${extra//|/\\|}|g" -e "s|@MAC@|$mac|g" "$tmpl" >"$cfg"
    [ -n "$rr" ] || sed -i '/^ramdisk *= *""/d' "$cfg"
    [ "$vif" = 1 ] || sed -i '/^vif *=/d' "$cfg"
    lab_push "$h" "$cfg" "/etc/xen/$name.cfg"
    rm -f "$cfg"
    log "host $h: xl create $name ($mem MiB, $ip)"
    lab_exec_raw "$h" 300 "" "xl create /etc/xen/$name.cfg" >&2 || die "xl create $name on host $h failed"
    [ -z "$wait" ] || lab_guest_wait "$h" "$name" "$wait" "$timeout"
}

# A dom0 command that prints a guest's console log without a last line still being written:
# xenconsoled appends what it reads from the ring, so "CKPT-SAVE-EXIT 0" can be on disk as
# "CKPT-SAVE-EXIT " for a moment, and a check that reads it then sees a wrong status. Console
# lines end in "\r\n" (the tty's and the loader's), so a last line without its "\r" is dropped.
# sed, not perl: these waits poll every 0.2 s in a dom0 that is itself emulated.
# Usage inside a dom0 command: "$(lab_console_lines NAME) | grep ...".
lab_console_lines() { printf '%s /var/log/xen/console/guest-%s.log 2>/dev/null' "sed '\$ { /\\r\$/!d }'" "$1"; }

# lab_guest_wait HOST NAME REGEX [SECS]: bounded wait for REGEX in a complete line of the
# guest's console log.
lab_guest_wait() {
    local h=$1 name=$2 re=$3 t=${4:-180} q
    check_host "$h"
    printf -v q '%q' "$re"
    lab_exec_raw "$h" "$((t + 30))" "" "for i in \$(seq $((t * 5))); do $(lab_console_lines "$name") | grep -qE $q && exit 0; xl domid $name >/dev/null 2>&1 || { echo 'domain $name is gone' >&2; exit 2; }; sleep 0.2; done; echo 'timed out after $t s' >&2; exit 1" \
        || { lab_exec_raw "$h" 20 "" "tail -n 20 /var/log/xen/console/guest-$name.log" >&2 || true
             die "host $h: guest $name did not print /$re/ within $t s"; }
    log "host $h: guest $name printed /$re/"
}

# lab_stage_guest NAME: the prologue of a stage that runs one guest on host 1 of its own lab.
# Boots the lab unless it is up; removes a guest NAME left behind and its console log; on exit
# destroys the guest and takes down a lab it booted.
lab_stage_guest() {
    LAB_STAGE_GUEST=$1 LAB_STAGE_STARTED=0
    if [ "$(lab_hosts)" = 0 ]; then lab_up 1; LAB_STAGE_STARTED=1; fi
    trap lab_stage_guest_cleanup EXIT
    lab_exec_raw 1 30 "" "xl destroy $1; rm -f /var/log/xen/console/guest-$1.log" >/dev/null 2>&1 || true
}
lab_stage_guest_cleanup() {
    lab_exec_raw 1 30 "" "xl destroy $LAB_STAGE_GUEST" >/dev/null 2>&1 || true
    [ "$LAB_STAGE_STARTED" = 0 ] || lab_down
}

# lab_evtchn_arg KIND: the guest kernel argument for its event channels: `2l` (the default)
# gives xen.fifo_events=0, so the fault tracker's capture is copy-on-write; `fifo` keeps
# Linux's default FIFO event channels (the capture copies the whole final set).
lab_evtchn_arg() {
    case "${1:-2l}" in
        2l) echo "xen.fifo_events=0" ;;
        fifo) echo "" ;;
        *) die "event channels: expected 2l or fifo, got '$1'" ;;
    esac
}
