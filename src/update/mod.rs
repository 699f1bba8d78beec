//! Updates: signing keys and signatures (`sign`), the update bundle (`bundle`).
//! See docs/updates.md.

pub mod bundle;
pub mod sign;
