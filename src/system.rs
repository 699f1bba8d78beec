//! The system tree: the rootfs with the board's overlays, usr-merged, its
//! `/etc` moved to `/usr/share/factory/etc`, then split into the system image
//! (`/usr`, read-only squashfs) and the data partition's initial content (the
//! rest: `/var`, `/root`, `/home`, mount points and the `/bin`-style links).

use anyhow::{anyhow, Context, Result};

use crate::board::{Board, DataDir};
use crate::tree::{self, transform, Tree};

/// Overlays, usr-merge and factory /etc; then splits the tree into the
/// system image (/usr) and the data partition's initial content (the rest).
pub fn compose(data: &DataDir, board: &Board, mut t: Tree, epoch: u64) -> Result<(Tree, Tree)> {
    for name in &board.overlays {
        let overlay = data.overlay(name)?;
        transform::lay_overlay(&mut t, &overlay.tree, &overlay.origin, epoch)
            .with_context(|| format!("applying {}", overlay.origin))?;
    }
    transform::usr_merge(&mut t).context("usr-merge")?;
    transform::move_etc_to_factory(&mut t).context("moving /etc to /usr/share/factory/etc")?;
    let usr = t
        .take_subtree("usr")
        .ok_or_else(|| anyhow!("the rootfs has no /usr directory"))?;
    // The data partition is `/` on the node: it keeps the rootfs's /var, /root,
    // /home, ... and has mount points for what the initramfs mounts over it.
    // The kernel and friends in /boot live on the boot partition instead.
    if let Some(boot) = t.get("boot").cloned() {
        t.remove("boot");
        t.insert("boot", tree::Entry::dir(boot.meta))?;
    }
    // The root directory is the builder's (it adds the mount points and links
    // below): it gets the build's time, so an archive's own entry for `./`
    // (clamped to the epoch) and none at all (time 0) give the same image.
    if let Some(root) = t.get_mut("") {
        root.meta.mtime = epoch;
    }
    let dir = tree::Meta::root(0o755, epoch);
    for mount_point in ["usr", "etc", "boot", "proc", "sys", "dev", "run", "tmp"] {
        if !t.contains(mount_point) {
            let mut meta = dir;
            if mount_point == "tmp" {
                meta.mode = 0o1777;
            }
            t.insert(mount_point, tree::Entry::dir(meta))?;
        }
    }
    for (link, target) in [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")] {
        t.insert(
            link,
            tree::Entry::symlink(tree::Meta::root(0o777, epoch), target),
        )?;
    }
    Ok((usr, t))
}

/// Where a node finds the public key its update bundles must be signed with.
pub const UPDATE_KEY: &str = "share/nodeimg/update.pub";

/// Puts what a node needs to accept updates into the system image (/usr):
/// the update signing key's public half and the release file.
pub fn add_update_info(
    usr: &mut Tree,
    key: &crate::update::sign::PublicKey,
    release: &crate::update::release::Release,
    epoch: u64,
) -> Result<()> {
    for (path, bytes) in [
        (UPDATE_KEY, key.to_file_text().into_bytes()),
        (crate::update::release::PATH, release.to_json()?),
    ] {
        usr.insert_with_parents(
            path,
            tree::Entry::file(tree::Meta::root(0o644, epoch), bytes),
            tree::Meta::root(0o755, epoch),
        )
        .with_context(|| format!("adding /usr/{path}"))?;
    }
    Ok(())
}
