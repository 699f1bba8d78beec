//! Writing an image's ranges to the target, then reading them back.
//!
//! The first MiB of the image (the partition table, the boot sector) is
//! held back in memory and written last, once everything else is written,
//! synced and verified: a write that is interrupted, or an image found
//! truncated or damaged on the way, leaves a target whose first MiB the
//! caller zeroed beforehand, so nothing will try to boot it (as
//! coreos-installer does).

use std::fs::File;
use std::num::NonZeroU64;
use std::os::unix::fs::FileExt;

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use super::source::ImageSource;

/// The bytes held back and written last.
pub const HEAD: u64 = 1 << 20;
/// Read and write in pieces of this size.
const PIECE: usize = 1 << 20;
/// Zero blocks of this size are skipped when the target reads zeros there.
const BLOCK: usize = 4096;

/// Bytes `[start, end)` of the image to write, with their SHA-256 when a
/// block map gives it (checked against what is read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub end: u64,
    pub sha256: Option<String>,
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub image_size: u64,
    /// Bytes written to the target (the held-back first MiB included).
    pub written: u64,
    /// Bytes taken from the image (decompressed).
    pub read: u64,
    pub verified: bool,
}

/// Writes to `target`, holding back the first MiB and remembering the
/// SHA-256 of every piece written for the read-back.
pub struct Writer<'a> {
    target: &'a File,
    name: String,
    head: Vec<u8>,
    pieces: Vec<(u64, usize, [u8; 32])>,
    written: u64,
    bar: ProgressBar,
    /// The target reads zeros where nothing is written (a new file, or a
    /// device whose unused ranges were discarded).
    zeros_are_free: bool,
}

impl<'a> Writer<'a> {
    pub fn new(target: &'a File, name: String, bar: ProgressBar, zeros_are_free: bool) -> Self {
        Writer {
            target,
            name,
            head: Vec::new(),
            pieces: Vec::new(),
            written: 0,
            bar,
            zeros_are_free,
        }
    }

    /// Puts `data` at image offset `at`: the part in the first MiB into the
    /// held-back buffer, the rest onto the target.
    fn put(&mut self, at: u64, data: &[u8]) -> Result<()> {
        let mut data = data;
        let mut at = at;
        if at < HEAD {
            // HEAD - at < 1 MiB: the cast cannot truncate.
            let k = ((HEAD - at) as usize).min(data.len());
            let end = at as usize + k;
            if self.head.len() < end {
                self.head.resize(end, 0);
            }
            self.head[at as usize..end].copy_from_slice(&data[..k]);
            data = &data[k..];
            at += k as u64;
        }
        if data.is_empty() {
            return Ok(());
        }
        // Recorded in pieces of at most PIECE bytes, the read-back buffer.
        for piece in data.chunks(PIECE) {
            self.target
                .write_all_at(piece, at)
                .with_context(|| format!("writing {} at byte {at}", self.name))?;
            self.pieces
                .push((at, piece.len(), Sha256::digest(piece).into()));
            self.written += piece.len() as u64;
            at += piece.len() as u64;
        }
        Ok(())
    }

    /// Puts `data` at `at`, leaving out its all-zero blocks when the target
    /// reads zeros there anyway.
    fn put_skipping_zeros(&mut self, at: u64, data: &[u8]) -> Result<()> {
        if !self.zeros_are_free {
            return self.put(at, data);
        }
        let mut i = 0;
        while i < data.len() {
            let zero = |s: usize| data[s..(s + BLOCK).min(data.len())].iter().all(|&b| b == 0);
            if zero(i) {
                i += BLOCK;
                continue;
            }
            let mut j = i + BLOCK;
            while j < data.len() && !zero(j) {
                j += BLOCK;
            }
            let j = j.min(data.len());
            self.put(at + i as u64, &data[i..j])?;
            i = j;
        }
        Ok(())
    }

    /// Writes the `extents` (sorted, not overlapping) of `src`, reading
    /// nothing else; a range whose bytes do not match its checksum is an error.
    pub fn write_extents(&mut self, src: &mut dyn ImageSource, extents: &[Extent]) -> Result<()> {
        let mut buf = vec![0u8; PIECE];
        for e in extents {
            let mut h = Sha256::new();
            let mut pos = e.start;
            while pos < e.end {
                let n = usize::try_from(e.end - pos).unwrap_or(PIECE).min(PIECE);
                src.read_at(pos, &mut buf[..n])?;
                h.update(&buf[..n]);
                self.put(pos, &buf[..n])?;
                self.bar.inc(n as u64);
                pos += n as u64;
            }
            if let Some(want) = &e.sha256 {
                if !hex::encode(h.finalize()).eq_ignore_ascii_case(want) {
                    bail!(
                        "bytes {}..{} of the image do not match the block map's checksum \
                         (the image is damaged, or the map is another image's)",
                        e.start,
                        e.end
                    );
                }
            }
        }
        Ok(())
    }

    /// Writes all of a stream with no map; returns the image's size.
    pub fn write_stream(&mut self, src: &mut dyn ImageSource) -> Result<u64> {
        let mut buf = vec![0u8; PIECE];
        let mut pos = 0u64;
        loop {
            let n = src.read_next(&mut buf)?;
            if n == 0 {
                return Ok(pos);
            }
            self.put_skipping_zeros(pos, &buf[..n])?;
            self.bar.inc(n as u64);
            pos += n as u64;
        }
    }

    /// Syncs and verifies what was written, then writes, syncs and
    /// verifies the held-back first MiB. A file target is first sized to
    /// `file_len`.
    pub fn finish(
        self,
        src_read: u64,
        image_size: u64,
        file_len: Option<u64>,
        verify: bool,
    ) -> Result<Report> {
        let ctx = || format!("writing {}", self.name);
        if let Some(len) = file_len {
            self.target.set_len(len).with_context(ctx)?;
        }
        self.target.sync_all().with_context(ctx)?;
        if verify {
            self.bar.set_message("verifying");
            drop_cache(self.target);
            let mut buf = vec![0u8; PIECE];
            for &(at, len, want) in &self.pieces {
                self.target
                    .read_exact_at(&mut buf[..len], at)
                    .with_context(|| format!("reading back {} at byte {at}", self.name))?;
                if <[u8; 32]>::from(Sha256::digest(&buf[..len])) != want {
                    bail!(
                        "{}: the {len} bytes written at byte {at} read back differently (failing medium?)",
                        self.name
                    );
                }
            }
        }
        let mut written = self.written;
        if !self.head.is_empty() {
            self.target.write_all_at(&self.head, 0).with_context(ctx)?;
            self.target.sync_all().with_context(ctx)?;
            written += self.head.len() as u64;
            if verify {
                drop_cache(self.target);
                let mut back = vec![0u8; self.head.len()];
                self.target
                    .read_exact_at(&mut back, 0)
                    .with_context(|| format!("reading back {}", self.name))?;
                if back != self.head {
                    bail!(
                        "{}: the first MiB reads back differently (failing medium?)",
                        self.name
                    );
                }
            }
        }
        self.bar.finish_and_clear();
        Ok(Report {
            image_size,
            written,
            read: src_read,
            verified: verify,
        })
    }
}

/// Asks the kernel to drop the cached pages of `f`, so reading back reads
/// the medium (advice only: a failure changes nothing but what is read).
fn drop_cache(f: &File) {
    let _ = rustix::fs::fadvise(f, 0, None::<NonZeroU64>, rustix::fs::Advice::DontNeed);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image in memory that records every byte range read from it.
    struct Recording {
        data: Vec<u8>,
        reads: Vec<(u64, u64)>,
    }

    impl ImageSource for Recording {
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
            let s = offset as usize;
            buf.copy_from_slice(&self.data[s..s + buf.len()]);
            self.reads.push((offset, offset + buf.len() as u64));
            Ok(())
        }
        fn read_next(&mut self, _: &mut [u8]) -> Result<usize> {
            unreachable!("mapped writes read by offset")
        }
        fn bytes_read(&self) -> u64 {
            self.reads.iter().map(|(s, e)| e - s).sum()
        }
    }

    fn image() -> Vec<u8> {
        (0..(8u32 << 20)).map(|i| (i % 253) as u8 | 1).collect()
    }

    #[test]
    fn only_the_extents_are_read_and_written_and_the_head_comes_last() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        let target = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&t)
            .unwrap();
        target.set_len(8 << 20).unwrap();
        let extents = vec![
            Extent {
                start: 0,
                end: 8192,
                sha256: None,
            },
            Extent {
                start: (1 << 20) - 4096,
                end: (1 << 20) + 4096,
                sha256: None,
            },
            Extent {
                start: 3 << 20,
                end: (5 << 20) + 100,
                sha256: None,
            },
        ];
        let mut src = Recording {
            data: image(),
            reads: vec![],
        };
        let mut w = Writer::new(&target, "t".into(), ProgressBar::hidden(), true);
        w.write_extents(&mut src, &extents).unwrap();
        // Before finishing, the first MiB is untouched (all zeros).
        let mut head = vec![0u8; 1 << 20];
        target.read_exact_at(&mut head, 0).unwrap();
        assert!(head.iter().all(|&b| b == 0));
        let r = w.finish(src.bytes_read(), 8 << 20, None, true).unwrap();
        for (s, e) in &src.reads {
            assert!(
                extents.iter().any(|x| x.start <= *s && *e <= x.end),
                "read {s}..{e} outside the extents"
            );
        }
        let mapped: u64 = extents.iter().map(|x| x.end - x.start).sum();
        assert_eq!(r.read, mapped);
        let got = std::fs::read(&t).unwrap();
        let want = image();
        for x in &extents {
            assert_eq!(
                got[x.start as usize..x.end as usize],
                want[x.start as usize..x.end as usize]
            );
        }
        assert!(got[8192..(1 << 20) - 4096].iter().all(|&b| b == 0));
        assert!(got[(1 << 20) + 4096..3 << 20].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_range_that_does_not_match_its_checksum_stops_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let target = File::create(dir.path().join("t")).unwrap();
        let mut src = Recording {
            data: image(),
            reads: vec![],
        };
        let mut w = Writer::new(&target, "t".into(), ProgressBar::hidden(), true);
        let bad = Extent {
            start: 2 << 20,
            end: 3 << 20,
            sha256: Some("00".repeat(32)),
        };
        let e = w.write_extents(&mut src, &[bad]).unwrap_err();
        assert!(e.to_string().contains("do not match"), "{e}");
    }

    #[test]
    fn zero_blocks_are_skipped_only_where_the_target_reads_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![0u8; 4 << 20];
        data[(2 << 20) + 10] = 7;
        for free in [true, false] {
            let t = dir.path().join(format!("t{free}"));
            let target = File::options()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&t)
                .unwrap();
            let mut w = Writer::new(&target, "t".into(), ProgressBar::hidden(), free);
            w.put_skipping_zeros(0, &data).unwrap();
            let r = w.finish(0, 4 << 20, Some(4 << 20), true).unwrap();
            // Skipping: the one non-zero block (the first MiB is written whole only when not skipping).
            let want = if free { 4096 } else { 4 << 20 };
            assert_eq!(r.written, want, "zeros free: {free}");
            assert_eq!(std::fs::read(&t).unwrap(), data);
        }
    }
}
