//! Composing the initramfs tree: busybox from the rootfs, our `init` and its
//! helpers from `overlays/initramfs/`, and the kernel modules the board lists
//! together with everything they depend on (`modules.dep`).
//!
//! The init reads `/etc/nodeimg/modules`: one module path per line, in load
//! order (dependencies first).
//!
//! The board's `tools` (sfdisk, resize2fs, ...) are copied from the rootfs
//! with their interpreter and shared libraries ([`crate::elf::closure`]):
//! each real file at its canonical path (`/usr/sbin/sfdisk`,
//! `/usr/lib/aarch64-linux-gnu/libc.so.6`), and the symlinks the loader goes
//! through on the way (`/lib -> usr/lib`, `libfdisk.so.1 -> libfdisk.so.1.1.0`)
//! recreated where the initramfs has nothing of its own, so the `PT_INTERP`
//! path and the loader's default search directories work as in the rootfs.
//! Entries of the initramfs's own (`/bin` with busybox, `/etc`, `/dev`) are
//! never replaced: where one is in the way, the requested library path gets
//! an absolute symlink to the canonical file instead. `/etc/nodeimg/tools`
//! lists the tools included, one canonical absolute path per line.
//!
//! On phones the node config travels inside boot.img: [`node_config_archive`]
//! makes a second, small archive with `etc/nodeimg/boot/nodeimg/*` that is
//! appended to the shared initramfs (the kernel unpacks concatenated archives
//! in order), so the shared part stays the same for every node and cacheable.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, Context, Result};

use crate::elf;
use crate::tree::{self, lookup, Entry, Kind, Meta, Tree};

/// Writes `tree` as a gzip'd newc archive to `path` ([`crate::fs::cpio::write_gzip`])
/// on a thread of its own; its `wait` gives the archive as the file's contents,
/// its SHA-256 already taken. gzip keeps a core busy for a tenth of a second
/// or more, which the system image's compression (on every core) would
/// otherwise wait for. The archive (tens of MB) is not held in memory: it is
/// read from the file when the boot partition is written.
pub fn write_in_background(
    tree: Tree,
    path: std::path::PathBuf,
) -> Result<crate::background::Background<tree::Data>> {
    const WHAT: &str = "writing the initramfs";
    crate::background::Background::spawn("initramfs", WHAT, move || {
        crate::fs::cpio::write_gzip(&tree, &path).context(WHAT)?;
        let ctx = || format!("reading {}", path.display());
        let len = std::fs::metadata(&path).with_context(ctx)?.len();
        let data = std::sync::Arc::new(tree::Content::from_path(&path, len));
        data.sha256().with_context(ctx)?;
        Ok(data)
    })
}

/// Where the init looks for the node config inside the initramfs (see
/// `find_node_config` in `overlays/initramfs/init`).
pub const NODE_CONFIG_DIR: &str = "etc/nodeimg/boot";

/// A gzip'd newc archive holding the node's config files (`nodeimg/node.env`,
/// ... as [`crate::join::NodeConfig::files`] names them) under
/// [`NODE_CONFIG_DIR`], with their modes (the token's 0600) in directories
/// only root can enter; appended to the initramfs of a phone's boot.img.
pub fn node_config_archive(
    files: &BTreeMap<String, crate::join::NodeFile>,
    mtime: u64,
) -> Result<Vec<u8>> {
    let open = Meta::root(0o755, mtime);
    let private = Meta::root(0o700, mtime);
    let mut t = Tree::new(open);
    t.insert("etc", Entry::dir(open))?;
    t.insert("etc/nodeimg", Entry::dir(open))?;
    t.insert(NODE_CONFIG_DIR, Entry::dir(private))?;
    for (name, f) in files {
        let path = tree::join(NODE_CONFIG_DIR, name);
        t.insert_with_parents(
            &path,
            Entry::file(Meta::root(f.mode, mtime), f.data.clone()),
            private,
        )
        .with_context(|| format!("the node config file {name}"))?;
    }
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(3)
        .write(Vec::new(), flate2::Compression::new(9));
    let gz = crate::fs::cpio::write(&t, gz).context("writing the node config archive")?;
    gz.finish().context("compressing the node config archive")
}

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
        self.load_order_with_optional(names, &[])
    }

    /// Like `load_order`, then the `optional` names that this kernel has
    /// (modules it lacks are left out: another kernel may build them in or
    /// not have them at all).
    pub fn load_order_with_optional(
        &self,
        names: &[String],
        optional: &[String],
    ) -> Result<Vec<String>> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for (name, required) in names
            .iter()
            .map(|n| (n, true))
            .chain(optional.iter().map(|n| (n, false)))
        {
            let key = name.replace('-', "_");
            if let Some(path) = self.paths.get(&key) {
                self.visit(path, &mut seen, &mut order, 0)?;
            } else if required && !self.builtin.contains(&key) {
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
    /// Modules loaded when the kernel has them (board `initramfs.optional_modules`).
    pub optional_modules: &'a [String],
    /// Programs to copy with their shared libraries (board `initramfs.tools`).
    pub tools: &'a [String],
    /// Like `tools`, skipped when not in the rootfs.
    pub optional_tools: &'a [String],
    /// `overlays/initramfs/`: `init` and anything it needs.
    pub overlay: &'a crate::board::Overlay,
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

    // Tools first: their symlinks (`/lib -> usr/lib` in a usr-merged rootfs)
    // shape where the modules go below.
    let tools = add_tools(&mut t, inp.rootfs, inp.tools, inp.optional_tools, inp.mtime)?;
    let mut listed = String::new();
    for p in &tools.included {
        listed.push_str(p);
        listed.push('\n');
    }
    t.insert(
        "etc/nodeimg/tools",
        Entry::file(Meta::root(0o644, inp.mtime), listed.into_bytes()),
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
        .load_order_with_optional(inp.modules, inp.optional_modules)
        .with_context(|| format!("kernel {}", inp.kernel_release))?;

    let mut list = String::new();
    for rel in &order {
        let src = tree::join(inp.modules_dir, rel);
        let data = match inp.rootfs.get(&src).map(|e| &e.kind) {
            Some(Kind::File(d)) => d.clone(),
            _ => bail!("/{src} (listed in modules.dep) is missing from the rootfs"),
        };
        let dest = format!("lib/modules/{}/{}", inp.kernel_release, rel);
        insert_through_links(
            &mut t,
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

    let ov = inp.overlay;
    crate::tree::transform::lay_overlay(&mut t, &ov.tree, &ov.origin, inp.mtime)
        .with_context(|| format!("applying {}", ov.origin))?;
    match t.get("init") {
        Some(e) if matches!(e.kind, Kind::File(_)) && e.meta.mode & 0o111 != 0 => Ok(t),
        _ => bail!(
            "{}: no executable `init` in the initramfs overlay",
            inp.overlay.origin
        ),
    }
}

/// What [`add_tools`] put into the initramfs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ToolsAdded {
    /// Canonical absolute paths of the tools included, in board order.
    pub included: Vec<String>,
    /// Optional tools the rootfs does not have.
    pub skipped: Vec<String>,
    /// Every path added (files and symlinks), absolute, sorted.
    pub added: Vec<String>,
}

/// Copies each tool and its closure from `rootfs` into `t` (see the module
/// docs for where things go). A missing required tool, a missing library, or
/// a path the initramfs cannot take is an error naming it.
pub fn add_tools(
    t: &mut Tree,
    rootfs: &Tree,
    tools: &[String],
    optional: &[String],
    mtime: u64,
) -> Result<ToolsAdded> {
    let dir = Meta::root(0o755, mtime);
    let before: BTreeSet<String> = t.iter().map(|(k, _)| k.clone()).collect();
    let mut out = ToolsAdded::default();
    let mut needs_config = false;
    let wanted = tools.iter().map(|p| (p, false));
    for (tool, is_optional) in wanted.chain(optional.iter().map(|p| (p, true))) {
        if is_optional && lookup::resolve(rootfs, tool).is_none() {
            out.skipped.push(tool.clone());
            continue;
        }
        let what = if is_optional { "optional tool" } else { "tool" };
        let files =
            elf::closure(rootfs, tool).with_context(|| format!("initramfs {what} {tool}"))?;
        for f in &files {
            copy_file(t, rootfs, &f.resolved, mtime)
                .with_context(|| format!("initramfs {what} {tool}: copying {}", f.resolved))?;
            mirror_links(t, rootfs, &f.requested, dir);
            let works =
                |t: &Tree| lookup::resolve(t, &f.requested).as_deref() == Some(&f.resolved[..]);
            if !works(t) && f.via != elf::Via::Program {
                // Something of the initramfs's own is in the way (a real /lib
                // where the rootfs has a symlink): point the loader's path
                // straight at the file.
                insert_through_links(
                    t,
                    f.requested.trim_start_matches('/'),
                    Entry::symlink(Meta::root(0o777, mtime), &f.resolved),
                    dir,
                )
                .with_context(|| format!("initramfs {what} {tool}: linking {}", f.requested))?;
            }
            if !works(t) && f.via != elf::Via::Program {
                bail!(
                    "initramfs {what} {tool}: {} does not lead to {} in the initramfs",
                    f.requested,
                    f.resolved
                );
            }
            needs_config |= f.via == elf::Via::Config;
        }
        if let Some(f) = files.first() {
            out.included.push(f.resolved.clone());
        }
    }
    if needs_config {
        // Libraries found only through /etc/ld.so.conf (or musl's path file):
        // the loader needs the rootfs's cache (path file) to find them too.
        let mut any = false;
        for pat in ["/etc/ld.so.cache", "/etc/ld-musl-*.path"] {
            for p in lookup::glob(rootfs, pat) {
                copy_file(t, rootfs, &p, mtime).with_context(|| format!("copying {p}"))?;
                any = true;
            }
        }
        if !any {
            bail!("initramfs tools: libraries are found only through /etc/ld.so.conf, and the rootfs has no /etc/ld.so.cache");
        }
    }
    out.added = t
        .iter()
        .filter(|(k, e)| !before.contains(*k) && e.kind != Kind::Dir)
        .map(|(k, _)| format!("/{k}"))
        .collect();
    Ok(out)
}

/// Copies the regular file at canonical absolute `path` from `rootfs` to the
/// same path in `t` (mode kept, owner root). Already there with the same
/// content is fine; anything else there is an error.
fn copy_file(t: &mut Tree, rootfs: &Tree, path: &str, mtime: u64) -> Result<()> {
    let key = path.trim_start_matches('/');
    let src = rootfs
        .get(key)
        .ok_or_else(|| anyhow!("{path} is not in the rootfs"))?;
    let Kind::File(data) = &src.kind else {
        bail!("{path} is not a regular file in the rootfs");
    };
    match t.get(key).map(|e| &e.kind) {
        None => {}
        Some(Kind::File(d)) if d == data => return Ok(()),
        Some(_) => bail!("the initramfs already has a different /{key}"),
    }
    let entry = Entry {
        meta: Meta::root(src.meta.mode & 0o7777, mtime),
        kind: Kind::File(data.clone()),
    };
    t.insert_with_parents(key, entry, Meta::root(0o755, mtime))
}

/// Recreates in `t` every symlink `rootfs` goes through when resolving
/// `path`, at the same place, where `t` has no entry there yet.
fn mirror_links(t: &mut Tree, rootfs: &Tree, path: &str, dir: Meta) {
    lookup::resolve_with_links(rootfs, path, |key, target| {
        if t.get(key).is_none() {
            // Fails only when a parent in `t` is not a directory: then the
            // caller's check finds the path unresolved.
            let _ = t.insert_with_parents(
                key,
                Entry::symlink(Meta::root(0o777, dir.mtime), target),
                dir,
            );
        }
    });
}

/// Inserts `entry` at relative `path` as the kernel would create it: the
/// parent directories are followed through symlinks that exist in `t` and
/// created (with `dir`) where missing. An existing entry at the final place
/// is an error unless it is equal.
fn insert_through_links(t: &mut Tree, path: &str, entry: Entry, dir: Meta) -> Result<()> {
    let mut cur = String::new();
    for c in tree::parent(path).split('/').filter(|c| !c.is_empty()) {
        let want = tree::join(&cur, c);
        match lookup::resolve(t, &want) {
            Some(p) if matches!(t.get(p.trim_start_matches('/')), Some(e) if e.kind == Kind::Dir) =>
            {
                cur = p.trim_start_matches('/').to_string();
            }
            Some(_) => bail!("/{want} is not a directory in the initramfs"),
            None if t.get(&want).is_none() => {
                t.insert(&want, Entry::dir(dir))?;
                cur = want;
            }
            None => bail!("/{want} is a dangling symlink in the initramfs"),
        }
    }
    let key = tree::join(&cur, tree::file_name(path));
    match t.get(&key) {
        None => t.insert(&key, entry),
        Some(e) if *e == entry => Ok(()),
        Some(_) => bail!("the initramfs already has /{key}"),
    }
}

fn file_text(t: &Tree, path: &str) -> Result<String> {
    match t.get(path).map(|e| &e.kind) {
        Some(Kind::File(d)) => {
            let bytes = d.to_vec().with_context(|| format!("reading /{path}"))?;
            Ok(String::from_utf8(bytes).map_err(|_| anyhow!("/{path} is not UTF-8 text"))?)
        }
        _ => bail!("/{path} not found"),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn node_config_archive_holds_the_files_under_etc_nodeimg_boot_with_their_modes() {
        let mut files = BTreeMap::new();
        for (name, mode, data) in [
            ("nodeimg/node.env", 0o644, "NODEIMG_CONFIG_VERSION='1'\n"),
            ("nodeimg/token", 0o600, "secret\n"),
        ] {
            files.insert(
                name.to_string(),
                crate::join::NodeFile {
                    mode,
                    data: data.as_bytes().to_vec(),
                },
            );
        }
        let gz = node_config_archive(&files, 1_700_000_000).unwrap();
        assert_eq!(gz, node_config_archive(&files, 1_700_000_000).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.cpio.gz");
        std::fs::write(&path, &gz).unwrap();
        // GNU cpio is the oracle.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("zcat '{}' | cpio -itv --quiet", path.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let listing = String::from_utf8(out.stdout).unwrap();
        let modes: Vec<(&str, &str)> = listing
            .lines()
            .map(|l| {
                (
                    l.split_whitespace().next().unwrap(),
                    l.rsplit(' ').next().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            modes,
            [
                ("drwxr-xr-x", "etc"),
                ("drwxr-xr-x", "etc/nodeimg"),
                ("drwx------", "etc/nodeimg/boot"),
                ("drwx------", "etc/nodeimg/boot/nodeimg"),
                ("-rw-r--r--", "etc/nodeimg/boot/nodeimg/node.env"),
                ("-rw-------", "etc/nodeimg/boot/nodeimg/token"),
            ],
            "{listing}"
        );
    }
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
    fn optional_modules_load_when_present_and_are_skipped_when_absent() {
        let idx = ModuleIndex::parse(DEP, None).unwrap();
        let order = idx
            .load_order_with_optional(
                &["jbd2".into()],
                &["usb_storage".into(), "sdhci-iproc".into()],
            )
            .unwrap();
        assert_eq!(
            order,
            [
                "kernel/fs/jbd2/jbd2.ko.xz",
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

    /// An initramfs as `compose` starts it: /bin holds busybox, /lib/modules
    /// is a real directory (no tools yet).
    fn initramfs_base(with_lib_dir: bool) -> Tree {
        let d = Meta::root(0o755, 7);
        let mut t = Tree::new(d);
        for p in ["bin", "etc", "etc/nodeimg", "dev"] {
            t.insert(p, Entry::dir(d)).unwrap();
        }
        t.insert("bin/busybox", Entry::file(d, b"bb".to_vec()))
            .unwrap();
        if with_lib_dir {
            t.insert_with_parents("lib/modules/6.1/x.ko", Entry::file(d, vec![]), d)
                .unwrap();
        }
        t
    }

    #[test]
    fn tools_land_at_canonical_paths_with_the_loaders_symlinks() {
        let rootfs = crate::elf::tests::debian();
        let mut t = initramfs_base(false);
        let added = add_tools(
            &mut t,
            &rootfs,
            &[],
            &["/sbin/sfdisk".into(), "/sbin/resize2fs".into()],
            7,
        )
        .unwrap();
        assert_eq!(added.included, ["/usr/sbin/sfdisk"]);
        assert_eq!(added.skipped, ["/sbin/resize2fs"]);
        let lib = "/usr/lib/aarch64-linux-gnu";
        assert_eq!(
            added.added,
            [
                "/lib".to_string(),
                "/sbin".into(),
                format!("{lib}/ld-linux-aarch64.so.1"),
                format!("{lib}/libblkid.so.1"),
                format!("{lib}/libc.so.6"),
                format!("{lib}/libfdisk.so.1"),
                format!("{lib}/libfdisk.so.1.1.0"),
                "/usr/lib/ld-linux-aarch64.so.1".into(),
                "/usr/sbin/sfdisk".into(),
            ]
        );
        // The rootfs's usr-merge symlinks are mirrored, so PT_INTERP resolves.
        assert_eq!(t.get("lib").unwrap().kind, Kind::Symlink("usr/lib".into()));
        assert_eq!(
            lookup::resolve(&t, "/lib/ld-linux-aarch64.so.1").as_deref(),
            Some("/usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1")
        );
        assert_eq!(
            t.get("usr/lib/aarch64-linux-gnu/libfdisk.so.1")
                .unwrap()
                .kind,
            Kind::Symlink("libfdisk.so.1.1.0".into())
        );
        let sf = t.get("usr/sbin/sfdisk").unwrap();
        assert_eq!((sf.meta.mode, sf.meta.uid, sf.meta.mtime), (0o755, 0, 7));
        // The initramfs's own busybox is untouched.
        assert_eq!(t.get("bin").unwrap().kind, Kind::Dir);
        assert!(t.get("bin/busybox").is_some());
    }

    #[test]
    fn a_real_lib_dir_gets_a_link_to_the_interpreter() {
        let rootfs = crate::elf::tests::debian();
        let mut t = initramfs_base(true);
        add_tools(&mut t, &rootfs, &["/sbin/sfdisk".into()], &[], 7).unwrap();
        assert_eq!(t.get("lib").unwrap().kind, Kind::Dir);
        assert!(t.get("lib/modules/6.1/x.ko").is_some());
        assert_eq!(
            t.get("lib/ld-linux-aarch64.so.1").unwrap().kind,
            Kind::Symlink("/usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1".into())
        );
    }

    #[test]
    fn missing_required_tool_or_library_is_an_error_naming_it() {
        let mut rootfs = crate::elf::tests::debian();
        let mut t = initramfs_base(false);
        let err = format!(
            "{:#}",
            add_tools(&mut t, &rootfs, &["/sbin/resize2fs".into()], &[], 7).unwrap_err()
        );
        assert!(
            err.contains("tool /sbin/resize2fs") && err.contains("not found"),
            "{err}"
        );
        rootfs.remove("usr/lib/aarch64-linux-gnu/libc.so.6");
        // Present but broken: an error even when optional.
        let err = format!(
            "{:#}",
            add_tools(&mut t, &rootfs, &[], &["/sbin/sfdisk".into()], 7).unwrap_err()
        );
        assert!(
            err.contains("/sbin/sfdisk") && err.contains("library libc.so.6"),
            "{err}"
        );
    }

    #[test]
    fn libraries_found_through_ld_so_conf_bring_the_cache() {
        let mut rootfs = crate::elf::tests::debian();
        let d = Meta::root(0o644, 1);
        let put = |t: &mut Tree, p: &str, data: Vec<u8>| {
            t.insert_with_parents(p, Entry::file(d, data), Meta::root(0o755, 1))
                .unwrap()
        };
        put(&mut rootfs, "etc/ld.so.conf", b"/opt/lib\n".to_vec());
        rootfs.remove("usr/lib/aarch64-linux-gnu/libblkid.so.1");
        put(
            &mut rootfs,
            "opt/lib/libblkid.so.1",
            crate::elf::tests::aarch64(&[]),
        );
        let mut t = initramfs_base(false);
        let err = format!(
            "{:#}",
            add_tools(&mut t, &rootfs, &["/sbin/sfdisk".into()], &[], 7).unwrap_err()
        );
        assert!(err.contains("no /etc/ld.so.cache"), "{err}");
        put(&mut rootfs, "etc/ld.so.cache", b"cache".to_vec());
        let mut t = initramfs_base(false);
        let added = add_tools(&mut t, &rootfs, &["/sbin/sfdisk".into()], &[], 7).unwrap();
        assert!(added.added.contains(&"/opt/lib/libblkid.so.1".to_string()));
        assert!(added.added.contains(&"/etc/ld.so.cache".to_string()));
    }

    #[test]
    fn an_initramfs_file_in_the_way_is_an_error() {
        let rootfs = crate::elf::tests::debian();
        let mut t = initramfs_base(false);
        t.insert_with_parents(
            "usr/sbin/sfdisk",
            Entry::file(Meta::root(0o755, 7), b"x".to_vec()),
            Meta::root(0o755, 7),
        )
        .unwrap();
        let err = format!(
            "{:#}",
            add_tools(&mut t, &rootfs, &["/sbin/sfdisk".into()], &[], 7).unwrap_err()
        );
        assert!(
            err.contains("already has a different /usr/sbin/sfdisk"),
            "{err}"
        );
    }

    #[test]
    fn modules_go_through_a_mirrored_lib_symlink() {
        let mut t = initramfs_base(false);
        t.insert("lib", Entry::symlink(Meta::root(0o777, 7), "usr/lib"))
            .unwrap();
        let d = Meta::root(0o755, 7);
        let err = insert_through_links(&mut t, "lib/modules/a.ko", Entry::file(d, vec![]), d)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/lib is a dangling symlink"), "{err}");
        t.insert_with_parents("usr/lib", Entry::dir(d), d).unwrap();
        insert_through_links(
            &mut t,
            "lib/modules/6.1/kernel/a.ko",
            Entry::file(d, vec![1]),
            d,
        )
        .unwrap();
        assert!(t.get("usr/lib/modules/6.1/kernel/a.ko").is_some());
        assert_eq!(
            lookup::resolve(&t, "/lib/modules/6.1/kernel/a.ko").as_deref(),
            Some("/usr/lib/modules/6.1/kernel/a.ko")
        );
        let err = insert_through_links(&mut t, "bin/busybox/x", Entry::file(d, vec![]), d)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn missing_dependency_line_is_reported() {
        let idx = ModuleIndex::parse("a.ko: b.ko\n", None).unwrap();
        let err = idx.load_order(&["a".into()]).unwrap_err().to_string();
        assert!(err.contains("b.ko"), "{err}");
    }
}
