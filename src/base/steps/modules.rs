//! The kernel's module indexes (`modules.dep`, `modules.alias`, the `.bin`
//! indexes kmod reads, ...), which Debian's kernel packages leave to
//! their postinst. Made by the host's `depmod` (kmod) on a staged copy of
//! `/usr/lib/modules/<version>`: `depmod -b STAGE VERSION` reads
//! `STAGE/lib/modules/VERSION`, and what it writes there is added to the
//! tree. kmod's index format is not a stable interface of its own, so we
//! leave writing it to kmod (a host requirement, like mke2fs).
//!
//! depmod is slow on a whole kernel (it decompresses each of its thousands
//! of `.ko.xz` modules, on one core), and its output is a function of its
//! inputs alone, so the indexes are kept in a cache directory
//! (`$XDG_CACHE_HOME/nodeimg/module-indexes/<key>/`) under a key that hashes
//! exactly those inputs: the kernel version, the directories and the
//! content of every file the staging copies (modules, `modules.order`,
//! `modules.builtin`, `modules.builtin.modinfo`), `depmod --version` and the
//! host's depmod configuration (`*.conf` of the `depmod.d` directories kmod
//! reads whatever `-b` says). A hit needs no staging and no depmod run; a
//! miss stages, runs depmod and stores what it wrote (a temporary directory
//! renamed into place). Entries carry the SHA-256 of each file and are
//! checked when used: a damaged entry counts as a miss and is replaced.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use super::write;
use crate::tree::{Data, Kind, Tree};

/// What the key's first bytes say: a new layout of the key or the entries
/// gets a new tag, so old entries are never misread.
const KEY_TAG: &str = "nodeimg module indexes 1";

/// The list of an entry's files and their SHA-256, in `sha256sum`'s format.
const SUMS: &str = "SHA256SUMS";

/// How many entries the cache keeps (about 6 MiB each for a Debian kernel).
const KEEP: usize = 4;

/// The configuration directories kmod's depmod reads (not moved by `-b`).
const DEPMOD_CONFIG_DIRS: &[&str] = &[
    "/etc/depmod.d",
    "/run/depmod.d",
    "/usr/local/lib/depmod.d",
    "/usr/lib/depmod.d",
    "/lib/depmod.d",
];

/// Makes the indexes of every kernel under `/usr/lib/modules`; `cache` is
/// the index cache's directory (none: depmod runs every time).
pub fn run(tree: &mut Tree, mtime: u64, cache: Option<&Path>) -> Result<()> {
    run_with(tree, mtime, cache, &depmod())
}

fn run_with(tree: &mut Tree, mtime: u64, cache: Option<&Path>, depmod: &Path) -> Result<()> {
    let versions: Vec<String> = tree
        .children("usr/lib/modules")
        .filter(|(_, e)| e.kind == Kind::Dir)
        .map(|(k, _)| crate::tree::file_name(k).to_string())
        .collect();
    for v in versions {
        index(tree, &v, mtime, cache, depmod).with_context(|| format!("kernel {v}"))?;
    }
    Ok(())
}

/// One path of the module tree depmod reads: a directory (`None`) or an
/// input file.
struct Input {
    rel: String,
    file: Option<Data>,
}

/// The directories and input files of `base` (tree order).
fn inputs(tree: &Tree, base: &str) -> Vec<Input> {
    let prefix = format!("{base}/");
    tree.iter()
        .filter_map(|(k, e)| {
            let rel = k.strip_prefix(&prefix)?;
            match &e.kind {
                Kind::Dir => Some(Input {
                    rel: rel.to_string(),
                    file: None,
                }),
                Kind::File(d) if is_input(rel) => Some(Input {
                    rel: rel.to_string(),
                    file: Some(d.clone()),
                }),
                _ => None,
            }
        })
        .collect()
}

/// Whether depmod reads the file `rel` (relative to the version directory):
/// modules and the lists it takes as input.
fn is_input(rel: &str) -> bool {
    rel.ends_with(".ko")
        || rel.contains(".ko.")
        || matches!(
            rel,
            "modules.order" | "modules.builtin" | "modules.builtin.modinfo"
        )
}

fn index(
    tree: &mut Tree,
    version: &str,
    mtime: u64,
    cache: Option<&Path>,
    depmod: &Path,
) -> Result<()> {
    let base = format!("usr/lib/modules/{version}");
    let inputs = inputs(tree, &base);
    let cached = match cache {
        Some(dir) => {
            let key = key(&inputs, version, depmod)?;
            let entry = dir.join(&key);
            if let Some(files) = load(&entry) {
                // Most recently used: the last to be pruned.
                let _ = fs::File::open(&entry)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                return add(tree, &base, files, mtime);
            }
            Some((dir, key))
        }
        None => None,
    };
    let files = run_depmod(&inputs, version, depmod)?;
    if let Some((dir, key)) = cached {
        // A cache that cannot be written costs time, not correctness.
        if let Err(e) = store(dir, &key, &files) {
            eprintln!("nodeimg: warning: module index cache: {e:#}");
        }
    }
    add(tree, &base, files, mtime)
}

/// Adds the index files to the tree under `base`.
fn add(tree: &mut Tree, base: &str, files: Vec<(String, Vec<u8>)>, mtime: u64) -> Result<()> {
    for (n, data) in files {
        write(tree, &format!("{base}/{n}"), data, 0o644, mtime)?;
    }
    Ok(())
}

/// Stages the inputs, runs depmod and returns the files it wrote at the top
/// of the version directory, by name.
fn run_depmod(inputs: &[Input], version: &str, depmod: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let stage = tempfile::Builder::new()
        .prefix("nodeimg-depmod")
        .tempdir()
        .context("creating a staging directory")?;
    let root = stage.path().join("lib/modules").join(version);
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let mut before = BTreeSet::new();
    for input in inputs {
        let dest = root.join(&input.rel);
        match &input.file {
            None => fs::create_dir_all(&dest)?,
            Some(d) => {
                if let Some(p) = dest.parent() {
                    fs::create_dir_all(p)?;
                }
                let mut r = d.reader()?;
                let mut f = fs::File::create(&dest)
                    .with_context(|| format!("creating {}", dest.display()))?;
                io::copy(&mut r, &mut f).with_context(|| format!("staging {}", input.rel))?;
                if !input.rel.contains('/') {
                    before.insert(input.rel.clone());
                }
            }
        }
    }
    let out = Command::new(depmod)
        .arg("-b")
        .arg(stage.path())
        .arg(version)
        .output()
        .context("running depmod (install kmod)")?;
    if !out.status.success() {
        bail!(
            "depmod failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    new_files(&root, &before)
}

/// `depmod` from PATH, else from the sbin directories a user's PATH may lack.
fn depmod() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("depmod").exists()))
        .unwrap_or(false);
    if !on_path {
        for p in ["/usr/sbin/depmod", "/sbin/depmod"] {
            if Path::new(p).exists() {
                return p.into();
            }
        }
    }
    "depmod".into()
}

/// The files depmod wrote at the top of `root` (those not in `before`), by name.
fn new_files(root: &Path, before: &BTreeSet<String>) -> Result<Vec<(String, Vec<u8>)>> {
    let mut names = Vec::new();
    for de in fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
        let de = de?;
        if de.file_type()?.is_file() {
            if let Some(n) = de.file_name().to_str() {
                if !before.contains(n) {
                    names.push(n.to_string());
                }
            }
        }
    }
    names.sort();
    if !names.iter().any(|n| n == "modules.dep") {
        bail!("depmod wrote no modules.dep");
    }
    names
        .into_iter()
        .map(|n| {
            let data = fs::read(root.join(&n)).with_context(|| format!("reading {n}"))?;
            Ok((n, data))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The cache

/// Appends `bytes` to the hash with its length first, so that no two lists
/// of fields hash alike.
fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// The cache key of depmod's run on `inputs` (hex SHA-256).
fn key(inputs: &[Input], version: &str, depmod: &Path) -> Result<String> {
    let mut h = Sha256::new();
    field(&mut h, KEY_TAG.as_bytes());
    field(&mut h, version.as_bytes());
    let out = Command::new(depmod)
        .arg("--version")
        .output()
        .context("running depmod --version (install kmod)")?;
    if !out.status.success() {
        bail!(
            "depmod --version failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    field(&mut h, &out.stdout);
    for dir in DEPMOD_CONFIG_DIRS {
        config_dir(&mut h, Path::new(dir))?;
    }
    let mut buf = vec![0u8; 128 * 1024];
    for input in inputs {
        match &input.file {
            None => field(&mut h, format!("d {}", input.rel).as_bytes()),
            Some(d) => {
                field(&mut h, format!("f {}", input.rel).as_bytes());
                field(&mut h, &content_sha256(d, &mut buf)?);
            }
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Hashes the `*.conf` files of one of depmod's configuration directories.
fn config_dir(h: &mut Sha256, dir: &Path) -> Result<()> {
    let list = match fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut names = Vec::new();
    for de in list {
        let de = de.with_context(|| format!("listing {}", dir.display()))?;
        let name = de.file_name();
        if name.to_string_lossy().ends_with(".conf") {
            names.push(name);
        }
    }
    names.sort();
    for n in names {
        let p = dir.join(&n);
        let data = fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        field(h, p.as_os_str().as_encoded_bytes());
        field(h, &data);
    }
    Ok(())
}

/// The SHA-256 of a file's bytes.
fn content_sha256(d: &Data, buf: &mut [u8]) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut r = d.reader()?;
    loop {
        let n = match r.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// The files of the cache entry `entry`, if it is there and intact (each
/// file's SHA-256 as listed, `modules.dep` among them).
fn load(entry: &Path) -> Option<Vec<(String, Vec<u8>)>> {
    let sums = fs::read_to_string(entry.join(SUMS)).ok()?;
    let mut files = Vec::new();
    for line in sums.lines() {
        let (sum, name) = line.split_once("  ")?;
        if !plain_name(name) || name == SUMS {
            return None;
        }
        let data = fs::read(entry.join(name)).ok()?;
        if hex::encode(Sha256::digest(&data)) != sum {
            return None;
        }
        files.push((name.to_string(), data));
    }
    files.sort();
    files
        .iter()
        .any(|(n, _)| n == "modules.dep")
        .then_some(files)
}

/// A file name with no directory part.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0', '\n'])
}

/// Stores `files` as the entry `key` of `dir`: written in a temporary
/// directory, renamed into place (replacing a damaged entry).
fn store(dir: &Path, key: &str, files: &[(String, Vec<u8>)]) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempdir_in(dir)
        .with_context(|| format!("creating a temporary directory in {}", dir.display()))?;
    let mut sums = String::new();
    for (n, data) in files {
        if !plain_name(n) || n == SUMS {
            return Err(anyhow!("depmod wrote an unexpected file {n:?}"));
        }
        let p = tmp.path().join(n);
        fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
        sums.push_str(&format!("{}  {n}\n", hex::encode(Sha256::digest(data))));
    }
    let p = tmp.path().join(SUMS);
    fs::write(&p, sums).with_context(|| format!("writing {}", p.display()))?;
    let entry = dir.join(key);
    if entry.exists() {
        // Damaged (an intact one would have been used).
        fs::remove_dir_all(&entry).with_context(|| format!("removing {}", entry.display()))?;
    }
    match fs::rename(tmp.path(), &entry) {
        Ok(()) => {}
        // Another build stored the same entry meanwhile.
        Err(_) if load(&entry).is_some() => {}
        Err(e) => return Err(e).with_context(|| format!("renaming to {}", entry.display())),
    }
    prune(dir, key)
}

/// Keeps the [`KEEP`] most recently used entries of `dir` (`keep` among them).
fn prune(dir: &Path, keep: &str) -> Result<()> {
    let mut entries = Vec::new();
    for de in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let de = de.with_context(|| format!("listing {}", dir.display()))?;
        let name = de.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == keep {
            continue;
        }
        let used = de.metadata().and_then(|m| m.modified()).ok();
        entries.push((used, name));
    }
    // Newest first; the entry just stored or used counts as one.
    entries.sort_by(|a, b| b.cmp(a));
    for (_, name) in entries.into_iter().skip(KEEP - 1) {
        let p = dir.join(&name);
        fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn depmod_indexes_join_the_tree() {
        let mut t = tree(&[("usr/lib/modules/6.1.0-test/modules.order", "")]);
        super::super::dir(&mut t, "usr/lib/modules/6.1.0-test/kernel", 0o755, 0).unwrap();
        run(&mut t, 3, None).unwrap();
        for f in [
            "modules.dep",
            "modules.dep.bin",
            "modules.alias.bin",
            "modules.symbols",
        ] {
            assert!(
                t.contains(&format!("usr/lib/modules/6.1.0-test/{f}")),
                "no {f}"
            );
        }
        // The input is not rewritten; no kernel, nothing to do.
        assert_eq!(text(&t, "usr/lib/modules/6.1.0-test/modules.order"), "");
        let mut none = tree(&[]);
        run(&mut none, 0, None).unwrap();
        assert_eq!(none.len(), 1);
    }

    const V: &str = "6.1.0-test";

    /// A kernel tree with these modules (depmod lists a module it cannot
    /// parse in modules.dep too, with a complaint on stderr).
    fn kernel(modules: &[(&str, &str)], order: &str) -> Tree {
        let mut t = tree(&[(&format!("usr/lib/modules/{V}/modules.order") as &str, order)]);
        for (name, body) in modules {
            let p = format!("usr/lib/modules/{V}/kernel/{name}");
            write(&mut t, &p, body.as_bytes().to_vec(), 0o644, 1).unwrap();
        }
        t
    }

    /// A `depmod` that logs its arguments to `log` and runs the real one.
    fn logging_depmod(dir: &Path) -> (PathBuf, PathBuf) {
        let log = dir.join("log");
        let real = depmod();
        let script = format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            real.display()
        );
        let src = dir.join("src");
        fs::write(&src, script).unwrap();
        let exe = dir.join("depmod");
        // Written by a child process, so no open write handle races the exec.
        let st = Command::new("install")
            .args(["-m", "0755"])
            .arg(&src)
            .arg(&exe)
            .status()
            .unwrap();
        assert!(st.success());
        (exe, log)
    }

    /// The index files of `t`: (path, bytes), sorted.
    fn indexes(t: &Tree) -> Vec<(String, Vec<u8>)> {
        t.iter()
            .filter(|(k, _)| {
                k.starts_with(&format!("usr/lib/modules/{V}/modules."))
                    && !k.ends_with("modules.order")
            })
            .map(|(k, e)| match &e.kind {
                Kind::File(d) => (k.clone(), d.to_vec().unwrap()),
                _ => panic!("{k} is not a file"),
            })
            .collect()
    }

    fn runs(log: &Path) -> usize {
        fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("-b "))
            .count()
    }

    #[test]
    fn a_cache_hit_gives_the_same_indexes_without_running_depmod() {
        let dir = tempfile::tempdir().unwrap();
        let (exe, log) = logging_depmod(dir.path());
        let cache = dir.path().join("cache");
        let mods = [("a.ko", "a"), ("sub/b.ko.xz", "b")];
        let mut plain = kernel(&mods, "kernel/a.ko\n");
        run_with(&mut plain, 3, None, &exe).unwrap();
        let mut first = kernel(&mods, "kernel/a.ko\n");
        run_with(&mut first, 3, Some(&cache), &exe).unwrap();
        let mut second = kernel(&mods, "kernel/a.ko\n");
        run_with(&mut second, 3, Some(&cache), &exe).unwrap();
        assert_eq!(runs(&log), 2, "the second cached run used depmod");
        assert!(indexes(&plain)
            .iter()
            .any(|(k, d)| k.ends_with("modules.dep")
                && String::from_utf8_lossy(d).contains("kernel/sub/b.ko.xz:")));
        assert_eq!(indexes(&first), indexes(&plain));
        assert_eq!(indexes(&second), indexes(&plain));
        // Metadata as the steps give it, hit or miss.
        let (a, b) = (&first, &second);
        let k = format!("usr/lib/modules/{V}/modules.dep");
        assert_eq!(a.get(&k).unwrap().meta, b.get(&k).unwrap().meta);
    }

    #[test]
    fn another_module_set_misses_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let (exe, log) = logging_depmod(dir.path());
        let cache = dir.path().join("cache");
        let mut t = kernel(&[("a.ko", "a")], "");
        run_with(&mut t, 3, Some(&cache), &exe).unwrap();
        // Files depmod does not read change nothing.
        let mut extra = kernel(&[("a.ko", "a")], "");
        write(
            &mut extra,
            &format!("usr/lib/modules/{V}/README"),
            b"x".to_vec(),
            0o644,
            1,
        )
        .unwrap();
        run_with(&mut extra, 3, Some(&cache), &exe).unwrap();
        assert_eq!(runs(&log), 1);
        // A module more: depmod runs again, and the new module is listed.
        let mut more = kernel(&[("a.ko", "a"), ("c.ko", "c")], "");
        run_with(&mut more, 3, Some(&cache), &exe).unwrap();
        assert_eq!(runs(&log), 2);
        let dep = |t: &Tree| text(t, &format!("usr/lib/modules/{V}/modules.dep"));
        assert!(dep(&more).contains("kernel/c.ko:"), "{}", dep(&more));
        assert!(!dep(&t).contains("kernel/c.ko:"));
        // The same names with other bytes, another order, another kernel
        // version, an empty directory more: each a miss.
        let mut other = kernel(&[("a.ko", "A")], "");
        run_with(&mut other, 3, Some(&cache), &exe).unwrap();
        assert_eq!(runs(&log), 3);
        let mut order = kernel(&[("a.ko", "a")], "kernel/a.ko\n");
        run_with(&mut order, 3, Some(&cache), &exe).unwrap();
        assert_eq!(runs(&log), 4);
        let mut emptydir = kernel(&[("a.ko", "a")], "");
        super::super::dir(
            &mut emptydir,
            &format!("usr/lib/modules/{V}/extra"),
            0o755,
            0,
        )
        .unwrap();
        run_with(&mut emptydir, 3, Some(&cache), &exe).unwrap();
        assert_eq!(runs(&log), 5);
        let mut t2 = Tree::new(crate::tree::Meta::root(0o755, 0));
        for (k, e) in kernel(&[("a.ko", "a")], "").iter() {
            if !k.is_empty() {
                let k = k.replace(V, "6.1.0-other");
                t2.insert(&k, e.clone()).unwrap();
            }
        }
        run_with(&mut t2, 3, Some(&cache), &exe).unwrap();
        assert_eq!(runs(&log), 6);
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (exe, log) = logging_depmod(dir.path());
        let cache = dir.path().join("cache");
        let first = [("first.ko", "1")];
        run_with(&mut kernel(&first, ""), 3, Some(&cache), &exe).unwrap();
        for i in 0..KEEP + 2 {
            let name = format!("m{i}.ko");
            std::thread::sleep(std::time::Duration::from_millis(20));
            run_with(&mut kernel(&[(&name, "x")], ""), 3, Some(&cache), &exe).unwrap();
            // The first one stays in use: it is never pruned.
            std::thread::sleep(std::time::Duration::from_millis(20));
            run_with(&mut kernel(&first, ""), 3, Some(&cache), &exe).unwrap();
        }
        assert_eq!(
            runs(&log),
            1 + KEEP + 2,
            "the first kernel's entry was pruned"
        );
        let left = fs::read_dir(&cache).unwrap().count();
        assert_eq!(left, KEEP);
        // The oldest of the others went; the newest is a hit.
        let last = format!("m{}.ko", KEEP + 1);
        run_with(&mut kernel(&[(&last, "x")], ""), 3, Some(&cache), &exe).unwrap();
        assert_eq!(runs(&log), 1 + KEEP + 2);
        run_with(&mut kernel(&[("m0.ko", "x")], ""), 3, Some(&cache), &exe).unwrap();
        assert_eq!(runs(&log), 1 + KEEP + 3);
    }

    #[test]
    fn a_damaged_entry_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let (exe, log) = logging_depmod(dir.path());
        let cache = dir.path().join("cache");
        let mods = [("a.ko", "a")];
        let mut want = kernel(&mods, "");
        run_with(&mut want, 3, Some(&cache), &exe).unwrap();
        let entry = fs::read_dir(&cache)
            .unwrap()
            .map(|d| d.unwrap().path())
            .find(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .unwrap();
        fs::write(entry.join("modules.dep"), "kernel/wrong.ko:\n").unwrap();
        let mut t = kernel(&mods, "");
        run_with(&mut t, 3, Some(&cache), &exe).unwrap();
        assert_eq!(runs(&log), 2);
        assert_eq!(indexes(&t), indexes(&want));
        // ... and stored again, intact: the next run is a hit.
        let mut again = kernel(&mods, "");
        run_with(&mut again, 3, Some(&cache), &exe).unwrap();
        assert_eq!(runs(&log), 2);
        assert_eq!(indexes(&again), indexes(&want));
        // An entry whose list names a path outside it is not used.
        fs::write(entry.join(SUMS), "00  ../x\n").unwrap();
        assert!(load(&entry).is_none());
    }
}
