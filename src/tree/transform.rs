//! Tree transforms: usr-merge, moving `/etc` to the factory defaults, and
//! laying overlay directories onto the tree. All of them work on the
//! in-memory tree only.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use super::{file_name, join, parent, reader, Entry, Kind, Meta, Tree};

/// Top-level directories merged into `/usr` (each into `/usr/<same name>`).
const MERGED: [&str; 6] = ["bin", "sbin", "lib", "lib64", "lib32", "libx32"];

/// Merges `/bin`, `/sbin`, `/lib` (and `/lib64`, `/lib32`, `/libx32` if
/// present) into `/usr`.
///
/// - A symlink `X -> usr/X` (also `/usr/X`, `./usr/X`) is removed.
/// - A directory `X` has everything below it moved to `usr/X`, which is
///   created with `X`'s metadata if missing. A name present in both places
///   must be identical (same kind, contents or target, and metadata, mtime
///   included), else it is a conflict. Directories present in both are
///   merged recursively; they must agree on mode and ownership (their mtimes
///   may differ: the one under `/usr` is kept).
/// - Anything else at those names is an error.
///
/// Moved relative symlinks whose target starts with ".." are rewritten to
/// keep pointing at the same file from their new place (targets into another
/// merged directory are pointed at its `/usr` location); other targets are
/// kept as they are. On success no top-level `bin`, `sbin` or `lib*` remain.
/// On error the tree may be partly merged.
pub fn usr_merge(tree: &mut Tree) -> Result<()> {
    // Check everything before changing anything.
    let mut dirs = Vec::new();
    let mut links = Vec::new();
    for name in MERGED {
        let Some(e) = tree.get(name) else { continue };
        match &e.kind {
            Kind::Dir => dirs.push(name),
            Kind::Symlink(t) if super::normalize(t) == Some(format!("usr/{name}")) => {
                links.push(name)
            }
            Kind::Symlink(t) => {
                bail!("usr-merge: /{name} is a symlink to {t:?}, not to /usr/{name}")
            }
            _ => bail!("usr-merge: /{name} is neither a directory nor a symlink to /usr/{name}"),
        }
    }
    if !dirs.is_empty() {
        match tree.get("usr").map(|e| &e.kind) {
            None | Some(Kind::Dir) => {}
            Some(_) => bail!("usr-merge: /usr is not a directory"),
        }
        for name in &dirs {
            let dst = format!("usr/{name}");
            match tree.get(&dst).map(|e| &e.kind) {
                None | Some(Kind::Dir) => {}
                Some(Kind::Symlink(t)) => bail!(
                    "usr-merge: cannot merge /{name} into /{dst}: /{dst} is a symlink to {t:?}"
                ),
                Some(_) => bail!("usr-merge: cannot merge /{name} into /{dst}: not a directory"),
            }
        }
    }
    for name in links {
        tree.remove(name);
    }
    let merged: Vec<&str> = MERGED.to_vec();
    for name in dirs {
        let meta = tree
            .get(name)
            .map(|e| e.meta)
            .unwrap_or(Meta::root(0o755, 0));
        if !tree.contains("usr") {
            tree.insert("usr", Entry::dir(Meta::root(0o755, meta.mtime)))?;
        }
        let dst = format!("usr/{name}");
        if !tree.contains(&dst) {
            tree.insert(&dst, Entry::dir(meta))?;
        } else {
            check_dirs_agree(tree, name, &dst)?;
        }
        merge_dir(tree, name, &dst, &merged)?;
        tree.remove(name);
    }
    Ok(())
}

fn check_dirs_agree(tree: &Tree, a: &str, b: &str) -> Result<()> {
    let (Some(ea), Some(eb)) = (tree.get(a), tree.get(b)) else {
        bail!("usr-merge: /{a} or /{b} vanished");
    };
    let (ma, mb) = (ea.meta, eb.meta);
    if (ma.mode, ma.uid, ma.gid) != (mb.mode, mb.uid, mb.gid) {
        bail!(
            "usr-merge conflict: directories /{a} ({:o} {}:{}) and /{b} ({:o} {}:{}) differ in mode or owner",
            ma.mode, ma.uid, ma.gid, mb.mode, mb.uid, mb.gid
        );
    }
    Ok(())
}

/// Moves the children of directory `src` into the existing directory `dst`.
fn merge_dir(tree: &mut Tree, src: &str, dst: &str, merged: &[&str]) -> Result<()> {
    let names: Vec<String> = tree
        .children(src)
        .map(|(k, _)| file_name(k).to_string())
        .collect();
    for name in names {
        let s = join(src, &name);
        let d = join(dst, &name);
        let Some(se) = tree.get(&s).cloned() else {
            continue;
        };
        match tree.get(&d).cloned() {
            None => move_entry(tree, &s, &d, merged)?,
            Some(de) if se.kind == Kind::Dir && de.kind == Kind::Dir => {
                check_dirs_agree(tree, &s, &d)?;
                merge_dir(tree, &s, &d, merged)?;
            }
            Some(de) => {
                let moved = relocated(&se, &s, &d, merged);
                if !same_entry(&moved, &de, &d, merged) {
                    bail!("usr-merge conflict: /{s} and /{d} differ");
                }
            }
        }
    }
    Ok(())
}

/// Moves the entry at `from` (and everything below it) to `to`, rewriting
/// relative symlinks that climb out with "..".
fn move_entry(tree: &mut Tree, from: &str, to: &str, merged: &[&str]) -> Result<()> {
    let Some(e) = tree.get(from).cloned() else {
        return Ok(());
    };
    if e.kind != Kind::Dir {
        tree.insert(to, relocated(&e, from, to, merged))?;
        tree.remove(from);
        return Ok(());
    }
    let sub = tree
        .take_subtree(from)
        .ok_or_else(|| anyhow!("/{from} is not a directory"))?;
    for (k, e) in sub.iter() {
        let (old, new) = (join(from, k), join(to, k));
        tree.insert(&new, relocated(e, &old, &new, merged))?;
    }
    Ok(())
}

/// The entry that was at `old`, as it must be at `new`.
fn relocated(e: &Entry, old: &str, new: &str, merged: &[&str]) -> Entry {
    match &e.kind {
        Kind::Symlink(t) => Entry {
            meta: e.meta,
            kind: Kind::Symlink(retarget(t, parent(old), parent(new), merged)),
        },
        _ => e.clone(),
    }
}

/// Maps a path of the unmerged layout to its place after the merge
/// (`lib/x` -> `usr/lib/x`).
fn map_merged(p: &str, merged: &[&str]) -> String {
    let first = p.split('/').next().unwrap_or("");
    if merged.contains(&first) {
        format!("usr/{p}")
    } else {
        p.to_string()
    }
}

/// Rewrites a relative symlink target that starts with ".." so that it
/// resolves to the same place from `new_dir` as it did from `old_dir`.
///
/// The leading ".." components are applied to `old_dir`, a real directory
/// chain, so this is exact. If no ".." follows, the rest of the target is
/// appended too and the new target is the shortest climb from `new_dir`
/// (also exact: the climb passes only through real directories that are
/// parents of `new_dir`); otherwise the rest is kept verbatim after the climb.
/// The place reached is mapped into the merged layout (`lib/x` ->
/// `usr/lib/x`).
fn retarget(target: &str, old_dir: &str, new_dir: &str, merged: &[&str]) -> String {
    if target.starts_with('/') || !(target == ".." || target.starts_with("../")) {
        return target.to_string();
    }
    let mut base: Vec<&str> = old_dir.split('/').filter(|c| !c.is_empty()).collect();
    let parts: Vec<&str> = target.split('/').collect();
    let mut i = 0;
    while i < parts.len() && matches!(parts[i], ".." | "." | "") {
        if parts[i] == ".." {
            base.pop();
        }
        i += 1;
    }
    let mut rest = &parts[i..];
    if !rest.contains(&"..") {
        base.extend(rest.iter().filter(|c| !matches!(**c, "" | ".")));
        rest = &[];
    }
    let rest = rest.join("/");
    let goal = map_merged(&base.join("/"), merged);
    let up = relative_dir(new_dir, &goal);
    match (up.is_empty(), rest.is_empty()) {
        (true, true) => ".".to_string(),
        (true, false) => rest,
        (false, true) => up,
        (false, false) => format!("{up}/{rest}"),
    }
}

/// The relative path from directory `from` to `to` (both normalized keys).
fn relative_dir(from: &str, to: &str) -> String {
    let f: Vec<&str> = from.split('/').filter(|c| !c.is_empty()).collect();
    let t: Vec<&str> = to.split('/').filter(|c| !c.is_empty()).collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<&str> = vec![".."; f.len() - common];
    parts.extend(&t[common..]);
    parts.join("/")
}

/// A lexical absolute form of a symlink target seen from directory `dir`,
/// in the merged layout (".." never above the root).
fn lexical_target(target: &str, dir: &str, merged: &[&str]) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        dir.split('/').filter(|c| !c.is_empty()).collect()
    };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    map_merged(&parts.join("/"), merged)
}

/// Whether an entry moved to `at` is the same as the one already there.
fn same_entry(a: &Entry, b: &Entry, at: &str, merged: &[&str]) -> bool {
    if a.meta != b.meta {
        return false;
    }
    match (&a.kind, &b.kind) {
        (Kind::File(x), Kind::File(y)) => std::sync::Arc::ptr_eq(x, y) || x == y,
        (Kind::Symlink(x), Kind::Symlink(y)) => {
            x == y || lexical_target(x, parent(at), merged) == lexical_target(y, parent(at), merged)
        }
        (x, y) => x == y,
    }
}

/// Moves `/etc` to `/usr/share/factory/etc` (the initramfs fills a tmpfs
/// `/etc` from there at boot). Missing parents are created root:root 0755
/// with `/etc`'s mtime. Symlinks below `/etc` are kept verbatim: at boot they
/// are copied back to `/etc`, where their relative targets are right again.
/// Does nothing if there is no `/etc`.
pub fn move_etc_to_factory(tree: &mut Tree) -> Result<()> {
    const DST: &str = "usr/share/factory/etc";
    let Some(etc) = tree.get("etc") else {
        return Ok(());
    };
    if etc.kind != Kind::Dir {
        bail!("moving /etc to /{DST}: /etc is not a directory");
    }
    let mtime = etc.meta.mtime;
    if tree.contains(DST) {
        bail!("moving /etc to /{DST}: /{DST} already exists in the rootfs");
    }
    for p in ["usr", "usr/share", "usr/share/factory"] {
        match tree.get(p).map(|e| &e.kind) {
            None | Some(Kind::Dir) => {}
            Some(_) => bail!("moving /etc to /{DST}: /{p} is not a directory"),
        }
    }
    for p in ["usr", "usr/share", "usr/share/factory"] {
        if !tree.contains(p) {
            tree.insert(p, Entry::dir(Meta::root(0o755, mtime)))?;
        }
    }
    let sub = tree
        .take_subtree("etc")
        .ok_or_else(|| anyhow!("/etc is not a directory"))?;
    for (k, e) in sub.iter() {
        tree.insert(&join(DST, k), e.clone())?;
    }
    Ok(())
}

/// Lays the directory `dir` from disk onto the tree.
///
/// Files become root:root 0755 if any executable bit is set on disk, else
/// 0644; directories root:root 0755; symlinks are kept (root:root 0777). All
/// get `mtime`, not the on-disk one. Existing files and symlinks are
/// replaced; existing directories are merged and keep their own metadata;
/// missing parents come from the overlay's own directories. Refused: writing
/// through a symlink in the tree, replacing a directory of the tree with a
/// non-directory, and special files (devices, fifos, sockets) in the overlay.
pub fn apply_overlay(tree: &mut Tree, dir: &Path, mtime: u64) -> Result<()> {
    let overlay =
        reader::read_dir_tree(dir).with_context(|| format!("reading overlay {}", dir.display()))?;
    lay_overlay(tree, &overlay, &dir.display().to_string(), mtime)
}

/// Lays an overlay already read (a directory's tree, or a built-in overlay)
/// onto the tree, as [`apply_overlay`] describes; `origin` names it in errors.
pub fn lay_overlay(tree: &mut Tree, overlay: &Tree, origin: &str, mtime: u64) -> Result<()> {
    for (key, e) in overlay.iter() {
        if key.is_empty() {
            continue;
        }
        lay_one(tree, key, e, mtime).with_context(|| format!("overlay {origin}/{key}"))?;
    }
    Ok(())
}

fn lay_one(tree: &mut Tree, key: &str, e: &Entry, mtime: u64) -> Result<()> {
    // Every parent must be a real directory of the tree by now.
    let mut p = parent(key);
    let mut chain = Vec::new();
    while !p.is_empty() {
        chain.push(p);
        p = parent(p);
    }
    for p in chain.into_iter().rev() {
        match tree.get(p).map(|e| &e.kind) {
            None | Some(Kind::Dir) => {}
            Some(Kind::Symlink(t)) => bail!(
                "would be written through the symlink /{p} (-> {t}) in the rootfs; \
                 put it at the link's target instead"
            ),
            Some(_) => bail!("/{p} is not a directory in the rootfs"),
        }
    }
    let existing = tree.get(key).map(|e| &e.kind);
    let entry = match &e.kind {
        Kind::Dir => match existing {
            Some(Kind::Dir) => return Ok(()),
            Some(Kind::Symlink(t)) => bail!(
                "would be written through the symlink /{key} (-> {t}) in the rootfs; \
                 put it at the link's target instead"
            ),
            _ => Entry::dir(Meta::root(0o755, mtime)),
        },
        Kind::File(d) => {
            let mode = if e.meta.mode & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            Entry {
                meta: Meta::root(mode, mtime),
                kind: Kind::File(d.clone()),
            }
        }
        Kind::Symlink(t) => Entry::symlink(Meta::root(0o777, mtime), t),
        _ => bail!("unsupported file type in an overlay (only files, directories and symlinks)"),
    };
    if entry.kind != Kind::Dir && existing == Some(&Kind::Dir) {
        bail!("/{key} is a directory in the rootfs; an overlay cannot replace it with a non-directory");
    }
    tree.insert_with_parents(key, entry, Meta::root(0o755, mtime))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::sync::Arc;

    fn m() -> Meta {
        Meta::root(0o755, 1)
    }

    fn file(t: &mut Tree, p: &str, data: &[u8]) {
        t.insert_with_parents(p, Entry::file(Meta::root(0o644, 1), data.to_vec()), m())
            .unwrap();
    }

    fn link(t: &mut Tree, p: &str, target: &str) {
        t.insert_with_parents(p, Entry::symlink(Meta::root(0o777, 1), target), m())
            .unwrap();
    }

    fn dir(t: &mut Tree, p: &str) {
        t.insert_with_parents(p, Entry::dir(m()), m()).unwrap();
    }

    fn target(t: &Tree, p: &str) -> String {
        match &t.get(p).unwrap_or_else(|| panic!("{p} missing")).kind {
            Kind::Symlink(s) => s.clone(),
            k => panic!("{p} is {k:?}"),
        }
    }

    fn data(t: &Tree, p: &str) -> Vec<u8> {
        match &t.get(p).unwrap_or_else(|| panic!("{p} missing")).kind {
            Kind::File(d) => d.to_vec().unwrap(),
            k => panic!("{p} is {k:?}"),
        }
    }

    fn top_level(t: &Tree) -> Vec<String> {
        t.children("").map(|(k, _)| k.clone()).collect()
    }

    #[test]
    fn usr_merge_removes_links_into_usr() {
        let mut t = Tree::new(m());
        link(&mut t, "bin", "usr/bin");
        link(&mut t, "sbin", "/usr/sbin");
        link(&mut t, "lib", "./usr/lib");
        link(&mut t, "lib64", "usr/lib64/");
        file(&mut t, "usr/bin/sh", b"sh");
        dir(&mut t, "etc");
        usr_merge(&mut t).unwrap();
        assert_eq!(top_level(&t), ["etc", "usr"]);
        assert_eq!(data(&t, "usr/bin/sh"), b"sh");
    }

    #[test]
    fn usr_merge_moves_directories_and_creates_usr_dirs() {
        let mut t = Tree::new(m());
        file(&mut t, "bin/busybox", b"bb");
        file(&mut t, "sbin/init", b"init");
        t.insert_with_parents(
            "lib/modules/6.1/kernel/ext4.ko",
            Entry::file(Meta::root(0o644, 1), b"ko".to_vec()),
            m(),
        )
        .unwrap();
        file(&mut t, "lib32/ld.so", b"ld32");
        t.get_mut("lib32").unwrap().meta = Meta::root(0o755, 77);
        file(&mut t, "usr/lib/libc.so", b"libc");
        usr_merge(&mut t).unwrap();
        assert_eq!(top_level(&t), ["usr"]);
        assert_eq!(data(&t, "usr/bin/busybox"), b"bb");
        assert_eq!(data(&t, "usr/sbin/init"), b"init");
        assert_eq!(data(&t, "usr/lib/modules/6.1/kernel/ext4.ko"), b"ko");
        assert_eq!(data(&t, "usr/lib/libc.so"), b"libc");
        assert_eq!(data(&t, "usr/lib32/ld.so"), b"ld32");
        // A created usr/X takes X's metadata.
        assert_eq!(t.get("usr/lib32").unwrap().meta.mtime, 77);
    }

    #[test]
    fn usr_merge_keeps_hard_links_shared() {
        let mut t = Tree::new(m());
        file(&mut t, "bin/busybox", b"bb");
        let e = t.get("bin/busybox").unwrap().clone();
        t.insert("bin/ls", e.clone()).unwrap();
        t.insert_with_parents("usr/bin/env", e, m()).unwrap();
        usr_merge(&mut t).unwrap();
        let get = |p: &str| match &t.get(p).unwrap().kind {
            Kind::File(d) => d.clone(),
            _ => panic!(),
        };
        assert!(Arc::ptr_eq(&get("usr/bin/busybox"), &get("usr/bin/ls")));
        assert!(Arc::ptr_eq(&get("usr/bin/busybox"), &get("usr/bin/env")));
    }

    #[test]
    fn usr_merge_refuses_conflicting_files() {
        let mut t = Tree::new(m());
        file(&mut t, "bin/foo", b"one");
        file(&mut t, "usr/bin/foo", b"two");
        let e = usr_merge(&mut t).unwrap_err().to_string();
        assert_eq!(e, "usr-merge conflict: /bin/foo and /usr/bin/foo differ");
        // Same contents, different mode: still a conflict.
        let mut t = Tree::new(m());
        file(&mut t, "sbin/x", b"same");
        file(&mut t, "usr/sbin/x", b"same");
        t.get_mut("usr/sbin/x").unwrap().meta.mode = 0o755;
        let e = usr_merge(&mut t).unwrap_err().to_string();
        assert!(e.contains("/sbin/x and /usr/sbin/x differ"), "{e}");
        // File against directory.
        let mut t = Tree::new(m());
        file(&mut t, "lib/firmware", b"f");
        dir(&mut t, "usr/lib/firmware");
        let e = usr_merge(&mut t).unwrap_err().to_string();
        assert!(
            e.contains("/lib/firmware and /usr/lib/firmware differ"),
            "{e}"
        );
        // Different symlink targets.
        let mut t = Tree::new(m());
        link(&mut t, "bin/sh", "dash");
        link(&mut t, "usr/bin/sh", "bash");
        let e = usr_merge(&mut t).unwrap_err().to_string();
        assert!(e.contains("/bin/sh and /usr/bin/sh differ"), "{e}");
    }

    #[test]
    fn usr_merge_accepts_identical_duplicates_and_merges_dirs() {
        let mut t = Tree::new(m());
        file(&mut t, "bin/foo", b"same");
        file(&mut t, "usr/bin/foo", b"same");
        link(&mut t, "bin/sh", "dash");
        link(&mut t, "usr/bin/sh", "dash");
        // Same target written differently: ../usr/bin/dash from /bin is
        // /usr/bin/dash, like "dash" from /usr/bin.
        link(&mut t, "bin/ash", "../usr/bin/dash");
        link(&mut t, "usr/bin/ash", "dash");
        file(&mut t, "lib/modules/a.ko", b"a");
        file(&mut t, "usr/lib/modules/b.ko", b"b");
        usr_merge(&mut t).unwrap();
        assert_eq!(data(&t, "usr/bin/foo"), b"same");
        assert_eq!(target(&t, "usr/bin/sh"), "dash");
        assert_eq!(target(&t, "usr/bin/ash"), "dash");
        assert_eq!(data(&t, "usr/lib/modules/a.ko"), b"a");
        assert_eq!(data(&t, "usr/lib/modules/b.ko"), b"b");
        assert_eq!(top_level(&t), ["usr"]);
    }

    #[test]
    fn usr_merge_refuses_dirs_differing_in_mode() {
        let mut t = Tree::new(m());
        file(&mut t, "lib/secret/k", b"k");
        dir(&mut t, "usr/lib/secret");
        t.get_mut("lib/secret").unwrap().meta.mode = 0o700;
        let e = usr_merge(&mut t).unwrap_err().to_string();
        assert!(
            e.contains("/lib/secret") && e.contains("/usr/lib/secret"),
            "{e}"
        );
    }

    #[test]
    fn usr_merge_rerelativizes_moved_symlinks() {
        let mut t = Tree::new(m());
        dir(&mut t, "bin");
        link(&mut t, "bin/foo.conf", "../etc/foo.conf");
        link(&mut t, "bin/ld", "../lib/ld-linux.so");
        link(&mut t, "bin/sh", "busybox");
        link(&mut t, "bin/abs", "/etc/x");
        link(
            &mut t,
            "lib/firmware/brcm/x.bin",
            "../../../usr/share/fw/x.bin",
        );
        link(&mut t, "lib/firmware/brcm/y.bin", "../y.bin");
        link(&mut t, "lib/up", "..");
        // A ".." after a name is kept verbatim (the name may be a symlink).
        link(&mut t, "lib/odd", "../etc/alt/../x");
        usr_merge(&mut t).unwrap();
        assert_eq!(target(&t, "usr/bin/foo.conf"), "../../etc/foo.conf");
        assert_eq!(target(&t, "usr/bin/ld"), "../lib/ld-linux.so");
        assert_eq!(target(&t, "usr/bin/sh"), "busybox");
        assert_eq!(target(&t, "usr/bin/abs"), "/etc/x");
        assert_eq!(
            target(&t, "usr/lib/firmware/brcm/x.bin"),
            "../../../share/fw/x.bin"
        );
        assert_eq!(target(&t, "usr/lib/firmware/brcm/y.bin"), "../y.bin");
        assert_eq!(target(&t, "usr/lib/up"), "../..");
        assert_eq!(target(&t, "usr/lib/odd"), "../../etc/alt/../x");
    }

    #[test]
    fn usr_merge_rewritten_links_resolve_to_the_same_file() {
        use crate::tree::lookup::resolve;
        let mut t = Tree::new(m());
        file(&mut t, "etc/foo.conf", b"c");
        file(&mut t, "usr/share/fw/x.bin", b"x");
        link(&mut t, "bin/foo.conf", "../etc/foo.conf");
        link(
            &mut t,
            "lib/firmware/brcm/x.bin",
            "../../../usr/share/fw/x.bin",
        );
        assert_eq!(
            resolve(&t, "/bin/foo.conf").as_deref(),
            Some("/etc/foo.conf")
        );
        usr_merge(&mut t).unwrap();
        assert_eq!(
            resolve(&t, "/usr/bin/foo.conf").as_deref(),
            Some("/etc/foo.conf")
        );
        assert_eq!(
            resolve(&t, "/usr/lib/firmware/brcm/x.bin").as_deref(),
            Some("/usr/share/fw/x.bin")
        );
    }

    #[test]
    fn usr_merge_refuses_other_kinds_at_merged_names() {
        let mut t = Tree::new(m());
        link(&mut t, "lib", "/opt/lib");
        let e = usr_merge(&mut t).unwrap_err().to_string();
        assert!(e.contains("/lib is a symlink to \"/opt/lib\""), "{e}");
        let mut t = Tree::new(m());
        link(&mut t, "sbin", "usr/bin");
        assert!(usr_merge(&mut t).unwrap_err().to_string().contains("/sbin"));
        let mut t = Tree::new(m());
        file(&mut t, "bin", b"");
        assert!(usr_merge(&mut t).unwrap_err().to_string().contains("/bin"));
        // Nothing was changed by the refused merge.
        assert!(t.contains("bin"));
        // usr/bin a symlink: merging into it would go through the link.
        let mut t = Tree::new(m());
        file(&mut t, "bin/x", b"");
        link(&mut t, "usr/bin", "../opt");
        let e = usr_merge(&mut t).unwrap_err().to_string();
        assert!(e.contains("/usr/bin is a symlink"), "{e}");
        assert!(t.contains("bin/x"));
    }

    #[test]
    fn etc_moves_to_factory() {
        let mut t = Tree::new(m());
        t.insert("etc", Entry::dir(Meta::root(0o755, 99))).unwrap();
        file(&mut t, "etc/ssh/sshd_config", b"Port 22");
        link(&mut t, "etc/localtime", "../usr/share/zoneinfo/UTC");
        move_etc_to_factory(&mut t).unwrap();
        assert!(!t.contains("etc"));
        assert_eq!(
            data(&t, "usr/share/factory/etc/ssh/sshd_config"),
            b"Port 22"
        );
        assert_eq!(
            target(&t, "usr/share/factory/etc/localtime"),
            "../usr/share/zoneinfo/UTC"
        );
        assert_eq!(t.get("usr/share/factory/etc").unwrap().meta.mtime, 99);
        assert_eq!(
            t.get("usr/share/factory").unwrap().meta,
            Meta::root(0o755, 99)
        );
        assert_eq!(t.get("usr").unwrap().meta, Meta::root(0o755, 99));
    }

    #[test]
    fn etc_move_refuses_existing_factory_etc_and_non_dir_etc() {
        let mut t = Tree::new(m());
        file(&mut t, "etc/hostname", b"x");
        dir(&mut t, "usr/share/factory/etc");
        let e = move_etc_to_factory(&mut t).unwrap_err().to_string();
        assert!(e.contains("/usr/share/factory/etc already exists"), "{e}");
        assert!(t.contains("etc/hostname"));
        let mut t = Tree::new(m());
        link(&mut t, "etc", "usr/etc");
        assert!(move_etc_to_factory(&mut t).is_err());
        // No /etc: nothing to do.
        let mut t = Tree::new(m());
        move_etc_to_factory(&mut t).unwrap();
        assert!(!t.contains("usr"));
    }

    fn overlay_dir() -> tempfile::TempDir {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("etc/init.d")).unwrap();
        fs::write(r.join("etc/init.d/k3s"), b"#!/sbin/openrc-run\n").unwrap();
        fs::set_permissions(r.join("etc/init.d/k3s"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(r.join("etc/motd"), b"hello\n").unwrap();
        fs::set_permissions(r.join("etc/motd"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::create_dir_all(r.join("usr/local/bin")).unwrap();
        symlink("/usr/bin/k3s", r.join("usr/local/bin/kubectl")).unwrap();
        d
    }

    #[test]
    fn overlay_normalizes_meta_and_replaces_files() {
        let ov = overlay_dir();
        let mut t = Tree::new(m());
        t.insert("etc", Entry::dir(Meta::root(0o750, 5))).unwrap();
        file(&mut t, "etc/motd", b"old");
        file(&mut t, "etc/passwd", b"root");
        apply_overlay(&mut t, ov.path(), 1234).unwrap();
        let k3s = t.get("etc/init.d/k3s").unwrap();
        assert_eq!(k3s.meta, Meta::root(0o755, 1234));
        let motd = t.get("etc/motd").unwrap();
        assert_eq!(motd.meta, Meta::root(0o644, 1234));
        assert_eq!(data(&t, "etc/motd"), b"hello\n");
        // Untouched files stay; the existing dir keeps its own meta.
        assert_eq!(data(&t, "etc/passwd"), b"root");
        assert_eq!(t.get("etc").unwrap().meta, Meta::root(0o750, 5));
        // New dirs (and missing parents) are root 0755 with the given mtime.
        assert_eq!(t.get("etc/init.d").unwrap().meta, Meta::root(0o755, 1234));
        assert_eq!(t.get("usr/local").unwrap().meta, Meta::root(0o755, 1234));
        assert_eq!(target(&t, "usr/local/bin/kubectl"), "/usr/bin/k3s");
        assert_eq!(t.get("usr/local/bin/kubectl").unwrap().meta.mtime, 1234);
    }

    #[test]
    fn overlay_refuses_writing_through_tree_symlinks() {
        let ov = overlay_dir();
        let mut t = Tree::new(m());
        link(&mut t, "etc", "/var/etc");
        let e = format!("{:#}", apply_overlay(&mut t, ov.path(), 1).unwrap_err());
        assert!(e.contains("through the symlink /etc"), "{e}");
        assert!(
            e.contains(&ov.path().join("etc").display().to_string()),
            "{e}"
        );
        // Deeper: usr/local is a symlink.
        let mut t = Tree::new(m());
        link(&mut t, "usr/local", "../opt");
        let e = format!("{:#}", apply_overlay(&mut t, ov.path(), 1).unwrap_err());
        assert!(e.contains("through the symlink /usr/local"), "{e}");
        assert!(e.contains("usr/local"), "{e}");
    }

    #[test]
    fn overlay_refuses_replacing_a_directory_with_a_file() {
        let ov = overlay_dir();
        let mut t = Tree::new(m());
        dir(&mut t, "etc/motd");
        file(&mut t, "etc/motd/x", b"");
        let e = format!("{:#}", apply_overlay(&mut t, ov.path(), 1).unwrap_err());
        assert!(
            e.contains("etc/motd") && e.contains("is a directory"),
            "{e}"
        );
    }

    #[test]
    fn overlay_replaces_a_tree_symlink_with_a_file() {
        let ov = overlay_dir();
        let mut t = Tree::new(m());
        link(&mut t, "etc/motd", "/run/motd");
        apply_overlay(&mut t, ov.path(), 1).unwrap();
        assert_eq!(data(&t, "etc/motd"), b"hello\n");
    }
}
