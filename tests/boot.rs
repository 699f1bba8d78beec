//! Boot tests: images built from the test rootfs are booted in QEMU (aarch64
//! `virt`, TCG) by `nodeimg boot-test`, which checks from inside the guest.

mod common;

use common::*;

/// Every check `boot-test --broken` must report as passed.
const CHECKS: &[&str] = &[
    "first boot reaches a shell",
    "/usr is read-only squashfs, / is writable ext4, /etc is tmpfs",
    "data partition and filesystem grew to fill the enlarged disk",
    "second boot reaches a shell",
    "after a reboot /etc is fresh and /root, /var/lib, /home are kept",
    "after power loss the data partition mounts and synced data is there",
    "same hostname, machine-id, SSH host keys and node password on other hardware",
    "wrong disk identifier ends at the rescue shell",
    "missing data partition ends at the rescue shell",
];

fn boot_test(board: &str, size: &str) {
    let dir = scratch(&format!("boot-{board}"));
    let out = dir.join("out");
    let built = build(board, &test_rootfs(), &out, &["--size", size]);
    assert!(built.status.success(), "{}", stderr(&built));
    let image = out.join(board).join(format!("{board}.img"));
    let before = std::fs::read(&image).unwrap();
    let res = run(nodeimg()
        .arg("boot-test")
        .arg(&image)
        .arg("--broken")
        .arg("--work-dir")
        .arg(dir.join("work")));
    let text = stdout(&res);
    let log = std::fs::read_to_string(dir.join("work/console.log")).unwrap_or_default();
    let tail: String = log
        .lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    for check in CHECKS {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("PASS {check}:"))),
            "{board}: check {check:?} did not pass:\n{text}\n{}\nconsole:\n{tail}",
            stderr(&res)
        );
    }
    assert!(res.status.success(), "{board}: {text}\n{}", stderr(&res));
    // boot-test works on a copy: the built image is untouched.
    assert!(
        std::fs::read(&image).unwrap() == before,
        "boot-test changed {}",
        image.display()
    );
}

#[test]
fn rpi4_image_boots_as_an_immutable_portable_node() {
    boot_test("rpi4", "1600M");
}

#[test]
fn qemu_aarch64_image_boots_as_an_immutable_portable_node() {
    boot_test("qemu-aarch64", "1500M");
}

#[test]
fn boot_test_fails_cleanly_on_a_file_that_is_not_an_image() {
    let dir = scratch("boot-bad-input");
    let f = dir.join("junk.img");
    std::fs::write(&f, vec![0u8; 4096]).unwrap();
    let res = run(nodeimg().arg("boot-test").arg(&f));
    assert_eq!(res.status.code(), Some(1));
    let err = stderr(&res);
    assert!(
        err.contains("junk.img") && err.contains("no partition table"),
        "{err}"
    );
}
