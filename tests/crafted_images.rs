//! Crafted disk images against the real binary: `nodeimg boot-test IMAGE`
//! (the only command that reads a table from a file a user names) must refuse
//! each with exit code 1 and exactly one stderr line naming the problem, no
//! panic or abort, under a memory limit, and before it starts QEMU.
//!
//! A stand-in `qemu-system-aarch64` first on PATH records whether it was run;
//! the last test shows that a well-formed image does get that far.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::scratch;
use nodeimg::disk::layout::{PartKind, Placed, MIB};
use nodeimg::disk::{mbr, read};

/// KiB of address space for the binary (`ulimit -v`): ample for boot-test up
/// to starting QEMU, far below what trusting a crafted header would take.
const MEMORY_LIMIT_KIB: u64 = 4_000_000;
const TOTAL: u64 = 8 * MIB;

fn part(number: u32, start: u64, size: u64) -> Placed {
    Placed {
        number,
        name: format!("p{number}"),
        start,
        size,
        kind: if number == 1 {
            PartKind::BootFat
        } else {
            PartKind::LinuxData
        },
    }
}

fn layout() -> Vec<Placed> {
    vec![
        part(1, MIB, 3 * MIB),
        part(2, 4 * MIB, MIB),
        part(3, 5 * MIB, MIB),
        part(4, 6 * MIB, MIB),
    ]
}

fn gpt_image() -> Vec<u8> {
    common::gpt_image([9; 16], 512, TOTAL, &layout())
}

fn mbr_image() -> Vec<u8> {
    let mut img = vec![0u8; TOTAL as usize];
    img[..512].copy_from_slice(&mbr::table(0x0bad_f00d, &layout(), Some(1)).unwrap());
    img
}

const HDR: usize = 512;
const ENTRIES: usize = 1024;

fn entry(n: usize) -> usize {
    ENTRIES + 128 * (n - 1)
}

fn put32(img: &mut [u8], at: usize, v: u32) {
    img[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(img: &mut [u8], at: usize, v: u64) {
    img[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Recomputes the primary CRCs (128 entries of 128 bytes at LBA 2), so that
/// the checks behind them are what refuses the image.
fn reseal(img: &mut [u8]) {
    let arr = crc32fast::hash(&img[ENTRIES..ENTRIES + 128 * 128]);
    put32(img, HDR + 88, arr);
    let crc = read::header_crc(&img[HDR..HDR + 92]);
    put32(img, HDR + 16, crc);
}

struct Run {
    out: Output,
    qemu_started: bool,
}

/// `nodeimg boot-test IMAGE` under the memory limit, with the stand-in QEMU.
fn boot_test(dir: &Path, image: &Path) -> Run {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let marker = dir.join("qemu-was-started");
    let _ = std::fs::remove_file(&marker);
    let fake = bin.join("qemu-system-aarch64");
    // Written by a child process: a file this process held open for writing
    // would be inherited by children other test threads fork meanwhile, and
    // executing it could then fail with ETXTBSY.
    let script = format!("#!/bin/sh\ntouch '{}'\nexit 1\n", marker.display());
    let wrote = Command::new("sh")
        .args(["-c", "printf '%s' \"$1\" > \"$0\" && chmod 755 \"$0\""])
        .arg(&fake)
        .arg(&script)
        .status()
        .unwrap();
    assert!(wrote.success(), "writing the stand-in QEMU");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {MEMORY_LIMIT_KIB} && exec \"$0\" boot-test --timeout 5 \"$1\""
        ))
        .arg(env!("CARGO_BIN_EXE_nodeimg"))
        .arg(image)
        .env("PATH", path)
        .env_remove("NODEIMG_DATA_DIR")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    Run {
        out,
        qemu_started: marker.exists(),
    }
}

/// Writes `img` and checks that boot-test refuses it as described.
fn refused(name: &str, img: &[u8], problem: &str) {
    let dir = scratch(&format!("crafted-{name}"));
    let image = dir.join(format!("{name}.img"));
    std::fs::write(&image, img).unwrap();
    let run = boot_test(&dir, &image);
    let stderr = String::from_utf8_lossy(&run.out.stderr);
    let ctx = format!(
        "{name}: status {:?}\nstdout: {}\nstderr: {stderr}",
        run.out.status,
        String::from_utf8_lossy(&run.out.stdout)
    );
    assert_eq!(run.out.status.code(), Some(1), "{ctx}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{ctx}");
    let want = format!(
        "nodeimg: error: reading the partition table of {}: ",
        image.display()
    );
    assert!(lines[0].starts_with(&want), "{ctx}");
    assert!(lines[0].contains(problem), "expected {problem:?}\n{ctx}");
    assert!(!run.qemu_started, "QEMU was started\n{ctx}");
}

#[test]
fn empty_file() {
    refused("empty", &[], "the file is empty");
}

#[test]
fn truncated_files() {
    refused(
        "short",
        &[0u8; 100],
        "the file is 100 bytes, too short for the MBR (512 bytes)",
    );
    // Cut inside the GPT header, inside the entry array, inside partition 2.
    let img = gpt_image();
    refused(
        "cut-header",
        &img[..600],
        "too short for the GPT header (1024 bytes)",
    );
    refused(
        "cut-entries",
        &img[..8192],
        "the partition entry array at LBA 2 (16384 bytes) lies past the end of the 8192-byte file",
    );
    refused(
        "cut-partition",
        &img[..(4 * MIB + 4096) as usize],
        "partition 2 (LBA 8192, 2048 sectors of 512 bytes) runs past the end",
    );
    let img = mbr_image();
    refused(
        "cut-mbr-partition",
        &img[..(2 * MIB) as usize],
        "partition 1 (LBA 2048, 6144 sectors of 512 bytes) runs past the end of the 2097152-byte file",
    );
}

#[test]
fn not_a_partition_table() {
    refused(
        "zeros",
        &vec![0u8; 64 * 1024],
        "no partition table: bytes 510-511 are 00 00",
    );
}

#[test]
fn bad_header_crc() {
    let mut img = gpt_image();
    img[HDR + 48] ^= 0x40; // last usable LBA, CRC left as it was
    refused("header-crc", &img, "GPT header: CRC32 is");
}

#[test]
fn bad_entry_array_crc() {
    let mut img = gpt_image();
    put64(&mut img, entry(4) + 40, 1 << 40); // partition 4's end, CRC left as it was
    refused("entries-crc", &img, "GPT partition entry array: CRC32 is");
}

#[test]
fn four_billion_partition_entries() {
    let mut img = gpt_image();
    put32(&mut img, HDR + 80, u32::MAX);
    reseal(&mut img);
    refused(
        "entries-4g",
        &img,
        "GPT header: 4294967295 partition entries of 128 bytes exceed the 1048576-byte limit",
    );
}

#[test]
fn entry_array_past_the_end() {
    let mut img = gpt_image();
    put64(&mut img, HDR + 72, 1 << 40);
    reseal(&mut img);
    refused(
        "entries-past-eof",
        &img,
        "the partition entry array at LBA 1099511627776 (16384 bytes) lies past the end of the 8388608-byte file",
    );
    let mut img = gpt_image();
    put64(&mut img, HDR + 72, u64::MAX / 4);
    reseal(&mut img);
    refused(
        "entries-lba-overflow",
        &img,
        "lies past the end of the file",
    );
}

#[test]
fn partition_past_the_end() {
    // GPT: the usable area and partition 4 reach far past the file.
    let mut img = gpt_image();
    put64(&mut img, HDR + 48, u64::MAX - 100);
    put64(&mut img, entry(4) + 40, u64::MAX - 100);
    reseal(&mut img);
    refused(
        "gpt-past-eof",
        &img,
        "partition 4 (LBA 12288, 18446744073709539228 sectors of 512 bytes) runs past the end of the 8388608-byte file",
    );
    // GPT: a partition outside the header's usable LBAs.
    let mut img = gpt_image();
    put64(&mut img, entry(4) + 40, 1 << 20);
    reseal(&mut img);
    refused(
        "gpt-outside-usable",
        &img,
        "partition 4 (LBA 12288..=1048576) lies outside the usable LBAs 34..=16350",
    );
    // MBR: 2 TiB of sectors.
    let mut img = mbr_image();
    put32(&mut img, 446 + 16 * 3 + 12, u32::MAX);
    refused(
        "mbr-past-eof",
        &img,
        "partition 4 (LBA 12288, 4294967295 sectors of 512 bytes) runs past the end of the 8388608-byte file",
    );
}

#[test]
fn overlapping_partitions() {
    let mut img = gpt_image();
    put64(&mut img, entry(3) + 32, 8192 + 1000); // partition 3 starts inside 2
    reseal(&mut img);
    refused("gpt-overlap", &img, "partitions 2 and 3 overlap");
    let mut img = mbr_image();
    put32(&mut img, 446 + 16 + 8, 2048 + 8); // partition 2 starts inside 1
    refused("mbr-overlap", &img, "partitions 1 and 2 overlap");
}

/// The control: a well-formed image whose boot partition holds a cmdline,
/// kernel and initramfs passes the table and FAT reads and starts QEMU (the
/// stand-in, which fails). Without it the tests above could pass for the
/// wrong reason.
#[test]
fn well_formed_image_reaches_qemu() {
    let dir = scratch("crafted-control");
    let fat = dir.join("boot.vfat");
    let mkfs = Command::new("mkfs.vfat")
        .args(["-C", "-n", "BOOT"])
        .arg(&fat)
        .arg(((3 * MIB) / 1024).to_string())
        .output()
        .unwrap();
    assert!(mkfs.status.success(), "{mkfs:?}");
    for (name, body) in [
        ("cmdline.txt", "console=ttyS0 nodeimg.disk=gpt:x\n"),
        ("vmlinuz", "kernel"),
        ("initrd.img", "initramfs"),
    ] {
        let src: PathBuf = dir.join(name);
        std::fs::write(&src, body).unwrap();
        let c = Command::new("mcopy")
            .arg("-i")
            .arg(&fat)
            .arg(&src)
            .arg(format!("::{name}"))
            .output()
            .unwrap();
        assert!(c.status.success(), "{c:?}");
    }
    let mut img = gpt_image();
    let fat = std::fs::read(&fat).unwrap();
    img[MIB as usize..MIB as usize + fat.len()].copy_from_slice(&fat);
    let image = dir.join("control.img");
    std::fs::write(&image, &img).unwrap();
    let run = boot_test(&dir, &image);
    let stderr = String::from_utf8_lossy(&run.out.stderr);
    assert!(
        run.qemu_started,
        "QEMU was not started: {:?}\n{stderr}",
        run.out.status
    );
    assert!(!stderr.contains("partition table"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
