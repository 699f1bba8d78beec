//! Finding files in a tree by the patterns a board file lists
//! (`/boot/vmlinuz-*`, `/lib/modules/*/kernel/fs/ext4/ext4.ko*`, ...).
//!
//! Paths given and returned here are absolute ("/usr/lib"), with "/" for the
//! root. Lookups follow symlinks the way the kernel would inside the rootfs:
//! absolute targets from the tree's root, relative ones from the link's
//! directory, ".." never above the root, at most [`MAX_SYMLINKS`] links per
//! lookup.

use std::cmp::Ordering;

use super::{join, parent, Kind, Tree};

/// Symlinks followed in one lookup before it is treated as a loop (Linux's
/// limit).
pub const MAX_SYMLINKS: usize = 40;

/// No candidate pattern matched anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("none of these exist in the rootfs: {}", .candidates.join(", "))]
pub struct NotFound {
    pub candidates: Vec<String>,
}

fn abs(p: &str) -> String {
    format!("/{p}")
}

/// Resolves `rest` (components still to walk) starting from the canonical
/// directory `cur`; follows every symlink including a final one. Returns the
/// canonical relative key, or `None` if something is missing, a non-directory
/// is walked through, or more than `MAX_SYMLINKS` links are followed.
fn resolve_from(tree: &Tree, cur: &str, rest: &str, links: &mut usize) -> Option<String> {
    resolve_visiting(tree, cur, rest, links, &mut |_, _| {})
}

/// `resolve_from`, calling `on_link(key, target)` for every symlink walked through.
fn resolve_visiting(
    tree: &Tree,
    cur: &str,
    rest: &str,
    links: &mut usize,
    on_link: &mut dyn FnMut(&str, &str),
) -> Option<String> {
    let mut cur = cur.to_string();
    // Components still to walk, in reverse so the next one is at the end.
    let mut todo: Vec<String> = rest
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(str::to_string)
        .collect();
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                cur = parent(&cur).to_string();
                continue;
            }
            _ => {}
        }
        let next = join(&cur, &c);
        match &tree.get(&next)?.kind {
            Kind::Dir => cur = next,
            Kind::Symlink(target) => {
                *links += 1;
                if *links > MAX_SYMLINKS {
                    return None;
                }
                on_link(&next, target);
                if target.starts_with('/') {
                    cur = String::new();
                }
                todo.extend(
                    target
                        .split('/')
                        .filter(|c| !c.is_empty())
                        .rev()
                        .map(str::to_string),
                );
            }
            _ => {
                if !todo.is_empty() {
                    // Walking through a file: ENOTDIR (even for a trailing "."
                    // or "..", as the kernel does).
                    return None;
                }
                cur = next;
            }
        }
    }
    Some(cur)
}

/// The canonical absolute path of `path` with every symlink followed (the
/// last component too), or `None` if it does not exist, dangles or loops.
/// A relative `path` is taken from the root.
pub fn resolve(tree: &Tree, path: &str) -> Option<String> {
    let mut links = 0;
    resolve_from(tree, "", path, &mut links).map(|p| abs(&p))
}

/// Like [`resolve`], calling `on_link(key, target)` for each symlink the walk
/// goes through (`key` relative, as in the tree), in walking order.
pub fn resolve_with_links(
    tree: &Tree,
    path: &str,
    mut on_link: impl FnMut(&str, &str),
) -> Option<String> {
    let mut links = 0;
    resolve_visiting(tree, "", path, &mut links, &mut on_link).map(|p| abs(&p))
}

fn has_wildcard(component: &str) -> bool {
    component.contains(['*', '?', '['])
}

/// Matches `pattern` (an absolute path whose components may hold `*`, `?`
/// and `[...]` wildcards) against the tree.
///
/// The walk goes component by component and follows symlinks on the way, so
/// `/lib/modules/*` matches on a tree where `lib` is a symlink to `usr/lib`.
/// Every result is the canonical, symlink-resolved path: a matched name that
/// is itself a symlink (including the last component) is reported as the
/// path of what it points to, and dangling or looping links match nothing.
/// Wildcards do not match names starting with "." unless the pattern
/// component does too (shell rules); a component that is not a valid pattern
/// is compared literally. A relative pattern is taken from the root.
/// Results are sorted and deduplicated.
pub fn glob(tree: &Tree, pattern: &str) -> Vec<String> {
    let comps: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
    let mut out = Vec::new();
    glob_walk(tree, String::new(), &comps, &mut out);
    out.sort();
    out.dedup();
    out
}

fn glob_walk(tree: &Tree, cur: String, comps: &[&str], out: &mut Vec<String>) {
    let Some((&c, rest)) = comps.split_first() else {
        out.push(abs(&cur));
        return;
    };
    let names: Vec<String> = match c {
        "." => return glob_walk(tree, cur, rest, out),
        ".." => return glob_walk(tree, parent(&cur).to_string(), rest, out),
        c if has_wildcard(c) => {
            let opts = glob::MatchOptions {
                case_sensitive: true,
                require_literal_separator: true,
                require_literal_leading_dot: true,
            };
            match glob::Pattern::new(c) {
                Ok(p) => tree
                    .children(&cur)
                    .map(|(k, _)| super::file_name(k))
                    .filter(|n| p.matches_with(n, opts))
                    .map(str::to_string)
                    .collect(),
                Err(_) => vec![c.to_string()],
            }
        }
        c => vec![c.to_string()],
    };
    for name in names {
        // `cur` is canonical and a directory, so resolving one more name
        // from it gives the canonical path of the match.
        let mut links = 0;
        let Some(found) = resolve_from(tree, &cur, &name, &mut links) else {
            continue;
        };
        if rest.is_empty() {
            out.push(abs(&found));
        } else if matches!(tree.get(&found), Some(e) if e.kind == Kind::Dir) {
            glob_walk(tree, found, rest, out);
        }
    }
}

/// Compares strings so that digit runs compare as numbers:
/// `vmlinuz-6.12.9 < vmlinuz-6.12.10`. Ties (e.g. "01" vs "1") fall back to
/// plain byte order, so the order is total.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (x, y) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < x.len() && j < y.len() {
        if x[i].is_ascii_digit() && y[j].is_ascii_digit() {
            let si = i;
            while i < x.len() && x[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < y.len() && y[j].is_ascii_digit() {
                j += 1;
            }
            let nx = trim_zeros(&x[si..i]);
            let ny = trim_zeros(&y[sj..j]);
            let ord = nx.len().cmp(&ny.len()).then_with(|| nx.cmp(ny));
            if ord != Ordering::Equal {
                return ord;
            }
        } else {
            let ord = x[i].cmp(&y[j]);
            if ord != Ordering::Equal {
                return ord;
            }
            i += 1;
            j += 1;
        }
    }
    (x.len() - i).cmp(&(y.len() - j)).then_with(|| a.cmp(b))
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let n = digits.iter().take_while(|&&d| d == b'0').count();
    &digits[n..]
}

/// Tries each candidate pattern in order; the first that matches anything
/// wins. If it matches several paths, the last in version order
/// ([`natural_cmp`]) is returned, so `/boot/vmlinuz-*` picks the newest
/// kernel. Paths are canonical (see [`glob`]).
pub fn find_first(tree: &Tree, candidates: &[String]) -> Result<String, NotFound> {
    for c in candidates {
        if let Some(best) = glob(tree, c).into_iter().max_by(|a, b| natural_cmp(a, b)) {
            return Ok(best);
        }
    }
    Err(NotFound {
        candidates: candidates.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Entry, Meta};

    fn m() -> Meta {
        Meta::root(0o755, 1)
    }

    fn file(t: &mut Tree, p: &str) {
        t.insert_with_parents(p, Entry::file(m(), p.as_bytes().to_vec()), m())
            .unwrap();
    }

    fn link(t: &mut Tree, p: &str, target: &str) {
        t.insert_with_parents(p, Entry::symlink(m(), target), m())
            .unwrap();
    }

    /// A Debian-like merged-/usr tree.
    fn debian() -> Tree {
        let mut t = Tree::new(m());
        link(&mut t, "lib", "usr/lib");
        link(&mut t, "bin", "/usr/bin");
        file(&mut t, "usr/lib/modules/6.12.9-arm64/modules.dep");
        file(&mut t, "usr/lib/modules/6.12.10-arm64/modules.dep");
        file(&mut t, "boot/vmlinuz-6.12.9-arm64");
        file(&mut t, "boot/vmlinuz-6.12.10-arm64");
        link(&mut t, "vmlinuz", "boot/vmlinuz-6.12.10-arm64");
        link(&mut t, "boot/dangling", "nothing");
        link(&mut t, "loop1", "loop2");
        link(&mut t, "loop2", "./loop1");
        file(&mut t, "usr/bin/busybox");
        link(&mut t, "usr/bin/sh", "busybox");
        link(&mut t, "usr/sbin/init", "../bin/busybox");
        file(&mut t, "boot/.hidden");
        t
    }

    #[test]
    fn resolve_follows_relative_absolute_and_dotdot_links() {
        let t = debian();
        assert_eq!(
            resolve(&t, "/lib/modules").as_deref(),
            Some("/usr/lib/modules")
        );
        assert_eq!(resolve(&t, "/bin/sh").as_deref(), Some("/usr/bin/busybox"));
        assert_eq!(
            resolve(&t, "/usr/sbin/init").as_deref(),
            Some("/usr/bin/busybox")
        );
        // ".." after a symlink applies to the resolved directory.
        assert_eq!(resolve(&t, "/lib/../bin").as_deref(), Some("/usr/bin"));
        // ".." at the root stays at the root.
        assert_eq!(resolve(&t, "/../../boot").as_deref(), Some("/boot"));
        assert_eq!(resolve(&t, "/").as_deref(), Some("/"));
    }

    #[test]
    fn resolve_fails_on_dangling_looping_and_through_files() {
        let t = debian();
        assert_eq!(resolve(&t, "/boot/dangling"), None);
        assert_eq!(resolve(&t, "/loop1"), None);
        assert_eq!(resolve(&t, "/usr/bin/busybox/x"), None);
        assert_eq!(resolve(&t, "/nope"), None);
    }

    #[test]
    fn resolve_allows_forty_links_but_not_forty_one() {
        let mut t = Tree::new(m());
        file(&mut t, "end");
        // l0 -> l1 -> ... -> l39 -> end: 40 links.
        for i in 0..40 {
            let target = if i == 39 {
                "end".to_string()
            } else {
                format!("l{}", i + 1)
            };
            link(&mut t, &format!("l{i}"), &target);
        }
        assert_eq!(resolve(&t, "/l0").as_deref(), Some("/end"));
        link(&mut t, "lx", "l0");
        assert_eq!(resolve(&t, "/lx"), None);
    }

    #[test]
    fn glob_walks_through_symlinked_lib() {
        let t = debian();
        assert_eq!(
            glob(&t, "/lib/modules/*"),
            [
                "/usr/lib/modules/6.12.10-arm64",
                "/usr/lib/modules/6.12.9-arm64"
            ]
        );
        assert_eq!(
            glob(&t, "/lib/modules/*/modules.dep").len(),
            2,
            "wildcard in the middle"
        );
    }

    #[test]
    fn glob_resolves_final_symlinks_and_skips_dangling_ones() {
        let t = debian();
        assert_eq!(glob(&t, "/vmlinuz"), ["/boot/vmlinuz-6.12.10-arm64"]);
        assert_eq!(glob(&t, "/usr/bin/s?"), ["/usr/bin/busybox"]);
        // /usr/bin/busybox and /usr/bin/sh are one file: deduplicated.
        assert_eq!(glob(&t, "/usr/bin/*"), ["/usr/bin/busybox"]);
        assert!(glob(&t, "/boot/dang*").is_empty());
        assert!(glob(&t, "/loop*").is_empty());
    }

    #[test]
    fn glob_brackets_dotfiles_and_literals() {
        let t = debian();
        assert_eq!(
            glob(&t, "/boot/vmlinuz-6.12.[0-9]-*"),
            ["/boot/vmlinuz-6.12.9-arm64"]
        );
        assert!(!glob(&t, "/boot/*").contains(&"/boot/.hidden".to_string()));
        assert_eq!(glob(&t, "/boot/.h*"), ["/boot/.hidden"]);
        assert_eq!(glob(&t, "/boot"), ["/boot"]);
        assert!(glob(&t, "/boot/missing").is_empty());
        // Through a file: nothing.
        assert!(glob(&t, "/usr/bin/busybox/*").is_empty());
    }

    #[test]
    fn natural_order_compares_digit_runs_as_numbers() {
        assert_eq!(
            natural_cmp("vmlinuz-6.12.9", "vmlinuz-6.12.10"),
            Ordering::Less
        );
        assert_eq!(natural_cmp("vmlinuz-6.2", "vmlinuz-6.10"), Ordering::Less);
        assert_eq!(natural_cmp("a10", "a9"), Ordering::Greater);
        assert_eq!(natural_cmp("a", "a1"), Ordering::Less);
        assert_eq!(natural_cmp("x", "x"), Ordering::Equal);
        // Numerically equal runs are still ordered (total order).
        assert_ne!(natural_cmp("a01", "a1"), Ordering::Equal);
        let mut v = vec!["k-6.12.10", "k-6.12.9", "k-6.1.100", "k-6.12.1"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["k-6.1.100", "k-6.12.1", "k-6.12.9", "k-6.12.10"]);
    }

    #[test]
    fn find_first_prefers_earlier_candidates_and_newest_version() {
        let t = debian();
        let c = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            find_first(&t, &c(&["/boot/vmlinuz-*"])).unwrap(),
            "/boot/vmlinuz-6.12.10-arm64"
        );
        // The first matching candidate wins even if a later one also matches.
        assert_eq!(
            find_first(&t, &c(&["/boot/Image", "/vmlinuz", "/boot/vmlinuz-*"])).unwrap(),
            "/boot/vmlinuz-6.12.10-arm64"
        );
        assert_eq!(
            find_first(&t, &c(&["/usr/bin/nope", "/bin/s*"])).unwrap(),
            "/usr/bin/busybox"
        );
        let err = find_first(&t, &c(&["/boot/Image", "/boot/uImage*"])).unwrap_err();
        assert_eq!(err.candidates, c(&["/boot/Image", "/boot/uImage*"]));
        assert_eq!(
            err.to_string(),
            "none of these exist in the rootfs: /boot/Image, /boot/uImage*"
        );
    }
}
