//! Identifiers derived from the build's inputs, so that the same inputs give the
//! same disk signature, GUIDs, filesystem UUIDs and volume IDs on every build.

use anyhow::{anyhow, Result};
use sha2::{Digest, Sha256};

use crate::file_digests::FileDigests;
use crate::tree::{Kind, Tree};

/// 32 bytes derived from a seed (a hash of the build's inputs) and a purpose
/// string ("gpt-disk", "data-uuid", ...). Different purposes give unrelated values.
pub fn derive(seed: &[u8], purpose: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"nodeimg-id\0");
    h.update(purpose.as_bytes());
    h.update(b"\0");
    h.update(seed);
    h.finalize().into()
}

/// A random-looking (version 4, RFC 4122 variant) UUID in its on-disk byte order
/// as written by `uuid_to_string` (big-endian fields).
pub fn uuid(seed: &[u8], purpose: &str) -> [u8; 16] {
    let d = derive(seed, purpose);
    let mut u = [0u8; 16];
    u.copy_from_slice(&d[..16]);
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// A non-zero 32-bit value (MBR disk signature, FAT volume ID).
pub fn u32_id(seed: &[u8], purpose: &str) -> u32 {
    let d = derive(seed, purpose);
    let v = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
    if v == 0 {
        1
    } else {
        v
    }
}

/// "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", bytes in the given order.
pub fn uuid_to_string(u: &[u8; 16]) -> String {
    let h = hex::encode(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `SOURCE_DATE_EPOCH`, if set; an unparsable value is an error.
pub fn source_date_epoch() -> Result<Option<u64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| anyhow!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        _ => Ok(None),
    }
}

/// A digest of a tree's content (paths, metadata, each file's SHA-256),
/// independent of the order entries were read in. Files of a rootfs
/// directory are hashed through `digests`, which remembers them by stat.
/// Files whose digest is not known yet are hashed on every core first.
pub fn tree_digest(t: &Tree, digests: &FileDigests) -> anyhow::Result<[u8; 32]> {
    use anyhow::Context as _;
    hash_files(t, digests)?;
    let mut h = Sha256::new();
    for (path, e) in t.iter() {
        h.update(path.as_bytes());
        h.update([0]);
        h.update(e.st_mode().to_le_bytes());
        h.update(e.meta.uid.to_le_bytes());
        h.update(e.meta.gid.to_le_bytes());
        h.update(e.meta.mtime.to_le_bytes());
        match &e.kind {
            Kind::File(d) => {
                h.update(d.len().to_le_bytes());
                h.update(
                    digests
                        .sha256_content(d)
                        .with_context(|| format!("reading /{path}"))?,
                );
            }
            Kind::Symlink(target) => h.update(target.as_bytes()),
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                h.update(major.to_le_bytes());
                h.update(minor.to_le_bytes());
            }
            Kind::Dir | Kind::Fifo | Kind::Socket => {}
        }
        h.update([0xff]);
    }
    Ok(h.finalize().into())
}

/// Computes every file's SHA-256 (kept with its `Content`) on one thread
/// per core; the first failure is the error.
fn hash_files(t: &Tree, digests: &FileDigests) -> Result<()> {
    use anyhow::Context as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let files: Vec<(&String, &crate::tree::Data)> = t
        .iter()
        .filter_map(|(p, e)| match &e.kind {
            Kind::File(d) => Some((p, d)),
            _ => None,
        })
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len());
    let next = AtomicUsize::new(0);
    let failed = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while let Some((path, d)) = files.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if let Err(e) = digests
                        .sha256_content(d)
                        .with_context(|| format!("reading /{path}"))
                    {
                        if let Ok(mut f) = failed.lock() {
                            f.get_or_insert(e);
                        }
                        next.store(files.len(), Ordering::Relaxed);
                    }
                }
            });
        }
    });
    match failed.into_inner() {
        Ok(None) => Ok(()),
        Ok(Some(e)) => Err(e),
        Err(_) => Err(anyhow!("a thread hashing files panicked")),
    }
}

/// The seed every identifier of an image derives from: a hash over what goes
/// into the image (the caller's labelled parts: board, epoch, digests of the
/// system image, initramfs, boot files and data tree), not over the inputs
/// that led there, so inputs that make the same image give the same
/// identifiers. Each part is framed by its label and length.
pub fn seed(parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"nodeimg-seed\0");
    for (label, bytes) in parts {
        h.update(label.as_bytes());
        h.update([0]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    h.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_id_and_purposes_differ() {
        assert_eq!(uuid(b"s", "a"), uuid(b"s", "a"));
        assert_ne!(uuid(b"s", "a"), uuid(b"s", "b"));
        assert_ne!(u32_id(b"s", "a"), u32_id(b"t", "a"));
    }

    #[test]
    fn seed_parts_are_framed() {
        assert_eq!(seed(&[("a", b"x")]), seed(&[("a", b"x")]));
        assert_ne!(seed(&[("a", b"x")]), seed(&[("a", b"y")]));
        // Moving bytes across a part boundary changes the seed.
        assert_ne!(
            seed(&[("a", b"xy"), ("b", b"")]),
            seed(&[("a", b"x"), ("b", b"y")])
        );
        assert_ne!(seed(&[("a", b"x")]), seed(&[("b", b"x")]));
    }

    /// Files are hashed on several threads, each file's digest landing with
    /// its own content (the digest equals that of a tree whose files were
    /// hashed one by one, in order, beforehand), and a file that cannot be
    /// read is the error, named.
    #[test]
    fn the_digest_covers_every_file_whatever_the_threads_and_names_a_failure() {
        use crate::tree::{Content, Entry, Kind, Meta};
        use std::sync::Arc;
        let tree = || {
            let mut t = Tree::new(Meta::root(0o755, 1));
            for i in 0..200u32 {
                let data = i.to_le_bytes().repeat(1 + i as usize * 100);
                t.insert(&format!("f{i:03}"), Entry::file(Meta::root(0o644, 2), data))
                    .unwrap();
            }
            t
        };
        let parallel = tree_digest(&tree(), &FileDigests::disabled()).unwrap();
        let one_by_one = tree();
        for (_, e) in one_by_one.iter() {
            if let Kind::File(d) = &e.kind {
                d.sha256().unwrap();
            }
        }
        assert_eq!(
            tree_digest(&one_by_one, &FileDigests::disabled()).unwrap(),
            parallel
        );
        let mut t = tree();
        let gone = Content::from_path("/nonexistent/nodeimg-test", 3);
        t.insert(
            "f100-missing",
            Entry {
                meta: Meta::root(0o644, 2),
                kind: Kind::File(Arc::new(gone)),
            },
        )
        .unwrap();
        let err = format!(
            "{:#}",
            tree_digest(&t, &FileDigests::disabled()).unwrap_err()
        );
        assert!(err.contains("/f100-missing"), "{err}");
    }

    #[test]
    fn uuid_has_version_and_variant_bits() {
        let u = uuid(b"seed", "x");
        assert_eq!(u[6] >> 4, 4);
        assert_eq!(u[8] >> 6, 0b10);
        let s = uuid_to_string(&u);
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
    }
}
