//! `nodeimg boot-test`: boots an output image in `qemu-system-aarch64 -M virt`
//! (TCG) and checks, from inside the guest, that it behaves as an immutable,
//! portable node. The image itself is never modified: the test runs on a copy,
//! enlarged before its first boot so that growing the data partition is checked too.
//!
//! Kernel, initramfs and cmdline come out of the image's own boot partition,
//! and the image's bytes are the VM's virtio disk, so an rpi4 `.img` is booted
//! as it is (only `console=ttyAMA0` is appended for the VM's serial port).
//!
//! A phone's outputs (the output directory, or its `boot.img`) are booted the
//! same way: kernel, ramdisk and cmdline come out of `boot.img`
//! (`android::bootimg::parse`), and the sparse `rootfs.img` (or its pieces),
//! expanded, is the virtio disk: the disk the phone's userdata partition
//! holds, found and mapped by the init as on the phone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::disk::layout::Role;
use crate::disk::sparse;
use crate::fs::fat;
use crate::inspect;
use crate::qemu::{self, Machine, Vm, VmSpec};

#[derive(Debug, Clone)]
pub struct Options {
    pub image: PathBuf,
    /// Where copies, extracted boot files and the console log go.
    pub work_dir: PathBuf,
    /// Bytes added to the copy before its first boot.
    pub grow_by: u64,
    /// Bound on each boot, from QEMU start to a shell.
    pub boot_timeout: Duration,
    /// Also check that broken images end at the rescue shell.
    pub broken: bool,
    /// The system runs systemd: reach the guest through systemd's debug shell
    /// on the serial console (kernel cmdline `systemd.debug_shell`, its getty
    /// masked) and add the systemd checks (see `check_systemd`).
    pub systemd: bool,
    /// A private key whose public half is in the image's
    /// `ssh_authorized_keys`: check that root logs in over SSH with it.
    pub ssh_key: Option<PathBuf>,
}

/// What `--systemd` appends to the cmdline: a root shell on the VM's serial
/// console instead of its getty (boot-test's own way in; not in the image).
/// systemd's status lines and kernel messages are kept off the console
/// (`systemd.show_status=false loglevel=1`) so they do not interleave with
/// the shell's output.
pub const SYSTEMD_CMDLINE: &str = "systemd.debug_shell=ttyAMA0 \
systemd.mask=serial-getty@ttyAMA0.service systemd.show_status=false loglevel=1";

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

pub struct Report {
    pub checks: Vec<Check>,
    pub console_log: PathBuf,
}

impl Report {
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }
}

/// `nodeimg boot-test`: runs the checks, printing PASS/FAIL lines; an error
/// when any failed. Without --work-dir a temporary directory is used and kept
/// (for its console.log) only when something failed.
pub fn command(args: &crate::cli::BootTestArgs) -> Result<()> {
    let (work_dir, temp) = match &args.work_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("nodeimg-boot-test")
                .tempdir()
                .context("creating a temporary directory")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let opts = Options {
        image: args.image.clone(),
        work_dir,
        grow_by: args.grow_by.bytes(),
        boot_timeout: Duration::from_secs(args.timeout),
        broken: args.broken,
        systemd: args.systemd,
        ssh_key: args.ssh_key.clone(),
    };
    let result = run(&opts, |c| {
        println!(
            "{} {}: {}",
            if c.passed { "PASS" } else { "FAIL" },
            c.name,
            c.detail
        )
    });
    match result {
        Ok(report) if report.passed() => {
            println!("boot-test passed ({} checks)", report.checks.len());
            Ok(())
        }
        Ok(report) => {
            temp.map(|t| t.keep());
            bail!(
                "boot-test failed; the console log is {}",
                report.console_log.display()
            )
        }
        Err(e) => {
            let log = opts.work_dir.join("console.log");
            if log.exists() {
                temp.map(|t| t.keep());
                Err(e.context(format!("the console log is {}", log.display())))
            } else {
                Err(e)
            }
        }
    }
}

/// Runs every check; fails only if a check could not be run at all (then the
/// error says why). Failed checks are in the report.
pub fn run(opts: &Options, mut on_check: impl FnMut(&Check)) -> Result<Report> {
    std::fs::create_dir_all(&opts.work_dir)
        .with_context(|| format!("creating {}", opts.work_dir.display()))?;
    let log = opts.work_dir.join("console.log");
    let _ = std::fs::remove_file(&log);
    let mut boot = BootFiles::extract(&opts.image, &opts.work_dir)?;
    if opts.systemd {
        boot.cmdline = format!("{} {SYSTEMD_CMDLINE}", boot.cmdline);
    }
    let qemu = qemu::find_qemu()?;
    let disk = opts.work_dir.join("disk.img");
    let original = boot.copy_disk(&opts.image, &disk)?;
    let grown = original + opts.grow_by;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .and_then(|f| f.set_len(grown))
        .with_context(|| format!("enlarging {}", disk.display()))?;

    let mut checks = Vec::new();
    let mut record = |c: Check| {
        on_check(&c);
        checks.push(c);
    };
    let spec = |mac: &str, cpus: u32, mem: u32, cmdline: &str, disk: &Path| VmSpec {
        qemu: qemu.clone(),
        disk: disk.to_path_buf(),
        kernel: boot.kernel.clone(),
        initrd: boot.initrd.clone(),
        cmdline: cmdline.to_string(),
        mem_mib: mem,
        cpus,
        mac: mac.to_string(),
        log: log.clone(),
        firmware: None,
        extra_drives: Vec::new(),
        forward: Vec::new(),
        machine: Machine::Virt,
    };

    // First boot: 2 CPUs, 1 GiB.
    let mut vm = Vm::start(&spec("52:54:00:00:00:01", 2, 1024, &boot.cmdline, &disk))?;
    let first = boot_to_shell(&mut vm, opts.boot_timeout);
    record(timed(
        "first boot reaches a shell",
        &first,
        opts.boot_timeout,
    ));
    if first.is_err() {
        return Ok(Report {
            checks,
            console_log: log,
        });
    }
    if opts.systemd {
        for c in check_systemd(&mut vm, opts.boot_timeout) {
            record(c);
        }
    }
    if let Some(key) = &opts.ssh_key {
        record(check_ssh_login(&mut vm, key));
    }
    record(check_mounts(&mut vm));
    let data = boot.parts.number(Role::Data);
    record(match boot.rootfs_pieces {
        None => check_grown(&mut vm, grown, data),
        Some(_) => check_inner_grown(&mut vm, &disk, grown, data),
    });
    let id1 = identity(&mut vm);
    let wrote = vm.sh(
        "echo gone > /etc/nodeimg-boottest && for d in /root /var/lib /home; do echo kept > $d/nodeimg-boottest || exit 1; done; \
         echo synced-before-power-loss > /root/nodeimg-powerloss && sync",
        Duration::from_secs(20),
    );
    if !matches!(wrote, Ok((0, _))) {
        record(fail("writing test files", format!("{wrote:?}")));
    }
    // Power loss right after the synced write.
    vm.kill();

    // Second boot: another MAC address, CPU count and memory size.
    let mut vm = Vm::start(&spec("52:54:00:aa:bb:02", 1, 768, &boot.cmdline, &disk))?;
    let second = boot_to_shell(&mut vm, opts.boot_timeout);
    record(timed(
        "second boot reaches a shell",
        &second,
        opts.boot_timeout,
    ));
    if second.is_ok() {
        record(check_persistence(&mut vm));
        record(check_power_loss(&mut vm));
        let id2 = identity(&mut vm);
        record(compare_identity(&id1, &id2));
    }
    drop(vm);

    if opts.broken {
        record(check_rescue(
            "wrong disk identifier ends at the rescue shell",
            &spec(
                "52:54:00:00:00:03",
                1,
                512,
                &wrong_disk_id(&boot.cmdline),
                &disk,
            ),
            "nodeimg.disk",
            opts.boot_timeout,
        ));
        let no_data = opts.work_dir.join("no-data.img");
        boot.copy_disk(&opts.image, &no_data)?;
        let data = boot.parts.number(Role::Data);
        remove_partition(&no_data, data)?;
        record(check_rescue(
            "missing data partition ends at the rescue shell",
            &spec("52:54:00:00:00:04", 1, 512, &boot.cmdline, &no_data),
            &format!("partition {data}"),
            opts.boot_timeout,
        ));
        let _ = std::fs::remove_file(&no_data);
    }
    let _ = std::fs::remove_file(&disk);
    Ok(Report {
        checks,
        console_log: log,
    })
}

/// Which partition of an image plays each [`Role`]: the numbers its kernel
/// cmdline gives the init (`nodeimg.boot=`, `nodeimg.system=`, `nodeimg.data=`),
/// and the layout's [`Role::number`] for a role the cmdline does not name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitions {
    /// Indexed by [`Role::index`].
    numbers: [u32; 4],
}

impl Partitions {
    /// The nodeimg layout's numbers.
    pub fn layout() -> Partitions {
        Partitions {
            numbers: Role::ALL.map(Role::number),
        }
    }

    /// The numbers `cmdline` names, the layout's for the others. A value that
    /// is not a partition number is an error: the init would refuse it too.
    pub fn from_cmdline(cmdline: &str) -> Result<Partitions> {
        let mut parts = Partitions::layout();
        for word in cmdline.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let Some(role) = Role::ALL.into_iter().find(|r| r.cmdline_key() == Some(key)) else {
                continue;
            };
            let n: u32 = value
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .with_context(|| format!("the cmdline's {word}: not a partition number"))?;
            parts.numbers[role.index()] = n;
        }
        Ok(parts)
    }

    /// The partition number of `role`.
    pub fn number(&self, role: Role) -> u32 {
        self.numbers[role.index()]
    }
}

/// Kernel, initramfs and cmdline taken from the image's boot partition (or
/// a phone's boot.img).
pub struct BootFiles {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The image's cmdline plus `console=ttyAMA0` for the VM's serial port.
    pub cmdline: String,
    /// The partitions by role, as the image's cmdline names them.
    pub parts: Partitions,
    /// A phone's sparse rootfs image (or its pieces, in order); None for a disk image.
    pub rootfs_pieces: Option<Vec<PathBuf>>,
}

impl BootFiles {
    /// Extracts them into `dir`: from a phone's boot.img when `image` is one
    /// (or an output directory holding one), else from the boot partition
    /// of the disk image `image` (the layout's [`Role::Boot`] number).
    pub fn extract(image: &Path, dir: &Path) -> Result<BootFiles> {
        match phone_boot_img(image)? {
            Some(boot_img) => BootFiles::extract_phone(&boot_img, dir),
            None => BootFiles::extract_disk(image, dir),
        }
    }

    /// Copies the disk the VM boots from to `to` (a phone's rootfs pieces
    /// expanded); returns its size.
    pub fn copy_disk(&self, image: &Path, to: &Path) -> Result<u64> {
        match &self.rootfs_pieces {
            None => sparse::copy_file(image, to),
            Some(pieces) => {
                crate::android::sparse::expand(pieces, to)?;
                Ok(std::fs::metadata(to)
                    .with_context(|| format!("reading {}", to.display()))?
                    .len())
            }
        }
    }

    /// Kernel, ramdisk and cmdline out of a phone's boot.img; the rootfs
    /// image beside it.
    fn extract_phone(boot_img: &Path, dir: &Path) -> Result<BootFiles> {
        use crate::android::bootimg::{self, Parsed};
        let bytes =
            std::fs::read(boot_img).with_context(|| format!("reading {}", boot_img.display()))?;
        let parsed = match bootimg::parse(&bytes).with_context(|| boot_img.display().to_string())? {
            Parsed::Boot(b) => b,
            Parsed::VendorBoot(_) => bail!(
                "{} is a vendor_boot image; boot-test takes the boot.img",
                boot_img.display()
            ),
        };
        let section = |r: &std::ops::Range<usize>, what: &str| -> Result<Vec<u8>> {
            bytes.get(r.clone()).map(<[u8]>::to_vec).with_context(|| {
                format!("{}: the {what} lies outside the file", boot_img.display())
            })
        };
        let kernel = dir.join("kernel");
        let initrd = dir.join("initrd");
        for (path, range, what) in [
            (&kernel, &parsed.kernel, "kernel"),
            (&initrd, &parsed.ramdisk, "ramdisk"),
        ] {
            std::fs::write(path, section(range, what)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let cmdline = parsed.cmdline.trim().to_string();
        let parts = Partitions::from_cmdline(&cmdline)
            .with_context(|| format!("the cmdline of {}", boot_img.display()))?;
        let out_dir = boot_img.parent().unwrap_or(Path::new("."));
        let pieces = rootfs_pieces(out_dir)?;
        Ok(BootFiles {
            kernel,
            initrd,
            cmdline: format!("{cmdline} console=ttyAMA0"),
            parts,
            rootfs_pieces: Some(pieces),
        })
    }

    fn extract_disk(image: &Path, dir: &Path) -> Result<BootFiles> {
        let part = dir.join("boot.vfat");
        inspect::extract_partition(image, Role::Boot.number(), &part)?;
        let read = |name: &str| {
            fat::read_file(&part, name).with_context(|| {
                format!(
                    "reading {name} from the boot partition of {}",
                    image.display()
                )
            })
        };
        use crate::update::uboot;
        // A board whose loader is U-Boot keeps each slot's kernel, initramfs
        // and cmdline in slot-X/: boot the primary slot's directly (U-Boot's
        // own part is tested through QEMU's -bios in tests/update_*.rs).
        let (cmdline, kname, iname, origin) = match read(uboot::STATE_NAME) {
            Ok(state) => {
                let state = uboot::State::parse(&state)
                    .with_context(|| format!("the boot partition of {}", image.display()))?;
                let dir = format!("slot-{}", state.primary);
                let args = String::from_utf8(read(&format!("{dir}/bootargs.env"))?)
                    .context("bootargs.env is not UTF-8")?;
                let cmdline = args
                    .trim()
                    .strip_prefix("bootargs=")
                    .with_context(|| format!("{dir}/bootargs.env is not bootargs=..."))?
                    .to_string();
                (
                    cmdline,
                    format!("{dir}/{}", uboot::KERNEL),
                    format!("{dir}/{}", uboot::INITRAMFS),
                    format!("{dir}/bootargs.env"),
                )
            }
            Err(_) => {
                let cmdline =
                    String::from_utf8(read("cmdline.txt")?).context("cmdline.txt is not UTF-8")?;
                // The kernel and initramfs names are the board's; take them
                // from config.txt when present, else the defaults.
                let (kname, iname) = match read("config.txt") {
                    Ok(cfg) => names_from_config_txt(&String::from_utf8_lossy(&cfg)),
                    Err(_) => ("vmlinuz".to_string(), "initrd.img".to_string()),
                };
                (cmdline, kname, iname, "cmdline.txt".to_string())
            }
        };
        let parts = Partitions::from_cmdline(&cmdline)
            .with_context(|| format!("{origin} of {}", image.display()))?;
        let write = |to: PathBuf, name: &str| -> Result<PathBuf> {
            std::fs::write(&to, read(name)?)
                .with_context(|| format!("writing {}", to.display()))?;
            Ok(to)
        };
        let kernel = write(dir.join("kernel"), &kname)?;
        let initrd = write(dir.join("initrd"), &iname)?;
        let _ = std::fs::remove_file(&part);
        Ok(BootFiles {
            kernel,
            initrd,
            cmdline: format!("{} console=ttyAMA0", cmdline.trim()),
            parts,
            rootfs_pieces: None,
        })
    }
}

/// The phone boot.img `image` names: `image` itself when it is a boot image,
/// `image/boot.img` when `image` is an output directory; None for a disk image.
fn phone_boot_img(image: &Path) -> Result<Option<PathBuf>> {
    use std::io::Read;
    let candidate = if image.is_dir() {
        let p = image.join(crate::phone::BOOT_IMG);
        if !p.is_file() {
            bail!(
                "{} is a directory without a {}: give a disk image or a phone's output directory",
                image.display(),
                crate::phone::BOOT_IMG
            );
        }
        p
    } else {
        image.to_path_buf()
    };
    let mut magic = [0u8; 8];
    let n = std::fs::File::open(&candidate)
        .and_then(|mut f| f.read(&mut magic))
        .with_context(|| format!("reading {}", candidate.display()))?;
    Ok((n == 8 && &magic == crate::android::bootimg::BOOT_MAGIC).then_some(candidate))
}

/// A phone's rootfs image in `dir`: `rootfs.img`, or its pieces
/// `rootfs.img.0`, `rootfs.img.1`, ... in order.
fn rootfs_pieces(dir: &Path) -> Result<Vec<PathBuf>> {
    let whole = dir.join(crate::phone::ROOTFS_IMG);
    if whole.is_file() {
        return Ok(vec![whole]);
    }
    let pieces: Vec<PathBuf> = (0..)
        .map(|i| dir.join(format!("{}.{i}", crate::phone::ROOTFS_IMG)))
        .take_while(|p| p.is_file())
        .collect();
    if pieces.is_empty() {
        bail!(
            "no {} (or {}.0, ...) beside the boot.img in {}",
            crate::phone::ROOTFS_IMG,
            crate::phone::ROOTFS_IMG,
            dir.display()
        );
    }
    Ok(pieces)
}

fn names_from_config_txt(cfg: &str) -> (String, String) {
    let mut kernel = "vmlinuz".to_string();
    let mut initrd = "initrd.img".to_string();
    for line in cfg.lines().map(str::trim) {
        if let Some(k) = line.strip_prefix("kernel=") {
            kernel = k.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("initramfs ") {
            if let Some(name) = rest.split_whitespace().next() {
                initrd = name.to_string();
            }
        }
    }
    (kernel, initrd)
}

/// Boots to the console's shell; returns the time that took. Before it
/// returns, the boot's own update commit has said its outcome
/// ([`wait_for_commit`]).
fn boot_to_shell(vm: &mut Vm, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    vm.wait_for("nodeimg-init: switching", timeout)?;
    let left = timeout.saturating_sub(start.elapsed());
    vm.wait_for_shell(left)?;
    let up = vm.uptime();
    wait_for_commit(vm).context("waiting for the boot's `nodeimg update commit`")?;
    Ok(up)
}

/// A node that carries the update helper runs `nodeimg update commit` at
/// every boot, beside the console's shell, and the commit says its outcome on
/// the console: at any moment, so in the middle of a check's output unless it
/// is waited for. This waits (at most 300 s: a trial boot's health check has
/// its own timeout) until it has spoken.
fn wait_for_commit(vm: &mut Vm) -> Result<()> {
    // The release file is there only on a system that accepts updates.
    let release = format!("/usr/{}", crate::update::release::PATH);
    let cmd = format!(
        "if [ -e {release} ]; then if [ -d /run/systemd/system ]; then {WAIT_SYSTEMD}; else {WAIT_BUSYBOX}; fi; fi"
    );
    vm.sh(&cmd, Duration::from_secs(320))?;
    Ok(())
}

/// With systemd the commit's unit is part of the boot, and `journalctl
/// --sync` has journald pass its line to the console.
const WAIT_SYSTEMD: &str =
    "timeout 300 systemctl is-system-running --wait >/dev/null 2>&1; journalctl --sync 2>/dev/null";

/// With busybox init the commit is an `::once:` line, started before the
/// shell: wait while a process runs it. The `[c]` keeps grep from finding its
/// own command line. `$i` is the number of seconds waited.
const WAIT_BUSYBOX: &str = "i=0; while [ $i -lt 300 ] && cat /proc/[0-9]*/cmdline 2>/dev/null \
     | tr '\\0' ' ' | grep -q 'nodeimg update [c]ommit'; do sleep 1; i=$((i+1)); done";

fn timed(name: &'static str, r: &Result<Duration>, limit: Duration) -> Check {
    match r {
        Ok(d) => Check {
            name,
            passed: *d <= limit,
            detail: format!("{:.1}s (limit {}s)", d.as_secs_f64(), limit.as_secs()),
        },
        Err(e) => fail(name, format!("{e:#}")),
    }
}

fn fail(name: &'static str, detail: String) -> Check {
    Check {
        name,
        passed: false,
        detail,
    }
}

fn sh(vm: &mut Vm, cmd: &str) -> Result<String> {
    let (status, out) = vm.sh(cmd, Duration::from_secs(30))?;
    if status != 0 {
        bail!("`{cmd}` exited {status}: {out}");
    }
    Ok(out)
}

/// `/usr` is a read-only squashfs, `/` the writable ext4 data partition, `/etc` a tmpfs.
/// The systemd checks, from the debug shell: multi-user reached (the time
/// from kernel start, systemd's own monotonic clock) with no failed unit,
/// sshd listening on port 22, a DHCP address from networkd, the dpkg
/// database readable by dpkg-query, timesyncd active; with a k3s unit, the
/// clock synchronised and k3s started after it (`time-sync.target`).
fn check_systemd(vm: &mut Vm, timeout: Duration) -> Vec<Check> {
    let mut checks = Vec::new();
    let name = "systemd reaches multi-user.target with no failed units";
    let _ = vm.sh(
        "export SYSTEMD_COLORS=0 SYSTEMD_PAGER=cat",
        Duration::from_secs(10),
    );
    let start = Instant::now();
    let reached = loop {
        match vm.sh(
            "systemctl is-active multi-user.target",
            Duration::from_secs(30),
        ) {
            Ok((0, _)) => break Ok(()),
            Ok(_) if start.elapsed() < timeout => std::thread::sleep(Duration::from_secs(2)),
            Ok((_, out)) => {
                let jobs = sh(vm, "systemctl list-jobs --no-legend --plain").unwrap_or_default();
                let failed = sh(vm, "systemctl --failed --no-legend --plain").unwrap_or_default();
                break Err(anyhow::anyhow!(
                    "{} after {}s; jobs: {}; failed: {}",
                    out.trim(),
                    timeout.as_secs(),
                    jobs.trim().replace('\n', "; "),
                    failed.trim().replace('\n', "; ")
                ));
            }
            Err(e) => break Err(e),
        }
    };
    let r = reached.and_then(|()| {
        // Units still starting may yet fail: wait for the job queue to drain
        // (bounded), then list what failed.
        let _ = vm.sh(
            "for i in $(seq 60); do [ -z \"$(systemctl list-jobs --no-legend)\" ] && break; sleep 1; done",
            Duration::from_secs(90),
        );
        let at = sh(
            vm,
            "systemctl show -P ActiveEnterTimestampMonotonic multi-user.target",
        )?;
        let secs = at.trim().parse::<f64>().unwrap_or(0.0) / 1e6;
        let failed = sh(vm, "systemctl --failed --no-legend --plain")?;
        // When systemd itself started (after the kernel and our initramfs).
        let userspace = sh(vm, "systemctl show -P UserspaceTimestampMonotonic")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|us| us / 1e6);
        if failed.trim().is_empty() {
            Ok(match userspace {
                Some(u) => format!(
                    "multi-user.target reached {secs:.1}s after kernel start \
                     (systemd started at {u:.1}s, {:.1}s in userspace)",
                    secs - u
                ),
                None => format!("multi-user.target reached {secs:.1}s after kernel start"),
            })
        } else {
            bail!("failed units: {}", failed.trim().replace('\n', "; "))
        }
    });
    checks.push(result(name, r));
    checks.push(result(
        "sshd listens on port 22",
        sh(vm, "ss -Hltn 'sport = :22'").and_then(|o| {
            if o.trim().is_empty() {
                bail!("nothing listens on :22")
            }
            Ok(o.lines()
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "))
        }),
    ));
    checks.push(result(
        "networkd has a DHCP address",
        sh(vm, "ip -color=never -4 -o addr show scope global dynamic").and_then(|o| {
            let addr = o
                .split_whitespace()
                .skip_while(|w| *w != "inet")
                .nth(1)
                .map(str::to_string);
            addr.ok_or_else(|| anyhow::anyhow!("no dynamic IPv4 address: {o:?}"))
        }),
    ));
    checks.push(result(
        "dpkg lists the installed packages",
        sh(
            vm,
            "dpkg-query -W -f '${db:Status-Abbrev}${Package}\\n' | grep -c '^ii'",
        )
        .and_then(|o| match o.trim().parse::<u32>() {
            Ok(n) if n > 0 => Ok(format!("{n} packages installed")),
            _ => bail!("dpkg-query lists no installed package: {o:?}"),
        }),
    ));
    checks.push(result(
        "systemd-timesyncd is active",
        sh(vm, "systemctl is-active systemd-timesyncd.service").map(|o| o.trim().to_string()),
    ));
    if vm
        .sh(
            "test -e /etc/wpa_supplicant/wpa_supplicant-wlan0.conf",
            Duration::from_secs(30),
        )
        .is_ok_and(|(status, _)| status == 0)
    {
        checks.push(result(
            "the node's Wi-Fi config is installed for wpa_supplicant",
            wifi_installed(vm),
        ));
    }
    if vm
        .sh(
            "systemctl cat k3s.service >/dev/null 2>&1",
            Duration::from_secs(30),
        )
        .is_ok_and(|(status, _)| status == 0)
    {
        checks.push(result(
            "k3s started after the clock was synchronised",
            k3s_after_time_sync(vm),
        ));
    }
    checks
}

/// The node config's wifi.conf is wpa_supplicant's config for wlan0, owner-only,
/// and wpa_supplicant@wlan0 is wanted by the wlan0 device (a VM has none, so
/// it is not started here).
fn wifi_installed(vm: &mut Vm) -> Result<String> {
    let conf = "/etc/wpa_supplicant/wpa_supplicant-wlan0.conf";
    let mode = sh(vm, &format!("stat -c '%a %U' {conf}"))?;
    if mode.trim() != "600 root" {
        bail!("{conf} is {}, not 600 root", mode.trim());
    }
    sh(vm, &format!("grep -q '^network={{' {conf}"))?;
    let link = sh(
        vm,
        "readlink /etc/systemd/system/sys-subsystem-net-devices-wlan0.device.wants/wpa_supplicant@wlan0.service",
    )?;
    if !link.trim().ends_with("/wpa_supplicant@.service") {
        bail!(
            "wpa_supplicant@wlan0 is not wanted by wlan0: {:?}",
            link.trim()
        );
    }
    sh(
        vm,
        "test -e /usr/lib/systemd/system/wpa_supplicant@.service",
    )?;
    Ok(format!(
        "{conf} 600 root; wpa_supplicant@wlan0 wanted by the wlan0 device"
    ))
}

/// k3s is active, timesyncd reports the clock synchronised, and k3s's main
/// process started after time-sync.target was reached (monotonic clock).
fn k3s_after_time_sync(vm: &mut Vm) -> Result<String> {
    let show = |vm: &mut Vm, what: &str| -> Result<u64> {
        let v = sh(vm, &format!("systemctl show -P {what}"))?;
        v.trim()
            .parse::<u64>()
            .with_context(|| format!("systemctl show -P {what}: {:?}", v.trim()))
    };
    let active = sh(vm, "systemctl is-active k3s.service").unwrap_or_default();
    if active.trim() != "active" {
        bail!("k3s.service is {:?}", active.trim());
    }
    let synced = sh(vm, "timedatectl show -P NTPSynchronized")?;
    if synced.trim() != "yes" {
        bail!("timedatectl: NTPSynchronized={}", synced.trim());
    }
    let synced_at = show(vm, "ActiveEnterTimestampMonotonic time-sync.target")?;
    let k3s_at = show(vm, "ExecMainStartTimestampMonotonic k3s.service")?;
    if synced_at == 0 || k3s_at < synced_at {
        bail!(
            "time-sync.target at {:.1}s, k3s started at {:.1}s",
            synced_at as f64 / 1e6,
            k3s_at as f64 / 1e6
        );
    }
    Ok(format!(
        "time-sync.target at {:.1}s, k3s started at {:.1}s",
        synced_at as f64 / 1e6,
        k3s_at as f64 / 1e6
    ))
}

/// Root logs in over SSH (to the guest's own sshd, from inside the guest)
/// with `key`, and a password login is refused. The key is typed into the
/// guest's /run (a tmpfs), used and removed; it is a test key, never a node's.
fn check_ssh_login(vm: &mut Vm, key: &Path) -> Check {
    let name = "root logs in over SSH with the key from cluster.yaml, not with a password";
    let r = (|| -> Result<String> {
        let pem =
            std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
        sh(
            vm,
            "rm -f /run/boottest-key && umask 077 && : > /run/boottest-key",
        )?;
        for line in pem.lines() {
            if line.contains('\'') {
                bail!(
                    "{} does not look like an OpenSSH private key",
                    key.display()
                );
            }
            sh(vm, &format!("printf '%s\\n' '{line}' >> /run/boottest-key"))?;
        }
        let opts =
            "-n -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
                    -o ConnectTimeout=20 -o LogLevel=ERROR";
        let who = sh(
            vm,
            &format!("ssh {opts} -i /run/boottest-key root@127.0.0.1 'id -un; hostname' 2>&1"),
        );
        if let Err(e) = &who {
            // What ssh says when asked to talk (the check's detail).
            let (_, said) = vm.sh(
                &format!(
                    "ssh {opts} -v -i /run/boottest-key root@127.0.0.1 true 2>&1 | tail -n 12"
                ),
                Duration::from_secs(60),
            )?;
            let _ = sh(vm, "rm -f /run/boottest-key");
            bail!("{e:#}; ssh -v ends: {}", said.replace('\n', " | "));
        }
        let _ = sh(vm, "rm -f /run/boottest-key");
        let who = who?;
        if !who.lines().next().is_some_and(|l| l.trim() == "root") {
            bail!("logged in, but not as root: {who:?}");
        }
        // Without the key the server must offer nothing else: its refusal
        // names the methods it allows.
        let (status, out) = vm.sh(
            &format!("ssh {opts} -o PubkeyAuthentication=no root@127.0.0.1 true 2>&1"),
            Duration::from_secs(40),
        )?;
        let refusal = out.lines().last().unwrap_or("").trim().to_string();
        if status == 0 || !refusal.ends_with("Permission denied (publickey).") {
            bail!("without the key: exit {status}, {refusal:?} (only publickey expected)");
        }
        Ok(format!(
            "logged in as root on {}; without the key: {refusal}",
            who.lines().nth(1).unwrap_or("?").trim()
        ))
    })();
    result(name, r)
}

fn result(name: &'static str, r: Result<String>) -> Check {
    match r {
        Ok(detail) => Check {
            name,
            passed: true,
            detail,
        },
        Err(e) => fail(name, format!("{e:#}")),
    }
}

fn check_mounts(vm: &mut Vm) -> Check {
    let name = "/usr is read-only squashfs, / is writable ext4, /etc is tmpfs";
    let r = (|| -> Result<String> {
        let mounts = sh(vm, "cat /proc/mounts")?;
        let find = |mp: &str| -> Option<(String, String)> {
            mounts.lines().rev().find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 4 && f[1] == mp).then(|| (f[2].to_string(), f[3].to_string()))
            })
        };
        let mut problems = Vec::new();
        for (mp, fs, ro) in [
            ("/usr", "squashfs", true),
            ("/", "ext4", false),
            ("/etc", "tmpfs", false),
        ] {
            match find(mp) {
                Some((t, opts)) => {
                    if t != fs {
                        problems.push(format!("{mp} is {t}, not {fs}"));
                    }
                    let is_ro = opts.split(',').any(|o| o == "ro");
                    if is_ro != ro {
                        problems.push(format!("{mp} is mounted {opts}"));
                    }
                }
                None => problems.push(format!("{mp} is not a mount point")),
            }
        }
        let (status, out) = vm.sh(
            "touch /usr/nodeimg-write-test 2>&1",
            Duration::from_secs(10),
        )?;
        if status == 0 || !out.contains("Read-only file system") {
            problems.push(format!("writing to /usr did not fail with EROFS: {out:?}"));
        }
        sh(vm, "touch /nodeimg-write-test && rm /nodeimg-write-test")?;
        if problems.is_empty() {
            Ok("squashfs ro on /usr (write: EROFS), ext4 rw on /, tmpfs on /etc".into())
        } else {
            bail!(problems.join("; "))
        }
    })();
    result(name, r)
}

/// The data partition (number `data` on the disk) is `/`, and it and its
/// filesystem fill the enlarged disk.
fn check_grown(vm: &mut Vm, disk_bytes: u64, data: u32) -> Check {
    let name = "data partition and filesystem grew to fill the enlarged disk";
    let r = (|| -> Result<String> {
        let dev = sh(vm, "awk '$2==\"/\"{print $1}' /proc/mounts | tail -n1")?;
        let part = dev.trim().trim_start_matches("/dev/").to_string();
        let number = sh(vm, &format!("cat /sys/class/block/{part}/partition"))?;
        if number.trim() != data.to_string() {
            bail!(
                "/ is /dev/{part}, partition {}, not the data partition {data}",
                number.trim()
            );
        }
        let disk = sh(
            vm,
            &format!("basename $(dirname $(readlink -f /sys/class/block/{part}))"),
        )?;
        let num = |s: String| -> Result<u64> {
            s.trim()
                .parse()
                .with_context(|| format!("not a number: {s:?}"))
        };
        let start = num(sh(vm, &format!("cat /sys/class/block/{part}/start"))?)? * 512;
        let size = num(sh(vm, &format!("cat /sys/class/block/{part}/size"))?)? * 512;
        let disk_size = num(sh(
            vm,
            &format!("cat /sys/class/block/{}/size", disk.trim()),
        )?)? * 512;
        if disk_size != disk_bytes {
            bail!("the guest sees a {disk_size}-byte disk, expected {disk_bytes}");
        }
        let end = start + size;
        // GPT keeps its backup header (and alignment) at the end: allow 1 MiB.
        if end + (1 << 20) < disk_size {
            bail!("partition ends at {end} of {disk_size} bytes: not grown");
        }
        let fs = sh(vm, "stat -f -c '%b %S' /")?;
        let mut it = fs.split_whitespace().map(|s| s.parse::<u64>());
        let fs_bytes = match (it.next(), it.next()) {
            (Some(Ok(b)), Some(Ok(s))) => b * s,
            _ => bail!("unreadable `stat -f` output {fs:?}"),
        };
        if fs_bytes * 100 < size * 95 {
            bail!("the filesystem holds {fs_bytes} bytes of a {size}-byte partition: not grown");
        }
        Ok(format!(
            "/dev/{part}: {} MiB partition, {} MiB filesystem on a {} MiB disk",
            size >> 20,
            fs_bytes >> 20,
            disk_size >> 20
        ))
    })();
    result(name, r)
}

/// A phone's data partition, inside the disk image: its GPT entry (read
/// from the VM's disk on the host) reaches the end of the enlarged disk, and
/// the filesystem mounted on `/` fills it.
fn check_inner_grown(vm: &mut Vm, disk: &Path, disk_bytes: u64, data: u32) -> Check {
    let name = "data partition and filesystem grew to fill the enlarged disk";
    let r = (|| -> Result<String> {
        let table = inspect::read_table(disk)?;
        let part = table
            .partitions
            .iter()
            .find(|p| p.number == data)
            .with_context(|| format!("no partition {data} in the disk's table"))?;
        let (start, size) = (part.start, part.size);
        let end = start + size;
        // The backup GPT (and alignment) stays at the end: allow 1 MiB.
        if end + (1 << 20) < disk_bytes {
            bail!("partition {data} ends at {end} of {disk_bytes} bytes: not grown");
        }
        let mounts = sh(vm, "awk '$2==\"/\"{print $1}' /proc/mounts | tail -n1")?;
        let fs = sh(vm, "stat -f -c '%b %S' /")?;
        let mut it = fs.split_whitespace().map(|s| s.parse::<u64>());
        let fs_bytes = match (it.next(), it.next()) {
            (Some(Ok(b)), Some(Ok(s))) => b * s,
            _ => bail!("unreadable `stat -f` output {fs:?}"),
        };
        if fs_bytes * 100 < size * 95 || fs_bytes > size {
            bail!(
                "the filesystem holds {fs_bytes} bytes of a {size}-byte partition: not grown to it"
            );
        }
        Ok(format!(
            "{} (partition {data} of the inner GPT, {}-byte sectors): {} MiB partition, {} MiB filesystem on a {} MiB disk",
            mounts.trim(),
            table.gpt.as_ref().map_or(512, |g| g.sector),
            size >> 20,
            fs_bytes >> 20,
            disk_bytes >> 20
        ))
    })();
    result(name, r)
}

fn check_persistence(vm: &mut Vm) -> Check {
    let name = "after a reboot /etc is fresh and /root, /var/lib, /home are kept";
    let r = (|| -> Result<String> {
        let out = sh(
            vm,
            "test ! -e /etc/nodeimg-boottest && echo etc-fresh; for d in /root /var/lib /home; do cat $d/nodeimg-boottest; done",
        )?;
        let want = "etc-fresh\nkept\nkept\nkept";
        if out.trim() != want {
            bail!("expected {want:?}, got {out:?}");
        }
        Ok("the /etc file is gone; 3 files on data kept".into())
    })();
    result(name, r)
}

fn check_power_loss(vm: &mut Vm) -> Check {
    let name = "after power loss the data partition mounts and synced data is there";
    let r = (|| -> Result<String> {
        let out = sh(vm, "cat /root/nodeimg-powerloss")?;
        if out.trim() != "synced-before-power-loss" {
            bail!("/root/nodeimg-powerloss holds {out:?}");
        }
        let errors = sh(vm, "dmesg | grep -i 'EXT4-fs error' || true")?;
        if !errors.trim().is_empty() {
            bail!("ext4 errors after power loss: {errors}");
        }
        Ok("synced file intact, no ext4 errors".into())
    })();
    result(name, r)
}

/// Identity facts: hostname, machine-id, SSH host key fingerprint, k3s node password.
/// The node password is written here if k3s has not (the test rootfs has no k3s
/// running), through `/etc/rancher/node` as k3s would.
fn identity(vm: &mut Vm) -> Result<Vec<(String, String)>> {
    sh(vm, "mkdir -p /etc/rancher/node && { test -s /etc/rancher/node/password || head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /etc/rancher/node/password; } && sync")?;
    // The facts are compared across boots as captured: a kernel message
    // amid them would make equal facts differ (see `Vm::wait_for_shell`).
    let probe = sh(
        vm,
        "echo '<3>nodeimg: console probe' > /dev/kmsg; echo clean",
    )?;
    if probe.trim() != "clean" {
        bail!("kernel messages reach the console amid command output: {probe:?}");
    }
    let mut facts = Vec::new();
    for (what, cmd) in [
        ("hostname", "hostname"),
        ("machine-id", "cat /etc/machine-id"),
        ("k3s node password", "cat /etc/rancher/node/password"),
        (
            "SSH host keys",
            // fingerprint, number of keys, whether the rootfs has an SSH server
            "k=$(ls /etc/ssh/ssh_host_*_key.pub /etc/dropbear/dropbear_*_host_key 2>/dev/null); \
             cat $k </dev/null | sha256sum | cut -c1-16; echo $k | wc -w; \
             if command -v dropbear >/dev/null || command -v sshd >/dev/null; then echo ssh-server; else echo no-ssh-server; fi",
        ),
    ] {
        facts.push((what.to_string(), sh(vm, cmd)?.trim().to_string()));
    }
    Ok(facts)
}

fn compare_identity(a: &Result<Vec<(String, String)>>, b: &Result<Vec<(String, String)>>) -> Check {
    let name = "same hostname, machine-id, SSH host keys and node password on other hardware";
    match (a, b) {
        (Ok(a), Ok(b)) if a == b => {
            let empty: Vec<&str> = a
                .iter()
                .filter(|(k, v)| v.is_empty() && k != "SSH host keys")
                .map(|(k, _)| k.as_str())
                .collect();
            if !empty.is_empty() {
                return fail(name, format!("empty: {}", empty.join(", ")));
            }
            if let Some((_, keys)) = a.iter().find(|(k, _)| k == "SSH host keys") {
                let lines: Vec<&str> = keys.lines().collect();
                if lines.get(2) == Some(&"ssh-server") && lines.get(1) == Some(&"0") {
                    return fail(
                        name,
                        "the rootfs has an SSH server but no SSH host keys".into(),
                    );
                }
            }
            Check {
                name,
                passed: true,
                detail: a
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.replace('\n', " ")))
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        }
        (Ok(a), Ok(b)) => fail(name, format!("first boot {a:?}, second boot {b:?}")),
        (Err(e), _) | (_, Err(e)) => fail(name, format!("{e:#}")),
    }
}

fn check_rescue(name: &'static str, spec: &VmSpec, needle: &str, timeout: Duration) -> Check {
    let r = (|| -> Result<String> {
        let mut vm = Vm::start(spec)?;
        let msg = vm.wait_for("nodeimg-init: ERROR", timeout)?;
        let line = vm.wait_for("\n", Duration::from_secs(5))?;
        let _ = msg;
        vm.wait_for_shell(Duration::from_secs(20))?;
        let line = line.trim().to_string();
        if !line.contains(needle) {
            bail!("the error {line:?} does not name {needle:?}");
        }
        Ok(format!("ERROR{line}"))
    })();
    result(name, r)
}

fn wrong_disk_id(cmdline: &str) -> String {
    cmdline
        .split_whitespace()
        .map(|w| match w.split_once('=') {
            Some(("nodeimg.disk", v)) if v.starts_with("gpt:") => {
                "nodeimg.disk=gpt:00000000-0000-4000-8000-000000000000".to_string()
            }
            Some(("nodeimg.disk", _)) => "nodeimg.disk=mbr:0badc0de".to_string(),
            _ => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Deletes a partition's entry from the table of a disk image (MBR or GPT,
/// fixing the primary GPT's checksums), leaving its data in place. The table
/// is read through the checked reader first, so every offset used here has
/// been validated against the file.
pub fn remove_partition(image: &Path, number: u32) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let table = inspect::read_table(image)?;
    if !table.partitions.iter().any(|p| p.number == number) {
        bail!("{}: no partition {number}", image.display());
    }
    let edit = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)?;
        let index = u64::from(number - 1); // number >= 1: it was found above
        let Some(gpt) = &table.gpt else {
            // An MBR slot: 16 bytes from offset 446.
            f.seek(SeekFrom::Start(446 + 16 * index))?;
            f.write_all(&[0u8; 16])?;
            return f.sync_all();
        };
        // Sizes validated by the reader: at most one sector and 1 MiB.
        let mut hdr = vec![0u8; gpt.header_size as usize];
        f.seek(SeekFrom::Start(gpt.header_offset))?;
        f.read_exact(&mut hdr)?;
        let entry = gpt.entry_size as usize;
        let mut arr = vec![0u8; gpt.entry_count as usize * entry];
        f.seek(SeekFrom::Start(gpt.entries_offset))?;
        f.read_exact(&mut arr)?;
        // The reader found the partition in this array, so its entry is there.
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| arr.chunks_mut(entry).nth(i))
            .ok_or_else(|| std::io::Error::other("the entry is outside the GPT entry array"))?;
        slot.fill(0);
        hdr[88..92].copy_from_slice(&crc32fast::hash(&arr).to_le_bytes());
        let crc = crate::disk::read::header_crc(&hdr);
        hdr[16..20].copy_from_slice(&crc.to_le_bytes());
        f.seek(SeekFrom::Start(gpt.entries_offset))?;
        f.write_all(&arr)?;
        f.seek(SeekFrom::Start(gpt.header_offset))?;
        f.write_all(&hdr)?;
        f.sync_all()
    };
    edit().with_context(|| format!("removing partition {number} from {}", image.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The busybox wait, run here: it waits while a process runs `nodeimg
    /// update commit` (a stand-in that sleeps, then leaves a file), and only
    /// that long: its own grep must not count.
    #[test]
    fn the_busybox_commit_wait_lasts_as_long_as_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("nodeimg");
        let done = dir.path().join("done");
        std::fs::write(&helper, format!("sleep 2; touch {}\n", done.display())).unwrap();
        let mut commit = std::process::Command::new("sh")
            .arg(&helper)
            .args(["update", "commit"])
            .spawn()
            .unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{WAIT_BUSYBOX}; echo $i"))
            .output()
            .unwrap();
        let _ = commit.wait();
        let waited: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert!(done.exists(), "returned before the commit ended");
        assert!((1..300).contains(&waited), "waited {waited} s");
        // Nothing running it: no wait at all.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{WAIT_BUSYBOX}; echo $i"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    }

    #[test]
    fn config_txt_names_kernel_and_initramfs() {
        let (k, i) = names_from_config_txt(
            "arm_64bit=1\nkernel=vmlinuz\ninitramfs initrd.img followkernel\n",
        );
        assert_eq!((k.as_str(), i.as_str()), ("vmlinuz", "initrd.img"));
    }

    fn facts(keys: &str) -> Result<Vec<(String, String)>> {
        Ok(vec![
            ("hostname".into(), "n1".into()),
            ("SSH host keys".into(), keys.into()),
        ])
    }

    #[test]
    fn identity_without_host_keys_fails_only_with_an_ssh_server() {
        let none_with_server = facts("e3b0c44298fc1c14\n0\nssh-server");
        assert!(!compare_identity(&none_with_server, &none_with_server).passed);
        let none_without_server = facts("e3b0c44298fc1c14\n0\nno-ssh-server");
        assert!(compare_identity(&none_without_server, &none_without_server).passed);
        let three = facts("31cf75adcc56f740\n3\nssh-server");
        assert!(compare_identity(&three, &three).passed);
        let other = facts("0000000000000000\n3\nssh-server");
        assert!(!compare_identity(&three, &other).passed);
    }

    /// A GPT or MBR image of 8 MiB with four 1 MiB partitions from 1 MiB.
    fn image(dir: &Path, gpt: bool) -> PathBuf {
        use crate::disk::layout::{PartKind, Placed, MIB};
        use crate::disk::{gpt as g, mbr};
        let placed: Vec<Placed> = Role::ALL
            .map(|r| Placed {
                number: r.number(),
                name: r.name().to_string(),
                start: u64::from(r.number()) * MIB,
                size: MIB,
                kind: PartKind::LinuxData,
            })
            .to_vec();
        let mut img = vec![0u8; 8 * MIB as usize];
        if gpt {
            let parts: Vec<g::GptPart> = placed
                .iter()
                .map(|p| g::GptPart {
                    placed: p,
                    type_guid: g::LINUX_FS_DATA,
                    unique_guid: [p.number as u8; 16],
                })
                .collect();
            let t = g::tables([1; 16], 512, 8 * MIB, &parts).unwrap();
            img[..t.primary.len()].copy_from_slice(&t.primary);
            let b = t.backup_offset as usize;
            img[b..b + t.backup.len()].copy_from_slice(&t.backup);
        } else {
            img[..512].copy_from_slice(&mbr::table(7, &placed, None).unwrap());
        }
        let path = dir.join(if gpt { "gpt.img" } else { "mbr.img" });
        std::fs::write(&path, img).unwrap();
        path
    }

    #[test]
    fn remove_partition_leaves_a_valid_table_without_it() {
        let dir = tempfile::tempdir().unwrap();
        for gpt in [true, false] {
            let img = image(dir.path(), gpt);
            let data = Role::Data.number();
            remove_partition(&img, data).unwrap();
            // The checked reader accepts the edited table (CRCs recomputed).
            let t = inspect::read_table(&img).unwrap();
            let numbers: Vec<u32> = t.partitions.iter().map(|p| p.number).collect();
            let others: Vec<u32> = Role::ALL
                .into_iter()
                .filter(|r| *r != Role::Data)
                .map(Role::number)
                .collect();
            assert_eq!(numbers, others, "gpt: {gpt}");
            let err = format!("{:#}", remove_partition(&img, data).unwrap_err());
            assert!(err.ends_with(&format!("no partition {data}")), "{err}");
            assert!(remove_partition(&img, 0).is_err());
        }
    }

    #[test]
    fn partitions_by_role_come_from_the_cmdline_else_the_layout() {
        let layout = Partitions::layout();
        for role in Role::ALL {
            assert_eq!(layout.number(role), role.number(), "{role:?}");
        }
        // What a build writes: the same numbers.
        let built = Partitions::from_cmdline(
            "console=ttyS1 nodeimg.disk=mbr:12345678 nodeimg.boot=1 nodeimg.system=2 nodeimg.data=4",
        )
        .unwrap();
        assert_eq!(built, layout);
        // An image whose cmdline names other partitions is followed; roles it
        // does not name (slot B has no key; boot left out here) keep the layout's.
        let moved =
            Partitions::from_cmdline("nodeimg.data=7 nodeimg.system=5 nodeimg.datax=9").unwrap();
        assert_eq!(moved.number(Role::Data), 7);
        assert_eq!(moved.number(Role::SystemA), 5);
        assert_eq!(moved.number(Role::Boot), Role::Boot.number());
        assert_eq!(moved.number(Role::SystemB), Role::SystemB.number());
        for bad in [
            "nodeimg.data=",
            "nodeimg.data=0",
            "nodeimg.data=x4",
            "nodeimg.boot=-1",
        ] {
            let err = format!("{:#}", Partitions::from_cmdline(bad).unwrap_err());
            assert!(
                err.contains(bad) && err.contains("not a partition number"),
                "{err}"
            );
        }
    }

    #[test]
    fn wrong_disk_id_replaces_only_the_identifier() {
        assert_eq!(
            wrong_disk_id("console=ttyS1 nodeimg.disk=mbr:12345678 nodeimg.data=4"),
            "console=ttyS1 nodeimg.disk=mbr:0badc0de nodeimg.data=4"
        );
    }
}
