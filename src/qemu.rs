//! Driving a QEMU guest over its serial console: start it, wait for text,
//! run shell commands and read their output and exit status, kill it.
//!
//! Everything the guest prints is kept (and appended to a log file) so a
//! failed check can show what the console said.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// One VM: what it boots and how it looks to the guest.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub qemu: PathBuf,
    pub disk: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub mem_mib: u32,
    pub cpus: u32,
    pub mac: String,
    /// The console log is appended here.
    pub log: PathBuf,
    /// Firmware to boot instead of `kernel`/`initrd`/`cmdline` (U-Boot as
    /// `-bios`, which loads them from the disk); the guest may then reboot
    /// (the firmware runs again), where a direct-kernel boot ends QEMU.
    pub firmware: Option<PathBuf>,
    /// More disks, read-only, after `disk` (/dev/vdb, ...).
    pub extra_drives: Vec<PathBuf>,
    /// TCP ports of the host's 127.0.0.1 forwarded to the guest: (host, guest).
    pub forward: Vec<(u16, u16)>,
    pub machine: Machine,
}

/// The emulated board.
#[derive(Debug, Clone, Default)]
pub enum Machine {
    /// `virt`: virtio disks and network, `firmware` as `-bios`.
    #[default]
    Virt,
    /// `raspi4b`: `firmware` (U-Boot) started as the Pi firmware would,
    /// with `dtb`; `disk` is the SD card (its size a power of two). No
    /// network and no more disks: QEMU does not model the Pi's.
    Raspi4b { dtb: PathBuf },
}

pub struct Vm {
    child: Child,
    stdin: ChildStdin,
    console: Arc<Mutex<Vec<u8>>>,
    /// How much of `console` earlier waits have consumed.
    seen: usize,
    started: Instant,
}

/// QEMU's command line for the `raspi4b` machine: U-Boot as the kernel the
/// firmware would start, the card on the SD bus, the console on the first
/// serial port.
fn raspi4b_command(spec: &VmSpec, dtb: &Path) -> Result<Command> {
    let uboot = spec
        .firmware
        .as_ref()
        .ok_or_else(|| anyhow!("raspi4b needs the loader (U-Boot) as firmware"))?;
    if !spec.extra_drives.is_empty() || !spec.forward.is_empty() {
        bail!("raspi4b has no more disks and no network in QEMU");
    }
    let size = std::fs::metadata(&spec.disk)
        .with_context(|| format!("reading {}", spec.disk.display()))?
        .len();
    if !size.is_power_of_two() {
        bail!(
            "{}: QEMU's SD card must be a power of two in size, not {size} bytes",
            spec.disk.display()
        );
    }
    let mut cmd = Command::new(&spec.qemu);
    cmd.args(["-M", "raspi4b", "-nographic"])
        .arg("-kernel")
        .arg(uboot)
        .arg("-dtb")
        .arg(dtb)
        .arg("-drive")
        .arg(format!(
            "file={},if=sd,format=raw,cache=unsafe",
            spec.disk.display()
        ))
        .args(["-serial", "stdio", "-monitor", "none"]);
    Ok(cmd)
}

impl Vm {
    pub fn start(spec: &VmSpec) -> Result<Vm> {
        if let Machine::Raspi4b { dtb } = &spec.machine {
            return Vm::spawn(spec, raspi4b_command(spec, dtb)?);
        }
        let mut cmd = Command::new(&spec.qemu);
        cmd.args(["-M", "virt", "-cpu", "cortex-a72", "-nographic"])
            .args(["-m", &spec.mem_mib.to_string()])
            .args(["-smp", &spec.cpus.to_string()]);
        match &spec.firmware {
            Some(f) => {
                cmd.arg("-bios").arg(f);
            }
            None => {
                cmd.arg("-no-reboot")
                    .arg("-kernel")
                    .arg(&spec.kernel)
                    .arg("-initrd")
                    .arg(&spec.initrd)
                    .arg("-append")
                    .arg(&spec.cmdline);
            }
        }
        cmd.arg("-drive").arg(format!(
            "file={},if=virtio,format=raw,cache=unsafe",
            spec.disk.display()
        ));
        for d in &spec.extra_drives {
            cmd.arg("-drive").arg(format!(
                "file={},if=virtio,format=raw,readonly=on",
                d.display()
            ));
        }
        cmd.args(["-netdev", &netdev(&spec.forward)])
            .arg("-device")
            .arg(format!(
                "virtio-net-pci,netdev=n0,mac={},romfile=",
                spec.mac
            ))
            .args(["-serial", "stdio", "-monitor", "none"]);
        Vm::spawn(spec, cmd)
    }

    /// Starts `cmd` (QEMU with the console on stdio) and follows its output.
    fn spawn(spec: &VmSpec, mut cmd: Command) -> Result<Vm> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", spec.qemu.display()))?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let console = Arc::new(Mutex::new(Vec::new()));
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("opening {}", spec.log.display()))?;
        let _ = writeln!(log, "\n===== qemu {:?}", spec);
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let console = console.clone();
            let mut log = log.try_clone().context("cloning the log handle")?;
            std::thread::spawn(move || pump(stream, &console, &mut log));
        }
        Ok(Vm {
            child,
            stdin,
            console,
            seen: 0,
            started: Instant::now(),
        })
    }

    /// Seconds since the VM started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until the console shows `needle` (after what earlier waits consumed).
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((seen, text)) = take_through(&lock(&self.console), self.seen, needle) {
                self.seen = seen;
                return Ok(text);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "QEMU exited ({status}) before the console showed {needle:?}; console ends with:\n{}",
                    self.tail(25)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {}s waiting for {needle:?}; console ends with:\n{}",
                    timeout.as_secs(),
                    self.tail(25)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types a line on the console.
    pub fn send(&mut self, line: &str) -> Result<()> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| self.stdin.flush())
            .context("writing to the VM console")
    }

    /// Waits for a shell on the console: types a probe until its output shows.
    pub fn wait_for_shell(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.send("echo @@SHELL''READY")?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "no shell on the console after {}s; console ends with:\n{}",
                    timeout.as_secs(),
                    self.tail(25)
                );
            }
            if self
                .wait_for("@@SHELLREADY", left.min(Duration::from_secs(3)))
                .is_ok()
            {
                // Let the rest of the probes' echoes pass.
                std::thread::sleep(Duration::from_millis(300));
                self.seen = lock(&self.console).len();
                // Kernel messages on the console land amid commands' output
                // (a "hrtimer: interrupt took" line once split a captured
                // value): from here on only emergencies, a panic, reach it.
                // The kernel's buffer (`dmesg`) still has them all.
                let _ = self.sh("dmesg -n 1 2>/dev/null", Duration::from_secs(10));
                return Ok(());
            }
        }
    }

    /// Runs a shell command in the guest; returns its exit status and output.
    pub fn sh(&mut self, command: &str, timeout: Duration) -> Result<(i32, String)> {
        let id = format!("{:x}", self.seen);
        self.send(&format!("echo @@B''{id}; {command}; echo @@E''{id}:$?"))?;
        self.wait_for(&format!("@@B{id}"), timeout)?;
        let out = self.wait_for(&format!("@@E{id}:"), timeout)?;
        let status_text = self.wait_for("\n", Duration::from_secs(5))?;
        let status = status_text
            .trim()
            .parse()
            .map_err(|_| anyhow!("unreadable exit status {status_text:?} of {command:?}"))?;
        let body = out.trim_end_matches(&format!("@@E{id}:")).replace('\r', "");
        Ok((status, body.trim_matches('\n').to_string()))
    }

    /// The last `lines` lines of the console.
    pub fn tail(&self, lines: usize) -> String {
        let buf = lock(&self.console);
        let text = String::from_utf8_lossy(&buf).replace('\r', "");
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Pulls the plug: SIGKILL, no shutdown.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds `needle` in `console` from byte `seen` on; returns the byte offset
/// just past it and the text up to there. The search is on bytes, so what the
/// guest prints that is not UTF-8 cannot shift the offset (a lossy decoding
/// changes lengths).
fn take_through(console: &[u8], seen: usize, needle: &str) -> Option<(usize, String)> {
    let start = seen.min(console.len());
    let rest = &console[start..];
    let needle = needle.as_bytes();
    let at = if needle.is_empty() {
        0
    } else {
        rest.windows(needle.len()).position(|w| w == needle)?
    };
    let end = at + needle.len();
    Some((
        start + end,
        String::from_utf8_lossy(&rest[..end]).into_owned(),
    ))
}

fn lock(m: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn pump(mut from: Box<dyn Read + Send>, to: &Mutex<Vec<u8>>, log: &mut std::fs::File) {
    let mut buf = [0u8; 4096];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                lock(to).extend_from_slice(&buf[..n]);
                let _ = log.write_all(&buf[..n]);
            }
        }
    }
}

/// Finds `qemu-system-aarch64` on PATH.
/// QEMU's user-mode network with `forward`ed host ports.
fn netdev(forward: &[(u16, u16)]) -> String {
    let mut s = "user,id=n0".to_string();
    for (host, guest) in forward {
        s.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
    }
    s
}

pub fn find_qemu() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-aarch64"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "qemu-system-aarch64 not found on PATH (Debian: apt-get install qemu-system-arm)"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_consume_bytes_even_when_the_console_is_not_utf8() {
        // Two bytes that are not UTF-8 become two 3-byte replacement
        // characters when decoded: offsets must come from the bytes.
        let console = b"\xff\xfeboot OK\r\n@@E1:0\nnext @@E2:1\n";
        let (seen, text) = take_through(console, 0, "OK").unwrap();
        assert_eq!(seen, 9);
        assert_eq!(text, "\u{fffd}\u{fffd}boot OK");
        let (seen, text) = take_through(console, seen, "@@E1:").unwrap();
        assert_eq!(text, "\r\n@@E1:");
        let (seen, text) = take_through(console, seen, "\n").unwrap();
        assert_eq!(text, "0\n");
        let (seen, text) = take_through(console, seen, "@@E2:").unwrap();
        assert_eq!(text, "next @@E2:");
        assert_eq!(&console[seen..], b"1\n");
        // Not there (yet), or past the end: nothing is consumed.
        assert_eq!(take_through(console, seen, "@@E3:"), None);
        assert_eq!(take_through(console, 1000, "x"), None);
    }
}
