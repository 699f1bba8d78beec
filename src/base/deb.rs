//! Reading a `.deb`: an ar archive holding `debian-binary` ("2.0"), then
//! `control.tar[.gz|.xz|.zst]`, then `data.tar[.gz|.xz|.zst]`.
//!
//! The data archive goes through the rootfs tar reader (`tree::reader`), so a
//! package's files get the same checks (no escapes, no writing through
//! symlinks) and keep owners, modes, devices, setuid bits and hard links as a
//! rootfs tarball's do; their bytes go to the caller's spill file, never into
//! memory. The control archive is read the same way; its `control`,
//! `conffiles` and `md5sums` are kept for the dpkg database.
//! The `control` file is read with the base's deb822 parser (`deb822::parse_one`).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use super::deb822::{self, Paragraph};
use crate::tree::reader::{read_tar_spilled, Spill};
use crate::tree::{Kind, Tree};

/// A package read from its `.deb`.
#[derive(Debug)]
pub struct Deb {
    /// The `control` file.
    pub control: Paragraph,
    /// Package name, version and architecture (from `control`, required).
    pub package: String,
    pub version: String,
    pub architecture: String,
    /// Paths of `conffiles` ("/etc/..."), in their order.
    pub conffiles: Vec<String>,
    /// The `md5sums` file as shipped (empty if the package has none).
    pub md5sums: String,
    /// The package's files (`data.tar`), contents in the spill file.
    pub files: Tree,
}

impl Deb {
    /// The name dpkg's database uses for this package's files in
    /// `/var/lib/dpkg/info`: `name:arch` for `Multi-Arch: same` packages.
    pub fn info_name(&self) -> String {
        if self.control.get("Multi-Arch") == Some("same") {
            format!("{}:{}", self.package, self.architecture)
        } else {
            self.package.clone()
        }
    }
}

/// Reads the `.deb` at `path`; file contents are appended to `spill`.
pub fn read_deb(path: &Path, spill: &mut Spill) -> Result<Deb> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    read_deb_from(BufReader::with_capacity(1 << 16, file), spill)
        .with_context(|| format!("reading package {}", path.display()))
}

/// Reads a `.deb` from a stream (see [`read_deb`]).
pub fn read_deb_from<R: Read>(input: R, spill: &mut Spill) -> Result<Deb> {
    let mut ar = ar::Archive::new(input);
    let mut members = 0;
    let mut control_tree = None;
    let mut data_tree = None;
    while let Some(member) = ar.next_entry() {
        let mut member = member.map_err(|e| anyhow!("not a valid ar archive: {e}"))?;
        let name = String::from_utf8_lossy(member.header().identifier()).into_owned();
        members += 1;
        match (members, name.as_str()) {
            (1, "debian-binary") => {
                let mut v = Vec::new();
                (&mut member)
                    .take(64)
                    .read_to_end(&mut v)
                    .context("reading debian-binary")?;
                let v = String::from_utf8_lossy(&v);
                if !v.starts_with("2.") {
                    bail!("unsupported .deb format version {:?}", v.trim());
                }
            }
            (1, other) => bail!("not a .deb: first member is {other:?}, not debian-binary"),
            (_, n) if is_tar_member(n, "control.tar") => {
                if control_tree.is_some() {
                    bail!("two control archives");
                }
                control_tree = Some(read_tar_spilled(&mut member, spill).context(n.to_string())?);
            }
            (_, n) if is_tar_member(n, "data.tar") => {
                if control_tree.is_none() {
                    bail!("{n} comes before the control archive");
                }
                if data_tree.is_some() {
                    bail!("two data archives");
                }
                data_tree = Some(read_tar_spilled(&mut member, spill).context(n.to_string())?);
            }
            // dpkg ignores members starting with '_' (signatures and the like).
            (_, n) if n.starts_with('_') => {}
            (_, n) => bail!("unexpected member {n:?}"),
        }
    }
    let control_tree = control_tree.ok_or_else(|| anyhow!("no control archive"))?;
    let files = data_tree.ok_or_else(|| anyhow!("no data archive"))?;
    let control_text = member_text(&control_tree, "control")?
        .ok_or_else(|| anyhow!("the control archive has no control file"))?;
    let control = deb822::parse_one(&control_text).context("control file")?;
    let field = |name: &str| -> Result<String> {
        control
            .get(name)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("control file has no {name} field"))
    };
    let package = field("Package")?;
    let version = field("Version")?;
    let architecture = field("Architecture")?;
    let conffiles = member_text(&control_tree, "conffiles")?
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        // dpkg ≥ 1.20 allows a "remove-on-upgrade" flag before the path.
        .map(|l| l.rsplit(' ').next().unwrap_or(l).to_string())
        .collect();
    let md5sums = member_text(&control_tree, "md5sums")?.unwrap_or_default();
    Ok(Deb {
        control,
        package,
        version,
        architecture,
        conffiles,
        md5sums,
        files,
    })
}

fn is_tar_member(name: &str, stem: &str) -> bool {
    matches!(name.strip_prefix(stem), Some("" | ".gz" | ".xz" | ".zst"))
}

/// A text file of the control archive, if present.
fn member_text(control: &Tree, name: &str) -> Result<Option<String>> {
    match control.get(name) {
        None => Ok(None),
        Some(e) => match &e.kind {
            Kind::File(d) => {
                if d.len() > 64 << 20 {
                    bail!("control member {name} is too large");
                }
                let bytes = d.to_vec().with_context(|| format!("reading {name}"))?;
                String::from_utf8(bytes)
                    .map(Some)
                    .map_err(|_| anyhow!("control member {name} is not UTF-8"))
            }
            _ => bail!("control member {name} is not a regular file"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_member_names() {
        assert!(is_tar_member("data.tar.xz", "data.tar"));
        assert!(is_tar_member("data.tar", "data.tar"));
        assert!(!is_tar_member("data.tar.bz2", "data.tar"));
        assert!(!is_tar_member("data.tarx", "data.tar"));
    }
}
