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
#   SLOT=emmc2                                emmc2: the card sits on mmc@7e340000, the SD slot of
#                                             a real Pi 4 (mmcblk1); sdhci: QEMU's default for
#                                             -drive if=sd, mmc@7e300000 (the Wi-Fi slot, mmcblk0)
#   QEMU=qemu-system-aarch64
set -eu

IMG=${1:?usage: $0 IMAGE.img [WORKDIR]}
WORK=${2:-$(mktemp -d "${TMPDIR:-/tmp}/raspi4b-boot.XXXXXX")}
TIMEOUT=${TIMEOUT:-240}
SUCCESS=${SUCCESS:-nodeimg-init: switching to}
EXTRA_APPEND=${EXTRA_APPEND:-}
KEEP_DISK=${KEEP_DISK:-0}
SLOT=${SLOT:-emmc2}
QEMU=${QEMU:-qemu-system-aarch64}

for t in mcopy fdtput fdtget sfdisk "$QEMU"; do
    command -v "$t" >/dev/null 2>&1 || { echo "raspi4b-boot: missing tool: $t" >&2; exit 2; }
done
mkdir -p "$WORK"

# Partition 1 (FAT) offset in bytes, from the MBR.
start=$(sfdisk -d "$IMG" | sed -n 's/^[^:]*1 : start= *\([0-9]*\),.*/\1/p')
[ -n "$start" ] || { echo "raspi4b-boot: no partition 1 in $IMG" >&2; exit 2; }
off=$((start * 512))
# The rpi4 board boots through U-Boot: slot a's kernel, initramfs and cmdline (bootargs.env);
# an image of a board with method = "rpi-firmware" has them at the top.
if mdir -i "$IMG@@$off" ::slot-a >/dev/null 2>&1; then
    for f in vmlinuz initrd.img; do mcopy -o -n -i "$IMG@@$off" "::slot-a/$f" "$WORK/$f"; done
    mcopy -o -n -i "$IMG@@$off" ::slot-a/bootargs.env - | sed 's/^bootargs=//' >"$WORK/cmdline.txt"
else
    for f in vmlinuz initrd.img cmdline.txt; do mcopy -o -n -i "$IMG@@$off" "::$f" "$WORK/$f"; done
fi
mcopy -o -n -i "$IMG@@$off" ::bcm2711-rpi-4-b.dtb "$WORK/bcm2711-rpi-4-b.dtb"

# dtb edits (docs/raspi4b.md, "dtb edits"). Each is needed; the comment says why.
DTB=$WORK/qemu.dtb
cp "$WORK/bcm2711-rpi-4-b.dtb" "$DTB"
# Not modelled by QEMU: the block at 0x7ef00000 (HDMI clocks, the second interrupt controller,
# the HDMI I2C buses). Touching it is a synchronous external abort, so a panic:
#   interrupt-controller@7ef00100  brcmstb_l2_edge_intc_of_init, at boot
#   i2c@7ef0*                      brcmstb_i2c_probe, at boot
#   clock@7ef00000                 clk_disable_unused (else clk_ignore_unused is needed)
# The HDMI/display nodes are disabled too so a userspace that loads vc4 does not reach it.
for n in clock@7ef00000 interrupt-controller@7ef00100 i2c@7ef04500 i2c@7ef09500 hdmi@7ef00700 \
    hdmi@7ef05700 hvs@7e400000 pixelvalve@7e206000 pixelvalve@7e207000 \
    pixelvalve@7e20a000 pixelvalve@7e216000 pixelvalve@7ec12000; do
    if fdtget "$DTB" "/soc/$n" compatible >/dev/null 2>&1; then
        fdtput -t s "$DTB" "/soc/$n" status disabled
    fi
done
# Both SD controllers depend on the firmware GPIO expander (soc/firmware/gpio), which QEMU's
# mailbox does not answer ("Failed to get GPIO 0 config"), so they would defer forever:
# - mmc@7e340000 (emmc2, the SD slot): its vqmmc/vmmc regulators are switched by it;
# - mmc@7e300000 (Arasan, Wi-Fi slot): its mmc-pwrseq (wifi-pwrseq) resets through it.
fdtput -d "$DTB" /emmc2bus/mmc@7e340000 vqmmc-supply
fdtput -d "$DTB" /emmc2bus/mmc@7e340000 vmmc-supply
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

# QEMU's SD bus for -drive if=sd is the GPIO block's, routed to the Arasan SDHCI at reset;
# emmc2's own bus is empty. `bus=/generic-sdhci/sd-bus` names the first generic-sdhci on the
# system bus, which in QEMU 10.0 is emmc2 (the console shows "mmc1: new ... SD card").
case $SLOT in
emmc2) DRIVE="-drive if=none,id=card,file=$DISK,format=raw -device sd-card,drive=card,bus=/generic-sdhci/sd-bus" ;;
sdhci) DRIVE="-drive file=$DISK,if=sd,format=raw" ;;
*) echo "raspi4b-boot: SLOT must be emmc2 or sdhci" >&2; exit 2 ;;
esac

# The board's cmdline ends in console=tty0 (HDMI); here the console is the PL011 (ttyAMA0,
# QEMU's first -serial). The mini UART (ttyS1) hangs in request_irq when opened as the
# console under QEMU 10.0 (rcu stall in __setup_irq from console_on_rootfs).
APPEND="$(tr -d '\n' <"$WORK/cmdline.txt") console=ttyAMA0 $EXTRA_APPEND"
echo "raspi4b-boot: kernel command line: $APPEND"

LOG=$WORK/console.log
: >"$LOG"
t0=$(date +%s)
"$QEMU" -M raspi4b -kernel "$WORK/vmlinuz" -initrd "$WORK/initrd.img" -dtb "$DTB" \
    -append "$APPEND" $DRIVE \
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
grep -E 'mmc[0-9]: (SDHCI|new)|mmcblk[0-9]: |nodeimg|Kernel panic' "$LOG" | sed 's/^/  /' || true
if [ "$rc" = 0 ]; then
    echo "raspi4b-boot: OK: saw '$SUCCESS'"
else
    echo "raspi4b-boot: FAILED: '$SUCCESS' not seen" >&2
    tail -n 20 "$LOG" >&2
fi
exit "$rc"
