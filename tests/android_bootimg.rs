//! Boot images against AOSP's own tools (Debian package `mkbootimg`, from
//! bookworm-backports for header v4 and `--format=mkbootimg`):
//! - `unpack_bootimg` reads our boot.img of every header version (0-4) and
//!   our vendor_boot.img (3, 4) and reports what we put in;
//! - `mkbootimg` given the same inputs writes byte for byte the same file;
//! - our parser reads mkbootimg's images and finds what went in.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{run_ok, scratch};

use nodeimg::android::bootimg::{self, BootImage, Parsed, VendorBootImage};

/// Deterministic bytes that differ between sections.
fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2] ^ seed)
        .collect()
}

/// A long command line, so that v0-v2 split it over cmdline and extra_cmdline.
fn long_cmdline() -> String {
    let mut s = String::from("console=ttyMSM0,115200 rootwait nodeimg.disk=abcdef");
    while s.len() < 700 {
        s.push_str(&format!(" opt{}=value", s.len()));
    }
    s
}

fn sample(v: u32) -> BootImage {
    BootImage {
        header_version: v,
        page_size: if v == 1 { 2048 } else { 4096 },
        kernel: bytes(1, 10_000),
        ramdisk: bytes(2, 5_001),
        second: if v <= 2 { bytes(3, 333) } else { Vec::new() },
        recovery_dtbo: if (1..=2).contains(&v) {
            bytes(4, 77)
        } else {
            Vec::new()
        },
        dtb: if v == 2 { bytes(5, 1234) } else { Vec::new() },
        cmdline: long_cmdline(),
        name: if v <= 2 {
            "sdm845".into()
        } else {
            String::new()
        },
        os_version: bootimg::pack_os_version("11.0.0", "2021-06").unwrap(),
        base: 0x8000_0000,
        kernel_offset: 0x8000,
        ramdisk_offset: 0x0100_0000,
        second_offset: 0x00f0_0000,
        tags_offset: 0x100,
        dtb_offset: 0x01f0_0000,
    }
}

fn vendor_sample(v: u32) -> VendorBootImage {
    VendorBootImage {
        header_version: v,
        page_size: 4096,
        vendor_ramdisk: bytes(6, 9_000),
        vendor_cmdline: "androidboot.hardware=qcom nodeimg.vendor=1".into(),
        name: "kona".into(),
        dtb: bytes(7, 2_000),
        bootconfig: Vec::new(),
        base: 0,
        kernel_offset: 0x8000,
        ramdisk_offset: 0x0100_0000,
        tags_offset: 0x100,
        dtb_offset: 0x01f0_0000,
    }
}

/// `unpack_bootimg --format=mkbootimg -0`: the mkbootimg arguments it
/// prints, as a map from option to value.
fn unpack(img: &Path, out: &Path) -> BTreeMap<String, String> {
    let o = run_ok(
        Command::new("unpack_bootimg")
            .arg("--boot_img")
            .arg(img)
            .arg("--out")
            .arg(out)
            .args(["--format=mkbootimg", "-0"]),
    );
    // NUL-terminated words; an empty value (`--ramdisk_name ''`) is an empty word.
    let body = o.stdout.strip_suffix(b"\0").unwrap_or(&o.stdout);
    let words: Vec<String> = body
        .split(|&b| b == 0)
        .map(|w| String::from_utf8(w.to_vec()).unwrap())
        .collect();
    let mut m = BTreeMap::new();
    let mut it = words.into_iter();
    while let Some(k) = it.next() {
        assert!(k.starts_with("--"), "unexpected word {k:?}");
        let v = it.next().unwrap_or_default();
        m.insert(k.trim_start_matches("--").to_string(), v);
    }
    m
}

fn num(m: &BTreeMap<String, String>, k: &str) -> u64 {
    let v = m
        .get(k)
        .unwrap_or_else(|| panic!("unpack_bootimg printed no --{k}: {m:?}"));
    u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()
}

fn file(m: &BTreeMap<String, String>, k: &str) -> Vec<u8> {
    let p = m
        .get(k)
        .unwrap_or_else(|| panic!("unpack_bootimg printed no --{k}: {m:?}"));
    fs::read(p).unwrap()
}

#[test]
fn unpack_bootimg_reads_our_boot_images() {
    let dir = scratch("bootimg-unpack");
    for v in 0..=4 {
        let img = sample(v);
        let path = dir.join(format!("boot-v{v}.img"));
        let mut out = Vec::new();
        bootimg::write(&img, &mut out).unwrap();
        fs::write(&path, &out).unwrap();
        let m = unpack(&path, &dir.join(format!("v{v}")));
        assert_eq!(m["header_version"], v.to_string());
        assert_eq!(m["cmdline"], img.cmdline, "v{v}");
        assert_eq!(m["os_version"], "11.0.0");
        assert_eq!(m["os_patch_level"], "2021-06");
        assert_eq!(file(&m, "kernel"), img.kernel, "v{v} kernel");
        assert_eq!(file(&m, "ramdisk"), img.ramdisk, "v{v} ramdisk");
        if v <= 2 {
            // unpack_bootimg prints base 0 and the absolute addresses as offsets.
            let base = num(&m, "base");
            assert_eq!(num(&m, "pagesize"), u64::from(img.page_size));
            assert_eq!(base + num(&m, "kernel_offset"), 0x8000_8000, "v{v}");
            assert_eq!(base + num(&m, "ramdisk_offset"), 0x8100_0000, "v{v}");
            assert_eq!(base + num(&m, "second_offset"), 0x80f0_0000, "v{v}");
            assert_eq!(base + num(&m, "tags_offset"), 0x8000_0100, "v{v}");
            assert_eq!(m["board"], "sdm845");
            assert_eq!(file(&m, "second"), img.second);
        }
        if v == 1 || v == 2 {
            assert_eq!(file(&m, "recovery_dtbo"), img.recovery_dtbo);
        }
        if v == 2 {
            assert_eq!(file(&m, "dtb"), img.dtb);
            assert_eq!(num(&m, "base") + num(&m, "dtb_offset"), 0x81f0_0000);
        }
    }
}

#[test]
fn unpack_bootimg_reads_our_vendor_boot_images() {
    let dir = scratch("bootimg-vendor-unpack");
    for v in [3, 4] {
        let mut img = vendor_sample(v);
        if v == 4 {
            img.bootconfig = b"androidboot.nodeimg=1\n".to_vec();
        }
        let path = dir.join(format!("vendor_boot-v{v}.img"));
        let mut out = Vec::new();
        bootimg::write_vendor(&img, &mut out).unwrap();
        fs::write(&path, &out).unwrap();
        let m = unpack(&path, &dir.join(format!("v{v}")));
        assert_eq!(m["header_version"], v.to_string());
        assert_eq!(m["vendor_cmdline"], img.vendor_cmdline);
        assert_eq!(m["board"], "kona");
        assert_eq!(num(&m, "pagesize"), 4096);
        let base = num(&m, "base");
        assert_eq!(base + num(&m, "kernel_offset"), 0x8000);
        assert_eq!(base + num(&m, "ramdisk_offset"), 0x0100_0000);
        assert_eq!(base + num(&m, "tags_offset"), 0x100);
        assert_eq!(base + num(&m, "dtb_offset"), 0x01f0_0000);
        assert_eq!(file(&m, "dtb"), img.dtb);
        if v == 3 {
            assert_eq!(file(&m, "vendor_ramdisk"), img.vendor_ramdisk);
        } else {
            // One table entry: the whole vendor ramdisk, type platform, no name.
            assert_eq!(file(&m, "vendor_ramdisk_fragment"), img.vendor_ramdisk);
            assert_eq!(m["ramdisk_type"], "1");
            assert_eq!(m["ramdisk_name"], "");
            assert_eq!(file(&m, "vendor_bootconfig"), img.bootconfig);
        }
    }
}

/// Writes each section of `img` to `dir` and returns mkbootimg's arguments for them.
fn mkbootimg_args(img: &BootImage, dir: &Path) -> Vec<String> {
    let put = |name: &str, data: &[u8]| -> String {
        let p = dir.join(name);
        fs::write(&p, data).unwrap();
        p.to_str().unwrap().to_string()
    };
    let mut a = vec![
        "--header_version".into(),
        img.header_version.to_string(),
        "--kernel".into(),
        put("kernel", &img.kernel),
        "--ramdisk".into(),
        put("ramdisk", &img.ramdisk),
        "--cmdline".into(),
        img.cmdline.clone(),
        "--os_version".into(),
        "11.0.0".into(),
        "--os_patch_level".into(),
        "2021-06".into(),
    ];
    if img.header_version <= 2 {
        let hex = |v: u64| format!("{v:#x}");
        a.extend([
            "--pagesize".into(),
            img.page_size.to_string(),
            "--base".into(),
            hex(img.base),
            "--kernel_offset".into(),
            hex(img.kernel_offset),
            "--ramdisk_offset".into(),
            hex(img.ramdisk_offset),
            "--second_offset".into(),
            hex(img.second_offset),
            "--tags_offset".into(),
            hex(img.tags_offset),
            "--dtb_offset".into(),
            hex(img.dtb_offset),
            "--board".into(),
            img.name.clone(),
            "--second".into(),
            put("second", &img.second),
        ]);
    }
    if img.header_version == 1 || img.header_version == 2 {
        a.extend(["--recovery_dtbo".into(), put("dtbo", &img.recovery_dtbo)]);
    }
    if img.header_version == 2 {
        a.extend(["--dtb".into(), put("dtb", &img.dtb)]);
    }
    a
}

#[test]
fn mkbootimg_writes_the_same_boot_images_and_we_parse_them() {
    let dir = scratch("bootimg-mkbootimg");
    for v in 0..=4 {
        let img = sample(v);
        let d = dir.join(format!("v{v}"));
        fs::create_dir_all(&d).unwrap();
        let theirs_path = d.join("boot.img");
        let id_out = run_ok(
            Command::new("mkbootimg")
                .args(mkbootimg_args(&img, &d))
                .arg("--id")
                .arg("-o")
                .arg(&theirs_path),
        );
        let theirs = fs::read(&theirs_path).unwrap();
        let Parsed::Boot(p) = bootimg::parse(&theirs).unwrap() else {
            panic!("v{v}: mkbootimg's image parsed as vendor boot")
        };
        assert_eq!(p.header_version, v);
        assert_eq!(&theirs[p.kernel.clone()], &img.kernel[..], "v{v}");
        assert_eq!(&theirs[p.ramdisk.clone()], &img.ramdisk[..], "v{v}");
        assert_eq!(&theirs[p.second.clone()], &img.second[..], "v{v}");
        assert_eq!(&theirs[p.recovery_dtbo.clone()], &img.recovery_dtbo[..]);
        assert_eq!(&theirs[p.dtb.clone()], &img.dtb[..]);
        assert_eq!(p.cmdline, img.cmdline, "v{v}");
        assert_eq!(p.os_version, img.os_version);
        if v <= 2 {
            assert_eq!(p.kernel_addr, 0x8000_8000);
            assert_eq!(p.ramdisk_addr, 0x8100_0000);
            assert_eq!(p.tags_addr, 0x8000_0100);
            assert_eq!(p.page_size, img.page_size);
            assert_eq!(p.name, "sdm845");
            let printed = common::stdout(&id_out);
            let id = p.id.unwrap();
            assert_eq!(printed.trim(), format!("0x{}", hex::encode(id)));
            assert_eq!(img.id().unwrap(), id, "v{v}: our SHA-1 id differs");
        }
        if v == 2 {
            assert_eq!(p.dtb_addr, 0x81f0_0000);
        }
        let mut ours = Vec::new();
        bootimg::write(&img, &mut ours).unwrap();
        assert!(
            ours == theirs,
            "v{v}: our boot.img differs from mkbootimg's"
        );
    }
}

#[test]
fn mkbootimg_writes_the_same_vendor_boot_images_and_we_parse_them() {
    let dir = scratch("bootimg-mkbootimg-vendor");
    for v in [3, 4] {
        let img = vendor_sample(v);
        let d: PathBuf = dir.join(format!("v{v}"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("vr"), &img.vendor_ramdisk).unwrap();
        fs::write(d.join("dtb"), &img.dtb).unwrap();
        let theirs_path = d.join("vendor_boot.img");
        run_ok(
            Command::new("mkbootimg")
                .args(["--header_version", &v.to_string(), "--pagesize", "4096"])
                .args(["--base", "0", "--board", "kona"])
                .arg("--vendor_cmdline")
                .arg(&img.vendor_cmdline)
                .arg("--vendor_ramdisk")
                .arg(d.join("vr"))
                .arg("--dtb")
                .arg(d.join("dtb"))
                .arg("--vendor_boot")
                .arg(&theirs_path),
        );
        let theirs = fs::read(&theirs_path).unwrap();
        let Parsed::VendorBoot(p) = bootimg::parse(&theirs).unwrap() else {
            panic!("v{v}: not parsed as vendor boot")
        };
        assert_eq!(p.header_version, v);
        assert_eq!(&theirs[p.vendor_ramdisk.clone()], &img.vendor_ramdisk[..]);
        assert_eq!(&theirs[p.dtb.clone()], &img.dtb[..]);
        assert_eq!(p.cmdline, img.vendor_cmdline);
        assert_eq!(p.name, "kona");
        assert_eq!(
            (p.kernel_addr, p.ramdisk_addr, p.tags_addr),
            (0x8000, 0x0100_0000, 0x100)
        );
        assert_eq!(p.dtb_addr, 0x01f0_0000);
        if v == 4 {
            assert_eq!(p.ramdisks.len(), 1);
            assert_eq!(&theirs[p.ramdisks[0].data.clone()], &img.vendor_ramdisk[..]);
            assert_eq!(p.ramdisks[0].ramdisk_type, bootimg::RAMDISK_TYPE_PLATFORM);
        }
        let mut ours = Vec::new();
        bootimg::write_vendor(&img, &mut ours).unwrap();
        assert!(
            ours == theirs,
            "v{v}: our vendor_boot.img differs from mkbootimg's"
        );
    }
}

#[test]
fn a_multi_ramdisk_vendor_boot_from_mkbootimg_lists_each_fragment() {
    let dir = scratch("bootimg-fragments");
    let (a, b) = (bytes(8, 3000), bytes(9, 5000));
    fs::write(dir.join("a"), &a).unwrap();
    fs::write(dir.join("b"), &b).unwrap();
    fs::write(dir.join("dtb"), bytes(10, 100)).unwrap();
    let out = dir.join("vb.img");
    run_ok(
        Command::new("mkbootimg")
            .args(["--header_version", "4", "--pagesize", "4096"])
            .arg("--dtb")
            .arg(dir.join("dtb"))
            .args([
                "--ramdisk_type",
                "dlkm",
                "--ramdisk_name",
                "modules",
                "--board_id3",
                "7",
            ])
            .arg("--vendor_ramdisk_fragment")
            .arg(dir.join("a"))
            .args(["--ramdisk_type", "recovery", "--ramdisk_name", "rec"])
            .arg("--vendor_ramdisk_fragment")
            .arg(dir.join("b"))
            .arg("--vendor_boot")
            .arg(&out),
    );
    let data = fs::read(&out).unwrap();
    let Parsed::VendorBoot(p) = bootimg::parse(&data).unwrap() else {
        panic!("not vendor boot")
    };
    assert_eq!(p.ramdisks.len(), 2);
    assert_eq!(&data[p.ramdisks[0].data.clone()], &a[..]);
    assert_eq!(&data[p.ramdisks[1].data.clone()], &b[..]);
    assert_eq!(
        (p.ramdisks[0].ramdisk_type, p.ramdisks[0].name.as_str()),
        (3, "modules")
    );
    assert_eq!(p.ramdisks[0].board_id[3], 7);
    assert_eq!(
        (p.ramdisks[1].ramdisk_type, p.ramdisks[1].name.as_str()),
        (2, "rec")
    );
    assert_eq!(p.vendor_ramdisk.len(), a.len() + b.len());
}
