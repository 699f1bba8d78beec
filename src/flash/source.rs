//! The image `flash` reads: a plain `.img` (random access: only the ranges
//! to write are read) or a `.zst`, `.gz` or `.xz` one decompressed as a
//! stream (no decompressed copy is ever stored), recognised by its magic
//! bytes. A stream that ends before the bytes asked of it is
//! [`SourceError::Truncated`].

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use thiserror::Error;

use crate::io::read_full;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
    Gzip,
    Xz,
}

impl Compression {
    /// From the file's first bytes.
    pub fn detect(path: &Path) -> Result<Compression> {
        let mut magic = [0u8; 6];
        let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let n =
            read_full(&mut f, &mut magic).with_context(|| format!("reading {}", path.display()))?;
        Ok(match &magic[..n] {
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0xfd, b'7', b'z', b'X', b'Z', 0x00] => Compression::Xz,
            _ => Compression::None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
        }
    }
}

#[derive(Debug, Error)]
pub enum SourceError {
    #[error("{image}: truncated: the image ends at byte {at}, before byte {wanted}")]
    Truncated { image: String, at: u64, wanted: u64 },
    #[error("{image}: reading back from byte {at} after byte {pos} of a compressed stream")]
    Backwards { image: String, at: u64, pos: u64 },
}

/// The bytes of an image, by offset.
pub trait ImageSource {
    /// Fills `buf` with the image's bytes at `offset`. Streams only go
    /// forward: `offset` is at or after the end of the previous read.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Reads the next bytes of a stream (for images without a map);
    /// returns 0 at the end.
    fn read_next(&mut self, buf: &mut [u8]) -> Result<usize>;
    /// Bytes taken from the image so far (decompressed, skipped ones included).
    fn bytes_read(&self) -> u64;
}

/// A plain image file: reads exactly the bytes asked for.
pub struct FileSource {
    file: File,
    name: String,
    pub len: u64,
    read: u64,
    pos: u64,
}

impl FileSource {
    pub fn open(path: &Path) -> Result<FileSource> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        Ok(FileSource {
            file,
            name: path.display().to_string(),
            len,
            read: 0,
            pos: 0,
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

impl ImageSource for FileSource {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let n = self
                .file
                .read_at(&mut buf[done..], at)
                .with_context(|| format!("reading {}", self.name))?;
            if n == 0 {
                return Err(SourceError::Truncated {
                    image: self.name.clone(),
                    at,
                    wanted: offset + buf.len() as u64,
                }
                .into());
            }
            done += n;
            self.read += n as u64;
        }
        Ok(())
    }

    fn read_next(&mut self, buf: &mut [u8]) -> Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.len.saturating_sub(self.pos)).unwrap_or(usize::MAX));
        self.read_at(self.pos, &mut buf[..want])?;
        self.pos += want as u64;
        Ok(want)
    }

    fn bytes_read(&self) -> u64 {
        self.read
    }
}

/// A compressed image, decompressed as it is read.
pub struct StreamSource {
    reader: Box<dyn Read>,
    name: String,
    pos: u64,
    skip: Vec<u8>,
}

const SKIP_BUF: usize = 1 << 20;

impl StreamSource {
    pub fn open(path: &Path, c: Compression) -> Result<StreamSource> {
        let name = path.display().to_string();
        let f = BufReader::with_capacity(
            1 << 20,
            File::open(path).with_context(|| format!("opening {name}"))?,
        );
        let reader: Box<dyn Read> = match c {
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(f)
                    .with_context(|| format!("reading {name}"))?,
            ),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(f)),
            Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(f)),
            Compression::None => Box::new(f),
        };
        Ok(StreamSource {
            reader,
            name,
            pos: 0,
            skip: Vec::new(),
        })
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let n = read_full(&mut self.reader, buf)
            .with_context(|| format!("{}: decompressing at byte {}", self.name, self.pos))?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl ImageSource for StreamSource {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset < self.pos {
            return Err(SourceError::Backwards {
                image: self.name.clone(),
                at: offset,
                pos: self.pos,
            }
            .into());
        }
        let wanted = offset + buf.len() as u64;
        // Skipped bytes are decompressed into a scratch buffer and dropped.
        while self.pos < offset {
            let k = usize::try_from(offset - self.pos)
                .unwrap_or(usize::MAX)
                .min(SKIP_BUF);
            let mut skip = std::mem::take(&mut self.skip);
            skip.resize(SKIP_BUF, 0);
            let n = self.fill(&mut skip[..k]);
            self.skip = skip;
            if n? == 0 {
                return Err(SourceError::Truncated {
                    image: self.name.clone(),
                    at: self.pos,
                    wanted,
                }
                .into());
            }
        }
        let n = self.fill(buf)?;
        if n < buf.len() {
            return Err(SourceError::Truncated {
                image: self.name.clone(),
                at: self.pos,
                wanted,
            }
            .into());
        }
        Ok(())
    }

    fn read_next(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.fill(buf)
    }

    fn bytes_read(&self) -> u64 {
        self.pos
    }
}

/// The `.bmap` beside an image: `X.img.bmap` for `X.img`, `X.img.zst`,
/// `X.img.gz` or `X.img.xz` (or `X.img.zst.bmap`), when it exists.
pub fn bmap_beside(image: &Path) -> Option<PathBuf> {
    let name = image.file_name()?.to_str()?;
    let mut candidates = vec![format!("{name}.bmap")];
    for ext in [".zst", ".gz", ".xz"] {
        if let Some(stem) = name.strip_suffix(ext) {
            candidates.push(format!("{stem}.bmap"));
        }
    }
    candidates
        .into_iter()
        .map(|c| image.with_file_name(c))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    fn compressed(dir: &Path, c: Compression, data: &[u8]) -> PathBuf {
        let p = dir.join(format!("img.{}", c.name()));
        let f = File::create(&p).unwrap();
        match c {
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(f, 3).unwrap();
                e.write_all(data).unwrap();
                e.finish().unwrap();
            }
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap();
            }
            Compression::Xz => {
                let mut e = liblzma::write::XzEncoder::new(f, 1);
                e.write_all(data).unwrap();
                e.finish().unwrap();
            }
            Compression::None => std::fs::write(&p, data).unwrap(),
        }
        p
    }

    #[test]
    fn each_format_is_recognised_and_read_forward() {
        let dir = tempfile::tempdir().unwrap();
        let data = pattern(3 << 20);
        for c in [
            Compression::Zstd,
            Compression::Gzip,
            Compression::Xz,
            Compression::None,
        ] {
            let p = compressed(dir.path(), c, &data);
            assert_eq!(Compression::detect(&p).unwrap(), c);
            let mut s = StreamSource::open(&p, c).unwrap();
            let mut buf = vec![0u8; 1000];
            s.read_at(1 << 20, &mut buf).unwrap();
            assert_eq!(buf, data[1 << 20..(1 << 20) + 1000], "{c:?}");
            s.read_at(2 << 20, &mut buf).unwrap();
            assert_eq!(buf, data[2 << 20..(2 << 20) + 1000], "{c:?}");
            assert!(s.read_at(0, &mut buf).is_err(), "{c:?}: went backwards");
        }
    }

    #[test]
    fn truncated_streams_are_errors_never_short_images() {
        let dir = tempfile::tempdir().unwrap();
        // Incompressible, so cutting the file cuts the data.
        let mut x = 0x1234_5678u32;
        let data: Vec<u8> = (0..(2 << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for c in [Compression::Zstd, Compression::Gzip, Compression::Xz] {
            let p = compressed(dir.path(), c, &data);
            let len = std::fs::metadata(&p).unwrap().len();
            File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
            // Reading all of it as a stream (no map): an error, not a short image.
            let mut s = StreamSource::open(&p, c).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            let err = loop {
                match s.read_next(&mut buf) {
                    Ok(0) => panic!("{c:?}: a truncated stream ended cleanly"),
                    Ok(_) => {}
                    Err(e) => break e,
                }
            };
            assert!(
                format!("{err:#}").contains("decompressing"),
                "{c:?}: {err:#}"
            );
        }
    }

    #[test]
    fn a_plain_file_reads_only_what_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let p = compressed(dir.path(), Compression::None, &pattern(1 << 20));
        let mut s = FileSource::open(&p).unwrap();
        let mut buf = [0u8; 10];
        s.read_at(5000, &mut buf).unwrap();
        assert_eq!(s.bytes_read(), 10);
        let e = s.read_at((1 << 20) - 5, &mut buf).unwrap_err();
        assert!(e.downcast_ref::<SourceError>().is_some(), "{e:#}");
    }

    #[test]
    fn the_bmap_beside_is_found_for_compressed_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.img.bmap"), "x").unwrap();
        for n in ["a.img", "a.img.zst", "a.img.gz", "a.img.xz"] {
            assert_eq!(
                bmap_beside(&dir.path().join(n)),
                Some(dir.path().join("a.img.bmap")),
                "{n}"
            );
        }
        assert_eq!(bmap_beside(&dir.path().join("b.img")), None);
    }
}
