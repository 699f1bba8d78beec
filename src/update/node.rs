//! The node side of updates, run as root on the node by the helper the
//! build ships in the system image (`/usr/bin/nodeimg`, see `helper.rs`):
//!
//! - `apply`: verifies a bundle (signature against the image's own key,
//!   board, layout, minimum version) while streaming its squashfs into the
//!   inactive slot's partition, reads the partition back and hashes it again,
//!   writes the slot's kernel, initramfs and cmdline to the boot partition
//!   under a temporary directory renamed into place, and arms a trial boot in
//!   the loader's state (`slots.env`). Before anything is written, the slot's
//!   boot directory is removed: until the apply succeeds the slot is
//!   unusable, never half-trusted.
//! - `commit` (at every boot, from `nodeimg-update-commit.service`): on a
//!   trial boot, runs the health check and makes the slot primary, or clears
//!   the trial and reboots into the old slot; after the loader fell back,
//!   records the failed trial.
//! - `status`: the slots, their versions, the running and primary slot, the
//!   last result (kept in `/var/lib/nodeimg/update.json` on data).
//!
//! Everything is found from the running system: the kernel command line
//! (`nodeimg.disk=`, `nodeimg.system=`), `/usr/share/nodeimg/release.json`,
//! the disk whose table carries that identifier, and the boot partition the
//! initramfs mounts on `/boot`. A `Node` rooted elsewhere stands in for the
//! node in tests (and runs no commands).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::disk::read::{read_table, FoundPartition};
use crate::update::bundle::{self, Expect, Manifest, Payload};
use crate::update::health::{self, Check};
use crate::update::release::{Release, LOADER_UBOOT};
use crate::update::sign::PublicKey;
use crate::update::uboot::{self, State};

/// The persistent record of updates, on the data partition.
pub const RECORD: &str = "var/lib/nodeimg/update.json";
const CMDLINE_MAX: u64 = 64 * 1024;
/// The slot files that travel in a bundle (as `boot/<name>`).
const SLOT_FILES: [&str; 4] = [uboot::KERNEL, uboot::INITRAMFS, "bootargs.env", uboot::FDT];
const BOOTARGS_MAX: usize = 64 * 1024;

/// The node: `/` on a node, a stand-in directory in tests.
pub struct Node {
    root: PathBuf,
    live: bool,
}

impl Node {
    /// The node this runs on.
    pub fn live() -> Node {
        Node {
            root: PathBuf::from("/"),
            live: true,
        }
    }

    /// A stand-in node under `root`: the same files, and no commands run
    /// (no remount, no reboot).
    pub fn at(root: &Path) -> Node {
        Node {
            root: root.to_path_buf(),
            live: false,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    fn boot(&self) -> PathBuf {
        self.path("boot")
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<()> {
        if !self.live {
            return Ok(());
        }
        let st = Command::new(program)
            .args(args)
            .status()
            .with_context(|| format!("running {program}"))?;
        if !st.success() {
            bail!("{program} {} failed ({st})", args.join(" "));
        }
        Ok(())
    }

    pub fn reboot(&self) -> Result<()> {
        eprintln!("nodeimg: rebooting");
        if self.path("run/systemd/system").is_dir() {
            self.run("systemctl", &["reboot"])
        } else {
            self.run("reboot", &[])
        }
    }
}

/// What the running system says about itself.
struct Facts {
    /// The running cmdline's `nodeimg.disk=` value: this node's disk.
    disk_id: String,
    release: Release,
    running: char,
    disk: PathBuf,
    partitions: Vec<FoundPartition>,
}

fn other(slot: char) -> char {
    if slot == 'a' {
        'b'
    } else {
        'a'
    }
}

fn facts(node: &Node) -> Result<Facts> {
    let cmdline_path = node.path("proc/cmdline");
    let mut cmdline = String::new();
    File::open(&cmdline_path)
        .and_then(|f| f.take(CMDLINE_MAX).read_to_string(&mut cmdline))
        .with_context(|| format!("reading {}", cmdline_path.display()))?;
    let word = |name: &str| {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(str::to_string)
    };
    let disk_id = word("nodeimg.disk=").context(
        "the kernel command line has no nodeimg.disk=: not booted by nodeimg's initramfs",
    )?;
    let system: u32 = word("nodeimg.system=")
        .context("the kernel command line has no nodeimg.system=")?
        .parse()
        .context("nodeimg.system= is not a partition number")?;
    let release = Release::load(&node.path(&format!("usr/{}", crate::update::release::PATH)))?;
    let running = release.slot_of_partition(system).with_context(|| {
        format!("the running system is on partition {system}, which is no slot of this layout")
    })?;
    let (disk, partitions) = find_disk(node, &disk_id)?;
    Ok(Facts {
        disk_id,
        release,
        running,
        disk,
        partitions,
    })
}

/// The block device whose partition table carries `id` (as on the cmdline).
fn find_disk(node: &Node, id: &str) -> Result<(PathBuf, Vec<FoundPartition>)> {
    let sys = node.path("sys/block");
    let mut names: Vec<String> = fs::read_dir(&sys)
        .with_context(|| format!("listing {}", sys.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    for name in names {
        let dev = node.path(&format!("dev/{name}"));
        if let Ok(t) = read_table(&dev) {
            if t.disk_id == id {
                return Ok((dev, t.partitions));
            }
        }
    }
    bail!("no disk with identifier {id} (nodeimg.disk=) among the block devices")
}

/// The loader's state on the boot partition.
fn load_state(node: &Node) -> Result<State> {
    let p = node.boot().join(uboot::STATE_NAME);
    let bytes = fs::read(&p).with_context(|| {
        format!(
            "reading {} (is the boot partition mounted on /boot?)",
            p.display()
        )
    })?;
    State::parse(&bytes).with_context(|| format!("reading {}", p.display()))
}

/// Writes a file on the boot partition whole: a temporary file, synced, renamed over.
fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.new"));
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, dir.join(name)).with_context(|| format!("renaming {}", tmp.display()))
}

/// Flushes the filesystem holding `path` (its parent when it is a file).
fn sync_fs(path: &Path) -> Result<()> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    rustix::fs::syncfs(&f).with_context(|| format!("syncing the filesystem of {}", path.display()))
}

fn save_state(node: &Node, s: &State) -> Result<()> {
    replace_file(&node.boot(), uboot::STATE_NAME, s.to_text()?.as_bytes())
}

/// Clears any trial in the loader's state, `primary` staying the primary
/// (the boot partition made writable for it when `writable`).
fn clear_trial(node: &Node, primary: char, writable: bool) -> Result<()> {
    let _rw = if writable {
        Some(BootRw::new(node)?)
    } else {
        None
    };
    save_state(
        node,
        &State {
            primary,
            trial: None,
        },
    )
}

/// The boot partition mounted read-write while this lives (it is read-only
/// on a running node), synced and read-only again after.
struct BootRw<'a>(&'a Node);

impl<'a> BootRw<'a> {
    fn new(node: &'a Node) -> Result<BootRw<'a>> {
        let boot = node.boot();
        node.run("mount", &["-o", "remount,rw", &boot.to_string_lossy()])
            .context("making /boot writable")?;
        Ok(BootRw(node))
    }
}

impl Drop for BootRw<'_> {
    fn drop(&mut self) {
        let boot = self.0.boot();
        if let Ok(d) = File::open(&boot) {
            let _ = rustix::fs::syncfs(&d);
        }
        if let Err(e) = self
            .0
            .run("mount", &["-o", "remount,ro", &boot.to_string_lossy()])
        {
            eprintln!("nodeimg: warning: {e:#}");
        }
    }
}

// ------------------------------------------------------------------ record

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// Slot letter -> what was last written there.
    #[serde(default)]
    pub slots: BTreeMap<String, SlotRecord>,
    #[serde(default)]
    pub last: Option<LastResult>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SlotRecord {
    pub version: Option<u64>,
    /// `unusable`, `trial`, `good` or `failed`.
    pub state: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LastResult {
    /// Seconds since the epoch, by the node's clock.
    pub time: u64,
    pub action: String,
    pub slot: String,
    pub version: Option<u64>,
    pub ok: bool,
    pub detail: String,
}

fn load_record(node: &Node) -> Result<Record> {
    let p = node.path(RECORD);
    match fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("reading {}", p.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Record::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn save_record(node: &Node, r: &Record) -> Result<()> {
    let p = node.path(RECORD);
    let dir = p.parent().context("record path")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut text = serde_json::to_vec_pretty(r)?;
    text.push(b'\n');
    replace_file(dir, "update.json", &text)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn note(r: &mut Record, action: &str, slot: char, version: Option<u64>, ok: bool, detail: String) {
    r.last = Some(LastResult {
        time: now(),
        action: action.to_string(),
        slot: slot.to_string(),
        version,
        ok,
        detail,
    });
}

/// Records the running slot's version when nothing is recorded for it (the
/// slot the image was flashed with, or one from before the record existed).
fn remember_running(r: &mut Record, f: &Facts) {
    r.slots
        .entry(f.running.to_string())
        .or_insert_with(|| SlotRecord {
            version: Some(f.release.version),
            state: "good".to_string(),
        });
}

fn set_slot(r: &mut Record, slot: char, version: Option<u64>, state: &str) {
    r.slots.insert(
        slot.to_string(),
        SlotRecord {
            version,
            state: state.to_string(),
        },
    );
}

// ------------------------------------------------------------------ apply

pub struct ApplyOptions {
    /// Boots the loader gives the new slot before it falls back.
    pub tries: u32,
    pub reboot: bool,
    /// The bundle's version, for a re-runnable apply (a cluster's upgrade
    /// plan): done when the node runs it, refused when its trial failed here.
    pub expect_version: Option<u64>,
}

/// Where a bundle comes from: a file or block device, `-` (stdin), or an
/// http(s) URL (streamed; credentials in it are never shown).
fn open_source(source: &str) -> Result<Box<dyn Read>> {
    if source == "-" {
        return Ok(Box::new(io::stdin().lock()));
    }
    if source.starts_with("http://") || source.starts_with("https://") {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(30)))
            .build()
            .into();
        let resp = agent
            .get(source)
            .call()
            .map_err(|e| crate::k3s::http_error(source, e))?;
        return Ok(Box::new(resp.into_body().into_reader()));
    }
    Ok(Box::new(
        File::open(source).with_context(|| format!("opening {source}"))?,
    ))
}

/// `nodeimg update apply SOURCE`: the manifest of what was written, or
/// `None` when `expect_version` says there is nothing to do.
pub fn apply(node: &Node, source: &str, opts: &ApplyOptions) -> Result<Option<Manifest>> {
    if node.live {
        use std::os::unix::fs::MetadataExt;
        let uid = fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0);
        if uid != 0 {
            bail!(
                "nodeimg update apply writes the boot partition and a system slot: run it as root"
            );
        }
    }
    if opts.tries == 0 || opts.tries > uboot::MAX_TRIES {
        bail!(
            "--tries must be 1 to {}, not {}",
            uboot::MAX_TRIES,
            opts.tries
        );
    }
    let f = facts(node)?;
    if f.release.loader != LOADER_UBOOT {
        bail!(
            "this node's loader ({}) cannot boot a trial slot and fall back; updates need a board \
             with [boot] method = \"u-boot\" (docs/updates.md)",
            f.release.loader
        );
    }
    let key_path = node.path(&format!("usr/{}", crate::system::UPDATE_KEY));
    let key = PublicKey::load(&key_path)?;
    let state = load_state(node)?;
    if f.running != state.primary {
        bail!(
            "this node runs slot {} on trial: let `nodeimg update commit` decide it first",
            f.running
        );
    }
    let target = other(f.running);
    if let Some(v) = opts.expect_version {
        if f.release.version == v {
            eprintln!(
                "nodeimg: this node runs version {v} (slot {}) already: nothing to do",
                f.running
            );
            return Ok(None);
        }
        let failed = load_record(node)?
            .slots
            .values()
            .any(|s| s.version == Some(v) && s.state == "failed");
        if failed {
            bail!(
                "version {v} failed its trial on this node (nodeimg update status); \
                 not trying it again (apply it without --expect-version to insist)"
            );
        }
    }
    let input = open_source(source)?;

    let boot = node.boot();
    let _rw = BootRw::new(node)?;
    // The target is unusable from here until the apply succeeds.
    let slot_dir = boot.join(format!("slot-{target}"));
    let staged = boot.join(format!(".slot-{target}.new"));
    let mut record = load_record(node)?;
    remember_running(&mut record, &f);
    if state.trial.is_some() {
        clear_trial(node, state.primary, false)?;
    }
    for d in [&slot_dir, &staged] {
        if d.exists() {
            fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    set_slot(&mut record, target, None, "unusable");
    save_record(node, &record)?;
    // Durable before the slot's partition is touched.
    sync_fs(&boot)?;
    sync_fs(&node.path(RECORD))?;

    let result = write_slot(&f, target, input, &key, &staged).and_then(|m| {
        if let Some(v) = opts.expect_version.filter(|v| *v != m.version) {
            bail!("the bundle is version {}, not the expected {v}", m.version);
        }
        fs::rename(&staged, &slot_dir)
            .with_context(|| format!("renaming {} into place", staged.display()))?;
        save_state(
            node,
            &State {
                primary: f.running,
                trial: Some((target, opts.tries)),
            },
        )?;
        Ok(m)
    });
    match result {
        Ok(m) => {
            set_slot(&mut record, target, Some(m.version), "trial");
            note(
                &mut record,
                "apply",
                target,
                Some(m.version),
                true,
                format!(
                    "version {} written to slot {target}; trial boot armed ({} tries)",
                    m.version, opts.tries
                ),
            );
            save_record(node, &record)?;
            eprintln!(
                "nodeimg: slot {target} holds version {} (kernel {}); the next boot tries it",
                m.version, m.kernel_release
            );
            drop(_rw);
            if opts.reboot {
                node.reboot()?;
            }
            Ok(Some(m))
        }
        Err(e) => {
            if staged.exists() {
                let _ = fs::remove_dir_all(&staged);
            }
            note(&mut record, "apply", target, None, false, format!("{e:#}"));
            save_record(node, &record)?;
            Err(e.context(format!("slot {target} is left unusable")))
        }
    }
}

/// Streams the bundle: the squashfs into the target's partition, the slot
/// files into `staged`; then reads the partition back.
fn write_slot(
    f: &Facts,
    target: char,
    input: Box<dyn Read>,
    key: &PublicKey,
    staged: &Path,
) -> Result<Manifest> {
    let number = f.release.partition_of(target)?;
    let part = f
        .partitions
        .iter()
        .find(|p| p.number == number)
        .with_context(|| format!("the disk has no partition {number} (slot {target})"))?
        .clone();
    let disk = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&f.disk)
        .with_context(|| format!("opening {} for writing", f.disk.display()))?;
    fs::create_dir(staged).with_context(|| format!("creating {}", staged.display()))?;
    let mut written: u64 = 0;
    let mut open: Option<(String, File)> = None;
    let mut bootargs = Vec::new();
    let mut ignored = Vec::new();
    let mut sink = |p: &Payload, bytes: &[u8]| -> Result<()> {
        if p.name == bundle::SYSTEM {
            if written == 0 && p.size > part.size {
                bail!(
                    "the system image is {} bytes, slot {target}'s partition holds {}",
                    p.size,
                    part.size
                );
            }
            let at = part.start.checked_add(written).context("offset overflow")?;
            disk.write_all_at(bytes, at)
                .with_context(|| format!("writing slot {target} (partition {number})"))?;
            written += bytes.len() as u64;
            return Ok(());
        }
        let name = p.name.strip_prefix("boot/").unwrap_or(&p.name);
        if !SLOT_FILES.contains(&name) {
            if !ignored.contains(&name.to_string()) {
                ignored.push(name.to_string());
            }
            return Ok(());
        }
        if name == "bootargs.env" {
            if bootargs.len() + bytes.len() > BOOTARGS_MAX {
                bail!("boot/bootargs.env is larger than {BOOTARGS_MAX} bytes");
            }
            bootargs.extend_from_slice(bytes);
            return Ok(());
        }
        if open.as_ref().map(|(n, _)| n.as_str()) != Some(name) {
            let path = staged.join(name);
            let file =
                File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            if let Some((_, prev)) = open.replace((name.to_string(), file)) {
                prev.sync_all().context("syncing a boot file")?;
            }
        }
        if let Some((_, file)) = open.as_mut() {
            file.write_all(bytes)
                .with_context(|| format!("writing {name} of slot {target}"))?;
        }
        Ok(())
    };
    let m = bundle::read(
        BufReader::with_capacity(1 << 20, input),
        &Expect {
            key,
            board: Some(&f.release.board),
            from_version: Some(f.release.version),
            layout: Some(&f.release.layout),
        },
        &mut sink,
    )?;
    if let Some((_, file)) = open.take() {
        file.sync_all().context("syncing a boot file")?;
    }
    for name in [uboot::KERNEL, uboot::INITRAMFS, "bootargs.env"] {
        if !m.payloads.iter().any(|p| p.name == format!("boot/{name}")) {
            bail!("the bundle has no boot/{name}: not built for a U-Boot board");
        }
    }
    if !ignored.is_empty() {
        eprintln!(
            "nodeimg: note: the loader's shared files are kept as they are: {}",
            ignored.join(", ")
        );
    }
    // The slot's cmdline names its own system partition, and this node's
    // disk (the bundle's names the disk of the image it was built with).
    let text = String::from_utf8(bootargs).context("boot/bootargs.env is not text")?;
    let cmdline = text
        .trim()
        .strip_prefix("bootargs=")
        .context("boot/bootargs.env is not bootargs=...")?;
    let cmdline = node_cmdline(cmdline, number, &f.disk_id);
    replace_file(
        staged,
        "bootargs.env",
        format!("bootargs={cmdline}\n").as_bytes(),
    )?;

    // Read back from the medium, not the page cache.
    disk.sync_all()
        .with_context(|| format!("syncing {}", f.disk.display()))?;
    let system = &m.payloads[0];
    let _ = rustix::fs::fadvise(
        &disk,
        part.start,
        std::num::NonZeroU64::new(system.size),
        rustix::fs::Advice::DontNeed,
    );
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < system.size {
        let n = usize::try_from((system.size - done).min(buf.len() as u64))?;
        disk.read_exact_at(&mut buf[..n], part.start + done)
            .with_context(|| format!("reading slot {target} back"))?;
        h.update(&buf[..n]);
        done += n as u64;
    }
    if hex::encode(h.finalize()) != system.sha256 {
        bail!(
            "slot {target}: what was read back differs from what was written (a failing medium?)"
        );
    }
    Ok(m)
}

/// A bundle's cmdline for this node: slot partition `system`, disk `disk_id`.
fn node_cmdline(cmdline: &str, system: u32, disk_id: &str) -> String {
    uboot::set_cmdline_word(
        &uboot::slot_cmdline(cmdline, system),
        "nodeimg.disk",
        disk_id,
    )
}

// ------------------------------------------------------------------ commit

/// A trial that failed its health check on a node that must now reboot
/// into its old slot: the caller says it (once) and then reboots.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FallBack(pub String);

pub struct CommitOptions {
    /// None: the checks that apply to this node (`health::auto`).
    pub checks: Option<Vec<Check>>,
    /// None: the system's (`Release::commit_timeout`).
    pub timeout: Option<Duration>,
    pub reboot: bool,
}

/// `nodeimg update commit`: decides a trial boot, or records a fallback.
pub fn commit(node: &Node, opts: &CommitOptions) -> Result<String> {
    let f = facts(node)?;
    if f.release.loader != LOADER_UBOOT {
        return Ok(format!(
            "slot {} runs; this loader ({}) has no trial boots",
            f.running, f.release.loader
        ));
    }
    let state = load_state(node)?;
    let mut record = load_record(node)?;
    let version = f.release.version;
    if f.running == state.primary {
        remember_running(&mut record, &f);
    }
    match state.trial {
        Some((t, _)) if t == f.running => {
            let checks = opts
                .checks
                .clone()
                .unwrap_or_else(|| health::auto(&node.root));
            let timeout = opts
                .timeout
                .unwrap_or(Duration::from_secs(f.release.commit_timeout()));
            match health::run(&checks, timeout) {
                Ok(how) => {
                    let _rw = BootRw::new(node)?;
                    save_state(
                        node,
                        &State {
                            primary: t,
                            trial: None,
                        },
                    )?;
                    set_slot(&mut record, t, Some(version), "good");
                    let msg = format!("slot {t} (version {version}) committed: {how}");
                    note(&mut record, "commit", t, Some(version), true, msg.clone());
                    save_record(node, &record)?;
                    Ok(msg)
                }
                Err(e) => {
                    clear_trial(node, state.primary, true)?;
                    set_slot(&mut record, t, Some(version), "failed");
                    let msg = format!(
                        "slot {t} (version {version}) failed its health check ({e:#}); back to slot {}",
                        state.primary
                    );
                    note(&mut record, "commit", t, Some(version), false, msg.clone());
                    save_record(node, &record)?;
                    if opts.reboot {
                        return Err(FallBack(msg).into());
                    }
                    Err(anyhow!(msg))
                }
            }
        }
        Some((t, 0)) => {
            // The loader used up the trial's boots and came back here.
            {
                let _rw = BootRw::new(node)?;
                clear_trial(node, state.primary, false)?;
                let dir = node.boot().join(format!("slot-{t}"));
                if dir.exists() {
                    fs::remove_dir_all(&dir)
                        .with_context(|| format!("removing {}", dir.display()))?;
                }
            }
            let tried = record.slots.get(&t.to_string()).and_then(|s| s.version);
            set_slot(&mut record, t, tried, "failed");
            let msg = format!(
                "slot {t}{} failed its trial boot (it never got to commit); the loader fell back to slot {}",
                tried.map(|v| format!(" (version {v})")).unwrap_or_default(),
                f.running
            );
            note(&mut record, "rollback", t, tried, false, msg.clone());
            save_record(node, &record)?;
            Ok(msg)
        }
        Some((t, n)) => Ok(format!(
            "slot {t} is armed for a trial ({n} boots left); it runs at the next boot"
        )),
        None if f.running == state.primary => Ok(format!(
            "slot {} (version {version}) is the committed slot; nothing to decide",
            f.running
        )),
        None => Ok(format!(
            "slot {} runs, but the loader's primary is slot {}",
            f.running, state.primary
        )),
    }
}

// ------------------------------------------------------------------ status

#[derive(Debug, Serialize)]
pub struct Status {
    pub board: String,
    /// What boots the node; only `u-boot` boots trials of updates.
    pub loader: String,
    pub running: String,
    pub running_version: u64,
    pub primary: String,
    pub trial: Option<String>,
    pub trial_tries_left: Option<u32>,
    pub slots: BTreeMap<String, SlotStatus>,
    pub last: Option<LastResult>,
}

#[derive(Debug, Serialize)]
pub struct SlotStatus {
    pub partition: u32,
    pub version: Option<u64>,
    pub state: String,
    /// Whether its boot files are on the boot partition.
    pub bootable: bool,
}

pub fn status(node: &Node) -> Result<Status> {
    let f = facts(node)?;
    let state = if f.release.loader == LOADER_UBOOT {
        load_state(node)?
    } else {
        // No loader state: the firmware boots what the image was built with.
        State {
            primary: f.running,
            trial: None,
        }
    };
    let record = load_record(node)?;
    let mut slots = BTreeMap::new();
    for slot in ['a', 'b'] {
        let rec = record.slots.get(&slot.to_string());
        let (version, st) = if slot == f.running {
            let st = rec
                .map(|r| r.state.clone())
                .unwrap_or_else(|| "good".to_string());
            (Some(f.release.version), st)
        } else {
            match rec {
                Some(r) => (r.version, r.state.clone()),
                None => (None, "unknown".to_string()),
            }
        };
        slots.insert(
            slot.to_string(),
            SlotStatus {
                partition: f.release.partition_of(slot)?,
                version,
                state: st,
                bootable: node.boot().join(format!("slot-{slot}")).is_dir(),
            },
        );
    }
    Ok(Status {
        board: f.release.board.clone(),
        loader: f.release.loader.clone(),
        running: f.running.to_string(),
        running_version: f.release.version,
        primary: state.primary.to_string(),
        trial: state.trial.map(|(t, _)| t.to_string()),
        trial_tries_left: state.trial.map(|(_, n)| n),
        slots,
        last: record.last,
    })
}

impl Status {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "board {}: running slot {} (version {}), primary slot {}",
            self.board, self.running, self.running_version, self.primary
        );
        if let (Some(t), Some(n)) = (&self.trial, self.trial_tries_left) {
            s.push_str(&format!(", trial of slot {t} armed ({n} boots left)"));
        }
        s.push('\n');
        if self.loader != LOADER_UBOOT {
            s.push_str(&format!(
                "loader {}: it cannot boot a trial of an update, so this node is updated by reflashing\n",
                self.loader
            ));
        }
        for (name, sl) in &self.slots {
            s.push_str(&format!(
                "slot {name}: partition {}, version {}, {}{}\n",
                sl.partition,
                sl.version
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".to_string()),
                sl.state,
                if sl.bootable { "" } else { " (no boot files)" }
            ));
        }
        if let Some(l) = &self.last {
            s.push_str(&format!(
                "last: {} of slot {}: {} ({})\n",
                l.action,
                l.slot,
                if l.ok { "ok" } else { "FAILED" },
                l.detail
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundles_cmdline_gets_the_slot_and_this_nodes_disk() {
        assert_eq!(
            node_cmdline(
                "console=ttyAMA0 nodeimg.disk=gpt:1111 nodeimg.boot=1 nodeimg.system=2 nodeimg.data=4 x",
                3,
                "gpt:2222"
            ),
            "console=ttyAMA0 nodeimg.disk=gpt:2222 nodeimg.boot=1 nodeimg.system=3 nodeimg.data=4 x"
        );
    }
}
