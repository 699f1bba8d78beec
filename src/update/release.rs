//! What a node knows about the system it runs: `/usr/share/nodeimg/release.json`,
//! written into the system image by the build (so it switches with the slot),
//! read by the node-side helper (`nodeimg update apply|status|commit`):
//! the board, the build's version, the loader, the layout and which partition
//! each slot's system lives on.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::board::{Board, BootMethod};
use crate::disk::layout::Role;
use crate::disk::plan::DiskPlan;
use crate::update::bundle::Layout;

/// Where in the system image (/usr) the release file is.
pub const PATH: &str = "share/nodeimg/release.json";
/// Upper bound when reading it.
const MAX_SIZE: u64 = 64 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub board: String,
    /// The build's version (bundles are ordered by it).
    pub version: u64,
    /// `u-boot` when the loader can boot a trial slot and fall back.
    pub loader: String,
    pub layout: Layout,
    /// Partition number of the boot partition (the FAT the loader reads).
    pub boot_partition: u32,
    /// Slot letter ("a", "b") -> partition number of its system.
    pub slots: BTreeMap<String, u32>,
    /// Seconds a trial's health check may take (`build --commit-timeout`);
    /// absent: [`DEFAULT_COMMIT_TIMEOUT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_timeout: Option<u64>,
}

/// How long a trial's health check may take when the build did not say.
pub const DEFAULT_COMMIT_TIMEOUT: u64 = 300;

pub const LOADER_UBOOT: &str = "u-boot";

impl Release {
    /// The release of a build of `board` laid out as `plan`, version `version`.
    pub fn for_build(board: &Board, plan: &DiskPlan, version: u64) -> Result<Release> {
        let number = |role: Role| -> Result<u32> {
            let i = plan
                .parts()
                .position(|(r, _)| r == role)
                .with_context(|| format!("the layout has no {} partition", role.name()))?;
            Ok(u32::try_from(i)? + 1)
        };
        let loader = match board.boot.method {
            BootMethod::UBoot => LOADER_UBOOT,
            BootMethod::RpiFirmware => "rpi-firmware",
            BootMethod::DirectKernel => "direct-kernel",
            BootMethod::AndroidBootimg => "android-bootimg",
        };
        Ok(Release {
            board: board.name.clone(),
            version,
            loader: loader.to_string(),
            layout: Layout {
                boot_size: plan.part(Role::Boot)?.size,
                system_slot_size: plan.part(Role::SystemA)?.size,
            },
            boot_partition: number(Role::Boot)?,
            slots: BTreeMap::from([
                ("a".to_string(), number(Role::SystemA)?),
                ("b".to_string(), number(Role::SystemB)?),
            ]),
            commit_timeout: None,
        })
    }

    /// Seconds a trial's health check may take.
    pub fn commit_timeout(&self) -> u64 {
        self.commit_timeout.unwrap_or(DEFAULT_COMMIT_TIMEOUT)
    }

    pub fn to_json(&self) -> Result<Vec<u8>> {
        let mut v = serde_json::to_vec_pretty(self)?;
        v.push(b'\n');
        Ok(v)
    }

    /// Reads the release file of the running system.
    pub fn load(path: &Path) -> Result<Release> {
        use std::io::Read;
        let f = std::fs::File::open(path).with_context(|| {
            format!(
                "opening {} (this system was not built with --sign-key: it cannot be updated)",
                path.display()
            )
        })?;
        let mut bytes = Vec::new();
        f.take(MAX_SIZE)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {}", path.display()))?;
        let r: Release = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a nodeimg release file", path.display()))?;
        for (slot, n) in &r.slots {
            if !matches!(slot.as_str(), "a" | "b") || *n == 0 {
                bail!("{}: bad slot {slot} = {n}", path.display());
            }
        }
        Ok(r)
    }

    /// The slot whose system is on partition `n`.
    pub fn slot_of_partition(&self, n: u32) -> Option<char> {
        self.slots
            .iter()
            .find(|(_, p)| **p == n)
            .and_then(|(s, _)| s.chars().next())
    }

    /// The partition holding slot `slot`'s system.
    pub fn partition_of(&self, slot: char) -> Result<u32> {
        self.slots
            .get(&slot.to_string())
            .copied()
            .with_context(|| format!("the release file names no slot {slot}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_round_trips_and_maps_slots_to_partitions() {
        let r = Release {
            board: "qemu-uboot".into(),
            version: 7,
            loader: LOADER_UBOOT.into(),
            layout: Layout {
                boot_size: 1 << 26,
                system_slot_size: 1 << 29,
            },
            boot_partition: 1,
            slots: BTreeMap::from([("a".into(), 2), ("b".into(), 3)]),
            commit_timeout: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("release.json");
        std::fs::write(&p, r.to_json().unwrap()).unwrap();
        let back = Release::load(&p).unwrap();
        assert_eq!(back, r);
        // Without a commit timeout (as earlier versions wrote): the default.
        assert!(!String::from_utf8(r.to_json().unwrap())
            .unwrap()
            .contains("commit_timeout"));
        assert_eq!(back.commit_timeout(), DEFAULT_COMMIT_TIMEOUT);
        let timed = Release {
            commit_timeout: Some(40),
            ..r.clone()
        };
        std::fs::write(&p, timed.to_json().unwrap()).unwrap();
        assert_eq!(Release::load(&p).unwrap().commit_timeout(), 40);
        assert_eq!(back.slot_of_partition(3), Some('b'));
        assert_eq!(back.slot_of_partition(4), None);
        assert_eq!(back.partition_of('a').unwrap(), 2);
        std::fs::write(&p, br#"{"board":"x"}"#).unwrap();
        let e = format!("{:#}", Release::load(&p).unwrap_err());
        assert!(e.contains("not a nodeimg release file"), "{e}");
        let bad = String::from_utf8(r.to_json().unwrap())
            .unwrap()
            .replace("\"b\": 3", "\"c\": 3");
        std::fs::write(&p, bad).unwrap();
        let e = format!("{:#}", Release::load(&p).unwrap_err());
        assert!(e.contains("bad slot c"), "{e}");
    }
}
