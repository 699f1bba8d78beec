//! Work on a thread of its own beside the build's main line (the initramfs's
//! gzip, the squashfs written into a single node's disk image, the copy of a
//! cached squashfs into a disk image, a node's data partition, the image's
//! flushes, the file-digest memo's reading): started with a name and what it
//! does, waited for by its owner.
//! A panic on the thread becomes an error that says what was being done;
//! dropping the handle waits too, so no such thread outlives the files it
//! works on (the work directory is removed after an error).

use anyhow::{anyhow, Context, Result};

/// Work running on a thread of its own; [`Background::wait`] for its result.
pub struct Background<T> {
    /// What the thread does ("writing the initramfs"), for a panic's error.
    what: &'static str,
    thread: Option<std::thread::JoinHandle<Result<T>>>,
}

impl<T: Send + 'static> Background<T> {
    /// Starts `work` on a thread named `name` (shown by debuggers and `top`).
    pub fn spawn(
        name: &str,
        what: &'static str,
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<Background<T>> {
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(work)
            .with_context(|| format!("starting a thread for {what}"))?;
        Ok(Background {
            what,
            thread: Some(thread),
        })
    }
}

impl<T> Background<T> {
    /// The work's result, once it is done.
    pub fn wait(mut self) -> Result<T> {
        self.join()
    }

    fn join(&mut self) -> Result<T> {
        let thread = self
            .thread
            .take()
            .ok_or_else(|| anyhow!("internal: {} waited for twice", self.what))?;
        thread
            .join()
            .map_err(|_| anyhow!("the thread {} panicked", self.what))?
    }
}

impl<T> Drop for Background<T> {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn wait_gives_the_result_or_the_error() {
        let ok = Background::spawn("t", "adding", || Ok(40 + 2)).unwrap();
        assert_eq!(ok.wait().unwrap(), 42);
        let bad = Background::<()>::spawn("t", "failing", || Err(anyhow!("disk full"))).unwrap();
        assert_eq!(format!("{:#}", bad.wait().unwrap_err()), "disk full");
    }

    #[test]
    fn a_panic_is_an_error_that_says_what_was_being_done() {
        let b = Background::<()>::spawn("t", "writing the initramfs", || panic!("boom")).unwrap();
        let err = format!("{:#}", b.wait().unwrap_err());
        assert_eq!(err, "the thread writing the initramfs panicked");
    }

    #[test]
    fn dropping_waits_for_the_work() {
        let done = Arc::new(AtomicBool::new(false));
        let seen = done.clone();
        let b = Background::spawn("t", "sleeping", move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            seen.store(true, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        drop(b);
        assert!(done.load(Ordering::SeqCst));
    }
}
