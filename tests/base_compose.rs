//! `nodeimg base compose`: packages built here with `dpkg-deb --build`
//! unpacked by nodeimg and compared with `dpkg-deb -x` (the oracle: same
//! files, modes, owners, link targets, devices, setuid bits); merged-/usr
//! placement and Replaces; and the real trixie base of the committed lock
//! (boards/base/qemu-aarch64.lock, fetched with `nodeimg base fetch`)
//! composed, then built without --rootfs and booted under systemd in QEMU.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Builds a .deb from `root` (a package tree with DEBIAN/control) into `out`.
fn dpkg_build(root: &Path, out: &Path) {
    run_ok(
        Command::new("dpkg-deb")
            .args(["--build", "-Zxz"])
            .arg(root)
            .arg(out),
    );
}

fn control(dir: &Path, name: &str, extra: &str) {
    fs::create_dir_all(dir.join("DEBIAN")).unwrap();
    fs::write(
        dir.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: 1.0-1\nArchitecture: all\nMaintainer: t <t@example.org>\n{extra}Description: test package {name}\n a longer\n description\n"
        ),
    )
    .unwrap();
}

/// Shell commands run in a fresh directory to make a package's files (as a
/// child process, so executables are not written by this process).
fn make_files(dir: &Path, script: &str) {
    run_ok(Command::new("sh").arg("-ec").arg(script).current_dir(dir));
}

fn compose_tar(debs: &Path, out: &Path, unpack_only: bool) -> std::process::Output {
    let mut cmd = nodeimg();
    cmd.args(["base", "compose", "--debs"])
        .arg(debs)
        .arg("--out")
        .arg(out);
    if unpack_only {
        cmd.arg("--unpack-only");
    }
    run(&mut cmd)
}

fn untar(tar: &Path, dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let mut cmd = Command::new("tar");
    cmd.arg("--numeric-owner");
    if running_as_root() {
        cmd.arg("--same-owner");
    }
    run_ok(cmd.arg("-xpf").arg(tar).arg("-C").arg(dir));
}

#[test]
fn unpacking_matches_dpkg_deb_x() {
    let dir = scratch("base-compose-oracle");
    let debs = dir.join("debs");
    fs::create_dir_all(&debs).unwrap();
    let owners = owners_survive_extraction("unpacking_matches_dpkg_deb_x");

    let a = dir.join("pkg-a");
    fs::create_dir_all(&a).unwrap();
    make_files(
        &a,
        "mkdir -p usr/bin usr/share/a etc/a var/lib/a dev
         printf 'binary\\n' > usr/bin/a && chmod 4755 usr/bin/a
         printf 'group\\n' > usr/bin/a-sgid && chmod 2711 usr/bin/a-sgid
         printf 'data\\n' > usr/share/a/data && ln usr/share/a/data usr/share/a/hardlink
         : > usr/share/a/empty
         ln -s ../share/a/data usr/bin/rel-link && ln -s /etc/a/conf usr/share/a/abs-link
         printf 'x=1\\n' > etc/a/conf && chmod 600 etc/a/conf
         chmod 1777 var/lib/a
         mkfifo dev/fifo
         long=usr/share/a/$(printf 'd%.0s' $(seq 120))/$(printf 'f%.0s' $(seq 90)); mkdir -p $(dirname $long); echo long > $long",
    );
    if owners {
        make_files(
            &a,
            "chown 1000:1001 usr/share/a/data var/lib/a && chown 0:42 etc/a/conf
             mknod dev/null-like c 1 3 && mknod dev/blk b 8 1 && mknod dev/big c 300 70000",
        );
    }
    control(&a, "pkg-a", "");
    fs::write(a.join("DEBIAN/conffiles"), "/etc/a/conf\n").unwrap();
    dpkg_build(&a, &debs.join("pkg-a_1.0-1_all.deb"));

    let b = dir.join("pkg-b");
    fs::create_dir_all(&b).unwrap();
    make_files(&b, "mkdir -p usr/bin usr/share/b && printf 'b\\n' > usr/bin/b && chmod 755 usr/bin/b && echo doc > usr/share/b/README");
    control(&b, "pkg-b", "Depends: pkg-a\n");
    // gzip-compressed members, as old packages have
    run_ok(
        Command::new("dpkg-deb")
            .args(["--build", "-Zgzip"])
            .arg(&b)
            .arg(debs.join("pkg-b_1.0-1_all.deb")),
    );

    // The oracle: dpkg-deb -x of each package, in the same order.
    let oracle = dir.join("oracle");
    fs::create_dir_all(&oracle).unwrap();
    for deb in ["pkg-a_1.0-1_all.deb", "pkg-b_1.0-1_all.deb"] {
        run_ok(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(debs.join(deb))
                .arg(&oracle),
        );
    }
    let tar = dir.join("unpacked.tar");
    let out = compose_tar(&debs, &tar, true);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).is_empty(),
        "no warnings expected: {}",
        stderr(&out)
    );
    let ours = dir.join("ours");
    untar(&tar, &ours);

    let want = describe_tree(&oracle);
    let got = describe_tree(&ours);
    let strip = |m: &std::collections::BTreeMap<String, String>| -> Vec<(String, String)> {
        m.iter()
            .map(|(k, v)| (k.clone(), if owners { v.clone() } else { without_owner(v) }))
            .collect()
    };
    assert_eq!(strip(&got), strip(&want));
    // The checks above compare something: setuid, devices and links are there.
    assert!(
        want["usr/bin/a"].contains("mode=4755"),
        "{}",
        want["usr/bin/a"]
    );
    assert!(want["usr/bin/rel-link"].contains("link -> ../share/a/data"));
    if owners {
        assert!(
            want["dev/big"].starts_with("special"),
            "{}",
            want["dev/big"]
        );
        assert!(want["usr/share/a/data"].ends_with("uid=1000 gid=1001"));
    }
    // Hard links stay hard links.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(ours.join("usr/share/a/data")).unwrap().ino(),
        fs::metadata(ours.join("usr/share/a/hardlink"))
            .unwrap()
            .ino()
    );
}

#[test]
fn merged_usr_placement_and_replaces() {
    let dir = scratch("base-compose-usrmerge");
    let debs = dir.join("debs");
    fs::create_dir_all(&debs).unwrap();
    // "a-old" sorts first and ships /bin as a directory, as bookworm-era
    // packages do; "base" ships the merged-/usr links.
    let old = dir.join("a-old");
    fs::create_dir_all(&old).unwrap();
    make_files(&old, "mkdir -p bin sbin && printf 'old\\n' > bin/tool && chmod 755 bin/tool && printf s > sbin/x");
    control(&old, "a-old", "");
    dpkg_build(&old, &debs.join("a-old_1.0-1_all.deb"));
    let base = dir.join("base");
    fs::create_dir_all(&base).unwrap();
    make_files(
        &base,
        "mkdir -p usr/bin usr/sbin usr/lib && ln -s usr/bin bin && ln -s usr/sbin sbin && ln -s usr/lib lib",
    );
    control(&base, "base", "");
    dpkg_build(&base, &debs.join("base_1.0-1_all.deb"));
    // "new" replaces a-old's tool; "other" overwrites it without Replaces.
    let new = dir.join("new");
    fs::create_dir_all(&new).unwrap();
    make_files(
        &new,
        "mkdir -p usr/bin && printf 'new\\n' > usr/bin/tool && chmod 755 usr/bin/tool",
    );
    control(&new, "new", "Replaces: a-old (<< 2)\n");
    dpkg_build(&new, &debs.join("new_1.0-1_all.deb"));

    let tar = dir.join("unpacked.tar");
    let out = compose_tar(&debs, &tar, true);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).is_empty(),
        "Replaces: no warning: {}",
        stderr(&out)
    );
    let root = dir.join("root");
    untar(&tar, &root);
    assert_eq!(
        fs::read_link(root.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    assert_eq!(
        fs::read_link(root.join("sbin")).unwrap(),
        Path::new("usr/sbin")
    );
    assert_eq!(
        fs::read_to_string(root.join("usr/bin/tool")).unwrap(),
        "new\n"
    );
    assert_eq!(fs::read_to_string(root.join("usr/sbin/x")).unwrap(), "s");

    let other = dir.join("zz-other");
    fs::create_dir_all(&other).unwrap();
    make_files(
        &other,
        "mkdir -p usr/bin && printf 'other\\n' > usr/bin/tool && chmod 755 usr/bin/tool",
    );
    control(&other, "zz-other", "");
    dpkg_build(&other, &debs.join("zz-other_1.0-1_all.deb"));
    let out = compose_tar(&debs, &tar, true);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim(),
        "nodeimg: warning: /usr/bin/tool: zz-other overwrites the file of new (no Replaces)"
    );

    // A package that puts a file where another has a directory is refused.
    let clash = dir.join("zzz-clash");
    fs::create_dir_all(&clash).unwrap();
    make_files(&clash, "mkdir -p usr && printf x > usr/lib");
    control(&clash, "zzz-clash", "");
    dpkg_build(&clash, &debs.join("zzz-clash_1.0-1_all.deb"));
    let out = compose_tar(&debs, &tar, true);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("package zzz-clash: /usr/lib where another package has a directory"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn broken_packages_are_one_line_errors() {
    let dir = scratch("base-compose-broken");
    let debs = dir.join("debs");
    fs::create_dir_all(&debs).unwrap();
    fs::write(debs.join("bad_1_all.deb"), b"!<arch>\nnot really").unwrap();
    let out = compose_tar(&debs, &dir.join("x.tar"), true);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("bad_1_all.deb"), "{err}");
    assert!(!dir.join("x.tar").exists());
}

/// Answers SNTP requests on the host's UDP port 123 (the guest's 10.0.2.2:123
/// under QEMU's user network) with the host's clock, until the test ends: the
/// node's timesyncd synchronises from it, and k3s waits for that. Needs root
/// (a port below 1024), as CI has.
fn serve_sntp() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(start_sntp);
}

fn start_sntp() {
    let sock = std::net::UdpSocket::bind("0.0.0.0:123")
        .expect("binding UDP port 123 for the guest's SNTP server (run as root)");
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if n < 48 {
                continue;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            // NTP timestamps: seconds since 1900 and a 32-bit fraction.
            let secs = (now.as_secs() + 2_208_988_800) as u32;
            let frac = ((u64::from(now.subsec_nanos()) << 32) / 1_000_000_000) as u32;
            let mut ts = [0u8; 8];
            ts[..4].copy_from_slice(&secs.to_be_bytes());
            ts[4..].copy_from_slice(&frac.to_be_bytes());
            let mut r = [0u8; 48];
            r[0] = (buf[0] & 0x38) | 4; // no leap warning, the client's version, server mode
            r[1] = 1; // stratum 1
            r[2] = buf[2];
            r[3] = 0xec; // precision 2^-20
            r[12..16].copy_from_slice(b"LOCL");
            r[16..24].copy_from_slice(&ts); // reference
            r[24..32].copy_from_slice(&buf[40..48]); // originate = the client's transmit
            r[32..40].copy_from_slice(&ts); // receive
            r[40..48].copy_from_slice(&ts); // transmit
            let _ = sock.send_to(&r, from);
        }
    });
}

/// The package cache the trixie tests share ($XDG_CACHE_HOME for nodeimg):
/// `NODEIMG_TEST_XDG_CACHE`, else test-images/cache/xdg.
fn xdg_cache() -> PathBuf {
    std::env::var_os("NODEIMG_TEST_XDG_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("test-images/cache/xdg"))
}

/// The qemu-aarch64 lock's packages, fetched into the shared cache with
/// `nodeimg base fetch` (from the machine's Debian mirror when not cached),
/// linked into `dir` as `NNNN_<name>.deb` in lock order for `base compose`;
/// with the lock's `name=version` list.
fn locked_debs(dir: &Path) -> (PathBuf, Vec<String>) {
    run_ok(
        nodeimg()
            .args(["base", "fetch", "qemu-aarch64"])
            .env("XDG_CACHE_HOME", xdg_cache()),
    );
    let text = fs::read_to_string(repo().join("boards/base/qemu-aarch64.lock")).unwrap();
    let lock = nodeimg::base::lock::Lock::parse(&text).unwrap();
    let debs = dir.join("debs");
    let _ = fs::remove_dir_all(&debs);
    fs::create_dir_all(&debs).unwrap();
    let mut versions = Vec::new();
    for (i, p) in lock.packages.iter().enumerate() {
        let cached = xdg_cache().join("nodeimg/debs/sha256").join(&p.sha256);
        std::os::unix::fs::symlink(&cached, debs.join(format!("{i:04}_{}.deb", p.name))).unwrap();
        versions.push(format!("{}={}", p.name, p.version));
    }
    (debs, versions)
}

#[test]
fn trixie_base_composes_and_the_default_build_boots_to_multi_user() {
    let dir = scratch("base-compose-trixie");
    let (debs, versions) = locked_debs(&dir);
    let tar = dir.join("rootfs.tar");
    let out = run(nodeimg()
        .env("SOURCE_DATE_EPOCH", "1750000000")
        .args(["base", "compose", "--console", "ttyAMA0", "--debs"])
        .arg(&debs)
        .arg("--out")
        .arg(&tar));
    assert!(out.status.success(), "{}", stderr(&out));
    // Reproducible: the same packages and SOURCE_DATE_EPOCH give the same bytes.
    let again = dir.join("again.tar");
    let out = run(nodeimg()
        .env("SOURCE_DATE_EPOCH", "1750000000")
        .args(["base", "compose", "--console", "ttyAMA0", "--debs"])
        .arg(&debs)
        .arg("--out")
        .arg(&again));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        fs::read(&tar).unwrap() == fs::read(&again).unwrap(),
        "two composes of the same packages differ"
    );
    fs::remove_file(&again).unwrap();
    let root = dir.join("root");
    untar(&tar, &root);
    // What the steps made, seen by the field's own tools where there is one.
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    for user in [
        "root:x:0:0:",
        "sshd:x:",
        "messagebus:x:",
        "systemd-network:x:",
    ] {
        assert!(passwd.contains(user), "{user} missing:\n{passwd}");
    }
    run_ok(
        Command::new("pwck")
            .args(["-r", "-q"])
            .arg(root.join("etc/passwd"))
            .arg(root.join("etc/shadow")),
    );
    run_ok(
        Command::new("grpck")
            .arg("-r")
            .arg(root.join("etc/group"))
            .arg(root.join("etc/gshadow")),
    );
    let status = run_ok(
        Command::new("dpkg-query")
            .arg("--admindir")
            .arg(root.join("var/lib/dpkg"))
            .args(["-W", "-f", "${Package}=${Version} ${db:Status-Abbrev}\n"]),
    );
    let mut listed: Vec<String> = stdout(&status)
        .lines()
        .map(|l| l.trim_end().to_string())
        .collect();
    let mut want: Vec<String> = versions.iter().map(|l| format!("{l} ii")).collect();
    listed.sort();
    want.sort();
    assert_eq!(listed, want);
    let md5 = run(Command::new("sh").arg("-c").arg(format!(
        "cd {} && md5sum --quiet -c var/lib/dpkg/info/systemd.md5sums",
        root.display()
    )));
    assert!(md5.status.success(), "{}", stdout(&md5));
    assert!(
        fs::read_link(root.join("etc/systemd/system/multi-user.target.wants/ssh.service")).is_ok()
    );
    let kver = dir_names(&root.join("usr/lib/modules"));
    assert_eq!(kver.len(), 1, "{kver:?}");
    let modules = root.join("usr/lib/modules").join(&kver[0]);
    let resolved = run_ok(
        Command::new("modprobe")
            .arg("-d")
            .arg(&root)
            .arg("-S")
            .arg(&kver[0])
            .args(["--show-depends", "ext4"]),
    );
    assert!(stdout(&resolved).contains("jbd2"), "{}", stdout(&resolved));
    assert!(modules.join("modules.alias.bin").is_file());
    let bundle = fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(bundle.matches("BEGIN CERTIFICATE").count() > 100);

    // Built without --rootfs and booted under systemd; root logs in over SSH
    // with the key cluster.yaml authorizes.
    let (cfg, key) = joined_config(&dir, "trixie-1", "");
    let out_dir = default_build("qemu-aarch64", &dir, &cfg);
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out_dir.join("qemu-aarch64/build.json")).unwrap())
            .unwrap();
    let base = &manifest["rootfs"]["base"];
    assert_eq!(base["recipe"], "debian-trixie");
    assert_eq!(base["lock"], "boards/base/qemu-aarch64.lock");
    assert_eq!(
        base["lock_sha256"].as_str().unwrap(),
        nodeimg::base::lock::sha256_hex(
            &fs::read(repo().join("boards/base/qemu-aarch64.lock")).unwrap()
        )
    );
    let listed: Vec<String> = base["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}={}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(listed, versions);
    boot_under_systemd(
        &out_dir.join("qemu-aarch64/qemu-aarch64.img"),
        &key,
        &dir,
        &[],
    );
}

/// The default rpi4 image (no --rootfs: Debian trixie with the Pi's firmware,
/// Wi-Fi packages and a getty on ttyS1) boots under systemd, booted by
/// boot-test on `virt` from its own boot partition; its Wi-Fi config from
/// cluster.yaml is installed for wpa_supplicant.
#[test]
fn default_rpi4_build_boots_to_multi_user() {
    let dir = scratch("base-default-rpi4");
    let (cfg, key) = joined_config(
        &dir,
        "pi-1",
        "wifi:\n  ssid: lan\n  psk: wifi-pass-test-1\n  country: DE\n",
    );
    let out_dir = default_build("rpi4", &dir, &cfg);
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out_dir.join("rpi4/build.json")).unwrap()).unwrap();
    let packages = manifest["rootfs"]["base"]["packages"].as_array().unwrap();
    for p in [
        "raspi-firmware",
        "firmware-brcm80211",
        "wpasupplicant",
        "linux-image-arm64",
    ] {
        assert!(
            packages.iter().any(|x| x["name"] == p),
            "rpi4 base lacks {p}"
        );
    }
    boot_under_systemd(
        &out_dir.join("rpi4/rpi4.img"),
        &key,
        &dir,
        &["the node's Wi-Fi config is installed for wpa_supplicant"],
    );
}

/// A test SSH key pair and a cluster.yaml for one agent (stand-in k3s,
/// the host's SNTP server, that key), plus `extra` lines.
fn joined_config(dir: &Path, node: &str, extra: &str) -> (PathBuf, PathBuf) {
    let key = dir.join("id_ed25519");
    let _ = fs::remove_file(&key);
    let _ = fs::remove_file(dir.join("id_ed25519.pub"));
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "boot-test", "-f"])
            .arg(&key),
    );
    let public = fs::read_to_string(dir.join("id_ed25519.pub")).unwrap();
    fs::write(
        dir.join("token"),
        "K10aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa::server:0123456789abcdef\n",
    )
    .unwrap();
    let cfg = dir.join("cluster.yaml");
    fs::write(
        &cfg,
        format!(
            "server: https://10.0.2.2:6443\ntoken_file: token\nnode_name: {node}\n\
             ntp_servers: [10.0.2.2]\n\
             ssh_authorized_keys:\n  - {}\n\
             k3s:\n  source: file\n  path: {}\n{extra}",
            public.trim(),
            repo().join("test-images/k3s-standin").display()
        ),
    )
    .unwrap();
    (cfg, key)
}

/// `nodeimg build BOARD --join CFG` with no --rootfs: the board's base from
/// the shared package cache (fetched first, from the machine's mirror),
/// then built offline on a PATH without apt or dpkg. Returns the output dir.
fn default_build(board: &str, dir: &Path, cfg: &Path) -> PathBuf {
    run_ok(
        nodeimg()
            .args(["base", "fetch", board])
            .env("XDG_CACHE_HOME", xdg_cache()),
    );
    let bin = path_without_apt(dir);
    let out_dir = dir.join("out");
    let _ = fs::remove_dir_all(&out_dir);
    let built = run(nodeimg()
        .env("PATH", &bin)
        .env("XDG_CACHE_HOME", xdg_cache())
        .env("NODEIMG_DEBIAN_MIRROR", "http://127.0.0.1:1/offline")
        .env("SOURCE_DATE_EPOCH", "1750000000")
        .args(["build", board, "--no-cache", "--size", "2G", "--join"])
        .arg(cfg)
        .arg("-o")
        .arg(&out_dir));
    assert!(built.status.success(), "{board}: {}", stderr(&built));
    out_dir
}

/// A directory for PATH holding only the host tools a build needs
/// (e2fsprogs, depmod): no apt, no dpkg.
fn path_without_apt(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    let _ = fs::remove_dir_all(&bin);
    fs::create_dir_all(&bin).unwrap();
    for tool in ["mke2fs", "debugfs", "dumpe2fs", "e2fsck", "depmod"] {
        let found = run_ok(
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}")),
        );
        std::os::unix::fs::symlink(stdout(&found).trim(), bin.join(tool)).unwrap();
    }
    for tool in ["apt-get", "dpkg", "dpkg-deb"] {
        assert!(!bin.join(tool).exists());
    }
    bin
}

/// `boot-test --systemd --ssh-key` of `image` with the host's SNTP server
/// running: every systemd, k3s, SSH and immutability check, plus `extra`.
fn boot_under_systemd(image: &Path, key: &Path, dir: &Path, extra: &[&str]) {
    serve_sntp();
    let res = run(nodeimg()
        .arg("boot-test")
        .arg(image)
        .args(["--systemd", "--timeout", "240", "--ssh-key"])
        .arg(key)
        .arg("--work-dir")
        .arg(dir.join("work")));
    let text = stdout(&res);
    eprintln!("{text}");
    for check in [
        "first boot reaches a shell",
        "systemd reaches multi-user.target with no failed units",
        "sshd listens on port 22",
        "networkd has a DHCP address",
        "systemd-timesyncd is active",
        "k3s started after the clock was synchronised",
        "dpkg lists the installed packages",
        "root logs in over SSH with the key from cluster.yaml, not with a password",
        "/usr is read-only squashfs, / is writable ext4, /etc is tmpfs",
        "data partition and filesystem grew to fill the enlarged disk",
        "same hostname, machine-id, SSH host keys and node password on other hardware",
    ]
    .iter()
    .chain(extra)
    {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("PASS {check}:"))),
            "check {check:?} did not pass:\n{text}\n{}",
            stderr(&res)
        );
    }
}

/// The README's command: `nodeimg build rpi4 --join docs/examples/cluster.yaml`
/// with no --rootfs, on a PATH without apt or dpkg, from the warm package
/// cache; the example's k3s release is the stand-in put into nodeimg's k3s
/// cache with its hash list (no network here). Two builds of a node with the
/// same lock and SOURCE_DATE_EPOCH are byte-identical.
#[test]
fn the_example_cluster_yaml_builds_the_default_rpi4_image_reproducibly() {
    let dir = scratch("base-example-rpi4");
    let example = fs::read_to_string(repo().join("docs/examples/cluster.yaml")).unwrap();
    let cfg = dir.join("cluster.yaml");
    fs::write(&cfg, &example).unwrap();
    fs::write(
        dir.join("node-token"),
        "K10aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa::server:0123456789abcdef\n",
    )
    .unwrap();
    let version = example
        .lines()
        .find_map(|l| l.trim().strip_prefix("version:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .expect("the example names a k3s version");
    let node = example
        .lines()
        .find_map(|l| l.trim().strip_prefix("- name:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .expect("the example has an inventory");
    // A cache of our own: the shared packages, the stand-in as the release.
    run_ok(
        nodeimg()
            .args(["base", "fetch", "rpi4"])
            .env("XDG_CACHE_HOME", xdg_cache()),
    );
    let cache = dir.join("cache");
    let _ = fs::remove_dir_all(&cache);
    fs::create_dir_all(cache.join("nodeimg")).unwrap();
    std::os::unix::fs::symlink(xdg_cache().join("nodeimg/debs"), cache.join("nodeimg/debs"))
        .unwrap();
    let release = cache.join("nodeimg/k3s").join(&version);
    fs::create_dir_all(&release).unwrap();
    let standin = fs::read(repo().join("test-images/k3s-standin")).unwrap();
    fs::write(release.join("k3s-arm64"), &standin).unwrap();
    fs::write(
        release.join("sha256sum-arm64.txt"),
        format!("{}  k3s-arm64\n", nodeimg::base::lock::sha256_hex(&standin)),
    )
    .unwrap();
    let bin = path_without_apt(&dir);
    let build = |out: &Path| {
        let _ = fs::remove_dir_all(out);
        let res = run(nodeimg()
            .env("PATH", &bin)
            .env("XDG_CACHE_HOME", &cache)
            .env("NODEIMG_DEBIAN_MIRROR", "http://127.0.0.1:1/offline")
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["build", "rpi4", "--no-cache", "--join"])
            .arg(&cfg)
            .args(["--node", &node, "-o"])
            .arg(out));
        assert!(res.status.success(), "{}", stderr(&res));
        out.join(format!("rpi4-{node}"))
    };
    let a = build(&dir.join("a"));
    let b = build(&dir.join("b"));
    for f in [format!("rpi4-{node}.img"), format!("rpi4-{node}.img.bmap")] {
        let same = run(Command::new("cmp").arg(a.join(&f)).arg(b.join(&f)));
        assert!(same.status.success(), "{f} differs: {}", stdout(&same));
    }
    let sums = |d: &Path| fs::read_to_string(d.join("SHA256SUMS")).unwrap();
    assert_eq!(sums(&a), sums(&b));
}

/// The default Debian node (qemu-aarch64's base, systemd, the stand-in k3s
/// answering the kubelet's health endpoint) with U-Boot as its loader: version
/// 2 pushed from the host over ssh boots on trial, and systemd's
/// nodeimg-update-commit.service commits it after the health check (multi-user,
/// k3s, kubelet) passed.
#[test]
fn the_default_node_commits_a_healthy_update_and_falls_back_from_an_unhealthy_one_under_systemd() {
    const BOARD: &str = "qemu-uboot";
    serve_sntp();
    let dir = scratch("base-update-systemd");
    let (cfg, id) = joined_config(&dir, "updated-1", "");
    let key = dir.join("update.key");
    run_ok(nodeimg().arg("keygen").arg("--out").arg(&key));
    run_ok(
        nodeimg()
            .args(["base", "fetch", "qemu-aarch64"])
            .env("XDG_CACHE_HOME", xdg_cache()),
    );
    let bin = path_without_apt(&dir);
    // `unhealthy`: the k3s stand-in runs but its kubelet health endpoint
    // never answers (a drop-in in an overlay of the board's).
    let build = |version: &str, cmdline_extra: &str, unhealthy: bool| -> PathBuf {
        let vdir = dir.join(format!("v{version}"));
        let data = uboot_data_dir(&vdir, BOARD, cmdline_extra);
        let mut extra: Vec<&str> = Vec::new();
        if unhealthy {
            let board = data.join(format!("boards/{BOARD}.toml"));
            let text = fs::read_to_string(&board).unwrap();
            let edited = text.replacen(
                "overlays = [\"base\"]",
                "overlays = [\"base\", \"unhealthy\"]",
                1,
            );
            assert_ne!(edited, text);
            fs::write(&board, edited).unwrap();
            let dropin = data.join("overlays/unhealthy/etc/systemd/system/k3s.service.d");
            fs::create_dir_all(&dropin).unwrap();
            fs::write(
                dropin.join("unhealthy.conf"),
                "[Service]\nEnvironment=K3S_STANDIN_HEALTHZ=no\n",
            )
            .unwrap();
            extra.extend(["--commit-timeout", "40"]);
        }
        // The qemu-aarch64 lock, for the board of another name.
        fs::create_dir_all(data.join("boards/base")).unwrap();
        let lock = fs::read_to_string(repo().join("boards/base/qemu-aarch64.lock"))
            .unwrap()
            .replacen(
                "board = \"qemu-aarch64\"",
                &format!("board = \"{BOARD}\""),
                1,
            );
        assert!(lock.contains(BOARD));
        fs::write(data.join(format!("boards/base/{BOARD}.lock")), lock).unwrap();
        let out = vdir.join("out");
        let built = run(nodeimg()
            .env("PATH", &bin)
            .env("XDG_CACHE_HOME", xdg_cache())
            .env("NODEIMG_DEBIAN_MIRROR", "http://127.0.0.1:1/offline")
            .env("SOURCE_DATE_EPOCH", "1750000000")
            .args(["build", BOARD, "--no-cache", "--size", "2G", "--data-dir"])
            .arg(&data)
            .arg("--join")
            .arg(&cfg)
            .arg("--sign-key")
            .arg(&key)
            .args(["--build-version", version])
            .args(&extra)
            .arg("-o")
            .arg(&out));
        assert!(built.status.success(), "v{version}: {}", stderr(&built));
        out.join(BOARD)
    };
    let v1 = build("1", "", false);
    let v2 = build("2", "nodeimg.test.v2", false);
    let v3 = build("3", "nodeimg.test.v3", true);
    let image = dir.join("disk.img");
    nodeimg::disk::sparse::copy_file(&v1.join(format!("{BOARD}.img")), &image).unwrap();
    let ssh_port = free_port();
    let spec = nodeimg::qemu::VmSpec {
        qemu: nodeimg::qemu::find_qemu().unwrap(),
        disk: image,
        kernel: Default::default(),
        initrd: Default::default(),
        cmdline: String::new(),
        mem_mib: 1536,
        cpus: 2,
        mac: "52:54:00:12:34:70".into(),
        log: dir.join("console.log"),
        firmware: Some(UBOOT_QEMU.into()),
        extra_drives: Vec::new(),
        forward: vec![(ssh_port, 22)],
        machine: Default::default(),
    };
    let ssh = |what: &str| -> std::process::Output {
        run(Command::new("ssh")
            .args([
                "-n",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
            ])
            .args([
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=10",
            ])
            .args(["-o", "LogLevel=ERROR", "-p", &ssh_port.to_string(), "-i"])
            .arg(&id)
            .arg("root@127.0.0.1")
            .arg(what))
    };
    let wait_ssh = |needle: &str| -> String {
        let start = std::time::Instant::now();
        loop {
            let out = ssh("nodeimg update status");
            let text = stdout(&out);
            if out.status.success() && text.contains(needle) {
                return text;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(300),
                "no {needle:?} over ssh: {text} {}",
                stderr(&out)
            );
            std::thread::sleep(std::time::Duration::from_secs(3));
        }
    };
    let boot = std::time::Duration::from_secs(300);
    let mut vm = nodeimg::qemu::Vm::start(&spec).unwrap();
    vm.wait_for("nodeimg: booting slot a", boot).unwrap();
    let status = wait_ssh("running slot a (version 1), primary slot a");
    assert!(
        status.contains("slot a: partition 2, version 1, good"),
        "{status}"
    );
    let before = stdout(&ssh(
        "cat /etc/machine-id /etc/ssh/ssh_host_ed25519_key.pub; hostname",
    ));

    let pushed = push_to_vm(&v2.join(format!("{BOARD}.bundle")), ssh_port, &id, &[]);
    assert!(pushed.status.success(), "push: {}", stderr(&pushed));
    vm.wait_for("nodeimg: trial boot of slot b", boot).unwrap();
    let committed = vm
        .wait_for("committed: healthy: multi-user, k3s, kubelet", boot)
        .unwrap();
    assert!(committed.contains("slot b (version 2)"), "{committed}");
    let status = wait_ssh("running slot b (version 2), primary slot b");
    assert!(
        status.contains("slot b: partition 3, version 2, good"),
        "{status}"
    );
    assert!(stdout(&ssh("cat /proc/cmdline")).contains("nodeimg.test.v2"));
    let after = stdout(&ssh(
        "cat /etc/machine-id /etc/ssh/ssh_host_ed25519_key.pub; hostname",
    ));
    assert_eq!(before, after, "the node's identity");

    // v3's kubelet never answers: its trial's health check fails after the
    // build's --commit-timeout, and the node goes back to slot b on its own.
    let pushed = push_to_vm(&v3.join(format!("{BOARD}.bundle")), ssh_port, &id, &[]);
    assert!(pushed.status.success(), "push: {}", stderr(&pushed));
    vm.wait_for("nodeimg: trial boot of slot a", boot).unwrap();
    let failed = vm.wait_for("failed its health check", boot).unwrap();
    assert!(failed.contains("slot a (version 3)"), "{failed}");
    vm.wait_for("nodeimg: booting slot b", boot).unwrap();
    let status = wait_ssh("running slot b (version 2), primary slot b");
    assert!(
        status.contains("slot a: partition 2, version 3, failed")
            && status.contains("kubelet")
            && !status.contains("trial of slot"),
        "{status}"
    );
    assert!(!stdout(&ssh("cat /proc/cmdline")).contains("nodeimg.test.v3"));
    assert_eq!(
        stdout(&ssh(
            "cat /etc/machine-id /etc/ssh/ssh_host_ed25519_key.pub; hostname"
        )),
        before,
        "the node's identity"
    );
    vm.kill();
}
