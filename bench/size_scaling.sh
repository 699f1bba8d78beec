#!/bin/sh
# How a build's wall time and allocated size grow with --size (issue 7):
# builds qemu-aarch64 from the test rootfs at --size 2G and at 64G, RUNS times
# each, alternating, with a warm system cache (so both do the same work but
# the per-node steps: boot partition, assembly, data partition, block map),
# and prints the median wall times, the allocated bytes and the ratio 64G/2G.
# Numbers, not pass/fail.
#
# usage: bench/size_scaling.sh [RUNS]   (env: NODEIMG, NODEIMG_TEST_ROOTFS, BOARD, SIZES)
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-3}
nodeimg=${NODEIMG:-$repo/target/release/nodeimg}
rootfs=${NODEIMG_TEST_ROOTFS:-$repo/test-images/build/rootfs.tar.zst}
board=${BOARD:-qemu-aarch64}
sizes=${SIZES:-"2G 64G"}
[ -x "$nodeimg" ] || { echo "size_scaling: build first (cargo build --release)" >&2; exit 1; }
[ -f "$rootfs" ] || { echo "size_scaling: no test rootfs at $rootfs" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export XDG_CACHE_HOME="$work/cache" SOURCE_DATE_EPOCH=1700000000

build() { # SIZE -> prints wall seconds
    rm -rf "$work/out-$1"
    s=$(date +%s.%N)
    "$nodeimg" build "$board" --rootfs "$rootfs" --size "$1" -o "$work/out-$1" >/dev/null 2>&1 \
        || { echo "size_scaling: build --size $1 failed" >&2; exit 1; }
    e=$(date +%s.%N)
    echo "$s $e" | awk '{printf "%.2f\n", $2 - $1}'
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

build 2G >/dev/null # warm the system cache
for i in $(seq "$runs"); do
    for size in $sizes; do
        build "$size" >>"$work/times-$size"
    done
done
printf '%-6s %10s %14s %14s\n' size "wall (s)" "allocated" "mapped (bmap)"
for size in $sizes; do
    img="$work/out-$size/$board/$board.img"
    alloc=$(du -B1 "$img" | cut -f1)
    mapped=$(sed -n 's/.*"mapped_bytes": \([0-9]*\).*/\1/p' "$work/out-$size/$board/build.json")
    printf '%-6s %10s %14s %14s\n' "$size" "$(median <"$work/times-$size")" "$alloc" "$mapped"
done
set -- $sizes
a=$(median <"$work/times-$1"); b=$(median <"$work/times-$2")
echo "$a $b" | awk -v x="$2" -v y="$1" '{printf "wall time ratio %s/%s: %.2f\n", x, y, $2 / $1}'
