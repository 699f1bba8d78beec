//! One writer per filesystem we produce. Each takes plain data (a `Tree` or a
//! list of files) and writes an image file; none needs root, `mount` or loop devices.

pub mod cpio;
pub mod ext4;
pub mod fat;
pub mod squashfs;
