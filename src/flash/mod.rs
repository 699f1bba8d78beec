//! `nodeimg flash IMAGE TARGET`: writing an image to an SD card (or a file),
//! safely and writing only what matters.
//!
//! 1. What to write: the image's block map (`IMAGE.bmap` beside it, or
//!    `--bmap`) names the ranges that hold data, each with its SHA-256; without
//!    one, a plain image's data regions (`SEEK_DATA`) are written and its holes
//!    must read as zeros; a compressed image without a map is written whole
//!    except for zero blocks the target already reads as zeros.
//! 2. Where: [`device::check_target`] refuses partitions, mounted or busy
//!    disks, the disk holding `/` and disks smaller than the image; a block
//!    device needs a confirmation (model and size shown) or `--yes`.
//! 3. How: the target's first MiB is zeroed first and the image's own first
//!    MiB written last ([`write`]); unused ranges of a device are discarded
//!    where it supports it; everything written is read back and compared,
//!    and the target synced, before it says done.

pub mod device;
pub mod source;
pub mod write;

use std::fs::File;
use std::io::{BufRead, IsTerminal, Write as _};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use indicatif::ProgressStyle;

use crate::cli::FlashArgs;
use crate::disk::bmap::{Bmap, BLOCK_SIZE};
use crate::disk::layout::human;
use crate::progress::Progress;
use device::{Facts, SystemFacts, Target};
use source::{Compression, FileSource, ImageSource, StreamSource};
use write::{Extent, Report, Writer, HEAD};

/// `nodeimg flash`.
pub fn command(args: &FlashArgs) -> Result<()> {
    let progress = Progress::new();
    let r = flash(args, &SystemFacts, &mut TerminalConfirm, &progress)?;
    progress.finish();
    let target = args.target.as_deref().unwrap_or(Path::new("?"));
    println!(
        "wrote {} bytes of the {} image to {} (read {} bytes of it){}",
        r.written,
        human(r.image_size),
        target.display(),
        r.read,
        if r.verified {
            "; read back and verified"
        } else {
            "; not verified (--no-verify)"
        }
    );
    Ok(())
}

/// Asks before a device is overwritten.
pub trait Confirm {
    /// `Ok(true)` to go ahead; an error when nobody can be asked.
    fn confirm(&mut self, question: &str) -> Result<bool>;
}

/// Asks on the terminal (stdin), refuses when stdin is not one.
pub struct TerminalConfirm;

impl Confirm for TerminalConfirm {
    fn confirm(&mut self, question: &str) -> Result<bool> {
        if !std::io::stdin().is_terminal() {
            bail!("{question}: not asked, stdin is not a terminal; pass --yes to write without asking");
        }
        eprint!("{question} Everything on it will be lost. Write? [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .context("reading the answer")?;
        Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
    }
}

/// What to write.
enum Plan {
    /// These extents of an image of `size` bytes; the rest `must_be_zero`
    /// (no block map: the holes are part of the image) or may hold anything.
    Extents {
        size: u64,
        extents: Vec<Extent>,
        must_be_zero: bool,
    },
    /// A compressed image without a map: all of it, its size known at the end.
    Stream,
}

fn plan(image: &Path, compression: Compression, bmap: Option<&Bmap>) -> Result<Plan> {
    if let Some(b) = bmap {
        if compression == Compression::None {
            let len = std::fs::metadata(image)
                .with_context(|| format!("reading {}", image.display()))?
                .len();
            if len != b.image_size {
                bail!(
                    "{} is {len} bytes but its block map says {}: the map is another image's",
                    image.display(),
                    b.image_size
                );
            }
        }
        let extents = b
            .ranges
            .iter()
            .map(|r| {
                let (start, end) = b.span(r);
                Extent {
                    start,
                    end,
                    sha256: r.sha256.clone(),
                }
            })
            .collect();
        return Ok(Plan::Extents {
            size: b.image_size,
            extents,
            must_be_zero: false,
        });
    }
    if compression != Compression::None {
        return Ok(Plan::Stream);
    }
    let f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let size = f
        .metadata()
        .with_context(|| format!("reading {}", image.display()))?
        .len();
    let mut extents: Vec<Extent> = Vec::new();
    for (s, e) in crate::disk::sparse::data_regions(&f, size)
        .with_context(|| format!("reading {}", image.display()))?
    {
        // Whole blocks: a block device takes discards and writes by sectors.
        let s = s / BLOCK_SIZE * BLOCK_SIZE;
        let e = e.div_ceil(BLOCK_SIZE).saturating_mul(BLOCK_SIZE).min(size);
        match extents.last_mut() {
            Some(last) if s <= last.end => last.end = last.end.max(e),
            _ => extents.push(Extent {
                start: s,
                end: e,
                sha256: None,
            }),
        }
    }
    Ok(Plan::Extents {
        size,
        extents,
        must_be_zero: true,
    })
}

/// Flashes `args.image` to `args.target`, with the machine's facts and the
/// confirmation given.
pub fn flash(
    args: &FlashArgs,
    facts: &dyn Facts,
    confirm: &mut dyn Confirm,
    progress: &Progress,
) -> Result<Report> {
    let (Some(image), Some(target_path)) = (args.image.as_deref(), args.target.as_deref()) else {
        bail!("nothing to flash: give IMAGE and TARGET (or --fastboot OUTDIR)");
    };
    if args.dry_run {
        bail!("--dry-run is for --fastboot; a disk image is checked with `nodeimg inspect`");
    }
    let compression = Compression::detect(image)?;
    let bmap_path = args.bmap.clone().or_else(|| source::bmap_beside(image));
    let bmap = bmap_path.as_deref().map(Bmap::read).transpose()?;
    let mut plan = plan(image, compression, bmap.as_ref())?;
    let image_size = match &plan {
        Plan::Extents { size, .. } => Some(*size),
        Plan::Stream => None,
    };
    let target = device::check_target(target_path, image_size, facts)?;
    let name = target_path.display().to_string();
    refuse_own_inputs(target_path, image, bmap_path.as_deref())?;

    let (file, zeros_are_free, file_len) = match &target {
        Target::File(path) => {
            // A new, sparse file: what is not written reads as zeros.
            let f = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
                .with_context(|| format!("creating {name}"))?;
            if let Some(size) = image_size {
                f.set_len(size).with_context(|| format!("sizing {name}"))?;
            }
            (f, true, Some(image_size))
        }
        Target::Device(path, dev) => {
            if !args.yes && !confirm.confirm(&format!("{}:", dev.describe(path)))? {
                bail!("not confirmed: {name} left as it was");
            }
            // O_EXCL: the kernel refuses a device something else holds open
            // exclusively (mounted, swap, device-mapper).
            let f = File::options()
                .read(true)
                .write(true)
                .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
                .open(path)
                .with_context(|| format!("opening {name} (busy?)"))?;
            // Whatever was on it stops being bootable before anything else.
            f.write_all_at(&vec![0u8; HEAD as usize], 0)
                .and_then(|_| f.sync_all())
                .with_context(|| format!("clearing the first MiB of {name}"))?;
            let discarded = discard_unused(&f, &plan, dev.size);
            if !discarded {
                eprintln!(
                    "note: {name} does not support discarding; its unused ranges keep their old contents"
                );
            }
            (f, discarded, None)
        }
    };
    // Without a map, the image's holes are part of it: where the target does
    // not read zeros, they are written as zeros.
    if let Plan::Extents {
        size,
        extents,
        must_be_zero: true,
    } = &mut plan
    {
        if !zeros_are_free {
            *extents = vec![Extent {
                start: 0,
                end: *size,
                sha256: None,
            }];
        }
    }

    progress.step(format!("writing {} to {name}", image.display()));
    let total = match &plan {
        Plan::Extents { extents, .. } => Some(extents.iter().map(|e| e.end - e.start).sum()),
        Plan::Stream => None,
    };
    let bar = progress.transfer(total, format!("writing {name}"));
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut writer = Writer::new(&file, name.clone(), bar, zeros_are_free);
    let mut src: Box<dyn ImageSource> = match compression {
        Compression::None => Box::new(FileSource::open(image)?),
        c => Box::new(StreamSource::open(image, c)?),
    };
    let size = match &plan {
        Plan::Extents { size, extents, .. } => {
            writer.write_extents(src.as_mut(), extents)?;
            *size
        }
        Plan::Stream => writer.write_stream(src.as_mut())?,
    };
    let file_len = file_len.map(|_| size);
    writer.finish(src.bytes_read(), size, file_len, !args.no_verify)
}

/// Refuses a target that is the image or its map (through another name):
/// replacing it would destroy what is being written.
fn refuse_own_inputs(target: &Path, image: &Path, bmap: Option<&Path>) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(t) = std::fs::metadata(target) else {
        return Ok(());
    };
    for input in std::iter::once(image).chain(bmap) {
        if let Ok(m) = std::fs::metadata(input) {
            if (m.dev(), m.ino()) == (t.dev(), t.ino()) {
                bail!(
                    "refusing {}: it is {} itself",
                    target.display(),
                    input.display()
                );
            }
        }
    }
    Ok(())
}

/// Discards the ranges of the device the plan leaves unwritten with
/// `fallocate` punch-hole, which the block layer carries out with the
/// device's write-zeroes command (deallocating where it can), never by
/// writing zeros itself; devices without the command refuse. Whether all of
/// it worked: then those ranges read as zeros. (`BLKDISCARD` reaches more
/// devices, but is an ioctl without a safe binding, and this crate forbids
/// `unsafe`.)
fn discard_unused(f: &File, plan: &Plan, device_size: u64) -> bool {
    let punch = |s: u64, e: u64| -> bool {
        e <= s
            || rustix::fs::fallocate(
                f,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                s,
                e - s,
            )
            .is_ok()
    };
    match plan {
        Plan::Stream => punch(HEAD, device_size),
        Plan::Extents { extents, .. } => {
            let mut pos = HEAD;
            let mut ok = true;
            for e in extents {
                ok &= punch(pos, e.start.max(pos));
                pos = pos.max(e.end);
            }
            ok & punch(pos, device_size)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use device::{BlockDevice, DevNum};
    use std::path::PathBuf;

    /// A "disk" that is a regular file: the facts say it is a free,
    /// removable block device of its size. Nothing real is touched.
    struct FileDisk(PathBuf, u64);

    impl Facts for FileDisk {
        fn mountinfo(&self) -> Result<String> {
            Ok("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n".into())
        }
        fn block_device(&self, path: &Path) -> Result<Option<BlockDevice>> {
            Ok((path == self.0).then(|| BlockDevice {
                name: "sdz".into(),
                dev: (8, 240),
                size: self.1,
                model: Some("Test Card".into()),
                removable: true,
                is_partition: false,
                partitions: vec![],
                holders: vec![],
            }))
        }
        fn disk_of(&self, dev: DevNum) -> Option<DevNum> {
            Some((dev.0, dev.1 & !15))
        }
        fn dev_of_path(&self, _: &Path) -> Option<DevNum> {
            None
        }
    }

    struct Answer {
        say: Result<bool, String>,
        asked: Vec<String>,
    }

    impl Confirm for Answer {
        fn confirm(&mut self, q: &str) -> Result<bool> {
            self.asked.push(q.to_string());
            self.say.clone().map_err(anyhow::Error::msg)
        }
    }

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.img");
        let data: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 241) as u8).collect();
        let f = File::create(&img).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(&data, 0).unwrap();
        let disk = dir.path().join("disk");
        std::fs::write(&disk, vec![0xeeu8; 16 << 20]).unwrap();
        (dir, img, disk, data)
    }

    fn args(img: &Path, disk: &Path, yes: bool) -> FlashArgs {
        FlashArgs {
            image: Some(img.to_path_buf()),
            target: Some(disk.to_path_buf()),
            yes,
            bmap: None,
            no_verify: false,
            fastboot: None,
            dry_run: false,
        }
    }

    #[test]
    fn a_device_is_written_only_when_confirmed_showing_model_and_size() {
        let (_d, img, disk, data) = setup();
        let facts = FileDisk(disk.clone(), 16 << 20);
        let mut no = Answer {
            say: Ok(false),
            asked: vec![],
        };
        let e = flash(
            &args(&img, &disk, false),
            &facts,
            &mut no,
            &Progress::hidden(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not confirmed"), "{e}");
        assert!(
            no.asked[0].contains("Test Card") && no.asked[0].contains("16 MiB"),
            "{:?}",
            no.asked
        );
        assert!(
            std::fs::read(&disk).unwrap().iter().all(|&b| b == 0xee),
            "written unconfirmed"
        );

        // No terminal to ask on: refused, nothing written.
        let mut nobody = Answer {
            say: Err("stdin is not a terminal; pass --yes".into()),
            asked: vec![],
        };
        let e = flash(
            &args(&img, &disk, false),
            &facts,
            &mut nobody,
            &Progress::hidden(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("--yes"), "{e}");
        assert!(std::fs::read(&disk).unwrap().iter().all(|&b| b == 0xee));

        // --yes: not asked; written, and the unused rest discarded (a
        // regular file punches holes, so it reads as zeros).
        let mut unasked = Answer {
            say: Ok(false),
            asked: vec![],
        };
        let r = flash(
            &args(&img, &disk, true),
            &facts,
            &mut unasked,
            &Progress::hidden(),
        )
        .unwrap();
        assert!(unasked.asked.is_empty());
        assert!(r.verified);
        let got = std::fs::read(&disk).unwrap();
        assert_eq!(got.len(), 16 << 20, "a device keeps its size");
        assert_eq!(&got[..data.len()], &data[..]);
        assert!(
            got[data.len()..].iter().all(|&b| b == 0),
            "old contents left"
        );
    }

    #[test]
    fn dry_run_is_only_for_fastboot() {
        let (_d, img, disk, _) = setup();
        let facts = FileDisk(disk.clone(), 16 << 20);
        let mut a = Answer {
            say: Ok(true),
            asked: vec![],
        };
        let mut dry = args(&img, &disk, true);
        dry.dry_run = true;
        let e = flash(&dry, &facts, &mut a, &Progress::hidden()).unwrap_err();
        assert!(e.to_string().contains("--dry-run"), "{e}");
        assert!(std::fs::read(&disk).unwrap().iter().all(|&b| b == 0xee));
    }

    #[test]
    fn the_image_itself_is_refused_as_its_target() {
        let (d, img, _, data) = setup();
        let link = d.path().join("same");
        std::fs::hard_link(&img, &link).unwrap();
        let facts = FileDisk(d.path().join("none"), 0);
        let mut a = Answer {
            say: Ok(true),
            asked: vec![],
        };
        let e = flash(
            &args(&img, &link, true),
            &facts,
            &mut a,
            &Progress::hidden(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("itself"), "{e}");
        assert_eq!(&std::fs::read(&img).unwrap()[..data.len()], &data[..]);
    }

    #[test]
    fn a_device_smaller_than_the_image_is_refused_before_asking() {
        let (_d, img, disk, _) = setup();
        let facts = FileDisk(disk.clone(), 4 << 20);
        let mut a = Answer {
            say: Ok(true),
            asked: vec![],
        };
        let e = flash(
            &args(&img, &disk, false),
            &facts,
            &mut a,
            &Progress::hidden(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("smaller than"), "{e}");
        assert!(a.asked.is_empty());
    }
}
