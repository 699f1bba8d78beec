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

#[test]
fn the_token_is_only_in_the_node_files_and_every_file_holding_it_is_0600() {
    let dir = scratch("join-secret");
    let k3s = fake_k3s(&dir);
    let cfg = cluster_yaml(&dir, &k3s, "node_name: pi-1\n");
    let out = dir.join("out");
    let res = build(
        "rpi4",
        &test_rootfs(),
        &out,
        &["--join", cfg.to_str().unwrap()],
    );
    assert!(res.status.success(), "{}", stderr(&res));
    let printed = format!("{}{}", stdout(&res), stderr(&res));
    assert!(!printed.contains(PASSWORD), "printed: {printed}");

    let o = out.join("rpi4");
    for f in ["build.json", "SHA256SUMS"] {
        let bytes = fs::read(o.join(f)).unwrap();
        assert!(
            !contains(&bytes, PASSWORD.as_bytes()),
            "{f} holds the token"
        );
    }
    let img = o.join("rpi4.img");
    let mode = fs::metadata(&img).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the image holds the token");
    // Exactly where it belongs: nodeimg/token on the boot partition, nowhere else.
    let p1 = extract_partition(&img, 1, &dir.join("p1"));
    assert_eq!(
        mcopy(&p1, "nodeimg/token"),
        format!("{}\n", token()).into_bytes()
    );
    for n in 2..=4 {
        let p = extract_partition(&img, n, &dir.join(format!("p{n}")));
        let bytes = fs::read(&p).unwrap();
        assert!(
            !contains(&bytes, PASSWORD.as_bytes()),
            "partition {n} holds the token"
        );
    }
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
    let out = dir.join("out");
    let res = build(
        "rpi4",
        &test_rootfs(),
        &out,
        &["--join", cfg.to_str().unwrap()],
    );
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
    let out = dir.join("out");
    let res = build(
        "qemu-aarch64",
        &test_rootfs(),
        &out,
        &["--join", cfg.to_str().unwrap()],
    );
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
    let out = dir.join("out");
    let res = build(
        "qemu-aarch64",
        &test_rootfs(),
        &out,
        &["--join", cfg.to_str().unwrap(), "--all-nodes"],
    );
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
