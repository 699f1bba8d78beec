//! The disk of one board: every partition by its [`Role`], placed on a medium
//! of a given size, with the identifiers that name the disk and the
//! partition tables that describe it.
//!
//! The kernel cmdline's `nodeimg.disk=`/`nodeimg.boot=`/`nodeimg.system=`/
//! `nodeimg.data=` values come from here, so the init, the tables and the
//! manifest cannot disagree about which partition is which.
//!
//! A phone board (one with `[android]`) has no boot partition: its kernel and
//! initramfs go into `boot.img`. Its disk is the image flashed to the phone's
//! `userdata` partition: a GPT with the board's logical sector size (4096 on
//! UFS phones) holding system A, system B and data.

use anyhow::{anyhow, bail, Result};

use crate::board::{Board, Table};
use crate::disk::gpt::{self, GptPart};
use crate::disk::layout::{self, PartSpec, Placed, Role, TableKind};
use crate::disk::mbr;
use crate::ids;

/// Logical sector size of the disk images nodeimg writes for dd.
pub const SECTOR: u64 = 512;

/// The layout: boot (not on phones), system A, system B, data, in [`Role::ALL`] order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskPlan {
    pub table: Table,
    /// Size of the medium in bytes.
    pub total: u64,
    /// Logical sector size of the table: 512, or a phone's `android.sector_size`.
    pub sector: u64,
    /// The partitions in order, each with its role.
    parts: Vec<(Role, Placed)>,
}

impl DiskPlan {
    /// Places the board's partitions on a medium of `total` bytes; the data
    /// partition takes what the others leave.
    pub fn new(board: &Board, total: u64) -> Result<DiskPlan> {
        let sizes = board.sizes()?;
        let (roles, sector): (Vec<Role>, u64) = match &board.android {
            Some(a) => (
                Role::ALL.into_iter().filter(|r| *r != Role::Boot).collect(),
                u64::from(a.sector_size),
            ),
            None => (Role::ALL.to_vec(), SECTOR),
        };
        let specs = roles
            .iter()
            .map(|role| {
                Ok(PartSpec {
                    name: role.name().to_string(),
                    size: match role {
                        Role::Boot => Some(sizes.boot.ok_or_else(|| {
                            anyhow!("disk.boot_size is needed for a boot partition")
                        })?),
                        Role::SystemA | Role::SystemB => Some(sizes.system),
                        Role::Data => None,
                    },
                    kind: role.kind(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let kind = match board.disk.table {
            Table::Mbr => TableKind::Mbr,
            Table::Gpt => TableKind::Gpt,
        };
        let placed = layout::plan(kind, sector, total, &specs)?;
        if placed.len() != roles.len() {
            bail!(
                "the layout placed {} partitions, not {}",
                placed.len(),
                roles.len()
            );
        }
        Ok(DiskPlan {
            table: board.disk.table,
            total,
            sector,
            parts: roles.into_iter().zip(placed).collect(),
        })
    }

    /// The partition playing `role`; an error on a layout without it (a
    /// phone's disk has no boot partition).
    pub fn part(&self, role: Role) -> Result<&Placed> {
        self.parts
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, p)| p)
            .ok_or_else(|| anyhow!("this disk has no {} partition", role.name()))
    }

    /// Whether the layout has a partition playing `role`.
    pub fn has(&self, role: Role) -> bool {
        self.parts.iter().any(|(r, _)| *r == role)
    }

    /// All partitions with their roles, in partition order.
    pub fn parts(&self) -> impl Iterator<Item = (Role, &Placed)> {
        self.parts.iter().map(|(r, p)| (*r, p))
    }

    /// The identifier the init finds the disk by: `mbr:xxxxxxxx` or `gpt:<guid>`.
    pub fn disk_id(&self, seed: &[u8]) -> String {
        match self.table {
            Table::Mbr => format!("mbr:{:08x}", ids::u32_id(seed, "mbr-signature")),
            Table::Gpt => format!(
                "gpt:{}",
                ids::uuid_to_string(&ids::uuid(seed, "gpt-disk-guid"))
            ),
        }
    }

    /// What the init needs on the kernel cmdline to find its partitions:
    /// `nodeimg.disk=<id> nodeimg.boot=1 nodeimg.system=2 nodeimg.data=4`.
    /// A table with sectors other than 512 adds `nodeimg.sector=N`: the init
    /// then looks for the disk inside partitions too (a phone's `userdata`)
    /// and maps its partitions itself.
    pub fn cmdline_args(&self, disk_id: &str) -> String {
        let mut s = format!("nodeimg.disk={disk_id}");
        if self.sector != SECTOR {
            s.push_str(&format!(" nodeimg.sector={}", self.sector));
        }
        for (role, p) in self.parts() {
            if let Some(key) = role.cmdline_key() {
                s.push_str(&format!(" {key}={}", p.number));
            }
        }
        s
    }

    /// Partition table blobs and the offsets they go to.
    pub fn tables(&self, seed: &[u8]) -> Result<Vec<(u64, Vec<u8>)>> {
        Ok(match self.table {
            Table::Mbr => {
                let boot = self.part(Role::Boot)?.number;
                let placed: Vec<Placed> = self.parts().map(|(_, p)| p.clone()).collect();
                let mbr = mbr::table(ids::u32_id(seed, "mbr-signature"), &placed, Some(boot))?;
                vec![(0, mbr.to_vec())]
            }
            Table::Gpt => {
                let parts: Vec<GptPart> = self
                    .parts()
                    .map(|(_, p)| GptPart {
                        placed: p,
                        type_guid: gpt::default_type(p.kind),
                        unique_guid: ids::uuid(seed, &format!("gpt-part-{}", p.number)),
                    })
                    .collect();
                let t = gpt::tables(
                    ids::uuid(seed, "gpt-disk-guid"),
                    self.sector,
                    self.total,
                    &parts,
                )?;
                vec![(0, t.primary), (t.backup_offset, t.backup)]
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::layout::MIB;

    fn board(name: &str) -> Board {
        crate::board::DataDir::builtin()
            .load(name)
            .expect("a built-in board")
            .0
    }

    #[test]
    fn partitions_follow_the_roles_and_numbers_agree() {
        let b = board("qemu-aarch64");
        let plan = DiskPlan::new(&b, 2048 * MIB).expect("fits");
        assert_eq!(plan.parts().count(), 4);
        for (role, p) in plan.parts() {
            assert_eq!(p.number, role.number(), "{role:?}");
            assert_eq!(p.name, role.name());
            assert_eq!(p.kind, role.kind());
        }
        assert_eq!(plan.part(Role::Data).unwrap().end() + MIB, 2048 * MIB);
        assert_eq!(
            plan.part(Role::SystemA).unwrap().size,
            plan.part(Role::SystemB).unwrap().size
        );
    }

    #[test]
    fn cmdline_names_the_partitions_by_role() {
        let b = board("rpi4");
        let plan = DiskPlan::new(&b, 2048 * MIB).expect("fits");
        assert_eq!(
            plan.cmdline_args("mbr:0badc0de"),
            "nodeimg.disk=mbr:0badc0de nodeimg.boot=1 nodeimg.system=2 nodeimg.data=4"
        );
        assert!(plan.disk_id(b"seed").starts_with("mbr:"));
    }

    #[test]
    fn a_phone_disk_has_no_boot_partition_and_4096_byte_sectors() {
        let b = board("oneplus-enchilada");
        let plan = DiskPlan::new(&b, 2048 * MIB).expect("fits");
        assert_eq!(plan.sector, 4096);
        let roles: Vec<Role> = plan.parts().map(|(r, _)| r).collect();
        assert_eq!(roles, [Role::SystemA, Role::SystemB, Role::Data]);
        let numbers: Vec<u32> = plan.parts().map(|(_, p)| p.number).collect();
        assert_eq!(numbers, [1, 2, 3]);
        assert!(!plan.has(Role::Boot));
        let err = plan.part(Role::Boot).unwrap_err().to_string();
        assert!(err.contains("no boot partition"), "{err}");
        let id = plan.disk_id(b"seed");
        assert_eq!(
            plan.cmdline_args(&id),
            format!("nodeimg.disk={id} nodeimg.sector=4096 nodeimg.system=1 nodeimg.data=3")
        );
        // The tables are 4096-byte-sector GPT: the header at LBA 1 = 4096,
        // the backup header in the disk's last 4096-byte sector.
        let t = plan.tables(b"seed").unwrap();
        assert_eq!(&t[0].1[4096..4104], b"EFI PART");
        let (backup_at, backup) = &t[1];
        assert_eq!(backup_at + backup.len() as u64, 2048 * MIB);
        assert_eq!(&backup[backup.len() - 4096..][..8], b"EFI PART");
    }
}
