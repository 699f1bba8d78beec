//! A phone's outputs (boards with `[android]`), assembled from what the
//! pipeline made for every board:
//!
//! - `boot.img`: the kernel (with the dtb appended where the board says so),
//!   the shared initramfs followed by a small archive with the node's config
//!   (phones have no FAT partition a user could edit: the config travels in
//!   boot.img), the kernel cmdline, and for header v2 the dtb;
//! - `vendor_boot.img` (header v3/v4 only): the dtb and the load addresses;
//! - `rootfs.img`: the disk the pipeline assembled (a GPT with the board's
//!   sector size holding system A, system B and data) as an Android sparse
//!   image, split into `rootfs.img.0`, `rootfs.img.1`, ... when larger than
//!   the bootloader's maximum download size.
//!
//! The names are the ones `nodeimg flash --fastboot` (`android::fastboot`) flashes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::android::board::AndroidBoard;
use crate::android::{bootimg, sparse};
use crate::bootfiles::Found;
use crate::initramfs;
use crate::join::NodeFile;
use crate::output;

pub const BOOT_IMG: &str = "boot.img";
pub const VENDOR_BOOT_IMG: &str = "vendor_boot.img";
pub const ROOTFS_IMG: &str = "rootfs.img";

/// What goes into a phone's boot images.
pub struct BootInputs<'a> {
    pub android: &'a AndroidBoard,
    pub found: &'a Found,
    /// The shared initramfs (gzip'd newc).
    pub initramfs: &'a [u8],
    /// The node's config files (`nodeimg/node.env`, ...); empty without --join.
    pub node_files: &'a BTreeMap<String, NodeFile>,
    pub cmdline: &'a str,
    pub mtime: u64,
}

/// Writes `boot.img` (and for header v3/v4 `vendor_boot.img`) into `dir`;
/// returns the files written. Where the dtb goes (appended, v2 section,
/// vendor_boot) is `android::bootimg::for_board`'s business.
pub fn write_boot_images(inp: &BootInputs, dir: &Path) -> Result<Vec<PathBuf>> {
    let a = inp.android;
    let dtb = match &a.dtb {
        Some(name) => {
            let (path, data) = inp
                .found
                .dtbs
                .get(name)
                .with_context(|| format!("the device tree {name} was not looked up"))?;
            Some(data.to_vec().with_context(|| format!("reading /{path}"))?)
        }
        None => None,
    };
    let kernel = inp
        .found
        .kernel_data
        .to_vec()
        .with_context(|| format!("reading /{}", inp.found.kernel))?;
    let mut ramdisk = inp.initramfs.to_vec();
    if !inp.node_files.is_empty() {
        ramdisk.extend(initramfs::node_config_archive(inp.node_files, inp.mtime)?);
    }
    let (boot, vendor) = bootimg::for_board(a, kernel, ramdisk, dtb, inp.cmdline.to_string())?;
    let mut written = Vec::new();
    let mut bytes = Vec::new();
    bootimg::write(&boot, &mut bytes)?;
    let path = dir.join(BOOT_IMG);
    output::write_synced(&path, &bytes)?;
    written.push(path);
    if let Some(vendor) = vendor {
        let mut bytes = Vec::new();
        bootimg::write_vendor(&vendor, &mut bytes)?;
        let path = dir.join(VENDOR_BOOT_IMG);
        output::write_synced(&path, &bytes)?;
        written.push(path);
    }
    Ok(written)
}

/// Writes the raw disk image `raw` as `rootfs.img` (or its pieces) in `dir`;
/// returns the files written, in flashing order.
pub fn write_rootfs(android: &AndroidBoard, raw: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    let pieces = sparse::write_sparse(raw, &dir.join(ROOTFS_IMG), android.max_download_size)?;
    for p in &pieces {
        output::sync(p)?;
    }
    Ok(pieces)
}
