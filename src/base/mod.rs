//! The Debian base: recipes (`recipe`), lock files (`lock`), the archive's
//! signed metadata (`archive`, over the `deb822` format and Debian `version`
//! ordering), the dependency resolver (`resolve`) and fetching packages into
//! the verified cache (`fetch`); reading `.deb` files (`deb`), unpacking them
//! into one tree (`compose`) and doing declaratively what their maintainer
//! scripts would (`steps`). `nodeimg base lock` and `nodeimg base fetch` are
//! `lock_command` and `fetch_command`; `nodeimg base compose` is `compose::command`.

pub mod archive;
pub mod compose;
pub mod deb;
pub mod deb822;
pub mod fetch;
pub mod lock;
pub mod recipe;
pub mod resolve;
pub mod steps;
pub mod version;

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::board::DataDir;
use crate::cli::{BaseFetchArgs, BaseLockArgs};
use crate::progress::Progress;
use archive::Keyring;
use lock::{IndexFile, Lock, LockedPackage, Release};
use recipe::BoardBase;

/// The most an InRelease may take (Debian's is about 200 KiB).
const MAX_INRELEASE: u64 = 16 << 20;

/// Makes the lock of a board's base from `mirror`: InRelease verified with
/// the recipe's pinned keys, each component's `Packages.xz` checked against
/// it, the package list resolved.
pub fn make_lock(
    data: &DataDir,
    base: &BoardBase,
    mirror: &str,
    progress: &Progress,
) -> Result<Lock> {
    let r = &base.recipe;
    let keyring = Keyring::load(data, &r.keyring)?;
    let url = fetch::inrelease_url(mirror, &r.suite);
    progress.step(format!(
        "verifying {}",
        crate::join::hide_url_credentials(&url)
    ));
    let bytes = fetch::get(&url, MAX_INRELEASE)?;
    let release = archive::verify_inrelease(&bytes, &keyring)
        .with_context(|| crate::join::hide_url_credentials(&url))?;
    // A signed InRelease of another suite (an older release, say) must not
    // pass for this one.
    if release.codename.as_deref() != Some(&r.suite) && release.suite.as_deref() != Some(&r.suite) {
        bail!(
            "{}: signed for suite {:?} (codename {:?}), not {:?}",
            crate::join::hide_url_credentials(&url),
            release.suite.as_deref().unwrap_or(""),
            release.codename.as_deref().unwrap_or(""),
            r.suite
        );
    }
    let mut packages = Vec::new();
    let mut indexes = Vec::new();
    for c in &r.components {
        let path = format!("{c}/binary-{}/Packages.xz", r.architecture);
        progress.step(format!("reading {path}"));
        let xz = fetch::get_index(mirror, &r.suite, &release, &path)?;
        let (size, sha256) = release.file(&path)?;
        indexes.push(IndexFile {
            path: path.clone(),
            size,
            sha256: sha256.to_string(),
        });
        let text = archive::unxz(&xz).with_context(|| path.clone())?;
        packages.extend(archive::parse_packages(&text).with_context(|| path.clone())?);
    }
    progress.step("resolving dependencies");
    let wanted = base.packages();
    if wanted.is_empty() && !r.essential {
        bail!(
            "board {}: recipe {} and the board list no packages and essential is false: nothing to lock",
            base.board,
            r.name
        );
    }
    let chosen = resolve::resolve(&packages, &r.architecture, &wanted, r.essential)
        .with_context(|| format!("resolving the base of {}", base.board))?;
    Ok(Lock {
        board: base.board.clone(),
        recipe: r.name.clone(),
        distribution: r.distribution.clone(),
        suite: r.suite.clone(),
        architecture: r.architecture.clone(),
        components: r.components.clone(),
        requested: wanted,
        release: Release {
            inrelease_sha256: release.sha256.clone(),
            date: release.date.clone(),
        },
        indexes,
        packages: chosen
            .into_iter()
            .map(|p| LockedPackage {
                name: p.name.clone(),
                version: p.version.to_string(),
                architecture: p.architecture.clone(),
                filename: p.filename.clone(),
                size: p.size,
                sha256: p.sha256.clone(),
            })
            .collect(),
    })
}

/// The boards named (each must have a base), or every board that has one.
fn boards_with_base(data: &DataDir, names: &[String]) -> Result<Vec<BoardBase>> {
    let all = names.is_empty();
    let names = if all {
        data.board_names()?
    } else {
        names.to_vec()
    };
    let mut out = Vec::new();
    for n in &names {
        let (board, _) = data.load(n)?;
        match BoardBase::of(data, &board)? {
            Some(b) => out.push(b),
            None if all => {}
            None => bail!("board {n} names no base recipe (base = \"...\" in its board file)"),
        }
    }
    if out.is_empty() {
        bail!("no board names a base recipe");
    }
    Ok(out)
}

/// `nodeimg base lock`: writes `<dir>/<board>.lock` for each board.
pub fn lock_command(data: &DataDir, args: &BaseLockArgs) -> Result<()> {
    let bases = boards_with_base(data, &args.boards)?;
    let mirror = fetch::mirror(args.mirror.as_deref())?;
    let progress = Progress::new();
    let mut said = Vec::new();
    for base in &bases {
        let lock = make_lock(data, base, &mirror, &progress)?;
        let text = lock.to_text()?;
        let path = args.output_dir.join(format!("{}.lock", base.board));
        write_atomic(&path, text.as_bytes())?;
        let bytes: u64 = lock.packages.iter().map(|p| p.size).sum();
        said.push(format!(
            "{}: {} packages ({} MiB) from {} of {}, written to {}",
            base.board,
            lock.packages.len(),
            bytes / (1 << 20),
            base.recipe.suite,
            lock.release.date,
            path.display()
        ));
    }
    progress.finish();
    for s in said {
        println!("{s}");
    }
    Ok(())
}

/// `nodeimg base fetch`: fills the package cache from the boards' locks.
pub fn fetch_command(data: &DataDir, args: &BaseFetchArgs) -> Result<()> {
    let locks = match &args.lock {
        Some(p) => vec![Lock::load_file(p)?],
        None => boards_with_base(data, &args.boards)?
            .iter()
            .map(|b| Lock::load_for(data, b))
            .collect::<Result<Vec<_>>>()?,
    };
    let progress = Progress::new();
    let cache = fetch::Cache::default_location()?;
    let mut said = Vec::new();
    for l in &locks {
        let paths = fetch::fetch_all_into(&cache, &l.lock, args.mirror.as_deref(), &progress)?;
        said.push(format!(
            "{}: {} packages verified in {}",
            l.lock.board,
            paths.len(),
            cache.dir().display()
        ));
    }
    progress.finish();
    for s in said {
        println!("{s}");
    }
    Ok(())
}

/// Writes `bytes` to `path` under a temporary name in the same directory,
/// renamed into place when complete.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".lock.")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("writing {}: {}", path.display(), e.error))?;
    Ok(())
}
