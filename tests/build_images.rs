//! `nodeimg build` on the test rootfs, for both boards, checked with external
//! tools: sfdisk, fsck.fat + mtools, unsquashfs, e2fsck.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const MIB: u64 = 1024 * 1024;
const SECTORS_PER_MIB: u64 = MIB / 512;

#[test]
fn rpi4_has_the_declared_mbr_table() {
    let img = built_image("rpi4");
    assert_eq!(
        fs::metadata(&img).unwrap().len(),
        2048 * MIB,
        "default size 2G"
    );
    let t = sfdisk(&img);
    assert_eq!(t.label, "dos");
    let p = &t.partitions;
    assert_eq!(p.len(), 4);
    assert_eq!(p[0].typ, "c", "p1 is FAT32 LBA");
    assert!(p[0].bootable, "p1 is bootable");
    for q in &p[1..] {
        assert_eq!(q.typ, "83");
        assert!(!q.bootable);
    }
    assert_eq!(p[0].start, 2048, "first partition at 1 MiB");
    assert_eq!(p[0].size, 256 * SECTORS_PER_MIB);
    assert_eq!(p[1].size, 640 * SECTORS_PER_MIB);
    assert_eq!(p[2].size, 640 * SECTORS_PER_MIB);
    for q in p {
        assert_eq!(q.start % SECTORS_PER_MIB, 0, "{} aligned to 1 MiB", q.node);
    }
    for w in p.windows(2) {
        assert!(w[0].start + w[0].size <= w[1].start, "no overlap");
    }
    assert_eq!(
        p[3].start + p[3].size,
        2048 * SECTORS_PER_MIB,
        "data fills the disk"
    );
    // The identifier the init finds the disk by is on the cmdline and in the manifest.
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(img.with_file_name("build.json")).unwrap()).unwrap();
    let id = manifest["disk"]["id"].as_str().unwrap();
    assert_eq!(id, format!("mbr:{}", t.id.trim_start_matches("0x")));
}

#[test]
fn qemu_has_the_declared_gpt_table() {
    let img = built_image("qemu-aarch64");
    let t = sfdisk(&img);
    assert_eq!(t.label, "gpt");
    let names: Vec<_> = t
        .partitions
        .iter()
        .map(|p| p.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["boot", "system_a", "system_b", "data"]);
    assert_eq!(
        t.partitions[0].typ, "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
        "boot is basic data"
    );
    for q in &t.partitions[1..] {
        assert_eq!(q.typ, "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    }
    assert_eq!(t.partitions[0].size, 128 * SECTORS_PER_MIB);
    for q in &t.partitions {
        assert_eq!(q.start % SECTORS_PER_MIB, 0);
    }
    let verify = run(Command::new("sfdisk").arg("--verify").arg(&img));
    assert!(
        verify.status.success(),
        "sfdisk --verify: {}",
        stdout(&verify)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(img.with_file_name("build.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["disk"]["id"].as_str().unwrap(),
        format!("gpt:{}", t.id.to_lowercase())
    );
}

/// The boot partition of `board`'s image holds `expected` (name, the
/// rootfs file it is a copy of), and the cmdline in `cmdline_file`.
fn check_boot_partition(board: &'static str, expected: &[(&str, &str)], cmdline_file: &str) {
    let img = built_image(board);
    let dir = scratch(&format!("boot-{board}"));
    let part = extract_partition(&img, 1, &dir.join("boot.vfat"));
    let fsck = run_ok(Command::new("fsck.fat").arg("-n").arg("-v").arg(&part));
    assert!(
        stdout(&fsck).contains("32 bit entries"),
        "FAT32: {}",
        stdout(&fsck)
    );
    let rootfs = unpacked_rootfs();
    for (name, source_glob) in expected {
        let got = run_ok(
            Command::new("mcopy")
                .arg("-n")
                .arg("-i")
                .arg(&part)
                .arg(format!("::{name}"))
                .arg("-"),
        )
        .stdout;
        let matches: Vec<_> = glob::glob(&rootfs.join(source_glob).to_string_lossy())
            .unwrap()
            .map(|p| p.unwrap())
            .collect();
        assert_eq!(matches.len(), 1, "{source_glob} in the test rootfs");
        let want = fs::read(&matches[0]).unwrap();
        assert!(
            got == want,
            "{name} on the boot partition differs from {source_glob}"
        );
    }
    let cmdline = run_ok(
        Command::new("mcopy")
            .args(["-n", "-i"])
            .arg(&part)
            .arg(format!("::{cmdline_file}"))
            .arg("-"),
    );
    let cmdline = stdout(&cmdline);
    assert!(cmdline.contains("nodeimg.disk="), "{cmdline}");
    assert!(cmdline.contains("nodeimg.data=4"), "{cmdline}");
}

#[test]
fn rpi4_boot_partition_is_clean_fat32_with_the_boot_files() {
    // The firmware starts U-Boot with the device tree at the top; U-Boot's
    // boot script boots slot a's kernel with the slot's own copy of it.
    let dtb = "usr/lib/linux-image-*/broadcom/bcm2711-rpi-4-b.dtb";
    check_boot_partition(
        "rpi4",
        &[
            ("slot-a/vmlinuz", "boot/vmlinuz-*"),
            ("start4.elf", "usr/lib/raspi-firmware/start4.elf"),
            ("fixup4.dat", "usr/lib/raspi-firmware/fixup4.dat"),
            ("u-boot.bin", "usr/lib/u-boot/rpi_arm64/u-boot.bin"),
            ("bcm2711-rpi-4-b.dtb", dtb),
            ("slot-a/fdt.dtb", dtb),
        ],
        "slot-a/bootargs.env",
    );
    let img = built_image("rpi4");
    let dir = scratch("boot-rpi4-config");
    let part = extract_partition(&img, 1, &dir.join("boot.vfat"));
    let cfg = stdout(&run_ok(
        Command::new("mcopy")
            .args(["-n", "-i"])
            .arg(&part)
            .args(["::config.txt", "-"]),
    ));
    for line in ["arm_64bit=1", "kernel=u-boot.bin", "enable_uart=1"] {
        assert!(
            cfg.lines().any(|l| l == line),
            "config.txt lacks {line}: {cfg}"
        );
    }
    assert!(
        !cfg.contains("initramfs"),
        "U-Boot loads the initramfs: {cfg}"
    );
    // The boot script sets the board's load addresses before loading.
    let scr = run_ok(
        Command::new("mcopy")
            .args(["-n", "-i"])
            .arg(&part)
            .args(["::boot.scr", "-"]),
    )
    .stdout;
    let text = String::from_utf8_lossy(&scr);
    assert!(
        text.contains("setenv kernel_addr_r 0x00200000\nsetenv fdt_addr_r 0x05000000\nsetenv ramdisk_addr_r 0x05200000\n"),
        "{text}"
    );
}

#[test]
fn qemu_boot_partition_is_clean_fat32_with_the_boot_files() {
    check_boot_partition(
        "qemu-aarch64",
        &[("vmlinuz", "boot/vmlinuz-*")],
        "cmdline.txt",
    );
}

/// The initramfs on the boot partition: a gzip'd newc cpio with init, busybox
/// and the listed modules (checked by GNU cpio).
#[test]
fn initramfs_holds_init_busybox_and_modules_with_dependencies() {
    let extracted = extract_initramfs(&built_image("qemu-aarch64"), &scratch("initramfs"));
    let init = fs::metadata(extracted.join("init")).unwrap();
    assert!(std::os::unix::fs::PermissionsExt::mode(&init.permissions()) & 0o111 != 0);
    let bb = fs::read(extracted.join("bin/busybox")).unwrap();
    let want = fs::read(unpacked_rootfs().join("usr/bin/busybox"))
        .or_else(|_| fs::read(unpacked_rootfs().join("bin/busybox")))
        .unwrap();
    assert!(bb == want, "busybox is the rootfs's");
    let list = fs::read_to_string(extracted.join("etc/nodeimg/modules")).unwrap();
    let names: Vec<String> = list
        .lines()
        .map(|l| {
            let base = l.rsplit('/').next().unwrap();
            base.split(".ko").next().unwrap().replace('-', "_")
        })
        .collect();
    for l in list.lines() {
        assert!(extracted.join(l).is_file(), "{l} listed and present");
    }
    let pos = |n: &str| names.iter().position(|x| x == n);
    let ext4 = pos("ext4").expect("ext4 loaded");
    // ext4 needs jbd2 and mbcache (modules.dep): they must come first.
    assert!(pos("jbd2").expect("jbd2 pulled in as a dependency") < ext4);
    assert!(pos("mbcache").expect("mbcache pulled in") < ext4);
    assert!(pos("squashfs").is_some());
}

#[test]
fn system_squashfs_is_exactly_the_merged_usr_tree() {
    let img = built_image("qemu-aarch64");
    let dir = scratch("squashfs");
    let part = extract_partition(&img, 2, &dir.join("system.squashfs"));
    let sb = stdout(&run_ok(Command::new("unsquashfs").arg("-s").arg(&part)));
    assert!(sb.contains("Compression zstd"), "{sb}");
    let out = dir.join("usr");
    run_ok(
        Command::new("unsquashfs")
            .arg("-no-progress")
            .arg("-quiet")
            .arg("-d")
            .arg(&out)
            .arg(&part),
    );
    // Expected: the rootfs's /usr plus its /etc under share/factory/etc plus
    // the base overlay's /etc/fstab (the test rootfs is already usr-merged).
    // Owners: the builder takes them from the tree, never from the user
    // running it: the tarball's numeric ids, and root:root (0:0) for what it
    // adds (share/factory, the overlay's files), so those are expected as
    // uid=0 gid=0 literally. Reading owners back from extracted files needs
    // extraction as root.
    let owners = owners_survive_extraction("system_squashfs_is_exactly_the_merged_usr_tree");
    let rootfs = unpacked_rootfs();
    let mut want = describe_tree(&rootfs.join("usr"));
    for (k, v) in describe_tree(&rootfs.join("etc")) {
        want.insert(format!("share/factory/etc/{k}"), v);
    }
    for d in ["share/factory", "share/factory/etc"] {
        want.entry(d.to_string())
            .or_insert_with(|| "dir mode=755 uid=0 gid=0".to_string());
    }
    let fstab = fs::read(repo().join("overlays/base/etc/fstab")).unwrap();
    {
        use sha2::{Digest, Sha256};
        want.insert(
            "share/factory/etc/fstab".to_string(),
            format!(
                "file {} mode=644 uid=0 gid=0",
                hex::encode(Sha256::digest(&fstab))
            ),
        );
    }
    let mut got = describe_tree(&out);
    if !owners {
        for v in want.values_mut().chain(got.values_mut()) {
            *v = without_owner(v);
        }
    }
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(10)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(10)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    let differ: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: want {v}, got {}", got[k]))
        .take(10)
        .collect();
    assert!(differ.is_empty(), "{differ:#?}");
}

#[test]
fn data_partition_is_clean_ext4() {
    for board in ["rpi4", "qemu-aarch64"] {
        let img = built_image(board);
        let dir = scratch(&format!("data-{board}"));
        let part = extract_partition(&img, 4, &dir.join("data.ext4"));
        run_ok(Command::new("e2fsck").arg("-fn").arg(&part));
        let ls = stdout(&run_ok(
            Command::new("debugfs").arg("-R").arg("ls -l /").arg(&part),
        ));
        for name in ["usr", "etc", "var", "root", "home", "bin"] {
            assert!(
                ls.split_whitespace().any(|w| w == name),
                "{board}: /{name} on the data partition: {ls}"
            );
        }
    }
}

#[test]
fn outputs_come_with_manifest_and_checksums() {
    let img = built_image("rpi4");
    let dir = img.parent().unwrap();
    assert_eq!(
        dir_names(dir),
        ["SHA256SUMS", "build.json", "rpi4.img", "rpi4.img.bmap"]
    );
    let sums = fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let check = run_ok(
        Command::new("sha256sum")
            .arg("--check")
            .arg("--strict")
            .arg("SHA256SUMS")
            .current_dir(dir),
    );
    assert!(stdout(&check).contains("rpi4.img.bmap: OK"), "{sums}");
    assert!(stdout(&check).contains("build.json: OK"), "{sums}");
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("build.json")).unwrap()).unwrap();
    // build.json names the map, with the SHA-256 SHA256SUMS has for it.
    let image_out = &m["outputs"][0];
    assert_eq!(image_out["file"], "rpi4.img");
    assert_eq!(image_out["size"], fs::metadata(&img).unwrap().len());
    assert_eq!(image_out["bmap"]["file"], "rpi4.img.bmap");
    let bmap_sha = image_out["bmap"]["sha256"].as_str().unwrap_or_default();
    assert!(
        bmap_sha.len() == 64 && sums.contains(&format!("{bmap_sha}  rpi4.img.bmap\n")),
        "{sums} vs {image_out}"
    );
    assert_eq!(m["board"], "rpi4");
    assert_eq!(m["source_date_epoch"], 1700000000);
    // The rootfs file's SHA-256, exactly: 64 lowercase hex digits equal to sha256sum's.
    let sha = m["rootfs"]["sha256"].as_str().unwrap_or_default();
    let want = stdout(&run_ok(Command::new("sha256sum").arg(test_rootfs())));
    let want = want.split_whitespace().next().unwrap_or_default();
    assert!(
        sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "rootfs hash recorded as 64 hex digits: {:?}",
        m["rootfs"]
    );
    assert_eq!(sha, want, "rootfs hash recorded");
    assert_eq!(m["disk"]["partitions"].as_array().unwrap().len(), 4);
    // No leftovers next to the output.
    let parent = dir.parent().unwrap();
    assert_eq!(dir_names(parent), ["rpi4"]);
}

/// Builds twice, seconds apart, from the same tree packed in a different file
/// order and compression: the images must be byte-identical.
#[test]
fn builds_are_reproducible_whatever_the_input_order() {
    let rootfs = unpacked_rootfs();
    let dir = scratch("repro");
    let list = stdout(&run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("find . | sort -r")
            .current_dir(rootfs),
    ));
    fs::write(dir.join("list"), list).unwrap();
    let reversed = dir.join("reversed.tar.gz");
    run_ok(
        Command::new("tar")
            .arg("-czf")
            .arg(&reversed)
            .arg("--no-recursion")
            .arg("--numeric-owner")
            .arg("-C")
            .arg(rootfs)
            .arg("-T")
            .arg(dir.join("list")),
    );
    let a = built_image("qemu-aarch64");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let out = dir.join("out");
    let b = build("qemu-aarch64", &reversed, &out, &[]);
    assert!(b.status.success(), "{}", stderr(&b));
    let b = out.join("qemu-aarch64/qemu-aarch64.img");
    let (a, b) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    assert_eq!(a.len(), b.len());
    let first_diff = a.iter().zip(&b).position(|(x, y)| x != y);
    assert_eq!(first_diff, None, "images differ at byte {first_diff:?}");
}

/// A failed build prints one line, exits 1, and leaves nothing in the output dir.
fn assert_clean_failure(out: &std::process::Output, outdir: &Path, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "exit code 1: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for n in needles {
        assert!(err.contains(n), "message names {n:?}: {err}");
    }
    assert!(
        dir_names(outdir).is_empty(),
        "left behind: {:?}",
        dir_names(outdir)
    );
}

#[test]
fn unknown_board_lists_the_boards() {
    let dir = scratch("err-board");
    let out = build("rpi5", &test_rootfs(), &dir, &[]);
    assert_clean_failure(
        &out,
        &dir,
        &["unknown board \"rpi5\"", "rpi4", "qemu-aarch64"],
    );
}

#[test]
fn rootfs_without_kernel_names_the_paths_tried() {
    let dir = scratch("err-kernel");
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(rootfs.join("usr/bin")).unwrap();
    fs::create_dir_all(rootfs.join("boot")).unwrap();
    let out = dir.join("out");
    fs::create_dir(&out).unwrap();
    let res = build("rpi4", &rootfs, &out, &[]);
    assert_clean_failure(
        &res,
        &out,
        &["no kernel found", "/boot/vmlinuz-*", "/boot/Image"],
    );
}

/// Through the cache (the squashfs a file of its own, checked before any
/// node's work) and without it (the squashfs written into the image while
/// the boot and data partitions are, checked once it is done).
#[test]
fn rootfs_larger_than_the_system_partition_gives_both_sizes() {
    let dir = scratch("err-size");
    // A copy of the data dir with a board whose system slot is tiny.
    let data = data_dir_with_board(&dir, "qemu-aarch64", |t| {
        t.replace("system_size = \"640M\"", "system_size = \"2M\"")
    });
    for (name, extra) in [("cached", None), ("uncached", Some("--no-cache"))] {
        let out = dir.join(name);
        fs::create_dir(&out).unwrap();
        let mut args = vec!["--data-dir", data.to_str().unwrap()];
        args.extend(extra);
        let res = build("qemu-aarch64", &test_rootfs(), &out, &args);
        assert_clean_failure(&res, &out, &["MiB but the system partition holds 2.0 MiB"]);
    }
}

/// Without the cache the boot partition is written while the squashfs is
/// compressed on another thread: a boot partition that cannot be written
/// is the one error, and the squashfs's writer, told to stop, leaves nothing.
#[test]
fn a_boot_partition_failing_beside_the_squashfs_is_the_one_error() {
    let dir = scratch("err-boot-beside");
    let data = data_dir_with_board(&dir, "rpi4", |t| {
        t.replace("boot_size = \"256M\"", "boot_size = \"16M\"")
    });
    let out = dir.join("out");
    fs::create_dir(&out).unwrap();
    let res = build(
        "rpi4",
        &test_rootfs(),
        &out,
        &["--data-dir", data.to_str().unwrap(), "--no-cache"],
    );
    assert_clean_failure(
        &res,
        &out,
        &[
            "writing the boot partition",
            "16 MiB FAT32 partition is too small",
        ],
    );
    assert!(!stderr(&res).contains("stopped"), "{}", stderr(&res));
}

#[test]
fn medium_too_small_for_the_layout_is_refused() {
    let dir = scratch("err-medium");
    let res = build("rpi4", &test_rootfs(), &dir, &["--size", "1G"]);
    assert_clean_failure(&res, &dir, &["--size"]);
}

/// The first half of a tarball of the test rootfs's `/boot` (`tar_args` pick
/// the compression), written to `dir/name`.
fn half_a_boot_tarball(dir: &Path, name: &str, tar_args: &[&str]) -> PathBuf {
    let tar = dir.join(format!("whole-{name}"));
    run_ok(
        Command::new("tar")
            .args(tar_args)
            .arg("-cf")
            .arg(&tar)
            .arg("--numeric-owner")
            .arg("-C")
            .arg(unpacked_rootfs())
            .arg("boot"),
    );
    let bytes = fs::read(&tar).unwrap();
    let cut = dir.join(name);
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    cut
}

#[test]
fn truncated_tarball_names_the_entry() {
    let dir = scratch("err-truncated");
    // Uncompressed, cut in the middle of the kernel image's data.
    let cut = half_a_boot_tarball(&dir, "cut.tar", &[]);
    let out = dir.join("out");
    fs::create_dir(&out).unwrap();
    let res = build("rpi4", &cut, &out, &[]);
    assert_clean_failure(&res, &out, &["cut.tar", "boot/"]);
}

/// A truncated compressed rootfs: one line, naming the file once (each
/// layer adds its own part: the build "reading rootfs PATH", the reader the
/// compression and the entry).
#[test]
fn truncated_zstd_tarball_is_one_line_naming_the_rootfs_once() {
    let dir = scratch("err-truncated-zst");
    let cut = half_a_boot_tarball(&dir, "trunc.tar.zst", &["--zstd"]);
    let out = dir.join("out");
    fs::create_dir(&out).unwrap();
    let res = build("rpi4", &cut, &out, &[]);
    assert_clean_failure(&res, &out, &["trunc.tar.zst", "zstd-compressed tar"]);
    let err = stderr(&res);
    assert_eq!(err.matches("reading rootfs").count(), 1, "{err}");
    assert_eq!(err.matches("trunc.tar.zst").count(), 1, "{err}");
}

#[test]
fn tar_entry_escaping_the_root_is_refused_by_name() {
    let dir = scratch("err-escape");
    let tar = dir.join("evil.tar");
    {
        let f = fs::File::create(&tar).unwrap();
        let mut b = tar::Builder::new(f);
        let mut h = tar::Header::new_gnu();
        let data = b"owned\n";
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses "..", so write the raw name field.
        let name = b"../../etc/cron.d/evil";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
        b.finish().unwrap();
    }
    let out = dir.join("out");
    fs::create_dir(&out).unwrap();
    let res = build("rpi4", &tar, &out, &[]);
    assert_clean_failure(&res, &out, &["../../etc/cron.d/evil"]);
}

#[test]
fn boards_lists_one_line_each() {
    let out = run_ok(nodeimg().arg("boards"));
    let text = stdout(&out);
    let names: Vec<&str> = text
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "oneplus-dumpling",
            "oneplus-enchilada",
            "oneplus-instantnoodlep",
            "qemu-aarch64",
            "qemu-aarch64-phone",
            "rpi4"
        ]
    );
}

/// The board's optional tools (sfdisk, resize2fs, e2fsck) are in the
/// initramfs with everything `readelf` says they load: the interpreter at its
/// PT_INTERP path and every DT_NEEDED library, recursively, in a directory
/// the aarch64 glibc loader searches without a cache; /etc/nodeimg/tools
/// lists them.
#[test]
fn initramfs_tools_come_with_their_interpreter_and_libraries() {
    /// `path` (absolute) resolved inside `root` as the kernel would there:
    /// symlinks followed, absolute targets from `root`. The canonical
    /// relative path of a regular file, or None.
    fn resolve_in(root: &Path, path: &str) -> Option<String> {
        let mut todo: Vec<String> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .rev()
            .map(str::to_string)
            .collect();
        let mut cur: Vec<String> = Vec::new();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            match c.as_str() {
                "." => continue,
                ".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            let here = root.join(cur.join("/")).join(&c);
            let md = fs::symlink_metadata(&here).ok()?;
            if md.file_type().is_symlink() {
                links += 1;
                if links > 40 {
                    return None;
                }
                let target = fs::read_link(&here).ok()?;
                let target = target.to_str()?.to_string();
                if target.starts_with('/') {
                    cur.clear();
                }
                todo.extend(
                    target
                        .split('/')
                        .filter(|c| !c.is_empty())
                        .rev()
                        .map(str::to_string),
                );
            } else if md.is_dir() {
                cur.push(c);
            } else if md.is_file() && todo.is_empty() {
                cur.push(c);
                return Some(cur.join("/"));
            } else {
                return None;
            }
        }
        None
    }
    fn readelf(flag: &str, file: &Path) -> String {
        stdout(&run_ok(
            Command::new("readelf").arg(flag).arg("-W").arg(file),
        ))
    }
    fn bracketed<'a>(text: &'a str, marker: &str) -> Vec<&'a str> {
        text.lines()
            .filter_map(|l| l.split_once(marker))
            .filter_map(|(_, rest)| rest.split(']').next())
            .collect()
    }

    let x = extract_initramfs(&built_image("qemu-aarch64"), &scratch("initramfs-tools"));

    let listed = fs::read_to_string(x.join("etc/nodeimg/tools")).unwrap();
    let tools: Vec<&str> = listed.lines().collect();
    for name in ["sfdisk", "resize2fs", "e2fsck"] {
        assert!(
            tools.iter().any(|t| t.rsplit('/').next() == Some(name)),
            "{name} in /etc/nodeimg/tools: {tools:?}"
        );
    }
    // Where the aarch64 glibc loader looks without /etc/ld.so.cache.
    let search = [
        "/lib/aarch64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/lib",
        "/usr/lib",
    ];
    assert!(
        !x.join("etc/ld.so.cache").exists(),
        "the Debian libraries need no cache"
    );
    let mut checked = std::collections::BTreeSet::new();
    let mut todo: Vec<String> = Vec::new();
    for t in &tools {
        let canon = resolve_in(&x, t).unwrap_or_else(|| panic!("{t} listed but not a file"));
        let mode = fs::metadata(x.join(&canon)).unwrap();
        assert!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o111 != 0);
        // The very bytes of the rootfs's program.
        let orig = fs::read(unpacked_rootfs().join(t.trim_start_matches('/'))).unwrap();
        assert!(
            fs::read(x.join(&canon)).unwrap() == orig,
            "{t} is the rootfs's"
        );
        let interp = readelf("-l", &x.join(&canon));
        let interp = bracketed(&interp, "Requesting program interpreter: ");
        assert_eq!(interp.len(), 1, "{t}: one PT_INTERP");
        assert!(
            resolve_in(&x, interp[0]).is_some(),
            "{t}: interpreter {} missing from the initramfs",
            interp[0]
        );
        todo.push(canon);
    }
    // Every DT_NEEDED of the tools and, recursively, of their libraries.
    let mut libs = 0;
    while let Some(file) = todo.pop() {
        if !checked.insert(file.clone()) {
            continue;
        }
        let d = readelf("-d", &x.join(&file));
        for name in bracketed(&d, "Shared library: [") {
            let found = search
                .iter()
                .find_map(|dir| resolve_in(&x, &format!("{dir}/{name}")))
                .unwrap_or_else(|| panic!("{name} (needed by /{file}) is not in the initramfs"));
            libs += 1;
            todo.push(found);
        }
    }
    assert!(
        checked.iter().any(|f| f.ends_with("libc.so.6")) && libs >= 10,
        "libraries checked: {checked:?}"
    );
    // The initramfs's own busybox directory is left alone.
    assert!(fs::symlink_metadata(x.join("bin")).unwrap().is_dir());
}

/// The ranges of a .bmap, read with plain string handling (not nodeimg's
/// reader): (image size, block size, [(first, last, sha256)]).
fn bmap_ranges(path: &Path) -> (u64, u64, Vec<(u64, u64, String)>) {
    let text = fs::read_to_string(path).unwrap();
    let field = |tag: &str| -> u64 {
        let open = format!("<{tag}>");
        let at = text.find(&open).unwrap_or_else(|| panic!("no {open}")) + open.len();
        let end = at + text[at..].find('<').unwrap();
        text[at..end].trim().parse().unwrap()
    };
    let ranges = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("<Range chksum=\""))
        .map(|l| {
            let (sum, rest) = l.split_once('"').unwrap();
            let span = rest.trim_start_matches('>').split('<').next().unwrap();
            let (a, b) = span.trim().split_once('-').unwrap();
            (
                a.trim().parse().unwrap(),
                b.trim().parse().unwrap(),
                sum.to_string(),
            )
        })
        .collect();
    (field("ImageSize"), field("BlockSize"), ranges)
}

/// Without a cache entry to fill, the squashfs is written straight into the
/// image's system partition (not copied there), and its block-map digest is
/// taken as it is written (not read back): the image is the cached build's,
/// byte for byte, and bmaptool verifies every range of its map.
#[test]
fn an_uncached_build_writes_the_same_image_in_place_and_bmaptool_verifies_it() {
    let cached = built_image("rpi4");
    let out = scratch("build-rpi4-uncached");
    run_ok(
        nodeimg()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .arg("build")
            .arg("rpi4")
            .arg("--rootfs")
            .arg(test_rootfs())
            .arg("--no-cache")
            .arg("-o")
            .arg(&out),
    );
    let img = out.join("rpi4").join("rpi4.img");
    run_ok(Command::new("cmp").arg(&cached).arg(&img));
    let leftovers: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "rpi4")
        .collect();
    assert!(
        leftovers.is_empty(),
        "left in the output directory: {leftovers:?}"
    );
    let copy = out.join("copy.img");
    run_ok(
        Command::new("bmaptool")
            .arg("copy")
            .arg("--bmap")
            .arg(img.with_file_name("rpi4.img.bmap"))
            .arg(&img)
            .arg(&copy),
    );
    run_ok(Command::new("cmp").arg(&img).arg(&copy));
    let _ = fs::remove_dir_all(&out);
}

/// A directory with the cache on is hashed through the memo of file digests
/// (its digest is the cache key); with `--no-cache` without it. Both give the
/// same rootfs digest in build.json, and the same image (the identifiers come
/// from those digests).
#[test]
fn a_directory_with_or_without_the_cache_gives_the_same_digest_and_image() {
    let out = scratch("build-dir-digests");
    let build = |name: &str, cache: Option<&Path>| {
        let dir = out.join(name);
        let mut cmd = nodeimg();
        cmd.env("SOURCE_DATE_EPOCH", "1700000000")
            .arg("build")
            .arg("rpi4")
            .arg("--rootfs")
            .arg(unpacked_rootfs())
            .arg("-o")
            .arg(&dir);
        match cache {
            // A cache of its own: a miss, so this build writes the squashfs.
            Some(c) => cmd.env("XDG_CACHE_HOME", c),
            None => cmd.arg("--no-cache"),
        };
        run_ok(&mut cmd);
        let dir = dir.join("rpi4");
        let m: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("build.json")).unwrap()).unwrap();
        (dir.join("rpi4.img"), m)
    };
    let (first_img, first) = build("hashed-first", Some(&out.join("cache")));
    let (while_img, while_) = build("while-compressed", None);
    assert_eq!(first["system_cache"], "miss", "{first}");
    assert_eq!(while_["system_cache"], "off", "{while_}");
    let digest = first["rootfs"]["tree_sha256"].as_str().unwrap_or_default();
    assert_eq!(digest.len(), 64, "{first}");
    assert_eq!(while_["rootfs"]["tree_sha256"], digest);
    run_ok(Command::new("cmp").arg(&first_img).arg(&while_img));
    let _ = fs::remove_dir_all(&out);
}

/// The image's content is checked independently of the map's own claims:
/// every range's SHA-256 recomputed from the image, the ranges covering the
/// tables and every partition's start, and bmaptool (the format's own tool)
/// accepting the map, verifying every range and writing the same bytes.
#[test]
fn bmap_checksums_match_the_image_and_bmaptool_copies_it() {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Seek, SeekFrom};
    for board in ["rpi4", "qemu-aarch64"] {
        let img = built_image(board);
        let bmap = img.with_file_name(format!("{board}.img.bmap"));
        let (size, bs, ranges) = bmap_ranges(&bmap);
        assert_eq!(size, fs::metadata(&img).unwrap().len(), "{board}");
        assert_eq!(bs, 4096);
        assert!(!ranges.is_empty());
        let mut f = fs::File::open(&img).unwrap();
        let mut mapped = 0u64;
        for (first, last, sum) in &ranges {
            let (s, e) = (first * bs, ((last + 1) * bs).min(size));
            let mut buf = vec![0u8; (e - s) as usize];
            f.seek(SeekFrom::Start(s)).unwrap();
            f.read_exact(&mut buf).unwrap();
            assert_eq!(
                &hex::encode(Sha256::digest(&buf)),
                sum,
                "{board}: blocks {first}-{last}"
            );
            mapped += e - s;
        }
        let covered = |off: u64| {
            ranges
                .iter()
                .any(|(a, b, _)| a * bs <= off && off < (b + 1) * bs)
        };
        assert!(covered(0), "{board}: the table is not mapped");
        // Boot, system A and data hold data; slot B is empty until an update.
        let table = sfdisk(&img);
        for i in [0, 1, 3] {
            let p = &table.partitions[i];
            assert!(
                covered(p.start * table.sector_size),
                "{board}: the start of {} is not mapped",
                p.node
            );
        }
        // A small part of the 2 GiB image.
        assert!(
            mapped < size / 2,
            "{board}: {mapped} of {size} bytes mapped"
        );

        let scratch_dir = scratch(&format!("bmaptool-{board}"));
        let copy = scratch_dir.join("copy.img");
        run_ok(
            Command::new("bmaptool")
                .arg("copy")
                .arg("--bmap")
                .arg(&bmap)
                .arg(&img)
                .arg(&copy),
        );
        run_ok(Command::new("cmp").arg(&img).arg(&copy));
        let _ = fs::remove_dir_all(&scratch_dir);
    }
}
