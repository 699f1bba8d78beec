//! The loader's trial boot and fallback, through the real loader: Debian's
//! U-Boot for QEMU (`u-boot-qemu`) as `-bios`, running our boot script from
//! the FAT partition of a built image. Slot b is armed for one trial with a
//! kernel cmdline that panics (`panic=1`, an init that does not exist): the
//! kernel reboots, U-Boot finds no tries left and boots slot a, untouched.
//!
//! The FAT partition in the loader's layout (boot.scr, slots.env, slot-a/,
//! slot-b/) is composed with `nodeimg::update::uboot` and spliced into a copy
//! of the image: the builder does not write this layout yet (docs/updates.md).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nodeimg::update::uboot::{self, State};

const UBOOT: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";

fn mcopy_out(image: &Path, offset: u64, name: &str) -> Vec<u8> {
    run_ok(
        Command::new("mtype")
            .arg("-i")
            .arg(format!("{}@@{offset}", image.display()))
            .arg(format!("::{name}")),
    )
    .stdout
}

#[test]
fn a_trial_slot_whose_kernel_panics_falls_back_to_the_primary() {
    assert!(
        Path::new(UBOOT).is_file(),
        "{UBOOT} missing: install u-boot-qemu"
    );
    let dir = scratch("update-uboot");
    let built = built_image("qemu-aarch64");
    let image = dir.join("node.img");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&built)
            .arg(&image),
    );
    let table = sfdisk(&image);
    let boot = &table.partitions[0];
    let (offset, size) = (
        boot.start * table.sector_size,
        boot.size * table.sector_size,
    );

    // The image's own boot files, read back with mtools.
    let kernel = mcopy_out(&image, offset, "vmlinuz");
    let initrd = mcopy_out(&image, offset, "initrd.img");
    let cmdline = String::from_utf8(mcopy_out(&image, offset, "cmdline.txt")).unwrap();
    let cmdline = cmdline.trim();
    assert!(cmdline.contains("nodeimg.system=2"), "{cmdline}");

    let image_files: BTreeMap<String, Vec<u8>> = [
        ("vmlinuz", kernel.clone()),
        ("initrd.img", initrd.clone()),
        ("cmdline.txt", format!("{cmdline}\n").into_bytes()),
    ]
    .into_iter()
    .map(|(n, d)| (n.to_string(), d))
    .collect();
    let mut files =
        uboot::loader_files(image_files, "vmlinuz", "initrd.img", 2, 1_700_000_000).unwrap();
    // Arm slot b for one trial, as the node-side helper will.
    let state = State {
        primary: 'a',
        trial: Some(('b', 1)),
    };
    files.insert(
        uboot::STATE_NAME.to_string(),
        state.to_text().unwrap().into_bytes(),
    );
    let slot_a = uboot::slot_cmdline(cmdline, 2);
    let slot_b = format!(
        "{} panic=1 rdinit=/nonexistent init=/nonexistent",
        uboot::slot_cmdline(cmdline, 3)
    );
    files.extend(uboot::slot_files('b', &kernel, &initrd, &slot_b));
    let fat = dir.join("boot.vfat");
    nodeimg::fs::fat::write(
        &fat,
        size,
        &nodeimg::fs::fat::FatOptions {
            volume_id: 0x1234_5678,
            label: "NODEIMGBOOT".into(),
        },
        &files,
    )
    .unwrap();
    run_ok(
        Command::new("dd")
            .arg(format!("if={}", fat.display()))
            .arg(format!("of={}", image.display()))
            .arg("bs=1M")
            .arg(format!("seek={offset}"))
            .arg("oflag=seek_bytes")
            .arg("conv=notrunc,sparse")
            .arg("status=none"),
    );

    let log = dir.join("console.log");
    let mut qemu = Command::new("qemu-system-aarch64")
        .args([
            "-M",
            "virt",
            "-cpu",
            "cortex-a72",
            "-m",
            "1024",
            "-nographic",
        ])
        .args(["-bios", UBOOT])
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,cache=unsafe",
            image.display()
        ))
        .args(["-nic", "none", "-serial", "stdio", "-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-system-aarch64");
    // Slot a's kernel after slot b's trial, up to the switch into its system.
    let want_a = format!("Kernel command line: {slot_a}");
    let start = Instant::now();
    let console = loop {
        let mut text = String::new();
        fs::File::open(&log).unwrap().read_to_string(&mut text).ok();
        if let Some(at) = text.find("nodeimg: slot b failed its trial") {
            // ... and its initramfs mounted slot a's system and switches into it.
            if text[at..]
                .find(&want_a)
                .is_some_and(|k| text[at + k..].contains("nodeimg-init: switching"))
            {
                break text;
            }
        }
        if start.elapsed() > Duration::from_secs(300) || qemu.try_wait().unwrap().is_some() {
            let _ = qemu.kill();
            panic!(
                "no fallback to slot a; console in {}:\n{}",
                log.display(),
                &text[text.len().saturating_sub(3000)..]
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = qemu.kill();
    let _ = qemu.wait();

    // In order: the trial of b (saved first), b's kernel panicking, then a.
    let trial = console
        .find("nodeimg: trial boot of slot b")
        .expect("trial announced");
    let b_kernel = console[trial..]
        .find("nodeimg.system=3")
        .expect("slot b's kernel ran")
        + trial;
    let panic = console[b_kernel..]
        .find("Kernel panic")
        .expect("slot b panicked")
        + b_kernel;
    let fell_back = console.find("nodeimg: slot b failed its trial").unwrap();
    assert!(panic < fell_back, "{console}");
    // The state on the FAT records the failed trial (U-Boot's fatwrite).
    let saved = State::parse(&mcopy_out(&image, offset, uboot::STATE_NAME)).unwrap();
    assert_eq!(
        saved,
        State {
            primary: 'a',
            trial: Some(('b', 0))
        }
    );
    // ... and leaves the filesystem clean.
    let after = extract_partition(&image, 1, &dir.join("boot-after.vfat"));
    let fsck = run(Command::new("fsck.fat").arg("-n").arg(&after));
    assert!(fsck.status.success(), "{}", stdout(&fsck));
}
