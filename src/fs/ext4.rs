//! The ext4 data partition: `mke2fs` makes the empty filesystem, `debugfs -w`
//! fills it from a command script. Neither needs root, `mount` or loop devices,
//! and ownership, modes, times and device nodes are set explicitly from the
//! tree (`set_inode_field`), so they do not depend on who runs the build.
//!
//! Reproducibility: the UUID and directory hash seed come from the caller,
//! `E2FSPROGS_FAKE_TIME` (honoured by both tools in e2fsprogs 1.47) pins the
//! superblock times, the root and lost+found times and the times of new
//! inodes, and a private `mke2fs.conf` pins the feature set so that the host's
//! `/etc/mke2fs.conf` does not change the output. e2fsprogs treats a fake time
//! of 0 as unset (and uses the clock), so an `mtime` of 0 is passed as 1 for
//! the filesystem-level times; inode times are still exactly the tree's.
//!
//! Hard links (files sharing one `Data`) become real hard links: the first name
//! is written, the others are linked to it (`ln`), and `links_count` is set.
//! All names of an inode get the metadata of the first name in tree order.
//! `debugfs`'s `ln` does not grow a full directory, so each extra name first
//! takes its slot as a placeholder FIFO that is removed again (`mknod`, which
//! does grow the directory, then `rm`); the freed inode is reused by the next
//! allocation.
//!
//! Sockets are made as FIFOs (`debugfs` cannot make sockets), then get the
//! socket type through `sif mode` and a directory entry of the socket type by
//! being linked to a scratch name and back (see `plan`). Names containing a
//! newline, carriage return or NUL cannot be expressed in a `debugfs` script
//! and are refused, as are paths so long that a script line would pass 8000
//! bytes.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

#[cfg(test)]
use crate::disk::layout::MIB;
use crate::disk::layout::{mib, mib1};
use crate::ids::uuid_to_string;
use crate::tree::links::HardLinks;
use crate::tree::{file_name, Data, Entry, Kind, Tree};

/// Options of the ext4 filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ext4Options {
    /// Filesystem UUID, bytes in the order `uuid_to_string` prints them.
    pub uuid: [u8; 16],
    /// Seed of the directory-index hash (`-E hash_seed`).
    pub hash_seed: [u8; 16],
    /// Volume label, at most 16 bytes.
    pub label: String,
    /// The time written into the superblock and given to new inodes
    /// (usually SOURCE_DATE_EPOCH).
    pub mtime: u64,
}

const BLOCK: u64 = 4096;
/// Longest line `debugfs` reads from a script (BUFSIZ); longer lines are split
/// and their tail is run as a command of its own.
const MAX_LINE: usize = 8000;
/// A directory made and removed again while fixing up sockets.
const SCRATCH: &str = ".nodeimg-socket-scratch";

/// Feature set of the filesystem, independent of the host's mke2fs.conf. Same
/// as Debian bookworm's ext4 defaults: no `orphan_file` or `metadata_csum_seed`,
/// so older kernels and e2fsprogs can still check and grow it.
const MKE2FS_CONF: &str = "\
[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
\tdefault = {
\t\tblocksize = 4096
\t}
";

/// Quotes an argument for a `debugfs` script: inside double quotes a `"` is
/// written twice; everything else but line ends is taken literally.
fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Runs a command, capturing its output; fails with its stderr if it fails.
fn run(cmd: &mut Command, what: &str) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("running {what} ({:?})", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

/// Free blocks and free inodes of a fresh filesystem, from `dumpe2fs -h`.
fn free_space(image: &Path) -> Result<(u64, u64)> {
    let out = run(
        Command::new("dumpe2fs")
            .arg("-h")
            .arg(image)
            .env("LC_ALL", "C"),
        "dumpe2fs -h",
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("dumpe2fs -h printed no {name:?}"))
    };
    Ok((field("Free blocks:")?, field("Free inodes:")?))
}

/// Bytes a directory entry for `name` takes (8-byte header, name padded to 4).
fn dirent_bytes(name: &str) -> u64 {
    (8 + name.len() as u64).div_ceil(4) * 4
}

/// What the tree will take beyond the empty filesystem: (blocks, inodes).
/// An estimate, but not a loose one: data blocks, extent index blocks of very
/// large files, directory blocks (12 bytes of each go to the checksum tail),
/// and blocks of symlinks too long to live in the inode.
fn needed(tree: &Tree) -> (u64, u64) {
    let mut blocks = 0;
    let mut inodes = 0;
    let links = HardLinks::of(tree);
    for (path, e) in tree.iter() {
        match &e.kind {
            Kind::Dir => {
                let bytes: u64 = 24
                    + tree
                        .children(path)
                        .map(|(k, _)| dirent_bytes(file_name(k)))
                        .sum::<u64>();
                let b = bytes.div_ceil(BLOCK - 12);
                if path.is_empty() {
                    // The root already has one block (and lost+found its own).
                    blocks += b.saturating_sub(1);
                } else if path != "lost+found" {
                    blocks += b;
                    inodes += 1;
                }
            }
            Kind::File(d) => {
                if links.is_first(path, d) {
                    inodes += 1;
                    let b = d.len().div_ceil(BLOCK);
                    // An extent maps at most 32768 blocks; an inode holds 4.
                    let extents = b.div_ceil(32768);
                    blocks += b + if extents > 4 {
                        extents.div_ceil(340)
                    } else {
                        0
                    };
                }
            }
            Kind::Symlink(t) => {
                inodes += 1;
                if t.len() >= 60 {
                    blocks += 1;
                }
            }
            _ => inodes += 1,
        }
    }
    (blocks, inodes)
}

/// Checks a name can be written in a `debugfs` script.
fn check_name(path: &str, name: &str) -> Result<()> {
    if name.contains(['\n', '\r', '\0']) {
        bail!("/{path}: names with a line break or NUL cannot be written to ext4 here");
    }
    if name.len() > 255 {
        bail!("/{path}: name is longer than 255 bytes");
    }
    Ok(())
}

/// The `sif` lines that give an inode the tree's metadata.
fn sif_lines(script: &mut Vec<String>, target: &str, e: &Entry, links: Option<u32>) {
    let t = q(target);
    script.push(format!("sif {t} mode 0{:o}", e.st_mode()));
    script.push(format!("sif {t} uid {}", e.meta.uid));
    script.push(format!("sif {t} gid {}", e.meta.gid));
    for field in ["atime", "mtime", "ctime", "crtime"] {
        script.push(format!("sif {t} {field} @{}", e.meta.mtime));
    }
    if let Some(n) = links {
        script.push(format!("sif {t} links_count {n}"));
    }
}

/// `mknod` for a device. `debugfs` refuses numbers above 65535, while Linux
/// minors go up to 2^20 - 1: such a node is made as 0:0 and then given the
/// kernel's "new" encoding in `i_block[1]` directly.
fn device_lines(
    script: &mut Vec<String>,
    path: &str,
    qn: &str,
    kind: char,
    major: u32,
    minor: u32,
) -> Result<()> {
    if major > 0xfff || minor > 0xf_ffff {
        bail!("/{path}: device number {major}:{minor} does not fit Linux's 12-bit major, 20-bit minor");
    }
    if major <= 0xffff && minor <= 0xffff {
        script.push(format!("mknod {qn} {kind} {major} {minor}"));
    } else {
        let enc = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
        script.push(format!("mknod {qn} {kind} 0 0"));
        let name = qn[1..qn.len() - 1].replace("\"\"", "\"");
        script.push(format!("sif {} block[1] {enc}", q(&format!("./{name}"))));
    }
    Ok(())
}

/// `cd` from anywhere to directory `dir` (a tree path), one component at a
/// time so lines stay short. "./" keeps a name like "<12>" from being taken
/// as an inode number.
fn cd_lines(script: &mut Vec<String>, dir: &str) {
    script.push("cd \"/\"".to_string());
    if !dir.is_empty() {
        for c in dir.split('/') {
            script.push(format!("cd {}", q(&format!("./{c}"))));
        }
    }
}

/// A rootfs file's own path, when `debugfs write` can read it from there:
/// absolute, UTF-8, and without characters a script line cannot hold.
fn direct_source(d: &Data) -> Option<PathBuf> {
    let p = std::path::absolute(d.path()?).ok()?;
    let s = p.to_str()?;
    (!s.contains(['\n', '\r', '\0'])).then_some(p)
}

/// A file's data and where `debugfs write` reads it: a staged copy, or the
/// rootfs file itself (see `direct_source`), which must never be written to.
struct Staged {
    src: PathBuf,
    data: Data,
    direct: bool,
}

/// The debugfs script for `tree`, and the files to stage: file contents are
/// written to `staging/<n>` and copied in from there, except rootfs files on
/// disk, which are copied in from where they are.
fn plan(tree: &Tree, staging: &Path) -> Result<(Vec<String>, Vec<Staged>)> {
    let mut script = Vec::new();
    let mut staged: Vec<Staged> = Vec::new();
    let links = HardLinks::of(tree);

    let dirs: Vec<&String> = tree
        .iter()
        .filter(|(_, e)| e.kind == Kind::Dir)
        .map(|(k, _)| k)
        .collect();

    // Pass 1: create everything, directory by directory (parents come first
    // in tree order, so each directory exists before its children are made).
    for dir in &dirs {
        cd_lines(&mut script, dir);
        for (path, e) in tree.children(dir) {
            let name = file_name(path);
            check_name(path, name)?;
            let qn = q(name);
            if dir.is_empty() && name == "lost+found" {
                if e.kind == Kind::Dir {
                    continue; // mke2fs made it; pass 2 sets its metadata
                }
                script.push("rmdir \"./lost+found\"".to_string());
            }
            match &e.kind {
                Kind::Dir => script.push(format!("mkdir {qn}")),
                Kind::File(d) => {
                    let first = links.first(d).unwrap_or(path.as_str());
                    if first == path {
                        // A rootfs file on disk is written from where it is;
                        // other contents are staged to a file first.
                        let (src, direct) = match direct_source(d) {
                            Some(p) => (p, true),
                            None => (staging.join(staged.len().to_string()), false),
                        };
                        let src_str = src
                            .to_str()
                            .context("the staging directory's path is not UTF-8")?
                            .to_string();
                        staged.push(Staged {
                            src,
                            data: d.clone(),
                            direct,
                        });
                        script.push(format!("write {} {qn}", q(&src_str)));
                    } else {
                        script.push(format!("mknod {qn} p"));
                        script.push(format!("rm {}", q(&format!("./{name}"))));
                        script.push(format!("ln {} {qn}", q(&format!("/{first}"))));
                    }
                }
                Kind::Symlink(target) => {
                    if target.is_empty() || target.len() >= BLOCK as usize {
                        bail!("/{path}: symlink target must be 1 to 4095 bytes long");
                    }
                    check_name(path, target)?;
                    script.push(format!("symlink {qn} {}", q(target)));
                }
                Kind::CharDevice { major, minor } => {
                    device_lines(&mut script, path, &qn, 'c', *major, *minor)?
                }
                Kind::BlockDevice { major, minor } => {
                    device_lines(&mut script, path, &qn, 'b', *major, *minor)?
                }
                Kind::Fifo | Kind::Socket => script.push(format!("mknod {qn} p")),
            }
        }
    }

    // Pass 1b: sockets were made as FIFOs, so their directory entries say
    // FIFO. Give each inode the socket type, link it to a scratch name (`ln`
    // takes the entry type from the inode), drop the old entry and link it
    // back under its own name, into the slot just freed.
    let sockets: Vec<&String> = tree
        .iter()
        .filter(|(_, e)| e.kind == Kind::Socket)
        .map(|(k, _)| k)
        .collect();
    if !sockets.is_empty() {
        if tree.contains(SCRATCH) {
            bail!("/{SCRATCH} is reserved by the ext4 writer");
        }
        let scratch = q(&format!("/{SCRATCH}"));
        let tmp = q(&format!("/{SCRATCH}/s"));
        script.push("cd \"/\"".to_string());
        script.push(format!("mkdir {scratch}"));
        for path in sockets {
            let p = q(&format!("/{path}"));
            let mode = tree.get(path).map(|e| e.st_mode()).unwrap_or(0o140755);
            script.push(format!("sif {p} mode 0{mode:o}"));
            script.push(format!("ln {p} {tmp}"));
            script.push(format!("unlink {p}"));
            script.push(format!("ln {tmp} {p}"));
            script.push(format!("unlink {tmp}"));
        }
        script.push(format!("rmdir {scratch}"));
    }

    // Pass 2: metadata, after all children exist (so nothing later touches it).
    for dir in &dirs {
        cd_lines(&mut script, dir);
        for (path, e) in tree.children(dir) {
            let name = file_name(path);
            let count = match &e.kind {
                Kind::File(d) => {
                    if !links.is_first(path, d) {
                        continue; // same inode as the first name
                    }
                    let n = links.count(d);
                    (n > 1).then_some(n)
                }
                _ => None,
            };
            sif_lines(&mut script, &format!("./{name}"), e, count);
        }
    }
    if let Some(root) = tree.get("") {
        script.push("cd \"/\"".to_string());
        sif_lines(&mut script, "/", root, None);
    }

    if let Some(long) = script.iter().find(|l| l.len() > MAX_LINE) {
        let start: String = long.chars().take(200).collect();
        bail!("a path is too long for debugfs: {start}...");
    }
    Ok((script, staged))
}

/// Writes `out`, exactly `size` bytes (sparse), holding an ext4 filesystem with
/// the contents and metadata of `tree`.
pub fn write(out: &Path, size: u64, opts: &Ext4Options, tree: &Tree) -> Result<()> {
    let result = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .and_then(|f| f.set_len(size))
        .with_context(|| format!("creating {} of {size} bytes", out.display()))
        .and_then(|()| write_inner(out, 0, size, opts, tree));
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result.with_context(|| format!("writing ext4 filesystem {}", out.display()))
}

/// Writes the ext4 filesystem of `tree` into the existing file `image` (a
/// disk image), in the `size` bytes from `offset` on, leaving the rest of the
/// file alone. No temporary copy: e2fsprogs works on the region in place
/// (`mke2fs -E offset=`, `debugfs image?offset=`).
pub fn write_into(
    image: &Path,
    offset: u64,
    size: u64,
    opts: &Ext4Options,
    tree: &Tree,
) -> Result<()> {
    write_inner(image, offset, size, opts, tree).with_context(|| {
        format!(
            "writing an ext4 filesystem into {} at offset {offset}",
            image.display()
        )
    })
}

fn write_inner(out: &Path, offset: u64, size: u64, opts: &Ext4Options, tree: &Tree) -> Result<()> {
    if opts.label.len() > 16 {
        bail!(
            "ext4 label {:?} is {} bytes long; at most 16 are allowed",
            opts.label,
            opts.label.len()
        );
    }
    if opts.label.contains(['\0', '\n']) {
        bail!("ext4 label {:?} contains a NUL or line break", opts.label);
    }
    if size % BLOCK != 0 {
        bail!("an ext4 filesystem of {size} bytes is not a whole number of 4096-byte blocks");
    }
    let end = offset
        .checked_add(size)
        .with_context(|| format!("offset {offset} + size {size} overflows"))?;
    let len = std::fs::metadata(out)
        .with_context(|| format!("reading {}", out.display()))?
        .len();
    if len < end {
        bail!(
            "{} is {len} bytes, too short for {size} bytes at offset {offset}",
            out.display()
        );
    }
    let out_str = out
        .to_str()
        .with_context(|| format!("{}: the path is not UTF-8", out.display()))?;
    // e2fsprogs reads I/O options after a '?' in the device name.
    if out_str.contains('?') {
        bail!("{out_str}: e2fsprogs cannot take a path containing '?'");
    }
    let device = if offset == 0 {
        out_str.to_string()
    } else {
        format!("{out_str}?offset={offset}")
    };
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Staging sits next to the output, not in /tmp, since it holds a copy of
    // all file data.
    let staging = tempfile::Builder::new()
        .prefix(".ext4-staging-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a staging directory in {}", parent.display()))?;
    let staging_path = staging
        .path()
        .canonicalize()
        .context("resolving the staging directory")?;

    let (script, staged) = plan(tree, &staging_path)?;

    let conf = staging_path.join("mke2fs.conf");
    std::fs::write(&conf, MKE2FS_CONF).context("writing mke2fs.conf")?;
    // 0 means "unset" to e2fsprogs, which would then use the clock.
    let fake_time = opts.mtime.max(1).to_string();
    let root = tree.root_meta();
    let ext_opts = format!(
        // Lazy init: the inode tables and the journal are not zeroed here (the
        // kernel zeroes the inode tables in the background on first mount;
        // the journal is valid without it), so the time and the space the
        // filesystem takes do not grow with its size.
        "root_owner={}:{},hash_seed={},lazy_itable_init=1,lazy_journal_init=1,nodiscard,offset={offset}",
        root.uid,
        root.gid,
        uuid_to_string(&opts.hash_seed)
    );
    run(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-T", "default", "-b", "4096"])
            .arg("-U")
            .arg(uuid_to_string(&opts.uuid))
            .arg("-L")
            .arg(&opts.label)
            .arg("-E")
            .arg(&ext_opts)
            .arg(out)
            .arg((size / BLOCK).to_string())
            .env("MKE2FS_CONFIG", &conf)
            .env("E2FSPROGS_FAKE_TIME", &fake_time)
            .env("LC_ALL", "C"),
        "mke2fs",
    )?;

    let (free_blocks, free_inodes) = free_space(Path::new(&device))?;
    let (need_blocks, need_inodes) = needed(tree);
    if need_blocks > free_blocks || need_inodes > free_inodes {
        bail!(
            "the files need {} and {} inodes but the {} ext4 filesystem has {} and {} inodes free",
            mib1(need_blocks * BLOCK),
            need_inodes,
            mib(size),
            mib1(free_blocks * BLOCK),
            free_inodes
        );
    }

    for Staged {
        src: path,
        data,
        direct,
    } in &staged
    {
        if *direct {
            // Read by debugfs from where it is: only check it is still the
            // file the tree describes.
            let len = std::fs::metadata(path)
                .with_context(|| format!("reading {}", path.display()))?
                .len();
            if len != data.len() {
                bail!(
                    "{} changed during the build ({len} bytes, was {})",
                    path.display(),
                    data.len()
                );
            }
            continue;
        }
        let mut src = data
            .reader()
            .with_context(|| format!("reading the data of {}", path.display()))?;
        let mut dst = std::fs::File::create(path)
            .with_context(|| format!("staging file data in {}", path.display()))?;
        std::io::copy(&mut src, &mut dst)
            .with_context(|| format!("staging file data in {}", path.display()))?;
    }
    let script_path = staging_path.join("debugfs.script");
    {
        let mut f = std::fs::File::create(&script_path).context("writing the debugfs script")?;
        for line in &script {
            writeln!(f, "{line}").context("writing the debugfs script")?;
        }
    }

    let result = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(&device)
        .env("E2FSPROGS_FAKE_TIME", &fake_time)
        .env("LC_ALL", "C")
        .output()
        .context("running debugfs")?;
    // debugfs exits 0 after most failed commands: every line on stderr but
    // its version banner is an error.
    let stderr = String::from_utf8_lossy(&result.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !result.status.success() || !errors.is_empty() {
        let mut msg = format!("debugfs failed ({})", result.status);
        for l in errors.iter().take(20) {
            msg.push_str("\n  ");
            msg.push_str(l);
        }
        if errors.len() > 20 {
            msg.push_str(&format!("\n  ... and {} more", errors.len() - 20));
        }
        let full = errors.iter().any(|l| {
            l.contains("Could not allocate")
                || l.contains("No free space")
                || l.contains("No free inodes")
        });
        if full {
            msg.push_str(&format!(
                "\nthe files need about {} and {} inodes; the {} ext4 filesystem had {} and {} inodes free",
                mib1(need_blocks * BLOCK),
                need_inodes,
                mib(size),
                mib1(free_blocks * BLOCK),
                free_inodes
            ));
        }
        bail!(msg);
    }

    let after = std::fs::metadata(out)
        .with_context(|| format!("reading {}", out.display()))?
        .len();
    if after != len {
        bail!(
            "{} is {after} bytes after mke2fs and debugfs, not {len}",
            out.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::test_noise as noise;
    use crate::tree::Meta;
    use std::sync::Arc;

    const T: u64 = 1_700_000_000; // Tue Nov 14 22:13:20 2023 UTC

    fn opts(mtime: u64) -> Ext4Options {
        Ext4Options {
            uuid: [
                0x5e, 0x1f, 0x0a, 0x11, 0x22, 0x33, 0x44, 0x55, 0x86, 0x77, 0x88, 0x99, 0xaa, 0xbb,
                0xcc, 0xdd,
            ],
            hash_seed: [7; 16],
            label: "nodeimg-data".to_string(),
            mtime,
        }
    }

    fn meta(mode: u32, uid: u32, gid: u32, mtime: u64) -> Meta {
        Meta {
            mode,
            uid,
            gid,
            mtime,
        }
    }

    fn sample_tree() -> Tree {
        let d = meta(0o755, 0, 0, T - 10);
        let mut t = Tree::new(meta(0o755, 0, 0, T - 1));
        let mut add = |p: &str, e: Entry| t.insert_with_parents(p, e, d).unwrap();
        add("home/user", Entry::dir(meta(0o700, 1000, 1001, T - 2)));
        // mke2fs makes lost+found; the tree's metadata must still win.
        add("lost+found", Entry::dir(meta(0o750, 0, 4, T - 9)));
        add(
            "home/user/a file",
            Entry::file(meta(0o640, 1000, 1001, T - 3), b"space in name\n".to_vec()),
        );
        add(
            "home/user/we\"ird #1",
            Entry::file(meta(0o600, 1000, 1001, T - 3), b"quote".to_vec()),
        );
        add(
            "usr/bin/su",
            Entry::file(
                meta(0o4755, 0, 0, 1_600_000_000),
                noise(2 * 1024 * 1024 + 5, 1),
            ),
        );
        add(
            "usr/bin/empty",
            Entry::file(meta(0o644, 0, 0, T), Vec::new()),
        );
        add(
            "usr/bin/<12>",
            Entry::file(meta(0o644, 0, 0, T), b"lt".to_vec()),
        );
        add(
            "usr/bin/-dash",
            Entry::file(meta(0o644, 0, 0, T), b"dash".to_vec()),
        );
        add(
            "etc/link",
            Entry::symlink(meta(0o777, 0, 0, T - 4), "../usr/bin/su"),
        );
        let long_target = format!("/{}", "long/".repeat(20));
        add(
            "etc/longlink",
            Entry::symlink(meta(0o777, 0, 0, T - 4), &long_target),
        );
        add(
            "dev/null",
            Entry {
                meta: meta(0o666, 0, 0, T - 5),
                kind: Kind::CharDevice { major: 1, minor: 3 },
            },
        );
        add(
            "dev/sda",
            Entry {
                meta: meta(0o660, 0, 6, T - 5),
                kind: Kind::BlockDevice { major: 8, minor: 0 },
            },
        );
        add(
            "dev/wide",
            Entry {
                meta: meta(0o600, 0, 0, T - 5),
                kind: Kind::CharDevice {
                    major: 300,
                    minor: 70000,
                },
            },
        );
        add(
            "run/fifo",
            Entry {
                meta: meta(0o620, 5, 5, T - 6),
                kind: Kind::Fifo,
            },
        );
        add(
            "run/sock",
            Entry {
                meta: meta(0o755, 0, 0, T - 6),
                kind: Kind::Socket,
            },
        );
        // Hard links: one Data, three names, two directories; in "many" the
        // links land after enough other names that the directory must grow.
        let shared: Data = Arc::new(crate::tree::Content::from_vec(b"linked".to_vec()));
        let lm = meta(0o755, 0, 0, T - 7);
        for p in ["usr/bin/hl-a", "usr/sbin/hl-b"] {
            add(
                p,
                Entry {
                    meta: lm,
                    kind: Kind::File(shared.clone()),
                },
            );
        }
        for i in 0..150 {
            add(
                &format!("many/entry-with-a-rather-long-name-to-fill-blocks-{i:03}"),
                Entry::file(meta(0o644, 0, 0, T), vec![i as u8]),
            );
        }
        // Enough extra names that `ln` alone would hit a full directory block.
        for i in 0..100 {
            add(
                &format!("many/zz-hard-link-with-a-long-name-{i:03}"),
                Entry {
                    meta: lm,
                    kind: Kind::File(shared.clone()),
                },
            );
        }
        t
    }

    fn debugfs(img: &Path, request: &str) -> String {
        let o = Command::new("debugfs")
            .arg("-R")
            .arg(request)
            .arg(img)
            .env("TZ", "UTC")
            .output()
            .unwrap();
        assert!(o.status.success(), "debugfs -R {request}: {o:?}");
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    fn stat(img: &Path, path: &str) -> String {
        let s = debugfs(img, &format!("stat {}", q(&format!("/{path}"))));
        assert!(s.contains("Inode:"), "no inode for /{path}: {s}");
        s
    }

    fn e2fsck(img: &Path) {
        let o = Command::new("e2fsck").arg("-fn").arg(img).output().unwrap();
        assert!(
            o.status.success(),
            "e2fsck -fn: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    #[test]
    fn e2fsck_dumpe2fs_and_debugfs_agree_with_the_tree() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("data.img");
        let tree = sample_tree();
        write(&img, 64 * MIB, &opts(T), &tree).unwrap();
        let md = std::fs::metadata(&img).unwrap();
        assert_eq!(md.len(), 64 * MIB);
        assert!(md.blocks() * 512 < 32 * MIB, "image is not sparse");
        e2fsck(&img);

        let o = Command::new("dumpe2fs")
            .arg("-h")
            .arg(&img)
            .output()
            .unwrap();
        let h = String::from_utf8_lossy(&o.stdout);
        assert!(
            h.contains("Filesystem UUID:          5e1f0a11-2233-4455-8677-8899aabbccdd"),
            "{h}"
        );
        assert!(h.contains("Filesystem volume name:   nodeimg-data"), "{h}");
        assert!(h.contains("Block size:               4096"), "{h}");
        assert!(
            h.contains("Directory Hash Seed:      07070707-0707-0707-0707-070707070707"),
            "{h}"
        );
        assert!(!h.contains("orphan_file"), "{h}");

        // Owners, modes and times of every entry are the tree's.
        for (path, e) in tree.iter() {
            let s = if path.is_empty() {
                debugfs(&img, "stat /")
            } else {
                stat(&img, path)
            };
            assert!(
                s.contains(&format!("Mode:  0{:03o}", e.meta.mode & 0o7777)),
                "/{path} mode: {s}"
            );
            assert!(
                s.contains(&format!("User: {:>5}", e.meta.uid)),
                "/{path} uid: {s}"
            );
            assert!(
                s.contains(&format!("Group: {:>5}", e.meta.gid)),
                "/{path} gid: {s}"
            );
            for f in [" ctime", " atime", " mtime", "crtime"] {
                assert!(
                    s.contains(&format!("{f}: 0x{:08x}:00000000", e.meta.mtime)),
                    "/{path} {f}: {s}"
                );
            }
        }

        let s = stat(&img, "home/user");
        assert!(s.contains("Type: directory    Mode:  0700"), "{s}");
        assert!(s.contains("User:  1000   Group:  1001"), "{s}");
        assert!(stat(&img, "usr/bin/su").contains("Type: regular    Mode:  04755"));
        let s = stat(&img, "etc/link");
        assert!(s.contains("Type: symlink"), "{s}");
        assert!(s.contains("Fast link dest: \"../usr/bin/su\""), "{s}");
        let s = stat(&img, "dev/null");
        assert!(s.contains("Type: character special"), "{s}");
        assert!(s.contains("Device major/minor number: 01:03"), "{s}");
        let s = stat(&img, "dev/sda");
        assert!(s.contains("Type: block special"), "{s}");
        assert!(s.contains("Device major/minor number: 08:00"), "{s}");
        let s = stat(&img, "dev/wide");
        assert!(s.contains("Device major/minor number: 300:70000"), "{s}");
        assert!(stat(&img, "run/fifo").contains("Type: FIFO"));
        assert!(stat(&img, "run/sock").contains("Type: socket"));
        let s = stat(&img, "many/zz-hard-link-with-a-long-name-099");
        assert!(s.contains("Links: 102"), "{s}");
        let ino = |p: &str| {
            let s = stat(&img, p);
            s.split_whitespace().nth(1).unwrap().to_string()
        };
        assert_eq!(ino("usr/bin/hl-a"), ino("usr/sbin/hl-b"));
        assert_eq!(
            ino("usr/bin/hl-a"),
            ino("many/zz-hard-link-with-a-long-name-042")
        );

        // File contents read back byte for byte.
        let outdir = tempfile::tempdir().unwrap();
        for (path, e) in tree.iter() {
            if let Kind::File(d) = &e.kind {
                let dst = outdir.path().join("out");
                let _ = std::fs::remove_file(&dst);
                debugfs(
                    &img,
                    &format!(
                        "dump {} {}",
                        q(&format!("/{path}")),
                        q(dst.to_str().unwrap())
                    ),
                );
                let got = std::fs::read(&dst).unwrap();
                assert!(got == d.to_vec().unwrap(), "/{path}: content differs");
            }
        }
        // A symlink too long for the inode (101 bytes) lives in a block.
        let s = stat(&img, "etc/longlink");
        assert!(s.contains("Type: symlink"), "{s}");
        assert!(s.contains("Size: 101"), "{s}");
    }

    #[test]
    fn written_into_an_image_it_equals_a_file_of_its_own_and_leaves_the_rest() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let alone = dir.path().join("alone.img");
        let tree = sample_tree();
        write(&alone, 64 * MIB, &opts(T), &tree).unwrap();

        let image = dir.path().join("disk.img");
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(66 * MIB).unwrap();
        f.write_all_at(&[0xaa; 4096], MIB - 4096).unwrap();
        f.write_all_at(&[0xbb; 4096], 65 * MIB).unwrap();
        drop(f);
        write_into(&image, MIB, 64 * MIB, &opts(T), &tree).unwrap();
        let bytes = std::fs::read(&image).unwrap();
        assert_eq!(bytes.len() as u64, 66 * MIB);
        assert!(bytes[(MIB - 4096) as usize..MIB as usize]
            .iter()
            .all(|&b| b == 0xaa));
        assert!(bytes[(65 * MIB) as usize..(65 * MIB + 4096) as usize]
            .iter()
            .all(|&b| b == 0xbb));
        let alone = std::fs::read(&alone).unwrap();
        assert!(
            bytes[MIB as usize..(65 * MIB) as usize] == alone[..],
            "the filesystem differs from the one written to its own file"
        );
        let e = write_into(&image, 8 * MIB, 64 * MIB, &opts(T), &tree).unwrap_err();
        assert!(format!("{e:#}").contains("too short"), "{e:#}");
    }

    #[test]
    fn files_of_a_rootfs_directory_are_written_from_where_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root \"q\"");
        std::fs::create_dir_all(root.join("var/lib")).unwrap();
        let big = crate::fs::test_noise(300_000, 3);
        std::fs::write(root.join("var/lib/big"), &big).unwrap();
        std::fs::write(root.join("var/lib/small"), b"hello").unwrap();
        let tree = crate::tree::reader::read_dir_tree(&root).unwrap();
        let Some(Kind::File(d)) = tree.get("var/lib/big").map(|e| &e.kind) else {
            panic!("no /var/lib/big")
        };
        assert_eq!(direct_source(d), Some(root.join("var/lib/big")));
        let staged_only = Arc::new(crate::tree::Content::from_vec(b"x".to_vec()));
        assert_eq!(direct_source(&staged_only), None);
        let img = dir.path().join("data.img");
        write(&img, 64 * MIB, &opts(T), &tree).unwrap();
        e2fsck(&img);
        let out = dir.path().join("big.out");
        debugfs(
            &img,
            &format!("dump /var/lib/big {}", q(out.to_str().unwrap())),
        );
        assert!(std::fs::read(&out).unwrap() == big, "/var/lib/big differs");
        assert!(debugfs(&img, "cat /var/lib/small") == "hello");

        // A file that changed since the tree was read is an error, not a
        // filesystem that disagrees with the tree.
        std::fs::write(root.join("var/lib/small"), b"hello, world").unwrap();
        let e = format!("{:#}", write(&img, 64 * MIB, &opts(T), &tree).unwrap_err());
        assert!(e.contains("small changed during the build"), "{e}");
    }

    /// A rootfs given by a relative path: its files are read from where they
    /// are and never written. (The check of a file's size compared the
    /// relative path with the absolute one debugfs reads, took the rootfs
    /// file for a staging file and truncated it: the user's rootfs lost a
    /// file's content.)
    #[test]
    fn a_rootfs_directory_given_by_a_relative_path_is_left_as_it_was() {
        std::fs::create_dir_all("target").unwrap();
        let dir = tempfile::Builder::new().tempdir_in("target").unwrap();
        let cwd = std::env::current_dir().unwrap();
        let root = dir.path().strip_prefix(&cwd).unwrap().join("rootfs");
        assert!(root.is_relative());
        std::fs::create_dir_all(root.join("var/lib")).unwrap();
        std::fs::write(root.join("var/lib/keep"), b"precious bytes").unwrap();
        let tree = crate::tree::reader::read_dir_tree(&root).unwrap();
        let img = dir.path().join("data.img");
        write(&img, 64 * MIB, &opts(T), &tree).unwrap();
        assert_eq!(
            std::fs::read(root.join("var/lib/keep")).unwrap(),
            b"precious bytes",
            "the rootfs file was changed"
        );
        assert!(debugfs(&img, "cat /var/lib/keep") == "precious bytes");
    }

    #[test]
    fn a_large_filesystem_takes_little_space() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("big.img");
        write(&img, 64 * 1024 * MIB, &opts(T), &sample_tree()).unwrap();
        let used = std::fs::metadata(&img).unwrap().blocks() * 512;
        // Inode tables and the journal are left for the kernel: a few MiB of
        // metadata, not the GiBs a fully initialised 64 GiB filesystem takes.
        assert!(used < 64 * MIB, "a 64 GiB filesystem takes {used} bytes");
        e2fsck(&img);
    }

    #[test]
    fn output_is_deterministic_and_timestamps_are_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.img");
        let b = dir.path().join("b.img");
        let tree = sample_tree();
        write(&a, 64 * MIB, &opts(T), &tree).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        write(&b, 64 * MIB, &opts(T), &tree).unwrap();
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());

        let stats = debugfs(&a, "stats");
        for field in ["Filesystem created:", "Last write time:", "Last checked:"] {
            let line = stats.lines().find(|l| l.starts_with(field)).unwrap();
            assert!(line.ends_with("Tue Nov 14 22:13:20 2023"), "{line}");
        }
    }

    #[test]
    fn zero_mtime_does_not_fall_back_to_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.img");
        let tree = Tree::new(meta(0o755, 0, 0, 0));
        write(&a, 64 * MIB, &opts(0), &tree).unwrap();
        let stats = debugfs(&a, "stats");
        let line = stats
            .lines()
            .find(|l| l.starts_with("Last write time:"))
            .unwrap();
        assert!(line.ends_with("Thu Jan  1 00:00:01 1970"), "{line}");
        assert!(debugfs(&a, "stat /").contains("mtime: 0x00000000:00000000"));
    }

    #[test]
    fn a_tree_too_big_is_refused_with_both_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("data.img");
        let mut tree = Tree::new(meta(0o755, 0, 0, T));
        tree.insert(
            "big",
            Entry::file(meta(0o644, 0, 0, T), vec![1u8; 80 * MIB as usize]),
        )
        .unwrap();
        let err = format!("{:#}", write(&img, 64 * MIB, &opts(T), &tree).unwrap_err());
        assert!(
            err.contains("the files need 80.0 MiB and 1 inodes"),
            "{err}"
        );
        assert!(err.contains("but the 64 MiB ext4 filesystem has"), "{err}");
        assert!(!img.exists());
    }

    #[test]
    fn owner_of_the_root_comes_from_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("data.img");
        let tree = Tree::new(meta(0o711, 123, 456, T));
        write(&img, 64 * MIB, &opts(T), &tree).unwrap();
        e2fsck(&img);
        let s = debugfs(&img, "stat /");
        assert!(s.contains("User:   123   Group:   456"), "{s}");
        assert!(s.contains("Mode:  0711"), "{s}");
        // Not in the tree: lost+found as mke2fs made it, at the fake time.
        let s = stat(&img, "lost+found");
        assert!(s.contains(&format!("mtime: 0x{T:08x}")), "{s}");
    }

    #[test]
    fn bad_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("data.img");
        let tree = Tree::new(meta(0o755, 0, 0, T));
        let mut o = opts(T);
        o.label = "a-label-longer-than-16".to_string();
        let err = format!("{:#}", write(&img, 64 * MIB, &o, &tree).unwrap_err());
        assert!(err.contains("at most 16"), "{err}");

        let mut t = Tree::new(meta(0o755, 0, 0, T));
        t.insert("bad\nname", Entry::file(meta(0o644, 0, 0, T), vec![]))
            .unwrap();
        let err = format!("{:#}", write(&img, 64 * MIB, &opts(T), &t).unwrap_err());
        assert!(err.contains("line break"), "{err}");
        assert!(!img.exists());
    }

    #[test]
    fn mke2fs_failure_carries_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("data.img");
        let tree = Tree::new(meta(0o755, 0, 0, T));
        let err = format!("{:#}", write(&img, 64 * 1024, &opts(T), &tree).unwrap_err());
        assert!(err.contains("mke2fs failed"), "{err}");
        assert!(err.len() > "mke2fs failed".len() + 20, "{err}");
    }
}

#[cfg(test)]
mod grow_tests {
    use super::*;
    use crate::tree::Meta;

    #[test]
    fn the_filesystem_can_be_grown_with_resize2fs() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("data.img");
        let mut tree = Tree::new(Meta::root(0o755, 1_700_000_000));
        tree.insert(
            "keep",
            Entry::file(Meta::root(0o644, 1_700_000_000), b"kept".to_vec()),
        )
        .unwrap();
        let opts = Ext4Options {
            uuid: [1; 16],
            hash_seed: [2; 16],
            label: "data".into(),
            mtime: 1_700_000_000,
        };
        write(&img, 64 * MIB, &opts, &tree).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(1024 * MIB)
            .unwrap();
        let o = Command::new("resize2fs").arg(&img).output().unwrap();
        assert!(o.status.success(), "resize2fs: {o:?}");
        let o = Command::new("e2fsck")
            .arg("-fn")
            .arg(&img)
            .output()
            .unwrap();
        assert!(o.status.success(), "e2fsck after resize: {o:?}");
        let o = Command::new("dumpe2fs")
            .arg("-h")
            .arg(&img)
            .output()
            .unwrap();
        let h = String::from_utf8_lossy(&o.stdout);
        assert!(h.contains("Block count:              262144"), "{h}");
        assert!(h.contains("Block size:               4096"), "{h}");
    }
}
