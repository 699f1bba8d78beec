//! Debian version numbers (`[epoch:]upstream[-revision]`) and their ordering,
//! as dpkg orders them, plus the relation operators of dependency fields.
//!
//! Hand-written: the `debversion` crate was checked and orders some versions
//! differently from dpkg (it compares whole non-digit runs, so it puts `1.a`
//! below `1.0a`; dpkg, which compares character by character, puts it above).
//! dpkg is the reference for what apt and the archive mean, so this follows
//! dpkg's `verrevcmp` and is tested against `dpkg --compare-versions`.

use std::cmp::Ordering;
use std::fmt;

/// A parsed Debian version. Ordering and equality are dpkg's (`1.0` equals
/// `1.0-0` and `0:1.0`); `Display` shows the text as it was written.
#[derive(Debug, Clone)]
pub struct Version {
    text: String,
    epoch: u32,
    /// Byte offsets into `text` of the upstream part and of the revision.
    upstream: (usize, usize),
    revision: (usize, usize),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid version {text:?}: {why}")]
pub struct VersionError {
    pub text: String,
    pub why: &'static str,
}

impl Version {
    /// Parses a version as dpkg does: an optional numeric epoch before the
    /// first `:`, a revision after the last `-`, and only the characters
    /// policy allows in each part.
    pub fn parse(text: &str) -> Result<Version, VersionError> {
        let err = |why| VersionError {
            text: text.to_string(),
            why,
        };
        let t = text.trim();
        if t.is_empty() {
            return Err(err("empty"));
        }
        if t.chars().any(|c| c.is_whitespace()) {
            return Err(err("contains whitespace"));
        }
        let lead = text.len() - text.trim_start().len();
        let (epoch, up_start) = match t.find(':') {
            Some(i) => {
                let e = &t[..i];
                if e.is_empty() {
                    return Err(err("empty epoch"));
                }
                if !e.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err("epoch is not a number"));
                }
                let n: u32 = e.parse().map_err(|_| err("epoch too large"))?;
                if n > i32::MAX as u32 {
                    return Err(err("epoch too large"));
                }
                (n, i + 1)
            }
            None => (0, 0),
        };
        let rest = &t[up_start..];
        let (up_len, rev) = match rest.rfind('-') {
            Some(i) => (i, Some(&rest[i + 1..])),
            None => (rest.len(), None),
        };
        let upstream = &rest[..up_len];
        if upstream.is_empty() {
            return Err(err("empty upstream version"));
        }
        if !upstream.as_bytes()[0].is_ascii_digit() {
            return Err(err("upstream version does not start with a digit"));
        }
        if !upstream
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-+~:".contains(&b))
        {
            return Err(err("invalid character in upstream version"));
        }
        if let Some(r) = rev {
            if r.is_empty() {
                return Err(err("empty revision"));
            }
            if !r
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".+~".contains(&b))
            {
                return Err(err("invalid character in revision"));
            }
        }
        let base = lead + up_start;
        let upstream = (base, base + up_len);
        let revision = match rev {
            Some(r) => (upstream.1 + 1, upstream.1 + 1 + r.len()),
            None => (upstream.1, upstream.1),
        };
        Ok(Version {
            text: text[..lead + t.len()].to_string(),
            epoch,
            upstream,
            revision,
        })
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    pub fn upstream(&self) -> &str {
        &self.text[self.upstream.0..self.upstream.1]
    }

    /// The Debian revision, "" when there is none.
    pub fn revision(&self) -> &str {
        &self.text[self.revision.0..self.revision.1]
    }

    /// The version as written (without surrounding whitespace).
    pub fn as_str(&self) -> &str {
        self.text.trim()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Version {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Version::parse(s)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| verrevcmp(self.upstream(), other.upstream()))
            .then_with(|| verrevcmp(self.revision(), other.revision()))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

/// The weight of a non-digit character: `~` before the end of the string,
/// the end before letters, letters before everything else.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

/// dpkg's comparison of one version part: alternating runs of non-digits
/// (compared character by character by `order`) and digits (compared as
/// numbers of any length, leading zeros ignored).
fn verrevcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0usize, 0usize);
    let digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !digit(a, i)) || (j < b.len() && !digit(b, j)) {
            let (ac, bc) = (order(a.get(i).copied()), order(b.get(j).copied()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while digit(a, i) && digit(b, j) {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if digit(a, i) {
            return Ordering::Greater;
        }
        if digit(b, j) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

/// A version relation in a dependency field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `<<`
    Lt,
    /// `<=` (and the obsolete `<`)
    Le,
    /// `=`
    Eq,
    /// `>=` (and the obsolete `>`)
    Ge,
    /// `>>`
    Gt,
}

impl Op {
    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "<<" => Op::Lt,
            "<=" | "<" => Op::Le,
            "=" => Op::Eq,
            ">=" | ">" => Op::Ge,
            ">>" => Op::Gt,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<<",
            Op::Le => "<=",
            Op::Eq => "=",
            Op::Ge => ">=",
            Op::Gt => ">>",
        }
    }

    /// Whether `have` stands in this relation to `want` (`have OP want`).
    pub fn holds(self, have: &Version, want: &Version) -> bool {
        let o = have.cmp(want);
        match self {
            Op::Lt => o == Ordering::Less,
            Op::Le => o != Ordering::Greater,
            Op::Eq => o == Ordering::Equal,
            Op::Ge => o != Ordering::Less,
            Op::Gt => o == Ordering::Greater,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn parts() {
        let x = v("2:1.0-3-1~deb13u1");
        assert_eq!(
            (x.epoch(), x.upstream(), x.revision()),
            (2, "1.0-3", "1~deb13u1")
        );
        let y = v(" 1.2+dfsg ");
        assert_eq!((y.epoch(), y.upstream(), y.revision()), (0, "1.2+dfsg", ""));
        assert_eq!(y.to_string(), "1.2+dfsg");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            " ",
            "a1",
            ":1",
            "x:1",
            "1:",
            "1-",
            "1 2",
            "1.0-a_b",
            "1_0",
            "99999999999:1",
            "1.0-é",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn known_orderings() {
        let lt = [
            ("1.0~rc1", "1.0"),
            ("1.0", "1.0+b1"),
            ("1.0-1", "1.0-1+deb13u1"),
            ("1.0~~", "1.0~"),
            ("1.0~", "1.0"),
            ("9", "10"),
            ("1:0.1", "2:0.0"),
            ("1.0a", "1.0+"),
            ("1.0", "1.0a"),
            ("1.0a", "1.0b"),
            ("1.0.0", "1.0.a"),
            ("0001", "2"),
            ("1.0-0", "1.0-1"),
            (
                "123456789012345678901234567890",
                "123456789012345678901234567891",
            ),
        ];
        for (a, b) in lt {
            assert!(v(a) < v(b), "{a} < {b}");
            assert!(v(b) > v(a), "{b} > {a}");
        }
        for (a, b) in [
            ("1.0", "1.0-0"),
            ("0:1.0", "1.0"),
            ("1.00", "1.0"),
            ("01", "1"),
        ] {
            assert_eq!(v(a), v(b), "{a} = {b}");
        }
    }

    #[test]
    fn relations() {
        let (a, b) = (v("1.0"), v("2.0"));
        assert!(Op::Lt.holds(&a, &b) && !Op::Lt.holds(&a, &a));
        assert!(Op::Le.holds(&a, &a) && !Op::Le.holds(&b, &a));
        assert!(Op::Eq.holds(&a, &v("1.0-0")) && !Op::Eq.holds(&a, &b));
        assert!(Op::Ge.holds(&b, &a) && Op::Ge.holds(&a, &a) && !Op::Ge.holds(&a, &b));
        assert!(Op::Gt.holds(&b, &a) && !Op::Gt.holds(&a, &a));
        assert_eq!(Op::parse("<"), Some(Op::Le));
        assert_eq!(Op::parse(">"), Some(Op::Ge));
        assert_eq!(Op::parse("=="), None);
    }

    /// Versions seen in Debian's archive (and made up to reach the corners:
    /// tildes, epochs, letters against digits, long numbers, punctuation).
    const SAMPLES: &[&str] = &[
        "0",
        "0.0",
        "0.1",
        "1",
        "1.0",
        "1.0-0",
        "1.0-1",
        "1.0-1+b1",
        "1.0-1+deb13u1",
        "1.0-1~bpo13+1",
        "1.0~rc1-1",
        "1.0~rc1",
        "1.0~~",
        "1.0~",
        "1.0+",
        "1.0.",
        "1.0a",
        "1.0A",
        "1.0.a",
        "1.a",
        "1.0a1",
        "1.0a10",
        "1.0a9",
        "1:1.0",
        "2:0.1",
        "1:1.0-1",
        "0:1.0",
        "1.00",
        "01.0",
        "1.0-a",
        "1.0-A",
        "1.0-a1",
        "1.0-0.1",
        "1.0-1.1",
        "1.0-10",
        "1.0-9",
        "1.0+dfsg-1",
        "1.0+dfsg1-1",
        "1.0+ds-1",
        "1.0+git20240101.abcdef-1",
        "1.0~git20240101-1",
        "2.36-9+deb12u9",
        "2.41-12",
        "2.41-12+deb13u1",
        "257.9-1~deb13u1",
        "257.9-1",
        "257.13-1",
        "3.0.17-1~deb13u2",
        "3.5.1-1",
        "1:9.2p1-2",
        "1:10.0p1-7",
        "1:9.9p1-3",
        "6.12.57-1",
        "6.12.48-1",
        "6.12.57+deb13-arm64",
        "20240709-2",
        "1:20240709-2",
        "5.2.37-2+b5",
        "5.2.37-2",
        "9.1.1230-2",
        "2:9.1.1230-2",
        "1.36.1-9",
        "1:1.36.1-9",
        "123456789012345678901234567890",
        "99999999999999999999",
        "1.0-1-1",
        "1.0-1-1~",
        "1:1.0-1-2",
        "1.2.3.4.5.6",
        "1.2.3.4.5.6~a",
        "a",
        "~",
        "1~",
        "1~a",
        "1~~a",
        "1~1",
        "1+1",
        "1.1",
        "1-1",
        "1:1",
        "1.0+b",
        "1.0++",
        "1.0+~",
        "1.0~+",
        "7.88.1-10+deb12u8",
        "8.14.1-2",
        "0.0.0-0",
        "0+0",
        "0~0",
        "1.0.0~beta3+really1.0-2",
    ];

    /// Versions of real packages: those pinned in the shipped lock files.
    fn archive_versions() -> Vec<String> {
        let data = crate::board::DataDir::builtin();
        let mut out = Vec::new();
        for board in ["rpi4", "qemu-aarch64"] {
            let rel = format!("boards/base/{board}.lock");
            let (_, bytes) = data.data_file(&rel).unwrap().unwrap();
            let lock =
                crate::base::lock::Lock::parse(std::str::from_utf8(&bytes).unwrap()).unwrap();
            out.extend(lock.packages.into_iter().map(|p| p.version));
        }
        out.sort();
        out.dedup();
        out
    }

    /// Some thousands of pairs ordered by us and by `dpkg --compare-versions`:
    /// every pair of `SAMPLES`, and each version of the shipped locks against
    /// a spread of the samples and of the other locked versions. Skipped
    /// with a message when dpkg is absent.
    #[test]
    fn agrees_with_dpkg() {
        let valid: Vec<&str> = SAMPLES
            .iter()
            .copied()
            .filter(|s| Version::parse(s).is_ok())
            .collect();
        assert!(valid.len() > 80, "the samples should mostly be versions");
        let real = archive_versions();
        assert!(
            real.len() > 80,
            "the locks should pin over 80 distinct versions"
        );
        if Command::new("dpkg").arg("--version").output().is_err() {
            eprintln!("dpkg not found: oracle comparison skipped");
            return;
        }
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for (i, a) in valid.iter().enumerate() {
            for b in &valid[i..] {
                pairs.push((a, b));
            }
        }
        for (i, a) in real.iter().enumerate() {
            for k in 0..8 {
                pairs.push((a, valid[(i * 7 + k * 13) % valid.len()]));
                pairs.push((a, &real[(i * 11 + k * 17 + 1) % real.len()]));
            }
        }
        assert!(pairs.len() > 5000, "{} pairs", pairs.len());
        // One shell for all pairs: dpkg prints nothing, the script prints
        // lt/eq/gt per pair.
        let mut script = String::new();
        for (a, b) in &pairs {
            script.push_str(&format!(
                "if dpkg --compare-versions '{a}' lt '{b}'; then echo lt; \
                 elif dpkg --compare-versions '{a}' eq '{b}'; then echo eq; else echo gt; fi\n"
            ));
        }
        let mut sh = Command::new("sh")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = sh.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
        let out = sh.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        let answers: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
        assert_eq!(answers.len(), pairs.len());
        let mut wrong = Vec::new();
        for ((a, b), want) in pairs.iter().zip(answers) {
            let (x, y) = (v(a), v(b));
            assert_eq!(
                x.cmp(&y),
                y.cmp(&x).reverse(),
                "{a} vs {b}: not antisymmetric"
            );
            let got = match x.cmp(&y) {
                Ordering::Less => "lt",
                Ordering::Equal => "eq",
                Ordering::Greater => "gt",
            };
            if got != want {
                wrong.push(format!("{a} vs {b}: dpkg {want}, ours {got}"));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} disagreements: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(20)]
        );
    }
}
