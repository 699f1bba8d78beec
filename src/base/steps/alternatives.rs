//! Alternatives: what `update-alternatives --install` in the base's
//! maintainer scripts sets up, from a table instead of the scripts. For each
//! alternative whose chosen path exists in the tree: the generic link
//! (`/usr/bin/awk -> /etc/alternatives/awk`), the choice
//! (`/etc/alternatives/awk -> /usr/bin/mawk`), the same for its slaves whose
//! path exists, and the administrative file in
//! `/var/lib/dpkg/alternatives/` so that `update-alternatives` on the node
//! knows them (auto mode). Candidates are tried in table order: the first one
//! present wins (iptables: the nft variant before the legacy one).

use anyhow::Result;

use super::{symlink, write};
use crate::tree::{lookup, Tree};

/// One alternative: its name, generic link, and candidates (path, priority,
/// slaves as (name, link, path)).
pub struct Alternative {
    pub name: &'static str,
    pub link: &'static str,
    pub candidates: &'static [Candidate],
}

pub struct Candidate {
    pub path: &'static str,
    pub priority: u32,
    pub slaves: &'static [(&'static str, &'static str, &'static str)],
}

/// The base's alternatives (from the postinst scripts of mawk, util-linux,
/// debianutils, cpio, tar, iptables).
pub const DEFAULT: &[Alternative] = &[
    Alternative {
        name: "awk",
        link: "/usr/bin/awk",
        candidates: &[Candidate {
            path: "/usr/bin/mawk",
            priority: 5,
            slaves: &[("nawk", "/usr/bin/nawk", "/usr/bin/mawk")],
        }],
    },
    Alternative {
        name: "pager",
        link: "/usr/bin/pager",
        candidates: &[Candidate {
            path: "/bin/more",
            priority: 50,
            slaves: &[],
        }],
    },
    Alternative {
        name: "which",
        link: "/usr/bin/which",
        candidates: &[Candidate {
            path: "/usr/bin/which.debianutils",
            priority: 0,
            slaves: &[],
        }],
    },
    Alternative {
        name: "mt",
        link: "/usr/bin/mt",
        candidates: &[Candidate {
            path: "/usr/bin/mt-gnu",
            priority: 10,
            slaves: &[],
        }],
    },
    Alternative {
        name: "rmt",
        link: "/usr/sbin/rmt",
        candidates: &[Candidate {
            path: "/usr/sbin/rmt-tar",
            priority: 50,
            slaves: &[],
        }],
    },
    Alternative {
        name: "iptables",
        link: "/usr/sbin/iptables",
        candidates: &[
            Candidate {
                path: "/usr/sbin/iptables-nft",
                priority: 20,
                slaves: &[
                    (
                        "iptables-restore",
                        "/usr/sbin/iptables-restore",
                        "/usr/sbin/iptables-nft-restore",
                    ),
                    (
                        "iptables-save",
                        "/usr/sbin/iptables-save",
                        "/usr/sbin/iptables-nft-save",
                    ),
                ],
            },
            Candidate {
                path: "/usr/sbin/iptables-legacy",
                priority: 10,
                slaves: &[
                    (
                        "iptables-restore",
                        "/usr/sbin/iptables-restore",
                        "/usr/sbin/iptables-legacy-restore",
                    ),
                    (
                        "iptables-save",
                        "/usr/sbin/iptables-save",
                        "/usr/sbin/iptables-legacy-save",
                    ),
                ],
            },
        ],
    },
    Alternative {
        name: "ip6tables",
        link: "/usr/sbin/ip6tables",
        candidates: &[
            Candidate {
                path: "/usr/sbin/ip6tables-nft",
                priority: 20,
                slaves: &[
                    (
                        "ip6tables-restore",
                        "/usr/sbin/ip6tables-restore",
                        "/usr/sbin/ip6tables-nft-restore",
                    ),
                    (
                        "ip6tables-save",
                        "/usr/sbin/ip6tables-save",
                        "/usr/sbin/ip6tables-nft-save",
                    ),
                ],
            },
            Candidate {
                path: "/usr/sbin/ip6tables-legacy",
                priority: 10,
                slaves: &[
                    (
                        "ip6tables-restore",
                        "/usr/sbin/ip6tables-restore",
                        "/usr/sbin/ip6tables-legacy-restore",
                    ),
                    (
                        "ip6tables-save",
                        "/usr/sbin/ip6tables-save",
                        "/usr/sbin/ip6tables-legacy-save",
                    ),
                ],
            },
        ],
    },
];

fn exists(tree: &Tree, abs: &str) -> bool {
    lookup::resolve(tree, abs).is_some()
}

pub fn run(tree: &mut Tree, table: &[Alternative], mtime: u64) -> Result<()> {
    for alt in table {
        let present: Vec<&Candidate> = alt
            .candidates
            .iter()
            .filter(|c| exists(tree, c.path))
            .collect();
        let Some(chosen) = present.first() else {
            continue;
        };
        // Where the generic link goes, seen through /bin -> usr/bin etc.
        let link_key = key_through_links(tree, alt.link);
        symlink(
            tree,
            &link_key,
            &format!("/etc/alternatives/{}", alt.name),
            mtime,
        )?;
        symlink(
            tree,
            &format!("etc/alternatives/{}", alt.name),
            chosen.path,
            mtime,
        )?;
        let mut slaves = Vec::new();
        for (name, link, path) in chosen.slaves {
            if !exists(tree, path) {
                continue;
            }
            let k = key_through_links(tree, link);
            symlink(tree, &k, &format!("/etc/alternatives/{name}"), mtime)?;
            symlink(tree, &format!("etc/alternatives/{name}"), path, mtime)?;
            slaves.push((*name, *link));
        }
        // update-alternatives' administrative file (auto mode).
        let mut admin = format!("auto\n{}\n", alt.link);
        for (name, link) in &slaves {
            admin.push_str(&format!("{name}\n{link}\n"));
        }
        admin.push('\n');
        for c in &present {
            admin.push_str(&format!("{}\n{}\n", c.path, c.priority));
            for (name, _) in &slaves {
                let p = c
                    .slaves
                    .iter()
                    .find(|s| s.0 == *name)
                    .map(|s| s.2)
                    .filter(|p| exists(tree, p))
                    .unwrap_or("");
                admin.push_str(&format!("{p}\n"));
            }
        }
        admin.push('\n');
        write(
            tree,
            &format!("var/lib/dpkg/alternatives/{}", alt.name),
            admin.into_bytes(),
            0o644,
            mtime,
        )?;
    }
    Ok(())
}

/// The tree key of an absolute path whose parent may go through symlinks
/// (`/bin/more`'s parent is `usr/bin` on a merged-/usr tree).
fn key_through_links(tree: &Tree, abs: &str) -> String {
    let rel = abs.trim_start_matches('/');
    let dir = crate::tree::parent(rel);
    let name = crate::tree::file_name(rel);
    match lookup::resolve(tree, dir) {
        Some(real) => crate::tree::join(real.trim_start_matches('/'), name),
        None => rel.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::tree::{Entry, Meta};

    fn merged(files: &[(&str, &str)]) -> Tree {
        let mut t = tree(files);
        t.insert("bin", Entry::symlink(Meta::root(0o777, 0), "usr/bin"))
            .unwrap();
        t
    }

    #[test]
    fn links_for_present_candidates_only() {
        let mut t = merged(&[
            ("usr/bin/mawk", "m"),
            ("usr/bin/more", "more"),
            ("usr/sbin/iptables-nft", "n"),
            ("usr/sbin/iptables-legacy", "l"),
            ("usr/sbin/iptables-nft-save", "s"),
        ]);
        run(&mut t, DEFAULT, 0).unwrap();
        assert_eq!(link(&t, "usr/bin/awk"), "/etc/alternatives/awk");
        assert_eq!(link(&t, "etc/alternatives/awk"), "/usr/bin/mawk");
        assert_eq!(link(&t, "usr/bin/nawk"), "/etc/alternatives/nawk");
        assert_eq!(link(&t, "usr/bin/pager"), "/etc/alternatives/pager");
        assert_eq!(link(&t, "etc/alternatives/pager"), "/bin/more");
        // nft before legacy; only slaves that exist.
        assert_eq!(
            link(&t, "etc/alternatives/iptables"),
            "/usr/sbin/iptables-nft"
        );
        assert_eq!(
            link(&t, "etc/alternatives/iptables-save"),
            "/usr/sbin/iptables-nft-save"
        );
        assert!(!t.contains("etc/alternatives/iptables-restore"));
        assert_eq!(
            text(&t, "var/lib/dpkg/alternatives/iptables"),
            "auto\n/usr/sbin/iptables\niptables-save\n/usr/sbin/iptables-save\n\n\
             /usr/sbin/iptables-nft\n20\n/usr/sbin/iptables-nft-save\n\
             /usr/sbin/iptables-legacy\n10\n\n\n"
        );
        // Nothing for what is not installed.
        assert!(!t.contains("etc/alternatives/which"));
        assert!(!t.contains("usr/sbin/ip6tables"));
    }
}
