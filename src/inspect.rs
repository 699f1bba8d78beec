//! Reading back what we wrote: the partition table of a disk image and files
//! on its FAT boot partition.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// A partition as found in a table (offsets in bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundPartition {
    pub number: u32,
    pub start: u64,
    pub size: u64,
    /// GPT partition name; empty for MBR.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundTable {
    /// `mbr:xxxxxxxx` or `gpt:<guid>`, as on the kernel command line.
    pub disk_id: String,
    pub partitions: Vec<FoundPartition>,
}

/// Reads the MBR or GPT (512-byte sectors) of a disk image.
pub fn read_table(image: &Path) -> Result<FoundTable> {
    let mut f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let mut head = vec![0u8; 512 * 34];
    let n =
        read_up_to(&mut f, &mut head).with_context(|| format!("reading {}", image.display()))?;
    if n < 512 || head[510] != 0x55 || head[511] != 0xaa {
        bail!(
            "{}: no partition table (no MBR boot signature)",
            image.display()
        );
    }
    let entry = |i: usize| &head[446 + 16 * i..446 + 16 * (i + 1)];
    if entry(0)[4] == 0xee {
        if n < 512 * 34 || &head[512..520] != b"EFI PART" {
            bail!("{}: protective MBR but no GPT header", image.display());
        }
        let hdr = &head[512..1024];
        let guid = guid_text(&hdr[56..72]);
        let entries_lba = u64::from_le_bytes(hdr[72..80].try_into()?);
        let count = u32::from_le_bytes(hdr[80..84].try_into()?) as u64;
        let esize = u32::from_le_bytes(hdr[84..88].try_into()?) as u64;
        if esize < 128 || count > 1024 {
            bail!("{}: implausible GPT entry array", image.display());
        }
        let mut arr = vec![0u8; (count * esize) as usize];
        f.seek(SeekFrom::Start(entries_lba * 512))?;
        f.read_exact(&mut arr)
            .with_context(|| format!("reading the GPT entries of {}", image.display()))?;
        let mut partitions = Vec::new();
        for i in 0..count {
            let e = &arr[(i * esize) as usize..((i + 1) * esize) as usize];
            if e[..16].iter().all(|b| *b == 0) {
                continue;
            }
            let first = u64::from_le_bytes(e[32..40].try_into()?);
            let last = u64::from_le_bytes(e[40..48].try_into()?);
            let name: Vec<u16> = e[56..128]
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|c| *c != 0)
                .collect();
            partitions.push(FoundPartition {
                number: i as u32 + 1,
                start: first * 512,
                size: (last + 1 - first) * 512,
                name: String::from_utf16_lossy(&name),
            });
        }
        return Ok(FoundTable {
            disk_id: format!("gpt:{guid}"),
            partitions,
        });
    }
    let sig = u32::from_le_bytes(head[440..444].try_into()?);
    let mut partitions = Vec::new();
    for i in 0..4 {
        let e = entry(i);
        let start = u32::from_le_bytes(e[8..12].try_into()?) as u64;
        let size = u32::from_le_bytes(e[12..16].try_into()?) as u64;
        if e[4] != 0 && size != 0 {
            partitions.push(FoundPartition {
                number: i as u32 + 1,
                start: start * 512,
                size: size * 512,
                name: String::new(),
            });
        }
    }
    Ok(FoundTable {
        disk_id: format!("mbr:{sig:08x}"),
        partitions,
    })
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// GPT's mixed-endian GUID bytes as lowercase text.
fn guid_text(b: &[u8]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
        b[14], b[15]
    )
}

/// Copies partition `number` of `image` into its own file.
pub fn extract_partition(image: &Path, number: u32, dest: &Path) -> Result<()> {
    let table = read_table(image)?;
    let p = table
        .partitions
        .iter()
        .find(|p| p.number == number)
        .with_context(|| format!("{}: no partition {number}", image.display()))?;
    let mut src = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    src.seek(SeekFrom::Start(p.start))?;
    let mut out = File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    let copied = std::io::copy(&mut src.take(p.size), &mut out)
        .with_context(|| format!("copying partition {number} of {}", image.display()))?;
    if copied != p.size {
        bail!(
            "{}: partition {number} runs past the end of the image",
            image.display()
        );
    }
    Ok(())
}
