//! Android phones: the board's Android section (`board`), boot images
//! (`bootimg`: boot.img v0-v4 and vendor_boot.img), Android sparse images
//! (`sparse`), flashing with fastboot (`fastboot`) and reading all of them
//! back (`inspect`).
//!
//! The formats are small and fully specified by AOSP's `bootimg.h` and
//! `sparse_format.h`; no maintained crate writes both, so they are written
//! here (see each module's opening comment).

pub mod board;
pub mod bootimg;
pub mod fastboot;
pub mod inspect;
pub mod sparse;
