//! What `flash` may write to, decided from facts about the machine: the
//! mount table and the block devices. The facts come through [`Facts`], read
//! from `/proc/self/mountinfo` and `/sys` in production ([`SystemFacts`]) and
//! substituted in tests, so the refusal rules are tested without a disk.
//!
//! The rules (each refusal names its rule and the reason):
//! - a partition is refused: an image carries its own partition table and
//!   goes to the whole disk;
//! - a disk with a mounted partition (or mounted itself) is refused;
//! - a disk whose partitions are used by another device (device-mapper,
//!   LVM, RAID: `holders`) is refused;
//! - the disk that holds the running system's `/` is refused;
//! - a disk smaller than the image is refused.
//!
//! Devices are matched by device number (`major:minor`), never by name.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use thiserror::Error;

use crate::disk::layout::human;

/// A device number, `(major, minor)`.
pub type DevNum = (u32, u32);

/// A block device as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name (`sdb`, `mmcblk0`).
    pub name: String,
    pub dev: DevNum,
    pub size: u64,
    pub model: Option<String>,
    pub removable: bool,
    /// Whether this is a partition rather than a whole disk.
    pub is_partition: bool,
    /// The disk's partitions (name, device number).
    pub partitions: Vec<(String, DevNum)>,
    /// Devices stacked on the disk or its partitions (dm-0, md0).
    pub holders: Vec<String>,
}

impl BlockDevice {
    /// "`/dev/sdb` (SanDisk Ultra, 29.7 GiB, removable)".
    pub fn describe(&self, path: &Path) -> String {
        let mut parts = Vec::new();
        if let Some(m) = &self.model {
            parts.push(m.clone());
        }
        parts.push(human(self.size));
        if self.removable {
            parts.push("removable".into());
        }
        format!("{} ({})", path.display(), parts.join(", "))
    }
}

/// The facts the refusal rules need.
pub trait Facts {
    /// The text of `/proc/self/mountinfo`.
    fn mountinfo(&self) -> Result<String>;
    /// The block device at `path`, or `None` when `path` is not one.
    fn block_device(&self, path: &Path) -> Result<Option<BlockDevice>>;
    /// The whole disk a device number belongs to (itself for a disk), if
    /// it is a block device this machine knows.
    fn disk_of(&self, dev: DevNum) -> Option<DevNum>;
    /// The device number of the block device file at `path` (a mount's source).
    fn dev_of_path(&self, path: &Path) -> Option<DevNum>;
}

/// Where `flash` writes, once the rules allowed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    File(PathBuf),
    Device(PathBuf, BlockDevice),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("refusing {target}: it is partition {name}, not a whole disk (the image holds its own partition table; give the disk)")]
    Partition { target: String, name: String },
    #[error("refusing {target}: {what} is mounted at {mountpoint} (unmount it first)")]
    Mounted {
        target: String,
        what: String,
        mountpoint: String,
    },
    #[error("refusing {target}: it holds the running system's / (mounted from {what})")]
    HoldsRoot { target: String, what: String },
    #[error("refusing {target}: in use by {holders} (device-mapper, LVM or RAID on it)")]
    InUse { target: String, holders: String },
    #[error("refusing {target}: the disk is {size} bytes, smaller than the {image}-byte image")]
    TooSmall {
        target: String,
        size: u64,
        image: u64,
    },
    #[error("refusing {target}: no such block device (see lsblk)")]
    NoSuchDevice { target: String },
    #[error("refusing {target}: it is neither a regular file nor a block device")]
    NotWritable { target: String },
}

/// One mount: its device number, mount point and source, from a line of
/// `/proc/self/mountinfo` (`36 35 98:0 /mnt1 /mnt2 rw - ext3 /dev/root rw`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub dev: Option<DevNum>,
    pub mountpoint: String,
    pub source: String,
}

/// Parses mountinfo; lines that do not fit the format are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dev = fields
                .get(2)?
                .split_once(':')
                .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
            let mountpoint = unescape(fields.get(4)?);
            let sep = fields.iter().position(|f| *f == "-")?;
            let source = unescape(fields.get(sep + 2)?);
            Some(Mount {
                dev,
                mountpoint,
                source,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = |c: &u8| (b'0'..=b'7').contains(c);
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(octal) {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Applies the rules to `path` for an image of `image_size` bytes (when
/// known before writing).
pub fn check_target(path: &Path, image_size: Option<u64>, facts: &dyn Facts) -> Result<Target> {
    let target = path.display().to_string();
    let Some(dev) = facts.block_device(path)? else {
        // A mistyped device name must not become a file in /dev's tmpfs.
        if path.starts_with("/dev") {
            return Err(Refusal::NoSuchDevice { target }.into());
        }
        return match fs::metadata(path) {
            Ok(m) if m.is_file() => Ok(Target::File(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Target::File(path.to_path_buf()))
            }
            Ok(_) => Err(Refusal::NotWritable { target }.into()),
            Err(e) => Err(e).with_context(|| format!("reading {target}")),
        };
    };
    if dev.is_partition {
        return Err(Refusal::Partition {
            target,
            name: dev.name.clone(),
        }
        .into());
    }
    let mut ours: Vec<(String, DevNum)> = vec![(dev.name.clone(), dev.dev)];
    ours.extend(dev.partitions.iter().cloned());
    let mounts = parse_mountinfo(&facts.mountinfo()?);
    let which = |m: &Mount| -> Option<String> {
        let src = facts.dev_of_path(Path::new(&m.source));
        ours.iter()
            .find(|(_, d)| m.dev == Some(*d) || src == Some(*d))
            .map(|(n, _)| n.clone())
    };
    // `/` first: the more serious reason when both apply.
    for m in mounts.iter().filter(|m| m.mountpoint == "/") {
        let on_disk = |d: Option<DevNum>| d.and_then(|d| facts.disk_of(d)) == Some(dev.dev);
        if which(m).is_some() || on_disk(m.dev) || on_disk(facts.dev_of_path(Path::new(&m.source)))
        {
            return Err(Refusal::HoldsRoot {
                target,
                what: m.source.clone(),
            }
            .into());
        }
    }
    if let Some((m, what)) = mounts.iter().find_map(|m| which(m).map(|w| (m, w))) {
        return Err(Refusal::Mounted {
            target,
            what,
            mountpoint: m.mountpoint.clone(),
        }
        .into());
    }
    if !dev.holders.is_empty() {
        return Err(Refusal::InUse {
            target,
            holders: dev.holders.join(", "),
        }
        .into());
    }
    if let Some(image) = image_size {
        if dev.size < image {
            return Err(Refusal::TooSmall {
                target,
                size: dev.size,
                image,
            }
            .into());
        }
    }
    Ok(Target::Device(path.to_path_buf(), dev))
}

/// The facts of this machine: `/proc/self/mountinfo` and `/sys/dev/block`.
pub struct SystemFacts;

fn sys_dir(dev: DevNum) -> Option<PathBuf> {
    fs::canonicalize(format!("/sys/dev/block/{}:{}", dev.0, dev.1)).ok()
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn parse_dev(s: &str) -> Option<DevNum> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn holders(dir: &Path) -> Vec<String> {
    fs::read_dir(dir.join("holders"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

impl Facts for SystemFacts {
    fn mountinfo(&self) -> Result<String> {
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")
    }

    fn block_device(&self, path: &Path) -> Result<Option<BlockDevice>> {
        let md = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if !md.file_type().is_block_device() {
            return Ok(None);
        }
        let dev = (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()));
        let dir = sys_dir(dev).with_context(|| {
            format!(
                "{}: block device {}:{} is not in /sys/dev/block",
                path.display(),
                dev.0,
                dev.1
            )
        })?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sectors: u64 = read_trim(&dir.join("size"))
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("reading the size of {name} from /sys"))?;
        let is_partition = dir.join("partition").exists();
        let mut partitions = Vec::new();
        let mut held = holders(&dir);
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.filter_map(|e| e.ok()) {
                let p = e.path();
                if p.join("partition").exists() {
                    if let Some(d) = read_trim(&p.join("dev")).and_then(|s| parse_dev(&s)) {
                        partitions.push((e.file_name().to_string_lossy().into_owned(), d));
                    }
                    held.extend(holders(&p));
                }
            }
        }
        partitions.sort();
        let model = [dir.join("device/model"), dir.join("device/name")]
            .iter()
            .find_map(|p| read_trim(p));
        Ok(Some(BlockDevice {
            name,
            dev,
            size: sectors.checked_mul(512).context("device size overflows")?,
            model,
            removable: read_trim(&dir.join("removable")).as_deref() == Some("1"),
            is_partition,
            partitions,
            holders: held,
        }))
    }

    fn disk_of(&self, dev: DevNum) -> Option<DevNum> {
        let dir = sys_dir(dev)?;
        if dir.join("partition").exists() {
            read_trim(&dir.parent()?.join("dev")).and_then(|s| parse_dev(&s))
        } else {
            Some(dev)
        }
    }

    fn dev_of_path(&self, path: &Path) -> Option<DevNum> {
        if !path.is_absolute() {
            return None;
        }
        let md = fs::metadata(path).ok()?;
        md.file_type()
            .is_block_device()
            .then(|| (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A machine described by hand: a system disk `sda` (8:0, partitions
    /// 8:1 holding `/` and 8:2 mounted at /home), a card `sdb` (8:16) with
    /// partitions 8:17 and 8:18.
    struct Fake {
        mountinfo: String,
        devices: HashMap<PathBuf, BlockDevice>,
        sources: HashMap<PathBuf, DevNum>,
    }

    fn disk(name: &str, dev: DevNum, size: u64, parts: &[(&str, DevNum)]) -> BlockDevice {
        BlockDevice {
            name: name.into(),
            dev,
            size,
            model: Some(format!("Model {name}")),
            removable: name == "sdb",
            is_partition: false,
            partitions: parts.iter().map(|(n, d)| (n.to_string(), *d)).collect(),
            holders: vec![],
        }
    }

    const ROOT_ON_SDA: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /proc rw shared:2 - proc proc rw
24 22 8:2 / /home rw shared:3 - ext4 /dev/sda2 rw
";

    fn fake(mountinfo: &str) -> Fake {
        let mut devices = HashMap::new();
        devices.insert(
            PathBuf::from("/dev/sda"),
            disk(
                "sda",
                (8, 0),
                500 << 30,
                &[("sda1", (8, 1)), ("sda2", (8, 2))],
            ),
        );
        devices.insert(
            PathBuf::from("/dev/sdb"),
            disk(
                "sdb",
                (8, 16),
                32 << 30,
                &[("sdb1", (8, 17)), ("sdb2", (8, 18))],
            ),
        );
        let mut part = disk("sdb1", (8, 17), 1 << 30, &[]);
        part.is_partition = true;
        devices.insert(PathBuf::from("/dev/sdb1"), part);
        let sources = [
            ("/dev/sda1", (8, 1)),
            ("/dev/sda2", (8, 2)),
            ("/dev/sdb1", (8, 17)),
            ("/dev/sdb2", (8, 18)),
            ("/dev/mapper/root", (253, 0)),
        ]
        .into_iter()
        .map(|(p, d)| (PathBuf::from(p), d))
        .collect();
        Fake {
            mountinfo: mountinfo.into(),
            devices,
            sources,
        }
    }

    impl Facts for Fake {
        fn mountinfo(&self) -> Result<String> {
            Ok(self.mountinfo.clone())
        }
        fn block_device(&self, path: &Path) -> Result<Option<BlockDevice>> {
            Ok(self.devices.get(path).cloned())
        }
        fn disk_of(&self, dev: DevNum) -> Option<DevNum> {
            match dev {
                (8, n) => Some((8, n & !15)),
                _ => None,
            }
        }
        fn dev_of_path(&self, path: &Path) -> Option<DevNum> {
            self.sources.get(path).copied()
        }
    }

    fn refusal(path: &str, size: Option<u64>, f: &Fake) -> Refusal {
        check_target(Path::new(path), size, f)
            .unwrap_err()
            .downcast::<Refusal>()
            .unwrap()
    }

    #[test]
    fn a_free_card_big_enough_is_accepted() {
        let f = fake(ROOT_ON_SDA);
        match check_target(Path::new("/dev/sdb"), Some(4 << 30), &f).unwrap() {
            Target::Device(p, d) => {
                assert_eq!(p, PathBuf::from("/dev/sdb"));
                assert_eq!(d.describe(&p), "/dev/sdb (Model sdb, 32 GiB, removable)");
            }
            t => panic!("{t:?}"),
        }
    }

    #[test]
    fn the_disk_holding_root_is_refused() {
        let f = fake(ROOT_ON_SDA);
        let r = refusal("/dev/sda", Some(1 << 30), &f);
        assert!(matches!(r, Refusal::HoldsRoot { .. }), "{r}");
        assert!(r.to_string().contains("running system's /"), "{r}");
        // / on device-mapper whose device number is not sda's: matched
        // through the disk the partition belongs to is impossible, but the
        // holders rule still catches the stacked partition.
        let mut f = fake("22 1 253:0 / / rw - ext4 /dev/mapper/root rw\n");
        f.devices.get_mut(Path::new("/dev/sda")).unwrap().holders = vec!["dm-0".into()];
        let r = refusal("/dev/sda", Some(1 << 30), &f);
        assert!(matches!(r, Refusal::InUse { .. }), "{r}");
        assert!(r.to_string().contains("dm-0"), "{r}");
    }

    #[test]
    fn a_card_with_a_mounted_partition_is_refused_by_number_or_source() {
        // By device number.
        let f = fake(&format!(
            "{ROOT_ON_SDA}30 22 8:18 / /media/u/CARD\\040DATA rw - ext4 /dev/sdb2 rw\n"
        ));
        let r = refusal("/dev/sdb", Some(1 << 30), &f);
        assert_eq!(
            r,
            Refusal::Mounted {
                target: "/dev/sdb".into(),
                what: "sdb2".into(),
                mountpoint: "/media/u/CARD DATA".into(),
            }
        );
        // btrfs reports an anonymous device number: matched by its source.
        let f = fake(&format!(
            "{ROOT_ON_SDA}31 22 0:45 / /mnt rw - btrfs /dev/sdb1 rw\n"
        ));
        assert!(matches!(
            refusal("/dev/sdb", Some(1 << 30), &f),
            Refusal::Mounted { .. }
        ));
    }

    #[test]
    fn a_partition_or_a_small_disk_is_refused() {
        let f = fake(ROOT_ON_SDA);
        assert!(matches!(
            refusal("/dev/sdb1", Some(1 << 20), &f),
            Refusal::Partition { .. }
        ));
        let r = refusal("/dev/sdb", Some(64 << 30), &f);
        assert!(matches!(r, Refusal::TooSmall { .. }), "{r}");
        assert!(r.to_string().contains("smaller than"), "{r}");
    }

    #[test]
    fn files_are_targets_and_other_things_are_not() {
        let f = fake(ROOT_ON_SDA);
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new.img");
        assert_eq!(
            check_target(&new, Some(1), &f).unwrap(),
            Target::File(new.clone())
        );
        assert!(matches!(
            check_target(dir.path(), Some(1), &f)
                .unwrap_err()
                .downcast::<Refusal>()
                .unwrap(),
            Refusal::NotWritable { .. }
        ));
    }

    #[test]
    fn a_name_under_dev_that_is_no_block_device_is_refused() {
        let f = fake(ROOT_ON_SDA);
        for p in ["/dev/sdq", "/dev/null"] {
            assert!(
                matches!(refusal(p, Some(1), &f), Refusal::NoSuchDevice { .. }),
                "{p}"
            );
        }
    }

    #[test]
    fn mountinfo_lines_are_parsed_and_junk_skipped() {
        let m = parse_mountinfo(
            "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
             garbage\n\
             1 2 x:y / /a\\134b rw - tmpfs none rw\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].dev, Some((98, 0)));
        assert_eq!(m[0].mountpoint, "/mnt2");
        assert_eq!(m[0].source, "/dev/root");
        assert_eq!(m[1].dev, None);
        assert_eq!(m[1].mountpoint, "/a\\b");
    }

    /// This machine's own facts are readable (no disk is written).
    #[test]
    fn system_facts_read_this_machine() {
        let text = SystemFacts.mountinfo().unwrap();
        assert!(parse_mountinfo(&text).iter().any(|m| m.mountpoint == "/"));
        assert_eq!(SystemFacts.block_device(Path::new("/proc")).unwrap(), None);
    }
}
