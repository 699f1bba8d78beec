//! `nodeimg inspect` against built images, checked with the field's tools
//! (mtools, dumpe2fs, sha256sum), a corrupted copy (FAILED), a joined image
//! (secrets redacted), and hostile images (one error line, never a panic,
//! under a memory limit).

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

fn inspect(image: &Path, json: bool) -> Output {
    let mut c = nodeimg();
    c.arg("inspect").arg(image).env("RUST_BACKTRACE", "0");
    if json {
        c.arg("--json");
    }
    run(&mut c)
}

fn inspect_json(image: &Path) -> (Value, Output) {
    let out = inspect(image, true);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
    (v, out)
}

/// `tool args... "<image>?offset=N"` style field of dumpe2fs -h.
fn dumpe2fs_field(image: &Path, offset: u64, field: &str) -> String {
    let out = run_ok(
        Command::new("dumpe2fs")
            .arg("-h")
            .arg(format!("{}?offset={offset}", image.display())),
    );
    stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in dumpe2fs"))
        .trim()
        .to_string()
}

fn status_of<'a>(v: &'a Value, file: &str) -> &'a str {
    v["checksums"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["file"] == file)
        .unwrap_or_else(|| panic!("{file} not checked: {v}"))["status"]
        .as_str()
        .unwrap()
}

#[test]
fn json_of_a_built_image_agrees_with_the_tools() {
    let img = built_image("rpi4");
    let (v, out) = inspect_json(&img);
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest: Value =
        serde_json::from_slice(&fs::read(img.with_file_name("build.json")).unwrap()).unwrap();
    assert_eq!(v["table"]["type"], "mbr");
    assert_eq!(v["table"]["disk_id"], manifest["disk"]["id"]);
    let parts = v["table"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 4);
    for (p, m) in parts
        .iter()
        .zip(manifest["disk"]["partitions"].as_array().unwrap())
    {
        assert_eq!(p["start"], m["start"]);
        assert_eq!(p["size"], m["size"]);
    }

    // FAT: label and serial as mtools reads them; files as mdir lists them.
    let boot = &parts[0]["filesystem"];
    let off = parts[0]["start"].as_u64().unwrap();
    let minfo = stdout(&run_ok(
        Command::new("minfo")
            .arg("-i")
            .arg(format!("{}@@{off}", img.display()))
            .arg("::"),
    ));
    assert_eq!(boot["type"], "vfat");
    assert!(
        minfo.contains(&format!(
            "disk label=\"{}\"",
            boot["label"].as_str().unwrap()
        )),
        "{minfo}"
    );
    let serial = boot["uuid"].as_str().unwrap().replace('-', "");
    assert!(
        minfo.contains(&format!("serial number: {serial}")),
        "{minfo}"
    );
    let used = boot["used"].as_u64().unwrap();
    assert!(used > 0 && used < boot["size"].as_u64().unwrap());
    let mdir = stdout(&run_ok(
        Command::new("mdir")
            .args(["-/", "-b", "-i"])
            .arg(format!("{}@@{off}", img.display()))
            .arg("::"),
    ));
    let mut want: Vec<String> = mdir
        .lines()
        .filter_map(|l| l.strip_prefix("::/"))
        .filter(|l| !l.ends_with('/'))
        .map(str::to_string)
        .collect();
    want.sort();
    let got: Vec<String> = v["boot_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want);

    // squashfs: the bytes used, which build.json records padded to 4 KiB.
    assert_eq!(parts[1]["filesystem"]["type"], "squashfs");
    let used = parts[1]["filesystem"]["size"].as_u64().unwrap();
    let recorded = manifest["system_image_size"].as_u64().unwrap();
    assert_eq!(used.div_ceil(4096) * 4096, recorded);
    // Slot B is empty.
    assert!(parts[2]["filesystem"].is_null());

    // ext4: as dumpe2fs reads the superblock.
    let data = &parts[3]["filesystem"];
    let off = parts[3]["start"].as_u64().unwrap();
    assert_eq!(data["type"], "ext4");
    assert_eq!(
        data["label"],
        dumpe2fs_field(&img, off, "Filesystem volume name")
    );
    assert_eq!(data["uuid"], dumpe2fs_field(&img, off, "Filesystem UUID"));
    let bs: u64 = dumpe2fs_field(&img, off, "Block size").parse().unwrap();
    let blocks: u64 = dumpe2fs_field(&img, off, "Block count").parse().unwrap();
    let free: u64 = dumpe2fs_field(&img, off, "Free blocks").parse().unwrap();
    assert_eq!(data["size"], blocks * bs);
    assert_eq!(data["used"], (blocks - free) * bs);

    // Every file of SHA256SUMS, and the image against its map.
    for f in ["rpi4.img.bmap", "build.json", "rpi4.img"] {
        assert_eq!(status_of(&v, f), "OK", "{f}");
    }
    // The table says the same.
    let human = inspect(&img, false);
    assert!(human.status.success());
    let text = stdout(&human);
    assert!(
        text.contains("NODEIMGBOOT") && text.contains("nodeimg-data"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("rpi4.img ") && l.contains(" OK")),
        "{text}"
    );
}

/// A copy of the output directory with one byte of the system partition
/// changed: the image FAILS against its map, the map itself is still OK;
/// an edited build.json FAILS too. Exit 1, one error line.
#[test]
fn a_corrupted_image_is_reported_failed() {
    let img = built_image("rpi4");
    let dir = scratch("inspect-corrupt");
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg("--sparse=always")
            .arg(img.parent().unwrap())
            .arg(&dir),
    );
    let copy = dir.join("rpi4/rpi4.img");
    let (v, _) = inspect_json(&copy);
    let system = v["table"]["partitions"][1]["start"].as_u64().unwrap();
    let f = fs::OpenOptions::new().write(true).open(&copy).unwrap();
    let mut b = [0u8; 1];
    fs::File::open(&copy)
        .unwrap()
        .read_exact_at(&mut b, system + 5000)
        .unwrap();
    f.write_all_at(&[b[0] ^ 0x40], system + 5000).unwrap();
    drop(f);
    let json = dir.join("rpi4/build.json");
    let text = fs::read_to_string(&json)
        .unwrap()
        .replace("\"rpi4\"", "\"rpi5\"");
    fs::write(&json, text).unwrap();

    let (v, out) = inspect_json(&copy);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("FAILED"), "{}", stderr(&out));
    assert_eq!(status_of(&v, "rpi4.img"), "FAILED");
    assert_eq!(status_of(&v, "build.json"), "FAILED");
    assert_eq!(status_of(&v, "rpi4.img.bmap"), "OK");
    // sha256sum agrees on what it can check.
    let check = run(Command::new("sha256sum")
        .arg("--check")
        .arg("SHA256SUMS")
        .current_dir(dir.join("rpi4")));
    assert!(
        stdout(&check).contains("build.json: FAILED"),
        "{}",
        stdout(&check)
    );
    let _ = fs::remove_dir_all(&dir);
}

const PASSWORD: &str = "inspect-join-password-5f4dcc3b";

#[test]
fn node_config_is_shown_with_its_secrets_redacted() {
    let dir = scratch("inspect-joined");
    let k3s = dir.join("k3s-fake");
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("printf '#!/bin/sh\\necho k3s\\n' > \"$0\" && chmod 755 \"$0\"")
            .arg(&k3s),
    );
    fs::write(
        dir.join("node-token"),
        format!("K10{}::server:{PASSWORD}\n", "cd34".repeat(16)),
    )
    .unwrap();
    let cfg = dir.join("cluster.yaml");
    fs::write(
        &cfg,
        format!(
            "server: https://10.0.0.1:6443\ntoken_file: node-token\n\
             k3s_args:\n  - --datastore-endpoint=postgres://k3s:{PASSWORD}@db/k3s\n\
             k3s:\n  source: file\n  path: {}\n",
            k3s.display()
        ),
    )
    .unwrap();
    let (out, res) = build_joined("qemu-aarch64", &dir, &cfg, &[]);
    assert!(res.status.success(), "{}", stderr(&res));
    let img = out.join("qemu-aarch64/qemu-aarch64.img");
    for json in [true, false] {
        let o = inspect(&img, json);
        assert!(o.status.success(), "{}", stderr(&o));
        let text = stdout(&o);
        assert!(!text.contains(PASSWORD), "the password is shown:\n{text}");
        assert!(text.contains("<redacted>"), "{text}");
        assert!(
            text.contains("nodeimg/token") && text.contains("nodeimg/node.env"),
            "{text}"
        );
        assert!(text.contains("https://10.0.0.1:6443"), "{text}");
    }
    let (v, _) = inspect_json(&img);
    let token = v["node_config"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "nodeimg/token")
        .unwrap();
    assert_eq!(token["content"], "<redacted>\n");
    let _ = fs::remove_dir_all(&dir);
}

/// KiB of address space for inspect on a hostile image.
const MEMORY_LIMIT_KIB: u64 = 2_000_000;

fn inspect_limited(image: &Path) -> Output {
    run(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {MEMORY_LIMIT_KIB} && exec \"$0\" inspect --json \"$1\""
        ))
        .arg(env!("CARGO_BIN_EXE_nodeimg"))
        .arg(image)
        .env("RUST_BACKTRACE", "0"))
}

/// An 16 MiB MBR image whose partition 1 (1 MiB..16 MiB) holds the
/// filesystem `mkfs` makes.
fn image_with(dir: &Path, name: &str, mkfs: &[&str]) -> PathBuf {
    let part = dir.join(format!("{name}.part"));
    fs::File::create(&part).unwrap().set_len(15 << 20).unwrap();
    run_ok(Command::new(mkfs[0]).args(&mkfs[1..]).arg(&part));
    let img = dir.join(format!("{name}.img"));
    fs::File::create(&img).unwrap().set_len(16 << 20).unwrap();
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("echo 'start=2048, type=83' | sfdisk -q \"$0\"")
            .arg(&img),
    );
    let bytes = fs::read(&part).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .write_all_at(&bytes, 1 << 20)
        .unwrap();
    img
}

/// Hostile images: crafted superblocks and mutated FAT and ext4 metadata.
/// Each run is exit 0 or exit 1 with exactly one error line; never a panic,
/// never more memory than the limit.
#[test]
fn hostile_images_are_one_error_line_never_a_panic() {
    let dir = scratch("inspect-hostile");
    let fat = image_with(&dir, "fat", &["mkfs.vfat", "-n", "X"]);
    let ext = image_with(&dir, "ext", &["mke2fs", "-q", "-F", "-t", "ext4"]);
    let check = |img: &Path, what: &str| -> bool {
        let out = inspect_limited(img);
        let err = stderr(&out);
        match out.status.code() {
            Some(0) => {}
            Some(1) => {
                assert_eq!(err.lines().count(), 1, "{what}: {err}");
                assert!(err.starts_with("nodeimg: error: "), "{what}: {err}");
            }
            c => panic!("{what}: exit {c:?}: {err}"),
        }
        out.status.success()
    };
    assert!(check(&fat, "clean FAT"));
    assert!(check(&ext, "clean ext4"));

    // Crafted: an ext4 claiming 2^48 blocks of 64 KiB.
    let crafted = dir.join("crafted.img");
    fs::copy(&ext, &crafted).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&crafted).unwrap();
    let sb = (1 << 20) + 1024;
    f.write_all_at(&6u32.to_le_bytes(), sb + 24).unwrap();
    f.write_all_at(&u32::MAX.to_le_bytes(), sb + 4).unwrap();
    drop(f);
    assert!(!check(&crafted, "huge ext4"));
    let err = stderr(&inspect_limited(&crafted));
    assert!(
        err.contains("partition 1") && err.contains("ext4 superblock"),
        "{err}"
    );
    // A table whose partition runs 2 TiB past the end of the file.
    fs::copy(&ext, &crafted).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&crafted).unwrap();
    f.write_all_at(&u32::MAX.to_le_bytes(), 446 + 12).unwrap();
    drop(f);
    assert!(!check(&crafted, "partition past the end"));
    let err = stderr(&inspect_limited(&crafted));
    assert!(err.contains("past the end"), "{err}");
    // A file that is no image at all.
    fs::write(&crafted, b"").unwrap();
    assert!(!check(&crafted, "empty"));

    // Mutations of the first 64 KiB of each filesystem (fixed seed).
    let cases: u64 = std::env::var("NODEIMG_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for (name, base) in [("fat", &fat), ("ext", &ext)] {
        let orig = fs::read(base).unwrap();
        for case in 0..cases {
            let mut img = orig.clone();
            for _ in 0..(1 + rand() % 8) {
                let at = (1 << 20) + (rand() % 65536) as usize;
                img[at] = rand() as u8;
            }
            fs::write(&crafted, &img).unwrap();
            check(&crafted, &format!("{name} case {case}"));
        }
    }
    let _ = fs::remove_dir_all(&dir);
}

/// A boot.img (made by AOSP's mkbootimg) goes to the Android reader; a
/// disk image's `--extract` is refused on one line.
#[test]
fn android_images_go_to_their_own_reader() {
    let dir = scratch("inspect-android");
    fs::write(dir.join("k"), vec![0x5au8; 5000]).unwrap();
    fs::write(dir.join("r"), vec![0xa5u8; 3000]).unwrap();
    let boot = dir.join("boot.img");
    run_ok(
        Command::new("mkbootimg")
            .args(["--header_version", "2", "--kernel"])
            .arg(dir.join("k"))
            .arg("--ramdisk")
            .arg(dir.join("r"))
            .arg("--dtb")
            .arg(dir.join("k"))
            .arg("-o")
            .arg(&boot),
    );
    let (v, out) = inspect_json(&boot);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(v["format"], "android-boot", "{v}");
    let out = run(nodeimg()
        .arg("inspect")
        .arg(built_image("rpi4"))
        .arg("--extract")
        .arg(dir.join("x")));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--extract is for"),
        "{}",
        stderr(&out)
    );
    let _ = fs::remove_dir_all(&dir);
}
