//! systemd: what `systemctl enable` and the packages' scripts would set up.
//!
//! - units enabled from their `[Install]` sections (`WantedBy=`,
//!   `RequiredBy=`, `Alias=`, `Also=`), as links under `/etc/systemd/system`;
//!   templates by instance (`serial-getty@ttyAMA0.service`);
//! - a getty on the board's serial console, wanted by the console's device
//!   (`dev-ttyS1.device.wants/`), `default.target` -> `multi-user.target`;
//! - networkd: DHCP on wired interfaces (`en*`, `eth*`);
//! - `/etc/resolv.conf` -> resolved's stub, an empty `/etc/machine-id` (the
//!   init fills it), `/var/log/journal` (persistent journal).

use std::collections::BTreeSet;

use anyhow::{anyhow, Context, Result};

use super::super::compose::ComposeOptions;
use super::{dir, read_text, symlink, write};
use crate::tree::Tree;

const UNIT_DIRS: &[&str] = &["etc/systemd/system", "usr/lib/systemd/system"];

pub const WIRED_NETWORK: &str = "# nodeimg: DHCP on wired interfaces.\n\
[Match]\n\
Name=en* eth*\n\
\n\
[Network]\n\
DHCP=yes\n";

pub fn run(tree: &mut Tree, opts: &ComposeOptions) -> Result<()> {
    if find_unit(tree, "multi-user.target").is_none() {
        // Not a systemd tree: nothing to do.
        return Ok(());
    }
    let t = opts.mtime;
    let mut done = BTreeSet::new();
    for u in &opts.enable {
        enable(tree, u, &mut done, t).with_context(|| format!("enabling {u}"))?;
    }
    // The serial console's getty is wanted by its device, not by getty.target:
    // it starts when the port appears, and a board without it (the UART off in
    // config.txt, a Pi image on QEMU's virt) does not hold multi-user.target
    // back for the device's 90 s timeout.
    let getty = format!("serial-getty@{}.service", opts.serial_console);
    let unit = find_unit(tree, &getty).ok_or_else(|| anyhow!("no unit file for {getty}"))?;
    symlink(
        tree,
        &format!(
            "etc/systemd/system/dev-{}.device.wants/{getty}",
            opts.serial_console
        ),
        &format!("/{unit}"),
        t,
    )?;
    symlink(
        tree,
        "etc/systemd/system/default.target",
        "/usr/lib/systemd/system/multi-user.target",
        t,
    )?;
    write(
        tree,
        "etc/systemd/network/20-wired.network",
        WIRED_NETWORK.as_bytes().to_vec(),
        0o644,
        t,
    )?;
    symlink(
        tree,
        "etc/resolv.conf",
        "../run/systemd/resolve/stub-resolv.conf",
        t,
    )?;
    write(tree, "etc/machine-id", Vec::new(), 0o444, t)?;
    dir(tree, "var/log/journal", 0o2755, t)?;
    if let Some(gid) = group_id(tree, "systemd-journal")? {
        if let Some(e) = tree.get_mut("var/log/journal") {
            e.meta.gid = gid;
        }
    }
    Ok(())
}

/// The template of an instance name: `a@b.service` -> `a@.service`.
fn template_of(unit: &str) -> Option<String> {
    let (head, rest) = unit.split_once('@')?;
    let (_, suffix) = rest.rsplit_once('.')?;
    Some(format!("{head}@.{suffix}"))
}

/// The unit file for `unit` (tree key), through its template if needed.
fn find_unit(tree: &Tree, unit: &str) -> Option<String> {
    let mut names = vec![unit.to_string()];
    if let Some(t) = template_of(unit) {
        names.push(t);
    }
    for name in names {
        for d in UNIT_DIRS {
            let key = format!("{d}/{name}");
            if tree.contains(&key) {
                return Some(key);
            }
        }
    }
    None
}

/// The values of `key` in section `[section]` (space-separated, repeated
/// keys add up; an empty assignment resets, as systemd does).
pub fn install_values(unit_text: &str, section: &str, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_section = false;
    for line in unit_text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            in_section = line == format!("[{section}]");
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.trim() == key {
                let v = v.trim();
                if v.is_empty() {
                    out.clear();
                }
                out.extend(v.split_whitespace().map(str::to_string));
            }
        }
    }
    out
}

fn enable(tree: &mut Tree, unit: &str, done: &mut BTreeSet<String>, t: u64) -> Result<()> {
    if !done.insert(unit.to_string()) {
        return Ok(());
    }
    let key = find_unit(tree, unit).ok_or_else(|| anyhow!("no unit file {unit}"))?;
    let text = read_text(tree, &key)?.unwrap_or_default();
    let target_file = format!("/{key}");
    let is_template = unit.contains("@.");
    let mut instance_unit = unit.to_string();
    if is_template {
        match install_values(&text, "Install", "DefaultInstance").first() {
            Some(i) => instance_unit = unit.replacen("@.", &format!("@{i}."), 1),
            None => return Ok(()), // templates without an instance are not enabled
        }
    }
    let wanted = install_values(&text, "Install", "WantedBy");
    let required = install_values(&text, "Install", "RequiredBy");
    let aliases = install_values(&text, "Install", "Alias");
    let also = install_values(&text, "Install", "Also");
    // A static unit (no [Install], e.g. dbus.socket, which its package
    // links into sockets.target.wants itself) is left as it is, as
    // `systemctl enable` does.
    for (dirs, suffix) in [(&wanted, "wants"), (&required, "requires")] {
        for target in dirs {
            symlink(
                tree,
                &format!("etc/systemd/system/{target}.{suffix}/{instance_unit}"),
                &target_file,
                t,
            )?;
        }
    }
    for alias in &aliases {
        symlink(
            tree,
            &format!("etc/systemd/system/{alias}"),
            &target_file,
            t,
        )?;
    }
    for other in &also {
        enable(tree, other, done, t)?;
    }
    Ok(())
}

fn group_id(tree: &Tree, name: &str) -> Result<Option<u32>> {
    let Some(group) = read_text(tree, "etc/group")? else {
        return Ok(None);
    };
    Ok(group.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() == 4 && f[0] == name)
            .then(|| f[2].parse().ok())
            .flatten()
    }))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    const SYS: &str = "usr/lib/systemd/system";

    fn opts(units: &[&str]) -> ComposeOptions {
        ComposeOptions {
            serial_console: "ttyAMA0".into(),
            enable: units.iter().map(|s| s.to_string()).collect(),
            mtime: 5,
            module_index_cache: None,
        }
    }

    fn systemd_tree() -> Tree {
        tree(&[
            (&format!("{SYS}/multi-user.target"), "[Unit]\n"),
            (
                &format!("{SYS}/systemd-networkd.service"),
                "[Service]\nExecStart=x\n[Install]\nWantedBy=multi-user.target\nAlso=systemd-networkd.socket\nAlias=dbus-org.freedesktop.network1.service\n",
            ),
            (
                &format!("{SYS}/systemd-networkd.socket"),
                "[Install]\nWantedBy=sockets.target\n",
            ),
            (
                &format!("{SYS}/serial-getty@.service"),
                "[Install]\nWantedBy=getty.target\n",
            ),
            (&format!("{SYS}/static.service"), "[Service]\nExecStart=x\n"),
            ("etc/group", "root:x:0:\nsystemd-journal:x:999:\n"),
        ])
    }

    #[test]
    fn enables_from_install_sections() {
        let mut t = systemd_tree();
        run(&mut t, &opts(&["systemd-networkd.service"])).unwrap();
        let e = "etc/systemd/system";
        assert_eq!(
            link(
                &t,
                &format!("{e}/multi-user.target.wants/systemd-networkd.service")
            ),
            "/usr/lib/systemd/system/systemd-networkd.service"
        );
        assert_eq!(
            link(
                &t,
                &format!("{e}/sockets.target.wants/systemd-networkd.socket")
            ),
            "/usr/lib/systemd/system/systemd-networkd.socket"
        );
        assert_eq!(
            link(&t, &format!("{e}/dbus-org.freedesktop.network1.service")),
            "/usr/lib/systemd/system/systemd-networkd.service"
        );
        assert_eq!(
            link(
                &t,
                &format!("{e}/dev-ttyAMA0.device.wants/serial-getty@ttyAMA0.service")
            ),
            "/usr/lib/systemd/system/serial-getty@.service"
        );
        assert!(!t.contains(&format!(
            "{e}/getty.target.wants/serial-getty@ttyAMA0.service"
        )));
        assert_eq!(
            link(&t, &format!("{e}/default.target")),
            "/usr/lib/systemd/system/multi-user.target"
        );
        assert_eq!(
            link(&t, "etc/resolv.conf"),
            "../run/systemd/resolve/stub-resolv.conf"
        );
        assert_eq!(text(&t, "etc/machine-id"), "");
        assert!(text(&t, "etc/systemd/network/20-wired.network").contains("DHCP=yes"));
        let j = t.get("var/log/journal").unwrap();
        assert_eq!((j.meta.mode, j.meta.gid), (0o2755, 999));
    }

    #[test]
    fn missing_units_are_errors_and_static_ones_are_left_alone() {
        let mut t = systemd_tree();
        let e = run(&mut t, &opts(&["nope.service"])).unwrap_err();
        assert!(
            format!("{e:#}").contains("no unit file nope.service"),
            "{e:#}"
        );
        let mut t = systemd_tree();
        run(&mut t, &opts(&["static.service"])).unwrap();
        assert!(!t
            .iter()
            .any(|(k, _)| k.ends_with("/static.service") && k.starts_with("etc/")));
    }

    #[test]
    fn install_values_accumulate_and_reset() {
        let u = "[Install]\nWantedBy=a b\nWantedBy=c\n[X]\nWantedBy=d\n[Install]\nAlias=\n";
        assert_eq!(install_values(u, "Install", "WantedBy"), ["a", "b", "c"]);
        assert!(
            install_values("[Install]\nWantedBy=a\nWantedBy=\n", "Install", "WantedBy").is_empty()
        );
        assert_eq!(
            template_of("serial-getty@ttyS1.service").unwrap(),
            "serial-getty@.service"
        );
    }
}
