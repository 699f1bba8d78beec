//! The DOS/MBR partition table (sector 0), as the Raspberry Pi boot ROM reads it.
//!
//! Layout of the 512 bytes: boot code (0..440, left zero: nothing boots from
//! it), the 32-bit disk signature at 440 (little-endian; Linux shows it as
//! `0x%08x` and as the PARTUUID prefix `xxxxxxxx-NN`), two zero bytes, four
//! 16-byte primary entries at 446, and 0x55 0xAA at 510.
//!
//! CHS fields: computed from the LBA with the geometry every modern tool
//! assumes (255 heads, 63 sectors per track), and the conventional
//! `0xFE 0xFF 0xFF` (cylinder 1023, head 254, sector 63) for addresses beyond
//! cylinder 1023 (about 8 GiB). This is what fdisk/sfdisk write, so their
//! checks see no mismatch; firmware that matters here uses only the LBA fields.

use super::layout::{PartKind, Placed};
use anyhow::{bail, Result};

/// Offset of the disk signature.
pub const SIGNATURE_OFFSET: usize = 440;
/// Offset of the first partition entry.
pub const ENTRIES_OFFSET: usize = 446;
/// MBR sector size: LBAs in the table count 512-byte sectors.
pub const SECTOR: u64 = 512;

/// The partition type byte for a kind.
pub fn type_byte(kind: PartKind) -> u8 {
    match kind {
        // FAT32 with LBA addressing.
        PartKind::BootFat => 0x0c,
        // Linux native.
        PartKind::LinuxData => 0x83,
    }
}

/// Encodes a 512-byte LBA as the 3 CHS bytes (head, sector | cylinder high
/// bits, cylinder low byte), capped at `FE FF FF` past cylinder 1023.
pub fn lba_to_chs(lba: u64) -> [u8; 3] {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    let cyl = lba / (HEADS * SECTORS);
    if cyl > 1023 {
        return [0xfe, 0xff, 0xff];
    }
    let head = (lba / SECTORS) % HEADS;
    let sect = lba % SECTORS + 1;
    [
        head as u8,
        (sect as u8) | (((cyl >> 8) as u8 & 0x03) << 6),
        (cyl & 0xff) as u8,
    ]
}

/// Writes one 16-byte entry (status, CHS first, type, CHS last, LBA start, sectors).
pub(crate) fn write_entry(
    e: &mut [u8],
    status: u8,
    type_byte: u8,
    lba: u32,
    sectors: u32,
    last_chs: [u8; 3],
) {
    e[0] = status;
    e[1..4].copy_from_slice(&lba_to_chs(u64::from(lba)));
    e[4] = type_byte;
    e[5..8].copy_from_slice(&last_chs);
    e[8..12].copy_from_slice(&lba.to_le_bytes());
    e[12..16].copy_from_slice(&sectors.to_le_bytes());
}

/// Builds sector 0 for `parts` (numbers 1..=4 select the entry slot).
/// `boot_partition` gets status 0x80 (active); the others 0x00.
pub fn table(signature: u32, parts: &[Placed], boot_partition: Option<u32>) -> Result<[u8; 512]> {
    let mut mbr = [0u8; 512];
    mbr[SIGNATURE_OFFSET..SIGNATURE_OFFSET + 4].copy_from_slice(&signature.to_le_bytes());
    let mut used = [false; 4];
    for p in parts {
        if !(1..=4).contains(&p.number) {
            bail!(
                "MBR: partition `{}` has number {}; an MBR has slots 1 to 4",
                p.name,
                p.number
            );
        }
        let slot = (p.number - 1) as usize;
        if used[slot] {
            bail!("MBR: two partitions have number {}", p.number);
        }
        used[slot] = true;
        if p.start % SECTOR != 0 || p.size % SECTOR != 0 || p.size == 0 {
            bail!(
                "MBR: partition `{}` (start {}, size {}) is not a non-empty whole number of 512-byte sectors",
                p.name,
                p.start,
                p.size
            );
        }
        let (lba, sectors) = (p.start / SECTOR, p.size / SECTOR);
        let (Ok(lba32), Ok(sectors32)) = (u32::try_from(lba), u32::try_from(sectors)) else {
            bail!(
                "MBR: partition `{}` lies beyond the 2 TiB an MBR can address",
                p.name
            );
        };
        if lba + sectors > 1 << 32 {
            bail!(
                "MBR: partition `{}` lies beyond the 2 TiB an MBR can address",
                p.name
            );
        }
        let status = if boot_partition == Some(p.number) {
            0x80
        } else {
            0
        };
        let off = ENTRIES_OFFSET + slot * 16;
        write_entry(
            &mut mbr[off..off + 16],
            status,
            type_byte(p.kind),
            lba32,
            sectors32,
            lba_to_chs(lba + sectors - 1),
        );
    }
    let mut sorted: Vec<&Placed> = parts.iter().collect();
    sorted.sort_by_key(|p| p.start);
    for w in sorted.windows(2) {
        if w[0].end() > w[1].start {
            bail!(
                "MBR: partitions `{}` and `{}` overlap",
                w[0].name,
                w[1].name
            );
        }
    }
    if let Some(b) = boot_partition {
        if !parts.iter().any(|p| p.number == b) {
            bail!("MBR: boot partition {b} is not in the layout");
        }
    }
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    Ok(mbr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::image::assemble;
    use crate::disk::layout::{plan, PartSpec, TableKind, MIB};
    use std::process::Command;

    fn pi_parts(total: u64) -> Vec<Placed> {
        let spec = |name: &str, size: Option<u64>, kind| PartSpec {
            name: name.into(),
            size,
            kind,
        };
        plan(
            TableKind::Mbr,
            512,
            total,
            &[
                spec("boot", Some(64 * MIB), PartKind::BootFat),
                spec("system-a", Some(100 * MIB), PartKind::LinuxData),
                spec("system-b", Some(100 * MIB), PartKind::LinuxData),
                spec("data", None, PartKind::LinuxData),
            ],
        )
        .unwrap()
    }

    #[test]
    fn chs_encoding() {
        assert_eq!(lba_to_chs(0), [0, 1, 0]);
        // LBA 2048 = C 0, H 32, S 33 (what fdisk writes for a 1 MiB start).
        assert_eq!(lba_to_chs(2048), [0x20, 0x21, 0x00]);
        // Cylinder 300: high bits go into the sector byte.
        assert_eq!(lba_to_chs(300 * 255 * 63), [0, 0x41, 0x2c]);
        assert_eq!(
            lba_to_chs(1023 * 255 * 63 + 255 * 63 - 1),
            [0xfe, 0xff, 0xff]
        );
        assert_eq!(lba_to_chs(1024 * 255 * 63), [0xfe, 0xff, 0xff]);
    }

    #[test]
    fn raw_bytes() {
        let parts = pi_parts(512 * MIB);
        let m = table(0x1234_abcd, &parts, Some(1)).unwrap();
        assert!(m[..440].iter().all(|&b| b == 0), "boot code must be zero");
        assert_eq!(&m[440..444], &[0xcd, 0xab, 0x34, 0x12]);
        assert_eq!(&m[444..446], &[0, 0]);
        assert_eq!(&m[510..], &[0x55, 0xaa]);
        let e1 = &m[446..462];
        assert_eq!(e1[0], 0x80);
        assert_eq!(e1[4], 0x0c);
        assert_eq!(u32::from_le_bytes(e1[8..12].try_into().unwrap()), 2048);
        assert_eq!(
            u32::from_le_bytes(e1[12..16].try_into().unwrap()),
            64 * 2048
        );
        let e4 = &m[494..510];
        assert_eq!(e4[0], 0);
        assert_eq!(e4[4], 0x83);
    }

    #[test]
    fn errors() {
        let mut parts = pi_parts(512 * MIB);
        assert!(table(1, &parts, Some(5))
            .unwrap_err()
            .to_string()
            .contains("boot partition 5"));
        parts[1].number = 1;
        assert!(table(1, &parts, None)
            .unwrap_err()
            .to_string()
            .contains("two partitions have number 1"));
        parts[1].number = 5;
        assert!(table(1, &parts, None)
            .unwrap_err()
            .to_string()
            .contains("slots 1 to 4"));
        let mut parts = pi_parts(512 * MIB);
        parts[2].start -= MIB;
        assert!(table(1, &parts, None)
            .unwrap_err()
            .to_string()
            .contains("overlap"));
        let mut parts = pi_parts(512 * MIB);
        parts[3].start = 1 << 41;
        assert!(table(1, &parts, None)
            .unwrap_err()
            .to_string()
            .contains("2 TiB"));
        let mut parts = pi_parts(512 * MIB);
        parts[3].size += 1;
        assert!(table(1, &parts, None)
            .unwrap_err()
            .to_string()
            .contains("512-byte"));
    }

    /// sfdisk reads back exactly what was planned.
    #[test]
    fn sfdisk_oracle() {
        let total = 512 * MIB;
        let parts = pi_parts(total);
        let m = table(0xdeadbeef, &parts, Some(1)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("pi.img");
        assemble(&img, total, &[(0, &m)], &[]).unwrap();

        let out = Command::new("sfdisk")
            .arg("--json")
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let t = &v["partitiontable"];
        assert_eq!(t["label"], "dos");
        assert_eq!(t["id"], "0xdeadbeef");
        assert_eq!(t["sectorsize"], 512);
        let ps = t["partitions"].as_array().unwrap();
        assert_eq!(ps.len(), 4);
        for (p, want) in ps.iter().zip(&parts) {
            assert_eq!(p["start"].as_u64().unwrap() * 512, want.start);
            assert_eq!(p["size"].as_u64().unwrap() * 512, want.size);
            assert_eq!(p["start"].as_u64().unwrap() % 2048, 0, "1 MiB aligned");
            let ty = if want.kind == PartKind::BootFat {
                "c"
            } else {
                "83"
            };
            assert_eq!(p["type"], ty);
            assert_eq!(p["bootable"].as_bool().unwrap_or(false), want.number == 1);
            assert!(p["node"]
                .as_str()
                .unwrap()
                .ends_with(&want.number.to_string()));
        }
        assert_eq!(
            ps[3]["start"].as_u64().unwrap() * 512 + ps[3]["size"].as_u64().unwrap() * 512,
            total
        );

        let out = Command::new("sfdisk")
            .arg("--verify")
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("No errors detected"), "{text}");
    }

    /// sfdisk writing the same layout produces the same sector 0, CHS fields
    /// included (sfdisk --verify does not check CHS, so compare bytes).
    #[test]
    fn same_bytes_as_sfdisk() {
        let total = 12u64 << 30; // past cylinder 1023, so the data end is capped
        let parts = pi_parts(total);
        let ours = table(0x0badcafe, &parts, Some(1)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("ref.img");
        std::fs::File::create(&img).unwrap().set_len(total).unwrap();
        let mut script = String::from("label: dos\nlabel-id: 0x0badcafe\n");
        for p in &parts {
            script += &format!(
                "start={}, size={}, type={:x}{}\n",
                p.start / 512,
                p.size / 512,
                type_byte(p.kind),
                if p.number == 1 { ", bootable" } else { "" }
            );
        }
        crate::disk::sfdisk_script(&img, &script);
        let mut theirs = [0u8; 512];
        std::io::Read::read_exact(&mut std::fs::File::open(&img).unwrap(), &mut theirs).unwrap();
        assert_eq!(theirs, ours);
        assert_eq!(&ours[494 + 5..494 + 8], &[0xfe, 0xff, 0xff]);
    }
}
