//! Lock files: `boards/base/<board>.lock`, TOML written by `nodeimg base lock`.
//! A lock pins the signed index the packages came from (InRelease's SHA-256
//! and `Date`, each `Packages.xz`'s path, size and SHA-256) and every package:
//! name, version, architecture, archive path, size, SHA-256. Packages are
//! sorted by name, so the same resolution always writes the same bytes.
//!
//! Fetching and building need only the lock (no signature check): the
//! SHA-256 of each `.deb` is what the signed index said when the lock was made.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::recipe::{check_package_name, is_name};
use super::version::Version;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// The board whose base this is.
    pub board: String,
    /// The recipe (`boards/base/<recipe>.toml`).
    pub recipe: String,
    pub distribution: String,
    pub suite: String,
    pub architecture: String,
    pub components: Vec<String>,
    /// The package list asked for (recipe then board), before dependencies.
    pub requested: Vec<String>,
    pub release: Release,
    #[serde(rename = "index")]
    pub indexes: Vec<IndexFile>,
    #[serde(rename = "package")]
    pub packages: Vec<LockedPackage>,
}

/// The signed index (`dists/<suite>/InRelease`) the lock was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// SHA-256 of the InRelease file as fetched (hex).
    pub inrelease_sha256: String,
    /// Its `Date:` field.
    pub date: String,
}

/// One `Packages.xz` read for the lock, as InRelease lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexFile {
    /// Path under `dists/<suite>/` ("main/binary-arm64/Packages.xz").
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    /// "arm64" or "all".
    pub architecture: String,
    /// Path under the mirror's root (`Filename:` in Packages).
    pub filename: String,
    pub size: u64,
    pub sha256: String,
}

/// A lock read from its file, with the SHA-256 of the file's bytes (what
/// `build.json` records to name the base).
#[derive(Debug, Clone)]
pub struct LoadedLock {
    pub lock: Lock,
    pub sha256: String,
    /// Where it was read from, for messages.
    pub origin: String,
}

const HEADER: &str = "# Written by `nodeimg base lock`; do not edit by hand (docs/base.md).\n";

impl Lock {
    /// Parses and validates a lock file's text.
    pub fn parse(text: &str) -> Result<Lock> {
        let lock: Lock = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim().replace('\n', " ");
            match e.span() {
                Some(span) => anyhow::anyhow!("at byte {}: {msg}", span.start),
                None => anyhow::anyhow!(msg),
            }
        })?;
        lock.validate()?;
        Ok(lock)
    }

    /// The file's text: a header comment, then TOML with packages sorted by
    /// name (sorted here, whatever order they were given in).
    pub fn to_text(&self) -> Result<String> {
        let mut sorted = self.clone();
        sorted.packages.sort_by(|a, b| a.name.cmp(&b.name));
        sorted.validate()?;
        let body = toml::to_string(&sorted).context("serialising the lock")?;
        Ok(format!("{HEADER}{body}"))
    }

    /// Checks what later code relies on: names, hex hashes, archive paths
    /// that stay under the mirror, each package once.
    pub fn validate(&self) -> Result<()> {
        if !is_name(&self.board) || !is_name(&self.recipe) {
            bail!("board and recipe must be plain names");
        }
        if !is_sha256(&self.release.inrelease_sha256) {
            bail!("release.inrelease_sha256 is not a SHA-256 (64 hex digits)");
        }
        for i in &self.indexes {
            if !is_sha256(&i.sha256) || !is_archive_path(&i.path) {
                bail!("index {:?}: bad path or sha256", i.path);
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.packages {
            let what = || format!("package {:?}", p.name);
            check_package_name(&p.name).with_context(what)?;
            Version::parse(&p.version).with_context(what)?;
            if !is_name(&p.architecture) {
                bail!("{}: bad architecture {:?}", what(), p.architecture);
            }
            if !is_archive_path(&p.filename) {
                bail!(
                    "{}: filename {:?} is not a path in the archive",
                    what(),
                    p.filename
                );
            }
            if !is_sha256(&p.sha256) {
                bail!("{}: sha256 is not 64 lower-case hex digits", what());
            }
            if !seen.insert(p.name.as_str()) {
                bail!("{}: listed twice", what());
            }
        }
        Ok(())
    }

    /// Reads and validates a lock file's bytes; `origin` names it in errors.
    pub fn load_bytes(bytes: Vec<u8>, origin: String) -> Result<LoadedLock> {
        let sha256 = sha256_hex(&bytes);
        let text = String::from_utf8(bytes).with_context(|| format!("{origin}: not UTF-8"))?;
        let lock = Lock::parse(&text).with_context(|| origin.clone())?;
        Ok(LoadedLock {
            lock,
            sha256,
            origin,
        })
    }

    /// Reads the lock file at `path`.
    pub fn load_file(path: &std::path::Path) -> Result<LoadedLock> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Lock::load_bytes(bytes, path.display().to_string())
    }

    /// The lock of a board's base from the data directories
    /// (`boards/base/<board>.lock`, a `--data-dir` one wins).
    pub fn load_for(
        data: &crate::board::DataDir,
        base: &super::recipe::BoardBase,
    ) -> Result<LoadedLock> {
        let rel = base.lock_path();
        let (origin, bytes) = data.data_file(&rel)?.with_context(|| {
            format!(
                "board {} has no lock file {rel}: run `nodeimg base lock {}`",
                base.board, base.board
            )
        })?;
        let loaded = Lock::load_bytes(bytes, origin)?;
        let l = &loaded.lock;
        let r = &base.recipe;
        if (&l.suite, &l.architecture, &l.components) != (&r.suite, &r.architecture, &r.components)
            || l.requested != base.packages()
        {
            bail!(
                "{}: made for another package list or archive than board {} and recipe {} now \
                 give: run `nodeimg base lock {}`",
                loaded.origin,
                base.board,
                r.name,
                base.board
            );
        }
        if loaded.lock.board != base.board || loaded.lock.recipe != base.recipe.name {
            bail!(
                "{}: made for board {} recipe {}, not board {} recipe {}: run `nodeimg base lock {}`",
                loaded.origin,
                loaded.lock.board,
                loaded.lock.recipe,
                base.board,
                base.recipe.name,
                base.board
            );
        }
        Ok(loaded)
    }
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A relative path of plain segments (no `..`, `.`, empty segment, leading
/// `/`, or characters a URL would need escaped).
pub fn is_archive_path(s: &str) -> bool {
    !s.is_empty()
        && s.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-+._~".contains(&b))
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Lock {
        Lock {
            board: "qemu-aarch64".into(),
            recipe: "debian-trixie".into(),
            distribution: "debian".into(),
            suite: "trixie".into(),
            architecture: "arm64".into(),
            components: vec!["main".into()],
            requested: vec!["hello".into()],
            release: Release {
                inrelease_sha256: "a".repeat(64),
                date: "Sat, 08 Nov 2025 10:00:00 UTC".into(),
            },
            indexes: vec![IndexFile {
                path: "main/binary-arm64/Packages.xz".into(),
                size: 10,
                sha256: "b".repeat(64),
            }],
            packages: vec![
                LockedPackage {
                    name: "zlib1g".into(),
                    version: "1:1.3.dfsg+really1.3.1-1+b1".into(),
                    architecture: "arm64".into(),
                    filename: "pool/main/z/zlib/zlib1g_1.3.dfsg+really1.3.1-1+b1_arm64.deb".into(),
                    size: 80000,
                    sha256: "c".repeat(64),
                },
                LockedPackage {
                    name: "hello".into(),
                    version: "2.10-3".into(),
                    architecture: "arm64".into(),
                    filename: "pool/main/h/hello/hello_2.10-3_arm64.deb".into(),
                    size: 50000,
                    sha256: "d".repeat(64),
                },
            ],
        }
    }

    #[test]
    fn round_trip_sorted_and_deterministic() {
        let lock = sample();
        let text = lock.to_text().unwrap();
        assert!(text.starts_with("# Written by"));
        assert!(text.find("name = \"hello\"").unwrap() < text.find("name = \"zlib1g\"").unwrap());
        let back = Lock::parse(&text).unwrap();
        assert_eq!(back.packages[0].name, "hello");
        assert_eq!(back.to_text().unwrap(), text);
        let mut reversed = lock.clone();
        reversed.packages.reverse();
        assert_eq!(reversed.to_text().unwrap(), text);
        let loaded = Lock::load_bytes(text.clone().into_bytes(), "t".into()).unwrap();
        assert_eq!(loaded.sha256, sha256_hex(text.as_bytes()));
    }

    #[test]
    fn rejects_unsafe_or_malformed_entries() {
        type Change = Box<dyn Fn(&mut Lock)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "not a path",
                Box::new(|l| l.packages[0].filename = "../../etc/passwd".into()),
            ),
            (
                "not a path",
                Box::new(|l| l.packages[0].filename = "/pool/x.deb".into()),
            ),
            (
                "not a path",
                Box::new(|l| l.packages[0].filename = "pool/x y.deb".into()),
            ),
            (
                "sha256",
                Box::new(|l| l.packages[1].sha256 = "D".repeat(64)),
            ),
            (
                "listed twice",
                Box::new(|l| l.packages[1].name = "zlib1g".into()),
            ),
            (
                "invalid version",
                Box::new(|l| l.packages[1].version = "x y".into()),
            ),
            (
                "inrelease_sha256",
                Box::new(|l| l.release.inrelease_sha256 = "0".into()),
            ),
        ];
        for (want, change) in cases {
            let mut l = sample();
            change(&mut l);
            let e = format!("{:#}", l.validate().unwrap_err());
            assert!(e.contains(want), "{want}: {e}");
        }
        let text = sample()
            .to_text()
            .unwrap()
            .replace("size = 50000", "size = -1");
        assert!(Lock::parse(&text).is_err());
    }

    #[test]
    fn archive_paths() {
        assert!(is_archive_path(
            "pool/main/s/systemd/systemd_257.9-1~deb13u1_arm64.deb"
        ));
        assert!(is_archive_path("main/binary-arm64/by-hash/SHA256/ab12"));
        for bad in ["", "/a", "a//b", "a/../b", "./a", "a/", "a?b", "a%20b"] {
            assert!(!is_archive_path(bad), "{bad:?}");
        }
    }
}
