//! Hard links in a tree: regular files sharing one [`Data`] are names of one
//! inode. Writers that keep hard links (ext4, cpio, squashfs) group names the
//! same way: by the identity of the shared data, first name in tree order.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Data, Kind, Tree};

/// The identity of a file's data: names with equal keys are hard links.
pub fn key(d: &Data) -> *const super::Content {
    Arc::as_ptr(d)
}

/// Every file's inode: its first name in tree order and how many names it has.
pub struct HardLinks {
    groups: HashMap<*const super::Content, (String, u32)>,
}

impl HardLinks {
    pub fn of(tree: &Tree) -> HardLinks {
        let mut groups: HashMap<*const super::Content, (String, u32)> = HashMap::new();
        for (path, e) in tree.iter() {
            if let Kind::File(d) = &e.kind {
                groups
                    .entry(key(d))
                    .and_modify(|(_, n)| *n = n.saturating_add(1))
                    .or_insert_with(|| (path.clone(), 1));
            }
        }
        HardLinks { groups }
    }

    /// The first name (in tree order) of the file holding `d`, if the tree has one.
    pub fn first(&self, d: &Data) -> Option<&str> {
        self.groups.get(&key(d)).map(|(p, _)| p.as_str())
    }

    /// How many names the file holding `d` has (0 if none).
    pub fn count(&self, d: &Data) -> u32 {
        self.groups.get(&key(d)).map_or(0, |(_, n)| *n)
    }

    /// Whether `path` is the first name of its file (the one written in full).
    pub fn is_first(&self, path: &str, d: &Data) -> bool {
        self.first(d) == Some(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Entry, Meta};

    #[test]
    fn names_sharing_data_form_one_group_with_the_first_name_in_tree_order() {
        let m = Meta::root(0o644, 0);
        let mut t = Tree::new(Meta::root(0o755, 0));
        let shared: Data = Arc::new(crate::tree::Content::from_vec(b"x".to_vec()));
        let other: Data = Arc::new(crate::tree::Content::from_vec(b"x".to_vec()));
        for p in ["b", "a", "c"] {
            t.insert(
                p,
                Entry {
                    meta: m,
                    kind: Kind::File(shared.clone()),
                },
            )
            .unwrap();
        }
        t.insert(
            "d",
            Entry {
                meta: m,
                kind: Kind::File(other.clone()),
            },
        )
        .unwrap();
        let l = HardLinks::of(&t);
        assert_eq!(l.first(&shared), Some("a"));
        assert_eq!(l.count(&shared), 3);
        assert!(l.is_first("a", &shared) && !l.is_first("b", &shared));
        // Equal contents are not a hard link.
        assert_eq!(l.count(&other), 1);
        assert_eq!(
            l.count(&Arc::new(crate::tree::Content::from_vec(Vec::new()))),
            0
        );
    }
}
