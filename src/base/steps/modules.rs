//! The kernel's module indexes (`modules.dep`, `modules.alias`, the `.bin`
//! indexes kmod reads, ...), which Debian's kernel packages leave to
//! their postinst. Made by the host's `depmod` (kmod) on a staged copy of
//! `/usr/lib/modules/<version>`: `depmod -b STAGE VERSION` reads
//! `STAGE/lib/modules/VERSION`, and what it writes there is added to the
//! tree. kmod's index format is not a stable interface of its own, so we
//! leave writing it to kmod (a host requirement, like mke2fs).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::write;
use crate::tree::{Kind, Tree};

pub fn run(tree: &mut Tree, mtime: u64) -> Result<()> {
    let versions: Vec<String> = tree
        .children("usr/lib/modules")
        .filter(|(_, e)| e.kind == Kind::Dir)
        .map(|(k, _)| crate::tree::file_name(k).to_string())
        .collect();
    for v in versions {
        index(tree, &v, mtime).with_context(|| format!("kernel {v}"))?;
    }
    Ok(())
}

fn index(tree: &mut Tree, version: &str, mtime: u64) -> Result<()> {
    let base = format!("usr/lib/modules/{version}");
    let stage = tempfile::Builder::new()
        .prefix("nodeimg-depmod")
        .tempdir()
        .context("creating a staging directory")?;
    let root = stage.path().join("lib/modules").join(version);
    let prefix = format!("{base}/");
    let mut before = BTreeSet::new();
    let entries: Vec<(String, crate::tree::Entry)> = tree
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(k, e)| (k[prefix.len()..].to_string(), e.clone()))
        .collect();
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    for (rel, e) in &entries {
        let dest = root.join(rel);
        match &e.kind {
            Kind::Dir => fs::create_dir_all(&dest)?,
            Kind::File(d) => {
                // depmod reads modules and the files it takes as input.
                let wanted = rel.ends_with(".ko")
                    || rel.contains(".ko.")
                    || matches!(
                        rel.as_str(),
                        "modules.order" | "modules.builtin" | "modules.builtin.modinfo"
                    );
                if !wanted {
                    continue;
                }
                if let Some(p) = dest.parent() {
                    fs::create_dir_all(p)?;
                }
                let mut r = d.reader()?;
                let mut f = fs::File::create(&dest)
                    .with_context(|| format!("creating {}", dest.display()))?;
                io::copy(&mut r, &mut f).with_context(|| format!("staging /{base}/{rel}"))?;
                if !rel.contains('/') {
                    before.insert(rel.clone());
                }
            }
            _ => {}
        }
    }
    let out = Command::new(depmod())
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
    add_new_files(tree, &root, &base, &before, mtime)
}

/// `depmod` from PATH, else from the sbin directories a user's PATH may lack.
fn depmod() -> std::path::PathBuf {
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

/// Adds the files depmod wrote at the top of `root` to the tree under `base`.
fn add_new_files(
    tree: &mut Tree,
    root: &Path,
    base: &str,
    before: &BTreeSet<String>,
    mtime: u64,
) -> Result<()> {
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
    for n in names {
        let data = fs::read(root.join(&n)).with_context(|| format!("reading {n}"))?;
        write(tree, &format!("{base}/{n}"), data, 0o644, mtime)?;
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
        run(&mut t, 3).unwrap();
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
        run(&mut none, 0).unwrap();
        assert_eq!(none.len(), 1);
    }
}
