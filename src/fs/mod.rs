//! One writer per filesystem we produce. Each takes plain data (a `Tree` or a
//! list of files) and writes an image file; none needs root, `mount` or loop devices.

pub mod cpio;
pub mod ext4;
pub mod fat;
pub mod squashfs;

/// Deterministic pseudo-random bytes (xorshift) for tests, so data is neither
/// all zeros nor compressible.
#[cfg(test)]
pub(crate) fn test_noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
