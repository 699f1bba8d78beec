//! Reading back what we wrote: the partition table of a disk image (through
//! the checked reader [`crate::disk::read`]) and its partitions' bytes.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

pub mod probe;

use anyhow::{bail, Context, Result};

pub use crate::disk::read::{read_table, FoundPartition, FoundTable};

/// Copies partition `number` of `image` into its own file.
pub fn extract_partition(image: &Path, number: u32, dest: &Path) -> Result<()> {
    let table = read_table(image)?;
    let p = table
        .partitions
        .iter()
        .find(|p| p.number == number)
        .with_context(|| format!("{}: no partition {number}", image.display()))?;
    let mut src = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    src.seek(SeekFrom::Start(p.start))
        .with_context(|| format!("seeking to partition {number} of {}", image.display()))?;
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
