//! The update bundle: one uncompressed tar holding, in this order,
//! `manifest.json`, `manifest.json.minisig` (its minisign signature),
//! `system.squashfs`, then the boot files under `boot/`. The manifest names
//! every payload with its size and SHA-256, so one signature covers all.
//!
//! Written reproducibly (ustar headers, owner 0:0, mode 0644, the build's
//! mtime). Read as a stream: the manifest and its signature are checked
//! before any payload is trusted, and each payload is hashed as it passes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::board::Board;
use crate::bootfiles::Found;
use crate::cli::UpdateVerifyArgs;
use crate::disk::plan::DiskPlan;
use crate::manifest::OutputInfo;
use crate::tree::Data;
use crate::update::sign::{PublicKey, SecretKey};
use crate::update::uboot;

pub const FORMAT: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.json.minisig";
pub const SYSTEM: &str = "system.squashfs";
/// Upper bounds for the entries read into memory before they are trusted.
const MAX_MANIFEST: u64 = 1 << 20;
const MAX_SIGNATURE: u64 = 4096;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub board: String,
    /// The build's version; bundles of one board are ordered by it.
    pub version: u64,
    /// The oldest version this bundle may update from.
    pub min_version: u64,
    pub kernel_release: String,
    pub layout: Layout,
    pub payloads: Vec<Payload>,
}

/// The partition sizes the bundle was built for (bytes).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    pub boot_size: u64,
    pub system_slot_size: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// What goes into a bundle.
pub struct Contents<'a> {
    pub board: &'a str,
    pub version: u64,
    pub min_version: u64,
    pub kernel_release: &'a str,
    pub layout: Layout,
    pub squashfs: &'a Path,
    /// Boot partition file name -> contents (stored as `boot/<name>`).
    pub boot_files: &'a BTreeMap<String, Data>,
    pub mtime: u64,
}

fn header(name: &str, size: u64, mtime: u64) -> Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)
        .with_context(|| format!("bundle entry name {name}"))?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

/// The build's hook: the bundle of one node image (`build` = the board, its
/// disk plan, the build's epoch and the boot files found), signed with the
/// secret key in `key_path`; described for build.json.
pub fn for_build<'a>(
    out: &Path,
    key_path: &Path,
    build: (&Board, &DiskPlan, u64, &Found),
    squashfs: &Path,
    boot_files: impl Iterator<Item = (&'a String, &'a Data)>,
    args: &crate::cli::BuildArgs,
) -> Result<OutputInfo> {
    let (board, plan, epoch, found) = build;
    use crate::disk::layout::Role;
    let key = SecretKey::load(key_path)?;
    let version = args.build_version.unwrap_or(epoch);
    let min_version = args.min_version.unwrap_or(0);
    if min_version > version {
        bail!("--min-version {min_version} is above the build's version {version}");
    }
    // A slot's files travel without their slot directory (the helper writes
    // them to the slot it updates); the loader's state is the node's own.
    let boot_files: BTreeMap<String, Data> = boot_files
        .filter(|(k, _)| k.as_str() != uboot::STATE_NAME)
        .map(|(k, v)| {
            let name = k.strip_prefix("slot-a/").unwrap_or(k);
            (name.to_string(), v.clone())
        })
        .collect();
    let sha256 = write(
        out,
        &Contents {
            board: &board.name,
            version,
            min_version,
            kernel_release: &found.kernel_release,
            layout: Layout {
                boot_size: plan.part(Role::Boot)?.size,
                system_slot_size: plan.part(Role::SystemA)?.size,
            },
            squashfs,
            boot_files: &boot_files,
            mtime: epoch,
        },
        &key,
    )
    .context("writing the update bundle")?;
    let size = std::fs::metadata(out)
        .with_context(|| format!("reading {}", out.display()))?
        .len();
    Ok(OutputInfo {
        file: out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        size,
        sha256: Some(sha256),
        bmap: None,
    })
}

/// Writes the signed bundle to `out` (under a temporary name, renamed when
/// complete); returns its hex SHA-256.
pub fn write(out: &Path, c: &Contents, key: &SecretKey) -> Result<String> {
    let system_sha256 = crate::output::sha256_file(c.squashfs)?;
    let system_size = std::fs::metadata(c.squashfs)
        .with_context(|| format!("reading {}", c.squashfs.display()))?
        .len();
    let mut payloads = vec![Payload {
        name: SYSTEM.to_string(),
        size: system_size,
        sha256: system_sha256,
    }];
    for (name, data) in c.boot_files {
        payloads.push(Payload {
            name: format!("boot/{name}"),
            size: data.len(),
            sha256: hex::encode(
                data.sha256()
                    .with_context(|| format!("reading boot file {name}"))?,
            ),
        });
    }
    let manifest = Manifest {
        format: FORMAT,
        board: c.board.to_string(),
        version: c.version,
        min_version: c.min_version,
        kernel_release: c.kernel_release.to_string(),
        layout: c.layout.clone(),
        payloads,
    };
    let mut json = serde_json::to_vec_pretty(&manifest).context("encoding the bundle manifest")?;
    json.push(b'\n');
    let comment = format!(
        "nodeimg bundle board:{} version:{} min_version:{}",
        c.board, c.version, c.min_version
    );
    let sig = key.sign(&json, &comment)?;

    let name = out
        .file_name()
        .with_context(|| format!("{} is not a file name", out.display()))?;
    let tmp = out.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    let result = (|| -> Result<String> {
        let f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut hashed = HashingWriter {
            inner: BufWriter::new(f),
            hash: Sha256::new(),
        };
        {
            let mut tar = tar::Builder::new(&mut hashed);
            tar.mode(tar::HeaderMode::Deterministic);
            let mut add = |name: &str, size: u64, data: &mut dyn Read| -> Result<()> {
                let h = header(name, size, c.mtime)?;
                tar.append(&h, data)
                    .with_context(|| format!("writing {name} into {}", out.display()))
            };
            add(MANIFEST, json.len() as u64, &mut json.as_slice())?;
            add(SIGNATURE, sig.len() as u64, &mut sig.as_bytes())?;
            let mut sq = File::open(c.squashfs)
                .with_context(|| format!("reading {}", c.squashfs.display()))?;
            add(SYSTEM, system_size, &mut sq)?;
            for (name, data) in c.boot_files {
                let mut r = data
                    .reader()
                    .with_context(|| format!("reading boot file {name}"))?;
                add(&format!("boot/{name}"), data.len(), &mut r)?;
            }
            tar.finish()
                .with_context(|| format!("writing {}", out.display()))?;
        }
        let HashingWriter { inner, hash } = hashed;
        let f = inner
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", out.display()))?;
        f.sync_all()
            .with_context(|| format!("writing {}", out.display()))?;
        Ok(hex::encode(hash.finalize()))
    })();
    match result {
        Ok(sha) => {
            std::fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
            Ok(sha)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What a node (or `update verify`) requires of a bundle.
pub struct Expect<'a> {
    pub key: &'a PublicKey,
    pub board: Option<&'a str>,
    /// The version running now: refused when below the bundle's minimum.
    pub from_version: Option<u64>,
    /// The node's partition sizes: refused when the bundle was built for others.
    pub layout: Option<&'a Layout>,
}

/// Reads a bundle from `r`, checking the signature, board, version, and each
/// payload's name, order, size and SHA-256; `sink` gets every payload's bytes
/// as they pass (before its hash is confirmed: a caller writing them must
/// treat them as untrusted until this returns Ok). Returns the manifest.
pub fn read(
    r: impl Read,
    expect: &Expect,
    mut sink: impl FnMut(&Payload, &[u8]) -> Result<()>,
) -> Result<Manifest> {
    let mut archive = tar::Archive::new(r);
    let mut entries = archive.entries().context("not a tar archive")?;
    let mut next = |what: &str| -> Result<tar::Entry<'_, _>> {
        let e = entries
            .next()
            .with_context(|| format!("ends before {what}"))?
            .with_context(|| format!("damaged tar header before {what}"))?;
        let path = e.path_bytes();
        if path.as_ref() != what.as_bytes() {
            bail!(
                "expected {what}, found {:?}",
                String::from_utf8_lossy(path.as_ref())
            );
        }
        if e.header().entry_type() != tar::EntryType::Regular {
            bail!("{what} is not a regular file");
        }
        Ok(e)
    };
    let small = |e: tar::Entry<'_, _>, max: u64, what: &str| -> Result<Vec<u8>> {
        let size = e.size();
        if size > max {
            bail!("{what} is {size} bytes, more than {max}");
        }
        let mut v = Vec::new();
        e.take(max)
            .read_to_end(&mut v)
            .with_context(|| format!("reading {what}"))?;
        Ok(v)
    };
    let json = small(next(MANIFEST)?, MAX_MANIFEST, MANIFEST)?;
    let sig = small(next(SIGNATURE)?, MAX_SIGNATURE, SIGNATURE)?;
    let sig = String::from_utf8(sig).context("the signature is not text")?;
    expect
        .key
        .verify(&json, &sig)
        .context("the manifest's signature is not valid for this key")?;
    let m: Manifest = serde_json::from_slice(&json).context("the signed manifest is invalid")?;
    if m.format != FORMAT {
        bail!(
            "bundle format {} is not supported (this nodeimg reads {FORMAT})",
            m.format
        );
    }
    if let Some(b) = expect.board {
        if m.board != b {
            bail!("the bundle is for board {}, not {b}", m.board);
        }
    }
    if let Some(v) = expect.from_version {
        if v < m.min_version {
            bail!(
                "the bundle (version {}) updates from version {} or later; this is version {v}: refusing the downgrade",
                m.version,
                m.min_version
            );
        }
    }
    if let Some(l) = expect.layout {
        if m.layout != *l {
            bail!(
                "the bundle is laid out for a {}-byte boot partition and {}-byte system slots; \
                 this node has {} and {}",
                m.layout.boot_size,
                m.layout.system_slot_size,
                l.boot_size,
                l.system_slot_size
            );
        }
    }
    for (i, p) in m.payloads.iter().enumerate() {
        let plain = |rest: &str| {
            !rest.is_empty()
                && rest
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != "..")
        };
        let ok = match i {
            0 => p.name == SYSTEM,
            _ => p.name.strip_prefix("boot/").is_some_and(plain),
        };
        if !ok {
            bail!("payload {i} has an unexpected name: {:?}", p.name);
        }
    }
    let mut buf = vec![0u8; 1 << 16];
    for p in &m.payloads {
        let mut e = next(&p.name)?;
        if e.size() != p.size {
            bail!(
                "{}: {} bytes, the manifest says {}",
                p.name,
                e.size(),
                p.size
            );
        }
        let mut h = Sha256::new();
        loop {
            let n = e
                .read(&mut buf)
                .with_context(|| format!("reading {}", p.name))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            sink(p, &buf[..n])?;
        }
        if hex::encode(h.finalize()) != p.sha256 {
            bail!(
                "{}: SHA-256 does not match the manifest (tampered or damaged)",
                p.name
            );
        }
    }
    if let Some(extra) = entries.next() {
        let name = extra
            .ok()
            .and_then(|e| e.path().ok().map(|p| p.display().to_string()))
            .unwrap_or_default();
        bail!("an entry the manifest does not list: {name:?}");
    }
    Ok(m)
}

/// `nodeimg update verify`.
pub fn verify_command(a: &UpdateVerifyArgs) -> Result<()> {
    {
        {
            let key = PublicKey::load(&a.key)?;
            let f =
                File::open(&a.bundle).with_context(|| format!("opening {}", a.bundle.display()))?;
            let m = read(
                io::BufReader::new(f),
                &Expect {
                    key: &key,
                    board: a.board.as_deref(),
                    from_version: a.from_version,
                    layout: None,
                },
                |_, _| Ok(()),
            )
            .with_context(|| format!("bundle {}", a.bundle.display()))?;
            println!(
                "{}: good: board {}, version {} (updates from {}), kernel {}, {} payloads, key {}",
                a.bundle.display(),
                m.board,
                m.version,
                m.min_version,
                m.kernel_release,
                m.payloads.len(),
                key.key_id()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path, key: &SecretKey) -> (std::path::PathBuf, Vec<u8>) {
        let sq = dir.join("sq");
        std::fs::write(&sq, vec![7u8; 10_000]).unwrap();
        let mut boot = BTreeMap::new();
        boot.insert("Image".to_string(), crate::tree::data(*b"kernel"));
        boot.insert(
            "cmdline.txt".to_string(),
            crate::tree::data(*b"console=ttyAMA0\n"),
        );
        let out = dir.join("b.bundle");
        write(
            &out,
            &Contents {
                board: "qemu-aarch64",
                version: 5,
                min_version: 3,
                kernel_release: "6.12",
                layout: Layout {
                    boot_size: 1 << 20,
                    system_slot_size: 1 << 24,
                },
                squashfs: &sq,
                boot_files: &boot,
                mtime: 1,
            },
            key,
        )
        .unwrap();
        let bytes = std::fs::read(&out).unwrap();
        (out, bytes)
    }

    fn check(bytes: &[u8], key: &PublicKey, from: Option<u64>) -> Result<Manifest> {
        read(
            bytes,
            &Expect {
                key,
                board: Some("qemu-aarch64"),
                from_version: from,
                layout: None,
            },
            |_, _| Ok(()),
        )
    }

    #[test]
    fn round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let (_, bytes) = sample(dir.path(), &key);
        let pk = key.public();
        let m = check(&bytes, &pk, Some(3)).unwrap();
        assert_eq!(m.payloads.len(), 3);
        assert_eq!(m.payloads[0].name, SYSTEM);
        let err = format!("{:#}", check(&bytes, &pk, Some(2)).unwrap_err());
        assert!(err.contains("downgrade"), "{err}");
        let other = SecretKey::generate().unwrap().public();
        let err = format!("{:#}", check(&bytes, &other, None).unwrap_err());
        assert!(err.contains("another key"), "{err}");
        // The squashfs payload (all 7s) changed in one byte.
        let mut t = bytes.clone();
        let at = t.windows(16).position(|w| w == [7u8; 16]).unwrap();
        t[at + 100] = 8;
        let err = format!("{:#}", check(&t, &pk, None).unwrap_err());
        assert!(err.contains("system.squashfs: SHA-256"), "{err}");
        // Another layout than the node's is refused; the same is read.
        let with_layout = |l: &Layout| {
            read(
                &bytes[..],
                &Expect {
                    key: &pk,
                    board: None,
                    from_version: None,
                    layout: Some(l),
                },
                |_, _| Ok(()),
            )
        };
        let mut other = m.layout.clone();
        other.system_slot_size += 512;
        let err = format!("{:#}", with_layout(&other).unwrap_err());
        assert!(err.contains("system slots; this node has"), "{err}");
        assert!(with_layout(&m.layout).is_ok());
    }

    #[test]
    fn payload_names_are_checked_even_when_signed() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let sq = dir.path().join("sq");
        std::fs::write(&sq, b"s").unwrap();
        let mut written = 0;
        for bad in ["../x", "boot/../../etc/x", "/abs", ""] {
            let mut boot = BTreeMap::new();
            boot.insert(bad.to_string(), crate::tree::data(*b"k"));
            let out = dir.path().join("b.bundle");
            let c = Contents {
                board: "qemu-aarch64",
                version: 1,
                min_version: 0,
                kernel_release: "k",
                layout: Layout {
                    boot_size: 1,
                    system_slot_size: 1,
                },
                squashfs: &sq,
                boot_files: &boot,
                mtime: 0,
            };
            // The tar writer may refuse some names itself; any bundle written is refused.
            if write(&out, &c, &key).is_ok() {
                written += 1;
                let bytes = std::fs::read(&out).unwrap();
                let err = format!("{:#}", check(&bytes, &key.public(), None).unwrap_err());
                assert!(err.contains("unexpected name"), "{bad}: {err}");
            }
        }
        assert!(
            written >= 2,
            "only {written} hostile names got into a bundle"
        );
    }

    #[test]
    fn same_inputs_same_bundle() {
        let key = SecretKey::generate().unwrap();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        assert_eq!(sample(a.path(), &key).1, sample(b.path(), &key).1);
    }

    #[test]
    fn mutated_bundles_never_panic_and_never_pass_changed_payloads() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let (_, bytes) = sample(dir.path(), &key);
        let pk = key.public();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let cases: usize = std::env::var("NODEIMG_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300);
        for _ in 0..cases {
            let mut m = bytes.clone();
            for _ in 0..1 + state % 4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state as usize) % m.len();
                m[at] ^= 1 << ((state >> 40) % 8);
            }
            let mut seen = Vec::new();
            if check(&m, &pk, None).is_ok() {
                // Only bytes outside every entry (padding, the end blocks) may change.
                read(
                    m.as_slice(),
                    &Expect {
                        key: &pk,
                        board: None,
                        from_version: None,
                        layout: None,
                    },
                    |p, b| {
                        seen.push((p.name.clone(), b.to_vec()));
                        Ok(())
                    },
                )
                .unwrap();
                let mut orig = Vec::new();
                read(
                    bytes.as_slice(),
                    &Expect {
                        key: &pk,
                        board: None,
                        from_version: None,
                        layout: None,
                    },
                    |p, b| {
                        orig.push((p.name.clone(), b.to_vec()));
                        Ok(())
                    },
                )
                .unwrap();
                assert_eq!(seen, orig);
            }
        }
    }
}
