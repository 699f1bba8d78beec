//! Output directories that appear only when complete.
//!
//! A build writes into `<out>/.<name>.partial/` (outputs) and uses
//! `<out>/.<name>.work/` for intermediate files. `publish` swaps the partial
//! directory in as `<out>/<name>/` (the previous one, if any, is removed only
//! after the swap). If the build fails or is dropped before `publish`, both
//! temporary directories are removed and any earlier `<out>/<name>/` is untouched.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::background::Background;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

pub struct Staging {
    final_dir: PathBuf,
    partial: PathBuf,
    work: PathBuf,
    published: bool,
}

impl Staging {
    pub fn create(out: &Path, name: &str) -> Result<Staging> {
        fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let s = Staging {
            final_dir: out.join(name),
            partial: out.join(format!(".{name}.partial")),
            work: out.join(format!(".{name}.work")),
            published: false,
        };
        for d in [&s.partial, &s.work] {
            if d.exists() {
                fs::remove_dir_all(d)
                    .with_context(|| format!("removing leftover {}", d.display()))?;
            }
            // Owner-only while being written: images may carry the join token.
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(d)
                .with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(s)
    }

    /// Where intermediate files go (removed at the end).
    pub fn work(&self, file: &str) -> PathBuf {
        self.work.join(file)
    }

    /// Where an output file is written before publishing.
    pub fn output(&self, file: &str) -> PathBuf {
        self.partial.join(file)
    }

    pub fn final_dir(&self) -> &Path {
        &self.final_dir
    }

    /// Writes `SHA256SUMS` from the given (file, hex SHA-256) pairs, hashed
    /// by the caller as it wrote them, then makes the outputs visible.
    pub fn publish(mut self, files: &[(String, String)]) -> Result<PathBuf> {
        let mut sums = String::new();
        for (f, sha) in files {
            sums.push_str(&format!("{sha}  {f}\n"));
        }
        write_synced(&self.output("SHA256SUMS"), sums.as_bytes())?;
        let _ = fs::remove_dir_all(&self.work);
        let old = self.final_dir.with_file_name(format!(
            ".{}.old",
            self.final_dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("out")
        ));
        if old.exists() {
            fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        if self.final_dir.exists() {
            fs::rename(&self.final_dir, &old)
                .with_context(|| format!("moving aside {}", self.final_dir.display()))?;
        }
        fs::set_permissions(&self.partial, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("setting the mode of {}", self.partial.display()))?;
        fs::rename(&self.partial, &self.final_dir)
            .with_context(|| format!("renaming into {}", self.final_dir.display()))?;
        self.published = true;
        if old.exists() {
            fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        Ok(self.final_dir.clone())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.work);
        if !self.published {
            let _ = fs::remove_dir_all(&self.partial);
        }
    }
}

/// Makes a file readable by its owner only (it holds a secret).
pub fn restrict(path: &Path) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to mode 0600", path.display()))
}

/// Writes a whole file and syncs it to disk.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes a file out to disk on a thread of its own while its writer goes
/// on: each [`Flusher::wake`] asks for an fsync of what is written so far
/// (wakes while one runs make one more), so the final fsync that makes the
/// file durable waits only for the last part. Without it, a large image is
/// written to the page cache during minutes of compression and then to
/// disk all at once at the end (a quarter of a second per 500 MB here).
pub struct Flusher {
    // Dropped first: the thread stops when its channel closes, and is then
    // waited for.
    wake: std::sync::mpsc::SyncSender<()>,
    thread: Background<()>,
}

impl Flusher {
    pub fn start(file: &File) -> Result<Flusher> {
        const WHAT: &str = "flushing the image to disk";
        let f = file.try_clone().context("opening the image file again")?;
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = Background::spawn("flusher", WHAT, move || {
            for () in woken {
                f.sync_data().context(WHAT)?;
            }
            Ok(())
        })?;
        Ok(Flusher { wake, thread })
    }

    /// Asks for an fsync soon; never waits.
    pub fn wake(&self) {
        let _ = self.wake.try_send(());
    }

    /// Waits for the fsync under way; its error, if it failed.
    pub fn stop(self) -> Result<()> {
        let Flusher { wake, thread } = self;
        drop(wake);
        thread.wait()
    }
}

/// Flushes a file written by other programs to disk.
pub fn sync(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", path.display()))
}

/// Hex SHA-256 of a file, streamed. The holes of a sparse file are hashed
/// as the zeros they read as, without reading them.
pub fn sha256_file(path: &Path) -> Result<String> {
    let ctx = || format!("reading {}", path.display());
    let f = File::open(path).with_context(ctx)?;
    let len = f.metadata().with_context(ctx)?.len();
    let mut h = Sha256::new();
    crate::disk::sparse::hash_range(&mut h, &f, 0, len).with_context(ctx)?;
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flushed_file_holds_what_was_written_and_stop_reports_success() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = File::create(&p).unwrap();
        let flusher = Flusher::start(&f).unwrap();
        let mut want = Vec::new();
        for i in 0..8u8 {
            let chunk = vec![i; 256 * 1024];
            f.write_all_at(&chunk, want.len() as u64).unwrap();
            want.extend_from_slice(&chunk);
            flusher.wake();
        }
        flusher.stop().unwrap();
        assert!(fs::read(&p).unwrap() == want);
        // Dropped without stop: the thread is joined, nothing hangs.
        let f2 = File::create(dir.path().join("g")).unwrap();
        Flusher::start(&f2).unwrap().wake();
    }

    #[test]
    fn sha256_of_a_sparse_file_is_that_of_its_bytes() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let f = File::create(&p).unwrap();
        f.set_len(5 << 20).unwrap();
        f.write_all_at(b"middle", 2 << 20).unwrap();
        f.write_all_at(b"end", (5 << 20) - 3).unwrap();
        drop(f);
        let want = hex::encode(Sha256::digest(fs::read(&p).unwrap()));
        assert_eq!(sha256_file(&p).unwrap(), want);
        let empty = dir.path().join("empty");
        fs::write(&empty, b"").unwrap();
        assert_eq!(
            sha256_file(&empty).unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn dropped_staging_leaves_nothing_and_keeps_old_output() {
        let out = tempfile::tempdir().unwrap();
        fs::create_dir(out.path().join("b")).unwrap();
        fs::write(out.path().join("b/old.img"), b"old").unwrap();
        {
            let s = Staging::create(out.path(), "b").unwrap();
            fs::write(s.output("b.img"), b"half").unwrap();
            fs::write(s.work("p.img"), b"tmp").unwrap();
        }
        let mut names: Vec<_> = fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["b"]);
        assert_eq!(fs::read(out.path().join("b/old.img")).unwrap(), b"old");
    }

    #[test]
    fn publish_replaces_old_output_with_sums() {
        let out = tempfile::tempdir().unwrap();
        fs::create_dir(out.path().join("b")).unwrap();
        fs::write(out.path().join("b/stale"), b"x").unwrap();
        let s = Staging::create(out.path(), "b").unwrap();
        fs::write(s.output("b.img"), b"abc").unwrap();
        let sha = sha256_file(&s.output("b.img")).unwrap();
        let dir = s.publish(&[("b.img".to_string(), sha)]).unwrap();
        assert!(!dir.join("stale").exists());
        let sums = fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
        assert_eq!(
            sums,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  b.img\n"
        );
        assert_eq!(fs::read_dir(out.path()).unwrap().count(), 1);
    }
}
