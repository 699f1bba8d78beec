//! The system cache: what every node of a build shares (the system squashfs,
//! the initramfs, the boot files taken from the rootfs, the data partition's
//! initial tree and the values that describe them), kept between builds so
//! another node's build (or a rebuild with an edited cluster.yaml) skips
//! reading the rootfs and writing the squashfs.
//!
//! Entries live in `$XDG_CACHE_HOME/nodeimg/systems/<key>/` (else
//! `~/.cache/nodeimg/systems/`), keyed by a SHA-256 over everything the
//! system depends on (see `system_key`). An entry holds:
//!
//! - `system.squashfs`, `initramfs.cpio.gz`;
//! - `blobs`: the bytes of every boot file and data-tree file, each once
//!   (hard links share one range), read back by range;
//! - `index.json`: the data tree's entries, the boot files' paths, the
//!   scalars (epoch, seed, kernel release, k3s, rootfs digest) and the size
//!   and SHA-256 of the three files above, checked on every load.
//!
//! An entry is written into a temporary directory beside the entries,
//! synced, and renamed into place, so it is either whole or absent. One that
//! fails its checks is removed and rebuilt. The cache keeps the [`KEEP`]
//! most recently used entries (a hit refreshes an entry's time), and any
//! used within the last hour, which a build running alongside may be reading.
//! Nothing secret goes in: node config lives only on the boot partition.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::board::{Board, DataDir};
use crate::bootfiles::Found;
use crate::cli::BuildArgs;
use crate::file_digests::FileDigests;
use crate::manifest::K3sInfo;
use crate::progress::Progress;
use crate::tree::{self, Content, Data, Entry, Kind, Meta, Tree};
use crate::{ids, k3s};

/// How many entries the cache keeps (the most recently used ones).
pub const KEEP: usize = 4;

/// Version of the entry layout; part of every key.
const FORMAT: u32 = 1;

const INDEX: &str = "index.json";
pub const SQUASHFS: &str = "system.squashfs";
pub const INITRAMFS: &str = "initramfs.cpio.gz";
const BLOBS: &str = "blobs";

/// Temporary directories older than this are left-overs of a build that died.
const STALE_TMP: Duration = Duration::from_secs(24 * 3600);

/// Entries used more recently than this are kept whatever their number: a
/// build running alongside may still be reading one.
const IN_USE: Duration = Duration::from_secs(3600);

/// What a build knows when it looks for its system in the cache.
#[derive(Clone, Copy)]
pub struct KeyInputs<'a> {
    pub data: &'a DataDir,
    pub board: &'a Board,
    pub board_bytes: &'a [u8],
    pub args: &'a BuildArgs,
    /// An archive rootfs's SHA-256.
    pub rootfs_file_sha256: Option<&'a str>,
    /// A directory rootfs's `ids::tree_digest`, mtimes clamped.
    pub rootfs_dir_digest: Option<&'a [u8; 32]>,
    /// Without --rootfs: the SHA-256 of the base's lock file (the packages
    /// are checked against it, and composing them depends on nothing else
    /// but this executable).
    pub base_lock_sha256: Option<&'a str>,
    /// With --sign-key: the SHA-256 of the node-side helper put into the image.
    pub node_helper_sha256: Option<&'a str>,
    /// Whether the build has a cluster config.
    pub joined: bool,
    /// Remembered digests of input files (this executable, overlays, k3s).
    pub digests: &'a FileDigests,
    pub k3s_spec: Option<&'a k3s::K3sSpec>,
    pub airgap: Option<&'a k3s::AirgapImages>,
    pub progress: &'a Progress,
}

/// The cache key of this build's system, or `None` (with a warning) when
/// the cache cannot be used because this executable cannot be read. An error
/// in one of the build's own inputs is the build's error.
pub fn key_for(inputs: &KeyInputs) -> Result<Option<Key>> {
    let exe = std::env::current_exe().context("locating the nodeimg executable");
    let exe_sha256 = match exe.and_then(|p| inputs.digests.sha256_file_hex(&p)) {
        Ok(sha) => sha,
        Err(e) => {
            eprintln!("nodeimg: warning: not using the system cache: {e:#}");
            return Ok(None);
        }
    };
    system_key(&exe_sha256, inputs).map(Some)
}

/// The system cache's key: a SHA-256 over everything `prepare_system`'s
/// result depends on. This nodeimg (version and executable: another build of
/// the code may write other bytes); the board file; the overlays it lays
/// and the initramfs overlay (built in or from --data-dir); the rootfs (an
/// archive's SHA-256, which is cheap; a directory's content, which means
/// reading it); SOURCE_DATE_EPOCH or its absence; the squashfs compression
/// level; whether there is a cluster config, and its `k3s:` section with
/// the binary's and air-gap images' SHA-256; and
/// --allow-missing-kernel-options (a system built with it must not let a
/// build without it skip the kernel check). Nothing node-specific: the node
/// config goes to the boot partition only.
fn system_key(exe_sha256: &str, i: &KeyInputs) -> Result<Key> {
    let KeyInputs {
        data,
        board,
        board_bytes,
        args,
        rootfs_file_sha256,
        rootfs_dir_digest,
        base_lock_sha256,
        node_helper_sha256,
        joined,
        k3s_spec,
        airgap,
        progress,
        digests,
    } = *i;
    let mut overlays = Vec::new();
    for name in board
        .overlays
        .iter()
        .map(String::as_str)
        .chain(["initramfs"])
    {
        let o = data.overlay(name)?;
        overlays.extend_from_slice(name.as_bytes());
        overlays.push(0);
        overlays.extend_from_slice(&ids::tree_digest(&o.tree, digests)?);
    }
    // A directory's digest is taken with its mtimes clamped to the epoch:
    // that is all the build sees of them (and, SOURCE_DATE_EPOCH unset, the
    // epoch is the newest mtime, which clamping keeps).
    let rootfs = match (rootfs_file_sha256, rootfs_dir_digest, base_lock_sha256) {
        (Some(sha), _, _) => format!("archive {sha}"),
        (None, Some(d), _) => format!("directory {}", hex::encode(d)),
        (None, None, Some(lock)) => format!("base lock {lock}"),
        (None, None, None) => bail!("the rootfs is neither an archive nor a directory"),
    };
    let epoch = match ids::source_date_epoch()? {
        Some(e) => format!("{e}"),
        None => "unset".to_string(),
    };
    let k3s = match (joined, k3s_spec) {
        (false, _) => "no cluster config".to_string(),
        (true, None) => "the rootfs's k3s".to_string(),
        (true, Some(spec)) => {
            let path = k3s::fetch(spec, &board.arch, &k3s::default_cache_dir(), progress)
                .context("getting the k3s binary")?;
            format!("{spec:?} sha256 {}", digests.sha256_file_hex(&path)?)
        }
    };
    let airgap = match airgap {
        Some(a) => {
            let mut h = Sha256::new();
            let mut r = a.data.reader().context("reading the k3s air-gap images")?;
            std::io::copy(&mut r, &mut h).context("reading the k3s air-gap images")?;
            format!("{} sha256 {}", a.name, hex::encode(h.finalize()))
        }
        None => "none".to_string(),
    };
    // The update key's public half goes into the system image.
    let update_key = match crate::update::sign::node_key(
        args.sign_key.as_deref(),
        args.update_key.as_deref(),
    )? {
        Some(k) => k.to_file_text(),
        None => "none".to_string(),
    };
    Ok(Key::new(
        exe_sha256,
        &[
            ("board", board_bytes),
            ("overlays", &overlays),
            ("rootfs", rootfs.as_bytes()),
            ("source-date-epoch", epoch.as_bytes()),
            ("compression-level", &args.compression_level.to_le_bytes()),
            ("k3s", k3s.as_bytes()),
            ("airgap-images", airgap.as_bytes()),
            ("update-key", update_key.as_bytes()),
            (
                "node-helper",
                node_helper_sha256.unwrap_or("none").as_bytes(),
            ),
            (
                "build-version",
                args.build_version
                    .map(|v| v.to_string())
                    .unwrap_or_default()
                    .as_bytes(),
            ),
            (
                "commit-timeout",
                args.commit_timeout
                    .map(|v| v.to_string())
                    .unwrap_or_default()
                    .as_bytes(),
            ),
            (
                "allow-missing-kernel-options",
                &[u8::from(args.allow_missing_kernel_options)],
            ),
        ],
    ))
}

/// The hex SHA-256 naming a cache entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    /// The key over labelled parts (each framed by its label and length), the
    /// entry format and this nodeimg's version and executable.
    pub fn new(exe_sha256: &str, parts: &[(&str, &[u8])]) -> Key {
        let mut h = Sha256::new();
        h.update(b"nodeimg-system-cache\0");
        let mut add = |label: &str, bytes: &[u8]| {
            h.update(label.as_bytes());
            h.update([0]);
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        add("format", &FORMAT.to_le_bytes());
        add("version", env!("CARGO_PKG_VERSION").as_bytes());
        add("executable", exe_sha256.as_bytes());
        for (label, bytes) in parts {
            add(label, bytes);
        }
        Key(hex::encode(h.finalize()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The values of a system besides its files.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Scalars {
    pub epoch: u64,
    /// Hex of the identifier seed before a node's name is mixed in.
    pub seed: String,
    pub squashfs_size: u64,
    /// Hex SHA-256 of the squashfs after its first 4 KiB
    /// (`squashfs::Written::tail_sha256`), for the disk image's block map.
    pub squashfs_tail_sha256: String,
    pub rootfs_tree_sha256: String,
    pub k3s: Option<K3sInfo>,
}

/// A system as the cache holds it (files by path or by range of `blobs`).
pub struct Cached {
    pub dir: PathBuf,
    pub squashfs: PathBuf,
    /// Checked against the file on load.
    pub squashfs_sha256: String,
    pub initramfs: Vec<u8>,
    pub data_tree: Tree,
    pub found: Found,
    pub scalars: Scalars,
}

/// What goes into an entry; the squashfs and initramfs are already files in
/// the [`Pending`] directory.
pub struct ToStore<'a> {
    /// Already computed by the build: not read again.
    pub squashfs_sha256: &'a str,
    pub data_tree: &'a Tree,
    pub found: &'a Found,
    pub scalars: &'a Scalars,
}

/// The cache's directory of entries.
pub struct Store {
    root: PathBuf,
    /// How an entry's files are checked on load: their digests remembered
    /// by stat, once checked (none by default: every load reads them).
    digests: FileDigests,
}

/// An entry being written: a temporary directory beside the entries.
pub struct Pending {
    dir: tempfile::TempDir,
}

impl Pending {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn squashfs(&self) -> PathBuf {
        self.dir.path().join(SQUASHFS)
    }
    pub fn initramfs(&self) -> PathBuf {
        self.dir.path().join(INITRAMFS)
    }
}

impl Store {
    /// `<cache>/systems` under [`crate::k3s::default_cache_dir`].
    pub fn default_location() -> Store {
        Store::at(crate::k3s::default_cache_dir().join("systems"))
    }

    pub fn at(root: impl Into<PathBuf>) -> Store {
        Store {
            root: root.into(),
            digests: FileDigests::disabled(),
        }
    }

    /// Checks entries' files through `digests`: an entry's squashfs that has
    /// not changed since it was last checked is not read again.
    pub fn remembering(self, digests: FileDigests) -> Store {
        Store { digests, ..self }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn entry(&self, key: &Key) -> PathBuf {
        self.root.join(key.as_str())
    }

    /// The entry for `key`: `Ok(None)` when there is none, an error when one
    /// is there but unusable (the caller removes it and rebuilds).
    pub fn load(&self, key: &Key) -> Result<Option<Cached>> {
        let dir = self.entry(key);
        if !dir.exists() {
            return Ok(None);
        }
        let cached = load_entry(&dir, key, &self.digests)
            .with_context(|| format!("system cache entry {}", dir.display()))?;
        // Most recently used: the last to go when the cache is pruned.
        let _ = File::open(&dir).and_then(|d| d.set_modified(SystemTime::now()));
        Ok(Some(cached))
    }

    /// A usable entry for `key` (then the cache is pruned around it), or
    /// `None`: there is none, or it is damaged, which is said, and it is
    /// removed so the build makes it again.
    pub fn lookup(&self, key: &Key) -> Option<Cached> {
        match self.load(key) {
            Ok(Some(c)) => {
                if let Err(e) = self.prune(key) {
                    eprintln!("nodeimg: warning: pruning the system cache: {e:#}");
                }
                Some(c)
            }
            Ok(None) => None,
            Err(e) => {
                eprintln!("nodeimg: warning: {e:#}; building the system image again");
                if let Err(e) = self.remove(key) {
                    eprintln!("nodeimg: warning: {e:#}");
                }
                None
            }
        }
    }

    /// Stores `pending` as the entry for `key` (see `commit`) and prunes;
    /// returns the entry's directory when it was stored. A failure to store
    /// is a warning, never the build's error: the build has its files.
    pub fn keep(&self, key: &Key, pending: &Pending, what: &ToStore) -> Option<PathBuf> {
        match self.commit(key, pending, what) {
            Ok(None) => None,
            Ok(Some(entry)) => {
                if let Err(e) = self.prune(key) {
                    eprintln!("nodeimg: warning: pruning the system cache: {e:#}");
                }
                Some(entry)
            }
            Err(e) => {
                eprintln!("nodeimg: warning: not storing the system in the cache: {e:#}");
                None
            }
        }
    }

    /// Removes an unusable entry (moved aside first, so a half-removed entry
    /// never looks like one).
    pub fn remove(&self, key: &Key) -> Result<()> {
        let dir = self.entry(key);
        let aside = self.root.join(format!(".tmp-removed-{}", key.as_str()));
        let _ = fs::remove_dir_all(&aside);
        fs::rename(&dir, &aside)
            .and_then(|_| fs::remove_dir_all(&aside))
            .with_context(|| format!("removing system cache entry {}", dir.display()))
    }

    /// A temporary directory for a new entry's files.
    pub fn begin(&self) -> Result<Pending> {
        fs::create_dir_all(&self.root)
            .with_context(|| format!("creating {}", self.root.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(&self.root)
            .with_context(|| format!("creating a directory in {}", self.root.display()))?;
        Ok(Pending { dir })
    }

    /// Completes `pending` (its squashfs and initramfs written) as the entry
    /// for `key`; returns the entry's directory, or `None` when one was
    /// there already (another build's, or one that could not be removed):
    /// then `pending` keeps the files this build made, which it uses. On an
    /// error too `pending` still holds them (and removes them when dropped).
    pub fn commit(&self, key: &Key, pending: &Pending, what: &ToStore) -> Result<Option<PathBuf>> {
        let tmp = pending.path();
        let sums = write_entry(tmp, key, what)
            .with_context(|| format!("writing system cache entry {}", tmp.display()))?;
        let target = self.entry(key);
        if let Err(e) = fs::rename(tmp, &target) {
            if target.exists() {
                return Ok(None);
            }
            return Err(e)
                .with_context(|| format!("renaming {} to {}", tmp.display(), target.display()));
        }
        sync_dir(&self.root)?;
        // The next build of another node checks these files by their stat
        // instead of reading them again (they were hashed as written).
        for (name, sum) in sums {
            self.digests
                .remember_written(&target.join(name), &sum.sha256);
        }
        Ok(Some(target))
    }

    /// Keeps the [`KEEP`] most recently used entries (counting `keep`, kept
    /// whatever its time) and those used within [`IN_USE`]; removes
    /// left-over temporary directories older than a day.
    pub fn prune(&self, keep: &Key) -> Result<()> {
        let ctx = || format!("reading {}", self.root.display());
        let mut entries = Vec::new();
        for e in fs::read_dir(&self.root).with_context(ctx)? {
            let e = e.with_context(ctx)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(md) = e.metadata() else { continue };
            if !md.is_dir() {
                continue;
            }
            let mtime = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if name.starts_with('.') {
                let age = SystemTime::now().duration_since(mtime).unwrap_or_default();
                if name.starts_with(".tmp-") && age > STALE_TMP {
                    let _ = fs::remove_dir_all(e.path());
                }
                continue;
            }
            if name != keep.as_str() {
                entries.push((mtime, e.path()));
            }
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e.0));
        let now = SystemTime::now();
        for (mtime, p) in entries.into_iter().skip(KEEP.saturating_sub(1)) {
            if now.duration_since(mtime).unwrap_or_default() < IN_USE {
                continue;
            }
            fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Index {
    format: u32,
    key: String,
    scalars: Scalars,
    squashfs: FileSum,
    initramfs: FileSum,
    blobs: FileSum,
    /// Ranges of `blobs`: (offset, length).
    contents: Vec<(u64, u64)>,
    found: FoundRec,
    data_tree: Vec<EntryRec>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct FileSum {
    size: u64,
    sha256: String,
}

#[derive(Serialize, Deserialize)]
struct FoundRec {
    kernel: String,
    kernel_data: usize,
    modules_dir: String,
    kernel_release: String,
    busybox: String,
    dtbs: BTreeMap<String, (String, usize)>,
    firmware: BTreeMap<String, (String, usize)>,
}

#[derive(Serialize, Deserialize)]
struct EntryRec {
    path: String,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    kind: KindRec,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum KindRec {
    Dir,
    /// Index into `contents`.
    File {
        content: usize,
    },
    Symlink {
        target: String,
    },
    Char {
        major: u32,
        minor: u32,
    },
    Block {
        major: u32,
        minor: u32,
    },
    Fifo,
    Socket,
}

/// Writes each distinct content once to `blobs` (hard links, being one
/// `Arc`, share a range).
struct BlobWriter {
    out: BufWriter<File>,
    hash: Sha256,
    end: u64,
    seen: HashMap<*const Content, usize>,
    ranges: Vec<(u64, u64)>,
}

impl BlobWriter {
    fn add(&mut self, what: &str, data: &Data) -> Result<usize> {
        let ptr = Arc::as_ptr(data);
        if let Some(&i) = self.seen.get(&ptr) {
            return Ok(i);
        }
        let mut r = data.reader().with_context(|| format!("reading /{what}"))?;
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        loop {
            let got = r
                .read(&mut buf)
                .with_context(|| format!("reading /{what}"))?;
            if got == 0 {
                break;
            }
            self.hash.update(&buf[..got]);
            self.out.write_all(&buf[..got]).context("writing blobs")?;
            n += got as u64;
        }
        let i = self.ranges.len();
        self.ranges.push((self.end, n));
        self.end = self
            .end
            .checked_add(n)
            .ok_or_else(|| anyhow!("blobs too large"))?;
        self.seen.insert(ptr, i);
        Ok(i)
    }
}

/// Writes an entry's blobs and index into `dir`; returns the sums of its
/// squashfs and blobs.
fn write_entry(dir: &Path, key: &Key, what: &ToStore) -> Result<[(&'static str, FileSum); 2]> {
    let blobs_path = dir.join(BLOBS);
    let file =
        File::create(&blobs_path).with_context(|| format!("creating {}", blobs_path.display()))?;
    let mut w = BlobWriter {
        out: BufWriter::with_capacity(1 << 20, file),
        hash: Sha256::new(),
        end: 0,
        seen: HashMap::new(),
        ranges: Vec::new(),
    };
    let f = what.found;
    let mut named = |m: &BTreeMap<String, (String, Data)>| -> Result<_> {
        let mut out = BTreeMap::new();
        for (name, (path, data)) in m {
            out.insert(name.clone(), (path.clone(), w.add(path, data)?));
        }
        Ok(out)
    };
    let dtbs = named(&f.dtbs)?;
    let firmware = named(&f.firmware)?;
    let found = FoundRec {
        kernel: f.kernel.clone(),
        kernel_data: w.add(&f.kernel, &f.kernel_data)?,
        modules_dir: f.modules_dir.clone(),
        kernel_release: f.kernel_release.clone(),
        busybox: f.busybox.clone(),
        dtbs,
        firmware,
    };
    let mut data_tree = Vec::with_capacity(what.data_tree.len());
    for (path, e) in what.data_tree.iter() {
        let kind = match &e.kind {
            Kind::Dir => KindRec::Dir,
            Kind::File(d) => KindRec::File {
                content: w.add(path, d)?,
            },
            Kind::Symlink(t) => KindRec::Symlink { target: t.clone() },
            Kind::CharDevice { major, minor } => KindRec::Char {
                major: *major,
                minor: *minor,
            },
            Kind::BlockDevice { major, minor } => KindRec::Block {
                major: *major,
                minor: *minor,
            },
            Kind::Fifo => KindRec::Fifo,
            Kind::Socket => KindRec::Socket,
        };
        data_tree.push(EntryRec {
            path: path.clone(),
            mode: e.meta.mode,
            uid: e.meta.uid,
            gid: e.meta.gid,
            mtime: e.meta.mtime,
            kind,
        });
    }
    let BlobWriter {
        out,
        hash,
        end,
        ranges,
        ..
    } = w;
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("writing {}", blobs_path.display()))?;
    let index = Index {
        format: FORMAT,
        key: key.as_str().to_string(),
        scalars: what.scalars.clone(),
        squashfs: sum_and_sync(&dir.join(SQUASHFS), Some(what.squashfs_sha256))?,
        initramfs: sum_and_sync(&dir.join(INITRAMFS), None)?,
        blobs: FileSum {
            size: end,
            sha256: hex::encode(hash.finalize()),
        },
        contents: ranges,
        found,
        data_tree,
    };
    let json = serde_json::to_vec(&index).context("encoding the index")?;
    crate::output::write_synced(&dir.join(INDEX), &json)?;
    sync_dir(dir)?;
    Ok([(SQUASHFS, index.squashfs), (BLOBS, index.blobs)])
}

/// Syncs a file and records its size and SHA-256 (`sha256` when known).
fn sum_and_sync(path: &Path, sha256: Option<&str>) -> Result<FileSum> {
    crate::output::sync(path)?;
    let size = fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let sha256 = match sha256 {
        Some(s) => s.to_string(),
        None => crate::output::sha256_file(path)?,
    };
    Ok(FileSum { size, sha256 })
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Checks a file against its recorded size and SHA-256.
fn check(path: &Path, sum: &FileSum, digests: &FileDigests) -> Result<()> {
    let size = fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if size != sum.size {
        bail!("{} is {size} bytes, recorded {}", path.display(), sum.size);
    }
    if digests.sha256_file_hex(path)? != sum.sha256 {
        bail!("{} does not match its recorded SHA-256", path.display());
    }
    Ok(())
}

fn load_entry(dir: &Path, key: &Key, digests: &FileDigests) -> Result<Cached> {
    let index_path = dir.join(INDEX);
    let json =
        fs::read(&index_path).with_context(|| format!("reading {}", index_path.display()))?;
    let index: Index = serde_json::from_slice(&json)
        .with_context(|| format!("parsing {}", index_path.display()))?;
    if index.format != FORMAT || index.key != key.as_str() {
        bail!("{} is for another entry", index_path.display());
    }
    if hex::decode(&index.scalars.seed).map_or(true, |s| s.len() != 32) {
        bail!("{}: the seed is not 32 bytes of hex", index_path.display());
    }
    let squashfs = dir.join(SQUASHFS);
    check(&squashfs, &index.squashfs, digests)?;
    let initramfs_path = dir.join(INITRAMFS);
    let initramfs = fs::read(&initramfs_path)
        .with_context(|| format!("reading {}", initramfs_path.display()))?;
    if initramfs.len() as u64 != index.initramfs.size
        || hex::encode(Sha256::digest(&initramfs)) != index.initramfs.sha256
    {
        bail!("{} does not match its record", initramfs_path.display());
    }
    let blobs_path = dir.join(BLOBS);
    check(&blobs_path, &index.blobs, digests)?;
    let blobs = Arc::new(
        File::open(&blobs_path).with_context(|| format!("opening {}", blobs_path.display()))?,
    );
    let (found, data_tree) = from_records(&index, &blobs)?;
    Ok(Cached {
        dir: dir.to_path_buf(),
        squashfs,
        squashfs_sha256: index.squashfs.sha256.clone(),
        initramfs,
        data_tree,
        found,
        scalars: index.scalars,
    })
}

/// The boot files and data tree of an index, their contents ranges of `blobs`
/// (checked against its recorded size).
fn from_records(index: &Index, blobs: &Arc<File>) -> Result<(Found, Tree)> {
    let mut contents: Vec<Data> = Vec::with_capacity(index.contents.len());
    for &(offset, len) in &index.contents {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= index.blobs.size)
            .ok_or_else(|| anyhow!("a content range lies outside the blobs"))?;
        let _ = end;
        contents.push(Arc::new(Content::from_range(blobs.clone(), offset, len)));
    }
    let get = |i: usize| -> Result<Data> {
        contents
            .get(i)
            .cloned()
            .ok_or_else(|| anyhow!("content {i} is not in the index"))
    };
    let named =
        |m: &BTreeMap<String, (String, usize)>| -> Result<BTreeMap<String, (String, Data)>> {
            m.iter()
                .map(|(name, (path, i))| Ok((name.clone(), (path.clone(), get(*i)?))))
                .collect()
        };
    let f = &index.found;
    let found = Found {
        kernel: f.kernel.clone(),
        kernel_data: get(f.kernel_data)?,
        modules_dir: f.modules_dir.clone(),
        kernel_release: f.kernel_release.clone(),
        busybox: f.busybox.clone(),
        dtbs: named(&f.dtbs)?,
        firmware: named(&f.firmware)?,
    };
    let mut records = index.data_tree.iter();
    let root = records
        .next()
        .filter(|r| r.path.is_empty() && matches!(r.kind, KindRec::Dir))
        .ok_or_else(|| anyhow!("the data tree has no root directory"))?;
    let meta = |r: &EntryRec| Meta {
        mode: r.mode,
        uid: r.uid,
        gid: r.gid,
        mtime: r.mtime,
    };
    let mut t = Tree::new(meta(root));
    for r in records {
        if tree::normalize(&r.path).as_deref() != Some(r.path.as_str()) || r.path.is_empty() {
            bail!("bad path {:?} in the data tree", r.path);
        }
        let kind = match &r.kind {
            KindRec::Dir => Kind::Dir,
            KindRec::File { content } => Kind::File(get(*content)?),
            KindRec::Symlink { target } => Kind::Symlink(target.clone()),
            KindRec::Char { major, minor } => Kind::CharDevice {
                major: *major,
                minor: *minor,
            },
            KindRec::Block { major, minor } => Kind::BlockDevice {
                major: *major,
                minor: *minor,
            },
            KindRec::Fifo => Kind::Fifo,
            KindRec::Socket => Kind::Socket,
        };
        if t.contains(&r.path) {
            bail!("/{} twice in the data tree", r.path);
        }
        t.insert(
            &r.path,
            Entry {
                meta: meta(r),
                kind,
            },
        )?;
    }
    Ok((found, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(mode: u32) -> Meta {
        Meta {
            mode,
            uid: 1000,
            gid: 100,
            mtime: 1_700_000_000,
        }
    }

    /// A data tree with every kind of entry and a hard link; boot files
    /// sharing nothing with it.
    fn sample(spill: &Path) -> (Tree, Found) {
        let mut t = Tree::new(m(0o755));
        t.insert("var", Entry::dir(m(0o700))).unwrap();
        let linked = Arc::new(Content::from_vec(b"shared by two names".to_vec()));
        t.insert(
            "var/a",
            Entry {
                meta: m(0o640),
                kind: Kind::File(linked.clone()),
            },
        )
        .unwrap();
        t.insert(
            "var/b",
            Entry {
                meta: m(0o640),
                kind: Kind::File(linked),
            },
        )
        .unwrap();
        // Same bytes, another inode: must stay another inode.
        t.insert(
            "var/c",
            Entry::file(m(0o600), b"shared by two names".to_vec()),
        )
        .unwrap();
        t.insert("var/empty", Entry::file(m(0o644), Vec::new()))
            .unwrap();
        fs::write(spill, b"xxbytes from a filexx").unwrap();
        let range = Content::from_range(Arc::new(File::open(spill).unwrap()), 2, 17);
        t.insert(
            "var/ranged",
            Entry {
                meta: m(0o4755),
                kind: Kind::File(Arc::new(range)),
            },
        )
        .unwrap();
        t.insert("bin", Entry::symlink(m(0o777), "usr/bin"))
            .unwrap();
        t.insert("dev", Entry::dir(m(0o755))).unwrap();
        let dev = |kind| Entry {
            meta: m(0o600),
            kind,
        };
        t.insert("dev/null", dev(Kind::CharDevice { major: 1, minor: 3 }))
            .unwrap();
        t.insert("dev/sda", dev(Kind::BlockDevice { major: 8, minor: 0 }))
            .unwrap();
        t.insert("dev/fifo", dev(Kind::Fifo)).unwrap();
        t.insert("dev/sock", dev(Kind::Socket)).unwrap();
        let data = |b: &[u8]| Arc::new(Content::from_vec(b.to_vec()));
        let found = Found {
            kernel: "boot/vmlinuz-6.1".into(),
            modules_dir: "usr/lib/modules/6.1".into(),
            kernel_release: "6.1".into(),
            busybox: "usr/bin/busybox".into(),
            kernel_data: data(b"kernel image"),
            dtbs: [(
                "x.dtb".to_string(),
                ("usr/lib/x.dtb".to_string(), data(b"dtb")),
            )]
            .into(),
            firmware: [("fw.bin".to_string(), ("usr/lib/fw".to_string(), data(b"")))].into(),
        };
        (t, found)
    }

    fn scalars() -> Scalars {
        Scalars {
            epoch: 1_700_000_000,
            seed: "ab".repeat(32),
            squashfs_size: 4096,
            squashfs_tail_sha256: "ef".repeat(32),
            rootfs_tree_sha256: "cd".repeat(32),
            k3s: None,
        }
    }

    fn store_one(store: &Store, key: &Key, t: &Tree, found: &Found) -> PathBuf {
        let p = store.begin().unwrap();
        fs::write(p.squashfs(), vec![7u8; 4096]).unwrap();
        fs::write(p.initramfs(), b"initramfs").unwrap();
        store
            .commit(
                key,
                &p,
                &ToStore {
                    squashfs_sha256: &hex::encode(Sha256::digest(vec![7u8; 4096])),
                    data_tree: t,
                    found,
                    scalars: &scalars(),
                },
            )
            .unwrap()
            .expect("stored")
    }

    #[test]
    fn a_data_tree_round_trips_with_every_kind_and_its_hard_links() {
        let dir = tempfile::tempdir().unwrap();
        let (t, found) = sample(&dir.path().join("spill"));
        let store = Store::at(dir.path().join("systems"));
        let key = Key::new("exe", &[("x", b"1")]);
        store_one(&store, &key, &t, &found);
        let c = store.load(&key).unwrap().expect("a hit");
        // Same paths, metadata, kinds and bytes (Content compares bytes).
        let a: Vec<_> = t.iter().collect();
        let b: Vec<_> = c.data_tree.iter().collect();
        assert_eq!(a, b);
        assert_eq!(
            crate::ids::tree_digest(&t, &FileDigests::disabled()).unwrap(),
            crate::ids::tree_digest(&c.data_tree, &FileDigests::disabled()).unwrap()
        );
        // The hard link is still one inode, the look-alike another.
        let data = |p: &str| match &c.data_tree.get(p).unwrap().kind {
            Kind::File(d) => d.clone(),
            k => panic!("{p}: {k:?}"),
        };
        assert!(Arc::ptr_eq(&data("var/a"), &data("var/b")));
        assert!(!Arc::ptr_eq(&data("var/a"), &data("var/c")));
        assert_eq!(
            data("var/ranged").bytes().unwrap().as_ref(),
            b"bytes from a file"
        );
        // Boot files and scalars.
        assert_eq!(c.found.digest().unwrap(), found.digest().unwrap());
        assert_eq!(c.found.kernel_release, "6.1");
        assert_eq!(c.found.busybox, "usr/bin/busybox");
        assert_eq!(c.scalars, scalars());
        assert_eq!(c.initramfs, b"initramfs");
        assert_eq!(fs::read(&c.squashfs).unwrap(), vec![7u8; 4096]);
        // No temporary directory is left behind.
        let names: Vec<_> = fs::read_dir(store.root())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from(key.as_str())]);
    }

    #[test]
    fn a_damaged_entry_is_an_error_not_a_system() {
        let dir = tempfile::tempdir().unwrap();
        let (t, found) = sample(&dir.path().join("spill"));
        let store = Store::at(dir.path().join("systems"));
        let key = Key::new("exe", &[]);
        type Damage = (&'static str, fn(&Path));
        let damage: [Damage; 6] = [
            (SQUASHFS, |p| fs::write(p, vec![7u8; 100]).unwrap()),
            (SQUASHFS, |p| fs::write(p, vec![8u8; 4096]).unwrap()),
            (BLOBS, |p| {
                let b = fs::read(p).unwrap();
                fs::write(p, &b[..b.len() - 1]).unwrap()
            }),
            (INITRAMFS, |p| fs::remove_file(p).unwrap()),
            (INDEX, |p| fs::write(p, b"{not json").unwrap()),
            (INDEX, |p| {
                let s = fs::read_to_string(p).unwrap();
                fs::write(p, s.replace("\"contents\":[[0,", "\"contents\":[[999999,")).unwrap()
            }),
        ];
        for (file, f) in damage {
            let entry = store_one(&store, &key, &t, &found);
            f(&entry.join(file));
            let err = match store.load(&key) {
                Err(e) => format!("{e:#}"),
                Ok(_) => panic!("{file}: damaged entry loaded"),
            };
            assert!(err.contains("system cache entry"), "{err}");
            store.remove(&key).unwrap();
            assert!(store.load(&key).unwrap().is_none());
        }
    }

    #[test]
    fn an_entry_already_there_is_not_replaced_and_the_pending_files_stay() {
        let dir = tempfile::tempdir().unwrap();
        let (t, found) = sample(&dir.path().join("spill"));
        let store = Store::at(dir.path().join("systems"));
        let key = Key::new("exe", &[]);
        let entry = store_one(&store, &key, &t, &found);
        // A damaged entry that could not be removed: never taken for ours.
        fs::write(entry.join(SQUASHFS), b"damaged").unwrap();
        let p = store.begin().unwrap();
        fs::write(p.squashfs(), vec![7u8; 4096]).unwrap();
        fs::write(p.initramfs(), b"initramfs").unwrap();
        let what = ToStore {
            squashfs_sha256: &hex::encode(Sha256::digest(vec![7u8; 4096])),
            data_tree: &t,
            found: &found,
            scalars: &scalars(),
        };
        assert_eq!(store.commit(&key, &p, &what).unwrap(), None);
        assert_eq!(fs::read(p.squashfs()).unwrap(), vec![7u8; 4096]);
    }

    #[test]
    fn keys_differ_by_part_and_framing() {
        let k = |parts: &[(&str, &[u8])]| Key::new("exe", parts);
        assert_eq!(k(&[("a", b"x")]), k(&[("a", b"x")]));
        assert_ne!(k(&[("a", b"x")]), k(&[("a", b"y")]));
        assert_ne!(
            k(&[("a", b"xy"), ("b", b"")]),
            k(&[("a", b"x"), ("b", b"y")])
        );
        assert_ne!(Key::new("exe", &[]), Key::new("other exe", &[]));
    }

    #[test]
    fn pruning_keeps_the_most_recent_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (t, found) = sample(&dir.path().join("spill"));
        let store = Store::at(dir.path().join("systems"));
        let keys: Vec<Key> = (0..6u8).map(|i| Key::new("exe", &[("i", &[i])])).collect();
        let base = SystemTime::now() - Duration::from_secs(3 * 3600);
        for (i, k) in keys.iter().enumerate() {
            let e = store_one(&store, k, &t, &found);
            let when = base + Duration::from_secs(60 * i as u64);
            File::open(&e).unwrap().set_modified(when).unwrap();
        }
        // keys[0] is the oldest but in use: it stays, with the 3 newest.
        store.prune(&keys[0]).unwrap();
        let kept: Vec<bool> = keys.iter().map(|k| store.entry(k).exists()).collect();
        assert_eq!(kept, [true, false, false, true, true, true]);
        // Entries used within the hour stay beyond the count: a build
        // running alongside may be reading one.
        for k in [&keys[1], &keys[2]] {
            store_one(&store, k, &t, &found);
        }
        store.prune(&keys[5]).unwrap();
        let kept: Vec<bool> = keys.iter().map(|k| store.entry(k).exists()).collect();
        assert_eq!(kept, [false, true, true, false, true, true]);
        // Five entries, all used just now: none goes.
        for k in [&keys[4], &keys[5]] {
            File::open(store.entry(k))
                .unwrap()
                .set_modified(SystemTime::now())
                .unwrap();
        }
        store_one(&store, &keys[0], &t, &found);
        store.prune(&keys[0]).unwrap();
        let kept: Vec<bool> = keys.iter().map(|k| store.entry(k).exists()).collect();
        assert_eq!(kept, [true, true, true, false, true, true]);
    }
}
