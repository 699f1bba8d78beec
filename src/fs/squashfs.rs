//! Writes a squashfs 4.0 image (zstd, 128 KiB blocks) of a whole `Tree`; the
//! tree's root becomes the squashfs root.
//!
//! Why hand-written: no crate writes squashfs right for us. backhand (used
//! before) compresses on one thread, its duplicate detection hashes only a
//! file's first block (so it had to stay off), it writes hard links as separate
//! files, and the empty regular files it wrote could not be read by the Linux
//! kernel (`stat` failed with EINVAL, "SQUASHFS error: Unable to read inode")
//! although unsquashfs accepted them. The format is small; this module follows
//! the kernel's `fs/squashfs/squashfs_fs.h` and what mksquashfs writes.
//!
//! What it writes:
//! - every `Kind`: directories, regular files, symlinks, character and block
//!   devices, fifos, sockets; permission bits including setuid/setgid/sticky;
//!   uid/gid through the id table (full 32 bits); per-inode mtimes; the
//!   superblock time is the caller's `mtime`;
//! - regular files as 128 KiB data blocks (zstd, or stored when that is not
//!   smaller), all-zero blocks as sparse blocks (no data), and the tail (or a
//!   whole file under 128 KiB) packed into shared fragment blocks, also for
//!   files larger than a block (mksquashfs's `-always-use-fragments`);
//! - exact duplicates stored once: files of equal size are compared by the
//!   SHA-256 of their whole content, never a prefix;
//! - hard links (files sharing one `Data`, `Arc::ptr_eq`) as one inode with
//!   its link count, owner, mode and mtime taken from its first name in path
//!   order (a tarball gives all names the same);
//! - extended inodes where the basic ones cannot say it (link count > 1,
//!   sparse blocks, sizes or data positions of 4 GiB and more, directory
//!   listings over 64 KiB or with an index); directory listings split into
//!   headers of at most 256 entries whose inodes share one metadata block, and
//!   a directory index every 8 KiB of listing as mksquashfs writes it;
//! - superblock flags and zstd compression options as mksquashfs writes them.
//!
//! Not written: xattrs (file capabilities are lost), the NFS export table.
//! Refused before anything is written: names over 256 bytes, symlink targets
//! empty or over 4095 bytes, mtimes past 2106 (32 bits), device numbers
//! outside squashfs's encoding (major < 4096, minor < 1048576), more than
//! 65535 distinct uids/gids.
//!
//! Parallel and deterministic: data blocks and fragment blocks are laid out in
//! a fixed order (files in path order, `Jobs`), as the workers ask for them;
//! worker threads compress them in any order and the writer puts the results
//! down in that fixed order, so the image depends only on the tree, `mtime`
//! and the level, never on the thread count or scheduling. At most 64 blocks
//! (or four per thread, if more) are in flight, so memory does not grow with
//! the tree's content size.
//!
//! Where it goes: a file of its own (`write`) or a partition of a disk image
//! (`write_into`, so the image is not copied there afterwards); either way it
//! is flushed to disk as it is written and the SHA-256 of all but its first
//! 4 KiB is taken on the way (`Written`), for the disk image's block map.
//!
//! File contents are read through `read_content`, 128 KiB at a time, from
//! wherever the tree says they are (`tree::Content`: memory, a rootfs file's
//! path, or a range of the spill file); each file's SHA-256 (the duplicate
//! check's, the rootfs digest's) is computed once per build and kept with
//! its `Content`. The build hashes the rootfs on every core before the
//! writer starts (hashing beside zstd slowed zstd more than it saved); a
//! file it did not hash is hashed by the writer, from the blocks it reads to
//! compress (`Hashing`), or, for files of a size others share, when the
//! file's turn comes.
//!
//! Default level: 3, zstd's own default, where size against time bends.
//! Measured 2026-12-01 on the benchmark's 500 MB rootfs (`bench/run.py`:
//! 10,751 files, a 70 MiB binary, libraries, documentation), a whole
//! `nodeimg build rpi4 --no-cache` per level on a 2-core machine (noisy:
//! times move by 10-20 % between runs):
//!
//! ```text
//! level  squashfs bytes  vs 3     wall    CPU (user + system)
//!   1    182,719,948    +4.1 %   1.95 s   3.3 s
//!   2    178,132,832    +1.5 %   2.02 s   3.5 s
//!   3    175,495,618     0       1.98 s   3.4 s
//!   4    173,119,214    -1.4 %   2.82 s   5.1 s
//!   5    169,772,083    -3.3 %   4.05 s   7.5 s
//!   6    167,373,430    -4.6 %   4.67 s   8.8 s
//!   7    166,882,739    -4.9 %   5.59 s  10.6 s
//!   9    166,050,646    -5.4 %   6.86 s  13.1 s
//! mksquashfs -comp zstd -Xcompression-level L -b 131072, /usr alone:
//!   3    175,583,232             2.34 s   4.4 s
//!   9    165,654,528             5.77 s  11.3 s
//! ```
//!
//! (The squashfs alone, ours against mksquashfs's per level on any
//! directory, is `perf::levels_on_test_rootfs` below.)
//!
//! Up to 3 a level costs almost nothing (zstd's fast match finders: 1 to 3
//! is 4 % smaller for no measurable time); from 4 to 6 each percent saved
//! costs about half a second of wall time here, from 6 to 9 nearly 3 s. 9
//! (the default until 2026-12-01) is 5.4 % smaller than 3 for 3.5 times the
//! wall time and 3.8 times the CPU. Above 9 zstd switches to its slow match
//! finders: on a 214 MB Debian `/usr` sample, 15 (mksquashfs's default) was
//! 3.7-5.5 % smaller than 9 for 6-12 times the time, 19 4.3-6.0 % for 10-40
//! times. A node's image is built card after card and in every boot test,
//! and written once to a card, so the default favours time; where bytes
//! matter more than build time (release images, update bundles sent over a
//! slow link), `nodeimg build --compression-level 19` trades the time back
//! for them.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::tree::{self, Data, Entry, Kind, Tree};

/// Data block size: 128 KiB, the squashfs-tools default.
pub const BLOCK_SIZE: u32 = 128 * 1024;
const BLOCK: usize = BLOCK_SIZE as usize;

/// The zstd level used unless told otherwise (chosen by measurement, above).
pub const DEFAULT_LEVEL: i32 = 3;

/// The zstd levels accepted (as mksquashfs's `-Xcompression-level`).
pub const LEVELS: std::ops::RangeInclusive<i32> = 1..=22;

/// Longest file name the kernel's squashfs accepts (`SQUASHFS_NAME_LEN`).
const MAX_NAME: usize = 256;
/// Longest symlink target: the kernel refuses more than a page, and Linux
/// paths end at 4095 bytes.
const MAX_SYMLINK: usize = 4095;
/// Uncompressed size of a metadata block (`SQUASHFS_METADATA_SIZE`).
const METADATA_SIZE: usize = 8192;
/// Entries under one directory header (`SQUASHFS_DIR_COUNT`).
const DIR_COUNT: u32 = 256;
const SUPERBLOCK_SIZE: u64 = 96;
/// Images are padded to a multiple of this (as mksquashfs does).
const PAD: u64 = 4096;

const NO_FRAGMENT: u32 = u32::MAX;
const NO_XATTR: u32 = u32::MAX;
const NOT_SET: u64 = u64::MAX;
/// Block list / fragment entry size bit: the block is stored uncompressed.
const DATA_UNCOMPRESSED: u32 = 1 << 24;
/// Metadata block header bit: the block is stored uncompressed.
const META_UNCOMPRESSED: u16 = 0x8000;

const ZSTD_COMPRESSION: u16 = 6;
// Superblock flags.
const FLAG_ALWAYS_FRAGMENTS: u16 = 0x0020;
const FLAG_DUPLICATES: u16 = 0x0040;
const FLAG_NO_XATTRS: u16 = 0x0200;
const FLAG_COMPRESSOR_OPTIONS: u16 = 0x0400;

// Inode types; directory entries always use the basic ones.
const T_DIR: u16 = 1;
const T_FILE: u16 = 2;
const T_SYMLINK: u16 = 3;
const T_BLOCK: u16 = 4;
const T_CHAR: u16 = 5;
const T_FIFO: u16 = 6;
const T_SOCKET: u16 = 7;
const T_LDIR: u16 = 8;
const T_LFILE: u16 = 9;

/// How to write the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// zstd level for data and metadata blocks, within `LEVELS`.
    pub compression_level: i32,
    /// Compression threads; 0 means one per available core.
    pub threads: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            compression_level: DEFAULT_LEVEL,
            threads: 0,
        }
    }
}

/// The image's first bytes, which hold the superblock (written last): they
/// are not in [`Written::tail_sha256`].
pub const HEAD: u64 = PAD;

/// What [`write`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The image's size, padded to 4 KiB (so at least [`HEAD`]).
    pub size: u64,
    /// SHA-256 of the image after its first [`HEAD`] bytes, hashed as it
    /// was written: with the head's, all a block map of the image needs,
    /// without reading it back.
    pub tail_sha256: [u8; 32],
}

/// Writes `tree` as a squashfs image to `out` (created or truncated).
/// `mtime` becomes the superblock time. What squashfs cannot store is
/// refused before `out` is touched; if writing fails later, the partial file
/// is removed (its superblock, written last, would be zeros anyway).
pub fn write(tree: &Tree, out: &Path, mtime: u32, opts: &Options) -> Result<Written> {
    let res = (|| {
        let plan = Plan::new(tree, opts)?;
        let file = File::create(out).context("creating the image file")?;
        let written = plan.write(&file, 0, mtime, &AtomicBool::new(false));
        if written.is_err() {
            let _ = std::fs::remove_file(out);
        }
        written
    })();
    res.with_context(|| format!("writing squashfs {}", out.display()))
}

/// Writes the squashfs of `tree` into `file` from byte `offset` on (a
/// partition of a disk image), as [`write`] does; the bytes around the image
/// are not touched, and on failure what was written stays (the caller
/// discards the file). `what` names the file for errors. Once `stop` is set
/// (by another thread: the build failed elsewhere) nothing more is read or
/// compressed, and it fails as soon as the blocks in flight are done.
pub fn write_into(
    tree: &Tree,
    file: &File,
    offset: u64,
    mtime: u32,
    opts: &Options,
    what: &Path,
    stop: &AtomicBool,
) -> Result<Written> {
    let res = Plan::new(tree, opts).and_then(|plan| plan.write(file, offset, mtime, stop));
    res.with_context(|| {
        format!(
            "writing the squashfs into {} at offset {offset}",
            what.display()
        )
    })
}

// ------------------------------------------------------------------ contents

/// The one place that reads a file's contents: appends `len` bytes from
/// `offset` of `data` to `buf`. Callers ask for at most one block at a time.
fn read_content(data: &Data, offset: u64, len: usize, buf: &mut Vec<u8>) -> Result<()> {
    let start = buf.len();
    buf.resize(start + len, 0);
    data.read_exact_at(offset, &mut buf[start..])?;
    Ok(())
}

/// A file's content size.
fn content_len(data: &Data) -> u64 {
    data.len()
}

// ------------------------------------------------------------------ the plan

/// One regular-file inode (all the names sharing one `Data`).
struct FileInode<'a> {
    /// Its first name, for errors.
    path: &'a str,
    data: &'a Data,
    nlink: u32,
    /// Index into `Plan::contents`.
    content: usize,
}

/// Where one distinct content lives in the image.
#[derive(Default)]
struct Layout {
    size: u64,
    /// Position of the first data block (0 when there is none).
    start: u64,
    blocks: Vec<u32>,
    /// Bytes held as sparse (all-zero) blocks.
    sparse: u64,
    /// Fragment index and offset of the tail.
    fragment: Option<(u32, u32)>,
}

/// Compression work, in the order it lands in the image.
enum Job<'a> {
    /// One full or final block of `content`.
    Block {
        content: usize,
        path: &'a str,
        data: &'a Data,
        offset: u64,
        len: usize,
    },
    /// One fragment block: tails of files, packed.
    Fragment { index: u32, pieces: Vec<Piece<'a>> },
}

/// A file's tail in a fragment block: `len` bytes of `data` from `offset`.
struct Piece<'a> {
    path: &'a str,
    data: &'a Data,
    offset: u64,
    len: usize,
    /// The bytes, when they were read already: a small file whose content
    /// had to be hashed to tell it from files of its size.
    bytes: Option<Vec<u8>>,
}

/// The compression jobs in image order, made as they are asked for: file
/// after file in path order, each distinct content's full blocks, its tail
/// appended to the open fragment block, which is closed (and becomes a job)
/// when the next tail does not fit.
///
/// Exact duplicates are stored once: only files of equal size can be equal,
/// and those are told apart by the SHA-256 of their whole content
/// (`Content::sha256`, computed once per build, usually before the writer
/// starts). A digest not known yet is needed only when its file's turn
/// comes, so compression starts at once: a small file read to be hashed
/// here keeps its bytes for its fragment block, so it is read once; a file
/// of a size no other has is hashed by the writer from the blocks it
/// compresses (`Hashing`).
struct Jobs<'f, 'a> {
    files: &'f [FileInode<'a>],
    /// How many files have each size.
    sizes: HashMap<u64, usize>,
    /// Files passed so far.
    next_file: usize,
    content_of: HashMap<(u64, Option<[u8; 32]>), usize>,
    /// Each passed file's content (index into `contents`).
    file_content: Vec<usize>,
    /// Each distinct content's size and fragment (index, offset).
    contents: Vec<(u64, Option<(u32, u32)>)>,
    frag_pieces: Vec<Piece<'a>>,
    frag_len: usize,
    frag_count: u32,
    queue: std::collections::VecDeque<Job<'a>>,
    issued: usize,
}

impl<'f, 'a> Jobs<'f, 'a> {
    fn new(files: &'f [FileInode<'a>]) -> Self {
        let mut sizes: HashMap<u64, usize> = HashMap::new();
        for f in files {
            *sizes.entry(content_len(f.data)).or_default() += 1;
        }
        Jobs {
            files,
            sizes,
            next_file: 0,
            content_of: HashMap::new(),
            file_content: Vec::with_capacity(files.len()),
            contents: Vec::new(),
            frag_pieces: Vec::new(),
            frag_len: 0,
            frag_count: 0,
            queue: Default::default(),
            issued: 0,
        }
    }

    /// The next job and its place in image order; `None` when all are out.
    fn next(&mut self) -> Result<Option<(usize, Job<'a>)>> {
        while self.queue.is_empty() {
            if !self.pass_file()? {
                break;
            }
        }
        let Some(job) = self.queue.pop_front() else {
            return Ok(None);
        };
        let i = self.issued;
        self.issued += 1;
        Ok(Some((i, job)))
    }

    /// Queues the jobs of the next file (none for a duplicate; the last
    /// fragment block after the last file); false when there is no more.
    fn pass_file(&mut self) -> Result<bool> {
        let Some(f) = self.files.get(self.next_file) else {
            if self.frag_pieces.is_empty() {
                return Ok(false);
            }
            self.close_fragment()?;
            return Ok(true);
        };
        self.next_file += 1;
        let (path, data) = (f.path, f.data);
        let size = content_len(data);
        // Files of a size no other file has need no digest: the size is the key.
        let shared = size > 0 && self.sizes.get(&size).copied().unwrap_or(0) > 1;
        let mut read = None;
        let digest = match (shared, data.known_sha256()) {
            (false, _) => None,
            (true, Some(d)) => Some(d),
            // Under a block: the whole file is its fragment piece, so the
            // bytes hashed now are the bytes packed later.
            (true, None) if size < BLOCK as u64 => {
                let mut bytes = Vec::new();
                read_content(data, 0, size as usize, &mut bytes)
                    .with_context(|| format!("reading /{path}"))?;
                let d: [u8; 32] = Sha256::digest(&bytes).into();
                data.remember_sha256(d);
                read = Some(bytes);
                Some(d)
            }
            (true, None) => Some(data.sha256().with_context(|| format!("reading /{path}"))?),
        };
        let n = self.contents.len();
        let c = *self.content_of.entry((size, digest)).or_insert(n);
        self.file_content.push(c);
        if c != n {
            return Ok(true);
        }
        let full = size / BLOCK as u64;
        let tail = usize::try_from(size % BLOCK as u64).context("tail size")?;
        for b in 0..full {
            self.queue.push_back(Job::Block {
                content: c,
                path,
                data,
                offset: b * BLOCK as u64,
                len: BLOCK,
            });
        }
        let mut fragment = None;
        if tail > 0 {
            if self.frag_len + tail > BLOCK {
                self.close_fragment()?;
            }
            let offset = u32::try_from(self.frag_len).context("fragment offset")?;
            fragment = Some((self.frag_count, offset));
            self.frag_pieces.push(Piece {
                path,
                data,
                offset: full * BLOCK as u64,
                len: tail,
                bytes: read,
            });
            self.frag_len += tail;
        }
        self.contents.push((size, fragment));
        Ok(true)
    }

    fn close_fragment(&mut self) -> Result<()> {
        self.queue.push_back(Job::Fragment {
            index: self.frag_count,
            pieces: std::mem::take(&mut self.frag_pieces),
        });
        self.frag_count = self
            .frag_count
            .checked_add(1)
            .ok_or_else(|| anyhow!("too many fragments"))?;
        self.frag_len = 0;
        Ok(())
    }
}

/// A job done: the bytes it read, and what of them goes into the image.
struct Done {
    /// The job's uncompressed bytes (the writer hashes them, `Hashing`).
    raw: Vec<u8>,
    stored: Stored,
}

enum Stored {
    /// An all-zero block: a sparse block, no data.
    Sparse,
    /// zstd's output, smaller than the raw bytes.
    Compressed(Vec<u8>),
    /// The raw bytes themselves: zstd did not make them smaller.
    Raw,
}

/// The SHA-256 of each content the writer stores, taken from the bytes read
/// to compress it, in image order (a content's blocks, then its tail in a
/// fragment block), so a file is read once per build: the rootfs digest, the
/// cache key and the identifiers' seed then find it in its `Content`.
/// Contents whose digest is known already are skipped.
#[derive(Default)]
struct Hashing {
    /// Contents begun and not finished (their tail is in a later fragment).
    open: HashMap<usize, Sha256>,
}

impl Hashing {
    fn add(&mut self, job: &Job, raw: &[u8]) -> Result<()> {
        match job {
            Job::Block {
                data, offset, len, ..
            } => {
                let key = data_key(data);
                if *offset == 0 && data.known_sha256().is_none() {
                    self.open.insert(key, Sha256::new());
                }
                if let Some(h) = self.open.get_mut(&key) {
                    h.update(raw);
                    if offset.checked_add(*len as u64) == Some(data.len()) {
                        if let Some(h) = self.open.remove(&key) {
                            data.remember_sha256(h.finalize().into());
                        }
                    }
                }
            }
            Job::Fragment { pieces, .. } => {
                let mut at = 0usize;
                for p in pieces {
                    let bytes = at
                        .checked_add(p.len)
                        .and_then(|end| raw.get(at..end))
                        .ok_or_else(|| {
                            anyhow!("internal: fragment block shorter than its pieces")
                        })?;
                    at += p.len;
                    if p.offset == 0 {
                        if p.data.known_sha256().is_none() {
                            p.data.remember_sha256(Sha256::digest(bytes).into());
                        }
                    } else if let Some(mut h) = self.open.remove(&data_key(p.data)) {
                        h.update(bytes);
                        p.data.remember_sha256(h.finalize().into());
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks that every content begun was finished.
    fn finish(self) -> Result<()> {
        if !self.open.is_empty() {
            bail!(
                "internal: {} file digests begun and not finished",
                self.open.len()
            );
        }
        Ok(())
    }
}

/// Everything known before the image file is created.
struct Plan<'a> {
    tree: &'a Tree,
    opts: Options,
    /// Children paths of each directory, by name order.
    children: HashMap<&'a str, Vec<&'a str>>,
    /// File inodes by the address of their shared `Data`.
    file_of: HashMap<usize, usize>,
    files: Vec<FileInode<'a>>,
    /// Each distinct content's place, known once its blocks are written.
    contents: Vec<Layout>,
    /// uid/gid -> index in the id table.
    ids: BTreeMap<u32, u16>,
}

fn data_key(d: &Data) -> usize {
    Arc::as_ptr(d) as usize
}

impl<'a> Plan<'a> {
    /// Checks the tree and lists its inodes.
    fn new(tree: &'a Tree, opts: &Options) -> Result<Plan<'a>> {
        if !LEVELS.contains(&opts.compression_level) {
            bail!(
                "zstd compression level {} is outside {}..={}",
                opts.compression_level,
                LEVELS.start(),
                LEVELS.end()
            );
        }
        let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut ids = BTreeMap::new();
        let mut file_of = HashMap::new();
        let mut files: Vec<FileInode> = Vec::new();
        for (path, entry) in tree.iter() {
            check_entry(path, entry)?;
            ids.insert(entry.meta.uid, 0u16);
            ids.insert(entry.meta.gid, 0u16);
            if !path.is_empty() {
                children.entry(tree::parent(path)).or_default().push(path);
            }
            if let Kind::Dir = entry.kind {
                children.entry(path.as_str()).or_default();
            }
            if let Kind::File(data) = &entry.kind {
                let n = files.len();
                let i = *file_of.entry(data_key(data)).or_insert(n);
                if i == n {
                    files.push(FileInode {
                        path,
                        data,
                        nlink: 0,
                        content: 0,
                    });
                }
                let f = &mut files[i];
                f.nlink = f
                    .nlink
                    .checked_add(1)
                    .ok_or_else(|| anyhow!("/{path}: too many hard links"))?;
            }
        }
        if ids.len() > usize::from(u16::MAX) {
            bail!(
                "{} distinct uids/gids; squashfs holds at most {}",
                ids.len(),
                u16::MAX
            );
        }
        for (i, v) in ids.values_mut().enumerate() {
            *v = u16::try_from(i).context("id table index")?;
        }

        Ok(Plan {
            tree,
            opts: opts.clone(),
            children,
            file_of,
            files,
            contents: Vec::new(),
            ids,
        })
    }

    fn write(mut self, file: &File, base: u64, mtime: u32, stop: &AtomicBool) -> Result<Written> {
        let level = self.opts.compression_level;
        let mut w = Out::new(file, base)?;
        // The superblock is written last: until then the image has no magic.
        w.write_all(&[0u8; SUPERBLOCK_SIZE as usize])
            .context("writing the image")?;
        // zstd compression options: one uncompressed metadata block.
        w.write_all(&(META_UNCOMPRESSED | 4).to_le_bytes())
            .and_then(|_| w.write_all(&level.to_le_bytes()))
            .context("writing the image")?;
        let mut pos: u64 = SUPERBLOCK_SIZE + 2 + 4;

        // Data and fragment blocks.
        let mut layouts: Vec<Layout> = Vec::new();
        let mut frag_table: Vec<(u64, u32)> = Vec::new();
        let source = Mutex::new(Jobs::new(&self.files));
        let mut hashing = Hashing::default();
        {
            let mut sink = |job: &Job, done: Done| -> Result<()> {
                hashing.add(job, &done.raw)?;
                let (size, bytes) = match &done.stored {
                    Stored::Sparse => (0u32, None),
                    Stored::Compressed(z) => {
                        (u32::try_from(z.len()).context("block size")?, Some(z))
                    }
                    Stored::Raw => {
                        let len = u32::try_from(done.raw.len()).context("block size")?;
                        (len | DATA_UNCOMPRESSED, Some(&done.raw))
                    }
                };
                match job {
                    Job::Block { content, .. } => {
                        if layouts.len() <= *content {
                            layouts.resize_with(content + 1, Layout::default);
                        }
                        let l = &mut layouts[*content];
                        if l.blocks.is_empty() {
                            l.start = pos;
                        }
                        l.blocks.push(size);
                        if bytes.is_none() {
                            l.sparse += BLOCK as u64;
                        }
                    }
                    Job::Fragment { index, .. } => {
                        let i = *index as usize;
                        if frag_table.len() <= i {
                            frag_table.resize(i + 1, (0, 0));
                        }
                        frag_table[i] = (pos, size);
                    }
                }
                if let Some(b) = bytes {
                    w.write_all(b).context("writing the image")?;
                    pos = pos
                        .checked_add(b.len() as u64)
                        .ok_or_else(|| anyhow!("image too large"))?;
                }
                Ok(())
            };
            run_jobs(&source, threads(&self.opts), level, &mut sink, stop)?;
        }
        hashing.finish()?;
        let jobs = source
            .into_inner()
            .map_err(|_| anyhow!("a compression thread panicked"))?;
        let (frag_count, file_content, contents) =
            (jobs.frag_count, jobs.file_content, jobs.contents);
        if frag_table.len() != frag_count as usize {
            bail!(
                "internal: {} fragment blocks written of {frag_count}",
                frag_table.len()
            );
        }
        for (f, c) in self.files.iter_mut().zip(&file_content) {
            f.content = *c;
        }
        layouts.resize_with(contents.len(), Layout::default);
        for (l, (size, fragment)) in layouts.iter_mut().zip(&contents) {
            l.size = *size;
            l.fragment = *fragment;
        }
        self.contents = layouts;

        // Inode and directory tables.
        let mut inodes = MetaWriter::new(level)?;
        let mut dirs = MetaWriter::new(level)?;
        let (root_ref, inode_count) = self.write_tables(&mut inodes, &mut dirs)?;

        let inode_table = pos;
        let (inode_bytes, _) = inodes.finish()?;
        w.write_all(&inode_bytes).context("writing the image")?;
        pos += inode_bytes.len() as u64;
        let dir_table = pos;
        let (dir_bytes, _) = dirs.finish()?;
        w.write_all(&dir_bytes).context("writing the image")?;
        pos += dir_bytes.len() as u64;

        // Fragment table: entries in metadata blocks, then their positions.
        let mut entries = Vec::with_capacity(frag_table.len() * 16);
        for (start, size) in &frag_table {
            entries.extend_from_slice(&start.to_le_bytes());
            entries.extend_from_slice(&size.to_le_bytes());
            entries.extend_from_slice(&0u32.to_le_bytes());
        }
        let fragment_table = write_indexed_table(&mut w, &mut pos, &entries, level)?;

        let mut id_bytes = Vec::with_capacity(self.ids.len() * 4);
        for id in self.ids.keys() {
            id_bytes.extend_from_slice(&id.to_le_bytes());
        }
        let id_table = write_indexed_table(&mut w, &mut pos, &id_bytes, level)?;
        let bytes_used = pos;
        let padded = bytes_used
            .div_ceil(PAD)
            .checked_mul(PAD)
            .ok_or_else(|| anyhow!("image too large"))?;
        let pad = usize::try_from(padded - bytes_used).context("padding")?;
        w.write_all(&vec![0u8; pad]).context("writing the image")?;

        let mut sb = Vec::with_capacity(SUPERBLOCK_SIZE as usize);
        sb.extend_from_slice(b"hsqs");
        sb.extend_from_slice(&inode_count.to_le_bytes());
        sb.extend_from_slice(&mtime.to_le_bytes());
        sb.extend_from_slice(&BLOCK_SIZE.to_le_bytes());
        sb.extend_from_slice(&frag_count.to_le_bytes());
        sb.extend_from_slice(&ZSTD_COMPRESSION.to_le_bytes());
        sb.extend_from_slice(&(BLOCK_SIZE.trailing_zeros() as u16).to_le_bytes());
        let flags =
            FLAG_ALWAYS_FRAGMENTS | FLAG_DUPLICATES | FLAG_NO_XATTRS | FLAG_COMPRESSOR_OPTIONS;
        sb.extend_from_slice(&flags.to_le_bytes());
        let id_count = u16::try_from(self.ids.len()).context("id count")?;
        sb.extend_from_slice(&id_count.to_le_bytes());
        sb.extend_from_slice(&4u16.to_le_bytes());
        sb.extend_from_slice(&0u16.to_le_bytes());
        sb.extend_from_slice(&root_ref.to_le_bytes());
        sb.extend_from_slice(&bytes_used.to_le_bytes());
        sb.extend_from_slice(&id_table.to_le_bytes());
        sb.extend_from_slice(&NOT_SET.to_le_bytes()); // xattr id table
        sb.extend_from_slice(&inode_table.to_le_bytes());
        sb.extend_from_slice(&dir_table.to_le_bytes());
        sb.extend_from_slice(&fragment_table.to_le_bytes());
        sb.extend_from_slice(&NOT_SET.to_le_bytes()); // export table
        let tail_sha256 = w.finish(&sb)?;
        Ok(Written {
            size: padded,
            tail_sha256,
        })
    }

    /// What is written for each inode, in order: a directory's subdirectories
    /// first (depth first), then the inodes of its own entries (a hard link's
    /// inode only at its first name), then its listing. The root is last.
    fn events(&self) -> Vec<Event<'a>> {
        let mut ev = Vec::with_capacity(self.tree.len() + self.children.len());
        let mut seen = std::collections::HashSet::new();
        self.events_of("", &mut ev, &mut seen);
        ev.push(Event::Inode(""));
        ev
    }

    fn events_of(
        &self,
        dir: &'a str,
        ev: &mut Vec<Event<'a>>,
        seen: &mut std::collections::HashSet<usize>,
    ) {
        let kids = self.children.get(dir).map(Vec::as_slice).unwrap_or(&[]);
        for &k in kids {
            if matches!(self.entry(k).kind, Kind::Dir) {
                self.events_of(k, ev, seen);
            }
        }
        for &k in kids {
            if let Kind::File(d) = &self.entry(k).kind {
                if !seen.insert(data_key(d)) {
                    continue;
                }
            }
            ev.push(Event::Inode(k));
        }
        ev.push(Event::Listing(dir));
    }

    fn entry(&self, path: &str) -> &'a Entry {
        // Paths come from the tree itself.
        let tree: &'a Tree = self.tree;
        tree.get(path)
            .unwrap_or_else(|| unreachable!("/{path} vanished"))
    }

    /// The inode key of an entry: files by their shared data, the rest by path.
    fn key(&self, path: &'a str) -> Key<'a> {
        match &self.entry(path).kind {
            Kind::File(d) => Key::Data(data_key(d)),
            _ => Key::Path(path),
        }
    }

    /// Writes every inode and directory listing; returns the root's inode
    /// reference and the inode count.
    fn write_tables(&self, inodes: &mut MetaWriter, dirs: &mut MetaWriter) -> Result<(u64, u32)> {
        let events = self.events();
        let mut number: HashMap<Key, u32> = HashMap::new();
        for e in &events {
            if let Event::Inode(p) = e {
                let n = u32::try_from(number.len() + 1).context("too many inodes")?;
                number.insert(self.key(p), n);
            }
        }
        let count = u32::try_from(number.len()).context("too many inodes")?;
        let mut refs: HashMap<Key, u64> = HashMap::new();
        let mut listings: HashMap<&str, Listing> = HashMap::new();
        for e in events {
            match e {
                Event::Inode(p) => {
                    let entry = self.entry(p);
                    let key = self.key(p);
                    let num = number[&key];
                    let mut b = Vec::with_capacity(64);
                    // A hard-linked inode has the metadata of its first name.
                    let meta = match &entry.kind {
                        Kind::File(d) => {
                            self.entry(self.files[self.file_of[&data_key(d)]].path).meta
                        }
                        _ => entry.meta,
                    };
                    let uid = self.ids[&meta.uid];
                    let gid = self.ids[&meta.gid];
                    let header = |b: &mut Vec<u8>, t: u16| {
                        put16(b, t);
                        // Masked to 12 bits, so it fits.
                        put16(b, (meta.mode & 0o7777) as u16);
                        put16(b, uid);
                        put16(b, gid);
                        // Checked by `check_entry`.
                        put32(b, meta.mtime as u32);
                        put32(b, num);
                    };
                    match &entry.kind {
                        Kind::Dir => {
                            let l = listings
                                .remove(p)
                                .ok_or_else(|| anyhow!("/{p}: listing missing"))?;
                            let parent = if p.is_empty() {
                                count + 1
                            } else {
                                number[&Key::Path(tree::parent(p))]
                            };
                            let subdirs = self.children[p]
                                .iter()
                                .filter(|k| matches!(self.entry(k).kind, Kind::Dir))
                                .count();
                            let nlink = u32::try_from(subdirs + 2).context("link count")?;
                            let file_size = l.len.checked_add(3).context("directory size")?;
                            match u16::try_from(file_size) {
                                Ok(small) if l.index.is_empty() => {
                                    header(&mut b, T_DIR);
                                    put32(&mut b, l.block);
                                    put32(&mut b, nlink);
                                    put16(&mut b, small);
                                    put16(&mut b, l.offset);
                                    put32(&mut b, parent);
                                }
                                _ => {
                                    header(&mut b, T_LDIR);
                                    put32(&mut b, nlink);
                                    put32(&mut b, file_size);
                                    put32(&mut b, l.block);
                                    put32(&mut b, parent);
                                    let n = u16::try_from(l.index.len())
                                        .context("directory index too long")?;
                                    put16(&mut b, n);
                                    put16(&mut b, l.offset);
                                    put32(&mut b, NO_XATTR);
                                    for ix in &l.index {
                                        put32(&mut b, ix.index);
                                        put32(&mut b, ix.block);
                                        // Names are 1..=256 bytes (checked).
                                        put32(&mut b, (ix.name.len() - 1) as u32);
                                        b.extend_from_slice(ix.name.as_bytes());
                                    }
                                }
                            }
                        }
                        Kind::File(d) => {
                            let f = &self.files[self.file_of[&data_key(d)]];
                            let l = &self.contents[f.content];
                            put_file_inode(&mut b, l, f.nlink, header);
                        }
                        Kind::Symlink(t) => {
                            header(&mut b, T_SYMLINK);
                            put32(&mut b, 1);
                            // At most MAX_SYMLINK bytes (checked).
                            put32(&mut b, t.len() as u32);
                            b.extend_from_slice(t.as_bytes());
                        }
                        Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                            let t = if matches!(entry.kind, Kind::CharDevice { .. }) {
                                T_CHAR
                            } else {
                                T_BLOCK
                            };
                            header(&mut b, t);
                            put32(&mut b, 1);
                            put32(&mut b, encode_dev(*major, *minor, p)?);
                        }
                        Kind::Fifo | Kind::Socket => {
                            let t = if matches!(entry.kind, Kind::Fifo) {
                                T_FIFO
                            } else {
                                T_SOCKET
                            };
                            header(&mut b, t);
                            put32(&mut b, 1);
                        }
                    }
                    refs.insert(key, inodes.reference()?);
                    inodes.write(&b)?;
                }
                Event::Listing(dir) => {
                    let kids = self.children.get(dir).map(Vec::as_slice).unwrap_or(&[]);
                    let mut entries = Vec::with_capacity(kids.len());
                    for &k in kids {
                        let key = self.key(k);
                        entries.push(DirEntry {
                            name: tree::file_name(k),
                            reference: refs[&key],
                            number: number[&key],
                            kind: basic_type(&self.entry(k).kind),
                        });
                    }
                    listings.insert(dir, write_listing(dirs, &entries)?);
                }
            }
        }
        let root = refs
            .get(&Key::Path(""))
            .copied()
            .ok_or_else(|| anyhow!("root inode missing"))?;
        Ok((root, count))
    }
}

/// A regular file's inode after the common header (written by `header`):
/// basic when it can say everything, else extended (link count > 1, sparse
/// blocks, size or data position of 4 GiB or more).
fn put_file_inode(b: &mut Vec<u8>, l: &Layout, nlink: u32, header: impl Fn(&mut Vec<u8>, u16)) {
    let (frag, frag_off) = l.fragment.unwrap_or((NO_FRAGMENT, 0));
    let basic = nlink == 1 && l.sparse == 0;
    match (u32::try_from(l.start), u32::try_from(l.size)) {
        (Ok(start), Ok(size)) if basic => {
            header(b, T_FILE);
            put32(b, start);
            put32(b, frag);
            put32(b, frag_off);
            put32(b, size);
        }
        _ => {
            header(b, T_LFILE);
            put64(b, l.start);
            put64(b, l.size);
            put64(b, l.sparse);
            put32(b, nlink);
            put32(b, frag);
            put32(b, frag_off);
            put32(b, NO_XATTR);
        }
    }
    for s in &l.blocks {
        put32(b, *s);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key<'a> {
    Data(usize),
    Path(&'a str),
}

enum Event<'a> {
    /// Write the inode of the entry at this path.
    Inode(&'a str),
    /// Write the listing of this directory.
    Listing(&'a str),
}

fn threads(opts: &Options) -> usize {
    match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Refuses what squashfs cannot store.
fn check_entry(path: &str, e: &Entry) -> Result<()> {
    if u32::try_from(e.meta.mtime).is_err() {
        bail!(
            "/{path}: mtime {} does not fit squashfs's 32-bit times",
            e.meta.mtime
        );
    }
    if !path.is_empty() {
        let name = tree::file_name(path);
        if name.is_empty() || name.len() > MAX_NAME {
            bail!(
                "/{path}: name of {} bytes; squashfs names are 1 to {MAX_NAME} bytes (longer than squashfs allows)",
                name.len()
            );
        }
    }
    match &e.kind {
        Kind::Symlink(t) if t.is_empty() || t.len() > MAX_SYMLINK => bail!(
            "/{path}: symlink target of {} bytes; squashfs (and Linux) take 1 to {MAX_SYMLINK}",
            t.len()
        ),
        Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
            encode_dev(*major, *minor, path)?;
        }
        _ => {}
    }
    Ok(())
}

/// Device number as squashfs stores it (the kernel's `new_encode_dev`):
/// minor bits 0-7, major bits 8-19, minor bits 8-19 at 20-31.
fn encode_dev(major: u32, minor: u32, path: &str) -> Result<u32> {
    if major > 0xfff || minor > 0xf_ffff {
        bail!("/{path}: device {major}:{minor} does not fit squashfs's encoding (major < 4096, minor < 1048576)");
    }
    Ok((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

fn basic_type(k: &Kind) -> u16 {
    match k {
        Kind::Dir => T_DIR,
        Kind::File(_) => T_FILE,
        Kind::Symlink(_) => T_SYMLINK,
        Kind::BlockDevice { .. } => T_BLOCK,
        Kind::CharDevice { .. } => T_CHAR,
        Kind::Fifo => T_FIFO,
        Kind::Socket => T_SOCKET,
    }
}

fn put16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

// ------------------------------------------------------------ directories

struct DirEntry<'a> {
    name: &'a str,
    reference: u64,
    number: u32,
    kind: u16,
}

struct IndexEntry<'a> {
    /// Offset of a directory header in the listing.
    index: u32,
    /// Directory table block holding that header.
    block: u32,
    /// The first name under that header.
    name: &'a str,
}

/// An index entry whose block is known once the listing is written.
struct PendingIndex<'a> {
    index: u32,
    abs: u64,
    name: &'a str,
}

/// Where a directory's listing is and how to search it.
struct Listing<'a> {
    block: u32,
    offset: u16,
    len: u32,
    index: Vec<IndexEntry<'a>>,
}

/// Writes one directory's listing: runs of entries under headers. A header
/// starts when its run is full (256), the next inode is in another metadata
/// block, its inode number is too far from the header's, or the listing
/// since the last index point would pass 8 KiB (then the header also gets an
/// index entry, as mksquashfs writes them).
fn write_listing<'a>(dirs: &mut MetaWriter, entries: &[DirEntry<'a>]) -> Result<Listing<'a>> {
    let start = dirs.position();
    let (block, offset) = dirs.split(start)?;
    let mut buf: Vec<u8> = Vec::new();
    let mut index = Vec::new();
    let mut index_mark = 0usize;
    // (position of the count field, inode block, base number, count)
    let mut header: Option<(usize, u64, u32, u32)> = None;
    for e in entries {
        let esize = 8 + e.name.len();
        let iblock = e.reference >> 16;
        let new_index = buf.len() + esize - index_mark > METADATA_SIZE;
        let delta_ok = |base: u32| {
            let d = i64::from(e.number) - i64::from(base);
            i16::try_from(d).is_ok()
        };
        let need = match header {
            None => true,
            Some((_, b, base, count)) => {
                count == DIR_COUNT || b != iblock || !delta_ok(base) || new_index
            }
        };
        if need {
            if let Some((at, _, _, count)) = header {
                buf[at..at + 4].copy_from_slice(&(count - 1).to_le_bytes());
            }
            if new_index {
                let abs = start
                    .checked_add(buf.len() as u64)
                    .ok_or_else(|| anyhow!("directory table too large"))?;
                index.push(PendingIndex {
                    index: u32::try_from(buf.len()).context("directory too large")?,
                    abs,
                    name: e.name,
                });
                index_mark = buf.len();
            }
            let at = buf.len();
            put32(&mut buf, 0);
            put32(
                &mut buf,
                u32::try_from(iblock).context("inode table too large")?,
            );
            put32(&mut buf, e.number);
            header = Some((at, iblock, e.number, 0));
        }
        let Some((_, _, base, count)) = header.as_mut() else {
            unreachable!("a header was just started")
        };
        *count += 1;
        // Within i16 (checked above); the format stores it as 16 bits.
        let delta = (i64::from(e.number) - i64::from(*base)) as i16;
        put16(&mut buf, (e.reference & 0xffff) as u16);
        buf.extend_from_slice(&delta.to_le_bytes());
        put16(&mut buf, e.kind);
        // Names are 1..=256 bytes (checked).
        put16(&mut buf, (e.name.len() - 1) as u16);
        buf.extend_from_slice(e.name.as_bytes());
    }
    if let Some((at, _, _, count)) = header {
        buf[at..at + 4].copy_from_slice(&(count - 1).to_le_bytes());
    }
    dirs.write(&buf)?;
    // Index entries point at the block holding their header, known now.
    let mut out = Vec::with_capacity(index.len());
    for ix in index {
        out.push(IndexEntry {
            index: ix.index,
            block: dirs.split(ix.abs)?.0,
            name: ix.name,
        });
    }
    Ok(Listing {
        block,
        offset,
        len: u32::try_from(buf.len()).context("directory too large")?,
        index: out,
    })
}

// ------------------------------------------------------------ metadata

fn compressor(level: i32) -> Result<zstd::bulk::Compressor<'static>> {
    zstd::bulk::Compressor::new(level).context("starting zstd")
}

/// A stream of metadata blocks (8 KiB uncompressed each, compressed when
/// that is smaller) held in memory: the inode table, the directory table.
struct MetaWriter {
    out: Vec<u8>,
    buf: Vec<u8>,
    /// Where each flushed block starts in `out`.
    starts: Vec<u32>,
    zstd: zstd::bulk::Compressor<'static>,
}

impl MetaWriter {
    fn new(level: i32) -> Result<MetaWriter> {
        Ok(MetaWriter {
            out: Vec::new(),
            buf: Vec::with_capacity(2 * METADATA_SIZE),
            starts: Vec::new(),
            zstd: compressor(level)?,
        })
    }

    /// Uncompressed position of the next byte.
    fn position(&self) -> u64 {
        self.starts.len() as u64 * METADATA_SIZE as u64 + self.buf.len() as u64
    }

    /// The (block start, offset in block) of an uncompressed position in a
    /// flushed block or the one being filled.
    fn split(&self, abs: u64) -> Result<(u32, u16)> {
        let n = usize::try_from(abs / METADATA_SIZE as u64).context("metadata position")?;
        // Less than 8192.
        let offset = (abs % METADATA_SIZE as u64) as u16;
        let block = match self.starts.get(n) {
            Some(s) => *s,
            None if n == self.starts.len() => {
                u32::try_from(self.out.len()).context("metadata table over 4 GiB")?
            }
            None => bail!("metadata position {abs} not written yet"),
        };
        Ok((block, offset))
    }

    /// The reference (block start << 16 | offset) of the next byte.
    fn reference(&self) -> Result<u64> {
        let (block, offset) = self.split(self.position())?;
        Ok(u64::from(block) << 16 | u64::from(offset))
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(bytes);
        while self.buf.len() >= METADATA_SIZE {
            let rest = self.buf.split_off(METADATA_SIZE);
            let block = std::mem::replace(&mut self.buf, rest);
            self.flush(&block)?;
        }
        Ok(())
    }

    fn flush(&mut self, block: &[u8]) -> Result<()> {
        self.starts
            .push(u32::try_from(self.out.len()).context("metadata table over 4 GiB")?);
        let z = self.zstd.compress(block).context("zstd")?;
        // Both lengths are at most 8192.
        if z.len() < block.len() {
            self.out.extend_from_slice(&(z.len() as u16).to_le_bytes());
            self.out.extend_from_slice(&z);
        } else {
            let header = block.len() as u16 | META_UNCOMPRESSED;
            self.out.extend_from_slice(&header.to_le_bytes());
            self.out.extend_from_slice(block);
        }
        Ok(())
    }

    /// The blocks, and where each starts.
    fn finish(mut self) -> Result<(Vec<u8>, Vec<u32>)> {
        if !self.buf.is_empty() {
            let block = std::mem::take(&mut self.buf);
            self.flush(&block)?;
        }
        Ok((self.out, self.starts))
    }
}

/// Writes a lookup table (fragment or id table) the way the kernel finds it:
/// the entries in metadata blocks, then the 64-bit positions of those blocks.
/// Returns the position of that index.
fn write_indexed_table(
    w: &mut impl Write,
    pos: &mut u64,
    entries: &[u8],
    level: i32,
) -> Result<u64> {
    let mut m = MetaWriter::new(level)?;
    m.write(entries)?;
    let (blocks, starts) = m.finish()?;
    let base = *pos;
    w.write_all(&blocks).context("writing the image")?;
    *pos = pos
        .checked_add(blocks.len() as u64)
        .ok_or_else(|| anyhow!("image too large"))?;
    let index_at = *pos;
    for s in starts {
        w.write_all(&(base + u64::from(s)).to_le_bytes())
            .context("writing the image")?;
        *pos += 8;
    }
    Ok(index_at)
}

// ------------------------------------------------------------------ output

/// Where the image goes: `file` from `base` on, written in order through a
/// 1 MiB buffer with positioned writes (so bytes around the image are not
/// touched). It hashes what follows the first [`HEAD`] bytes (where the
/// superblock goes last) as it passes, and it has the kernel
/// write each 64 MiB out to disk while compression goes on, so the fsync
/// that makes the finished image durable finds little left to do.
struct Out<'f> {
    file: &'f File,
    base: u64,
    /// Bytes accepted so far.
    len: u64,
    /// The bytes accepted after the last flush.
    buf: Vec<u8>,
    tail: Sha256,
    flusher: crate::output::Flusher,
    /// Bytes written to the file when the flusher was last woken.
    flushed_at: u64,
}

/// How much is written between two flushes to disk.
const FLUSH_EVERY: u64 = 64 << 20;
const OUT_BUFFER: usize = 1 << 20;

impl<'f> Out<'f> {
    fn new(file: &'f File, base: u64) -> Result<Out<'f>> {
        Ok(Out {
            file,
            base,
            len: 0,
            buf: Vec::with_capacity(OUT_BUFFER),
            tail: Sha256::new(),
            flusher: crate::output::Flusher::start(file)?,
            flushed_at: 0,
        })
    }

    fn write_buf(&mut self) -> std::io::Result<()> {
        let start = self.len - self.buf.len() as u64;
        let at = self.base.checked_add(start).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "image offset too large")
        })?;
        self.file.write_all_at(&self.buf, at)?;
        self.buf.clear();
        if self.len - self.flushed_at >= FLUSH_EVERY {
            self.flusher.wake();
            self.flushed_at = self.len;
        }
        Ok(())
    }

    /// Writes what is buffered and the superblock `sb` at the start; returns
    /// the SHA-256 of everything after the head.
    fn finish(mut self, sb: &[u8]) -> Result<[u8; 32]> {
        self.write_buf().context("writing the image")?;
        self.file
            .write_all_at(sb, self.base)
            .context("writing the superblock")?;
        self.flusher.stop()?;
        Ok(self.tail.finalize().into())
    }
}

impl Write for Out<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let in_head = usize::try_from(HEAD.saturating_sub(self.len))
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        self.tail.update(&bytes[in_head..]);
        self.buf.extend_from_slice(bytes);
        self.len += bytes.len() as u64;
        if self.buf.len() >= OUT_BUFFER {
            self.write_buf()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.write_buf()
    }
}

// ------------------------------------------------------------ compression

/// Reads and compresses one job.
fn compress_job(job: &Job, zstd: &mut zstd::bulk::Compressor<'static>) -> Result<Done> {
    let mut raw = Vec::with_capacity(BLOCK);
    match job {
        Job::Block {
            path,
            data,
            offset,
            len,
            ..
        } => {
            read_content(data, *offset, *len, &mut raw)
                .with_context(|| format!("reading /{path}"))?;
            if raw.len() == BLOCK && raw.iter().all(|&b| b == 0) {
                return Ok(Done {
                    raw,
                    stored: Stored::Sparse,
                });
            }
        }
        Job::Fragment { pieces, .. } => {
            for p in pieces {
                match &p.bytes {
                    Some(b) => raw.extend_from_slice(b),
                    None => read_content(p.data, p.offset, p.len, &mut raw)
                        .with_context(|| format!("reading /{}", p.path))?,
                }
            }
        }
    }
    let z = zstd.compress(&raw).context("zstd")?;
    let stored = match z.len() < raw.len() {
        true => Stored::Compressed(z),
        false => Stored::Raw,
    };
    Ok(Done { raw, stored })
}

/// Compresses the jobs of `source` on `threads` threads and hands the
/// results to `sink` strictly in job order. At most [`window`] jobs are in
/// flight (read, compressed or waiting for an earlier one), so memory stays
/// bounded.
fn run_jobs<'a>(
    source: &Mutex<Jobs<'_, 'a>>,
    threads: usize,
    level: i32,
    sink: &mut dyn FnMut(&Job<'a>, Done) -> Result<()>,
    stop: &AtomicBool,
) -> Result<()> {
    let next = || -> Result<Option<(usize, Job<'a>)>> {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            bail!("stopped before it was complete");
        }
        source
            .lock()
            .map_err(|_| anyhow!("a compression thread panicked"))?
            .next()
    };
    if threads <= 1 {
        let mut zstd = compressor(level)?;
        while let Some((_, job)) = next()? {
            let done = compress_job(&job, &mut zstd)?;
            sink(&job, done)?;
        }
        return Ok(());
    }
    let window = window(threads);
    // One token per job allowed in flight; the writer returns one per job written.
    let (tok_tx, tok_rx) = mpsc::channel::<()>();
    for _ in 0..window {
        tok_tx
            .send(())
            .map_err(|_| anyhow!("token channel closed"))?;
    }
    let tok_rx = Mutex::new(tok_rx);
    let (res_tx, res_rx) = mpsc::channel::<Result<(usize, Job<'a>, Done)>>();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let res_tx = res_tx.clone();
            let (next, tok_rx) = (&next, &tok_rx);
            s.spawn(move || {
                let mut zstd = match compressor(level) {
                    Ok(z) => z,
                    Err(e) => {
                        let _ = res_tx.send(Err(e));
                        return;
                    }
                };
                loop {
                    let token = tok_rx.lock().map(|rx| rx.recv().is_ok()).unwrap_or(false);
                    if !token {
                        return;
                    }
                    let r = match next() {
                        Ok(None) => return,
                        Ok(Some((i, job))) => {
                            compress_job(&job, &mut zstd).map(|done| (i, job, done))
                        }
                        Err(e) => Err(e),
                    };
                    if res_tx.send(r).is_err() {
                        return;
                    }
                }
            });
        }
        drop(res_tx);
        let result = (|| -> Result<()> {
            let mut pending = BTreeMap::new();
            let mut expected = 0usize;
            // Until every worker has found no more jobs and hung up.
            while let Ok(r) = res_rx.recv() {
                let (i, job, done) = r?;
                pending.insert(i, (job, done));
                while let Some((job, done)) = pending.remove(&expected) {
                    sink(&job, done)?;
                    expected += 1;
                    let _ = tok_tx.send(());
                }
            }
            if !pending.is_empty() {
                bail!("internal: compressed blocks left unwritten");
            }
            Ok(())
        })();
        // Workers waiting for a token see the channel closed and stop.
        drop(tok_tx);
        result
    })
}

/// How many jobs may be in flight: four per thread, and at least 64
/// (8 MiB of compressed blocks at most). Results are written in job order, so
/// a worker descheduled in the middle of the oldest job holds up the others
/// once the window is full; on a busy machine with few cores (another build,
/// the initramfs's gzip) a window of 8 left cores idle: the 500 MB bench
/// rootfs's compression took 5.7-6.0 s of wall time with 64 against 6.3-6.8 s
/// with 8, for the same CPU time.
fn window(threads: usize) -> usize {
    threads.saturating_mul(4).max(64)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tree::{Entry, Meta};
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
                    assert_eq!(
                        std::fs::read(&path).unwrap(),
                        d.to_vec().unwrap(),
                        "/{p} content"
                    );
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
        let shared = Arc::new(crate::tree::Content::from_vec(b"same inode\n".to_vec()));
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
        write(&tree, &img, 1_700_000_000, &Options::default()).unwrap();
        assert_eq!(actual_listing(&img), expected_listing(&tree));
    }

    #[test]
    fn extraction_matches_tree_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("t.squashfs");
        let tree = sample_tree();
        write(&tree, &img, 1_700_000_000, &Options::default()).unwrap();
        let dest = dir.path().join("x");
        unsquashfs_extract(&img, &dest);
        assert_extracted_matches(&tree, &dest, true, true);
    }

    /// Written into a partition of a larger file, the image is the one
    /// `write` makes alone, with the same digest, and the bytes around it
    /// are untouched.
    #[test]
    fn written_in_place_it_is_the_same_image_and_touches_nothing_else() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let tree = full_tree();
        let alone = dir.path().join("alone.squashfs");
        let w1 = write(&tree, &alone, 7, &opts(3, 2)).unwrap();
        let image = std::fs::read(&alone).unwrap();
        let disk = dir.path().join("disk.img");
        let offset = (1 << 20) + 512;
        let total = offset + w1.size as usize + 8192;
        std::fs::write(&disk, vec![0xabu8; total]).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        let go = AtomicBool::new(false);
        let w2 = write_into(&tree, &f, offset as u64, 7, &opts(3, 2), &disk, &go).unwrap();
        assert_eq!(w1, w2);
        let mut got = vec![0u8; total];
        std::fs::File::open(&disk)
            .unwrap()
            .read_exact_at(&mut got, 0)
            .unwrap();
        assert!(got[offset..offset + image.len()] == image[..]);
        assert!(got[..offset].iter().all(|&b| b == 0xab));
        assert!(got[offset + image.len()..].iter().all(|&b| b == 0xab));
    }

    /// Told to stop, on one thread or several, it compresses nothing more
    /// and fails; the image has no superblock (its magic is written last).
    #[test]
    fn a_stopped_write_fails_without_a_superblock() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let tree = full_tree();
        for threads in [1, 2] {
            let disk = dir.path().join(format!("disk-{threads}.img"));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&disk)
                .unwrap();
            let stop = AtomicBool::new(true);
            let err = write_into(&tree, &f, 4096, 7, &opts(3, threads), &disk, &stop).unwrap_err();
            assert!(
                format!("{err:#}").contains("stopped before it was complete"),
                "{err:#}"
            );
            let mut magic = [0u8; 4];
            let read = f.read_at(&mut magic, 4096).unwrap();
            assert!(read < 4 || &magic != b"hsqs", "no superblock");
            // Nothing compressed: at most the compression options were written.
            assert!(
                f.metadata().unwrap().len() <= 4096 + HEAD + 6,
                "{threads} threads"
            );
        }
    }

    #[test]
    fn superblock_has_zstd_128k_blocks_and_given_time() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("t.squashfs");
        let written = write(&sample_tree(), &img, 1_234_567_890, &Options::default()).unwrap();
        let bytes = std::fs::read(&img).unwrap();
        assert_eq!(written.size, bytes.len() as u64);
        assert_eq!(written.size % 4096, 0, "padded to 4 KiB");
        assert_eq!(
            written.tail_sha256,
            <[u8; 32]>::from(Sha256::digest(&bytes[HEAD as usize..])),
            "the tail digest is that of the bytes after the head"
        );
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
            s.contains(&format!("compression-level {DEFAULT_LEVEL}")),
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
        write(&tree, &img, 0, &Options::default()).unwrap();
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
        write(&tree, &a, 42, &Options::default()).unwrap();
        write(&tree, &b, 42, &Options::default()).unwrap();
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
        write(&rev, &c, 42, &Options::default()).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());
    }

    #[test]
    fn shared_first_block_does_not_merge_files() {
        // A dedup keyed on the first block (backhand's) would read "b" and
        // "c" back as "a". "a" and "c" have the same size, so they are hashed.
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.squashfs");
        let mut tree = Tree::new(m(0o755, 0));
        let mut a = vec![7u8; 200 * 1024];
        let mut b = a.clone();
        a[150 * 1024] = 1;
        b[150 * 1024] = 2;
        b.push(9);
        let mut c = a.clone();
        c[199 * 1024] = 3;
        tree.insert("a", Entry::file(m(0o644, 0), a)).unwrap();
        tree.insert("b", Entry::file(m(0o644, 0), b)).unwrap();
        tree.insert("c", Entry::file(m(0o644, 0), c)).unwrap();
        write(&tree, &img, 0, &Options::default()).unwrap();
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
        write(&tree, &img, 0, &Options::default()).unwrap();
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
        let err = format!(
            "{:#}",
            write(&tree, &img, 0, &Options::default()).unwrap_err()
        );
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
        let err = format!(
            "{:#}",
            write(&tree, &img, 0, &Options::default()).unwrap_err()
        );
        assert!(err.contains("/dev") && err.contains("5000"), "{err}");
        assert!(!img.exists(), "nothing written on refusal");

        let mut tree = Tree::new(m(0o755, 0));
        let long = "n".repeat(257);
        tree.insert(&long, Entry::file(m(0o644, 0), vec![]))
            .unwrap();
        let err = format!(
            "{:#}",
            write(&tree, &img, 0, &Options::default()).unwrap_err()
        );
        assert!(err.contains("longer than"), "{err}");
    }

    fn opts(level: i32, threads: usize) -> Options {
        Options {
            compression_level: level,
            threads,
        }
    }

    /// Deterministic bytes that compress about as well as text (words from a
    /// small vocabulary) or, with `noise`, hardly at all.
    pub(crate) fn words(len: usize, seed: u64) -> Vec<u8> {
        const W: &[&str] = &[
            "the ",
            "kernel ",
            "squashfs ",
            "node ",
            "cluster ",
            "image ",
            "block ",
            "and ",
            "of ",
            "to ",
            "config ",
            "=",
            "\n",
            "/usr/lib/",
            "true ",
            "0x",
            "k3s ",
            "# ",
        ];
        let mut x = seed | 1;
        let mut v = Vec::with_capacity(len + 16);
        while v.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(W[(x % W.len() as u64) as usize].as_bytes());
        }
        v.truncate(len);
        v
    }

    /// `sample_tree` plus every shape of file and directory the format has
    /// special cases for.
    pub(crate) fn full_tree() -> Tree {
        let mut t = sample_tree();
        let d = m(0o755, 1_650_000_200);
        t.insert("data", Entry::dir(d)).unwrap();
        let file = |mode, data: Vec<u8>| Entry::file(m(mode, 1_650_000_201), data);
        t.insert(
            "data/one-block",
            file(0o644, crate::fs::test_noise(BLOCK, 1)),
        )
        .unwrap();
        t.insert("data/two-blocks", file(0o644, words(2 * BLOCK, 2)))
            .unwrap();
        t.insert("data/multi-tail", file(0o755, words(3 * BLOCK + 1000, 3)))
            .unwrap();
        let mut sparse = crate::fs::test_noise(BLOCK, 4);
        sparse.extend(vec![0u8; 2 * BLOCK]);
        sparse.extend(crate::fs::test_noise(5000, 5));
        t.insert("data/sparse", file(0o644, sparse)).unwrap();
        t.insert("data/all-zero", file(0o644, vec![0u8; 2 * BLOCK]))
            .unwrap();
        t.insert("data/zero-tail", file(0o644, vec![0u8; BLOCK + 7]))
            .unwrap();
        t.insert("data/dup-1", file(0o644, crate::fs::test_noise(200_000, 6)))
            .unwrap();
        t.insert("data/dup-2", file(0o600, crate::fs::test_noise(200_000, 6)))
            .unwrap();
        t.insert("data/empty-2", file(0o444, vec![])).unwrap();
        t.insert("data/setgid", file(0o2711, b"g".to_vec()))
            .unwrap();
        // Linux's NAME_MAX (255), so that it can be extracted; 256 (squashfs's
        // limit) is listed in `longest_allowed_name_round_trips`.
        t.insert(
            &format!("data/{}", "L".repeat(255)),
            file(0o644, b"long".to_vec()),
        )
        .unwrap();
        // Three names of one multi-block inode, in different directories.
        let linked = Arc::new(crate::tree::Content::from_vec(words(BLOCK + 4321, 7)));
        for p in ["data/hard-1", "data/hard-2", "etc/hard-3"] {
            t.insert(
                p,
                Entry {
                    meta: Meta {
                        mode: 0o640,
                        uid: 33,
                        gid: 65534,
                        mtime: 1_650_000_202,
                    },
                    kind: Kind::File(linked.clone()),
                },
            )
            .unwrap();
        }
        // A directory with thousands of entries of varied kinds and name lengths:
        // many headers, an extended inode with a directory index.
        t.insert("many", Entry::dir(m(0o1777, 1_650_000_203)))
            .unwrap();
        for i in 0..3000u32 {
            let name = format!("many/e{i:05}{}", "x".repeat((i % 37) as usize));
            let meta = m(0o644, 1_650_000_300 + u64::from(i));
            let e = match i % 10 {
                0 => Entry::symlink(meta, "../data/one-block"),
                1 => Entry::dir(meta),
                2 => Entry::file(meta, vec![]),
                _ => Entry::file(meta, format!("{i}\n").into_bytes()),
            };
            t.insert(&name, e).unwrap();
        }
        t
    }

    fn bytes_used(img: &Path) -> u64 {
        let b = std::fs::read(img).unwrap();
        u64::from_le_bytes(b[40..48].try_into().unwrap())
    }

    #[test]
    fn every_kind_of_entry_lists_and_extracts_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("f.squashfs");
        let tree = full_tree();
        write(&tree, &img, 1_700_000_000, &Options::default()).unwrap();
        assert_eq!(actual_listing(&img), expected_listing(&tree));
        let dest = dir.path().join("x");
        unsquashfs_extract(&img, &dest);
        assert_extracted_matches(&tree, &dest, true, true);
        // The three names of one inode are one inode (unsquashfs links them).
        let ino = |p: &str| std::fs::metadata(dest.join(p)).unwrap().ino();
        assert_eq!(ino("data/hard-1"), ino("etc/hard-3"));
        assert_eq!(ino("data/hard-2"), ino("etc/hard-3"));
        assert_ne!(ino("data/dup-1"), ino("data/dup-2"));
    }

    /// The uncompressed bytes of the metadata blocks in `img[from..to]`.
    fn metadata(img: &[u8], from: usize, to: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = from;
        while at < to {
            let h = u16::from_le_bytes([img[at], img[at + 1]]);
            let len = usize::from(h & 0x7fff);
            let block = &img[at + 2..at + 2 + len];
            if h & META_UNCOMPRESSED != 0 {
                out.extend_from_slice(block);
            } else {
                out.extend(zstd::bulk::decompress(block, METADATA_SIZE).unwrap());
            }
            at += 2 + len;
        }
        out
    }

    #[test]
    fn large_directories_get_an_index_every_8k_of_listing() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("i.squashfs");
        let mut tree = Tree::new(m(0o755, 0));
        tree.insert("many", Entry::dir(m(0o755, 0))).unwrap();
        let names: Vec<String> = (0..3000)
            .map(|i| format!("e{i:05}{}", "x".repeat(i % 37)))
            .collect();
        for n in &names {
            tree.insert(&format!("many/{n}"), Entry::file(m(0o644, 0), vec![]))
                .unwrap();
        }
        write(&tree, &img, 0, &Options::default()).unwrap();
        let b = std::fs::read(&img).unwrap();
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
        let inodes = metadata(&b, u64_at(64), u64_at(72));
        // Inode order: the 3000 empty files (32-byte basic file inodes), then
        // /many (an extended directory), then the root.
        let at = 3000 * 32;
        let u16_at = |o: usize| u16::from_le_bytes(inodes[o..o + 2].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(inodes[o..o + 4].try_into().unwrap());
        assert_eq!(u16_at(0), T_FILE);
        assert_eq!(u16_at(at), T_LDIR);
        let listing = u32_at(at + 20) as usize - 3;
        let count = usize::from(u16_at(at + 32));
        assert!(listing > 64 * 1024, "{listing}");
        let mut o = at + 40;
        let mut previous = 0;
        for _ in 0..count {
            let index = u32_at(o) as usize;
            let size = u32_at(o + 8) as usize + 1;
            let name = std::str::from_utf8(&inodes[o + 12..o + 12 + size]).unwrap();
            assert!(names.iter().any(|n| n == name), "{name}");
            assert!(
                index > previous && index - previous <= METADATA_SIZE + 12,
                "{index}"
            );
            previous = index;
            o += 12 + size;
        }
        // mksquashfs's rule: one index point per 8 KiB of listing.
        assert_eq!(count, listing / METADATA_SIZE, "{listing} bytes of listing");
        assert_eq!(actual_listing(&img), expected_listing(&tree));
    }

    #[test]
    fn file_inodes_are_extended_only_when_the_basic_one_cannot_say_it() {
        let inode = |start: u64, size: u64, sparse: u64, nlink: u32| {
            let l = Layout {
                size,
                start,
                blocks: vec![5; 2],
                sparse,
                fragment: Some((7, 9)),
            };
            let mut b = Vec::new();
            put_file_inode(&mut b, &l, nlink, |b, t| {
                b.extend_from_slice(&t.to_le_bytes())
            });
            b
        };
        let small = inode(1000, 300_000, 0, 1);
        assert_eq!(small[..2], T_FILE.to_le_bytes());
        assert_eq!(small.len(), 2 + 16 + 8, "basic fields, two blocks");
        assert_eq!(small[2..6], 1000u32.to_le_bytes());
        assert_eq!(small[6..10], 7u32.to_le_bytes());
        for (start, size, sparse, nlink) in [
            (1 << 32, 300_000, 0, 1),
            (1000, 5 << 30, 0, 1),
            (1000, 300_000, 131_072, 1),
            (1000, 300_000, 0, 2),
        ] {
            let b = inode(start, size, sparse, nlink);
            assert_eq!(
                b[..2],
                T_LFILE.to_le_bytes(),
                "{start} {size} {sparse} {nlink}"
            );
            assert_eq!(b.len(), 2 + 40 + 8);
            assert_eq!(b[2..10], start.to_le_bytes());
            assert_eq!(b[10..18], size.to_le_bytes());
            assert_eq!(b[18..26], sparse.to_le_bytes());
            assert_eq!(b[26..30], nlink.to_le_bytes());
        }
    }

    #[test]
    fn output_does_not_depend_on_the_thread_count() {
        let dir = tempfile::tempdir().unwrap();
        let tree = full_tree();
        let one = dir.path().join("1");
        let many = dir.path().join("n");
        write(&tree, &one, 7, &opts(3, 1)).unwrap();
        write(&tree, &many, 7, &opts(3, 5)).unwrap();
        assert_eq!(std::fs::read(&one).unwrap(), std::fs::read(&many).unwrap());
    }

    /// The writer leaves each stored file's SHA-256 with its content, taken
    /// from the bytes it compressed (so the build reads a file once), and
    /// the image is the same whether the digests were known before or not.
    #[test]
    fn stored_files_leave_their_digests_and_the_image_does_not_depend_on_them() {
        let dir = tempfile::tempdir().unwrap();
        let tree = || {
            let mut t = full_tree();
            let file = |data: Vec<u8>| Entry::file(m(0o644, 9), data);
            // Equal sizes, different bytes: small ones (read once, for their
            // digest, and packed from those bytes) and multi-block ones.
            t.insert("data/twin-a", file(crate::fs::test_noise(3000, 11)))
                .unwrap();
            t.insert("data/twin-b", file(crate::fs::test_noise(3000, 12)))
                .unwrap();
            t.insert("data/twin-c", file(crate::fs::test_noise(3000, 11)))
                .unwrap();
            t.insert("data/big-a", file(words(BLOCK + 99, 13))).unwrap();
            t.insert("data/big-b", file(words(BLOCK + 99, 14))).unwrap();
            t
        };
        let unknown = tree();
        let img = dir.path().join("unknown");
        write(&unknown, &img, 7, &opts(3, 2)).unwrap();
        let mut checked = 0;
        for (path, e) in unknown.iter() {
            if let Kind::File(d) = &e.kind {
                let bytes = d.bytes().unwrap();
                if bytes.is_empty() {
                    continue;
                }
                let want: [u8; 32] = Sha256::digest(&bytes).into();
                assert_eq!(d.known_sha256(), Some(want), "/{path}");
                checked += 1;
            }
        }
        assert!(checked > 60, "{checked}");
        let dest = dir.path().join("x");
        unsquashfs_extract(&img, &dest);
        assert_extracted_matches(&unknown, &dest, false, true);

        let known = tree();
        for (_, e) in known.iter() {
            if let Kind::File(d) = &e.kind {
                d.sha256().unwrap();
            }
        }
        let again = dir.path().join("known");
        write(&known, &again, 7, &opts(3, 2)).unwrap();
        assert_eq!(std::fs::read(&img).unwrap(), std::fs::read(&again).unwrap());
    }

    #[test]
    fn equal_files_are_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let content = crate::fs::test_noise(300_000, 9);
        let mut one = Tree::new(m(0o755, 0));
        one.insert("a", Entry::file(m(0o644, 0), content.clone()))
            .unwrap();
        let mut two = one.clone();
        two.insert("b", Entry::file(m(0o644, 0), content)).unwrap();
        let (i1, i2) = (dir.path().join("1"), dir.path().join("2"));
        write(&one, &i1, 0, &Options::default()).unwrap();
        write(&two, &i2, 0, &Options::default()).unwrap();
        let extra = bytes_used(&i2) - bytes_used(&i1);
        // One more inode and directory entry, not another 300 KB.
        assert!(extra < 200, "the copy cost {extra} bytes");
        let dest = dir.path().join("x");
        unsquashfs_extract(&i2, &dest);
        assert_extracted_matches(&two, &dest, false, true);
    }

    #[test]
    fn refuses_bad_levels_and_long_symlinks_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("r.squashfs");
        let tree = Tree::new(m(0o755, 0));
        for level in [0, 23] {
            let err = format!("{:#}", write(&tree, &img, 0, &opts(level, 1)).unwrap_err());
            assert!(err.contains("level"), "{err}");
        }
        let mut t = Tree::new(m(0o755, 0));
        t.insert("l", Entry::symlink(m(0o777, 0), &"t".repeat(4096)))
            .unwrap();
        let err = format!("{:#}", write(&t, &img, 0, &Options::default()).unwrap_err());
        assert!(
            err.contains("/l") && err.contains("symlink target"),
            "{err}"
        );
        assert!(!img.exists(), "nothing written on refusal");
    }

    /// A tree shaped like a system /usr: many small text files, some larger
    /// "binaries" (part noise, part repetitive), symlinks, duplicates.
    pub(crate) fn realistic_tree() -> Tree {
        let mut t = Tree::new(m(0o755, 1));
        let dm = m(0o755, 1);
        for i in 0..1500u64 {
            let dir = format!("usr/share/d{:02}", i % 40);
            let len = 200 + (i * 7919 % 9000) as usize;
            t.insert_with_parents(
                &format!("{dir}/t{i}.conf"),
                Entry::file(m(0o644, 1), words(len, i)),
                dm,
            )
            .unwrap();
        }
        for i in 0..40u64 {
            let len = 50_000 + (i * 104_729 % 700_000) as usize;
            let mut data = Vec::with_capacity(len);
            while data.len() < len {
                data.extend(crate::fs::test_noise(3000, i * 1000 + data.len() as u64));
                data.extend(words(9000, i + data.len() as u64));
                data.extend(vec![0u8; 500]);
            }
            data.truncate(len);
            t.insert_with_parents(
                &format!("usr/lib/bin{i}"),
                Entry::file(m(0o755, 1), data.clone()),
                dm,
            )
            .unwrap();
            if i % 8 == 0 {
                t.insert_with_parents(
                    &format!("usr/lib/copy/bin{i}"),
                    Entry::file(m(0o755, 1), data),
                    dm,
                )
                .unwrap();
            }
            t.insert_with_parents(
                &format!("usr/bin/link{i}"),
                Entry::symlink(m(0o777, 1), &format!("../lib/bin{i}")),
                dm,
            )
            .unwrap();
        }
        t
    }

    /// Writes the tree's directories, files and symlinks under `dir`.
    pub(crate) fn materialize(tree: &Tree, dir: &Path) {
        for (p, e) in tree.iter() {
            let path = dir.join(p);
            match &e.kind {
                Kind::Dir => std::fs::create_dir_all(&path).unwrap(),
                Kind::File(d) => std::fs::write(&path, d.to_vec().unwrap()).unwrap(),
                Kind::Symlink(t) => std::os::unix::fs::symlink(t, &path).unwrap(),
                _ => panic!("/{p}: only dirs, files and symlinks here"),
            }
        }
    }

    #[test]
    fn no_larger_than_mksquashfs_at_the_same_level() {
        let dir = tempfile::tempdir().unwrap();
        let tree = realistic_tree();
        let src = dir.path().join("src");
        materialize(&tree, &src);
        let ours = dir.path().join("ours");
        let theirs = dir.path().join("theirs");
        let level = DEFAULT_LEVEL;
        write(&tree, &ours, 0, &opts(level, 0)).unwrap();
        let out = Command::new("mksquashfs")
            .arg(&src)
            .arg(&theirs)
            .args(["-comp", "zstd", "-Xcompression-level"])
            .arg(level.to_string())
            .args(["-b", "131072", "-noappend", "-no-progress", "-quiet"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let (a, b) = (bytes_used(&ours), bytes_used(&theirs));
        eprintln!("ours {a} bytes, mksquashfs {b} bytes");
        assert!(
            a as f64 <= b as f64 * 1.02,
            "ours {a} bytes > 1.02 x mksquashfs's {b}"
        );
        let dest = dir.path().join("x");
        unsquashfs_extract(&ours, &dest);
        assert_extracted_matches(&tree, &dest, false, false);
    }
}

#[cfg(test)]
mod perf {
    use super::*;
    use std::process::Command;

    /// Size and time per zstd level, ours and mksquashfs's (same level,
    /// 128 KiB blocks, all cores), on the directory `NODEIMG_PERF_DIR` or else
    /// the test rootfs's /usr:
    /// `NODEIMG_TEST_ROOTFS=... cargo test --release --lib squashfs::perf -- --ignored --nocapture`
    /// `NODEIMG_LEVELS=1,3` picks the levels, `NODEIMG_THREADS=1` our threads.
    #[test]
    #[ignore]
    fn levels_on_test_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let (usr, src) = match std::env::var_os("NODEIMG_PERF_DIR") {
            Some(d) => {
                let d = std::path::PathBuf::from(d);
                (crate::tree::reader::read_dir_tree(&d).unwrap(), d)
            }
            None => {
                let rootfs = std::env::var("NODEIMG_TEST_ROOTFS").expect("NODEIMG_TEST_ROOTFS");
                let tree =
                    crate::tree::reader::read_rootfs(Path::new(&rootfs), &std::env::temp_dir())
                        .unwrap();
                let src = dir.path().join("src");
                std::fs::create_dir(&src).unwrap();
                let out = Command::new("tar")
                    .args(["--zstd", "-xf", &rootfs, "-C"])
                    .arg(&src)
                    .arg("./usr")
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{out:?}");
                (tree.subtree("usr").unwrap(), src.join("usr"))
            }
        };
        let levels: Vec<i32> = std::env::var("NODEIMG_LEVELS")
            .unwrap_or_else(|_| "1,3,6,9,15,19".into())
            .split(',')
            .map(|l| l.parse().unwrap())
            .collect();
        eprintln!(
            "{}: {} entries, {} bytes of content",
            src.display(),
            usr.len(),
            usr.content_bytes()
        );
        let threads = std::env::var("NODEIMG_THREADS").map_or(0, |t| t.parse().unwrap());
        for level in levels {
            let img = dir.path().join(format!("ours-{level}"));
            let t = std::time::Instant::now();
            write(
                &usr,
                &img,
                0,
                &Options {
                    compression_level: level,
                    threads,
                },
            )
            .unwrap();
            let ours = t.elapsed();
            let theirs_img = dir.path().join(format!("theirs-{level}"));
            let t = std::time::Instant::now();
            let out = Command::new("mksquashfs")
                .arg(&src)
                .arg(&theirs_img)
                .args(["-comp", "zstd", "-Xcompression-level"])
                .arg(level.to_string())
                .args(["-b", "131072", "-noappend", "-no-progress", "-quiet"])
                .output()
                .unwrap();
            let theirs = t.elapsed();
            assert!(out.status.success(), "{out:?}");
            let size = |p: &Path| std::fs::metadata(p).unwrap().len();
            eprintln!(
                "level {level:2}: ours {:>10} bytes {:>7.2?} | mksquashfs {:>10} bytes {:>7.2?}",
                size(&img),
                ours,
                size(&theirs_img),
                theirs
            );
        }
    }
}
