//! Helpers shared by the integration tests: running the real binary, the test
//! rootfs made by test-images/make-rootfs.sh, and external tools as oracles.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The test rootfs tarball: $NODEIMG_TEST_ROOTFS or test-images/build/rootfs.tar.zst.
/// Missing is a test failure, not a skip: CI must make it (`.ci/run` does).
pub fn test_rootfs() -> PathBuf {
    let p = std::env::var_os("NODEIMG_TEST_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("test-images/build/rootfs.tar.zst"));
    assert!(
        p.is_file(),
        "test rootfs {} is missing: run test-images/make-rootfs.sh first",
        p.display()
    );
    p
}

/// Whether this process runs as root.
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Whether files extracted by tar, unsquashfs or cpio keep the owners
/// recorded in the archive, so a test can compare them: only when running as
/// root (anyone else gets their own ids). Not root: a failure under CI (CI
/// runs as root, .ci/run), otherwise a note on the terminal, past the test
/// harness's output capture, that `test` leaves owners out.
pub fn owners_survive_extraction(test: &str) -> bool {
    use std::io::Write;
    if running_as_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: comparing owners needs root, and CI (which runs as root) is set"
    );
    let _ = writeln!(
        std::io::stderr(),
        "NOTE {test}: not root, so extracted files have our own ids: owners not compared"
    );
    false
}

/// The test rootfs unpacked once (by GNU tar, with owners when root: see
/// [`owners_survive_extraction`]) for the tests to compare against.
pub fn unpacked_rootfs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("rootfs-unpacked");
        let mut tar = Command::new("tar");
        tar.arg("--zstd").arg("--numeric-owner");
        if running_as_root() {
            tar.arg("--same-owner");
        }
        run_ok(tar.arg("-xpf").arg(test_rootfs()).arg("-C").arg(&dir));
        dir
    })
}

/// A fresh directory under target/ that outlives the test (for debugging
/// failures) until a later test process starts: those of processes no
/// longer running are removed then, so runs do not pile up images.
pub fn scratch(name: &str) -> PathBuf {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nodeimg-tests");
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| remove_stale_scratch(&base));
    let dir = base.join(format!("{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Removes `base`'s `NAME-PID` directories whose process has ended.
fn remove_stale_scratch(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

pub fn nodeimg() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nodeimg"));
    c.env_remove("NODEIMG_DATA_DIR");
    // The system and k3s caches of this test process, not the user's.
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    c.env("XDG_CACHE_HOME", CACHE.get_or_init(|| scratch("xdg-cache")));
    c
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `nodeimg build BOARD --rootfs <the test rootfs> -o DIR/out --join CFG EXTRA...`:
/// the output directory and what the run gave.
pub fn build_joined(board: &str, dir: &Path, cfg: &Path, extra: &[&str]) -> (PathBuf, Output) {
    let out = dir.join("out");
    let cfg = cfg.to_str().expect("a UTF-8 test path");
    let args: Vec<&str> = ["--join", cfg]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let res = build(board, &test_rootfs(), &out, &args);
    (out, res)
}

/// Builds `board` from `rootfs` into `out` with a fixed SOURCE_DATE_EPOCH.
pub fn build(board: &str, rootfs: &Path, out: &Path, extra: &[&str]) -> Output {
    run(nodeimg()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .arg("build")
        .arg(board)
        .arg("--rootfs")
        .arg(rootfs)
        .arg("-o")
        .arg(out)
        .args(extra))
}

/// The image of each board built once from the test rootfs, shared by tests.
pub fn built_image(board: &'static str) -> PathBuf {
    static RPI4: OnceLock<PathBuf> = OnceLock::new();
    static QEMU: OnceLock<PathBuf> = OnceLock::new();
    let cell = match board {
        "rpi4" => &RPI4,
        "qemu-aarch64" => &QEMU,
        other => panic!("no shared build for {other}"),
    };
    cell.get_or_init(|| {
        let out = scratch(&format!("build-{board}"));
        run_ok(&mut {
            let mut c = nodeimg();
            c.env("SOURCE_DATE_EPOCH", "1700000000")
                .arg("build")
                .arg(board)
                .arg("--rootfs")
                .arg(test_rootfs())
                .arg("-o")
                .arg(&out);
            c
        });
        out.join(board).join(format!("{board}.img"))
    })
    .clone()
}

#[derive(Debug, Clone)]
pub struct Partition {
    pub node: String,
    pub start: u64,
    pub size: u64,
    pub typ: String,
    pub bootable: bool,
    pub name: Option<String>,
    pub uuid: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Table {
    pub label: String,
    pub id: String,
    pub sector_size: u64,
    pub partitions: Vec<Partition>,
}

/// `sfdisk --json` of an image, parsed.
pub fn sfdisk(image: &Path) -> Table {
    let out = run_ok(Command::new("sfdisk").arg("--json").arg(image));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pt = &v["partitiontable"];
    Table {
        label: pt["label"].as_str().unwrap().to_string(),
        id: pt["id"].as_str().unwrap().to_string(),
        sector_size: pt["sectorsize"].as_u64().unwrap_or(512),
        partitions: pt["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| Partition {
                node: p["node"].as_str().unwrap().to_string(),
                start: p["start"].as_u64().unwrap(),
                size: p["size"].as_u64().unwrap(),
                typ: p["type"].as_str().unwrap().to_string(),
                bootable: p["bootable"].as_bool().unwrap_or(false),
                name: p["name"].as_str().map(str::to_string),
                uuid: p["uuid"].as_str().map(str::to_string),
            })
            .collect(),
    }
}

/// Copies partition `n` (1-based) of `image` into its own file, sparse.
pub fn extract_partition(image: &Path, n: usize, dest: &Path) -> PathBuf {
    let t = sfdisk(image);
    let p = &t.partitions[n - 1];
    run_ok(
        Command::new("dd")
            .arg(format!("if={}", image.display()))
            .arg(format!("of={}", dest.display()))
            .arg("bs=512")
            .arg(format!("skip={}", p.start))
            .arg(format!("count={}", p.size))
            .arg("conv=sparse")
            .arg("status=none"),
    );
    dest.to_path_buf()
}

/// Lists every entry under `root` as (relative path, description) where the
/// description holds the type, mode, owner (` uid=N gid=N` at the end) and
/// content hash or link target.
pub fn describe_tree(root: &Path) -> std::collections::BTreeMap<String, String> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let ft = m.file_type();
            let what = if ft.is_symlink() {
                format!("link -> {}", fs::read_link(&p).unwrap().display())
            } else if ft.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if ft.is_file() {
                format!(
                    "file {}",
                    hex::encode(Sha256::digest(fs::read(&p).unwrap()))
                )
            } else {
                format!("special rdev={}", m.rdev())
            };
            let mode = if ft.is_symlink() {
                0
            } else {
                m.mode() & 0o7777
            };
            out.insert(
                rel,
                format!("{what} mode={mode:o} uid={} gid={}", m.uid(), m.gid()),
            );
        }
    }
    out
}

/// A [`describe_tree`] description without its trailing ` uid=N gid=N`.
pub fn without_owner(description: &str) -> String {
    match description.rfind(" uid=") {
        Some(i) => description[..i].to_string(),
        None => description.to_string(),
    }
}

/// Names of the entries directly inside `dir`, sorted.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A data dir (boards/ + overlays/) under `dir` whose `board` file is the
/// shipped one passed through `edit`, for `--data-dir`.
pub fn data_dir_with_board(dir: &Path, board: &str, edit: impl Fn(&str) -> String) -> PathBuf {
    let data = dir.join("data");
    fs::create_dir_all(data.join("boards")).unwrap();
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(repo().join("overlays"))
            .arg(&data),
    );
    let file = format!("boards/{board}.toml");
    let text = fs::read_to_string(repo().join(&file)).unwrap();
    let edited = edit(&text);
    assert_ne!(edited, text, "the edit changed nothing");
    fs::write(data.join(&file), edited).unwrap();
    data
}

/// Unpacks the initramfs (`initrd.img`, gzip'd newc cpio) of an image's boot
/// partition with GNU cpio into `dir/x`, returning that directory.
pub fn extract_initramfs(image: &Path, dir: &Path) -> PathBuf {
    let part = extract_partition(image, 1, &dir.join("boot.vfat"));
    let gz = run_ok(
        Command::new("mcopy")
            .args(["-n", "-i"])
            .arg(&part)
            .args(["::initrd.img", "-"]),
    )
    .stdout;
    let mut cpio = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut cpio).unwrap();
    fs::write(dir.join("initrd.cpio"), &cpio).unwrap();
    let x = dir.join("x");
    fs::create_dir(&x).unwrap();
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("cpio -idm --quiet < ../initrd.cpio")
            .current_dir(&x),
    );
    x
}

/// A zeroed disk image of `total` bytes with the primary and backup GPT of
/// `placed` (sector size `sector`); partition GUIDs repeat the partition number.
pub fn gpt_image(
    disk_guid: [u8; 16],
    sector: u64,
    total: u64,
    placed: &[nodeimg::disk::layout::Placed],
) -> Vec<u8> {
    use nodeimg::disk::gpt::{self, GptPart};
    let parts: Vec<GptPart> = placed
        .iter()
        .map(|p| GptPart {
            placed: p,
            type_guid: gpt::default_type(p.kind),
            unique_guid: [p.number as u8; 16],
        })
        .collect();
    let t = gpt::tables(disk_guid, sector, total, &parts).unwrap();
    let mut img = vec![0u8; total as usize];
    img[..t.primary.len()].copy_from_slice(&t.primary);
    let b = t.backup_offset as usize;
    img[b..b + t.backup.len()].copy_from_slice(&t.backup);
    img
}

/// A data dir under `dir` with a board `name`: the qemu-aarch64 board with
/// U-Boot as its loader (`method = "u-boot"`), its cmdline followed by
/// `cmdline_extra` (when not empty).
pub fn uboot_data_dir(dir: &Path, name: &str, cmdline_extra: &str) -> PathBuf {
    let data = dir.join("data");
    fs::create_dir_all(data.join("boards")).unwrap();
    let mut board = fs::read_to_string(repo().join("boards/qemu-aarch64.toml"))
        .unwrap()
        .replace("name = \"qemu-aarch64\"", &format!("name = \"{name}\""))
        .replace("method = \"direct-kernel\"", "method = \"u-boot\"");
    if !cmdline_extra.is_empty() {
        board = board.replace(
            "cmdline = \"console=ttyAMA0 rootwait\"",
            &format!("cmdline = \"console=ttyAMA0 rootwait {cmdline_extra}\""),
        );
        assert!(board.contains(cmdline_extra));
    }
    assert!(board.contains("u-boot") && board.contains(&format!("\"{name}\"")));
    fs::write(data.join(format!("boards/{name}.toml")), board).unwrap();
    data
}

/// `mtype`/`mcopy`/`mmd`/... on the FAT partition at byte `offset` of `image`.
pub fn mtools(tool: &str, image: &Path, offset: u64, args: &[&str]) -> Vec<u8> {
    run_ok(
        Command::new(tool)
            .arg("-i")
            .arg(format!("{}@@{offset}", image.display()))
            .args(args),
    )
    .stdout
}

/// Debian's U-Boot for QEMU's virt machine (u-boot-qemu), as `-bios`.
pub const UBOOT_QEMU: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";

/// A TCP port of 127.0.0.1 free now (for a QEMU port forward).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `nodeimg update push BUNDLE root@127.0.0.1 --port PORT -i ID EXTRA...`,
/// the VM's host key neither checked nor kept.
pub fn push_to_vm(bundle: &Path, port: u16, id: &Path, extra: &[&str]) -> Output {
    run(nodeimg()
        .args(["update", "push"])
        .arg(bundle)
        .arg("root@127.0.0.1")
        .args(["--port", &port.to_string(), "-i"])
        .arg(id)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(extra))
}

/// The test rootfs, as a .tar `name` in `dir`, with `files` (path, bytes;
/// root-owned) appended: later entries replace earlier ones.
pub fn rootfs_with_files(dir: &Path, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let tar = dir.join(name);
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "zstd -q -dc {} > {}",
        test_rootfs().display(),
        tar.display()
    )));
    let add = dir.join(format!("{name}.add"));
    for (path, bytes) in files {
        let p = add.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
    }
    let mut cmd = Command::new("tar");
    cmd.args(["--append", "--owner=0", "--group=0", "-f"])
        .arg(&tar)
        .arg("-C")
        .arg(&add);
    for (path, _) in files {
        cmd.arg(format!("./{path}"));
    }
    run_ok(&mut cmd);
    tar
}

/// The rest of the line after `prefix` in `text` (trimmed); panics without one.
pub fn line_after<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in:\n{text}"))
        .trim()
}

/// Runs `cmd` in the VM's shell; it must succeed. Its output.
pub fn vm_sh(vm: &mut nodeimg::qemu::Vm, cmd: &str) -> String {
    let (st, out) = vm.sh(cmd, std::time::Duration::from_secs(120)).unwrap();
    assert_eq!(st, 0, "{cmd}: {out}");
    out
}

/// The node's hostname and machine-id, as the test rootfs prints them at boot.
pub fn identity(boot_log: &str) -> (String, String) {
    (
        line_after(boot_log, "nodeimg-test-rootfs: hostname=").to_string(),
        line_after(boot_log, "nodeimg-test-rootfs: machine-id=").to_string(),
    )
}

/// After the update tests' version 2 (`nodeimg.test.v2` on its cmdline, a
/// `version` marker in its system) was committed in slot b: the node runs
/// it, and the `/root/data-marker` written under version 1 is still there.
pub fn assert_runs_v2_from_slot_b(vm: &mut nodeimg::qemu::Vm) {
    let cmdline = vm_sh(vm, "cat /proc/cmdline");
    assert!(
        cmdline.contains("nodeimg.system=3") && cmdline.contains("nodeimg.test.v2"),
        "{cmdline}"
    );
    assert_eq!(vm_sh(vm, "cat /usr/share/nodeimg-test/version"), "v2");
    assert_eq!(vm_sh(vm, "cat /root/data-marker"), "kept");
    let status = vm_sh(vm, "nodeimg update status");
    assert!(
        status.contains("running slot b (version 2), primary slot b"),
        "{status}"
    );
}

/// `nodeimg build BOARD --data-dir DATA --sign-key KEY --build-version N
/// EXTRA...` from `rootfs` into `out` (it must succeed): `out/BOARD`.
pub fn build_signed(
    board: &str,
    data: &Path,
    key: &str,
    rootfs: &Path,
    out: &Path,
    version: u32,
    extra: &[&str],
) -> PathBuf {
    let v = version.to_string();
    let mut args = vec![
        "--data-dir",
        data.to_str().expect("a UTF-8 test path"),
        "--sign-key",
        key,
        "--build-version",
        &v,
    ];
    args.extend_from_slice(extra);
    let res = build(board, rootfs, out, &args);
    assert!(
        res.status.success(),
        "build {board} v{version}: {}",
        stderr(&res)
    );
    out.join(board)
}
