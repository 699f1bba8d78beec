#!/bin/sh
# Boot a nodeimg rpi4 image on QEMU's `-M raspi4b` up to the switched root.
# Rootless: no sudo, mount or loop devices. See docs/raspi4b.md for why each step is needed.
#
# usage: test-images/raspi4b-boot.sh IMAGE.img [WORKDIR]
#
# Takes vmlinuz, initrd.img, bcm2711-rpi-4-b.dtb and cmdline.txt out of the image's FAT
# partition (mtools), patches the dtb for what QEMU does not model (fdtput from
# device-tree-compiler), boots a sparse copy of the image, grown to a power of two (QEMU's SD
# card needs that), as the SD card, and waits for $SUCCESS on the console.
# QEMU raspi4b does not exit on poweroff: qemu is killed once $SUCCESS is seen or after
# $TIMEOUT seconds. Exit status 0 if $SUCCESS was seen; the console log is WORKDIR/console.log.
#
# Environment:
#   TIMEOUT=240                               seconds before giving up
#   SUCCESS='nodeimg-init: switching to'      console text that means success
#   EXTRA_APPEND=''                           appended to the kernel command line
#   KEEP_DISK=0                               1: reuse WORKDIR/disk.img (second boot, not first)
#   QEMU=qemu-system-aarch64
set -eu

IMG=${1:?usage: $0 IMAGE.img [WORKDIR]}
WORK=${2:-$(mktemp -d "${TMPDIR:-/tmp}/raspi4b-boot.XXXXXX")}
TIMEOUT=${TIMEOUT:-240}
SUCCESS=${SUCCESS:-nodeimg-init: switching to}
EXTRA_APPEND=${EXTRA_APPEND:-}
KEEP_DISK=${KEEP_DISK:-0}
QEMU=${QEMU:-qemu-system-aarch64}

for t in mcopy fdtput fdtget sfdisk "$QEMU"; do
    command -v "$t" >/dev/null 2>&1 || { echo "raspi4b-boot: missing tool: $t" >&2; exit 2; }
done
mkdir -p "$WORK"

# Partition 1 (FAT) offset in bytes, from the MBR.
start=$(sfdisk -d "$IMG" | sed -n 's/^[^:]*1 : start= *\([0-9]*\),.*/\1/p')
[ -n "$start" ] || { echo "raspi4b-boot: no partition 1 in $IMG" >&2; exit 2; }
off=$((start * 512))
for f in vmlinuz initrd.img bcm2711-rpi-4-b.dtb cmdline.txt; do
    mcopy -o -n -i "$IMG@@$off" "::$f" "$WORK/$f"
done

# dtb edits (docs/raspi4b.md, "dtb edits"). Each is needed; the comment says why.
DTB=$WORK/qemu.dtb
cp "$WORK/bcm2711-rpi-4-b.dtb" "$DTB"
# Not modelled by QEMU: the second interrupt controller and the HDMI/display pipeline.
# Their drivers wait or fault on registers that read as zero.
for n in interrupt-controller@7ef00100 i2c@7ef04500 i2c@7ef09500 hdmi@7ef00700 \
    hdmi@7ef05700 hvs@7e400000 pixelvalve@7e206000 pixelvalve@7e207000 \
    pixelvalve@7e20a000 pixelvalve@7e216000 pixelvalve@7ec12000; do
    if fdtget "$DTB" "/soc/$n" compatible >/dev/null 2>&1; then
        fdtput -t s "$DTB" "/soc/$n" status disabled
    fi
done
# QEMU attaches `-drive if=sd` to the Arasan SDHCI mmc@7e300000 (the Wi-Fi slot on a real
# Pi 4). Its power sequence uses the firmware GPIO expander, which QEMU's mailbox does not
# answer, so the controller would wait for it forever: drop the power sequence.
fdtput -d "$DTB" /soc/mmc@7e300000 mmc-pwrseq
# The PL011 (ttyAMA0, QEMU's first -serial) has a Bluetooth child: serdev would take the port
# and no /dev/ttyAMA0 would exist for the console shell.
if fdtget "$DTB" /soc/serial@7e201000/bluetooth compatible >/dev/null 2>&1; then
    fdtput -r "$DTB" /soc/serial@7e201000/bluetooth
fi

# The disk: a sparse copy grown to the next power of two.
DISK=$WORK/disk.img
if [ "$KEEP_DISK" != 1 ] || [ ! -f "$DISK" ]; then
    cp --sparse=always "$IMG" "$DISK"
    size=$(stat -c %s "$DISK")
    p=1
    while [ "$p" -lt "$size" ]; do p=$((p * 2)); done
    truncate -s "$p" "$DISK"
fi

# The board's cmdline ends in console=tty0; on QEMU the console is the PL011 (ttyAMA0).
# The mini UART (ttyS1) hangs in request_irq when opened as the console under QEMU 10.0.
# clk_ignore_unused: QEMU's clock manager is partial; turning "unused" clocks off stalls.
APPEND="$(tr -d '\n' <"$WORK/cmdline.txt") clk_ignore_unused console=ttyAMA0 $EXTRA_APPEND"
echo "raspi4b-boot: kernel command line: $APPEND"

LOG=$WORK/console.log
: >"$LOG"
t0=$(date +%s)
"$QEMU" -M raspi4b -kernel "$WORK/vmlinuz" -initrd "$WORK/initrd.img" -dtb "$DTB" \
    -append "$APPEND" -drive "file=$DISK,if=sd,format=raw" \
    -display none -monitor none -serial "file:$LOG" </dev/null >"$WORK/qemu.out" 2>&1 &
qpid=$!

rc=1
while kill -0 "$qpid" 2>/dev/null; do
    if grep -qF "$SUCCESS" "$LOG"; then
        rc=0
        sleep 2 # let the lines after it reach the log
        break
    fi
    if [ $(($(date +%s) - t0)) -ge "$TIMEOUT" ]; then
        echo "raspi4b-boot: timeout after ${TIMEOUT}s" >&2
        break
    fi
    sleep 1
done
kill "$qpid" 2>/dev/null || true
wait "$qpid" 2>/dev/null || true

echo "raspi4b-boot: $(($(date +%s) - t0))s, log $LOG"
grep -E 'mmc[0-9]|mmcblk|nodeimg|Kernel panic' "$LOG" | sed 's/^/  /' || true
if [ "$rc" = 0 ]; then
    echo "raspi4b-boot: OK: saw '$SUCCESS'"
else
    echo "raspi4b-boot: FAILED: '$SUCCESS' not seen" >&2
    tail -n 20 "$LOG" >&2
fi
exit "$rc"
