//! The loader's trial boot and fallback, through the real loader: Debian's
//! U-Boot for QEMU (`u-boot-qemu`) as `-bios`, running the boot script the
//! builder put on the FAT partition of an image of a `method = "u-boot"` board.
//!
//! `nodeimg boot-test` checks the image (booting slot a's files directly).
//! First the image boots as built (slot a). Then slot b is armed for one
//! trial, as the node-side helper will do (here with mtools), with a kernel
//! cmdline that panics (`panic=1`, an init that does not exist): the kernel
//! reboots, U-Boot finds no tries left and boots slot a, untouched.

mod common;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nodeimg::update::uboot::{self, State};

/// Boots `image` with U-Boot as the firmware until `done(console)`; returns the console.
fn boot_until(image: &Path, log: &Path, done: impl Fn(&str) -> bool) -> String {
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
        .args(["-bios", UBOOT_QEMU])
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,cache=unsafe",
            image.display()
        ))
        .args(["-nic", "none", "-serial", "stdio", "-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(fs::File::create(log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-system-aarch64");
    let start = Instant::now();
    loop {
        let mut text = String::new();
        fs::File::open(log).unwrap().read_to_string(&mut text).ok();
        if done(&text) {
            let _ = qemu.kill();
            let _ = qemu.wait();
            return text;
        }
        if start.elapsed() > Duration::from_secs(300) || qemu.try_wait().unwrap().is_some() {
            let _ = qemu.kill();
            let _ = qemu.wait();
            panic!(
                "not reached; console in {}:\n{}",
                log.display(),
                &text[text.len().saturating_sub(3000)..]
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Slot `slot`'s kernel (its cmdline) ran, then its initramfs switched into the system.
fn reached_system(console: &str, cmdline: &str) -> bool {
    console
        .find(&format!("Kernel command line: {cmdline}"))
        .is_some_and(|k| console[k..].contains("nodeimg-init: switching"))
}

#[test]
fn a_trial_slot_whose_kernel_panics_falls_back_to_the_primary() {
    assert!(
        Path::new(UBOOT_QEMU).is_file(),
        "{UBOOT_QEMU} missing: install u-boot-qemu"
    );
    let dir = scratch("update-uboot");
    // The qemu-aarch64 board with U-Boot as the loader.
    let data = uboot_data_dir(&dir, "qemu-uboot", "");
    let out = dir.join("out");
    let data_arg = data.to_str().unwrap();
    let key = dir.join("update.key");
    run_ok(nodeimg().arg("keygen").arg("--out").arg(&key));
    let key_arg = key.to_str().unwrap();
    let res = build(
        "qemu-uboot",
        &test_rootfs(),
        &out,
        &["--data-dir", data_arg, "--sign-key", key_arg],
    );
    assert!(res.status.success(), "build: {}", stderr(&res));
    let image = out.join("qemu-uboot/qemu-uboot.img");
    let bundle = out.join("qemu-uboot/qemu-uboot.bundle");
    // The bundle carries the slot's files without the slot directory, and
    // not the loader's state.
    let list = stdout(&run_ok(Command::new("tar").arg("-tf").arg(&bundle)));
    let names: Vec<&str> = list.lines().collect();
    assert_eq!(
        &names[2..],
        [
            "system.squashfs",
            "boot/boot.scr",
            "boot/bootargs.env",
            "boot/initrd.img",
            "boot/vmlinuz"
        ]
    );
    // `nodeimg boot-test` boots such an image too: the primary slot's
    // kernel, initramfs and cmdline out of slot-a/, all its checks.
    let tested = run(nodeimg()
        .arg("boot-test")
        .arg(&image)
        .arg("--work-dir")
        .arg(dir.join("boot-test")));
    let report = stdout(&tested);
    assert!(
        tested.status.success(),
        "boot-test: {report}\n{}",
        stderr(&tested)
    );
    assert!(
        report.contains("PASS first boot reaches a shell") && !report.contains("FAIL"),
        "{report}"
    );
    let table = sfdisk(&image);
    let offset = table.partitions[0].start * table.sector_size;

    // As built: boot.scr, slots.env (a, no trial), slot a's files.
    let state = State::parse(&mtools("mtype", &image, offset, &["::slots.env"])).unwrap();
    assert_eq!(
        state,
        State {
            primary: 'a',
            trial: None
        }
    );
    let bootargs =
        String::from_utf8(mtools("mtype", &image, offset, &["::slot-a/bootargs.env"])).unwrap();
    let slot_a = bootargs
        .trim()
        .strip_prefix("bootargs=")
        .unwrap()
        .to_string();
    assert!(slot_a.contains("nodeimg.system=2"), "{slot_a}");
    let first = boot_until(&image, &dir.join("console-1.log"), |c| {
        reached_system(c, &slot_a)
    });
    assert!(first.contains("nodeimg: booting slot a"), "{first}");

    // Arm slot b for one trial, its kernel set to panic.
    let work = dir.join("slot-b");
    fs::create_dir_all(&work).unwrap();
    for f in [uboot::KERNEL, uboot::INITRAMFS] {
        let bytes = mtools("mtype", &image, offset, &[&format!("::slot-a/{f}")]);
        fs::write(work.join(f), bytes).unwrap();
    }
    let slot_b = format!(
        "{} panic=1 rdinit=/nonexistent init=/nonexistent",
        uboot::slot_cmdline(&slot_a, 3)
    );
    fs::write(work.join("bootargs.env"), format!("bootargs={slot_b}\n")).unwrap();
    let armed = State {
        primary: 'a',
        trial: Some(('b', 1)),
    };
    fs::write(work.join("slots.env"), armed.to_text().unwrap()).unwrap();
    mtools("mmd", &image, offset, &["::slot-b"]);
    for f in [uboot::KERNEL, uboot::INITRAMFS, "bootargs.env"] {
        let src = work.join(f);
        mtools(
            "mcopy",
            &image,
            offset,
            &[src.to_str().unwrap(), &format!("::slot-b/{f}")],
        );
    }
    let src = work.join("slots.env");
    mtools(
        "mcopy",
        &image,
        offset,
        &["-o", src.to_str().unwrap(), "::slots.env"],
    );

    let second = boot_until(&image, &dir.join("console-2.log"), |c| {
        c.find("nodeimg: slot b failed its trial")
            .is_some_and(|at| reached_system(&c[at..], &slot_a))
    });
    // In order: the trial of b (saved first), b's kernel panicking, then a.
    let trial = second
        .find("nodeimg: trial boot of slot b")
        .expect("trial announced");
    let b_kernel = second[trial..]
        .find("nodeimg.system=3")
        .expect("slot b's kernel ran")
        + trial;
    let panic = second[b_kernel..]
        .find("Kernel panic")
        .expect("slot b panicked")
        + b_kernel;
    let fell_back = second.find("nodeimg: slot b failed its trial").unwrap();
    assert!(panic < fell_back, "{second}");
    // The state on the FAT records the failed trial (U-Boot's fatwrite) ...
    let saved = State::parse(&mtools("mtype", &image, offset, &["::slots.env"])).unwrap();
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
