//! The k3s binary: downloading a release (verified against its published
//! SHA-256 list, the way k3s's install.sh does), caching it, or taking a local
//! file; and the optional air-gap image tarball.
//!
//! Release layout (`url_base` defaults to [`DEFAULT_URL_BASE`]):
//! `<url_base>/<version with "+" as "%2B">/<asset>` and
//! `<url_base>/<version>/sha256sum-<arch>.txt`, where the asset is `k3s`
//! (amd64), `k3s-arm64` or `k3s-armhf`.
//!
//! Cache: `<cache>/k3s/<version>/<asset>` beside `sha256sum-<arch>.txt`.
//! A download goes to a temporary name in that directory and is renamed only
//! after its hash matched, so the cache never holds an unverified binary. A
//! cached binary is used only while its hash still matches the cached list.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::join::hide_url_credentials;
use crate::manifest::K3sInfo;
use crate::progress::Progress;
use crate::service;
use crate::tree::Tree;

/// Where k3s publishes its release assets.
pub const DEFAULT_URL_BASE: &str = "https://github.com/k3s-io/k3s/releases/download";

/// The `k3s:` section of cluster.yaml, resolved (paths are absolute or
/// relative to the current directory, not to cluster.yaml).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct K3sSpec {
    /// e.g. `v1.31.4+k3s1`; required for [`K3sSource::Release`].
    pub version: Option<String>,
    pub source: K3sSource,
    /// A local air-gap images tarball (`k3s-airgap-images-<arch>.tar[.zst|.gz]`).
    pub airgap_images: Option<PathBuf>,
}

/// Debug output shows `url_base` without its user information, as the
/// errors do (a cluster config's Debug form reaches logs and test output).
#[derive(Clone, PartialEq, Eq)]
pub enum K3sSource {
    /// Download from `url_base` (no trailing slash needed).
    Release { url_base: String },
    /// Use this local binary as is.
    File { path: PathBuf },
}

impl std::fmt::Debug for K3sSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            K3sSource::Release { url_base } => f
                .debug_struct("Release")
                .field("url_base", &hide_url_credentials(url_base))
                .finish(),
            K3sSource::File { path } => f.debug_struct("File").field("path", path).finish(),
        }
    }
}

/// k3s's name for an architecture (`arm64`, `amd64`, `arm`), from either its
/// own or the kernel's spelling.
pub fn k3s_arch(arch: &str) -> Result<&'static str> {
    Ok(match arch {
        "arm64" | "aarch64" => "arm64",
        "amd64" | "x86_64" => "amd64",
        "arm" | "armhf" | "armv7" | "armv7l" => "arm",
        other => {
            bail!("k3s has no release for architecture \"{other}\" (known: arm64, amd64, arm)")
        }
    })
}

/// The release asset holding the k3s binary for an architecture.
pub fn asset_name(arch: &str) -> Result<&'static str> {
    Ok(match k3s_arch(arch)? {
        "amd64" => "k3s",
        "arm64" => "k3s-arm64",
        _ => "k3s-armhf",
    })
}

/// True for k3s release versions like `v1.31.4+k3s1` or `v1.32.0-rc1+k3s1`.
/// (Also keeps the version safe to use as a directory name.)
pub fn is_valid_version(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let Some((upstream, k3s)) = rest.split_once("+k3s") else {
        return false;
    };
    if k3s.is_empty() || !k3s.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let (numbers, pre) = match upstream.split_once('-') {
        Some((n, p)) => (n, Some(p)),
        None => (upstream, None),
    };
    let parts: Vec<&str> = numbers.split('.').collect();
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if parts.len() != 3 || !parts.iter().all(|p| numeric(p)) {
        return false;
    }
    match pre {
        None => true,
        Some(p) => !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'),
    }
}

/// `$XDG_CACHE_HOME/nodeimg`, else `~/.cache/nodeimg`, else `.cache/nodeimg`
/// in the current directory.
pub fn default_cache_dir() -> PathBuf {
    cache_dir_from(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
}

/// [`default_cache_dir`] given the two variables (a relative XDG_CACHE_HOME
/// is ignored, as the XDG spec asks).
fn cache_dir_from(xdg: Option<std::ffi::OsString>, home: Option<std::ffi::OsString>) -> PathBuf {
    if let Some(x) = xdg.filter(|x| !x.is_empty()) {
        let x = PathBuf::from(x);
        if x.is_absolute() {
            return x.join("nodeimg");
        }
    }
    match home.filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache").join("nodeimg"),
        None => PathBuf::from(".cache").join("nodeimg"),
    }
}

/// Returns the path of a verified k3s binary for `arch`, downloading it into
/// `cache_dir` when the cache does not already hold it. The download's bar
/// joins `progress`'s display.
pub fn fetch(spec: &K3sSpec, arch: &str, cache_dir: &Path, progress: &Progress) -> Result<PathBuf> {
    match &spec.source {
        K3sSource::File { path } => {
            check_local_binary(path, arch)?;
            Ok(path.clone())
        }
        K3sSource::Release { url_base } => {
            let version = spec
                .version
                .as_deref()
                .ok_or_else(|| anyhow!("k3s: a release download needs a version"))?;
            fetch_release(url_base, version, arch, cache_dir, progress)
        }
    }
}

/// Checks the air-gap images path, if any, and returns it.
pub fn airgap_images(spec: &K3sSpec) -> Result<Option<PathBuf>> {
    let Some(p) = &spec.airgap_images else {
        return Ok(None);
    };
    let meta = fs::metadata(p).with_context(|| format!("k3s airgap_images {}", p.display()))?;
    if !meta.is_file() {
        bail!("k3s airgap_images {}: not a regular file", p.display());
    }
    if meta.len() == 0 {
        bail!("k3s airgap_images {}: file is empty", p.display());
    }
    Ok(Some(p.clone()))
}

/// A local k3s: an ELF for the right machine, or a `#!` script (a stand-in
/// used by tests and experiments).
fn check_local_binary(path: &Path, arch: &str) -> Result<()> {
    let what = || format!("k3s binary {}", path.display());
    let meta = fs::metadata(path).with_context(what)?;
    if !meta.is_file() {
        bail!("{}: not a regular file", what());
    }
    if meta.len() == 0 {
        bail!("{}: file is empty", what());
    }
    let mut head = [0u8; 20];
    let mut f = fs::File::open(path).with_context(what)?;
    let n = crate::io::read_full(&mut f, &mut head).with_context(what)?;
    let head = &head[..n];
    if head.starts_with(b"#!") {
        return Ok(());
    }
    if !head.starts_with(b"\x7fELF") || head.len() < 20 {
        bail!("{}: not an ELF executable", what());
    }
    let machine = match head[5] {
        1 => u16::from_le_bytes([head[18], head[19]]),
        2 => u16::from_be_bytes([head[18], head[19]]),
        _ => bail!("{}: ELF header has an unknown byte order", what()),
    };
    let (want, name) = match k3s_arch(arch)? {
        "arm64" => (183u16, "aarch64"),
        "amd64" => (62, "x86-64"),
        _ => (40, "arm"),
    };
    if machine != want {
        bail!(
            "{}: ELF machine {machine} is not {name} ({want}) as needed for {arch}",
            what()
        );
    }
    Ok(())
}

/// The hash listed for `asset` in a `sha256sum` style list (`<hex>  <name>`,
/// name optionally prefixed with `*`).
pub fn expected_hash(sums: &str, asset: &str) -> Option<String> {
    sums.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        let hash = it.next()?;
        let name = it.next()?;
        let name = name.strip_prefix('*').unwrap_or(name);
        (name == asset && hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| hash.to_ascii_lowercase())
    })
}

fn fetch_release(
    url_base: &str,
    version: &str,
    arch: &str,
    cache_dir: &Path,
    progress: &Progress,
) -> Result<PathBuf> {
    if !is_valid_version(version) {
        bail!("k3s version \"{version}\" is not like v1.31.4+k3s1");
    }
    let k3s_arch = k3s_arch(arch)?;
    let asset = asset_name(arch)?;
    let dir = cache_dir.join("k3s").join(version);
    let bin = dir.join(asset);
    let sums_name = format!("sha256sum-{k3s_arch}.txt");
    let sums_path = dir.join(&sums_name);

    if cache_hit(&bin, &sums_path, asset) {
        return Ok(bin);
    }

    let base = url_base.trim_end_matches('/');
    let release = format!("{base}/{}", version.replace('+', "%2B"));
    let sums_url = format!("{release}/{sums_name}");
    let bin_url = format!("{release}/{asset}");
    // What messages show: `url_base` may carry `user:password@`.
    let (sums_shown, bin_shown) = (
        hide_url_credentials(&sums_url),
        hide_url_credentials(&bin_url),
    );

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .build()
        .into();

    let sums = download_small(&agent, &sums_url)?;
    let sums_text = String::from_utf8(sums.clone())
        .map_err(|_| anyhow!("downloading {sums_shown}: not a text file"))?;
    let expected = expected_hash(&sums_text, asset)
        .ok_or_else(|| anyhow!("{sums_shown} lists no sha256 for {asset}"))?;

    fs::create_dir_all(&dir).with_context(|| format!("creating cache {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{asset}."))
        .tempfile_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let actual = download_to(&agent, &bin_url, tmp.as_file_mut(), progress)?;
    if actual != expected {
        // `tmp` is deleted when dropped: nothing reaches the cache.
        bail!(
            "checksum mismatch for {bin_shown}: {sums_name} says sha256 {expected}, \
             the download has {actual}; nothing was cached"
        );
    }
    set_executable(tmp.as_file())?;

    let mut sums_tmp = tempfile::Builder::new()
        .prefix(&format!(".{sums_name}."))
        .tempfile_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    sums_tmp
        .write_all(&sums)
        .and_then(|_| sums_tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", sums_path.display()))?;
    sums_tmp
        .persist(&sums_path)
        .map_err(|e| anyhow!("writing {}: {}", sums_path.display(), e.error))?;
    tmp.persist(&bin)
        .map_err(|e| anyhow!("writing {}: {}", bin.display(), e.error))?;
    Ok(bin)
}

/// True if the cached binary exists and matches the cached hash list.
fn cache_hit(bin: &Path, sums_path: &Path, asset: &str) -> bool {
    let Ok(sums) = fs::read_to_string(sums_path) else {
        return false;
    };
    let Some(expected) = expected_hash(&sums, asset) else {
        return false;
    };
    bin.is_file()
        && crate::output::sha256_file(bin)
            .map(|h| h == expected)
            .unwrap_or(false)
}

#[cfg(unix)]
fn set_executable(f: &fs::File) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(fs::Permissions::from_mode(0o755))
        .context("making the k3s download executable")
}

#[cfg(not(unix))]
fn set_executable(_: &fs::File) -> Result<()> {
    Ok(())
}

/// The error for a failed request; `url` is shown without its user
/// information (`user:password@`), as everywhere a URL is shown.
pub(crate) fn http_error(url: &str, e: ureq::Error) -> anyhow::Error {
    let url = hide_url_credentials(url);
    match e {
        ureq::Error::StatusCode(code) => anyhow!("downloading {url}: HTTP status {code}"),
        // Some ureq errors quote the URL themselves.
        other => anyhow!(
            "downloading {url}: {}",
            hide_url_credentials(&other.to_string())
        ),
    }
}

/// A small file (the hash list), at most 1 MiB.
fn download_small(agent: &ureq::Agent, url: &str) -> Result<Vec<u8>> {
    let resp = agent.get(url).call().map_err(|e| http_error(url, e))?;
    let mut out = Vec::new();
    resp.into_body()
        .into_reader()
        .take(1 << 20)
        .read_to_end(&mut out)
        .with_context(|| format!("downloading {}", hide_url_credentials(url)))?;
    Ok(out)
}

/// Streams `url` into `out`, returning the sha256 (hex) of what was written.
fn download_to(
    agent: &ureq::Agent,
    url: &str,
    out: &mut fs::File,
    progress: &Progress,
) -> Result<String> {
    let resp = agent.get(url).call().map_err(|e| http_error(url, e))?;
    let url = hide_url_credentials(url);
    let body = resp.into_body();
    let bar = progress.transfer(body.content_length(), format!("downloading {url}"));
    let mut reader = body.into_reader();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let e = hide_url_credentials(&e.to_string());
                return Err(anyhow!("downloading {url}: {e}"));
            }
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .with_context(|| format!("writing the download of {url}"))?;
        bar.inc(n as u64);
    }
    out.sync_all()
        .with_context(|| format!("writing the download of {url}"))?;
    bar.finish_and_clear();
    Ok(hex::encode(hasher.finalize()))
}

/// The k3s air-gap images archive, for the data partition.
pub struct AirgapImages {
    pub name: String,
    pub data: crate::tree::Data,
}

/// The air-gap images of `spec`, if it names any.
pub fn airgap(spec: &K3sSpec) -> Result<Option<AirgapImages>> {
    let Some(p) = airgap_images(spec)? else {
        return Ok(None);
    };
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "airgap-images.tar".to_string());
    let len = std::fs::metadata(&p)
        .with_context(|| format!("reading {}", p.display()))?
        .len();
    let data = std::sync::Arc::new(crate::tree::Content::from_path(&p, len));
    Ok(Some(AirgapImages { name, data }))
}

/// Installs k3s into the rootfs: the binary (from cluster.yaml's `k3s:`
/// section `spec`, else the rootfs's own) and the service that starts it.
/// Returns what to record in the manifest and the air-gap images, if any.
pub fn install(
    spec: Option<&K3sSpec>,
    arch: &str,
    rootfs: &mut Tree,
    epoch: u64,
    progress: &Progress,
) -> Result<(K3sInfo, Option<AirgapImages>)> {
    let mut info = K3sInfo {
        source: "rootfs".to_string(),
        version: None,
        sha256: None,
        init_system: String::new(),
        airgap_images: None,
    };
    let mut images = None;
    if let Some(spec) = spec {
        let path =
            fetch(spec, arch, &default_cache_dir(), progress).context("getting the k3s binary")?;
        info.sha256 = Some(crate::output::sha256_file(&path)?);
        let len = std::fs::metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        info.version = spec.version.clone();
        info.source = match &spec.source {
            K3sSource::Release { .. } => "release".to_string(),
            K3sSource::File { path } => format!(
                "file {}",
                path.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            ),
        };
        let binary = std::sync::Arc::new(crate::tree::Content::from_path(&path, len));
        service::install_k3s_binary(rootfs, binary, epoch)?;
        if let Some(a) = airgap(spec)? {
            info.airgap_images = Some(a.name.clone());
            images = Some(a);
        }
    } else if !service::has_k3s(rootfs) {
        bail!(
            "no k3s binary: the rootfs has no /usr/bin/k3s or /usr/local/bin/k3s and the cluster config has no `k3s:` section"
        );
    }
    info.init_system = service::install_k3s(rootfs, epoch)?.name().to_string();
    Ok((info, images))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread;

    /// A tiny HTTP/1.1 server on 127.0.0.1 serving fixed files; counts and
    /// records requests. Stops when dropped.
    struct Server {
        base: String,
        hits: Arc<AtomicUsize>,
        paths: Arc<Mutex<Vec<String>>>,
        stop: Arc<std::sync::atomic::AtomicBool>,
        addr: std::net::SocketAddr,
        handle: Option<thread::JoinHandle<()>>,
    }

    impl Server {
        fn start(files: HashMap<String, Vec<u8>>) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let hits = Arc::new(AtomicUsize::new(0));
            let paths = Arc::new(Mutex::new(Vec::new()));
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (h, p, s) = (hits.clone(), paths.clone(), stop.clone());
            let handle = thread::spawn(move || {
                for conn in listener.incoming() {
                    if s.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut conn) = conn else { continue };
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).is_err() {
                        continue;
                    }
                    loop {
                        let mut l = String::new();
                        if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                            break;
                        }
                    }
                    let path = request_line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("")
                        .to_string();
                    h.fetch_add(1, Ordering::SeqCst);
                    p.lock().unwrap().push(path.clone());
                    let resp = match files.get(&path) {
                        Some(body) => {
                            let mut r = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            )
                            .into_bytes();
                            r.extend_from_slice(body);
                            r
                        }
                        None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec(),
                    };
                    let _ = conn.write_all(&resp);
                }
            });
            Server {
                base: format!("http://{addr}/releases"),
                hits,
                paths,
                stop,
                addr,
                handle: Some(handle),
            }
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            // Wake the accept loop so it sees the flag.
            let _ = std::net::TcpStream::connect(self.addr);
            if let Some(h) = self.handle.take() {
                let _ = h.join();
            }
        }
    }

    const VERSION: &str = "v1.31.4+k3s1";
    /// A stand-in for the k3s binary: clearly not the real thing.
    const FAKE_K3S: &[u8] = b"\x7fELF fake k3s stand-in for nodeimg tests\n";

    fn sha(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    fn release_files(binary: &[u8], listed_hash: &str) -> HashMap<String, Vec<u8>> {
        let dir = "/releases/v1.31.4%2Bk3s1";
        let sums = format!(
            "{}  k3s\n{listed_hash}  k3s-arm64\n{}  k3s-airgap-images-arm64.tar.zst\n",
            sha(b"amd64"),
            sha(b"images")
        );
        HashMap::from([
            (format!("{dir}/k3s-arm64"), binary.to_vec()),
            (format!("{dir}/sha256sum-arm64.txt"), sums.into_bytes()),
        ])
    }

    fn release_spec(server: &Server) -> K3sSpec {
        K3sSpec {
            version: Some(VERSION.into()),
            source: K3sSource::Release {
                url_base: server.base.clone(),
            },
            airgap_images: None,
        }
    }

    /// The error of a fetch that must fail, with its causes, as printed.
    fn fetch_err(spec: &K3sSpec, cache: &Path) -> String {
        let err = fetch(spec, "arm64", cache, &Progress::hidden()).unwrap_err();
        format!("{err:#}")
    }

    /// Names in the version's cache directory, temporary files included.
    fn cache_listing(cache: &Path) -> Vec<String> {
        let dir = cache.join("k3s").join(VERSION);
        let mut v: Vec<String> = match fs::read_dir(&dir) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        v.sort();
        v
    }

    #[test]
    fn download_verifies_and_caches_then_hits_cache_without_network() {
        let cache = tempfile::tempdir().unwrap();
        let server = Server::start(release_files(FAKE_K3S, &sha(FAKE_K3S)));
        let spec = release_spec(&server);
        let path = fetch(&spec, "arm64", cache.path(), &Progress::hidden()).unwrap();
        assert_eq!(
            path,
            cache.path().join("k3s").join(VERSION).join("k3s-arm64")
        );
        assert_eq!(fs::read(&path).unwrap(), FAKE_K3S);
        assert_eq!(
            *server.paths.lock().unwrap(),
            vec![
                "/releases/v1.31.4%2Bk3s1/sha256sum-arm64.txt".to_string(),
                "/releases/v1.31.4%2Bk3s1/k3s-arm64".to_string()
            ]
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o755
            );
        }
        assert_eq!(
            cache_listing(cache.path()),
            vec!["k3s-arm64".to_string(), "sha256sum-arm64.txt".to_string()]
        );

        // Stop the server: a second fetch must be served from the cache alone.
        let hits = server.hits();
        drop(server);
        assert_eq!(hits, 2);
        let again = fetch(&spec, "aarch64", cache.path(), &Progress::hidden()).unwrap();
        assert_eq!(again, path);
    }

    #[test]
    fn cache_hit_makes_no_request() {
        let cache = tempfile::tempdir().unwrap();
        let dir = cache.path().join("k3s").join(VERSION);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("k3s-arm64"), FAKE_K3S).unwrap();
        fs::write(
            dir.join("sha256sum-arm64.txt"),
            format!("{}  k3s-arm64\n", sha(FAKE_K3S)),
        )
        .unwrap();
        let server = Server::start(HashMap::new());
        let spec = release_spec(&server);
        let path = fetch(&spec, "arm64", cache.path(), &Progress::hidden()).unwrap();
        assert_eq!(path, dir.join("k3s-arm64"));
        assert_eq!(server.hits(), 0);
    }

    #[test]
    fn corrupted_cache_is_downloaded_again() {
        let cache = tempfile::tempdir().unwrap();
        let dir = cache.path().join("k3s").join(VERSION);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("k3s-arm64"), b"truncated").unwrap();
        fs::write(
            dir.join("sha256sum-arm64.txt"),
            format!("{}  k3s-arm64\n", sha(FAKE_K3S)),
        )
        .unwrap();
        let server = Server::start(release_files(FAKE_K3S, &sha(FAKE_K3S)));
        let path = fetch(
            &release_spec(&server),
            "arm64",
            cache.path(),
            &Progress::hidden(),
        )
        .unwrap();
        assert_eq!(fs::read(path).unwrap(), FAKE_K3S);
        assert_eq!(server.hits(), 2);
    }

    #[test]
    fn checksum_mismatch_is_an_error_and_caches_nothing() {
        let cache = tempfile::tempdir().unwrap();
        let listed = sha(b"the real k3s");
        let server = Server::start(release_files(FAKE_K3S, &listed));
        let err = fetch_err(&release_spec(&server), cache.path());
        assert_eq!(
            err,
            format!(
                "checksum mismatch for {}/v1.31.4%2Bk3s1/k3s-arm64: sha256sum-arm64.txt says sha256 {listed}, \
                 the download has {}; nothing was cached",
                server.base,
                sha(FAKE_K3S)
            )
        );
        assert_eq!(cache_listing(cache.path()), Vec::<String>::new());
    }

    #[test]
    fn missing_release_names_the_url() {
        let cache = tempfile::tempdir().unwrap();
        let server = Server::start(HashMap::new());
        let err = fetch_err(&release_spec(&server), cache.path());
        assert_eq!(
            err,
            format!(
                "downloading {}/v1.31.4%2Bk3s1/sha256sum-arm64.txt: HTTP status 404",
                server.base
            )
        );
        assert!(!cache
            .path()
            .join("k3s")
            .join(VERSION)
            .join("k3s-arm64")
            .exists());
    }

    /// A `url_base` with `user:password@`: the errors name the URL without them.
    #[test]
    fn errors_never_show_url_base_credentials() {
        let cache = tempfile::tempdir().unwrap();
        let secret = "pw-s3cret-123";
        let with_credentials = |server: &Server| K3sSpec {
            source: K3sSource::Release {
                url_base: server
                    .base
                    .replace("http://", &format!("http://k3s:{secret}@")),
            },
            ..release_spec(server)
        };
        let redacted = |server: &Server| server.base.replace("http://", "http://<redacted>@");

        // The hash list is missing: the HTTP error names its URL.
        let server = Server::start(HashMap::new());
        let msg = fetch_err(&with_credentials(&server), cache.path());
        assert!(!msg.contains(secret), "{msg}");
        assert_eq!(
            msg,
            format!(
                "downloading {}/v1.31.4%2Bk3s1/sha256sum-arm64.txt: HTTP status 404",
                redacted(&server)
            )
        );
        assert_eq!(server.hits(), 1, "the request was made");
        drop(server);

        // Both downloaded, the hash differs: the mismatch names the binary's URL.
        let server = Server::start(release_files(FAKE_K3S, &sha(b"the real k3s")));
        let msg = fetch_err(&with_credentials(&server), cache.path());
        assert!(!msg.contains(secret), "{msg}");
        assert!(
            msg.starts_with(&format!(
                "checksum mismatch for {}/v1.31.4%2Bk3s1/k3s-arm64:",
                redacted(&server)
            )),
            "{msg}"
        );
        drop(server);

        // Nothing listens: the connection error names the URL too.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let spec = K3sSpec {
            version: Some(VERSION.into()),
            source: K3sSource::Release {
                url_base: format!("http://k3s:{secret}@{addr}/releases"),
            },
            airgap_images: None,
        };
        let msg = fetch_err(&spec, cache.path());
        assert!(!msg.contains(secret), "{msg}");
        assert!(
            msg.starts_with(&format!("downloading http://<redacted>@{addr}/releases/")),
            "{msg}"
        );
    }

    #[test]
    fn debug_output_hides_url_base_credentials() {
        let spec = K3sSpec {
            version: Some(VERSION.into()),
            source: K3sSource::Release {
                url_base: "https://k3s:pw-s3cret-123@mirror.lan/k3s".into(),
            },
            airgap_images: None,
        };
        for text in [format!("{spec:?}"), format!("{spec:#?}")] {
            assert!(!text.contains("pw-s3cret-123"), "{text}");
            assert!(text.contains("https://<redacted>@mirror.lan/k3s"), "{text}");
        }
    }

    #[test]
    fn binary_404_after_checksums_names_the_binary_url() {
        let cache = tempfile::tempdir().unwrap();
        let mut files = release_files(FAKE_K3S, &sha(FAKE_K3S));
        files.remove("/releases/v1.31.4%2Bk3s1/k3s-arm64");
        let server = Server::start(files);
        let err = fetch_err(&release_spec(&server), cache.path());
        assert_eq!(
            err,
            format!(
                "downloading {}/v1.31.4%2Bk3s1/k3s-arm64: HTTP status 404",
                server.base
            )
        );
        assert_eq!(cache_listing(cache.path()), Vec::<String>::new());
    }

    #[test]
    fn asset_missing_from_checksum_list() {
        let cache = tempfile::tempdir().unwrap();
        let mut files = release_files(FAKE_K3S, &sha(FAKE_K3S));
        files.insert(
            "/releases/v1.31.4%2Bk3s1/sha256sum-arm64.txt".into(),
            format!("{}  k3s\n", sha(b"x")).into_bytes(),
        );
        let server = Server::start(files);
        let err = fetch_err(&release_spec(&server), cache.path());
        assert_eq!(
            err,
            format!(
                "{}/v1.31.4%2Bk3s1/sha256sum-arm64.txt lists no sha256 for k3s-arm64",
                server.base
            )
        );
    }

    fn elf_header(machine: u16) -> Vec<u8> {
        let mut h = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
        h.resize(18, 0);
        h.extend_from_slice(&machine.to_le_bytes());
        h.extend_from_slice(b"rest of a stand-in binary");
        h
    }

    #[test]
    fn local_file_source() {
        let dir = tempfile::tempdir().unwrap();
        let spec = |p: &Path| K3sSpec {
            version: None,
            source: K3sSource::File {
                path: p.to_path_buf(),
            },
            airgap_images: None,
        };
        let cache = dir.path().join("cache");

        let arm = dir.path().join("k3s-arm64");
        fs::write(&arm, elf_header(183)).unwrap();
        assert_eq!(
            fetch(&spec(&arm), "arm64", &cache, &Progress::hidden()).unwrap(),
            arm
        );
        assert!(!cache.exists(), "local files are not copied into the cache");

        let x86 = dir.path().join("k3s-amd64");
        fs::write(&x86, elf_header(62)).unwrap();
        assert_eq!(
            format!(
                "{:#}",
                fetch(&spec(&x86), "arm64", &cache, &Progress::hidden()).unwrap_err()
            ),
            format!(
                "k3s binary {}: ELF machine 62 is not aarch64 (183) as needed for arm64",
                x86.display()
            )
        );
        assert_eq!(
            fetch(&spec(&x86), "amd64", &cache, &Progress::hidden()).unwrap(),
            x86
        );

        let script = dir.path().join("k3s-standin");
        fs::write(&script, "#!/bin/sh\necho stand-in k3s\n").unwrap();
        assert_eq!(
            fetch(&spec(&script), "arm64", &cache, &Progress::hidden()).unwrap(),
            script
        );

        let empty = dir.path().join("empty");
        fs::write(&empty, "").unwrap();
        assert_eq!(
            format!(
                "{:#}",
                fetch(&spec(&empty), "arm64", &cache, &Progress::hidden()).unwrap_err()
            ),
            format!("k3s binary {}: file is empty", empty.display())
        );

        let text = dir.path().join("notes.txt");
        fs::write(&text, "hello").unwrap();
        assert_eq!(
            fetch_err(&spec(&text), &cache),
            format!("k3s binary {}: not an ELF executable", text.display())
        );

        let missing = dir.path().join("nope");
        let msg = fetch_err(&spec(&missing), &cache);
        assert!(
            msg.starts_with(&format!("k3s binary {}: ", missing.display())),
            "{msg}"
        );
    }

    #[test]
    fn airgap_images_path_checked() {
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("k3s-airgap-images-arm64.tar.zst");
        fs::write(&tar, b"not really zstd").unwrap();
        let mut spec = K3sSpec {
            version: Some(VERSION.into()),
            source: K3sSource::Release {
                url_base: DEFAULT_URL_BASE.into(),
            },
            airgap_images: Some(tar.clone()),
        };
        assert_eq!(airgap_images(&spec).unwrap(), Some(tar));
        spec.airgap_images = Some(dir.path().join("missing.tar"));
        assert!(airgap_images(&spec).is_err());
        spec.airgap_images = None;
        assert_eq!(airgap_images(&spec).unwrap(), None);
    }

    #[test]
    fn versions_and_assets() {
        assert!(is_valid_version("v1.31.4+k3s1"));
        assert!(is_valid_version("v1.32.0-rc1+k3s2"));
        for bad in [
            "1.31.4+k3s1",
            "v1.31+k3s1",
            "v1.31.4",
            "v1.31.4+k3s",
            "v1.31.4+k3s1/../x",
            "v../+k3s1",
        ] {
            assert!(!is_valid_version(bad), "{bad}");
        }
        assert_eq!(asset_name("amd64").unwrap(), "k3s");
        assert_eq!(asset_name("aarch64").unwrap(), "k3s-arm64");
        assert_eq!(asset_name("armhf").unwrap(), "k3s-armhf");
        assert!(asset_name("riscv64").is_err());
        let sums = format!("{}  k3s\n{} *k3s-arm64\n", "a".repeat(64), "B".repeat(64));
        assert_eq!(expected_hash(&sums, "k3s-arm64"), Some("b".repeat(64)));
        assert_eq!(expected_hash(&sums, "k3s-armhf"), None);
    }

    #[test]
    fn cache_dir_follows_xdg() {
        let os = |s: &str| Some(std::ffi::OsString::from(s));
        assert_eq!(
            cache_dir_from(os("/xdg"), os("/home/u")),
            PathBuf::from("/xdg/nodeimg")
        );
        assert_eq!(
            cache_dir_from(None, os("/home/u")),
            PathBuf::from("/home/u/.cache/nodeimg")
        );
        assert_eq!(
            cache_dir_from(os("relative"), os("/home/u")),
            PathBuf::from("/home/u/.cache/nodeimg")
        );
        assert_eq!(
            cache_dir_from(os(""), None),
            PathBuf::from(".cache/nodeimg")
        );
    }
}
