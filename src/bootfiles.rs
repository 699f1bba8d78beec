//! The boot files: finding what the board needs in the rootfs (kernel,
//! modules directory, busybox, device trees, firmware) and the files of the
//! FAT boot partition (kernel, initramfs, `cmdline.txt`, `config.txt`).
//!
//! A phone's dtb (`android.dtb`, a path under the kernel's dtbs directory
//! such as `qcom/sdm845-oneplus-enchilada.dtb`) is looked for where
//! postmarketOS installs it (`/boot/dtbs/`), then Alpine's and Debian's places
//! ([`phone_dtb_candidates`]); it is kept in [`Found::dtbs`] under that path.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::board::{Board, BootMethod};
use crate::disk::plan::DiskPlan;
use crate::tree::{self, lookup, Data, Kind, Tree};

/// Paths (relative, canonical) of what the board needs from the rootfs.
pub struct Found {
    pub kernel: String,
    pub modules_dir: String,
    pub kernel_release: String,
    pub busybox: String,
    pub kernel_data: Data,
    /// Name on the boot partition -> (path in the rootfs, contents).
    pub dtbs: BTreeMap<String, (String, Data)>,
    pub firmware: BTreeMap<String, (String, Data)>,
}

/// Finds everything `board` takes from the rootfs.
impl Found {
    /// A digest of what goes from the rootfs onto the boot partition: the
    /// kernel, device trees and firmware, by name.
    pub fn digest(&self) -> Result<[u8; 32]> {
        fn add(h: &mut Sha256, path: &str, data: &Data) -> Result<()> {
            h.update(data.len().to_le_bytes());
            let mut r = data.reader().with_context(|| format!("reading /{path}"))?;
            std::io::copy(&mut r, h).with_context(|| format!("reading /{path}"))?;
            Ok(())
        }
        let mut h = Sha256::new();
        add(&mut h, &self.kernel, &self.kernel_data)?;
        for (name, (path, data)) in self.dtbs.iter().chain(self.firmware.iter()) {
            add(&mut h, path, data)?;
            h.update(name.as_bytes());
            h.update([0]);
        }
        Ok(h.finalize().into())
    }
}

pub fn locate(board: &Board, rootfs: &Tree) -> Result<Found> {
    // Lookups answer with absolute paths; the tree is keyed by relative ones.
    let find = |candidates: &[String]| {
        lookup::find_first(rootfs, candidates).map(|p| p.trim_start_matches('/').to_string())
    };
    let kernel = find(&board.sources.kernel).context("no kernel found")?;
    let kernel_name = tree::file_name(&kernel).to_string();
    let mut module_dirs = Vec::new();
    for pattern in &board.sources.modules {
        module_dirs = lookup::glob(rootfs, pattern)
            .into_iter()
            .map(|p| p.trim_start_matches('/').to_string())
            .filter(|p| matches!(rootfs.get(p).map(|e| &e.kind), Some(Kind::Dir)))
            .collect();
        if !module_dirs.is_empty() {
            break;
        }
    }
    module_dirs.dedup();
    let modules_dir = match module_dirs.len() {
        0 => bail!(
            "no kernel modules directory found; tried: {}",
            board.sources.modules.join(", ")
        ),
        1 => module_dirs.remove(0),
        _ => module_dirs
            .iter()
            .find(|d| kernel_name.ends_with(&format!("-{}", tree::file_name(d))))
            .cloned()
            .ok_or_else(|| {
                anyhow!(
                    "several kernel module directories ({}) and none matches the kernel /{kernel}",
                    module_dirs.join(", ")
                )
            })?,
    };
    let kernel_release = tree::file_name(&modules_dir).to_string();
    let busybox = find(&board.initramfs.busybox).context("no busybox found")?;
    let mut dtbs = BTreeMap::new();
    for (name, candidates) in &board.sources.dtbs {
        let p = find(candidates).with_context(|| format!("device tree {name} not found"))?;
        let d = file_data(rootfs, &p)?;
        dtbs.insert(name.clone(), (p, d));
    }
    if let Some(dtb) = board.android.as_ref().and_then(|a| a.dtb.as_ref()) {
        let candidates = phone_dtb_candidates(dtb);
        let p = find(&candidates).with_context(|| {
            format!(
                "device tree {dtb} not found; tried {}",
                candidates.join(", ")
            )
        })?;
        let d = file_data(rootfs, &p)?;
        dtbs.insert(dtb.clone(), (p, d));
    }
    let mut firmware = BTreeMap::new();
    for (name, candidates) in &board.sources.firmware {
        let p = find(candidates).with_context(|| format!("firmware file {name} not found"))?;
        let d = file_data(rootfs, &p)?;
        firmware.insert(name.clone(), (p, d));
    }
    let kernel_data = file_data(rootfs, &kernel)?;
    Ok(Found {
        kernel,
        kernel_data,
        modules_dir,
        kernel_release,
        busybox,
        dtbs,
        firmware,
    })
}

/// Where a phone's dtb (`qcom/sdm845-oneplus-enchilada.dtb`) may be in a
/// rootfs, in order: postmarketOS, Alpine, Debian.
pub fn phone_dtb_candidates(dtb: &str) -> Vec<String> {
    vec![
        format!("/boot/dtbs/{dtb}"),
        format!("/boot/dtbs-*/{dtb}"),
        format!("/usr/lib/linux-image-*/{dtb}"),
    ]
}

/// The board's cmdline plus where the init finds its disk and partitions.
pub fn kernel_cmdline(board: &Board, plan: &DiskPlan, disk_id: &str) -> String {
    format!(
        "{} {}",
        board.boot.cmdline.trim(),
        plan.cmdline_args(disk_id)
    )
}

/// The files of the FAT boot partition.
pub fn boot_files(
    board: &Board,
    found: &Found,
    initramfs: &Data,
    cmdline: &str,
) -> Result<BTreeMap<String, Data>> {
    let mut files = BTreeMap::new();
    files.insert(board.boot.kernel_name.clone(), found.kernel_data.clone());
    files.insert(board.boot.initramfs_name.clone(), initramfs.clone());
    files.insert(
        "cmdline.txt".to_string(),
        tree::data(format!("{cmdline}\n")),
    );
    for (name, data) in found.dtbs.iter().chain(found.firmware.iter()) {
        files.insert(name.clone(), data.1.clone());
    }
    if board.boot.method == BootMethod::RpiFirmware {
        let mut cfg = String::from("# written by nodeimg\narm_64bit=1\n");
        cfg.push_str(&format!("kernel={}\n", board.boot.kernel_name));
        cfg.push_str(&format!(
            "initramfs {} followkernel\n",
            board.boot.initramfs_name
        ));
        for line in &board.boot.config_txt {
            cfg.push_str(line);
            cfg.push('\n');
        }
        files.insert("config.txt".to_string(), tree::data(cfg));
    }
    if board.boot.method == BootMethod::UBoot {
        if !board.boot.config_txt.is_empty() {
            // The Pi firmware starts U-Boot (named in the board's kernel= line).
            let mut cfg = String::from("# written by nodeimg\narm_64bit=1\n");
            for line in &board.boot.config_txt {
                cfg.push_str(line);
                cfg.push('\n');
            }
            files.insert("config.txt".to_string(), tree::data(cfg));
        }
        files = crate::update::uboot::loader_files(
            files,
            &board.boot.kernel_name,
            &board.boot.initramfs_name,
            board.sources.dtbs.keys().next().map(String::as_str),
            &board.uboot_env()?,
        )?;
    }
    Ok(files)
}

/// A regular file's contents (symlinks already resolved by the lookup).
pub fn file_data(t: &Tree, path: &str) -> Result<Data> {
    match t.get(path).map(|e| &e.kind) {
        Some(Kind::File(d)) => Ok(d.clone()),
        _ => bail!("/{path} is not a regular file"),
    }
}
