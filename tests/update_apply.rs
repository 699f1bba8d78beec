//! An update applied on a running node, through the real loader: the
//! qemu-aarch64 board with U-Boot (Debian's `u-boot-qemu` as `-bios`) runs
//! version 1 from slot a; the node's own helper (`/usr/bin/nodeimg`, built
//! for arm64) applies bundles from more disks of the VM:
//! 1. version 2: a trial boot of slot b, committed at boot, kept over a reboot;
//! 2. version 3, whose kernel panics: the loader falls back on its own, and
//!    `update status` shows the failed trial;
//! 3. version 4, whose initramfs fails: the same;
//! 4. a power cut while a bundle is written: the node boots as before;
//! 5. then a later apply succeeds, pushed from the host with `nodeimg update
//!    push` over ssh (user-mode networking, a forwarded port).
//!
//! After 1, a tampered bundle, one signed with another key, another board's
//! and one that does not update from the running version are each refused
//! on the node and leave the slot they were written to unusable. The data
//! partition and the node's identity are kept throughout.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use nodeimg::qemu::{self, Vm, VmSpec};

const BOARD: &str = "qemu-uboot";

/// Builds version `version` of the U-Boot board from `rootfs`, its cmdline
/// followed by `extra`; returns its output directory.
fn build_version(dir: &Path, key: &str, rootfs: &Path, version: u32, extra: &str) -> PathBuf {
    build_as(dir, BOARD, key, rootfs, version, extra, &[])
}

/// Builds version `version` of the U-Boot board named `board` (the
/// qemu-aarch64 board, renamed) with `args` added; its output directory.
fn build_as(
    dir: &Path,
    board: &str,
    key: &str,
    rootfs: &Path,
    version: u32,
    extra: &str,
    args: &[&str],
) -> PathBuf {
    let vdir = dir.join(format!("{board}-v{version}"));
    let data = uboot_data_dir(&vdir, board, extra);
    build_signed(board, &data, key, rootfs, &vdir.join("out"), version, args)
}

#[test]
fn updates_through_uboot_commit_fall_back_and_survive_a_power_cut() {
    assert!(
        Path::new(UBOOT_QEMU).is_file(),
        "{UBOOT_QEMU} missing: install u-boot-qemu"
    );
    let dir = scratch("update-apply");
    let key = dir.join("update.key");
    run_ok(nodeimg().arg("keygen").arg("--out").arg(&key));
    let key = key.to_str().unwrap();
    let rootfs = test_rootfs();
    let v1 = build_version(&dir, key, &rootfs, 1, "");
    // v2: another cmdline and a marker file in the system image.
    let v2 = build_version(
        &dir,
        key,
        &rootfs_with_files(
            &dir,
            "rootfs-v2.tar",
            &[("usr/share/nodeimg-test/version", b"v2\n")],
        ),
        2,
        "nodeimg.test.v2",
    );
    // v3: a kernel that panics (no init it can run).
    let v3 = build_version(
        &dir,
        key,
        &rootfs,
        3,
        "rdinit=/nonexistent init=/nonexistent",
    );
    // v4: an initramfs that fails (the system has no such init).
    let v4 = build_version(&dir, key, &rootfs, 4, "nodeimg.init=/nonexistent");
    let image = dir.join("disk.img");
    nodeimg::disk::sparse::copy_file(&v1.join(format!("{BOARD}.img")), &image).unwrap();
    // The bundles, as disks of the VM: /dev/vdb, vdc, vdd.
    let mut bundles: Vec<PathBuf> = [&v2, &v3, &v4]
        .iter()
        .map(|d| d.join(format!("{BOARD}.bundle")))
        .collect();
    // /dev/vde: v3's bundle with one byte changed.
    let mut tampered = fs::read(&bundles[1]).unwrap();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 1;
    bundles.push(dir.join("tampered.bundle"));
    fs::write(&bundles[3], tampered).unwrap();
    // /dev/vdf: signed with another key; vdg: another board's (same layout);
    // vdh: updates only from version 3 on (the node will run version 2).
    let other_key = dir.join("other.key");
    run_ok(nodeimg().arg("keygen").arg("--out").arg(&other_key));
    let other_key = other_key.to_str().unwrap();
    let refused = [
        build_as(&dir, BOARD, other_key, &rootfs, 5, "", &[]).join(format!("{BOARD}.bundle")),
        build_as(&dir, "qemu-other", key, &rootfs, 5, "", &[]).join("qemu-other.bundle"),
        build_as(&dir, BOARD, key, &rootfs, 6, "", &["--min-version", "3"])
            .join(format!("{BOARD}.bundle")),
    ];
    bundles.extend(refused);

    let ssh_port = free_port();
    let spec = VmSpec {
        qemu: qemu::find_qemu().unwrap(),
        disk: image.clone(),
        kernel: Default::default(),
        initrd: Default::default(),
        cmdline: String::new(),
        mem_mib: 1024,
        cpus: 2,
        mac: "52:54:00:12:34:60".into(),
        log: dir.join("console.log"),
        firmware: Some(UBOOT_QEMU.into()),
        extra_drives: bundles,
        forward: vec![(ssh_port, 22)],
        machine: Default::default(),
    };
    let boot = Duration::from_secs(240);
    let up = "nodeimg-test-rootfs: mount /boot";
    let mut vm = Vm::start(&spec).unwrap();
    vm.wait_for("nodeimg: booting slot a", boot).unwrap();
    let me = identity(&vm.wait_for(up, boot).unwrap());
    assert_eq!(me.1.len(), 32, "{me:?}");
    vm.wait_for_shell(boot).unwrap();
    assert!(vm_sh(&mut vm, "cat /proc/cmdline").contains("nodeimg.system=2"));
    vm_sh(&mut vm, "echo kept > /root/data-marker && sync");
    let status = vm_sh(&mut vm, "nodeimg update status");
    assert!(
        status.contains("running slot a (version 1), primary slot a"),
        "{status}"
    );

    // 1. A good update: v2 from /dev/vdb; the helper reboots into the trial,
    // which busybox init's `nodeimg update commit` commits.
    vm.send("nodeimg update apply --tries 1 /dev/vdb").unwrap();
    vm.wait_for("the next boot tries it", boot).unwrap();
    vm.wait_for("nodeimg: trial boot of slot b", boot).unwrap();
    vm.wait_for("nodeimg: booting slot b", boot).unwrap();
    assert_eq!(identity(&vm.wait_for(up, boot).unwrap()), me);
    vm.wait_for("nodeimg: slot b (version 2) committed", boot)
        .unwrap();
    vm.wait_for_shell(boot).unwrap();
    assert_runs_v2_from_slot_b(&mut vm);
    let status = vm_sh(&mut vm, "nodeimg update status");
    assert!(
        status.contains("slot a: partition 2, version 1, good"),
        "{status}"
    );
    let mounts = vm_sh(&mut vm, "grep ' /boot ' /proc/mounts");
    assert!(
        mounts.contains(" ro,"),
        "/boot is read-only again: {mounts}"
    );
    // Committed: the next boot is slot b again, not a trial.
    vm.send("reboot").unwrap();
    let again = vm.wait_for("nodeimg: booting slot b", boot).unwrap();
    assert!(!again.contains("trial boot of slot"), "{again}");
    // init's `nodeimg update commit` finds nothing to decide. Its message
    // comes at any time on the console: waited for, it cannot land in the
    // middle of a command's output below.
    vm.wait_for(
        "nodeimg: slot b (version 2) is the committed slot; nothing to decide",
        boot,
    )
    .unwrap();
    vm.wait_for_shell(boot).unwrap();
    assert_eq!(vm_sh(&mut vm, "cat /usr/share/nodeimg-test/version"), "v2");

    // A tampered bundle, another key's, another board's, and one that does
    // not update from this version: each refused on the node, the slot it
    // was written to left unusable (no boot files), nothing armed, the
    // running slot untouched.
    for (disk, why) in [
        ("/dev/vde", "SHA-256 does not match the manifest"),
        ("/dev/vdf", "signed with another key"),
        (
            "/dev/vdg",
            "the bundle is for board qemu-other, not qemu-uboot",
        ),
        (
            "/dev/vdh",
            "updates from version 3 or later; this is version 2: refusing the downgrade",
        ),
    ] {
        let (code, said) = vm
            .sh(&format!("nodeimg update apply {disk}"), boot)
            .unwrap();
        assert_eq!(code, 1, "{disk}: {said}");
        assert!(
            said.contains(why) && said.contains("slot a is left unusable"),
            "{disk}: {said}"
        );
        let status = vm_sh(&mut vm, "nodeimg update status");
        assert!(
            status.contains("primary slot b")
                && !status.contains("trial of slot")
                && status.contains("slot a: partition 2, version -, unusable (no boot files)"),
            "{disk}: {status}"
        );
    }

    // 2. v3's kernel panics on its trial: the loader falls back to b.
    vm.send("nodeimg update apply --tries 1 /dev/vdc").unwrap();
    vm.wait_for("nodeimg: trial boot of slot a", boot).unwrap();
    vm.wait_for("Kernel panic", boot).unwrap();
    vm.wait_for("nodeimg: slot a failed its trial; booting slot b", boot)
        .unwrap();
    assert_eq!(identity(&vm.wait_for(up, boot).unwrap()), me);
    vm.wait_for("slot a (version 3) failed its trial boot", boot)
        .unwrap();
    vm.wait_for_shell(boot).unwrap();
    let status = vm_sh(&mut vm, "nodeimg update status");
    assert!(
        status.contains("running slot b (version 2), primary slot b")
            && status.contains("slot a: partition 2, version 3, failed (no boot files)")
            && status.contains("last: rollback of slot a: FAILED"),
        "{status}"
    );

    // 3. v4's initramfs fails on its trial: it reboots, the loader falls back.
    vm.send("nodeimg update apply --tries 1 /dev/vdd").unwrap();
    vm.wait_for("nodeimg: trial boot of slot a", boot).unwrap();
    vm.wait_for("this is a trial boot of an update: rebooting", boot)
        .unwrap();
    vm.wait_for("nodeimg: slot a failed its trial; booting slot b", boot)
        .unwrap();
    vm.wait_for("slot a (version 4) failed its trial boot", boot)
        .unwrap();
    vm.wait_for_shell(boot).unwrap();
    assert_eq!(vm_sh(&mut vm, "cat /root/data-marker"), "kept");

    // 4. The power fails while a bundle is written (its first MB read, the
    // rest never comes): the node boots b as before.
    vm.send("(head -c 1000000 /dev/vdb; sleep 600) | nodeimg update apply --tries 1 -")
        .unwrap();
    std::thread::sleep(Duration::from_secs(8));
    vm.kill();
    let mut vm = Vm::start(&spec).unwrap();
    let cut = vm.wait_for("nodeimg: booting slot b", boot).unwrap();
    assert!(!cut.contains("trial boot of slot"), "{cut}");
    assert_eq!(identity(&vm.wait_for(up, boot).unwrap()), me);
    vm.wait_for_shell(boot).unwrap();
    let status = vm_sh(&mut vm, "nodeimg update status");
    assert!(
        status.contains("running slot b (version 2), primary slot b")
            && status.contains("slot a: partition 2, version -, unusable (no boot files)"),
        "{status}"
    );

    // 5. A later apply succeeds: v2 again, into slot a, pushed from the host
    // over ssh (the test rootfs's dropbear, root's key on data; the test
    // rootfs configures no network: QEMU's user network is 10.0.2.0/24).
    let id = dir.join("id");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", ""])
            .arg("-f")
            .arg(&id),
    );
    let public = fs::read_to_string(dir.join("id.pub")).unwrap();
    vm_sh(
        &mut vm,
        &format!(
            "mkdir -p /root/.ssh && chmod 700 /root/.ssh && echo '{}' > /root/.ssh/authorized_keys && \
             chmod 600 /root/.ssh/authorized_keys && dropbear -p 22 && \
             (modprobe virtio_net 2>/dev/null; true) && ip link set eth0 up && \
             ip addr add 10.0.2.15/24 dev eth0",
            public.trim()
        ),
    );
    let pushed = push_to_vm(
        &v2.join(format!("{BOARD}.bundle")),
        ssh_port,
        &id,
        &["--tries", "1"],
    );
    assert!(pushed.status.success(), "push: {}", stderr(&pushed));
    assert!(
        stderr(&pushed).contains("slot a holds version 2"),
        "the node's helper reports through ssh: {}",
        stderr(&pushed)
    );
    vm.wait_for("nodeimg: trial boot of slot a", boot).unwrap();
    assert_eq!(identity(&vm.wait_for(up, boot).unwrap()), me);
    vm.wait_for("nodeimg: slot a (version 2) committed", boot)
        .unwrap();
    vm.wait_for_shell(boot).unwrap();
    assert!(vm_sh(&mut vm, "cat /proc/cmdline").contains("nodeimg.system=2"));
    assert_eq!(vm_sh(&mut vm, "cat /usr/share/nodeimg-test/version"), "v2");
    assert_eq!(vm_sh(&mut vm, "cat /root/data-marker"), "kept");
    vm.kill();
}
