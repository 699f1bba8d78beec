//! The network side of the base: which Debian mirror, downloading the
//! archive's index files, and fetching locked `.deb`s into the package cache.
//!
//! The cache is content-addressed: `$XDG_CACHE_HOME/nodeimg/debs/sha256/<hash>`
//! (else `~/.cache/...`). A file enters it only after its size and SHA-256
//! matched the lock, under a temporary name renamed into place; a cached file
//! is trusted by name and size and re-hashed when used (`fetch_all`), so a
//! damaged entry is fetched again. With every package cached no mirror is
//! needed, nor even configured.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use super::lock::{Lock, LockedPackage};
use crate::join::hide_url_credentials;
use crate::progress::Progress;

/// The environment variable naming the mirror when `--mirror` is not given.
pub const MIRROR_ENV: &str = "NODEIMG_DEBIAN_MIRROR";

/// The Debian mirror URI: `explicit` (`--mirror`), else `$NODEIMG_DEBIAN_MIRROR`,
/// else the first one this machine's apt sources name (see `mirror_from_apt`).
pub fn mirror(explicit: Option<&str>) -> Result<String> {
    if let Some(m) = explicit.filter(|m| !m.is_empty()) {
        return check_mirror(m);
    }
    if let Some(m) = std::env::var(MIRROR_ENV).ok().filter(|m| !m.is_empty()) {
        return check_mirror(&m).with_context(|| format!("${MIRROR_ENV}"));
    }
    match mirror_from_apt(Path::new("/etc/apt"))? {
        Some(m) => Ok(m),
        None => bail!(
            "no Debian mirror: give --mirror URL or set {MIRROR_ENV} \
             (none found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list)"
        ),
    }
}

fn check_mirror(m: &str) -> Result<String> {
    if !(m.starts_with("http://") || m.starts_with("https://")) {
        bail!(
            "mirror {:?} is not an http:// or https:// URL",
            hide_url_credentials(m)
        );
    }
    Ok(m.trim_end_matches('/').to_string())
}

/// The first Debian archive URI in apt's sources under `etc` (normally
/// `/etc/apt`): deb822 `sources.list.d/*.sources` files (in name order),
/// then one-line `sources.list` and `sources.list.d/*.list`. Only enabled
/// `deb` entries over http(s) count, and not the security archive (its
/// suites end in `-security`: it has no `dists/<suite>` of the main archive).
pub fn mirror_from_apt(etc: &Path) -> Result<Option<String>> {
    let d = etc.join("sources.list.d");
    let mut sources = Vec::new();
    let mut lists = vec![etc.join("sources.list")];
    if let Ok(rd) = std::fs::read_dir(&d) {
        for e in rd.flatten() {
            let p = e.path();
            match p.extension().and_then(|x| x.to_str()) {
                Some("sources") => sources.push(p),
                Some("list") => lists.push(p),
                _ => {}
            }
        }
    }
    sources.sort();
    lists[1..].sort();
    for f in &sources {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        // A malformed file is apt's problem; skip it rather than fail here.
        let Ok(paras) = super::deb822::parse(&text) else {
            continue;
        };
        for p in paras {
            let words = |f: &str| -> Vec<String> {
                p.get(f)
                    .unwrap_or("")
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            };
            let enabled = p
                .get("Enabled")
                .is_none_or(|v| !v.eq_ignore_ascii_case("no"));
            let is_deb = words("Types").iter().any(|t| t == "deb");
            let suites = words("Suites");
            let main_suite = suites.iter().any(|s| !s.ends_with("-security"));
            if !(enabled && is_deb && main_suite) {
                continue;
            }
            if let Some(uri) = words("URIs").into_iter().find(|u| is_http(u)) {
                return Ok(Some(uri.trim_end_matches('/').to_string()));
            }
        }
    }
    for f in &lists {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for line in text.lines() {
            let mut w = line.split_whitespace().peekable();
            if w.next() != Some("deb") {
                continue;
            }
            // Options: `[arch=amd64 signed-by=...]`, possibly over several words.
            if w.peek().is_some_and(|x| x.starts_with('[')) {
                for x in w.by_ref() {
                    if x.ends_with(']') {
                        break;
                    }
                }
            }
            let (Some(uri), Some(suite)) = (w.next(), w.next()) else {
                continue;
            };
            if is_http(uri) && !suite.ends_with("-security") {
                return Ok(Some(uri.trim_end_matches('/').to_string()));
            }
        }
    }
    Ok(None)
}

fn is_http(u: &str) -> bool {
    u.starts_with("http://") || u.starts_with("https://")
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// A download that failed because the mirror has no such file.
#[derive(Debug, thiserror::Error)]
#[error("{url}: not on the mirror (HTTP 404)")]
pub struct NotFound {
    pub url: String,
}

/// GETs `url` into memory, at most `limit` bytes. A 404 is a `NotFound`.
pub fn get(url: &str, limit: u64) -> Result<Vec<u8>> {
    let shown = hide_url_credentials(url);
    let resp = agent().get(url).call().map_err(|e| {
        anyhow!(
            "downloading {shown}: {}",
            hide_url_credentials(&e.to_string())
        )
    })?;
    let status = resp.status().as_u16();
    if status == 404 {
        return Err(NotFound { url: shown }.into());
    }
    if status != 200 {
        bail!("downloading {shown}: HTTP status {status}");
    }
    let mut out = Vec::new();
    resp.into_body()
        .into_reader()
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .with_context(|| format!("downloading {shown}"))?;
    if out.len() as u64 > limit {
        bail!("downloading {shown}: larger than {limit} bytes");
    }
    Ok(out)
}

/// The most an index file (`Packages.xz`) may take; Debian's largest is
/// about 10 MiB.
const MAX_INDEX_FILE: u64 = 256 << 20;

/// `<mirror>/dists/<suite>/InRelease`.
pub fn inrelease_url(mirror: &str, suite: &str) -> String {
    format!("{mirror}/dists/{suite}/InRelease")
}

/// Fetches the index file `path` (relative to `dists/<suite>/`) and checks
/// it against InRelease: by hash when the archive offers it, falling back to
/// the plain path when the by-hash file is not there.
pub fn get_index(
    mirror: &str,
    suite: &str,
    release: &super::archive::Release,
    path: &str,
) -> Result<Vec<u8>> {
    let (size, sha256) = release.file(path)?;
    if size > MAX_INDEX_FILE {
        bail!("{path}: InRelease gives it {size} bytes, more than the {MAX_INDEX_FILE} accepted");
    }
    let dir = match path.rsplit_once('/') {
        Some((d, _)) => format!("{d}/"),
        None => String::new(),
    };
    let base = format!("{mirror}/dists/{suite}");
    let plain = format!("{base}/{path}");
    let bytes = if release.by_hash {
        match get(&format!("{base}/{dir}by-hash/SHA256/{sha256}"), size) {
            Ok(b) => b,
            Err(e) if e.is::<NotFound>() => get(&plain, size)?,
            Err(e) => return Err(e),
        }
    } else {
        get(&plain, size)?
    };
    super::archive::check_index(&bytes, path, size, sha256)?;
    Ok(bytes)
}

/// Errors callers may branch on.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "{name} {version}: the mirror no longer has this locked version ({url}); \
         refresh the lock with `nodeimg base lock {board}`"
    )]
    Gone {
        name: String,
        version: String,
        url: String,
        board: String,
    },
    #[error(
        "{name} {version}: the download from {url} does not match the lock \
         (size {got_size}, sha256 {got}; the lock says size {want_size}, sha256 {want}); \
         nothing was cached"
    )]
    Mismatch {
        name: String,
        version: String,
        url: String,
        got_size: u64,
        got: String,
        want_size: u64,
        want: String,
    },
}

/// The base's cache directory: `$XDG_CACHE_HOME/nodeimg`, else
/// `$HOME/.cache/nodeimg` (packages under `debs/`, module indexes under
/// `module-indexes/`).
pub fn cache_root() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .context("neither XDG_CACHE_HOME nor HOME is set: no package cache")?,
        )
        .join(".cache"),
    };
    Ok(base.join("nodeimg"))
}

/// The package cache: `<dir>/sha256/<hash>`.
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// `$XDG_CACHE_HOME/nodeimg/debs`, else `$HOME/.cache/nodeimg/debs`.
    pub fn default_location() -> Result<Cache> {
        Ok(Cache::at(cache_root()?.join("debs")))
    }

    pub fn at(dir: PathBuf) -> Cache {
        Cache { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the package with this SHA-256 lives (whether or not it does).
    pub fn path_of(&self, sha256: &str) -> PathBuf {
        self.dir.join("sha256").join(sha256)
    }

    /// The cached file for `p` if it is there with the right size and hash.
    pub fn verified(&self, p: &LockedPackage) -> Result<Option<PathBuf>> {
        let path = self.path_of(&p.sha256);
        let Ok(md) = std::fs::metadata(&path) else {
            return Ok(None);
        };
        if !md.is_file() || md.len() != p.size {
            return Ok(None);
        }
        let got = crate::output::sha256_file(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok((got == p.sha256).then_some(path))
    }
}

/// Every package of `lock` as a verified file in the default cache, in lock
/// order, downloading what is missing from `mirror` (else the mirror
/// `mirror(None)` finds, asked only when something is missing).
pub fn fetch_all(lock: &Lock, mirror: Option<&str>, progress: &Progress) -> Result<Vec<PathBuf>> {
    fetch_all_into(&Cache::default_location()?, lock, mirror, progress)
}

/// `fetch_all` into a given cache.
pub fn fetch_all_into(
    cache: &Cache,
    lock: &Lock,
    mirror: Option<&str>,
    progress: &Progress,
) -> Result<Vec<PathBuf>> {
    let mut out = Vec::with_capacity(lock.packages.len());
    let mut missing = Vec::new();
    for (i, p) in lock.packages.iter().enumerate() {
        match cache.verified(p)? {
            Some(path) => out.push(Some(path)),
            None => {
                out.push(None);
                missing.push(i);
            }
        }
    }
    if !missing.is_empty() {
        let m = self::mirror(mirror)?;
        let agent = agent();
        let total: u64 = missing.iter().map(|&i| lock.packages[i].size).sum();
        progress.step(format!(
            "fetching {} of {} packages ({} MiB)",
            missing.len(),
            lock.packages.len(),
            total / (1 << 20)
        ));
        let bar = progress.transfer(Some(total), "downloading packages".into());
        for &i in &missing {
            let p = &lock.packages[i];
            out[i] = Some(download(&agent, cache, &m, p, &lock.board, &bar)?);
        }
        bar.finish_and_clear();
    }
    Ok(out.into_iter().flatten().collect())
}

/// Downloads one package into the cache, checked against the lock.
fn download(
    agent: &ureq::Agent,
    cache: &Cache,
    mirror: &str,
    p: &LockedPackage,
    board: &str,
    bar: &indicatif::ProgressBar,
) -> Result<PathBuf> {
    let url = format!("{mirror}/{}", p.filename);
    let shown = hide_url_credentials(&url);
    let resp = agent.get(&url).call().map_err(|e| {
        anyhow!(
            "downloading {shown}: {}",
            hide_url_credentials(&e.to_string())
        )
    })?;
    match resp.status().as_u16() {
        200 => {}
        404 | 410 => {
            return Err(FetchError::Gone {
                name: p.name.clone(),
                version: p.version.clone(),
                url: shown,
                board: board.to_string(),
            }
            .into())
        }
        s => bail!("downloading {shown}: HTTP status {s}"),
    }
    let dir = cache.path_of(&p.sha256);
    let dir = dir.parent().context("cache path has a parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".part.")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut reader = resp
        .into_body()
        .into_reader()
        .take(p.size.saturating_add(1));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got_size = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => bail!(
                "downloading {shown}: {}",
                hide_url_credentials(&e.to_string())
            ),
        };
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .with_context(|| format!("writing the download of {shown}"))?;
        got_size += n as u64;
        bar.inc(n as u64);
    }
    let got = hex::encode(hasher.finalize());
    if got_size != p.size || got != p.sha256 {
        // `tmp` is removed when dropped: nothing reaches the cache.
        return Err(FetchError::Mismatch {
            name: p.name.clone(),
            version: p.version.clone(),
            url: shown,
            got_size,
            got,
            want_size: p.size,
            want: p.sha256.clone(),
        }
        .into());
    }
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("writing the download of {shown}"))?;
    let path = cache.path_of(&p.sha256);
    tmp.persist(&path)
        .map_err(|e| anyhow!("writing {}: {}", path.display(), e.error))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_from_deb822_sources_skips_security_and_disabled() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sources.list.d")).unwrap();
        std::fs::write(
            d.path().join("sources.list.d/a.sources"),
            "Types: deb\nURIs: http://127.0.0.1:9101/debian-security\nSuites: trixie-security\n\
             Components: main\n\nTypes: deb\nURIs: http://127.0.0.1:9102/debian\nSuites: trixie\n\
             Enabled: no\n\n# comment\nTypes: deb-src deb\nURIs: http://127.0.0.1:9103/debian/\n\
             Suites: trixie trixie-updates\nComponents: main\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("sources.list"),
            "deb http://127.0.0.1:9104/debian trixie main\n",
        )
        .unwrap();
        assert_eq!(
            mirror_from_apt(d.path()).unwrap().as_deref(),
            Some("http://127.0.0.1:9103/debian")
        );
    }

    #[test]
    fn mirror_from_one_line_sources() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("sources.list"),
            "# deb http://127.0.0.1:9105/debian trixie main\n\
             deb http://127.0.0.1:9106/debian-security trixie-security main\n\
             deb [arch=arm64 signed-by=/k.gpg] http://127.0.0.1:9104/debian trixie main\n",
        )
        .unwrap();
        assert_eq!(
            mirror_from_apt(d.path()).unwrap().as_deref(),
            Some("http://127.0.0.1:9104/debian")
        );
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(mirror_from_apt(empty.path()).unwrap(), None);
    }

    #[test]
    fn explicit_mirror_must_be_http() {
        assert_eq!(
            mirror(Some("http://127.0.0.1:9107/debian/")).unwrap(),
            "http://127.0.0.1:9107/debian"
        );
        assert!(mirror(Some("ftp://127.0.0.1:9107/debian")).is_err());
    }
}
