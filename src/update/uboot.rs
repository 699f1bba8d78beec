//! U-Boot as the loader that picks the system slot: a boot script (legacy
//! uImage script format), the per-slot boot files on the FAT partition and
//! the small state file the script keeps there.
//!
//! The FAT partition for U-Boot holds:
//! - `boot.scr`, found by U-Boot's distro boot on the first partition;
//! - `slots.env`: `nodeimg_primary=a`, `nodeimg_trial=b`, `nodeimg_tries=N`
//!   (U-Boot's `env import -t` text); no trial means boot the primary;
//! - `slot-a/`, `slot-b/`: each slot's kernel, initramfs, device trees and
//!   `bootargs.env` (`bootargs=` the cmdline, which names the slot's system
//!   partition: kernel, initramfs and squashfs switch together).
//!
//! The script loads the state, and when a trial is armed with tries left,
//! decrements them and saves the state (`fatwrite`) *before* booting the
//! trial slot; once they run out it boots the primary. A trial kernel that
//! panics (a trial boot's cmdline gets `panic=10`: it reboots) or whose
//! initramfs fails (`nodeimg.trial`: it reboots rather than open a rescue
//! shell) thus falls back on its own.
//!
//! The uImage header is written here rather than by a crate: it is 64 bytes
//! and two CRC-32s, and no maintained crate writes script images (`mkimage`
//! is the oracle in the tests).

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use crate::tree::{self, Data};

/// What U-Boot's distro boot looks for.
pub const SCRIPT_NAME: &str = "boot.scr";
pub const STATE_NAME: &str = "slots.env";
/// The kernel and initramfs names in each slot directory.
pub const KERNEL: &str = "vmlinuz";
pub const INITRAMFS: &str = "initrd.img";
/// The slot's device tree, when the board names one (else the kernel gets
/// the loader's own: QEMU's, or the one the Pi firmware passed to U-Boot).
pub const FDT: &str = "fdt.dtb";
pub const MAX_TRIES: u32 = 9;
/// Appended to a trial boot's cmdline: the initramfs reboots (so the loader
/// falls back) where it would otherwise stop in a rescue shell, and a kernel
/// panic reboots after 10 s.
pub const TRIAL_ARGS: &str = "nodeimg.trial panic=10";

const IH_MAGIC: u32 = 0x2705_1956;
const IH_OS_LINUX: u8 = 5;
const IH_ARCH_ARM64: u8 = 22;
const IH_TYPE_SCRIPT: u8 = 6;
const IH_COMP_NONE: u8 = 0;

/// A legacy uImage of type script (as `mkimage -A arm64 -O linux -T script
/// -C none -n NAME -d SCRIPT` makes), `time` its timestamp.
pub fn script_image(script: &str, name: &str, time: u32) -> Result<Vec<u8>> {
    if name.len() > 31 {
        bail!("a uImage name holds at most 31 bytes: {name:?}");
    }
    let len = u32::try_from(script.len())?;
    // Multi-file data: the sizes, a zero, then the files (here one).
    let mut data = Vec::with_capacity(script.len() + 8);
    data.extend_from_slice(&len.to_be_bytes());
    data.extend_from_slice(&0u32.to_be_bytes());
    data.extend_from_slice(script.as_bytes());
    let mut h = [0u8; 64];
    h[0..4].copy_from_slice(&IH_MAGIC.to_be_bytes());
    h[8..12].copy_from_slice(&time.to_be_bytes());
    h[12..16].copy_from_slice(&u32::try_from(data.len())?.to_be_bytes());
    h[24..28].copy_from_slice(&crc32fast::hash(&data).to_be_bytes());
    h[28] = IH_OS_LINUX;
    h[29] = IH_ARCH_ARM64;
    h[30] = IH_TYPE_SCRIPT;
    h[31] = IH_COMP_NONE;
    h[32..32 + name.len()].copy_from_slice(name.as_bytes());
    let hcrc = crc32fast::hash(&h);
    h[4..8].copy_from_slice(&hcrc.to_be_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(&data);
    Ok(out)
}

/// The boot script's text (U-Boot hush). Runs with `devtype`, `devnum` and
/// `distro_bootpart` set by distro boot to the partition it came from; `env`
/// (the board's `uboot_env`, checked) is set first.
pub fn boot_script(env: &[(String, String)]) -> String {
    let mut settings = String::new();
    for (name, value) in env {
        settings.push_str(&format!("setenv {name} {value}\n"));
    }
    format!(
        r#"# nodeimg: pick the system slot; written by nodeimg, see docs/updates.md
{settings}setenv nodeimg_part ${{devtype}} ${{devnum}}:${{distro_bootpart}}
setenv nodeimg_primary a
setenv nodeimg_trial
setenv nodeimg_tries 0
if load ${{nodeimg_part}} ${{pxefile_addr_r}} {state}; then
  env import -t ${{pxefile_addr_r}} ${{filesize}} nodeimg_primary nodeimg_trial nodeimg_tries
fi
setenv nodeimg_slot ${{nodeimg_primary}}
if test -n "${{nodeimg_trial}}" && test ${{nodeimg_tries}} -gt 0; then
  setexpr nodeimg_tries ${{nodeimg_tries}} - 1
  env export -t ${{pxefile_addr_r}} nodeimg_primary nodeimg_trial nodeimg_tries
  if fatwrite ${{nodeimg_part}} ${{pxefile_addr_r}} {state} ${{filesize}}; then
    echo "nodeimg: trial boot of slot ${{nodeimg_trial}}, ${{nodeimg_tries}} tries left after this one"
    setenv nodeimg_slot ${{nodeimg_trial}}
  else
    echo "nodeimg: cannot save {state}: not trying slot ${{nodeimg_trial}}"
  fi
elif test -n "${{nodeimg_trial}}"; then
  echo "nodeimg: slot ${{nodeimg_trial}} failed its trial; booting slot ${{nodeimg_primary}}"
fi
echo "nodeimg: booting slot ${{nodeimg_slot}}"
setenv nodeimg_dir slot-${{nodeimg_slot}}
load ${{nodeimg_part}} ${{pxefile_addr_r}} ${{nodeimg_dir}}/bootargs.env && env import -t ${{pxefile_addr_r}} ${{filesize}} bootargs
if test "${{nodeimg_slot}}" = "${{nodeimg_trial}}"; then
  setenv bootargs "${{bootargs}} {trial_args}"
fi
setenv nodeimg_fdt ${{fdtcontroladdr}}
if test -e ${{nodeimg_part}} ${{nodeimg_dir}}/{fdt}; then
  load ${{nodeimg_part}} ${{fdt_addr_r}} ${{nodeimg_dir}}/{fdt} && setenv nodeimg_fdt ${{fdt_addr_r}}
fi
load ${{nodeimg_part}} ${{kernel_addr_r}} ${{nodeimg_dir}}/{kernel}
load ${{nodeimg_part}} ${{ramdisk_addr_r}} ${{nodeimg_dir}}/{initramfs}
booti ${{kernel_addr_r}} ${{ramdisk_addr_r}}:${{filesize}} ${{nodeimg_fdt}}
echo "nodeimg: slot ${{nodeimg_slot}} did not boot"
"#,
        state = STATE_NAME,
        trial_args = TRIAL_ARGS,
        kernel = KERNEL,
        initramfs = INITRAMFS,
        fdt = FDT,
    )
}

/// The loader's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub primary: char,
    /// A slot under trial, with the boots it has left.
    pub trial: Option<(char, u32)>,
}

impl State {
    /// The state file's text, as `env import -t` reads it. The script's
    /// `test` reads tries in decimal and `setexpr` writes them in hex: they
    /// agree up to [`MAX_TRIES`].
    pub fn to_text(&self) -> Result<String> {
        if let Some((_, tries)) = self.trial {
            if tries > MAX_TRIES {
                bail!("at most {MAX_TRIES} trial boots, not {tries}");
            }
        }
        let mut s = format!("nodeimg_primary={}\n", self.primary);
        if let Some((slot, tries)) = self.trial {
            s.push_str(&format!("nodeimg_trial={slot}\nnodeimg_tries={tries}\n"));
        } else {
            s.push_str("nodeimg_tries=0\n");
        }
        Ok(s)
    }

    /// Reads the state file as U-Boot left it (`env export -t`: lines, maybe
    /// a trailing NUL; `setexpr` writes the tries in hex).
    pub fn parse(bytes: &[u8]) -> Result<State> {
        let text = std::str::from_utf8(bytes)?.trim_end_matches('\0');
        let (mut primary, mut trial, mut tries) = (None, None, 0u32);
        for line in text.lines().filter(|l| !l.is_empty()) {
            let Some((k, v)) = line.split_once('=') else {
                bail!("{STATE_NAME}: not name=value: {line:?}");
            };
            let slot = || -> Result<char> {
                match v {
                    "a" => Ok('a'),
                    "b" => Ok('b'),
                    _ => bail!("{STATE_NAME}: {k} is not a slot: {v:?}"),
                }
            };
            match k {
                "nodeimg_primary" => primary = Some(slot()?),
                "nodeimg_trial" => trial = Some(slot()?),
                "nodeimg_tries" => {
                    let digits = v.strip_prefix("0x").unwrap_or(v);
                    tries = u32::from_str_radix(digits, 16)
                        .map_err(|_| anyhow::anyhow!("{STATE_NAME}: tries {v:?}"))?;
                }
                _ => bail!("{STATE_NAME}: unknown setting {k}"),
            }
        }
        Ok(State {
            primary: primary.ok_or_else(|| anyhow::anyhow!("{STATE_NAME}: no primary slot"))?,
            trial: trial.map(|t| (t, tries)),
        })
    }
}

/// A slot's cmdline: the image's, with the system partition of the slot.
pub fn slot_cmdline(cmdline: &str, system_partition: u32) -> String {
    set_cmdline_word(cmdline, "nodeimg.system", &system_partition.to_string())
}

/// `cmdline` with the value of each `key=...` word set to `value`.
pub fn set_cmdline_word(cmdline: &str, key: &str, value: &str) -> String {
    cmdline
        .split_whitespace()
        .map(|w| match w.split_once('=') {
            Some((k, _)) if k == key => format!("{key}={value}"),
            _ => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The files of one slot's directory on the FAT partition.
pub fn slot_files(
    slot: char,
    kernel: &Data,
    initramfs: &Data,
    cmdline: &str,
) -> BTreeMap<String, Data> {
    let dir = format!("slot-{slot}");
    let mut f = BTreeMap::new();
    f.insert(format!("{dir}/{KERNEL}"), kernel.clone());
    f.insert(format!("{dir}/{INITRAMFS}"), initramfs.clone());
    f.insert(
        format!("{dir}/bootargs.env"),
        tree::data(format!("bootargs={cmdline}\n")),
    );
    f
}

/// An image's boot partition files (`boot_files`, with the kernel and
/// initramfs under the board's names) in the loader's layout: the kernel,
/// initramfs and cmdline move into `slot-a/`, the board's device tree
/// (`dtb_name`) is copied there as [`FDT`], everything else (device trees,
/// firmware, node config) stays where it was; `boot.scr` (time-stamped 0:
/// reproducible) and a `slots.env` with slot a primary and no trial are
/// added. The image's cmdline already names slot a's system partition.
pub fn loader_files(
    mut boot_files: BTreeMap<String, Data>,
    kernel_name: &str,
    initramfs_name: &str,
    dtb_name: Option<&str>,
    env: &[(String, String)],
) -> Result<BTreeMap<String, Data>> {
    let mut take = |name: &str| {
        boot_files
            .remove(name)
            .ok_or_else(|| anyhow::anyhow!("the boot files have no {name}"))
    };
    let kernel = take(kernel_name)?;
    let initramfs = take(initramfs_name)?;
    let cmdline = String::from_utf8(take("cmdline.txt")?.to_vec()?)?;
    let cmdline = cmdline.trim();
    for name in [SCRIPT_NAME, STATE_NAME] {
        if boot_files.contains_key(name) {
            bail!("the boot files already have a {name}");
        }
    }
    boot_files.extend(slot_files('a', &kernel, &initramfs, cmdline));
    if let Some(name) = dtb_name {
        // Also left where it is: the Pi firmware hands it to U-Boot.
        let dtb = boot_files
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("the boot files have no {name}"))?
            .clone();
        boot_files.insert(format!("slot-a/{FDT}"), dtb);
    }
    boot_files.insert(
        SCRIPT_NAME.to_string(),
        tree::data(script_image(&boot_script(env), "nodeimg slots", 0)?),
    );
    let state = State {
        primary: 'a',
        trial: None,
    };
    boot_files.insert(STATE_NAME.to_string(), tree::data(state.to_text()?));
    Ok(boot_files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn script_image_matches_mkimage() {
        let dir = tempfile::tempdir().unwrap();
        let env = [("kernel_addr_r".to_string(), "0x00200000".to_string())];
        let script = boot_script(&env);
        assert!(script.contains("\nsetenv kernel_addr_r 0x00200000\nsetenv nodeimg_part"));
        std::fs::write(dir.path().join("s.txt"), &script).unwrap();
        let out = dir.path().join("s.scr");
        let st = Command::new("mkimage")
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["-A", "arm64", "-O", "linux", "-T", "script", "-C", "none"])
            .args(["-n", "nodeimg slots"])
            .arg("-d")
            .arg(dir.path().join("s.txt"))
            .arg(&out)
            .output()
            .expect("mkimage (u-boot-tools) is installed");
        assert!(st.status.success(), "{st:?}");
        let ours = script_image(&script, "nodeimg slots", 1_700_000_000).unwrap();
        assert_eq!(ours, std::fs::read(&out).unwrap());
        assert!(script_image("x", &"n".repeat(32), 0).is_err());
    }

    #[test]
    fn state_round_trips_and_reads_what_uboot_writes() {
        let s = State {
            primary: 'a',
            trial: Some(('b', 3)),
        };
        assert_eq!(State::parse(s.to_text().unwrap().as_bytes()).unwrap(), s);
        assert!(State {
            primary: 'a',
            trial: Some(('b', 10))
        }
        .to_text()
        .is_err());
        // env export -t after setexpr: hex tries, a trailing NUL.
        let uboot = b"nodeimg_primary=a\nnodeimg_tries=0\nnodeimg_trial=b\n\0";
        assert_eq!(
            State::parse(uboot).unwrap(),
            State {
                primary: 'a',
                trial: Some(('b', 0))
            }
        );
        assert!(State::parse(b"nodeimg_primary=c\n").is_err());
        assert!(State::parse(b"nodeimg_tries=1\n").is_err());
    }

    #[test]
    fn mutated_state_files_never_panic() {
        let good = b"nodeimg_primary=a\nnodeimg_trial=b\nnodeimg_tries=3\n\0";
        let mut state = 0x1234_5678_9abc_def1u64;
        for _ in 0..2000 {
            let mut m = good.to_vec();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = (state as usize) % m.len();
            m[at] = (state >> 32) as u8;
            if let Ok(s) = State::parse(&m) {
                assert!(matches!(s.primary, 'a' | 'b'));
                if let Some((t, _)) = s.trial {
                    assert!(matches!(t, 'a' | 'b'));
                }
            }
        }
    }

    #[test]
    fn loader_files_move_the_kernel_into_slot_a() {
        let mut f = BTreeMap::new();
        f.insert("vmlinuz".to_string(), tree::data(*b"K"));
        f.insert("initrd.img".to_string(), tree::data(*b"I"));
        f.insert(
            "cmdline.txt".to_string(),
            tree::data(*b"console=x nodeimg.system=2\n"),
        );
        f.insert("nodeimg/node.env".to_string(), tree::data(*b"N"));
        let l = loader_files(f.clone(), "vmlinuz", "initrd.img", None, &[]).unwrap();
        let names: Vec<&str> = l.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "boot.scr",
                "nodeimg/node.env",
                "slot-a/bootargs.env",
                "slot-a/initrd.img",
                "slot-a/vmlinuz",
                "slots.env"
            ]
        );
        assert_eq!(
            l["slot-a/bootargs.env"].to_vec().unwrap(),
            b"bootargs=console=x nodeimg.system=2\n"
        );
        assert!(loader_files(f.clone(), "Image", "initrd.img", None, &[]).is_err());
        // The board's device tree: kept for the firmware, copied into the slot.
        f.insert("board.dtb".to_string(), tree::data(*b"D"));
        let l = loader_files(f.clone(), "vmlinuz", "initrd.img", Some("board.dtb"), &[]).unwrap();
        assert_eq!(l["board.dtb"].to_vec().unwrap(), b"D");
        assert_eq!(l[&format!("slot-a/{FDT}")].to_vec().unwrap(), b"D");
        assert!(loader_files(f, "vmlinuz", "initrd.img", Some("other.dtb"), &[]).is_err());
    }

    #[test]
    fn slot_cmdline_swaps_only_the_system_partition() {
        assert_eq!(
            slot_cmdline("console=ttyAMA0 nodeimg.system=2 nodeimg.data=4", 3),
            "console=ttyAMA0 nodeimg.system=3 nodeimg.data=4"
        );
    }
}
