//! Sparse files: copying a file's data and leaving its holes as holes, so a
//! mostly empty multi-GiB partition or disk image takes little space and time.
//!
//! Only the data regions the filesystem reports (`SEEK_DATA`/`SEEK_HOLE`)
//! are read; within them, all-zero chunks of [`CHUNK`] bytes are skipped too.
//! Readers see zeros in the holes, so the bytes are those of a full copy.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rustix::fs::SeekFrom as RawSeek;
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use crate::io::read_full;

/// Holes are made at this granularity inside data regions.
pub const CHUNK: usize = 64 * 1024;
/// Read buffer: several chunks at a time, written as one run when contiguous.
const READ_BUF: usize = 16 * CHUNK;

/// The regions `[start, end)` of the first `len` bytes of `f` that may hold
/// data, from `SEEK_DATA`/`SEEK_HOLE`. A filesystem that cannot tell reports
/// the whole file as data.
pub fn data_regions(f: &File, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    data_regions_in(f, 0, len)
}

/// [`data_regions`] of the bytes `[from, len)`.
pub fn data_regions_in(f: &File, from: u64, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut pos = from;
    while pos < len {
        let start = match rustix::fs::seek(f, RawSeek::Data(pos)) {
            Ok(s) => s,
            // No data at or after `pos`.
            Err(Errno::NXIO) => break,
            // SEEK_DATA unsupported: treat the rest as data.
            Err(Errno::INVAL) | Err(Errno::NOTSUP) => {
                out.push((pos, len));
                break;
            }
            Err(e) => return Err(e.into()),
        };
        if start >= len {
            break;
        }
        let end = rustix::fs::seek(f, RawSeek::Hole(start))?.min(len);
        if end <= start {
            break;
        }
        out.push((start, end));
        pos = end;
    }
    Ok(out)
}

/// Zeros to hash from: small enough to stay in the CPU's caches.
static ZEROS: [u8; 64 * 1024] = [0u8; 64 * 1024];

/// Feeds `n` zero bytes to `h`.
pub fn hash_zeros(h: &mut Sha256, mut n: u64) {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64);
        // k <= 64 KiB: the cast cannot truncate.
        h.update(&ZEROS[..k as usize]);
        n -= k;
    }
}

/// Feeds the bytes `[from, to)` of `f` to `h`, reading only its data regions
/// (holes are hashed as the zeros they read as; a range of one read or less
/// is read whole). A file that ends before `to` is an error.
pub fn hash_range(h: &mut Sha256, f: &File, from: u64, to: u64) -> Result<()> {
    // Most files hashed through here are a rootfs's small files: a 1 MiB
    // buffer zeroed for each cost more than hashing them (1.6 s for the
    // 98,000 files of a 2 GB tree), and looking for holes in a range no
    // larger than one read saves nothing.
    let len = to.saturating_sub(from);
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(READ_BUF).min(READ_BUF)];
    let regions = match len <= READ_BUF as u64 {
        true => vec![(from, to)],
        false => data_regions_in(f, from, to)?,
    };
    let mut pos = from;
    for (start, end) in regions {
        hash_zeros(h, start - pos);
        pos = start;
        while pos < end {
            let want = usize::try_from(end - pos).unwrap_or(READ_BUF).min(READ_BUF);
            let n = f.read_at(&mut buf[..want], pos)?;
            if n == 0 {
                bail!("the file ends at {pos} bytes, before {to} (shrank while being hashed?)");
            }
            h.update(&buf[..n]);
            pos += n as u64;
        }
    }
    // A hole to the end, or the file's end: only the first reads as zeros.
    if pos < to {
        let now = f.metadata()?.len();
        if now < to {
            bail!("the file ends at {now} bytes, before {to} (shrank while being hashed?)");
        }
    }
    hash_zeros(h, to - pos);
    Ok(())
}

/// Copies the file at `src` into `dst` at offset `off`, writing only its
/// non-zero chunks (the destination's holes stay holes; the caller sized it).
/// Refuses a source larger than `max` bytes. Returns the source's length.
pub fn copy_into(dst: &mut File, off: u64, src: &Path, max: u64) -> Result<u64> {
    let ctx = || format!("copying {}", src.display());
    let mut from = File::open(src).with_context(ctx)?;
    let len = from.metadata().with_context(ctx)?.len();
    if len > max {
        bail!(
            "{} is {len} bytes, larger than its place of {max} bytes",
            src.display()
        );
    }
    let mut buf = vec![0u8; READ_BUF];
    for (start, end) in data_regions(&from, len).with_context(ctx)? {
        from.seek(SeekFrom::Start(start)).with_context(ctx)?;
        let mut pos = start;
        while pos < end {
            let want = usize::try_from(end - pos).unwrap_or(READ_BUF).min(READ_BUF);
            let n = read_full(&mut from, &mut buf[..want]).with_context(ctx)?;
            if n == 0 {
                bail!("{} shrank while being copied", src.display());
            }
            write_nonzero_runs(dst, off + pos, &buf[..n]).with_context(ctx)?;
            pos += n as u64;
        }
    }
    Ok(len)
}

/// Copies the file at `src` into `dst` at offset `off` in the kernel
/// (`copy_file_range`: no copy through this process, and a reflink where the
/// filesystem shares blocks), its holes skipped but not its zeros: for a
/// file with no zero runs worth a hole, such as a compressed filesystem.
/// Falls back to [`copy_into`] where the kernel cannot copy between the two
/// files. Refuses a source larger than `max` bytes; returns its length.
pub fn copy_dense_into(dst: &File, off: u64, src: &Path, max: u64) -> Result<u64> {
    let ctx = || format!("copying {}", src.display());
    let from = File::open(src).with_context(ctx)?;
    let len = from.metadata().with_context(ctx)?.len();
    if len > max {
        bail!(
            "{} is {len} bytes, larger than its place of {max} bytes",
            src.display()
        );
    }
    for (start, end) in data_regions(&from, len).with_context(ctx)? {
        let (mut pos, mut at) = (start, off + start);
        while pos < end {
            let want = usize::try_from(end - pos)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            match rustix::fs::copy_file_range(&from, Some(&mut pos), dst, Some(&mut at), want) {
                Ok(0) => bail!("{} shrank while being copied", src.display()),
                Ok(_) => {}
                // Not between these files (another filesystem on old kernels,
                // special files): copy through this process instead.
                Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP)
                    if pos == start =>
                {
                    let mut dst = dst.try_clone().with_context(ctx)?;
                    return copy_into(&mut dst, off, src, max);
                }
                Err(e) => return Err(std::io::Error::from(e)).with_context(ctx),
            }
        }
    }
    Ok(len)
}

/// Writes the runs of consecutive chunks of `data` that hold a non-zero byte
/// to `dst` at `at` + their offset in `data`.
fn write_nonzero_runs(dst: &mut File, at: u64, data: &[u8]) -> std::io::Result<()> {
    let n = data.len();
    let chunk_end = |s: usize| (s + CHUNK).min(n);
    let mut i = 0;
    while i < n {
        if data[i..chunk_end(i)].iter().all(|&b| b == 0) {
            i = chunk_end(i);
            continue;
        }
        let mut j = chunk_end(i);
        while j < n && data[j..chunk_end(j)].iter().any(|&b| b != 0) {
            j = chunk_end(j);
        }
        dst.seek(SeekFrom::Start(at + i as u64))?;
        dst.write_all(&data[i..j])?;
        i = j;
    }
    Ok(())
}

/// Copies a (possibly sparse) file to a new file `to` of the same length,
/// keeping holes where the source has holes or zeros; returns the length.
pub fn copy_file(from: &Path, to: &Path) -> Result<u64> {
    let len = std::fs::metadata(from)
        .with_context(|| format!("reading {}", from.display()))?
        .len();
    let mut dst = File::create(to).with_context(|| format!("creating {}", to.display()))?;
    dst.set_len(len)
        .with_context(|| format!("sizing {}", to.display()))?;
    copy_into(&mut dst, 0, from, len)?;
    dst.sync_all()
        .with_context(|| format!("writing {}", to.display()))?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};

    /// A file of `len` bytes, holes but for `data` (offset, bytes) and
    /// "tail" in its last 4 bytes.
    fn sparse_file(path: &Path, len: u64, data: &[(u64, &[u8])]) {
        let f = File::create(path).unwrap();
        f.set_len(len).unwrap();
        for (off, bytes) in data {
            f.write_all_at(bytes, *off).unwrap();
        }
        f.write_all_at(b"tail", len - 4).unwrap();
    }

    #[test]
    fn copy_keeps_bytes_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let len = 256u64 << 20;
        // Explicit zeros are data to the filesystem but stay holes in the copy.
        let zeros = vec![0u8; 8 << 20];
        sparse_file(
            &src,
            len,
            &[(0, b"head"), (100 << 20, b"middle"), (200 << 20, &zeros)],
        );
        let regions = data_regions(&File::open(&src).unwrap(), len).unwrap();
        assert!(regions.len() >= 3, "{regions:?}");
        let covered: u64 = regions.iter().map(|(a, b)| b - a).sum();
        assert!(covered < 32 << 20, "{regions:?}");

        let dst = dir.path().join("dst");
        assert_eq!(copy_file(&src, &dst).unwrap(), len);
        let md = std::fs::metadata(&dst).unwrap();
        assert_eq!(md.len(), len);
        assert!(
            md.blocks() * 512 < 4 << 20,
            "{} bytes used",
            md.blocks() * 512
        );
        let got = File::open(&dst).unwrap();
        let at = |off: u64, n: usize| {
            let mut b = vec![0u8; n];
            got.read_exact_at(&mut b, off).unwrap();
            b
        };
        assert_eq!(at(0, 4), b"head");
        assert_eq!(at(100 << 20, 6), b"middle");
        assert_eq!(at(len - 4, 4), b"tail");
        assert!(at(200 << 20, 1 << 20).iter().all(|&b| b == 0));
    }

    /// Ranges of any size, holes in them or not, hash as the bytes they
    /// read as; a file shorter than the range is an error.
    #[test]
    fn hash_range_hashes_what_the_range_reads_as() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let len = 5u64 << 20;
        sparse_file(&path, len, &[(0, b"head"), ((2 << 20) + 5, &[7u8; 3000])]);
        let bytes = std::fs::read(&path).unwrap();
        let f = File::open(&path).unwrap();
        let ranges = [
            (0, 0),
            (0, 10),
            (1, 4096),
            (0, READ_BUF as u64),
            (3, READ_BUF as u64 + 4),
            ((2 << 20) - 100, (2 << 20) + 10_000),
            (1 << 20, len),
            (0, len),
        ];
        for (from, to) in ranges {
            let mut h = Sha256::new();
            hash_range(&mut h, &f, from, to).unwrap();
            let want = Sha256::digest(&bytes[from as usize..to as usize]);
            assert_eq!(h.finalize(), want, "{from}..{to}");
        }
        for (from, to) in [(len - 10, len + 1), (0, len + READ_BUF as u64)] {
            let err = hash_range(&mut Sha256::new(), &f, from, to).unwrap_err();
            assert!(format!("{err:#}").contains("shrank"), "{err:#}");
        }
    }

    #[test]
    fn copy_into_refuses_a_source_larger_than_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("big");
        std::fs::write(&src, [1u8; 100]).unwrap();
        let mut dst = File::create(dir.path().join("dst")).unwrap();
        let e = copy_into(&mut dst, 0, &src, 99).unwrap_err();
        assert!(
            e.to_string().contains("larger than its place of 99 bytes"),
            "{e}"
        );
        let e = copy_dense_into(&dst, 0, &src, 99).unwrap_err();
        assert!(
            e.to_string().contains("larger than its place of 99 bytes"),
            "{e}"
        );
    }

    /// The kernel's copy puts every byte at its offset, zeros included, and
    /// leaves the source's holes and the rest of the destination alone.
    #[test]
    fn dense_copy_puts_the_bytes_at_their_offset() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let f = File::create(&src).unwrap();
        f.set_len(3 << 20).unwrap();
        let head: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all_at(&head, 0).unwrap();
        f.write_all_at(&[0u8; 70_000], 300_000).unwrap();
        f.write_all_at(b"tail", (3 << 20) - 4).unwrap();
        drop(f);
        let dst_path = dir.path().join("dst");
        let dst = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&dst_path)
            .unwrap();
        dst.set_len(8 << 20).unwrap();
        dst.write_all_at(b"before", 4090).unwrap();
        assert_eq!(
            copy_dense_into(&dst, 1 << 20, &src, 4 << 20).unwrap(),
            3 << 20
        );
        let got = std::fs::read(&dst_path).unwrap();
        assert_eq!(&got[4090..4096], b"before");
        assert!(got[(1 << 20)..(1 << 20) + (3 << 20)] == std::fs::read(&src).unwrap()[..]);
        assert!(got[(4 << 20)..].iter().all(|&b| b == 0));
    }
}
