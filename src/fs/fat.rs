//! The FAT32 boot partition, written with the `fatfs` crate (no root, no mount).
//!
//! The output is a function of the inputs only: files are added in the map's
//! (sorted) order and every directory entry carries the same fixed timestamp,
//! 1980-01-01 00:00:00, the DOS epoch. (Without its `chrono` feature `fatfs`
//! would stamp the raw value 0, which decodes to the invalid date 1980-00-00.)
//! The volume-label entry `fatfs` writes into the root directory keeps that raw
//! 0 date; nothing reads it.
//!
//! The filesystem is always FAT32 (the Raspberry Pi firmware and every other
//! consumer handle it; FAT16 would be picked by size alone for small partitions).
//! FAT32 needs at least 65525 clusters, so the cluster size is the largest of the
//! usual sizes that still gives that many; 512-byte clusters set the minimum
//! partition size, [`MIN_SIZE`].
//!
//! `fatfs` 0.3.6 writes the "." and ".." entries of new directories wrongly
//! (with long-name entries in front, and ".." of top-level directories
//! pointing at the root cluster instead of 0); `fix_dot_entries` repairs them
//! after the fact so that `fsck.fat` is clean.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use fatfs::{
    Date, DateTime, FatType, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider,
};

use crate::disk::layout::{mib, mib1, MIB};
use crate::tree::Data;

/// Options of the FAT32 volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FatOptions {
    /// The volume serial number (`minfo` shows it as "serial number").
    pub volume_id: u32,
    /// Up to 11 characters: uppercase ASCII letters, digits, space and
    /// `! # $ % & ' ( ) - @ ^ _ \` { } ~`. Empty means no label ("NO NAME").
    pub label: String,
}

const SECTOR: u64 = 512;
/// Fewest clusters a FAT32 volume may have (fewer makes it FAT16 by definition).
const FAT32_MIN_CLUSTERS: u64 = 65525;
/// Reserved sectors `fatfs` puts before the FATs of a FAT32 volume.
const RESERVED_SECTORS: u64 = 8;
/// Size of one directory entry (short or long-name part).
const DIR_ENTRY: u64 = 32;

/// The smallest size a FAT32 volume written here may have: 65525 clusters of
/// 512 bytes, two FATs covering them, and the reserved sectors.
pub const MIN_SIZE: u64 = {
    let fat_sectors = ((FAT32_MIN_CLUSTERS + 2) * 4).div_ceil(SECTOR);
    (RESERVED_SECTORS + 2 * fat_sectors + FAT32_MIN_CLUSTERS) * SECTOR
};

/// Every directory entry gets this time: 1980-01-01 00:00:00.
#[derive(Debug)]
struct DosEpoch;

impl TimeProvider for DosEpoch {
    fn get_current_date(&self) -> Date {
        Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }
    fn get_current_date_time(&self) -> DateTime {
        DateTime {
            date: self.get_current_date(),
            time: Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

static DOS_EPOCH: DosEpoch = DosEpoch;

fn fs_options() -> FsOptions {
    FsOptions::new()
        .update_accessed_date(false)
        .time_provider(&DOS_EPOCH)
}

fn label_bytes(label: &str) -> Result<Option<[u8; 11]>> {
    if label.is_empty() {
        return Ok(None);
    }
    if label.len() > 11 {
        bail!(
            "FAT volume label {label:?} is {} characters long; at most 11 are allowed",
            label.len()
        );
    }
    if label.starts_with(' ') {
        bail!("FAT volume label {label:?} must not start with a space");
    }
    for c in label.chars() {
        let ok = c.is_ascii_uppercase() || c.is_ascii_digit() || " !#$%&'()-@^_`{}~".contains(c);
        if !ok {
            bail!(
                "FAT volume label {label:?} contains {c:?}; only uppercase ASCII letters, digits, \
                 space and !#$%&'()-@^_`{{}}~ are allowed"
            );
        }
    }
    let mut out = [b' '; 11];
    out[..label.len()].copy_from_slice(label.as_bytes());
    Ok(Some(out))
}

/// Clusters of `cluster` bytes a FAT32 volume of `total_sectors` holds, with the
/// layout `fatfs` uses (8 reserved sectors, two FATs, no root-directory region).
fn fat32_clusters(total_sectors: u64, cluster: u64) -> u64 {
    let spc = cluster / SECTOR;
    // FAT sectors f must cover (clusters + 2) 4-byte entries, where clusters
    // = (total - reserved - 2f) / spc. Solve for the smallest f, as fatfs does.
    let t0 = total_sectors.saturating_sub(RESERVED_SECTORS);
    let entries_per_sector = SECTOR / 4;
    let f = (t0 + 2 * spc).div_ceil(spc * entries_per_sector + 2);
    t0.saturating_sub(2 * f) / spc
}

/// The cluster size: the usual one for the size (4 KiB up to 8 GiB, then
/// doubling up to 32 KiB), halved until the volume has enough clusters for FAT32.
fn cluster_size(size: u64) -> Result<u64> {
    let mut cluster: u64 = if size <= 8 * 1024 * MIB {
        4096
    } else if size <= 16 * 1024 * MIB {
        8192
    } else if size <= 32 * 1024 * MIB {
        16384
    } else {
        32768
    };
    let sectors = size / SECTOR;
    // A small margin above the FAT32 minimum keeps clear of the boundary that
    // some implementations compute slightly differently.
    while cluster > SECTOR && fat32_clusters(sectors, cluster) < FAT32_MIN_CLUSTERS + 16 {
        cluster /= 2;
    }
    if fat32_clusters(sectors, cluster) < FAT32_MIN_CLUSTERS {
        bail!(
            "a {} FAT32 partition is too small: FAT32 needs at least {} bytes ({})",
            mib(size),
            MIN_SIZE,
            mib1(MIN_SIZE)
        );
    }
    Ok(cluster)
}

/// A path from the file map, split into its components, checked.
fn split_path(path: &str) -> Result<Vec<&str>> {
    let trimmed = path.trim_start_matches('/');
    let parts: Vec<&str> = trimmed.split('/').collect();
    if trimmed.is_empty()
        || parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        bail!("boot file path {path:?} is not a plain relative path");
    }
    Ok(parts)
}

/// Bytes of directory entries a name takes: its long-name entries (fatfs
/// always writes them) and the short entry.
fn entry_bytes(name: &str) -> u64 {
    let units = name.encode_utf16().count() as u64;
    (units.div_ceil(13) + 1) * DIR_ENTRY
}

/// Clusters the files and their directories take, the root's first cluster included.
fn clusters_needed(files: &[(Vec<&str>, &Data)], cluster: u64, label: bool) -> u64 {
    // directory path -> bytes of entries in it
    let mut dirs: BTreeMap<String, u64> = BTreeMap::new();
    dirs.insert(String::new(), if label { DIR_ENTRY } else { 0 });
    let mut total = 0;
    for (parts, data) in files {
        total += data.len().div_ceil(cluster);
        let last = parts.len() - 1;
        for depth in 0..last {
            let dir = parts[..=depth].join("/");
            if let std::collections::btree_map::Entry::Vacant(v) = dirs.entry(dir) {
                // "." and ".."
                v.insert(2 * DIR_ENTRY);
                *dirs.entry(parts[..depth].join("/")).or_insert(0) += entry_bytes(parts[depth]);
            }
        }
        *dirs.entry(parts[..last].join("/")).or_insert(0) += entry_bytes(parts[last]);
    }
    total
        + dirs
            .values()
            .map(|b| (*b).max(1).div_ceil(cluster))
            .sum::<u64>()
}

/// Writes a FAT32 filesystem with `files` into `file`'s `size` bytes from
/// `base` (a disk image's boot partition, in its place: nothing is copied
/// afterwards). Keys are paths such as "config.txt" or "overlays/foo.dtbo";
/// missing directories are created. Contents are streamed from where they
/// are (a 44 MB kernel is not copied into memory). The region must read as
/// zeros (the holes of a new image) and lie within the file: only what the
/// filesystem needs is written, and what is not written is not read. Not
/// synced: the build syncs the whole image.
pub fn write_into(
    file: &File,
    base: u64,
    size: u64,
    opts: &FatOptions,
    files: &BTreeMap<String, Data>,
) -> Result<()> {
    write_inner(file, base, size, opts, files).context("writing the FAT32 boot filesystem")
}

fn write_inner(
    file: &File,
    base: u64,
    size: u64,
    opts: &FatOptions,
    files: &BTreeMap<String, Data>,
) -> Result<()> {
    let label = label_bytes(&opts.label)?;
    if size % SECTOR != 0 {
        bail!("FAT32 partition size {size} is not a multiple of {SECTOR} bytes");
    }
    if size / SECTOR > u64::from(u32::MAX) {
        bail!(
            "a {} FAT32 partition is too large (at most 2 TiB)",
            mib(size)
        );
    }
    let cluster = cluster_size(size)?;

    // Check paths: plain, and no two differing only in case (FAT compares
    // names case-insensitively) or a file standing where a directory must be.
    let mut checked: Vec<(Vec<&str>, &Data)> = Vec::with_capacity(files.len());
    let mut folded: BTreeMap<String, (String, bool)> = BTreeMap::new();
    for (path, data) in files {
        let parts = split_path(path)?;
        for depth in 1..=parts.len() {
            let is_dir = depth < parts.len();
            let prefix = parts[..depth].join("/");
            match folded.get(&prefix.to_lowercase()) {
                Some((other, _)) if *other != prefix => bail!(
                    "boot files {other:?} and {prefix:?} differ only in case, \
                     which FAT cannot tell apart"
                ),
                Some((_, true)) if is_dir => {}
                Some((_, other_dir)) if *other_dir != is_dir => {
                    bail!("boot path {prefix:?} is both a file and a directory")
                }
                Some(_) => bail!("boot file {prefix:?} is given twice"),
                None => {
                    folded.insert(prefix.to_lowercase(), (prefix, is_dir));
                }
            }
        }
        checked.push((parts, data));
    }

    let file_len = file.metadata().context("reading the image's length")?.len();
    if base.checked_add(size).is_none_or(|end| end > file_len) {
        bail!("internal: the boot partition ({size} bytes at {base}) lies beyond the image's {file_len} bytes");
    }

    let mut fmt = FormatVolumeOptions::new()
        .fat_type(FatType::Fat32)
        .bytes_per_cluster(cluster as u32)
        .volume_id(opts.volume_id);
    if let Some(l) = label {
        fmt = fmt.volume_label(l);
    }
    let mut cached = PageCache::over_zeros(file, base, size);
    fatfs::format_volume(&mut cached, fmt).context("formatting FAT32")?;
    cached.seek(SeekFrom::Start(0))?;

    let fs =
        FileSystem::new(&mut cached, fs_options()).context("opening the new FAT32 filesystem")?;
    if fs.fat_type() != FatType::Fat32 {
        bail!(
            "fatfs made a {:?} filesystem instead of FAT32",
            fs.fat_type()
        );
    }
    // Counting the free clusters also makes fatfs keep the FSInfo sector's
    // free-cluster count up to date (fsck.fat checks it); left alone it stays
    // "unknown".
    let stats = fs.stats().context("counting free clusters")?;
    let capacity = u64::from(stats.total_clusters()) * u64::from(stats.cluster_size());
    let needed = clusters_needed(&checked, cluster, label.is_some()) * cluster;
    if needed > capacity {
        bail!(
            "boot files need {} but the {} boot partition holds {}",
            mib1(needed),
            mib(size),
            mib1(capacity)
        );
    }
    {
        let root = fs.root_dir();
        for (parts, data) in &checked {
            let path = parts.join("/");
            let mut dir = root.clone();
            for d in &parts[..parts.len() - 1] {
                dir = dir
                    .create_dir(d)
                    .map_err(|e| space_error(e, needed, capacity, size))
                    .with_context(|| format!("creating directory for {path:?}"))?;
            }
            let name = parts[parts.len() - 1];
            let mut f = dir
                .create_file(name)
                .map_err(|e| space_error(e, needed, capacity, size))
                .with_context(|| format!("creating {path:?}"))?;
            f.truncate()?;
            // The reader refuses a file shorter or longer than listed.
            data.reader()
                .and_then(|mut r| std::io::copy(&mut r, &mut f))
                .map_err(|e| space_error(e, needed, capacity, size))
                .with_context(|| format!("writing {path:?} ({} bytes)", data.len()))?;
            f.flush().with_context(|| format!("writing {path:?}"))?;
        }
    }
    fs.unmount().context("finishing the FAT32 filesystem")?;
    cached.write_back().context("writing the image")?;
    fix_dot_entries(file, base).context("fixing the \".\" and \"..\" directory entries")?;
    Ok(())
}

/// Bytes per page of [`PageCache`].
const PAGE: usize = 64 * 1024;
/// Pages [`PageCache`] holds before it writes back the least recently used.
const MAX_PAGES: usize = 64;

/// A write-back cache of 64 KiB pages (at most 4 MiB) over the partition
/// file. `fatfs` reads and writes a few bytes at a time (4-byte FAT entries,
/// 512-byte sectors, one cluster of file data), each a seek and a system call
/// of its own: about 700,000 for a 50 MB boot partition, a quarter of a
/// second. Through this cache they are a few thousand. The bytes written are
/// the same; [`PageCache::write_back`] must be called at the end (dropping the
/// cache loses unwritten pages).
struct PageCache<'a> {
    file: &'a File,
    /// Where the cached region starts in the file.
    base: u64,
    /// The region's length as seen through the cache.
    len: u64,
    pos: u64,
    pages: std::collections::HashMap<u64, Page>,
    /// Use counter, for least-recently-used eviction.
    tick: u64,
    /// Pages written to the file at least once: the region starts as zeros
    /// (a new image's holes) and is written only through this cache, so any
    /// other page is zeros and is not read (reading the holes of a 256 MiB
    /// partition, which the kernel fills with zeros, took a fifth of a
    /// second).
    written: std::collections::HashSet<u64>,
}

struct Page {
    data: Box<[u8]>,
    dirty: bool,
    used: u64,
}

impl<'a> PageCache<'a> {
    /// A cache over `len` bytes of `file` from `base`, all zeros, and
    /// written through this cache only.
    fn over_zeros(file: &'a File, base: u64, len: u64) -> Self {
        PageCache {
            file,
            base,
            len,
            pos: 0,
            pages: std::collections::HashMap::new(),
            tick: 0,
            written: std::collections::HashSet::new(),
        }
    }

    /// The page with index `index`, read from the file when not cached.
    fn page(&mut self, index: u64) -> std::io::Result<&mut Page> {
        self.tick += 1;
        let tick = self.tick;
        if !self.pages.contains_key(&index) {
            if self.pages.len() >= MAX_PAGES {
                self.evict()?;
            }
            let mut data = vec![0u8; PAGE].into_boxed_slice();
            let start = index * PAGE as u64;
            if start < self.len && self.written.contains(&index) {
                // Less than PAGE: fits.
                let n = (self.len - start).min(PAGE as u64) as usize;
                self.file.read_exact_at(&mut data[..n], self.base + start)?;
            }
            self.pages.insert(
                index,
                Page {
                    data,
                    dirty: false,
                    used: tick,
                },
            );
        }
        let page = self
            .pages
            .get_mut(&index)
            .ok_or_else(|| std::io::Error::other("page cache lost a page"))?;
        page.used = tick;
        Ok(page)
    }

    /// Writes back and forgets the least recently used page.
    fn evict(&mut self) -> std::io::Result<()> {
        let Some(index) = self
            .pages
            .iter()
            .min_by_key(|(_, p)| p.used)
            .map(|(i, _)| *i)
        else {
            return Ok(());
        };
        if let Some(page) = self.pages.remove(&index) {
            if page.dirty {
                self.write_page(index, &page.data)?;
            }
        }
        Ok(())
    }

    /// Writes a page's bytes that lie within the file's length.
    fn write_page(&mut self, index: u64, data: &[u8]) -> std::io::Result<()> {
        let start = index * PAGE as u64;
        if start >= self.len {
            return Ok(());
        }
        // Less than PAGE: fits.
        let n = (self.len - start).min(PAGE as u64) as usize;
        // Zeros where the region still holds zeros stay a hole: the image
        // stays sparse and its block map does not list them.
        if !self.written.contains(&index) && data[..n].iter().all(|&b| b == 0) {
            return Ok(());
        }
        self.file.write_all_at(&data[..n], self.base + start)?;
        self.written.insert(index);
        Ok(())
    }

    /// Writes every changed page to the file, in order.
    fn write_back(&mut self) -> std::io::Result<()> {
        let mut dirty: Vec<u64> = self
            .pages
            .iter()
            .filter(|(_, p)| p.dirty)
            .map(|(i, _)| *i)
            .collect();
        dirty.sort_unstable();
        for index in dirty {
            if let Some(mut page) = self.pages.remove(&index) {
                self.write_page(index, &page.data)?;
                page.dirty = false;
                self.pages.insert(index, page);
            }
        }
        Ok(())
    }

    /// The page index and the offset in it of a position.
    fn split(pos: u64) -> (u64, usize) {
        // The remainder is below PAGE.
        (pos / PAGE as u64, (pos % PAGE as u64) as usize)
    }
}

impl Read for PageCache<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let (index, at) = Self::split(self.pos);
        let n = buf
            .len()
            .min(PAGE - at)
            .min(usize::try_from(self.len - self.pos).unwrap_or(usize::MAX));
        let page = self.page(index)?;
        buf[..n].copy_from_slice(&page.data[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for PageCache<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // The region is a partition: nothing is written past its end.
        let left = self.len.saturating_sub(self.pos);
        if left == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let (index, at) = Self::split(self.pos);
        let n = buf
            .len()
            .min(PAGE - at)
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        let page = self.page(index)?;
        page.data[at..at + n].copy_from_slice(&buf[..n]);
        page.dirty = true;
        self.pos += n as u64;
        Ok(n)
    }

    /// Changed pages stay cached until `write_back` (fatfs flushes often).
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for PageCache<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let base = match to {
            SeekFrom::Start(p) => {
                self.pos = p;
                return Ok(p);
            }
            SeekFrom::End(d) => (self.len, d),
            SeekFrom::Current(d) => (self.pos, d),
        };
        self.pos = base
            .0
            .checked_add_signed(base.1)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad seek"))?;
        Ok(self.pos)
    }
}

/// Reads `buf.len()` bytes at `pos`.
fn read_at(file: &File, pos: u64, buf: &mut [u8]) -> Result<()> {
    file.read_exact_at(buf, pos)?;
    Ok(())
}

fn le16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

/// Repairs what `fatfs` 0.3.6 writes at the start of every new directory.
///
/// It stores "." and ".." through its generic entry writer, so each gets a
/// long-name entry in front: the first cluster holds [LFN ".", ".", LFN "..",
/// ".."], where FAT requires "." and ".." in the first two slots (fsck.fat
/// reports and "fixes" this). It also points ".." of a top-level directory at
/// the root's cluster, where FAT32 requires 0. This pass walks the directory
/// tree from the root, moves "." and ".." into slots 0 and 1, marks slots 2
/// and 3 deleted, and sets 0 in ".." for children of the root. It refuses
/// (rather than guesses) if a directory does not start with that exact pattern.
fn fix_dot_entries(file: &File, base: u64) -> Result<()> {
    let mut bpb = [0u8; 512];
    read_at(file, base, &mut bpb)?;
    let bytes_per_sector = le16(&bpb, 11);
    let cluster_size = bytes_per_sector * u64::from(bpb[13]);
    let reserved = le16(&bpb, 14);
    let fats = u64::from(bpb[16]);
    let sectors_per_fat = le32(&bpb, 36);
    let root_cluster = le32(&bpb, 44);
    let total_sectors = le32(&bpb, 32);
    let fat_start = base + reserved * bytes_per_sector;
    let data_start = (reserved + fats * sectors_per_fat) * bytes_per_sector;
    let clusters = (total_sectors * bytes_per_sector).saturating_sub(data_start) / cluster_size;
    let data_start = base + data_start;
    let valid = |c: u64| (2..clusters + 2).contains(&c);
    let offset = |c: u64| data_start + (c - 2) * cluster_size;

    let mut fat_entry = [0u8; 4];
    // (first cluster of a directory, value its ".." must hold; None for the root)
    let mut stack: Vec<(u64, Option<u64>)> = vec![(root_cluster, None)];
    let mut seen = std::collections::BTreeSet::new();
    while let Some((first, dotdot)) = stack.pop() {
        if !valid(first) || !seen.insert(first) {
            bail!("directory at cluster {first} is out of range or seen twice");
        }
        if let Some(dotdot) = dotdot {
            let mut head = [0u8; 4 * DIR_ENTRY as usize];
            read_at(file, offset(first), &mut head)?;
            let slot = |i: usize| &head[i * 32..(i + 1) * 32];
            let is_lfn = |i: usize| slot(i)[11] == 0x0f;
            if !(is_lfn(0)
                && &slot(1)[..11] == b".          "
                && is_lfn(2)
                && &slot(3)[..11] == b"..         ")
            {
                bail!("directory at cluster {first} does not start with the layout fatfs 0.3.6 writes");
            }
            let mut fixed = [0u8; 4 * DIR_ENTRY as usize];
            fixed[..32].copy_from_slice(slot(1));
            fixed[32..64].copy_from_slice(slot(3));
            // ".." cluster: high word at 20, low word at 26.
            let hi = ((dotdot >> 16) as u16).to_le_bytes();
            let lo = (dotdot as u16).to_le_bytes();
            fixed[32 + 20..32 + 22].copy_from_slice(&hi);
            fixed[32 + 26..32 + 28].copy_from_slice(&lo);
            fixed[64] = 0xe5;
            fixed[96] = 0xe5;
            file.write_all_at(&fixed, offset(first))?;
        }
        // Queue the subdirectories, following the cluster chain.
        let mut cluster = first;
        let mut buf = vec![0u8; cluster_size as usize];
        let mut steps = 0;
        'chain: loop {
            read_at(file, offset(cluster), &mut buf)?;
            for e in buf.chunks_exact(32) {
                match e[0] {
                    0 => break 'chain,
                    0xe5 => continue,
                    _ => {}
                }
                let attr = e[11];
                if attr == 0x0f || attr & 0x08 != 0 || attr & 0x10 == 0 {
                    continue;
                }
                if &e[..11] == b".          " || &e[..11] == b"..         " {
                    continue;
                }
                let child = (le16(e, 20) << 16) | le16(e, 26);
                let parent = if dotdot.is_none() { 0 } else { first };
                stack.push((child, Some(parent)));
            }
            read_at(file, fat_start + 4 * cluster, &mut fat_entry)?;
            let next = le32(&fat_entry, 0) & 0x0fff_ffff;
            if next >= 0x0fff_fff8 {
                break;
            }
            steps += 1;
            if !valid(next) || steps > clusters {
                bail!("broken cluster chain in the directory at cluster {first}");
            }
            cluster = next;
        }
    }
    Ok(())
}

/// Turns fatfs's "no space" into the same message as the up-front check.
fn space_error(e: std::io::Error, needed: u64, capacity: u64, size: u64) -> anyhow::Error {
    if e.to_string().contains("No space") {
        anyhow!(
            "boot files need about {} but the {} boot partition holds {} ({e})",
            mib1(needed),
            mib(size),
            mib1(capacity)
        )
    } else {
        anyhow::Error::new(e)
    }
}

/// Reads the file at `path` ("overlays/foo.dtbo") from a FAT image.
pub fn read_file(image: &Path, path: &str) -> Result<Vec<u8>> {
    let file = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let parts = split_path(path)?;
    let fs = FileSystem::new(file, fs_options())
        .with_context(|| format!("reading FAT filesystem {}", image.display()))?;
    let mut data = Vec::new();
    {
        let mut f = fs
            .root_dir()
            .open_file(&parts.join("/"))
            .with_context(|| format!("{path:?} in {}", image.display()))?;
        f.read_to_end(&mut data)
            .with_context(|| format!("reading {path:?} from {}", image.display()))?;
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::test_noise as noise;
    use std::process::Command;

    /// A FAT32 filesystem of `size` bytes with `files` as the new file `out`.
    fn write_data(
        out: &Path,
        size: u64,
        opts: &FatOptions,
        files: &BTreeMap<String, Data>,
    ) -> Result<()> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(out)
            .unwrap();
        f.set_len(size).unwrap();
        write_into(&f, 0, size, opts, files)
    }

    /// [`write_data`] with the contents given as bytes.
    fn write(
        out: &Path,
        size: u64,
        opts: &FatOptions,
        files: &BTreeMap<String, Vec<u8>>,
    ) -> Result<()> {
        let files = files
            .iter()
            .map(|(k, v)| (k.clone(), crate::tree::data(v.clone())))
            .collect();
        write_data(out, size, opts, &files)
    }

    fn opts() -> FatOptions {
        FatOptions {
            volume_id: 0x1234_abcd,
            label: "BOOT".to_string(),
        }
    }

    fn sample_files() -> BTreeMap<String, Vec<u8>> {
        let mut m = BTreeMap::new();
        m.insert(
            "config.txt".into(),
            b"arm_64bit=1\nkernel=vmlinuz\n".to_vec(),
        );
        m.insert("bcm2711-rpi-4-b.dtb".into(), noise(54_321, 1));
        m.insert(
            "initrd.img-6.12.95+deb12-arm64".into(),
            noise(5 * 1024 * 1024, 2),
        );
        m.insert("overlays/foo.dtbo".into(), noise(1000, 3));
        m.insert("overlays/deeper/Mixed Case name.txt".into(), b"x".to_vec());
        m.insert("empty".into(), Vec::new());
        m
    }

    fn run(cmd: &str, args: &[&str]) -> (i32, String) {
        let o = Command::new(cmd)
            .args(args)
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
        let text =
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        (o.status.code().unwrap_or(-1), text)
    }

    /// Written into a partition of a larger file (a disk image), the
    /// filesystem is the same bytes as on its own, and nothing outside the
    /// region changes; the page cache refuses to write past its end.
    #[test]
    fn written_in_place_it_is_the_same_filesystem_and_touches_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let files: BTreeMap<String, Data> = sample_files()
            .into_iter()
            .map(|(k, v)| (k, crate::tree::data(v)))
            .collect();
        let alone = dir.path().join("alone.img");
        write_data(&alone, 64 * MIB, &opts(), &files).unwrap();

        let image = dir.path().join("disk.img");
        let (base, total) = (MIB, 66 * MIB);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&image)
            .unwrap();
        f.set_len(total).unwrap();
        let (head, tail) = (noise(4096, 1), noise(4096, 2));
        f.write_all_at(&head, base - 4096).unwrap();
        f.write_all_at(&tail, base + 64 * MIB).unwrap();
        write_into(&f, base, 64 * MIB, &opts(), &files).unwrap();
        let got = std::fs::read(&image).unwrap();
        let (b, e) = (base as usize, (base + 64 * MIB) as usize);
        assert!(
            got[b..e] == std::fs::read(&alone).unwrap()[..],
            "the filesystem differs"
        );
        assert!(got[b - 4096..b] == head[..] && got[e..e + 4096] == tail[..]);
        assert!(got[..b - 4096]
            .iter()
            .chain(&got[e + 4096..])
            .all(|&x| x == 0));
        // What stays zeros stays a hole: every 64 KiB the region maps holds data.
        let end = base + 64 * MIB;
        let mapped = crate::disk::sparse::data_regions_in(&f, base, end).unwrap();
        assert!(!mapped.is_empty());
        for (from, to) in mapped {
            for at in (from..to.min(end)).step_by(PAGE) {
                let stop = (at as usize + PAGE).min(to as usize);
                assert!(
                    got[at as usize..stop].iter().any(|&x| x != 0),
                    "an all-zero page at {at} was written, not left a hole"
                );
            }
        }

        // A region past the file's end is an error, not a longer file.
        let err = write_into(&f, total - MIB, 64 * MIB, &opts(), &files).unwrap_err();
        assert!(format!("{err:#}").contains("beyond the image"), "{err:#}");
        assert_eq!(f.metadata().unwrap().len(), total);

        let mut cache = PageCache::over_zeros(&f, base, 8192);
        cache.seek(SeekFrom::Start(8000)).unwrap();
        assert!(cache.write_all(&[9u8; 500]).is_err());
        cache.write_back().unwrap();
        assert_eq!(std::fs::read(&image).unwrap()[e..e + 4096], tail[..]);
    }

    #[test]
    fn fsck_mtools_and_read_back_agree() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("boot.img");
        let files = sample_files();
        write(&img, 64 * MIB, &opts(), &files).unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 64 * MIB);

        let p = img.to_str().unwrap();
        let (code, out) = run("fsck.fat", &["-n", "-v", p]);
        assert_eq!(code, 0, "fsck.fat: {out}");
        assert!(
            out.contains("FATs, 32 bit entries"),
            "fsck.fat does not report FAT32: {out}"
        );

        let (code, out) = run("minfo", &["-i", p, "::"]);
        assert_eq!(code, 0, "minfo: {out}");
        assert!(out.contains("serial number: 1234ABCD"), "{out}");
        assert!(out.contains("disk type=\"FAT32   \""), "{out}");
        assert!(out.contains("disk label=\"BOOT       \""), "{out}");
        // The label also sits in the root directory, where Linux's blkid looks.
        let (code, out) = run("mlabel", &["-i", p, "-s", "::"]);
        assert_eq!(code, 0, "mlabel: {out}");
        assert!(out.contains("Volume label is BOOT"), "{out}");

        for (path, data) in &files {
            let o = Command::new("mcopy")
                .args(["-n", "-i", p, &format!("::{path}"), "-"])
                .env("MTOOLS_SKIP_CHECK", "1")
                .output()
                .unwrap();
            assert!(o.status.success(), "mcopy {path}: {:?}", o);
            assert!(o.stdout == *data, "mcopy {path}: content differs");
            assert!(read_file(&img, path).unwrap() == *data, "read_file {path}");
        }
        assert!(read_file(&img, "missing.txt").is_err());
    }

    #[test]
    fn output_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.img");
        let b = dir.path().join("b.img");
        let mut files = sample_files();
        files.remove("initrd.img-6.12.95+deb12-arm64");
        write(&a, 64 * MIB, &opts(), &files).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        write(&b, 64 * MIB, &opts(), &files).unwrap();
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
    }

    #[test]
    fn entries_carry_the_dos_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("boot.img");
        let mut files = BTreeMap::new();
        files.insert("cmdline.txt".to_string(), b"console=ttyS0".to_vec());
        write(&img, 64 * MIB, &opts(), &files).unwrap();
        let (code, out) = run("mdir", &["-i", img.to_str().unwrap(), "::"]);
        assert_eq!(code, 0, "{out}");
        let line = out.lines().find(|l| l.contains("cmdline.txt")).unwrap();
        assert!(line.contains("1980-01-01"), "{line}");
    }

    #[test]
    fn too_many_files_is_reported_with_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("boot.img");
        let mut files = BTreeMap::new();
        files.insert("big".to_string(), vec![7u8; 70 * MIB as usize]);
        let err = format!("{:#}", write(&img, 64 * MIB, &opts(), &files).unwrap_err());
        assert!(
            err.contains("boot files need 70.0 MiB but the 64 MiB boot partition holds 63."),
            "{err}"
        );
    }

    #[test]
    fn smallest_size_works_and_smaller_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("boot.img");
        let mut files = BTreeMap::new();
        files.insert("a.txt".to_string(), b"a".to_vec());
        write(&img, MIN_SIZE, &opts(), &files).unwrap();
        let (code, out) = run("fsck.fat", &["-n", "-v", img.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("FATs, 32 bit entries"), "{out}");
        let err = format!(
            "{:#}",
            write(&img, MIN_SIZE - SECTOR, &opts(), &files).unwrap_err()
        );
        assert!(err.contains("too small"), "{err}");
        assert!(err.contains(&MIN_SIZE.to_string()), "{err}");
    }

    #[test]
    fn cluster_size_keeps_fat32_valid() {
        assert_eq!(cluster_size(64 * MIB).unwrap(), 512);
        assert_eq!(cluster_size(256 * MIB).unwrap(), 2048);
        assert_eq!(cluster_size(512 * MIB).unwrap(), 4096);
        assert_eq!(cluster_size(64 * 1024 * MIB).unwrap(), 32768);
        assert!(cluster_size(32 * MIB).is_err());
    }

    #[test]
    fn bad_labels_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("boot.img");
        let files = BTreeMap::new();
        for label in ["boot", "TWELVE CHARS", "A/B", "ÄBC"] {
            let o = FatOptions {
                volume_id: 1,
                label: label.to_string(),
            };
            let err = format!("{:#}", write(&img, 64 * MIB, &o, &files).unwrap_err());
            assert!(err.contains("label"), "{label}: {err}");
        }
    }

    #[test]
    fn conflicting_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("boot.img");
        let mut files = BTreeMap::new();
        files.insert("Config.txt".to_string(), vec![]);
        files.insert("config.txt".to_string(), vec![]);
        let err = format!("{:#}", write(&img, 64 * MIB, &opts(), &files).unwrap_err());
        assert!(err.contains("differ only in case"), "{err}");

        let mut files = BTreeMap::new();
        files.insert("a".to_string(), vec![]);
        files.insert("a/b".to_string(), vec![]);
        let err = format!("{:#}", write(&img, 64 * MIB, &opts(), &files).unwrap_err());
        assert!(err.contains("both a file and a directory"), "{err}");

        let mut files = BTreeMap::new();
        files.insert("x/../y".to_string(), vec![]);
        assert!(write(&img, 64 * MIB, &opts(), &files).is_err());
    }

    #[test]
    fn files_on_disk_are_streamed_and_one_that_changed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        let bytes = noise(3 * 1024 * 1024 + 12_345, 4);
        std::fs::write(&kernel, &bytes).unwrap();
        let mut files = BTreeMap::new();
        let on_disk = crate::tree::Content::from_path(&kernel, bytes.len() as u64);
        files.insert("slot-a/vmlinuz".to_string(), std::sync::Arc::new(on_disk));
        files.insert("cmdline.txt".to_string(), crate::tree::data(*b"x\n"));
        let img = dir.path().join("boot.img");
        write_data(&img, 64 * MIB, &opts(), &files).unwrap();
        assert!(read_file(&img, "slot-a/vmlinuz").unwrap() == bytes);
        let (code, out) = run("fsck.fat", &["-n", img.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}");

        // Shorter or longer than when it was listed: an error naming the file.
        std::fs::write(&kernel, &bytes[..1000]).unwrap();
        let err = format!(
            "{:#}",
            write_data(&img, 64 * MIB, &opts(), &files).unwrap_err()
        );
        assert!(
            err.contains("\"slot-a/vmlinuz\"")
                && err.contains("changed during the build (1000 bytes"),
            "{err}"
        );
        std::fs::write(&kernel, [&bytes[..], b"more"].concat()).unwrap();
        let err = format!(
            "{:#}",
            write_data(&img, 64 * MIB, &opts(), &files).unwrap_err()
        );
        assert!(
            err.contains("\"slot-a/vmlinuz\"") && err.contains("changed during the build"),
            "{err}"
        );
    }

    #[test]
    fn larger_partition_with_bigger_clusters_is_clean() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("boot.img");
        let mut files = BTreeMap::new();
        files.insert("kernel8.img".to_string(), noise(300_000, 9));
        write(&img, 512 * MIB, &opts(), &files).unwrap();
        let (code, out) = run("fsck.fat", &["-n", "-v", img.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("4096 bytes per cluster"), "{out}");
        assert_eq!(
            read_file(&img, "kernel8.img").unwrap(),
            files["kernel8.img"]
        );
    }

    /// Scattered small reads and writes through the page cache (evicting,
    /// crossing page boundaries, reading back what is still cached) leave
    /// the same bytes as the same operations on the file itself.
    #[test]
    fn page_cache_writes_what_the_file_would_hold() {
        let dir = tempfile::tempdir().unwrap();
        let len = (MAX_PAGES as u64 * 3 + 1) * PAGE as u64 + 1000;
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let open = |p: &Path| {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)
                .unwrap();
            f.set_len(len).unwrap();
            f
        };
        let (mut fa, fb) = (open(&a), open(&b));
        let mut cache = PageCache::over_zeros(&fb, 0, len);
        let r = noise(4096, 7);
        let mut x = 12345u64;
        for step in 0..20_000usize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x >> 40) as usize % 3000 + 1;
            let pos = (x >> 8) % (len - n as u64);
            // Mostly near the start (like a FAT), sometimes anywhere.
            let pos = if step % 3 == 0 {
                pos
            } else {
                pos % (4 * PAGE as u64)
            };
            if x & 1 == 0 {
                let data = &r[..n];
                fa.seek(SeekFrom::Start(pos)).unwrap();
                fa.write_all(data).unwrap();
                cache.seek(SeekFrom::Start(pos)).unwrap();
                cache.write_all(data).unwrap();
            } else {
                let (mut ra, mut rb) = (vec![0u8; n], vec![0u8; n]);
                fa.seek(SeekFrom::Start(pos)).unwrap();
                fa.read_exact(&mut ra).unwrap();
                cache.seek(SeekFrom::Start(pos)).unwrap();
                cache.read_exact(&mut rb).unwrap();
                assert!(ra == rb, "read {n} bytes at {pos} differ");
            }
        }
        // Reads stop at the end of the file.
        cache.seek(SeekFrom::End(-10)).unwrap();
        let mut tail = Vec::new();
        cache.read_to_end(&mut tail).unwrap();
        assert_eq!(tail.len(), 10);
        cache.write_back().unwrap();
        drop(cache);
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
    }
}
