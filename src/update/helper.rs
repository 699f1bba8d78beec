//! The node-side update helper is nodeimg itself, built for the board's
//! architecture and shipped in the system image as `/usr/bin/nodeimg`, with a
//! systemd unit that runs `nodeimg update commit` at every boot (see
//! `node.rs`). The build finds that binary here: `--node-helper PATH`, else
//! `$NODEIMG_NODE_HELPER`, else this executable when it already runs on the
//! board's architecture, else cargo's cross-build beside this executable
//! (`target/aarch64-unknown-linux-gnu/release/nodeimg` next to
//! `target/release/nodeimg`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::elf;
use crate::tree::{content::Content, Entry, Kind, Meta, Tree};

/// Where the helper goes in the rootfs.
pub const PATH: &str = "usr/bin/nodeimg";
/// The unit that commits (or rolls back) a trial boot.
pub const COMMIT_UNIT: &str = "usr/lib/systemd/system/nodeimg-update-commit.service";
const COMMIT_UNIT_TEXT: &str = "[Unit]
Description=nodeimg: commit a trial boot of an updated system, or roll it back
After=multi-user.target k3s.service
ConditionPathExists=/usr/share/nodeimg/release.json

[Service]
Type=oneshot
ExecStart=/usr/bin/nodeimg update commit
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
";

/// busybox init runs the commit once at every boot, after sysinit.
const COMMIT_INITTAB: &str = "::once:/usr/bin/nodeimg update commit";

/// The rust target triple and ELF machine of a board architecture.
fn target_of(arch: &str) -> Result<(&'static str, u16)> {
    match arch {
        "arm64" => Ok(("aarch64-unknown-linux-gnu", elf::EM_AARCH64)),
        other => bail!("no node-side helper for architecture {other}"),
    }
}

/// The helper binary for `arch` (see the module comment for the order).
pub fn find(explicit: Option<&Path>, arch: &str) -> Result<PathBuf> {
    let (triple, machine) = target_of(arch)?;
    let candidate = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("NODEIMG_NODE_HELPER").map(PathBuf::from));
    let path = match candidate {
        Some(p) => p,
        None => {
            let exe = std::env::current_exe().context("finding this executable")?;
            let sibling = exe
                .parent()
                .and_then(Path::parent)
                .map(|t| t.join(triple).join("release/nodeimg"));
            if std::env::consts::ARCH == triple.split('-').next().unwrap_or_default() {
                exe
            } else if let Some(s) = sibling.filter(|s| s.is_file()) {
                s
            } else {
                bail!(
                    "an image built with --sign-key carries the node-side update helper, nodeimg for {arch}, \
                     and none was found: build it with `cargo build --release --target {triple}` \
                     (docs/updates.md) or give it with --node-helper"
                );
            }
        }
    };
    // The whole program: its dynamic section may be anywhere in it.
    let head = std::fs::read(&path)
        .with_context(|| format!("reading the node helper {}", path.display()))?;
    let info = elf::parse(&head)
        .map_err(|e| anyhow::anyhow!("the node helper {} is not a program: {e}", path.display()))?;
    if info.machine != machine || !info.is_64 {
        bail!(
            "the node helper {} is not built for {arch} (ELF machine {}); build it with --target {triple}",
            path.display(),
            info.machine
        );
    }
    Ok(path)
}

/// Installs the helper at /usr/bin/nodeimg and what runs `nodeimg update
/// commit` at every boot (a systemd unit, or an /etc/inittab line for busybox
/// init; nothing for OpenRC yet); checks that the rootfs has the libraries
/// the helper needs.
pub fn install(rootfs: &mut Tree, helper: &Path, mtime: u64) -> Result<()> {
    let len = std::fs::metadata(helper)
        .with_context(|| format!("reading {}", helper.display()))?
        .len();
    let dir = Meta::root(0o755, mtime);
    rootfs.remove(PATH);
    rootfs.insert_with_parents(
        PATH,
        Entry {
            meta: Meta::root(0o755, mtime),
            kind: Kind::File(std::sync::Arc::new(Content::from_path(helper, len))),
        },
        dir,
    )?;
    elf::closure(rootfs, &format!("/{PATH}"))
        .context("the rootfs cannot run the node-side update helper")?;
    use crate::service::InitSystem;
    let init = crate::service::detect(rootfs);
    if init == Some(InitSystem::BusyboxInit) {
        crate::service::append_inittab(rootfs, "update commit", COMMIT_INITTAB)?;
    }
    if init == Some(InitSystem::Systemd) {
        rootfs.insert_with_parents(
            COMMIT_UNIT,
            Entry::file(Meta::root(0o644, mtime), COMMIT_UNIT_TEXT.into()),
            dir,
        )?;
        rootfs.insert_with_parents(
            "usr/lib/systemd/system/multi-user.target.wants/nodeimg-update-commit.service",
            Entry::symlink(Meta::root(0o777, mtime), "../nodeimg-update-commit.service"),
            dir,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_helper_for_another_architecture_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        // This test binary is x86_64 (or whatever the host is), not arm64.
        if std::env::consts::ARCH != "aarch64" {
            let e = format!("{:#}", find(Some(&exe), "arm64").unwrap_err());
            assert!(e.contains("is not built for arm64"), "{e}");
        }
        let text = dir.path().join("script");
        std::fs::write(&text, "#!/bin/sh\n").unwrap();
        let e = format!("{:#}", find(Some(&text), "arm64").unwrap_err());
        assert!(e.contains("is not a program"), "{e}");
        let e = format!("{:#}", find(Some(&text), "riscv64").unwrap_err());
        assert!(
            e.contains("no node-side helper for architecture riscv64"),
            "{e}"
        );
    }
}
