//! Phone builds (`[android]` boards): boot.img read back by AOSP's
//! `unpack_bootimg`, the sparse rootfs pieces turned back into the disk by
//! `simg2img`, its 4096-byte-sector GPT read by util-linux `fdisk -b 4096`,
//! its squashfs by `unsquashfs` and its ext4 by `e2fsck`; two builds
//! byte-identical; and the QEMU phone board booted from boot.img and the
//! expanded rootfs by `nodeimg boot-test`.
//!
//! The rootfs is the test rootfs plus what a phone build needs from the same
//! pinned Debian kernel package that make-rootfs.sh trims away: the `loop`
//! module (the init maps the partitions inside userdata through loop
//! devices) and the OnePlus 6 and 5T device trees. Debian has no OnePlus 8
//! Pro tree, so a stand-in (Debian's sm8250-hdk.dtb) is put where
//! postmarketOS installs its trees, /boot/dtbs/qcom/, which also exercises
//! that place of the search list.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;
use sha2::{Digest, Sha256};

/// The test rootfs (unpacked) plus the loop module and the phones' dtbs.
fn phone_rootfs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("phone-rootfs");
        let root = dir.join("rootfs");
        fs::create_dir(&root).unwrap();
        let mut tar = Command::new("tar");
        tar.arg("--zstd").arg("--numeric-owner");
        if running_as_root() {
            tar.arg("--same-owner");
        }
        run_ok(tar.arg("-xpf").arg(test_rootfs()).arg("-C").arg(&root));
        let kver = fs::read_dir(root.join("usr/lib/modules"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .next()
            .expect("a kernel in the test rootfs");
        let deb = kernel_deb(&kver);
        let x = dir.join("deb");
        fs::create_dir(&x).unwrap();
        let loop_ko = format!("./lib/modules/{kver}/kernel/drivers/block/loop.ko.xz");
        let dtbs = format!("./usr/lib/linux-image-{kver}/qcom");
        let wanted = [
            loop_ko.clone(),
            format!("{dtbs}/sdm845-oneplus-enchilada.dtb"),
            format!("{dtbs}/msm8998-oneplus-dumpling.dtb"),
            format!("{dtbs}/sm8250-hdk.dtb"),
        ];
        run_ok(Command::new("sh").arg("-c").arg(format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' {}",
            deb.display(),
            x.display(),
            wanted
                .iter()
                .map(|w| format!("'{w}'"))
                .collect::<Vec<_>>()
                .join(" ")
        )));
        let copy = |from: &str, to: &str| {
            let to = root.join(to);
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::copy(x.join(from), &to).unwrap();
        };
        copy(
            &loop_ko,
            &format!("usr/lib/modules/{kver}/kernel/drivers/block/loop.ko.xz"),
        );
        for d in [
            "sdm845-oneplus-enchilada.dtb",
            "msm8998-oneplus-dumpling.dtb",
        ] {
            copy(
                &format!("{dtbs}/{d}"),
                &format!("usr/lib/linux-image-{kver}/qcom/{d}"),
            );
        }
        copy(
            &format!("{dtbs}/sm8250-hdk.dtb"),
            "boot/dtbs/qcom/sm8250-oneplus-instantnoodlep.dtb",
        );
        run_ok(Command::new("depmod").arg("-b").arg(&root).arg(&kver));
        root
    })
}

/// The pinned kernel package make-rootfs.sh unpacked (it keeps its downloads).
fn kernel_deb(kver: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(c) = std::env::var_os("NODEIMG_TEST_CACHE") {
        dirs.push(PathBuf::from(c).join("debs"));
    }
    if let Some(images) = test_rootfs().parent().and_then(Path::parent) {
        dirs.push(images.join("cache/debs"));
    }
    dirs.push(repo().join("test-images/cache/debs"));
    let prefix = format!("linux-image-{kver}_");
    dirs.iter()
        .filter_map(|d| fs::read_dir(d).ok())
        .flatten()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with("_arm64.deb"))
        })
        .unwrap_or_else(|| {
            panic!(
                "no {prefix}*_arm64.deb in {dirs:?}: test-images/make-rootfs.sh keeps it in its cache"
            )
        })
}

fn write_cluster(dir: &Path, node: &str) -> PathBuf {
    fs::write(
        dir.join("token"),
        format!("K10{}::node:phone-test-secret-77aa\n", "c0ffee00".repeat(8)),
    )
    .unwrap();
    let cfg = dir.join("cluster.yaml");
    fs::write(
        &cfg,
        format!(
            "server: https://10.0.2.2:6443\ntoken_file: token\nnode_name: {node}\n\
             k3s:\n  source: file\n  path: {}\n",
            repo().join("test-images/k3s-standin").display()
        ),
    )
    .unwrap();
    cfg
}

fn build_phone(board: &str, dir: &Path, extra: &[&str]) -> PathBuf {
    let out = dir.join("out");
    let res = build(board, phone_rootfs(), &out, extra);
    assert!(res.status.success(), "{board}: {}", stderr(&res));
    assert_eq!(
        stdout(&res).trim(),
        out.join(board).join("boot.img").display().to_string()
    );
    out.join(board)
}

/// The first gzip member of `data`, decompressed, and what follows it.
fn gunzip_member(data: &[u8]) -> (Vec<u8>, &[u8]) {
    use std::io::Read;
    let mut gz = flate2::bufread::GzDecoder::new(data);
    let mut out = Vec::new();
    gz.read_to_end(&mut out).unwrap();
    (out, gz.into_inner())
}

/// `unpack_bootimg`'s report: "key: value" lines.
fn unpack_bootimg(boot: &Path, to: &Path) -> Vec<(String, String)> {
    let out = run_ok(
        Command::new("unpack_bootimg")
            .arg("--boot_img")
            .arg(boot)
            .arg("--out")
            .arg(to),
    );
    stdout(&out)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn field<'a>(info: &'a [(String, String)], key: &str) -> &'a str {
    info.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("unpack_bootimg printed no {key:?}: {info:?}"))
}

fn hex_field(info: &[(String, String)], key: &str) -> u64 {
    let v = field(info, key);
    u64::from_str_radix(v.trim_start_matches("0x"), 16)
        .unwrap_or_else(|_| panic!("{key}: {v:?} is not hex"))
}

/// The board's `[android]` section, as the test reads the board file.
fn android_of(board: &str) -> toml::Value {
    let text = fs::read_to_string(repo().join(format!("boards/{board}.toml"))).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    v["android"].clone()
}

fn int(v: &toml::Value, key: &str) -> u64 {
    v.get(key)
        .and_then(toml::Value::as_integer)
        .map_or(0, |i| u64::try_from(i).unwrap())
}

/// The outputs of one phone build checked with the field's tools.
fn check_outputs(board: &str, out: &Path, work: &Path, node: &str) {
    let android = android_of(board);
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("build.json")).unwrap()).unwrap();
    assert_eq!(manifest["board"], board);
    let cmdline = manifest["kernel"]["cmdline"].as_str().unwrap().to_string();
    assert!(
        cmdline.contains("nodeimg.sector=4096 nodeimg.system=1 nodeimg.data=3")
            && !cmdline.contains("nodeimg.boot="),
        "{cmdline}"
    );

    // boot.img, read by AOSP's unpack_bootimg.
    let boot = out.join("boot.img");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&boot).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{board}: boot.img holds the join token");
    }
    let unpacked = work.join("unpacked");
    let info = unpack_bootimg(&boot, &unpacked);
    let version = int(&android, "header_version");
    assert_eq!(
        field(&info, "boot image header version"),
        version.to_string()
    );
    assert_eq!(
        field(&info, "page size"),
        int(&android, "page_size").to_string()
    );
    let base = int(&android, "base");
    for (key, off) in [
        ("kernel load address", "kernel_offset"),
        ("ramdisk load address", "ramdisk_offset"),
        ("kernel tags load address", "tags_offset"),
    ] {
        assert_eq!(
            hex_field(&info, key),
            base + int(&android, off),
            "{board}: {key}"
        );
    }
    assert_eq!(
        format!(
            "{}{}",
            field(&info, "command line args"),
            info.iter()
                .find(|(k, _)| k == "additional command line args")
                .map_or("", |(_, v)| v.as_str())
        ),
        cmdline
    );
    // The kernel, with the dtb appended where the board says so.
    let rootfs = phone_rootfs();
    let kernel_path = manifest["kernel"]["path"].as_str().unwrap();
    let mut want_kernel = fs::read(rootfs.join(kernel_path.trim_start_matches('/'))).unwrap();
    let dtb = android.get("dtb").and_then(toml::Value::as_str).map(|d| {
        let pmos = rootfs.join("boot/dtbs").join(d);
        let debian = rootfs
            .join("usr/lib")
            .join(format!(
                "linux-image-{}",
                manifest["kernel"]["release"].as_str().unwrap()
            ))
            .join(d);
        fs::read(if pmos.is_file() { pmos } else { debian }).unwrap()
    });
    if android.get("append_dtb").and_then(toml::Value::as_bool) == Some(true) {
        want_kernel.extend(dtb.as_ref().unwrap());
    }
    assert!(
        fs::read(unpacked.join("kernel")).unwrap() == want_kernel,
        "{board}: the kernel in boot.img"
    );
    if version == 2 {
        assert_eq!(
            hex_field(&info, "dtb address"),
            base + int(&android, "dtb_offset")
        );
        assert!(
            fs::read(unpacked.join("dtb")).unwrap() == dtb.unwrap(),
            "{board}: the dtb section"
        );
    }
    // The ramdisk: our initramfs, then the node's config as a second gzip'd
    // archive, listed by GNU cpio.
    let ramdisk = fs::read(unpacked.join("ramdisk")).unwrap();
    let (first, rest) = gunzip_member(&ramdisk);
    assert!(first.starts_with(b"070701"), "{board}: the initramfs");
    let (node_cpio, rest) = gunzip_member(rest);
    assert!(
        rest.is_empty(),
        "{board}: {} bytes after the node config",
        rest.len()
    );
    let listed = work.join("node.cpio");
    fs::write(&listed, node_cpio).unwrap();
    let listing = stdout(&run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("cpio -itv --quiet < '{}'", listed.display())),
    ));
    for (file, mode) in [
        ("node.env", "-rw-r--r--"),
        ("k3s-config.yaml", "-rw-------"),
        ("token", "-rw-------"),
    ] {
        let path = format!("etc/nodeimg/boot/nodeimg/{file}");
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(&path)),
            "{board}: {path} {mode} in\n{listing}"
        );
    }
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("drwx------") && l.ends_with(" etc/nodeimg/boot")),
        "{listing}"
    );
    let env = stdout(&run_ok(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && cpio -i --quiet --to-stdout etc/nodeimg/boot/nodeimg/node.env < node.cpio",
        work.display()
    ))));
    assert!(env.contains(&format!("NODEIMG_HOSTNAME='{node}'")), "{env}");

    // The rootfs pieces: each within the maximum download size, together
    // the disk with its 4096-byte-sector GPT.
    let max = int(&android, "max_download_size");
    let pieces: Vec<PathBuf> = manifest["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["file"].as_str().unwrap())
        .filter(|f| f.starts_with("rootfs.img"))
        .map(|f| out.join(f))
        .collect();
    assert!(!pieces.is_empty());
    for p in &pieces {
        let len = fs::metadata(p).unwrap().len();
        assert!(len <= max, "{}: {len} bytes > {max}", p.display());
    }
    let raw = work.join("userdata.raw");
    // simg2img writes each piece over the one before (their DONT_CARE
    // chunks leave what the others wrote).
    run_ok(Command::new("simg2img").args(&pieces).arg(&raw));
    let fdisk = stdout(&run_ok(
        Command::new("fdisk")
            .args(["-l", "-b", "4096", "-o", "Device,Start,Sectors,Name"])
            .arg(&raw),
    ));
    let parts: Vec<Vec<&str>> = fdisk
        .lines()
        .skip_while(|l| !l.starts_with("Device"))
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .filter(|f: &Vec<&str>| f.len() == 4)
        .collect();
    let names: Vec<&str> = parts.iter().map(|f| f[3]).collect();
    assert_eq!(names, ["system_a", "system_b", "data"], "{fdisk}");
    assert!(
        fdisk.contains("Sector size (logical/physical): 4096 bytes"),
        "{fdisk}"
    );
    let disk_id = manifest["disk"]["id"].as_str().unwrap();
    assert!(
        fdisk
            .to_lowercase()
            .contains(&format!("disk identifier: {}", &disk_id[4..])),
        "{disk_id}: {fdisk}"
    );
    let span = |f: &Vec<&str>| -> (u64, u64) {
        (
            f[1].parse::<u64>().unwrap() * 4096,
            f[2].parse::<u64>().unwrap() * 4096,
        )
    };
    let cut = |(start, size): (u64, u64), name: &str| {
        let p = work.join(name);
        run_ok(Command::new("dd").args([
            format!("if={}", raw.display()),
            format!("of={}", p.display()),
            "bs=1M".into(),
            format!("skip={}", start >> 20),
            format!("count={}", size >> 20),
            "conv=sparse".into(),
            "status=none".into(),
        ]));
        p
    };
    let system = cut(span(&parts[0]), "system.sqfs");
    let ls = stdout(&run_ok(Command::new("unsquashfs").arg("-l").arg(&system)));
    assert!(ls.contains("squashfs-root/share/factory/etc"), "{board}");
    assert!(
        ls.contains("squashfs-root/share/factory/etc/nftables.d/50_nodeimg_k3s.nft"),
        "{board}: the postmarketOS nftables drop-in"
    );
    let data = cut(span(&parts[2]), "data.ext4");
    run_ok(Command::new("e2fsck").args(["-fn"]).arg(&data));
    // simg2img writes every byte: do not keep gigabytes per board around.
    for f in [&raw, &system, &data] {
        fs::remove_file(f).unwrap();
    }

    // `nodeimg flash --fastboot` takes the build as it is.
    let plan = stdout(&run_ok(
        nodeimg()
            .arg("flash")
            .arg("--fastboot")
            .arg(out)
            .arg("--dry-run"),
    ));
    let flash: Vec<&str> = plan
        .lines()
        .filter(|l| l.starts_with("fastboot flash"))
        .collect();
    let mut want = vec![format!("fastboot flash boot {}", boot.display())];
    for p in &pieces {
        want.push(format!("fastboot flash userdata {}", p.display()));
    }
    assert_eq!(flash, want, "{plan}");

    // SHA256SUMS names every output.
    let sums = fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    for p in pieces.iter().chain([&boot, &out.join("build.json")]) {
        let sha = hex::encode(Sha256::digest(fs::read(p).unwrap()));
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(sums.contains(&format!("{sha}  {name}\n")), "{name}: {sums}");
    }
}

#[test]
fn each_phone_board_builds_a_boot_img_and_a_sparse_rootfs_the_tools_read() {
    for (board, node, pieces) in [
        ("oneplus-enchilada", "op6", Some(1)),
        ("oneplus-dumpling", "op5t", Some(1)),
        ("oneplus-instantnoodlep", "op8pro", Some(1)),
        ("qemu-aarch64-phone", "virt", None),
    ] {
        let dir = scratch(&format!("phone-{board}"));
        let cfg = write_cluster(&dir, node);
        // Small (the least the system slots leave room for): simg2img
        // writes the whole disk out.
        let out = build_phone(
            board,
            &dir,
            &["--join", cfg.to_str().unwrap(), "--size", "1400M"],
        );
        check_outputs(board, &out, &dir, node);
        let n = fs::read_dir(&out)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("rootfs.img")
            })
            .count();
        match pieces {
            Some(want) => assert_eq!(n, want, "{board}"),
            // 16 MiB pieces: the test rootfs's system image alone is larger.
            None => assert!(n >= 2, "{board}: {n} pieces"),
        }
    }
}

#[test]
fn two_phone_builds_are_byte_identical() {
    let a = scratch("phone-repro-a");
    let b = scratch("phone-repro-b");
    // Both without the system cache: build.json records whether it was used.
    let out_a = build_phone("qemu-aarch64-phone", &a, &["--no-cache"]);
    let out_b = build_phone("qemu-aarch64-phone", &b, &["--no-cache"]);
    let names = dir_names(&out_a);
    assert_eq!(names, dir_names(&out_b));
    assert!(names.iter().any(|n| n == "boot.img"), "{names:?}");
    for n in &names {
        assert!(
            fs::read(out_a.join(n)).unwrap() == fs::read(out_b.join(n)).unwrap(),
            "{n} differs"
        );
    }
}

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

#[test]
fn the_qemu_phone_boots_from_its_boot_img_and_rootfs_as_an_immutable_portable_node() {
    let dir = scratch("phone-boot");
    let cfg = write_cluster(&dir, "phone-7");
    let out = build_phone(
        "qemu-aarch64-phone",
        &dir,
        &["--join", cfg.to_str().unwrap()],
    );
    let res = run(nodeimg()
        .arg("boot-test")
        .arg(&out)
        .arg("--broken")
        // The machine is shared with other builds (TCG is slow under load);
        // an unloaded first boot takes about 12 s.
        .args(["--timeout", "120"])
        .arg("--work-dir")
        .arg(dir.join("work")));
    let text = stdout(&res);
    let log = fs::read_to_string(dir.join("work/console.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    for check in CHECKS {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("PASS {check}:"))),
            "check {check:?} did not pass:\n{text}\n{}\nconsole:\n{}",
            stderr(&res),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    assert!(res.status.success(), "{text}\n{}", stderr(&res));
    // The node config inside boot.img named the node.
    assert!(text.contains("hostname=phone-7,"), "{text}");
    assert!(
        log.contains("node config: the initramfs's /etc/nodeimg/boot/nodeimg"),
        "the config came from the initramfs"
    );
    assert!(
        log.contains("inner disk: system partition 1 on /dev/loop"),
        "the init mapped the partitions inside the disk"
    );
    assert!(
        !log.contains("phone-test-secret-77aa"),
        "the console shows the token"
    );
}

#[test]
fn boot_test_names_what_a_phone_output_directory_lacks() {
    let dir = scratch("phone-boot-bad");
    // A directory that is not a phone build.
    let res = run(nodeimg().arg("boot-test").arg(&dir));
    assert_eq!(res.status.code(), Some(1));
    let err = stderr(&res);
    assert!(err.contains("without a boot.img"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // A phone build whose rootfs image is gone.
    let out = build_phone("qemu-aarch64-phone", &dir, &[]);
    for e in fs::read_dir(&out).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("rootfs.img")
        {
            fs::remove_file(p).unwrap();
        }
    }
    let res = run(nodeimg().arg("boot-test").arg(out.join("boot.img")));
    assert_eq!(res.status.code(), Some(1));
    let err = stderr(&res);
    assert!(err.contains("no rootfs.img"), "{err}");
}
