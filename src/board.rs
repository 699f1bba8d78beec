//! Board definitions: `boards/<name>.toml`, one file per board. Adding a board
//! is adding a file. Unknown keys are errors, so a typo never passes silently.
//!
//! The schema is documented in `docs/boards.md`; keep the two in step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::disk::layout::parse_size;
use crate::tree::{Entry, Meta, Tree};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// Must equal the file's stem.
    pub name: String,
    pub description: String,
    /// Debian-style architecture name: "arm64".
    pub arch: String,
    pub disk: DiskSpec,
    pub boot: BootSpec,
    pub sources: Sources,
    pub initramfs: InitramfsSpec,
    /// Overlay directories under `overlays/`, applied to the rootfs in this order.
    #[serde(default)]
    pub overlays: Vec<String>,
    /// The Debian base recipe (`boards/base/<base>.toml`) an image without
    /// `--rootfs` is built from; its lock is `boards/base/<board>.lock`.
    #[serde(default)]
    pub base: Option<String>,
    /// Packages this board adds to the recipe's list.
    #[serde(default)]
    pub base_packages: Vec<String>,
    /// Phones: how the bootloader takes boot.img and which partitions
    /// fastboot writes. A board with it has no boot partition on its disk:
    /// kernel, initramfs and cmdline go into boot.img, and the disk is the
    /// image flashed to `android.rootfs_partition`.
    #[serde(default)]
    pub android: Option<crate::android::board::AndroidBoard>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    Mbr,
    Gpt,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub table: Table,
    /// Medium size when `--size` is not given ("2G").
    pub default_size: String,
    /// FAT32 boot partition (p1); absent on phones (boot.img instead).
    #[serde(default)]
    pub boot_size: Option<String>,
    /// Each system slot (p2 = A, p3 = B); the data partition (p4) takes the rest.
    pub system_size: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootMethod {
    /// Raspberry Pi firmware on the FAT partition loads config.txt, kernel, initramfs, dtb.
    RpiFirmware,
    /// The kernel, initramfs and cmdline sit on the FAT partition for a loader
    /// (QEMU `-kernel`, or a UEFI/extlinux stage) to pick up.
    DirectKernel,
    /// Phones: kernel, initramfs (with the node config) and cmdline in an
    /// Android boot.img, as the board's `[android]` section describes.
    AndroidBootimg,
    /// U-Boot runs our boot script from the FAT partition and picks the slot:
    /// each slot's kernel, initramfs and cmdline in `slot-a/`, `slot-b/`
    /// (`update::uboot`, docs/updates.md).
    UBoot,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSpec {
    pub method: BootMethod,
    /// Kernel file name on the boot partition.
    #[serde(default = "default_kernel_name")]
    pub kernel_name: String,
    /// Initramfs file name on the boot partition.
    #[serde(default = "default_initramfs_name")]
    pub initramfs_name: String,
    /// Kernel command line; the builder appends the `nodeimg.*` partition identifiers.
    pub cmdline: String,
    /// Extra `config.txt` lines (rpi-firmware only); the builder writes
    /// `arm_64bit=1`, `kernel=` and `initramfs` itself.
    #[serde(default)]
    pub config_txt: Vec<String>,
    /// U-Boot only: `name=0xADDRESS` settings the boot script makes before it
    /// loads anything (load addresses where the loader's defaults do not fit
    /// the kernel).
    #[serde(default)]
    pub uboot_env: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sources {
    /// Candidate paths or globs for the kernel image, tried in order.
    pub kernel: Vec<String>,
    /// Candidate globs for the kernel's modules directory (`/lib/modules/*`).
    pub modules: Vec<String>,
    /// Device trees: name on the boot partition -> candidate paths.
    #[serde(default)]
    pub dtbs: BTreeMap<String, Vec<String>>,
    /// Firmware files: name on the boot partition -> candidate paths.
    #[serde(default)]
    pub firmware: BTreeMap<String, Vec<String>>,
    /// Candidate paths for the kernel config (for `check-kernel`).
    #[serde(default)]
    pub kernel_config: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitramfsSpec {
    /// Candidate paths of a static busybox in the rootfs.
    pub busybox: Vec<String>,
    /// Kernel modules the initramfs loads (names as `modprobe` takes them);
    /// their dependencies from `modules.dep` are added.
    pub modules: Vec<String>,
    /// Modules loaded when the kernel has them, skipped otherwise (e.g. USB
    /// storage, which a trimmed or different kernel may lack).
    #[serde(default)]
    pub optional_modules: Vec<String>,
    /// Programs copied from the rootfs into the initramfs with their
    /// interpreter and shared libraries (read from the ELF files). Plain
    /// absolute paths; a missing one fails the build.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Like `tools`, but skipped when the rootfs lacks them (an Alpine rootfs
    /// without e2fsprogs still builds; the init does without).
    #[serde(default)]
    pub optional_tools: Vec<String>,
}

fn default_kernel_name() -> String {
    "vmlinuz".to_string()
}

fn default_initramfs_name() -> String {
    "initrd.img".to_string()
}

/// The sizes of a board's disk, parsed.
#[derive(Debug, Clone, Copy)]
pub struct DiskSizes {
    pub default_size: u64,
    /// None on phones, whose disk has no boot partition.
    pub boot: Option<u64>,
    pub system: u64,
}

impl Board {
    /// Parses and validates a board file; `expected_name` is the file stem.
    pub fn parse(text: &str, expected_name: &str) -> Result<Board> {
        let board: Board = toml::from_str(text).map_err(|e| anyhow::anyhow!(one_line(&e)))?;
        if board.name != expected_name {
            bail!(
                "name = {:?} does not match the file name {:?}",
                board.name,
                expected_name
            );
        }
        if board.arch != "arm64" {
            bail!(
                "arch = {:?} is not supported (supported: arm64)",
                board.arch
            );
        }
        board.sizes()?;
        for (what, list) in [
            ("sources.kernel", &board.sources.kernel),
            ("sources.modules", &board.sources.modules),
            ("initramfs.busybox", &board.initramfs.busybox),
        ] {
            if list.is_empty() {
                bail!("{what} needs at least one candidate path");
            }
            check_paths(what, list)?;
        }
        for (what, map) in [
            ("sources.dtbs", &board.sources.dtbs),
            ("sources.firmware", &board.sources.firmware),
        ] {
            for (name, list) in map {
                check_boot_file_name(what, name)?;
                if list.is_empty() {
                    bail!("{what}.{name:?} needs at least one candidate path");
                }
                check_paths(&format!("{what}.{name:?}"), list)?;
            }
        }
        check_paths("sources.kernel_config", &board.sources.kernel_config)?;
        check_tools(&board.initramfs)?;
        check_boot_file_name("boot.kernel_name", &board.boot.kernel_name)?;
        check_boot_file_name("boot.initramfs_name", &board.boot.initramfs_name)?;
        board.check_config_txt()?;
        board.uboot_env()?;
        if board.boot.method == BootMethod::UBoot && board.sources.dtbs.len() > 1 {
            bail!(
                "sources.dtbs: a U-Boot board boots one device tree (each slot keeps its own copy), not {}",
                board.sources.dtbs.len()
            );
        }
        board.check_android()?;
        if let Some(b) = &board.base {
            if !crate::base::recipe::is_name(b) {
                bail!("base = {b:?} is not a recipe name");
            }
        } else if !board.base_packages.is_empty() {
            bail!("base_packages needs base = \"<recipe>\"");
        }
        for o in &board.overlays {
            if o.is_empty() || o.contains('/') || o.starts_with('.') {
                bail!("overlays: {o:?} is not an overlay directory name");
            }
        }
        Ok(board)
    }

    /// `boot.uboot_env` as (name, value) pairs: names of letters, digits
    /// and `_`; values hexadecimal addresses (`0x...`). U-Boot boards only.
    pub fn uboot_env(&self) -> Result<Vec<(String, String)>> {
        let lines = &self.boot.uboot_env;
        if !lines.is_empty() && self.boot.method != BootMethod::UBoot {
            bail!("boot.uboot_env is only used with method = \"u-boot\"");
        }
        lines
            .iter()
            .map(|l| {
                let (name, value) = l
                    .split_once('=')
                    .with_context(|| format!("boot.uboot_env: {l:?} is not name=0xADDRESS"))?;
                let name_ok = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                let value_ok = value.len() > 2
                    && value.len() <= 18
                    && value.starts_with("0x")
                    && value[2..].bytes().all(|b| b.is_ascii_hexdigit());
                if !name_ok || !value_ok {
                    bail!("boot.uboot_env: {l:?} is not name=0xADDRESS");
                }
                Ok((name.to_string(), value.to_string()))
            })
            .collect()
    }

    /// `config.txt` is the Raspberry Pi firmware's: with method
    /// "rpi-firmware" the builder names the kernel and initramfs in it; with
    /// "u-boot" the firmware starts U-Boot, which the board names in a
    /// `kernel=` line (one of its firmware files).
    fn check_config_txt(&self) -> Result<()> {
        let lines = &self.boot.config_txt;
        let kernel: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.trim().strip_prefix("kernel="))
            .collect();
        match self.boot.method {
            BootMethod::RpiFirmware if !kernel.is_empty() => {
                bail!("boot.config_txt: the builder writes kernel= itself with method = \"rpi-firmware\"")
            }
            BootMethod::RpiFirmware => {}
            BootMethod::UBoot if !lines.is_empty() => match kernel.as_slice() {
                [k] if self.sources.firmware.contains_key(*k) => {}
                [k] => bail!(
                    "boot.config_txt: kernel={k} is not one of sources.firmware (U-Boot must be on the boot partition)"
                ),
                _ => bail!(
                    "boot.config_txt: with method = \"u-boot\" the firmware starts U-Boot: name it in one kernel= line"
                ),
            },
            _ if !lines.is_empty() => bail!(
                "boot.config_txt is only used with method = \"rpi-firmware\" or \"u-boot\" (on a Raspberry Pi)"
            ),
            _ => {}
        }
        Ok(())
    }

    pub fn sizes(&self) -> Result<DiskSizes> {
        let get = |key: &str, v: &str| parse_size(v).with_context(|| format!("disk.{key} = {v:?}"));
        Ok(DiskSizes {
            default_size: get("default_size", &self.disk.default_size)?,
            boot: match &self.disk.boot_size {
                Some(v) => Some(get("boot_size", v)?),
                None => None,
            },
            system: get("system_size", &self.disk.system_size)?,
        })
    }

    /// A phone board (`[android]`) boots from boot.img: method
    /// "android-bootimg", no boot partition, a GPT disk (the userdata image);
    /// every other board has a boot partition and no `[android]`.
    fn check_android(&self) -> Result<()> {
        let phone = self.boot.method == BootMethod::AndroidBootimg;
        match &self.android {
            Some(a) => {
                if !phone {
                    bail!("an [android] section needs boot.method = \"android-bootimg\"");
                }
                a.validate()?;
                if self.disk.boot_size.is_some() {
                    bail!("disk.boot_size: a phone's disk has no boot partition (boot.img takes kernel and initramfs)");
                }
                if self.disk.table != Table::Gpt {
                    bail!(
                        "disk.table must be \"gpt\" on a phone (the userdata image is a GPT disk)"
                    );
                }
                if !self.sources.dtbs.is_empty() || !self.sources.firmware.is_empty() {
                    bail!("sources.dtbs and sources.firmware are for boot partitions; a phone names its dtb in android.dtb");
                }
                if let Some(d) = &a.dtb {
                    if d.is_empty()
                        || d.starts_with('/')
                        || d.split('/').any(|c| c.is_empty() || c == "..")
                    {
                        bail!("android.dtb {d:?} must be a relative path under /boot/dtbs (\"qcom/sdm845-oneplus-enchilada.dtb\")");
                    }
                }
            }
            None if phone => bail!("boot.method = \"android-bootimg\" needs an [android] section"),
            None => {
                if self.disk.boot_size.is_none() {
                    bail!("disk.boot_size is missing (the size of the FAT boot partition)");
                }
            }
        }
        Ok(())
    }
}

fn check_paths(what: &str, list: &[String]) -> Result<()> {
    for p in list {
        if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
            bail!("{what}: {p:?} must be an absolute path inside the rootfs, without \"..\"");
        }
    }
    Ok(())
}

/// Tools are plain absolute paths (no globs: the init looks them up by the
/// name it knows), each listed once across both lists.
fn check_tools(spec: &InitramfsSpec) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for (what, list) in [
        ("initramfs.tools", &spec.tools),
        ("initramfs.optional_tools", &spec.optional_tools),
    ] {
        check_paths(what, list)?;
        for p in list {
            if p.contains(['*', '?', '[']) {
                bail!("{what}: {p:?} must be a plain path, not a pattern");
            }
            if p.ends_with('/') || crate::tree::normalize(p).map_or(true, |n| n.is_empty()) {
                bail!("{what}: {p:?} is not a file path");
            }
            if !seen.insert(crate::tree::normalize(p)) {
                bail!("{what}: {p:?} is listed twice");
            }
        }
    }
    Ok(())
}

fn check_boot_file_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name.starts_with('/')
        || name.split('/').any(|c| c == ".." || c.is_empty())
    {
        bail!("{what}: {name:?} is not a relative file name for the boot partition");
    }
    Ok(())
}

/// toml's errors span several lines (a source excerpt); keep the first line and
/// the message so that the user gets one line.
fn one_line(e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => format!("at byte {}: {msg}", span.start),
        None => msg,
    }
}

/// The boards and overlays built into the binary (`boards/`, `overlays/` of
/// the source tree, embedded by the build script).
pub mod embedded {
    /// One entry under `boards/` or `overlays/`.
    #[derive(Debug)]
    pub struct Embedded {
        /// Relative to the source tree: `boards/rpi4.toml`, `overlays/initramfs/init`.
        pub path: &'static str,
        pub kind: EmbeddedKind,
    }

    #[derive(Debug)]
    pub enum EmbeddedKind {
        Dir,
        File {
            executable: bool,
            data: &'static [u8],
        },
        Symlink(&'static str),
    }

    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}

use embedded::{EmbeddedKind, ENTRIES};

/// An overlay ready to lay over a tree, and where it came from (for messages).
#[derive(Debug, Clone)]
pub struct Overlay {
    /// `built-in overlay initramfs` or the directory it was read from.
    pub origin: String,
    pub tree: Tree,
}

/// Where boards and overlays come from: those built into the binary, plus
/// (overriding them by name) those of a `--data-dir` / `$NODEIMG_DATA_DIR`
/// directory holding `boards/` and/or `overlays/`.
#[derive(Debug, Clone, Default)]
pub struct DataDir {
    pub extra: Option<PathBuf>,
}

impl DataDir {
    /// Only the built-in boards and overlays.
    pub fn builtin() -> DataDir {
        DataDir { extra: None }
    }

    /// The built-in data plus `explicit` (from `--data-dir`), else plus
    /// `$NODEIMG_DATA_DIR` when set.
    pub fn locate(explicit: Option<&Path>) -> Result<DataDir> {
        if let Some(p) = explicit {
            return DataDir::with(p).context("--data-dir");
        }
        if let Some(p) = std::env::var_os("NODEIMG_DATA_DIR").filter(|p| !p.is_empty()) {
            return DataDir::with(Path::new(&p)).context("$NODEIMG_DATA_DIR");
        }
        Ok(DataDir::builtin())
    }

    fn with(p: &Path) -> Result<DataDir> {
        if !p.join("boards").is_dir() && !p.join("overlays").is_dir() {
            bail!(
                "{}: neither a boards/ nor an overlays/ directory there",
                p.display()
            );
        }
        Ok(DataDir {
            extra: Some(p.to_path_buf()),
        })
    }

    fn extra_board(&self, name: &str) -> Option<PathBuf> {
        let p = self
            .extra
            .as_ref()?
            .join("boards")
            .join(format!("{name}.toml"));
        p.is_file().then_some(p)
    }

    /// Names of all boards (built-in and `--data-dir` ones), sorted, each once.
    pub fn board_names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = ENTRIES
            .iter()
            .filter_map(|e| e.path.strip_prefix("boards/")?.strip_suffix(".toml"))
            .filter(|n| !n.contains('/'))
            .map(str::to_string)
            .collect();
        if let Some(extra) = &self.extra {
            let dir = extra.join("boards");
            if dir.is_dir() {
                for e in
                    std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
                {
                    let e = e.with_context(|| format!("reading {}", dir.display()))?;
                    let p = e.path();
                    if p.extension().and_then(|x| x.to_str()) == Some("toml") {
                        if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                            names.push(stem.to_string());
                        }
                    }
                }
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Loads one board by name (a `--data-dir` file wins over the built-in
    /// one). An unknown name is an error that lists the boards.
    pub fn load(&self, name: &str) -> Result<(Board, Vec<u8>)> {
        let names = self.board_names()?;
        if !names.iter().any(|n| n == name) {
            bail!("unknown board {name:?}; known boards: {}", names.join(", "));
        }
        let (origin, bytes) = match self.extra_board(name) {
            Some(path) => (
                path.display().to_string(),
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            ),
            None => {
                let path = format!("boards/{name}.toml");
                let data = ENTRIES
                    .iter()
                    .find_map(|e| match e.kind {
                        EmbeddedKind::File { data, .. } if e.path == path => Some(data),
                        _ => None,
                    })
                    .with_context(|| format!("no built-in {path}"))?;
                (format!("built-in {path}"), data.to_vec())
            }
        };
        let text =
            String::from_utf8(bytes.clone()).with_context(|| format!("{origin}: not UTF-8"))?;
        let board = Board::parse(&text, name).with_context(|| origin.clone())?;
        Ok((board, bytes))
    }

    /// The data file at `rel` (a path under the data directories, such as
    /// `boards/base/debian-trixie.toml`): the `--data-dir` one wins over the
    /// built-in one. Returns where it came from (for messages) and its bytes,
    /// or None when neither has it.
    pub fn data_file(&self, rel: &str) -> Result<Option<(String, Vec<u8>)>> {
        if let Some(extra) = &self.extra {
            let p = extra.join(rel);
            if p.is_file() {
                let bytes =
                    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                return Ok(Some((p.display().to_string(), bytes)));
            }
        }
        Ok(ENTRIES.iter().find_map(|e| match e.kind {
            EmbeddedKind::File { data, .. } if e.path == rel => {
                Some((format!("built-in {rel}"), data.to_vec()))
            }
            _ => None,
        }))
    }

    /// The overlay `name`: `<data-dir>/overlays/<name>/` if there is one,
    /// else the built-in one.
    pub fn overlay(&self, name: &str) -> Result<Overlay> {
        if let Some(extra) = &self.extra {
            let dir = extra.join("overlays").join(name);
            if dir.is_dir() {
                let tree = crate::tree::reader::read_dir_tree(&dir)
                    .with_context(|| format!("reading overlay {}", dir.display()))?;
                return Ok(Overlay {
                    origin: dir.display().to_string(),
                    tree,
                });
            }
        }
        builtin_overlay(name)
    }
}

/// The built-in overlay `name` as a tree: files 0755 when executable, else
/// 0644, directories 0755, owned by root, mtime 0 (overlays get the build's
/// time when laid).
fn builtin_overlay(name: &str) -> Result<Overlay> {
    let prefix = format!("overlays/{name}");
    let origin = format!("built-in overlay {name}");
    let dir_meta = Meta::root(0o755, 0);
    let mut tree = Tree::new(dir_meta);
    let mut found = false;
    for e in ENTRIES {
        let Some(rest) = e.path.strip_prefix(&prefix) else {
            continue;
        };
        let rel = match rest.strip_prefix('/') {
            Some(r) => r,
            None if rest.is_empty() => {
                found = matches!(e.kind, EmbeddedKind::Dir);
                continue;
            }
            None => continue, // another overlay whose name starts with `name`
        };
        let entry = match e.kind {
            EmbeddedKind::Dir => Entry::dir(dir_meta),
            EmbeddedKind::File { executable, data } => Entry::file(
                Meta::root(if executable { 0o755 } else { 0o644 }, 0),
                data.to_vec(),
            ),
            EmbeddedKind::Symlink(target) => Entry::symlink(Meta::root(0o777, 0), target),
        };
        tree.insert_with_parents(rel, entry, dir_meta)
            .with_context(|| format!("{origin}: {rel}"))?;
    }
    if !found {
        bail!("no overlay {name:?} (neither built in nor under --data-dir's overlays/)");
    }
    Ok(Overlay { origin, tree })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_board(name: &str) -> Board {
        DataDir::builtin().load(name).unwrap().0
    }

    fn builtin_text(name: &str) -> String {
        String::from_utf8(DataDir::builtin().load(name).unwrap().1).unwrap()
    }

    #[test]
    fn the_embedded_data_is_the_source_tree_s() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for e in ENTRIES {
            let p = root.join(e.path);
            let md = std::fs::symlink_metadata(&p).unwrap();
            match e.kind {
                EmbeddedKind::Dir => assert!(md.is_dir(), "{}", e.path),
                EmbeddedKind::File { executable, data } => {
                    use std::os::unix::fs::PermissionsExt;
                    assert_eq!(std::fs::read(&p).unwrap(), data, "{}", e.path);
                    assert_eq!(
                        md.permissions().mode() & 0o111 != 0,
                        executable,
                        "{}",
                        e.path
                    );
                }
                EmbeddedKind::Symlink(t) => {
                    assert_eq!(std::fs::read_link(&p).unwrap(), Path::new(t))
                }
            }
        }
        assert!(ENTRIES.iter().any(|e| e.path == "boards/rpi4.toml"));
    }

    #[test]
    fn builtin_overlays_keep_the_executable_bit_and_unknown_ones_are_errors() {
        let o = DataDir::builtin().overlay("initramfs").unwrap();
        let init = o.tree.get("init").expect("init in the initramfs overlay");
        assert!(matches!(init.kind, crate::tree::Kind::File(_)));
        assert_eq!(init.meta.mode, 0o755);
        let base = DataDir::builtin().overlay("base").unwrap();
        assert_eq!(base.tree.get("etc/fstab").map(|e| e.meta.mode), Some(0o644));
        let e = DataDir::builtin()
            .overlay("nosuch")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no overlay \"nosuch\""), "{e}");
        // A prefix of an overlay's name is not that overlay.
        assert!(DataDir::builtin().overlay("ba").is_err());
    }

    #[test]
    fn data_dir_adds_boards_and_overrides_overlays_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("boards")).unwrap();
        std::fs::create_dir_all(dir.path().join("overlays/base/etc")).unwrap();
        std::fs::write(dir.path().join("overlays/base/etc/motd"), "hi\n").unwrap();
        let text =
            builtin_text("qemu-aarch64").replace("name = \"qemu-aarch64\"", "name = \"extra\"");
        std::fs::write(dir.path().join("boards/extra.toml"), text).unwrap();
        let dd = DataDir::locate(Some(dir.path())).unwrap();
        assert_eq!(
            dd.board_names().unwrap(),
            [
                "extra",
                "oneplus-dumpling",
                "oneplus-enchilada",
                "oneplus-instantnoodlep",
                "qemu-aarch64",
                "qemu-aarch64-phone",
                "rpi4"
            ]
        );
        assert_eq!(dd.load("extra").unwrap().0.name, "extra");
        let base = dd.overlay("base").unwrap();
        assert!(base.tree.contains("etc/motd") && !base.tree.contains("etc/fstab"));
        // Not overridden: still built in.
        assert!(dd.overlay("initramfs").unwrap().tree.contains("init"));
        let empty = tempfile::tempdir().unwrap();
        let e = format!("{:#}", DataDir::locate(Some(empty.path())).unwrap_err());
        assert!(e.contains("neither a boards/ nor an overlays/"), "{e}");
    }

    #[test]
    fn shipped_boards_parse() {
        let rpi = repo_board("rpi4");
        assert_eq!(rpi.disk.table, Table::Mbr);
        assert_eq!(rpi.boot.method, BootMethod::UBoot);
        assert!(rpi.sources.firmware.contains_key("start4.elf"));
        assert!(rpi.sources.firmware.contains_key("u-boot.bin"));
        assert!(rpi
            .boot
            .config_txt
            .contains(&"kernel=u-boot.bin".to_string()));
        assert_eq!(
            rpi.uboot_env().unwrap()[0],
            ("kernel_addr_r".into(), "0x00200000".into())
        );
        assert!(rpi.sources.dtbs.contains_key("bcm2711-rpi-4-b.dtb"));
        let q = repo_board("qemu-aarch64");
        assert_eq!(q.disk.table, Table::Gpt);
        assert_eq!(q.boot.method, BootMethod::DirectKernel);
    }

    #[test]
    fn shipped_phone_boards_parse_with_their_deviceinfo_values() {
        for (name, version, dtb) in [
            (
                "oneplus-enchilada",
                0,
                Some("qcom/sdm845-oneplus-enchilada.dtb"),
            ),
            (
                "oneplus-dumpling",
                0,
                Some("qcom/msm8998-oneplus-dumpling.dtb"),
            ),
            (
                "oneplus-instantnoodlep",
                2,
                Some("qcom/sm8250-oneplus-instantnoodlep.dtb"),
            ),
            ("qemu-aarch64-phone", 0, None),
        ] {
            let b = repo_board(name);
            assert_eq!(b.boot.method, BootMethod::AndroidBootimg, "{name}");
            assert_eq!(b.disk.table, Table::Gpt, "{name}");
            assert!(b.sizes().unwrap().boot.is_none(), "{name}");
            let a = b.android.as_ref().expect("[android]");
            assert_eq!(a.header_version, version, "{name}");
            assert_eq!(a.dtb.as_deref(), dtb, "{name}");
            assert_eq!(
                (a.sector_size, a.rootfs_partition.as_str()),
                (4096, "userdata")
            );
            assert!(a.max_download_size.is_some(), "{name}");
            assert!(b.overlays.iter().any(|o| o == "postmarketos"), "{name}");
        }
        let e = repo_board("oneplus-enchilada");
        let a = e.android.unwrap();
        assert_eq!(
            (
                a.base,
                a.kernel_offset,
                a.ramdisk_offset,
                a.tags_offset,
                a.page_size
            ),
            (0, 0x8000, 0x0100_0000, 0x100, 4096)
        );
        assert!(a.append_dtb);
        let n = repo_board("oneplus-instantnoodlep").android.unwrap();
        assert_eq!(n.dtb_offset, Some(0x01f0_0000));
    }

    #[test]
    fn phone_and_boot_partition_settings_must_agree() {
        let phone = builtin_text("oneplus-enchilada");
        let pi = builtin_text("qemu-aarch64");
        for (text, edit, needle) in [
            (
                &phone,
                (
                    "system_size = \"640M\"",
                    "system_size = \"640M\"\nboot_size = \"128M\"",
                ),
                "has no boot partition",
            ),
            (
                &phone,
                ("table = \"gpt\"", "table = \"mbr\""),
                "must be \"gpt\"",
            ),
            (
                &phone,
                ("method = \"android-bootimg\"", "method = \"direct-kernel\""),
                "needs boot.method = \"android-bootimg\"",
            ),
            (
                &phone,
                ("dtb = \"qcom/", "dtb = \"/boot/dtbs/qcom/"),
                "relative path under /boot/dtbs",
            ),
            (
                &pi,
                ("method = \"direct-kernel\"", "method = \"android-bootimg\""),
                "needs an [android] section",
            ),
            (
                &pi,
                ("boot_size = \"128M\"", ""),
                "disk.boot_size is missing",
            ),
        ] {
            let name = if text == &phone {
                "oneplus-enchilada"
            } else {
                "qemu-aarch64"
            };
            let bad = text.replacen(edit.0, edit.1, 1);
            assert_ne!(&bad, text, "{edit:?} changed nothing");
            let err = format!("{:#}", Board::parse(&bad, name).unwrap_err());
            assert!(err.contains(needle), "{edit:?}: {err}");
        }
        // The Android section's own checks run too.
        let bad = phone.replacen("header_version = 0", "header_version = 9", 1);
        let err = format!("{:#}", Board::parse(&bad, "oneplus-enchilada").unwrap_err());
        assert!(err.contains("header_version"), "{err}");
    }

    /// config.txt and U-Boot settings: where they belong and what they hold.
    #[test]
    fn raspberry_pi_loader_settings_are_checked() {
        let pi = builtin_text("rpi4");
        for (edit, needle) in [
            (
                ("kernel=u-boot.bin", "kernel=uboot.img"),
                "kernel=uboot.img is not one of sources.firmware",
            ),
            (
                ("  \"kernel=u-boot.bin\",\n", ""),
                "name it in one kernel= line",
            ),
            (
                ("method = \"u-boot\"", "method = \"direct-kernel\""),
                "boot.config_txt is only used with",
            ),
            (
                ("\"kernel_addr_r=0x00200000\"", "\"kernel_addr_r=2M\""),
                "is not name=0xADDRESS",
            ),
            (
                ("\"kernel_addr_r=0x00200000\"", "\"kernel addr=0x1\""),
                "is not name=0xADDRESS",
            ),
            (
                ("\"kernel_addr_r=0x00200000\"", "\"kernel_addr_r\""),
                "is not name=0xADDRESS",
            ),
            (
                (
                    "[sources.firmware]",
                    "[sources.firmware]\n\"x.dtb\" = [\"/x\"]",
                ),
                "",
            ),
        ] {
            let bad = pi.replacen(edit.0, edit.1, 1);
            assert_ne!(bad, pi, "{edit:?} changed nothing");
            match Board::parse(&bad, "rpi4") {
                Ok(_) => assert!(needle.is_empty(), "{edit:?} was accepted"),
                Err(e) => {
                    let err = format!("{e:#}");
                    assert!(
                        !needle.is_empty() && err.contains(needle),
                        "{edit:?}: {err}"
                    );
                }
            }
        }
        // A second device tree: which would the slots boot?
        let bad = pi.replacen(
            "[sources.firmware]",
            "\"other.dtb\" = [\"/boot/other.dtb\"]\n\n[sources.firmware]",
            1,
        );
        let err = format!("{:#}", Board::parse(&bad, "rpi4").unwrap_err());
        assert!(err.contains("boots one device tree"), "{err}");
        // uboot_env on another loader; kernel= with the firmware loading the kernel.
        let q = builtin_text("qemu-aarch64");
        let bad = q.replacen("cmdline =", "uboot_env = [\"a=0x1\"]\ncmdline =", 1);
        let err = format!("{:#}", Board::parse(&bad, "qemu-aarch64").unwrap_err());
        assert!(err.contains("uboot_env is only used with"), "{err}");
        let fw = pi.replacen("method = \"u-boot\"", "method = \"rpi-firmware\"", 1);
        let err = format!("{:#}", Board::parse(&fw, "rpi4").unwrap_err());
        assert!(err.contains("writes kernel= itself"), "{err}");
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let text = builtin_text("rpi4");
        let bad = text.replacen("[disk]", "[disk]\nbootsize = \"1M\"", 1);
        let err = format!("{:#}", Board::parse(&bad, "rpi4").unwrap_err());
        assert!(err.contains("unknown field `bootsize`"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn name_must_match_file_and_paths_must_be_absolute() {
        let text = builtin_text("rpi4");
        let err = Board::parse(&text, "rpi5").unwrap_err().to_string();
        assert!(err.contains("does not match the file name"), "{err}");
        let bad = text.replacen("\"/boot/vmlinuz-*\"", "\"boot/vmlinuz-*\"", 1);
        let err = Board::parse(&bad, "rpi4").unwrap_err().to_string();
        assert!(err.contains("must be an absolute path"), "{err}");
    }

    #[test]
    fn shipped_boards_carry_the_growth_tools_as_optional() {
        for name in ["rpi4", "qemu-aarch64"] {
            let b = repo_board(name);
            assert!(
                b.initramfs.tools.is_empty(),
                "{name}: required tools would break Alpine"
            );
            for t in ["/sbin/sfdisk", "/sbin/resize2fs", "/sbin/e2fsck"] {
                assert!(
                    b.initramfs.optional_tools.iter().any(|x| x == t),
                    "{name}: {t}"
                );
            }
        }
    }

    #[test]
    fn tools_must_be_plain_absolute_paths_listed_once() {
        let text = builtin_text("rpi4");
        let with = |tools: &str| text.replacen("[initramfs]", &format!("[initramfs]\n{tools}"), 1);
        let b = Board::parse(&with("tools = [\"/usr/bin/lsblk\"]"), "rpi4").unwrap();
        assert_eq!(b.initramfs.tools, ["/usr/bin/lsblk"]);
        for (bad, needle) in [
            ("tools = [\"usr/bin/lsblk\"]", "must be an absolute path"),
            ("tools = [\"/usr/../bin/x\"]", "must be an absolute path"),
            ("tools = [\"/sbin/*fdisk\"]", "not a pattern"),
            ("tools = [\"/\"]", "not a file path"),
            ("tools = [\"/sbin/sfdisk\"]", "listed twice"),
            ("tools = [\"/sbin//x\", \"/sbin/x\"]", "listed twice"),
        ] {
            let err = Board::parse(&with(bad), "rpi4").unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_board_lists_known_ones() {
        let dd = DataDir::builtin();
        let err = dd.load("rpi5").unwrap_err().to_string();
        assert!(err.contains("unknown board \"rpi5\""), "{err}");
        assert!(
            err.contains("qemu-aarch64") && err.contains("rpi4"),
            "{err}"
        );
    }
}
