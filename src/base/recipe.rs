//! Base recipes: `boards/base/<name>.toml`, the data that says which Debian
//! archive (distribution, suite, components, architecture) and which packages
//! make a node's base. A board names its recipe (`base = "..."`) and adds its
//! own packages (`base_packages`); the pair is what a lock file pins.
//!
//! The schema is documented in `docs/base.md`.

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::board::{Board, DataDir};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The file stem; not in the file.
    #[serde(skip)]
    pub name: String,
    /// "debian".
    pub distribution: String,
    /// The suite or codename under `dists/` ("trixie").
    pub suite: String,
    /// Archive components whose `Packages` are read ("main", "non-free-firmware").
    pub components: Vec<String>,
    /// Debian architecture name ("arm64").
    pub architecture: String,
    /// Include every package the index marks `Essential: yes`.
    #[serde(default)]
    pub essential: bool,
    /// The pinned signing keys: `boards/base/keys/<keyring>.toml`.
    pub keyring: String,
    /// Packages wanted (their dependencies follow).
    pub packages: Vec<String>,
}

/// A board's base: its recipe plus the board's own packages. The lock file
/// pins exactly this set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardBase {
    pub board: String,
    pub recipe: Recipe,
    /// The board's `base_packages`.
    pub extra: Vec<String>,
}

impl BoardBase {
    /// The board's base, None when the board names no recipe.
    pub fn of(data: &DataDir, board: &Board) -> Result<Option<BoardBase>> {
        let Some(name) = &board.base else {
            return Ok(None);
        };
        let recipe = Recipe::load(data, name)?;
        for p in &board.base_packages {
            check_package_name(p)
                .with_context(|| format!("board {}: base_packages", board.name))?;
        }
        Ok(Some(BoardBase {
            board: board.name.clone(),
            recipe,
            extra: board.base_packages.clone(),
        }))
    }

    /// Recipe packages then the board's, each once, in that order.
    pub fn packages(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in self.recipe.packages.iter().chain(&self.extra) {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }

    /// Where the lock lives under the data directories.
    pub fn lock_path(&self) -> String {
        format!("boards/base/{}.lock", self.board)
    }
}

impl Recipe {
    /// Parses and validates a recipe; `name` is the file stem.
    pub fn parse(text: &str, name: &str) -> Result<Recipe> {
        let mut r: Recipe = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim().replace('\n', " ");
            match e.span() {
                Some(span) => anyhow::anyhow!("at byte {}: {msg}", span.start),
                None => anyhow::anyhow!(msg),
            }
        })?;
        r.name = name.to_string();
        if r.distribution != "debian" {
            bail!(
                "distribution = {:?} is not supported (supported: debian)",
                r.distribution
            );
        }
        for (what, v) in [
            ("suite", &r.suite),
            ("architecture", &r.architecture),
            ("keyring", &r.keyring),
        ] {
            if !is_name(v) {
                bail!("{what} = {v:?} is not a plain name");
            }
        }
        if r.components.is_empty() {
            bail!("components needs at least one component");
        }
        for c in &r.components {
            if !is_name(c) {
                bail!("components: {c:?} is not a plain name");
            }
        }
        for p in &r.packages {
            check_package_name(p).context("packages")?;
        }
        Ok(r)
    }

    /// Loads `boards/base/<name>.toml` (a `--data-dir` one wins).
    pub fn load(data: &DataDir, name: &str) -> Result<Recipe> {
        if !is_name(name) {
            bail!("{name:?} is not a recipe name");
        }
        let rel = format!("boards/base/{name}.toml");
        let (origin, bytes) = data
            .data_file(&rel)?
            .with_context(|| format!("no base recipe {name:?} ({rel})"))?;
        let text = String::from_utf8(bytes).with_context(|| format!("{origin}: not UTF-8"))?;
        Recipe::parse(&text, name).with_context(|| origin.clone())
    }
}

/// A plain name: lower-case letters, digits and `.+-_`, not starting with
/// a dot (safe as a path segment and in a URL).
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-+._".contains(&b))
}

/// Debian policy's package name: at least two characters of `a-z0-9+-.`,
/// starting with a letter or digit.
pub fn check_package_name(p: &str) -> Result<()> {
    let ok = p.len() >= 2
        && p.as_bytes()[0].is_ascii_alphanumeric()
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if !ok {
        bail!("{p:?} is not a Debian package name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
distribution = "debian"
suite = "trixie"
components = ["main", "non-free-firmware"]
architecture = "arm64"
essential = true
keyring = "debian"
packages = ["systemd", "udev"]
"#;

    #[test]
    fn parses_a_recipe() {
        let r = Recipe::parse(GOOD, "debian-trixie").unwrap();
        assert_eq!(r.name, "debian-trixie");
        assert_eq!(r.components, ["main", "non-free-firmware"]);
        assert!(r.essential);
        assert_eq!(r.packages, ["systemd", "udev"]);
    }

    #[test]
    fn rejects_bad_recipes() {
        for (from, to, why) in [
            ("debian\"\nsuite", "ubuntu\"\nsuite", "not supported"),
            ("\"trixie\"", "\"../x\"", "suite"),
            ("\"udev\"", "\"Udev\"", "package name"),
            ("keyring", "keyrung", "unknown field"),
            ("[\"main\", \"non-free-firmware\"]", "[]", "at least one"),
        ] {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD);
            let e = format!("{:#}", Recipe::parse(&text, "x").unwrap_err());
            assert!(e.contains(why), "{from} -> {to}: {e}");
        }
    }

    #[test]
    fn shipped_recipes_and_boards_load() {
        let data = DataDir::builtin();
        for name in ["rpi4", "qemu-aarch64"] {
            let (board, _) = data.load(name).unwrap();
            let base = BoardBase::of(&data, &board).unwrap().unwrap();
            assert_eq!(base.recipe.name, "debian-trixie");
            let pkgs = base.packages();
            assert!(pkgs.contains(&"linux-image-arm64".to_string()));
            assert!(pkgs.contains(&"openssh-server".to_string()));
        }
    }
}
