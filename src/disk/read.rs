//! Reading a partition table (MBR, or GPT with 512- or 4096-byte sectors)
//! back from a disk image. `boot-test` and `inspect` both read through here,
//! and the image may be any file a user names, so every field is untrusted.
//!
//! Our own reader, not `gptman`/`mbrman`: `gptman`'s `GPT::read_from`
//! reserves `number_of_partition_entries` entries up front (up to 2^32 from
//! the header) and computes entry offsets without overflow checks, and it
//! checks bounds and overlaps only when writing; we would wrap it in the same
//! checks we make here. Reading back the tables `disk::{mbr,gpt}` write takes
//! about as much code as those checks, with no new dependencies.
//!
//! Checked, in this order, each failure a [`TableError`]:
//! - the file holds a sector; bytes 510-511 are `55 aa`;
//! - a type `0xEE` entry makes it GPT and must start at LBA 1 (protective MBR);
//!   a GPT header without one is refused;
//! - GPT header: signature, revision 1.0, header size (92 to one sector),
//!   header CRC32, `my_lba` = 1, first usable <= last usable, entry size
//!   (>= 128, a multiple of 8), entry array at most [`MAX_ENTRY_ARRAY`] bytes
//!   (nothing is allocated before that), the array between the header and the
//!   first usable LBA and inside the file, its CRC32;
//! - every partition: start <= end, inside the file, for GPT inside the
//!   usable LBAs, for MBR not over sector 0; MBR boot indicator 0x00 or 0x80;
//!   no two partitions overlap.
//!
//! All arithmetic on values from the file is checked. The backup GPT is not
//! read: a damaged primary is an error, not a reason to fall back.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::Context;

/// The largest GPT entry array read (128 entries of 128 bytes is 16 KiB).
pub const MAX_ENTRY_ARRAY: u64 = 1 << 20;
/// GPT header revision 1.0.
pub const GPT_REVISION: u32 = 0x0001_0000;
const MBR_ENTRIES: usize = 446;

/// A partition as found in a table (offsets in bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundPartition {
    /// The table slot, from 1.
    pub number: u32,
    pub start: u64,
    pub size: u64,
    /// GPT partition name; empty for MBR.
    pub name: String,
}

/// Where a GPT's primary header and entry array are (for editing them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPlace {
    pub sector: u64,
    pub header_offset: u64,
    pub header_size: u32,
    pub entries_offset: u64,
    pub entry_size: u32,
    pub entry_count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundTable {
    /// `mbr:xxxxxxxx` or `gpt:<guid>`, as on the kernel command line.
    pub disk_id: String,
    /// In slot order.
    pub partitions: Vec<FoundPartition>,
    /// `None` for MBR.
    pub gpt: Option<GptPlace>,
}

/// Why a table was refused. Messages are one line and name the field.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is {len} bytes, too short for {what} ({need} bytes)")]
    Truncated {
        len: u64,
        need: u64,
        what: &'static str,
    },
    #[error("no partition table: bytes 510-511 are {0:02x} {1:02x}, not the MBR signature 55 aa")]
    NoMbrSignature(u8, u8),
    #[error("MBR partition {number}: boot indicator {status:#04x} is neither 0x00 nor 0x80")]
    MbrStatus { number: u32, status: u8 },
    #[error("MBR partition {number} starts at LBA 0, over the MBR itself")]
    MbrOverTable { number: u32 },
    #[error("protective MBR: the type 0xEE entry starts at LBA {0}, not 1")]
    ProtectiveMbr(u32),
    #[error("protective MBR: type 0xEE entry but no GPT header (\"EFI PART\") at LBA 1")]
    NoGptHeader,
    #[error("a GPT header at LBA 1 but no protective MBR (no type 0xEE entry)")]
    NoProtectiveMbr,
    #[error("GPT header: revision {0:#010x} is not 1.0 (0x00010000)")]
    GptRevision(u32),
    #[error("GPT header: header size {size} is outside 92..={sector}")]
    GptHeaderSize { size: u32, sector: u64 },
    #[error("GPT header: CRC32 is {stored:#010x} but the header's bytes give {computed:#010x}")]
    GptHeaderCrc { stored: u32, computed: u32 },
    #[error("GPT header: my_lba is {0}, not 1")]
    GptMyLba(u64),
    #[error("GPT header: first usable LBA {first} is after last usable LBA {last}")]
    GptUsable { first: u64, last: u64 },
    #[error(
        "GPT header: partition entries of {0} bytes (must be at least 128 and a multiple of 8)"
    )]
    GptEntrySize(u32),
    #[error("GPT header: {count} partition entries of {size} bytes exceed the {MAX_ENTRY_ARRAY}-byte limit")]
    GptEntryArrayTooLarge { count: u32, size: u32 },
    #[error("GPT header: the partition entry array at LBA {lba} {problem}")]
    GptEntryArrayPlace { lba: u64, problem: String },
    #[error(
        "GPT partition entry array: CRC32 is {stored:#010x} but the entries give {computed:#010x}"
    )]
    GptEntriesCrc { stored: u32, computed: u32 },
    #[error("partition {number}: last LBA {last} is before first LBA {first}")]
    Reversed { number: u32, first: u64, last: u64 },
    #[error("partition {number} (LBA {first}..={last}) lies outside the usable LBAs {first_usable}..={last_usable}")]
    OutsideUsable {
        number: u32,
        first: u64,
        last: u64,
        first_usable: u64,
        last_usable: u64,
    },
    #[error("partition {number} (LBA {first}, {sectors} sectors of {sector} bytes) runs past the end of the {len}-byte file")]
    PastEnd {
        number: u32,
        first: u64,
        sectors: u64,
        sector: u64,
        len: u64,
    },
    #[error("partitions {a} and {b} overlap")]
    Overlap { a: u32, b: u32 },
    #[error("reading {what}: {err}")]
    Io { what: &'static str, err: io::Error },
}

type Result<T, E = TableError> = std::result::Result<T, E>;

/// Reads the partition table of the file `image`.
pub fn read_table(image: &Path) -> anyhow::Result<FoundTable> {
    let mut f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    parse(&mut f).with_context(|| format!("reading the partition table of {}", image.display()))
}

/// Reads the partition table at the start of `r` (its length is taken by
/// seeking to the end).
pub fn parse<R: Read + Seek>(r: &mut R) -> Result<FoundTable> {
    let len = r.seek(SeekFrom::End(0)).map_err(io_err("the file size"))?;
    if len == 0 {
        return Err(TableError::Empty);
    }
    let mut mbr = [0u8; 512];
    read_at(r, len, 0, &mut mbr, "the MBR")?;
    if mbr[510] != 0x55 || mbr[511] != 0xaa {
        return Err(TableError::NoMbrSignature(mbr[510], mbr[511]));
    }
    let entries: Vec<MbrEntry> = (0..4)
        .map(|i| MbrEntry::parse(&mbr[MBR_ENTRIES + 16 * i..MBR_ENTRIES + 16 * (i + 1)]))
        .collect();
    if let Some(pmbr) = entries.iter().find(|e| e.used() && e.kind == 0xee) {
        if pmbr.start != 1 {
            return Err(TableError::ProtectiveMbr(pmbr.start));
        }
        // The header is at LBA 1: offset 512 or 4096.
        for sector in [512u64, 4096] {
            if has_gpt_signature(r, len, sector)? {
                return parse_gpt(r, len, sector);
            }
        }
        return Err(TableError::NoGptHeader);
    }
    if entries.iter().all(|e| !e.used()) && has_gpt_signature(r, len, 512)? {
        return Err(TableError::NoProtectiveMbr);
    }
    parse_mbr(&mbr, &entries, len)
}

struct MbrEntry {
    status: u8,
    kind: u8,
    start: u32,
    sectors: u32,
}

impl MbrEntry {
    fn parse(e: &[u8]) -> MbrEntry {
        MbrEntry {
            status: e[0],
            kind: e[4],
            start: u32::from_le_bytes([e[8], e[9], e[10], e[11]]),
            sectors: u32::from_le_bytes([e[12], e[13], e[14], e[15]]),
        }
    }
    /// Type 0 or no sectors: an empty slot.
    fn used(&self) -> bool {
        self.kind != 0 && self.sectors != 0
    }
}

fn parse_mbr(mbr: &[u8; 512], entries: &[MbrEntry], len: u64) -> Result<FoundTable> {
    let sig = u32::from_le_bytes([mbr[440], mbr[441], mbr[442], mbr[443]]);
    let mut partitions = Vec::new();
    for (i, e) in (1u32..).zip(entries) {
        if e.status != 0 && e.status != 0x80 {
            return Err(TableError::MbrStatus {
                number: i,
                status: e.status,
            });
        }
        if !e.used() {
            continue;
        }
        if e.start == 0 {
            return Err(TableError::MbrOverTable { number: i });
        }
        let first = u64::from(e.start);
        let sectors = u64::from(e.sectors);
        partitions.push(place(i, first, sectors, 512, len)?);
    }
    check_overlaps(&partitions)?;
    Ok(FoundTable {
        disk_id: format!("mbr:{sig:08x}"),
        partitions,
        gpt: None,
    })
}

fn has_gpt_signature<R: Read + Seek>(r: &mut R, len: u64, sector: u64) -> Result<bool> {
    if len < sector + 8 {
        return Ok(false);
    }
    let mut sig = [0u8; 8];
    read_at(r, len, sector, &mut sig, "the GPT header")?;
    Ok(&sig == b"EFI PART")
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn parse_gpt<R: Read + Seek>(r: &mut R, len: u64, sector: u64) -> Result<FoundTable> {
    // One sector (512 or 4096 bytes) holds the header.
    let mut hdr = vec![0u8; sector as usize];
    read_at(r, len, sector, &mut hdr, "the GPT header")?;
    let revision = le32(&hdr, 8);
    if revision != GPT_REVISION {
        return Err(TableError::GptRevision(revision));
    }
    let header_size = le32(&hdr, 12);
    if header_size < 92 || u64::from(header_size) > sector {
        return Err(TableError::GptHeaderSize {
            size: header_size,
            sector,
        });
    }
    let stored = le32(&hdr, 16);
    let computed = header_crc(&hdr[..header_size as usize]);
    if stored != computed {
        return Err(TableError::GptHeaderCrc { stored, computed });
    }
    let my_lba = le64(&hdr, 24);
    if my_lba != 1 {
        return Err(TableError::GptMyLba(my_lba));
    }
    let first_usable = le64(&hdr, 40);
    let last_usable = le64(&hdr, 48);
    if first_usable > last_usable {
        return Err(TableError::GptUsable {
            first: first_usable,
            last: last_usable,
        });
    }
    let mut guid = [0u8; 16];
    guid.copy_from_slice(&hdr[56..72]);
    let entries_lba = le64(&hdr, 72);
    let count = le32(&hdr, 80);
    let entry_size = le32(&hdr, 84);
    if entry_size < 128 || entry_size % 8 != 0 {
        return Err(TableError::GptEntrySize(entry_size));
    }
    let array_bytes = u64::from(count) * u64::from(entry_size); // < 2^64: both < 2^32
    if array_bytes > MAX_ENTRY_ARRAY {
        return Err(TableError::GptEntryArrayTooLarge {
            count,
            size: entry_size,
        });
    }
    let place_err = |problem: String| TableError::GptEntryArrayPlace {
        lba: entries_lba,
        problem,
    };
    if entries_lba < 2 {
        return Err(place_err("overlaps the MBR or the header".into()));
    }
    let entries_offset = entries_lba
        .checked_mul(sector)
        .ok_or_else(|| place_err("lies past the end of the file".into()))?;
    let entries_end = entries_offset
        .checked_add(array_bytes)
        .ok_or_else(|| place_err("lies past the end of the file".into()))?;
    if entries_end > len {
        return Err(place_err(format!(
            "({array_bytes} bytes) lies past the end of the {len}-byte file"
        )));
    }
    // entries_end <= len, so the usable area's start fits as well when it is
    // smaller; compare without multiplying when it is not.
    if first_usable < entries_end.div_ceil(sector) {
        return Err(place_err(format!(
            "({array_bytes} bytes) reaches into the usable LBAs from {first_usable}"
        )));
    }
    let mut array = vec![0u8; array_bytes as usize];
    read_at(
        r,
        len,
        entries_offset,
        &mut array,
        "the GPT partition entries",
    )?;
    let stored = le32(&hdr, 88);
    let computed = crc32fast::hash(&array);
    if stored != computed {
        return Err(TableError::GptEntriesCrc { stored, computed });
    }

    let mut partitions = Vec::new();
    for (number, e) in (1u32..).zip(array.chunks_exact(entry_size as usize)) {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let first = le64(e, 32);
        let last = le64(e, 40);
        if last < first {
            return Err(TableError::Reversed {
                number,
                first,
                last,
            });
        }
        if first < first_usable || last > last_usable {
            return Err(TableError::OutsideUsable {
                number,
                first,
                last,
                first_usable,
                last_usable,
            });
        }
        // first >= first_usable >= 2 (checked above), so this cannot
        // overflow; checked all the same.
        let sectors = (last - first).checked_add(1).ok_or(TableError::PastEnd {
            number,
            first,
            sectors: u64::MAX,
            sector,
            len,
        })?;
        let mut p = place(number, first, sectors, sector, len)?;
        let name: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        p.name = String::from_utf16_lossy(&name);
        partitions.push(p);
    }
    check_overlaps(&partitions)?;
    Ok(FoundTable {
        disk_id: format!("gpt:{}", guid_text(&guid)),
        partitions,
        gpt: Some(GptPlace {
            sector,
            header_offset: sector,
            header_size,
            entries_offset,
            entry_size,
            entry_count: count,
        }),
    })
}

/// The CRC32 of a GPT header's first `header_size` bytes with its CRC field
/// taken as zero.
pub fn header_crc(header: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..16]);
    h.update(&[0; 4]);
    h.update(&header[20..]);
    h.finalize()
}

/// A partition of `sectors` sectors from LBA `first`, in bytes, checked to
/// end inside the file.
fn place(number: u32, first: u64, sectors: u64, sector: u64, len: u64) -> Result<FoundPartition> {
    let past_end = TableError::PastEnd {
        number,
        first,
        sectors,
        sector,
        len,
    };
    let start = first.checked_mul(sector);
    let size = sectors.checked_mul(sector);
    match (start, size) {
        (Some(start), Some(size)) if start.checked_add(size).is_some_and(|end| end <= len) => {
            Ok(FoundPartition {
                number,
                start,
                size,
                name: String::new(),
            })
        }
        _ => Err(past_end),
    }
}

/// Partitions lie inside the file, so `start + size` does not overflow.
fn check_overlaps(parts: &[FoundPartition]) -> Result<()> {
    let mut sorted: Vec<&FoundPartition> = parts.iter().collect();
    sorted.sort_by_key(|p| (p.start, p.number));
    for w in sorted.windows(2) {
        if w[0].start + w[0].size > w[1].start {
            let (a, b) = (w[0].number.min(w[1].number), w[0].number.max(w[1].number));
            return Err(TableError::Overlap { a, b });
        }
    }
    Ok(())
}

fn io_err(what: &'static str) -> impl Fn(io::Error) -> TableError {
    move |err| TableError::Io { what, err }
}

/// Reads `buf.len()` bytes at `off`; a range past the end of the file
/// (`len`) is [`TableError::Truncated`], not an I/O error.
fn read_at<R: Read + Seek>(
    r: &mut R,
    len: u64,
    off: u64,
    buf: &mut [u8],
    what: &'static str,
) -> Result<()> {
    let need = off
        .checked_add(buf.len() as u64)
        .ok_or(TableError::Truncated {
            len,
            need: u64::MAX,
            what,
        })?;
    if need > len {
        return Err(TableError::Truncated { len, need, what });
    }
    r.seek(SeekFrom::Start(off)).map_err(io_err(what))?;
    r.read_exact(buf).map_err(io_err(what))
}

/// GPT's mixed-endian GUID bytes as lowercase text.
fn guid_text(b: &[u8; 16]) -> String {
    crate::ids::uuid_to_string(&crate::disk::gpt::guid_from_disk(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::gpt::{self, GptPart};
    use crate::disk::layout::{PartKind, Placed, MIB};
    use crate::disk::mbr;
    use std::io::Cursor;
    use std::process::Command;

    fn placed(number: u32, name: &str, start: u64, size: u64) -> Placed {
        Placed {
            number,
            name: name.into(),
            start,
            size,
            kind: if number == 1 {
                PartKind::BootFat
            } else {
                PartKind::LinuxData
            },
        }
    }

    fn layout() -> Vec<Placed> {
        vec![
            placed(1, "boot", MIB, 2 * MIB),
            placed(2, "system-a", 3 * MIB, MIB),
            placed(3, "system-b", 4 * MIB, MIB),
            placed(4, "data", 5 * MIB, 2 * MIB),
        ]
    }

    const TOTAL: u64 = 8 * MIB;

    /// A GPT image of [`TOTAL`] bytes with sectors of `sector` bytes.
    fn gpt_image(sector: u64) -> Vec<u8> {
        let placed = layout();
        let parts: Vec<GptPart> = placed
            .iter()
            .map(|p| GptPart {
                placed: p,
                type_guid: gpt::default_type(p.kind),
                unique_guid: [p.number as u8; 16],
            })
            .collect();
        let disk = gpt::parse_guid("01234567-89ab-cdef-0123-456789abcdef").unwrap();
        let t = gpt::tables(disk, sector, TOTAL, &parts).unwrap();
        let mut img = vec![0u8; TOTAL as usize];
        img[..t.primary.len()].copy_from_slice(&t.primary);
        let b = t.backup_offset as usize;
        img[b..b + t.backup.len()].copy_from_slice(&t.backup);
        img
    }

    fn mbr_image() -> Vec<u8> {
        let mut img = vec![0u8; TOTAL as usize];
        img[..512].copy_from_slice(&mbr::table(0x1234_abcd, &layout(), Some(1)).unwrap());
        img
    }

    fn read(img: &[u8]) -> Result<FoundTable> {
        parse(&mut Cursor::new(img))
    }

    /// Recomputes both primary CRCs after an edit (512-byte sectors, 128 entries).
    fn reseal(img: &mut [u8]) {
        let arr = crc32fast::hash(&img[1024..1024 + 128 * 128]);
        img[512 + 88..512 + 92].copy_from_slice(&arr.to_le_bytes());
        let size = le32(img, 512 + 12).clamp(92, 512) as usize;
        let crc = header_crc(&img[512..512 + size]);
        img[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
    }

    fn put64(img: &mut [u8], at: usize, v: u64) {
        img[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn put32(img: &mut [u8], at: usize, v: u32) {
        img[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn err(img: &[u8]) -> TableError {
        match read(img) {
            Ok(t) => panic!("expected an error, read {t:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn reads_back_what_the_writers_write() {
        let want = |name: &str, n: u32, start: u64, size: u64| FoundPartition {
            number: n,
            start,
            size,
            name: name.into(),
        };
        for sector in [512, 4096] {
            let t = read(&gpt_image(sector)).unwrap();
            assert_eq!(t.disk_id, "gpt:01234567-89ab-cdef-0123-456789abcdef");
            assert_eq!(
                t.partitions,
                [
                    want("boot", 1, MIB, 2 * MIB),
                    want("system-a", 2, 3 * MIB, MIB),
                    want("system-b", 3, 4 * MIB, MIB),
                    want("data", 4, 5 * MIB, 2 * MIB),
                ]
            );
            let g = t.gpt.unwrap();
            assert_eq!(
                (g.sector, g.header_offset, g.entries_offset),
                (sector, sector, 2 * sector)
            );
            assert_eq!((g.entry_size, g.entry_count, g.header_size), (128, 128, 92));
        }
        let t = read(&mbr_image()).unwrap();
        assert_eq!(t.disk_id, "mbr:1234abcd");
        assert!(t.gpt.is_none());
        let starts: Vec<(u32, u64, u64, &str)> = t
            .partitions
            .iter()
            .map(|p| (p.number, p.start, p.size, p.name.as_str()))
            .collect();
        assert_eq!(
            starts,
            [
                (1, MIB, 2 * MIB, ""),
                (2, 3 * MIB, MIB, ""),
                (3, 4 * MIB, MIB, ""),
                (4, 5 * MIB, 2 * MIB, "")
            ]
        );
    }

    /// A table sfdisk wrote reads as sfdisk reads it.
    #[test]
    fn reads_sfdisk_tables() {
        for label in ["gpt", "dos"] {
            let dir = tempfile::tempdir().unwrap();
            let img = dir.path().join("s.img");
            std::fs::write(&img, vec![0u8; TOTAL as usize]).unwrap();
            crate::disk::sfdisk_script(
                &img,
                &format!("label: {label}\nstart=2048, size=4096\nsize=2048\n,\n"),
            );
            let json = Command::new("sfdisk")
                .arg("--json")
                .arg(&img)
                .output()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
            let want: Vec<(u64, u64)> = v["partitiontable"]["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["start"].as_u64().unwrap() * 512,
                        p["size"].as_u64().unwrap() * 512,
                    )
                })
                .collect();
            let t = read_table(&img).unwrap();
            let got: Vec<(u64, u64)> = t.partitions.iter().map(|p| (p.start, p.size)).collect();
            assert_eq!(got, want, "{label}");
            assert_eq!(want.len(), 3);
        }
    }

    #[test]
    fn empty_short_and_unsigned_files() {
        assert!(matches!(err(&[]), TableError::Empty));
        assert!(matches!(
            err(&[0u8; 300]),
            TableError::Truncated {
                len: 300,
                need: 512,
                ..
            }
        ));
        assert!(matches!(
            err(&[0u8; 4096]),
            TableError::NoMbrSignature(0, 0)
        ));
    }

    #[test]
    fn gpt_header_fields_are_checked() {
        let good = gpt_image(512);
        let case = |edit: &dyn Fn(&mut Vec<u8>), reseal_after: bool| {
            let mut img = good.clone();
            edit(&mut img);
            if reseal_after {
                reseal(&mut img);
            }
            err(&img)
        };
        let e = case(&|i| i[512 + 40] ^= 1, false);
        assert!(matches!(e, TableError::GptHeaderCrc { .. }), "{e}");
        let e = case(&|i| i[1024 + 40] ^= 1, false);
        assert!(matches!(e, TableError::GptEntriesCrc { .. }), "{e}");
        let e = case(&|i| put32(i, 512 + 8, 0x0002_0000), true);
        assert!(matches!(e, TableError::GptRevision(0x0002_0000)), "{e}");
        let e = case(&|i| put32(i, 512 + 12, 91), false);
        assert!(
            matches!(e, TableError::GptHeaderSize { size: 91, .. }),
            "{e}"
        );
        let e = case(&|i| put32(i, 512 + 12, 513), false);
        assert!(
            matches!(e, TableError::GptHeaderSize { size: 513, .. }),
            "{e}"
        );
        let e = case(&|i| put64(i, 512 + 24, 7), true);
        assert!(matches!(e, TableError::GptMyLba(7)), "{e}");
        let e = case(&|i| put32(i, 512 + 84, 100), true);
        assert!(matches!(e, TableError::GptEntrySize(100)), "{e}");
        let e = case(&|i| put32(i, 512 + 84, 132), true);
        assert!(matches!(e, TableError::GptEntrySize(132)), "{e}");
        let e = case(&|i| put32(i, 512 + 80, u32::MAX), true);
        assert!(matches!(e, TableError::GptEntryArrayTooLarge { .. }), "{e}");
        let e = case(&|i| put64(i, 512 + 72, u64::MAX / 2), true);
        assert!(matches!(e, TableError::GptEntryArrayPlace { .. }), "{e}");
        let e = case(&|i| put64(i, 512 + 72, 1), true);
        assert!(matches!(e, TableError::GptEntryArrayPlace { .. }), "{e}");
        let e = case(&|i| put64(i, 512 + 40, 20), true);
        assert!(matches!(e, TableError::GptEntryArrayPlace { .. }), "{e}");
        let e = case(&|i| put64(i, 512 + 40, 1 << 40), true);
        assert!(matches!(e, TableError::GptUsable { .. }), "{e}");
        let e = case(&|i| i[1..512].fill(0), false);
        assert!(
            matches!(
                e,
                TableError::NoMbrSignature(..) | TableError::NoProtectiveMbr
            ),
            "{e}"
        );
        let e = case(&|i| put32(i, 446 + 8, 2), false);
        assert!(matches!(e, TableError::ProtectiveMbr(2)), "{e}");
        let e = case(&|i| i[512..520].copy_from_slice(b"EFI NOPE"), false);
        assert!(matches!(e, TableError::NoGptHeader), "{e}");
        let e = case(&|i| i[446..462].fill(0), false);
        assert!(matches!(e, TableError::NoProtectiveMbr), "{e}");
    }

    #[test]
    fn gpt_partitions_are_checked() {
        let good = gpt_image(512);
        let entry = |n: usize| 1024 + 128 * (n - 1);
        let case = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut img = good.clone();
            edit(&mut img);
            reseal(&mut img);
            err(&img)
        };
        // Partition 2 starts inside partition 1.
        let e = case(&|i| put64(i, entry(2) + 32, 2048 + 100));
        assert!(matches!(e, TableError::Overlap { a: 1, b: 2 }), "{e}");
        let e = case(&|i| put64(i, entry(3) + 32, 11000));
        assert!(matches!(e, TableError::Reversed { number: 3, .. }), "{e}");
        let e = case(&|i| put64(i, entry(4) + 40, u64::MAX));
        assert!(
            matches!(e, TableError::OutsideUsable { number: 4, .. }),
            "{e}"
        );
        let e = case(&|i| put64(i, entry(1) + 32, 10));
        assert!(
            matches!(e, TableError::OutsideUsable { number: 1, .. }),
            "{e}"
        );
        // Last usable LBA past the end of the file, and a partition up to it.
        let e = case(&|i| {
            put64(i, 512 + 48, u64::MAX);
            put64(i, entry(4) + 40, u64::MAX - 1);
        });
        assert!(matches!(e, TableError::PastEnd { number: 4, .. }), "{e}");
        // The file cut inside the last partition.
        let mut cut = good.clone();
        cut.truncate(6 * MIB as usize);
        assert!(matches!(err(&cut), TableError::PastEnd { number: 4, .. }));
        // The file cut inside the entry array.
        let mut cut = good.clone();
        cut.truncate(4096);
        assert!(matches!(err(&cut), TableError::GptEntryArrayPlace { .. }));
        // An unused (all-zero type) entry is skipped whatever it holds.
        let mut img = good.clone();
        img[entry(3)..entry(3) + 16].fill(0);
        put64(&mut img, entry(3) + 32, u64::MAX);
        reseal(&mut img);
        let numbers: Vec<u32> = read(&img)
            .unwrap()
            .partitions
            .iter()
            .map(|p| p.number)
            .collect();
        assert_eq!(numbers, [1, 2, 4]);
    }

    #[test]
    fn mbr_partitions_are_checked() {
        let good = mbr_image();
        let entry = |n: usize| 446 + 16 * (n - 1);
        let case = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut img = good.clone();
            edit(&mut img);
            err(&img)
        };
        let e = case(&|i| put32(i, entry(4) + 12, u32::MAX));
        assert!(matches!(e, TableError::PastEnd { number: 4, .. }), "{e}");
        let e = case(&|i| put32(i, entry(3) + 8, 2048 + 1));
        assert!(matches!(e, TableError::Overlap { a: 1, b: 3 }), "{e}");
        let e = case(&|i| put32(i, entry(2) + 8, 0));
        assert!(matches!(e, TableError::MbrOverTable { number: 2 }), "{e}");
        let e = case(&|i| i[entry(2)] = 0x12);
        assert!(
            matches!(
                e,
                TableError::MbrStatus {
                    number: 2,
                    status: 0x12
                }
            ),
            "{e}"
        );
        let e = case(&|i| i.truncate(6 * MIB as usize));
        assert!(matches!(e, TableError::PastEnd { number: 4, .. }), "{e}");
    }

    #[test]
    fn errors_name_the_image_and_are_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.img");
        let mut img = gpt_image(512);
        img[1024 + 40] ^= 1;
        std::fs::write(&p, &img).unwrap();
        let msg = format!("{:#}", read_table(&p).unwrap_err());
        assert!(
            msg.starts_with(&format!(
                "reading the partition table of {}: GPT partition entry array: CRC32 is",
                p.display()
            )),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }
}
