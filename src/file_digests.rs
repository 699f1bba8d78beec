//! The SHA-256 of input files, remembered by their `stat` so that a file
//! that has not changed is not read again (git's index does the same).
//!
//! A build hashes its inputs: a rootfs directory (its digest is the system
//! cache's key), the cache entry it reuses (checked before it is trusted) and
//! this executable. For a second node of a cluster those are the same files
//! as for the first, and reading them was most of that build's time.
//!
//! A file's digest is reused when its device, inode, size, mtime and ctime
//! (to the nanosecond) are those recorded with it. Any write, truncation,
//! `chmod` or `touch` changes the ctime, which userspace cannot set back.
//! A digest is recorded only when the file's mtime and ctime are at least
//! [`SETTLED`] older than the moment hashing began and its stat did not change
//! while it was read: a file written during or just before its hashing,
//! within one tick of the filesystem's coarse clock, could otherwise change
//! again without changing its timestamps (git's "racily clean" entries).
//!
//! The memo lives in `$XDG_CACHE_HOME/nodeimg/file-digests`: a header, fixed
//! records and the SHA-256 of everything before it. A damaged or foreign file
//! is ignored (and replaced at the next save), never trusted. It holds no
//! paths and no contents, only numbers and digests. At most [`KEEP`] records
//! are kept, the most recently used. A record's last use is refreshed only
//! when it is [`USED_GRAIN`] old, so a build that learns nothing new (a
//! second node's) reads the memo and leaves the file as it is.
//!
//! Hand-written: a few fixed-size records need no serialisation crate.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// What identifies a file's state: device and inode, size, mtime, ctime.
use crate::tree::content::FileStamp as Stamp;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::background::Background;
use crate::tree::Content;

/// How much older than the start of hashing a file's timestamps must be
/// for its digest to be recorded.
pub const SETTLED: Duration = Duration::from_secs(2);

/// The most records the memo keeps (a 2 GB rootfs has about 100,000 files).
pub const KEEP: usize = 400_000;

/// How stale a record's last use must be before a use refreshes it (and
/// the memo is rewritten for it): a day. Pruning by last use needs no more.
pub const USED_GRAIN: i64 = 86_400;

/// The records by device and inode. Keys are a local machine's inode
/// numbers, not anyone's input to collide on purpose: rustc-hash's fast
/// hash, not SipHash (whose hashing of the keys was about a third of the
/// 60-70 ms that reading a 100,000-record memo took).
type ByInode = rustc_hash::FxHashMap<(u64, u64), Record>;

const MAGIC: &[u8; 24] = b"nodeimg file-digests v1\n";
const RECORD: usize = 8 * 9 + 32;

/// Whether both of `stamp`'s timestamps lie at least `settle` (whole
/// seconds) before `start` (seconds and nanoseconds since the epoch).
fn settled_before(stamp: &Stamp, start: (i64, i64), settle: Duration) -> bool {
    let limit = (start.0 - settle.as_secs() as i64, start.1);
    stamp.mtime <= limit && stamp.ctime <= limit
}

#[derive(Debug, Clone, Copy)]
struct Record {
    stamp: Stamp,
    sha256: [u8; 32],
    /// When it was last used (seconds since the epoch, to within
    /// [`USED_GRAIN`]), for pruning.
    used: i64,
}

/// The memo, shared by the threads of one build (clones share it).
#[derive(Clone)]
pub struct FileDigests {
    inner: Option<Arc<Memo>>,
}

struct Memo {
    path: PathBuf,
    now: i64,
    /// [`SETTLED`]; shorter in tests, whose files are always new.
    settle: Duration,
    /// The records, read and checked on a thread of its own that
    /// [`FileDigests::open`] starts; the first use waits for it. A build lists
    /// its rootfs meanwhile (a memo of 100,000 records took 50-60 ms to read,
    /// a sixth of a second node's build of the 500 MB benchmark rootfs).
    records: LazyLock<Mutex<Records>, Loading>,
}

/// What gives a memo its records on first use.
type Loading = Box<dyn FnOnce() -> Mutex<Records> + Send>;

impl Memo {
    /// The records; `None` only if a thread holding them panicked.
    fn records(&self) -> Option<MutexGuard<'_, Records>> {
        self.records.lock().ok()
    }
}

#[derive(Default)]
struct Records {
    by_inode: ByInode,
    changed: bool,
}

impl FileDigests {
    /// No memo: every file is read and hashed.
    pub fn disabled() -> FileDigests {
        FileDigests { inner: None }
    }

    /// The memo in the default cache directory (`$XDG_CACHE_HOME/nodeimg`).
    pub fn default_location() -> FileDigests {
        FileDigests::open(crate::k3s::default_cache_dir().join("file-digests"))
    }

    /// The memo kept in `path`; empty when there is none or it is damaged.
    /// It is read on a thread of its own, until its first use.
    pub fn open(path: PathBuf) -> FileDigests {
        let now = unix_now().0;
        let read = path.clone();
        let thread = Background::spawn("file-digests", "reading the file-digest memo", move || {
            Ok(load(&read))
        });
        // A load that could not start or panicked is an empty memo: it only
        // costs speed.
        let loading: Loading = Box::new(move || {
            let by_inode = thread.ok().and_then(|t| t.wait().ok());
            Mutex::new(Records {
                by_inode: by_inode.unwrap_or_default(),
                changed: false,
            })
        });
        FileDigests {
            inner: Some(Arc::new(Memo {
                path,
                now,
                settle: SETTLED,
                records: LazyLock::new(loading),
            })),
        }
    }

    /// The SHA-256 of the file at `path`, from the memo when its stat is
    /// the recorded one; otherwise read (holes as the zeros they read as).
    pub fn sha256_file(&self, path: &Path) -> Result<[u8; 32]> {
        let m = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        self.sha256_stat(path, &m)
    }

    /// [`Self::sha256_file`] for a file whose metadata the caller has.
    fn sha256_stat(&self, path: &Path, m: &fs::Metadata) -> Result<[u8; 32]> {
        if let Some(sha) = self.recall(&Stamp::of(m)) {
            return Ok(sha);
        }
        let ctx = || format!("reading {}", path.display());
        let f = File::open(path).with_context(ctx)?;
        let before = Stamp::of(&f.metadata().with_context(ctx)?);
        let start = unix_now();
        let mut h = Sha256::new();
        crate::disk::sparse::hash_range(&mut h, &f, 0, before.size).with_context(ctx)?;
        let sha: [u8; 32] = h.finalize().into();
        let after = Stamp::of(&f.metadata().with_context(ctx)?);
        if let Some(memo) = &self.inner {
            if after == before && settled_before(&before, start, memo.settle) {
                self.remember(before, sha);
            }
        }
        Ok(sha)
    }

    /// Records the digest of a file this build has just written and hashed
    /// as it wrote it (a system cache entry's), without the [`SETTLED`]
    /// delay, so the next build, started a second later, finds it. Only a
    /// change within the same tick of the filesystem's clock as this call
    /// (a few milliseconds) could keep the stat; nothing else writes there.
    pub fn remember_written(&self, path: &Path, sha256_hex: &str) {
        let (Ok(m), Ok(bytes)) = (fs::metadata(path), hex::decode(sha256_hex)) else {
            return;
        };
        if let Ok(sha) = <[u8; 32]>::try_from(bytes.as_slice()) {
            self.remember(Stamp::of(&m), sha);
        }
    }

    /// [`Self::sha256_file`] as lowercase hex.
    pub fn sha256_file_hex(&self, path: &Path) -> Result<String> {
        self.sha256_file(path).map(hex::encode)
    }

    /// The SHA-256 of a tree file's content: known already when this build
    /// has hashed it; else through the memo when it is a file of its own on
    /// disk (a rootfs directory's), whose size must still be the one the
    /// tree recorded; else read.
    pub fn sha256_content(&self, c: &Content) -> Result<[u8; 32]> {
        c.sha256_with(|c| {
            let (Some(path), Some(_)) = (c.path(), &self.inner) else {
                return Ok(c.hash_bytes()?);
            };
            // Known by its stamp from the rootfs's listing: no `stat` again.
            if let Some(sha) = c.listed_stamp().and_then(|s| self.recall(s)) {
                return Ok(sha);
            }
            let m = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
            let size = m.len();
            if size != c.len() {
                anyhow::bail!(
                    "{} changed while the build was reading it ({} bytes, was {})",
                    path.display(),
                    size,
                    c.len()
                );
            }
            self.sha256_stat(path, &m)
        })
    }

    fn recall(&self, stamp: &Stamp) -> Option<[u8; 32]> {
        let memo = self.inner.as_ref()?;
        let mut records = memo.records()?;
        let r = records.by_inode.get_mut(&(stamp.dev, stamp.ino))?;
        if r.stamp != *stamp {
            return None;
        }
        let sha = r.sha256;
        if memo.now.saturating_sub(r.used) >= USED_GRAIN {
            r.used = memo.now;
            records.changed = true;
        }
        Some(sha)
    }

    fn remember(&self, stamp: Stamp, sha256: [u8; 32]) {
        let Some(memo) = &self.inner else { return };
        if let Some(mut records) = memo.records() {
            let used = memo.now;
            records.by_inode.insert(
                (stamp.dev, stamp.ino),
                Record {
                    stamp,
                    sha256,
                    used,
                },
            );
            records.changed = true;
        }
    }

    /// Writes the memo back (a new file renamed into place), when anything
    /// was learnt or a record's last use was refreshed. A memo that cannot be
    /// saved only costs speed: the caller warns and goes on.
    pub fn save(&self) -> Result<()> {
        let Some(memo) = &self.inner else {
            return Ok(());
        };
        let bytes = {
            let records = memo
                .records()
                .ok_or_else(|| anyhow::anyhow!("a thread hashing files panicked"))?;
            if !records.changed {
                return Ok(());
            }
            encode(&records.by_inode)
        };
        let ctx = || format!("saving {}", memo.path.display());
        let dir = memo.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).with_context(ctx)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(ctx)?;
        tmp.write_all(&bytes).with_context(ctx)?;
        tmp.persist(&memo.path)
            .map_err(|e| e.error)
            .with_context(ctx)?;
        Ok(())
    }
}

/// The records of the memo file at `path`: none when there is no file,
/// none with a warning when it is damaged.
fn load(path: &Path) -> ByInode {
    match fs::read(path) {
        Ok(bytes) => decode(&bytes).unwrap_or_else(|| {
            eprintln!(
                "nodeimg: warning: ignoring {} (damaged); it is rewritten",
                path.display()
            );
            ByInode::default()
        }),
        Err(_) => ByInode::default(),
    }
}

fn unix_now() -> (i64, i64) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, i64::from(d.subsec_nanos()))
}

/// The memo's bytes: the header, the [`KEEP`] most recently used records
/// (in a fixed order), and the SHA-256 of all that.
fn encode(by_inode: &ByInode) -> Vec<u8> {
    let mut records: Vec<&Record> = by_inode.values().collect();
    records.sort_by_key(|r| (std::cmp::Reverse(r.used), r.stamp.dev, r.stamp.ino));
    records.truncate(KEEP);
    let mut out = Vec::with_capacity(MAGIC.len() + records.len() * RECORD + 32);
    out.extend_from_slice(MAGIC);
    for r in records {
        let s = &r.stamp;
        for v in [
            s.dev,
            s.ino,
            s.size,
            s.mtime.0 as u64,
            s.mtime.1 as u64,
            s.ctime.0 as u64,
            s.ctime.1 as u64,
            r.used as u64,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&[0u8; 8]); // reserved
        out.extend_from_slice(&r.sha256);
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// The records of a memo file, or `None` when it is not one of ours or is
/// damaged (its checksum does not match, or its length is not whole records).
fn decode(bytes: &[u8]) -> Option<ByInode> {
    let body_len = bytes.len().checked_sub(32)?;
    let (body, sum) = bytes.split_at(body_len);
    if Sha256::digest(body).as_slice() != sum {
        return None;
    }
    let records = body.strip_prefix(MAGIC.as_slice())?;
    if records.len() % RECORD != 0 {
        return None;
    }
    let mut by_inode =
        ByInode::with_capacity_and_hasher(records.len() / RECORD, Default::default());
    for rec in records.chunks_exact(RECORD) {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&rec[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        let stamp = Stamp {
            dev: word(0),
            ino: word(1),
            size: word(2),
            mtime: (word(3) as i64, word(4) as i64),
            ctime: (word(5) as i64, word(6) as i64),
        };
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&rec[72..]);
        let used = word(7) as i64;
        by_inode.insert(
            (stamp.dev, stamp.ino),
            Record {
                stamp,
                sha256,
                used,
            },
        );
    }
    Some(by_inode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// Sets a file's mtime into the past; its ctime stays "now".
    fn age(path: &Path, secs_ago: u64) {
        let t = SystemTime::now() - Duration::from_secs(secs_ago);
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    fn sha(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    /// A memo that records files however new they are (a test's files are
    /// always new: their ctime cannot be set into the past).
    fn memo_unsettled(path: PathBuf) -> FileDigests {
        let d = FileDigests::open(path);
        let memo = d.inner.as_ref().unwrap();
        let records = std::mem::take(&mut *memo.records().unwrap());
        FileDigests {
            inner: Some(Arc::new(Memo {
                path: memo.path.clone(),
                now: memo.now,
                settle: Duration::ZERO,
                records: LazyLock::new(Box::new(move || Mutex::new(records))),
            })),
        }
    }

    fn records(d: &FileDigests) -> MutexGuard<'_, Records> {
        d.inner.as_ref().unwrap().records().unwrap()
    }

    fn recorded(d: &FileDigests) -> usize {
        records(d).by_inode.len()
    }

    #[test]
    fn digests_are_those_of_the_bytes_with_or_without_the_memo() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"hello").unwrap();
        let memo = FileDigests::open(dir.path().join("memo"));
        assert_eq!(memo.sha256_file(&p).unwrap(), sha(b"hello"));
        assert_eq!(
            FileDigests::disabled().sha256_file(&p).unwrap(),
            sha(b"hello")
        );
        // a sparse file hashes as its zeros
        let s = dir.path().join("sparse");
        let f = File::create(&s).unwrap();
        f.set_len(1 << 20).unwrap();
        f.write_all_at(b"x", 300_000).unwrap();
        let mut want = vec![0u8; 1 << 20];
        want[300_000] = b'x';
        assert_eq!(memo.sha256_file(&s).unwrap(), sha(&want));
    }

    /// A rootfs file known to the memo by the stamp it was listed with is
    /// not looked at again (here it is gone by then); one whose stamp the
    /// memo does not know, or that was not listed, is.
    #[test]
    fn a_listed_file_known_by_its_stamp_is_not_stat_again() {
        let dir = tempfile::tempdir().unwrap();
        let memo = memo_unsettled(dir.path().join("memo"));
        let known = dir.path().join("known");
        fs::write(&known, b"known bytes").unwrap();
        assert_eq!(memo.sha256_file(&known).unwrap(), sha(b"known bytes"));
        assert_eq!(recorded(&memo), 1);
        let md = fs::metadata(&known).unwrap();
        let listed = Content::from_listed_path(&known, &md);
        let unlisted = Content::from_path(&known, md.len());
        fs::remove_file(&known).unwrap();
        assert_eq!(memo.sha256_content(&listed).unwrap(), sha(b"known bytes"));
        let err = format!("{:#}", memo.sha256_content(&unlisted).unwrap_err());
        assert!(err.contains("known"), "{err}");

        // Listed after a change the memo has not seen: read, not recalled.
        let changed = dir.path().join("changed");
        fs::write(&changed, b"old").unwrap();
        memo.sha256_file(&changed).unwrap();
        // (Another size: within one tick of the clock, times may not change.)
        fs::write(&changed, b"newer").unwrap();
        let md = fs::metadata(&changed).unwrap();
        let c = Content::from_listed_path(&changed, &md);
        assert_eq!(memo.sha256_content(&c).unwrap(), sha(b"newer"));
    }

    #[test]
    fn a_file_written_just_now_is_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"fresh").unwrap();
        let memo = FileDigests::open(dir.path().join("memo"));
        memo.sha256_file(&p).unwrap();
        assert_eq!(recorded(&memo), 0, "its ctime is within SETTLED of now");
        // an old mtime does not help: the ctime is still new
        age(&p, 3600);
        memo.sha256_file(&p).unwrap();
        assert_eq!(recorded(&memo), 0);
    }

    /// The memo only has to see a change of stat to read the file again; a
    /// file changed in place keeps its inode, and here even its size and
    /// mtime, but not its ctime.
    #[test]
    fn a_changed_file_is_read_again_even_with_its_size_and_mtime_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"one").unwrap();
        age(&p, 3600);
        let memo = memo_unsettled(dir.path().join("memo"));
        assert_eq!(memo.sha256_file(&p).unwrap(), sha(b"one"));
        assert_eq!(recorded(&memo), 1);
        let mtime = fs::metadata(&p).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&p, b"two").unwrap();
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(fs::metadata(&p).unwrap().modified().unwrap(), mtime);
        assert_eq!(memo.sha256_file(&p).unwrap(), sha(b"two"));
    }

    /// A file "f" holding "content" in `dir`, and the memo (saved) that knows it.
    fn saved_memo_of_one_file(dir: &Path) -> (PathBuf, PathBuf) {
        let p = dir.join("f");
        fs::write(&p, b"content").unwrap();
        let store = dir.join("cache/file-digests");
        let memo = memo_unsettled(store.clone());
        memo.sha256_file(&p).unwrap();
        memo.save().unwrap();
        (p, store)
    }

    #[test]
    fn a_recorded_digest_is_used_without_reading_and_survives_a_save() {
        let dir = tempfile::tempdir().unwrap();
        let (p, store) = saved_memo_of_one_file(dir.path());
        // Poison the record: a recall must return it, proving no read.
        let again = FileDigests::open(store.clone());
        {
            let mut r = records(&again);
            assert_eq!(r.by_inode.len(), 1);
            r.by_inode.values_mut().next().unwrap().sha256 = [7; 32];
        }
        assert_eq!(again.sha256_file(&p).unwrap(), [7; 32]);
        // A damaged memo is ignored, not trusted.
        let mut bytes = fs::read(&store).unwrap();
        let n = bytes.len();
        bytes[n - 40] ^= 1;
        fs::write(&store, &bytes).unwrap();
        let damaged = FileDigests::open(store);
        assert_eq!(recorded(&damaged), 0);
        assert_eq!(damaged.sha256_file(&p).unwrap(), sha(b"content"));
    }

    /// Reading digests that were used within the day changes nothing, so
    /// the memo file is not rewritten (a second node's build); a record last
    /// used longer ago is refreshed, and the memo saved with it.
    #[test]
    fn a_build_that_learns_nothing_leaves_the_memo_file_alone() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (p, store) = saved_memo_of_one_file(dir.path());
        let ino = fs::metadata(&store).unwrap().ino();

        let again = FileDigests::open(store.clone());
        assert_eq!(again.sha256_file(&p).unwrap(), sha(b"content"));
        assert!(!records(&again).changed);
        again.save().unwrap();
        assert_eq!(fs::metadata(&store).unwrap().ino(), ino, "rewritten");

        // Last used more than a day ago: this use refreshes it.
        let stale = FileDigests::open(store.clone());
        let now = stale.inner.as_ref().unwrap().now;
        for r in records(&stale).by_inode.values_mut() {
            r.used = now - USED_GRAIN;
        }
        assert_eq!(stale.sha256_file(&p).unwrap(), sha(b"content"));
        stale.save().unwrap();
        assert_ne!(fs::metadata(&store).unwrap().ino(), ino, "not rewritten");
        let saved = FileDigests::open(store);
        let used: Vec<i64> = records(&saved).by_inode.values().map(|r| r.used).collect();
        assert_eq!(used, vec![now]);
    }

    #[test]
    fn encoding_round_trips_and_keeps_the_most_recently_used() {
        let mut m = ByInode::default();
        for i in 0..5u64 {
            let stamp = Stamp {
                dev: 1,
                ino: i,
                size: i * 10,
                mtime: (-(i as i64), 5),
                ctime: (i as i64, 999_999_999),
            };
            m.insert(
                (1, i),
                Record {
                    stamp,
                    sha256: [i as u8; 32],
                    used: 100 + i as i64,
                },
            );
        }
        let back = decode(&encode(&m)).unwrap();
        assert_eq!(back.len(), 5);
        for (k, r) in &m {
            let b = back[k];
            assert_eq!((b.stamp, b.sha256, b.used), (r.stamp, r.sha256, r.used));
        }
        assert!(decode(b"").is_none());
        assert!(decode(&encode(&m)[1..]).is_none());
    }

    /// The memo file is read from the cache directory: any bytes at all are
    /// either a memo or ignored, never a panic.
    #[test]
    fn arbitrary_and_mutated_memo_files_never_panic() {
        let mut m = ByInode::default();
        let stamp = Stamp {
            dev: 3,
            ino: 4,
            size: 5,
            mtime: (6, 7),
            ctime: (8, 9),
        };
        m.insert(
            (3, 4),
            Record {
                stamp,
                sha256: [1; 32],
                used: 2,
            },
        );
        let good = encode(&m);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let mut b = good.clone();
            match next() % 3 {
                0 => {
                    let i = (next() as usize) % b.len();
                    b[i] ^= (next() as u8) | 1;
                }
                1 => b.truncate((next() as usize) % b.len()),
                _ => b = (0..(next() % 300)).map(|_| next() as u8).collect(),
            }
            let _ = decode(&b);
        }
        // A body of whole records with a fresh checksum decodes, whatever it says.
        let mut body = MAGIC.to_vec();
        body.extend((0..RECORD * 3).map(|_| next() as u8));
        let sum = Sha256::digest(&body);
        body.extend_from_slice(&sum);
        assert_eq!(decode(&body).map(|r| r.len() <= 3), Some(true));
    }
}
