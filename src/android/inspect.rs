//! Reading phone outputs back: boot.img, vendor_boot.img and Android sparse
//! images, told apart by their magic. [`describe`] gives the header fields,
//! section sizes and command lines as JSON (and, with a directory, writes
//! the sections out: kernel, ramdisk, dtb, ...; a sparse image expanded to
//! `raw.img`); [`render`] is the same for people.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::bootimg::{self, Parsed, Section};
use super::sparse::{self, ChunkData};

/// Boot images are read whole; none is anywhere near this.
const MAX_BOOT_IMAGE: u64 = 1 << 30;

/// Which Android format a file's first bytes announce, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Boot,
    VendorBoot,
    Sparse,
}

/// The format of `head` (the file's first 8 bytes or more).
pub fn kind(head: &[u8]) -> Option<Kind> {
    if head.starts_with(bootimg::BOOT_MAGIC) {
        Some(Kind::Boot)
    } else if head.starts_with(bootimg::VENDOR_BOOT_MAGIC) {
        Some(Kind::VendorBoot)
    } else if sparse::is_sparse(head) {
        Some(Kind::Sparse)
    } else {
        None
    }
}

fn hex32(v: u32) -> String {
    format!("{v:#010x}")
}

fn hex64(v: u64) -> String {
    format!("{v:#x}")
}

fn section(r: &Section) -> Value {
    json!({ "offset": r.start, "size": r.len() })
}

/// Describes the boot, vendor boot or sparse image at `path`; with
/// `extract_to`, writes its sections there (created if missing).
pub fn describe(path: &Path, extract_to: Option<&Path>) -> Result<Value> {
    let ctx = || path.display().to_string();
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut head = [0u8; 8];
    let n = f.read(&mut head).with_context(ctx)?;
    match kind(&head[..n]) {
        Some(Kind::Sparse) => describe_sparse(path, extract_to),
        Some(_) => {
            let len = f.metadata().with_context(ctx)?.len();
            if len > MAX_BOOT_IMAGE {
                bail!(
                    "{}: a {len}-byte boot image is not plausible",
                    path.display()
                );
            }
            let data = std::fs::read(path).with_context(ctx)?;
            let parsed = bootimg::parse(&data).with_context(ctx)?;
            describe_boot(&data, &parsed, extract_to).with_context(ctx)
        }
        None => bail!(
            "{}: not a boot.img, vendor_boot.img or Android sparse image (unknown magic)",
            path.display()
        ),
    }
}

fn extract(dir: Option<&Path>, data: &[u8], parts: &[(&str, &Section)]) -> Result<Value> {
    let Some(dir) = dir else {
        return Ok(Value::Null);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for (name, r) in parts {
        if r.is_empty() {
            continue;
        }
        let p = dir.join(name);
        crate::output::write_synced(&p, &data[(*r).clone()])?;
        written.push(p.display().to_string());
    }
    Ok(json!(written))
}

fn describe_boot(data: &[u8], parsed: &Parsed, extract_to: Option<&Path>) -> Result<Value> {
    Ok(match parsed {
        Parsed::Boot(b) => {
            let (ver, patch) = bootimg::unpack_os_version(b.os_version);
            let mut v = json!({
                "format": "android-boot",
                "header_version": b.header_version,
                "header_size": b.header_size,
                "page_size": b.page_size,
                "os_version": ver,
                "os_patch_level": patch,
                "cmdline": b.cmdline,
                "sections": {
                    "kernel": section(&b.kernel),
                    "ramdisk": section(&b.ramdisk),
                },
            });
            if b.header_version <= 2 {
                v["name"] = json!(b.name);
                v["addresses"] = json!({
                    "kernel": hex32(b.kernel_addr),
                    "ramdisk": hex32(b.ramdisk_addr),
                    "second": hex32(b.second_addr),
                    "tags": hex32(b.tags_addr),
                });
                v["sections"]["second"] = section(&b.second);
                if let Some(id) = b.id {
                    v["id"] = json!(hex::encode(&id[..20]));
                }
            }
            if (1..=2).contains(&b.header_version) {
                v["sections"]["recovery_dtbo"] = section(&b.recovery_dtbo);
            }
            if b.header_version == 2 {
                v["addresses"]["dtb"] = json!(hex64(b.dtb_addr));
                v["sections"]["dtb"] = section(&b.dtb);
            }
            if b.header_version == 4 {
                v["sections"]["signature"] = section(&b.signature);
            }
            let x = extract(
                extract_to,
                data,
                &[
                    ("kernel", &b.kernel),
                    ("ramdisk", &b.ramdisk),
                    ("second", &b.second),
                    ("recovery_dtbo", &b.recovery_dtbo),
                    ("dtb", &b.dtb),
                ],
            )?;
            if !x.is_null() {
                v["extracted"] = x;
            }
            v
        }
        Parsed::VendorBoot(b) => {
            let ramdisks: Vec<Value> = b
                .ramdisks
                .iter()
                .map(|r| {
                    json!({
                        "name": r.name,
                        "type": r.ramdisk_type,
                        "offset": r.data.start,
                        "size": r.data.len(),
                    })
                })
                .collect();
            let mut v = json!({
                "format": "android-vendor-boot",
                "header_version": b.header_version,
                "header_size": b.header_size,
                "page_size": b.page_size,
                "name": b.name,
                "vendor_cmdline": b.cmdline,
                "addresses": {
                    "kernel": hex32(b.kernel_addr),
                    "ramdisk": hex32(b.ramdisk_addr),
                    "tags": hex32(b.tags_addr),
                    "dtb": hex64(b.dtb_addr),
                },
                "sections": {
                    "vendor_ramdisk": section(&b.vendor_ramdisk),
                    "dtb": section(&b.dtb),
                },
            });
            if b.header_version == 4 {
                v["sections"]["bootconfig"] = section(&b.bootconfig);
                v["vendor_ramdisks"] = json!(ramdisks);
            }
            let x = extract(
                extract_to,
                data,
                &[
                    ("vendor_ramdisk", &b.vendor_ramdisk),
                    ("dtb", &b.dtb),
                    ("bootconfig", &b.bootconfig),
                ],
            )?;
            if !x.is_null() {
                v["extracted"] = x;
            }
            v
        }
    })
}

fn describe_sparse(path: &Path, extract_to: Option<&Path>) -> Result<Value> {
    let img = sparse::read_file(path)?;
    let (mut raw, mut fill, mut dont_care, mut crc) = (0u64, 0u64, 0u64, 0u64);
    let mut raw_blocks = 0u64;
    for c in &img.chunks {
        match c.data {
            ChunkData::Raw { .. } => {
                raw += 1;
                raw_blocks += u64::from(c.blocks);
            }
            ChunkData::Fill(_) => fill += 1,
            ChunkData::DontCare => dont_care += 1,
            ChunkData::Crc32(_) => crc += 1,
        }
    }
    let h = img.header;
    let mut v = json!({
        "format": "android-sparse",
        "version": format!("{}.{}", h.major, h.minor),
        "block_size": h.blk_sz,
        "blocks": h.total_blks,
        "raw_size": img.raw_len(),
        "file_size": img.file_len,
        "chunks": { "raw": raw, "fill": fill, "dont_care": dont_care, "crc32": crc },
        "raw_bytes": raw_blocks * u64::from(h.blk_sz),
    });
    if let Some(dir) = extract_to {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let out = dir.join("raw.img");
        sparse::expand(&[path.to_path_buf()], &out)?;
        v["extracted"] = json!([out.display().to_string()]);
    }
    Ok(v)
}

/// For `nodeimg inspect IMAGE [--json] [--extract DIR]`: when `path` is a
/// boot.img, vendor_boot.img or sparse image, prints its description (JSON
/// or text) and returns true; returns false, printing nothing, for any other
/// file (a disk image for the caller to inspect).
pub fn inspect_command(path: &Path, json: bool, extract_to: Option<&Path>) -> Result<bool> {
    let mut head = [0u8; 8];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .with_context(|| format!("reading {}", path.display()))?;
    if kind(&head[..n]).is_none() {
        return Ok(false);
    }
    let v = describe(path, extract_to)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render(&v));
    }
    Ok(true)
}

/// [`describe`]'s JSON as indented `key: value` lines.
pub fn render(v: &Value) -> String {
    let mut s = String::new();
    render_into(&mut s, v, 0);
    s
}

fn render_into(s: &mut String, v: &Value, depth: usize) {
    let pad = "  ".repeat(depth);
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                match val {
                    Value::Object(_) => {
                        if is_section(val) {
                            let _ =
                                writeln!(s, "{pad}{k}: {} bytes at {}", val["size"], val["offset"]);
                        } else {
                            let _ = writeln!(s, "{pad}{k}:");
                            render_into(s, val, depth + 1);
                        }
                    }
                    Value::Array(a) => {
                        let _ = writeln!(s, "{pad}{k}:");
                        for item in a {
                            match item {
                                Value::String(t) => {
                                    let _ = writeln!(s, "{pad}  - {t}");
                                }
                                other => {
                                    let _ = writeln!(s, "{pad}  -");
                                    render_into(s, other, depth + 2);
                                }
                            }
                        }
                    }
                    Value::String(t) => {
                        let _ = writeln!(s, "{pad}{k}: {t}");
                    }
                    other => {
                        let _ = writeln!(s, "{pad}{k}: {other}");
                    }
                }
            }
        }
        other => {
            let _ = writeln!(s, "{pad}{other}");
        }
    }
}

fn is_section(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|m| m.len() == 2 && m.contains_key("offset") && m.contains_key("size"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::android::bootimg::{BootImage, VendorBootImage};

    #[test]
    fn describes_and_extracts_a_boot_image() {
        let dir = tempfile::tempdir().unwrap();
        let img = BootImage {
            header_version: 2,
            page_size: 4096,
            kernel: vec![1; 5000],
            ramdisk: vec![2; 300],
            dtb: vec![3; 40],
            cmdline: "console=ttyMSM0 rootwait".into(),
            name: "sm8250".into(),
            base: 0,
            kernel_offset: 0x8000,
            ramdisk_offset: 0x0100_0000,
            tags_offset: 0x100,
            dtb_offset: 0x01f0_0000,
            ..BootImage::default()
        };
        let p = dir.path().join("boot.img");
        let mut out = Vec::new();
        bootimg::write(&img, &mut out).unwrap();
        std::fs::write(&p, &out).unwrap();
        let x = dir.path().join("x");
        let v = describe(&p, Some(&x)).unwrap();
        assert_eq!(v["format"], "android-boot");
        assert_eq!(v["header_version"], 2);
        assert_eq!(v["cmdline"], "console=ttyMSM0 rootwait");
        assert_eq!(v["sections"]["kernel"]["size"], 5000);
        assert_eq!(v["sections"]["dtb"]["size"], 40);
        assert_eq!(v["addresses"]["kernel"], "0x00008000");
        assert_eq!(v["addresses"]["dtb"], "0x1f00000");
        assert_eq!(std::fs::read(x.join("kernel")).unwrap(), img.kernel);
        assert_eq!(std::fs::read(x.join("ramdisk")).unwrap(), img.ramdisk);
        assert_eq!(std::fs::read(x.join("dtb")).unwrap(), img.dtb);
        assert!(!x.join("second").exists());
        let text = render(&v);
        assert!(text.contains("kernel: 5000 bytes at 4096"), "{text}");
        assert!(text.contains("cmdline: console=ttyMSM0 rootwait"), "{text}");
    }

    #[test]
    fn describes_vendor_boot_and_sparse_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let vb = VendorBootImage {
            header_version: 4,
            page_size: 4096,
            vendor_ramdisk: vec![5; 100],
            vendor_cmdline: "androidboot.x=1".into(),
            dtb: vec![6; 10],
            ..VendorBootImage::default()
        };
        let p = dir.path().join("vendor_boot.img");
        let mut out = Vec::new();
        bootimg::write_vendor(&vb, &mut out).unwrap();
        std::fs::write(&p, &out).unwrap();
        let v = describe(&p, None).unwrap();
        assert_eq!(v["format"], "android-vendor-boot");
        assert_eq!(v["vendor_cmdline"], "androidboot.x=1");
        assert_eq!(v["vendor_ramdisks"][0]["size"], 100);

        let raw = dir.path().join("raw");
        let f = File::create(&raw).unwrap();
        f.set_len(1 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[7u8; 5000], 8192).unwrap();
        let sp = dir.path().join("rootfs.img");
        sparse::write_sparse(&raw, &sp, None).unwrap();
        let x = dir.path().join("x");
        let v = describe(&sp, Some(&x)).unwrap();
        assert_eq!(v["format"], "android-sparse");
        assert_eq!(v["raw_size"], 1 << 20);
        assert_eq!(v["raw_bytes"], 4096);
        assert_eq!(
            std::fs::read(x.join("raw.img")).unwrap(),
            std::fs::read(&raw).unwrap()
        );

        let other = dir.path().join("other");
        std::fs::write(&other, b"hello world").unwrap();
        let e = describe(&other, None).unwrap_err();
        assert!(e.to_string().contains("unknown magic"), "{e}");

        // The inspect command's hook: Android formats handled, others left to the caller.
        assert!(!inspect_command(&other, true, None).unwrap());
        assert!(inspect_command(&p, true, None).unwrap());
        assert!(inspect_command(&sp, false, None).unwrap());
        let mut broken = out.clone();
        broken[24..28].copy_from_slice(&u32::MAX.to_le_bytes()); // vendor ramdisk size
        std::fs::write(&p, &broken).unwrap();
        let e = inspect_command(&p, true, None).unwrap_err();
        assert!(format!("{e:#}").contains("vendor ramdisk"), "{e:#}");
    }
}
