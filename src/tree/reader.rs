//! Rootfs readers: a directory on disk or a tar archive (plain, gzip, zstd or
//! xz; the compression is recognized by its magic bytes, not the file name).
//!
//! Archive entries are checked before they touch the tree: absolute names,
//! ".." components, hard links pointing outside the root and entries that would
//! be written through a symlink already in the tree are refused. A truncated or
//! corrupt archive is an error naming the entry being read, never a silently
//! shorter tree: the archive must end with its end-of-archive blocks, and the
//! rest of a compressed stream is read to its end so that its checksum is
//! verified.
//!
//! Memory does not grow with the rootfs: a directory's files are referred to by
//! their paths, and an archive's file data is decompressed once into a spill
//! file (an unlinked temporary file in the caller's `spill_dir`) and referred
//! to by range (`super::content`).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use anyhow::{anyhow, bail, Context, Result};

use super::{normalize, Content, Data, Entry, Kind, Meta, Tree};

/// Reads a rootfs: a directory if `path` is one, otherwise a tar archive
/// (compression detected from the first bytes) whose file data goes to a spill
/// file in `spill_dir`. The caller names the rootfs in its context ("reading
/// rootfs PATH"); errors from here say only what went wrong inside it, so the
/// path appears once.
pub fn read_rootfs(path: &Path, spill_dir: &Path) -> Result<Tree> {
    let md = fs::metadata(path)?;
    if md.is_dir() {
        read_dir_tree(path)
    } else {
        let file = fs::File::open(path)?;
        read_tar(io::BufReader::with_capacity(1 << 16, file), spill_dir)
    }
}

/// Where an archive's file data goes once decompressed: written once, front to
/// back, then read by range. Unlinked from the start, so it disappears with
/// the last `Content` that refers to it, whatever happens. One spill file may
/// take several archives (`read_tar_spilled`), e.g. the packages of a base.
pub struct Spill {
    file: Arc<fs::File>,
    end: u64,
    buf: Vec<u8>,
}

impl Spill {
    /// A new, empty spill file in `dir`.
    pub fn new(dir: &Path) -> Result<Self> {
        let file = tempfile::tempfile_in(dir)
            .with_context(|| format!("creating a spill file in {}", dir.display()))?;
        Ok(Spill {
            file: Arc::new(file),
            end: 0,
            buf: vec![0u8; 256 * 1024],
        })
    }

    /// Copies exactly `len` bytes of `r` to the end of the spill file.
    fn append(&mut self, r: &mut impl Read, len: u64) -> Result<Content> {
        let start = self.end;
        let mut left = len;
        while left > 0 {
            let want = left.min(self.buf.len() as u64) as usize;
            let n = match r.read(&mut self.buf[..want]) {
                Ok(0) => bail!("unexpected end of file (got {} of {len} bytes)", len - left),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            self.file
                .write_all_at(&self.buf[..n], self.end)
                .context("writing the spill file")?;
            self.end += n as u64;
            left -= n as u64;
        }
        Ok(Content::from_range(self.file.clone(), start, len))
    }
}

// ---------------------------------------------------------------------------
// Directories

/// Reads a directory tree from disk without following symlinks. Ownership,
/// permission bits and mtimes are kept as found (so a tree unpacked by an
/// unprivileged user is owned by that user). Files with several links on the
/// same device and inode share one `Data`.
///
/// Directories are listed on one thread per core (listing and `stat`ing a
/// 100,000-file rootfs took half a second on one); the tree does not depend
/// on which thread read what.
pub fn read_dir_tree(root: &Path) -> Result<Tree> {
    let md = fs::symlink_metadata(root).with_context(|| format!("{}", root.display()))?;
    if !md.is_dir() {
        bail!("{} is not a directory", root.display());
    }
    let walk = Walk {
        queue: Mutex::new((vec![(root.to_path_buf(), String::new())], 0)),
        ready: Condvar::new(),
        links: Mutex::new(HashMap::new()),
        failed: Mutex::new(None),
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let found: Vec<Vec<(String, Entry)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads).map(|_| s.spawn(|| walk.work())).collect();
        workers.into_iter().filter_map(|w| w.join().ok()).collect()
    });
    if let Some(e) = walk.failed.into_inner().ok().flatten() {
        return Err(e);
    }
    if found.len() != threads {
        bail!("a thread listing {} panicked", root.display());
    }
    let entries: Vec<(String, Entry)> = found.into_iter().flatten().collect();
    Tree::from_listing(meta_from_fs(&md), entries)
}

/// The directories still to list, shared by the threads of `read_dir_tree`.
struct Walk {
    /// Directories to list (path on disk, path in the tree) and how many
    /// threads are listing one now.
    queue: Mutex<(Vec<(PathBuf, String)>, usize)>,
    ready: Condvar,
    links: Mutex<HashMap<(u64, u64), Data>>,
    failed: Mutex<Option<anyhow::Error>>,
}

impl Walk {
    /// Lists directories until none is left (or one failed); returns the
    /// entries this thread found.
    fn work(&self) -> Vec<(String, Entry)> {
        let mut found = Vec::new();
        loop {
            let (dir, rel) = {
                let Ok(mut q) = self.queue.lock() else {
                    return found;
                };
                loop {
                    if let Some(next) = q.0.pop() {
                        q.1 += 1;
                        break next;
                    }
                    if q.1 == 0 {
                        self.ready.notify_all();
                        return found;
                    }
                    q = match self.ready.wait(q) {
                        Ok(q) => q,
                        Err(_) => return found,
                    };
                }
            };
            let listed = self.list(&dir, &rel, &mut found);
            let Ok(mut q) = self.queue.lock() else {
                return found;
            };
            q.1 -= 1;
            match listed {
                Ok(subdirs) => {
                    // After a failure, nothing more is listed.
                    if self.failed.lock().map_or(false, |f| f.is_none()) {
                        q.0.extend(subdirs);
                    }
                }
                Err(e) => {
                    if let Ok(mut f) = self.failed.lock() {
                        f.get_or_insert(e);
                    }
                    q.0.clear();
                }
            }
            self.ready.notify_all();
        }
    }

    /// The entries of one directory into `found`; returns its subdirectories.
    fn list(
        &self,
        dir: &Path,
        rel: &str,
        found: &mut Vec<(String, Entry)>,
    ) -> Result<Vec<(PathBuf, String)>> {
        let mut subdirs = Vec::new();
        for de in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let de = de.with_context(|| format!("listing {}", dir.display()))?;
            let name = de.file_name();
            let name = name
                .to_str()
                .ok_or_else(|| anyhow!("{}: file name is not UTF-8", de.path().display()))?;
            let full = dir.join(name);
            let key = super::join(rel, name);
            // The entry's own metadata (not following symlinks), looked up
            // relative to the open directory: no path walk from the root for
            // each of a large rootfs's 100,000 files.
            let md = de
                .metadata()
                .with_context(|| format!("{}", full.display()))?;
            let kind = self.kind(&full, &md)?;
            if kind == Kind::Dir {
                subdirs.push((full, key.clone()));
            }
            found.push((
                key,
                Entry {
                    meta: meta_from_fs(&md),
                    kind,
                },
            ));
        }
        Ok(subdirs)
    }

    fn kind(&self, full: &Path, md: &fs::Metadata) -> Result<Kind> {
        let ft = md.file_type();
        Ok(if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            if md.nlink() > 1 {
                let mut links = self
                    .links
                    .lock()
                    .map_err(|_| anyhow!("a thread listing the rootfs panicked"))?;
                let data = links
                    .entry((md.dev(), md.ino()))
                    .or_insert_with(|| Arc::new(Content::from_listed_path(full, md)));
                Kind::File(data.clone())
            } else {
                Kind::File(Arc::new(Content::from_listed_path(full, md)))
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(full).with_context(|| format!("{}", full.display()))?;
            let target = target
                .to_str()
                .ok_or_else(|| anyhow!("{}: symlink target is not UTF-8", full.display()))?;
            Kind::Symlink(target.to_string())
        } else if ft.is_char_device() {
            Kind::CharDevice {
                major: dev_major(md.rdev()),
                minor: dev_minor(md.rdev()),
            }
        } else if ft.is_block_device() {
            Kind::BlockDevice {
                major: dev_major(md.rdev()),
                minor: dev_minor(md.rdev()),
            }
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_socket() {
            Kind::Socket
        } else {
            bail!("{}: unsupported file type", full.display());
        })
    }
}

fn meta_from_fs(md: &fs::Metadata) -> Meta {
    Meta {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime().max(0) as u64,
    }
}

/// Linux `dev_t` decoding (glibc's `gnu_dev_major`/`gnu_dev_minor`).
fn dev_major(rdev: u64) -> u32 {
    (((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)) as u32
}

fn dev_minor(rdev: u64) -> u32 {
    ((rdev & 0xff) | ((rdev >> 12) & !0xff)) as u32
}

// ---------------------------------------------------------------------------
// Tar archives

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
}

fn detect(magic: &[u8]) -> Compression {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if magic.starts_with(&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]) {
        Compression::Xz
    } else {
        Compression::None
    }
}

/// Records whether the reader below returned end-of-file to the tar parser,
/// so that an archive ending without its end-of-archive blocks is noticed.
struct EofWatch<R> {
    inner: R,
    hit_eof: bool,
}

impl<R: Read> Read for EofWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.hit_eof = true;
        }
        Ok(n)
    }
}

/// Reads a tar archive (plain or compressed) from a stream; file data goes to
/// a spill file in `spill_dir`.
///
/// The tar crate's errors quote raw header bytes, line breaks included; the
/// error returned here is always one line (control characters escaped).
pub fn read_tar<R: Read>(input: R, spill_dir: &Path) -> Result<Tree> {
    let mut spill = Spill::new(spill_dir)?;
    read_tar_spilled(input, &mut spill)
}

/// [`read_tar`] with the file data appended to an existing spill file.
pub fn read_tar_spilled<R: Read>(input: R, spill: &mut Spill) -> Result<Tree> {
    read_tar_inner(input, spill).map_err(|e| anyhow!("{}", one_line(&format!("{e:#}"))))
}

/// `s` with line breaks and other control characters escaped.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn read_tar_inner<R: Read>(mut input: R, spill: &mut Spill) -> Result<Tree> {
    let mut magic = Vec::with_capacity(6);
    (&mut input)
        .take(6)
        .read_to_end(&mut magic)
        .context("reading the archive's first bytes")?;
    let stream = io::Cursor::new(magic.clone()).chain(input);
    match detect(&magic) {
        Compression::None => read_tar_stream(stream, spill),
        Compression::Gzip => read_tar_stream(flate2::read::MultiGzDecoder::new(stream), spill)
            .context("gzip-compressed tar"),
        Compression::Zstd => {
            let dec = zstd::stream::read::Decoder::new(stream).context("zstd decoder")?;
            read_tar_stream(dec, spill).context("zstd-compressed tar")
        }
        Compression::Xz => {
            read_tar_stream(liblzma::read::XzDecoder::new_multi_decoder(stream), spill)
                .context("xz-compressed tar")
        }
    }
}

fn entry_name(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

/// Checks an archive path (entry name or hard link target) and returns it
/// normalized. `what` describes the path in the error.
fn safe_archive_path(raw: &str, what: &str) -> Result<String> {
    if raw.starts_with('/') {
        bail!("{what} {raw:?} escapes the root (absolute path)");
    }
    normalize(raw).ok_or_else(|| anyhow!("{what} {raw:?} escapes the root"))
}

/// Refuses a path whose parent components include a symlink or non-directory
/// already in the tree.
fn check_parents(tree: &Tree, path: &str, name: &str) -> Result<()> {
    let mut prefix_end = 0;
    while let Some(off) = path[prefix_end..].find('/') {
        let p = &path[..prefix_end + off];
        match tree.get(p) {
            None => break,
            Some(Entry {
                kind: Kind::Symlink(_),
                ..
            }) => bail!("entry {name:?} is written through the symlink {p:?}"),
            Some(Entry {
                kind: Kind::Dir, ..
            }) => {}
            Some(_) => bail!("entry {name:?}: {p:?} is not a directory"),
        }
        prefix_end += off + 1;
    }
    Ok(())
}

/// A PAX numeric record, e.g. "uid" or "mtime" (the fractional part of a
/// time is dropped).
fn pax_number(value: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(value).ok()?;
    let int = s.split('.').next()?;
    if int.starts_with('-') {
        return Some(0);
    }
    int.parse().ok()
}

fn read_tar_stream<R: Read>(reader: R, spill: &mut Spill) -> Result<Tree> {
    let mut archive = tar::Archive::new(EofWatch {
        inner: reader,
        hit_eof: false,
    });
    let mut tree = Tree::new(Meta::root(0o755, 0));
    let mut last: Option<String> = None;
    {
        let entries = archive.entries().context("reading the archive")?;
        for entry in entries {
            let mut entry = entry.map_err(|e| match &last {
                Some(name) => anyhow!("after entry {name:?}: {e}"),
                None => anyhow!("at the start of the archive: {e}"),
            })?;
            let raw = entry.path_bytes();
            let name = std::str::from_utf8(&raw)
                .map_err(|_| anyhow!("entry {:?}: name is not UTF-8", entry_name(&raw)))?
                .to_string();
            if entry.header().entry_type().is_pax_global_extensions() {
                continue;
            }
            let path = check_entry_path(&tree, &name)?;
            add_tar_entry(&mut tree, &mut entry, &path, spill)
                .with_context(|| format!("entry {name:?}"))?;
            last = Some(name);
        }
    }
    let mut watch = archive.into_inner();
    if watch.hit_eof {
        match &last {
            Some(name) => bail!(
                "archive ends after entry {name:?} without its end-of-archive marker (truncated?)"
            ),
            None => bail!("not a tar archive: no entries and no end-of-archive marker"),
        }
    }
    // Read what follows the end-of-archive marker (padding) so that a
    // decompressor verifies its trailing checksum and notices truncation.
    io::copy(&mut watch.inner, &mut io::sink()).context("reading past the end of the archive")?;
    Ok(tree)
}

/// Checks an entry name for escapes and returns it normalized.
fn check_entry_path(tree: &Tree, name: &str) -> Result<String> {
    let path = safe_archive_path(name, "entry")?;
    check_parents(tree, &path, name)?;
    Ok(path)
}

/// Adds one archive entry at the (checked, normalized) `path`.
fn add_tar_entry<R: Read>(
    tree: &mut Tree,
    entry: &mut tar::Entry<'_, R>,
    path: &str,
    spill: &mut Spill,
) -> Result<()> {
    let et = entry.header().entry_type();

    let header = entry.header();
    let mut uid = header.uid().context("bad uid")?;
    let mut gid = header.gid().context("bad gid")?;
    let mut mtime = header.mtime().context("bad mtime")?;
    let mode = header.mode().context("bad mode")? & 0o7777;
    if let Some(exts) = entry.pax_extensions().context("reading PAX extensions")? {
        for ext in exts {
            let ext = ext.context("bad PAX extension")?;
            let key = ext.key().unwrap_or("");
            let v = ext.value_bytes();
            match key {
                "uid" => uid = pax_number(v).ok_or_else(|| anyhow!("bad PAX uid"))?,
                "gid" => gid = pax_number(v).ok_or_else(|| anyhow!("bad PAX gid"))?,
                "mtime" => mtime = pax_number(v).ok_or_else(|| anyhow!("bad PAX mtime"))?,
                _ => {}
            }
        }
    }
    let meta = Meta {
        mode,
        uid: u32::try_from(uid).map_err(|_| anyhow!("uid {uid} does not fit 32 bits"))?,
        gid: u32::try_from(gid).map_err(|_| anyhow!("gid {gid} does not fit 32 bits"))?,
        mtime,
    };

    let kind = match et {
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            let size = entry.size();
            Kind::File(Arc::new(spill.append(entry, size)?))
        }
        tar::EntryType::Link => {
            let raw = entry
                .link_name_bytes()
                .ok_or_else(|| anyhow!("hard link without a target"))?;
            let raw = entry_name(&raw);
            let target = safe_archive_path(&raw, "hard link target")?;
            match tree.get(&target) {
                Some(Entry {
                    kind: Kind::File(d),
                    ..
                }) => Kind::File(d.clone()),
                Some(_) => bail!("hard link target {raw:?} is not a regular file"),
                None => bail!("hard link target {raw:?} is not (yet) in the archive"),
            }
        }
        tar::EntryType::Symlink => {
            let raw = entry
                .link_name_bytes()
                .ok_or_else(|| anyhow!("symlink without a target"))?;
            let target =
                std::str::from_utf8(&raw).map_err(|_| anyhow!("symlink target is not UTF-8"))?;
            if target.is_empty() {
                bail!("symlink with an empty target");
            }
            Kind::Symlink(target.to_string())
        }
        tar::EntryType::Char | tar::EntryType::Block => {
            let major = entry
                .header()
                .device_major()
                .context("bad device major")?
                .ok_or_else(|| anyhow!("device entry without a major number"))?;
            let minor = entry
                .header()
                .device_minor()
                .context("bad device minor")?
                .ok_or_else(|| anyhow!("device entry without a minor number"))?;
            if et == tar::EntryType::Char {
                Kind::CharDevice { major, minor }
            } else {
                Kind::BlockDevice { major, minor }
            }
        }
        tar::EntryType::Fifo => Kind::Fifo,
        tar::EntryType::Directory => Kind::Dir,
        other => bail!("unsupported tar entry type {:?}", other.as_byte() as char),
    };

    if path.is_empty() {
        // "./" describes the root itself.
        if kind != Kind::Dir {
            bail!("the root of the archive is not a directory");
        }
        tree.insert("", Entry::dir(meta))?;
        return Ok(());
    }
    if kind == Kind::Dir {
        if let Some(existing) = tree.get_mut(path) {
            if existing.kind == Kind::Dir {
                // A repeated directory entry updates its metadata and keeps
                // what is below it, as tar extraction does.
                existing.meta = meta;
                return Ok(());
            }
        }
    }
    tree.insert_with_parents(path, Entry { meta, kind }, Meta::root(0o755, mtime))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Builds an uncompressed tar with `build`, finished with end-of-archive blocks.
    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    }

    fn add_file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    }

    fn add_dir(b: &mut tar::Builder<Vec<u8>>, name: &str) {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, name, io::empty()).unwrap();
    }

    fn add_link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &str, target: &str) {
        let mut h = header(kind, 0o777, 0);
        b.append_link(&mut h, name, target).unwrap();
    }

    /// Writes a raw 512-byte ustar header with `name` copied verbatim (the
    /// tar crate's builder refuses ".." and absolute names, which is exactly
    /// what we must test).
    fn raw_entry(out: &mut Vec<u8>, name: &str, kind: u8, link: &str, data: &[u8]) {
        let mut h = tar::Header::new_ustar();
        {
            let bytes = h.as_mut_bytes();
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            bytes[157..157 + link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(5);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        out.extend(std::iter::repeat(0).take(pad));
    }

    fn finish(mut out: Vec<u8>) -> Vec<u8> {
        out.extend(std::iter::repeat(0).take(1024));
        out
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zst(data: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(data, 3).unwrap()
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn read_bytes(bytes: &[u8]) -> Result<Tree> {
        read_tar(bytes, &std::env::temp_dir())
    }

    fn err_of(bytes: &[u8]) -> String {
        format!("{:#}", read_bytes(bytes).unwrap_err())
    }

    fn file_data<'a>(t: &'a Tree, p: &str) -> &'a Data {
        match &t.get(p).unwrap_or_else(|| panic!("{p} missing")).kind {
            Kind::File(d) => d,
            k => panic!("{p} is {k:?}"),
        }
    }

    fn sample() -> Vec<u8> {
        tar_with(|b| {
            add_dir(b, "./");
            add_dir(b, "./usr/");
            add_dir(b, "./usr/bin/");
            add_file(b, "./usr/bin/hello", b"#!/bin/sh\necho hi\n");
            add_link(b, tar::EntryType::Symlink, "./bin", "usr/bin");
            add_link(b, tar::EntryType::Link, "./usr/bin/hi", "./usr/bin/hello");
        })
    }

    /// A directory read on several threads gives every entry once, in the
    /// tree's order, with hard links sharing their data; a name that is not
    /// UTF-8 is refused by name.
    #[test]
    fn directories_are_read_whole_with_links_shared() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let mut want = Vec::new();
        for a in 0..6 {
            for b in 0..5 {
                let d = format!("d{a}/e{b}");
                fs::create_dir_all(root.join(&d)).unwrap();
                fs::write(root.join(format!("{d}/f")), format!("{a}{b}")).unwrap();
                want.push(format!("d{a}"));
                want.push(d.clone());
                want.push(format!("{d}/f"));
            }
        }
        fs::hard_link(root.join("d0/e0/f"), root.join("d5/link")).unwrap();
        std::os::unix::fs::symlink("d0/e0/f", root.join("sym")).unwrap();
        want.extend(["d5/link".to_string(), "sym".to_string()]);
        want.sort();
        want.dedup();
        let t = read_dir_tree(&root).unwrap();
        let got: Vec<String> = t
            .iter()
            .map(|(p, _)| p.clone())
            .filter(|p| !p.is_empty())
            .collect();
        assert_eq!(got, want);
        assert!(Arc::ptr_eq(
            file_data(&t, "d0/e0/f"),
            file_data(&t, "d5/link")
        ));
        assert_eq!(file_data(&t, "d3/e2/f").to_vec().unwrap(), b"32");
        assert_eq!(t.get("sym").unwrap().kind, Kind::Symlink("d0/e0/f".into()));

        fs::write(
            root.join("d2/e1")
                .join(std::ffi::OsStr::from_bytes(b"bad\xff")),
            "x",
        )
        .unwrap();
        let err = format!("{:#}", read_dir_tree(&root).unwrap_err());
        assert!(err.contains("not UTF-8") && err.contains("d2/e1"), "{err}");
    }

    #[test]
    fn detects_compression_by_magic() {
        assert_eq!(detect(&[0x1f, 0x8b, 8, 0, 0, 0]), Compression::Gzip);
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0]), Compression::Zstd);
        assert_eq!(
            detect(&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]),
            Compression::Xz
        );
        assert_eq!(detect(b"usr/bi"), Compression::None);
        assert_eq!(detect(&[0x1f]), Compression::None);
    }

    #[test]
    fn reads_plain_and_compressed_archives_alike() {
        let plain = sample();
        for (what, bytes) in [
            ("plain", plain.clone()),
            ("gz", gz(&plain)),
            ("zst", zst(&plain)),
            ("xz", xz(&plain)),
        ] {
            let t = read_bytes(&bytes).unwrap_or_else(|e| panic!("{what}: {e:#}"));
            assert_eq!(
                &*file_data(&t, "usr/bin/hello").bytes().unwrap(),
                b"#!/bin/sh\necho hi\n",
                "{what}"
            );
            assert_eq!(
                t.get("bin").unwrap().kind,
                Kind::Symlink("usr/bin".into()),
                "{what}"
            );
            assert_eq!(t.get("usr/bin/hello").unwrap().meta.mode, 0o644);
            assert_eq!(t.get("usr/bin/hello").unwrap().meta.mtime, 1_700_000_000);
        }
    }

    #[test]
    fn compression_is_found_by_content_not_name() {
        let dir = tempfile::tempdir().unwrap();
        // A zstd archive named .tar.gz, and a plain one named .zst.
        let p1 = dir.path().join("rootfs.tar.gz");
        fs::write(&p1, zst(&sample())).unwrap();
        let p2 = dir.path().join("rootfs.tar.zst");
        fs::write(&p2, sample()).unwrap();
        for p in [p1, p2] {
            let t = read_rootfs(&p, &std::env::temp_dir()).unwrap();
            assert!(t.contains("usr/bin/hello"), "{}", p.display());
        }
    }

    #[test]
    fn hard_links_share_data() {
        let t = read_bytes(&sample()).unwrap();
        assert!(Arc::ptr_eq(
            file_data(&t, "usr/bin/hello"),
            file_data(&t, "usr/bin/hi")
        ));
    }

    #[test]
    fn hard_link_to_missing_or_non_file_is_refused() {
        let missing = tar_with(|b| {
            add_link(b, tar::EntryType::Link, "a", "nothere");
        });
        let e = err_of(&missing);
        assert!(e.contains(r#"entry "a""#) && e.contains("nothere"), "{e}");
        let to_dir = tar_with(|b| {
            add_dir(b, "d/");
            add_link(b, tar::EntryType::Link, "a", "d");
        });
        let e = err_of(&to_dir);
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn keeps_ownership_modes_devices_and_fifos() {
        let bytes = tar_with(|b| {
            let mut h = header(tar::EntryType::Regular, 0o4755, 3);
            h.set_uid(1000);
            h.set_gid(50);
            b.append_data(&mut h, "su", &b"abc"[..]).unwrap();
            let mut h = header(tar::EntryType::Char, 0o600, 0);
            h.set_device_major(5).unwrap();
            h.set_device_minor(1).unwrap();
            b.append_data(&mut h, "dev/console", io::empty()).unwrap();
            let mut h = header(tar::EntryType::Block, 0o660, 0);
            h.set_device_major(179).unwrap();
            h.set_device_minor(2).unwrap();
            b.append_data(&mut h, "dev/mmcblk0p2", io::empty()).unwrap();
            let mut h = header(tar::EntryType::Fifo, 0o644, 0);
            b.append_data(&mut h, "run/initctl", io::empty()).unwrap();
        });
        let t = read_bytes(&bytes).unwrap();
        let su = t.get("su").unwrap();
        assert_eq!((su.meta.uid, su.meta.gid, su.meta.mode), (1000, 50, 0o4755));
        assert_eq!(
            t.get("dev/console").unwrap().kind,
            Kind::CharDevice { major: 5, minor: 1 }
        );
        assert_eq!(t.get("dev/console").unwrap().meta.mode, 0o600);
        assert_eq!(
            t.get("dev/mmcblk0p2").unwrap().kind,
            Kind::BlockDevice {
                major: 179,
                minor: 2
            }
        );
        assert_eq!(t.get("run/initctl").unwrap().kind, Kind::Fifo);
        // Implicit parent: root:root 0755 with the entry's mtime.
        let dev = t.get("dev").unwrap();
        assert_eq!(dev.kind, Kind::Dir);
        assert_eq!(dev.meta, Meta::root(0o755, 1_700_000_000));
    }

    #[test]
    fn root_entry_sets_root_meta_and_later_entries_replace_earlier() {
        let bytes = tar_with(|b| {
            let mut h = header(tar::EntryType::Directory, 0o700, 0);
            h.set_mtime(42);
            b.append_data(&mut h, "./", io::empty()).unwrap();
            add_file(b, "etc/motd", b"old");
            add_file(b, "etc/motd", b"new");
            let mut h = header(tar::EntryType::Directory, 0o750, 0);
            h.set_mtime(7);
            b.append_data(&mut h, "etc", io::empty()).unwrap();
        });
        let t = read_bytes(&bytes).unwrap();
        assert_eq!(t.root_meta(), Meta::root(0o700, 42));
        assert_eq!(&*file_data(&t, "etc/motd").bytes().unwrap(), b"new");
        // The repeated directory entry updated etc's meta but kept its child.
        assert_eq!(t.get("etc").unwrap().meta, Meta::root(0o750, 7));
        assert!(t.contains("etc/motd"));
    }

    #[test]
    fn long_names_and_pax_records_work() {
        let long = format!("usr/share/{}/{}", "d".repeat(120), "f".repeat(100));
        // GNU long name.
        let gnu = tar_with(|b| add_file(b, &format!("./{long}"), b"x"));
        let t = read_bytes(&gnu).unwrap();
        assert_eq!(&*file_data(&t, &long).bytes().unwrap(), b"x");
        // PAX path, uid and mtime records override the ustar header.
        let mut pax = Vec::new();
        {
            let mut b = tar::Builder::new(&mut pax);
            b.append_pax_extensions([
                ("path", long.as_bytes()),
                ("uid", b"3000000".as_slice()),
                ("mtime", b"1700000123.5".as_slice()),
            ])
            .unwrap();
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_path("short").unwrap();
            h.set_size(2);
            h.set_mode(0o600);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1);
            h.set_cksum();
            b.append(&h, &b"yz"[..]).unwrap();
            b.finish().unwrap();
        }
        let t = read_bytes(&pax).unwrap();
        let e = t.get(&long).expect("pax path used");
        assert_eq!(e.meta.uid, 3_000_000);
        assert_eq!(e.meta.mtime, 1_700_000_123);
        assert!(!t.contains("short"));
    }

    #[test]
    fn refuses_dotdot_entries() {
        let mut out = Vec::new();
        raw_entry(&mut out, "../../etc/passwd", b'0', "", b"root::0:0");
        let e = err_of(&finish(out));
        assert!(
            e.contains(r#"entry "../../etc/passwd" escapes the root"#),
            "{e}"
        );
        let mut out = Vec::new();
        raw_entry(&mut out, "usr/../../x", b'0', "", b"");
        let e = err_of(&finish(out));
        assert!(e.contains(r#""usr/../../x" escapes the root"#), "{e}");
    }

    #[test]
    fn refuses_absolute_entries() {
        let mut out = Vec::new();
        raw_entry(&mut out, "/etc/shadow", b'0', "", b"x");
        let e = err_of(&finish(out));
        assert!(e.contains(r#"entry "/etc/shadow" escapes the root"#), "{e}");
    }

    #[test]
    fn refuses_escaping_hard_link_targets() {
        for target in ["../../etc/shadow", "/etc/shadow"] {
            let mut out = Vec::new();
            raw_entry(&mut out, "innocent", b'1', target, b"");
            let e = err_of(&finish(out));
            assert!(
                e.contains(r#"entry "innocent""#)
                    && e.contains(&format!("hard link target {target:?} escapes the root")),
                "{e}"
            );
        }
    }

    #[test]
    fn refuses_writing_through_a_symlink() {
        let mut out = Vec::new();
        raw_entry(&mut out, "lib", b'2', "/etc", b"");
        raw_entry(&mut out, "lib/evil", b'0', "", b"pwned");
        let e = err_of(&finish(out));
        assert!(
            e.contains(r#"entry "lib/evil" is written through the symlink "lib""#),
            "{e}"
        );
        // Deeper: the symlink is an intermediate component.
        let mut out = Vec::new();
        raw_entry(&mut out, "a/", b'5', "", b"");
        raw_entry(&mut out, "a/b", b'2', "../..", b"");
        raw_entry(&mut out, "a/b/c/d", b'0', "", b"x");
        let e = err_of(&finish(out));
        assert!(e.contains(r#"through the symlink "a/b""#), "{e}");
    }

    #[test]
    fn absolute_symlink_targets_are_fine() {
        let mut out = Vec::new();
        raw_entry(
            &mut out,
            "etc/localtime",
            b'2',
            "/usr/share/zoneinfo/UTC",
            b"",
        );
        let t = read_bytes(&finish(out)).unwrap();
        assert_eq!(
            t.get("etc/localtime").unwrap().kind,
            Kind::Symlink("/usr/share/zoneinfo/UTC".into())
        );
    }

    const BIG: usize = 300_000;

    /// An archive whose second file is big and incompressible (xorshift
    /// noise), so that cutting any compressed form in half cuts that file.
    fn two_files() -> Vec<u8> {
        let mut x: u32 = 0x1234_5678;
        let big: Vec<u8> = (0..BIG)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        tar_with(|b| {
            add_file(b, "etc/hostname", b"node\n");
            add_file(b, "usr/bin/foo", &big);
        })
    }

    #[test]
    fn truncated_plain_tar_names_the_entry() {
        let full = two_files();
        // Header of usr/bin/foo is at 1024, its data starts at 1536.
        let cut = &full[..1536 + BIG / 2];
        let e = err_of(cut);
        assert!(
            e.contains(r#"entry "usr/bin/foo": unexpected end of file"#),
            "{e}"
        );
    }

    #[test]
    fn tar_without_end_marker_is_an_error() {
        let full = two_files();
        // Cut exactly after the last entry's padded data: every entry is
        // complete but the end-of-archive blocks are missing.
        let end = 1536 + BIG.div_ceil(512) * 512;
        let e = err_of(&full[..end]);
        assert!(
            e.contains(r#"after entry "usr/bin/foo" without its end-of-archive marker"#),
            "{e}"
        );
        // Cut inside the next header.
        let e = err_of(&full[..end + 100]);
        assert!(e.contains(r#"after entry "usr/bin/foo""#), "{e}");
    }

    #[test]
    fn truncated_gzip_and_zstd_and_xz_name_the_entry() {
        let full = two_files();
        for (what, comp) in [("gz", gz(&full)), ("zst", zst(&full)), ("xz", xz(&full))] {
            let cut = &comp[..comp.len() / 2];
            let e = err_of(cut);
            assert!(e.contains(r#"entry "usr/bin/foo""#), "{what}: {e}");
        }
    }

    #[test]
    fn compressed_stream_missing_only_its_trailer_is_an_error() {
        // The whole tar (with end marker and padding) decompresses, but the
        // gzip trailer (CRC + size) is cut off.
        let comp = gz(&two_files());
        let cut = &comp[..comp.len() - 4];
        assert!(read_bytes(cut).is_err());
        let comp = zst(&two_files());
        let cut = &comp[..comp.len() - 3];
        assert!(read_bytes(cut).is_err());
    }

    #[test]
    fn garbage_and_empty_input_are_errors() {
        let garbage: Vec<u8> = (0..3000u32).map(|i| (i * 31 % 256) as u8).collect();
        let e = err_of(&garbage);
        assert!(e.contains("at the start of the archive"), "{e}");
        assert!(err_of(b"hello").contains("at the start of the archive"));
        assert!(err_of(b"").contains("not a tar archive"));
        // Gzip magic followed by garbage.
        let mut bad = vec![0x1f, 0x8b];
        bad.extend_from_slice(&garbage);
        assert!(read_bytes(&bad).is_err());
    }

    #[test]
    fn read_rootfs_error_names_the_entry_and_leaves_the_file_to_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rootfs.tar");
        let mut out = Vec::new();
        raw_entry(&mut out, "../../etc/passwd", b'0', "", b"");
        fs::write(&p, finish(out)).unwrap();
        let e = format!("{:#}", read_rootfs(&p, &std::env::temp_dir()).unwrap_err());
        // The build says "reading rootfs PATH: " before this (tests/build_images.rs).
        assert!(
            e.starts_with(r#"entry "../../etc/passwd" escapes the root"#),
            "{e}"
        );
        let e = format!(
            "{:#}",
            read_rootfs(&dir.path().join("missing"), &std::env::temp_dir()).unwrap_err()
        );
        assert_eq!(e, "No such file or directory (os error 2)");
    }

    #[test]
    fn reads_a_directory_with_links_and_special_files() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        fs::create_dir_all(r.join("usr/bin")).unwrap();
        fs::write(r.join("usr/bin/a"), b"data").unwrap();
        fs::set_permissions(r.join("usr/bin/a"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::hard_link(r.join("usr/bin/a"), r.join("usr/bin/b")).unwrap();
        fs::write(r.join("usr/bin/c"), b"data").unwrap();
        symlink("usr/bin", r.join("bin")).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(r.join("fifo"))
            .status()
            .unwrap();
        assert!(fifo.success());
        let t = read_rootfs(r, &std::env::temp_dir()).unwrap();
        assert!(Arc::ptr_eq(
            file_data(&t, "usr/bin/a"),
            file_data(&t, "usr/bin/b")
        ));
        // Same content, different inode: not shared.
        assert!(!Arc::ptr_eq(
            file_data(&t, "usr/bin/a"),
            file_data(&t, "usr/bin/c")
        ));
        assert_eq!(t.get("usr/bin/a").unwrap().meta.mode, 0o750);
        assert_eq!(t.get("bin").unwrap().kind, Kind::Symlink("usr/bin".into()));
        assert_eq!(t.get("fifo").unwrap().kind, Kind::Fifo);
        let uid = fs::metadata(r.join("usr/bin/a")).unwrap().uid();
        assert_eq!(t.get("usr/bin/a").unwrap().meta.uid, uid);
    }

    #[test]
    fn decodes_device_numbers_like_glibc() {
        // /dev/null is 1:3 on Linux (creating device nodes needs root, so the
        // directory walk's device branch is checked through the decoder).
        let md = fs::symlink_metadata("/dev/null").unwrap();
        assert_eq!((dev_major(md.rdev()), dev_minor(md.rdev())), (1, 3));
        // Large numbers use the split encoding: major 0x123, minor 0x45678.
        let rdev: u64 =
            (0x45678u64 & 0xff) | ((0x123u64 & 0xfff) << 8) | ((0x45678u64 & !0xff) << 12);
        assert_eq!((dev_major(rdev), dev_minor(rdev)), (0x123, 0x45678));
    }
}
