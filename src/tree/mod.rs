//! The rootfs model: an in-memory tree of entries keyed by their path relative
//! to the root ("" is the root itself, "usr/bin/busybox" a file below it).
//!
//! Readers (`reader`) fill a tree from a tarball or a directory, refusing entries
//! that would land outside the root; transforms (`transform`) apply overlays,
//! merge `/bin`, `/sbin`, `/lib` into `/usr` and move `/etc` to the factory
//! defaults. Filesystem writers (`crate::fs`) consume the result.
//!
//! Hard links are kept as files sharing one `Data` (`Arc::ptr_eq` tells them apart).
//! A file's `Data` says where its bytes are (`content`), not the bytes themselves.

pub mod content;
pub mod links;
pub mod lookup;
pub mod reader;
pub mod transform;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Result};

pub use content::Content;

/// File contents. Hard links to one inode share the same `Arc`.
pub type Data = Arc<Content>;

/// File contents held in memory.
pub fn data(bytes: impl Into<Vec<u8>>) -> Data {
    Arc::new(Content::from_vec(bytes.into()))
}

/// Ownership, permission bits (`0o7777`, no file type bits) and modification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
}

impl Meta {
    /// root:root with the given permission bits and time.
    pub fn root(mode: u32, mtime: u64) -> Self {
        Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Data),
    /// The link target exactly as stored (relative or absolute).
    Symlink(String),
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
    Socket,
}

impl Kind {
    /// The `S_IFMT` file type bits for this kind.
    pub fn type_bits(&self) -> u32 {
        match self {
            Kind::Dir => 0o040000,
            Kind::File(_) => 0o100000,
            Kind::Symlink(_) => 0o120000,
            Kind::CharDevice { .. } => 0o020000,
            Kind::BlockDevice { .. } => 0o060000,
            Kind::Fifo => 0o010000,
            Kind::Socket => 0o140000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub meta: Meta,
    pub kind: Kind,
}

impl Entry {
    pub fn dir(meta: Meta) -> Self {
        Entry {
            meta,
            kind: Kind::Dir,
        }
    }
    pub fn file(meta: Meta, data: Vec<u8>) -> Self {
        Entry {
            meta,
            kind: Kind::File(self::data(data)),
        }
    }
    pub fn symlink(meta: Meta, target: &str) -> Self {
        Entry {
            meta,
            kind: Kind::Symlink(target.to_string()),
        }
    }
    /// Full `st_mode`: type bits plus permission bits.
    pub fn st_mode(&self) -> u32 {
        self.kind.type_bits() | (self.meta.mode & 0o7777)
    }
}

/// A filesystem tree. Keys are normalized relative paths ("" = root, no leading
/// or trailing '/', no "." or ".." components). Every entry's parent exists and
/// is a directory; the root always exists.
#[derive(Clone, Debug)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new(Meta::root(0o755, 0))
    }
}

/// The parent of a normalized path ("" for top-level entries).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[..i],
        None => "",
    }
}

/// The last component of a normalized path.
pub fn file_name(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// Joins a normalized directory path and a relative normalized path.
pub fn join(dir: &str, rel: &str) -> String {
    match (dir.is_empty(), rel.is_empty()) {
        (true, _) => rel.to_string(),
        (_, true) => dir.to_string(),
        _ => format!("{dir}/{rel}"),
    }
}

/// Normalizes a path as written in an archive or board file: strips leading
/// "/" and "./", drops "." components and trailing slashes. Returns `None` if a
/// ".." component remains or a component is empty in a way that cannot be
/// interpreted. Absolute paths are accepted here: callers that must refuse them
/// (archive readers) check for a leading '/' themselves.
pub fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => continue,
            ".." => return None,
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

impl Tree {
    /// An empty tree whose root directory has `root_meta`.
    pub fn new(root_meta: Meta) -> Self {
        let mut entries = BTreeMap::new();
        entries.insert(String::new(), Entry::dir(root_meta));
        Tree { entries }
    }

    /// A tree from a directory listing: `entries` in any order, each with
    /// its parent among them (a directory) or the root. Built at once from
    /// the sorted list, not entry by entry: on a 2 GB rootfs (98,000 files)
    /// inserting each, looking its parent up by full path, took 0.3 s of the
    /// listing on one core.
    pub fn from_listing(root_meta: Meta, mut entries: Vec<(String, Entry)>) -> Result<Self> {
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        {
            let dirs: std::collections::HashSet<&str> = entries
                .iter()
                .filter(|(_, e)| e.kind == Kind::Dir)
                .map(|(p, _)| p.as_str())
                .chain([""])
                .collect();
            for (i, (path, _)) in entries.iter().enumerate() {
                if path.is_empty() {
                    bail!("the root is listed as an entry of itself");
                }
                if i > 0 && entries[i - 1].0 == *path {
                    bail!("/{path} is listed twice");
                }
                if !dirs.contains(parent(path)) {
                    bail!(
                        "/{path}: parent /{} is not a listed directory",
                        parent(path)
                    );
                }
            }
        }
        let entries = std::iter::once((String::new(), Entry::dir(root_meta)))
            .chain(entries)
            .collect();
        Ok(Tree { entries })
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    pub fn get_mut(&mut self, path: &str) -> Option<&mut Entry> {
        self.entries.get_mut(path)
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path)
    }

    /// The root directory's metadata.
    pub fn root_meta(&self) -> Meta {
        self.entries
            .get("")
            .map(|e| e.meta)
            .unwrap_or(Meta::root(0o755, 0))
    }

    /// All entries, root first, parents before children, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.len() <= 1
    }

    /// Direct children of a directory, by name order.
    pub fn children<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a String, &'a Entry)> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.entries
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .filter(move |(k, _)| !k.is_empty() && parent(k) == dir)
    }

    /// Inserts or replaces an entry. The parent must exist and be a directory
    /// (use `insert_with_parents` to create missing parents). Replacing a
    /// directory with a non-directory removes what was below it.
    pub fn insert(&mut self, path: &str, entry: Entry) -> Result<()> {
        if path.is_empty() {
            if entry.kind != Kind::Dir {
                bail!("the root must be a directory");
            }
            self.entries.insert(String::new(), entry);
            return Ok(());
        }
        match self.entries.get(parent(path)) {
            Some(Entry {
                kind: Kind::Dir, ..
            }) => {}
            Some(_) => bail!("/{}: parent /{} is not a directory", path, parent(path)),
            None => bail!("/{}: parent /{} does not exist", path, parent(path)),
        }
        if entry.kind != Kind::Dir {
            if let Some(Entry {
                kind: Kind::Dir, ..
            }) = self.entries.get(path)
            {
                self.remove(path);
            }
        }
        self.entries.insert(path.to_string(), entry);
        Ok(())
    }

    /// Inserts an entry, creating missing parent directories with `dir_meta`.
    /// Fails if an existing parent is not a directory.
    pub fn insert_with_parents(&mut self, path: &str, entry: Entry, dir_meta: Meta) -> Result<()> {
        let mut missing = Vec::new();
        let mut p = parent(path);
        while !p.is_empty() && !self.entries.contains_key(p) {
            missing.push(p.to_string());
            p = parent(p);
        }
        for dir in missing.into_iter().rev() {
            self.insert(&dir, Entry::dir(dir_meta))?;
        }
        self.insert(path, entry)
    }

    /// Removes an entry and everything below it; returns the removed entry.
    pub fn remove(&mut self, path: &str) -> Option<Entry> {
        let removed = self.entries.remove(path);
        if removed.is_some() {
            let prefix = format!("{path}/");
            let below: Vec<String> = self
                .entries
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, _)| k.clone())
                .collect();
            for k in below {
                self.entries.remove(&k);
            }
        }
        removed
    }

    /// A copy of the subtree at `dir`, rebased so that `dir` becomes the root.
    pub fn subtree(&self, dir: &str) -> Option<Tree> {
        let root = self.entries.get(dir)?;
        if root.kind != Kind::Dir {
            return None;
        }
        let mut out = Tree::new(root.meta);
        if dir.is_empty() {
            return Some(self.clone());
        }
        let prefix = format!("{dir}/");
        for (k, e) in self
            .entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
        {
            out.entries.insert(k[prefix.len()..].to_string(), e.clone());
        }
        Some(out)
    }

    /// Removes the subtree at `dir` and returns it rebased (see `subtree`).
    pub fn take_subtree(&mut self, dir: &str) -> Option<Tree> {
        let sub = self.subtree(dir)?;
        self.remove(dir);
        Some(sub)
    }

    /// Sets every entry's mtime to at most `max` (SOURCE_DATE_EPOCH clamping).
    pub fn clamp_mtimes(&mut self, max: u64) {
        for e in self.entries.values_mut() {
            e.meta.mtime = e.meta.mtime.min(max);
        }
    }

    /// The newest mtime in the tree (0 for an empty tree).
    pub fn newest_mtime(&self) -> u64 {
        self.entries
            .values()
            .map(|e| e.meta.mtime)
            .max()
            .unwrap_or(0)
    }

    /// Total size of file contents (hard links counted once per name).
    pub fn content_bytes(&self) -> u64 {
        self.entries
            .values()
            .map(|e| match &e.kind {
                Kind::File(d) => d.len(),
                _ => 0,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> Meta {
        Meta::root(0o755, 1)
    }

    #[test]
    fn normalize_strips_dot_and_slashes_and_refuses_dotdot() {
        assert_eq!(normalize("./usr/bin/").as_deref(), Some("usr/bin"));
        assert_eq!(normalize("/etc//passwd").as_deref(), Some("etc/passwd"));
        assert_eq!(normalize(".").as_deref(), Some(""));
        assert_eq!(normalize("usr/../etc"), None);
    }

    #[test]
    fn insert_requires_directory_parent() {
        let mut t = Tree::new(m());
        assert!(t.insert("a/b", Entry::dir(m())).is_err());
        t.insert("a", Entry::file(m(), b"x".to_vec())).unwrap();
        let err = t.insert("a/b", Entry::dir(m())).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn from_listing_matches_inserting_and_refuses_what_insert_refuses() {
        let listing = || {
            vec![
                ("usr/bin/x".to_string(), Entry::file(m(), b"x".to_vec())),
                ("usr-x".to_string(), Entry::dir(m())),
                ("usr".to_string(), Entry::dir(m())),
                ("usr/bin".to_string(), Entry::dir(m())),
                ("a".to_string(), Entry::symlink(m(), "usr")),
            ]
        };
        let mut sorted = listing();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut one_by_one = Tree::new(Meta::root(0o700, 2));
        for (p, e) in sorted {
            one_by_one.insert(&p, e).unwrap();
        }
        let at_once = Tree::from_listing(Meta::root(0o700, 2), listing()).unwrap();
        let all = |t: &Tree| {
            t.iter()
                .map(|(p, e)| (p.clone(), e.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(all(&at_once), all(&one_by_one));
        assert_eq!(at_once.len(), 6);

        let refused = |mut l: Vec<(String, Entry)>, extra: (&str, Entry)| {
            l.push((extra.0.to_string(), extra.1));
            Tree::from_listing(m(), l).unwrap_err().to_string()
        };
        let err = refused(listing(), ("etc/x", Entry::dir(m())));
        assert!(
            err.contains("/etc/x: parent /etc is not a listed directory"),
            "{err}"
        );
        let err = refused(listing(), ("a/y", Entry::dir(m())));
        assert!(err.contains("parent /a is not a listed directory"), "{err}");
        let err = refused(listing(), ("usr-x", Entry::dir(m())));
        assert!(err.contains("/usr-x is listed twice"), "{err}");
        let err = refused(listing(), ("", Entry::dir(m())));
        assert!(err.contains("root"), "{err}");
    }

    #[test]
    fn children_lists_only_direct_children_in_order() {
        let mut t = Tree::new(m());
        t.insert_with_parents("usr/bin/x", Entry::file(m(), vec![]), m())
            .unwrap();
        t.insert("usr-x", Entry::dir(m())).unwrap();
        t.insert("usr/lib", Entry::dir(m())).unwrap();
        let kids: Vec<&String> = t.children("usr").map(|(k, _)| k).collect();
        assert_eq!(kids, ["usr/bin", "usr/lib"]);
        let top: Vec<&String> = t.children("").map(|(k, _)| k).collect();
        assert_eq!(top, ["usr", "usr-x"]);
    }

    #[test]
    fn subtree_rebases_and_take_removes() {
        let mut t = Tree::new(m());
        t.insert_with_parents("etc/ssh/sshd_config", Entry::file(m(), b"c".to_vec()), m())
            .unwrap();
        let etc = t.take_subtree("etc").unwrap();
        assert!(etc.get("ssh/sshd_config").is_some());
        assert!(!t.contains("etc"));
        assert!(!t.contains("etc/ssh"));
    }

    #[test]
    fn replacing_dir_with_file_drops_its_children() {
        let mut t = Tree::new(m());
        t.insert_with_parents("lib/x", Entry::file(m(), vec![]), m())
            .unwrap();
        t.insert("lib", Entry::symlink(m(), "usr/lib")).unwrap();
        assert!(!t.contains("lib/x"));
    }
}
