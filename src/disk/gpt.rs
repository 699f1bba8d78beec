//! The GUID partition table, with 512- or 4096-byte sectors.
//!
//! # GUID byte order
//! Everywhere in nodeimg a GUID is a `[u8; 16]` in **canonical text order**: the
//! bytes as they read in `0FC63DAF-8483-4772-8E79-3D69D8477DE4`, left to right
//! (`0x0f, 0xc6, 0x3d, ...`). That is the order `ids::uuid` produces and
//! `ids::uuid_to_string` / [`format_guid`] print. GPT stores the first three
//! fields little-endian ("mixed endian": `af 3d c6 0f 83 84 72 47 8e 79 ...`);
//! [`guid_to_disk`] converts, and only this module's writer uses it.
//!
//! # Layout (N = sectors on the disk, E = entry-array sectors: 32 at 512, 4 at 4096)
//! LBA 0 protective MBR, LBA 1 header, LBA 2..2+E entries (128 x 128 bytes),
//! partitions in LBA 2+E ..= N-2-E, backup entries at N-1-E, backup header at N-1.

use super::layout::{PartKind, Placed, GPT_ENTRIES, GPT_ENTRY_SIZE};
use super::mbr;
use anyhow::{bail, Context, Result};

/// EFI System partition C12A7328-F81F-11D2-BA4B-00A0C93EC93B.
pub const EFI_SYSTEM: [u8; 16] = guid_const("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
/// Microsoft basic data EBD0A0A2-B9E5-4433-87C0-68B6B72699C7.
pub const MS_BASIC_DATA: [u8; 16] = guid_const("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7");
/// Linux filesystem data 0FC63DAF-8483-4772-8E79-3D69D8477DE4.
pub const LINUX_FS_DATA: [u8; 16] = guid_const("0FC63DAF-8483-4772-8E79-3D69D8477DE4");

/// The type GUID nodeimg uses for a partition kind.
///
/// The FAT boot partition is *Microsoft basic data*, not *EFI System*: it holds
/// a kernel, initramfs and the node config loaded directly (QEMU `-kernel`,
/// U-Boot), not an EFI bootloader, and as basic data it is what users expect
/// of "the FAT partition" (desktops mount it so the node config can be edited,
/// and Linux does not treat it as the ESP). The same as the Pi's 0x0C.
pub fn default_type(kind: PartKind) -> [u8; 16] {
    match kind {
        PartKind::BootFat => MS_BASIC_DATA,
        PartKind::LinuxData => LINUX_FS_DATA,
    }
}

/// A partition as GPT sees it. GUIDs in canonical text order (see module docs).
#[derive(Clone, Debug)]
pub struct GptPart<'a> {
    pub placed: &'a Placed,
    pub type_guid: [u8; 16],
    pub unique_guid: [u8; 16],
}

/// The bytes of both tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GptTables {
    /// Protective MBR + header + entries, written at offset 0.
    pub primary: Vec<u8>,
    /// Entries + backup header, written at `backup_offset` (ends at the end of the disk).
    pub backup: Vec<u8>,
    pub backup_offset: u64,
}

/// Maximum partition name length in UTF-16 code units.
pub const NAME_UNITS: usize = 36;

/// Canonical-order GUID to the GPT on-disk (mixed-endian) order.
pub fn guid_to_disk(g: &[u8; 16]) -> [u8; 16] {
    let mut d = *g;
    d[0..4].reverse();
    d[4..6].reverse();
    d[6..8].reverse();
    d
}

/// GPT on-disk order back to canonical order (the same swap).
pub fn guid_from_disk(d: &[u8; 16]) -> [u8; 16] {
    guid_to_disk(d)
}

/// `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX`, upper case as fdisk/sfdisk print it.
pub fn format_guid(g: &[u8; 16]) -> String {
    crate::ids::uuid_to_string(g).to_ascii_uppercase()
}

/// Parses GUID text (either case) to canonical order.
pub fn parse_guid(s: &str) -> Result<[u8; 16]> {
    let bad = || format!("`{s}` is not a GUID (expected XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX)");
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        bail!(bad());
    }
    let hexdigits: String = s.chars().filter(|&c| c != '-').collect();
    let v = hex::decode(&hexdigits).with_context(bad)?;
    <[u8; 16]>::try_from(v.as_slice()).ok().with_context(bad)
}

/// Compile-time GUID literal (a malformed literal fails the build).
const fn guid_const(s: &str) -> [u8; 16] {
    const fn nib(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("bad GUID literal"),
        }
    }
    let b = s.as_bytes();
    assert!(b.len() == 36);
    let mut out = [0u8; 16];
    let (mut i, mut o) = (0, 0);
    while i < 36 {
        if b[i] == b'-' {
            i += 1;
            continue;
        }
        out[o] = nib(b[i]) << 4 | nib(b[i + 1]);
        o += 1;
        i += 2;
    }
    assert!(o == 16);
    out
}

/// Sectors taken by the 128-entry array.
fn entry_sectors(sector: u64) -> u64 {
    (GPT_ENTRIES * GPT_ENTRY_SIZE).div_ceil(sector)
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Builds the primary and backup GPT for a disk of `total` bytes.
pub fn tables(
    disk_guid: [u8; 16],
    sector: u64,
    total: u64,
    parts: &[GptPart],
) -> Result<GptTables> {
    if sector != 512 && sector != 4096 {
        bail!("GPT: sector size {sector} is not supported (512 or 4096)");
    }
    if total % sector != 0 {
        bail!("GPT: disk size {total} is not a multiple of the {sector}-byte sector size");
    }
    let n = total / sector;
    let e = entry_sectors(sector);
    let first_usable = 2 + e;
    if n < 2 * first_usable + 1 {
        bail!("GPT: a disk of {total} bytes is too small for a partition table");
    }
    let last_usable = n - 2 - e;

    // The entry array.
    let mut entries = vec![0u8; (GPT_ENTRIES * GPT_ENTRY_SIZE) as usize];
    let mut sorted: Vec<&Placed> = Vec::with_capacity(parts.len());
    for gp in parts {
        let p = gp.placed;
        if p.number == 0 || u64::from(p.number) > GPT_ENTRIES {
            bail!(
                "GPT: partition `{}` has number {} (1 to {GPT_ENTRIES})",
                p.name,
                p.number
            );
        }
        if p.start % sector != 0 || p.size % sector != 0 || p.size == 0 {
            bail!(
                "GPT: partition `{}` (start {}, size {}) is not a non-empty whole number of {sector}-byte sectors",
                p.name,
                p.start,
                p.size
            );
        }
        let (first, last) = (p.start / sector, (p.start + p.size) / sector - 1);
        if first < first_usable || last > last_usable {
            bail!(
                "GPT: partition `{}` (sectors {first}..={last}) lies outside the usable sectors {first_usable}..={last_usable}",
                p.name
            );
        }
        let name: Vec<u16> = p.name.encode_utf16().collect();
        if name.len() > NAME_UNITS {
            bail!(
                "GPT: partition name `{}` is longer than {NAME_UNITS} UTF-16 units",
                p.name
            );
        }
        let off = ((p.number - 1) as u64 * GPT_ENTRY_SIZE) as usize;
        let ent = &mut entries[off..off + GPT_ENTRY_SIZE as usize];
        if ent[..16].iter().any(|&b| b != 0) {
            bail!("GPT: two partitions have number {}", p.number);
        }
        if gp.type_guid == [0; 16] {
            bail!(
                "GPT: partition `{}` has the all-zero (unused) type GUID",
                p.name
            );
        }
        ent[0..16].copy_from_slice(&guid_to_disk(&gp.type_guid));
        ent[16..32].copy_from_slice(&guid_to_disk(&gp.unique_guid));
        put_u64(ent, 32, first);
        put_u64(ent, 40, last);
        // Attributes (48..56) stay zero.
        for (i, u) in name.iter().enumerate() {
            ent[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
        sorted.push(p);
    }
    sorted.sort_by_key(|p| p.start);
    for w in sorted.windows(2) {
        if w[0].end() > w[1].start {
            bail!(
                "GPT: partitions `{}` and `{}` overlap",
                w[0].name,
                w[1].name
            );
        }
    }
    let entries_crc = crc32fast::hash(&entries);

    let header = |my_lba: u64, alt_lba: u64, entries_lba: u64| {
        let mut h = vec![0u8; sector as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        put_u32(&mut h, 8, 0x0001_0000);
        put_u32(&mut h, 12, 92);
        put_u64(&mut h, 24, my_lba);
        put_u64(&mut h, 32, alt_lba);
        put_u64(&mut h, 40, first_usable);
        put_u64(&mut h, 48, last_usable);
        h[56..72].copy_from_slice(&guid_to_disk(&disk_guid));
        put_u64(&mut h, 72, entries_lba);
        put_u32(&mut h, 80, GPT_ENTRIES as u32);
        put_u32(&mut h, 84, GPT_ENTRY_SIZE as u32);
        put_u32(&mut h, 88, entries_crc);
        let crc = crc32fast::hash(&h[..92]);
        put_u32(&mut h, 16, crc);
        h
    };

    // Protective MBR: one 0xEE entry from LBA 1 over the whole disk (capped at
    // 32 bits), CHS start 00 02 00 and CHS end FF FF FF whatever the size, as
    // sfdisk/libfdisk write it (so the bytes match theirs); the disk signature
    // stays zero.
    let mut primary = vec![0u8; sector as usize];
    let pmbr_size = (n - 1).min(0xFFFF_FFFF);
    let last_chs = [0xff, 0xff, 0xff];
    mbr::write_entry(
        &mut primary[mbr::ENTRIES_OFFSET..mbr::ENTRIES_OFFSET + 16],
        0,
        0xee,
        1,
        pmbr_size as u32,
        last_chs,
    );
    primary[510] = 0x55;
    primary[511] = 0xaa;
    primary.extend(header(1, n - 1, 2));
    primary.extend_from_slice(&entries);
    primary.resize(((2 + e) * sector) as usize, 0);

    let backup_entries_lba = n - 1 - e;
    let mut backup = entries;
    backup.resize((e * sector) as usize, 0);
    backup.extend(header(n - 1, 1, backup_entries_lba));

    Ok(GptTables {
        primary,
        backup,
        backup_offset: backup_entries_lba * sector,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::image::assemble;
    use crate::disk::layout::{plan, PartSpec, TableKind, MIB};
    use crate::ids;
    use std::io::Write;
    use std::path::Path;
    use std::process::{Command, Stdio};

    fn layout(sector: u64, total: u64) -> Vec<Placed> {
        let spec = |name: &str, size: Option<u64>, kind| PartSpec {
            name: name.into(),
            size,
            kind,
        };
        plan(
            TableKind::Gpt,
            sector,
            total,
            &[
                spec("boot", Some(8 * MIB), PartKind::BootFat),
                spec("system-a", Some(12 * MIB), PartKind::LinuxData),
                spec("system-b", Some(12 * MIB), PartKind::LinuxData),
                spec("data", None, PartKind::LinuxData),
            ],
        )
        .unwrap()
    }

    fn gpt_parts(placed: &[Placed]) -> Vec<GptPart<'_>> {
        placed
            .iter()
            .map(|p| GptPart {
                placed: p,
                type_guid: default_type(p.kind),
                unique_guid: ids::uuid(b"test", &format!("part-{}", p.number)),
            })
            .collect()
    }

    fn write_image(path: &Path, total: u64, t: &GptTables) {
        assemble(
            path,
            total,
            &[(0, &t.primary), (t.backup_offset, &t.backup)],
            &[],
        )
        .unwrap();
    }

    fn run(cmd: &mut Command) -> String {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn guid_text_and_byte_order() {
        assert_eq!(
            LINUX_FS_DATA,
            parse_guid("0fc63daf-8483-4772-8e79-3d69d8477de4").unwrap()
        );
        assert_eq!(
            format_guid(&MS_BASIC_DATA),
            "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
        );
        assert_eq!(
            format_guid(&EFI_SYSTEM),
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
        );
        // The well-known on-disk bytes of the Linux filesystem type.
        assert_eq!(
            guid_to_disk(&LINUX_FS_DATA),
            [
                0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47,
                0x7d, 0xe4
            ]
        );
        assert_eq!(guid_from_disk(&guid_to_disk(&EFI_SYSTEM)), EFI_SYSTEM);
        for bad in [
            "",
            "0fc63daf84834772-8e79-3d69d8477de4x",
            "0fc63daf-8483-4772-8e79-3d69d8477dez",
        ] {
            assert!(parse_guid(bad)
                .unwrap_err()
                .to_string()
                .contains("not a GUID"));
        }
    }

    /// sfdisk --json reads back what was planned; sfdisk --verify is clean.
    #[test]
    fn sfdisk_oracle_512() {
        let total = 256 * MIB;
        let placed = layout(512, total);
        let parts = gpt_parts(&placed);
        let disk = ids::uuid(b"test", "disk");
        let t = tables(disk, 512, total, &parts).unwrap();
        assert_eq!(t.primary.len(), 34 * 512);
        assert_eq!(t.backup.len(), 33 * 512);
        assert_eq!(t.backup_offset + t.backup.len() as u64, total);
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("q.img");
        write_image(&img, total, &t);

        let v: serde_json::Value =
            serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(&img))).unwrap();
        let pt = &v["partitiontable"];
        assert_eq!(pt["label"], "gpt");
        assert_eq!(pt["id"], format_guid(&disk));
        assert_eq!(pt["sectorsize"], 512);
        assert_eq!(pt["firstlba"], 34);
        assert_eq!(pt["lastlba"], total / 512 - 34);
        let ps = pt["partitions"].as_array().unwrap();
        assert_eq!(ps.len(), 4);
        for (p, want) in ps.iter().zip(&parts) {
            let start = p["start"].as_u64().unwrap() * 512;
            assert_eq!(start, want.placed.start);
            assert_eq!(start % MIB, 0);
            assert_eq!(p["size"].as_u64().unwrap() * 512, want.placed.size);
            assert_eq!(p["type"], format_guid(&want.type_guid));
            assert_eq!(p["uuid"], format_guid(&want.unique_guid));
            assert_eq!(p["name"], want.placed.name);
        }
        assert_eq!(ps[0]["type"], "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7");
        assert_eq!(ps[3]["type"], "0FC63DAF-8483-4772-8E79-3D69D8477DE4");

        let out = run(Command::new("sfdisk").arg("--verify").arg(&img));
        assert!(out.contains("No errors detected"), "{out}");
    }

    /// sfdisk, given the same layout and ids, writes byte-identical tables.
    #[test]
    fn same_bytes_as_sfdisk() {
        let total = 64 * MIB;
        let placed = layout(512, total);
        let parts = gpt_parts(&placed);
        let disk = ids::uuid(b"test", "disk2");
        let t = tables(disk, 512, total, &parts).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("ref.img");
        std::fs::File::create(&img).unwrap().set_len(total).unwrap();
        let mut script = format!(
            "label: gpt\nlabel-id: {}\nfirst-lba: 34\ntable-length: 128\n",
            format_guid(&disk)
        );
        for p in &parts {
            script += &format!(
                "start={}, size={}, type={}, uuid={}, name=\"{}\"\n",
                p.placed.start / 512,
                p.placed.size / 512,
                format_guid(&p.type_guid),
                format_guid(&p.unique_guid),
                p.placed.name
            );
        }
        crate::disk::sfdisk_script(&img, &script);
        let theirs = std::fs::read(&img).unwrap();
        let diffs: Vec<(usize, u8, u8)> = (0..t.primary.len())
            .filter(|&i| theirs[i] != t.primary[i])
            .map(|i| (i, theirs[i], t.primary[i]))
            .collect();
        assert!(
            diffs.is_empty(),
            "primary GPT differs from sfdisk's (offset, sfdisk, ours): {diffs:?}"
        );
        assert!(
            theirs[t.backup_offset as usize..] == t.backup[..],
            "backup GPT differs from sfdisk's"
        );
    }

    /// 4096-byte sectors. sfdisk 2.38 has no --sector-size, so fdisk -b 4096
    /// (verify command and listing) and partx -S 4096 are the oracles.
    #[test]
    fn oracle_4096() {
        let total = 256 * MIB;
        let placed = layout(4096, total);
        let parts = gpt_parts(&placed);
        let disk = ids::uuid(b"test", "disk4k");
        let t = tables(disk, 4096, total, &parts).unwrap();
        assert_eq!(t.primary.len(), 6 * 4096);
        assert_eq!(t.backup.len(), 5 * 4096);
        assert_eq!(t.backup_offset, total - 5 * 4096);
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("u.img");
        write_image(&img, total, &t);

        let mut child = Command::new("fdisk")
            .args(["-b", "4096"])
            .arg(&img)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"v\nq\n").unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("No errors detected"), "{text}");
        assert!(!text.to_lowercase().contains("corrupt"), "{text}");

        let list = run(Command::new("fdisk").args(["-b", "4096", "-l"]).arg(&img));
        assert!(list.contains("Disklabel type: gpt"), "{list}");
        assert!(
            list.contains(&format!("Disk identifier: {}", format_guid(&disk))),
            "{list}"
        );

        let pairs = run(Command::new("partx")
            .args([
                "-S",
                "4096",
                "-b",
                "-P",
                "-o",
                "NR,START,SECTORS,NAME,UUID,TYPE",
            ])
            .arg(&img));
        let lines: Vec<&str> = pairs.lines().collect();
        assert_eq!(lines.len(), 4, "{pairs}");
        for (line, p) in lines.iter().zip(&parts) {
            // partx counts in 512-byte units whatever the sector size.
            let want = format!(
                "NR=\"{}\" START=\"{}\" SECTORS=\"{}\" NAME=\"{}\" UUID=\"{}\" TYPE=\"{}\"",
                p.placed.number,
                p.placed.start / 512,
                p.placed.size / 512,
                p.placed.name,
                ids::uuid_to_string(&p.unique_guid),
                ids::uuid_to_string(&p.type_guid)
            );
            assert_eq!(*line, want);
        }
        // Read as 512-byte sectors, the image has no valid GPT (only the protective MBR).
        let v: serde_json::Value =
            serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(&img))).unwrap();
        assert_eq!(v["partitiontable"]["label"], "dos");
    }

    #[test]
    fn header_fields_and_crcs() {
        let total = 64 * MIB;
        let placed = layout(4096, total);
        let parts = gpt_parts(&placed);
        let t = tables([7; 16], 4096, total, &parts).unwrap();
        let h = &t.primary[4096..4096 + 92];
        assert_eq!(&h[..8], b"EFI PART");
        let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let n = total / 4096;
        assert_eq!(u64_at(h, 24), 1);
        assert_eq!(u64_at(h, 32), n - 1);
        assert_eq!(u64_at(h, 40), 6);
        assert_eq!(u64_at(h, 48), n - 6);
        let mut z = h.to_vec();
        z[16..20].fill(0);
        assert_eq!(crc32fast::hash(&z).to_le_bytes(), h[16..20]);
        let ents = &t.primary[2 * 4096..2 * 4096 + 16384];
        assert_eq!(crc32fast::hash(ents).to_le_bytes(), h[88..92]);
        let bh = &t.backup[t.backup.len() - 4096..][..92];
        assert_eq!(u64_at(bh, 24), n - 1);
        assert_eq!(u64_at(bh, 32), 1);
        assert_eq!(u64_at(bh, 72), n - 5);
        assert_eq!(&t.backup[..16384], ents);
        // Protective MBR
        assert_eq!(t.primary[446 + 4], 0xee);
        assert_eq!(
            u32::from_le_bytes(t.primary[446 + 12..446 + 16].try_into().unwrap()) as u64,
            n - 1
        );
        assert_eq!(&t.primary[510..512], &[0x55, 0xaa]);
        // Name "boot" in UTF-16LE.
        assert_eq!(&ents[56..64], &[b'b', 0, b'o', 0, b'o', 0, b't', 0]);
    }

    #[test]
    fn protective_mbr_size_is_capped() {
        let total = 3u64 << 40; // 3 TiB: more sectors than 32 bits hold
        let placed = layout(512, total);
        let t = tables([1; 16], 512, total, &gpt_parts(&placed)).unwrap();
        assert_eq!(&t.primary[446 + 12..446 + 16], &[0xff; 4]);
        assert_eq!(&t.primary[446 + 5..446 + 8], &[0xff; 3]);
    }

    #[test]
    fn errors() {
        let total = 64 * MIB;
        let placed = layout(512, total);
        let ok = gpt_parts(&placed);
        let err = |parts: &[GptPart], sector, total| {
            tables([1; 16], sector, total, parts)
                .unwrap_err()
                .to_string()
        };
        assert!(err(&ok, 1024, total).contains("sector size 1024"));
        assert!(err(&ok, 512, total + 1).contains("not a multiple"));
        // The data partition runs into the backup GPT of a smaller disk.
        assert!(err(&ok, 512, total - MIB).contains("outside the usable"));
        let mut long = placed.clone();
        long[0].name = "x".repeat(37);
        assert!(err(&gpt_parts(&long), 512, total).contains("longer than 36"));
        let mut dup = placed.clone();
        dup[1].number = 1;
        assert!(err(&gpt_parts(&dup), 512, total).contains("two partitions have number 1"));
        let mut over = placed.clone();
        over[2].start -= MIB;
        assert!(err(&gpt_parts(&over), 512, total).contains("overlap"));
        let mut odd = placed.clone();
        odd[0].size = 1000;
        assert!(err(&gpt_parts(&odd), 512, total).contains("512-byte sectors"));
        let mut z = gpt_parts(&placed);
        z[0].type_guid = [0; 16];
        assert!(err(&z, 512, total).contains("all-zero"));
        // A 36-unit name fits.
        let mut max = placed.clone();
        max[0].name = "é".repeat(36);
        assert!(tables([1; 16], 512, total, &gpt_parts(&max)).is_ok());
    }
}
