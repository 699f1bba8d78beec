//! A node built with --join, booted in QEMU: the stand-in k3s
//! (test-images/k3s-standin, because the real k3s cannot be downloaded here)
//! records how it was started. Then the node config is changed on the image's
//! FAT partition with mcopy, without rebuilding, and the next boot shows it.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use nodeimg::boottest::BootFiles;
use nodeimg::qemu::{self, Vm, VmSpec};
use sha2::{Digest, Sha256};

const TOKEN_PASSWORD: &str = "boot-test-password-0f9e8d7c";

fn token() -> String {
    format!("K10{}::node:{TOKEN_PASSWORD}", "c0ffee00".repeat(8))
}

fn sh(vm: &mut Vm, cmd: &str) -> String {
    let (status, out) = vm
        .sh(cmd, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{cmd}: {e:#}"));
    assert_eq!(status, 0, "`{cmd}` failed: {out}");
    out.trim().to_string()
}

/// Waits until the stand-in has recorded its start (k3s-run starts after init).
fn standin_record(vm: &mut Vm) -> (String, String) {
    for _ in 0..60 {
        let (status, _) = vm
            .sh(
                "test -s /var/lib/k3s-standin/hostname",
                Duration::from_secs(10),
            )
            .unwrap();
        if status == 0 {
            return (
                sh(vm, "cat /var/lib/k3s-standin/args"),
                sh(vm, "cat /var/lib/k3s-standin/config.yaml"),
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("the stand-in k3s never started; console:\n{}", vm.tail(40));
}

fn boot(spec: &VmSpec) -> Vm {
    let mut vm = Vm::start(spec).unwrap();
    vm.wait_for("nodeimg-init: switching", Duration::from_secs(90))
        .unwrap();
    vm.wait_for_shell(Duration::from_secs(60)).unwrap();
    vm
}

fn mcopy_out(img: &Path, offset: u64, name: &str) -> String {
    let out = run_ok(
        Command::new("mcopy")
            .arg("-n")
            .arg("-i")
            .arg(format!("{}@@{offset}", img.display()))
            .arg(format!("::{name}"))
            .arg("-"),
    );
    stdout(&out)
}

fn mcopy_in(img: &Path, offset: u64, name: &str, content: &str, dir: &Path) {
    let f = dir.join("upload");
    fs::write(&f, content).unwrap();
    run_ok(
        Command::new("mcopy")
            .args(["-o", "-n", "-i"])
            .arg(format!("{}@@{offset}", img.display()))
            .arg(&f)
            .arg(format!("::{name}")),
    );
}

#[test]
fn k3s_starts_with_the_baked_config_and_picks_up_edits_on_the_boot_partition() {
    let dir = scratch("join-boot");
    fs::write(dir.join("token"), format!("{}\n", token())).unwrap();
    let cfg = dir.join("cluster.yaml");
    fs::write(
        &cfg,
        format!(
            "server: https://10.0.2.2:6443\ntoken_file: token\nnode_name: edge-1\n\
             labels:\n  zone: a\ntaints:\n  - dedicated=edge:NoSchedule\n\
             k3s:\n  source: file\n  path: {}\n",
            repo().join("test-images/k3s-standin").display()
        ),
    )
    .unwrap();
    let (out, res) = build_joined("qemu-aarch64", &dir, &cfg, &["--size", "1500M"]);
    assert!(res.status.success(), "{}", stderr(&res));
    let img = dir.join("disk.img");
    nodeimg::disk::sparse::copy_file(&out.join("qemu-aarch64/qemu-aarch64.img"), &img).unwrap();
    let files = BootFiles::extract(&img, &dir).unwrap();
    let spec = VmSpec {
        qemu: qemu::find_qemu().unwrap(),
        disk: img.clone(),
        kernel: files.kernel.clone(),
        initrd: files.initrd.clone(),
        cmdline: files.cmdline.clone(),
        mem_mib: 1024,
        cpus: 2,
        mac: "52:54:00:12:34:56".into(),
        log: dir.join("console.log"),
        firmware: None,
        extra_drives: Vec::new(),
        forward: Vec::new(),
        machine: Default::default(),
    };
    let fat_offset = nodeimg::inspect::read_table(&img).unwrap().partitions[0].start;
    let baked = mcopy_out(&img, fat_offset, "nodeimg/k3s-config.yaml");

    let mut vm = boot(&spec);
    let (args, config) = standin_record(&mut vm);
    assert_eq!(args, "agent");
    assert_eq!(config, baked.trim(), "k3s ran with the baked config");
    for want in [
        "server: \"https://10.0.2.2:6443\"",
        "token-file: \"/etc/rancher/k3s/nodeimg-token\"",
        "node-name: \"edge-1\"",
        "zone=a",
        "dedicated=edge:NoSchedule",
    ] {
        assert!(config.contains(want), "{want} in {config}");
    }
    assert_eq!(sh(&mut vm, "cat /var/lib/k3s-standin/config.mode"), "600");
    assert_eq!(sh(&mut vm, "cat /var/lib/k3s-standin/token.mode"), "600");
    let want_sha = hex::encode(Sha256::digest(format!("{}\n", token())));
    assert_eq!(
        sh(&mut vm, "cat /var/lib/k3s-standin/token-sha256"),
        want_sha
    );
    assert_eq!(sh(&mut vm, "hostname"), "edge-1");
    // The boot partition is mounted so that others cannot read the token.
    let perms = sh(&mut vm, "stat -c %A /boot/nodeimg/token");
    assert_eq!(perms, "-rw-------");
    assert!(
        !vm.tail(400).contains(TOKEN_PASSWORD),
        "the console shows the token"
    );
    sh(&mut vm, "rm -rf /var/lib/k3s-standin && sync");
    vm.kill();

    // Change the node's config on the FAT partition, no rebuild.
    let edited = baked
        .replace("edge-1", "edge-2")
        .replace("zone=a", "zone=b");
    mcopy_in(&img, fat_offset, "nodeimg/k3s-config.yaml", &edited, &dir);
    let env = mcopy_out(&img, fat_offset, "nodeimg/node.env").replace("'edge-1'", "'edge-2'");
    mcopy_in(&img, fat_offset, "nodeimg/node.env", &env, &dir);
    let p1 = extract_partition(&img, 1, &dir.join("p1"));
    run_ok(Command::new("fsck.fat").arg("-n").arg(&p1));

    let mut vm = boot(&spec);
    let (_, config) = standin_record(&mut vm);
    assert!(
        config.contains("node-name: \"edge-2\"") && config.contains("zone=b"),
        "{config}"
    );
    assert!(!config.contains("zone=a"), "{config}");
    assert_eq!(sh(&mut vm, "hostname"), "edge-2");
    vm.kill();
}
