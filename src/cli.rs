//! Command-line types only (clap derive); the logic lives in the modules they name.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// Directory holding boards/ and overlays/ [default: $NODEIMG_DATA_DIR, then the installed or source tree]
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
}

#[derive(Debug, clap::Args)]
pub struct BootTestArgs {
    /// The disk image (out/<board>/<board>.img).
    pub image: PathBuf,

    /// Working directory for the copy, boot files and console.log [default: a new temporary directory].
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,

    /// How much to enlarge the copy before its first boot, to check growth.
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub grow_by: String,

    /// Seconds each boot may take to reach a shell.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout: u64,

    /// Also boot deliberately broken copies (wrong disk identifier, no data
    /// partition) and check they end at the rescue shell.
    #[arg(long)]
    pub broken: bool,
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Board name (see `nodeimg boards`).
    pub board: String,

    /// Root filesystem: a directory or a .tar, .tar.gz, .tar.zst or .tar.xz archive.
    #[arg(long, value_name = "PATH")]
    pub rootfs: PathBuf,

    /// Cluster join configuration (cluster.yaml).
    #[arg(long, value_name = "FILE")]
    pub join: Option<PathBuf>,

    /// Output directory; the image goes to <DIR>/<board>/.
    #[arg(short, long, value_name = "DIR", default_value = "out")]
    pub output: PathBuf,

    /// Medium size, e.g. 4G or 3500M (binary units) [default: the board's].
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,

    /// Build the image of this node of the cluster config's `nodes:` inventory
    /// (output: <DIR>/<board>-<NODE>/).
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,

    /// Build an image for every node of the inventory, sharing the system image.
    #[arg(long)]
    pub all_nodes: bool,

    /// Build even if the rootfs's kernel config lacks options k3s requires.
    #[arg(long)]
    pub allow_missing_kernel_options: bool,
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
