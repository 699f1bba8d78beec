//! base-files' first configuration (its postinst) and libc-bin's
//! nsswitch.conf: default files copied from /usr/share/base-files, the
//! directories and links the package creates rather than ships
//! (`/var/run -> /run`, `/var/lock -> /run/lock`, `/var/mail`, `/usr/local/*`),
//! and the login records.

use anyhow::{bail, Result};

use super::{dir, read, symlink, write};
use crate::tree::{Entry, Kind, Meta, Tree};

const MAIL_GID: u32 = 8;
const UTMP_GID: u32 = 43;

pub fn run(tree: &mut Tree, mtime: u64) -> Result<()> {
    for (from, to) in [
        ("dot.profile", "root/.profile"),
        ("dot.bashrc", "root/.bashrc"),
        ("profile", "etc/profile"),
        ("motd", "etc/motd"),
    ] {
        if tree.contains(to) {
            continue;
        }
        if let Some(data) = read(tree, &format!("usr/share/base-files/{from}"))? {
            write(tree, to, data, 0o644, mtime)?;
        }
    }
    if tree.contains("usr/share/info") && !tree.contains("usr/share/info/dir") {
        if let Some(data) = read(tree, "usr/share/base-files/info.dir")? {
            write(tree, "usr/share/info/dir", data, 0o644, mtime)?;
        }
    }
    if !tree.contains("etc/dpkg/origins/default") && tree.contains("etc/dpkg/origins/debian") {
        symlink(tree, "etc/dpkg/origins/default", "debian", mtime)?;
    }
    for d in ["mnt", "srv", "opt", "etc/opt", "var/opt", "media"] {
        dir(tree, d, 0o755, mtime)?;
    }
    if !tree.contains("var/mail") {
        dir(tree, "var/mail", 0o2775, mtime)?;
        if let Some(e) = tree.get_mut("var/mail") {
            e.meta.gid = MAIL_GID;
        }
    }
    if !matches!(
        tree.get("var/spool/mail").map(|e| &e.kind),
        Some(Kind::Symlink(_))
    ) {
        symlink(tree, "var/spool/mail", "../mail", mtime)?;
    }
    dir(tree, "run/lock", 0o1777, mtime)?;
    migrate_to_link(tree, "var/run", "/run", mtime)?;
    migrate_to_link(tree, "var/lock", "/run/lock", mtime)?;
    for d in [
        "usr/local",
        "usr/local/share",
        "usr/local/share/man",
        "usr/local/bin",
        "usr/local/games",
        "usr/local/lib",
        "usr/local/libexec",
        "usr/local/include",
        "usr/local/sbin",
        "usr/local/src",
        "usr/local/etc",
    ] {
        dir(tree, d, 0o755, mtime)?;
    }
    symlink(tree, "usr/local/man", "share/man", mtime)?;
    for (f, mode) in [
        ("var/log/wtmp", 0o664),
        ("var/log/btmp", 0o660),
        ("var/log/lastlog", 0o664),
    ] {
        if !tree.contains(f) {
            write(tree, f, Vec::new(), mode, mtime)?;
        }
        if let Some(e) = tree.get_mut(f) {
            e.meta.mode = mode;
            e.meta.uid = 0;
            e.meta.gid = UTMP_GID;
        }
    }
    // libc-bin's postinst: nsswitch.conf from its template.
    if !tree.contains("etc/nsswitch.conf") {
        if let Some(data) = read(tree, "usr/share/libc-bin/nsswitch.conf")? {
            write(tree, "etc/nsswitch.conf", data, 0o644, mtime)?;
        }
    }
    Ok(())
}

/// Replaces the directory `path` (which must be empty) by a link to `target`.
fn migrate_to_link(tree: &mut Tree, path: &str, target: &str, mtime: u64) -> Result<()> {
    match tree.get(path).map(|e| &e.kind) {
        Some(Kind::Symlink(_)) => return Ok(()),
        Some(Kind::Dir) => {
            if tree.children(path).next().is_some() {
                bail!("/{path} is not empty; it should become a link to {target}");
            }
            tree.remove(path);
        }
        Some(_) => bail!("/{path} is not a directory"),
        None => {}
    }
    tree.insert_with_parents(
        path,
        Entry::symlink(Meta::root(0o777, mtime), target),
        Meta::root(0o755, mtime),
    )
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn defaults_links_and_directories() {
        let mut t = tree(&[
            ("usr/share/base-files/profile", "PROFILE"),
            ("usr/share/base-files/dot.bashrc", "BASHRC"),
            ("usr/share/base-files/motd", "MOTD"),
            ("usr/share/libc-bin/nsswitch.conf", "passwd: files\n"),
            ("etc/motd", "mine"),
        ]);
        dir(&mut t, "var/run", 0o755, 0).unwrap();
        dir(&mut t, "var/lock", 0o755, 0).unwrap();
        run(&mut t, 7).unwrap();
        assert_eq!(text(&t, "etc/profile"), "PROFILE");
        assert_eq!(text(&t, "root/.bashrc"), "BASHRC");
        // A file already there is kept.
        assert_eq!(text(&t, "etc/motd"), "mine");
        assert!(!t.contains("root/.profile"));
        assert_eq!(link(&t, "var/run"), "/run");
        assert_eq!(link(&t, "var/lock"), "/run/lock");
        assert_eq!(link(&t, "var/spool/mail"), "../mail");
        assert_eq!(link(&t, "usr/local/man"), "share/man");
        let mail = t.get("var/mail").unwrap();
        assert_eq!((mail.meta.mode, mail.meta.gid), (0o2775, MAIL_GID));
        assert_eq!(t.get("run/lock").unwrap().meta.mode, 0o1777);
        let wtmp = t.get("var/log/wtmp").unwrap();
        assert_eq!((wtmp.meta.mode, wtmp.meta.gid), (0o664, UTMP_GID));
        assert_eq!(text(&t, "etc/nsswitch.conf"), "passwd: files\n");
        assert!(t.contains("usr/local/sbin"));
    }

    #[test]
    fn a_non_empty_var_run_is_an_error() {
        let mut t = tree(&[("var/run/x.pid", "1")]);
        let e = run(&mut t, 0).unwrap_err();
        assert!(e.to_string().contains("/var/run is not empty"), "{e}");
    }
}
