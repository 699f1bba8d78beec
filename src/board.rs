//! Board definitions: `boards/<name>.toml`, one file per board. Adding a board
//! is adding a file. Unknown keys are errors, so a typo never passes silently.
//!
//! The schema is documented in `docs/boards.md`; keep the two in step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::disk::layout::parse_size;

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
    /// FAT32 boot partition (p1).
    pub boot_size: String,
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSpec {
    pub method: BootMethod,
    /// Kernel file name on the boot partition.
    pub kernel_name: String,
    /// Initramfs file name on the boot partition.
    pub initramfs_name: String,
    /// Kernel command line; the builder appends the `nodeimg.*` partition identifiers.
    pub cmdline: String,
    /// Extra `config.txt` lines (rpi-firmware only); the builder writes
    /// `arm_64bit=1`, `kernel=` and `initramfs` itself.
    #[serde(default)]
    pub config_txt: Vec<String>,
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

/// The sizes of a board's disk, parsed.
#[derive(Debug, Clone, Copy)]
pub struct DiskSizes {
    pub default_size: u64,
    pub boot: u64,
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
        if board.boot.method != BootMethod::RpiFirmware && !board.boot.config_txt.is_empty() {
            bail!("boot.config_txt is only used with method = \"rpi-firmware\"");
        }
        for o in &board.overlays {
            if o.is_empty() || o.contains('/') || o.starts_with('.') {
                bail!("overlays: {o:?} is not an overlay directory name");
            }
        }
        Ok(board)
    }

    pub fn sizes(&self) -> Result<DiskSizes> {
        let get = |key: &str, v: &str| parse_size(v).with_context(|| format!("disk.{key} = {v:?}"));
        Ok(DiskSizes {
            default_size: get("default_size", &self.disk.default_size)?,
            boot: get("boot_size", &self.disk.boot_size)?,
            system: get("system_size", &self.disk.system_size)?,
        })
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

/// Where boards/ and overlays/ are read from.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    /// `explicit` (from `--data-dir`), else `$NODEIMG_DATA_DIR`, else
    /// `<exe>/../share/nodeimg` when installed that way, else the source tree
    /// this binary was built from.
    pub fn locate(explicit: Option<&Path>) -> Result<DataDir> {
        if let Some(p) = explicit {
            return DataDir::at(p);
        }
        if let Some(p) = std::env::var_os("NODEIMG_DATA_DIR") {
            return DataDir::at(Path::new(&p)).context("$NODEIMG_DATA_DIR");
        }
        if let Ok(exe) = std::env::current_exe() {
            if let Some(bin) = exe.parent() {
                let installed = bin.join("../share/nodeimg");
                if installed.join("boards").is_dir() {
                    return DataDir::at(&installed);
                }
            }
        }
        DataDir::at(Path::new(env!("CARGO_MANIFEST_DIR")))
    }

    fn at(p: &Path) -> Result<DataDir> {
        if !p.join("boards").is_dir() {
            bail!("{}: no boards/ directory there", p.display());
        }
        Ok(DataDir {
            root: p.to_path_buf(),
        })
    }

    pub fn boards_dir(&self) -> PathBuf {
        self.root.join("boards")
    }

    pub fn overlay_dir(&self, name: &str) -> PathBuf {
        self.root.join("overlays").join(name)
    }

    /// Names of all boards (file stems of boards/*.toml), sorted.
    pub fn board_names(&self) -> Result<Vec<String>> {
        let dir = self.boards_dir();
        let mut names = Vec::new();
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e.with_context(|| format!("reading {}", dir.display()))?;
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) == Some("toml") {
                if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                    names.push(stem.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Loads one board by name. An unknown name is an error that lists the boards.
    pub fn load(&self, name: &str) -> Result<(Board, Vec<u8>)> {
        let names = self.board_names()?;
        if !names.iter().any(|n| n == name) {
            bail!("unknown board {name:?}; known boards: {}", names.join(", "));
        }
        let path = self.boards_dir().join(format!("{name}.toml"));
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let text = String::from_utf8(bytes.clone())
            .with_context(|| format!("{}: not UTF-8", path.display()))?;
        let board = Board::parse(&text, name).with_context(|| format!("{}", path.display()))?;
        Ok((board, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_board(name: &str) -> Board {
        let dd = DataDir::at(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        dd.load(name).unwrap().0
    }

    #[test]
    fn shipped_boards_parse() {
        let rpi = repo_board("rpi4");
        assert_eq!(rpi.disk.table, Table::Mbr);
        assert_eq!(rpi.boot.method, BootMethod::RpiFirmware);
        assert!(rpi.sources.firmware.contains_key("start4.elf"));
        assert!(rpi.sources.dtbs.contains_key("bcm2711-rpi-4-b.dtb"));
        let q = repo_board("qemu-aarch64");
        assert_eq!(q.disk.table, Table::Gpt);
        assert_eq!(q.boot.method, BootMethod::DirectKernel);
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let dd = DataDir::at(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        let text = std::fs::read_to_string(dd.boards_dir().join("rpi4.toml")).unwrap();
        let bad = text.replacen("[disk]", "[disk]\nbootsize = \"1M\"", 1);
        let err = format!("{:#}", Board::parse(&bad, "rpi4").unwrap_err());
        assert!(err.contains("unknown field `bootsize`"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn name_must_match_file_and_paths_must_be_absolute() {
        let dd = DataDir::at(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        let text = std::fs::read_to_string(dd.boards_dir().join("rpi4.toml")).unwrap();
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
        let dd = DataDir::at(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        let text = std::fs::read_to_string(dd.boards_dir().join("rpi4.toml")).unwrap();
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
        let dd = DataDir::at(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        let err = dd.load("rpi5").unwrap_err().to_string();
        assert!(err.contains("unknown board \"rpi5\""), "{err}");
        assert!(
            err.contains("qemu-aarch64") && err.contains("rpi4"),
            "{err}"
        );
    }
}
