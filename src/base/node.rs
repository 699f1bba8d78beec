//! A board's node OS when the build has no `--rootfs`: the board's base
//! recipe and lock file, the locked packages from the verified cache (the
//! mirror is asked only for what it lacks), composed into a tree.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use super::compose::{self, ComposeOptions};
use super::fetch;
use super::lock::{LoadedLock, Lock};
use super::recipe::BoardBase;
use crate::board::{Board, DataDir};
use crate::progress::Progress;
use crate::tree::Tree;

/// The base a build without `--rootfs` composes.
pub struct NodeBase {
    pub base: BoardBase,
    pub lock: LoadedLock,
}

/// What `build.json` says of it: the recipe, the lock's hash and every package.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct BaseInput {
    pub recipe: String,
    pub lock: String,
    pub lock_sha256: String,
    pub release_date: String,
    pub packages: Vec<PackageVersion>,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct PackageVersion {
    pub name: String,
    pub version: String,
    pub architecture: String,
}

impl NodeBase {
    /// The board's recipe and its lock (checked against the recipe and the
    /// board's package list).
    pub fn for_board(data: &DataDir, board: &Board) -> Result<NodeBase> {
        let base = BoardBase::of(data, board)?.ok_or_else(|| {
            anyhow!(
                "board {} names no base recipe (base = ...): give --rootfs DIR|ARCHIVE",
                board.name
            )
        })?;
        let lock = Lock::load_for(data, &base)?;
        Ok(NodeBase { base, lock })
    }

    /// The mtime of the files the steps create when SOURCE_DATE_EPOCH is
    /// unset: the date of the signed index the lock came from, so the same
    /// lock gives the same tree.
    pub fn epoch(&self) -> Result<u64> {
        rfc2822_utc(&self.lock.lock.release.date)
            .with_context(|| format!("{}: release date", self.lock.origin))
    }

    /// Fetches (or finds in the cache) the locked packages and composes them,
    /// with a getty on the board's serial console; file contents spill to
    /// `spill_dir`.
    pub fn compose(
        &self,
        board: &Board,
        mirror: Option<&str>,
        epoch: u64,
        spill_dir: &Path,
        progress: &Progress,
    ) -> Result<Tree> {
        let console = serial_console(&board.boot.cmdline).ok_or_else(|| {
            anyhow!(
                "board {}: boot.cmdline has no serial console= for the node's getty",
                board.name
            )
        })?;
        let debs = fetch::fetch_all(&self.lock.lock, mirror, progress)?;
        progress.step(format!(
            "composing the {} base ({} packages)",
            self.base.recipe.name,
            debs.len()
        ));
        compose::compose(&debs, &ComposeOptions::node(&console, epoch), spill_dir)
            .with_context(|| format!("composing the base of {}", self.lock.origin))
    }

    pub fn manifest(&self) -> BaseInput {
        let l = &self.lock.lock;
        BaseInput {
            recipe: self.base.recipe.name.clone(),
            lock: self.base.lock_path(),
            lock_sha256: self.lock.sha256.clone(),
            release_date: l.release.date.clone(),
            packages: l
                .packages
                .iter()
                .map(|p| PackageVersion {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    architecture: p.architecture.clone(),
                })
                .collect(),
        }
    }
}

/// The serial console of a kernel cmdline: the last `console=tty<letter>...`
/// (ttyS1, ttyAMA0, ttyMSM0; not the virtual terminals tty0, tty1), without
/// its options.
pub fn serial_console(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("console="))
        .map(|v| v.split(',').next().unwrap_or(v))
        .filter(|t| {
            t.strip_prefix("tty")
                .and_then(|r| r.chars().next())
                .is_some_and(|c| c.is_ascii_alphabetic())
        })
        .next_back()
        .map(str::to_string)
}

/// Seconds since 1970 of an InRelease `Date:` ("Sat, 21 Nov 2026 09:15:44 UTC").
/// Written here: the one date format we read, not worth a date crate.
fn rfc2822_utc(s: &str) -> Result<u64> {
    let bad = || anyhow!("{s:?} is not a date like \"Sat, 21 Nov 2026 09:15:44 UTC\"");
    let rest = s.split_once(", ").map_or(s, |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let [day, month, year, time, zone] = f[..] else {
        return Err(bad());
    };
    if !matches!(zone, "UTC" | "GMT" | "+0000") {
        bail!("{s:?}: only UTC dates are read");
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|x| *x == month).ok_or_else(bad)? as i64 + 1;
    let d: i64 = day.parse().map_err(|_| bad())?;
    let y: i64 = year.parse().map_err(|_| bad())?;
    let hms: Vec<i64> = time
        .split(':')
        .map(|x| x.parse().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    let [hh, mm, ss] = hms[..] else {
        return Err(bad());
    };
    if !(1970..=9999).contains(&y) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return Err(bad());
    }
    // Days from 1970-01-01 to y-m-d (proleptic Gregorian; Hinnant's algorithm).
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok((days * 86_400 + hh * 3600 + mm * 60 + ss) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_dates_against_date_1() {
        // Oracle: GNU date -u -d '...' +%s.
        for (s, want) in [
            ("Sat, 21 Nov 2026 09:15:44 UTC", 1_795_252_544),
            ("Thu, 01 Jan 1970 00:00:00 UTC", 0),
            ("Tue, 29 Feb 2000 23:59:59 UTC", 951_868_799),
            ("Sat, 10 Jun 2023 08:53:33 UTC", 1_686_387_213),
        ] {
            assert_eq!(rfc2822_utc(s).unwrap(), want, "{s}");
        }
        for bad in [
            "",
            "Sat, 21 Nov 2026 09:15:44 CET",
            "Sat, 21 Foo 2026 09:15:44 UTC",
            "Sat, 21 Nov 2026 24:15:44 UTC",
            "Sat, 21 Nov 2026 09:15 UTC",
        ] {
            assert!(rfc2822_utc(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serial_console_is_the_last_tty_console() {
        assert_eq!(
            serial_console("console=ttyAMA0 rootwait").as_deref(),
            Some("ttyAMA0")
        );
        assert_eq!(
            serial_console("console=tty0 console=ttyS1,115200 rootwait").as_deref(),
            Some("ttyS1")
        );
        assert_eq!(serial_console("console=tty1 quiet"), None);
        assert_eq!(serial_console("rootwait"), None);
    }
}
