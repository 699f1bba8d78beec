//! Progress for long steps: on a terminal, one display (an indicatif
//! `MultiProgress`) holding a spinner with the current step and, below it,
//! any transfer bar (the k3s download), so the two never draw over each other;
//! nothing at all when stderr is not a terminal (CI logs, pipes).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    shown: Option<Shown>,
}

struct Shown {
    multi: MultiProgress,
    spinner: ProgressBar,
}

impl Progress {
    /// A spinner on stderr if it is a terminal, otherwise a silent no-op.
    pub fn new() -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress::hidden();
        }
        Progress::to(ProgressDrawTarget::stderr())
    }

    /// Draws nothing.
    pub fn hidden() -> Progress {
        Progress { shown: None }
    }

    /// A display drawn to `target`.
    fn to(target: ProgressDrawTarget) -> Progress {
        let multi = MultiProgress::with_draw_target(target);
        let spinner = multi.add(ProgressBar::new_spinner());
        spinner.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        spinner.enable_steady_tick(Duration::from_millis(120));
        Progress {
            shown: Some(Shown { multi, spinner }),
        }
    }

    /// Whether anything is drawn.
    pub fn is_shown(&self) -> bool {
        self.shown.is_some()
    }

    /// Announces the step now running.
    pub fn step(&self, msg: impl Into<String>) {
        if let Some(s) = &self.shown {
            let msg: String = msg.into();
            let _ = s.multi.println(format!("  {msg}"));
            s.spinner.set_message(msg);
        }
    }

    /// A byte-count bar (`len` when known, else a spinner) for a transfer,
    /// drawn in the same display below the step spinner; hidden when
    /// progress is not shown. `finish_and_clear` it when done.
    pub fn transfer(&self, len: Option<u64>, msg: String) -> ProgressBar {
        let Some(s) = &self.shown else {
            return ProgressBar::hidden();
        };
        let bar = match len {
            Some(len) => ProgressBar::new(len),
            None => ProgressBar::new_spinner(),
        };
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(msg);
        s.multi.add(bar)
    }

    pub fn finish(&self) {
        if let Some(s) = &self.shown {
            s.spinner.finish_and_clear();
            let _ = s.multi.clear();
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_progress_hands_out_hidden_bars() {
        let p = Progress::hidden();
        assert!(!p.is_shown());
        assert!(p.transfer(Some(10), "x".into()).is_hidden());
    }

    #[test]
    fn a_transfer_bar_joins_the_step_display() {
        let p = Progress::to(ProgressDrawTarget::hidden());
        assert!(p.is_shown());
        let bar = p.transfer(Some(100), "downloading".into());
        bar.inc(40);
        assert_eq!(bar.position(), 40);
        assert_eq!(bar.length(), Some(100));
        p.step("next step");
        bar.finish_and_clear();
        p.finish();
    }
}
