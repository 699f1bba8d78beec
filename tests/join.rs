//! `nodeimg build --join`: the node config baked into the boot partition, k3s
//! and its service in the system image, one image per inventory node, the
//! kernel check, and the join token kept out of everything but the node's own files.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const PASSWORD: &str = "s3cr3t-join-password-d41d8cd9";
/// The Wi-Fi passphrase, a secret like the token.
const WIFI_PSK: &str = "wifi-s3cr3t-8f14e45f";

fn token() -> String {
    format!("K10{}::server:{PASSWORD}", "ab12".repeat(16))
}

/// A stand-in k3s for builds that are not booted (the booted one is test-images/k3s-standin).
fn fake_k3s(dir: &Path) -> PathBuf {
    let p = dir.join("k3s-fake");
    fs::write(
        &p,
        "#!/bin/sh\n# stand-in k3s for tests\necho k3s-fake \"$@\"\n",
    )
    .unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn cluster_yaml(dir: &Path, k3s: &Path, extra: &str) -> PathBuf {
    fs::write(dir.join("node-token"), format!("{}\n", token())).unwrap();
    let p = dir.join("cluster.yaml");
    fs::write(
        &p,
        format!(
            "server: https://10.0.0.1:6443\n\
             token_file: node-token\n\
             labels:\n  site: home\n\
             taints:\n  - dedicated=edge:NoSchedule\n\
             k3s:\n  source: file\n  path: {}\n{extra}",
            k3s.display()
        ),
    )
    .unwrap();
    p
}

fn mcopy(part: &Path, name: &str) -> Vec<u8> {
    run_ok(
        Command::new("mcopy")
            .args(["-n", "-i"])
            .arg(part)
            .arg(format!("::{name}"))
            .arg("-"),
    )
    .stdout
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every place under `root` (not following symlinks) that holds `needle`:
/// a file's content, a symlink's target or a name, as `label/relative path`.
/// A gzip'd file is searched decompressed too (`label/path (gunzipped)`),
/// and one that is a newc cpio archive (an initramfs) is unpacked with GNU
/// cpio into `work` and searched, as `label/path!/inner path`.
fn places_holding(root: &Path, needle: &[u8], label: &str, work: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let here = format!("{label}/{rel}");
            if contains(rel.as_bytes(), needle) {
                found.push(format!("{here} (name)"));
            }
            let ft = fs::symlink_metadata(&p).unwrap().file_type();
            if ft.is_symlink() {
                let target = fs::read_link(&p).unwrap();
                if contains(target.as_os_str().as_encoded_bytes(), needle) {
                    found.push(format!("{here} (link target)"));
                }
            } else if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let bytes = fs::read(&p).unwrap();
                if contains(&bytes, needle) {
                    found.push(here.clone());
                }
                let Some(plain) = gunzip(&bytes) else {
                    continue;
                };
                if plain.starts_with(b"070701") {
                    let x = unpack_cpio(&plain, &work.join(rel.replace('/', "_")));
                    found.extend(places_holding(
                        &x,
                        needle,
                        &format!("{here}!"),
                        &x.with_extension("work"),
                    ));
                } else if contains(&plain, needle) {
                    found.push(format!("{here} (gunzipped)"));
                }
            }
        }
    }
    found.sort();
    found
}

/// `bytes` decompressed, if they are gzip data.
fn gunzip(bytes: &[u8]) -> Option<Vec<u8>> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return None;
    }
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(bytes), &mut plain).ok()?;
    Some(plain)
}

/// Unpacks a newc cpio archive with GNU cpio into a fresh directory under
/// `work` and returns that directory.
fn unpack_cpio(plain: &[u8], work: &Path) -> PathBuf {
    let x = work.join("root");
    fs::create_dir_all(&x).unwrap();
    fs::write(work.join("archive.cpio"), plain).unwrap();
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("cpio -idm --quiet --no-absolute-filenames < ../archive.cpio")
            .current_dir(&x),
    );
    x
}

/// Where `needle` is in `img` (a four-partition image) apart from the boot
/// partition's `nodeimg/token`: every file of the boot partition (the
/// initramfs unpacked), of the system squashfs (unsquashfs) and of the data
/// ext4 (debugfs rdump), and the raw bytes of the reserved slot and of the
/// data partition (free blocks, journal).
fn token_outside_its_file(img: &Path, needle: &[u8], dir: &Path) -> Vec<String> {
    secret_outside(img, needle, "boot/nodeimg/token", dir)
}

/// Where `needle` is in the image other than the boot partition's file `allowed`.
fn secret_outside(img: &Path, needle: &[u8], allowed: &str, dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let p1 = extract_partition(img, 1, &dir.join("p1"));
    let boot = dir.join("boot");
    fs::create_dir(&boot).unwrap();
    run_ok(
        Command::new("mcopy")
            .args(["-s", "-n", "-i"])
            .arg(&p1)
            .arg("::*")
            .arg(&boot),
    );
    assert!(
        boot.join("initrd.img").is_file() || boot.join("slot-a/initrd.img").is_file(),
        "boot files copied out"
    );
    found.extend(
        places_holding(&boot, needle, "boot", &dir.join("boot-work"))
            .into_iter()
            .filter(|p| p != allowed),
    );
    let p2 = extract_partition(img, 2, &dir.join("p2"));
    let usr = dir.join("system");
    run_ok(
        Command::new("unsquashfs")
            .args(["-no-progress", "-quiet", "-d"])
            .arg(&usr)
            .arg(&p2),
    );
    assert!(usr.join("bin").is_dir(), "system image unpacked");
    found.extend(places_holding(
        &usr,
        needle,
        "system",
        &dir.join("system-work"),
    ));
    let p3 = extract_partition(img, 3, &dir.join("p3"));
    if contains(&fs::read(&p3).unwrap(), needle) {
        found.push("partition 3 (raw)".into());
    }
    let p4 = extract_partition(img, 4, &dir.join("p4"));
    if contains(&fs::read(&p4).unwrap(), needle) {
        found.push("partition 4 (raw)".into());
    }
    let data = dir.join("data");
    fs::create_dir(&data).unwrap();
    run_ok(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("rdump / {}", data.display()))
            .arg(&p4),
    );
    found.extend(places_holding(
        &data,
        needle,
        "data",
        &dir.join("data-work"),
    ));
    found
}

/// The scanner finds what it is meant to find: a token planted in a file, a
/// link target and a name, a gzip'd file, a gzip'd cpio (an initramfs), and
/// a squashfs unpacked the way the image's system partition is.
#[test]
fn the_token_scan_finds_a_planted_token() {
    let dir = scratch("join-scan-self-check");
    let tree = dir.join("tree");
    fs::create_dir_all(tree.join("a/b")).unwrap();
    fs::write(tree.join("clean"), "nothing here\n").unwrap();
    fs::write(tree.join("a/b/conf"), format!("x=1\ntoken={}\n", token())).unwrap();
    std::os::unix::fs::symlink(format!("/run/{PASSWORD}"), tree.join("a/link")).unwrap();
    fs::write(tree.join(format!("a/{PASSWORD}")), "").unwrap();
    // An initramfs holding it.
    let ird = dir.join("ird");
    fs::create_dir_all(ird.join("etc")).unwrap();
    // Compressible, so that squashfs stores it compressed.
    let leak = format!("{}\n{}", token(), "filler ".repeat(1000));
    fs::write(ird.join("etc/leak"), leak).unwrap();
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("find . | cpio -o -H newc --quiet | gzip -n > ../tree/initrd.img")
            .current_dir(&ird),
    );
    // A gzip'd file (like /usr/share/doc/*/changelog.gz) holding it.
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("gzip -n < b/conf > b/conf.gz")
            .current_dir(tree.join("a")),
    );
    let found = places_holding(&tree, PASSWORD.as_bytes(), "t", &dir.join("work"));
    assert_eq!(
        found,
        [
            "t/a/b/conf".to_string(),
            "t/a/b/conf.gz (gunzipped)".to_string(),
            "t/a/link (link target)".to_string(),
            format!("t/a/{PASSWORD} (name)"),
            "t/initrd.img!/etc/leak".to_string(),
        ],
    );
    // A squashfs holding it, read back as the system partition is.
    let sq = dir.join("planted.squashfs");
    run_ok(Command::new("mksquashfs").arg(&ird).arg(&sq).args([
        "-comp",
        "zstd",
        "-no-progress",
        "-quiet",
    ]));
    assert!(
        !contains(&fs::read(&sq).unwrap(), PASSWORD.as_bytes()),
        "compressed: not in the raw bytes"
    );
    let usr = dir.join("sq");
    run_ok(
        Command::new("unsquashfs")
            .args(["-no-progress", "-quiet", "-d"])
            .arg(&usr)
            .arg(&sq),
    );
    assert_eq!(
        places_holding(&usr, PASSWORD.as_bytes(), "system", &dir.join("w2")),
        ["system/etc/leak"]
    );
}

#[test]
fn the_token_is_only_in_the_node_files_and_every_file_holding_it_is_0600() {
    let dir = scratch("join-secret");
    let k3s = fake_k3s(&dir);
    let cfg = cluster_yaml(
        &dir,
        &k3s,
        &format!("node_name: pi-1\nwifi:\n  ssid: lan\n  psk: \"{WIFI_PSK}\"\n  country: DE\n"),
    );
    let (out, res) = build_joined("rpi4", &dir, &cfg, &[]);
    assert!(res.status.success(), "{}", stderr(&res));
    let printed = format!("{}{}", stdout(&res), stderr(&res));
    assert!(!printed.contains(PASSWORD), "printed: {printed}");
    assert!(!printed.contains(WIFI_PSK), "printed: {printed}");

    let o = out.join("rpi4");
    for f in ["build.json", "SHA256SUMS"] {
        let bytes = fs::read(o.join(f)).unwrap();
        assert!(
            !contains(&bytes, PASSWORD.as_bytes()),
            "{f} holds the token"
        );
        assert!(!contains(&bytes, WIFI_PSK.as_bytes()), "{f} holds the psk");
    }
    let img = o.join("rpi4.img");
    let mode = fs::metadata(&img).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the image holds the token");
    // Exactly where it belongs: nodeimg/token on the boot partition, nowhere else
    // (every file of every partition unpacked, the initramfs included).
    let p1 = extract_partition(&img, 1, &dir.join("p1"));
    assert_eq!(
        mcopy(&p1, "nodeimg/token"),
        format!("{}\n", token()).into_bytes()
    );
    let scan = dir.join("scan");
    fs::create_dir(&scan).unwrap();
    let leaks = token_outside_its_file(&img, PASSWORD.as_bytes(), &scan);
    assert!(leaks.is_empty(), "the token is also in: {leaks:?}");
    // The Wi-Fi psk likewise: only in nodeimg/wifi.conf.
    let wifi = String::from_utf8(mcopy(&p1, "nodeimg/wifi.conf")).unwrap();
    assert!(wifi.contains(&format!("\tpsk=\"{WIFI_PSK}\"\n")), "{wifi}");
    let scan = dir.join("scan-psk");
    fs::create_dir(&scan).unwrap();
    let leaks = secret_outside(&img, WIFI_PSK.as_bytes(), "boot/nodeimg/wifi.conf", &scan);
    assert!(leaks.is_empty(), "the psk is also in: {leaks:?}");
    let cfg = String::from_utf8(mcopy(&p1, "nodeimg/k3s-config.yaml")).unwrap();
    assert!(
        cfg.contains("token-file: \"/etc/rancher/k3s/nodeimg-token\""),
        "{cfg}"
    );
    assert!(cfg.contains("server: \"https://10.0.0.1:6443\""), "{cfg}");
    assert!(cfg.contains("node-name: \"pi-1\""), "{cfg}");
    assert!(!cfg.contains(PASSWORD));
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(o.join("build.json")).unwrap()).unwrap();
    assert_eq!(m["node"]["name"], "pi-1");
    assert_eq!(m["k3s"]["init_system"], "busybox init");
}

#[test]
fn bad_cluster_yaml_gets_one_line_with_the_line_number_and_no_token() {
    let dir = scratch("join-bad");
    let k3s = fake_k3s(&dir);
    let cfg = dir.join("cluster.yaml");
    fs::write(
        &cfg,
        format!(
            "server: https://10.0.0.1:6443\ntoken: {}\nlables:\n  a: b\nk3s:\n  source: file\n  path: {}\n",
            token(),
            k3s.display()
        ),
    )
    .unwrap();
    let (out, res) = build_joined("rpi4", &dir, &cfg, &[]);
    let err = stderr(&res);
    assert_eq!(res.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains(":3:") && err.contains("\"lables\"") && err.contains("\"labels\""),
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "{err}");
    assert!(dir_names(&out).is_empty());
}

#[test]
fn k3s_binary_and_its_service_are_in_the_system_image() {
    let dir = scratch("join-k3s");
    let k3s = fake_k3s(&dir);
    let cfg = cluster_yaml(&dir, &k3s, "");
    let (out, res) = build_joined("qemu-aarch64", &dir, &cfg, &[]);
    assert!(res.status.success(), "{}", stderr(&res));
    let img = out.join("qemu-aarch64/qemu-aarch64.img");
    let p2 = extract_partition(&img, 2, &dir.join("p2"));
    let usr = dir.join("usr");
    run_ok(
        Command::new("unsquashfs")
            .args(["-no-progress", "-quiet", "-d"])
            .arg(&usr)
            .arg(&p2),
    );
    assert_eq!(
        fs::read(usr.join("bin/k3s")).unwrap(),
        fs::read(&k3s).unwrap()
    );
    assert_eq!(
        fs::read_link(usr.join("bin/kubectl")).unwrap(),
        Path::new("k3s")
    );
    let run = fs::metadata(usr.join("lib/nodeimg/k3s-run")).unwrap();
    assert_eq!(run.permissions().mode() & 0o777, 0o755);
    let inittab = fs::read_to_string(usr.join("share/factory/etc/inittab")).unwrap();
    assert!(
        inittab
            .lines()
            .any(|l| l == "::respawn:/usr/lib/nodeimg/k3s-run"),
        "{inittab}"
    );
}

#[test]
fn an_inventory_gives_one_image_per_node_differing_only_in_node_config_and_ids() {
    let dir = scratch("join-inventory");
    let k3s = fake_k3s(&dir);
    let cfg = cluster_yaml(
        &dir,
        &k3s,
        "nodes:\n  - name: n1\n  - name: n2\n    labels: {gpu: \"true\"}\n",
    );
    let (out, res) = build_joined("qemu-aarch64", &dir, &cfg, &["--all-nodes"]);
    assert!(res.status.success(), "{}", stderr(&res));
    assert_eq!(dir_names(&out), ["qemu-aarch64-n1", "qemu-aarch64-n2"]);
    let img = |n: &str| out.join(format!("qemu-aarch64-{n}/qemu-aarch64-{n}.img"));
    let (a, b) = (img("n1"), img("n2"));
    // The system image is shared byte for byte.
    let sa = fs::read(extract_partition(&a, 2, &dir.join("a2"))).unwrap();
    let sb = fs::read(extract_partition(&b, 2, &dir.join("b2"))).unwrap();
    assert!(sa == sb, "system partitions differ");
    // Boot partitions: same files; only node config and cmdline (disk id) differ.
    let (pa, pb) = (
        extract_partition(&a, 1, &dir.join("a1")),
        extract_partition(&b, 1, &dir.join("b1")),
    );
    let list = |p: &Path| {
        stdout(&run_ok(
            Command::new("mdir")
                .args(["-b", "-/", "-i"])
                .arg(p)
                .arg("::"),
        ))
    };
    assert_eq!(list(&pa), list(&pb));
    let files: Vec<String> = list(&pa)
        .lines()
        .map(|l| l.trim_start_matches("::/").to_string())
        .filter(|l| !l.ends_with('/'))
        .collect();
    let mut differing = Vec::new();
    for f in &files {
        if mcopy(&pa, f) != mcopy(&pb, f) {
            differing.push(f.clone());
        }
    }
    differing.sort();
    assert_eq!(
        differing,
        ["cmdline.txt", "nodeimg/k3s-config.yaml", "nodeimg/node.env"],
        "files: {files:?}"
    );
    let env2 = String::from_utf8(mcopy(&pb, "nodeimg/node.env")).unwrap();
    assert!(env2.contains("NODEIMG_HOSTNAME='n2'"), "{env2}");
    let cfg2 = String::from_utf8(mcopy(&pb, "nodeimg/k3s-config.yaml")).unwrap();
    assert!(
        cfg2.contains("gpu=true") && cfg2.contains("site=home"),
        "{cfg2}"
    );
    // Different disks: their identifiers differ.
    assert_ne!(sfdisk(&a).id, sfdisk(&b).id);
    for img in [&a, &b] {
        let d = extract_partition(img, 4, &dir.join("d"));
        run_ok(Command::new("e2fsck").arg("-fn").arg(&d));
    }
}

#[test]
fn check_kernel_reports_the_test_kernel_fit_and_a_bare_config_not() {
    let ok = run(nodeimg()
        .arg("check-kernel")
        .arg("--rootfs")
        .arg(test_rootfs())
        .args(["--board", "rpi4"]));
    assert!(ok.status.success(), "{}{}", stdout(&ok), stderr(&ok));
    assert!(stdout(&ok).contains("result: ok"), "{}", stdout(&ok));

    let dir = scratch("check-kernel");
    let cfg = dir.join("config");
    fs::write(
        &cfg,
        "CONFIG_NAMESPACES=y\nCONFIG_VXLAN=m\n# CONFIG_OVERLAY_FS is not set\n",
    )
    .unwrap();
    let bad = run(nodeimg().arg("check-kernel").arg("--config").arg(&cfg));
    assert_eq!(bad.status.code(), Some(1));
    let text = stdout(&bad);
    assert!(
        text.contains("CONFIG_OVERLAY_FS") && text.contains("CONFIG_NET_NS"),
        "{text}"
    );
    assert!(!text.contains("CONFIG_VXLAN: missing"), "{text}");
}

#[test]
fn build_stops_on_a_kernel_without_what_k3s_needs_unless_told_otherwise() {
    let dir = scratch("join-kernel");
    // A board whose "kernel config" is a file with no options at all.
    let data = data_dir_with_board(&dir, "qemu-aarch64", |t| {
        t.replace(
            "kernel_config = [\"/boot/config-*\", \"/boot/config\"]",
            "kernel_config = [\"/etc/hostname\"]",
        )
    });
    let out = dir.join("out");
    let args = ["--data-dir", data.to_str().unwrap()];
    let res = build("qemu-aarch64", &test_rootfs(), &out, &args);
    let err = stderr(&res);
    assert_eq!(res.status.code(), Some(1), "{err}");
    assert!(
        err.contains("lacks what k3s needs") && err.contains("NAMESPACES"),
        "{err}"
    );
    assert!(dir_names(&out).is_empty());
    let res = build(
        "qemu-aarch64",
        &test_rootfs(),
        &out,
        &[args[0], args[1], "--allow-missing-kernel-options"],
    );
    assert!(res.status.success(), "{}", stderr(&res));
}

/// docs/examples/cluster.yaml, as shipped, builds: one image per inventory
/// node, each with its own name in its node config and manifest. The example
/// downloads a k3s release; here the stand-in k3s (test-images/k3s-standin)
/// is put into nodeimg's k3s cache as that release, with its hash list, so the
/// build takes it from there without network.
#[test]
fn the_shipped_example_cluster_yaml_builds_an_image_per_node() {
    let dir = scratch("join-example");
    let example = fs::read_to_string(repo().join("docs/examples/cluster.yaml")).unwrap();
    let cfg = dir.join("cluster.yaml");
    fs::write(&cfg, &example).unwrap();
    // The file the example's token_file names, next to it.
    fs::write(dir.join("node-token"), format!("{}\n", token())).unwrap();

    // What the example asks for: its k3s version and its nodes.
    let value = |line: &str, key: &str| {
        line.trim()
            .strip_prefix(key)
            .map(|v| v.trim().trim_matches('"').to_string())
    };
    let versions: Vec<String> = example
        .lines()
        .filter_map(|l| value(l, "version:"))
        .collect();
    assert_eq!(versions.len(), 1, "one k3s version in the example");
    let names: Vec<String> = example
        .lines()
        .filter_map(|l| value(l, "- name:"))
        .collect();
    assert!(names.len() >= 2, "an inventory of a few nodes: {names:?}");

    let standin = fs::read(repo().join("test-images/k3s-standin")).unwrap();
    let cache = dir.join("cache");
    let release = cache.join("nodeimg/k3s").join(&versions[0]);
    fs::create_dir_all(&release).unwrap();
    fs::write(release.join("k3s-arm64"), &standin).unwrap();
    {
        use sha2::{Digest, Sha256};
        fs::write(
            release.join("sha256sum-arm64.txt"),
            format!("{}  k3s-arm64\n", hex::encode(Sha256::digest(&standin))),
        )
        .unwrap();
    }

    let out = dir.join("out");
    let res = run(nodeimg()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env("XDG_CACHE_HOME", &cache)
        .arg("build")
        .arg("qemu-aarch64")
        .arg("--rootfs")
        .arg(test_rootfs())
        .arg("--join")
        .arg(&cfg)
        .arg("--all-nodes")
        .arg("-o")
        .arg(&out));
    assert!(res.status.success(), "{}", stderr(&res));
    let printed = format!("{}{}", stdout(&res), stderr(&res));
    assert!(!printed.contains(PASSWORD), "printed: {printed}");

    let mut want: Vec<String> = names.iter().map(|n| format!("qemu-aarch64-{n}")).collect();
    want.sort();
    assert_eq!(dir_names(&out), want);
    for n in &names {
        let o = out.join(format!("qemu-aarch64-{n}"));
        let img = o.join(format!("qemu-aarch64-{n}.img"));
        assert!(img.is_file(), "{} missing", img.display());
        let m: serde_json::Value =
            serde_json::from_slice(&fs::read(o.join("build.json")).unwrap()).unwrap();
        assert_eq!(m["node"]["name"], n.as_str());
        assert_eq!(m["node"]["role"], "agent");
        assert_eq!(m["k3s"]["source"], "release");
        assert_eq!(m["k3s"]["version"], versions[0].as_str());
        let p1 = extract_partition(&img, 1, &dir.join(format!("{n}.p1")));
        let env = String::from_utf8(mcopy(&p1, "nodeimg/node.env")).unwrap();
        assert!(env.contains(&format!("NODEIMG_HOSTNAME='{n}'\n")), "{env}");
        let k3s = String::from_utf8(mcopy(&p1, "nodeimg/k3s-config.yaml")).unwrap();
        assert!(k3s.contains(&format!("node-name: \"{n}\"\n")), "{k3s}");
        assert_eq!(
            mcopy(&p1, "nodeimg/token"),
            format!("{}\n", token()).into_bytes()
        );
    }
}
