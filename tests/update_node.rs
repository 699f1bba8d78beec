//! The node-side helper (`nodeimg update apply|commit|status`) against a
//! stand-in node: a directory (`$NODEIMG_NODE_ROOT`) holding what a running
//! node has — the kernel cmdline, the release file and key the build put into
//! the system image (read out of the image's squashfs with unsquashfs), the
//! boot partition's files (copied out with mtools), `/sys/block/vda` and
//! `/dev/vda` as a copy of the built image. The booted version of this is
//! tests/update_apply.rs (QEMU, U-Boot).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::*;
use nodeimg::update::bundle::{self, Contents, Layout};
use nodeimg::update::sign::SecretKey;
use nodeimg::update::uboot::State;

const BOARD: &str = "qemu-uboot";

struct Builds {
    dir: PathBuf,
    key: PathBuf,
    v1: PathBuf,
    bundle2: PathBuf,
    /// v2's squashfs, boot files and layout, to make bundles from.
    squashfs2: PathBuf,
    boot2: PathBuf,
}

/// v1's image and v2's bundle of the U-Boot board, signed with one key; built once.
fn builds() -> &'static Builds {
    static B: OnceLock<Builds> = OnceLock::new();
    B.get_or_init(|| {
        let dir = scratch("update-node");
        let key = dir.join("update.key");
        run_ok(nodeimg().arg("keygen").arg("--out").arg(&key));
        let data = uboot_data_dir(&dir, BOARD, "");
        let build_version = |v: &str| {
            let out = dir.join(format!("out-v{v}"));
            let res = build(
                BOARD,
                &test_rootfs(),
                &out,
                &[
                    "--data-dir",
                    data.to_str().unwrap(),
                    "--sign-key",
                    key.to_str().unwrap(),
                    "--build-version",
                    v,
                ],
            );
            assert!(res.status.success(), "build v{v}: {}", stderr(&res));
            out.join(BOARD)
        };
        let v1 = build_version("1").join(format!("{BOARD}.img"));
        let bundle2 = build_version("2").join(format!("{BOARD}.bundle"));
        let unpacked = dir.join("bundle2");
        fs::create_dir_all(&unpacked).unwrap();
        run_ok(
            Command::new("tar")
                .arg("-xf")
                .arg(&bundle2)
                .arg("-C")
                .arg(&unpacked),
        );
        Builds {
            squashfs2: unpacked.join("system.squashfs"),
            boot2: unpacked.join("boot"),
            dir,
            key,
            v1,
            bundle2,
        }
    })
}

fn fat_offset(image: &Path) -> u64 {
    let t = sfdisk(image);
    t.partitions[0].start * t.sector_size
}

/// A stand-in node running slot a of `builds().v1`, under `dir`.
fn node(name: &str) -> PathBuf {
    let b = builds();
    let root = b.dir.join(name);
    let _ = fs::remove_dir_all(&root);
    for d in ["proc", "sys/block/vda", "dev", "boot", "usr"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&b.v1)
            .arg(root.join("dev/vda")),
    );
    // The boot partition's files.
    let off = fat_offset(&b.v1);
    mtools(
        "mcopy",
        &b.v1,
        off,
        &["-s", "-n", "::/*", root.join("boot").to_str().unwrap()],
    );
    // What the build put into the system image for the node.
    let sq = extract_partition(&b.v1, 2, &root.join("system-a.sqfs"));
    run_ok(
        Command::new("unsquashfs")
            .args(["-q", "-n", "-f", "-d"])
            .arg(root.join("usr"))
            .arg(&sq)
            .arg("share/nodeimg"),
    );
    fs::remove_file(&sq).unwrap();
    let bootargs = fs::read_to_string(root.join("boot/slot-a/bootargs.env")).unwrap();
    let cmdline = bootargs.trim().strip_prefix("bootargs=").unwrap();
    assert!(cmdline.contains("nodeimg.system=2"), "{cmdline}");
    fs::write(root.join("proc/cmdline"), format!("{cmdline}\n")).unwrap();
    root
}

fn on(root: &Path, args: &[&str]) -> Output {
    run(nodeimg()
        .env("NODEIMG_NODE_ROOT", root)
        .arg("update")
        .args(args))
}

fn state(root: &Path) -> State {
    State::parse(&fs::read(root.join("boot/slots.env")).unwrap()).unwrap()
}

fn status(root: &Path) -> serde_json::Value {
    let out = on(root, &["status", "--json"]);
    assert!(out.status.success(), "status: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Bytes `len` of partition `n` of the stand-in's disk.
fn partition_bytes(root: &Path, n: usize, len: usize) -> Vec<u8> {
    let disk = root.join("dev/vda");
    let t = sfdisk(&disk);
    let p = &t.partitions[n - 1];
    let all = fs::read(&disk).unwrap();
    let start = (p.start * t.sector_size) as usize;
    all[start..start + len].to_vec()
}

/// A bundle of v2's payloads with the manifest changed by `edit`, signed by `key`.
fn bundle_with(name: &str, key: &SecretKey, edit: impl Fn(&mut Contents)) -> PathBuf {
    let b = builds();
    let mut boot = std::collections::BTreeMap::new();
    for e in fs::read_dir(&b.boot2).unwrap() {
        let e = e.unwrap();
        boot.insert(
            e.file_name().to_string_lossy().into_owned(),
            nodeimg::tree::data(fs::read(e.path()).unwrap()),
        );
    }
    let manifest: serde_json::Value = {
        let out = run_ok(
            Command::new("tar")
                .arg("-xOf")
                .arg(&b.bundle2)
                .arg(bundle::MANIFEST),
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let layout: Layout = serde_json::from_value(manifest["layout"].clone()).unwrap();
    let kernel = manifest["kernel_release"].as_str().unwrap().to_string();
    let mut c = Contents {
        board: BOARD,
        version: 2,
        min_version: 0,
        kernel_release: &kernel,
        layout,
        squashfs: &b.squashfs2,
        boot_files: &boot,
        mtime: 1,
    };
    edit(&mut c);
    let out = b.dir.join(format!("{name}.bundle"));
    bundle::write(&out, &c, key).unwrap();
    out
}

fn the_key() -> SecretKey {
    SecretKey::load(&builds().key).unwrap()
}

#[test]
fn a_good_bundle_goes_to_slot_b_and_arms_a_trial() {
    let b = builds();
    let root = node("good");
    let slot_a_before = fs::read(root.join("boot/slot-a/vmlinuz")).unwrap();
    let out = on(
        &root,
        &[
            "apply",
            b.bundle2.to_str().unwrap(),
            "--no-reboot",
            "--tries",
            "2",
        ],
    );
    assert!(out.status.success(), "apply: {}", stderr(&out));
    // The squashfs is in partition 3, byte for byte.
    let sq = fs::read(&b.squashfs2).unwrap();
    assert_eq!(partition_bytes(&root, 3, sq.len()), sq);
    // Slot b's boot files, its cmdline naming partition 3.
    assert_eq!(
        fs::read(root.join("boot/slot-b/vmlinuz")).unwrap(),
        fs::read(b.boot2.join("vmlinuz")).unwrap()
    );
    assert_eq!(
        fs::read(root.join("boot/slot-b/initrd.img")).unwrap(),
        fs::read(b.boot2.join("initrd.img")).unwrap()
    );
    let args = fs::read_to_string(root.join("boot/slot-b/bootargs.env")).unwrap();
    assert!(
        args.contains("nodeimg.system=3") && !args.contains("nodeimg.system=2"),
        "{args}"
    );
    // This node's disk, not the one v2 was built with.
    let disk = |c: &str| {
        c.split_whitespace()
            .find(|w| w.starts_with("nodeimg.disk="))
            .unwrap()
            .to_string()
    };
    let running = fs::read_to_string(root.join("proc/cmdline")).unwrap();
    let built = fs::read_to_string(b.boot2.join("bootargs.env")).unwrap();
    assert_ne!(disk(&built), disk(&running));
    assert_eq!(disk(&args), disk(&running));
    assert!(!root.join("boot/.slot-b.new").exists());
    // Slot a untouched; the trial armed.
    assert_eq!(
        fs::read(root.join("boot/slot-a/vmlinuz")).unwrap(),
        slot_a_before
    );
    assert_eq!(
        state(&root),
        State {
            primary: 'a',
            trial: Some(('b', 2))
        }
    );
    let s = status(&root);
    assert_eq!(s["running"], "a");
    assert_eq!(s["running_version"], 1);
    assert_eq!(s["trial"], "b");
    assert_eq!(s["slots"]["b"]["version"], 2);
    assert_eq!(s["slots"]["b"]["state"], "trial");
    assert_eq!(s["slots"]["b"]["bootable"], true);
    assert_eq!(s["last"]["ok"], true);
    let text = stdout(&on(&root, &["status"]));
    assert!(
        text.contains("trial of slot b armed (2 boots left)"),
        "{text}"
    );
}

/// The apply of `bundle` fails with `why` on one line, and leaves slot b
/// unusable: no boot files, no trial, the failure recorded.
fn refused(name: &str, bundle: &Path, why: &str) {
    let root = node(name);
    // A slot b that was usable before.
    let ok = on(
        &root,
        &["apply", builds().bundle2.to_str().unwrap(), "--no-reboot"],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(root.join("boot/slot-b").is_dir());
    let out = on(&root, &["apply", bundle.to_str().unwrap(), "--no-reboot"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{name}: {err}");
    assert!(err.contains(why), "{name}: {err}");
    assert!(err.contains("slot b is left unusable"), "{name}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{name}: {err}");
    assert!(!root.join("boot/slot-b").exists(), "{name}");
    assert!(!root.join("boot/.slot-b.new").exists(), "{name}");
    assert_eq!(
        state(&root),
        State {
            primary: 'a',
            trial: None
        },
        "{name}"
    );
    let s = status(&root);
    assert_eq!(s["slots"]["b"]["state"], "unusable", "{name}");
    assert_eq!(s["slots"]["b"]["bootable"], false, "{name}");
    assert_eq!(s["last"]["ok"], false, "{name}");
}

#[test]
fn bad_bundles_are_refused_and_leave_the_slot_unusable() {
    let key = the_key();
    refused(
        "other-key",
        &bundle_with("other-key", &SecretKey::generate().unwrap(), |_| {}),
        "signed with another key",
    );
    let mut tampered = fs::read(&builds().bundle2).unwrap();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x55;
    let t = builds().dir.join("tampered.bundle");
    fs::write(&t, tampered).unwrap();
    refused("tampered", &t, "SHA-256 does not match the manifest");
    refused(
        "other-board",
        &bundle_with("other-board", &key, |c| c.board = "rpi4"),
        "the bundle is for board rpi4, not qemu-uboot",
    );
    refused(
        "downgrade",
        &bundle_with("downgrade", &key, |c| {
            c.version = 9;
            c.min_version = 5
        }),
        "refusing the downgrade",
    );
    refused(
        "layout",
        &bundle_with("layout", &key, |c| c.layout.system_slot_size *= 2),
        "this node has",
    );
}

#[test]
fn an_interrupted_write_leaves_slot_b_unusable_and_a_later_apply_succeeds() {
    let b = builds();
    let root = node("cut");
    let whole = fs::read(&b.bundle2).unwrap();
    let cut = b.dir.join("cut.bundle");
    fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    let out = on(&root, &["apply", cut.to_str().unwrap(), "--no-reboot"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!root.join("boot/slot-b").exists());
    assert_eq!(state(&root).trial, None);
    // From stdin, as `update push` sends it.
    let out = run(nodeimg()
        .env("NODEIMG_NODE_ROOT", &root)
        .args(["update", "apply", "--no-reboot", "-"])
        .stdin(fs::File::open(&b.bundle2).unwrap()));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(state(&root).trial, Some(('b', 3)));
}

/// The stand-in after the loader booted slot b on trial: its cmdline and
/// the system image's release file are slot b's.
fn booted_b(name: &str) -> PathBuf {
    let b = builds();
    booted_b_from(name, &b.bundle2, &b.squashfs2)
}

/// The same with `bundle`, whose system image is `squashfs`.
fn booted_b_from(name: &str, bundle: &Path, squashfs: &Path) -> PathBuf {
    let root = node(name);
    let out = on(&root, &["apply", bundle.to_str().unwrap(), "--no-reboot"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let args = fs::read_to_string(root.join("boot/slot-b/bootargs.env")).unwrap();
    fs::write(
        root.join("proc/cmdline"),
        args.trim().strip_prefix("bootargs=").unwrap(),
    )
    .unwrap();
    fs::remove_dir_all(root.join("usr/share/nodeimg")).unwrap();
    run_ok(
        Command::new("unsquashfs")
            .args(["-q", "-n", "-f", "-d"])
            .arg(root.join("usr"))
            .arg(squashfs)
            .arg("share/nodeimg"),
    );
    root
}

#[test]
fn an_update_rotates_the_key_the_node_accepts() {
    let b = builds();
    let dir = b.dir.join("rotate");
    fs::create_dir_all(&dir).unwrap();
    let new = dir.join("new.key");
    run_ok(nodeimg().arg("keygen").arg("--out").arg(&new));
    let out = dir.join("out");
    let res = build(
        BOARD,
        &test_rootfs(),
        &out,
        &[
            "--data-dir",
            b.dir.join("data").to_str().unwrap(),
            "--sign-key",
            b.key.to_str().unwrap(),
            "--update-key",
            dir.join("new.key.pub").to_str().unwrap(),
            "--build-version",
            "2",
        ],
    );
    assert!(res.status.success(), "{}", stderr(&res));
    let bundle = out.join(format!("{BOARD}/{BOARD}.bundle"));
    let squashfs = dir.join("system.squashfs");
    let sq = run_ok(
        Command::new("tar")
            .arg("-xOf")
            .arg(&bundle)
            .arg(bundle::SYSTEM),
    )
    .stdout;
    fs::write(&squashfs, sq).unwrap();
    // Signed with the old key, which the v1 node trusts; it carries the new one.
    let root = booted_b_from("rotated", &bundle, &squashfs);
    assert_eq!(
        fs::read_to_string(root.join("usr/share/nodeimg/update.pub")).unwrap(),
        fs::read_to_string(dir.join("new.key.pub")).unwrap()
    );
    let out = on(&root, &["commit", "--no-check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Now the old key's bundles are refused and the new key's accepted.
    let old_signed = bundle_with("rot-old", &the_key(), |c| c.version = 3);
    let out = on(
        &root,
        &["apply", old_signed.to_str().unwrap(), "--no-reboot"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("signed with another key"),
        "{}",
        stderr(&out)
    );
    let new_signed = bundle_with("rot-new", &SecretKey::load(&new).unwrap(), |c| {
        c.version = 3
    });
    let out = on(
        &root,
        &["apply", new_signed.to_str().unwrap(), "--no-reboot"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(state(&root).trial, Some(('a', 3)));
}

#[test]
fn a_healthy_trial_is_committed_and_becomes_primary() {
    let root = booted_b("commit");
    let s = status(&root);
    assert_eq!(
        (s["running"].as_str(), s["running_version"].as_u64()),
        (Some("b"), Some(2))
    );
    // Refused while the trial is undecided.
    let again = on(
        &root,
        &["apply", builds().bundle2.to_str().unwrap(), "--no-reboot"],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("runs slot b on trial"),
        "{}",
        stderr(&again)
    );
    // No systemd and no k3s in the stand-in: no check applies.
    let out = on(&root, &["commit"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(
        said.contains("slot b (version 2) committed: no health check applies"),
        "{said}"
    );
    assert_eq!(
        state(&root),
        State {
            primary: 'b',
            trial: None
        }
    );
    let s = status(&root);
    assert_eq!(s["primary"], "b");
    assert_eq!(s["slots"]["b"]["state"], "good");
    // The old slot is remembered as it was.
    assert_eq!(s["slots"]["a"]["version"], 1);
    assert_eq!(s["slots"]["a"]["state"], "good");
    // Nothing left to decide.
    let out = on(&root, &["commit"]);
    assert!(
        stdout(&out).contains("is the committed slot"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn an_unhealthy_trial_falls_back_to_the_old_slot() {
    if std::net::TcpStream::connect("127.0.0.1:10248").is_ok() {
        panic!("something listens on the kubelet port 10248 of this machine");
    }
    let root = booted_b("unhealthy");
    let out = on(
        &root,
        &[
            "commit",
            "--check",
            "kubelet",
            "--timeout",
            "0",
            "--no-reboot",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("slot b (version 2) failed its health check")
            && err.contains("kubelet's health endpoint")
            && err.contains("back to slot a"),
        "{err}"
    );
    assert_eq!(
        state(&root),
        State {
            primary: 'a',
            trial: None
        }
    );
    let s = status(&root);
    assert_eq!(s["slots"]["b"]["state"], "failed");
    assert_eq!(s["last"]["ok"], false);

    // Left to reboot (as at boot): the failure is said once, then the node
    // reboots (a stand-in node only says so).
    let root = booted_b("unhealthy-reboot");
    let out = on(&root, &["commit", "--check", "kubelet", "--timeout", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.matches("failed its health check").count(), 1, "{err}");
    assert!(
        err.find("failed its health check") < err.find("nodeimg: rebooting"),
        "{err}"
    );
    assert_eq!(state(&root).trial, None);
}

#[test]
fn a_fallback_by_the_loader_is_recorded_and_the_slot_made_unusable() {
    let b = builds();
    let root = node("fallback");
    let out = on(
        &root,
        &["apply", b.bundle2.to_str().unwrap(), "--no-reboot"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // The loader used up the tries (as boot.scr writes it: hex) and booted a.
    fs::write(
        root.join("boot/slots.env"),
        "nodeimg_primary=a\nnodeimg_trial=b\nnodeimg_tries=0x0\n\0",
    )
    .unwrap();
    let out = on(&root, &["commit"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(
        said.contains("slot b (version 2) failed its trial boot")
            && said.contains("fell back to slot a"),
        "{said}"
    );
    assert!(!root.join("boot/slot-b").exists());
    assert_eq!(state(&root).trial, None);
    let s = status(&root);
    assert_eq!(s["slots"]["b"]["state"], "failed");
    assert_eq!(s["last"]["action"], "rollback");
    let text = stdout(&on(&root, &["status"]));
    assert!(text.contains("last: rollback of slot b: FAILED"), "{text}");
    // An upgrade plan re-run with that version does not try it again.
    let out = apply_expecting(&root, "2");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("version 2 failed its trial on this node"),
        "{}",
        stderr(&out)
    );
    assert_eq!(state(&root).trial, None);
}

/// `update apply --expect-version VERSION --no-reboot` of v2's bundle.
fn apply_expecting(root: &Path, version: &str) -> Output {
    let bundle = builds().bundle2.to_str().unwrap();
    on(
        root,
        &["apply", "--expect-version", version, "--no-reboot", bundle],
    )
}

#[test]
fn a_node_whose_loader_cannot_boot_trials_says_so() {
    let root = node("firmware-loader");
    let release = root.join("usr/share/nodeimg/release.json");
    let text = fs::read_to_string(&release).unwrap();
    assert!(text.contains("\"loader\": \"u-boot\""), "{text}");
    fs::write(&release, text.replace("\"u-boot\"", "\"rpi-firmware\"")).unwrap();
    fs::remove_file(root.join("boot/slots.env")).unwrap();
    let out = on(&root, &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("loader rpi-firmware: it cannot boot a trial of an update"),
        "{}",
        stdout(&out)
    );
    let out = on(
        &root,
        &["apply", "--no-reboot", builds().bundle2.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("this node's loader (rpi-firmware) cannot boot a trial slot"),
        "{}",
        stderr(&out)
    );
    assert!(!root.join("var/lib/nodeimg/update.json").exists());
}

#[test]
fn expect_version_makes_apply_re_runnable() {
    let root = node("expect");
    // The node runs version 1: nothing to do, nothing touched.
    let out = apply_expecting(&root, "1");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("runs version 1 (slot a) already: nothing to do"),
        "{}",
        stderr(&out)
    );
    assert_eq!(state(&root).trial, None);
    assert!(!root.join("var/lib/nodeimg/update.json").exists());
    // A bundle of another version than expected is refused.
    let out = apply_expecting(&root, "3");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the bundle is version 2, not the expected 3"),
        "{}",
        stderr(&out)
    );
    assert!(!root.join("boot/slot-b").exists());
    // The expected version is applied.
    let out = apply_expecting(&root, "2");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(state(&root).trial, Some(('b', 3)));
}

/// Serves one HTTP request on a local port with `status` and `body`; returns the URL base.
fn serve_once(status: &'static str, body: Vec<u8>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        let mut line = String::new();
        while r.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
            line.clear();
        }
        let _ = write!(
            c,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = c.write_all(&body);
    });
    format!("127.0.0.1:{port}")
}

#[test]
fn a_bundle_is_applied_from_a_url_and_url_credentials_are_not_shown() {
    let b = builds();
    let root = node("url");
    let host = serve_once("200 OK", fs::read(&b.bundle2).unwrap());
    let out = on(
        &root,
        &[
            "apply",
            "--no-reboot",
            &format!("http://{host}/qemu-uboot.bundle"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(state(&root).trial, Some(('b', 3)));
    let host = serve_once("404 Not Found", b"no".to_vec());
    let out = on(
        &root,
        &[
            "apply",
            "--no-reboot",
            &format!("http://user:s3cret@{host}/x.bundle"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("HTTP status 404"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn push_streams_the_bundle_into_the_nodes_helper_over_ssh() {
    let b = builds();
    let dir = b.dir.join("push");
    fs::create_dir_all(&dir).unwrap();
    // A stand-in ssh: records its arguments and what it was given on stdin.
    let ssh = dir.join("ssh");
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "printf '%s\\n' '#!/bin/sh' 'printf \"%s \" \"$@\" > {d}/args' 'cat > {d}/stdin' 'exit ${{FAKE_SSH_EXIT:-0}}' > {s} && chmod +x {s}",
        d = dir.display(),
        s = ssh.display()
    )));
    let out = run(nodeimg()
        .env("NODEIMG_SSH", &ssh)
        .args(["update", "push"])
        .arg(&b.bundle2)
        .args(["root@node1", "--port", "2222", "--tries", "2"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read_to_string(dir.join("args")).unwrap().trim(),
        "-o BatchMode=yes -p 2222 -- root@node1 nodeimg update apply --tries 2 -"
    );
    assert_eq!(
        fs::read(dir.join("stdin")).unwrap(),
        fs::read(&b.bundle2).unwrap()
    );
    // The node's refusal is the push's failure.
    let out = run(nodeimg()
        .env("NODEIMG_SSH", &ssh)
        .env("FAKE_SSH_EXIT", "1")
        .args(["update", "push"])
        .arg(&b.bundle2)
        .arg("root@node1"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("root@node1 did not apply the update"),
        "{}",
        stderr(&out)
    );
    // Not a bundle: refused before ssh runs.
    fs::remove_file(dir.join("args")).unwrap();
    let out = run(nodeimg()
        .env("NODEIMG_SSH", &ssh)
        .args(["update", "push"])
        .arg(&b.v1)
        .arg("root@node1"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not an update bundle"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.join("args").exists());
}
