//! nodeimg: builds immutable, reproducible OS images for small k3s clusters
//! (Raspberry Pi 4, QEMU, postmarketOS phones) without root, `mount` or loop devices.
//!
//! The pipeline (see `build`) reads top to bottom:
//! board + cluster config + rootfs -> tree -> filesystems -> disk image -> outputs.
#![forbid(unsafe_code)]

pub mod android;
pub mod background;
pub mod base;
pub mod board;
pub mod bootfiles;
pub mod boottest;
pub mod build;
pub mod cache;
pub mod cli;
pub mod disk;
pub mod elf;
pub mod file_digests;
pub mod flash;
pub mod fs;
pub mod ids;
pub mod initramfs;
pub mod inspect;
pub mod io;
pub mod join;
pub mod k3s;
pub mod kernelconfig;
pub mod manifest;
pub mod output;
pub mod phone;
pub mod progress;
pub mod qemu;
pub mod service;
pub mod system;
pub mod tree;
pub mod update;
