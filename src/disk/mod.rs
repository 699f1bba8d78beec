//! Partition tables (MBR, GPT), layout arithmetic, the disk plan by role and disk image assembly.

pub mod gpt;
pub mod image;
pub mod layout;
pub mod mbr;
pub mod plan;
pub mod read;
pub mod sparse;
