#!/bin/bash
# Fetch the default node base's Debian 13 "trixie" arm64 packages (no Recommends) into a
# cache directory, for the compose tests (tests/base_compose.rs) and `nodeimg base compose`.
#
# usage: test-images/fetch-trixie-debs.sh [DIR]     (default: test-images/cache/trixie-debs)
#
# - The package list below is pinned by name; apt resolves their Depends/Pre-Depends closure
#   (no Recommends/Suggests) against trixie as the mirror has it today, so versions move with
#   point releases (the lock files of `nodeimg base lock` pin versions and hashes; this script
#   is the test-side stand-in until they exist).
# - apt runs with an isolated configuration in a temporary directory removed at exit (host apt
#   state untouched); packages come from the Debian mirror this machine's apt uses
#   (`make-rootfs.sh --mirror`, NODEIMG_DEBIAN_MIRROR overrides), checked by apt against
#   /usr/share/keyrings/debian-archive-keyring.gpg.
# - DIR ends up holding exactly the closure: stale .debs from an earlier run are removed,
#   and DIR/packages.txt lists name=version, one a line, sorted.
set -euo pipefail
umask 022
export LC_ALL=C TZ=UTC

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HERE/cache/trixie-debs}

log() { printf 'fetch-trixie-debs: %s\n' "$*" >&2; }
die() { printf 'fetch-trixie-debs: ERROR: %s\n' "$*" >&2; exit 1; }

# The default node base (issue 9), besides Debian's Essential set which is added below.
BASE=(
    systemd systemd-sysv udev systemd-resolved systemd-timesyncd dbus
    kmod iproute2 ca-certificates e2fsprogs util-linux fdisk
    openssh-server busybox-static linux-image-arm64
    login passwd libpam-modules libpam-runtime
)

for tool in apt-get apt-cache sha256sum; do
    command -v "$tool" >/dev/null || die "missing host tool: $tool"
done
[ -r /usr/share/keyrings/debian-archive-keyring.gpg ] ||
    die "missing /usr/share/keyrings/debian-archive-keyring.gpg (install debian-archive-keyring)"

MIRROR=$("$HERE/make-rootfs.sh" --mirror) || exit 1
APTDIR=$(mktemp -d "${TMPDIR:-/tmp}/nodeimg-apt.XXXXXX")
trap 'rm -rf "$APTDIR"' EXIT
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial"
printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s trixie main\n' \
    "$MIRROR" >"$APTDIR/sources.list"
O=(
    -oAPT::Architecture=arm64 -oAPT::Architectures=arm64
    -oDir::State::Lists="$APTDIR/lists" -oDir::State::status=/dev/null
    -oDir::Etc::SourceList="$APTDIR/sources.list" -oDir::Etc::SourceParts=/dev/null
    -oDir::Etc::Preferences=/dev/null -oDir::Etc::PreferencesParts=/dev/null
    -oDir::Cache="$APTDIR/cache" -oAPT::Sandbox::User=root -oAcquire::Retries=3
)
log "Debian mirror: $MIRROR (trixie, isolated apt configuration in $APTDIR)"
apt-get "${O[@]}" -q update >&2 || die "apt-get update failed"

mapfile -t ESSENTIAL < <(apt-cache "${O[@]}" dumpavail |
    awk '/^Package:/{p=$2} /^Essential: yes/{print p}' | sort -u)
[ ${#ESSENTIAL[@]} -gt 10 ] || die "found no Essential packages in trixie's index"

# The closure as apt would install it on an empty system (first alternatives, no
# Recommends): a simulated install against an empty dpkg status.
apt-get "${O[@]}" -q -s -oDebug::NoLocking=1 --no-install-recommends install \
    "${ESSENTIAL[@]}" "${BASE[@]}" >"$APTDIR/sim" || die "apt cannot resolve the base"
awk '/^Inst /{v=$3; gsub(/[()]/, "", v); print $2 "=" v}' "$APTDIR/sim" | sort -u >"$APTDIR/want"
log "$(wc -l <"$APTDIR/want") packages (${#ESSENTIAL[@]} Essential)"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# Download what is missing (apt names files NAME_VERSION_ARCH.deb with ':' as %3a) and
# drops anything no longer in the closure.
need=()
declare -A keep
while IFS='=' read -r p v; do
    for a in arm64 all; do
        f="${p}_${v//:/%3a}_$a.deb"
        [ -f "$OUT/$f" ] && { keep[$f]=1; continue 2; }
    done
    need+=("$p=$v")
done <"$APTDIR/want"
if [ ${#need[@]} -gt 0 ]; then
    log "downloading ${#need[@]} packages"
    tmp=$(mktemp -d "$OUT/.dl.XXXXXX")
    (cd "$tmp" && apt-get "${O[@]}" -q download "${need[@]}" >&2) || { rm -rf "$tmp"; die "apt-get download failed"; }
    for f in "$tmp"/*.deb; do
        keep[$(basename "$f")]=1
        mv "$f" "$OUT/"
    done
    rm -rf "$tmp"
fi
for f in "$OUT"/*.deb; do
    [ -n "${keep[$(basename "$f")]:-}" ] || { log "removing stale $(basename "$f")"; rm -f "$f"; }
done
cp "$APTDIR/want" "$OUT/packages.txt"
log "$(wc -l <"$OUT/packages.txt") packages in $OUT"
