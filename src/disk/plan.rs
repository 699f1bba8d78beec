//! The disk of one board: every partition by its [`Role`], placed on a medium
//! of a given size, with the identifiers that name the disk and the
//! partition tables that describe it.
//!
//! The kernel cmdline's `nodeimg.disk=`/`nodeimg.boot=`/`nodeimg.system=`/
//! `nodeimg.data=` values come from here, so the init, the tables and the
//! manifest cannot disagree about which partition is which.

use anyhow::{anyhow, Result};

use crate::board::{Board, Table};
use crate::disk::gpt::{self, GptPart};
use crate::disk::layout::{self, PartSpec, Placed, Role, TableKind};
use crate::disk::mbr;
use crate::ids;

/// Logical sector size of the images nodeimg writes.
pub const SECTOR: u64 = 512;

/// The layout: boot, system A, system B, data (in [`Role::ALL`] order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskPlan {
    pub table: Table,
    /// Size of the medium in bytes.
    pub total: u64,
    /// Indexed by [`Role::index`].
    parts: [Placed; 4],
}

impl DiskPlan {
    /// Places the board's partitions on a medium of `total` bytes; the data
    /// partition takes what the others leave.
    pub fn new(board: &Board, total: u64) -> Result<DiskPlan> {
        let sizes = board.sizes()?;
        let specs = Role::ALL.map(|role| PartSpec {
            name: role.name().to_string(),
            size: match role {
                Role::Boot => Some(sizes.boot),
                Role::SystemA | Role::SystemB => Some(sizes.system),
                Role::Data => None,
            },
            kind: role.kind(),
        });
        let kind = match board.disk.table {
            Table::Mbr => TableKind::Mbr,
            Table::Gpt => TableKind::Gpt,
        };
        let placed = layout::plan(kind, SECTOR, total, &specs)?;
        let parts: [Placed; 4] = placed
            .try_into()
            .map_err(|p: Vec<Placed>| anyhow!("the layout placed {} partitions, not 4", p.len()))?;
        Ok(DiskPlan {
            table: board.disk.table,
            total,
            parts,
        })
    }

    /// The partition playing `role`.
    pub fn part(&self, role: Role) -> &Placed {
        &self.parts[role.index()]
    }

    /// All partitions with their roles, in partition order.
    pub fn parts(&self) -> impl Iterator<Item = (Role, &Placed)> {
        Role::ALL.into_iter().zip(self.parts.iter())
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
    pub fn cmdline_args(&self, disk_id: &str) -> String {
        let mut s = format!("nodeimg.disk={disk_id}");
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
                let boot = self.part(Role::Boot).number;
                let mbr = mbr::table(ids::u32_id(seed, "mbr-signature"), &self.parts, Some(boot))?;
                vec![(0, mbr.to_vec())]
            }
            Table::Gpt => {
                let parts: Vec<GptPart> = self
                    .parts
                    .iter()
                    .map(|p| GptPart {
                        placed: p,
                        type_guid: gpt::default_type(p.kind),
                        unique_guid: ids::uuid(seed, &format!("gpt-part-{}", p.number)),
                    })
                    .collect();
                let t = gpt::tables(ids::uuid(seed, "gpt-disk-guid"), SECTOR, self.total, &parts)?;
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
        for (role, p) in plan.parts() {
            assert_eq!(p.number, role.number(), "{role:?}");
            assert_eq!(p.name, role.name());
            assert_eq!(p.kind, role.kind());
        }
        assert_eq!(plan.part(Role::Data).end() + MIB, 2048 * MIB);
        assert_eq!(plan.part(Role::SystemA).size, plan.part(Role::SystemB).size);
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
}
