#!/bin/bash
# Build the nodeimg test rootfs: a small arm64 Debian-based tree made from the pinned
# packages in test-images/packages.lock, written as a deterministic OUTDIR/rootfs.tar.zst.
#
# usage: test-images/make-rootfs.sh [OUTDIR]      (default: test-images/build)
#        test-images/make-rootfs.sh --mirror      (print the Debian mirror URI it would use)
#
# - Needs no root, mount or loop devices; uses apt-get (isolated configuration under
#   a temporary directory removed at exit, host apt state untouched), dpkg-deb, depmod
#   (kmod), tar, zstd.
# - Downloads are cached in test-images/cache/debs and reused while their SHA256 matches
#   the lock. The output is rebuilt only when the lock, this script or SOURCE_DATE_EPOCH change.
# - SOURCE_DATE_EPOCH sets every mtime in the tarball; without it the newest file date found
#   in the packages is used, so the output depends on the lock alone.
# - Packages come from the Debian mirror this machine's apt already uses (see debian_mirror
#   below; no host name is written here), suites bookworm and bookworm-backports.
# Environment: NODEIMG_TEST_CACHE overrides the cache directory; NODEIMG_DEBIAN_MIRROR the
# mirror URI.
set -euo pipefail
umask 022
export LC_ALL=C TZ=UTC

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HERE/build}
CACHE=${NODEIMG_TEST_CACHE:-$HERE/cache}
LOCK=$HERE/packages.lock
DEBS=$CACHE/debs

log() { printf 'make-rootfs: %s\n' "$*" >&2; }
die() { printf 'make-rootfs: ERROR: %s\n' "$*" >&2; exit 1; }

# debian_mirror [APT_ETC_DIR] [CODENAME]: prints the URI of the Debian archive this machine's
# apt uses, for the isolated arm64 configuration (DESIGN.md section 5: never a hard-coded host).
# $NODEIMG_DEBIAN_MIRROR wins if set. Otherwise the first "deb" source, in deb822 files
# (APT_ETC_DIR/sources.list.d/*.sources, stanza by stanza) then one-line files (sources.list,
# sources.list.d/*.list), that is enabled, lists the machine's own codename as a suite (so
# not -security, -updates or -backports alone), has component main, and is signed by the
# Debian archive keyring or names no key (third-party repositories name their own key).
# Fails with a message when there is none. APT_ETC_DIR defaults to /etc/apt, CODENAME to
# VERSION_CODENAME from /etc/os-release.
debian_mirror() {
    local etc=${1:-/etc/apt} codename=${2:-} f uri
    if [ -n "${NODEIMG_DEBIAN_MIRROR:-}" ]; then
        printf '%s\n' "$NODEIMG_DEBIAN_MIRROR"
        return 0
    fi
    if [ -z "$codename" ]; then
        codename=$(. /etc/os-release 2>/dev/null && printf '%s' "${VERSION_CODENAME:-}")
    fi
    [ -n "$codename" ] || {
        printf 'make-rootfs: ERROR: no VERSION_CODENAME in /etc/os-release: set NODEIMG_DEBIAN_MIRROR to a Debian mirror URI\n' >&2
        return 1
    }
    for f in "$etc"/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        uri=$(awk -v want="$codename" '
            function has(list, word,   n, i, a) {
                n = split(list, a, /[[:space:]]+/)
                for (i = 1; i <= n; i++) if (a[i] == word) return 1
                return 0
            }
            function flush() {
                if (!done && has(types, "deb") && tolower(enabled) != "no" && has(suites, want) &&
                    has(comps, "main") && (signed == "" || signed ~ /debian-archive-keyring/) &&
                    uris != "") {
                    split(uris, u, /[[:space:]]+/)
                    print u[1]
                    done = 1
                }
                types = suites = comps = signed = uris = enabled = ""
            }
            /^[[:space:]]*$/ { flush(); next }
            /^[[:space:]]*#/ { next }
            {
                key = tolower($1); val = $0
                sub(/^[^:]*:[[:space:]]*/, "", val); sub(/[[:space:]]+$/, "", val)
                if (key == "types:") types = val
                else if (key == "uris:") uris = val
                else if (key == "suites:") suites = val
                else if (key == "components:") comps = val
                else if (key == "signed-by:") signed = val
                else if (key == "enabled:") enabled = val
            }
            END { flush() }' "$f")
        if [ -n "$uri" ]; then
            printf '%s\n' "$uri"
            return 0
        fi
    done
    for f in "$etc"/sources.list "$etc"/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        uri=$(awk -v want="$codename" '
            $1 != "deb" { next }
            {
                opts = ""
                if ($2 ~ /^\[/) {
                    # [ options ]: up to the field that ends with "]"
                    for (i = 2; i <= NF; i++) { opts = opts " " $i; if ($i ~ /\]$/) break }
                    i++
                } else i = 2
                if ($(i + 1) != want) next
                main = 0
                for (j = i + 2; j <= NF; j++) if ($j == "main") main = 1
                if (!main) next
                if (opts ~ /signed-by=/ && opts !~ /debian-archive-keyring/) next
                print $i; exit
            }' "$f")
        if [ -n "$uri" ]; then
            printf '%s\n' "$uri"
            return 0
        fi
    done
    printf 'make-rootfs: ERROR: found no Debian "%s" source with component main in %s (sources.list.d/*.sources, sources.list, sources.list.d/*.list): set NODEIMG_DEBIAN_MIRROR to a Debian mirror URI\n' \
        "$codename" "$etc" >&2
    return 1
}

if [ "${1:-}" = --mirror ]; then
    debian_mirror
    exit
fi

for tool in apt-get apt-cache dpkg-deb depmod tar zstd sha256sum find cmp; do
    command -v "$tool" >/dev/null || die "missing host tool: $tool"
done
[ -r /usr/share/keyrings/debian-archive-keyring.gpg ] ||
    die "missing /usr/share/keyrings/debian-archive-keyring.gpg (install debian-archive-keyring)"

# ---------------------------------------------------------------- the lock
PKGS=() VERS=() SUMS=()
while read -r spec sum rest; do
    case $spec in '' | '#'*) continue ;; esac
    [ -z "${rest:-}" ] || die "packages.lock: trailing text after '$spec $sum'"
    [[ $spec == *=* ]] || die "packages.lock: '$spec' is not name=version"
    [[ ${sum:-} =~ ^[0-9a-f]{64}$ ]] || die "packages.lock: '$spec' has no sha256"
    PKGS+=("${spec%%=*}") VERS+=("${spec#*=}") SUMS+=("$sum")
done <"$LOCK"
[ ${#PKGS[@]} -gt 0 ] || die "packages.lock lists no package"

# ---------------------------------------------------------------- up to date?
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
stamp=$( { cat "$LOCK" "${BASH_SOURCE[0]}"; echo "SDE=${SOURCE_DATE_EPOCH:-}"; } | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/rootfs.stamp" ] && [ "$(cat "$OUT/rootfs.stamp")" = "$stamp" ] &&
    [ -f "$OUT/rootfs.tar.zst" ] && (cd "$OUT" && sha256sum --quiet -c rootfs.sha256 2>/dev/null); then
    log "up to date: $OUT/rootfs.tar.zst ($(cut -d' ' -f1 "$OUT/rootfs.sha256"))"
    exit 0
fi

# ---------------------------------------------------------------- fetch
# apt's configuration and lists live only while this runs: they name the
# machine's mirror, which has no place in the project's tree.
APTDIR=$(mktemp -d "${TMPDIR:-/tmp}/nodeimg-apt.XXXXXX")
WORK=
trap 'rm -rf "$APTDIR" ${WORK:+"$WORK"}' EXIT
APT_OPTS=(
    -oAPT::Architecture=arm64 -oAPT::Architectures=arm64
    -oDir::State::Lists="$APTDIR/lists" -oDir::State::status=/dev/null
    -oDir::Etc::SourceList="$APTDIR/sources.list" -oDir::Etc::SourceParts=/dev/null
    -oDir::Etc::Preferences=/dev/null -oDir::Etc::PreferencesParts=/dev/null
    -oDir::Cache="$APTDIR/cache" -oAPT::Sandbox::User=root -oAcquire::Retries=3
)
apt_ready=
apt_setup() {
    [ -z "$apt_ready" ] || return 0
    mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial"
    local mirror
    mirror=$(debian_mirror) || exit 1
    log "Debian mirror: $mirror"
    printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s\n' \
        "$mirror" 'bookworm main non-free-firmware' "$mirror" 'bookworm-backports main' >"$APTDIR/sources.list"
    log "apt-get update (isolated configuration in $APTDIR)"
    apt-get "${APT_OPTS[@]}" -q update >&2 || die "apt-get update failed"
    apt_ready=1
}

deb_path() { # name version
    printf '%s/%s_%s_arm64.deb' "$DEBS" "$1" "${2//:/%3a}"
}

mkdir -p "$DEBS"
for i in "${!PKGS[@]}"; do
    p=${PKGS[$i]} v=${VERS[$i]} s=${SUMS[$i]}
    f=$(deb_path "$p" "$v")
    if [ -f "$f" ] && [ "$(sha256sum "$f" | cut -d' ' -f1)" = "$s" ]; then
        continue
    fi
    apt_setup
    aptsum=$(apt-cache "${APT_OPTS[@]}" show "$p=$v" 2>/dev/null | awk '/^SHA256:/{print $2; exit}') ||
        true
    [ -n "$aptsum" ] || die "$p=$v is not in the archive any more (move the pin in packages.lock)"
    [ "$aptsum" = "$s" ] || die "$p=$v: archive says sha256 $aptsum, packages.lock says $s"
    log "downloading $p=$v"
    tmp=$(mktemp -d "$DEBS/.dl.XXXXXX")
    (cd "$tmp" && apt-get "${APT_OPTS[@]}" -q download "$p=$v" >&2) || { rm -rf "$tmp"; die "apt-get download $p=$v failed"; }
    got=("$tmp"/*.deb)
    [ ${#got[@]} -eq 1 ] && [ -f "${got[0]}" ] || { rm -rf "$tmp"; die "apt-get download $p=$v gave no single .deb"; }
    [ "$(sha256sum "${got[0]}" | cut -d' ' -f1)" = "$s" ] || { rm -rf "$tmp"; die "$p=$v: downloaded file does not match sha256 $s"; }
    mv "${got[0]}" "$f"
    rm -rf "$tmp"
done

# ---------------------------------------------------------------- unpack
WORK=$(mktemp -d "$OUT/.work.XXXXXX")
ROOT=$WORK/root
mkdir -p "$ROOT"
for i in "${!PKGS[@]}"; do
    dpkg-deb -x "$(deb_path "${PKGS[$i]}" "${VERS[$i]}")" "$ROOT"
done

# The date of the newest file shipped by the packages, taken before we add files of our own.
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
    [[ $SOURCE_DATE_EPOCH =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH is not a number: $SOURCE_DATE_EPOCH"
    EPOCH=$SOURCE_DATE_EPOCH
else
    # (files and links only: directories shared by several packages get the unpack time)
    EPOCH=$(find "$ROOT" ! -type d -printf '%T@\n' | cut -d. -f1 | sort -n | tail -n1)
fi

# ---------------------------------------------------------------- usr-merge (as Debian bookworm)
# Move /bin, /sbin, /lib into /usr and leave links behind. A path shipped both in /X and in
# /usr/X is accepted only if both are the same (identical file or identical link).
for d in bin sbin lib; do
    [ -e "$ROOT/$d" ] || [ -L "$ROOT/$d" ] || continue
    [ -L "$ROOT/$d" ] && continue
    mkdir -p "$ROOT/usr/$d"
    while IFS= read -r -d '' rel; do
        a=$ROOT/$d/$rel b=$ROOT/usr/$d/$rel
        [ -e "$b" ] || [ -L "$b" ] || continue
        if [ -L "$a" ] && [ -L "$b" ] && [ "$(readlink "$a")" = "$(readlink "$b")" ]; then continue; fi
        if [ -f "$a" ] && [ ! -L "$a" ] && [ -f "$b" ] && [ ! -L "$b" ] && cmp -s "$a" "$b"; then continue; fi
        die "usr-merge conflict: /$d/$rel and /usr/$d/$rel differ"
    done < <(cd "$ROOT/$d" && find . -mindepth 1 ! -type d -printf '%P\0')
    cp -a "$ROOT/$d/." "$ROOT/usr/$d/"
    rm -rf "${ROOT:?}/$d"
    ln -s "usr/$d" "$ROOT/$d"
done

# ---------------------------------------------------------------- kernel: trim to what a boot needs
KVERS=()
for m in "$ROOT"/usr/lib/modules/*/; do KVERS+=("$(basename "$m")"); done
[ ${#KVERS[@]} -eq 1 ] || die "expected one kernel in the packages, found: ${KVERS[*]:-none}"
KVER=${KVERS[0]}
MODDIR=$ROOT/usr/lib/modules/$KVER
[ -f "$ROOT/boot/vmlinuz-$KVER" ] || die "no /boot/vmlinuz-$KVER in the kernel package"

log "depmod $KVER (full module set)"
depmod -b "$ROOT" "$KVER"

# Module paths (relative to kernel/) kept, with their modules.dep closure.
KEEP_RE='^kernel/(fs/(ext4|jbd2|squashfs|fat|nls|overlayfs)/|fs/mbcache\.|lib/(crc|libcrc32c|zstd/|xz/)|crypto/crc32|arch/arm64/crypto/crc|drivers/block/virtio_blk\.|drivers/virtio/|drivers/mmc/|drivers/scsi/(sd_mod|virtio_scsi)\.|drivers/net/virtio_net\.|drivers/net/ethernet/broadcom/genet/|drivers/net/phy/(broadcom|bcm-phy-lib)\.|drivers/net/mdio/mdio-bcm-unimac\.|drivers/watchdog/bcm2835_wdt\.)'
keep=$WORK/keep
awk -F: '{print $1}' "$MODDIR/modules.dep" | grep -E "$KEEP_RE" | sort -u >"$keep.roots" || true
[ -s "$keep.roots" ] || die "no module matched the keep list"
# closure: modules.dep lines are "mod: dep1 dep2 ..."
cp "$keep.roots" "$keep"
while :; do
    awk -F': *' 'NR==FNR{k[$1]=1; next} ($1 in k){n=split($2,d," "); for(i=1;i<=n;i++) print d[i]}' \
        "$keep" "$MODDIR/modules.dep" | sort -u | comm -13 "$keep" - >"$keep.new"
    [ -s "$keep.new" ] || break
    sort -u "$keep" "$keep.new" -o "$keep"
done
(cd "$MODDIR" && find kernel -type f -printf '%p\n') | sort | comm -23 - "$keep" |
    (cd "$MODDIR" && xargs -r rm -f --)
find "$MODDIR/kernel" -depth -type d -empty -delete
# modules.order lists what the kernel build made; keep the lines of what is left.
grep -Fxf "$keep" "$MODDIR/modules.order" >"$WORK/order" || true
cp "$WORK/order" "$MODDIR/modules.order"
rm -f "$MODDIR"/modules.*.bin "$MODDIR"/modules.{dep,alias,symbols,softdep,devname,weakdep,builtin.alias.bin}
depmod -b "$ROOT" "$KVER"
log "kept $(wc -l <"$keep") modules"

# Device trees: the Raspberry Pi (broadcom) ones only. System.map is not needed to boot.
DTBS=$ROOT/usr/lib/linux-image-$KVER
[ -f "$DTBS/broadcom/bcm2711-rpi-4-b.dtb" ] || die "kernel package lacks broadcom/bcm2711-rpi-4-b.dtb"
find "$DTBS" -mindepth 1 -maxdepth 1 ! -name broadcom -exec rm -rf {} +
rm -f "$ROOT/boot/System.map-$KVER"

# Documentation and glibc's iconv modules (20 MB) are not needed by tests.
rm -rf "$ROOT"/usr/share/{doc,man,info,locale,lintian,bug,bash-completion} "$ROOT/usr/lib/aarch64-linux-gnu/gconv"

# ---------------------------------------------------------------- busybox as init and shell
[ -x "$ROOT/usr/bin/busybox" ] || die "busybox-static did not install /usr/bin/busybox"
ln -sfn ../bin/busybox "$ROOT/usr/sbin/init"
# Links for the applets of the pinned busybox (Debian 1.35.0; it has no `mountpoint`) that
# tests may call; files shipped by packages (fdisk, mke2fs, ...) are left alone.
for a in '[' '[[' ash awk base64 basename bc cat chgrp chmod chown chroot cmp cp cpio cut date dd df diff \
    dirname dmesg du echo egrep env expr false fgrep find free grep gunzip gzip head hexdump hostname id \
    ip kill killall less ln ls md5sum mkdir mkfifo mknod mktemp more mount mv nc nproc od paste pidof \
    ping printf ps pwd readlink realpath rm rmdir sed seq setsid sh sha1sum sha256sum sha512sum sleep sort \
    stat strings stty sync tac tail tar tee test timeout top touch tr true truncate tty umount uname uniq \
    unxz uptime usleep vi watch wc which whoami xargs xxd xz xzcat yes zcat cttyhack udhcpc; do
    [ -e "$ROOT/usr/bin/$a" ] || [ -e "$ROOT/usr/sbin/$a" ] || ln -s busybox "$ROOT/usr/bin/$a"
done
for a in poweroff reboot halt insmod rmmod lsmod modprobe modinfo blockdev switch_root sysctl losetup \
    ifconfig route; do
    [ -e "$ROOT/usr/bin/$a" ] || [ -e "$ROOT/usr/sbin/$a" ] || ln -s ../bin/busybox "$ROOT/usr/sbin/$a"
done

# ---------------------------------------------------------------- minimal /etc and directories
E=$ROOT/etc
mkdir -p "$E/init.d"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' >"$E/passwd"
printf 'root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n' >"$E/shadow"
chmod 0640 "$E/shadow"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$E/group"
printf 'nodeimg-test\n' >"$E/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$E/hosts"
: >"$E/fstab"
printf '/bin/sh\n' >"$E/shells"
cat >"$E/os-release" <<'OSR'
PRETTY_NAME="nodeimg test rootfs (Debian bookworm packages)"
NAME="nodeimg-test"
ID=nodeimg-test
ID_LIKE=debian
VERSION_ID="1"
OSR
cat >"$E/inittab" <<'TAB'
# busybox init of the nodeimg test rootfs.
# Tests watch the console for the "nodeimg-test-rootfs:" lines.
# k3s is deliberately not started here: nodeimg appends its own respawn line for
# /usr/lib/nodeimg/k3s-run when it installs k3s into a busybox-init rootfs.
::sysinit:/bin/busybox echo "nodeimg-test-rootfs: busybox init started"
::sysinit:/bin/busybox sh /etc/init.d/rcS
::respawn:/bin/cttyhack /bin/sh -l
::ctrlaltdel:/bin/busybox reboot
::shutdown:/bin/busybox sync
::shutdown:/bin/busybox umount -a -r
TAB
cat >"$E/init.d/rcS" <<'RCS'
#!/bin/sh
# sysinit of the nodeimg test rootfs: make sure the API filesystems are there (the nodeimg
# initramfs moves them in), report what the tests check, and power off when asked to by the
# kernel command line word "nodeimg.test.poweroff".
bb=/bin/busybox
say() { $bb echo "nodeimg-test-rootfs: $*"; }
# (Debian's busybox has no mountpoint applet)
mounted() { $bb awk -v m="$1" '$2 == m { f = 1 } END { exit !f }' /proc/mounts 2>/dev/null; }
mounted /proc || $bb mount -t proc proc /proc
mounted /sys || $bb mount -t sysfs sysfs /sys
mounted /dev || $bb mount -t devtmpfs devtmpfs /dev
mounted /run || $bb mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
$bb mkdir -p /dev/pts /dev/shm
mounted /dev/pts || $bb mount -t devpts devpts /dev/pts
h=$($bb hostname)
if [ -z "$h" ] || [ "$h" = "(none)" ]; then
    [ -s /etc/hostname ] && $bb hostname -F /etc/hostname
fi
say "userspace up"
say "hostname=$($bb hostname)"
say "machine-id=$($bb cat /etc/machine-id 2>/dev/null)"
for m in / /usr /etc /boot; do
    $bb awk -v m="$m" '$2 == m { print "nodeimg-test-rootfs: mount " $2 " " $3 " " $4 }' /proc/mounts
done
for w in $($bb cat /proc/cmdline); do
    if [ "$w" = nodeimg.test.poweroff ]; then
        say "powering off"
        $bb sync
        $bb poweroff -f
    fi
done
RCS
chmod 0755 "$E/init.d/rcS"
for d in proc sys dev run tmp var/lib var/log var/tmp root home mnt; do mkdir -p "$ROOT/$d"; done
chmod 1777 "$ROOT/tmp" "$ROOT/var/tmp"
chmod 0700 "$ROOT/root"

# ---------------------------------------------------------------- the binaries the initramfs borrows must be able to run
# (sfdisk, resize2fs, e2fsck, dropbearkey run from the system squashfs through its ld.so):
# every NEEDED library must be in the tree.
if command -v readelf >/dev/null; then
    missing=
    for bin in usr/sbin/sfdisk usr/sbin/resize2fs usr/sbin/e2fsck usr/sbin/mke2fs usr/sbin/fdisk \
        usr/sbin/dropbear usr/bin/dropbearkey; do
        [ -f "$ROOT/$bin" ] || die "missing $bin"
        for lib in $(readelf -d "$ROOT/$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
            [ -e "$ROOT/usr/lib/aarch64-linux-gnu/$lib" ] || missing="$missing $bin:$lib"
        done
    done
    [ -z "$missing" ] || die "libraries missing from the packages:$missing"
else
    log "readelf not found: skipping the NEEDED check"
fi
[ -e "$ROOT/usr/lib/ld-linux-aarch64.so.1" ] || die "no /usr/lib/ld-linux-aarch64.so.1"

# ---------------------------------------------------------------- the tarball
log "writing rootfs.tar.zst (mtime @$EPOCH)"
tmpout=$WORK/rootfs.tar.zst
tar -C "$ROOT" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" --format=gnu \
    --no-xattrs --no-acls --no-selinux -cf - . | zstd -q -T1 -15 -o "$tmpout"
mv -f "$tmpout" "$OUT/rootfs.tar.zst"
(cd "$OUT" && sha256sum rootfs.tar.zst >rootfs.sha256)
printf '%s\n' "$KVER" >"$OUT/rootfs.kver"
printf '%s\n' "$stamp" >"$OUT/rootfs.stamp"
log "done: $OUT/rootfs.tar.zst $(du -h "$OUT/rootfs.tar.zst" | cut -f1) kernel $KVER sha256 $(cut -d' ' -f1 "$OUT/rootfs.sha256")"
