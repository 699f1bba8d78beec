//! The `[android]` section of a phone's board file: how its bootloader wants
//! the boot image (header version, page size, load addresses), which
//! partitions fastboot writes, and what `fastboot getvar product` says.
//!
//! Numbers may be written as TOML integers, hex literals included
//! (`base = 0x80000000`).

use anyhow::{bail, Result};
use serde::Deserialize;

use super::bootimg;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AndroidBoard {
    /// Boot image header version, 0 to 4.
    pub header_version: u32,
    /// Flash page size the bootloader assumes (v0-v2 boot.img, vendor_boot.img).
    pub page_size: u32,
    /// Physical base address; the load addresses are base + offset.
    pub base: u64,
    pub kernel_offset: u64,
    pub ramdisk_offset: u64,
    #[serde(default)]
    pub second_offset: u64,
    pub tags_offset: u64,
    /// DTB load offset (header v2, and vendor_boot v3/v4).
    #[serde(default)]
    pub dtb_offset: Option<u64>,
    /// The device tree under `/boot/dtbs/` of the rootfs ("qcom/sdm845-oneplus-enchilada.dtb").
    #[serde(default)]
    pub dtb: Option<String>,
    /// The dtb is appended to the kernel image (older Qualcomm bootloaders).
    #[serde(default)]
    pub append_dtb: bool,
    /// What `fastboot getvar product` reports on this phone.
    pub product: String,
    /// Partition that takes boot.img.
    #[serde(default = "default_boot_partition")]
    pub boot_partition: String,
    /// Partition that takes vendor_boot.img (header v3/v4).
    #[serde(default)]
    pub vendor_boot_partition: Option<String>,
    /// Partition that takes the rootfs image (a GPT disk of its own).
    #[serde(default = "default_rootfs_partition")]
    pub rootfs_partition: String,
    /// Logical sector size of the phone's storage (UFS: 4096).
    #[serde(default = "default_sector_size")]
    pub sector_size: u32,
    /// Largest file the bootloader accepts in one download, in bytes; larger
    /// sparse images are split into pieces.
    #[serde(default)]
    pub max_download_size: Option<u64>,
    /// Android version in the header ("11.0.0"); bootloaders with rollback
    /// protection may want it.
    #[serde(default)]
    pub os_version: Option<String>,
    /// Security patch level in the header ("2021-06").
    #[serde(default)]
    pub os_patch_level: Option<String>,
}

fn default_boot_partition() -> String {
    "boot".to_string()
}

fn default_rootfs_partition() -> String {
    "userdata".to_string()
}

fn default_sector_size() -> u32 {
    4096
}

impl AndroidBoard {
    /// Checks what serde cannot: version and page size in range, the
    /// addresses a header can hold, partitions and product named.
    pub fn validate(&self) -> Result<()> {
        if self.header_version > 4 {
            bail!(
                "android.header_version is {}; versions 0 to 4 exist",
                self.header_version
            );
        }
        bootimg::check_page_size(self.page_size)
            .map_err(|e| anyhow::anyhow!("android.page_size: {e}"))?;
        if !matches!(self.sector_size, 512 | 4096) {
            bail!("android.sector_size is {}; 512 or 4096", self.sector_size);
        }
        if self.header_version == 2 && self.dtb_offset.is_none() {
            bail!("android.dtb_offset is required for header version 2 (the dtb's load address)");
        }
        if self.header_version >= 3 && self.vendor_boot_partition.is_none() {
            bail!(
                "android.vendor_boot_partition is required for header version {} (vendor_boot.img holds the dtb and the load addresses)",
                self.header_version
            );
        }
        if self.header_version >= 2 && self.dtb.is_none() {
            bail!(
                "android.dtb is required for header version {} (the image carries the dtb)",
                self.header_version
            );
        }
        if self.append_dtb && self.dtb.is_none() {
            bail!("android.append_dtb is set but android.dtb names no dtb");
        }
        for (what, name) in [
            ("product", &self.product),
            ("boot_partition", &self.boot_partition),
            ("rootfs_partition", &self.rootfs_partition),
        ] {
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!("android.{what} {name:?} must be a non-empty word");
            }
        }
        if let Some(m) = self.max_download_size {
            if m < super::sparse::MIN_PIECE {
                bail!(
                    "android.max_download_size is {m} bytes; at least {} is needed for one sparse piece",
                    super::sparse::MIN_PIECE
                );
            }
        }
        self.os_version_field()?;
        // The load addresses must fit the header's fields.
        bootimg::BootImage::from_board(self, Vec::new(), Vec::new(), String::new())?.addresses()?;
        Ok(())
    }

    /// The header's `os_version` field: version and patch level packed as AOSP does.
    pub fn os_version_field(&self) -> Result<u32> {
        bootimg::pack_os_version(
            self.os_version.as_deref().unwrap_or(""),
            self.os_patch_level.as_deref().unwrap_or(""),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENCHILADA: &str = r#"
header_version = 0
page_size = 4096
base = 0x00000000
kernel_offset = 0x00008000
ramdisk_offset = 0x01000000
second_offset = 0x00f00000
tags_offset = 0x00000100
dtb = "qcom/sdm845-oneplus-enchilada.dtb"
append_dtb = true
product = "sdm845"
max_download_size = 0x20000000
"#;

    #[test]
    fn hex_numbers_and_defaults() {
        let b: AndroidBoard = toml::from_str(ENCHILADA).unwrap();
        assert_eq!(b.kernel_offset, 0x8000);
        assert_eq!(b.max_download_size, Some(512 << 20));
        assert_eq!(b.boot_partition, "boot");
        assert_eq!(b.rootfs_partition, "userdata");
        assert_eq!(b.sector_size, 4096);
        b.validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let typo = format!("{ENCHILADA}kernel_ofset = 1\n");
        let e = toml::from_str::<AndroidBoard>(&typo).unwrap_err();
        assert!(e.to_string().contains("kernel_ofset"), "{e}");
        let check = |from: &str, to: &str, want: &str| {
            let b: AndroidBoard = toml::from_str(&ENCHILADA.replace(from, to)).unwrap();
            let e = b.validate().unwrap_err();
            assert!(format!("{e:#}").contains(want), "{to}: {e:#}");
        };
        check(
            "header_version = 0",
            "header_version = 5",
            "versions 0 to 4",
        );
        check("page_size = 4096", "page_size = 3000", "page_size");
        check("header_version = 0", "header_version = 2", "dtb_offset");
        check(
            "header_version = 0",
            "header_version = 3",
            "vendor_boot_partition",
        );
        check("base = 0x00000000", "base = 0xffff0000", "does not fit");
        check("product = \"sdm845\"", "product = \"\"", "product");
    }
}
