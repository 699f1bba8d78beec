//! Update keys, signatures and bundles through the real binary, with the
//! host's `minisign` as the oracle for every signature and key we write or read.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

fn minisign(args: &[&str], dir: &Path) -> Output {
    run(Command::new("minisign")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null()))
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(name);
    let out = run_ok(nodeimg().arg("keygen").arg("--out").arg(&key));
    let secret = fs::read_to_string(&key).unwrap();
    let secret_line = secret.lines().nth(1).unwrap();
    assert!(!stdout(&out).contains(secret_line) && !stderr(&out).contains(secret_line));
    (key.clone(), dir.join(format!("{name}.pub")))
}

/// Builds qemu-aarch64 signed with `key`; returns the output directory.
fn signed_build(dir: &Path, key: &Path, extra: &[&str]) -> PathBuf {
    let out = dir.join("out");
    let mut args = vec!["--sign-key", key.to_str().unwrap()];
    args.extend_from_slice(extra);
    let res = build("qemu-aarch64", &test_rootfs(), &out, &args);
    assert!(res.status.success(), "build: {}", stderr(&res));
    out.join("qemu-aarch64")
}

fn verify(bundle: &Path, key: &Path, extra: &[&str]) -> Output {
    run(nodeimg()
        .args(["update", "verify"])
        .arg(bundle)
        .arg("--key")
        .arg(key)
        .args(extra))
}

/// A refusal: exit 1, one line on stderr saying `what`.
fn refused(out: &Output, what: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(what), "expected {what:?} in: {err}");
}

fn untar(bundle: &Path, into: &Path) {
    fs::create_dir_all(into).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(bundle)
            .arg("-C")
            .arg(into),
    );
}

#[test]
fn keygen_writes_keys_minisign_uses() {
    let dir = scratch("update-keygen");
    let (key, public) = keygen(&dir, "k");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(fs::read_to_string(&public)
        .unwrap()
        .starts_with("untrusted comment: minisign public key "));
    // minisign signs with our secret key, and the signature checks with our public key.
    fs::write(dir.join("f"), b"some file\n").unwrap();
    let s = minisign(&["-S", "-s", "k", "-m", "f"], &dir);
    assert!(s.status.success(), "{}", stderr(&s));
    let v = minisign(&["-V", "-p", "k.pub", "-m", "f"], &dir);
    assert!(v.status.success(), "{}", stderr(&v));
    // Never over an existing key.
    let again = run(nodeimg().arg("keygen").arg("--out").arg(&key));
    refused(&again, "already exists");
}

#[test]
fn signed_bundle_verifies_and_refuses_tampering_keys_boards_downgrades() {
    let dir = scratch("update-bundle");
    let (key, public) = keygen(&dir, "k");
    let out = signed_build(&dir, &key, &["--build-version", "7", "--min-version", "5"]);
    let bundle = out.join("qemu-aarch64.bundle");
    let sums = fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    assert!(sums.contains("  qemu-aarch64.bundle\n"), "{sums}");

    // The layout, and minisign accepts our signature of the manifest.
    let x = dir.join("x");
    untar(&bundle, &x);
    let list = run_ok(Command::new("tar").arg("-tf").arg(&bundle));
    let names: Vec<String> = stdout(&list).lines().map(String::from).collect();
    assert_eq!(
        &names[..3],
        ["manifest.json", "manifest.json.minisig", "system.squashfs"]
    );
    assert!(
        names[3..].iter().all(|n| n.starts_with("boot/")),
        "{names:?}"
    );
    assert!(names.contains(&"boot/cmdline.txt".to_string()), "{names:?}");
    let pubs = public.to_str().unwrap();
    let v = minisign(
        &[
            "-V",
            "-p",
            pubs,
            "-m",
            "manifest.json",
            "-x",
            "manifest.json.minisig",
        ],
        &x,
    );
    assert!(v.status.success(), "{}", stderr(&v));
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(x.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["board"], "qemu-aarch64");
    assert_eq!(manifest["version"], 7);
    assert_eq!(manifest["min_version"], 5);
    let sq = fs::read(x.join("system.squashfs")).unwrap();
    assert_eq!(manifest["payloads"][0]["size"], sq.len() as u64);

    // The public key is in the system image.
    let cat = run_ok(
        Command::new("unsquashfs")
            .arg("-cat")
            .arg(x.join("system.squashfs"))
            .arg("share/nodeimg/update.pub"),
    );
    assert_eq!(cat.stdout, fs::read(&public).unwrap());

    let good = verify(
        &bundle,
        &public,
        &["--board", "qemu-aarch64", "--from-version", "5"],
    );
    assert!(good.status.success(), "{}", stderr(&good));
    assert!(stdout(&good).contains("good"), "{}", stdout(&good));

    let (_, other) = keygen(&dir, "other");
    refused(&verify(&bundle, &other, &[]), "signed with another key");
    refused(
        &verify(&bundle, &public, &["--board", "rpi4"]),
        "for board qemu-aarch64, not rpi4",
    );
    refused(
        &verify(&bundle, &public, &["--from-version", "4"]),
        "refusing the downgrade",
    );

    // One byte of the squashfs payload changed.
    let tampered = dir.join("tampered.bundle");
    let mut bytes = fs::read(&bundle).unwrap();
    let at = {
        let mut a = tar::Archive::new(bytes.as_slice());
        let e = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap().to_str() == Some("system.squashfs"))
            .unwrap();
        e.raw_file_position() as usize + sq.len() / 2
    };
    bytes[at] ^= 0x40;
    fs::write(&tampered, &bytes).unwrap();
    refused(
        &verify(&tampered, &public, &[]),
        "system.squashfs: SHA-256 does not match",
    );

    // Same inputs, same bundle.
    let dir2 = scratch("update-bundle-again");
    let out2 = signed_build(&dir2, &key, &["--build-version", "7", "--min-version", "5"]);
    assert!(fs::read(out2.join("qemu-aarch64.bundle")).unwrap() == fs::read(&bundle).unwrap());
}

#[test]
fn minisign_keys_and_signatures_are_accepted() {
    let dir = scratch("update-minisign");
    let g = minisign(&["-G", "-W", "-p", "m.pub", "-s", "m.key"], &dir);
    assert!(g.status.success(), "{}", stderr(&g));
    // A key minisign made signs our bundle.
    let out = signed_build(&dir, &dir.join("m.key"), &[]);
    let bundle = out.join("qemu-aarch64.bundle");
    let good = verify(&bundle, &dir.join("m.pub"), &[]);
    assert!(good.status.success(), "{}", stderr(&good));

    // minisign's own signature of the manifest (prehashed, its default),
    // repacked in the bundle's order, is accepted too.
    let x = dir.join("x");
    untar(&bundle, &x);
    let list = run_ok(Command::new("tar").arg("-tf").arg(&bundle));
    let names: Vec<String> = stdout(&list).lines().map(String::from).collect();
    fs::remove_file(x.join("manifest.json.minisig")).unwrap();
    let s = minisign(
        &[
            "-S",
            "-s",
            "../m.key",
            "-m",
            "manifest.json",
            "-t",
            "by minisign",
        ],
        &x,
    );
    assert!(s.status.success(), "{}", stderr(&s));
    let repacked = dir.join("repacked.bundle");
    run_ok(
        Command::new("tar")
            .arg("--format=ustar")
            .arg("-cf")
            .arg(&repacked)
            .arg("-C")
            .arg(&x)
            .args(&names),
    );
    assert_ne!(fs::read(&repacked).unwrap(), fs::read(&bundle).unwrap());
    let good = verify(&repacked, &dir.join("m.pub"), &[]);
    assert!(good.status.success(), "{}", stderr(&good));
    // ... and with its trusted comment changed, refused.
    let sig = fs::read_to_string(x.join("manifest.json.minisig")).unwrap();
    fs::write(
        x.join("manifest.json.minisig"),
        sig.replace("by minisign", "by someone"),
    )
    .unwrap();
    let forged = dir.join("forged.bundle");
    run_ok(
        Command::new("tar")
            .arg("--format=ustar")
            .arg("-cf")
            .arg(&forged)
            .arg("-C")
            .arg(&x)
            .args(&names),
    );
    refused(&verify(&forged, &dir.join("m.pub"), &[]), "trusted comment");
}
