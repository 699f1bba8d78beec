//! Reading back what we wrote: the partition table of a disk image (through
//! the checked reader [`crate::disk::read`]), its partitions' bytes, and
//! `nodeimg inspect`: the table, each filesystem ([`probe`]), the boot files
//! and node config on the FAT partition (secrets redacted), and the
//! `SHA256SUMS` and `.bmap` checks of an output directory.
//!
//! The image is untrusted: sizes come from the checked table reader and the
//! superblock readers, listings are bounded, and every problem is one error line.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

pub mod probe;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::cli::InspectArgs;
use crate::disk::bmap::Bmap;
use crate::disk::layout::human;
use probe::FsInfo;

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

/// What `nodeimg inspect` reports (its `--json` form).
#[derive(Debug, Serialize)]
pub struct Inspection {
    pub image: String,
    pub size: u64,
    pub table: TableInfo,
    /// Files on the first FAT partition, with their sizes.
    pub boot_files: Vec<BootFile>,
    /// The node config files (`nodeimg/` on the FAT partition), secrets redacted.
    pub node_config: Vec<ConfigFile>,
    /// `SHA256SUMS` beside the image, checked file by file (and the image
    /// against its `.bmap`); `None` when there is no `SHA256SUMS`.
    pub checksums: Option<Vec<Check>>,
}

#[derive(Debug, Serialize)]
pub struct TableInfo {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub disk_id: String,
    pub partitions: Vec<PartitionInfo>,
}

#[derive(Debug, Serialize)]
pub struct PartitionInfo {
    pub number: u32,
    pub start: u64,
    pub size: u64,
    pub name: Option<String>,
    pub filesystem: Option<FsInfo>,
}

#[derive(Debug, Serialize)]
pub struct BootFile {
    pub path: String,
    pub size: u64,
}

#[derive(Debug, Serialize)]
pub struct ConfigFile {
    pub path: String,
    pub content: String,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub file: String,
    /// "OK", "FAILED" or "MISSING".
    pub status: &'static str,
    pub detail: Option<String>,
}

/// Listing bounds for a hostile FAT: entries and directory depth.
const MAX_BOOT_FILES: usize = 10_000;
const MAX_DEPTH: usize = 16;
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// `nodeimg inspect`.
pub fn command(args: &InspectArgs) -> Result<()> {
    // boot.img, vendor_boot.img and Android sparse images have their own reader.
    if crate::android::inspect::inspect_command(&args.image, args.json, args.extract.as_deref())? {
        return Ok(());
    }
    if args.extract.is_some() {
        bail!(
            "{}: --extract is for boot.img, vendor_boot.img and sparse images, not disk images",
            args.image.display()
        );
    }
    let i = inspect(&args.image)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &i).context("writing JSON")?;
        writeln!(out)?;
    } else {
        write!(out, "{}", render(&i))?;
    }
    let failed = i.checksums.iter().flatten().any(|c| c.status != "OK");
    if failed {
        bail!(
            "{}: checksum verification FAILED (see above)",
            args.image.display()
        );
    }
    Ok(())
}

/// Everything `inspect` reports about `image`.
pub fn inspect(image: &Path) -> Result<Inspection> {
    let table = read_table(image)?;
    let f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let size = f
        .metadata()
        .with_context(|| format!("reading {}", image.display()))?
        .len();
    let mut partitions = Vec::new();
    let mut boot = None;
    for p in &table.partitions {
        let head_len = usize::try_from(p.size)
            .unwrap_or(usize::MAX)
            .min(probe::HEAD);
        let mut head = vec![0u8; head_len];
        f.read_exact_at(&mut head, p.start)
            .with_context(|| format!("reading partition {} of {}", p.number, image.display()))?;
        let mut fs = probe::probe(&head, p.size)
            .with_context(|| format!("{}: partition {}", image.display(), p.number))?;
        if let Some(info) = fs.as_mut().filter(|i| i.kind == "vfat") {
            let ctx = || {
                format!(
                    "{}: the FAT filesystem of partition {}",
                    image.display(),
                    p.number
                )
            };
            let fat = open_fat(&f, p.start, p.size).with_context(ctx)?;
            let stats = fat.stats().with_context(ctx)?;
            let cluster = u64::from(stats.cluster_size());
            let used = u64::from(stats.total_clusters().saturating_sub(stats.free_clusters()));
            info.used = used.checked_mul(cluster);
            if boot.is_none() {
                boot = Some((
                    fat_files(&fat).with_context(ctx)?,
                    node_config(&fat).with_context(ctx)?,
                ));
            }
        }
        partitions.push(PartitionInfo {
            number: p.number,
            start: p.start,
            size: p.size,
            name: (!p.name.is_empty()).then(|| p.name.clone()),
            filesystem: fs,
        });
    }
    let (boot_files, node_config) = boot.unwrap_or_default();
    Ok(Inspection {
        image: image.display().to_string(),
        size,
        table: TableInfo {
            kind: if table.gpt.is_some() { "gpt" } else { "mbr" },
            disk_id: table.disk_id.clone(),
            partitions,
        },
        boot_files,
        node_config,
        checksums: check_sums(image)?,
    })
}

/// A partition of the image as a file of its own, read-only (fatfs wants
/// Write too: every write is refused).
struct Slice<'a> {
    file: &'a File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Slice<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        let k = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += k as u64;
        Ok(k)
    }
}

impl Write for Slice<'_> {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "inspect is read-only",
        ))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for Slice<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let bad = || {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek outside the partition",
            )
        };
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        }
        .filter(|&p| p <= self.len)
        .ok_or_else(bad)?;
        self.pos = pos;
        Ok(pos)
    }
}

type Fat<'a> = fatfs::FileSystem<Slice<'a>>;

fn open_fat(f: &File, start: u64, len: u64) -> Result<Fat<'_>> {
    let slice = Slice {
        file: f,
        start,
        len,
        pos: 0,
    };
    Ok(fatfs::FileSystem::new(slice, fatfs::FsOptions::new())?)
}

fn fat_files(fat: &Fat<'_>) -> Result<Vec<BootFile>> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), fat.root_dir(), 0usize)];
    while let Some((prefix, dir, depth)) = stack.pop() {
        for e in dir.iter() {
            let e = e?;
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            if out.len() >= MAX_BOOT_FILES {
                bail!("more than {MAX_BOOT_FILES} files");
            }
            let path = format!("{prefix}{name}");
            if e.is_dir() {
                if depth >= MAX_DEPTH {
                    bail!("directories nested deeper than {MAX_DEPTH} at {path}");
                }
                stack.push((format!("{path}/"), e.to_dir(), depth + 1));
            } else {
                out.push(BootFile {
                    path,
                    size: e.len(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn node_config(fat: &Fat<'_>) -> Result<Vec<ConfigFile>> {
    let Ok(dir) = fat.root_dir().open_dir("nodeimg") else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in dir.iter() {
        let e = e?;
        if e.is_dir() {
            continue;
        }
        let name = e.file_name();
        let path = format!("nodeimg/{name}");
        let mut bytes = Vec::new();
        e.to_file().take(MAX_CONFIG_BYTES).read_to_end(&mut bytes)?;
        out.push(ConfigFile {
            content: redact(&name, &String::from_utf8_lossy(&bytes)),
            path,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Words in a setting's name that make its value a secret.
const SECRET_WORDS: [&str; 6] = ["token", "psk", "secret", "password", "passwd", "private"];
pub const REDACTED: &str = "<redacted>";

/// A config file with its secrets replaced by [`REDACTED`]: the whole of a
/// file named `token`; the value of every `key: value` / `key=value` line
/// (YAML, env files, `--flag=value` list items) whose key names a secret;
/// and the password of any `scheme://user:password@host` URL.
pub fn redact(file_name: &str, text: &str) -> String {
    if SECRET_WORDS
        .iter()
        .any(|w| file_name.to_ascii_lowercase().contains(w))
    {
        return format!("{REDACTED}\n");
    }
    let mut out = String::new();
    for line in text.lines() {
        let cut = line.find([':', '=']).filter(|&i| {
            let key = line[..i].to_ascii_lowercase();
            SECRET_WORDS.iter().any(|w| key.contains(w))
        });
        let line = match cut {
            Some(i) => format!("{} {REDACTED}", &line[..=i]),
            None => redact_url_passwords(line),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn redact_url_passwords(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        let auth_end = after.find(['/', ' ', '"', '\'']).unwrap_or(after.len());
        match after[..auth_end].rfind('@') {
            Some(at) => {
                let userinfo = &after[..at];
                match userinfo.find(':') {
                    Some(c) => {
                        out.push_str(&userinfo[..=c]);
                        out.push_str(REDACTED);
                    }
                    None => out.push_str(userinfo),
                }
                rest = &after[at..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    out
}

/// Checks `SHA256SUMS` beside the image, and each listed `.bmap` against
/// the image it maps.
fn check_sums(image: &Path) -> Result<Option<Vec<Check>>> {
    let dir = image.parent().unwrap_or(Path::new("."));
    let sums_path = dir.join("SHA256SUMS");
    if !sums_path.is_file() {
        return Ok(None);
    }
    let len = std::fs::metadata(&sums_path)
        .with_context(|| format!("reading {}", sums_path.display()))?
        .len();
    if len > MAX_CONFIG_BYTES {
        bail!(
            "{}: {len} bytes, too large for a checksum list",
            sums_path.display()
        );
    }
    let text = std::fs::read_to_string(&sums_path)
        .with_context(|| format!("reading {}", sums_path.display()))?;
    let mut checks = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let Some((sum, name)) = line.split_once("  ").or_else(|| line.split_once(" *")) else {
            bail!(
                "{} line {}: not `<sha256>  <file>`",
                sums_path.display(),
                n + 1
            );
        };
        if name.contains('/') || name == ".." {
            bail!(
                "{} line {}: {name:?} is not a file beside it",
                sums_path.display(),
                n + 1
            );
        }
        let path = dir.join(name);
        let (status, detail) = if !path.is_file() {
            ("MISSING", None)
        } else if crate::output::sha256_file(&path)?.eq_ignore_ascii_case(sum.trim()) {
            ("OK", None)
        } else {
            ("FAILED", Some("SHA-256 differs".to_string()))
        };
        checks.push(Check {
            file: name.to_string(),
            status,
            detail,
        });
        if status == "OK" {
            if let Some(mapped) = name.strip_suffix(".bmap").map(|m| dir.join(m)) {
                checks.push(check_against_bmap(&mapped, &path, name)?);
            }
        }
    }
    Ok(Some(checks))
}

fn check_against_bmap(image: &Path, bmap_path: &Path, bmap_name: &str) -> Result<Check> {
    let file = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !image.is_file() {
        return Ok(Check {
            file,
            status: "MISSING",
            detail: None,
        });
    }
    let bmap = Bmap::read(bmap_path)?;
    let size = std::fs::metadata(image)
        .with_context(|| format!("reading {}", image.display()))?
        .len();
    if size != bmap.image_size {
        return Ok(Check {
            file,
            status: "FAILED",
            detail: Some(format!(
                "{size} bytes, {bmap_name} says {}",
                bmap.image_size
            )),
        });
    }
    let bad = bmap.verify_image(image)?;
    Ok(match bad.first() {
        None => Check {
            file,
            status: "OK",
            detail: Some(format!(
                "{} mapped ranges match {bmap_name}",
                bmap.ranges.len()
            )),
        },
        Some(r) => Check {
            file,
            status: "FAILED",
            detail: Some(format!(
                "{} of {} ranges differ from {bmap_name} (first: blocks {}-{})",
                bad.len(),
                bmap.ranges.len(),
                r.first,
                r.last
            )),
        },
    })
}

/// The human form of an inspection.
pub fn render(i: &Inspection) -> String {
    let mut s = String::new();
    let t = &i.table;
    s.push_str(&format!(
        "{}: {} ({} bytes), {} table, disk id {}\n\n",
        i.image,
        human(i.size),
        i.size,
        t.kind,
        t.disk_id
    ));
    s.push_str(&format!(
        "{:>2}  {:>10}  {:>10}  {:<8}  {:<9} {:<13} {:<36}  {:>10}  {:>10}\n",
        "#", "start", "size", "name", "fs", "label", "uuid", "fs size", "used"
    ));
    for p in &t.partitions {
        let f = p.filesystem.as_ref();
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "{:>2}  {:>10}  {:>10}  {:<8}  {:<9} {:<13} {:<36}  {:>10}  {:>10}\n",
            p.number,
            human(p.start),
            human(p.size),
            opt(p.name.clone()),
            f.map_or("-", |f| f.kind),
            opt(f.and_then(|f| f.label.clone())),
            opt(f.and_then(|f| f.uuid.clone())),
            opt(f.map(|f| human(f.size))),
            opt(f.and_then(|f| f.used).map(human)),
        ));
    }
    if !i.boot_files.is_empty() {
        s.push_str("\nboot files:\n");
        for b in &i.boot_files {
            s.push_str(&format!("  {:<40} {:>10}\n", b.path, b.size));
        }
    }
    if !i.node_config.is_empty() {
        s.push_str("\nnode config (secrets redacted):\n");
        for c in &i.node_config {
            s.push_str(&format!("  {}:\n", c.path));
            for l in c.content.lines() {
                s.push_str(&format!("    {l}\n"));
            }
        }
    }
    match &i.checksums {
        None => s.push_str("\nchecksums: no SHA256SUMS beside the image\n"),
        Some(cs) => {
            s.push_str("\nchecksums (SHA256SUMS):\n");
            for c in cs {
                let detail = c
                    .detail
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default();
                s.push_str(&format!("  {:<40} {}{detail}\n", c.file, c.status));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_the_rest_kept() {
        assert_eq!(redact("token", "K10abc::server:xyz\n"), "<redacted>\n");
        let yaml = "server: https://10.0.0.1:6443\n\
                    token-file: /etc/rancher/node/token\n\
                    node-label:\n  - role=edge\n\
                    kubelet-arg:\n  - --token=abcdef\n\
                    datastore-endpoint: postgres://k3s:hunter2@db:5432/k3s\n\
                    NODEIMG_WIFI_PSK=supersecret\n\
                    configs:\n  reg:\n    auth:\n      password: pw123\n";
        let r = redact("k3s-config.yaml", yaml);
        for secret in [
            "abcdef",
            "hunter2",
            "supersecret",
            "pw123",
            "/etc/rancher/node/token",
        ] {
            assert!(!r.contains(secret), "{secret} in:\n{r}");
        }
        for kept in [
            "https://10.0.0.1:6443",
            "role=edge",
            "postgres://k3s:<redacted>@db:5432/k3s",
        ] {
            assert!(r.contains(kept), "{kept} not in:\n{r}");
        }
        assert_eq!(r.lines().count(), yaml.lines().count());
    }
}
