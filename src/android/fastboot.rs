//! `nodeimg flash --fastboot OUTDIR`: flashes a phone build (boot.img,
//! vendor_boot.img, the sparse rootfs piece(s)) with the `fastboot` tool,
//! after checking that the attached phone is the board's product.
//!
//! The flow: read `OUTDIR/build.json` for the board, load the board and its
//! `[android]` section, find the files, then `fastboot devices` (exactly one
//! device, usable), `fastboot getvar product` (must equal `android.product`), and
//! one `fastboot flash PARTITION FILE` per file. `--dry-run` prints those
//! commands and runs nothing. The queries run with a timeout
//! ([`QUERY_TIMEOUT`], `NODEIMG_FASTBOOT_TIMEOUT` seconds to change it): a
//! phone that is not in fastboot mode makes `fastboot getvar` wait forever.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::board::AndroidBoard;
use crate::board::DataDir;

/// How long `fastboot devices` and `fastboot getvar` may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// One `fastboot flash` of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    pub partition: String,
    pub file: PathBuf,
}

/// What will be flashed, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub board: String,
    pub product: String,
    pub flashes: Vec<Flash>,
}

/// The board named by `OUTDIR/build.json`.
fn board_of(outdir: &Path) -> Result<String> {
    let path = outdir.join("build.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (is {} a build's output directory?)",
            path.display(),
            outdir.display()
        )
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    v.get("board")
        .and_then(|b| b.as_str())
        .map(str::to_string)
        .with_context(|| format!("{}: no \"board\" field", path.display()))
}

/// The first of `names` present in `dir`.
fn first_existing(dir: &Path, names: &[String]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

/// The rootfs sparse image(s) in `dir`: `P rootfs.img` alone, or the pieces
/// `P rootfs.img.0`, `.1`, ... (or `P rootfs.0.img`, ...), for the prefixes P
/// ("" and "<name>-").
fn rootfs_pieces(dir: &Path, prefixes: &[String]) -> Result<Vec<PathBuf>> {
    for p in prefixes {
        for piece in [
            |p: &str, i: usize| format!("{p}rootfs.img.{i}"),
            |p: &str, i: usize| format!("{p}rootfs.{i}.img"),
        ] {
            let mut found = Vec::new();
            while dir.join(piece(p, found.len())).is_file() {
                found.push(dir.join(piece(p, found.len())));
            }
            if !found.is_empty() {
                if dir.join(format!("{p}rootfs.img")).is_file() {
                    bail!(
                        "{} holds both {p}rootfs.img and split pieces of it: which to flash is unclear",
                        dir.display()
                    );
                }
                return Ok(found);
            }
        }
        let whole = dir.join(format!("{p}rootfs.img"));
        if whole.is_file() {
            return Ok(vec![whole]);
        }
    }
    bail!(
        "no rootfs image (rootfs.img or rootfs.img.0, ...) in {}",
        dir.display()
    )
}

/// The flashes for the build in `outdir` of the board `name`.
pub fn plan(board: &str, android: &AndroidBoard, outdir: &Path) -> Result<Plan> {
    let dir_name = outdir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut prefixes = vec![String::new(), format!("{board}-")];
    if !dir_name.is_empty() && dir_name != board {
        prefixes.push(format!("{dir_name}-"));
    }
    let named =
        |file: &str| -> Vec<String> { prefixes.iter().map(|p| format!("{p}{file}")).collect() };
    let mut flashes = Vec::new();
    let boot = first_existing(outdir, &named("boot.img"))
        .with_context(|| format!("no boot.img in {}", outdir.display()))?;
    check_boot_image(&boot, false)?;
    flashes.push(Flash {
        partition: android.boot_partition.clone(),
        file: boot,
    });
    if let Some(vb) = first_existing(outdir, &named("vendor_boot.img")) {
        check_boot_image(&vb, true)?;
        let part = android.vendor_boot_partition.clone().with_context(|| {
            format!(
                "{} exists but board {board} names no android.vendor_boot_partition",
                vb.display()
            )
        })?;
        flashes.push(Flash {
            partition: part,
            file: vb,
        });
    } else if android.header_version >= 3 {
        bail!(
            "no vendor_boot.img in {} (header version {} needs one)",
            outdir.display(),
            android.header_version
        );
    }
    let mut raw_len = None;
    for piece in rootfs_pieces(outdir, &prefixes)? {
        let img = super::sparse::read_file(&piece)?;
        if *raw_len.get_or_insert(img.raw_len()) != img.raw_len() {
            bail!(
                "{} describes a {}-byte image, the first piece a {}-byte one: pieces of different builds?",
                piece.display(),
                img.raw_len(),
                raw_len.unwrap_or(0)
            );
        }
        if let Some(max) = android.max_download_size {
            let len = std::fs::metadata(&piece)
                .with_context(|| format!("reading {}", piece.display()))?
                .len();
            if len > max {
                bail!(
                    "{} is {len} bytes, more than the board's max_download_size of {max}: rebuild it",
                    piece.display()
                );
            }
        }
        flashes.push(Flash {
            partition: android.rootfs_partition.clone(),
            file: piece,
        });
    }
    Ok(Plan {
        board: board.to_string(),
        product: android.product.clone(),
        flashes,
    })
}

/// Refuses to flash a file that is not the boot image (or vendor boot
/// image) it is named as.
fn check_boot_image(path: &Path, vendor: bool) -> Result<()> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > 1 << 30 {
        bail!("{}: {len} bytes is no boot image", path.display());
    }
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let parsed = super::bootimg::parse(&data).with_context(|| path.display().to_string())?;
    let is_vendor = matches!(parsed, super::bootimg::Parsed::VendorBoot(_));
    if is_vendor != vendor {
        bail!(
            "{} is a {} image",
            path.display(),
            if is_vendor { "vendor boot" } else { "boot" }
        );
    }
    Ok(())
}

/// `fastboot` on PATH, or a clear error.
fn find_fastboot() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join("fastboot");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("the fastboot tool is not on PATH: install it (Debian: apt install fastboot; or Android's platform-tools)")
}

fn query_timeout() -> Duration {
    std::env::var("NODEIMG_FASTBOOT_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(QUERY_TIMEOUT)
}

/// What a query printed; `None` when it did not finish in time (it is killed).
struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

fn query(fastboot: &Path, args: &[&str], timeout: Duration) -> Result<Option<Output>> {
    let shown = format!("fastboot {}", args.join(" "));
    let mut child = Command::new(fastboot)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {shown}"))?;
    let mut out_pipe = child.stdout.take().context("no stdout pipe")?;
    let mut err_pipe = child.stderr.take().context("no stderr pipe")?;
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out_pipe.read_to_end(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err_pipe.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child
            .try_wait()
            .with_context(|| format!("waiting for {shown}"))?
        {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let Some(status) = status else {
        // The pipes may be held open by the tool's children: do not wait for the readers.
        return Ok(None);
    };
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    Ok(Some(Output {
        success: status.success(),
        stdout,
        stderr,
    }))
}

/// Refuses what `fastboot devices` listed unless it is one usable device:
/// with several, which one fastboot writes to is not ours to guess.
fn check_devices(listing: &str) -> Result<()> {
    let lines: Vec<&str> = listing.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.iter().any(|l| l.contains("no permissions")) {
        bail!(
            "fastboot sees a device but may not use it (no permissions): add a udev rule for it (Debian: package android-sdk-platform-tools-common) or run as root"
        );
    }
    if lines.len() > 1 {
        let serials: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        bail!(
            "{} devices are in fastboot mode ({}): connect only the phone to flash",
            lines.len(),
            serials.join(", ")
        );
    }
    Ok(())
}

/// The value of `product: X` in what `fastboot getvar product` printed
/// (fastboot prints it on stderr; stdout is searched too).
pub fn parse_product(out: &str) -> Option<String> {
    out.lines().find_map(|l| {
        l.trim()
            .strip_prefix("product:")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    })
}

fn flash_args(f: &Flash) -> Vec<OsString> {
    vec![
        "flash".into(),
        f.partition.clone().into(),
        f.file.clone().into_os_string(),
    ]
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The commands a flash runs, in order, one shell line each.
pub fn commands(plan: &Plan) -> Vec<String> {
    let mut v = vec![
        "fastboot devices".to_string(),
        "fastboot getvar product".to_string(),
    ];
    for f in &plan.flashes {
        v.push(format!(
            "fastboot flash {} {}",
            shell_quote(&f.partition),
            shell_quote(&f.file.to_string_lossy())
        ));
    }
    v
}

/// `nodeimg flash --fastboot OUTDIR [--dry-run]`.
pub fn command(data: &DataDir, outdir: &Path, dry_run: bool) -> Result<()> {
    let name = board_of(outdir)?;
    let (board, _) = data.load(&name)?;
    let android = board.android.as_ref().with_context(|| {
        format!(
            "board {name} is not a phone (no [android] section): flash its .img to a disk instead"
        )
    })?;
    let plan = plan(&name, android, outdir)?;
    if dry_run {
        println!(
            "# {name}: checks the product is {:?}, then flashes:",
            plan.product
        );
        for c in commands(&plan) {
            println!("{c}");
        }
        return Ok(());
    }
    let fastboot = find_fastboot()?;
    let timeout = query_timeout();
    let secs = timeout.as_secs();
    let devices = query(&fastboot, &["devices"], timeout)?
        .with_context(|| format!("`fastboot devices` did not answer within {secs} s"))?;
    if !devices.success || devices.stdout.trim().is_empty() {
        bail!(
            "no device in fastboot mode (`fastboot devices` lists none): connect the phone by USB and start its bootloader (power off, then hold volume up/down + power){}",
            if devices.success { String::new() } else { format!("; fastboot said: {}", devices.stderr.trim()) }
        );
    }
    check_devices(&devices.stdout)?;
    let got = query(&fastboot, &["getvar", "product"], timeout)?.with_context(|| {
        format!("the device did not answer `fastboot getvar product` within {secs} s (is it in fastboot mode?)")
    })?;
    let product = parse_product(&got.stderr)
        .or_else(|| parse_product(&got.stdout))
        .with_context(|| {
            format!(
                "`fastboot getvar product` gave no product (it said: {})",
                got.stderr.trim().replace('\n', "; ")
            )
        })?;
    if product != plan.product {
        bail!(
            "the attached device is a {product:?}, but board {name} is for {:?}: refusing to flash the wrong phone",
            plan.product
        );
    }
    for f in &plan.flashes {
        eprintln!(
            "nodeimg: fastboot flash {} {}",
            f.partition,
            f.file.display()
        );
        let st = Command::new(&fastboot)
            .args(flash_args(f))
            .stdin(Stdio::null())
            .status()
            .context("running fastboot flash")?;
        if !st.success() {
            bail!(
                "`fastboot flash {} {}` failed ({st}); the partitions flashed before it stay written",
                f.partition,
                f.file.display()
            );
        }
    }
    eprintln!("nodeimg: flashed {name}; `fastboot reboot` starts it");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_line_as_fastboot_prints_it() {
        let real = "product: sdm845\nFinished. Total time: 0.001s\n";
        assert_eq!(parse_product(real).as_deref(), Some("sdm845"));
        assert_eq!(parse_product("< waiting for any device >\n"), None);
        assert_eq!(parse_product("product:\n"), None);
    }

    #[test]
    fn one_usable_device_only() {
        assert!(check_devices("FAKE0123\tfastboot\n").is_ok());
        let e = check_devices("A1\tfastboot\nB2\tfastboot\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("2 devices are in fastboot mode (A1, B2)"),
            "{e}"
        );
        let e = check_devices("????????????\tno permissions; see [http://...]\n").unwrap_err();
        assert!(e.to_string().contains("no permissions"), "{e}");
    }

    #[test]
    fn quoting_keeps_plain_words() {
        assert_eq!(shell_quote("out/a-b/rootfs.img.0"), "out/a-b/rootfs.img.0");
        assert_eq!(shell_quote("my dir/x"), "'my dir/x'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
