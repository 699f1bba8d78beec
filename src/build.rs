//! The build pipeline, top to bottom:
//!
//! 1. load the board; read the rootfs into a tree
//! 2. find the kernel, modules, device trees, firmware and busybox in it
//! 3. compose the initramfs; compose the system tree (overlays, usr-merge, factory /etc)
//! 4. make the filesystems: squashfs of /usr, FAT boot, ext4 data
//! 5. assemble the disk image; write build.json and SHA256SUMS; publish
//!
//! Each stage takes plain data from the one before.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::board::{Board, BootMethod, DataDir, Table};
use crate::cli::{BuildArgs, CheckKernelArgs};
use crate::disk::layout::{human, parse_size, Role};
use crate::disk::plan::DiskPlan;
use crate::disk::image;
use crate::fs::{cpio, ext4, fat, squashfs};
use crate::ids;
use crate::initramfs;
use crate::join::{self, ClusterConfig, NodeConfig};
use crate::k3s;
use crate::kernelconfig;
use crate::output::{self, Staging};
use crate::progress::Progress;
use crate::service;
use crate::tree::{self, lookup, reader, transform, Data, Kind, Tree};

/// `nodeimg build`.
pub fn run(data: &DataDir, args: &BuildArgs) -> Result<()> {
    let (board, board_bytes) = data.load(&args.board)?;
    let total = match &args.size {
        Some(s) => parse_size(s).with_context(|| format!("--size {s:?}"))?,
        None => board.sizes()?.default_size,
    };
    let plan = DiskPlan::new(&board, total)?;
    let cluster = match &args.join {
        Some(p) => Some(join::load(p)?),
        None => None,
    };
    let nodes = select_nodes(cluster.as_ref(), args)?;
    if let Some(c) = &cluster {
        for w in c.warnings() {
            eprintln!("nodeimg: warning: {w}");
        }
    }
    let progress = Progress::new();
    let system = prepare_system(data, &board, &board_bytes, args, &nodes, &progress)?;
    let slot = plan.part(Role::SystemA).size;
    if system.squashfs_size > slot {
        bail!(
            "the system image (/usr of the rootfs, compressed) is {} but the system partition holds {}; \
             raise disk.system_size in boards/{}.toml or slim the rootfs",
            human(system.squashfs_size),
            human(slot),
            board.name
        );
    }
    for node in &nodes {
        write_node_image(
            &board,
            &plan,
            &system,
            node.as_ref(),
            args,
            &progress,
        )?;
    }
    progress.finish();
    for node in &nodes {
        let name = output_name(&board, node.as_ref(), args);
        println!(
            "{}",
            args.output
                .join(&name)
                .join(format!("{name}.img"))
                .display()
        );
    }
    Ok(())
}

/// The nodes to build: one image without --join, else the one --node names
/// (or the file's single node), or every inventory node with --all-nodes.
fn select_nodes(
    cluster: Option<&ClusterConfig>,
    args: &BuildArgs,
) -> Result<Vec<Option<NodeConfig>>> {
    let Some(c) = cluster else {
        if args.node.is_some() || args.all_nodes {
            bail!("--node and --all-nodes need --join cluster.yaml");
        }
        return Ok(vec![None]);
    };
    if args.all_nodes {
        if args.node.is_some() {
            bail!("give either --node or --all-nodes, not both");
        }
        let names = c.node_names();
        if names.is_empty() {
            bail!("--all-nodes: the cluster config has no nodes: inventory");
        }
        return names.iter().map(|n| c.node(Some(n)).map(Some)).collect();
    }
    Ok(vec![Some(c.node(args.node.as_deref())?)])
}

/// The output directory (and image) name: `<board>`, or `<board>-<node>`
/// when nodes are picked by name.
fn output_name(board: &Board, node: Option<&NodeConfig>, args: &BuildArgs) -> String {
    match node.and_then(|n| n.name.as_deref()) {
        Some(n) if args.all_nodes || args.node.is_some() => format!("{}-{n}", board.name),
        _ => board.name.clone(),
    }
}

/// Everything the nodes of one build share: the system image, the initramfs,
/// the data partition's initial content and what describes them.
struct System {
    /// Holds the shared intermediate files; removed when dropped.
    _work: tempfile::TempDir,
    squashfs: std::path::PathBuf,
    squashfs_size: u64,
    initramfs: Vec<u8>,
    data_tree: Tree,
    found: Found,
    epoch: u64,
    /// Seed of the build's identifiers before the node name is mixed in.
    seed: Vec<u8>,
    board_sha256: String,
    rootfs: RootfsInput,
    k3s: Option<K3sInfo>,
}

fn prepare_system(
    data: &DataDir,
    board: &Board,
    board_bytes: &[u8],
    args: &BuildArgs,
    nodes: &[Option<NodeConfig>],
    progress: &Progress,
) -> Result<System> {
    progress.step(format!("reading rootfs {}", args.rootfs.display()));
    let rootfs_file_sha256 = if args.rootfs.is_file() {
        Some(output::sha256_file(&args.rootfs)?)
    } else {
        None
    };
    let mut rootfs = reader::read_rootfs(&args.rootfs)
        .with_context(|| format!("reading rootfs {}", args.rootfs.display()))?;
    let epoch = match source_date_epoch()? {
        Some(e) => e,
        None => rootfs.newest_mtime(),
    };
    rootfs.clamp_mtimes(epoch);
    let rootfs_digest = tree_digest(&rootfs);
    let seed = seed(board_bytes, &rootfs_digest, epoch);

    progress.step("finding kernel, modules and boot files");
    let found = locate(board, &rootfs)?;
    check_kernel(board, &rootfs, args.allow_missing_kernel_options)?;

    progress.step("composing the initramfs");
    let initramfs_tree = initramfs::compose(&initramfs::Inputs {
        rootfs: &rootfs,
        busybox: &found.busybox,
        modules_dir: &found.modules_dir,
        kernel_release: &found.kernel_release,
        modules: &board.initramfs.modules,
        optional_modules: &board.initramfs.optional_modules,
        tools: &board.initramfs.tools,
        optional_tools: &board.initramfs.optional_tools,
        overlay: &data.overlay_dir("initramfs"),
        mtime: epoch,
    })
    .context("composing the initramfs")?;

    let mut airgap = None;
    let k3s = match nodes.first().and_then(|n| n.as_ref()) {
        Some(node) => {
            progress.step("installing k3s and its service");
            let (info, images) = add_k3s(board, node, &mut rootfs, epoch)?;
            airgap = images;
            Some(info)
        }
        None => None,
    };

    progress.step("composing the system tree");
    let (usr, mut data_tree) = compose_system(data, board, rootfs, epoch)?;
    if let Some(images) = airgap {
        // k3s imports archives from here on start.
        data_tree.insert_with_parents(
            &format!("var/lib/rancher/k3s/agent/images/{}", images.name),
            tree::Entry::file(tree::Meta::root(0o644, epoch), images.bytes),
            tree::Meta::root(0o755, epoch),
        )?;
    }

    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".nodeimg-work")
        .tempdir_in(&args.output)
        .with_context(|| format!("creating a work directory in {}", args.output.display()))?;
    progress.step(format!(
        "writing the initramfs ({} files)",
        initramfs_tree.len()
    ));
    let initrd_path = work.path().join("initramfs.cpio.gz");
    cpio::write_gzip(&initramfs_tree, &initrd_path).context("writing the initramfs")?;
    let initramfs = std::fs::read(&initrd_path)
        .with_context(|| format!("reading {}", initrd_path.display()))?;

    progress.step(format!("writing the system squashfs ({} files)", usr.len()));
    let squashfs = work.path().join("system.squashfs");
    let squashfs_mtime = u32::try_from(epoch).map_err(|_| {
        anyhow!("SOURCE_DATE_EPOCH {epoch} is past 2106, beyond squashfs timestamps")
    })?;
    let squashfs_size =
        squashfs::write(&usr, &squashfs, squashfs_mtime).context("writing the system squashfs")?;
    Ok(System {
        _work: work,
        squashfs,
        squashfs_size,
        initramfs,
        data_tree,
        found,
        epoch,
        seed,
        board_sha256: hex::encode(Sha256::digest(board_bytes)),
        rootfs: RootfsInput {
            name: args
                .rootfs
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: rootfs_file_sha256,
            tree_sha256: hex::encode(rootfs_digest),
        },
        k3s,
    })
}

/// The k3s air-gap images archive, for the data partition.
struct AirgapImages {
    name: String,
    bytes: Vec<u8>,
}

/// The k3s binary (from cluster.yaml's `k3s:`, else the rootfs's own) and the
/// service that starts it; returns what to record and the air-gap images.
fn add_k3s(
    board: &Board,
    node: &NodeConfig,
    rootfs: &mut Tree,
    epoch: u64,
) -> Result<(K3sInfo, Option<AirgapImages>)> {
    let mut info = K3sInfo {
        source: "rootfs".to_string(),
        version: None,
        sha256: None,
        init_system: String::new(),
        airgap_images: None,
    };
    let mut images = None;
    if let Some(spec) = &node.k3s {
        let path = k3s::fetch(
            spec,
            &board.arch,
            &k3s::default_cache_dir(),
            Progress::is_shown(),
        )
        .context("getting the k3s binary")?;
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        info.sha256 = Some(hex::encode(Sha256::digest(&bytes)));
        info.version = spec.version.clone();
        info.source = match &spec.source {
            k3s::K3sSource::Release { .. } => "release".to_string(),
            k3s::K3sSource::File { path } => format!(
                "file {}",
                path.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            ),
        };
        service::install_k3s_binary(rootfs, bytes, epoch)?;
        if let Some(p) = k3s::airgap_images(spec)? {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "airgap-images.tar".to_string());
            let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            info.airgap_images = Some(name.clone());
            images = Some(AirgapImages { name, bytes });
        }
    } else if !service::has_k3s(rootfs) {
        bail!(
            "no k3s binary: the rootfs has no /usr/bin/k3s or /usr/local/bin/k3s and the cluster config has no `k3s:` section"
        );
    }
    info.init_system = service::install_k3s(rootfs, epoch)?.name().to_string();
    Ok((info, images))
}

/// `nodeimg check-kernel`: prints the report; `Ok(false)` when a required option is missing.
pub fn check_kernel_command(data: &DataDir, args: &CheckKernelArgs) -> Result<bool> {
    let (source, text) = match (&args.config, &args.rootfs, &args.board) {
        (Some(path), _, _) => (
            path.display().to_string(),
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        (None, Some(rootfs_path), Some(board)) => {
            let (board, _) = data.load(board)?;
            let rootfs = reader::read_rootfs(rootfs_path)
                .with_context(|| format!("reading rootfs {}", rootfs_path.display()))?;
            let path = lookup::find_first(&rootfs, &board.sources.kernel_config)
                .context("no kernel config in the rootfs")?;
            let data = file_data(&rootfs, path.trim_start_matches('/'))?;
            (
                format!("{path} in {}", rootfs_path.display()),
                data.to_vec(),
            )
        }
        _ => bail!("give --config FILE, or --rootfs PATH with --board BOARD"),
    };
    let report = kernelconfig::check(&String::from_utf8_lossy(&text));
    println!("{source}:");
    print!("{report}");
    Ok(report.errors().is_empty())
}

/// Checks the kernel config (when the rootfs has one) for what k3s needs.
fn check_kernel(board: &Board, rootfs: &Tree, allow_missing: bool) -> Result<()> {
    if board.sources.kernel_config.is_empty() {
        return Ok(());
    }
    let Ok(path) = lookup::find_first(rootfs, &board.sources.kernel_config) else {
        eprintln!(
            "nodeimg: warning: no kernel config in the rootfs (tried {}); k3s's kernel requirements were not checked",
            board.sources.kernel_config.join(", ")
        );
        return Ok(());
    };
    let text = file_data(rootfs, path.trim_start_matches('/'))?;
    // Optional options are for `nodeimg check-kernel` to list; a build only
    // stops on required ones.
    let report = kernelconfig::check(&String::from_utf8_lossy(&text));
    let errors = report.errors();
    if !errors.is_empty() && !allow_missing {
        bail!(
            "the kernel ({path}) lacks what k3s needs: {}; see `nodeimg check-kernel`, or pass --allow-missing-kernel-options",
            errors.join("; ")
        );
    }
    Ok(())
}

/// Writes one node's disk image, manifest and checksums; returns the output directory.
fn write_node_image(
    board: &Board,
    plan: &DiskPlan,
    sys: &System,
    node: Option<&NodeConfig>,
    args: &BuildArgs,
    progress: &Progress,
) -> Result<std::path::PathBuf> {
    let name = output_name(board, node, args);
    let mut seed = sys.seed.clone();
    if let Some(n) = node.and_then(|n| n.name.as_deref()) {
        seed = ids::derive(&seed, &format!("node:{n}")).to_vec();
    }
    let disk_id = plan.disk_id(&seed);
    let cmdline = kernel_cmdline(board, plan, &disk_id);
    let staging = Staging::create(&args.output, &name)?;

    progress.step(format!("{name}: writing the boot partition"));
    let mut files = boot_files(board, &sys.found, &sys.initramfs, &cmdline);
    let node_files = node.map(|n| n.files()).unwrap_or_default();
    for (path, f) in &node_files {
        files.insert(path.clone(), f.data.clone());
    }
    let boot_path = staging.work("boot.vfat");
    fat::write(
        &boot_path,
        plan.part(Role::Boot).size,
        &fat::FatOptions {
            volume_id: ids::u32_id(&seed, "boot-volume-id"),
            label: "NODEIMGBOOT".to_string(),
        },
        &files,
    )
    .context("writing the boot partition")?;

    progress.step(format!("{name}: writing the data partition"));
    let data_part = plan.part(Role::Data);
    let data_path = staging.work("data.ext4");
    ext4::write(
        &data_path,
        data_part.size,
        &ext4::Ext4Options {
            uuid: ids::uuid(&seed, "data-fs-uuid"),
            hash_seed: ids::uuid(&seed, "data-fs-hash-seed"),
            label: "nodeimg-data".to_string(),
            mtime: sys.epoch,
        },
        &sys.data_tree,
    )
    .context("writing the data partition")?;

    let total = plan.total;
    progress.step(format!(
        "{name}: assembling the {} disk image",
        human(total)
    ));
    let image_name = format!("{name}.img");
    let image_path = staging.output(&image_name);
    let tables = plan.tables(&seed)?;
    let blobs: Vec<(u64, &[u8])> = tables.iter().map(|(o, b)| (*o, b.as_slice())).collect();
    let (boot, system) = (plan.part(Role::Boot), plan.part(Role::SystemA));
    let parts: Vec<(u64, u64, &Path)> = vec![
        (boot.start, boot.size, boot_path.as_path()),
        (system.start, system.size, sys.squashfs.as_path()),
        (data_part.start, data_part.size, data_path.as_path()),
    ];
    image::assemble(&image_path, total, &blobs, &parts).context("assembling the disk image")?;
    if node.is_some() {
        // The image carries the join token: owner-only, like every file holding it.
        output::restrict(&image_path)?;
    }

    progress.step(format!("{name}: computing the image's SHA-256"));
    let image_sha256 = output::sha256_file(&image_path)?;
    let manifest = Manifest {
        nodeimg_version: env!("CARGO_PKG_VERSION"),
        board: board.name.clone(),
        board_sha256: sys.board_sha256.clone(),
        source_date_epoch: sys.epoch,
        rootfs: sys.rootfs.clone(),
        kernel: KernelInfo {
            path: format!("/{}", sys.found.kernel),
            release: sys.found.kernel_release.clone(),
            cmdline: cmdline.clone(),
            initramfs_modules: board.initramfs.modules.clone(),
        },
        node: node.map(|n| NodeInfo {
            name: n.name.clone(),
            role: n.role.as_str().to_string(),
            server: n.server.clone(),
            boot_partition_files: node_files.keys().cloned().collect(),
        }),
        k3s: sys.k3s.clone(),
        disk: DiskInfo {
            table: match board.disk.table {
                Table::Mbr => "mbr",
                Table::Gpt => "gpt",
            },
            size: total,
            id: disk_id,
            partitions: plan
                .parts()
                .map(|(role, p)| PartInfo {
                    number: p.number,
                    name: p.name.clone(),
                    start: p.start,
                    size: p.size,
                    filesystem: role.filesystem(),
                })
                .collect(),
        },
        system_image_size: sys.squashfs_size,
        outputs: vec![OutputInfo {
            file: image_name.clone(),
            size: total,
            sha256: image_sha256.clone(),
        }],
    };
    let json = serde_json::to_vec_pretty(&manifest).context("encoding build.json")?;
    output::write_synced(&staging.output("build.json"), &json)?;
    staging.publish(&[
        (image_name, image_sha256),
        ("build.json".to_string(), hex::encode(Sha256::digest(&json))),
    ])
}

/// `SOURCE_DATE_EPOCH`, if set; an unparsable value is an error.
fn source_date_epoch() -> Result<Option<u64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| anyhow!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        _ => Ok(None),
    }
}

/// A digest of a tree's content (paths, metadata, contents), independent of the
/// order entries were read in.
fn tree_digest(t: &Tree) -> [u8; 32] {
    let mut h = Sha256::new();
    for (path, e) in t.iter() {
        h.update(path.as_bytes());
        h.update([0]);
        h.update(e.st_mode().to_le_bytes());
        h.update(e.meta.uid.to_le_bytes());
        h.update(e.meta.gid.to_le_bytes());
        h.update(e.meta.mtime.to_le_bytes());
        match &e.kind {
            Kind::File(d) => {
                h.update((d.len() as u64).to_le_bytes());
                h.update(d.as_slice());
            }
            Kind::Symlink(target) => h.update(target.as_bytes()),
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                h.update(major.to_le_bytes());
                h.update(minor.to_le_bytes());
            }
            Kind::Dir | Kind::Fifo | Kind::Socket => {}
        }
        h.update([0xff]);
    }
    h.finalize().into()
}

/// The seed every identifier of this image derives from.
fn seed(board: &[u8], rootfs_digest: &[u8], epoch: u64) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(board);
    h.update(rootfs_digest);
    h.update(epoch.to_le_bytes());
    h.finalize().to_vec()
}

/// Paths (relative, canonical) of what the board needs from the rootfs.
struct Found {
    kernel: String,
    modules_dir: String,
    kernel_release: String,
    busybox: String,
    kernel_data: Data,
    /// Name on the boot partition -> (path in the rootfs, contents).
    dtbs: BTreeMap<String, (String, Data)>,
    firmware: BTreeMap<String, (String, Data)>,
}

fn locate(board: &Board, rootfs: &Tree) -> Result<Found> {
    // Lookups answer with absolute paths; the tree is keyed by relative ones.
    let find = |candidates: &[String]| {
        lookup::find_first(rootfs, candidates).map(|p| p.trim_start_matches('/').to_string())
    };
    let kernel = find(&board.sources.kernel).context("no kernel found")?;
    let kernel_name = tree::file_name(&kernel).to_string();
    let mut module_dirs = Vec::new();
    for pattern in &board.sources.modules {
        module_dirs = lookup::glob(rootfs, pattern)
            .into_iter()
            .map(|p| p.trim_start_matches('/').to_string())
            .filter(|p| matches!(rootfs.get(p).map(|e| &e.kind), Some(Kind::Dir)))
            .collect();
        if !module_dirs.is_empty() {
            break;
        }
    }
    module_dirs.dedup();
    let modules_dir = match module_dirs.len() {
        0 => bail!(
            "no kernel modules directory found; tried: {}",
            board.sources.modules.join(", ")
        ),
        1 => module_dirs.remove(0),
        _ => module_dirs
            .iter()
            .find(|d| kernel_name.ends_with(&format!("-{}", tree::file_name(d))))
            .cloned()
            .ok_or_else(|| {
                anyhow!(
                    "several kernel module directories ({}) and none matches the kernel /{kernel}",
                    module_dirs.join(", ")
                )
            })?,
    };
    let kernel_release = tree::file_name(&modules_dir).to_string();
    let busybox = find(&board.initramfs.busybox).context("no busybox found")?;
    let mut dtbs = BTreeMap::new();
    for (name, candidates) in &board.sources.dtbs {
        let p = find(candidates).with_context(|| format!("device tree {name} not found"))?;
        let d = file_data(rootfs, &p)?;
        dtbs.insert(name.clone(), (p, d));
    }
    let mut firmware = BTreeMap::new();
    for (name, candidates) in &board.sources.firmware {
        let p = find(candidates).with_context(|| format!("firmware file {name} not found"))?;
        let d = file_data(rootfs, &p)?;
        firmware.insert(name.clone(), (p, d));
    }
    let kernel_data = file_data(rootfs, &kernel)?;
    Ok(Found {
        kernel,
        kernel_data,
        modules_dir,
        kernel_release,
        busybox,
        dtbs,
        firmware,
    })
}

/// Overlays, usr-merge and factory /etc; then splits the tree into the
/// system image (/usr) and the data partition's initial content (the rest).
fn compose_system(data: &DataDir, board: &Board, mut t: Tree, epoch: u64) -> Result<(Tree, Tree)> {
    for name in &board.overlays {
        let dir = data.overlay_dir(name);
        transform::apply_overlay(&mut t, &dir, epoch)
            .with_context(|| format!("applying overlay {}", dir.display()))?;
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

/// The board's cmdline plus where the init finds its disk and partitions.
fn kernel_cmdline(board: &Board, plan: &DiskPlan, disk_id: &str) -> String {
    format!("{} {}", board.boot.cmdline.trim(), plan.cmdline_args(disk_id))
}

/// The files of the FAT boot partition.
fn boot_files(
    board: &Board,
    found: &Found,
    initramfs: &[u8],
    cmdline: &str,
) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    files.insert(board.boot.kernel_name.clone(), found.kernel_data.to_vec());
    files.insert(board.boot.initramfs_name.clone(), initramfs.to_vec());
    files.insert(
        "cmdline.txt".to_string(),
        format!("{cmdline}\n").into_bytes(),
    );
    for (name, data) in found.dtbs.iter().chain(found.firmware.iter()) {
        files.insert(name.clone(), data.1.to_vec());
    }
    if board.boot.method == BootMethod::RpiFirmware {
        let mut cfg = String::from("# written by nodeimg\narm_64bit=1\n");
        cfg.push_str(&format!("kernel={}\n", board.boot.kernel_name));
        cfg.push_str(&format!(
            "initramfs {} followkernel\n",
            board.boot.initramfs_name
        ));
        for line in &board.boot.config_txt {
            cfg.push_str(line);
            cfg.push('\n');
        }
        files.insert("config.txt".to_string(), cfg.into_bytes());
    }
    files
}

/// A regular file's contents (symlinks already resolved by the lookup).
fn file_data(t: &Tree, path: &str) -> Result<Data> {
    match t.get(path).map(|e| &e.kind) {
        Some(Kind::File(d)) => Ok(d.clone()),
        _ => bail!("/{path} is not a regular file"),
    }
}

#[derive(Serialize)]
struct Manifest {
    nodeimg_version: &'static str,
    board: String,
    board_sha256: String,
    source_date_epoch: u64,
    rootfs: RootfsInput,
    kernel: KernelInfo,
    /// The node this image is for (never its token).
    node: Option<NodeInfo>,
    k3s: Option<K3sInfo>,
    disk: DiskInfo,
    system_image_size: u64,
    outputs: Vec<OutputInfo>,
}

#[derive(Serialize)]
struct NodeInfo {
    name: Option<String>,
    role: String,
    server: Option<String>,
    boot_partition_files: Vec<String>,
}

#[derive(Serialize, Clone)]
struct K3sInfo {
    /// "release", "file <name>" or "rootfs".
    source: String,
    version: Option<String>,
    sha256: Option<String>,
    init_system: String,
    airgap_images: Option<String>,
}

#[derive(Serialize, Clone)]
struct RootfsInput {
    /// File or directory name (not the full path: the manifest must not
    /// depend on where the build ran).
    name: String,
    /// SHA-256 of the archive file, when the rootfs is an archive.
    sha256: Option<String>,
    /// SHA-256 over the tree's paths, metadata and contents.
    tree_sha256: String,
}

#[derive(Serialize)]
struct KernelInfo {
    path: String,
    release: String,
    cmdline: String,
    initramfs_modules: Vec<String>,
}

#[derive(Serialize)]
struct DiskInfo {
    table: &'static str,
    size: u64,
    id: String,
    partitions: Vec<PartInfo>,
}

#[derive(Serialize)]
struct PartInfo {
    number: u32,
    name: String,
    start: u64,
    size: u64,
    filesystem: &'static str,
}

#[derive(Serialize)]
struct OutputInfo {
    file: String,
    size: u64,
    sha256: String,
}
