//! `nodeimg flash --fastboot OUTDIR` against a fake `fastboot` on PATH that
//! records its arguments: the right partitions and files in order, a product
//! mismatch refused, `--dry-run` printing the commands, and clear messages
//! for a missing tool, no device, two devices and a device that does not answer.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{nodeimg, repo, run, run_ok, scratch, stderr, stdout};

use nodeimg::android::bootimg::{self, BootImage, VendorBootImage};
use nodeimg::android::sparse;

const ANDROID: &str = r#"
[android]
header_version = 0
page_size = 4096
base = 0x00000000
kernel_offset = 0x00008000
ramdisk_offset = 0x01000000
tags_offset = 0x00000100
product = "sdm845"
boot_partition = "boot"
vendor_boot_partition = "vendor_boot"
rootfs_partition = "userdata"
max_download_size = 0x100000
"#;

/// A data dir with the phone board `testphone`: the built-in qemu-aarch64
/// board plus an `[android]` section. The board schema of the phone branch
/// (method "android-bootimg", no boot partition) is used when the binary
/// refuses the first form.
fn data_dir(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    fs::create_dir_all(data.join("boards")).unwrap();
    let base = fs::read_to_string(repo().join("boards/qemu-aarch64.toml"))
        .unwrap()
        .replace("name = \"qemu-aarch64\"", "name = \"testphone\"");
    let file = data.join("boards/testphone.toml");
    fs::write(&file, format!("{base}{ANDROID}")).unwrap();
    let boards = run(nodeimg().arg("--data-dir").arg(&data).arg("boards"));
    if !boards.status.success() && stderr(&boards).contains("android-bootimg") {
        let phone = base
            .replace("method = \"direct-kernel\"", "method = \"android-bootimg\"")
            .replace("boot_size = \"128M\"\n", "");
        fs::write(&file, format!("{phone}{ANDROID}")).unwrap();
    }
    run_ok(nodeimg().arg("--data-dir").arg(&data).arg("boards"));
    data
}

/// A phone build's output directory: build.json, boot.img, the rootfs as
/// sparse pieces of at most 1 MiB (`rootfs.img.0`, ...), and vendor_boot.img if asked.
fn outdir(dir: &Path, vendor_boot: bool) -> (PathBuf, Vec<PathBuf>) {
    let out = dir.join("out/testphone");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("build.json"), r#"{"board": "testphone"}"#).unwrap();
    let img = BootImage {
        header_version: 0,
        page_size: 4096,
        kernel: vec![1; 10_000],
        ramdisk: vec![2; 1000],
        cmdline: "console=ttyMSM0".into(),
        ..BootImage::default()
    };
    let mut boot = Vec::new();
    bootimg::write(&img, &mut boot).unwrap();
    fs::write(out.join("boot.img"), boot).unwrap();
    if vendor_boot {
        let vb = VendorBootImage {
            header_version: 3,
            page_size: 4096,
            vendor_ramdisk: vec![3; 100],
            dtb: vec![4; 10],
            ..VendorBootImage::default()
        };
        let mut v = Vec::new();
        bootimg::write_vendor(&vb, &mut v).unwrap();
        fs::write(out.join("vendor_boot.img"), v).unwrap();
    }
    let raw = dir.join("rootfs.raw");
    let noise: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    fs::write(&raw, noise).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&raw).unwrap();
    f.set_len(4 << 20).unwrap();
    let pieces = sparse::write_sparse(&raw, &out.join("rootfs.img"), Some(1 << 20)).unwrap();
    assert!(pieces.len() >= 3, "{pieces:?}");
    (out, pieces)
}

/// A fake `fastboot` in `dir/bin` that appends its arguments to `dir/argv.log`.
/// `devices` lists a phone unless FAKE_NO_DEVICE is set (two with FAKE_TWO); `getvar product`
/// prints `product: $FAKE_PRODUCT` on stderr as fastboot does, or hangs with FAKE_HANG.
fn fake_fastboot(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let log = dir.join("argv.log");
    let script = format!(
        r#"#!/bin/sh
echo "$*" >> '{log}'
case "$1" in
devices)
    [ -n "$FAKE_NO_DEVICE" ] || printf 'FAKE0123\tfastboot\n'
    [ -z "$FAKE_TWO" ] || printf 'OTHER456\tfastboot\n'
    ;;
getvar)
    [ -n "$FAKE_HANG" ] && exec sleep 30
    echo "product: $FAKE_PRODUCT" >&2
    echo "Finished. Total time: 0.001s" >&2
    ;;
flash)
    [ -f "$3" ] || {{ echo "no file $3" >&2; exit 1; }}
    echo "Sending '$2' OKAY" >&2
    ;;
esac
"#,
        log = log.display()
    );
    // Written by a child process (no ETXTBSY when it is executed).
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("cat > \"$0\" && chmod +x \"$0\"")
        .arg(bin.join("fastboot"))
        .stdin(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    bin
}

fn path_with(bin: &Path) -> String {
    format!("{}:/usr/bin:/bin", bin.display())
}

fn flash(data: &Path, out: &Path, path: &str, env: &[(&str, &str)], extra: &[&str]) -> Output {
    let mut c = nodeimg();
    c.env("PATH", path)
        .env("FAKE_PRODUCT", "sdm845")
        .arg("--data-dir")
        .arg(data)
        .arg("flash")
        .arg("--fastboot")
        .arg(out)
        .args(extra);
    for (k, v) in env {
        c.env(k, v);
    }
    run(&mut c)
}

fn log(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("argv.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn flashes_boot_vendor_boot_and_every_rootfs_piece_to_the_boards_partitions() {
    let dir = scratch("fastboot-flash");
    let data = data_dir(&dir);
    let (out, pieces) = outdir(&dir, true);
    let bin = fake_fastboot(&dir);
    let res = flash(&data, &out, &path_with(&bin), &[], &[]);
    assert!(res.status.success(), "{}", stderr(&res));
    let mut want = vec![
        "devices".to_string(),
        "getvar product".to_string(),
        format!("flash boot {}", out.join("boot.img").display()),
        format!(
            "flash vendor_boot {}",
            out.join("vendor_boot.img").display()
        ),
    ];
    for p in &pieces {
        want.push(format!("flash userdata {}", p.display()));
    }
    assert_eq!(log(&dir), want);
}

#[test]
fn a_different_product_is_refused_before_anything_is_flashed() {
    let dir = scratch("fastboot-product");
    let data = data_dir(&dir);
    let (out, _) = outdir(&dir, false);
    let bin = fake_fastboot(&dir);
    let res = flash(
        &data,
        &out,
        &path_with(&bin),
        &[("FAKE_PRODUCT", "kona")],
        &[],
    );
    assert_eq!(res.status.code(), Some(1));
    let err = stderr(&res);
    assert!(
        err.contains("\"kona\"") && err.contains("\"sdm845\"") && err.contains("refusing"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(log(&dir), ["devices", "getvar product"]);
}

#[test]
fn dry_run_prints_the_commands_and_runs_nothing() {
    let dir = scratch("fastboot-dry");
    let data = data_dir(&dir);
    let (out, pieces) = outdir(&dir, false);
    let bin = fake_fastboot(&dir);
    let res = flash(&data, &out, &path_with(&bin), &[], &["--dry-run"]);
    assert!(res.status.success(), "{}", stderr(&res));
    let printed: Vec<String> = stdout(&res)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let mut want = vec![
        "fastboot devices".to_string(),
        "fastboot getvar product".to_string(),
        format!("fastboot flash boot {}", out.join("boot.img").display()),
    ];
    for p in &pieces {
        want.push(format!("fastboot flash userdata {}", p.display()));
    }
    assert_eq!(printed, want);
    assert!(
        log(&dir).is_empty(),
        "dry run ran fastboot: {:?}",
        log(&dir)
    );
    // No fastboot needed for a dry run.
    let res = flash(&data, &out, "/usr/bin:/bin", &[], &["--dry-run"]);
    assert!(res.status.success(), "{}", stderr(&res));
}

#[test]
fn missing_tool_no_device_and_silent_device_are_clear_errors() {
    let dir = scratch("fastboot-errors");
    let data = data_dir(&dir);
    let (out, _) = outdir(&dir, false);
    let bin = fake_fastboot(&dir);

    let empty = dir.join("empty-bin");
    fs::create_dir_all(&empty).unwrap();
    let res = flash(&data, &out, empty.to_str().unwrap(), &[], &[]);
    assert_eq!(res.status.code(), Some(1));
    assert!(
        stderr(&res).contains("fastboot tool is not on PATH"),
        "{}",
        stderr(&res)
    );

    let res = flash(
        &data,
        &out,
        &path_with(&bin),
        &[("FAKE_NO_DEVICE", "1")],
        &[],
    );
    assert_eq!(res.status.code(), Some(1));
    assert!(
        stderr(&res).contains("no device in fastboot mode"),
        "{}",
        stderr(&res)
    );

    let res = flash(&data, &out, &path_with(&bin), &[("FAKE_TWO", "1")], &[]);
    assert_eq!(res.status.code(), Some(1));
    assert!(
        stderr(&res).contains("2 devices are in fastboot mode (FAKE0123, OTHER456)"),
        "{}",
        stderr(&res)
    );

    let started = std::time::Instant::now();
    let res = flash(
        &data,
        &out,
        &path_with(&bin),
        &[("FAKE_HANG", "1"), ("NODEIMG_FASTBOOT_TIMEOUT", "1")],
        &[],
    );
    assert_eq!(res.status.code(), Some(1));
    assert!(
        stderr(&res).contains("did not answer `fastboot getvar product` within 1 s"),
        "{}",
        stderr(&res)
    );
    assert!(
        started.elapsed().as_secs() < 20,
        "the timeout did not stop the wait"
    );
    assert!(
        !log(&dir).iter().any(|l| l.starts_with("flash")),
        "{:?}",
        log(&dir)
    );
}

#[test]
fn bad_output_directories_are_refused() {
    let dir = scratch("fastboot-bad-out");
    let data = data_dir(&dir);
    let (out, pieces) = outdir(&dir, false);
    let bin = fake_fastboot(&dir);
    let path = path_with(&bin);

    // A piece over the board's max_download_size (1 MiB).
    let big = out.join("rootfs.img.0");
    let saved = fs::read(&big).unwrap();
    fs::write(&big, [saved.clone(), vec![0u8; 1 << 20]].concat()).unwrap();
    let res = flash(&data, &out, &path, &[], &["--dry-run"]);
    assert!(
        stderr(&res).contains("max_download_size"),
        "{}",
        stderr(&res)
    );
    fs::write(&big, saved).unwrap();

    // A boot.img that is not one.
    let boot = out.join("boot.img");
    let saved = fs::read(&boot).unwrap();
    fs::write(&boot, b"not a boot image").unwrap();
    let res = flash(&data, &out, &path, &[], &["--dry-run"]);
    assert!(
        stderr(&res).contains("not an Android boot image"),
        "{}",
        stderr(&res)
    );
    fs::write(&boot, saved).unwrap();

    // No rootfs at all.
    for p in &pieces {
        fs::remove_file(p).unwrap();
    }
    let res = flash(&data, &out, &path, &[], &["--dry-run"]);
    assert!(stderr(&res).contains("no rootfs image"), "{}", stderr(&res));

    // A build of a board that is no phone.
    fs::write(out.join("build.json"), r#"{"board": "qemu-aarch64"}"#).unwrap();
    let res = flash(&data, &out, &path, &[], &["--dry-run"]);
    assert!(stderr(&res).contains("not a phone"), "{}", stderr(&res));

    // Not an output directory.
    let res = flash(&data, &dir, &path, &[], &["--dry-run"]);
    assert!(stderr(&res).contains("build.json"), "{}", stderr(&res));
    assert!(log(&dir).is_empty());
}
