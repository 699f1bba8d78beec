//! Block maps (`.bmap`, bmaptool's XML format 2.0): which 4 KiB blocks of a
//! disk image hold data, with the SHA-256 of each mapped range.
//!
//! `build` writes one beside each disk image. Hashing only the mapped ranges
//! makes the image's checksum cost proportional to its payload, not to
//! `--size` (a 64 GiB image is mostly holes), and `bmaptool copy` and
//! `nodeimg flash` write and verify only those blocks.
//!
//! The mapped ranges are the data regions of the finished, sparse image
//! (`SEEK_DATA`/`SEEK_HOLE`) together with the regions the builder names as
//! meaningful even where they read as zeros (tables, the system image, the FAT
//! metadata), rounded out to whole blocks.
//!
//! Written and read here rather than through a crate: no Rust crate writes
//! the format; XML is parsed with `roxmltree`, and what it holds (counts,
//! ranges inside the image, in order, not overlapping, the file's own
//! checksum) is checked before anything trusts it.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::sparse;

/// The block size of the maps we write (bmaptool's default).
pub const BLOCK_SIZE: u64 = 4096;
/// Length of a hex SHA-256.
const HEX_LEN: usize = 64;
/// Refuse larger `.bmap` files: ours are a few KiB; a crafted one must not
/// make us allocate without bound.
pub const MAX_BMAP_BYTES: u64 = 64 << 20;

/// A block map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    pub image_size: u64,
    pub block_size: u64,
    /// Sorted, not overlapping, inside the image.
    pub ranges: Vec<Range>,
}

/// Bytes `[start, end)` of an image whose SHA-256 the caller knows.
#[derive(Debug, Clone)]
pub struct Known {
    pub start: u64,
    pub end: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// Blocks `first..=last` of the image, and their SHA-256 when the map has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub first: u64,
    pub last: u64,
    pub sha256: Option<String>,
}

#[derive(Debug, Error)]
pub enum BmapError {
    #[error("not a bmap file: {0}")]
    Xml(String),
    #[error("bmap: {0}")]
    Invalid(String),
    #[error("bmap: the file's own checksum does not match (damaged or edited)")]
    SelfChecksum,
}

fn invalid(msg: impl Into<String>) -> BmapError {
    BmapError::Invalid(msg.into())
}

impl Bmap {
    /// The blocks in the image (the last one may be partial).
    pub fn blocks_count(&self) -> u64 {
        self.image_size.div_ceil(self.block_size)
    }

    pub fn mapped_blocks(&self) -> u64 {
        self.ranges.iter().map(|r| r.last - r.first + 1).sum()
    }

    /// The bytes `[start, end)` of range `r`, clipped to the image's end.
    pub fn span(&self, r: &Range) -> (u64, u64) {
        // Checked when made or parsed: (last + 1) * block_size does not overflow.
        let start = r.first * self.block_size;
        let end = ((r.last + 1) * self.block_size).min(self.image_size);
        (start, end)
    }

    /// The bytes the map says to write.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| {
                let (s, e) = self.span(r);
                e - s
            })
            .sum()
    }

    /// The map of the image file at `image`: its data regions and the
    /// regions in `meaningful` (byte ranges `[start, end)`), rounded out to
    /// whole blocks, merged, and hashed from the image.
    pub fn create(image: &Path, meaningful: &[(u64, u64)]) -> Result<Bmap> {
        Bmap::create_with_known(image, meaningful, &[])
    }

    /// [`Bmap::create`], with regions whose bytes the caller knows: each is a
    /// range of its own with the given SHA-256, not read again (a system
    /// image copied from the cache, whose digest the cache has checked). A
    /// known region that does not lie on whole blocks inside the image is
    /// mapped and hashed like a meaningful one.
    pub fn create_with_known(
        image: &Path,
        meaningful: &[(u64, u64)],
        known: &[Known],
    ) -> Result<Bmap> {
        let ctx = || format!("mapping the blocks of {}", image.display());
        let f = File::open(image).with_context(ctx)?;
        let image_size = f.metadata().with_context(ctx)?.len();
        let mut regions = sparse::data_regions(&f, image_size).with_context(ctx)?;
        regions.extend(
            meaningful
                .iter()
                .map(|&(s, e)| (s.min(image_size), e.min(image_size))),
        );
        let (whole, partial): (Vec<&Known>, Vec<&Known>) = known.iter().partition(|k| {
            k.start % BLOCK_SIZE == 0
                && k.end % BLOCK_SIZE == 0
                && k.start < k.end
                && k.end <= image_size
        });
        regions.extend(
            partial
                .iter()
                .map(|k| (k.start.min(image_size), k.end.min(image_size))),
        );
        let mut blocks = merge_blocks(&mut regions, BLOCK_SIZE);
        let known_blocks: Vec<(u64, u64, &str)> = whole
            .iter()
            .map(|k| {
                (
                    k.start / BLOCK_SIZE,
                    k.end / BLOCK_SIZE - 1,
                    k.sha256.as_str(),
                )
            })
            .collect();
        for &(kf, kl, _) in &known_blocks {
            blocks = cut_out(&blocks, kf, kl);
        }
        let mut ranges = Vec::with_capacity(blocks.len() + known_blocks.len());
        for (first, last) in blocks {
            let start = first * BLOCK_SIZE;
            let end = ((last + 1) * BLOCK_SIZE).min(image_size);
            let mut h = Sha256::new();
            sparse::hash_range(&mut h, &f, start, end).with_context(ctx)?;
            ranges.push(Range {
                first,
                last,
                sha256: Some(hex::encode(h.finalize())),
            });
        }
        for (first, last, sha256) in known_blocks {
            ranges.push(Range {
                first,
                last,
                sha256: Some(sha256.to_string()),
            });
        }
        ranges.sort_by_key(|r| r.first);
        if ranges.windows(2).any(|w| w[0].last >= w[1].first) {
            anyhow::bail!("{}: the known regions overlap", ctx());
        }
        Ok(Bmap {
            image_size,
            block_size: BLOCK_SIZE,
            ranges,
        })
    }

    /// The map as bmaptool's XML (format 2.0, SHA-256), its own checksum
    /// filled in as the format says: computed with the field all zeros.
    pub fn to_xml(&self) -> String {
        let zeros = "0".repeat(HEX_LEN);
        let text = self.xml_with_checksum(&zeros);
        let sum = hex::encode(Sha256::digest(text.as_bytes()));
        self.xml_with_checksum(&sum)
    }

    fn xml_with_checksum(&self, sum: &str) -> String {
        let mut x = String::new();
        x.push_str("<?xml version=\"1.0\" ?>\n");
        x.push_str(
            "<!-- Block map written by nodeimg (bmaptool's format): the blocks of the\n     \
             image that hold data. Only they need to be written; the others may hold\n     \
             anything. Each range carries the SHA-256 of its bytes. -->\n",
        );
        x.push_str("<bmap version=\"2.0\">\n");
        x.push_str(&format!(
            "    <ImageSize> {} </ImageSize>\n",
            self.image_size
        ));
        x.push_str(&format!(
            "    <BlockSize> {} </BlockSize>\n",
            self.block_size
        ));
        x.push_str(&format!(
            "    <BlocksCount> {} </BlocksCount>\n",
            self.blocks_count()
        ));
        x.push_str(&format!(
            "    <MappedBlocksCount> {} </MappedBlocksCount>\n",
            self.mapped_blocks()
        ));
        x.push_str("    <ChecksumType> sha256 </ChecksumType>\n");
        x.push_str(&format!(
            "    <BmapFileChecksum> {sum} </BmapFileChecksum>\n"
        ));
        x.push_str("    <BlockMap>\n");
        for r in &self.ranges {
            let chksum = r
                .sha256
                .as_deref()
                .map(|s| format!(" chksum=\"{s}\""))
                .unwrap_or_default();
            x.push_str(&format!(
                "        <Range{chksum}> {}-{} </Range>\n",
                r.first, r.last
            ));
        }
        x.push_str("    </BlockMap>\n</bmap>\n");
        x
    }

    /// Reads and checks a `.bmap` file.
    pub fn read(path: &Path) -> Result<Bmap> {
        let ctx = || format!("reading {}", path.display());
        let len = std::fs::metadata(path).with_context(ctx)?.len();
        if len > MAX_BMAP_BYTES {
            anyhow::bail!(
                "{}: {len} bytes, more than a bmap file can be ({MAX_BMAP_BYTES})",
                path.display()
            );
        }
        let bytes = std::fs::read(path).with_context(ctx)?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| BmapError::Xml("not UTF-8 text".into()))
            .with_context(|| path.display().to_string())?;
        Bmap::parse(text).with_context(|| path.display().to_string())
    }

    /// Parses and checks a bmap (format 1.4 or 2.x; SHA-256 range checksums
    /// when it has any; its own checksum when it has one).
    pub fn parse(text: &str) -> Result<Bmap, BmapError> {
        let doc = roxmltree::Document::parse(text).map_err(|e| BmapError::Xml(e.to_string()))?;
        let root = doc.root_element();
        if root.tag_name().name() != "bmap" {
            return Err(BmapError::Xml(format!(
                "the root element is <{}>, not <bmap>",
                root.tag_name().name()
            )));
        }
        let version = root.attribute("version").unwrap_or("");
        if !(version.starts_with("2.") || version == "1.4") {
            return Err(invalid(format!(
                "format version {version:?} (this reads 2.x)"
            )));
        }
        let field = |name: &str| -> Result<&str, BmapError> {
            root.children()
                .find(|n| n.has_tag_name(name))
                .and_then(|n| n.text())
                .map(str::trim)
                .ok_or_else(|| invalid(format!("no <{name}>")))
        };
        let number = |name: &str| -> Result<u64, BmapError> {
            let t = field(name)?;
            t.parse::<u64>()
                .map_err(|_| invalid(format!("<{name}> is {t:?}, not a number")))
        };
        let image_size = number("ImageSize")?;
        // Far beyond any medium (1 EiB), and keeps block arithmetic from overflowing.
        if image_size > 1 << 60 {
            return Err(invalid(format!("image size {image_size}")));
        }
        let block_size = number("BlockSize")?;
        if block_size == 0 || block_size % 512 != 0 || block_size > (1 << 20) {
            return Err(invalid(format!("block size {block_size}")));
        }
        let bmap = Bmap {
            image_size,
            block_size,
            ranges: Vec::new(),
        };
        let blocks = bmap.blocks_count();
        if number("BlocksCount")? != blocks {
            return Err(invalid(format!(
                "<BlocksCount> does not match {image_size} bytes in blocks of {block_size}"
            )));
        }
        let cs_type = field("ChecksumType")?;
        if cs_type != "sha256" {
            return Err(invalid(format!(
                "checksum type {cs_type:?} (this reads sha256)"
            )));
        }
        let self_sum = field("BmapFileChecksum")?;
        check_self_checksum(text, self_sum)?;

        let map = root
            .children()
            .find(|n| n.has_tag_name("BlockMap"))
            .ok_or_else(|| invalid("no <BlockMap>"))?;
        let mut ranges = Vec::new();
        let mut next_free = 0u64;
        for n in map.children().filter(|n| n.has_tag_name("Range")) {
            let t = n.text().unwrap_or("").trim();
            let parse = |s: &str| {
                s.trim()
                    .parse::<u64>()
                    .map_err(|_| invalid(format!("range {t:?}")))
            };
            let (first, last) = match t.split_once('-') {
                Some((a, b)) => (parse(a)?, parse(b)?),
                None => (parse(t)?, parse(t)?),
            };
            if first > last || last >= blocks {
                return Err(invalid(format!(
                    "range {t:?} outside the image's {blocks} blocks"
                )));
            }
            if first < next_free {
                return Err(invalid(format!(
                    "range {t:?} overlaps or precedes the one before"
                )));
            }
            next_free = last + 1;
            let sha256 = match n.attribute("chksum") {
                Some(s) if is_hex_sha256(s) => Some(s.to_string()),
                Some(s) => return Err(invalid(format!("range {t:?}: checksum {s:?}"))),
                None => None,
            };
            ranges.push(Range {
                first,
                last,
                sha256,
            });
        }
        let bmap = Bmap { ranges, ..bmap };
        if number("MappedBlocksCount")? != bmap.mapped_blocks() {
            return Err(invalid("<MappedBlocksCount> is not the sum of the ranges"));
        }
        Ok(bmap)
    }

    /// Compares each range's checksum with the bytes of the image at
    /// `image`; returns the ranges that differ (empty: the image matches).
    /// The image must be exactly `image_size` bytes.
    pub fn verify_image(&self, image: &Path) -> Result<Vec<Range>> {
        let ctx = || format!("checking {} against its bmap", image.display());
        let f = File::open(image).with_context(ctx)?;
        let len = f.metadata().with_context(ctx)?.len();
        if len != self.image_size {
            anyhow::bail!(
                "{}: {len} bytes, but its bmap says {}",
                image.display(),
                self.image_size
            );
        }
        let mut bad = Vec::new();
        for r in &self.ranges {
            let Some(want) = &r.sha256 else { continue };
            let (s, e) = self.span(r);
            let mut h = Sha256::new();
            sparse::hash_range(&mut h, &f, s, e).with_context(ctx)?;
            if &hex::encode(h.finalize()) != want {
                bad.push(r.clone());
            }
        }
        Ok(bad)
    }
}

fn is_hex_sha256(s: &str) -> bool {
    s.len() == HEX_LEN && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The file's checksum is that of the file with the checksum's digits
/// replaced by zeros (the digits inside `<BmapFileChecksum>`).
fn check_self_checksum(text: &str, sum: &str) -> Result<(), BmapError> {
    if !is_hex_sha256(sum) {
        return Err(invalid(format!("<BmapFileChecksum> is {sum:?}")));
    }
    let tag = "<BmapFileChecksum>";
    let at = text
        .find(tag)
        .and_then(|t| text[t..].find(sum).map(|i| t + i))
        .ok_or_else(|| invalid("<BmapFileChecksum> not found"))?;
    let mut h = Sha256::new();
    h.update(&text.as_bytes()[..at]);
    h.update("0".repeat(HEX_LEN).as_bytes());
    h.update(&text.as_bytes()[at + HEX_LEN..]);
    if !hex::encode(h.finalize()).eq_ignore_ascii_case(sum) {
        return Err(BmapError::SelfChecksum);
    }
    Ok(())
}

/// `blocks` (sorted, inclusive block ranges) without blocks `first..=last`.
fn cut_out(blocks: &[(u64, u64)], first: u64, last: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(blocks.len() + 1);
    for &(f, l) in blocks {
        if l < first || f > last {
            out.push((f, l));
            continue;
        }
        if f < first {
            out.push((f, first - 1));
        }
        if l > last {
            out.push((last + 1, l));
        }
    }
    out
}

/// Byte regions `[start, end)` rounded out to blocks of `bs`, sorted and
/// merged: inclusive (first, last) block numbers. Empty regions are dropped.
fn merge_blocks(regions: &mut [(u64, u64)], bs: u64) -> Vec<(u64, u64)> {
    regions.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(s, e) in regions.iter() {
        if e <= s {
            continue;
        }
        let (first, last) = (s / bs, (e - 1) / bs);
        match out.last_mut() {
            Some(prev) if first <= prev.1 + 1 => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::process::Command;

    fn sparse_image(dir: &Path) -> std::path::PathBuf {
        let p = dir.join("img");
        let f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[0x55; 512], 0).unwrap();
        f.write_all_at(&[0xaa; 10_000], 5 << 20).unwrap();
        f.write_all_at(b"end", (64 << 20) - 3).unwrap();
        p
    }

    #[test]
    fn merging_rounds_out_to_blocks_and_joins_neighbours() {
        let mut r = vec![(8192, 8193), (0, 1), (4095, 4097), (20000, 20000)];
        assert_eq!(merge_blocks(&mut r, 4096), vec![(0, 2)]);
        let mut r = vec![(0, 4096), (12288, 12289)];
        assert_eq!(merge_blocks(&mut r, 4096), vec![(0, 0), (3, 3)]);
    }

    #[test]
    fn maps_the_data_and_the_named_regions_with_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let img = sparse_image(dir.path());
        // A region that reads as zeros but matters (e.g. a FAT's free entries).
        let b = Bmap::create(&img, &[(1 << 20, (1 << 20) + 100)]).unwrap();
        let bytes = std::fs::read(&img).unwrap();
        let spans: Vec<_> = b.ranges.iter().map(|r| b.span(r)).collect();
        assert!(spans.iter().any(|&(s, e)| s <= 1 << 20 && e > 1 << 20));
        for (s, e) in [
            (0u64, 512u64),
            (5 << 20, (5 << 20) + 10_000),
            ((64 << 20) - 3, 64 << 20),
        ] {
            assert!(
                spans.iter().any(|&(a, z)| a <= s && e <= z),
                "{s}..{e} not mapped: {spans:?}"
            );
        }
        for (r, &(s, e)) in b.ranges.iter().zip(&spans) {
            let want = hex::encode(Sha256::digest(&bytes[s as usize..e as usize]));
            assert_eq!(r.sha256.as_deref(), Some(want.as_str()));
        }
        // Most of the 64 MiB is not mapped.
        assert!(b.mapped_bytes() < 8 << 20, "{}", b.mapped_bytes());
        assert!(b.verify_image(&img).unwrap().is_empty());
        File::options()
            .write(true)
            .open(&img)
            .unwrap()
            .write_all_at(b"X", (5 << 20) + 7)
            .unwrap();
        assert_eq!(b.verify_image(&img).unwrap().len(), 1);
    }

    /// A known region is a range of its own, split out of the data around
    /// it, carrying the caller's digest unread; one off the block grid is
    /// hashed like any other.
    #[test]
    fn known_regions_are_ranges_of_their_own_with_the_given_digest() {
        let dir = tempfile::tempdir().unwrap();
        let img = sparse_image(dir.path());
        // Data from 5 MiB - 8 KiB to 5 MiB + 10,000, across the known region.
        let f = File::options().write(true).open(&img).unwrap();
        f.write_all_at(&[0x11; 8192], (5 << 20) - 8192).unwrap();
        let bytes = std::fs::read(&img).unwrap();
        let (ks, ke) = (5u64 << 20, (5 << 20) + 8192);
        let real = hex::encode(Sha256::digest(&bytes[ks as usize..ke as usize]));
        let known = Known {
            start: ks,
            end: ke,
            sha256: real.clone(),
        };
        let b = Bmap::create_with_known(&img, &[], &[known]).unwrap();
        let spans: Vec<_> = b.ranges.iter().map(|r| b.span(r)).collect();
        assert!(spans.contains(&((5 << 20) - 8192, 5 << 20)), "{spans:?}");
        assert!(spans.contains(&(ks, ke)), "{spans:?}");
        assert!(spans.contains(&(ke, (5 << 20) + 12_288)), "{spans:?}");
        assert_eq!(b, Bmap::parse(&b.to_xml()).unwrap());
        assert!(b.verify_image(&img).unwrap().is_empty());
        // The given digest is used as it is: a wrong one shows on verification.
        let lie = Known {
            start: ks,
            end: ke,
            sha256: "ab".repeat(32),
        };
        let b = Bmap::create_with_known(&img, &[], &[lie]).unwrap();
        let r = b.ranges.iter().find(|r| b.span(r) == (ks, ke)).unwrap();
        assert_eq!(r.sha256.as_deref(), Some("ab".repeat(32).as_str()));
        assert_eq!(b.verify_image(&img).unwrap().len(), 1);
        // Off the block grid: mapped and hashed from the image.
        let odd = Known {
            start: ks + 1,
            end: ke,
            sha256: "ab".repeat(32),
        };
        let b = Bmap::create_with_known(&img, &[], &[odd]).unwrap();
        assert!(b.verify_image(&img).unwrap().is_empty());
        assert_eq!(b, Bmap::create(&img, &[(ks + 1, ke)]).unwrap());
    }

    #[test]
    fn xml_round_trips_and_its_own_checksum_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let b = Bmap::create(&sparse_image(dir.path()), &[]).unwrap();
        let xml = b.to_xml();
        assert_eq!(Bmap::parse(&xml).unwrap(), b);
        // One digit of a range changed: the file's checksum catches it.
        let edited = xml.replacen("<Range chksum", "<Range  chksum", 1);
        assert!(matches!(Bmap::parse(&edited), Err(BmapError::SelfChecksum)));
    }

    #[test]
    fn hostile_maps_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let b = Bmap::create(&sparse_image(dir.path()), &[]).unwrap();
        let good = b.to_xml();
        let resum = |x: String| {
            // Recompute the self checksum so the content checks are reached.
            let at = x.find("<BmapFileChecksum> ").unwrap() + 19;
            let mut z = x.clone();
            z.replace_range(at..at + 64, &"0".repeat(64));
            let s = hex::encode(Sha256::digest(z.as_bytes()));
            z.replace_range(at..at + 64, &s);
            z
        };
        let last = b.blocks_count();
        for bad in [
            good.replace("<BlockSize> 4096", "<BlockSize> 0"),
            good.replace("> 0-", &format!("> {}-", last + 5)),
            good.replace(&format!("<BlocksCount> {last}"), "<BlocksCount> 3"),
            good.replace("sha256 </ChecksumType>", "md5 </ChecksumType>"),
            good.replace("<MappedBlocksCount> ", "<MappedBlocksCount> 9"),
            good.replace(
                "    </BlockMap>",
                "        <Range> 0-18446744073709551615 </Range>\n    </BlockMap>",
            ),
        ] {
            assert!(Bmap::parse(&resum(bad.clone())).is_err(), "{bad}");
        }
        // Consistent but huge: the last block's end would overflow a u64.
        let huge = u64::MAX - 10;
        let last = huge.div_ceil(4096) - 1;
        let b = Bmap {
            image_size: huge,
            block_size: 4096,
            ranges: vec![Range {
                first: last,
                last,
                sha256: None,
            }],
        };
        assert!(Bmap::parse(&b.to_xml()).is_err());
        for junk in ["", "<bmap", "<x/>", "<bmap version=\"2.0\"/>"] {
            assert!(Bmap::parse(junk).is_err());
        }
    }

    /// Mutated valid maps (bytes changed, the file's own checksum then
    /// recomputed so the deeper checks are reached): an error or a map whose
    /// ranges lie in the image, never a panic.
    #[test]
    fn mutated_maps_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let xml = Bmap::create(&sparse_image(dir.path()), &[])
            .unwrap()
            .to_xml();
        let cases: u64 = std::env::var("NODEIMG_FUZZ_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2000);
        let mut x = 0x853c_49e6_748f_ea9bu64;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"0123456789- <>/=\"aZ";
        for _ in 0..cases {
            let mut b = xml.clone().into_bytes();
            for _ in 0..(1 + rand() % 4) {
                let at = (rand() % b.len() as u64) as usize;
                b[at] = alphabet[(rand() % alphabet.len() as u64) as usize];
            }
            let Ok(text) = String::from_utf8(b) else {
                continue;
            };
            let text = match text.find("<BmapFileChecksum> ") {
                Some(t) if text.len() >= t + 19 + 64 && text.is_char_boundary(t + 19 + 64) => {
                    let mut z = text.clone();
                    z.replace_range(t + 19..t + 19 + 64, &"0".repeat(64));
                    let sum = hex::encode(Sha256::digest(z.as_bytes()));
                    z.replace_range(t + 19..t + 19 + 64, &sum);
                    z
                }
                _ => text,
            };
            if let Ok(m) = Bmap::parse(&text) {
                for r in &m.ranges {
                    let (s, e) = m.span(r);
                    assert!(s < e && e <= m.image_size, "{text}");
                }
            }
        }
    }

    /// bmaptool, the format's own tool, accepts the map and copies the
    /// image byte for byte (its checksums of every range verified).
    #[test]
    fn bmaptool_copies_with_our_map() {
        let dir = tempfile::tempdir().unwrap();
        let img = sparse_image(dir.path());
        let map = dir.path().join("img.bmap");
        std::fs::write(&map, Bmap::create(&img, &[]).unwrap().to_xml()).unwrap();
        let dest = dir.path().join("copy");
        let out = Command::new("bmaptool")
            .arg("copy")
            .arg("--bmap")
            .arg(&map)
            .arg(&img)
            .arg(&dest)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&img).unwrap());
    }
}
