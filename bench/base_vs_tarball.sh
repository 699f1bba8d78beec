#!/bin/sh
# The default build (no --rootfs: the board's Debian base composed from the
# warm package cache) against a build from the equivalent rootfs tarball (the
# same composed tree, written once as .tar.zst), issue 9's "at most twice as
# long". Both without the system cache (--no-cache), RUNS times each,
# alternating; prints the median wall time and peak RSS of each and the ratio.
# The kernel's module indexes are cached too (module-indexes/ beside the
# package cache, filled by the compose below), as after any first build;
# one more default build with that cache empty (the packages still cached)
# shows what a first build costs. Numbers, not pass/fail.
#
# usage: bench/base_vs_tarball.sh [RUNS]   (env: NODEIMG, BOARD, XDG_CACHE_HOME)
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-3}
nodeimg=${NODEIMG:-$repo/target/release/nodeimg}
board=${BOARD:-rpi4}
[ -x "$nodeimg" ] || { echo "base_vs_tarball: build first (cargo build --release)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export SOURCE_DATE_EPOCH=1700000000

# Warm the package cache (from the mirror once), then the equivalent tarball:
# the locked packages in lock order, composed, compressed.
"$nodeimg" base fetch "$board" >/dev/null
cache=${XDG_CACHE_HOME:-$HOME/.cache}/nodeimg/debs/sha256
mkdir "$work/debs"
python3 - "$repo/boards/base/$board.lock" "$cache" "$work/debs" <<'EOF'
import os, sys, tomllib
lock, cache, out = sys.argv[1:]
with open(lock, "rb") as f:
    pkgs = tomllib.load(f)["package"]
for i, p in enumerate(pkgs):
    os.symlink(os.path.join(cache, p["sha256"]), os.path.join(out, f"{i:04}_{p['name']}.deb"))
EOF
console=$(sed -n 's/^cmdline = .*console=\(tty[A-Za-z][A-Za-z0-9]*\).*/\1/p' "$repo/boards/$board.toml" | head -n1)
"$nodeimg" base compose --debs "$work/debs" --console "$console" --out "$work/rootfs.tar" 2>/dev/null
zstd -q -3 -T0 --rm "$work/rootfs.tar" -o "$work/rootfs.tar.zst"

measure() { # NAME ARGS... -> "wall rss_kib" appended to $work/NAME
    name=$1; shift
    rm -rf "$work/out"
    /usr/bin/time -f '%e %M' -o "$work/time" "$nodeimg" build "$board" --no-cache -o "$work/out" "$@" \
        >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
    cat "$work/time" >>"$work/$name"
}
i=0
while [ $i -lt "$runs" ]; do
    measure base
    measure tarball --rootfs "$work/rootfs.tar.zst"
    i=$((i + 1))
done
# Once more with the module indexes not cached: a fresh cache directory
# whose packages are those of the real one.
mkdir -p "$work/xdg/nodeimg"
ln -s "$(dirname "$cache")" "$work/xdg/nodeimg/debs"
rm -rf "$work/out"
XDG_CACHE_HOME=$work/xdg /usr/bin/time -f '%e %M' -o "$work/cold" "$nodeimg" build "$board" --no-cache \
    -o "$work/out" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
cw=$(cut -d' ' -f1 "$work/cold"); cr=$(cut -d' ' -f2 "$work/cold")
median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
bw=$(cut -d' ' -f1 "$work/base" | median); br=$(cut -d' ' -f2 "$work/base" | median)
tw=$(cut -d' ' -f1 "$work/tarball" | median); tr=$(cut -d' ' -f2 "$work/tarball" | median)
printf '%-34s %8s %12s\n' "$board, median of $runs" "wall s" "peak RSS MiB"
printf '%-34s %8s %12d\n' "default build (base, warm cache)" "$bw" $((br / 1024))
printf '%-34s %8s %12d\n' "build --rootfs rootfs.tar.zst" "$tw" $((tr / 1024))
printf '%-34s %8s %12d\n' "default build, module indexes cold" "$cw" $((cr / 1024))
echo "$bw $tw" | awk '{printf "ratio base/tarball: %.2f (target <= 2)\n", $1 / $2}'
