//! Updates: signing keys and signatures (`sign`), the update bundle (`bundle`),
//! U-Boot as the slot-picking loader (`uboot`).
//! See docs/updates.md.

pub mod bundle;
pub mod sign;
pub mod uboot;
