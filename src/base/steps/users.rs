//! Users and groups: what base-passwd's `update-passwd`, `shadowconfig on`
//! and `systemd-sysusers` would leave in /etc.
//!
//! - `/etc/passwd` and `/etc/group` start from base-passwd's master files;
//! - then the sysusers.d files (`/usr/lib/sysusers.d/*.conf`, overridden by
//!   name from `/etc/sysusers.d`, read in file-name order) add the users and
//!   groups packages declare (`u`, `g`, `m` lines; `r` ranges are ignored).
//!   Dynamic ids (`-`) are given from 999 downwards, the first id free as
//!   both uid and gid, as systemd-sysusers does for system accounts;
//! - every account gets a locked password in `/etc/shadow` (`*` for
//!   base-passwd's, `!*` for sysusers'), groups the same in `/etc/gshadow`;
//! - `/etc/subuid` and `/etc/subgid` exist, empty.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};

use super::{files_in, read_text, write};
use crate::tree::{file_name, Tree};

const SHADOW_GID: u32 = 42;
const DYNAMIC_MAX: u32 = 999;
const DYNAMIC_MIN: u32 = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub gecos: String,
    pub home: String,
    pub shell: String,
    /// The shadow password field ("*" or "!*": locked).
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Accounts {
    pub users: Vec<User>,
    pub groups: Vec<Group>,
}

impl Accounts {
    fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }
    fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }
    fn uid_used(&self, id: u32) -> bool {
        self.users.iter().any(|u| u.uid == id)
    }
    fn gid_used(&self, id: u32) -> bool {
        self.groups.iter().any(|g| g.gid == id)
    }
    /// The highest free id in the dynamic range: free as a uid if `uid`,
    /// and as a gid if `gid`.
    fn dynamic(&self, uid: bool, gid: bool) -> Result<u32> {
        let taken = |id: u32| (uid && self.uid_used(id)) || (gid && self.gid_used(id));
        (DYNAMIC_MIN..=DYNAMIC_MAX)
            .rev()
            .find(|&id| !taken(id))
            .ok_or_else(|| anyhow!("no free system id left in {DYNAMIC_MIN}..={DYNAMIC_MAX}"))
    }
}

pub fn run(tree: &mut Tree, mtime: u64) -> Result<()> {
    let passwd = read_text(tree, "usr/share/base-passwd/passwd.master")?
        .ok_or_else(|| anyhow!("no /usr/share/base-passwd/passwd.master (base-passwd)"))?;
    let group = read_text(tree, "usr/share/base-passwd/group.master")?
        .ok_or_else(|| anyhow!("no /usr/share/base-passwd/group.master (base-passwd)"))?;
    let mut acc = from_masters(&passwd, &group)?;
    let mut confs: BTreeMap<String, String> = BTreeMap::new();
    for dir in ["usr/lib/sysusers.d", "etc/sysusers.d"] {
        for path in files_in(tree, dir) {
            let name = file_name(&path).to_string();
            if !name.ends_with(".conf") {
                continue;
            }
            let text = read_text(tree, &path)?.unwrap_or_default();
            confs.insert(name, text);
        }
    }
    for (name, text) in &confs {
        apply_sysusers(&mut acc, text).with_context(|| format!("sysusers.d/{name}"))?;
    }
    write_files(tree, &acc, mtime)
}

/// Accounts from base-passwd's `passwd.master` and `group.master`.
pub fn from_masters(passwd: &str, group: &str) -> Result<Accounts> {
    let mut acc = Accounts::default();
    for (n, line) in passwd.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 7 {
            bail!("passwd.master line {}: not 7 fields", n + 1);
        }
        let num = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| anyhow!("passwd.master line {}: bad id {s:?}", n + 1))
        };
        acc.users.push(User {
            name: f[0].to_string(),
            uid: num(f[2])?,
            gid: num(f[3])?,
            gecos: f[4].to_string(),
            home: f[5].to_string(),
            shell: f[6].to_string(),
            password: "*".to_string(),
        });
    }
    for (n, line) in group.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 4 {
            bail!("group.master line {}: not 4 fields", n + 1);
        }
        acc.groups.push(Group {
            name: f[0].to_string(),
            gid: f[2]
                .parse()
                .map_err(|_| anyhow!("group.master line {}: bad id {:?}", n + 1, f[2]))?,
            members: f[3]
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect(),
        });
    }
    Ok(acc)
}

/// Splits a sysusers.d line into fields: whitespace-separated, double
/// quotes group words ("System Message Bus").
fn fields(line: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut have = false;
    for c in line.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                have = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if have {
                    out.push(std::mem::take(&mut cur));
                    have = false;
                }
            }
            c => {
                cur.push(c);
                have = true;
            }
        }
    }
    if in_quotes {
        bail!("unterminated quote");
    }
    if have {
        out.push(cur);
    }
    Ok(out)
}

/// Applies one sysusers.d file: groups first (explicit ids, then dynamic),
/// then users, then memberships, as systemd-sysusers orders its work.
pub fn apply_sysusers(acc: &mut Accounts, text: &str) -> Result<()> {
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f = fields(line).with_context(|| format!("line {}", n + 1))?;
        lines.push((n + 1, f));
    }
    let opt = |f: &[String], i: usize| -> Option<String> {
        f.get(i).filter(|s| s.as_str() != "-").cloned()
    };
    // Groups, and the groups users of the same name imply.
    for (n, f) in &lines {
        let kind = f[0].trim_end_matches('!');
        let name = f.get(1).ok_or_else(|| anyhow!("line {n}: no name"))?;
        let id = opt(f, 2);
        let wants_group = match kind {
            "g" => true,
            // "u name uid:gid" or "u name -:group" use an existing group.
            "u" => !id.as_deref().is_some_and(|s| s.contains(':')),
            _ => false,
        };
        if !wants_group || acc.group(name).is_some() {
            continue;
        }
        let gid = match id.as_deref().map(str::parse::<u32>) {
            Some(Ok(g)) if !acc.gid_used(g) => g,
            Some(Ok(_)) | None => {
                // A user's group takes the user's uid if that is fixed and
                // free; otherwise the first id free for both.
                match acc.user(name) {
                    Some(u) if !acc.gid_used(u.uid) => u.uid,
                    _ => acc.dynamic(kind == "u", true)?,
                }
            }
            Some(Err(_)) => bail!("line {n}: unsupported id {:?}", id.unwrap_or_default()),
        };
        acc.groups.push(Group {
            name: name.clone(),
            gid,
            members: Vec::new(),
        });
    }
    for (n, f) in &lines {
        // "u!" (fully locked) and "u" both get "!*": no password login.
        if f[0].trim_end_matches('!') != "u" {
            continue;
        }
        let name = &f[1];
        if acc.user(name).is_some() {
            continue;
        }
        let id = opt(f, 2).unwrap_or_else(|| "-".to_string());
        let (uid_spec, gid_spec) = match id.split_once(':') {
            Some((u, g)) => (u.to_string(), Some(g.to_string())),
            None => (id.clone(), None),
        };
        let gid = match &gid_spec {
            Some(g) => match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => {
                    acc.group(g)
                        .ok_or_else(|| anyhow!("line {n}: group {g:?} does not exist"))?
                        .gid
                }
            },
            None => {
                acc.group(name)
                    .ok_or_else(|| anyhow!("line {n}: no group {name:?}"))?
                    .gid
            }
        };
        let uid = match uid_spec.parse::<u32>() {
            Ok(u) => u,
            Err(_) if uid_spec == "-" => {
                if gid_spec.is_none() && !acc.uid_used(gid) {
                    gid
                } else {
                    acc.dynamic(true, false)?
                }
            }
            Err(_) => bail!("line {n}: unsupported id {id:?}"),
        };
        acc.users.push(User {
            name: name.clone(),
            uid,
            gid,
            gecos: opt(f, 3).unwrap_or_default(),
            home: opt(f, 4).unwrap_or_else(|| "/".to_string()),
            shell: opt(f, 5).unwrap_or_else(|| {
                if uid == 0 {
                    "/bin/sh".to_string()
                } else {
                    "/usr/sbin/nologin".to_string()
                }
            }),
            password: "!*".to_string(),
        });
    }
    for (n, f) in &lines {
        if f[0] != "m" {
            continue;
        }
        let (user, group) = match (f.get(1), f.get(2)) {
            (Some(u), Some(g)) => (u.clone(), g.clone()),
            _ => bail!("line {n}: m needs a user and a group"),
        };
        let g = acc
            .groups
            .iter_mut()
            .find(|x| x.name == group)
            .ok_or_else(|| anyhow!("line {n}: group {group:?} does not exist"))?;
        if !g.members.contains(&user) {
            g.members.push(user);
        }
    }
    Ok(())
}

fn write_files(tree: &mut Tree, acc: &Accounts, mtime: u64) -> Result<()> {
    let days = mtime / 86_400;
    let mut passwd = String::new();
    let mut shadow = String::new();
    for u in &acc.users {
        passwd.push_str(&format!(
            "{}:x:{}:{}:{}:{}:{}\n",
            u.name, u.uid, u.gid, u.gecos, u.home, u.shell
        ));
        shadow.push_str(&format!("{}:{}:{days}:0:99999:7:::\n", u.name, u.password));
    }
    let mut group = String::new();
    let mut gshadow = String::new();
    for g in &acc.groups {
        let members = g.members.join(",");
        group.push_str(&format!("{}:x:{}:{members}\n", g.name, g.gid));
        gshadow.push_str(&format!("{}:*::{members}\n", g.name));
    }
    write(tree, "etc/passwd", passwd.into_bytes(), 0o644, mtime)?;
    write(tree, "etc/group", group.into_bytes(), 0o644, mtime)?;
    write(tree, "etc/shadow", shadow.into_bytes(), 0o640, mtime)?;
    write(tree, "etc/gshadow", gshadow.into_bytes(), 0o640, mtime)?;
    for f in ["etc/shadow", "etc/gshadow"] {
        if let Some(e) = tree.get_mut(f) {
            e.meta.gid = SHADOW_GID;
        }
    }
    for f in ["etc/subuid", "etc/subgid"] {
        if !tree.contains(f) {
            write(tree, f, Vec::new(), 0o644, mtime)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    const PASSWD: &str = "root:*:0:0:root:/root:/bin/bash\nnobody:*:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str = "root:*:0:\nshadow:*:42:\nnogroup:*:65534:\n";

    #[test]
    fn masters_then_sysusers_with_dynamic_ids_and_members() {
        let mut t = tree(&[
            ("usr/share/base-passwd/passwd.master", PASSWD),
            ("usr/share/base-passwd/group.master", GROUP),
            (
                "usr/lib/sysusers.d/a.conf",
                "# comment\nu messagebus - \"System Message Bus\" /nonexistent\ng input -\n",
            ),
            (
                "usr/lib/sysusers.d/b.conf",
                "u sshd -:nogroup \"sshd user\" /run/sshd\nu! systemd-network - \"systemd Network Management\"\ng kvm 36\nm sshd kvm\nu root 0 - /root\n",
            ),
        ]);
        run(&mut t, 86_400 * 20_000).unwrap();
        let passwd = text(&t, "etc/passwd");
        assert_eq!(
            passwd,
            "root:x:0:0:root:/root:/bin/bash\n\
             nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
             messagebus:x:999:999:System Message Bus:/nonexistent:/usr/sbin/nologin\n\
             sshd:x:998:65534:sshd user:/run/sshd:/usr/sbin/nologin\n\
             systemd-network:x:997:997:systemd Network Management:/:/usr/sbin/nologin\n"
        );
        let group = text(&t, "etc/group");
        assert_eq!(
            group,
            "root:x:0:\nshadow:x:42:\nnogroup:x:65534:\nmessagebus:x:999:\ninput:x:998:\n\
             systemd-network:x:997:\nkvm:x:36:sshd\n"
        );
        let shadow = text(&t, "etc/shadow");
        assert!(
            shadow.starts_with("root:*:20000:0:99999:7:::\n"),
            "{shadow}"
        );
        assert!(shadow.contains("sshd:!*:20000:"), "{shadow}");
        let e = t.get("etc/shadow").unwrap();
        assert_eq!((e.meta.mode, e.meta.gid), (0o640, SHADOW_GID));
        assert!(text(&t, "etc/gshadow").contains("kvm:*::sshd\n"));
        assert_eq!(text(&t, "etc/subuid"), "");
    }

    #[test]
    fn fields_respect_quotes() {
        assert_eq!(
            fields("u  a - \"x y\"  /h").unwrap(),
            ["u", "a", "-", "x y", "/h"]
        );
        assert!(fields("u a \"open").is_err());
    }

    #[test]
    fn bad_input_is_an_error_with_its_line() {
        let mut acc = from_masters(PASSWD, GROUP).unwrap();
        let e = apply_sysusers(&mut acc, "u x -:missing\n").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        assert!(from_masters("root:x:0\n", GROUP).is_err());
        let mut t = tree(&[]);
        assert!(run(&mut t, 0)
            .unwrap_err()
            .to_string()
            .contains("base-passwd"));
    }
}
