//! Android sparse images (AOSP `sparse_format.h`): what fastboot sends to a
//! phone's partition. A 28-byte file header, then chunks of 4096-byte blocks:
//! RAW (the blocks follow), FILL (one u32 repeated), DONT_CARE (left as it
//! is on the device) and CRC32.
//!
//! Written here rather than with a crate: the format is two small headers,
//! and the writer must follow our own hole-aware reading of the raw image
//! (`disk::sparse::data_regions`).
//!
//! Writing: the raw image's holes (`SEEK_DATA`/`SEEK_HOLE`) and its blocks
//! that repeat one u32 (zeros above all) become FILL chunks, the rest RAW.
//! Holes are *not* DONT_CARE: the filesystems inside were made on a sparse
//! file and may count on holes reading as zeros (mke2fs marks discarded
//! inode tables as zeroed), while DONT_CARE would leave the partition's old
//! bytes there. FILL costs 16 bytes in the file, the device writes the zeros.
//! This also makes the output the same whatever the filesystem reports as
//! holes (reproducible). DONT_CARE covers, in split pieces, the blocks other
//! pieces carry.
//!
//! Splitting (fastboot's `max-download-size`): like libsparse's resparse,
//! every piece is a complete sparse image of the whole size holding a run of
//! chunks, DONT_CARE before and after; a RAW chunk that does not fit is cut.
//! Flashed one after the other (or given together to `simg2img`) they make
//! the raw image.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use thiserror::Error;

use crate::disk::sparse::data_regions;

pub const MAGIC: u32 = 0xed26_ff3a;
pub const BLOCK: u32 = 4096;
const FILE_HDR: u16 = 28;
const CHUNK_HDR: u16 = 12;
pub const CHUNK_RAW: u16 = 0xcac1;
pub const CHUNK_FILL: u16 = 0xcac2;
pub const CHUNK_DONT_CARE: u16 = 0xcac3;
pub const CHUNK_CRC32: u16 = 0xcac4;
/// Largest RAW chunk written (bounds the reader's and the device's buffers).
const MAX_RAW_BLOCKS: u64 = (64 << 20) / BLOCK as u64;
/// The smallest piece size that holds one block: header, leading and
/// trailing DONT_CARE, one RAW chunk.
pub const MIN_PIECE: u64 = FILE_HDR as u64 + 3 * CHUNK_HDR as u64 + BLOCK as u64;

/// A run of blocks of the output, before splitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Raw,
    Fill(u32),
    DontCare,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    kind: Kind,
    /// First block.
    start: u64,
    blocks: u64,
}

impl Run {
    /// Bytes in the sparse file.
    fn cost(&self) -> u64 {
        CHUNK_HDR as u64
            + match self.kind {
                Kind::Raw => self.blocks * BLOCK as u64,
                Kind::Fill(_) => 4,
                Kind::DontCare => 0,
            }
    }
}

/// The value a block repeats, if it is one u32 over and over.
fn fill_value(block: &[u8]) -> Option<u32> {
    let first = [block[0], block[1], block[2], block[3]];
    block
        .chunks_exact(4)
        .all(|w| w == first)
        .then(|| u32::from_le_bytes(first))
}

/// Adds `blocks` blocks of `kind` at the end of `runs`, merging with the last run.
fn push(runs: &mut Vec<Run>, kind: Kind, start: u64, blocks: u64) {
    if let Some(last) = runs.last_mut() {
        let max = if kind == Kind::Raw {
            MAX_RAW_BLOCKS
        } else {
            u64::MAX
        };
        if last.kind == kind && last.start + last.blocks == start && last.blocks + blocks <= max {
            last.blocks += blocks;
            return;
        }
    }
    runs.push(Run {
        kind,
        start,
        blocks,
    });
}

/// The runs of the whole raw file: holes and repeated-u32 blocks as FILL, the rest RAW.
fn plan(f: &File, len: u64) -> Result<Vec<Run>> {
    let blk = BLOCK as u64;
    let mut runs = Vec::new();
    let mut pos = 0u64; // next block not yet planned
    let mut buf = vec![0u8; 256 * BLOCK as usize];
    for (start, end) in data_regions(f, len)? {
        let (first, last) = (start / blk, end.div_ceil(blk));
        if first > pos {
            push(&mut runs, Kind::Fill(0), pos, first - pos);
        }
        let mut b = first.max(pos);
        while b < last {
            let n = (last - b).min(256);
            let bytes = (n * blk) as usize;
            f.read_exact_at(&mut buf[..bytes], b * blk)
                .with_context(|| format!("reading block {b}"))?;
            for (i, block) in buf[..bytes].chunks_exact(BLOCK as usize).enumerate() {
                let kind = match fill_value(block) {
                    Some(v) => Kind::Fill(v),
                    None => Kind::Raw,
                };
                push(&mut runs, kind, b + i as u64, 1);
            }
            b += n;
        }
        pos = pos.max(last);
    }
    let total = len / blk;
    if total > pos {
        push(&mut runs, Kind::Fill(0), pos, total - pos);
    }
    Ok(runs)
}

/// Cuts the runs into pieces of at most `max` bytes each (as files), each
/// with its own DONT_CARE before and after added at write time.
fn split(runs: Vec<Run>, max: Option<u64>) -> Result<Vec<Vec<Run>>> {
    let Some(max) = max else {
        return Ok(vec![runs]);
    };
    if max < MIN_PIECE {
        bail!("a maximum piece size of {max} bytes cannot hold one block (at least {MIN_PIECE})");
    }
    // Header, and room for a leading and a trailing DONT_CARE.
    let budget = max - FILE_HDR as u64 - 2 * CHUNK_HDR as u64;
    let mut pieces: Vec<Vec<Run>> = vec![Vec::new()];
    let mut used = 0u64;
    let mut queue: std::collections::VecDeque<Run> = runs.into();
    while let Some(run) = queue.pop_front() {
        let piece = pieces.last_mut().expect("pieces is never empty");
        // A gap between this run and the previous one in the piece costs a DONT_CARE.
        let gap = match piece.last() {
            Some(p) if p.start + p.blocks != run.start => CHUNK_HDR as u64,
            _ => 0,
        };
        let left = budget.saturating_sub(used + gap);
        if run.cost() <= left {
            used += gap + run.cost();
            piece.push(run);
            continue;
        }
        let fits = if run.kind == Kind::Raw {
            left.saturating_sub(CHUNK_HDR as u64) / BLOCK as u64
        } else {
            0
        };
        if fits > 0 {
            piece.push(Run {
                blocks: fits,
                ..run
            });
            queue.push_front(Run {
                start: run.start + fits,
                blocks: run.blocks - fits,
                ..run
            });
        } else if piece.is_empty() {
            unreachable!("a run costs at most {MIN_PIECE} bytes when alone in a piece");
        } else {
            queue.push_front(run);
        }
        pieces.push(Vec::new());
        used = 0;
    }
    pieces.retain(|p| !p.is_empty());
    if pieces.is_empty() {
        pieces.push(Vec::new());
    }
    Ok(pieces)
}

/// The chunks of one piece: its runs with DONT_CARE for the blocks between
/// them and before and after, up to `total` blocks.
fn with_gaps(runs: &[Run], total: u64) -> Vec<Run> {
    let mut out = Vec::with_capacity(runs.len() + 2);
    let mut pos = 0;
    for r in runs {
        if r.start > pos {
            out.push(Run {
                kind: Kind::DontCare,
                start: pos,
                blocks: r.start - pos,
            });
        }
        out.push(*r);
        pos = r.start + r.blocks;
    }
    if total > pos {
        out.push(Run {
            kind: Kind::DontCare,
            start: pos,
            blocks: total - pos,
        });
    }
    out
}

fn write_piece(raw: &File, chunks: &[Run], total: u64, out: &Path) -> Result<()> {
    let tmp = tmp_name(out);
    let res = (|| -> Result<()> {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        let total32 = u32::try_from(total).context("the image has more than 2^32 blocks")?;
        let count = u32::try_from(chunks.len()).context("too many chunks")?;
        w.write_all(&MAGIC.to_le_bytes())?;
        w.write_all(&1u16.to_le_bytes())?;
        w.write_all(&0u16.to_le_bytes())?;
        w.write_all(&FILE_HDR.to_le_bytes())?;
        w.write_all(&CHUNK_HDR.to_le_bytes())?;
        w.write_all(&BLOCK.to_le_bytes())?;
        w.write_all(&total32.to_le_bytes())?;
        w.write_all(&count.to_le_bytes())?;
        w.write_all(&0u32.to_le_bytes())?;
        let mut buf = vec![0u8; 1 << 20];
        for c in chunks {
            let (ty, size) = match c.kind {
                Kind::Raw => (CHUNK_RAW, c.cost()),
                Kind::Fill(_) => (CHUNK_FILL, c.cost()),
                Kind::DontCare => (CHUNK_DONT_CARE, c.cost()),
            };
            let blocks = u32::try_from(c.blocks).context("chunk too large")?;
            let size = u32::try_from(size).context("chunk too large")?;
            w.write_all(&ty.to_le_bytes())?;
            w.write_all(&0u16.to_le_bytes())?;
            w.write_all(&blocks.to_le_bytes())?;
            w.write_all(&size.to_le_bytes())?;
            match c.kind {
                Kind::Raw => {
                    let mut off = c.start * BLOCK as u64;
                    let end = off + c.blocks * BLOCK as u64;
                    while off < end {
                        let n = (end - off).min(buf.len() as u64) as usize;
                        raw.read_exact_at(&mut buf[..n], off)
                            .context("reading the raw image (changed while being read?)")?;
                        w.write_all(&buf[..n])?;
                        off += n as u64;
                    }
                }
                Kind::Fill(v) => w.write_all(&v.to_le_bytes())?,
                Kind::DontCare => {}
            }
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("writing {}", out.display())));
    }
    std::fs::rename(&tmp, out).with_context(|| format!("renaming into {}", out.display()))
}

fn tmp_name(p: &Path) -> PathBuf {
    let mut name = p.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    p.with_file_name(name)
}

/// Where piece `i` of `n` goes: `out` itself when there is one piece, else
/// `out.0`, `out.1`, ... (`rootfs.img.0`).
pub fn piece_path(out: &Path, i: usize, n: usize) -> PathBuf {
    if n == 1 {
        out.to_path_buf()
    } else {
        let mut name = out.as_os_str().to_os_string();
        name.push(format!(".{i}"));
        PathBuf::from(name)
    }
}

/// Writes the raw image at `raw` as an Android sparse image at `out`, or,
/// when it would be larger than `max_chunk_bytes`, as pieces `out.0`,
/// `out.1`, ... each at most that large (see the module comment). The raw
/// image's size must be a multiple of 4096. Returns the files written.
pub fn write_sparse(raw: &Path, out: &Path, max_chunk_bytes: Option<u64>) -> Result<Vec<PathBuf>> {
    let ctx = || format!("making a sparse image of {}", raw.display());
    let f = File::open(raw).with_context(ctx)?;
    let len = f.metadata().with_context(ctx)?.len();
    if len % BLOCK as u64 != 0 {
        bail!(
            "{} is {len} bytes, not a multiple of the {BLOCK}-byte sparse block",
            raw.display()
        );
    }
    let total = len / BLOCK as u64;
    let runs = plan(&f, len).with_context(ctx)?;
    let pieces = split(runs, max_chunk_bytes).with_context(ctx)?;
    let n = pieces.len();
    let mut written = Vec::with_capacity(n);
    for (i, p) in pieces.iter().enumerate() {
        let path = piece_path(out, i, n);
        write_piece(&f, &with_gaps(p, total), total, &path)?;
        written.push(path);
    }
    Ok(written)
}

// ---------------------------------------------------------------------------
// Reading

/// Why a file is not a valid sparse image.
#[derive(Debug, Error)]
pub enum SparseError {
    #[error("not an Android sparse image (bad magic)")]
    Magic,
    #[error("the file ends inside {0}")]
    Truncated(String),
    #[error("sparse format version {0}.{1} is not 1.x")]
    Version(u16, u16),
    #[error("header: {0}")]
    Header(String),
    #[error("chunk {index} at byte {offset}: {what}")]
    Chunk {
        index: u32,
        offset: u64,
        what: String,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseHeader {
    pub major: u16,
    pub minor: u16,
    pub file_hdr_sz: u16,
    pub chunk_hdr_sz: u16,
    pub blk_sz: u32,
    pub total_blks: u32,
    pub total_chunks: u32,
    pub image_checksum: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkData {
    /// The blocks' bytes are at this offset of the sparse file.
    Raw {
        offset: u64,
    },
    Fill(u32),
    DontCare,
    Crc32(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// First output block.
    pub start: u64,
    pub blocks: u32,
    pub data: ChunkData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseImage {
    pub header: SparseHeader,
    pub chunks: Vec<Chunk>,
    /// Length of the sparse file.
    pub file_len: u64,
}

impl SparseImage {
    /// Size of the expanded image in bytes.
    pub fn raw_len(&self) -> u64 {
        u64::from(self.header.total_blks) * u64::from(self.header.blk_sz)
    }
}

/// Whether `bytes` begin with the sparse magic.
pub fn is_sparse(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && bytes[..4] == MAGIC.to_le_bytes()
}

fn read_exact_or(
    r: &mut impl Read,
    buf: &mut [u8],
    what: impl Fn() -> String,
) -> Result<(), SparseError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            SparseError::Truncated(what())
        } else {
            SparseError::Io(e)
        }
    })
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads and checks a sparse image's headers and chunk table (the RAW data
/// is skipped, not read): sizes consistent, chunks covering exactly the
/// image's blocks, everything inside the file.
pub fn parse(r: &mut (impl Read + Seek)) -> Result<SparseImage, SparseError> {
    let file_len = r.seek(SeekFrom::End(0))?;
    r.seek(SeekFrom::Start(0))?;
    let mut h = [0u8; FILE_HDR as usize];
    read_exact_or(r, &mut h, || "the file header".into())?;
    if le32(&h, 0) != MAGIC {
        return Err(SparseError::Magic);
    }
    let header = SparseHeader {
        major: le16(&h, 4),
        minor: le16(&h, 6),
        file_hdr_sz: le16(&h, 8),
        chunk_hdr_sz: le16(&h, 10),
        blk_sz: le32(&h, 12),
        total_blks: le32(&h, 16),
        total_chunks: le32(&h, 20),
        image_checksum: le32(&h, 24),
    };
    if header.major != 1 {
        return Err(SparseError::Version(header.major, header.minor));
    }
    if header.file_hdr_sz < FILE_HDR {
        return Err(SparseError::Header(format!(
            "file header size {} is below {FILE_HDR}",
            header.file_hdr_sz
        )));
    }
    if header.chunk_hdr_sz < CHUNK_HDR {
        return Err(SparseError::Header(format!(
            "chunk header size {} is below {CHUNK_HDR}",
            header.chunk_hdr_sz
        )));
    }
    if header.blk_sz == 0 || header.blk_sz % 4 != 0 {
        return Err(SparseError::Header(format!(
            "block size {} is not a positive multiple of 4",
            header.blk_sz
        )));
    }
    let blk = u64::from(header.blk_sz);
    let mut pos = u64::from(header.file_hdr_sz);
    let mut block = 0u64;
    let mut chunks = Vec::new();
    let chdr = u64::from(header.chunk_hdr_sz);
    for index in 0..header.total_chunks {
        let bad = |what: String| SparseError::Chunk {
            index,
            offset: pos,
            what,
        };
        if pos.checked_add(chdr).map_or(true, |e| e > file_len) {
            return Err(SparseError::Truncated(format!(
                "chunk {index}'s header at byte {pos} (the header counts {} chunks)",
                header.total_chunks
            )));
        }
        r.seek(SeekFrom::Start(pos))?;
        let mut c = [0u8; CHUNK_HDR as usize];
        read_exact_or(r, &mut c, || format!("chunk {index}'s header"))?;
        let (ty, blocks, total_sz) = (le16(&c, 0), le32(&c, 4), le32(&c, 8));
        let body = u64::from(total_sz)
            .checked_sub(chdr)
            .ok_or_else(|| bad(format!("total size {total_sz} is smaller than its header")))?;
        let data_at = pos + chdr;
        let want_body = match ty {
            CHUNK_RAW => u64::from(blocks) * blk,
            CHUNK_FILL | CHUNK_CRC32 => 4,
            CHUNK_DONT_CARE => 0,
            other => return Err(bad(format!("unknown chunk type {other:#06x}"))),
        };
        if body != want_body {
            return Err(bad(format!(
                "total size {total_sz} does not match {blocks} blocks of type {ty:#06x}"
            )));
        }
        let end = data_at
            .checked_add(body)
            .filter(|e| *e <= file_len)
            .ok_or_else(|| {
                SparseError::Truncated(format!("chunk {index}'s data at byte {data_at}"))
            })?;
        let mut word = [0u8; 4];
        let data = match ty {
            CHUNK_RAW => ChunkData::Raw { offset: data_at },
            CHUNK_FILL | CHUNK_CRC32 => {
                read_exact_or(r, &mut word, || format!("chunk {index}'s value"))?;
                let v = u32::from_le_bytes(word);
                if ty == CHUNK_FILL {
                    ChunkData::Fill(v)
                } else {
                    ChunkData::Crc32(v)
                }
            }
            _ => ChunkData::DontCare,
        };
        if ty == CHUNK_CRC32 && blocks != 0 {
            return Err(bad(format!("a CRC32 chunk covers {blocks} blocks, not 0")));
        }
        let next = block + u64::from(blocks);
        if next > u64::from(header.total_blks) {
            return Err(bad(format!(
                "reaches block {next}, past the image's {} blocks",
                header.total_blks
            )));
        }
        chunks.push(Chunk {
            start: block,
            blocks,
            data,
        });
        block = next;
        pos = end;
    }
    if block != u64::from(header.total_blks) {
        return Err(SparseError::Header(format!(
            "the chunks cover {block} blocks, the header says {}",
            header.total_blks
        )));
    }
    Ok(SparseImage {
        header,
        chunks,
        file_len,
    })
}

/// Parses the sparse image at `path`.
pub fn read_file(path: &Path) -> Result<SparseImage> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    parse(&mut f).with_context(|| path.display().to_string())
}

/// Expands sparse images into the raw file `out` (as `simg2img` does with
/// several inputs: each piece's DONT_CARE leaves what earlier ones wrote).
/// All pieces must describe the same size. Zero fills stay holes.
pub fn expand(pieces: &[PathBuf], out: &Path) -> Result<()> {
    if pieces.is_empty() {
        bail!("no sparse image to expand");
    }
    let tmp = tmp_name(out);
    let res = (|| -> Result<()> {
        let dst = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut size = None;
        for (i, p) in pieces.iter().enumerate() {
            let first = i == 0;
            let img = read_file(p)?;
            if *size.get_or_insert(img.raw_len()) != img.raw_len() {
                bail!(
                    "{} describes {} bytes, the first piece {}",
                    p.display(),
                    img.raw_len(),
                    size.unwrap_or(0)
                );
            }
            dst.set_len(img.raw_len())?;
            let src = File::open(p)?;
            let blk = u64::from(img.header.blk_sz);
            let mut buf = vec![0u8; 1 << 20];
            for c in &img.chunks {
                let at = c.start * blk;
                let len = u64::from(c.blocks) * blk;
                match c.data {
                    ChunkData::Raw { offset } => {
                        let mut done = 0u64;
                        while done < len {
                            let n = (len - done).min(buf.len() as u64) as usize;
                            src.read_exact_at(&mut buf[..n], offset + done)
                                .with_context(|| format!("reading {}", p.display()))?;
                            dst.write_all_at(&buf[..n], at + done)?;
                            done += n as u64;
                        }
                    }
                    ChunkData::Fill(v) => {
                        let pat: Vec<u8> = v.to_le_bytes().repeat(buf.len() / 4);
                        let mut done = 0u64;
                        while done < len {
                            let n = (len - done).min(pat.len() as u64) as usize;
                            // The new file reads as zeros until a piece writes there.
                            if v != 0 || !first {
                                dst.write_all_at(&pat[..n], at + done)?;
                            }
                            done += n as u64;
                        }
                    }
                    ChunkData::DontCare | ChunkData::Crc32(_) => {}
                }
            }
        }
        dst.sync_all()?;
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("expanding into {}", out.display())));
    }
    std::fs::rename(&tmp, out).with_context(|| format!("renaming into {}", out.display()))
}
