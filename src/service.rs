//! The k3s service: installed for whichever init system the rootfs has
//! (systemd, OpenRC, or busybox init with an `/etc/inittab`).
//!
//! Every flavour runs `/usr/lib/nodeimg/k3s-run`, which reads the node config
//! the initramfs rendered into `/etc/nodeimg/node.env` and starts
//! `k3s agent|server`; k3s itself reads `/etc/rancher/k3s/config.yaml`.

use anyhow::{bail, Context, Result};

use crate::tree::{lookup, Entry, Kind, Meta, Tree};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitSystem {
    Systemd,
    OpenRc,
    BusyboxInit,
}

impl InitSystem {
    pub fn name(self) -> &'static str {
        match self {
            InitSystem::Systemd => "systemd",
            InitSystem::OpenRc => "OpenRC",
            InitSystem::BusyboxInit => "busybox init",
        }
    }
}

const K3S_RUN: &str = r#"#!/bin/sh
# Started by the init system's k3s service (installed by nodeimg).
# The initramfs renders /etc/nodeimg/node.env and /etc/rancher/k3s/config.yaml
# from the node config on the boot partition at every boot.
if [ ! -r /etc/nodeimg/node.env ]; then
    echo "k3s-run: no /etc/nodeimg/node.env (no node config on the boot partition); not starting k3s" >&2
    sleep 30
    exit 1
fi
. /etc/nodeimg/node.env
export PATH=/usr/local/bin:/usr/bin:/usr/sbin:/bin:/sbin
exec k3s "${NODEIMG_K3S_COMMAND:-agent}"
"#;

const SYSTEMD_UNIT: &str = "[Unit]
Description=Lightweight Kubernetes (k3s, installed by nodeimg)
Documentation=https://docs.k3s.io
Wants=network-online.target
# A Pi has no RTC: k3s's certificates need the right time. time-sync.target is
# reached when systemd-time-wait-sync (enabled in the Debian base) sees the
# clock synchronised; on a system without it the ordering is a no-op.
After=network-online.target time-sync.target
ConditionPathExists=/etc/nodeimg/node.env

[Service]
Type=notify
KillMode=process
Delegate=yes
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/lib/nodeimg/k3s-run

[Install]
WantedBy=multi-user.target
";

const OPENRC_SCRIPT: &str = r#"#!/sbin/openrc-run
# k3s, installed by nodeimg.
description="Lightweight Kubernetes (k3s)"
supervisor=supervise-daemon
command=/usr/lib/nodeimg/k3s-run
output_log=/var/log/k3s.log
error_log=/var/log/k3s.log
respawn_delay=5
respawn_max=0

depend() {
    need net
    after firewall nftables
}

start_pre() {
    modprobe br_netfilter 2>/dev/null
    modprobe overlay 2>/dev/null
    checkpath -f -m 0644 /var/log/k3s.log
}
"#;

const INITTAB_LINE: &str = "::respawn:/usr/lib/nodeimg/k3s-run";

/// Which init system the rootfs boots (before usr-merge; paths through symlinks).
pub fn detect(t: &Tree) -> Option<InitSystem> {
    let init = lookup::resolve(t, "/sbin/init").unwrap_or_default();
    if init.ends_with("/systemd") {
        return Some(InitSystem::Systemd);
    }
    let has = |p: &str| lookup::resolve(t, p).is_some();
    if has("/sbin/openrc") || has("/usr/sbin/openrc") || has("/sbin/openrc-init") {
        return Some(InitSystem::OpenRc);
    }
    if init.ends_with("/busybox")
        && matches!(t.get("etc/inittab").map(|e| &e.kind), Some(Kind::File(_)))
    {
        return Some(InitSystem::BusyboxInit);
    }
    None
}

/// Installs `k3s-run` and the service for the rootfs's init system. Call
/// before usr-merge and before `/etc` moves to the factory defaults.
pub fn install_k3s(t: &mut Tree, mtime: u64) -> Result<InitSystem> {
    let init = detect(t).context(
        "no supported init system in the rootfs to start k3s (looked for systemd as /sbin/init, \
         OpenRC, and busybox init with /etc/inittab)",
    )?;
    let dir = Meta::root(0o755, mtime);
    let exe = Meta::root(0o755, mtime);
    let file = Meta::root(0o644, mtime);
    t.insert_with_parents(
        "usr/lib/nodeimg/k3s-run",
        Entry::file(exe, K3S_RUN.into()),
        dir,
    )?;
    match init {
        InitSystem::Systemd => {
            t.insert_with_parents(
                "usr/lib/systemd/system/k3s.service",
                Entry::file(file, SYSTEMD_UNIT.into()),
                dir,
            )?;
            t.insert_with_parents(
                "usr/lib/systemd/system/multi-user.target.wants/k3s.service",
                Entry::symlink(Meta::root(0o777, mtime), "../k3s.service"),
                dir,
            )?;
        }
        InitSystem::OpenRc => {
            t.insert_with_parents(
                "etc/init.d/k3s",
                Entry::file(exe, OPENRC_SCRIPT.into()),
                dir,
            )?;
            t.insert_with_parents(
                "etc/runlevels/default/k3s",
                Entry::symlink(Meta::root(0o777, mtime), "/etc/init.d/k3s"),
                dir,
            )?;
        }
        InitSystem::BusyboxInit => append_inittab(t, "k3s", INITTAB_LINE)?,
    }
    Ok(init)
}

/// Adds `line` (with a comment naming `what`) to /etc/inittab, once.
pub fn append_inittab(t: &mut Tree, what: &str, line: &str) -> Result<()> {
    let Some(Entry {
        meta,
        kind: Kind::File(data),
    }) = t.get("etc/inittab").cloned()
    else {
        bail!("/etc/inittab is not a regular file");
    };
    let bytes = data.to_vec().context("reading /etc/inittab")?;
    let mut text = String::from_utf8(bytes).context("/etc/inittab is not UTF-8")?;
    if !text.lines().any(|l| l.trim() == line) {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("# {what}, added by nodeimg\n"));
        text.push_str(line);
        text.push('\n');
    }
    t.insert("etc/inittab", Entry::file(meta, text.into_bytes()))
}

/// Puts the k3s binary at /usr/bin/k3s with the links k3s's installer makes.
pub fn install_k3s_binary(t: &mut Tree, binary: crate::tree::Data, mtime: u64) -> Result<()> {
    let dir = Meta::root(0o755, mtime);
    t.insert_with_parents(
        "usr/bin/k3s",
        Entry {
            meta: Meta::root(0o755, mtime),
            kind: Kind::File(binary),
        },
        dir,
    )?;
    for link in ["kubectl", "crictl", "ctr"] {
        let path = format!("usr/bin/{link}");
        if !t.contains(&path) {
            t.insert(&path, Entry::symlink(Meta::root(0o777, mtime), "k3s"))?;
        }
    }
    Ok(())
}

/// Whether the rootfs already carries a k3s binary.
pub fn has_k3s(t: &Tree) -> bool {
    ["/usr/bin/k3s", "/usr/local/bin/k3s", "/bin/k3s"]
        .iter()
        .any(|p| lookup::resolve(t, p).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> Meta {
        Meta::root(0o755, 1)
    }

    fn busybox_tree() -> Tree {
        let mut t = Tree::new(m());
        t.insert_with_parents("usr/bin/busybox", Entry::file(m(), b"bb".to_vec()), m())
            .unwrap();
        t.insert("sbin", Entry::symlink(m(), "usr/sbin")).unwrap();
        t.insert_with_parents("usr/sbin/init", Entry::symlink(m(), "../bin/busybox"), m())
            .unwrap();
        t.insert_with_parents(
            "etc/inittab",
            Entry::file(m(), b"::sysinit:/etc/init.d/rcS".to_vec()),
            m(),
        )
        .unwrap();
        t
    }

    fn text(t: &Tree, p: &str) -> String {
        match &t.get(p).unwrap().kind {
            Kind::File(d) => String::from_utf8(d.to_vec().unwrap()).unwrap(),
            k => panic!("{p} is {k:?}"),
        }
    }

    #[test]
    fn busybox_init_gets_one_respawn_line() {
        let mut t = busybox_tree();
        assert_eq!(install_k3s(&mut t, 5).unwrap(), InitSystem::BusyboxInit);
        install_k3s(&mut t, 5).unwrap();
        let inittab = text(&t, "etc/inittab");
        assert!(
            inittab.starts_with("::sysinit:/etc/init.d/rcS\n"),
            "{inittab}"
        );
        assert_eq!(inittab.matches(INITTAB_LINE).count(), 1, "{inittab}");
        let run = t.get("usr/lib/nodeimg/k3s-run").unwrap();
        assert_eq!(run.meta.mode, 0o755);
        assert!(text(&t, "usr/lib/nodeimg/k3s-run")
            .contains("exec k3s \"${NODEIMG_K3S_COMMAND:-agent}\""));
    }

    #[test]
    fn systemd_gets_an_enabled_unit() {
        let mut t = Tree::new(m());
        t.insert_with_parents("usr/lib/systemd/systemd", Entry::file(m(), vec![1]), m())
            .unwrap();
        t.insert_with_parents(
            "sbin/init",
            Entry::symlink(m(), "/usr/lib/systemd/systemd"),
            m(),
        )
        .unwrap();
        assert_eq!(install_k3s(&mut t, 5).unwrap(), InitSystem::Systemd);
        let unit = text(&t, "usr/lib/systemd/system/k3s.service");
        assert!(unit.contains("ExecStart=/usr/lib/nodeimg/k3s-run"));
        // Not before the network is up and the clock is right.
        assert!(
            unit.lines()
                .any(|l| l == "After=network-online.target time-sync.target"),
            "{unit}"
        );
        assert_eq!(
            t.get("usr/lib/systemd/system/multi-user.target.wants/k3s.service")
                .unwrap()
                .kind,
            Kind::Symlink("../k3s.service".into())
        );
    }

    #[test]
    fn openrc_gets_a_script_in_the_default_runlevel() {
        let mut t = busybox_tree();
        t.insert_with_parents("usr/sbin/openrc", Entry::file(m(), vec![1]), m())
            .unwrap();
        assert_eq!(install_k3s(&mut t, 5).unwrap(), InitSystem::OpenRc);
        assert!(text(&t, "etc/init.d/k3s").starts_with("#!/sbin/openrc-run"));
        assert!(t.contains("etc/runlevels/default/k3s"));
        assert!(
            !text(&t, "etc/inittab").contains("k3s-run"),
            "OpenRC starts it, not inittab"
        );
    }

    #[test]
    fn no_init_system_is_an_error() {
        let mut t = Tree::new(m());
        let err = format!("{:#}", install_k3s(&mut t, 5).unwrap_err());
        assert!(err.contains("no supported init system"), "{err}");
    }

    #[test]
    fn binary_goes_to_usr_bin_with_kubectl_links() {
        let mut t = busybox_tree();
        assert!(!has_k3s(&t));
        install_k3s_binary(
            &mut t,
            std::sync::Arc::new(crate::tree::Content::from_vec(b"ELF".to_vec())),
            5,
        )
        .unwrap();
        assert!(has_k3s(&t));
        assert_eq!(
            t.get("usr/bin/kubectl").unwrap().kind,
            Kind::Symlink("k3s".into())
        );
    }
}
