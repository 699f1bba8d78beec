//! Assembling a whole-disk image from partition images and table blobs.
//!
//! The output is a sparse file: it is sized with `set_len` (all holes), then
//! only the data of the partition images is written (`disk::sparse`: their
//! data regions, less all-zero 64 KiB chunks). A 4 GiB image whose data partition is mostly empty takes little
//! space and is written quickly; readers see zeros in the holes, so the bytes
//! are the same as a fully written image.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use super::sparse;

/// Makes `out` a disk image of exactly `total` bytes: each partition image
/// copied at its offset (it must fit its slot of `max size` bytes; the rest of
/// the slot stays zero), then the table `blobs` written at theirs, then fsync.
/// Regions must lie inside the image and must not overlap. With no `present`
/// regions, `out` is created (an existing file replaced in place; the caller
/// writes to a temporary name and renames); `present` names regions (offset,
/// size) an existing `out` already holds, written there by their maker (the
/// system squashfs), which are kept.
pub fn assemble(
    out: &Path,
    total: u64,
    blobs: &[(u64, &[u8])],
    partitions: &[(u64, u64, &Path)],
    present: &[(u64, u64)],
) -> Result<()> {
    // Check everything before creating the file.
    check(total, blobs, partitions, present)?;
    let ctx = || format!("writing disk image {}", out.display());
    let mut f = match present.is_empty() {
        true => File::create(out),
        false => std::fs::OpenOptions::new().write(true).open(out),
    }
    .with_context(ctx)?;
    f.set_len(total).with_context(ctx)?;
    for (off, max, path) in partitions {
        sparse::copy_into(&mut f, *off, path, *max).with_context(ctx)?;
    }
    for (off, data) in blobs {
        f.seek(SeekFrom::Start(*off)).with_context(ctx)?;
        f.write_all(data).with_context(ctx)?;
    }
    f.sync_all().with_context(ctx)?;
    Ok(())
}

/// The checks of `assemble`: every partition image fits its slot, every
/// region lies inside the image, none overlaps another.
fn check(
    total: u64,
    blobs: &[(u64, &[u8])],
    partitions: &[(u64, u64, &Path)],
    present: &[(u64, u64)],
) -> Result<()> {
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
    for (off, max, path) in partitions {
        let len = std::fs::metadata(path)
            .with_context(|| format!("reading partition image {}", path.display()))?
            .len();
        if len > *max {
            bail!(
                "partition image {} is {} bytes, larger than its slot of {} bytes at offset {off}",
                path.display(),
                len,
                max
            );
        }
        regions.push((*off, *max, format!("partition image {}", path.display())));
    }
    for (off, len, what) in &regions {
        if off.checked_add(*len).map_or(true, |end| end > total) {
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
    use std::os::unix::fs::MetadataExt;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
            .collect()
    }

    #[test]
    fn bytes_at_offsets_equal_inputs_and_the_rest_is_zero() {
        let dir = tempfile::tempdir().unwrap();
        // A partition image with data, a zero gap spanning chunks, and an unaligned tail.
        let mut p1 = pattern(70_000, 3);
        p1.extend(vec![0u8; 3 * sparse::CHUNK]);
        p1.extend(pattern(1000, 9));
        let p2 = pattern(5, 7);
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        std::fs::write(&a, &p1).unwrap();
        std::fs::write(&b, &p2).unwrap();
        let blob = pattern(512, 1);
        let tail = pattern(100, 2);
        let out = dir.path().join("disk.img");
        let total = 2 << 20;
        // Pre-existing junk is replaced.
        std::fs::write(&out, vec![0xffu8; 3 << 20]).unwrap();
        assemble(
            &out,
            total,
            &[(0, &blob), (total - 100, &tail)],
            &[(65536, 1 << 20, &a), ((1 << 20) + 65536, 4096, &b)],
            &[],
        )
        .unwrap();
        let got = std::fs::read(&out).unwrap();
        assert_eq!(got.len() as u64, total);
        let mut want = vec![0u8; total as usize];
        want[..512].copy_from_slice(&blob);
        want[65536..65536 + p1.len()].copy_from_slice(&p1);
        let o2 = (1 << 20) + 65536;
        want[o2..o2 + 5].copy_from_slice(&p2);
        want[total as usize - 100..].copy_from_slice(&tail);
        assert!(got == want, "assembled bytes differ");
    }

    /// The background hash equals the hash of the finished image wherever
    /// its boundary lies (in a gap, inside a partition image, at the end),
    /// with data written after the boundary once the image is assembled.
    #[test]
    fn output_is_sparse() {
        let dir = tempfile::tempdir().unwrap();
        // A 64 MiB "filesystem" with 128 KiB of data at each end.
        let mut data = vec![0u8; 64 << 20];
        data[..131072].copy_from_slice(&pattern(131072, 5));
        let l = data.len();
        data[l - 131072..].copy_from_slice(&pattern(131072, 6));
        let part = dir.path().join("data.img");
        std::fs::write(&part, &data).unwrap();
        let out = dir.path().join("disk.img");
        let total = 256u64 << 20;
        assemble(
            &out,
            total,
            &[(0, &[1u8; 512])],
            &[(1 << 20, 200 << 20, &part)],
            &[],
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
        assert!(got[(1 << 20)..(1 << 20) + l] == data[..]);
    }

    /// The whole path for a 4 GiB qemu-style GPT image: planned, assembled
    /// sparse, readable by sfdisk, partition contents at their planned offsets.
    #[test]
    fn four_gib_gpt_image_end_to_end() {
        use crate::disk::gpt::{default_type, tables, GptPart};
        use crate::disk::layout::{plan, PartKind, PartSpec, TableKind, MIB};
        use std::io::{Read, Seek};
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
        let boot = pattern(300_000, 11);
        let mut data = vec![0u8; 8 << 20];
        data[1024..5000].copy_from_slice(&pattern(3976, 12));
        let (bp, dp) = (dir.path().join("boot.vfat"), dir.path().join("data.ext4"));
        std::fs::write(&bp, &boot).unwrap();
        std::fs::write(&dp, &data).unwrap();
        let out = dir.path().join("disk.img");
        let started = std::time::Instant::now();
        assemble(
            &out,
            total,
            &[(0, &t.primary), (t.backup_offset, &t.backup)],
            &[
                (placed[0].start, placed[0].size, &bp),
                (placed[3].start, placed[3].size, &dp),
            ],
            &[],
        )
        .unwrap();
        assert!(
            started.elapsed().as_secs() < 20,
            "assembly took {:?}",
            started.elapsed()
        );
        let md = std::fs::metadata(&out).unwrap();
        assert_eq!(md.len(), total);
        assert!(
            md.blocks() * 512 < 4 << 20,
            "{} bytes used",
            md.blocks() * 512
        );

        let read_at = |off: u64, len: usize| {
            let mut f = File::open(&out).unwrap();
            f.seek(SeekFrom::Start(off)).unwrap();
            let mut b = vec![0u8; len];
            f.read_exact(&mut b).unwrap();
            b
        };
        assert_eq!(read_at(placed[0].start, boot.len()), boot);
        assert_eq!(read_at(placed[3].start, data.len()), data);
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

    /// A region the image already holds (the squashfs written in place) is
    /// kept as it is; the rest is assembled around it, and nothing may
    /// overlap it.
    #[test]
    fn present_regions_are_kept_and_guarded() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("disk.img");
        let held = pattern(5000, 3);
        std::fs::File::create(&out)
            .unwrap()
            .write_all_at(&held, 65536)
            .unwrap();
        let part = dir.path().join("p.img");
        std::fs::write(&part, pattern(3000, 4)).unwrap();
        let blob = pattern(512, 5);
        let total = 1 << 20;
        assemble(
            &out,
            total,
            &[(0, &blob)],
            &[(131072, 65536, &part)],
            &[(65536, 65536)],
        )
        .unwrap();
        let got = std::fs::read(&out).unwrap();
        let mut want = vec![0u8; total as usize];
        want[..512].copy_from_slice(&blob);
        want[65536..65536 + 5000].copy_from_slice(&held);
        want[131072..131072 + 3000].copy_from_slice(&pattern(3000, 4));
        assert!(got == want, "assembled bytes differ");

        let e = assemble(
            &out,
            total,
            &[],
            &[(100_000, 65536, &part)],
            &[(65536, 65536)],
        )
        .unwrap_err();
        assert!(e.to_string().contains("overlaps"), "{e}");
        let e = assemble(&dir.path().join("none.img"), total, &[], &[], &[(0, 4096)]).unwrap_err();
        assert!(format!("{e:#}").contains("none.img"), "{e:#}");
    }

    #[test]
    fn oversized_partition_image_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("system.squashfs");
        std::fs::write(&part, vec![1u8; 5000]).unwrap();
        let out = dir.path().join("disk.img");
        let e = assemble(&out, 1 << 20, &[], &[(4096, 4096, &part)], &[]).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("system.squashfs"), "{msg}");
        assert!(msg.contains("5000 bytes"), "{msg}");
        assert!(msg.contains("slot of 4096 bytes"), "{msg}");
        assert!(
            !out.exists(),
            "nothing is created when the inputs are wrong"
        );
    }

    #[test]
    fn regions_outside_or_overlapping_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("p.img");
        std::fs::write(&part, [1u8; 10]).unwrap();
        let out = dir.path().join("disk.img");
        let e = assemble(&out, 8192, &[], &[(4096, 8192, &part)], &[]).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
        let e = assemble(
            &out,
            8192,
            &[(4000, &[1u8; 200])],
            &[(4096, 4096, &part)],
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("overlaps"), "{e}");
        // An empty blob between two overlapping regions does not hide the overlap.
        let e = assemble(
            &out,
            8192,
            &[(4000, &[1u8; 200]), (4050, &[])],
            &[(4096, 4096, &part)],
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("overlaps"), "{e}");
        let e = assemble(
            &out,
            8192,
            &[],
            &[(0, 100, &dir.path().join("missing.img"))],
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("missing.img"), "{e}");
    }
}
