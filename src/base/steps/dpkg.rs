//! The dpkg database, so that `dpkg -l` on the node and vulnerability
//! scanners see what is installed: `/var/lib/dpkg/status` (each package's
//! control fields, `Status: install ok installed`, its conffiles with their
//! MD5 as unpacked), and per package `info/NAME.list` (the paths it
//! shipped), `info/NAME.md5sums` and `info/NAME.conffiles`; plus the empty
//! files and directories dpkg expects.

use anyhow::Result;
use md5::{Digest, Md5};

use super::super::compose::Installed;
use super::super::deb822;
use super::{dir, read, write};
use crate::tree::Tree;

const DB: &str = "var/lib/dpkg";

pub fn run(tree: &mut Tree, installed: &[Installed], mtime: u64) -> Result<()> {
    if installed.is_empty() {
        return Ok(());
    }
    let mut sorted: Vec<&Installed> = installed.iter().collect();
    sorted.sort_by(|a, b| a.info_name.cmp(&b.info_name));
    let mut status = String::new();
    for p in &sorted {
        status.push_str(&stanza(tree, p)?);
        status.push('\n');
    }
    for d in ["info", "updates", "triggers", "alternatives", "parts"] {
        dir(tree, &format!("{DB}/{d}"), 0o755, mtime)?;
    }
    write(
        tree,
        &format!("{DB}/status"),
        status.into_bytes(),
        0o644,
        mtime,
    )?;
    for f in ["available", "diversions", "statoverride"] {
        if !tree.contains(&format!("{DB}/{f}")) {
            write(tree, &format!("{DB}/{f}"), Vec::new(), 0o644, mtime)?;
        }
    }
    for p in &sorted {
        let info = format!("{DB}/info/{}", p.info_name);
        let mut list = String::new();
        for path in &p.paths {
            list.push_str(path);
            list.push('\n');
        }
        write(
            tree,
            &format!("{info}.list"),
            list.into_bytes(),
            0o644,
            mtime,
        )?;
        if !p.md5sums.is_empty() {
            write(
                tree,
                &format!("{info}.md5sums"),
                p.md5sums.clone().into_bytes(),
                0o644,
                mtime,
            )?;
        }
        if !p.conffiles.is_empty() {
            let text: String = p.conffiles.iter().map(|c| format!("{c}\n")).collect();
            write(
                tree,
                &format!("{info}.conffiles"),
                text.into_bytes(),
                0o644,
                mtime,
            )?;
        }
    }
    Ok(())
}

/// One package's paragraph of the status file.
fn stanza(tree: &Tree, p: &Installed) -> Result<String> {
    let mut conffiles = String::new();
    for c in &p.conffiles {
        if let Some(bytes) = read(tree, c.trim_start_matches('/'))? {
            let sum = Md5::digest(&bytes);
            let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
            conffiles.push_str(&format!("\n{c} {hex}"));
        }
    }
    let mut out = String::new();
    let mut field = |k: &str, v: &str| out.push_str(&deb822::field_text(k, v));
    field("Package", &p.package);
    field("Status", "install ok installed");
    let mut conffiles_done = conffiles.is_empty();
    for (k, v) in p.deb.fields() {
        if k.eq_ignore_ascii_case("Package") || k.eq_ignore_ascii_case("Status") {
            continue;
        }
        if k.eq_ignore_ascii_case("Description") && !conffiles_done {
            field("Conffiles", &conffiles);
            conffiles_done = true;
        }
        field(k, v);
    }
    if !conffiles_done {
        field("Conffiles", &conffiles);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::super::deb822::parse_one as parse_paragraph;
    use super::super::testutil::*;
    use super::*;

    fn pkg(control: &str, paths: &[&str], conffiles: &[&str]) -> Installed {
        let deb = parse_paragraph(control).unwrap();
        let package = deb.get("Package").unwrap().to_string();
        Installed {
            info_name: package.clone(),
            package,
            deb,
            conffiles: conffiles.iter().map(|s| s.to_string()).collect(),
            md5sums: "d41d8cd98f00b204e9800998ecf8427e  usr/bin/b\n".into(),
            paths: paths.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn status_and_info_files() {
        let mut t = tree(&[("etc/b.conf", "hello\n")]);
        let b = pkg(
            "Package: b\nVersion: 2\nArchitecture: arm64\nDescription: bee\n long\n",
            &["/.", "/etc", "/etc/b.conf"],
            &["/etc/b.conf"],
        );
        let a = pkg("Package: a\nVersion: 1\nArchitecture: all\n", &["/."], &[]);
        run(&mut t, &[b, a], 0).unwrap();
        assert_eq!(
            text(&t, "var/lib/dpkg/status"),
            "Package: a\nStatus: install ok installed\nVersion: 1\nArchitecture: all\n\n\
             Package: b\nStatus: install ok installed\nVersion: 2\nArchitecture: arm64\n\
             Conffiles:\n /etc/b.conf b1946ac92492d2347c6235b4d2611184\nDescription: bee\n long\n\n"
        );
        assert_eq!(
            text(&t, "var/lib/dpkg/info/b.list"),
            "/.\n/etc\n/etc/b.conf\n"
        );
        assert_eq!(text(&t, "var/lib/dpkg/info/b.conffiles"), "/etc/b.conf\n");
        assert!(t.contains("var/lib/dpkg/info/a.md5sums"));
        assert!(t.contains("var/lib/dpkg/updates"));
    }
}
