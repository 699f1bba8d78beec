//! Disk identifiers follow from what goes into the image: two rootfs archives
//! that differ only in how they were packed give byte-identical images.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn image_and_cmdline(out: &Path) -> (Vec<u8>, String) {
    let dir = out.join("qemu-aarch64");
    let img = std::fs::read(dir.join("qemu-aarch64.img")).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("build.json")).unwrap()).unwrap();
    let cmdline = json["kernel"]["cmdline"].as_str().unwrap().to_string();
    (img, cmdline)
}

#[test]
fn an_archive_without_its_root_entry_gives_the_same_image() {
    let dir = scratch("identifiers");
    // The test rootfs has a `./` entry, newer than the SOURCE_DATE_EPOCH the
    // builds use (2023); the copy lacks it.
    let with_root = dir.join("with-root.tar");
    let without_root = dir.join("without-root.tar");
    let plain = run_ok(
        Command::new("zstd")
            .args(["-q", "-d", "-c"])
            .arg(test_rootfs()),
    )
    .stdout;
    std::fs::write(&with_root, &plain).unwrap();
    std::fs::write(&without_root, &plain).unwrap();
    run_ok(
        Command::new("tar")
            .args(["--delete", "--no-recursion", "-f"])
            .arg(&without_root)
            .arg("./"),
    );
    let listing = |p: &Path| stdout(&run_ok(Command::new("tar").arg("-tf").arg(p)));
    assert!(listing(&with_root).lines().any(|l| l == "./"));
    assert!(!listing(&without_root).lines().any(|l| l == "./"));

    let (a, b) = (dir.join("a"), dir.join("b"));
    for (rootfs, out) in [(&with_root, &a), (&without_root, &b)] {
        let res = build("qemu-aarch64", rootfs, out, &[]);
        assert!(res.status.success(), "{}", stderr(&res));
    }
    let (img_a, cmdline_a) = image_and_cmdline(&a);
    let (img_b, cmdline_b) = image_and_cmdline(&b);
    assert_eq!(cmdline_a, cmdline_b);
    assert!(img_a == img_b, "the two images differ");

    // A different epoch is a different image, with different identifiers.
    let c = dir.join("c");
    let res = run(nodeimg()
        .env("SOURCE_DATE_EPOCH", "1700000001")
        .args(["build", "qemu-aarch64", "--rootfs"])
        .arg(&with_root)
        .arg("-o")
        .arg(&c));
    assert!(res.status.success(), "{}", stderr(&res));
    let (_, cmdline_c) = image_and_cmdline(&c);
    assert_ne!(cmdline_a, cmdline_c);
    let _ = std::fs::remove_dir_all(&dir);
}
