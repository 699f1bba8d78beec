//! Finishing a whole-disk image around the filesystems written in place.
//!
//! Every filesystem is written straight into its partition of the image (the
//! squashfs, the FAT boot partition, the ext4 data partition), so nothing is
//! copied here: the image is sized with `set_len` (all holes where nothing
//! was written) and the partition tables are written at their offsets; the
//! caller syncs the file once everything is in it. Readers see zeros in the
//! holes, so the bytes are the same as a fully written image, and a 64 GiB
//! image whose data partition is mostly empty takes little space and no time.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

/// Makes `out` exactly `total` bytes with the table `blobs` written at their
/// offsets; it is not synced (the caller syncs the finished image).
/// `present` names the regions (offset, size) an existing `out` already
/// holds, written there by their makers (the partitions' filesystems), which
/// are kept; with none, `out` is created (an existing file replaced in place;
/// the caller writes to a temporary name and renames). Regions must lie
/// inside the image and must not overlap; they are checked before anything
/// is written.
pub fn assemble(
    out: &Path,
    total: u64,
    blobs: &[(u64, &[u8])],
    present: &[(u64, u64)],
) -> Result<()> {
    check(total, blobs, present)?;
    let ctx = || format!("writing disk image {}", out.display());
    let mut f = match present.is_empty() {
        true => File::create(out),
        false => std::fs::OpenOptions::new().write(true).open(out),
    }
    .with_context(ctx)?;
    f.set_len(total).with_context(ctx)?;
    for (off, data) in blobs {
        f.seek(SeekFrom::Start(*off)).with_context(ctx)?;
        f.write_all(data).with_context(ctx)?;
    }
    Ok(())
}

/// The checks of `assemble`: every region lies inside the image, none
/// overlaps another.
fn check(total: u64, blobs: &[(u64, &[u8])], present: &[(u64, u64)]) -> Result<()> {
    let mut regions: Vec<(u64, u64, String)> = Vec::new();
    for (off, len) in present {
        regions.push((
            *off,
            *len,
            format!("the region at offset {off} already written"),
        ));
    }
    for (off, data) in blobs {
        regions.push((*off, data.len() as u64, format!("table at offset {off}")));
    }
    for (off, len, what) in &regions {
        if off.checked_add(*len).is_none_or(|end| end > total) {
            bail!("{what} (offset {off}, {len} bytes) does not fit in the {total}-byte image");
        }
    }
    regions.retain(|r| r.1 > 0);
    regions.sort_by_key(|r| r.0);
    for w in regions.windows(2) {
        if w[0].0 + w[0].1 > w[1].0 {
            bail!("{} overlaps {}", w[0].2, w[1].2);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
            .collect()
    }

    /// A new image: the tables at their offsets, zeros elsewhere, and a
    /// pre-existing file's bytes gone.
    #[test]
    fn tables_at_offsets_and_the_rest_is_zero() {
        let dir = tempfile::tempdir().unwrap();
        let blob = pattern(512, 1);
        let tail = pattern(100, 2);
        let out = dir.path().join("disk.img");
        let total = 2 << 20;
        std::fs::write(&out, vec![0xffu8; 3 << 20]).unwrap();
        assemble(&out, total, &[(0, &blob), (total - 100, &tail)], &[]).unwrap();
        let got = std::fs::read(&out).unwrap();
        let mut want = vec![0u8; total as usize];
        want[..512].copy_from_slice(&blob);
        want[total as usize - 100..].copy_from_slice(&tail);
        assert!(got == want, "assembled bytes differ");
    }

    /// Regions the image already holds (filesystems written in place) are
    /// kept as they are, the tables go around them, and the image stays
    /// sparse whatever its size.
    #[test]
    fn present_regions_are_kept_and_the_image_stays_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("disk.img");
        let (a, b) = (pattern(131_072, 3), pattern(5000, 4));
        let f = File::create(&out).unwrap();
        f.write_all_at(&a, 1 << 20).unwrap();
        f.write_all_at(&b, 100 << 20).unwrap();
        drop(f);
        let blob = pattern(512, 5);
        let total = 256u64 << 20;
        assemble(
            &out,
            total,
            &[(0, &blob)],
            &[(1 << 20, 64 << 20), (100 << 20, 64 << 20)],
        )
        .unwrap();
        let md = std::fs::metadata(&out).unwrap();
        assert_eq!(md.len(), total);
        let used = md.blocks() * 512;
        assert!(
            used < 4 << 20,
            "image uses {used} bytes on disk, expected a sparse file"
        );
        let got = std::fs::read(&out).unwrap();
        let mut want = vec![0u8; total as usize];
        want[..512].copy_from_slice(&blob);
        want[1 << 20..(1 << 20) + a.len()].copy_from_slice(&a);
        want[100 << 20..(100 << 20) + b.len()].copy_from_slice(&b);
        assert!(got == want, "assembled bytes differ");
    }

    /// The whole path for a 4 GiB qemu-style GPT image: planned, partitions
    /// written in place, finished sparse, readable by sfdisk.
    #[test]
    fn four_gib_gpt_image_end_to_end() {
        use crate::disk::gpt::{default_type, tables, GptPart};
        use crate::disk::layout::{plan, PartKind, PartSpec, TableKind, MIB};
        let total = 4u64 << 30;
        let spec = |name: &str, size: Option<u64>, kind| PartSpec {
            name: name.into(),
            size,
            kind,
        };
        let placed = plan(
            TableKind::Gpt,
            512,
            total,
            &[
                spec("boot", Some(64 * MIB), PartKind::BootFat),
                spec("system-a", Some(300 * MIB), PartKind::LinuxData),
                spec("system-b", Some(300 * MIB), PartKind::LinuxData),
                spec("data", None, PartKind::LinuxData),
            ],
        )
        .unwrap();
        let gparts: Vec<GptPart> = placed
            .iter()
            .map(|p| GptPart {
                placed: p,
                type_guid: default_type(p.kind),
                unique_guid: crate::ids::uuid(b"e2e", &p.name),
            })
            .collect();
        let t = tables(crate::ids::uuid(b"e2e", "disk"), 512, total, &gparts).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (boot, data) = (pattern(300_000, 11), pattern(3976, 12));
        let out = dir.path().join("disk.img");
        let f = File::create(&out).unwrap();
        f.write_all_at(&boot, placed[0].start).unwrap();
        f.write_all_at(&data, placed[3].start + 1024).unwrap();
        drop(f);
        assemble(
            &out,
            total,
            &[(0, &t.primary), (t.backup_offset, &t.backup)],
            &[
                (placed[0].start, placed[0].size),
                (placed[3].start, placed[3].size),
            ],
        )
        .unwrap();
        let md = std::fs::metadata(&out).unwrap();
        assert_eq!(md.len(), total);
        assert!(
            md.blocks() * 512 < 4 << 20,
            "{} bytes used",
            md.blocks() * 512
        );

        let f = File::open(&out).unwrap();
        let read_at = |off: u64, len: usize| {
            let mut b = vec![0u8; len];
            f.read_exact_at(&mut b, off).unwrap();
            b
        };
        assert_eq!(read_at(placed[0].start, boot.len()), boot);
        assert_eq!(read_at(placed[3].start + 1024, data.len()), data);
        assert_eq!(read_at(t.backup_offset, t.backup.len()), t.backup);

        let o = std::process::Command::new("sfdisk")
            .arg("--verify")
            .arg(&out)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && text.contains("No errors detected"),
            "{text}"
        );
    }

    #[test]
    fn regions_outside_or_overlapping_are_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("disk.img");
        let e = assemble(&out, 8192, &[(8000, &[1u8; 200])], &[]).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
        let e = assemble(&out, 8192, &[], &[(4096, 8192)]).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
        let e = assemble(&out, 8192, &[(4000, &[1u8; 200])], &[(4096, 4096)]).unwrap_err();
        assert!(e.to_string().contains("overlaps"), "{e}");
        // An empty blob between two overlapping regions does not hide the overlap.
        let e = assemble(
            &out,
            8192,
            &[(4000, &[1u8; 200]), (4050, &[])],
            &[(4096, 4096)],
        )
        .unwrap_err();
        assert!(e.to_string().contains("overlaps"), "{e}");
        assert!(
            !out.exists(),
            "nothing is created when the inputs are wrong"
        );
        // Regions said to be present need the file they are in.
        let e = assemble(&dir.path().join("none.img"), 8192, &[], &[(0, 4096)]).unwrap_err();
        assert!(format!("{e:#}").contains("none.img"), "{e:#}");
    }
}
