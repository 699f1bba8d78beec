//! Writes a squashfs 4.0 image (zstd, 128 KiB blocks) of a whole `Tree` with
//! the `backhand` crate. The tree's root becomes the squashfs root.
//!
//! What is kept: every entry's permission bits (including setuid/setgid/sticky),
//! uid, gid (full 32 bits) and mtime; symlink targets; character and block
//! devices; fifos and sockets. The superblock time is the caller's `mtime`.
//!
//! Limits and choices, all checked before anything is written:
//! - Hard links (files sharing one `Data`) become separate files with equal
//!   content: backhand cannot write one inode under two names.
//! - backhand's own duplicate-data detection is switched OFF: it keys on the
//!   xxh64 hash of a file's *first block only* and then reuses the earlier
//!   file's whole extent, so two files that share their first 128 KiB but differ
//!   later would read back wrong (see the `shared_first_block_*` test). Equal
//!   files are therefore stored once per name.
//! - backhand writes only basic file inodes with 32-bit data positions: the sum of
//!   file sizes must stay below 4 GiB, and each mtime must fit in 32 bits.
//! - No xattrs (file capabilities are lost; backhand cannot write them).
//! - Device numbers use squashfs's encoding (Linux `new_encode_dev`): major
//!   up to 4095, minor up to 1048575.
//!
//! Determinism: backhand sorts nodes by path, numbers inodes in that order and
//! reads no clock when `set_time` is used, so the image depends only on the tree
//! and `mtime`. The root's own metadata (mode, owner, mtime) goes through a tiny
//! hand-made seed image because backhand has no setter for the root's mtime and
//! only adds ids to its id table when a non-root node is pushed.

use std::fs::File;
use std::io::{BufWriter, Cursor, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use backhand::compression::{CompressionOptions, Compressor, Zstd};
use backhand::{FilesystemCompressor, FilesystemReader, FilesystemWriter, NodeHeader};

use crate::tree::{Kind, Meta, Tree};

/// Data block size: 128 KiB, the squashfs-tools default.
pub const BLOCK_SIZE: u32 = 128 * 1024;

/// zstd level for data and metadata blocks.
pub const ZSTD_LEVEL: u32 = 15;

/// Longest file name the kernel's squashfs accepts (`SQUASHFS_NAME_LEN`).
const MAX_NAME: usize = 256;

/// Largest total of file contents backhand can address (32-bit block starts),
/// with room for the superblock and compression options in front.
const MAX_CONTENT_BYTES: u64 = u32::MAX as u64 - 64 * 1024;

/// Writes `tree` as a squashfs image to `out` (created or truncated) and
/// returns the image size in bytes. `mtime` becomes the superblock time.
pub fn write(tree: &Tree, out: &Path, mtime: u32) -> Result<u64> {
    write_inner(tree, out, mtime).with_context(|| format!("writing squashfs {}", out.display()))
}

fn write_inner(tree: &Tree, out: &Path, mtime: u32) -> Result<u64> {
    check(tree)?;

    let seed = seed_image(tree.root_meta())?;
    let seed_reader = FilesystemReader::from_reader(Cursor::new(seed))
        .context("reading back the root seed image")?;
    let mut fs = FilesystemWriter::from_fs_reader(&seed_reader)
        .context("starting from the root seed image")?;
    fs.set_block_size(BLOCK_SIZE);
    fs.set_time(mtime);
    fs.set_no_duplicate_files(false);
    fs.set_compressor(
        FilesystemCompressor::new(
            Compressor::Zstd,
            Some(CompressionOptions::Zstd(Zstd {
                compression_level: ZSTD_LEVEL,
            })),
        )
        .context("zstd compressor")?,
    );

    // backhand keeps its nodes in a Vec sorted by path components; pushing in
    // that order makes every insert an append instead of a shift.
    let mut entries: Vec<_> = tree.iter().filter(|(p, _)| !p.is_empty()).collect();
    entries.sort_by(|(a, _), (b, _)| a.split('/').cmp(b.split('/')));

    for (path, entry) in entries {
        let header = node_header(&entry.meta, path)?;
        let res = match &entry.kind {
            Kind::Dir => fs.push_dir(path, header),
            Kind::File(data) => fs.push_file(Cursor::new(data.as_slice()), path, header),
            Kind::Symlink(target) => fs.push_symlink(target, path, header),
            Kind::CharDevice { major, minor } => {
                fs.push_char_device(encode_dev(*major, *minor, path)?, path, header)
            }
            Kind::BlockDevice { major, minor } => {
                fs.push_block_device(encode_dev(*major, *minor, path)?, path, header)
            }
            Kind::Fifo => fs.push_fifo(path, header),
            Kind::Socket => fs.push_socket(path, header),
        };
        res.with_context(|| format!("adding /{path}"))?;
    }

    let file = File::create(out).context("creating the image file")?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let (_, size) = fs.write(&mut w).context("writing the image")?;
    w.flush().context("flushing the image")?;
    Ok(size)
}

/// Refuses what backhand would silently truncate or panic on.
fn check(tree: &Tree) -> Result<()> {
    let mut total: u64 = 0;
    let mut ids = std::collections::BTreeSet::new();
    for (path, entry) in tree.iter() {
        node_header(&entry.meta, path)?;
        if crate::tree::file_name(path).len() > MAX_NAME {
            bail!("/{path}: name longer than squashfs's {MAX_NAME} bytes");
        }
        ids.insert(entry.meta.uid);
        ids.insert(entry.meta.gid);
        if let Kind::File(data) = &entry.kind {
            total = total.saturating_add(data.len() as u64);
        }
        if let Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } = &entry.kind
        {
            encode_dev(*major, *minor, path)?;
        }
    }
    if total > MAX_CONTENT_BYTES {
        bail!(
            "file contents total {total} bytes; this writer supports at most {MAX_CONTENT_BYTES}"
        );
    }
    // Ids are 16-bit indexes into the id table; backhand also stores the
    // table's length in a u16 (and panics beyond it).
    if ids.len() > usize::from(u16::MAX) {
        bail!(
            "{} distinct uids/gids; this writer supports at most 65535",
            ids.len()
        );
    }
    Ok(())
}

fn node_header(meta: &Meta, path: &str) -> Result<NodeHeader> {
    let mtime = u32::try_from(meta.mtime).with_context(|| {
        format!(
            "/{path}: mtime {} does not fit squashfs's 32-bit times",
            meta.mtime
        )
    })?;
    // Masked to 12 bits, so it always fits.
    let permissions = (meta.mode & 0o7777) as u16;
    Ok(NodeHeader::new(permissions, meta.uid, meta.gid, mtime))
}

/// Device number as squashfs stores it (the kernel's `new_encode_dev`):
/// minor bits 0-7, major bits 8-19, minor bits 8-19 at 20-31.
fn encode_dev(major: u32, minor: u32, path: &str) -> Result<u32> {
    if major > 0xfff || minor > 0xf_ffff {
        bail!("/{path}: device {major}:{minor} does not fit squashfs's encoding (major < 4096, minor < 1048576)");
    }
    Ok((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

/// A minimal squashfs image holding only a root directory with `root`'s mode,
/// owner and mtime, and an id table with the root's uid and gid. backhand reads
/// it and `FilesystemWriter::from_fs_reader` carries the root header over.
/// All metadata blocks are stored uncompressed.
fn seed_image(root: Meta) -> Result<Vec<u8>> {
    let mut ids = vec![root.uid];
    if root.gid != root.uid {
        ids.push(root.gid);
    }
    let gid_index: u16 = if root.gid == root.uid { 0 } else { 1 };
    let header = node_header(&root, "")?;

    const UNCOMPRESSED: u16 = 0x8000;
    const NOT_SET: u64 = u64::MAX;
    let inode_table: u64 = 96;
    // 2-byte metadata header + 32-byte basic directory inode.
    let dir_table: u64 = inode_table + 2 + 32;
    let id_block: u64 = dir_table;
    let id_table: u64 = id_block + 2 + 4 * ids.len() as u64;
    let bytes_used: u64 = id_table + 8;

    let mut b = Vec::with_capacity(bytes_used as usize);
    // Superblock.
    b.extend_from_slice(b"hsqs");
    b.extend_from_slice(&1u32.to_le_bytes()); // inode count
    b.extend_from_slice(&0u32.to_le_bytes()); // mod time (replaced by the writer)
    b.extend_from_slice(&BLOCK_SIZE.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // fragment count
    b.extend_from_slice(&6u16.to_le_bytes()); // compressor: zstd
    b.extend_from_slice(&(BLOCK_SIZE.trailing_zeros() as u16).to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes()); // flags
    b.extend_from_slice(&(ids.len() as u16).to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes()); // version major
    b.extend_from_slice(&0u16.to_le_bytes()); // version minor
    b.extend_from_slice(&0u64.to_le_bytes()); // root inode ref: block 0, offset 0
    b.extend_from_slice(&bytes_used.to_le_bytes());
    b.extend_from_slice(&id_table.to_le_bytes());
    b.extend_from_slice(&NOT_SET.to_le_bytes()); // xattr table
    b.extend_from_slice(&inode_table.to_le_bytes());
    b.extend_from_slice(&dir_table.to_le_bytes());
    b.extend_from_slice(&NOT_SET.to_le_bytes()); // fragment table
    b.extend_from_slice(&NOT_SET.to_le_bytes()); // export table
    debug_assert_eq!(b.len() as u64, inode_table);
    // Inode table: one uncompressed metadata block with the root directory.
    b.extend_from_slice(&(UNCOMPRESSED | 32).to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // basic directory
    b.extend_from_slice(&header.permissions.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes()); // uid index
    b.extend_from_slice(&gid_index.to_le_bytes());
    b.extend_from_slice(&header.mtime.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // inode number
    b.extend_from_slice(&0u32.to_le_bytes()); // directory block index
    b.extend_from_slice(&2u32.to_le_bytes()); // link count
    b.extend_from_slice(&3u16.to_le_bytes()); // listing size: empty
    b.extend_from_slice(&0u16.to_le_bytes()); // offset in block
    b.extend_from_slice(&2u32.to_le_bytes()); // parent inode
                                              // The (empty) directory table ends where the id table's block starts.
    debug_assert_eq!(b.len() as u64, id_block);
    b.extend_from_slice(&(UNCOMPRESSED | (4 * ids.len() as u16)).to_le_bytes());
    for id in &ids {
        b.extend_from_slice(&id.to_le_bytes());
    }
    b.extend_from_slice(&id_block.to_le_bytes());
    debug_assert_eq!(b.len() as u64, bytes_used);
    Ok(b)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tree::Entry;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::process::Command;
    use std::sync::Arc;

    /// `ls -l` style mode string for an entry, as unsquashfs and cpio print it.
    pub(crate) fn mode_string(e: &Entry) -> String {
        let t = match e.kind {
            Kind::Dir => 'd',
            Kind::File(_) => '-',
            Kind::Symlink(_) => 'l',
            Kind::CharDevice { .. } => 'c',
            Kind::BlockDevice { .. } => 'b',
            Kind::Fifo => 'p',
            Kind::Socket => 's',
        };
        let m = e.meta.mode;
        let mut s = String::from(t);
        for (shift, special, lower, upper) in [
            (6, 0o4000, 's', 'S'),
            (3, 0o2000, 's', 'S'),
            (0, 0o1000, 't', 'T'),
        ] {
            let bits = (m >> shift) & 7;
            s.push(if bits & 4 != 0 { 'r' } else { '-' });
            s.push(if bits & 2 != 0 { 'w' } else { '-' });
            let x = bits & 1 != 0;
            s.push(match (m & special != 0, x) {
                (true, true) => lower,
                (true, false) => upper,
                (false, true) => 'x',
                (false, false) => '-',
            });
        }
        s
    }

    /// (year, month, day, hour, minute) in UTC of a Unix time.
    pub(crate) fn civil(t: u64) -> (i64, i64, i64, u64, u64) {
        let days = (t / 86400) as i64;
        let secs = t % 86400;
        // Civil-from-days (proleptic Gregorian).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y, m, d, secs / 3600, secs % 3600 / 60)
    }

    /// "YYYY-MM-DD HH:MM" in UTC.
    fn utc_minutes(t: u64) -> String {
        let (y, m, d, hh, mm) = civil(t);
        format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}")
    }

    /// Whether we may expect extracted owners and device nodes to be restored.
    pub(crate) fn running_as_root() -> bool {
        std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    }

    /// Entries in depth-first, name-sorted order (how unsquashfs walks).
    fn walk_order(tree: &Tree) -> Vec<(&String, &Entry)> {
        let mut v: Vec<_> = tree.iter().collect();
        v.sort_by(|(a, _), (b, _)| {
            let a = a.split('/').filter(|c| !c.is_empty());
            let b = b.split('/').filter(|c| !c.is_empty());
            a.cmp(b)
        });
        v
    }

    /// The listing `unsquashfs -lln` must print for `tree`, one string per entry.
    /// Directory sizes are left out (they depend on the on-disk listing).
    fn expected_listing(tree: &Tree) -> Vec<String> {
        walk_order(tree)
            .into_iter()
            .map(|(p, e)| {
                let size = match &e.kind {
                    Kind::Dir => "DIR".to_string(),
                    Kind::File(d) => d.len().to_string(),
                    Kind::Symlink(t) => t.len().to_string(),
                    Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                        // unsquashfs 4.5 lists the raw field as `(int)data >> 8, data & 0xff`,
                        // which is only the real major,minor when minor < 256 (its
                        // extraction decodes fully; `assert_extracted_matches` checks that).
                        let data = encode_dev(*major, *minor, p).unwrap();
                        format!("{},{}", (data as i32) >> 8, data & 0xff)
                    }
                    Kind::Fifo | Kind::Socket => "0".to_string(),
                };
                let name = if p.is_empty() {
                    "squashfs-root".to_string()
                } else {
                    format!("squashfs-root/{p}")
                };
                let mut line = format!(
                    "{} {}/{} {} {} {}",
                    mode_string(e),
                    e.meta.uid,
                    e.meta.gid,
                    size,
                    utc_minutes(e.meta.mtime),
                    name
                );
                if let Kind::Symlink(t) = &e.kind {
                    line.push_str(&format!(" -> {t}"));
                }
                line
            })
            .collect()
    }

    /// Runs `unsquashfs -lln` and normalizes each line to the format above.
    fn actual_listing(img: &Path) -> Vec<String> {
        let out = Command::new("unsquashfs")
            .arg("-lln")
            .arg(img)
            .env("TZ", "UTC")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                // "mode uid/gid size date time path [-> target]", devices "maj, min".
                let l = l.replace(", ", ",");
                let mut f: Vec<String> = l.split_whitespace().map(String::from).collect();
                if f[0].starts_with('d') {
                    f[2] = "DIR".into();
                }
                let mut s = f.join(" ");
                // A device's "maj,  min" may have more spaces; normalized above once.
                while s.contains(", ") {
                    s = s.replace(", ", ",");
                }
                s
            })
            .collect()
    }

    fn unsquashfs_extract(img: &Path, dest: &Path) {
        let out = Command::new("unsquashfs")
            .arg("-no-progress")
            .arg("-d")
            .arg(dest)
            .arg(img)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    /// Compares an extracted directory with the tree: kinds, contents, link
    /// targets, permission bits, mtimes and (as root) owners and device numbers.
    /// `all_mtimes` false checks mtimes of regular files and special files only:
    /// GNU cpio -idm restores neither directory nor symlink times.
    pub(crate) fn assert_extracted_matches(
        tree: &Tree,
        dir: &Path,
        check_root_meta: bool,
        all_mtimes: bool,
    ) {
        let as_root = running_as_root();
        for (p, e) in tree.iter() {
            if p.is_empty() && !check_root_meta {
                continue;
            }
            let path = dir.join(p);
            let md = std::fs::symlink_metadata(&path).unwrap_or_else(|err| panic!("/{p}: {err}"));
            let ft = md.file_type();
            match &e.kind {
                Kind::Dir => assert!(ft.is_dir(), "/{p}"),
                Kind::File(d) => {
                    assert!(ft.is_file(), "/{p}");
                    assert_eq!(&std::fs::read(&path).unwrap(), d.as_ref(), "/{p} content");
                }
                Kind::Symlink(t) => {
                    assert!(ft.is_symlink(), "/{p}");
                    assert_eq!(
                        std::fs::read_link(&path).unwrap().to_str(),
                        Some(t.as_str())
                    );
                }
                Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                    if !as_root {
                        continue;
                    }
                    if matches!(e.kind, Kind::CharDevice { .. }) {
                        assert!(ft.is_char_device(), "/{p}");
                    } else {
                        assert!(ft.is_block_device(), "/{p}");
                    }
                    let rdev = md.rdev();
                    // glibc's major()/minor().
                    let maj = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff);
                    let min = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff);
                    assert_eq!((maj, min), (u64::from(*major), u64::from(*minor)), "/{p}");
                }
                Kind::Fifo => assert!(ft.is_fifo(), "/{p}"),
                Kind::Socket => assert!(ft.is_socket(), "/{p}"),
            }
            if !ft.is_symlink() {
                assert_eq!(md.mode() & 0o7777, e.meta.mode & 0o7777, "/{p} mode");
            }
            if all_mtimes || !(ft.is_dir() || ft.is_symlink()) {
                assert_eq!(md.mtime() as u64, e.meta.mtime, "/{p} mtime");
            }
            if as_root {
                assert_eq!((md.uid(), md.gid()), (e.meta.uid, e.meta.gid), "/{p} owner");
            }
        }
    }

    fn m(mode: u32, mtime: u64) -> Meta {
        Meta::root(mode, mtime)
    }

    /// Every kind of entry, odd modes and owners, small, empty and multi-block
    /// files and a hard link.
    pub(crate) fn sample_tree() -> Tree {
        let mut t = Tree::new(Meta {
            mode: 0o750,
            uid: 1234,
            gid: 5678,
            mtime: 1_700_000_123,
        });
        let d = m(0o755, 1_600_000_000);
        t.insert("bin", Entry::dir(d)).unwrap();
        let big: Vec<u8> = (0..300 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        t.insert("bin/busybox", Entry::file(m(0o4755, 1_650_000_000), big))
            .unwrap();
        t.insert("bin/sh", Entry::symlink(m(0o777, 1_650_000_001), "busybox"))
            .unwrap();
        t.insert(
            "init",
            Entry::file(
                m(0o755, 1_650_000_002),
                b"#!/bin/sh\nexec /bin/sh\n".to_vec(),
            ),
        )
        .unwrap();
        t.insert_with_parents(
            "etc/deep/er/still/conf",
            Entry::file(
                Meta {
                    mode: 0o640,
                    uid: 70_000,
                    gid: 80_000,
                    mtime: 1_650_000_003,
                },
                b"key=value\n".to_vec(),
            ),
            m(0o2755, 1_650_000_004),
        )
        .unwrap();
        t.insert("etc/empty", Entry::file(m(0o600, 1_650_000_005), vec![]))
            .unwrap();
        t.insert("tmp", Entry::dir(m(0o1777, 1_650_000_006)))
            .unwrap();
        t.insert("dev", Entry::dir(m(0o755, 1_650_000_007)))
            .unwrap();
        t.insert(
            "dev/null",
            Entry {
                meta: m(0o666, 1_650_000_008),
                kind: Kind::CharDevice { major: 1, minor: 3 },
            },
        )
        .unwrap();
        t.insert(
            "dev/nvme0n1p300",
            Entry {
                meta: Meta {
                    mode: 0o660,
                    uid: 0,
                    gid: 6,
                    mtime: 1_650_000_009,
                },
                kind: Kind::BlockDevice {
                    major: 259,
                    minor: 300,
                },
            },
        )
        .unwrap();
        t.insert(
            "dev/big",
            Entry {
                meta: m(0o600, 1_650_000_010),
                kind: Kind::CharDevice {
                    major: 4095,
                    minor: 1_048_575,
                },
            },
        )
        .unwrap();
        t.insert(
            "dev/initctl",
            Entry {
                meta: m(0o600, 1_650_000_011),
                kind: Kind::Fifo,
            },
        )
        .unwrap();
        t.insert(
            "dev/log",
            Entry {
                meta: m(0o666, 1_650_000_012),
                kind: Kind::Socket,
            },
        )
        .unwrap();
        // A hard link pair and a name that sorts between "bin" and "bin/...".
        let shared = Arc::new(b"same inode\n".to_vec());
        t.insert(
            "bin-a",
            Entry {
                meta: m(0o644, 1_650_000_013),
                kind: Kind::File(shared.clone()),
            },
        )
        .unwrap();
        t.insert(
            "bin/link-to-a",
            Entry {
                meta: m(0o644, 1_650_000_013),
                kind: Kind::File(shared),
            },
        )
        .unwrap();
        for i in 0..40 {
            t.insert(
                &format!("etc/f{i:02}"),
                Entry::file(
                    m(0o644, 1_650_000_100 + i),
                    format!("file {i}\n").repeat(i as usize).into_bytes(),
                ),
            )
            .unwrap();
        }
        t
    }

    #[test]
    fn listing_matches_tree_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("t.squashfs");
        let tree = sample_tree();
        write(&tree, &img, 1_700_000_000).unwrap();
        assert_eq!(actual_listing(&img), expected_listing(&tree));
    }

    #[test]
    fn extraction_matches_tree_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("t.squashfs");
        let tree = sample_tree();
        write(&tree, &img, 1_700_000_000).unwrap();
        let dest = dir.path().join("x");
        unsquashfs_extract(&img, &dest);
        assert_extracted_matches(&tree, &dest, true, true);
    }

    #[test]
    fn superblock_has_zstd_128k_blocks_and_given_time() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("t.squashfs");
        let size = write(&sample_tree(), &img, 1_234_567_890).unwrap();
        let bytes = std::fs::read(&img).unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(size % 4096, 0, "padded to 4 KiB");
        assert_eq!(&bytes[8..12], &1_234_567_890u32.to_le_bytes(), "mod_time");
        let out = Command::new("unsquashfs")
            .arg("-s")
            .arg(&img)
            .env("TZ", "UTC")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let s = String::from_utf8(out.stdout).unwrap();
        assert!(s.contains("Compression zstd"), "{s}");
        assert!(
            s.contains(&format!("compression-level {ZSTD_LEVEL}")),
            "{s}"
        );
        assert!(s.contains("Block size 131072"), "{s}");
        assert!(s.contains("Fri Feb 13 23:31:30 2009"), "{s}");
    }

    #[test]
    fn empty_tree_has_only_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("e.squashfs");
        let tree = Tree::new(Meta {
            mode: 0o700,
            uid: 100_000,
            gid: 100_000,
            mtime: 86_400 * 365,
        });
        write(&tree, &img, 0).unwrap();
        assert_eq!(actual_listing(&img), expected_listing(&tree));
        let dest = dir.path().join("x");
        unsquashfs_extract(&img, &dest);
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
        assert_extracted_matches(&tree, &dest, true, true);
    }

    #[test]
    fn output_is_deterministic_and_independent_of_insertion_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        let c = dir.path().join("c");
        let tree = sample_tree();
        write(&tree, &a, 42).unwrap();
        write(&tree, &b, 42).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

        // The same entries inserted deepest-last in reverse name order.
        let mut rev = Tree::new(tree.root_meta());
        let mut all: Vec<_> = tree.iter().filter(|(p, _)| !p.is_empty()).collect();
        all.sort_by(|(x, _), (y, _)| {
            x.matches('/')
                .count()
                .cmp(&y.matches('/').count())
                .then(y.cmp(x))
        });
        for (p, e) in all {
            rev.insert(p, e.clone()).unwrap();
        }
        write(&rev, &c, 42).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());
    }

    #[test]
    fn shared_first_block_does_not_merge_files() {
        // backhand's dedup hashes only the first block; with it on, "b" would
        // read back as "a".
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.squashfs");
        let mut tree = Tree::new(m(0o755, 0));
        let mut a = vec![7u8; 200 * 1024];
        let mut b = a.clone();
        a[150 * 1024] = 1;
        b[150 * 1024] = 2;
        b.push(9);
        tree.insert("a", Entry::file(m(0o644, 0), a)).unwrap();
        tree.insert("b", Entry::file(m(0o644, 0), b)).unwrap();
        write(&tree, &img, 0).unwrap();
        let dest = dir.path().join("x");
        unsquashfs_extract(&img, &dest);
        assert_extracted_matches(&tree, &dest, false, true);
    }

    #[test]
    fn longest_allowed_name_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("n.squashfs");
        let mut tree = Tree::new(m(0o755, 0));
        tree.insert(
            &"n".repeat(MAX_NAME),
            Entry::file(m(0o644, 9), b"x".to_vec()),
        )
        .unwrap();
        write(&tree, &img, 0).unwrap();
        assert_eq!(actual_listing(&img), expected_listing(&tree));
    }

    #[test]
    fn device_numbers_use_the_kernel_encoding() {
        assert_eq!(encode_dev(1, 3, "x").unwrap(), 0x103);
        assert_eq!(encode_dev(259, 300, "x").unwrap(), 0x0011_032c);
        assert_eq!(encode_dev(4095, 0xf_ffff, "x").unwrap(), 0xffff_ffff);
        assert!(encode_dev(4096, 0, "x").is_err());
        assert!(encode_dev(0, 0x10_0000, "x").is_err());
    }

    #[test]
    fn refuses_what_squashfs_cannot_hold_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("r.squashfs");
        let mut tree = Tree::new(m(0o755, 0));
        tree.insert("late", Entry::file(m(0o644, 1 << 32), vec![]))
            .unwrap();
        let err = format!("{:#}", write(&tree, &img, 0).unwrap_err());
        assert!(err.contains("/late") && err.contains("32-bit"), "{err}");
        assert!(err.contains("r.squashfs"), "{err}");

        let mut tree = Tree::new(m(0o755, 0));
        tree.insert(
            "dev",
            Entry {
                meta: m(0o600, 0),
                kind: Kind::BlockDevice {
                    major: 5000,
                    minor: 0,
                },
            },
        )
        .unwrap();
        let err = format!("{:#}", write(&tree, &img, 0).unwrap_err());
        assert!(err.contains("/dev") && err.contains("5000"), "{err}");
        assert!(!img.exists(), "nothing written on refusal");

        let mut tree = Tree::new(m(0o755, 0));
        let long = "n".repeat(257);
        tree.insert(&long, Entry::file(m(0o644, 0), vec![]))
            .unwrap();
        let err = format!("{:#}", write(&tree, &img, 0).unwrap_err());
        assert!(err.contains("longer than"), "{err}");
    }
}

#[cfg(test)]
mod perf {
    use super::*;
    use crate::tree::Entry;

    /// Timing on a rootfs-sized tree: ~5,000 files, ~200 MB.
    /// `cargo test --release --lib squashfs::perf -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn five_thousand_files_200mb() {
        let mut tree = Tree::new(Meta::root(0o755, 0));
        let mut seed: u64 = 1;
        let words: Vec<String> = (0..4096).map(|i| format!("w{i:x} ")).collect();
        for i in 0..5000u64 {
            let dir = format!("usr/lib/d{:03}", i % 97);
            let size = if i % 50 == 0 {
                1_500_000
            } else {
                25_000 + (i * 7919) % 20_000
            } as usize;
            let mut data = Vec::with_capacity(size);
            while data.len() < size {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                if seed >> 62 == 0 {
                    data.extend_from_slice(&seed.to_le_bytes());
                } else {
                    data.extend_from_slice(words[(seed >> 52) as usize].as_bytes());
                }
            }
            data.truncate(size);
            tree.insert_with_parents(
                &format!("{dir}/f{i}"),
                Entry::file(Meta::root(0o644, 1), data),
                Meta::root(0o755, 1),
            )
            .unwrap();
        }
        let total = tree.content_bytes();
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("p.squashfs");
        let t = std::time::Instant::now();
        let size = write(&tree, &img, 0).unwrap();
        let el = t.elapsed();
        eprintln!(
            "{} entries, {} MB in, {} MB out, {:.2?} ({:.1} MB/s)",
            tree.len(),
            total / 1_000_000,
            size / 1_000_000,
            el,
            total as f64 / 1e6 / el.as_secs_f64()
        );
        let status = std::process::Command::new("unsquashfs")
            .arg("-s")
            .arg(&img)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
}
