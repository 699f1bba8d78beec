//! `check-kernel`: does a kernel's build configuration (`/boot/config-*`,
//! `.config`) have what k3s needs?
//!
//! The lists follow k3s's `contrib/util/check-config.sh` (k3s-io/k3s): its
//! "Generally Necessary" flags are errors here, its "Optional Features",
//! storage and network driver flags are warnings. On top of k3s's required
//! list we require `VXLAN` (flannel's default backend; optional in the
//! script), `OVERLAY_FS` (containerd's default snapshotter) and `NF_TABLES`
//! (iptables-nft, which recent k3s and distributions use). Kernel-version
//! dependent checks of the script (`DEVPTS_MULTIPLE_INSTANCES` before 4.8,
//! `MEMCG_KMEM`, `RESOURCE_COUNTERS`, `NETPRIO_CGROUP` on old kernels) and
//! `INET_XFRM_MODE_TRANSPORT` (gone since 5.2) are left out: nodeimg targets
//! current kernels. `=y` and `=m` both count as present.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{bail, Context, Result};

use crate::board::{Board, DataDir};
use crate::bootfiles;
use crate::cli::CheckKernelArgs;
use crate::tree::{lookup, reader, Tree};

/// Options k3s cannot run without (check-config.sh "Generally Necessary").
pub const REQUIRED: &[&str] = &[
    "NAMESPACES",
    "NET_NS",
    "PID_NS",
    "IPC_NS",
    "UTS_NS",
    "CGROUPS",
    "CGROUP_PIDS",
    "CGROUP_CPUACCT",
    "CGROUP_DEVICE",
    "CGROUP_FREEZER",
    "CGROUP_SCHED",
    "CPUSETS",
    "MEMCG",
    "SECCOMP",
    "KEYS",
    "VETH",
    "BRIDGE",
    "BRIDGE_NETFILTER",
    "IP_NF_FILTER",
    "IP_NF_TARGET_MASQUERADE",
    "IP_NF_TARGET_REJECT",
    "NETFILTER_XT_MATCH_ADDRTYPE",
    "NETFILTER_XT_MATCH_CONNTRACK",
    "NETFILTER_XT_MATCH_IPVS",
    "NETFILTER_XT_MATCH_COMMENT",
    "NETFILTER_XT_MATCH_MULTIPORT",
    "NETFILTER_XT_MATCH_STATISTIC",
    "IP_NF_NAT",
    "NF_NAT",
    "POSIX_MQUEUE",
    // Not in the script's required list; required by nodeimg (see above).
    "VXLAN",
    "OVERLAY_FS",
    "NF_TABLES",
];

/// Options whose absence limits k3s (check-config.sh "Optional Features",
/// ext4 storage, encrypted overlay networks).
pub const OPTIONAL: &[&str] = &[
    "USER_NS",
    "BLK_CGROUP",
    "BLK_DEV_THROTTLING",
    "CGROUP_PERF",
    "CGROUP_HUGETLB",
    "NET_CLS_CGROUP",
    "CGROUP_NET_PRIO",
    "CFS_BANDWIDTH",
    "FAIR_GROUP_SCHED",
    "RT_GROUP_SCHED",
    "IP_NF_TARGET_REDIRECT",
    "IP_SET",
    "IP_VS",
    "IP_VS_NFCT",
    "IP_VS_PROTO_TCP",
    "IP_VS_PROTO_UDP",
    "IP_VS_RR",
    "EXT4_FS",
    "EXT4_FS_POSIX_ACL",
    "EXT4_FS_SECURITY",
    "CRYPTO",
    "CRYPTO_AEAD",
    "CRYPTO_GCM",
    "CRYPTO_SEQIV",
    "CRYPTO_GHASH",
    "XFRM",
    "XFRM_USER",
    "XFRM_ALGO",
    "INET_ESP",
];

/// How an option is set in a config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    BuiltIn,
    Module,
    Missing,
}

/// The outcome of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Every checked option (without `CONFIG_`) and its state.
    pub options: BTreeMap<&'static str, State>,
    /// `# Linux/arm64 6.12.0 Kernel Configuration` -> `Linux/arm64 6.12.0`.
    pub kernel: Option<String>,
}

impl Report {
    /// Missing required options, as `CONFIG_X` names, in list order.
    pub fn errors(&self) -> Vec<String> {
        self.missing(REQUIRED)
    }

    /// Missing optional options, as `CONFIG_X` names, in list order.
    pub fn warnings(&self) -> Vec<String> {
        self.missing(OPTIONAL)
    }

    pub fn is_ok(&self) -> bool {
        self.errors().is_empty()
    }

    fn missing(&self, list: &[&str]) -> Vec<String> {
        list.iter()
            .filter(|o| self.options.get(*o) == Some(&State::Missing))
            .map(|o| format!("CONFIG_{o}"))
            .collect()
    }
}

/// Checks a kernel config text (the plain `.config` format; decompress
/// `/proc/config.gz` first).
pub fn check(config_text: &str) -> Report {
    let mut set: BTreeMap<&str, State> = BTreeMap::new();
    let mut kernel = None;
    for line in config_text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim();
            if kernel.is_none() {
                if let Some(k) = rest.strip_suffix(" Kernel Configuration") {
                    kernel = Some(k.trim().to_owned());
                }
            }
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let Some(name) = name.trim().strip_prefix("CONFIG_") else {
            continue;
        };
        let state = match value.trim() {
            "y" => State::BuiltIn,
            "m" => State::Module,
            _ => State::Missing,
        };
        set.insert(name, state);
    }
    let options = REQUIRED
        .iter()
        .chain(OPTIONAL)
        .map(|o| (*o, set.get(o).copied().unwrap_or(State::Missing)))
        .collect();
    Report { options, kernel }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(k) = &self.kernel {
            writeln!(f, "kernel: {k}")?;
        }
        let line = |f: &mut fmt::Formatter<'_>, o: &str| -> fmt::Result {
            let s = match self.options.get(o) {
                Some(State::BuiltIn) => "enabled",
                Some(State::Module) => "enabled (as module)",
                _ => "missing",
            };
            writeln!(f, "- CONFIG_{o}: {s}")
        };
        writeln!(f, "Required:")?;
        for o in REQUIRED {
            line(f, o)?;
        }
        writeln!(f, "Optional:")?;
        for o in OPTIONAL {
            line(f, o)?;
        }
        let (e, w) = (self.errors().len(), self.warnings().len());
        if e == 0 {
            write!(f, "result: ok ({w} optional missing)")
        } else {
            write!(
                f,
                "result: {e} required option{} missing ({w} optional missing)",
                if e == 1 { "" } else { "s" }
            )
        }
    }
}

/// `nodeimg check-kernel`: prints the report; `Ok(false)` when a required option is missing.
pub fn command(data: &DataDir, args: &CheckKernelArgs) -> Result<bool> {
    let (source, text) = match (&args.config, &args.rootfs, &args.board) {
        (Some(path), _, _) => (
            path.display().to_string(),
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        (None, Some(rootfs_path), Some(board)) => {
            let (board, _) = data.load(board)?;
            let spill = tempfile::tempdir().context("creating a temporary directory")?;
            let rootfs = reader::read_rootfs(rootfs_path, spill.path())
                .with_context(|| format!("reading rootfs {}", rootfs_path.display()))?;
            let path = lookup::find_first(&rootfs, &board.sources.kernel_config)
                .context("no kernel config in the rootfs")?;
            let data = bootfiles::file_data(&rootfs, path.trim_start_matches('/'))?;
            (
                format!("{path} in {}", rootfs_path.display()),
                data.to_vec()
                    .with_context(|| format!("reading {path} in {}", rootfs_path.display()))?,
            )
        }
        _ => bail!("give --config FILE, or --rootfs PATH with --board BOARD"),
    };
    let report = check(&String::from_utf8_lossy(&text));
    println!("{source}:");
    print!("{report}");
    Ok(report.errors().is_empty())
}

/// Checks the kernel config (when the rootfs has one) for what k3s needs;
/// fails on a missing required option unless `allow_missing`.
pub fn check_rootfs(board: &Board, rootfs: &Tree, allow_missing: bool) -> Result<()> {
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
    let text = bootfiles::file_data(rootfs, path.trim_start_matches('/'))?
        .to_vec()
        .with_context(|| format!("reading {path}"))?;
    // Optional options are for `nodeimg check-kernel` to list; a build only
    // stops on required ones.
    let report = check(&String::from_utf8_lossy(&text));
    let errors = report.errors();
    if !errors.is_empty() && !allow_missing {
        bail!(
            "the kernel ({path}) lacks what k3s needs: {}; see `nodeimg check-kernel`, or pass --allow-missing-kernel-options",
            errors.join("; ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_config() -> String {
        let mut s = String::from("#\n# Automatically generated file; DO NOT EDIT.\n# Linux/arm64 6.12.0 Kernel Configuration\n#\n");
        for (i, o) in REQUIRED.iter().chain(OPTIONAL).enumerate() {
            // Alternate built-in and module: both count.
            s += &format!("CONFIG_{o}={}\n", if i % 2 == 0 { "y" } else { "m" });
        }
        s
    }

    #[test]
    fn everything_present() {
        let r = check(&full_config());
        assert_eq!(r.errors(), Vec::<String>::new());
        assert_eq!(r.warnings(), Vec::<String>::new());
        assert!(r.is_ok());
        assert_eq!(r.kernel.as_deref(), Some("Linux/arm64 6.12.0"));
        assert_eq!(r.options["NAMESPACES"], State::BuiltIn);
        assert_eq!(r.options["NET_NS"], State::Module);
        let shown = r.to_string();
        assert!(shown.starts_with("kernel: Linux/arm64 6.12.0\nRequired:\n- CONFIG_NAMESPACES: enabled\n- CONFIG_NET_NS: enabled (as module)\n"));
        assert!(shown.ends_with("result: ok (0 optional missing)"));
    }

    #[test]
    fn missing_and_disabled_options() {
        let text = full_config()
            // "is not set" is a comment: missing.
            .replace("CONFIG_VXLAN=y\n", "# CONFIG_VXLAN is not set\n")
            .replace("CONFIG_VXLAN=m\n", "# CONFIG_VXLAN is not set\n")
            .replace("CONFIG_MEMCG=y\n", "CONFIG_MEMCG=n\n")
            .replace("CONFIG_MEMCG=m\n", "CONFIG_MEMCG=n\n")
            .lines()
            .filter(|l| !l.starts_with("CONFIG_NF_TABLES=") && !l.starts_with("CONFIG_IP_VS_RR="))
            .collect::<Vec<_>>()
            .join("\n");
        let r = check(&text);
        assert_eq!(
            r.errors(),
            vec!["CONFIG_MEMCG", "CONFIG_VXLAN", "CONFIG_NF_TABLES"]
        );
        assert_eq!(r.warnings(), vec!["CONFIG_IP_VS_RR"]);
        assert!(!r.is_ok());
        let shown = r.to_string();
        assert!(shown.contains("- CONFIG_MEMCG: missing\n"));
        assert!(shown.contains("- CONFIG_IP_VS_RR: missing\n"));
        assert!(shown.ends_with("result: 3 required options missing (1 optional missing)"));
    }

    #[test]
    fn similar_names_do_not_count() {
        // CONFIG_NF_NAT_IPV4 must not satisfy CONFIG_NF_NAT, nor a value of "yes".
        let r = check(
            "CONFIG_NF_NAT_IPV4=y\nCONFIG_KEYS=yes\nCONFIG_VETH=\"y\"\n  CONFIG_BRIDGE = y \n",
        );
        let e = r.errors();
        assert!(e.contains(&"CONFIG_NF_NAT".to_string()));
        assert!(e.contains(&"CONFIG_KEYS".to_string()));
        assert!(e.contains(&"CONFIG_VETH".to_string()));
        assert!(!e.contains(&"CONFIG_BRIDGE".to_string()));
        assert_eq!(r.kernel, None);
        assert_eq!(e.len(), REQUIRED.len() - 1);
    }

    #[test]
    fn empty_config_misses_everything() {
        let r = check("");
        assert_eq!(r.errors().len(), REQUIRED.len());
        assert_eq!(r.warnings().len(), OPTIONAL.len());
        assert_eq!(r.errors()[0], "CONFIG_NAMESPACES");
        assert!(r.to_string().ends_with(&format!(
            "result: {} required options missing ({} optional missing)",
            REQUIRED.len(),
            OPTIONAL.len()
        )));
    }
}
