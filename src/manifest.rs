//! `build.json`: what an image was built from and how it is laid out
//! (board, inputs and their hashes, kernel, node, k3s, partitions, outputs).
//! Never the join token.

use serde::{Deserialize, Serialize};

use crate::disk::plan::DiskPlan;

#[derive(Serialize)]
pub struct Manifest {
    pub nodeimg_version: &'static str,
    pub board: String,
    pub board_sha256: String,
    pub source_date_epoch: u64,
    pub rootfs: RootfsInput,
    pub kernel: KernelInfo,
    /// The node this image is for (never its token).
    pub node: Option<NodeInfo>,
    pub k3s: Option<K3sInfo>,
    pub disk: DiskInfo,
    pub system_image_size: u64,
    /// Whether the system image came from the cache: "hit", "miss" or
    /// "off" (`--no-cache`, or the cache could not be used).
    pub system_cache: &'static str,
    pub outputs: Vec<OutputInfo>,
}

#[derive(Serialize)]
pub struct NodeInfo {
    pub name: Option<String>,
    pub role: String,
    pub server: Option<String>,
    pub boot_partition_files: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct K3sInfo {
    /// "release", "file <name>" or "rootfs".
    pub source: String,
    pub version: Option<String>,
    pub sha256: Option<String>,
    pub init_system: String,
    pub airgap_images: Option<String>,
}

#[derive(Serialize, Clone)]
pub struct RootfsInput {
    /// File or directory name (not the full path: the manifest must not
    /// depend on where the build ran).
    pub name: String,
    /// SHA-256 of the archive file, when the rootfs is an archive.
    pub sha256: Option<String>,
    /// SHA-256 over the tree's paths, metadata and contents.
    pub tree_sha256: String,
}

#[derive(Serialize)]
pub struct KernelInfo {
    pub path: String,
    pub release: String,
    pub cmdline: String,
    pub initramfs_modules: Vec<String>,
}

#[derive(Serialize)]
pub struct DiskInfo {
    pub table: &'static str,
    pub size: u64,
    pub id: String,
    pub partitions: Vec<PartInfo>,
}

#[derive(Serialize)]
pub struct PartInfo {
    pub number: u32,
    pub name: String,
    pub start: u64,
    pub size: u64,
    pub filesystem: &'static str,
}

#[derive(Serialize)]
pub struct OutputInfo {
    pub file: String,
    pub size: u64,
    /// Absent for disk images: hashing one costs time in proportion to its
    /// size, mostly holes; its block map (`bmap`) holds the SHA-256 of every
    /// range that holds data, and `SHA256SUMS` lists the map.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bmap: Option<BmapInfo>,
}

/// A disk image's block map (`<image>.bmap`, bmaptool's format).
#[derive(Serialize)]
pub struct BmapInfo {
    pub file: String,
    pub sha256: String,
    /// The bytes the map says to write.
    pub mapped_bytes: u64,
}

impl DiskInfo {
    /// The disk as planned: table, size, identifier and every partition by role.
    pub fn new(plan: &DiskPlan, id: String) -> DiskInfo {
        DiskInfo {
            table: match plan.table {
                crate::board::Table::Mbr => "mbr",
                crate::board::Table::Gpt => "gpt",
            },
            size: plan.total,
            id,
            partitions: plan
                .parts()
                .map(|(role, p)| PartInfo {
                    number: p.number,
                    name: p.name.clone(),
                    start: p.start,
                    size: p.size,
                    filesystem: role.filesystem(),
                })
                .collect(),
        }
    }
}
