#!/bin/bash
# Hand-made end-to-end check of overlays/initramfs/init, independent of the Rust builder:
# builds an initramfs and a small disk image with host tools (cpio, mksquashfs, mkfs.ext4,
# mkfs.vfat, mtools, sfdisk on image files: no root, mount or loop devices), then boots them in
# qemu-system-aarch64 -M virt twice and checks the console:
#   boot 1: the data partition grows to the enlarged disk, identity is created, busybox init
#           of the test rootfs runs; boot 2: same identity, no growth.
# Also boots once with a wrong nodeimg.disk and checks the rescue shell.
#
# usage: test-images/manual-boot.sh [mbr|gpt] [ROOTFS_TAR]   (default: mbr, test-images/build/rootfs.tar.zst)
# Leaves its files and console logs in test-images/build/manual-boot-<table>/.
set -euo pipefail
umask 022
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TABLE=${1:-mbr}
ROOTFS=${2:-$HERE/build/rootfs.tar.zst}
INIT=$HERE/../overlays/initramfs/init
W=$HERE/build/manual-boot-$TABLE
QEMU=${QEMU:-qemu-system-aarch64}
MODULES="squashfs ext4 crc32c_generic vfat nls_cp437 nls_ascii virtio_blk virtio_pci"

log() { printf 'manual-boot: %s\n' "$*" >&2; }
die() { printf 'manual-boot: FAILED: %s\n' "$*" >&2; exit 1; }
case $TABLE in mbr | gpt) ;; *) die "table must be mbr or gpt" ;; esac
[ -f "$ROOTFS" ] || die "no $ROOTFS (run test-images/make-rootfs.sh)"

rm -rf "$W"
mkdir -p "$W/rootfs"
tar -C "$W/rootfs" -xf "$ROOTFS"
R=$W/rootfs
KVER=$(basename "$(echo "$R"/usr/lib/modules/*)")
M=$R/usr/lib/modules/$KVER

# ---------------------------------------------------------------- initramfs
I=$W/initramfs
mkdir -p "$I"/{bin,dev,etc/nodeimg,proc,sys,run,sysroot,tmp,mnt}
cp "$INIT" "$I/init"
chmod 0755 "$I/init"
cp "$R/usr/bin/busybox" "$I/bin/busybox"
# modules in load order, dependencies first (modules.dep closure, depth first)
declare -A seen=()
order=()
visit() {
    local rel=$1 dep
    [ -z "${seen[$rel]:-}" ] || return 0
    seen[$rel]=1
    for dep in $(awk -F': *' -v m="$rel" '$1 == m { print $2 }' "$M/modules.dep"); do visit "$dep"; done
    order+=("$rel")
}
for name in $MODULES; do
    rel=$(awk -F: '{ print $1 }' "$M/modules.dep" | awk -v n="$name" '{
        b = $0; sub(/.*\//, "", b); sub(/\.ko.*/, "", b); gsub(/-/, "_", b); if (b == n) print }')
    if [ -z "$rel" ]; then
        grep -q "/${name//_/[-_]}\.ko" "$M/modules.builtin" || die "module $name: neither a module nor built in"
        continue
    fi
    visit "$rel"
done
: >"$I/etc/nodeimg/modules"
for rel in "${order[@]}"; do
    mkdir -p "$I/lib/modules/$KVER/$(dirname "$rel")"
    cp "$M/$rel" "$I/lib/modules/$KVER/$rel"
    echo "lib/modules/$KVER/$rel" >>"$I/etc/nodeimg/modules"
done
(cd "$I" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -n -9) >"$W/initrd.img"
log "initramfs: $(du -h "$W/initrd.img" | cut -f1), modules: ${order[*]##*/}"

# ---------------------------------------------------------------- system (squashfs of /usr with factory /etc)
S=$W/system
cp -a "$R/usr" "$S"
mkdir -p "$S/share/factory"
cp -a "$R/etc" "$S/share/factory/etc"
rm -rf "$S/lib/modules" "$S/lib/raspi-firmware" # not needed after boot here; keeps the test fast
mksquashfs "$S" "$W/system.sqfs" -noappend -all-root -quiet -comp gzip >/dev/null

# ---------------------------------------------------------------- data (ext4 with the rest of the rootfs)
D=$W/data
mkdir -p "$D"
for e in "$R"/*; do
    case ${e##*/} in usr | etc | boot | bin | sbin | lib) ;; *) cp -a "$e" "$D/" ;; esac
done
mkdir -p "$D"/{usr,etc,boot}
ln -s usr/bin "$D/bin"
ln -s usr/sbin "$D/sbin"
ln -s usr/lib "$D/lib"
mkfs.ext4 -q -F -T default -L data -d "$D" "$W/data.ext4" 48M

# ---------------------------------------------------------------- boot (FAT with a node config)
rm -f "$W/boot.vfat"
mkfs.vfat -C "$W/boot.vfat" 16384 >/dev/null
printf '# node config\nhostname: "manual-%s"  # from the FAT partition\n' "$TABLE" >"$W/node.yaml"
mcopy -i "$W/boot.vfat" "$W/node.yaml" ::node.yaml

# ---------------------------------------------------------------- disk
# p1 boot 16M at 1M, p2 system, p3 slot B (empty), p4 data; then 64 MiB more for growth
MiB=$((1024 * 1024))
sys_mib=$(($(stat -c %s "$W/system.sqfs") / MiB + 2))
p1=1 p2=$((p1 + 16)) p3=$((p2 + sys_mib)) p4=$((p3 + sys_mib))
end=$((p4 + 48 + 1))
DISK=$W/disk.img
rm -f "$DISK"
truncate -s $((end * MiB)) "$DISK"
if [ "$TABLE" = mbr ]; then
    DISK_ID=mbr:5eed1e55
    {
        echo "label: dos"
        echo "label-id: 0x5eed1e55"
        echo "start=${p1}MiB, size=16MiB, type=c"
        echo "start=${p2}MiB, size=${sys_mib}MiB, type=83"
        echo "start=${p3}MiB, size=${sys_mib}MiB, type=83"
        echo "start=${p4}MiB, size=48MiB, type=83"
    } | sfdisk -q "$DISK"
else
    DISK_ID=gpt:0d15ea5e-1234-4abc-8def-0123456789ab
    {
        echo "label: gpt"
        echo "label-id: 0D15EA5E-1234-4ABC-8DEF-0123456789AB"
        echo "start=${p1}MiB, size=16MiB, type=uefi, name=boot"
        echo "start=${p2}MiB, size=${sys_mib}MiB, type=linux, name=system_a"
        echo "start=${p3}MiB, size=${sys_mib}MiB, type=linux, name=system_b"
        echo "start=${p4}MiB, size=48MiB, type=linux, name=data"
    } | sfdisk -q "$DISK"
fi
dd if="$W/boot.vfat" of="$DISK" bs=1M seek=$p1 conv=notrunc status=none
dd if="$W/system.sqfs" of="$DISK" bs=1M seek=$p2 conv=notrunc status=none
dd if="$W/data.ext4" of="$DISK" bs=1M seek=$p4 conv=notrunc status=none
truncate -s +64M "$DISK" # the medium is bigger than the image: first boot grows data
cp "$R/boot/vmlinuz-$KVER" "$W/rootfs.vmlinuz"
rm -rf "$S" "$D" "$R"

CMDLINE="console=ttyAMA0 panic=-1 nodeimg.disk=$DISK_ID nodeimg.boot=1 nodeimg.system=2 nodeimg.data=4"
boot() { # name seconds extra-cmdline
    local name=$1 secs=$2 extra=$3 rc=0
    log "booting ($name)"
    timeout "$secs" "$QEMU" -M virt -cpu cortex-a72 -m 1024 -smp 2 -nographic -no-reboot \
        -kernel "$W/rootfs.vmlinuz" -initrd "$W/initrd.img" -append "$CMDLINE $extra" \
        -drive "file=$DISK,if=virtio,format=raw" -nic none </dev/null >"$W/console-$name.log" 2>&1 || rc=$?
    tr -d '\r' <"$W/console-$name.log" >"$W/console-$name.txt"
    log "  qemu exit $rc; console in $W/console-$name.txt"
}
expect() { # name pattern
    grep -q -- "$2" "$W/console-$1.txt" || die "boot $1: no '$2' on the console (see $W/console-$1.txt)"
}

boot first 120 nodeimg.test.poweroff
for p in 'first boot: growing partition 4' 'nodeimg-init: grew' 'first boot: machine-id' \
    "nodeimg-init: switching to /sbin/init" 'nodeimg-test-rootfs: busybox init started' \
    'nodeimg-test-rootfs: userspace up' "nodeimg-test-rootfs: hostname=manual-$TABLE" \
    'nodeimg-test-rootfs: mount / ext4 rw' 'nodeimg-test-rootfs: mount /usr squashfs ro' \
    'nodeimg-test-rootfs: mount /etc tmpfs rw' 'nodeimg-test-rootfs: powering off'; do
    expect first "$p"
done
mid1=$(sed -n 's/^nodeimg-test-rootfs: machine-id=//p' "$W/console-first.txt")
[ ${#mid1} -eq 32 ] || die "first boot: machine-id '$mid1' is not 32 characters"

boot second 120 nodeimg.test.poweroff
expect second 'nodeimg-test-rootfs: userspace up'
expect second "nodeimg-test-rootfs: machine-id=$mid1"
if grep -q 'growing partition' "$W/console-second.txt"; then die "second boot grew the data partition again"; fi
# the data partition now ends within 1 MiB of the end of the disk (GPT keeps its backup header there)
disk_bytes=$(stat -c %s "$DISK")
p4_end=$(sfdisk -d "$DISK" | sed -n 's/^.*img4 : start= *\([0-9]*\), size= *\([0-9]*\),.*/\1 \2/p' | awk '{ print ($1 + $2) * 512 }')
[ -n "$p4_end" ] || die "no partition 4 in sfdisk -d $DISK"
[ $((p4_end + MiB)) -ge "$disk_bytes" ] || die "partition 4 ends at $p4_end of $disk_bytes bytes: not grown"

boot wrong-disk 40 "nodeimg.test.poweroff nodeimg.wait=2 nodeimg.disk=${DISK_ID%%:*}:$([ "$TABLE" = mbr ] && echo 0badc0de || echo 00000000-0000-4000-8000-000000000000)"
expect wrong-disk 'nodeimg-init: ERROR: no disk with nodeimg.disk='
expect wrong-disk 'starting a rescue shell'

log "PASSED ($TABLE): grown, identity kept (machine-id $mid1), rescue shell on a wrong disk id"
