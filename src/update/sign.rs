//! Ed25519 keys and signatures in minisign's formats, so that the host's
//! `minisign` can check what we sign and we can check what it signs.
//!
//! Hand-written on `ed25519-dalek` and `blake2` because the formats are a few
//! fixed byte layouts, and the `minisign` crate would bring its own password
//! prompting and scrypt we do not use; `minisign-verify` only verifies, and we
//! need to parse keys and sign too. The layouts (minisign 0.11):
//!
//! - public key: `"Ed" | key id (8) | public key (32)`, base64, under an
//!   `untrusted comment:` line;
//! - secret key: `"Ed" | kdf "\0\0" (unencrypted, `minisign -G -W`) | "B2" |
//!   salt (32) | opslimit (8 LE) | memlimit (8 LE) | key id (8) |
//!   secret key (seed | public key, 64) | checksum (32)`, the checksum a
//!   BLAKE2b-256 of `"Ed" | key id | secret key` (minisign 0.11 writes zeros
//!   there for unencrypted keys; we write it, and check it when not zero);
//! - signature: `"ED" | key id | Ed25519(BLAKE2b-512(message))`, base64, then
//!   `trusted comment: TEXT` and base64 of the global signature,
//!   Ed25519(signature (64) | TEXT). The legacy `"Ed"` form signs the message
//!   itself; we verify it but never write it.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use blake2::digest::consts::U32;
use blake2::{Blake2b, Blake2b512, Digest};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

const UNTRUSTED: &str = "untrusted comment: ";
const TRUSTED: &str = "trusted comment: ";
const PUBLIC_LEN: usize = 2 + 8 + 32;
const SECRET_LEN: usize = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32;
const SIG_LEN: usize = 2 + 8 + 64;

/// Why a signature was refused; callers tell a foreign key from tampering.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("malformed signature: {0}")]
    Malformed(&'static str),
    #[error("signed with another key (key id {found}, expected {expected})")]
    OtherKey { found: String, expected: String },
    #[error("signature does not match the signed data")]
    BadSignature,
    #[error("trusted comment does not match its signature")]
    BadTrustedComment,
}

/// A public key: what a node keeps to accept bundles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    key_id: [u8; 8],
    key: VerifyingKey,
}

/// A secret key. Never printed: no `Debug`, no `Display`; zeroed on drop.
pub struct SecretKey {
    key_id: [u8; 8],
    signing: SigningKey,
}

fn key_id_hex(id: &[u8; 8]) -> String {
    // minisign prints the id as a little-endian u64 in upper-case hex.
    format!("{:016X}", u64::from_le_bytes(*id))
}

/// The base64 line of a minisign file: the first line that is not a comment.
fn payload_line(text: &str) -> Option<&str> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with(UNTRUSTED))
}

impl PublicKey {
    pub fn key_id(&self) -> String {
        key_id_hex(&self.key_id)
    }

    /// Parses a public key file (or its bare base64 line, as `minisign -P` takes).
    pub fn parse(text: &str) -> Result<PublicKey> {
        let line = payload_line(text).context("no key in it")?;
        let raw = B64.decode(line).context("the key is not base64")?;
        if raw.len() != PUBLIC_LEN || &raw[..2] != b"Ed" {
            bail!("not a minisign Ed25519 public key");
        }
        let key_id: [u8; 8] = raw[2..10].try_into().context("key id")?;
        let pk: [u8; 32] = raw[10..].try_into().context("key")?;
        let key = VerifyingKey::from_bytes(&pk).context("not a valid Ed25519 public key")?;
        Ok(PublicKey { key_id, key })
    }

    pub fn load(path: &Path) -> Result<PublicKey> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("reading public key {}", path.display()))?;
        PublicKey::parse(&text).with_context(|| format!("public key {}", path.display()))
    }

    /// The public key file's text.
    pub fn to_file_text(&self) -> String {
        let mut raw = Vec::with_capacity(PUBLIC_LEN);
        raw.extend_from_slice(b"Ed");
        raw.extend_from_slice(&self.key_id);
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "{UNTRUSTED}minisign public key {}\n{}\n",
            self.key_id(),
            B64.encode(raw)
        )
    }

    /// Checks a minisign signature file's text against `message`; returns
    /// the trusted comment.
    pub fn verify(&self, message: &[u8], sig_text: &str) -> Result<String, VerifyError> {
        let mut lines = sig_text.lines();
        let mut next = || lines.next().map(str::trim_end);
        let untrusted = next().ok_or(VerifyError::Malformed("empty"))?;
        if !untrusted.starts_with(UNTRUSTED) {
            return Err(VerifyError::Malformed("no untrusted comment line"));
        }
        let sig_line = next().ok_or(VerifyError::Malformed("no signature line"))?;
        let trusted = next()
            .and_then(|l| l.strip_prefix(TRUSTED))
            .ok_or(VerifyError::Malformed("no trusted comment line"))?;
        let global_line = next().ok_or(VerifyError::Malformed("no global signature line"))?;
        let raw = B64
            .decode(sig_line)
            .map_err(|_| VerifyError::Malformed("signature is not base64"))?;
        if raw.len() != SIG_LEN {
            return Err(VerifyError::Malformed("signature has the wrong length"));
        }
        let prehashed = match &raw[..2] {
            b"ED" => true,
            b"Ed" => false,
            _ => return Err(VerifyError::Malformed("unknown signature algorithm")),
        };
        let key_id: [u8; 8] = raw[2..10]
            .try_into()
            .map_err(|_| VerifyError::Malformed("key id"))?;
        if key_id != self.key_id {
            return Err(VerifyError::OtherKey {
                found: key_id_hex(&key_id),
                expected: self.key_id(),
            });
        }
        let sig_bytes: [u8; 64] = raw[10..]
            .try_into()
            .map_err(|_| VerifyError::Malformed("signature"))?;
        let sig = Signature::from_bytes(&sig_bytes);
        let ok = if prehashed {
            self.key
                .verify_strict(&Blake2b512::digest(message), &sig)
                .is_ok()
        } else {
            self.key.verify_strict(message, &sig).is_ok()
        };
        if !ok {
            return Err(VerifyError::BadSignature);
        }
        let global: [u8; 64] = B64
            .decode(global_line.trim())
            .map_err(|_| VerifyError::Malformed("global signature is not base64"))?
            .try_into()
            .map_err(|_| VerifyError::Malformed("global signature has the wrong length"))?;
        let mut signed = sig_bytes.to_vec();
        signed.extend_from_slice(trusted.as_bytes());
        self.key
            .verify_strict(&signed, &Signature::from_bytes(&global))
            .map_err(|_| VerifyError::BadTrustedComment)?;
        Ok(trusted.to_string())
    }
}

impl SecretKey {
    /// A new key pair from the operating system's random source.
    pub fn generate() -> Result<SecretKey> {
        let mut seed = Zeroizing::new([0u8; 32]);
        let mut key_id = [0u8; 8];
        getrandom::getrandom(seed.as_mut()).context("reading random bytes")?;
        getrandom::getrandom(&mut key_id).context("reading random bytes")?;
        Ok(SecretKey {
            key_id,
            signing: SigningKey::from_bytes(&seed),
        })
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            key_id: self.key_id,
            key: self.signing.verifying_key(),
        }
    }

    fn checksum(key_id: &[u8; 8], sk: &[u8; 64]) -> [u8; 32] {
        let mut h = Blake2b::<U32>::new();
        h.update(b"Ed");
        h.update(key_id);
        h.update(sk);
        h.finalize().into()
    }

    /// The secret key file's text (unencrypted, as `minisign -G -W` writes).
    fn to_file_text(&self) -> Zeroizing<String> {
        let sk = Zeroizing::new(self.signing.to_keypair_bytes());
        let mut raw = Zeroizing::new(Vec::with_capacity(SECRET_LEN));
        raw.extend_from_slice(b"Ed");
        raw.extend_from_slice(&[0, 0]);
        raw.extend_from_slice(b"B2");
        raw.extend_from_slice(&[0u8; 32 + 8 + 8]);
        raw.extend_from_slice(&self.key_id);
        raw.extend_from_slice(sk.as_ref());
        raw.extend_from_slice(&Self::checksum(&self.key_id, &sk));
        Zeroizing::new(format!(
            "{UNTRUSTED}minisign secret key (unencrypted)\n{}\n",
            B64.encode(raw.as_slice())
        ))
    }

    /// Parses an unencrypted secret key file. Its bytes never appear in errors.
    pub fn parse(text: &str) -> Result<SecretKey> {
        let line = payload_line(text).context("no key in it")?;
        let raw = Zeroizing::new(B64.decode(line).ok().context("the key is not base64")?);
        if raw.len() != SECRET_LEN || &raw[..2] != b"Ed" || &raw[4..6] != b"B2" {
            bail!("not a minisign Ed25519 secret key");
        }
        if raw[2..4] != [0, 0] {
            bail!(
                "the secret key is password-protected; nodeimg signs unattended and needs \
                 an unencrypted key (`nodeimg keygen`, or `minisign -G -W`)"
            );
        }
        let at = 2 + 2 + 2 + 32 + 8 + 8;
        let key_id: [u8; 8] = raw[at..at + 8].try_into().context("key id")?;
        let sk: Zeroizing<[u8; 64]> =
            Zeroizing::new(raw[at + 8..at + 72].try_into().context("secret key")?);
        let chk: [u8; 32] = raw[at + 72..].try_into().context("checksum")?;
        // `minisign -G -W` leaves the checksum of an unencrypted key zero;
        // the halves' check below still catches damage then.
        if chk != [0u8; 32] && Self::checksum(&key_id, &sk) != chk {
            bail!("the secret key's checksum does not match (damaged file)");
        }
        let signing = SigningKey::from_keypair_bytes(&sk)
            .ok()
            .context("the secret key's halves do not belong together (damaged file)")?;
        Ok(SecretKey { key_id, signing })
    }

    pub fn load(path: &Path) -> Result<SecretKey> {
        let text = Zeroizing::new(
            fs::read_to_string(path)
                .with_context(|| format!("reading secret key {}", path.display()))?,
        );
        SecretKey::parse(&text).with_context(|| format!("secret key {}", path.display()))
    }

    /// A minisign signature file (prehashed, "ED") of `message`.
    /// `trusted_comment` must be one line.
    pub fn sign(&self, message: &[u8], trusted_comment: &str) -> Result<String> {
        if trusted_comment.contains(['\n', '\r']) {
            bail!("a trusted comment must be one line");
        }
        let sig = self.signing.sign(&Blake2b512::digest(message)).to_bytes();
        let mut raw = Vec::with_capacity(SIG_LEN);
        raw.extend_from_slice(b"ED");
        raw.extend_from_slice(&self.key_id);
        raw.extend_from_slice(&sig);
        let mut signed = sig.to_vec();
        signed.extend_from_slice(trusted_comment.as_bytes());
        let global = self.signing.sign(&signed).to_bytes();
        Ok(format!(
            "{UNTRUSTED}signature from nodeimg secret key {}\n{}\n{TRUSTED}{trusted_comment}\n{}\n",
            key_id_hex(&self.key_id),
            B64.encode(raw),
            B64.encode(global)
        ))
    }
}

/// `nodeimg keygen --out FILE`: writes FILE (secret, mode 0600) and FILE.pub.
/// Refuses to overwrite either. Returns the public key file's path.
/// The public key a signed build puts into the system image: `update_key`
/// when given (a key rotation: the bundle is signed with the old key, the
/// node accepts only the new one afterwards), else the signing key's own.
pub fn node_key(sign_key: Option<&Path>, update_key: Option<&Path>) -> Result<Option<PublicKey>> {
    match (sign_key, update_key) {
        (None, _) => Ok(None),
        (Some(_), Some(p)) => PublicKey::load(p).map(Some),
        (Some(k), None) => Ok(Some(SecretKey::load(k)?.public())),
    }
}

pub fn keygen(out: &Path) -> Result<PathBuf> {
    let mut pub_name = out.as_os_str().to_owned();
    pub_name.push(".pub");
    let pub_path = PathBuf::from(pub_name);
    for p in [out, pub_path.as_path()] {
        if p.symlink_metadata().is_ok() {
            bail!("{} already exists; not overwriting a key", p.display());
        }
    }
    let key = SecretKey::generate()?;
    write_new(out, key.to_file_text().as_bytes(), 0o600)?;
    write_new(&pub_path, key.public().to_file_text().as_bytes(), 0o644)?;
    Ok(pub_path)
}

/// Writes a file under a temporary name with `mode` from its creation, then
/// renames it into place.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let _ = fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_key_file_round_trips() {
        let k = SecretKey::generate().unwrap();
        let back = SecretKey::parse(&k.to_file_text()).unwrap();
        assert_eq!(back.public(), k.public());
        assert_eq!(
            PublicKey::parse(&k.public().to_file_text()).unwrap(),
            k.public()
        );
    }

    #[test]
    fn damaged_secret_key_is_refused_without_showing_it() {
        let k = SecretKey::generate().unwrap();
        let text = k.to_file_text();
        let line = payload_line(&text).unwrap();
        let mut raw = B64.decode(line).unwrap();
        raw[100] ^= 1;
        let bad = format!("{UNTRUSTED}x\n{}\n", B64.encode(&raw));
        let err = format!("{:#}", SecretKey::parse(&bad).err().unwrap());
        assert!(err.contains("checksum"), "{err}");
        assert!(!err.contains(line), "{err}");
        raw[100] ^= 1;
        raw[2] = b'S';
        raw[3] = b'c';
        let enc = format!("{UNTRUSTED}x\n{}\n", B64.encode(&raw));
        let err = format!("{:#}", SecretKey::parse(&enc).err().unwrap());
        assert!(err.contains("password"), "{err}");
        // minisign -G -W leaves the checksum zero: the halves still must match.
        raw[2] = 0;
        raw[3] = 0;
        let n = raw.len();
        raw[n - 32..].fill(0);
        let zero = format!("{UNTRUSTED}x\n{}\n", B64.encode(&raw));
        assert_eq!(SecretKey::parse(&zero).unwrap().public(), k.public());
        raw[100] ^= 1;
        let bad = format!("{UNTRUSTED}x\n{}\n", B64.encode(&raw));
        let err = format!("{:#}", SecretKey::parse(&bad).err().unwrap());
        assert!(err.contains("halves"), "{err}");
    }

    #[test]
    fn sign_and_verify() {
        let k = SecretKey::generate().unwrap();
        let sig = k.sign(b"hello", "timestamp:1\tfile:x").unwrap();
        let p = k.public();
        assert_eq!(p.verify(b"hello", &sig).unwrap(), "timestamp:1\tfile:x");
        assert_eq!(p.verify(b"hellp", &sig), Err(VerifyError::BadSignature));
        let other = SecretKey::generate().unwrap().public();
        assert!(matches!(
            other.verify(b"hello", &sig),
            Err(VerifyError::OtherKey { .. })
        ));
        let forged = sig.replace("timestamp:1", "timestamp:2");
        assert_eq!(
            p.verify(b"hello", &forged),
            Err(VerifyError::BadTrustedComment)
        );
        assert!(k.sign(b"x", "a\nb").is_err());
    }

    #[test]
    fn mutated_signatures_never_panic_and_never_pass() {
        let k = SecretKey::generate().unwrap();
        let sig = k.sign(b"payload", "c").unwrap();
        let p = k.public();
        let bytes = sig.as_bytes();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut m = bytes.to_vec();
            let at = (state as usize) % m.len();
            m[at] = (state >> 32) as u8;
            if m == bytes {
                continue;
            }
            let Ok(text) = String::from_utf8(m) else {
                continue;
            };
            if let Ok(tc) = p.verify(b"payload", &text) {
                // Only changes the parser ignores (trailing whitespace) may pass.
                assert_eq!(tc, "c", "{text}");
            }
        }
    }
}
