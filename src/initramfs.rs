//! Composing the initramfs tree: busybox from the rootfs, our `init` and its
//! helpers from `overlays/initramfs/`, and the kernel modules the board lists
//! together with everything they depend on (`modules.dep`).
//!
//! The init reads `/etc/nodeimg/modules`: one module path per line, in load
//! order (dependencies first).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, Context, Result};

use crate::tree::{self, Entry, Kind, Meta, Tree};

/// The kernel's module dependency graph, from `modules.dep` and `modules.builtin`.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// Module name (dashes as underscores) -> path relative to the modules dir.
    paths: BTreeMap<String, String>,
    /// Path relative to the modules dir -> the paths it depends on.
    deps: BTreeMap<String, Vec<String>>,
    /// Names of modules built into the kernel.
    builtin: BTreeSet<String>,
}

/// `ext4.ko.xz` / `kernel/fs/ext4/ext4.ko` -> `ext4`; `sdhci-iproc` -> `sdhci_iproc`.
pub fn module_name(path: &str) -> String {
    let base = tree::file_name(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

impl ModuleIndex {
    /// Parses `modules.dep` (and, when given, `modules.builtin`).
    pub fn parse(modules_dep: &str, modules_builtin: Option<&str>) -> Result<ModuleIndex> {
        let mut idx = ModuleIndex::default();
        for (n, line) in modules_dep.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (module, deps) = line
                .split_once(':')
                .ok_or_else(|| anyhow!("modules.dep line {}: no ':' in {line:?}", n + 1))?;
            let module = module.trim().to_string();
            idx.paths.insert(module_name(&module), module.clone());
            idx.deps.insert(
                module,
                deps.split_whitespace().map(str::to_string).collect(),
            );
        }
        if let Some(builtin) = modules_builtin {
            idx.builtin = builtin
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(module_name)
                .collect();
        }
        Ok(idx)
    }

    /// The module files to load for `names`, dependencies first, each once.
    /// Built-in modules are skipped; a name that is neither a module nor
    /// built in is an error naming it.
    pub fn load_order(&self, names: &[String]) -> Result<Vec<String>> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in names {
            let key = name.replace('-', "_");
            if let Some(path) = self.paths.get(&key) {
                self.visit(path, &mut seen, &mut order, 0)?;
            } else if !self.builtin.contains(&key) {
                bail!("kernel module {name:?} is neither in modules.dep nor built into the kernel");
            }
        }
        Ok(order)
    }

    fn visit(
        &self,
        path: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
        depth: usize,
    ) -> Result<()> {
        if depth > 64 {
            bail!("modules.dep: dependency loop through {path}");
        }
        if seen.contains(path) {
            return Ok(());
        }
        let deps = self.deps.get(path).ok_or_else(|| {
            anyhow!("modules.dep names {path} as a dependency but has no line for it")
        })?;
        // modules.dep lists a module's dependencies with the ones loaded last
        // first; visiting them in reverse gives modprobe's order.
        for d in deps.iter().rev() {
            self.visit(d, seen, order, depth + 1)?;
        }
        seen.insert(path.to_string());
        order.push(path.to_string());
        Ok(())
    }
}

/// What goes into the initramfs, found in the rootfs by the pipeline.
pub struct Inputs<'a> {
    /// The whole rootfs (before usr-merge), to copy busybox and modules from.
    pub rootfs: &'a Tree,
    /// Path of busybox in `rootfs`.
    pub busybox: &'a str,
    /// Path of the kernel's modules directory in `rootfs` (`usr/lib/modules/6.12.x`).
    pub modules_dir: &'a str,
    /// Kernel release (the modules directory's name).
    pub kernel_release: &'a str,
    /// Module names the board lists.
    pub modules: &'a [String],
    /// `overlays/initramfs/`: `init` and anything it needs.
    pub overlay: &'a std::path::Path,
    pub mtime: u64,
}

/// Builds the initramfs tree.
pub fn compose(inp: &Inputs) -> Result<Tree> {
    let dir = Meta::root(0o755, inp.mtime);
    let mut t = Tree::new(dir);
    for d in [
        "bin",
        "dev",
        "etc",
        "etc/nodeimg",
        "proc",
        "sys",
        "run",
        "sysroot",
        "tmp",
        "mnt",
    ] {
        t.insert(d, Entry::dir(dir))?;
    }
    // The kernel opens /dev/console before our init runs, so it must exist in the archive.
    for (name, major, minor) in [("dev/console", 5, 1), ("dev/null", 1, 3)] {
        t.insert(
            name,
            Entry {
                meta: Meta::root(0o600, inp.mtime),
                kind: Kind::CharDevice { major, minor },
            },
        )?;
    }

    let busybox = match inp.rootfs.get(inp.busybox).map(|e| &e.kind) {
        Some(Kind::File(data)) => data.clone(),
        _ => bail!("/{} is not a regular file", inp.busybox),
    };
    t.insert(
        "bin/busybox",
        Entry {
            meta: Meta::root(0o755, inp.mtime),
            kind: Kind::File(busybox),
        },
    )?;

    let dep_path = tree::join(inp.modules_dir, "modules.dep");
    let dep = file_text(inp.rootfs, &dep_path).with_context(|| {
        format!(
            "reading /{dep_path} (run `depmod` for {} when making the rootfs)",
            inp.kernel_release
        )
    })?;
    let builtin_path = tree::join(inp.modules_dir, "modules.builtin");
    let builtin = file_text(inp.rootfs, &builtin_path).ok();
    let index =
        ModuleIndex::parse(&dep, builtin.as_deref()).with_context(|| format!("/{dep_path}"))?;
    let order = index
        .load_order(inp.modules)
        .with_context(|| format!("kernel {}", inp.kernel_release))?;

    let mut list = String::new();
    for rel in &order {
        let src = tree::join(inp.modules_dir, rel);
        let data = match inp.rootfs.get(&src).map(|e| &e.kind) {
            Some(Kind::File(d)) => d.clone(),
            _ => bail!("/{src} (listed in modules.dep) is missing from the rootfs"),
        };
        let dest = format!("lib/modules/{}/{}", inp.kernel_release, rel);
        t.insert_with_parents(
            &dest,
            Entry {
                meta: Meta::root(0o644, inp.mtime),
                kind: Kind::File(data),
            },
            dir,
        )?;
        list.push_str(&dest);
        list.push('\n');
    }
    t.insert(
        "etc/nodeimg/modules",
        Entry::file(Meta::root(0o644, inp.mtime), list.into_bytes()),
    )?;

    crate::tree::transform::apply_overlay(&mut t, inp.overlay, inp.mtime)
        .with_context(|| format!("applying {}", inp.overlay.display()))?;
    match t.get("init") {
        Some(e) if matches!(e.kind, Kind::File(_)) && e.meta.mode & 0o111 != 0 => Ok(t),
        _ => bail!(
            "{}: no executable `init` in the initramfs overlay",
            inp.overlay.display()
        ),
    }
}

fn file_text(t: &Tree, path: &str) -> Result<String> {
    match t.get(path).map(|e| &e.kind) {
        Some(Kind::File(d)) => {
            Ok(String::from_utf8(d.to_vec()).map_err(|_| anyhow!("/{path} is not UTF-8 text"))?)
        }
        _ => bail!("/{path} not found"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz\n\
kernel/fs/mbcache.ko.xz:\n\
kernel/fs/jbd2/jbd2.ko.xz:\n\
kernel/lib/crc16.ko.xz:\n\
kernel/drivers/mmc/host/sdhci-iproc.ko.xz: kernel/drivers/mmc/host/sdhci-pltfm.ko.xz kernel/drivers/mmc/host/sdhci.ko.xz\n\
kernel/drivers/mmc/host/sdhci-pltfm.ko.xz: kernel/drivers/mmc/host/sdhci.ko.xz\n\
kernel/drivers/mmc/host/sdhci.ko.xz:\n";

    #[test]
    fn names_normalize_dashes_and_extensions() {
        assert_eq!(
            module_name("kernel/drivers/mmc/host/sdhci-iproc.ko.xz"),
            "sdhci_iproc"
        );
        assert_eq!(module_name("ext4.ko"), "ext4");
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let idx = ModuleIndex::parse(DEP, Some("kernel/fs/squashfs/squashfs.ko\n")).unwrap();
        let order = idx
            .load_order(&[
                "ext4".into(),
                "sdhci-iproc".into(),
                "jbd2".into(),
                "squashfs".into(),
            ])
            .unwrap();
        assert_eq!(
            order,
            [
                "kernel/fs/jbd2/jbd2.ko.xz",
                "kernel/fs/mbcache.ko.xz",
                "kernel/lib/crc16.ko.xz",
                "kernel/fs/ext4/ext4.ko.xz",
                "kernel/drivers/mmc/host/sdhci.ko.xz",
                "kernel/drivers/mmc/host/sdhci-pltfm.ko.xz",
                "kernel/drivers/mmc/host/sdhci-iproc.ko.xz",
            ]
        );
    }

    #[test]
    fn unknown_module_is_an_error_naming_it() {
        let idx = ModuleIndex::parse(DEP, None).unwrap();
        let err = idx.load_order(&["btrfs".into()]).unwrap_err().to_string();
        assert!(err.contains("\"btrfs\""), "{err}");
    }

    #[test]
    fn missing_dependency_line_is_reported() {
        let idx = ModuleIndex::parse("a.ko: b.ko\n", None).unwrap();
        let err = idx.load_order(&["a".into()]).unwrap_err().to_string();
        assert!(err.contains("b.ko"), "{err}");
    }
}
