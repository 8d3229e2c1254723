# Shared helpers for the project's shell scripts. Source it; do not run it.
# shellcheck shell=bash

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Build products live outside the work tree, keyed by a hash of their inputs.
CACHE_ROOT=${LAUNDROMAT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/laundromat}
mkdir -p "$CACHE_ROOT"

log()  { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die()  { printf 'error: %s\n' "$*" >&2; exit 1; }

# need_pkgs PKG...: install the Debian packages that are missing (apt-get update once).
need_pkgs() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing: ${missing[*]}"
    if [ ! -e "$CACHE_ROOT/.apt-updated" ] || [ -n "$(find "$CACHE_ROOT/.apt-updated" -mmin +360)" ]; then
        apt-get update -qq >&2 && touch "$CACHE_ROOT/.apt-updated"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# debian_mirror: the Debian archive this machine's apt already uses (never hard-coded).
debian_mirror() {
    local m
    m=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | grep -v -- '-security' | grep -oE 'https?://[^ ]+/debian/?' | head -n1)
    [ -n "$m" ] || die "no Debian mirror found in /etc/apt sources"
    echo "${m%/}"
}

# build_image_once OUT NAME CMD...: run CMD to build the guest image directory OUT unless
# OUT/vmlinuz exists. Builds of one OUT are serialised: a second caller (a stage started
# beside the first, on the same cache key) waits and reuses the first one's image.
build_image_once() {
    local out=$1 name=$2 fd rc=0; shift 2
    [ -e "$out/vmlinuz" ] && return 0
    mkdir -p "$(dirname "$out")"
    exec {fd}>"$out.lock"
    flock "$fd"
    if [ ! -e "$out/vmlinuz" ]; then
        log "building guest image $name"
        "$@" >&2 || rc=$?
    fi
    exec {fd}>&-
    return "$rc"
}

# recipe_hash FILE_OR_DIR...: a short, stable hash of the named inputs' contents.
recipe_hash() {
    local f
    for f in "$@"; do
        if [ -d "$f" ]; then
            (cd "$f" && find . -type f ! -name '*.swp' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
        else
            sha256sum "$f" | sed "s#  .*#  $(basename "$f")#"
        fi
    done | sha256sum | cut -c1-16
}

# cargo_crate_inputs DIR [CARGO-TREE-ARGS...]: the inputs of a cargo build run in DIR, for cache
# keys: Cargo.toml, src/ and build.rs of every local (path) crate cargo resolves for the
# arguments, then the lock file and the workspace manifest of DIR, one path a line. Derived
# from cargo itself, so a new path dependency is covered without editing the key.
cargo_crate_inputs() {
    local dir=$1 c; shift
    local crates
    crates=$(cd "$dir" && cargo tree --locked -e normal,build --prefix none "$@" \
        | sed -n 's#.*(\(/[^)]*\)).*#\1#p' | LC_ALL=C sort -u) || die "cargo tree failed in $dir"
    [ -n "$crates" ] || die "cargo tree found no local crates in $dir ($*)"
    for c in $crates; do
        echo "$c/Cargo.toml"; echo "$c/src"
        [ ! -e "$c/build.rs" ] || echo "$c/build.rs"
    done
    (cd "$dir" && ls -d "$PWD/Cargo.lock" "$PWD/Cargo.toml" 2>/dev/null; [ ! -d .cargo ] || echo "$PWD/.cargo")
}
