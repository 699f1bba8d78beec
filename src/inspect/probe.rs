//! What filesystem a partition holds, from its first bytes: FAT (BPB),
//! ext4 (superblock) or squashfs (superblock): type, label, UUID, size, use.
//!
//! Hand-written: a few fixed offsets per format, checked arithmetic and
//! bounds; the crates that read these formats want a whole filesystem
//! (fatfs) or exist only for one of them. The bytes are untrusted: every
//! problem is a one-line error, never a panic.

use anyhow::{bail, Result};
use serde::Serialize;

/// How many bytes of a partition [`probe`] needs (ext4's superblock ends at 2 KiB).
pub const HEAD: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FsInfo {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub label: Option<String>,
    pub uuid: Option<String>,
    /// Bytes the filesystem spans.
    pub size: u64,
    /// Bytes in use (ext4: blocks not free; squashfs: all of it). `None`
    /// when the superblock does not say (FAT: see the caller).
    pub used: Option<u64>,
}

fn u16_at(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}
fn u32_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn text(b: &[u8]) -> Option<String> {
    let s: String = String::from_utf8_lossy(b)
        .trim_end_matches(['\0', ' '])
        .to_string();
    (!s.is_empty()).then_some(s)
}

/// The filesystem at the start of `head` (at least [`HEAD`] bytes unless
/// the partition is shorter), or `None` when none of ours is recognised.
/// `partition_size` bounds what the superblock may claim.
pub fn probe(head: &[u8], partition_size: u64) -> Result<Option<FsInfo>> {
    if head.len() >= 4 && &head[..4] == b"hsqs" {
        return squashfs(head, partition_size).map(Some);
    }
    if head.len() >= 2048 && u16_at(head, 1024 + 56) == 0xEF53 {
        return ext4(head, partition_size).map(Some);
    }
    if head.len() >= 512 && head[510] == 0x55 && head[511] == 0xaa {
        if let Ok(g) = FatGeometry::parse(head) {
            return g.info(head, partition_size).map(Some);
        }
    }
    Ok(None)
}

fn squashfs(b: &[u8], part: u64) -> Result<FsInfo> {
    if b.len() < 96 {
        bail!("squashfs superblock: {} bytes, need 96", b.len());
    }
    let major = u16_at(b, 28);
    if major != 4 {
        bail!("squashfs superblock: version {major}, not 4");
    }
    let used = u64_at(b, 40);
    if used > part {
        bail!("squashfs superblock: {used} bytes used, more than the {part}-byte partition");
    }
    Ok(FsInfo {
        kind: "squashfs",
        label: None,
        uuid: None,
        size: used,
        used: Some(used),
    })
}

fn ext4(b: &[u8], part: u64) -> Result<FsInfo> {
    let s = &b[1024..2048];
    let log = u32_at(s, 24);
    if log > 6 {
        bail!("ext4 superblock: block size 2^{} is too large", 10 + log);
    }
    let bs = 1024u64 << log;
    let incompat = u32_at(s, 0x60);
    let wide = incompat & 0x80 != 0;
    let hi = |at| if wide { u32_at(s, at) << 32 } else { 0 };
    let blocks = u32_at(s, 4) | hi(0x150);
    let free = u32_at(s, 12) | hi(0x158);
    let size = blocks
        .checked_mul(bs)
        .filter(|&n| n <= part)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "ext4 superblock: {blocks} blocks of {bs} bytes exceed the {part}-byte partition"
            )
        })?;
    if free > blocks {
        bail!("ext4 superblock: {free} free blocks of {blocks}");
    }
    let u = &s[0x68..0x78];
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        hex::encode(&u[0..4]),
        hex::encode(&u[4..6]),
        hex::encode(&u[6..8]),
        hex::encode(&u[8..10]),
        hex::encode(&u[10..16])
    );
    Ok(FsInfo {
        kind: "ext4",
        label: text(&s[0x78..0x88]),
        uuid: Some(uuid),
        size,
        used: Some((blocks - free) * bs),
    })
}

/// The layout of a FAT filesystem from its boot sector (BPB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatGeometry {
    pub bytes_per_sector: u64,
    pub sectors_per_cluster: u64,
    pub reserved_sectors: u64,
    pub fats: u64,
    pub fat_sectors: u64,
    pub root_entries: u64,
    pub total_sectors: u64,
    pub fat32: bool,
}

impl FatGeometry {
    pub fn parse(b: &[u8]) -> Result<FatGeometry> {
        if b.len() < 512 {
            bail!("FAT boot sector: {} bytes, need 512", b.len());
        }
        let bps = u16_at(b, 11);
        let spc = u64::from(b[13]);
        let g = FatGeometry {
            bytes_per_sector: bps,
            sectors_per_cluster: spc,
            reserved_sectors: u16_at(b, 14),
            fats: u64::from(b[16]),
            root_entries: u16_at(b, 17),
            fat32: u16_at(b, 22) == 0,
            fat_sectors: match u16_at(b, 22) {
                0 => u32_at(b, 36),
                n => n,
            },
            total_sectors: match u16_at(b, 19) {
                0 => u32_at(b, 32),
                n => n,
            },
        };
        if !matches!(bps, 512 | 1024 | 2048 | 4096) {
            bail!("FAT boot sector: {bps} bytes per sector");
        }
        if spc == 0 || !spc.is_power_of_two() {
            bail!("FAT boot sector: {spc} sectors per cluster");
        }
        if g.reserved_sectors == 0 || !(1..=2).contains(&g.fats) || g.fat_sectors == 0 {
            bail!("FAT boot sector: no reserved sectors, FATs or FAT size");
        }
        if g.metadata_sectors() >= g.total_sectors {
            bail!("FAT boot sector: the FATs fill the whole filesystem");
        }
        Ok(g)
    }

    /// Sectors before the data clusters: reserved, FATs, FAT12/16 root directory.
    fn metadata_sectors(&self) -> u64 {
        // At most 2^16 + 2 * 2^32 + 2^16 * 32 / 512: cannot overflow a u64.
        self.reserved_sectors
            + self.fats * self.fat_sectors
            + (self.root_entries * 32).div_ceil(self.bytes_per_sector)
    }

    /// Bytes from the start of the filesystem to its first data cluster:
    /// what must be written even where it reads as zeros (the FATs' free
    /// entries).
    pub fn metadata_bytes(&self) -> u64 {
        self.metadata_sectors() * self.bytes_per_sector
    }

    pub fn size(&self) -> u64 {
        self.total_sectors * self.bytes_per_sector
    }

    pub fn cluster_bytes(&self) -> u64 {
        self.sectors_per_cluster * self.bytes_per_sector
    }

    fn info(&self, b: &[u8], part: u64) -> Result<FsInfo> {
        let size = self.size();
        if size > part {
            bail!("FAT boot sector: {size} bytes, more than the {part}-byte partition");
        }
        // The extended BPB (boot signature 0x29, volume id, label) follows the FAT32 fields on FAT32.
        let ext = if self.fat32 { 66 } else { 38 };
        let (uuid, label) = if b[ext] == 0x29 {
            let id = u32_at(b, ext + 1);
            (
                Some(format!("{:04X}-{:04X}", id >> 16, id & 0xffff)),
                text(&b[ext + 5..ext + 16]).filter(|l| l != "NO NAME"),
            )
        } else {
            (None, None)
        };
        Ok(FsInfo {
            kind: "vfat",
            label,
            uuid,
            size,
            used: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn made_by(cmd: &mut Command, path: &std::path::Path, len: u64) -> Vec<u8> {
        std::fs::File::create(path).unwrap().set_len(len).unwrap();
        let out = cmd.arg(path).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(path).unwrap()
    }

    #[test]
    fn reads_what_mkfs_vfat_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fat");
        let b = made_by(
            Command::new("mkfs.vfat").args(["-F", "32", "-n", "BOOTY", "-i", "12345678"]),
            &p,
            64 << 20,
        );
        let fs = probe(&b[..HEAD], 64 << 20).unwrap().unwrap();
        assert_eq!(fs.kind, "vfat");
        assert_eq!(fs.label.as_deref(), Some("BOOTY"));
        assert_eq!(fs.uuid.as_deref(), Some("1234-5678"));
        assert_eq!(fs.size, 64 << 20);
        let g = FatGeometry::parse(&b).unwrap();
        // The first data cluster is the root directory's (cluster 2): after the metadata.
        assert!(g.metadata_bytes() > 32 * 512 && g.metadata_bytes() < 2 << 20);
    }

    #[test]
    fn reads_what_mke2fs_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ext4");
        let b = made_by(
            Command::new("mke2fs").args([
                "-q",
                "-F",
                "-t",
                "ext4",
                "-L",
                "datalabel",
                "-U",
                "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
            ]),
            &p,
            32 << 20,
        );
        let fs = probe(&b[..HEAD], 32 << 20).unwrap().unwrap();
        assert_eq!(fs.kind, "ext4");
        assert_eq!(fs.label.as_deref(), Some("datalabel"));
        assert_eq!(
            fs.uuid.as_deref(),
            Some("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
        );
        assert_eq!(fs.size, 32 << 20);
        let used = fs.used.unwrap();
        assert!(used > 0 && used < fs.size, "{used}");
        // Claiming more than the partition is an error, not a number.
        assert!(probe(&b[..HEAD], 16 << 20).is_err());
    }

    #[test]
    fn hostile_superblocks_are_errors_or_nothing_never_panics() {
        let mut b = vec![0u8; HEAD];
        assert_eq!(probe(&b, 1 << 20).unwrap(), None);
        b[..4].copy_from_slice(b"hsqs");
        assert!(probe(&b, 1 << 20).is_err());
        b[28] = 4;
        b[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(probe(&b, 1 << 20).is_err());
        let mut e = vec![0u8; HEAD];
        e[1024 + 56..1024 + 58].copy_from_slice(&0xEF53u16.to_le_bytes());
        e[1024 + 24] = 0xff;
        assert!(probe(&e, 1 << 20).is_err());
        e[1024 + 24] = 6;
        e[1024 + 4..1024 + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        e[1024 + 0x60] = 0x80;
        e[1024 + 0x150..1024 + 0x154].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(probe(&e, u64::MAX).is_err());
        for len in [0, 3, 100, 511, 1500] {
            let _ = probe(&e[..len], 1 << 20);
            let _ = probe(&b[..len], 1 << 20);
        }
    }
}
