//! The image's allocated size and the work of a build do not grow with
//! `--size`: the filesystems are made sparse and in place, and the data
//! partition's inode tables and journal are left for the kernel to initialise.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::*;

/// (allocated bytes, data partition offset, its size) of a built qemu-aarch64 image.
fn built(out: &Path, size: &str) -> (u64, u64, u64) {
    let res = build("qemu-aarch64", &test_rootfs(), out, &["--size", size]);
    assert!(res.status.success(), "--size {size}: {}", stderr(&res));
    let dir = out.join("qemu-aarch64");
    let md = std::fs::metadata(dir.join("qemu-aarch64.img")).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("build.json")).unwrap()).unwrap();
    let data = json["disk"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "data")
        .expect("a data partition in build.json")
        .clone();
    assert_eq!(data["filesystem"], "ext4");
    (
        md.blocks() * 512,
        data["start"].as_u64().unwrap(),
        data["size"].as_u64().unwrap(),
    )
}

#[test]
fn a_64g_image_takes_about_the_space_of_a_2g_one_and_checks_clean() {
    let dir = scratch("size");
    let (small, _, _) = built(&dir.join("2g"), "2G");
    let (big, data_start, data_size) = built(&dir.join("64g"), "64G");
    let image = dir.join("64g/qemu-aarch64/qemu-aarch64.img");
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 64 << 30);
    // The 64G image holds more ext4 metadata (group descriptors, bitmaps of
    // 512 groups instead of 16), a few MiB; allow a quarter more.
    assert!(
        big * 4 < small * 5,
        "2G image allocates {small} bytes, 64G image {big} bytes"
    );

    // e2fsck reads the data partition in place (e2fsprogs' offset option).
    let out = run(Command::new("e2fsck")
        .arg("-fn")
        .arg(format!("{}?offset={data_start}", image.display())));
    assert!(
        out.status.success(),
        "e2fsck -fn: {}{}",
        stdout(&out),
        stderr(&out)
    );
    // ...and finds a filesystem spanning the whole partition.
    let blocks = format!("/{} blocks", data_size / 4096);
    assert!(stdout(&out).contains(&blocks), "{blocks}: {}", stdout(&out));
    let _ = std::fs::remove_dir_all(&dir);
}
