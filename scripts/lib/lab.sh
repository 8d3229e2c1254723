# Functions of the Xen lab (scripts/lab). Source after common.sh.
# shellcheck shell=bash

LAB_NAME=${LAB_NAME:-lab}
[[ $LAB_NAME =~ ^[A-Za-z0-9_-]{1,20}$ ]] || die "LAB_NAME must be 1-20 characters of [A-Za-z0-9_-]"
LAB_RUN=$CACHE_ROOT/run/$LAB_NAME
LAB_HOST_MEM=${LAB_HOST_MEM:-2048}       # MiB of emulated RAM per host
LAB_DOM0_MEM=${LAB_DOM0_MEM:-1024}       # MiB for dom0, the rest is for guests
LAB_BOOT_TIMEOUT=${LAB_BOOT_TIMEOUT:-300}
LAB_SUBNET=10.0.0                         # hosts are .1 .. .N, guests .100 and up
LAB_CHANNELS=3                            # control channels per host (concurrent execs)

lab_image_dir() { echo "$CACHE_ROOT/lab/dom0-$(recipe_hash "$REPO_ROOT/scripts/lab-dom0")"; }

# lab_build: build (or reuse) the host image; prints its directory.
lab_build() {
    local dir; dir=$(lab_image_dir)
    if [ -e "$dir/dom0.cpio" ] && [ -e "$dir/xen" ] && [ -e "$dir/vmlinuz" ]; then
        log "lab image up to date: $dir"
    else
        [ "$(id -u)" = 0 ] || die "building the lab image needs root (debootstrap, chroot)"
        mkdir -p "$(dirname "$dir")"
        exec 8>"$(dirname "$dir")/.build.lock"
        flock 8
        if [ ! -e "$dir/dom0.cpio" ]; then
            bash "$REPO_ROOT/scripts/lab-dom0/build.sh" "$dir" || die "lab image build failed"
        fi
        exec 8>&-
    fi
    echo "$dir"
}

# lab_hosts: hosts of the running lab; 0 when none is recorded or every recorded QEMU is gone
# (the hosts file of a run that was killed before it could take its lab down).
lab_hosts() {
    local n i
    n=$(cat "$LAB_RUN/hosts" 2>/dev/null) || { echo 0; return; }
    for i in $(seq "$n"); do
        qemu_alive "$i" && { echo "$n"; return; }
    done
    echo 0
}
host_dir() { echo "$LAB_RUN/host$1"; }
check_host() {
    [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$(lab_hosts)" ] \
        || die "no host '$1' in lab '$LAB_NAME' (hosts up: $(lab_hosts); run 'scripts/lab up')"
}
qemu_alive() {
    local pid; pid=$(cat "$(host_dir "$1")/qemu.pid" 2>/dev/null) || return 1
    kill -0 "$pid" 2>/dev/null && grep -q qemu "/proc/$pid/cmdline" 2>/dev/null
}
# proc_start PID: the process's start time (clock ticks since boot), empty if it is gone.
# With the pid it names one process even after the pid is reused.
proc_start() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }

# lab_qemu_pids: every QEMU of this lab (name lab-$LAB_NAME-hostN, sockets under $LAB_RUN),
# whether or not a pid file records it. Never matches another lab's QEMU.
lab_qemu_pids() {
    perl -e '
        my ($name, $run) = @ARGV;
        opendir(my $d, "/proc") or exit 0;
        for my $p (grep { /^\d+$/ } readdir $d) {
            open(my $f, "<", "/proc/$p/cmdline") or next;
            my $c = do { local $/; <$f> };
            next unless defined $c;
            my @a = split /\0/, $c;
            my $named = grep { $a[$_] eq "-name" && ($a[$_ + 1] // "") =~ /^lab-\Q$name\E-host\d+$/ } 0 .. $#a;
            print "$p\n" if $named && grep { index($_, "$run/host") >= 0 } @a;
        }' "$LAB_NAME" "$LAB_RUN"
}

# kill_pids PID...: TERM, up to 5 s to exit, then KILL.
kill_pids() {
    local pid alive
    [ $# -gt 0 ] || return 0
    kill "$@" 2>/dev/null || true
    for _ in $(seq 50); do
        alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && return 0
        sleep 0.1
    done
    kill -9 "$@" 2>/dev/null || true
}

free_port() { perl -MSocket -e 'socket(S,PF_INET,SOCK_STREAM,0);bind(S,sockaddr_in(0,inet_aton("127.0.0.1")));print((sockaddr_in(getsockname(S)))[0])'; }

# lab_exec_raw HOST TIMEOUT STDIN_FILE CMD: one request on a control channel of HOST.
# Each host has LAB_CHANNELS channels, one request at a time each: take the first free one
# (flock), or wait for channel 0 when all are busy.
lab_exec_raw() {
    local h=$1 t=$2 in=$3 cmd=$4 d i fd rc; d=$(host_dir "$h")
    if [ ! -S "$d/ctl0.sock" ] && [ -S "$d/ctl.sock" ]; then
        # A host booted by an older scripts/lab (one channel): still usable.
        flock -w "$((t + 300))" "$d/ctl.lock" perl "$REPO_ROOT/scripts/lib/lab-client.pl" "$d/ctl.sock" "$t" "$in" "$cmd"
        return
    fi
    [ -S "$d/ctl0.sock" ] || die "host $h has no control socket ($d/ctl0.sock): is it up?"
    for ((i = 0; i < LAB_CHANNELS; i++)); do
        [ -S "$d/ctl$i.sock" ] || break
        exec {fd}>>"$d/ctl$i.lock"
        if flock -n "$fd"; then
            rc=0
            perl "$REPO_ROOT/scripts/lib/lab-client.pl" "$d/ctl$i.sock" "$t" "$in" "$cmd" || rc=$?
            exec {fd}>&-
            return "$rc"
        fi
        exec {fd}>&-
    done
    flock -w "$((t + 300))" "$d/ctl0.lock" perl "$REPO_ROOT/scripts/lib/lab-client.pl" "$d/ctl0.sock" "$t" "$in" "$cmd"
}

# lab_exec HOST CMD...: like ssh, the words are joined into one shell command for bash -c.
lab_exec() {
    local h=$1; shift
    lab_exec_raw "$h" "${LAB_EXEC_TIMEOUT:-600}" "" "$*"
}

lab_push() {
    local h=$1 src=$2 dst=$3 sum got q
    [ -f "$src" ] || die "push: no such file: $src"
    sum=$(sha256sum "$src" | cut -d' ' -f1)
    printf -v q '%q' "$dst"
    got=$(lab_exec_raw "$h" 600 "$src" "mkdir -p \"\$(dirname $q)\" && cat > $q.lab-part && mv $q.lab-part $q && sha256sum $q") \
        || die "push $src to host $h:$dst failed"
    [ "${got%% *}" = "$sum" ] || die "push $src to host $h:$dst: checksum mismatch ($sum vs ${got%% *})"
}

lab_pull() {
    local h=$1 src=$2 dst=$3 sum q
    printf -v q '%q' "$src"
    sum=$(lab_exec_raw "$h" 60 "" "sha256sum $q") || die "pull: cannot read host $h:$src"
    lab_exec_raw "$h" 600 "" "cat $q" >"$dst.lab-part" || die "pull host $h:$src failed"
    [ "$(sha256sum "$dst.lab-part" | cut -d' ' -f1)" = "${sum%% *}" ] \
        || { rm -f "$dst.lab-part"; die "pull host $h:$src: checksum mismatch"; }
    mv "$dst.lab-part" "$dst"
}

# lab_start_host N IMAGE_DIR NETDEV_ARGS: start one QEMU (software emulation, 1 vCPU).
lab_start_host() {
    local n=$1 img=$2 netdev=$3 d; d=$(host_dir "$n")
    rm -rf "$d"; mkdir -p "$d"
    [ ${#d} -lt 90 ] || die "run directory path too long for unix sockets: $d (set LAUNDROMAT_CACHE shorter)"
    local mac; mac=$(printf '52:54:00:4c:41:%02x' "$n")
    local ctl=() i
    for ((i = 0; i < LAB_CHANNELS; i++)); do
        ctl+=(-chardev "socket,id=ctl$i,path=$d/ctl$i.sock,server=on,wait=off"
              -device "virtserialport,chardev=ctl$i,name=lab.ctl$i")
    done
    local xen_args="console=com1 com1=115200,8n1 dom0_mem=${LAB_DOM0_MEM}M,max:${LAB_DOM0_MEM}M dom0_max_vcpus=1 loglvl=all guest_loglvl=all noreboot"
    local dom0_args="console=hvc0 earlyprintk=xen lab.host=$n lab.ip=$LAB_SUBNET.$n/24"
    local root=$img/dom0.cpio
    if [ -n "${LAB_DOM0_OVERLAY:-}" ]; then
        # A node's own software (packetd, docs/packetd.md) as a second newc archive after the
        # image's: the kernel unpacks both in order, so the overlay's files win.
        [ -f "$LAB_DOM0_OVERLAY" ] || die "LAB_DOM0_OVERLAY: no such file: $LAB_DOM0_OVERLAY"
        root=$d/dom0.cpio
        cat "$img/dom0.cpio" "$LAB_DOM0_OVERLAY" >"$root"
    fi
    # -cpu max,-smap,-xsave is required (docs/lab.md): without -smap dom0 faults at once,
    # without -xsave register state is corrupted across vCPU switches.
    setsid qemu-system-x86_64 -machine pc -cpu max,-smap,-xsave -m "$LAB_HOST_MEM" -smp 1 \
        -display none -no-reboot -name "lab-$LAB_NAME-host$n" \
        -kernel "$img/xen" -append "$xen_args" -initrd "$img/vmlinuz $dom0_args,$root" \
        -chardev "socket,id=ser0,path=$d/console.sock,server=on,wait=off,logfile=$d/serial.log" \
        -serial chardev:ser0 \
        -device virtio-serial-pci "${ctl[@]}" \
        -netdev "$netdev" -device "virtio-net-pci,netdev=n0,mac=$mac" \
        -monitor "unix:$d/monitor.sock,server=on,wait=off" \
        </dev/null >"$d/qemu.log" 2>&1 &
    echo $! >"$d/qemu.pid"
    date +%s.%N >"$d/started"
}

# lab_wait_host N: bounded wait until the dom0 agent answers.
lab_wait_host() {
    local n=$1 d t0; d=$(host_dir "$n"); t0=$(date +%s)
    while :; do
        # Right after `qemu ... &` the pid may still be the forked shell, not yet QEMU: give
        # the exec a moment before calling it dead (that race once failed a CI run).
        qemu_alive "$n" || { sleep 1; qemu_alive "$n"; } \
            || { tail -n 30 "$d/serial.log" "$d/qemu.log" >&2 2>/dev/null; die "host $n: QEMU exited during boot (logs in $d)"; }
        if grep -q LAB-DOM0-READY "$d/serial.log" 2>/dev/null \
            && [ "$(lab_exec_raw "$n" 20 "" "echo ok" 2>/dev/null)" = ok ]; then
            return 0
        fi
        if [ $(( $(date +%s) - t0 )) -ge "$LAB_BOOT_TIMEOUT" ]; then
            tail -n 30 "$d/serial.log" >&2 2>/dev/null
            die "host $n not ready after $LAB_BOOT_TIMEOUT s (serial log: $d/serial.log)"
        fi
        sleep 1
    done
}

# Who owns a lab: QEMU runs in its own session (a Ctrl-C or a killed stage must not take the
# emulated hosts down half-way through a write), so a detached reaper (scripts/lab _reaper)
# watches the owner process and takes the lab down when it is gone, however it ended (exit,
# signal, SIGKILL, lost trap). The owner is LAB_OWNER_PID, else the shell calling lab_up;
# `scripts/lab up` without LAB_OWNER_PID owns the lab only while it boots (a developer's lab
# then stays up until `scripts/lab down`). scripts/test makes each stage the owner of its labs.

# lab_reap_leftovers: take down what an earlier run of this LAB_NAME left (refuses while that
# run's owner is alive).
lab_reap_leftovers() {
    local owner start pids
    owner="" start=""
    [ ! -f "$LAB_RUN/owner" ] || read -r owner start <"$LAB_RUN/owner" || true
    if [ -n "$owner" ] && [ "$owner" != "${LAB_OWNER_PID:-$$}" ] && [ -n "$start" ] \
        && [ "$(proc_start "$owner")" = "$start" ]; then
        die "lab '$LAB_NAME' is in use by pid $owner ($(tr '\0' ' ' <"/proc/$owner/cmdline" 2>/dev/null | cut -c1-80)); use another LAB_NAME"
    fi
    pids=$(lab_qemu_pids | xargs)
    if [ -n "$pids" ] || [ -e "$LAB_RUN/hosts" ]; then
        log "lab '$LAB_NAME': reaping hosts left over from an earlier run (QEMU pids: ${pids:-none})"
        lab_down
    fi
}

# lab_reaper OWNER START GENERATION: runs detached; takes the lab down when the owner process
# is gone, exits when the lab it watches is down or replaced.
lab_reaper() {
    local owner=$1 start=$2 gen=$3
    export LAB_REAPER=1
    while [ "$(cat "$LAB_RUN/generation" 2>/dev/null)" = "$gen" ]; do
        if [ "$(proc_start "$owner")" != "$start" ]; then
            log "owner pid $owner of lab '$LAB_NAME' is gone: taking the lab down"
            lab_down
            return 0
        fi
        sleep 1
    done
}

lab_up() {
    local n=${1:-2} img i owner start gen
    [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 8 ] || die "up: N must be 1..8"
    lab_reap_leftovers
    need_pkgs qemu-system-x86 socat
    img=$(lab_build)
    mkdir -p "$LAB_RUN"
    owner=${LAB_OWNER_PID:-$$}
    start=$(proc_start "$owner")
    [ -n "$start" ] || die "lab owner pid $owner does not exist"
    gen="$(date +%s%N)-$$"
    echo "$gen" >"$LAB_RUN/generation"
    echo "$owner $start" >"$LAB_RUN/owner"
    setsid bash "$REPO_ROOT/scripts/lab" _reaper "$owner" "$start" "$gen" \
        </dev/null >>"$LAB_RUN/reaper.log" 2>&1 &
    echo $! >"$LAB_RUN/reaper.pid"
    echo "$img" >"$LAB_RUN/image"
    echo "$n" >"$LAB_RUN/hosts"
    local t0; t0=$(date +%s.%N)
    if [ "$n" -le 2 ]; then
        # Two hosts: one point-to-point TCP socket on loopback, no extra process.
        local port; port=$(free_port)
        lab_start_host 1 "$img" "socket,id=n0,listen=127.0.0.1:$port"
        if [ "$n" = 2 ]; then
            for i in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
            lab_start_host 2 "$img" "socket,id=n0,connect=127.0.0.1:$port"
        fi
    else
        local hub ports=() p
        hub=$(free_port)
        for i in $(seq "$n"); do ports+=("$(free_port)"); done
        setsid perl "$REPO_ROOT/scripts/lib/lab-hub.pl" "$hub" "${ports[@]}" </dev/null >"$LAB_RUN/hub.log" 2>&1 &
        echo $! >"$LAB_RUN/hub.pid"
        for i in $(seq "$n"); do
            p=${ports[$((i - 1))]}
            lab_start_host "$i" "$img" "socket,id=n0,udp=127.0.0.1:$hub,localaddr=127.0.0.1:$p"
        done
    fi
    log "booting $n host(s) (lab '$LAB_NAME', run dir $LAB_RUN)"
    for i in $(seq "$n"); do
        # A host that fails to boot must not leave the others running (they burn a core each).
        # lab_wait_host dies on failure: run it in a subshell so we can clean up first.
        if ! (lab_wait_host "$i"); then
            log "boot failed: taking lab $LAB_NAME down"
            lab_down
            die "lab '$LAB_NAME' did not come up"
        fi
        log "host $i ready: dom0 $LAB_SUBNET.$i ($(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s after start)"
    done
    if [ "${LAB_KEEP_AFTER_BOOT:-0}" = 1 ]; then
        # Nobody owns it any more: a new generation stops the reaper.
        echo "$gen-kept" >"$LAB_RUN/generation"
        rm -f "$LAB_RUN/owner"
    fi
}

lab_down() {
    local n pid pids
    n=$(cat "$LAB_RUN/hosts" 2>/dev/null || echo 0)
    # Every QEMU of this lab, recorded or not (a run killed between start and pid file).
    pids=$(lab_qemu_pids | xargs)
    # shellcheck disable=SC2086
    kill_pids $pids
    if [ -f "$LAB_RUN/hub.pid" ]; then
        pid=$(cat "$LAB_RUN/hub.pid")
        grep -q lab-hub "/proc/$pid/cmdline" 2>/dev/null && kill "$pid" 2>/dev/null
        rm -f "$LAB_RUN/hub.pid"
    fi
    # The reaper sees the generation go and exits.
    rm -f "$LAB_RUN/hosts" "$LAB_RUN/generation" "$LAB_RUN/owner"
    [ "$n" = 0 ] && [ -z "$pids" ] || log "lab '$LAB_NAME' down ($n host(s)); logs kept in $LAB_RUN"
}

lab_status() {
    local n i d
    n=$(lab_hosts)
    echo "lab '$LAB_NAME': $n host(s) up, run dir $LAB_RUN"
    [ "$n" = 0 ] && return 0
    echo "image: $(cat "$LAB_RUN/image" 2>/dev/null)"
    for i in $(seq "$n"); do
        d=$(host_dir "$i")
        if qemu_alive "$i"; then
            local doms
            doms=$(lab_exec_raw "$i" 20 "" "xl list | tail -n +2 | awk '{print \$1\"(\"\$3\"M)\"}' | xargs" 2>&1) || doms="(agent not answering)"
            echo "host$i: up, pid $(cat "$d/qemu.pid"), dom0 $LAB_SUBNET.$i, domains: $doms"
        else
            echo "host$i: QEMU not running (see $d/serial.log)"
        fi
    done
}
