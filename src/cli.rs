//! Command-line types only (clap derive); the logic lives in the modules they name.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::disk::layout::Size;

#[derive(Debug, Parser)]
#[command(
    name = "nodeimg",
    version,
    about = "Build immutable, reproducible OS images for small k3s clusters, without root",
    long_about = "Build immutable, reproducible OS images for small k3s clusters (Raspberry Pi 4, \
QEMU aarch64) without root, mount or loop devices. The system is a read-only squashfs on /usr, \
/etc is rebuilt at every boot, and a persistent ext4 data partition holds the node's state."
)]
pub struct Cli {
    /// Directory with boards/ and/or overlays/ that add to or override (by name) the
    /// built-in ones [default: $NODEIMG_DATA_DIR if set]
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the boards this nodeimg knows, one per line.
    Boards,
    /// Build the image(s) for a board.
    Build(BuildArgs),
    /// Report which kernel options k3s needs are missing (required ones are
    /// errors, optional ones warnings). Exits 1 when a required one is missing.
    CheckKernel(CheckKernelArgs),
    /// Boot a built disk image in QEMU (aarch64 virt, TCG) and check it behaves
    /// as an immutable, portable node. Works on a copy; the image is not changed.
    BootTest(BootTestArgs),
    /// Write a disk image to an SD card or a file: only the blocks that hold
    /// data (from IMAGE.bmap beside it, or --bmap), the first MiB last, then
    /// read back and verified. Refuses partitions, mounted or busy disks, the
    /// disk holding / and disks smaller than the image; asks before writing a
    /// disk. With --fastboot OUTDIR: a phone's build, with fastboot.
    Flash(FlashArgs),
    /// Make an Ed25519 signing key pair for update bundles, in minisign's
    /// formats: the secret key in FILE (unencrypted, mode 0600), the public
    /// key in FILE.pub. Refuses to overwrite either.
    Keygen(KeygenArgs),
    /// Update bundles (see docs/updates.md).
    #[command(subcommand)]
    Update(UpdateCommand),
    /// Show what an image holds: for a disk image the partition table,
    /// filesystems, boot files, node config (secrets redacted), and the
    /// SHA256SUMS/.bmap checks when it sits in its output directory; for a
    /// boot.img, vendor_boot.img or Android sparse image, its sections.
    Inspect(InspectArgs),
    /// The Debian base images are built from without --rootfs: lock files,
    /// the package cache, composing a node OS from packages (docs/base.md).
    #[command(subcommand)]
    Base(BaseCommand),
}

#[derive(Debug, Subcommand)]
pub enum BaseCommand {
    /// Resolve each board's base recipe against the Debian archive (InRelease
    /// verified with the pinned archive keys) and write <DIR>/<board>.lock.
    Lock(BaseLockArgs),
    /// Download every package of the boards' locks into the package cache
    /// ($XDG_CACHE_HOME/nodeimg/debs, else ~/.cache/nodeimg/debs), checked
    /// against the lock, so that builds need no network.
    Fetch(BaseFetchArgs),
    /// Compose the node OS tree from .deb files (unpacked in-process, no maintainer
    /// scripts, then the declarative steps) and write it as a rootfs tarball for
    /// `build --rootfs`. A developer tool: builds without --rootfs do this themselves.
    Compose(BaseComposeArgs),
}

#[derive(Debug, clap::Args)]
pub struct BaseLockArgs {
    /// Boards whose base to lock [default: every board that names a base recipe].
    #[arg(value_name = "BOARD")]
    pub boards: Vec<String>,

    /// Debian mirror URL [default: $NODEIMG_DEBIAN_MIRROR, else the first Debian
    /// mirror in this machine's apt sources].
    #[arg(long, value_name = "URL")]
    pub mirror: Option<String>,

    /// Directory the lock files are written to.
    #[arg(short, long, value_name = "DIR", default_value = "boards/base")]
    pub output_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct BaseFetchArgs {
    /// Boards whose locked packages to fetch [default: every board that names a base recipe].
    #[arg(value_name = "BOARD", conflicts_with = "lock")]
    pub boards: Vec<String>,

    /// Debian mirror URL, asked only for packages not yet cached [default:
    /// $NODEIMG_DEBIAN_MIRROR, else the first Debian mirror in this machine's apt sources].
    #[arg(long, value_name = "URL")]
    pub mirror: Option<String>,

    /// A lock file to fetch instead of the boards' own.
    #[arg(long, value_name = "FILE")]
    pub lock: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write the secret key (the public key goes to FILE.pub).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum UpdateCommand {
    /// Check a bundle on the build machine: its manifest's signature, every
    /// payload's size and SHA-256, and (when given) that it is for this board
    /// and does not downgrade from this version.
    Verify(UpdateVerifyArgs),
    /// On a node, as root: write a bundle (a file, an http(s) URL, or - for
    /// stdin) to the inactive slot and arm a trial boot of it; then reboot.
    Apply(UpdateApplyArgs),
    /// On a node: decide a trial boot (health check, then make it the
    /// primary slot or fall back), or record that the loader fell back.
    /// Run at every boot by nodeimg-update-commit.service.
    Commit(UpdateCommitArgs),
    /// On a node: the slots, their versions, the running and primary slot,
    /// the last update's result.
    Status(UpdateStatusArgs),
    /// From the build machine: send a bundle to a node over ssh and apply it
    /// there (`ssh NODE nodeimg update apply -`; the node verifies it).
    Push(UpdatePushArgs),
}

#[derive(Debug, clap::Args)]
pub struct UpdateApplyArgs {
    /// The bundle: a file, a block device holding it, an http(s) URL, or - for stdin.
    pub bundle: String,

    /// The bundle's version: do nothing when the node runs it already, and
    /// refuse it when its trial failed on this node (for re-runnable upgrade plans).
    #[arg(long, value_name = "VERSION")]
    pub expect_version: Option<u64>,

    /// Boots the loader gives the new slot before falling back [1-9].
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub tries: u32,

    /// Arm the trial but do not reboot.
    #[arg(long)]
    pub no_reboot: bool,
}

#[derive(Debug, clap::Args)]
pub struct UpdateCommitArgs {
    /// The health checks [default: multi-user with systemd; k3s and kubelet when k3s is installed].
    #[arg(long = "check", value_name = "CHECK", value_enum)]
    pub checks: Vec<crate::update::health::Check>,

    /// Commit without a health check.
    #[arg(long, conflicts_with = "checks")]
    pub no_check: bool,

    /// How long the checks may take to pass, in seconds [default: the
    /// system's, set by `build --commit-timeout`, else 300].
    #[arg(long)]
    pub timeout: Option<u64>,

    /// On a failed check, fall back at the next boot but do not reboot now.
    #[arg(long)]
    pub no_reboot: bool,
}

#[derive(Debug, clap::Args)]
pub struct UpdateStatusArgs {
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct UpdatePushArgs {
    /// The bundle (out/<board>/<board>.bundle).
    pub bundle: PathBuf,

    /// The node, as ssh takes it: [user@]host (root's, or a user who may run nodeimg as root).
    pub node: String,

    /// ssh port.
    #[arg(long)]
    pub port: Option<u16>,

    /// ssh identity file.
    #[arg(long, short = 'i', value_name = "FILE")]
    pub identity: Option<PathBuf>,

    /// Boots the loader gives the new slot before falling back [node's default: 3].
    #[arg(long)]
    pub tries: Option<u32>,

    /// Arm the trial on the node but do not reboot it.
    #[arg(long)]
    pub no_reboot: bool,

    /// An ssh option (as ssh -o takes it), repeatable.
    #[arg(long = "ssh-option", short = 'o', value_name = "OPTION")]
    pub ssh_options: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct UpdateVerifyArgs {
    /// The bundle (out/<board>/<board>.bundle).
    pub bundle: PathBuf,

    /// The public key the bundle must be signed with (`nodeimg keygen`'s FILE.pub).
    #[arg(long, value_name = "PUB")]
    pub key: PathBuf,

    /// Refuse a bundle for another board.
    #[arg(long, value_name = "BOARD")]
    pub board: Option<String>,

    /// The version the node runs now: refuse the bundle if this is below its
    /// minimum (a downgrade or a skipped step).
    #[arg(long, value_name = "VERSION")]
    pub from_version: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct FlashArgs {
    /// The disk image: .img, or .img.zst, .img.gz, .img.xz (decompressed as streamed).
    #[arg(required_unless_present = "fastboot", conflicts_with = "fastboot")]
    pub image: Option<PathBuf>,

    /// A block device (/dev/sdX, /dev/mmcblkN: the whole disk) or a file.
    #[arg(required_unless_present = "fastboot", conflicts_with = "fastboot")]
    pub target: Option<PathBuf>,

    /// Write a block device without asking (for scripts).
    #[arg(long)]
    pub yes: bool,

    /// The image's block map [default: IMAGE.bmap, or X.img.bmap for X.img.zst, if present].
    #[arg(long, value_name = "FILE")]
    pub bmap: Option<PathBuf>,

    /// Do not read back and compare what was written.
    #[arg(long)]
    pub no_verify: bool,

    /// A phone build's output directory (out/<board>/): checks the attached
    /// phone's `fastboot getvar product`, then flashes boot.img (and
    /// vendor_boot.img) and the rootfs sparse image(s) to the board's partitions.
    #[arg(long, value_name = "OUTDIR")]
    pub fastboot: Option<PathBuf>,

    /// Print the fastboot commands instead of running them (with --fastboot).
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The image (out/<board>/<board>.img, or a boot.img, vendor_boot.img or sparse image).
    pub image: PathBuf,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Write the sections of a boot.img, vendor_boot.img or sparse image into DIR.
    #[arg(long, value_name = "DIR")]
    pub extract: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct BaseComposeArgs {
    /// Directory of verified .deb files, unpacked in file-name order.
    #[arg(long, value_name = "DIR")]
    pub debs: PathBuf,

    /// The serial console a getty runs on (ttyAMA0 on qemu-aarch64, ttyS1 on rpi4).
    #[arg(long, value_name = "TTY", default_value = "ttyAMA0")]
    pub console: String,

    /// Where the rootfs tarball (uncompressed tar) goes.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,

    /// Only unpack the packages (merged-/usr placement, Replaces), without the
    /// declarative steps: to compare the unpacking with dpkg-deb -x.
    #[arg(long)]
    pub unpack_only: bool,
}

#[derive(Debug, clap::Args)]
pub struct BootTestArgs {
    /// The disk image (out/<board>/<board>.img), or a phone's output
    /// directory (out/<board>/ with boot.img and rootfs.img) or its boot.img.
    pub image: PathBuf,

    /// Working directory for the copy, boot files and console.log [default: a new temporary directory].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,

    /// How much to enlarge the copy before its first boot, to check growth.
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub grow_by: Size,

    /// Seconds each boot may take to reach a shell.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout: u64,

    /// Also boot deliberately broken copies (wrong disk identifier, no data
    /// partition) and check they end at the rescue shell.
    #[arg(long)]
    pub broken: bool,

    /// The image's system runs systemd: enter through systemd's debug shell on the
    /// serial console (its getty masked, for this boot only) and also check that
    /// multi-user.target is reached with no failed units, sshd listens, networkd
    /// has a DHCP address and timesyncd runs.
    #[arg(long)]
    pub systemd: bool,

    /// A test private key whose public half is in the image's ssh_authorized_keys:
    /// also check that root logs in over SSH with it (from inside the guest, to its
    /// own sshd) and that a password login is refused.
    #[arg(long, value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Board name (see `nodeimg boards`).
    pub board: String,

    /// Root filesystem: a directory or a .tar, .tar.gz, .tar.zst or .tar.xz archive
    /// [default: the board's Debian base, composed from the packages its lock file
    /// boards/base/<board>.lock pins (docs/base.md)].
    #[arg(long, value_name = "PATH")]
    pub rootfs: Option<PathBuf>,

    /// Debian mirror for the base's packages not yet in the package cache
    /// [default: $NODEIMG_DEBIAN_MIRROR, else the first Debian mirror in this
    /// machine's apt sources].
    #[arg(long, value_name = "URL", conflicts_with = "rootfs")]
    pub mirror: Option<String>,

    /// Cluster join configuration (cluster.yaml).
    #[arg(long, value_name = "FILE")]
    pub join: Option<PathBuf>,

    /// Output directory; the image goes to <DIR>/<board>/.
    #[arg(short, long, value_name = "DIR", default_value = "out")]
    pub output: PathBuf,

    /// Medium size, e.g. 4G or 3500M (binary units) [default: the board's].
    #[arg(long, value_name = "SIZE")]
    pub size: Option<Size>,

    /// Build the image of this node of the cluster config's `nodes:` inventory
    /// (output: <DIR>/<board>-<NODE>/).
    #[arg(
        long,
        value_name = "NODE",
        requires = "join",
        conflicts_with = "all_nodes"
    )]
    pub node: Option<String>,

    /// Build an image for every node of the inventory, sharing the system image.
    #[arg(long, requires = "join")]
    pub all_nodes: bool,

    /// Build even if the rootfs's kernel config lacks options k3s requires.
    #[arg(long)]
    pub allow_missing_kernel_options: bool,

    /// zstd level of the system squashfs (1-22; higher is smaller and slower).
    #[arg(long, value_name = "N", default_value_t = crate::fs::squashfs::DEFAULT_LEVEL,
          value_parser = clap::value_parser!(i32).range(1..=22))]
    pub compression_level: i32,

    /// Neither reuse nor store the system image in the cache
    /// ($XDG_CACHE_HOME/nodeimg/systems, else ~/.cache/nodeimg/systems).
    #[arg(long)]
    pub no_cache: bool,

    /// Sign an update bundle with this secret key (`nodeimg keygen`) and
    /// write it beside the image as <board>.bundle; its public key goes into
    /// the system image as /usr/share/nodeimg/update.pub.
    #[arg(long, value_name = "KEY")]
    pub sign_key: Option<PathBuf>,

    /// Put this public key into the system image instead of the signing
    /// key's (rotating the key: the bundle is still signed with --sign-key,
    /// and a node that runs it accepts only bundles signed with the new key).
    #[arg(long, value_name = "PUB", requires = "sign_key")]
    pub update_key: Option<PathBuf>,

    /// The build's version (an integer), recorded in the bundle [default: the
    /// build's epoch: SOURCE_DATE_EPOCH, else the rootfs's newest mtime].
    #[arg(long, value_name = "VERSION", requires = "sign_key")]
    pub build_version: Option<u64>,

    /// The oldest version the bundle may update from [default: 0, any].
    #[arg(long, value_name = "VERSION", requires = "sign_key")]
    pub min_version: Option<u64>,

    /// How long, in seconds, the health check of a trial boot of this system
    /// may take to pass before the node falls back (`update commit`'s
    /// default on the node) [default: 300].
    #[arg(long, value_name = "SECS", requires = "sign_key",
          value_parser = clap::value_parser!(u64).range(10..=86400))]
    pub commit_timeout: Option<u64>,

    /// nodeimg built for the board (the node-side update helper, installed
    /// with --sign-key as /usr/bin/nodeimg) [default: $NODEIMG_NODE_HELPER,
    /// else this nodeimg on an arm64 machine, else
    /// target/aarch64-unknown-linux-gnu/release/nodeimg beside it].
    #[arg(long, value_name = "FILE", requires = "sign_key")]
    pub node_helper: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct CheckKernelArgs {
    /// A kernel config file (/boot/config-*, /proc/config.gz unpacked).
    #[arg(long, value_name = "FILE", conflicts_with = "rootfs")]
    pub config: Option<PathBuf>,

    /// Find the kernel config in this rootfs (directory or tarball), where the board says.
    #[arg(long, value_name = "PATH", requires = "board")]
    pub rootfs: Option<PathBuf>,

    /// The board whose `sources.kernel_config` candidates are searched in --rootfs.
    #[arg(long, value_name = "BOARD")]
    pub board: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("nodeimg").chain(args.iter().copied()))
    }

    #[test]
    fn base_lock_and_fetch_take_boards_and_a_mirror() {
        let cli = parse(&[
            "base",
            "lock",
            "rpi4",
            "qemu-aarch64",
            "--mirror",
            "http://m/d",
        ])
        .unwrap();
        let Command::Base(BaseCommand::Lock(a)) = cli.command else {
            panic!("not base lock")
        };
        assert_eq!(a.boards, ["rpi4", "qemu-aarch64"]);
        assert_eq!(a.mirror.as_deref(), Some("http://m/d"));
        assert_eq!(a.output_dir, PathBuf::from("boards/base"));
        let cli = parse(&["base", "fetch", "--lock", "x.lock"]).unwrap();
        let Command::Base(BaseCommand::Fetch(f)) = cli.command else {
            panic!("not base fetch")
        };
        assert_eq!(f.lock, Some(PathBuf::from("x.lock")));
        assert!(f.boards.is_empty() && f.mirror.is_none());
        assert!(parse(&["base", "fetch", "rpi4", "--lock", "x.lock"]).is_err());
    }

    #[test]
    fn build_takes_board_rootfs_and_options() {
        let cli = parse(&[
            "build",
            "rpi4",
            "--rootfs",
            "r.tar.zst",
            "--size",
            "4G",
            "-o",
            "o",
        ])
        .unwrap();
        let Command::Build(b) = cli.command else {
            panic!("not build")
        };
        assert_eq!(b.board, "rpi4");
        assert_eq!(b.rootfs, Some(PathBuf::from("r.tar.zst")));
        assert_eq!(b.size.map(Size::bytes), Some(4 << 30));
        assert_eq!(b.output, PathBuf::from("o"));
        assert!(b.join.is_none() && !b.all_nodes);
    }

    #[test]
    fn compression_level_has_a_default_and_a_range() {
        let level = |extra: &[&str]| {
            let mut args = vec!["build", "rpi4", "--rootfs", "r"];
            args.extend_from_slice(extra);
            parse(&args).map(|cli| match cli.command {
                Command::Build(b) => b.compression_level,
                _ => panic!("not build"),
            })
        };
        assert_eq!(level(&[]).unwrap(), crate::fs::squashfs::DEFAULT_LEVEL);
        assert_eq!(level(&["--compression-level", "3"]).unwrap(), 3);
        assert!(level(&["--compression-level", "0"]).is_err());
        assert!(level(&["--compression-level", "23"]).is_err());
    }

    #[test]
    fn bad_sizes_are_usage_errors_at_parse_time() {
        for bad in ["4GB", "0", "lots", "-1G", "1.5"] {
            let size = format!("--size={bad}");
            let err = parse(&["build", "rpi4", "--rootfs", "r", &size]).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
            assert!(err.to_string().contains("--size"), "{bad}: {err}");
            let grow = format!("--grow-by={bad}");
            let err = parse(&["boot-test", "x.img", &grow]).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
            assert!(err.to_string().contains("--grow-by"), "{bad}: {err}");
        }
        let err = parse(&["build", "rpi4", "--rootfs", "r", "--size", "4GB"]).unwrap_err();
        assert!(err.to_string().contains("ambiguous"), "{err}");
        let Command::BootTest(b) = parse(&["boot-test", "x.img", "--grow-by", "1.5G"])
            .unwrap()
            .command
        else {
            panic!("not boot-test")
        };
        assert_eq!(b.grow_by.bytes(), 3 << 29);
    }

    #[test]
    fn build_without_rootfs_uses_the_base_and_takes_a_mirror() {
        let Command::Build(b) = parse(&["build", "rpi4", "--mirror", "http://127.0.0.1:1/debian"])
            .unwrap()
            .command
        else {
            panic!("not build")
        };
        assert_eq!(b.rootfs, None);
        assert_eq!(b.mirror.as_deref(), Some("http://127.0.0.1:1/debian"));
        // The mirror serves the base's packages only.
        let err = parse(&[
            "build",
            "rpi4",
            "--rootfs",
            "r.tar",
            "--mirror",
            "http://127.0.0.1:1",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("--mirror"), "{err}");
    }

    #[test]
    fn node_selection_needs_join_and_excludes_all_nodes() {
        assert!(parse(&["build", "rpi4", "--rootfs", "r", "--node", "a"]).is_err());
        assert!(parse(&["build", "rpi4", "--rootfs", "r", "--all-nodes"]).is_err());
        let both = [
            "build",
            "rpi4",
            "--rootfs",
            "r",
            "--join",
            "c.yaml",
            "--node",
            "a",
            "--all-nodes",
        ];
        assert!(parse(&both).is_err());
        assert!(
            parse(&["build", "rpi4", "--rootfs", "r", "--join", "c.yaml", "--node", "a"]).is_ok()
        );
    }

    #[test]
    fn check_kernel_rootfs_needs_a_board() {
        assert!(parse(&["check-kernel", "--rootfs", "r"]).is_err());
        assert!(parse(&["check-kernel", "--rootfs", "r", "--board", "rpi4"]).is_ok());
        assert!(parse(&[
            "check-kernel",
            "--config",
            "c",
            "--rootfs",
            "r",
            "--board",
            "rpi4"
        ])
        .is_err());
    }

    #[test]
    fn flash_takes_image_target_and_options() {
        let Command::Flash(f) = parse(&[
            "flash",
            "a.img.zst",
            "/dev/sdb",
            "--yes",
            "--bmap",
            "a.bmap",
        ])
        .unwrap()
        .command
        else {
            panic!("not flash")
        };
        assert_eq!(f.image, Some(PathBuf::from("a.img.zst")));
        assert_eq!(f.target, Some(PathBuf::from("/dev/sdb")));
        assert!(f.fastboot.is_none());
        assert!(f.yes && !f.no_verify);
        assert_eq!(f.bmap, Some(PathBuf::from("a.bmap")));
        assert!(parse(&["flash", "a.img"]).is_err());
        assert!(parse(&["flash", "a.img", "/dev/sdb", "--fastboot", "o"]).is_err());
        let Command::Inspect(i) = parse(&["inspect", "a.img", "--json"]).unwrap().command else {
            panic!("not inspect")
        };
        assert!(i.json);
    }

    #[test]
    fn flash_takes_a_fastboot_outdir_and_dry_run() {
        let Command::Flash(f) = parse(&["flash", "--fastboot", "out/p", "--dry-run"])
            .unwrap()
            .command
        else {
            panic!("not flash")
        };
        assert_eq!(f.fastboot, Some(PathBuf::from("out/p")));
        assert!(f.dry_run);
        assert!(parse(&["flash", "--dry-run"]).is_err());
    }

    #[test]
    fn boot_test_defaults() {
        let Command::BootTest(b) = parse(&["boot-test", "x.img"]).unwrap().command else {
            panic!("not boot-test")
        };
        assert_eq!(b.timeout, 60);
        assert_eq!(b.grow_by.bytes(), 256 << 20);
        assert!(!b.broken);
    }
}
