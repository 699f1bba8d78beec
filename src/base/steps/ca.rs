//! ca-certificates: `/etc/ssl/certs/ca-certificates.crt`, the bundle
//! `update-ca-certificates` writes, from every certificate under
//! `/usr/share/ca-certificates/` (sorted by path, as its default
//! `/etc/ca-certificates.conf` lists them). Also writes that conf file. The
//! per-certificate hashed links are not made (OpenSSL reads the bundle).

use anyhow::{bail, Result};

use super::{read, write};
use crate::tree::{Kind, Tree};

pub fn run(tree: &mut Tree, mtime: u64) -> Result<()> {
    let certs: Vec<String> = tree
        .iter()
        .filter(|(k, e)| {
            k.starts_with("usr/share/ca-certificates/")
                && k.ends_with(".crt")
                && matches!(e.kind, Kind::File(_))
        })
        .map(|(k, _)| k.clone())
        .collect();
    if certs.is_empty() {
        return Ok(());
    }
    let mut bundle = Vec::new();
    let mut conf = String::from(
        "# Written by nodeimg as update-ca-certificates' default: every certificate enabled.\n",
    );
    for path in &certs {
        let Some(pem) = read(tree, path)? else {
            continue;
        };
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            bail!("/{path} is not a PEM certificate");
        }
        bundle.extend_from_slice(&pem);
        if !pem.ends_with(b"\n") {
            bundle.push(b'\n');
        }
        conf.push_str(&path["usr/share/ca-certificates/".len()..]);
        conf.push('\n');
    }
    write(
        tree,
        "etc/ssl/certs/ca-certificates.crt",
        bundle,
        0o644,
        mtime,
    )?;
    if !tree.contains("etc/ca-certificates.conf") {
        write(
            tree,
            "etc/ca-certificates.conf",
            conf.into_bytes(),
            0o644,
            mtime,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn bundle_is_the_sorted_concatenation() {
        let a = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n";
        let b = "-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----";
        let mut t = tree(&[
            ("usr/share/ca-certificates/mozilla/B.crt", b),
            ("usr/share/ca-certificates/mozilla/A.crt", a),
            ("usr/share/ca-certificates/mozilla/README", "x"),
        ]);
        run(&mut t, 0).unwrap();
        assert_eq!(
            text(&t, "etc/ssl/certs/ca-certificates.crt"),
            format!("{a}{b}\n")
        );
        assert!(text(&t, "etc/ca-certificates.conf").ends_with("mozilla/A.crt\nmozilla/B.crt\n"));
    }

    #[test]
    fn a_non_pem_file_is_an_error() {
        let mut t = tree(&[("usr/share/ca-certificates/x.crt", "garbage")]);
        assert!(run(&mut t, 0).is_err());
        let mut empty = tree(&[]);
        run(&mut empty, 0).unwrap();
        assert!(!empty.contains("etc/ssl/certs/ca-certificates.crt"));
    }
}
