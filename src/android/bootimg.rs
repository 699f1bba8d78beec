//! Android boot images (`boot.img`, header versions 0 to 4) and vendor boot
//! images (`vendor_boot.img`, versions 3 and 4), written and parsed as
//! AOSP's `bootimg.h` lays them out and `mkbootimg` fills them in.
//!
//! Written here rather than with a crate: the format is a few fixed
//! little-endian headers followed by page-aligned sections, and the crates
//! that exist cover one version or only parse. AOSP's own `mkbootimg` and
//! `unpack_bootimg` are the tests' oracles.
//!
//! Layout (every section starts on a page boundary, padded with zeros):
//! - v0-v2: header page(s), kernel, ramdisk, second, recovery dtbo (v1+), dtb (v2);
//!   page size from the board; load addresses in the header; the command
//!   line split over `cmdline` (512) and `extra_cmdline` (1024); the `id`
//!   field is a SHA-1 over the sections and their sizes.
//! - v3/v4: 4096-byte pages; kernel and ramdisk (generic); load addresses,
//!   dtb and the vendor ramdisk live in `vendor_boot.img`.

use std::io::Write;
use std::ops::Range;

use anyhow::{bail, Context, Result};
use sha1::{Digest, Sha1};
use thiserror::Error;

use super::board::AndroidBoard;

pub const BOOT_MAGIC: &[u8; 8] = b"ANDROID!";
pub const VENDOR_BOOT_MAGIC: &[u8; 8] = b"VNDRBOOT";
const NAME_SIZE: usize = 16;
const ARGS_SIZE: usize = 512;
const EXTRA_ARGS_SIZE: usize = 1024;
const V3_ARGS_SIZE: usize = ARGS_SIZE + EXTRA_ARGS_SIZE;
const VENDOR_ARGS_SIZE: usize = 2048;
const V0_SIZE: usize = 1632;
const V1_SIZE: usize = 1648;
const V2_SIZE: usize = 1660;
const V3_SIZE: usize = 1580;
const V4_SIZE: usize = 1584;
const VENDOR_V3_SIZE: usize = 2112;
const VENDOR_V4_SIZE: usize = 2128;
/// v3/v4 boot images have a fixed page size.
pub const V3_PAGE_SIZE: u32 = 4096;
const RAMDISK_ENTRY_SIZE: usize = 108;
const RAMDISK_NAME_SIZE: usize = 32;
/// `VENDOR_RAMDISK_TYPE_PLATFORM`: what mkbootimg gives a single `--vendor_ramdisk`.
pub const RAMDISK_TYPE_PLATFORM: u32 = 1;

/// Page sizes bootloaders use (those mkbootimg accepts).
pub fn check_page_size(page: u32) -> Result<(), BootImgError> {
    if page.is_power_of_two() && (2048..=16384).contains(&page) {
        Ok(())
    } else {
        Err(BootImgError::PageSize(page))
    }
}

/// A boot image to write. Addresses are `base` + the offsets, as the board
/// gives them (mkbootimg's `--base`, `--kernel_offset`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootImage {
    pub header_version: u32,
    /// Ignored for v3/v4 (always 4096).
    pub page_size: u32,
    pub kernel: Vec<u8>,
    pub ramdisk: Vec<u8>,
    /// Second-stage loader (v0-v2).
    pub second: Vec<u8>,
    /// Recovery DTBO/ACPIO (v1, v2).
    pub recovery_dtbo: Vec<u8>,
    /// The dtb section (v2 only; v3/v4 keep it in vendor_boot).
    pub dtb: Vec<u8>,
    pub cmdline: String,
    /// The header's product name (v0-v2; at most 15 bytes).
    pub name: String,
    /// The packed `os_version` field ([`pack_os_version`]).
    pub os_version: u32,
    pub base: u64,
    pub kernel_offset: u64,
    pub ramdisk_offset: u64,
    pub second_offset: u64,
    pub tags_offset: u64,
    pub dtb_offset: u64,
}

/// The load addresses of a v0-v2 header, from base + offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    pub kernel: u32,
    pub ramdisk: u32,
    pub second: u32,
    pub tags: u32,
    pub dtb: u64,
}

fn addr32(what: &str, base: u64, off: u64) -> Result<u32> {
    base.checked_add(off)
        .and_then(|a| u32::try_from(a).ok())
        .with_context(|| {
            format!("the {what} address {base:#x} + {off:#x} does not fit the header's 32 bits")
        })
}

impl BootImage {
    /// A boot image for `board` with the given kernel (dtb already appended
    /// if the board wants it), ramdisk and command line.
    pub fn from_board(
        board: &AndroidBoard,
        kernel: Vec<u8>,
        ramdisk: Vec<u8>,
        cmdline: String,
    ) -> Result<BootImage> {
        Ok(BootImage {
            header_version: board.header_version,
            page_size: board.page_size,
            kernel,
            ramdisk,
            cmdline,
            os_version: board.os_version_field()?,
            base: board.base,
            kernel_offset: board.kernel_offset,
            ramdisk_offset: board.ramdisk_offset,
            second_offset: board.second_offset,
            tags_offset: board.tags_offset,
            dtb_offset: board.dtb_offset.unwrap_or(0),
            ..BootImage::default()
        })
    }

    /// The v0-v2 header's addresses (ramdisk and second 0 when empty, as mkbootimg does).
    pub fn addresses(&self) -> Result<Addresses> {
        let kernel = addr32("kernel", self.base, self.kernel_offset)?;
        let ramdisk = addr32("ramdisk", self.base, self.ramdisk_offset)?;
        let second = addr32("second", self.base, self.second_offset)?;
        let tags = addr32("tags", self.base, self.tags_offset)?;
        let dtb = self
            .base
            .checked_add(self.dtb_offset)
            .with_context(|| "the dtb address overflows 64 bits".to_string())?;
        Ok(Addresses {
            kernel,
            ramdisk: if self.ramdisk.is_empty() { 0 } else { ramdisk },
            second: if self.second.is_empty() { 0 } else { second },
            tags,
            dtb,
        })
    }

    /// The `id` field of a v0-v2 header: SHA-1 over each section followed by
    /// its size (u32 LE), as mkbootimg computes it; zero-padded to 32 bytes.
    pub fn id(&self) -> Result<[u8; 32]> {
        let mut sha = Sha1::new();
        let mut add = |what: &str, data: &[u8]| -> Result<()> {
            sha.update(data);
            sha.update(size32(what, data.len())?.to_le_bytes());
            Ok(())
        };
        add("kernel", &self.kernel)?;
        add("ramdisk", &self.ramdisk)?;
        add("second", &self.second)?;
        if self.header_version > 0 {
            add("recovery dtbo", &self.recovery_dtbo)?;
        }
        if self.header_version > 1 {
            add("dtb", &self.dtb)?;
        }
        let mut id = [0u8; 32];
        id[..20].copy_from_slice(&sha.finalize());
        Ok(id)
    }
}

fn size32(what: &str, len: usize) -> Result<u32> {
    u32::try_from(len)
        .with_context(|| format!("the {what} is {len} bytes, over the 4 GiB a header can describe"))
}

/// A phone's boot image, and for header v3/v4 its vendor boot image, from
/// the board: the dtb appended to the kernel when `append_dtb` is set, in the
/// boot image's dtb section for v2, in vendor_boot.img for v3/v4. The
/// ramdisk goes into boot.img (v3/v4: the generic ramdisk, after the empty
/// vendor ramdisk), the command line into boot.img's header.
pub fn for_board(
    board: &AndroidBoard,
    kernel: Vec<u8>,
    ramdisk: Vec<u8>,
    dtb: Option<Vec<u8>>,
    cmdline: String,
) -> Result<(BootImage, Option<VendorBootImage>)> {
    let needs_dtb = board.append_dtb || board.header_version >= 2;
    let dtb = match dtb {
        Some(d) if d.is_empty() => bail!("the dtb is empty"),
        Some(d) => d,
        None if needs_dtb => bail!(
            "board header version {} / append_dtb = {} needs a dtb",
            board.header_version,
            board.append_dtb
        ),
        None => Vec::new(),
    };
    let kernel = if board.append_dtb {
        let mut k = kernel;
        k.extend_from_slice(&dtb);
        k
    } else {
        kernel
    };
    let mut boot = BootImage::from_board(board, kernel, ramdisk, cmdline)?;
    let vendor = match board.header_version {
        2 => {
            boot.dtb = dtb;
            None
        }
        3 | 4 => Some(VendorBootImage::from_board(
            board,
            Vec::new(),
            dtb,
            String::new(),
        )),
        _ => None,
    };
    Ok((boot, vendor))
}

/// Packs "A.B.C" and "YYYY-MM" as the header's `os_version` field:
/// `(A<<14 | B<<7 | C) << 11 | (YYYY-2000)<<4 | MM`. Empty strings give 0.
pub fn pack_os_version(version: &str, patch_level: &str) -> Result<u32> {
    let mut v = 0u32;
    if !version.is_empty() {
        let parts: Vec<&str> = version.split('.').collect();
        if parts.len() > 3 {
            bail!("os_version {version:?}: at most three numbers (\"11.0.0\")");
        }
        for (i, p) in [0usize, 1, 2].iter().map(|&i| (i, parts.get(i))) {
            let n: u32 = match p {
                Some(p) => p
                    .parse()
                    .ok()
                    .filter(|n| *n < 128)
                    .with_context(|| format!("os_version {version:?}: each number 0 to 127"))?,
                None => 0,
            };
            v |= n << (14 - 7 * i as u32);
        }
    }
    let mut p = 0u32;
    if !patch_level.is_empty() {
        let (y, m) = patch_level
            .split_once('-')
            .and_then(|(y, m)| Some((y.parse::<u32>().ok()?, m.get(..2)?.parse::<u32>().ok()?)))
            .filter(|(y, m)| (2000..2128).contains(y) && (1..=12).contains(m))
            .with_context(|| format!("os_patch_level {patch_level:?}: want YYYY-MM (2000-2127)"))?;
        p = ((y - 2000) << 4) | m;
    }
    Ok((v << 11) | p)
}

/// "A.B.C" and "YYYY-MM" of a packed `os_version` field (as unpack_bootimg prints them).
pub fn unpack_os_version(field: u32) -> (String, String) {
    let v = field >> 11;
    let p = field & 0x7ff;
    (
        format!("{}.{}.{}", v >> 14, (v >> 7) & 0x7f, v & 0x7f),
        format!("{:04}-{:02}", (p >> 4) + 2000, p & 0xf),
    )
}

/// Little-endian header builder.
struct Header(Vec<u8>);

impl Header {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    /// A NUL-terminated string in a field of `size` bytes.
    fn cstr(&mut self, what: &str, s: &[u8], size: usize) -> Result<()> {
        if s.contains(&0) {
            bail!("the {what} contains a NUL byte");
        }
        if s.len() >= size {
            bail!(
                "the {what} is {} bytes; the field holds at most {}",
                s.len(),
                size - 1
            );
        }
        self.0.extend_from_slice(s);
        self.0.resize(self.0.len() + size - s.len(), 0);
        Ok(())
    }
}

fn pad_len(len: usize, page: usize) -> usize {
    (page - len % page) % page
}

/// Writes `data` and zeros up to the next page boundary.
fn write_padded(out: &mut impl Write, data: &[u8], page: u32) -> std::io::Result<()> {
    out.write_all(data)?;
    let pad = pad_len(data.len(), page as usize);
    out.write_all(&vec![0u8; pad])
}

fn pages(len: usize, page: u32) -> u64 {
    (len as u64).div_ceil(u64::from(page))
}

/// Writes `img` as a boot image of its header version.
pub fn write(img: &BootImage, out: &mut impl Write) -> Result<()> {
    let mut h = Header(Vec::with_capacity(V2_SIZE));
    h.bytes(BOOT_MAGIC);
    let v = img.header_version;
    let page = match v {
        0..=2 => {
            check_page_size(img.page_size)?;
            let a = img.addresses()?;
            h.u32(size32("kernel", img.kernel.len())?);
            h.u32(a.kernel);
            h.u32(size32("ramdisk", img.ramdisk.len())?);
            h.u32(a.ramdisk);
            h.u32(size32("second", img.second.len())?);
            h.u32(a.second);
            h.u32(a.tags);
            h.u32(img.page_size);
            h.u32(v);
            h.u32(img.os_version);
            h.cstr("board name", img.name.as_bytes(), NAME_SIZE)?;
            let cmd = img.cmdline.as_bytes();
            let max = ARGS_SIZE - 1 + EXTRA_ARGS_SIZE - 1;
            if cmd.len() > max {
                bail!(
                    "the kernel command line is {} bytes; header version {v} holds at most {max}",
                    cmd.len()
                );
            }
            let split = cmd.len().min(ARGS_SIZE - 1);
            h.cstr("kernel command line", &cmd[..split], ARGS_SIZE)?;
            h.bytes(&img.id()?);
            h.cstr("kernel command line", &cmd[split..], EXTRA_ARGS_SIZE)?;
            if v >= 1 {
                h.u32(size32("recovery dtbo", img.recovery_dtbo.len())?);
                let off = if img.recovery_dtbo.is_empty() {
                    0
                } else {
                    u64::from(img.page_size)
                        * (1 + pages(img.kernel.len(), img.page_size)
                            + pages(img.ramdisk.len(), img.page_size)
                            + pages(img.second.len(), img.page_size))
                };
                h.u64(off);
                h.u32(if v == 1 { V1_SIZE } else { V2_SIZE } as u32);
            }
            if v == 2 {
                if img.dtb.is_empty() {
                    bail!("header version 2 needs a dtb");
                }
                h.u32(size32("dtb", img.dtb.len())?);
                h.u64(a.dtb);
            }
            img.page_size
        }
        3 | 4 => {
            if !img.second.is_empty() || !img.recovery_dtbo.is_empty() || !img.dtb.is_empty() {
                bail!("header version {v} has no second, recovery dtbo or dtb section (the dtb goes into vendor_boot.img)");
            }
            h.u32(size32("kernel", img.kernel.len())?);
            h.u32(size32("ramdisk", img.ramdisk.len())?);
            h.u32(img.os_version);
            h.u32(if v == 3 { V3_SIZE } else { V4_SIZE } as u32);
            for _ in 0..4 {
                h.u32(0);
            }
            h.u32(v);
            h.cstr("kernel command line", img.cmdline.as_bytes(), V3_ARGS_SIZE)?;
            if v == 4 {
                // No boot signature (signature_size 0), as mkbootimg without --gki_signing.
                h.u32(0);
            }
            V3_PAGE_SIZE
        }
        _ => bail!("boot image header version {v} does not exist (0 to 4)"),
    };
    let mut w = || -> std::io::Result<()> {
        write_padded(out, &h.0, page)?;
        write_padded(out, &img.kernel, page)?;
        write_padded(out, &img.ramdisk, page)?;
        if v <= 2 {
            write_padded(out, &img.second, page)?;
        }
        if (1..=2).contains(&v) {
            write_padded(out, &img.recovery_dtbo, page)?;
        }
        if v == 2 {
            write_padded(out, &img.dtb, page)?;
        }
        Ok(())
    };
    w().context("writing the boot image")
}

/// A vendor boot image (header version 3 or 4) to write. A v4 image gets a
/// vendor ramdisk table with the one ramdisk as a "platform" entry with an
/// empty name, as `mkbootimg --vendor_ramdisk` makes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VendorBootImage {
    pub header_version: u32,
    pub page_size: u32,
    pub vendor_ramdisk: Vec<u8>,
    pub vendor_cmdline: String,
    pub name: String,
    pub dtb: Vec<u8>,
    /// v4 bootconfig section (may be empty).
    pub bootconfig: Vec<u8>,
    pub base: u64,
    pub kernel_offset: u64,
    pub ramdisk_offset: u64,
    pub tags_offset: u64,
    pub dtb_offset: u64,
}

impl VendorBootImage {
    /// A vendor boot image for `board` (header version 3 or 4).
    pub fn from_board(
        board: &AndroidBoard,
        vendor_ramdisk: Vec<u8>,
        dtb: Vec<u8>,
        vendor_cmdline: String,
    ) -> VendorBootImage {
        VendorBootImage {
            header_version: board.header_version,
            page_size: board.page_size,
            vendor_ramdisk,
            vendor_cmdline,
            dtb,
            base: board.base,
            kernel_offset: board.kernel_offset,
            ramdisk_offset: board.ramdisk_offset,
            tags_offset: board.tags_offset,
            dtb_offset: board.dtb_offset.unwrap_or(0),
            ..VendorBootImage::default()
        }
    }
}

/// Writes `img` as a vendor boot image.
pub fn write_vendor(img: &VendorBootImage, out: &mut impl Write) -> Result<()> {
    let v = img.header_version;
    if !(3..=4).contains(&v) {
        bail!("vendor boot images have header version 3 or 4, not {v}");
    }
    check_page_size(img.page_size)?;
    if img.dtb.is_empty() {
        bail!("a vendor boot image needs a dtb");
    }
    if v == 3 && !img.bootconfig.is_empty() {
        bail!("vendor boot header version 3 has no bootconfig section");
    }
    let ramdisk_len = size32("vendor ramdisk", img.vendor_ramdisk.len())?;
    let mut h = Header(Vec::with_capacity(VENDOR_V4_SIZE));
    h.bytes(VENDOR_BOOT_MAGIC);
    h.u32(v);
    h.u32(img.page_size);
    h.u32(addr32("kernel", img.base, img.kernel_offset)?);
    h.u32(addr32("ramdisk", img.base, img.ramdisk_offset)?);
    h.u32(ramdisk_len);
    h.cstr(
        "vendor command line",
        img.vendor_cmdline.as_bytes(),
        VENDOR_ARGS_SIZE,
    )?;
    h.u32(addr32("tags", img.base, img.tags_offset)?);
    h.cstr("board name", img.name.as_bytes(), NAME_SIZE)?;
    h.u32(if v == 3 {
        VENDOR_V3_SIZE
    } else {
        VENDOR_V4_SIZE
    } as u32);
    h.u32(size32("dtb", img.dtb.len())?);
    h.u64(
        img.base
            .checked_add(img.dtb_offset)
            .context("the dtb address overflows 64 bits")?,
    );
    let mut table = Vec::new();
    if v == 4 {
        h.u32(RAMDISK_ENTRY_SIZE as u32); // table size: one entry
        h.u32(1);
        h.u32(RAMDISK_ENTRY_SIZE as u32);
        h.u32(size32("bootconfig", img.bootconfig.len())?);
        table.extend_from_slice(&ramdisk_len.to_le_bytes());
        table.extend_from_slice(&0u32.to_le_bytes());
        table.extend_from_slice(&RAMDISK_TYPE_PLATFORM.to_le_bytes());
        table.resize(table.len() + RAMDISK_NAME_SIZE + 16 * 4, 0);
    }
    let page = img.page_size;
    let mut w = || -> std::io::Result<()> {
        write_padded(out, &h.0, page)?;
        write_padded(out, &img.vendor_ramdisk, page)?;
        write_padded(out, &img.dtb, page)?;
        if v == 4 {
            write_padded(out, &table, page)?;
            write_padded(out, &img.bootconfig, page)?;
        }
        Ok(())
    };
    w().context("writing the vendor boot image")
}

// ---------------------------------------------------------------------------
// Parsing

/// Why bytes are not a boot or vendor boot image. Each names the field or
/// section at fault.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BootImgError {
    #[error("not an Android boot image (no ANDROID! or VNDRBOOT magic)")]
    Magic,
    #[error("the image ends at {len} bytes, inside its {header_len}-byte header")]
    ShortHeader { len: usize, header_len: usize },
    #[error("header version {0} is not one of 0 to 4")]
    Version(u32),
    #[error("vendor boot header version {0} is not 3 or 4")]
    VendorVersion(u32),
    #[error("page size {0} is not a power of two from 2048 to 16384")]
    PageSize(u32),
    #[error(
        "the {section} ({size} bytes at offset {offset}) runs past the end of the {len}-byte image"
    )]
    PastEnd {
        section: &'static str,
        offset: u64,
        size: u64,
        len: usize,
    },
    #[error("the {0} field is not NUL-terminated")]
    Unterminated(&'static str),
    #[error("the vendor ramdisk table {0}")]
    RamdiskTable(String),
}

/// A section's bytes inside the parsed image.
pub type Section = Range<usize>;

/// A boot.img header and where its sections are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedBoot {
    pub header_version: u32,
    pub page_size: u32,
    /// Header size field (v1+; v0: the v0 size).
    pub header_size: u32,
    pub os_version: u32,
    pub name: String,
    /// `cmdline` + `extra_cmdline` for v0-v2.
    pub cmdline: String,
    /// v0-v2 addresses (zero for v3/v4).
    pub kernel_addr: u32,
    pub ramdisk_addr: u32,
    pub second_addr: u32,
    pub tags_addr: u32,
    pub dtb_addr: u64,
    pub recovery_dtbo_offset: u64,
    /// The `id` field (v0-v2).
    pub id: Option<[u8; 32]>,
    pub kernel: Section,
    pub ramdisk: Section,
    pub second: Section,
    pub recovery_dtbo: Section,
    pub dtb: Section,
    /// v4 boot signature.
    pub signature: Section,
}

/// One entry of a v4 vendor ramdisk table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamdiskEntry {
    pub ramdisk_type: u32,
    pub name: String,
    pub board_id: [u32; 16],
    pub data: Section,
}

/// A vendor_boot.img header and where its sections are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedVendorBoot {
    pub header_version: u32,
    pub page_size: u32,
    pub header_size: u32,
    pub kernel_addr: u32,
    pub ramdisk_addr: u32,
    pub tags_addr: u32,
    pub dtb_addr: u64,
    pub name: String,
    pub cmdline: String,
    /// All vendor ramdisks, concatenated (what the bootloader loads).
    pub vendor_ramdisk: Section,
    pub dtb: Section,
    /// v4: the table's entries (within `vendor_ramdisk`).
    pub ramdisks: Vec<RamdiskEntry>,
    pub bootconfig: Section,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Boot(ParsedBoot),
    VendorBoot(ParsedVendorBoot),
}

/// Reads little-endian fields at fixed offsets of a header known to be long enough.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u32(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[at..at + 4]);
        u32::from_le_bytes(b)
    }
    fn u64(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[at..at + 8]);
        u64::from_le_bytes(b)
    }
    /// The NUL-terminated string of the field `[at, at+size)`.
    fn cstr(&self, what: &'static str, at: usize, size: usize) -> Result<String, BootImgError> {
        let f = &self.0[at..at + size];
        let end = f
            .iter()
            .position(|&b| b == 0)
            .ok_or(BootImgError::Unterminated(what))?;
        Ok(String::from_utf8_lossy(&f[..end]).into_owned())
    }
    /// Like `cstr`, but a completely filled field is taken whole (v0-v2
    /// `cmdline`, continued in `extra_cmdline`, by older mkbootimg).
    fn str_field(&self, at: usize, size: usize) -> String {
        let f = &self.0[at..at + size];
        let end = f.iter().position(|&b| b == 0).unwrap_or(size);
        String::from_utf8_lossy(&f[..end]).into_owned()
    }
}

/// Lays out page-aligned sections one after the other, checking each ends
/// inside the image.
struct Cursor {
    pos: u64,
    page: u64,
    len: usize,
}

impl Cursor {
    fn section(&mut self, section: &'static str, size: u32) -> Result<Section, BootImgError> {
        let size = u64::from(size);
        let offset = self.pos;
        let past = BootImgError::PastEnd {
            section,
            offset,
            size,
            len: self.len,
        };
        let end = offset.checked_add(size).ok_or(past.clone())?;
        if end > self.len as u64 {
            return Err(past);
        }
        // end <= len: both fit usize.
        let range = offset as usize..end as usize;
        let padded = size
            .div_ceil(self.page)
            .checked_mul(self.page)
            .ok_or(past.clone())?;
        self.pos = offset.checked_add(padded).ok_or(past)?;
        Ok(range)
    }
}

/// Parses a boot image (v0-v4) or vendor boot image (v3, v4): header fields
/// and the place of each section, all checked to lie inside `data`.
pub fn parse(data: &[u8]) -> Result<Parsed, BootImgError> {
    if data.len() >= 8 && &data[..8] == BOOT_MAGIC {
        parse_boot(data).map(Parsed::Boot)
    } else if data.len() >= 8 && &data[..8] == VENDOR_BOOT_MAGIC {
        parse_vendor(data).map(Parsed::VendorBoot)
    } else {
        Err(BootImgError::Magic)
    }
}

fn need(data: &[u8], header_len: usize) -> Result<Fields<'_>, BootImgError> {
    if data.len() < header_len {
        Err(BootImgError::ShortHeader {
            len: data.len(),
            header_len,
        })
    } else {
        Ok(Fields(data))
    }
}

fn parse_boot(data: &[u8]) -> Result<ParsedBoot, BootImgError> {
    // header_version is at offset 40 in every version.
    let f = need(data, 44)?;
    let v = f.u32(40);
    let empty = 0..0;
    match v {
        0..=2 => {
            let f = need(data, [V0_SIZE, V1_SIZE, V2_SIZE][v as usize])?;
            let page = f.u32(36);
            check_page_size(page)?;
            let cmdline =
                f.str_field(64, ARGS_SIZE) + &f.cstr("extra_cmdline", 608, EXTRA_ARGS_SIZE)?;
            let mut id = [0u8; 32];
            id.copy_from_slice(&data[576..608]);
            let mut c = Cursor {
                pos: u64::from(page),
                page: u64::from(page),
                len: data.len(),
            };
            let kernel = c.section("kernel", f.u32(8))?;
            let ramdisk = c.section("ramdisk", f.u32(16))?;
            let second = c.section("second", f.u32(24))?;
            let (recovery_dtbo, recovery_dtbo_offset, header_size) = if v >= 1 {
                (
                    c.section("recovery dtbo", f.u32(1632))?,
                    f.u64(1636),
                    f.u32(1644),
                )
            } else {
                (empty.clone(), 0, V0_SIZE as u32)
            };
            let (dtb, dtb_addr) = if v == 2 {
                (c.section("dtb", f.u32(1648))?, f.u64(1652))
            } else {
                (empty.clone(), 0)
            };
            Ok(ParsedBoot {
                header_version: v,
                page_size: page,
                header_size,
                os_version: f.u32(44),
                name: f.cstr("name", 48, NAME_SIZE)?,
                cmdline,
                kernel_addr: f.u32(12),
                ramdisk_addr: f.u32(20),
                second_addr: f.u32(28),
                tags_addr: f.u32(32),
                dtb_addr,
                recovery_dtbo_offset,
                id: Some(id),
                kernel,
                ramdisk,
                second,
                recovery_dtbo,
                dtb,
                signature: empty,
            })
        }
        3 | 4 => {
            let f = need(data, if v == 3 { V3_SIZE } else { V4_SIZE })?;
            let page = u64::from(V3_PAGE_SIZE);
            let mut c = Cursor {
                pos: page,
                page,
                len: data.len(),
            };
            let kernel = c.section("kernel", f.u32(8))?;
            let ramdisk = c.section("ramdisk", f.u32(12))?;
            let signature = if v == 4 {
                c.section("boot signature", f.u32(1580))?
            } else {
                empty.clone()
            };
            Ok(ParsedBoot {
                header_version: v,
                page_size: V3_PAGE_SIZE,
                header_size: f.u32(20),
                os_version: f.u32(16),
                name: String::new(),
                cmdline: f.cstr("cmdline", 44, V3_ARGS_SIZE)?,
                kernel_addr: 0,
                ramdisk_addr: 0,
                second_addr: 0,
                tags_addr: 0,
                dtb_addr: 0,
                recovery_dtbo_offset: 0,
                id: None,
                kernel,
                ramdisk,
                second: empty.clone(),
                recovery_dtbo: empty.clone(),
                dtb: empty,
                signature,
            })
        }
        _ => Err(BootImgError::Version(v)),
    }
}

fn parse_vendor(data: &[u8]) -> Result<ParsedVendorBoot, BootImgError> {
    let f = need(data, 12)?;
    let v = f.u32(8);
    if !(3..=4).contains(&v) {
        return Err(BootImgError::VendorVersion(v));
    }
    let f = need(
        data,
        if v == 3 {
            VENDOR_V3_SIZE
        } else {
            VENDOR_V4_SIZE
        },
    )?;
    let page = f.u32(12);
    check_page_size(page)?;
    let mut c = Cursor {
        pos: u64::from(page),
        page: u64::from(page),
        len: data.len(),
    };
    let vendor_ramdisk = c.section("vendor ramdisk", f.u32(24))?;
    let dtb = c.section("dtb", f.u32(2100))?;
    let mut ramdisks = Vec::new();
    let mut bootconfig = 0..0;
    if v == 4 {
        let table = c.section("vendor ramdisk table", f.u32(2112))?;
        let count = f.u32(2116);
        let entry_size = f.u32(2120);
        if (entry_size as usize) < RAMDISK_ENTRY_SIZE {
            return Err(BootImgError::RamdiskTable(format!(
                "entry size {entry_size} is below {RAMDISK_ENTRY_SIZE}"
            )));
        }
        let needed = u64::from(count) * u64::from(entry_size);
        if needed > table.len() as u64 {
            return Err(BootImgError::RamdiskTable(format!(
                "has {count} entries of {entry_size} bytes, more than its {} bytes",
                table.len()
            )));
        }
        for i in 0..count as usize {
            // i * entry_size < table.len(): no overflow.
            let at = table.start + i * entry_size as usize;
            let e = Fields(&data[at..at + RAMDISK_ENTRY_SIZE]);
            let (size, offset) = (e.u32(0), e.u32(4));
            let end = u64::from(offset) + u64::from(size);
            if end > vendor_ramdisk.len() as u64 {
                return Err(BootImgError::RamdiskTable(format!(
                    "entry {i} ({size} bytes at {offset}) lies outside the {}-byte vendor ramdisk",
                    vendor_ramdisk.len()
                )));
            }
            let mut board_id = [0u32; 16];
            for (k, id) in board_id.iter_mut().enumerate() {
                *id = e.u32(12 + RAMDISK_NAME_SIZE + 4 * k);
            }
            let start = vendor_ramdisk.start + offset as usize;
            ramdisks.push(RamdiskEntry {
                ramdisk_type: e.u32(8),
                name: e
                    .cstr("ramdisk name", 12, RAMDISK_NAME_SIZE)
                    .unwrap_or_else(|_| e.str_field(12, RAMDISK_NAME_SIZE)),
                board_id,
                data: start..start + size as usize,
            });
        }
        bootconfig = c.section("bootconfig", f.u32(2124))?;
    }
    Ok(ParsedVendorBoot {
        header_version: v,
        page_size: page,
        header_size: f.u32(2096),
        kernel_addr: f.u32(16),
        ramdisk_addr: f.u32(20),
        tags_addr: f.u32(2076),
        dtb_addr: f.u64(2104),
        name: f.cstr("name", 2080, NAME_SIZE)?,
        cmdline: f.cstr("vendor cmdline", 28, VENDOR_ARGS_SIZE)?,
        vendor_ramdisk,
        dtb,
        ramdisks,
        bootconfig,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(v: u32) -> BootImage {
        BootImage {
            header_version: v,
            page_size: 2048,
            kernel: vec![0xaa; 5000],
            ramdisk: vec![0xbb; 3000],
            second: if v <= 2 { vec![0xcc; 10] } else { Vec::new() },
            recovery_dtbo: if (1..=2).contains(&v) {
                vec![0xdd; 20]
            } else {
                Vec::new()
            },
            dtb: if v == 2 { vec![0xee; 30] } else { Vec::new() },
            cmdline: "console=ttyMSM0 ".repeat(40),
            name: "nodeimg".into(),
            os_version: pack_os_version("11.0.0", "2021-06").unwrap(),
            base: 0x8000_0000,
            kernel_offset: 0x8000,
            ramdisk_offset: 0x0100_0000,
            second_offset: 0x00f0_0000,
            tags_offset: 0x100,
            dtb_offset: 0x01f0_0000,
        }
    }

    #[test]
    fn every_version_round_trips() {
        for v in 0..=4 {
            let img = sample(v);
            let mut out = Vec::new();
            write(&img, &mut out).unwrap();
            let page = if v >= 3 { 4096 } else { 2048 };
            assert_eq!(out.len() % page, 0, "v{v}");
            let Parsed::Boot(p) = parse(&out).unwrap() else {
                panic!("v{v}: not a boot image")
            };
            assert_eq!(p.header_version, v);
            assert_eq!(&out[p.kernel.clone()], &img.kernel[..]);
            assert_eq!(&out[p.ramdisk.clone()], &img.ramdisk[..]);
            assert_eq!(&out[p.second.clone()], &img.second[..]);
            assert_eq!(&out[p.recovery_dtbo.clone()], &img.recovery_dtbo[..]);
            assert_eq!(&out[p.dtb.clone()], &img.dtb[..]);
            assert_eq!(p.cmdline, img.cmdline, "v{v}");
            assert_eq!(p.os_version, img.os_version);
            if v <= 2 {
                assert_eq!(p.kernel_addr, 0x8000_8000);
                assert_eq!(p.id, Some(img.id().unwrap()));
                assert_eq!(p.name, "nodeimg");
            }
        }
    }

    #[test]
    fn the_dtb_goes_where_the_board_says() {
        let board = |v: u32, append: bool| AndroidBoard {
            header_version: v,
            page_size: 4096,
            base: 0,
            kernel_offset: 0x8000,
            ramdisk_offset: 0x0100_0000,
            second_offset: 0,
            tags_offset: 0x100,
            dtb_offset: Some(0x01f0_0000),
            dtb: Some("qcom/x.dtb".into()),
            append_dtb: append,
            product: "p".into(),
            boot_partition: "boot".into(),
            vendor_boot_partition: Some("vendor_boot".into()),
            rootfs_partition: "userdata".into(),
            sector_size: 4096,
            max_download_size: None,
            os_version: None,
            os_patch_level: None,
        };
        let k = || vec![1u8; 10];
        let d = || Some(vec![2u8; 3]);
        let (b, v) = for_board(&board(0, true), k(), vec![3], d(), "c".into()).unwrap();
        assert_eq!(b.kernel, [vec![1u8; 10], vec![2u8; 3]].concat());
        assert!(b.dtb.is_empty() && v.is_none());
        let (b, v) = for_board(&board(2, false), k(), vec![3], d(), "c".into()).unwrap();
        assert_eq!((b.kernel.len(), b.dtb.len()), (10, 3));
        assert!(v.is_none());
        let (b, v) = for_board(&board(4, false), k(), vec![3], d(), "c".into()).unwrap();
        assert!(b.dtb.is_empty());
        assert_eq!(v.unwrap().dtb, vec![2u8; 3]);
        assert!(for_board(&board(0, true), k(), vec![3], None, "c".into()).is_err());
        let (b, _) = for_board(&board(0, false), k(), vec![3], None, "c".into()).unwrap();
        assert_eq!(b.kernel, k());
    }

    #[test]
    fn cmdline_limits() {
        let mut img = sample(0);
        img.cmdline = "x".repeat(1534);
        write(&img, &mut Vec::new()).unwrap();
        img.cmdline.push('x');
        let e = write(&img, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("at most 1534"), "{e}");
        let mut img = sample(3);
        img.cmdline = "x".repeat(1536);
        assert!(write(&img, &mut Vec::new()).is_err());
    }

    #[test]
    fn os_version_packs_as_aosp() {
        let f = pack_os_version("11.2.3", "2021-06").unwrap();
        assert_eq!(f, ((11 << 14 | 2 << 7 | 3) << 11) | (21 << 4 | 6));
        assert_eq!(unpack_os_version(f), ("11.2.3".into(), "2021-06".into()));
        assert!(pack_os_version("128", "").is_err());
        assert!(pack_os_version("", "2021-13").is_err());
    }

    #[test]
    fn vendor_boot_round_trips() {
        for v in [3, 4] {
            let img = VendorBootImage {
                header_version: v,
                page_size: 4096,
                vendor_ramdisk: vec![1; 7000],
                vendor_cmdline: "androidboot.hardware=qcom".into(),
                name: "sm8250".into(),
                dtb: vec![2; 100],
                bootconfig: if v == 4 {
                    b"a=b\n".to_vec()
                } else {
                    Vec::new()
                },
                base: 0,
                kernel_offset: 0x8000,
                ramdisk_offset: 0x0100_0000,
                tags_offset: 0x100,
                dtb_offset: 0x01f0_0000,
            };
            let mut out = Vec::new();
            write_vendor(&img, &mut out).unwrap();
            let Parsed::VendorBoot(p) = parse(&out).unwrap() else {
                panic!("not vendor boot")
            };
            assert_eq!(&out[p.vendor_ramdisk.clone()], &img.vendor_ramdisk[..]);
            assert_eq!(&out[p.dtb.clone()], &img.dtb[..]);
            assert_eq!(&out[p.bootconfig.clone()], &img.bootconfig[..]);
            assert_eq!(p.cmdline, img.vendor_cmdline);
            assert_eq!(p.dtb_addr, 0x01f0_0000);
            assert_eq!(p.ramdisks.len(), if v == 4 { 1 } else { 0 });
        }
    }

    #[test]
    fn malformed_headers_are_errors() {
        let mut out = Vec::new();
        write(&sample(2), &mut out).unwrap();
        let mut bad = out.clone();
        bad[0] = b'X';
        assert_eq!(parse(&bad), Err(BootImgError::Magic));
        let mut bad = out.clone();
        bad[40..44].copy_from_slice(&99u32.to_le_bytes());
        assert_eq!(parse(&bad), Err(BootImgError::Version(99)));
        let mut bad = out.clone();
        bad[36..40].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(parse(&bad), Err(BootImgError::PageSize(3)));
        let mut bad = out.clone();
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse(&bad),
            Err(BootImgError::PastEnd {
                section: "kernel",
                ..
            })
        ));
        assert!(matches!(
            parse(&out[..100]),
            Err(BootImgError::ShortHeader { .. })
        ));
    }
}
