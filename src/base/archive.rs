//! Debian's archive metadata: the signed `InRelease` (verified against the
//! pinned archive keys with rPGP), the index files it lists, and the
//! `Packages` index. Pure functions over bytes; the network is in `fetch`.
//!
//! Trust runs one way: the pinned key fingerprints (`boards/base/keys/`)
//! vouch for InRelease, InRelease's SHA256 list for each `Packages.xz`, and
//! each package's `SHA256` in Packages for its `.deb` (pinned in the lock).
//! Only the signed text of InRelease is read; anything around it is ignored.

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{bail, Context, Result};
use pgp::composed::{CleartextSignedMessage, Deserializable, SignedPublicKey};
use pgp::types::KeyDetails;
use serde::Deserialize;

use super::deb822::{self, Paragraph};
use super::lock::{is_archive_path, is_sha256, sha256_hex};
use super::version::Version;
use crate::board::DataDir;

/// The most a decompressed `Packages` index may take (Debian's largest,
/// main for amd64, is about 70 MiB).
const MAX_INDEX: u64 = 1 << 30;

/// Public keys trusted to sign InRelease: each a primary key checked
/// against its pinned fingerprint, with the signing subkeys it binds.
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyPins {
    key: Vec<KeyPin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyPin {
    file: String,
    fingerprint: String,
}

impl Keyring {
    /// Loads `boards/base/keys/<name>.toml` and the armored key files it
    /// pins (a `--data-dir` copy wins over the built-in one).
    pub fn load(data: &DataDir, name: &str) -> Result<Keyring> {
        let rel = format!("boards/base/keys/{name}.toml");
        let (origin, bytes) = data
            .data_file(&rel)?
            .with_context(|| format!("no keyring {name:?} ({rel})"))?;
        let text = String::from_utf8(bytes).with_context(|| format!("{origin}: not UTF-8"))?;
        let pins: KeyPins = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{origin}: {}", e.message().trim()))?;
        let mut files = Vec::new();
        for pin in pins.key {
            if !super::recipe::is_name(&pin.file.to_ascii_lowercase()) {
                bail!("{origin}: key file {:?} is not a plain file name", pin.file);
            }
            let krel = format!("boards/base/keys/{}", pin.file);
            let (korigin, kbytes) = data
                .data_file(&krel)?
                .with_context(|| format!("{origin}: no key file {krel}"))?;
            let armored =
                String::from_utf8(kbytes).with_context(|| format!("{korigin}: not UTF-8"))?;
            files.push((korigin, armored, pin.fingerprint));
        }
        Keyring::from_pinned(&files)
    }

    /// Keys from (origin, armored text, pinned fingerprint) triples. A key
    /// whose fingerprint differs from its pin, or whose self-signatures do
    /// not verify, is an error.
    pub fn from_pinned(files: &[(String, String, String)]) -> Result<Keyring> {
        let mut keys = Vec::new();
        for (origin, armored, pin) in files {
            let (key, _) = SignedPublicKey::from_string(armored)
                .map_err(|e| anyhow::anyhow!("{origin}: not an OpenPGP public key: {e}"))?;
            let fpr = hex::encode_upper(key.fingerprint().as_bytes());
            let want = pin.replace(' ', "").to_ascii_uppercase();
            if fpr != want {
                bail!("{origin}: the key's fingerprint is {fpr}, the pin says {want}");
            }
            let mut key = key;
            // Subkeys count only when the primary key binds them (and they
            // sign back); anything else in the file is dropped.
            key.public_subkeys
                .retain(|sk| sk.verify_bindings(&key.primary_key).is_ok());
            keys.push(key);
        }
        if keys.is_empty() {
            bail!("the keyring pins no keys");
        }
        Ok(Keyring { keys })
    }

    /// Fingerprints of the primary keys, upper-case hex.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| hex::encode_upper(k.fingerprint().as_bytes()))
            .collect()
    }

    /// Whether one of the message's signatures verifies with one of our
    /// keys (primary or bound subkey); returns that key's primary fingerprint.
    fn verifies(&self, msg: &CleartextSignedMessage) -> Option<String> {
        for key in &self.keys {
            let ok = msg.verify(&key.primary_key).is_ok()
                || key
                    .public_subkeys
                    .iter()
                    .any(|sk| msg.verify(&sk.key).is_ok());
            if ok {
                return Some(hex::encode_upper(key.fingerprint().as_bytes()));
            }
        }
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("InRelease has no valid OpenPGP signature by a pinned archive key (pinned: {pinned})")]
    BadSignature { pinned: String },
    #[error("InRelease is not a clearsigned OpenPGP message: {0}")]
    NotSigned(String),
    #[error("{path}: size {got}, InRelease says {want}")]
    SizeMismatch { path: String, got: u64, want: u64 },
    #[error("{path}: SHA-256 {got}, InRelease says {want}")]
    HashMismatch {
        path: String,
        got: String,
        want: String,
    },
}

/// What the lock needs from a verified InRelease.
#[derive(Debug, Clone)]
pub struct Release {
    /// SHA-256 of the InRelease bytes as fetched.
    pub sha256: String,
    pub date: String,
    pub suite: Option<String>,
    pub codename: Option<String>,
    /// Whether the mirror serves index files by hash (`Acquire-By-Hash: yes`).
    pub by_hash: bool,
    /// The SHA256 list: path -> (size, sha256).
    pub files: BTreeMap<String, (u64, String)>,
    /// Primary fingerprint of the key whose signature verified.
    pub signed_by: String,
}

impl Release {
    /// The entry InRelease has for `path`.
    pub fn file(&self, path: &str) -> Result<(u64, &str)> {
        self.files
            .get(path)
            .map(|(s, h)| (*s, h.as_str()))
            .with_context(|| format!("InRelease lists no SHA256 for {path}"))
    }
}

/// Verifies InRelease's signature against `keyring` and reads its signed
/// text. A missing, malformed or unverifiable signature is an error.
pub fn verify_inrelease(bytes: &[u8], keyring: &Keyring) -> Result<Release> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| ArchiveError::NotSigned("not UTF-8 text".into()))?;
    let (msg, _) = CleartextSignedMessage::from_string(text)
        .map_err(|e| ArchiveError::NotSigned(e.to_string()))?;
    let signed_by = keyring
        .verifies(&msg)
        .ok_or_else(|| ArchiveError::BadSignature {
            pinned: keyring.fingerprints().join(", "),
        })?;
    let signed = msg.signed_text();
    let paras = deb822::parse(&signed).context("InRelease")?;
    let [p] = paras.as_slice() else {
        bail!("InRelease: expected one paragraph, found {}", paras.len());
    };
    let date = p.get("Date").context("InRelease has no Date")?.to_string();
    let mut files = BTreeMap::new();
    for (n, line) in p
        .get("SHA256")
        .context("InRelease has no SHA256 list")?
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [hash, size, path] = parts.as_slice() else {
            bail!(
                "InRelease: SHA256 line {}: expected \"hash size path\"",
                n + 1
            );
        };
        let size: u64 = size
            .parse()
            .with_context(|| format!("InRelease: SHA256 line {}: bad size", n + 1))?;
        if !is_sha256(hash) {
            bail!("InRelease: SHA256 line {}: bad hash", n + 1);
        }
        files.insert(path.to_string(), (size, hash.to_string()));
    }
    Ok(Release {
        sha256: sha256_hex(bytes),
        date,
        suite: p.get("Suite").map(str::to_string),
        codename: p.get("Codename").map(str::to_string),
        by_hash: p
            .get("Acquire-By-Hash")
            .is_some_and(|v| v.eq_ignore_ascii_case("yes")),
        files,
        signed_by,
    })
}

/// Checks `bytes` against InRelease's size and SHA-256 for `path`.
pub fn check_index(bytes: &[u8], path: &str, size: u64, sha256: &str) -> Result<(), ArchiveError> {
    let got = bytes.len() as u64;
    if got != size {
        return Err(ArchiveError::SizeMismatch {
            path: path.to_string(),
            got,
            want: size,
        });
    }
    let h = sha256_hex(bytes);
    if h != sha256 {
        return Err(ArchiveError::HashMismatch {
            path: path.to_string(),
            got: h,
            want: sha256.to_string(),
        });
    }
    Ok(())
}

/// Decompresses a (checked) `Packages.xz`, refusing more than 1 GiB.
pub fn unxz(bytes: &[u8]) -> Result<String> {
    let mut out = Vec::new();
    liblzma::read::XzDecoder::new(bytes)
        .take(MAX_INDEX + 1)
        .read_to_end(&mut out)
        .context("decompressing Packages.xz")?;
    if out.len() as u64 > MAX_INDEX {
        bail!("Packages.xz decompresses to more than {MAX_INDEX} bytes");
    }
    String::from_utf8(out).context("Packages is not UTF-8")
}

/// One binary package of the index. Relation fields are kept as text and
/// parsed by the resolver for the packages it visits.
#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    pub version: Version,
    pub architecture: String,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    pub essential: bool,
    pub multi_arch: Option<String>,
    pub pre_depends: Option<String>,
    pub depends: Option<String>,
    pub provides: Option<String>,
    pub conflicts: Option<String>,
    pub breaks: Option<String>,
}

/// Parses a `Packages` index. A paragraph lacking a field the lock needs,
/// or with a malformed one, is an error naming its line.
pub fn parse_packages(text: &str) -> Result<Vec<Package>> {
    let paras = deb822::parse(text)?;
    paras.iter().map(package).collect()
}

fn package(p: &Paragraph) -> Result<Package> {
    let ctx = || format!("line {}", p.line);
    let need = |f: &str| {
        p.get(f)
            .filter(|v| !v.is_empty())
            .with_context(|| format!("no {f} field"))
            .with_context(ctx)
    };
    let name = need("Package")?;
    super::recipe::check_package_name(name).with_context(ctx)?;
    let version = Version::parse(need("Version")?).with_context(ctx)?;
    let architecture = need("Architecture")?;
    if !super::recipe::is_name(architecture) {
        bail!("line {}: bad Architecture {architecture:?}", p.line);
    }
    let filename = need("Filename")?;
    if !is_archive_path(filename) {
        bail!(
            "line {}: Filename {filename:?} is not a path in the archive",
            p.line
        );
    }
    let size: u64 = need("Size")?
        .parse()
        .with_context(|| format!("line {}: bad Size", p.line))?;
    let sha256 = need("SHA256")?;
    if !is_sha256(sha256) {
        bail!("line {}: bad SHA256", p.line);
    }
    let opt = |f: &str| p.get(f).map(str::to_string);
    Ok(Package {
        name: name.to_string(),
        version,
        architecture: architecture.to_string(),
        filename: filename.to_string(),
        size,
        sha256: sha256.to_string(),
        essential: p.get("Essential").is_some_and(|v| v == "yes"),
        multi_arch: opt("Multi-Arch"),
        pre_depends: opt("Pre-Depends"),
        depends: opt("Depends"),
        provides: opt("Provides"),
        conflicts: opt("Conflicts"),
        breaks: opt("Breaks"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PKG: &str = "Package: hello\n\
Version: 2.10-3\n\
Architecture: arm64\n\
Depends: libc6 (>= 2.34)\n\
Filename: pool/main/h/hello/hello_2.10-3_arm64.deb\n\
Size: 52432\n\
SHA256: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n\
Description: hi\n\
\n\
Package: base-files\n\
Essential: yes\n\
Version: 13.8\n\
Architecture: arm64\n\
Filename: pool/main/b/base-files/base-files_13.8_arm64.deb\n\
Size: 70000\n\
SHA256: 1123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n";

    #[test]
    fn reads_packages() {
        let ps = parse_packages(PKG).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].name, "hello");
        assert_eq!(ps[0].depends.as_deref(), Some("libc6 (>= 2.34)"));
        assert!(!ps[0].essential && ps[1].essential);
        assert_eq!(ps[1].size, 70000);
    }

    #[test]
    fn bad_packages_name_the_line() {
        for (from, to) in [
            ("Size: 70000", "Size: -5"),
            ("Size: 70000", "Size: 99999999999999999999999"),
            ("Version: 13.8", "Version: thirteen"),
            ("Filename: pool/main/b", "Filename: ../main/b"),
            ("SHA256: 1123", "SHA256: x123"),
            (
                "Architecture: arm64\nFilename: pool/main/b",
                "Filename: pool/main/b",
            ),
        ] {
            let text = PKG.replacen(from, to, 1);
            assert_ne!(text, PKG, "{from}");
            let e = format!("{:#}", parse_packages(&text).unwrap_err());
            assert!(e.contains("line 10") || e.contains("line 11"), "{to}: {e}");
        }
    }

    #[test]
    fn index_checks_size_then_hash() {
        let data = b"abc";
        let h = sha256_hex(data);
        check_index(data, "p", 3, &h).unwrap();
        assert!(matches!(
            check_index(data, "p", 4, &h),
            Err(ArchiveError::SizeMismatch { .. })
        ));
        assert!(matches!(
            check_index(b"abd", "p", 3, &h),
            Err(ArchiveError::HashMismatch { .. })
        ));
    }

    #[test]
    fn pinned_debian_keys_load_and_match_their_pins() {
        let k = Keyring::load(&DataDir::builtin(), "debian").unwrap();
        let f = k.fingerprints();
        assert!(f.contains(&"04B54C3CDCA79751B16BC6B5225629DF75B188BD".to_string()));
        assert_eq!(f.len(), 6);
        // The trixie automatic key signs with its subkey: it must survive
        // the binding check.
        assert!(k.keys.iter().any(|key| !key.public_subkeys.is_empty()));
    }

    #[test]
    fn a_key_with_another_fingerprint_than_its_pin_is_refused() {
        let data = DataDir::builtin();
        let (_, bytes) = data
            .data_file("boards/base/keys/debian-archive-trixie-stable.asc")
            .unwrap()
            .unwrap();
        let armored = String::from_utf8(bytes).unwrap();
        let wrong = "04B54C3CDCA79751B16BC6B5225629DF75B188BD".to_string();
        let e = Keyring::from_pinned(&[("k".into(), armored.clone(), wrong)])
            .err()
            .unwrap();
        assert!(e.to_string().contains("the pin says"), "{e}");
        let right = "41587F7DB8C774BCCF131416762F67A0B2C39DE4".to_string();
        Keyring::from_pinned(&[("k".into(), armored, right)]).unwrap();
    }
}
