//! The shipped rpi4 board's loader on QEMU's `raspi4b`: Debian's U-Boot for
//! the Pi (`u-boot.bin` from the image's boot partition, started as the Pi
//! firmware would start it) runs the image's boot script, which boots slot a
//! with that slot's device tree; an update applied on the node is tried from
//! slot b and committed, the node's data and identity kept.
//!
//! What QEMU does not model is adapted, not the image's layout or loader:
//! - the rootfs's Pi 4 device tree has the devices QEMU lacks disabled (the
//!   same edits as `test-images/raspi4b-boot.sh`, plus those QEMU itself
//!   makes to the tree it hands to U-Boot), so both slots' `fdt.dtb` are
//!   bootable here;
//! - the board's console is the PL011 (`ttyAMA0`, QEMU's first serial port):
//!   the mini UART hangs when opened as the console under QEMU 10;
//! - the tree QEMU hands to U-Boot says `stdout-path = serial0`, so U-Boot
//!   writes to the same port as the kernel.
//!
//! The Pi firmware itself (config.txt, `kernel=u-boot.bin`) cannot be
//! emulated; the build tests check what it reads.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use nodeimg::qemu::{self, Machine, Vm, VmSpec};

const DTB: &str = "usr/lib/linux-image-6.12.95+deb12-arm64/broadcom/bcm2711-rpi-4-b.dtb";

/// The Pi 4 device tree of the test rootfs, with what QEMU 10's raspi4b
/// does not model disabled.
fn qemu_dtb(dir: &Path) -> Vec<u8> {
    let x = dir.join("dtb");
    fs::create_dir_all(&x).unwrap();
    run_ok(
        Command::new("tar")
            .arg("--zstd")
            .arg("-xf")
            .arg(test_rootfs())
            .arg("-C")
            .arg(&x)
            .arg(format!("./{DTB}")),
    );
    let dtb = x.join(DTB);
    // Not modelled (touching them aborts): the 0x7ef00000 block and the
    // display pipeline; and what QEMU disables in the tree it passes itself.
    for node in [
        "/soc/clock@7ef00000",
        "/soc/interrupt-controller@7ef00100",
        "/soc/i2c@7ef04500",
        "/soc/i2c@7ef09500",
        "/soc/hdmi@7ef00700",
        "/soc/hdmi@7ef05700",
        "/soc/hvs@7e400000",
        "/soc/pixelvalve@7e206000",
        "/soc/pixelvalve@7e207000",
        "/soc/pixelvalve@7e20a000",
        "/soc/pixelvalve@7e216000",
        "/soc/pixelvalve@7ec12000",
        "/scb/pcie@7d500000",
        "/scb/ethernet@7d580000",
        "/soc/rng@7e104000",
        "/soc/avs-monitor@7d5d2000/thermal",
    ] {
        let mut c = Command::new("fdtput");
        c.args(["-t", "s"])
            .arg(&dtb)
            .args([node, "status", "disabled"]);
        run_ok(&mut c);
    }
    // The SD controllers' regulators and power sequence go through the
    // firmware's GPIO expander, which QEMU's mailbox does not answer.
    for (node, prop) in [
        ("/emmc2bus/mmc@7e340000", "vqmmc-supply"),
        ("/emmc2bus/mmc@7e340000", "vmmc-supply"),
        ("/soc/mmc@7e300000", "mmc-pwrseq"),
    ] {
        run_ok(
            Command::new("fdtput")
                .arg("-d")
                .arg(&dtb)
                .args([node, prop]),
        );
    }
    // The PL011's Bluetooth child would take the console's port.
    run_ok(
        Command::new("fdtput")
            .arg("-r")
            .arg(&dtb)
            .arg("/soc/serial@7e201000/bluetooth"),
    );
    fs::read(&dtb).unwrap()
}

/// Builds rpi4 version `version` (signed) from `rootfs` with the console on
/// the PL011 and `extra` on the cmdline; its output directory.
fn build_version(dir: &Path, key: &str, rootfs: &Path, version: u32, extra: &str) -> PathBuf {
    let data = data_dir_with_board(&dir.join(format!("v{version}")), "rpi4", |t| {
        t.replace(
            "cmdline = \"console=ttyS1,115200 console=tty0 rootwait\"",
            &format!("cmdline = \"console=ttyAMA0 rootwait {extra}\""),
        )
    });
    let out = dir.join(format!("out{version}"));
    build_signed("rpi4", &data, key, rootfs, &out, version, &["--size", "2G"])
}

#[test]
fn rpi4_boots_through_its_uboot_and_takes_an_update_with_a_trial_boot() {
    let dir = scratch("raspi4b-uboot");
    let key = dir.join("update.key");
    run_ok(nodeimg().arg("keygen").arg("--out").arg(&key));
    let key = key.to_str().unwrap();
    let dtb = qemu_dtb(&dir);
    let v1_rootfs = rootfs_with_files(&dir, "rootfs-v1.tar", &[(DTB, &dtb)]);
    let v2_rootfs = rootfs_with_files(
        &dir,
        "rootfs-v2.tar",
        &[(DTB, &dtb), ("usr/share/nodeimg-test/version", b"v2\n")],
    );
    let v1 = build_version(&dir, key, &v1_rootfs, 1, "");
    let v2 = build_version(&dir, key, &v2_rootfs, 2, "nodeimg.test.v2");

    // The card: v1's image (2 GiB, a power of two as QEMU's SD card must
    // be), with v2's bundle put into the data filesystem's root.
    let image = dir.join("card.img");
    nodeimg::disk::sparse::copy_file(&v1.join("rpi4.img"), &image).unwrap();
    assert!(fs::metadata(&image).unwrap().len().is_power_of_two());
    let table = sfdisk(&image);
    let data_offset = table.partitions[3].start * 512;
    let boot_offset = table.partitions[0].start * 512;
    let put = Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!(
            "write {} v2.bundle",
            v2.join("rpi4.bundle").display()
        ))
        .arg(format!("{}?offset={data_offset}", image.display()))
        .output()
        .unwrap();
    assert!(put.status.success(), "{put:?}");

    // What the Pi firmware would start, with the tree it would pass.
    let uboot = dir.join("u-boot.bin");
    fs::write(
        &uboot,
        mtools("mtype", &image, boot_offset, &["::u-boot.bin"]),
    )
    .unwrap();
    let loader_dtb = dir.join("loader.dtb");
    fs::write(&loader_dtb, &dtb).unwrap();
    run_ok(
        Command::new("fdtput")
            .args(["-t", "s"])
            .arg(&loader_dtb)
            .args(["/chosen", "stdout-path", "serial0:115200n8"]),
    );
    let config =
        String::from_utf8(mtools("mtype", &image, boot_offset, &["::config.txt"])).unwrap();
    assert!(config.contains("\nkernel=u-boot.bin\n"), "{config}");

    let spec = VmSpec {
        qemu: qemu::find_qemu().unwrap(),
        disk: image.clone(),
        kernel: Default::default(),
        initrd: Default::default(),
        cmdline: String::new(),
        mem_mib: 2048,
        cpus: 4,
        mac: String::new(),
        log: dir.join("console.log"),
        firmware: Some(uboot),
        extra_drives: Vec::new(),
        forward: Vec::new(),
        machine: Machine::Raspi4b { dtb: loader_dtb },
    };
    // U-Boot reads the 44 MB kernel from the emulated card at about 2 MB/s.
    let boot = Duration::from_secs(300);
    let up = "nodeimg-test-rootfs: mount /boot";
    let mut vm = Vm::start(&spec).unwrap();
    let loader = vm.wait_for("nodeimg: booting slot a", boot).unwrap();
    assert!(loader.contains("U-Boot 20"), "{loader}");
    // The slot's own device tree, at the board's fdt_addr_r.
    let kernel = vm.wait_for("Starting kernel", boot).unwrap();
    assert!(
        kernel.contains("Booting using the fdt blob at 0x5000000"),
        "{kernel}"
    );
    let me = identity(&vm.wait_for(up, boot).unwrap());
    vm.wait_for_shell(boot).unwrap();
    assert!(vm_sh(&mut vm, "cat /proc/cmdline").contains("nodeimg.system=2"));
    vm_sh(&mut vm, "echo kept > /root/data-marker && sync");

    vm.send("nodeimg update apply --tries 1 /v2.bundle")
        .unwrap();
    vm.wait_for("the next boot tries it", boot).unwrap();
    vm.wait_for("nodeimg: trial boot of slot b", boot).unwrap();
    vm.wait_for("nodeimg: booting slot b", boot).unwrap();
    let kernel = vm.wait_for("Starting kernel", boot).unwrap();
    assert!(
        kernel.contains("Booting using the fdt blob at 0x5000000"),
        "{kernel}"
    );
    assert_eq!(identity(&vm.wait_for(up, boot).unwrap()), me);
    vm.wait_for("nodeimg: slot b (version 2) committed", boot)
        .unwrap();
    vm.wait_for_shell(boot).unwrap();
    assert_runs_v2_from_slot_b(&mut vm);
    // The slot's device tree came with the bundle.
    assert_eq!(
        vm_sh(
            &mut vm,
            "cmp /boot/slot-a/fdt.dtb /boot/slot-b/fdt.dtb && echo same"
        ),
        "same"
    );
}
