//! The declarative steps: what the maintainer scripts of the base's packages
//! would have done, done on the tree. Each step is a small function of the
//! tree (and the node's options), tested on its own.
//!
//! Files the steps write get `ComposeOptions::mtime`, root ownership and
//! the usual modes; paths here are tree keys ("etc/passwd"). Reading a file
//! follows symlinks inside the tree (a `/bin/x` read finds `/usr/bin/x`).

pub mod alternatives;
pub mod basefiles;
pub mod ca;
pub mod dpkg;
pub mod modules;
pub mod pam;
pub mod ssh;
pub mod systemd;
pub mod users;

use anyhow::{anyhow, bail, Context, Result};

use super::compose::{ComposeOptions, Installed};
use crate::tree::{lookup, Entry, Kind, Meta, Tree};

/// Runs every step in order.
pub fn run_all(tree: &mut Tree, installed: &[Installed], opts: &ComposeOptions) -> Result<()> {
    let t = opts.mtime;
    basefiles::run(tree, t).context("base-files")?;
    users::run(tree, t).context("users and groups")?;
    ca::run(tree, t).context("CA certificates")?;
    alternatives::run(tree, alternatives::DEFAULT, t).context("alternatives")?;
    pam::run(tree, t).context("PAM")?;
    ssh::run(tree, t).context("sshd_config")?;
    systemd::run(tree, opts).context("systemd")?;
    modules::run(tree, t, opts.module_index_cache.as_deref()).context("kernel module indexes")?;
    dpkg::run(tree, installed, t).context("dpkg database")?;
    Ok(())
}

/// The bytes of the file at `path` (symlinks followed), if it is one.
pub fn read(tree: &Tree, path: &str) -> Result<Option<Vec<u8>>> {
    let Some(real) = lookup::resolve(tree, path) else {
        return Ok(None);
    };
    match tree.get(&real[1..]).map(|e| &e.kind) {
        Some(Kind::File(d)) => Ok(Some(
            d.to_vec().with_context(|| format!("reading /{path}"))?,
        )),
        _ => Ok(None),
    }
}

/// `read` as UTF-8 text.
pub fn read_text(tree: &Tree, path: &str) -> Result<Option<String>> {
    match read(tree, path)? {
        None => Ok(None),
        Some(b) => String::from_utf8(b)
            .map(Some)
            .map_err(|_| anyhow!("/{path} is not UTF-8")),
    }
}

/// Writes a root-owned file, creating missing directories (0755).
pub fn write(tree: &mut Tree, path: &str, data: Vec<u8>, mode: u32, mtime: u64) -> Result<()> {
    if let Some(Entry {
        kind: Kind::Dir, ..
    }) = tree.get(path)
    {
        bail!("/{path} is a directory");
    }
    tree.insert_with_parents(
        path,
        Entry::file(Meta::root(mode, mtime), data),
        Meta::root(0o755, mtime),
    )
    .with_context(|| format!("writing /{path}"))
}

/// Makes `path` a symlink to `target` (replacing a file or link there).
pub fn symlink(tree: &mut Tree, path: &str, target: &str, mtime: u64) -> Result<()> {
    if let Some(Entry {
        kind: Kind::Dir, ..
    }) = tree.get(path)
    {
        bail!("/{path} is a directory, not replaced by a link");
    }
    tree.insert_with_parents(
        path,
        Entry::symlink(Meta::root(0o777, mtime), target),
        Meta::root(0o755, mtime),
    )
    .with_context(|| format!("linking /{path}"))
}

/// Makes sure `path` is a directory (mode `mode` if created).
pub fn dir(tree: &mut Tree, path: &str, mode: u32, mtime: u64) -> Result<()> {
    match tree.get(path).map(|e| &e.kind) {
        Some(Kind::Dir) => Ok(()),
        Some(_) => bail!("/{path} exists and is not a directory"),
        None => tree
            .insert_with_parents(
                path,
                Entry::dir(Meta::root(mode, mtime)),
                Meta::root(0o755, mtime),
            )
            .with_context(|| format!("creating /{path}")),
    }
}

/// Paths of the regular files (or links to them) directly in `dir`, sorted.
pub fn files_in(tree: &Tree, dir: &str) -> Vec<String> {
    let Some(real) = lookup::resolve(tree, dir) else {
        return Vec::new();
    };
    let real = real[1..].to_string();
    tree.children(&real)
        .filter(|(_, e)| !matches!(e.kind, Kind::Dir))
        .map(|(k, _)| k.clone())
        .collect()
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    pub fn tree(files: &[(&str, &str)]) -> Tree {
        let mut t = Tree::new(Meta::root(0o755, 0));
        for (p, c) in files {
            write(&mut t, p, c.as_bytes().to_vec(), 0o644, 1).unwrap();
        }
        t
    }

    pub fn text(t: &Tree, p: &str) -> String {
        read_text(t, p)
            .unwrap()
            .unwrap_or_else(|| panic!("no /{p}"))
    }

    pub fn link(t: &Tree, p: &str) -> String {
        match t.get(p).map(|e| &e.kind) {
            Some(Kind::Symlink(s)) => s.clone(),
            other => panic!("/{p} is not a link: {other:?}"),
        }
    }
}
