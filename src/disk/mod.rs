//! Partition tables (MBR, GPT), layout arithmetic and disk image assembly.

pub mod gpt;
pub mod image;
pub mod layout;
pub mod mbr;
pub mod read;
