//! Where a file's bytes are. The tree holds file metadata and a `Content` per
//! file, never the bytes of a rootfs itself, so a build's memory does not grow
//! with the rootfs: small generated files (node config, service units, overlay
//! files) are kept in memory, files of a rootfs directory are read from their
//! path when a writer needs them, and the files of a tar archive are read from
//! a range of one backing file (the spill file that holds the archive's file
//! data once decompressed, see `reader`).
//!
//! Writers read through `reader()` (a stream of exactly `len()` bytes) or, for
//! small files they need whole (kernel, device trees, ELF headers), `bytes()`.
//! A file that changed length since the tree was read is an error, never a
//! silently shorter or longer file.
//!
//! A file's SHA-256 is computed at most once per build and kept with it
//! (`sha256`): the squashfs writer's duplicate check and the tree digests
//! (build.json, the system cache's key, the identifiers' seed) all need it,
//! and a 2 GB rootfs took a second of CPU to hash for each of them.

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};

/// What `stat` says of a file that changes when its content may have: the
/// digest memo (`file_digests`) knows files by it, as git's index does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Seconds and nanoseconds.
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl FileStamp {
    pub fn of(m: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// The bytes of one regular file (shared by its hard links through an `Arc`).
pub struct Content {
    len: u64,
    source: Source,
    /// The SHA-256 of the bytes, once something has computed it.
    sha256: OnceLock<[u8; 32]>,
}

enum Source {
    Mem(Vec<u8>),
    /// A whole file on disk, and its stamp when the rootfs was listed.
    Path(PathBuf, Option<FileStamp>),
    /// `len` bytes of an open file from `offset`.
    Range {
        file: Arc<File>,
        offset: u64,
    },
}

impl Content {
    /// Bytes held in memory.
    pub fn from_vec(data: Vec<u8>) -> Self {
        Content {
            len: data.len() as u64,
            source: Source::Mem(data),
            sha256: OnceLock::new(),
        }
    }

    /// The whole file at `path`, `len` bytes long when it is read.
    pub fn from_path(path: impl Into<PathBuf>, len: u64) -> Self {
        Content {
            len,
            source: Source::Path(path.into(), None),
            sha256: OnceLock::new(),
        }
    }

    /// A rootfs directory's file as it was listed (`md` from `stat`): its
    /// stamp lets the digest memo know it without another `stat`.
    pub fn from_listed_path(path: impl Into<PathBuf>, md: &std::fs::Metadata) -> Self {
        Content {
            len: md.len(),
            source: Source::Path(path.into(), Some(FileStamp::of(md))),
            sha256: OnceLock::new(),
        }
    }

    /// The stamp of a file of a listed rootfs directory, taken when it was
    /// listed.
    pub fn listed_stamp(&self) -> Option<&FileStamp> {
        match &self.source {
            Source::Path(_, stamp) => stamp.as_ref(),
            _ => None,
        }
    }

    /// `len` bytes of `file` from `offset`.
    pub fn from_range(file: Arc<File>, offset: u64, len: u64) -> Self {
        Content {
            len,
            source: Source::Range { file, offset },
            sha256: OnceLock::new(),
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file's path on disk, when its bytes are a whole file there (so a
    /// tool can read it directly instead of from a copy).
    pub fn path(&self) -> Option<&Path> {
        match &self.source {
            Source::Path(p, _) => Some(p),
            _ => None,
        }
    }

    /// A stream of exactly `len()` bytes; fails with `UnexpectedEof` (or
    /// `InvalidData` for a grown file) if the backing file changed.
    pub fn reader(&self) -> io::Result<ContentReader<'_>> {
        let inner = match &self.source {
            Source::Mem(v) => Inner::Mem(v),
            Source::Path(p, _) => {
                let f = File::open(p).map_err(|e| annotate(e, p))?;
                let actual = f.metadata().map_err(|e| annotate(e, p))?.len();
                if actual != self.len {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{} changed during the build ({} bytes, was {})",
                            p.display(),
                            actual,
                            self.len
                        ),
                    ));
                }
                Inner::File(f)
            }
            Source::Range { file, offset } => Inner::Range {
                file,
                offset: *offset,
            },
        };
        Ok(ContentReader {
            inner,
            pos: 0,
            len: self.len,
        })
    }

    /// Fills `buf` with the bytes from `offset` (positional: no shared cursor,
    /// so threads may read one `Content` at once). Reading past `len()` or a
    /// backing file that is shorter than recorded is an error.
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.map_or(true, |e| e > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read past the end of a {}-byte file", self.len),
            ));
        }
        let short = |e: io::Error| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    e.kind(),
                    "a rootfs file is shorter than when it was read (changed during the build?)",
                )
            } else {
                e
            }
        };
        match &self.source {
            Source::Mem(v) => {
                let start = offset as usize;
                buf.copy_from_slice(&v[start..start + buf.len()]);
                Ok(())
            }
            Source::Path(p, _) => {
                let f = File::open(p).map_err(|e| annotate(e, p))?;
                f.read_exact_at(buf, offset).map_err(short)
            }
            Source::Range { file, offset: base } => {
                file.read_exact_at(buf, base + offset).map_err(short)
            }
        }
    }

    /// The SHA-256 of the bytes: read and hashed the first time it is asked
    /// for, then remembered.
    pub fn sha256(&self) -> io::Result<[u8; 32]> {
        self.sha256_with(Content::hash_bytes)
    }

    /// The SHA-256 of the bytes, from `compute` the first time (a caller
    /// that can find it without reading, such as the digest memo of
    /// `file_digests`), then remembered. Threads asking at once may both
    /// compute it; they get the same value.
    pub fn sha256_with<E>(
        &self,
        compute: impl FnOnce(&Content) -> Result<[u8; 32], E>,
    ) -> Result<[u8; 32], E> {
        if let Some(d) = self.sha256.get() {
            return Ok(*d);
        }
        let d = compute(self)?;
        Ok(*self.sha256.get_or_init(|| d))
    }

    /// The SHA-256 of the bytes if something has computed it already.
    pub fn known_sha256(&self) -> Option<[u8; 32]> {
        self.sha256.get().copied()
    }

    /// Remembers `digest` as the SHA-256 of the bytes, computed by a caller
    /// that read them anyway (the squashfs writer, from the blocks it
    /// compressed). A digest already known stays.
    pub fn remember_sha256(&self, digest: [u8; 32]) {
        let _ = self.sha256.set(digest);
    }

    /// Reads the whole contents through a SHA-256.
    pub fn hash_bytes(&self) -> io::Result<[u8; 32]> {
        let mut h = Sha256::new();
        let mut r = self.reader()?;
        // Larger than `io::copy`'s 8 KiB: a rootfs is read through here whole.
        // No larger than the file (plus one byte, to see its end): most files
        // are small, and a buffer is zeroed before use.
        let size = usize::try_from(self.len.saturating_add(1)).unwrap_or(usize::MAX);
        let mut buf = vec![0u8; size.min(256 * 1024)];
        loop {
            let n = crate::io::read_full(&mut r, &mut buf)?;
            h.update(&buf[..n]);
            if n < buf.len() {
                break;
            }
        }
        Ok(h.finalize().into())
    }

    /// The whole contents; borrowed when they are in memory.
    pub fn bytes(&self) -> io::Result<Cow<'_, [u8]>> {
        if let Source::Mem(v) = &self.source {
            return Ok(Cow::Borrowed(v));
        }
        let len = usize::try_from(self.len)
            .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "file too large"))?;
        let mut out = vec![0u8; len];
        self.reader()?.read_exact(&mut out)?;
        Ok(Cow::Owned(out))
    }

    /// A copy of the whole contents.
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        Ok(self.bytes()?.into_owned())
    }

    /// Whether both hold the same bytes (without reading when they share a source).
    pub fn same_bytes(&self, other: &Content) -> io::Result<bool> {
        if self.len != other.len {
            return Ok(false);
        }
        match (&self.source, &other.source) {
            (Source::Mem(a), Source::Mem(b)) => return Ok(a == b),
            (Source::Path(a, _), Source::Path(b, _)) if a == b => return Ok(true),
            (Source::Range { file: a, offset: x }, Source::Range { file: b, offset: y })
                if Arc::ptr_eq(a, b) && x == y =>
            {
                return Ok(true)
            }
            _ => {}
        }
        let (mut a, mut b) = (self.reader()?, other.reader()?);
        let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        let mut left = self.len;
        while left > 0 {
            let n = left.min(ba.len() as u64) as usize;
            a.read_exact(&mut ba[..n])?;
            b.read_exact(&mut bb[..n])?;
            if ba[..n] != bb[..n] {
                return Ok(false);
            }
            left -= n as u64;
        }
        Ok(true)
    }
}

fn annotate(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Equal when the bytes are equal; a read error counts as unequal.
impl PartialEq for Content {
    fn eq(&self, other: &Self) -> bool {
        self.same_bytes(other).unwrap_or(false)
    }
}

impl Eq for Content {}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Mem(v) if v.len() <= 32 => {
                write!(f, "Content({:?})", String::from_utf8_lossy(v))
            }
            Source::Mem(_) => write!(f, "Content({} bytes in memory)", self.len),
            Source::Path(p, _) => write!(f, "Content({} bytes of {})", self.len, p.display()),
            Source::Range { offset, .. } => {
                write!(
                    f,
                    "Content({} bytes at {offset} of the spill file)",
                    self.len
                )
            }
        }
    }
}

enum Inner<'a> {
    Mem(&'a [u8]),
    File(File),
    Range { file: &'a File, offset: u64 },
}

/// Reads exactly a `Content`'s bytes.
pub struct ContentReader<'a> {
    inner: Inner<'a>,
    pos: u64,
    len: u64,
}

impl Read for ContentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len - self.pos;
        if left == 0 || buf.is_empty() {
            if let Inner::File(f) = &mut self.inner {
                // A file that grew since it was listed is caught here.
                if left == 0 && !buf.is_empty() && f.read(&mut [0u8; 1])? != 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a rootfs file grew during the build",
                    ));
                }
            }
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let buf = &mut buf[..want];
        let n = match &mut self.inner {
            Inner::Mem(v) => {
                let start = self.pos as usize;
                buf.copy_from_slice(&v[start..start + want]);
                want
            }
            Inner::File(f) => f.read(buf)?,
            Inner::Range { file, offset } => file.read_at(buf, *offset + self.pos)?,
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "a rootfs file ends after {} of {} bytes (changed during the build?)",
                    self.pos, self.len
                ),
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_digest_is_computed_once_and_shared_by_every_holder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let c = Arc::new(Content::from_path(&p, 10));
        let holder = Arc::clone(&c);
        let want: [u8; 32] = Sha256::digest(b"0123456789").into();
        assert_eq!(c.sha256().unwrap(), want);
        // Known now: not read again (the file is gone), not computed again.
        std::fs::remove_file(&p).unwrap();
        assert_eq!(holder.sha256().unwrap(), want);
        let asked = holder.sha256_with(|_| -> Result<[u8; 32], ()> { panic!("computed again") });
        assert_eq!(asked, Ok(want));
        // A failed computation is not remembered.
        let other = Content::from_path(&p, 10);
        assert!(other.sha256().is_err());
        assert_eq!(other.sha256_with(|_| Ok::<_, ()>([7; 32])), Ok([7; 32]));
        assert_eq!(other.sha256().unwrap(), [7; 32]);
    }

    #[test]
    fn memory_path_and_range_read_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let mem = Content::from_vec(b"3456".to_vec());
        let path = Content::from_path(&p, 10);
        let range = Content::from_range(Arc::new(File::open(&p).unwrap()), 3, 4);
        assert_eq!(path.bytes().unwrap().as_ref(), b"0123456789");
        assert_eq!(range.bytes().unwrap().as_ref(), b"3456");
        assert_eq!(mem, range);
        assert_ne!(mem, path);
        let mut s = String::new();
        range.reader().unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "3456");
    }

    #[test]
    fn a_file_that_changed_length_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let c = Content::from_path(&p, 3);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"d")
            .unwrap();
        let err = c.bytes().unwrap_err().to_string();
        assert!(err.contains("changed during the build"), "{err}");
        // A range past the end of its backing file is short, and says so.
        let r = Content::from_range(Arc::new(File::open(&p).unwrap()), 2, 10);
        let err = r.bytes().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
