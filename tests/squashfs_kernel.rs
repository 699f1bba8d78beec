//! The Linux kernel as the oracle of our squashfs writer: an image holding
//! every kind of entry is mounted by the test rootfs's arm64 kernel in QEMU
//! (`virt`, TCG) from a tiny busybox initramfs, which reports every entry's
//! type, mode, owner, size, link count, inode, mtime, device numbers, symlink
//! target and SHA-256; each field must match the tree we wrote, and the
//! kernel must log no squashfs error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodeimg::fs::{cpio, squashfs};
use nodeimg::initramfs;
use nodeimg::tree::{reader, Entry, Kind, Meta, Tree};
use sha2::{Digest, Sha256};

const BLOCK: usize = squashfs::BLOCK_SIZE as usize;

/// The test rootfs, or None (test skipped) outside CI when it is not given.
fn rootfs() -> Option<PathBuf> {
    match std::env::var_os("NODEIMG_TEST_ROOTFS") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("CI").is_some() => {
            panic!("NODEIMG_TEST_ROOTFS is not set (CI must build the test rootfs)")
        }
        None => {
            eprintln!(
                "skipped: set NODEIMG_TEST_ROOTFS to the test rootfs (test-images/make-rootfs.sh)"
            );
            None
        }
    }
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn text(len: usize, seed: u64) -> Vec<u8> {
    let words = [
        "squashfs ",
        "kernel ",
        "node ",
        "k3s ",
        "\n",
        "block ",
        "the ",
    ];
    let mut x = seed | 1;
    let mut v = Vec::new();
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
    }
    v.truncate(len);
    v
}

fn meta(mode: u32, uid: u32, gid: u32, mtime: u64) -> Meta {
    Meta {
        mode,
        uid,
        gid,
        mtime,
    }
}

/// Every kind of entry the writer has a case for.
fn tree() -> Tree {
    let mut t = Tree::new(meta(0o755, 0, 0, 1_700_000_000));
    let mut n = 0u64;
    let mut next = || {
        n += 1;
        1_600_000_000 + n * 3_600
    };
    let mut add = |t: &mut Tree, p: &str, mode: u32, uid: u32, gid: u32, kind: Kind| {
        let e = Entry {
            meta: meta(mode, uid, gid, next()),
            kind,
        };
        t.insert(p, e).unwrap();
    };
    let file = |d: Vec<u8>| Kind::File(Arc::new(nodeimg::tree::Content::from_vec(d)));
    add(&mut t, "etc", 0o755, 0, 0, Kind::Dir);
    add(&mut t, "etc/machine-id", 0o444, 0, 0, file(vec![]));
    add(&mut t, "empty", 0o600, 1000, 1000, file(vec![]));
    add(&mut t, "tiny", 0o644, 0, 0, file(b"x\n".to_vec()));
    add(&mut t, "one-block", 0o644, 0, 0, file(noise(BLOCK, 1)));
    add(&mut t, "two-blocks", 0o644, 0, 0, file(text(2 * BLOCK, 2)));
    add(
        &mut t,
        "multi-tail",
        0o755,
        0,
        0,
        file(text(3 * BLOCK + 777, 3)),
    );
    let mut sparse = noise(BLOCK, 4);
    sparse.extend(vec![0u8; 2 * BLOCK]);
    sparse.extend(noise(5000, 5));
    add(&mut t, "sparse", 0o644, 0, 0, file(sparse));
    add(&mut t, "all-zero", 0o644, 0, 0, file(vec![0u8; 2 * BLOCK]));
    add(&mut t, "dup-1", 0o644, 0, 0, file(noise(150_000, 6)));
    add(&mut t, "dup-2", 0o640, 0, 0, file(noise(150_000, 6)));
    let linked = Arc::new(nodeimg::tree::Content::from_vec(text(BLOCK + 4321, 7)));
    add(
        &mut t,
        "hard-1",
        0o640,
        33,
        65534,
        Kind::File(linked.clone()),
    );
    add(
        &mut t,
        "etc/hard-2",
        0o640,
        33,
        65534,
        Kind::File(linked.clone()),
    );
    add(&mut t, "hard-3", 0o640, 33, 65534, Kind::File(linked));
    // One inode, one set of metadata (as a tarball gives its hard links).
    let first = t.get("etc/hard-2").unwrap().meta;
    for p in ["hard-1", "hard-3"] {
        t.get_mut(p).unwrap().meta = first;
    }
    add(
        &mut t,
        &"L".repeat(255),
        0o644,
        0,
        0,
        file(b"long name\n".to_vec()),
    );
    add(
        &mut t,
        "setuid",
        0o4755,
        0,
        0,
        file(b"#!/bin/sh\n".to_vec()),
    );
    add(
        &mut t,
        "all-bits",
        0o7777,
        4_000_000_000,
        70_000,
        file(b"m".to_vec()),
    );
    add(&mut t, "no-bits", 0o000, 0, 0, file(b"n".to_vec()));
    add(&mut t, "setgid-dir", 0o2775, 0, 50, Kind::Dir);
    add(&mut t, "tmp", 0o1777, 0, 0, Kind::Dir);
    add(
        &mut t,
        "link-rel",
        0o777,
        0,
        0,
        Kind::Symlink("one-block".into()),
    );
    add(
        &mut t,
        "link-abs",
        0o777,
        0,
        0,
        Kind::Symlink("/etc/machine-id".into()),
    );
    add(
        &mut t,
        "link-dangling",
        0o777,
        5,
        6,
        Kind::Symlink("nowhere/x".into()),
    );
    add(
        &mut t,
        "link-long",
        0o777,
        0,
        0,
        Kind::Symlink("d/".repeat(700)),
    );
    add(&mut t, "dev", 0o755, 0, 0, Kind::Dir);
    let dev = |major, minor| (major, minor);
    for (name, (major, minor), block) in [
        ("dev/null", dev(1, 3), false),
        ("dev/nvme0n1p300", dev(259, 300), true),
        ("dev/big", dev(4095, 1_048_575), false),
    ] {
        let kind = if block {
            Kind::BlockDevice { major, minor }
        } else {
            Kind::CharDevice { major, minor }
        };
        add(&mut t, name, 0o660, 0, 6, kind);
    }
    add(&mut t, "dev/initctl", 0o600, 0, 0, Kind::Fifo);
    add(&mut t, "dev/log", 0o666, 0, 0, Kind::Socket);
    let deep = "a/b/c/d/e/f/g/h";
    for i in 1..=deep.len() / 2 + 1 {
        add(&mut t, &deep[..2 * i - 1], 0o750, 7, 8, Kind::Dir);
    }
    add(
        &mut t,
        &format!("{deep}/leaf"),
        0o644,
        7,
        8,
        file(text(99, 9)),
    );
    // Thousands of entries: many directory headers and an indexed listing.
    add(&mut t, "many", 0o755, 0, 0, Kind::Dir);
    for i in 0..3000u32 {
        let name = format!("many/e{i:05}{}", "x".repeat((i % 37) as usize));
        match i % 10 {
            0 => add(
                &mut t,
                &name,
                0o777,
                0,
                0,
                Kind::Symlink(format!("../tiny{i}")),
            ),
            1 => add(&mut t, &name, 0o700, i, i + 1, Kind::Dir),
            2 => add(&mut t, &name, 0o644, 0, 0, file(vec![])),
            _ => add(
                &mut t,
                &name,
                0o644,
                0,
                0,
                file(format!("{i}\n").into_bytes()),
            ),
        }
    }
    t
}

/// What the guest must report for one entry.
fn expected(t: &Tree) -> BTreeMap<String, String> {
    let mut links: BTreeMap<usize, usize> = BTreeMap::new();
    for (_, e) in t.iter() {
        if let Kind::File(d) = &e.kind {
            *links.entry(Arc::as_ptr(d) as usize).or_default() += 1;
        }
    }
    t.iter()
        .map(|(p, e)| {
            let (size, nlink, extra) = match &e.kind {
                Kind::Dir => {
                    let subdirs = t
                        .children(p)
                        .filter(|(_, c)| matches!(c.kind, Kind::Dir))
                        .count();
                    ("-".to_string(), subdirs + 2, String::new())
                }
                Kind::File(d) => (
                    d.len().to_string(),
                    links[&(Arc::as_ptr(d) as usize)],
                    format!(
                        " sha256={}",
                        hex::encode(Sha256::digest(d.to_vec().unwrap()))
                    ),
                ),
                Kind::Symlink(s) => (s.len().to_string(), 1, format!(" -> {s}")),
                Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                    ("0".to_string(), 1, format!(" rdev={major:x}:{minor:x}"))
                }
                Kind::Fifo | Kind::Socket => ("0".to_string(), 1, String::new()),
            };
            let line = format!(
                "mode={:o} uid={} gid={} size={size} nlink={nlink} mtime={}{extra}",
                e.st_mode(),
                e.meta.uid,
                e.meta.gid,
                e.meta.mtime
            );
            (p.clone(), line)
        })
        .collect()
}

/// Parses the guest's report into the same shape as `expected`; also returns
/// the inode numbers by path.
fn parse_report(report: &str) -> (BTreeMap<String, String>, BTreeMap<String, u64>) {
    let mut stat = BTreeMap::new();
    let mut ino = BTreeMap::new();
    let mut targets = BTreeMap::new();
    let mut sums = BTreeMap::new();
    let rel = |name: &str| {
        name.strip_prefix("./")
            .or(name.strip_prefix('.'))
            .unwrap_or(name)
            .to_string()
    };
    for line in report.lines() {
        if let Some(rest) = line.strip_prefix("S|") {
            let f: Vec<&str> = rest.splitn(10, '|').collect();
            assert_eq!(f.len(), 10, "{line}");
            let mode = u32::from_str_radix(f[0], 16).unwrap();
            let path = rel(f[9]);
            let size = if mode & 0o170000 == 0o040000 {
                "-".to_string()
            } else {
                f[3].to_string()
            };
            let mut s = format!(
                "mode={mode:o} uid={} gid={} size={size} nlink={} mtime={}",
                f[1], f[2], f[4], f[6]
            );
            if matches!(mode & 0o170000, 0o020000 | 0o060000) {
                s.push_str(&format!(" rdev={}:{}", f[7], f[8]));
            }
            ino.insert(path.clone(), f[5].parse::<u64>().unwrap());
            stat.insert(path, s);
        } else if let Some(rest) = line.strip_prefix("L|") {
            // busybox: 'NAME' -> 'TARGET'
            let (name, target) = rest.split_once("' -> '").expect(line);
            let name = name.strip_prefix('\'').expect(line);
            let target = target.strip_suffix('\'').expect(line);
            targets.insert(rel(name), target.to_string());
        } else if let Some(rest) = line.strip_prefix("H|") {
            let (sum, name) = rest.split_once("  ").expect(line);
            sums.insert(rel(name), sum.to_string());
        }
    }
    for (p, s) in stat.iter_mut() {
        if let Some(sum) = sums.remove(p) {
            s.push_str(&format!(" sha256={sum}"));
        }
        if let Some(t) = targets.remove(p) {
            s.push_str(&format!(" -> {t}"));
        }
    }
    assert!(
        sums.is_empty() && targets.is_empty(),
        "unmatched: {sums:?} {targets:?}"
    );
    (stat, ino)
}

const INIT: &str = r#"#!/bin/busybox sh
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sys /sys
$bb mount -t devtmpfs dev /dev
while read -r m; do
    $bb insmod "/$m" || echo "NODEIMG-TEST insmod $m failed"
done < /etc/nodeimg/modules
i=0
while [ ! -b /dev/vdb ] && [ $i -lt 200 ]; do $bb usleep 50000; i=$((i + 1)); done
{
    if $bb mount -t squashfs -o ro /dev/vda /mnt; then
        cd /mnt
        echo "MOUNTED"
        $bb find . -exec $bb stat -c 'S|%f|%u|%g|%s|%h|%i|%Y|%t|%T|%n' {} +
        $bb find . -type l -exec $bb stat -c 'L|%N' {} +
        $bb find . -type f -exec $bb sha256sum {} + | $bb sed 's/^/H|/'
        cd /
        $bb umount /mnt
    else
        echo "MOUNT FAILED"
    fi
    echo "DMESG"
    $bb dmesg
    echo "END-OF-REPORT"
} > /tmp/report 2>&1
$bb dd if=/tmp/report of=/dev/vdb bs=64k conv=fsync 2>/dev/null
$bb sync
echo "NODEIMG-TEST done"
$bb poweroff -f
"#;

/// The initramfs: busybox, the squashfs and virtio_blk modules (with their
/// dependencies) from the rootfs, and the init above.
fn initramfs(rootfs: &Tree, kernel_release: &str, dir: &Path) -> PathBuf {
    let overlay = dir.join("overlay");
    std::fs::create_dir_all(&overlay).unwrap();
    let init = overlay.join("init");
    std::fs::write(&init, INIT).unwrap();
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let busybox = ["usr/bin/busybox", "bin/busybox"]
        .into_iter()
        .find(|p| matches!(rootfs.get(p).map(|e| &e.kind), Some(Kind::File(_))))
        .expect("no busybox in the rootfs");
    let modules_dir = format!("usr/lib/modules/{kernel_release}");
    let t = initramfs::compose(&initramfs::Inputs {
        rootfs,
        busybox,
        modules_dir: &modules_dir,
        kernel_release,
        modules: &["squashfs".to_string(), "virtio_blk".to_string()],
        optional_modules: &[],
        tools: &[],
        optional_tools: &[],
        overlay: &nodeimg::board::Overlay {
            origin: overlay.display().to_string(),
            tree: nodeimg::tree::reader::read_dir_tree(&overlay).unwrap(),
        },
        mtime: 0,
    })
    .unwrap();
    let out = dir.join("initrd.cpio.gz");
    cpio::write_gzip(&t, &out).unwrap();
    out
}

#[test]
fn linux_reads_every_kind_of_entry_we_write() {
    let Some(rootfs_path) = rootfs() else { return };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("squashfs-kernel");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let rootfs = reader::read_rootfs(&rootfs_path, &std::env::temp_dir()).unwrap();
    let kernel = rootfs
        .iter()
        .find(|(p, e)| p.starts_with("boot/vmlinuz-") && matches!(e.kind, Kind::File(_)))
        .map(|(p, _)| p.clone())
        .expect("no /boot/vmlinuz-* in the rootfs");
    let release = kernel.trim_start_matches("boot/vmlinuz-").to_string();
    let Some(Kind::File(kernel_bytes)) = rootfs.get(&kernel).map(|e| &e.kind) else {
        unreachable!()
    };
    let kernel_path = dir.join("vmlinuz");
    std::fs::write(&kernel_path, kernel_bytes.to_vec().unwrap()).unwrap();
    let initrd = initramfs(&rootfs, &release, &dir);
    drop(rootfs);

    let t = tree();
    let img = dir.join("test.squashfs");
    squashfs::write(&t, &img, 1_700_000_000, &squashfs::Options::default()).unwrap();
    let report_disk = dir.join("report.img");
    std::fs::write(&report_disk, vec![0u8; 8 << 20]).unwrap();

    let console = dir.join("console.log");
    let mut child = Command::new("qemu-system-aarch64")
        .args(["-M", "virt", "-cpu", "cortex-a72", "-m", "512", "-smp", "1"])
        .args([
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
            "-serial",
            "stdio",
        ])
        .args(["-nic", "none"])
        .arg("-kernel")
        .arg(&kernel_path)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyAMA0 panic=-1 rdinit=/init"])
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,readonly=on",
            img.display()
        ))
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw",
            report_disk.display()
        ))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&console).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting qemu-system-aarch64");
    let started = Instant::now();
    let limit = Duration::from_secs(300);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the guest did not power off within {limit:?}; console:\n{}",
                std::fs::read_to_string(&console).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("guest ran {:.1?}", started.elapsed());
    let console_text = String::from_utf8_lossy(&std::fs::read(&console).unwrap()).into_owned();
    let raw = std::fs::read(&report_disk).unwrap();
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let report = String::from_utf8_lossy(&raw[..end]).into_owned();
    std::fs::write(dir.join("report.txt"), &report).unwrap();
    assert!(
        report.contains("END-OF-REPORT"),
        "no complete report; console:\n{console_text}"
    );
    assert!(
        report.lines().any(|l| l == "MOUNTED"),
        "the kernel did not mount the image:\n{report}"
    );
    for text in [&report, &console_text] {
        assert!(
            !text.contains("SQUASHFS error"),
            "the kernel logged squashfs errors:\n{}",
            text.lines()
                .filter(|l| l.contains("SQUASHFS"))
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(
        !report.contains("find: ") && !report.contains("stat: ") && !report.contains("sha256sum: "),
        "the guest could not read some entries:\n{}",
        report
            .lines()
            .filter(|l| l.contains(": "))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );

    let (got, ino) = parse_report(&report);
    let want = expected(&t);
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?}"
    );
    let wrong: Vec<String> = want
        .iter()
        .filter(|(p, w)| got[*p] != **w)
        .take(20)
        .map(|(p, w)| format!("/{p}:\n  want {w}\n  got  {}", got[p]))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // One inode for the three names of a hard link; equal contents are separate inodes.
    assert_eq!(ino["hard-1"], ino["etc/hard-2"]);
    assert_eq!(ino["hard-1"], ino["hard-3"]);
    assert_ne!(ino["dup-1"], ino["dup-2"]);
    assert!(t.len() > 3000 && got.len() == t.len());
}
