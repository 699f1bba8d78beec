//! Composing the node OS tree from verified `.deb` files, in-process and
//! rootless: every package's `data.tar` is laid into one tree the way dpkg
//! would unpack it, no maintainer script runs, and the declarative steps
//! (`super::steps`) then do what the scripts would have done.
//!
//! Unpacking rules (dpkg's, for the cases a base meets):
//! - merged /usr: the top-level links a package ships into `usr/` (base-files'
//!   `/bin -> usr/bin`, ...) are laid first, whatever the package order; a
//!   package shipping `/bin/x` then lands in `/usr/bin/x` through the link,
//!   and a directory entry for `/bin` keeps the link (never replaces it);
//! - a directory shipped by several packages keeps the metadata of the first;
//! - a file another package already shipped is replaced if the new package
//!   `Replaces` the owner, or if both are the same; otherwise it is replaced
//!   too (later package wins) and a warning names both packages, so the
//!   outcome depends only on the package order;
//! - a non-directory over a directory, or a directory over a file, is an error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};

use super::deb::{read_deb, Deb};
use super::steps;
use crate::tree::lookup;
use crate::tree::reader::Spill;
use crate::tree::{file_name, join, parent, Entry, Kind, Meta, Tree};

/// What the steps need to know about the node.
#[derive(Debug, Clone)]
pub struct ComposeOptions {
    /// The serial console a getty runs on (`ttyAMA0` on virt, `ttyS1` on a Pi 4).
    pub serial_console: String,
    /// systemd units enabled from their [Install] sections, in this order.
    pub enable: Vec<String>,
    /// The time given to files the steps create (SOURCE_DATE_EPOCH).
    pub mtime: u64,
    /// Where the kernel's module indexes are cached (`steps::modules`);
    /// none: depmod runs every time.
    pub module_index_cache: Option<PathBuf>,
}

/// The units a node enables (issue 9's default base).
pub const DEFAULT_UNITS: &[&str] = &[
    "systemd-networkd.service",
    "systemd-networkd-wait-online.service",
    "systemd-resolved.service",
    "systemd-timesyncd.service",
    "systemd-time-wait-sync.service",
    "ssh.service",
    "dbus.socket",
];

impl ComposeOptions {
    /// The default node base's units, a getty on `serial_console`; module
    /// indexes cached in `$XDG_CACHE_HOME/nodeimg/module-indexes` (none when
    /// there is no cache directory).
    pub fn node(serial_console: &str, mtime: u64) -> Self {
        ComposeOptions {
            serial_console: serial_console.to_string(),
            enable: DEFAULT_UNITS.iter().map(|s| s.to_string()).collect(),
            mtime,
            module_index_cache: super::fetch::cache_root()
                .ok()
                .map(|d| d.join("module-indexes")),
        }
    }
}

/// An installed package, as the dpkg database records it.
#[derive(Debug, Clone)]
pub struct Installed {
    pub deb: super::deb822::Paragraph,
    pub package: String,
    pub info_name: String,
    pub conffiles: Vec<String>,
    pub md5sums: String,
    /// The paths the package shipped ("/", "/usr", "/usr/bin/x"), as dpkg's
    /// `.list` file has them.
    pub paths: Vec<String>,
}

/// The unpacked packages before the steps: the tree, what is installed,
/// and the warnings about files several packages ship.
pub struct Unpacked {
    pub tree: Tree,
    pub installed: Vec<Installed>,
    pub warnings: Vec<String>,
}

/// Unpacks `debs` in order and runs the steps. File contents go to a spill
/// file in `spill_dir`. Warnings (files shipped by two packages without a
/// Replaces) are printed to stderr, in a fixed order.
pub fn compose(debs: &[PathBuf], opts: &ComposeOptions, spill_dir: &Path) -> Result<Tree> {
    let unpacked = unpack_all(read_all(debs, spill_dir)?)?;
    for w in &unpacked.warnings {
        eprintln!("nodeimg: warning: {w}");
    }
    let mut tree = unpacked.tree;
    steps::run_all(&mut tree, &unpacked.installed, opts)?;
    Ok(tree)
}

/// At most this many packages are read at once (each reader holds a
/// decompressor's window, up to 64 MiB for xz -9).
const MAX_READERS: usize = 4;

/// Reads the `.deb` files `debs`, on as many threads as there are cores (at
/// most `MAX_READERS`), each thread spilling the file contents of the
/// packages it reads to a spill file of its own in `spill_dir`. The largest
/// packages are started first, so that the last one to finish is a small
/// one. The result is in the order of `debs` and the same whatever the
/// threads did: a tree holds where each file's bytes are, and the bytes are
/// the same in whichever spill file. On failure, the error is that of the
/// first failing package in the order of `debs`.
pub fn read_all(debs: &[PathBuf], spill_dir: &Path) -> Result<Vec<Deb>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    read_all_with(debs, spill_dir, cores.min(MAX_READERS))
}

/// [`read_all`] on `workers` threads.
fn read_all_with(debs: &[PathBuf], spill_dir: &Path, workers: usize) -> Result<Vec<Deb>> {
    let workers = workers.min(debs.len()).max(1);
    let mut order: Vec<usize> = (0..debs.len()).collect();
    let size = |i: usize| std::fs::metadata(&debs[i]).map_or(0, |m| m.len());
    order.sort_by_cached_key(|&i| (std::cmp::Reverse(size(i)), i));
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<Result<Deb>>>> = debs.iter().map(|_| Mutex::new(None)).collect();
    let spills = (0..workers)
        .map(|_| Spill::new(spill_dir))
        .collect::<Result<Vec<_>>>()?;
    std::thread::scope(|s| -> Result<()> {
        for mut spill in spills {
            let (next, order, slots) = (&next, &order, &slots);
            std::thread::Builder::new()
                .name("deb-reader".into())
                .spawn_scoped(s, move || loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = order.get(k) else { break };
                    let r = read_deb(&debs[i], &mut spill);
                    if let Ok(mut slot) = slots[i].lock() {
                        *slot = Some(r);
                    }
                })
                .context("starting a package reader")?;
        }
        Ok(())
    })?;
    slots
        .into_iter()
        .zip(debs)
        .map(|(slot, path)| {
            slot.into_inner().ok().flatten().unwrap_or_else(|| {
                Err(anyhow!(
                    "reading package {}: its reader stopped",
                    path.display()
                ))
            })
        })
        .collect()
}

/// Lays the packages' files into one tree (see the module comment).
pub fn unpack_all(packages: Vec<Deb>) -> Result<Unpacked> {
    let mut tree = Tree::new(Meta::root(0o755, 0));
    let mut warnings = Vec::new();
    // The merged-/usr links first.
    for deb in &packages {
        for (path, e) in deb.files.children("") {
            if let Kind::Symlink(target) = &e.kind {
                if target.starts_with("usr/") && !tree.contains(path) {
                    // The directory it points to exists from the start too, so
                    // the link never dangles while packages are unpacked.
                    if let Some(dir) = crate::tree::normalize(target) {
                        let meta = Meta::root(0o755, e.meta.mtime);
                        if !tree.contains(&dir) {
                            tree.insert_with_parents(&dir, Entry::dir(meta), meta)?;
                        }
                    }
                    tree.insert(path, e.clone())?;
                }
            }
        }
    }
    let mut owner: HashMap<String, usize> = HashMap::new();
    let mut installed = Vec::with_capacity(packages.len());
    for (i, deb) in packages.iter().enumerate() {
        let replaces = relation_names(deb.control.get("Replaces").unwrap_or(""));
        let mut paths = Vec::new();
        for (path, e) in deb.files.iter() {
            paths.push(format!("/{path}"));
            if path.is_empty() {
                continue;
            }
            let at =
                place(&tree, path).with_context(|| format!("package {}: /{path}", deb.package))?;
            match (tree.get(&at), &e.kind) {
                (None, _) => {
                    tree.insert(&at, e.clone())
                        .with_context(|| format!("package {}: /{path}", deb.package))?;
                }
                (Some(old), Kind::Dir) => match &old.kind {
                    Kind::Dir => {}
                    Kind::Symlink(_)
                        if lookup::resolve(&tree, &at).is_some_and(|p| {
                            matches!(tree.get(&p[1..]).map(|x| &x.kind), Some(Kind::Dir))
                        }) => {}
                    _ => bail!(
                        "package {}: directory /{path} where another package has a file",
                        deb.package
                    ),
                },
                (Some(old), _) => {
                    if old.kind == Kind::Dir {
                        bail!(
                            "package {}: /{path} where another package has a directory",
                            deb.package
                        );
                    }
                    let prev = owner.get(&at).copied();
                    let same = same_entry(old, e)?;
                    if !same {
                        let allowed = prev
                            .map(|p| replaces.iter().any(|r| *r == packages[p].package))
                            .unwrap_or(true);
                        if !allowed {
                            warnings.push(format!(
                                "/{at}: {} overwrites the file of {} (no Replaces)",
                                deb.package,
                                prev.map(|p| packages[p].package.as_str()).unwrap_or("?")
                            ));
                        }
                    }
                    tree.insert(&at, e.clone())?;
                }
            }
            if e.kind != Kind::Dir {
                owner.insert(at, i);
            }
        }
        installed.push(Installed {
            deb: deb.control.clone(),
            package: deb.package.clone(),
            info_name: deb.info_name(),
            conffiles: deb.conffiles.clone(),
            md5sums: deb.md5sums.clone(),
            paths: paths
                .into_iter()
                .map(|p| if p == "/" { "/.".to_string() } else { p })
                .collect(),
        });
    }
    Ok(Unpacked {
        tree,
        installed,
        warnings,
    })
}

/// Where the package path `path` lands: its parent resolved through the
/// tree's symlinks (a `/bin/x` goes to `usr/bin/x`). The parent exists: a
/// package's own tree lists parents before children.
fn place(tree: &Tree, path: &str) -> Result<String> {
    let dir = parent(path);
    if dir.is_empty() {
        return Ok(path.to_string());
    }
    if matches!(tree.get(dir).map(|e| &e.kind), Some(Kind::Dir)) {
        // The common case: no symlink on the way (checked by the parent's own
        // placement, which put it exactly there).
        let mut p = dir;
        loop {
            if !matches!(tree.get(p).map(|e| &e.kind), Some(Kind::Dir)) {
                break;
            }
            if !p.contains('/') {
                return Ok(path.to_string());
            }
            p = parent(p);
        }
    }
    match lookup::resolve(tree, dir) {
        Some(abs) => {
            let real = abs.trim_start_matches('/');
            match tree.get(real).map(|e| &e.kind) {
                Some(Kind::Dir) => Ok(join(real, file_name(path))),
                _ => bail!("/{dir} is not a directory"),
            }
        }
        None => bail!("/{dir} does not exist or is a dangling link"),
    }
}

/// Whether two non-directory entries are the same (kind, target or bytes,
/// and metadata apart from the time).
fn same_entry(a: &Entry, b: &Entry) -> Result<bool> {
    if (a.meta.mode, a.meta.uid, a.meta.gid) != (b.meta.mode, b.meta.uid, b.meta.gid) {
        return Ok(false);
    }
    Ok(match (&a.kind, &b.kind) {
        (Kind::File(x), Kind::File(y)) => x.same_bytes(y).context("comparing files")?,
        (x, y) => x == y,
    })
}

/// The package names of a relation field (`Replaces`, `Provides`, ...):
/// versions, architecture qualifiers and alternatives' bars dropped.
pub fn relation_names(field: &str) -> Vec<String> {
    field
        .split([',', '|'])
        .filter_map(|part| {
            let name = part.trim().split([' ', '(', '[']).next()?.trim();
            let name = name.split(':').next()?;
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// `nodeimg base compose`: composes the `.deb` files of `debs_dir` (in
/// file-name order) and writes the tree as an uncompressed tar archive at
/// `out` (written under a temporary name, renamed when complete). With
/// `unpack_only`, the packages are unpacked and the steps not run.
pub fn command(debs_dir: &Path, serial_console: &str, unpack_only: bool, out: &Path) -> Result<()> {
    let mut debs = Vec::new();
    for de in
        std::fs::read_dir(debs_dir).with_context(|| format!("listing {}", debs_dir.display()))?
    {
        let p = de
            .with_context(|| format!("listing {}", debs_dir.display()))?
            .path();
        if p.extension().is_some_and(|e| e == "deb") {
            debs.push(p);
        }
    }
    debs.sort();
    if debs.is_empty() {
        bail!("{} holds no .deb files", debs_dir.display());
    }
    let mtime = crate::ids::source_date_epoch()?.unwrap_or(0);
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tree = if unpack_only {
        let unpacked = unpack_all(read_all(&debs, dir)?)?;
        for w in &unpacked.warnings {
            eprintln!("nodeimg: warning: {w}");
        }
        unpacked.tree
    } else {
        compose(&debs, &ComposeOptions::node(serial_console, mtime), dir)?
    };
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    write_tar(&tree, std::io::BufWriter::new(tmp.as_file()))
        .with_context(|| format!("writing {}", out.display()))?;
    tmp.persist(out)
        .with_context(|| format!("renaming to {}", out.display()))?;
    Ok(())
}

/// Writes `tree` as a tar archive (GNU format, numeric owners, hard links as
/// links to their first name, entries in tree order, "./" first).
pub fn write_tar<W: std::io::Write>(tree: &Tree, out: W) -> Result<()> {
    let links = crate::tree::links::HardLinks::of(tree);
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Complete);
    for (path, e) in tree.iter() {
        let name = if path.is_empty() {
            "./".to_string()
        } else {
            format!("./{path}")
        };
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.meta.mode);
        h.set_uid(e.meta.uid.into());
        h.set_gid(e.meta.gid.into());
        h.set_mtime(e.meta.mtime);
        h.set_size(0);
        match &e.kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                b.append_data(&mut h, &name, std::io::empty())?;
            }
            Kind::File(d) => {
                if !links.is_first(path, d) {
                    let first = links.first(d).unwrap_or(path);
                    h.set_entry_type(tar::EntryType::Link);
                    b.append_link(&mut h, &name, format!("./{first}"))?;
                } else {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len());
                    let r = d.reader().with_context(|| format!("reading /{path}"))?;
                    b.append_data(&mut h, &name, r)?;
                }
            }
            Kind::Symlink(t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                b.append_link(&mut h, &name, t)?;
            }
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                h.set_entry_type(if matches!(e.kind, Kind::CharDevice { .. }) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                h.set_device_major(*major)?;
                h.set_device_minor(*minor)?;
                b.append_data(&mut h, &name, std::io::empty())?;
            }
            Kind::Fifo => {
                h.set_entry_type(tar::EntryType::Fifo);
                b.append_data(&mut h, &name, std::io::empty())?;
            }
            Kind::Socket => {} // tar has no sockets; they are made at run time
        }
    }
    b.into_inner()?.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_names_drop_versions_and_qualifiers() {
        assert_eq!(
            relation_names("a (<< 1.2), b:any, c [arm64] | d (>= 2)"),
            ["a", "b", "c", "d"]
        );
        assert!(relation_names("").is_empty());
    }

    fn tree_with(entries: &[(&str, Entry)]) -> Tree {
        let mut t = Tree::new(Meta::root(0o755, 0));
        for (p, e) in entries {
            t.insert_with_parents(p, e.clone(), Meta::root(0o755, 0))
                .unwrap();
        }
        t
    }

    /// Builds `NAME.deb` in `dir` with `dpkg-deb` from the files a shell
    /// script makes (`bytes` KiB of incompressible data in `big`, so that
    /// package sizes differ).
    fn deb(dir: &Path, name: &str, bytes: usize, script: &str) -> PathBuf {
        let root = dir.join(format!("{name}-root"));
        std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
        std::fs::write(
            root.join("DEBIAN/control"),
            format!("Package: {name}\nVersion: 1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n"),
        )
        .unwrap();
        let st = std::process::Command::new("sh")
            .arg("-ec")
            .arg(format!(
                "mkdir -p usr/share/{name} && head -c {}k /dev/urandom > usr/share/{name}/big && {script}",
                bytes
            ))
            .current_dir(&root)
            .status()
            .unwrap();
        assert!(st.success());
        let out = dir.join(format!("{name}.deb"));
        let st = std::process::Command::new("dpkg-deb")
            .args(["--build", "-Zxz", "--root-owner-group"])
            .arg(&root)
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        out
    }

    /// What a read package is: name, and each entry with its bytes.
    fn describe(debs: &[Deb]) -> Vec<(String, Vec<(String, Entry, Option<Vec<u8>>)>)> {
        debs.iter()
            .map(|d| {
                let files = d
                    .files
                    .iter()
                    .map(|(k, e)| {
                        let bytes = match &e.kind {
                            Kind::File(c) => Some(c.to_vec().unwrap()),
                            _ => None,
                        };
                        (k.clone(), e.clone(), bytes)
                    })
                    .collect();
                (d.package.clone(), files)
            })
            .collect()
    }

    #[test]
    fn packages_read_on_several_threads_are_read_as_on_one() {
        let dir = tempfile::tempdir().unwrap();
        // Sizes out of order, so the readers take them in another order
        // than the list's; a hard link and a file two packages ship.
        let debs = vec![
            deb(dir.path(), "p0", 1, "echo same > usr/share/shared"),
            deb(
                dir.path(),
                "p1",
                300,
                "ln usr/share/p1/big usr/share/p1/link",
            ),
            deb(dir.path(), "p2", 2, "echo same > usr/share/shared"),
            deb(dir.path(), "p3", 600, "ln -s big usr/share/p3/sym"),
            deb(dir.path(), "p4", 50, "true"),
        ];
        // The reference: one after the other, in list order, one spill file.
        let mut spill = Spill::new(dir.path()).unwrap();
        let one: Vec<Deb> = debs
            .iter()
            .map(|p| read_deb(p, &mut spill).unwrap())
            .collect();
        let want = describe(&one);
        assert_eq!(want.len(), 5);
        assert_eq!(
            want[1].1.iter().filter(|f| f.0.ends_with("p1/big")).count(),
            1
        );
        for workers in [1, 2, 3, 8] {
            let got = read_all_with(&debs, dir.path(), workers).unwrap();
            assert_eq!(describe(&got), want, "{workers} readers");
            // The same composed tree too.
            let mut spill = Spill::new(dir.path()).unwrap();
            let seq = debs
                .iter()
                .map(|p| read_deb(p, &mut spill).unwrap())
                .collect();
            let (a, b) = (unpack_all(got).unwrap(), unpack_all(seq).unwrap());
            assert_eq!(
                a.tree.iter().collect::<Vec<_>>(),
                b.tree.iter().collect::<Vec<_>>()
            );
        }
        // Hard links still share their bytes.
        let got = read_all_with(&debs, dir.path(), 3).unwrap();
        let p1 = &got[1].files;
        match (
            &p1.get("usr/share/p1/big").unwrap().kind,
            &p1.get("usr/share/p1/link").unwrap().kind,
        ) {
            (Kind::File(a), Kind::File(b)) => assert!(std::sync::Arc::ptr_eq(a, b)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_error_is_the_first_broken_package_in_list_order() {
        let dir = tempfile::tempdir().unwrap();
        let good = deb(dir.path(), "good", 1, "true");
        let big = deb(dir.path(), "big", 400, "true");
        let broken = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, b"!<arch>\nnot a package").unwrap();
            p
        };
        // The second broken one is larger, so it is read first.
        let (b1, b2) = (broken("b1.deb"), big.clone());
        let trunc = dir.path().join("b2.deb");
        let bytes = std::fs::read(&b2).unwrap();
        std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
        for workers in [1, 2, 4] {
            let list = [good.clone(), b1.clone(), trunc.clone()];
            let err = format!(
                "{:#}",
                read_all_with(&list, dir.path(), workers).unwrap_err()
            );
            assert!(err.contains("b1.deb"), "{workers} readers: {err}");
            let list = [good.clone(), trunc.clone(), b1.clone()];
            let err = format!(
                "{:#}",
                read_all_with(&list, dir.path(), workers).unwrap_err()
            );
            assert!(err.contains("b2.deb"), "{workers} readers: {err}");
        }
    }

    #[test]
    fn place_goes_through_directory_links() {
        let m = Meta::root(0o755, 0);
        let t = tree_with(&[
            ("usr/bin", Entry::dir(m)),
            ("bin", Entry::symlink(m, "usr/bin")),
            ("etc", Entry::dir(m)),
            ("dangling", Entry::symlink(m, "nowhere")),
        ]);
        assert_eq!(place(&t, "bin/sh").unwrap(), "usr/bin/sh");
        assert_eq!(place(&t, "etc/x").unwrap(), "etc/x");
        assert_eq!(place(&t, "top").unwrap(), "top");
        assert!(place(&t, "dangling/x").is_err());
    }
}
