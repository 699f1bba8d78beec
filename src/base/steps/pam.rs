//! PAM: the `/etc/pam.d/common-*` files `pam-auth-update` writes on a new
//! system, from libpam-runtime's templates (`/usr/share/pam/common-*`, with
//! `$auth_primary`-style placeholders) and the profiles in
//! `/usr/share/pam-configs/` marked `Default: yes`, highest `Priority` first.
//! A primary module's `success=end` becomes a jump over the primary modules
//! after it (to the template's `pam_deny`), as pam-auth-update does; the
//! first primary module uses its profile's `-Initial` lines when given. A type
//! with no primary module gets `[default=1] pam_permit.so` in their place, so
//! that the template's `pam_deny` after them is jumped over (without it every
//! PAM session fails: sshd then ends each login with status 254).

use anyhow::{anyhow, Result};

use super::super::deb822;
use super::{files_in, read_text, write};
use crate::tree::Tree;

/// (file, profile field stem).
const FILES: &[(&str, &str)] = &[
    ("common-auth", "Auth"),
    ("common-account", "Account"),
    ("common-session", "Session"),
    ("common-session-noninteractive", "Session"),
    ("common-password", "Password"),
];

struct Profile {
    name: String,
    priority: i64,
    fields: deb822::Paragraph,
}

pub fn run(tree: &mut Tree, mtime: u64) -> Result<()> {
    let mut profiles = Vec::new();
    for path in files_in(tree, "usr/share/pam-configs") {
        let text = read_text(tree, &path)?.unwrap_or_default();
        let p = deb822::parse_one(&text).map_err(|e| anyhow!("/{path}: {e:#}"))?;
        if p.get("Default") != Some("yes") {
            continue;
        }
        profiles.push(Profile {
            name: crate::tree::file_name(&path).to_string(),
            priority: p.get("Priority").and_then(|v| v.parse().ok()).unwrap_or(0),
            fields: p,
        });
    }
    profiles.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(&b.name)));
    for (file, stem) in FILES {
        let Some(template) = read_text(tree, &format!("usr/share/pam/{file}"))? else {
            continue;
        };
        let out = render(&template, stem, &profiles);
        write(
            tree,
            &format!("etc/pam.d/{file}"),
            out.into_bytes(),
            0o644,
            mtime,
        )?;
    }
    Ok(())
}

fn lines_of(p: &Profile, field: &str) -> Vec<String> {
    p.fields
        .get(field)
        .unwrap_or("")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn render(template: &str, stem: &str, profiles: &[Profile]) -> String {
    let kind = stem.to_lowercase();
    let typ = format!("{stem}-Type");
    let mut primary: Vec<String> = Vec::new();
    let mut additional: Vec<String> = Vec::new();
    for p in profiles {
        let is_primary = p.fields.get(&typ) == Some("Primary");
        let initial = format!("{stem}-Initial");
        let lines = if is_primary && primary.is_empty() && p.fields.get(&initial).is_some() {
            lines_of(p, &initial)
        } else {
            lines_of(p, stem)
        };
        let target = if is_primary {
            &mut primary
        } else {
            &mut additional
        };
        target.extend(lines.into_iter().map(|l| format!("{kind}\t{l}")));
    }
    let n = primary.len();
    let mut primary: Vec<String> = primary
        .into_iter()
        .enumerate()
        .map(|(i, l)| l.replace("success=end", &format!("success={}", n - i)))
        .collect();
    if primary.is_empty() {
        // No primary module (common-session on a plain system): jump over
        // the template's pam_deny, as pam-auth-update does.
        primary.push(format!("{kind}\t[default=1]\t\t\tpam_permit.so"));
    }
    let mut out = String::new();
    for line in template.lines() {
        let t = line.trim();
        if t == format!("${kind}_primary") {
            for l in &primary {
                out.push_str(l);
                out.push('\n');
            }
        } else if t == format!("${kind}_additional") {
            for l in &additional {
                out.push_str(l);
                out.push('\n');
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn unix_profile_fills_the_templates() {
        let unix = "Name: Unix\nDefault: yes\nPriority: 256\nAuth-Type: Primary\nAuth:\n\t[success=end default=ignore]\tpam_unix.so nullok try_first_pass\nAuth-Initial:\n\t[success=end default=ignore]\tpam_unix.so nullok\nSession-Type: Additional\nSession:\n\trequired\tpam_unix.so\n";
        let off =
            "Name: Off\nDefault: no\nSession-Type: Additional\nSession:\n\trequired\tpam_off.so\n";
        let mut t = tree(&[
            ("usr/share/pam-configs/unix", unix),
            ("usr/share/pam-configs/off", off),
            (
                "usr/share/pam/common-auth",
                "# head\n$auth_primary\nauth\trequisite\tpam_deny.so\n$auth_additional\n",
            ),
            (
                "usr/share/pam/common-session",
                "$session_primary\nsession\trequisite\tpam_deny.so\nsession\trequired\tpam_permit.so\n$session_additional\n",
            ),
        ]);
        run(&mut t, 0).unwrap();
        assert_eq!(
            text(&t, "etc/pam.d/common-auth"),
            "# head\nauth\t[success=1 default=ignore]\tpam_unix.so nullok\nauth\trequisite\tpam_deny.so\n"
        );
        assert_eq!(
            text(&t, "etc/pam.d/common-session"),
            "session\t[default=1]\t\t\tpam_permit.so\nsession\trequisite\tpam_deny.so\n\
             session\trequired\tpam_permit.so\nsession\trequired\tpam_unix.so\n"
        );
        assert!(!t.contains("etc/pam.d/common-password"));
    }
}
