//! The build pipeline, top to bottom:
//!
//! 1. load the board; read the rootfs into a tree
//! 2. find the kernel, modules, device trees, firmware and busybox in it
//! 3. compose the initramfs; compose the system tree (overlays, usr-merge, factory /etc)
//! 4. make the filesystems: squashfs of /usr (into the cache, or straight into the
//!    only node's disk image on a thread of its own, while the rest of this step
//!    goes on), FAT boot (phones: boot.img), ext4 data
//! 5. assemble the disk image (phones: as a sparse rootfs image); write its block
//!    map (.bmap), build.json and SHA256SUMS; publish
//!
//! Each stage takes plain data from the one before.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::background::Background;
use crate::base::node::NodeBase;
use crate::board::{Board, DataDir};
use crate::bootfiles::{self, Found};
use crate::cache;
use crate::cli::BuildArgs;
use crate::disk::bmap::{self, Bmap};
use crate::disk::image;
use crate::disk::layout::{human, Role};
use crate::disk::plan::DiskPlan;
use crate::file_digests::FileDigests;
use crate::fs::{ext4, fat, squashfs};
use crate::ids;
use crate::initramfs;
use crate::join::{self, ClusterConfig, NodeConfig};
use crate::k3s;
use crate::kernelconfig;
use crate::manifest::{
    BmapInfo, DiskInfo, K3sInfo, KernelInfo, Manifest, NodeInfo, OutputInfo, RootfsInput,
};
use crate::output::{self, Staging};
use crate::phone;
use crate::progress::Progress;
use crate::system;
use crate::tree::{self, reader, Data, Tree};
use crate::update;

/// `nodeimg build`.
pub fn run(data: &DataDir, args: &BuildArgs) -> Result<()> {
    let (board, board_bytes) = data.load(&args.board)?;
    let total = match args.size {
        Some(s) => s.bytes(),
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
    // Input files' digests remembered between builds (none with --no-cache).
    let digests = match args.no_cache {
        true => FileDigests::disabled(),
        false => FileDigests::default_location(),
    };
    let system = prepare_system(
        data,
        &board,
        &board_bytes,
        &plan,
        args,
        &nodes,
        &progress,
        &digests,
    )?;
    if let Err(e) = digests.save() {
        eprintln!("nodeimg: warning: {e:#}");
    }
    // A system image already written is checked before any node's work;
    // one still being written, when its node waits for it.
    if let Some(image) = system.image_if_written() {
        image.check_fits(&board, &plan)?;
    }
    for node in &nodes {
        write_node_image(&board, &plan, &system, node.as_ref(), args, &progress)?;
    }
    progress.finish();
    for node in &nodes {
        let name = output_name(&board, node.as_ref(), args);
        let dir = args.output.join(&name);
        // What to flash: the disk image, or a phone's boot.img (its rootfs
        // image beside it).
        let main = match board.android {
            None => format!("{name}.img"),
            Some(_) => phone::BOOT_IMG.to_string(),
        };
        println!("{}", dir.join(main).display());
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
/// the data partition's initial content and what describes them. It does not
/// depend on which node is built (node config goes to the boot partition
/// only), so it is cached between builds (`cache`).
struct System {
    /// First, so that it is dropped first: a squashfs still being written
    /// is waited for before the work directory goes.
    squashfs: SquashfsAt,
    /// Set once the squashfs is written.
    image: std::cell::OnceCell<SystemImage>,
    /// Holds the shared intermediate files; removed when dropped.
    _work: tempfile::TempDir,
    /// A cache entry that could not be stored, still holding the squashfs.
    _pending: Option<cache::Pending>,
    initramfs: Data,
    data_tree: Tree,
    found: Found,
    epoch: u64,
    /// Seed of the build's identifiers before the node name is mixed in.
    seed: Vec<u8>,
    board_sha256: String,
    rootfs: RootfsInput,
    k3s: Option<K3sInfo>,
    /// For build.json: "hit", "miss" or "off".
    cache: &'static str,
}

/// The written system squashfs.
struct SystemImage {
    size: u64,
    /// Hex of `squashfs::Written::tail_sha256`.
    tail_sha256: String,
}

impl SystemImage {
    fn of(written: &squashfs::Written) -> SystemImage {
        SystemImage {
            size: written.size,
            tail_sha256: hex::encode(written.tail_sha256),
        }
    }

    /// An error unless the image fits in a system slot.
    fn check_fits(&self, board: &Board, plan: &DiskPlan) -> Result<()> {
        let slot = plan.part(Role::SystemA)?.size;
        if self.size > slot {
            bail!(
                "the system image (/usr of the rootfs, compressed) is {} but the system partition holds {}; \
                 raise disk.system_size in boards/{}.toml or slim the rootfs",
                human(self.size),
                human(slot),
                board.name
            );
        }
        Ok(())
    }
}

/// Where the system squashfs is.
enum SquashfsAt {
    /// A file of its own: in the work directory, the cache entry or `_pending`.
    File(std::path::PathBuf),
    /// In the disk image of the build's only node, at the system partition's
    /// offset: the image file in the work directory that node takes (once)
    /// as its own, so the squashfs is never copied. It is written on a
    /// thread of its own (`writing`) while the node's boot and data
    /// partitions are written around it.
    InImage {
        image: std::cell::Cell<Option<std::path::PathBuf>>,
        writing: std::cell::RefCell<Option<Background<squashfs::Written>>>,
        /// Set when the build fails before waiting for it: the writer stops
        /// soon instead of compressing the rest for nothing.
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    },
}

impl Drop for SquashfsAt {
    fn drop(&mut self) {
        // Before `writing` is dropped, which waits for the thread.
        if let SquashfsAt::InImage { stop, .. } = self {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl System {
    /// The squashfs as a file of its own (for an update bundle).
    fn squashfs_file(&self) -> Result<&Path> {
        match &self.squashfs {
            SquashfsAt::File(p) => Ok(p),
            SquashfsAt::InImage { .. } => {
                bail!("internal: the squashfs is not a file of its own")
            }
        }
    }

    /// The system image, once written: waits for it while it is being
    /// written into the disk image.
    fn image(&self) -> Result<&SystemImage> {
        if let Some(image) = self.image.get() {
            return Ok(image);
        }
        let writing = match &self.squashfs {
            SquashfsAt::InImage { writing, .. } => writing.borrow_mut().take(),
            SquashfsAt::File(_) => None,
        };
        let writing = writing.ok_or_else(|| {
            anyhow!("internal: the system image is neither written nor being written")
        })?;
        let written = writing.wait()?;
        Ok(self.image.get_or_init(|| SystemImage::of(&written)))
    }

    /// The system image if it is written already.
    fn image_if_written(&self) -> Option<&SystemImage> {
        self.image.get()
    }
}

#[allow(clippy::too_many_arguments)]
fn prepare_system(
    data: &DataDir,
    board: &Board,
    board_bytes: &[u8],
    plan: &DiskPlan,
    args: &BuildArgs,
    nodes: &[Option<NodeConfig>],
    progress: &Progress,
    digests: &FileDigests,
) -> Result<System> {
    // A signed image carries the node-side update helper: found first, so a
    // missing one fails before any work.
    let node_helper = match &args.sign_key {
        Some(_) => {
            let path = update::helper::find(args.node_helper.as_deref(), &board.arch)?;
            let sha256 = digests.sha256_file_hex(&path)?;
            Some((path, sha256))
        }
        None => None,
    };
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".nodeimg-work")
        .tempdir_in(&args.output)
        .with_context(|| format!("creating a work directory in {}", args.output.display()))?;
    // Where the rootfs comes from: --rootfs, or the board's Debian base.
    let base = match &args.rootfs {
        Some(_) => None,
        None => Some(NodeBase::for_board(data, board)?),
    };
    let rootfs_file_sha256 = match &args.rootfs {
        Some(p) if p.is_file() => Some(digests.sha256_file_hex(p)?),
        _ => None,
    };
    // The rootfs as the build uses it: mtimes clamped to the epoch, and
    // its digest (for build.json, and the cache key of a directory).
    let read = || -> Result<(Tree, u64)> {
        let (mut rootfs, epoch) = match (&args.rootfs, &base) {
            (Some(path), _) => {
                progress.step(format!("reading rootfs {}", path.display()));
                let rootfs = reader::read_rootfs(path, work.path())
                    .with_context(|| format!("reading rootfs {}", path.display()))?;
                let epoch = match ids::source_date_epoch()? {
                    Some(e) => e,
                    None => rootfs.newest_mtime(),
                };
                (rootfs, epoch)
            }
            (None, Some(base)) => {
                let epoch = match ids::source_date_epoch()? {
                    Some(e) => e,
                    None => base.epoch()?,
                };
                let tree =
                    base.compose(board, args.mirror.as_deref(), epoch, work.path(), progress)?;
                (tree, epoch)
            }
            (None, None) => bail!("internal: neither --rootfs nor a base"),
        };
        rootfs.clamp_mtimes(epoch);
        Ok((rootfs, epoch))
    };
    // A directory's cache key is its content, so it is read and hashed first;
    // an archive's is its file hash and a base's its lock's hash, so their
    // trees are read (and hashed) only when the cache has no system for them.
    let mut read_already = match (&rootfs_file_sha256, args.no_cache) {
        _ if base.is_some() => None,
        (Some(_), _) | (None, true) => None,
        (None, false) => {
            let (rootfs, epoch) = read()?;
            let digest = ids::tree_digest(&rootfs, digests)?;
            Some((rootfs, epoch, digest))
        }
    };
    let joined = nodes.first().is_some_and(|n| n.is_some());
    let k3s_spec = nodes.first().and_then(|n| n.as_ref()?.k3s.as_ref());
    let airgap = match k3s_spec {
        Some(spec) => k3s::airgap(spec)?,
        None => None,
    };
    let rootfs_name = match (&args.rootfs, &base) {
        (Some(p), _) => p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        (None, Some(b)) => format!("base {}", b.base.recipe.name),
        (None, None) => String::new(),
    };
    let base_input = base.as_ref().map(NodeBase::manifest);

    let cached = if args.no_cache {
        None
    } else {
        cache::key_for(&cache::KeyInputs {
            data,
            board,
            board_bytes,
            args,
            rootfs_file_sha256: rootfs_file_sha256.as_deref(),
            rootfs_dir_digest: read_already.as_ref().map(|r| &r.2),
            base_lock_sha256: base.as_ref().map(|b| b.lock.sha256.as_str()),
            node_helper_sha256: node_helper.as_ref().map(|h| h.1.as_str()),
            joined,
            k3s_spec,
            airgap: airgap.as_ref(),
            progress,
            digests,
        })?
        .map(|key| {
            let store = cache::Store::default_location().remembering(digests.clone());
            (store, key)
        })
    };
    if let Some(c) = cached.as_ref().and_then(|(store, key)| store.lookup(key)) {
        progress.step(format!(
            "reusing the system image from the cache ({})",
            c.dir.display()
        ));
        let rootfs = RootfsInput {
            name: rootfs_name,
            sha256: rootfs_file_sha256,
            tree_sha256: c.scalars.rootfs_tree_sha256.clone(),
            base: base_input,
        };
        return System::from_cache(c, work, airgap, board_bytes, rootfs);
    }
    // Where the squashfs and initramfs go: straight into a new cache entry
    // when there is a cache, else the work directory.
    let pending = match &cached {
        Some((store, _)) => match store.begin() {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("nodeimg: warning: not storing the system in the cache: {e:#}");
                None
            }
        },
        None => None,
    };
    let out_dir = pending
        .as_ref()
        .map_or(work.path(), |p| p.path())
        .to_path_buf();

    // Every file is hashed here, on every core, before anything is
    // compressed (the rootfs digest, the squashfs's duplicate check and the
    // identifiers' seed share the digests): hashed by the squashfs writer
    // instead, beside zstd on the same cores, the hashing cost zstd more time
    // than it took itself (a 2 GB rootfs: 12.8-13.3 s against 12.1-12.6 s).
    let (mut rootfs, epoch, rootfs_digest) = match read_already.take() {
        Some(read) => read,
        None => {
            let (rootfs, epoch) = read()?;
            let digest = ids::tree_digest(&rootfs, digests)?;
            (rootfs, epoch, digest)
        }
    };

    progress.step("finding kernel, modules and boot files");
    let found = bootfiles::locate(board, &rootfs)?;
    kernelconfig::check_rootfs(board, &rootfs, args.allow_missing_kernel_options)?;

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
        overlay: &data.overlay("initramfs")?,
        mtime: epoch,
    })
    .context("composing the initramfs")?;

    let mut airgap = None;
    let k3s = if joined {
        progress.step("installing k3s and its service");
        let (info, images) = k3s::install(k3s_spec, &board.arch, &mut rootfs, epoch, progress)?;
        airgap = images;
        Some(info)
    } else {
        None
    };

    if let Some((helper, _)) = &node_helper {
        progress.step("installing the node-side update helper");
        update::helper::install(&mut rootfs, helper, epoch)?;
    }

    progress.step("composing the system tree");
    let (mut usr, base_data_tree) = system::compose(data, board, rootfs, epoch)?;
    if let Some(public) =
        update::sign::node_key(args.sign_key.as_deref(), args.update_key.as_deref())?
    {
        let version = args.build_version.unwrap_or(epoch);
        let mut release = update::release::Release::for_build(board, plan, version)?;
        release.commit_timeout = args.commit_timeout;
        system::add_update_info(&mut usr, &public, &release, epoch)?;
    }
    // The cache keeps the data tree without the air-gap images (they can be
    // large, and are the user's file anyway): a hit adds them again.
    let mut data_tree = base_data_tree.clone();
    if let Some(images) = airgap {
        add_airgap(&mut data_tree, images, epoch)?;
    }

    progress.step(format!(
        "writing the initramfs ({} files)",
        initramfs_tree.len()
    ));
    let initrd_path = out_dir.join(cache::INITRAMFS);
    let initramfs = initramfs::write_in_background(initramfs_tree, initrd_path)?;

    progress.step(format!("writing the system squashfs ({} files)", usr.len()));
    let squashfs_mtime = u32::try_from(epoch).map_err(|_| {
        anyhow!("SOURCE_DATE_EPOCH {epoch} is past 2106, beyond squashfs timestamps")
    })?;
    let squashfs_opts = squashfs::Options {
        compression_level: args.compression_level,
        ..Default::default()
    };
    // The rootfs's files were hashed before the squashfs: the system's
    // digest (for the identifiers' seed), from the same files, costs little.
    let system_digest = ids::tree_digest(&usr, digests)?;
    // Without a cache entry to fill, the only node's disk image is started
    // now and the squashfs written straight into its system partition: no
    // copy of it, no second pass. It is written on a thread of its own, so
    // that the node's boot and data partitions are written meanwhile. (An
    // update bundle, several nodes or the cache need the squashfs as a file
    // of its own, written here.)
    let into_image = pending.is_none() && nodes.len() == 1 && args.sign_key.is_none();
    let (mut squashfs, image) = if into_image {
        let image = work.path().join("disk.img");
        let file = std::fs::File::create(&image)
            .with_context(|| format!("creating {}", image.display()))?;
        let start = plan.part(Role::SystemA)?.start;
        let named = image.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        const WHAT: &str = "writing the system squashfs";
        let writing = Background::spawn("squashfs", WHAT, move || {
            let (t, opts) = (&usr, &squashfs_opts);
            squashfs::write_into(t, &file, start, squashfs_mtime, opts, &named, &stopped)
                .context(WHAT)
        })?;
        let at = SquashfsAt::InImage {
            image: std::cell::Cell::new(Some(image)),
            writing: std::cell::RefCell::new(Some(writing)),
            stop,
        };
        (at, std::cell::OnceCell::new())
    } else {
        let path = out_dir.join(cache::SQUASHFS);
        let written = squashfs::write(&usr, &path, squashfs_mtime, &squashfs_opts)
            .context("writing the system squashfs")?;
        let image = std::cell::OnceCell::new();
        let _ = image.set(SystemImage::of(&written));
        (SquashfsAt::File(path), image)
    };

    let mut initramfs = initramfs.wait()?;
    // Identifiers follow from what goes into the image, not from how the
    // rootfs was packed: two rootfs archives that give the same filesystems
    // give the same disk identifiers, cmdline and data filesystem.
    let rootfs_tree_sha256 = hex::encode(rootfs_digest);
    let seed = ids::seed(&[
        ("board", board_bytes),
        ("epoch", &epoch.to_le_bytes()),
        ("system", &system_digest),
        ("compression-level", &args.compression_level.to_le_bytes()),
        ("initramfs", &initramfs.sha256().context("the initramfs")?),
        ("boot-files", &found.digest()?),
        ("data", &ids::tree_digest(&data_tree, digests)?),
    ]);
    let mut state = "off";
    if let Some((store, key)) = &cached {
        state = "miss";
        if let Some(p) = &pending {
            let written = image
                .get()
                .ok_or_else(|| anyhow!("internal: a cached system image not yet written"))?;
            let scalars = cache::Scalars {
                epoch,
                seed: hex::encode(&seed),
                squashfs_size: written.size,
                squashfs_tail_sha256: written.tail_sha256.clone(),
                rootfs_tree_sha256: rootfs_tree_sha256.clone(),
                k3s: k3s.clone(),
            };
            let squashfs_sha256 = output::sha256_file(&p.squashfs())?;
            let what = cache::ToStore {
                squashfs_sha256: &squashfs_sha256,
                data_tree: &base_data_tree,
                found: &found,
                scalars: &scalars,
            };
            if let Some(entry) = store.keep(key, p, &what) {
                squashfs = SquashfsAt::File(entry.join(cache::SQUASHFS));
                // The entry took the pending directory's files with it.
                initramfs = std::sync::Arc::new(tree::Content::from_path(
                    entry.join(cache::INITRAMFS),
                    initramfs.len(),
                ));
            }
        }
    }
    Ok(System {
        squashfs,
        image,
        _work: work,
        _pending: pending,
        initramfs,
        data_tree,
        found,
        epoch,
        seed,
        board_sha256: hex::encode(Sha256::digest(board_bytes)),
        rootfs: RootfsInput {
            name: rootfs_name,
            sha256: rootfs_file_sha256,
            tree_sha256: rootfs_tree_sha256,
            base: base_input,
        },
        k3s,
        cache: state,
    })
}

impl System {
    /// The shared system of an earlier build, from the cache.
    fn from_cache(
        c: cache::Cached,
        work: tempfile::TempDir,
        airgap: Option<k3s::AirgapImages>,
        board_bytes: &[u8],
        rootfs: RootfsInput,
    ) -> Result<System> {
        let mut data_tree = c.data_tree;
        if let Some(images) = airgap {
            add_airgap(&mut data_tree, images, c.scalars.epoch)?;
        }
        let seed = hex::decode(&c.scalars.seed).context("the cached seed")?;
        let image = std::cell::OnceCell::new();
        let _ = image.set(SystemImage {
            size: c.scalars.squashfs_size,
            tail_sha256: c.scalars.squashfs_tail_sha256,
        });
        Ok(System {
            squashfs: SquashfsAt::File(c.squashfs),
            image,
            _work: work,
            _pending: None,
            initramfs: tree::data(c.initramfs),
            data_tree,
            found: c.found,
            epoch: c.scalars.epoch,
            seed,
            board_sha256: hex::encode(Sha256::digest(board_bytes)),
            rootfs,
            k3s: c.scalars.k3s,
            cache: "hit",
        })
    }
}

/// Puts the system squashfs into the disk image `image` at `start` (a slot
/// of `size` bytes): the image written with it in place is moved there, or
/// the squashfs file is copied in by the kernel on a thread of its own
/// (`Placing::wait` for it). The image is made its full `total` bytes; it
/// holds nothing else yet.
fn place_system(sys: &System, image: &Path, total: u64, start: u64, size: u64) -> Result<Placing> {
    let ctx = || format!("writing disk image {}", image.display());
    match &sys.squashfs {
        SquashfsAt::InImage {
            image: prebuilt, ..
        } => {
            let from = prebuilt
                .take()
                .ok_or_else(|| anyhow!("internal: the disk image holding the squashfs is taken"))?;
            std::fs::rename(&from, image)
                .with_context(|| format!("moving {} to {}", from.display(), image.display()))?;
            // Its full size now: the boot partition is written into it next
            // (the squashfs, possibly still being written, lies within).
            std::fs::OpenOptions::new()
                .write(true)
                .open(image)
                .and_then(|f| f.set_len(total))
                .with_context(ctx)?;
            Ok(Placing(None))
        }
        SquashfsAt::File(squashfs) => {
            let file = std::fs::File::create(image).with_context(ctx)?;
            // Its full size before the copy starts: the boot partition is
            // written into it meanwhile, and nothing may change its length.
            file.set_len(total).with_context(ctx)?;
            let squashfs = squashfs.clone();
            const WHAT: &str = "copying the system image into the disk image";
            let copy = move || -> Result<()> {
                crate::disk::sparse::copy_dense_into(&file, start, &squashfs, size)
                    .context(WHAT)?;
                // On to the disk while the boot partition is written: the
                // image's fsync at assembly then finds little left to write.
                file.sync_data().context(WHAT)
            };
            Ok(Placing(Some(Background::spawn("system-copy", WHAT, copy)?)))
        }
    }
}

/// The squashfs being put into a disk image (nothing to wait for when the
/// image was written around it); waited for when dropped.
struct Placing(Option<Background<()>>);

impl Placing {
    fn wait(self) -> Result<()> {
        self.0.map_or(Ok(()), Background::wait)
    }
}

/// The air-gap images where k3s imports them from on start.
fn add_airgap(data_tree: &mut Tree, images: k3s::AirgapImages, epoch: u64) -> Result<()> {
    data_tree.insert_with_parents(
        &format!("var/lib/rancher/k3s/agent/images/{}", images.name),
        tree::Entry {
            meta: tree::Meta::root(0o644, epoch),
            kind: tree::Kind::File(images.data),
        },
        tree::Meta::root(0o755, epoch),
    )
}

/// Writes one node's outputs, manifest and checksums; returns the output
/// directory. A board with a boot partition gets one disk image; a phone
/// gets boot.img and the same disk (without a boot partition) as a sparse
/// rootfs image (`phone`).
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
    let cmdline = bootfiles::kernel_cmdline(board, plan, &disk_id);
    let staging = Staging::create(&args.output, &name)?;
    let node_files = node.map(|n| n.files()).unwrap_or_default();
    // A phone's disk is an intermediate: its sparse form is the output.
    let image_name = format!("{name}.img");
    let image_path = match board.android {
        None => staging.output(&image_name),
        Some(_) => staging.work("userdata.img"),
    };
    // The system squashfs goes into the disk image first, by the kernel on
    // a thread of its own while this one writes the boot partition.
    let system = plan.part(Role::SystemA)?;
    let placing = place_system(sys, &image_path, plan.total, system.start, system.size)?;
    // The data partition is made in its place in the image (nothing copied;
    // the image stays sparse whatever its size) on a thread of its own too:
    // mke2fs and debugfs, which mostly wait for the disk, run while this
    // thread writes the boot partition.
    let data_part = plan.part(Role::Data)?;
    let data_writing = {
        const WHAT: &str = "writing the data partition";
        let (image, tree) = (image_path.clone(), sys.data_tree.clone());
        let (start, size) = (data_part.start, data_part.size);
        let opts = ext4::Ext4Options {
            uuid: ids::uuid(&seed, "data-fs-uuid"),
            hash_seed: ids::uuid(&seed, "data-fs-hash-seed"),
            label: "nodeimg-data".to_string(),
            mtime: sys.epoch,
        };
        Background::spawn("data-partition", WHAT, move || {
            ext4::write_into(&image, start, size, &opts, &tree).context(WHAT)
        })?
    };

    // Boot: a FAT partition on the disk, or a phone's boot.img.
    let mut boot_images = Vec::new();
    let mut bundle = None;
    match &board.android {
        None => {
            progress.step(format!("{name}: writing the boot partition"));
            let mut files = bootfiles::boot_files(board, &sys.found, &sys.initramfs, &cmdline)?;
            for (path, f) in &node_files {
                files.insert(path.clone(), tree::data(f.data.clone()));
            }
            // In its place in the image, beside the system's copy.
            let boot = plan.part(Role::Boot)?;
            let image = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&image_path)
                .with_context(|| format!("opening {}", image_path.display()))?;
            fat::write_into(
                &image,
                boot.start,
                boot.size,
                &fat::FatOptions {
                    volume_id: ids::u32_id(&seed, "boot-volume-id"),
                    label: "NODEIMGBOOT".to_string(),
                },
                &files,
            )
            .context("writing the boot partition")?;
            if let Some(key) = &args.sign_key {
                progress.step(format!("{name}: writing the signed update bundle"));
                let boot_files = files.iter().filter(|(p, _)| !node_files.contains_key(*p));
                bundle = Some(update::bundle::for_build(
                    &staging.output(&format!("{name}.bundle")),
                    key,
                    (board, plan, sys.epoch, &sys.found),
                    sys.squashfs_file()?,
                    boot_files,
                    args,
                )?);
            }
        }
        Some(android) => {
            if args.sign_key.is_some() {
                bail!("update bundles for phones are not built yet (docs/updates.md)");
            }
            progress.step(format!("{name}: writing boot.img"));
            let dir = staging.output("");
            boot_images = phone::write_boot_images(
                &phone::BootInputs {
                    android,
                    found: &sys.found,
                    initramfs: &sys.initramfs.bytes()?,
                    node_files: &node_files,
                    cmdline: &cmdline,
                    mtime: sys.epoch,
                },
                &dir,
            )
            .context("writing boot.img")?;
            if node.is_some() {
                // boot.img carries the join token: owner-only.
                for p in &boot_images {
                    output::restrict(p)?;
                }
            }
        }
    }

    let total = plan.total;
    progress.step(format!(
        "{name}: assembling the {} disk image",
        human(total)
    ));
    let tables = plan.tables(&seed)?;
    let blobs: Vec<(u64, &[u8])> = tables.iter().map(|(o, b)| (*o, b.as_slice())).collect();
    placing.wait()?;
    let mut present = vec![(system.start, system.size)];
    if board.android.is_none() {
        let boot = plan.part(Role::Boot)?;
        present.push((boot.start, boot.size));
    }
    present.push((data_part.start, data_part.size));
    image::assemble(&image_path, total, &blobs, &present).context("assembling the disk image")?;

    progress.step(format!("{name}: writing the data partition"));
    data_writing.wait()?;
    // The system squashfs, written into the image meanwhile or before.
    if sys.image_if_written().is_none() {
        progress.step(format!("{name}: finishing the system squashfs"));
    }
    let system_image = sys.image()?;
    system_image.check_fits(board, plan)?;

    let mut outputs = match &board.android {
        None => {
            // On to the disk while its block map is made from the page cache
            // (a second node's build waited for each in turn); it is on the
            // disk before anything is published.
            let syncing = {
                let image = image_path.clone();
                Background::spawn("image-sync", "syncing the disk image", move || {
                    output::sync(&image)
                })?
            };
            // The image's checksums are its block map's: hashing only the mapped
            // ranges costs time in proportion to the payload, not to --size.
            progress.step(format!("{name}: mapping and hashing the image's blocks"));
            if node.is_some() {
                // The image carries the join token: owner-only, like every file holding it.
                output::restrict(&image_path)?;
            }
            let bmap_name = format!("{image_name}.bmap");
            let bmap = image_bmap(&image_path, plan, &tables, system_image)?;
            let bmap_xml = bmap.to_xml();
            output::write_synced(&staging.output(&bmap_name), bmap_xml.as_bytes())?;
            let bmap_sha256 = hex::encode(Sha256::digest(bmap_xml.as_bytes()));
            syncing.wait()?;
            vec![
                OutputInfo {
                    file: image_name.clone(),
                    size: total,
                    sha256: None,
                    bmap: Some(BmapInfo {
                        file: bmap_name.clone(),
                        sha256: bmap_sha256.clone(),
                        mapped_bytes: bmap.mapped_bytes(),
                    }),
                },
                OutputInfo {
                    file: bmap_name,
                    size: bmap_xml.len() as u64,
                    sha256: Some(bmap_sha256),
                    bmap: None,
                },
            ]
        }
        Some(android) => {
            // The raw image is not synced: it is read into the sparse image
            // (synced as it is written) and removed.
            progress.step(format!("{name}: writing the sparse rootfs image"));
            let pieces = phone::write_rootfs(android, &image_path, &staging.output(""))
                .context("writing the sparse rootfs image")?;
            std::fs::remove_file(&image_path)
                .with_context(|| format!("removing {}", image_path.display()))?;
            boot_images
                .iter()
                .chain(pieces.iter())
                .map(|p| output_info(p))
                .collect::<Result<Vec<_>>>()?
        }
    };
    outputs.extend(bundle);
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
        disk: DiskInfo::new(plan, disk_id),
        system_image_size: system_image.size,
        system_cache: sys.cache,
        outputs,
    };
    let json = serde_json::to_vec_pretty(&manifest).context("encoding build.json")?;
    output::write_synced(&staging.output("build.json"), &json)?;
    // The checksummed files: a disk image through its block map, the rest whole.
    let mut sums: Vec<(String, String)> = manifest
        .outputs
        .iter()
        .filter_map(|o| Some((o.file.clone(), o.sha256.clone()?)))
        .collect();
    sums.push(("build.json".to_string(), hex::encode(Sha256::digest(&json))));
    staging.publish(&sums)
}

/// An output file's name, size and SHA-256.
fn output_info(path: &Path) -> Result<OutputInfo> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    Ok(OutputInfo {
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        size,
        sha256: Some(output::sha256_file(path)?),
        bmap: None,
    })
}

/// The block map of a finished image: its data regions, plus what reads as
/// zeros yet must be written over whatever a card held before (the tables,
/// the boot partition's FATs, the whole system image).
fn image_bmap(
    image: &Path,
    plan: &DiskPlan,
    tables: &[(u64, Vec<u8>)],
    sys: &SystemImage,
) -> Result<Bmap> {
    use std::os::unix::fs::FileExt;
    let mut meaningful: Vec<(u64, u64)> = tables
        .iter()
        .map(|(o, b)| (*o, o.saturating_add(b.len() as u64)))
        .collect();
    let (boot, system) = (plan.part(Role::Boot)?, plan.part(Role::SystemA)?);
    let mut boot_sector = [0u8; 512];
    std::fs::File::open(image)
        .and_then(|f| f.read_exact_at(&mut boot_sector, boot.start))
        .with_context(|| format!("reading the boot sector in {}", image.display()))?;
    let fat = crate::inspect::probe::FatGeometry::parse(&boot_sector)?;
    meaningful.push((boot.start, boot.start + fat.metadata_bytes().min(boot.size)));
    // Slot A holds the system squashfs as it is (padded to 4 KiB, so on
    // whole blocks): the digest of all but its first block was taken as it
    // was written, so those bytes are not read again.
    let end = system.start + sys.size.min(system.size);
    let known: Vec<bmap::Known> = (sys.size > squashfs::HEAD)
        .then(|| bmap::Known {
            start: system.start + squashfs::HEAD,
            end,
            sha256: sys.tail_sha256.clone(),
        })
        .into_iter()
        .collect();
    Bmap::create_with_known(image, &meaningful, &known)
}
