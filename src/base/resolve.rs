//! The dependency resolver: from the wanted package names (and, when the
//! recipe asks, every `Essential: yes` package) to the closed set of packages
//! a lock pins, over one architecture's `Packages` index.
//!
//! It follows `Pre-Depends` and `Depends` (never `Recommends` or
//! `Suggests`), with version relations (`<<`, `<=`, `=`, `>=`, `>>`),
//! alternatives (`a | b`), `Provides` (versioned too) and virtual packages,
//! architecture qualifiers (`:any`, `:native`, the target's own name), and
//! checks `Conflicts` and `Breaks`.
//!
//! The choice is greedy and deterministic (no backtracking):
//! 1. roots first, in order: the Essential packages sorted by name, then the
//!    wanted list; a root that is only virtual takes its first provider by name;
//! 2. then, breadth first, each chosen package's `Pre-Depends` then `Depends`,
//!    group by group. A group already satisfied by a chosen package (real, or
//!    through `Provides`) needs nothing. Otherwise its alternatives are tried
//!    in the order written; for each, the real package of that name (highest
//!    satisfying version) before the packages that provide it (sorted by
//!    name, then highest version). The first candidate that does not conflict
//!    with (or break, or get broken by) what is chosen is taken.
//! 3. a group nothing can satisfy is an error naming the package and the
//!    group; a final pass checks every chosen pair against `Conflicts` and
//!    `Breaks` and names both packages.
//!
//! A recipe steers a choice by listing the wanted alternative: roots are
//! chosen before any dependency.
//!
//! `pkg:any` is satisfied by a package marked `Multi-Arch: allowed` (or a
//! provider); `pkg:native` and `pkg:<target arch>` as plain `pkg`; another
//! architecture by nothing (the image has one architecture).

use std::collections::{BTreeMap, HashMap, VecDeque};

use anyhow::{bail, Context, Result};

use super::archive::Package;
use super::version::{Op, Version};

/// One alternative of a relation: `name[:arch] [(op version)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dep {
    pub name: String,
    pub arch: Option<String>,
    pub constraint: Option<(Op, Version)>,
}

impl std::fmt::Display for Dep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        if let Some(a) = &self.arch {
            write!(f, ":{a}")?;
        }
        if let Some((op, v)) = &self.constraint {
            write!(f, " ({op} {v})")?;
        }
        Ok(())
    }
}

fn group_text(g: &[Dep]) -> String {
    g.iter().map(Dep::to_string).collect::<Vec<_>>().join(" | ")
}

/// Parses a relation field (`Depends` and friends): comma-separated groups
/// of `|`-separated alternatives. Architecture lists (`[amd64]`) and build
/// profiles (`<!nocheck>`) belong to source packages and are errors here.
pub fn parse_relations(field: &str) -> Result<Vec<Vec<Dep>>> {
    let mut out = Vec::new();
    for group in field.split(',') {
        if group.trim().is_empty() {
            // A trailing comma is tolerated, an empty group between two is not.
            continue;
        }
        let mut alts = Vec::new();
        for alt in group.split('|') {
            alts.push(parse_dep(alt).with_context(|| format!("in {:?}", group.trim()))?);
        }
        out.push(alts);
    }
    Ok(out)
}

fn parse_dep(s: &str) -> Result<Dep> {
    let s = s.trim();
    if s.contains(['[', ']', '<']) && !s.contains('(') || s.contains(['[', ']']) {
        bail!("architecture restrictions or build profiles in a binary relation");
    }
    let (head, constraint) = match s.split_once('(') {
        Some((head, rest)) => {
            let inner = rest
                .strip_suffix(')')
                .context("unclosed \"(\" or text after \")\"")?
                .trim();
            let split = inner
                .find(|c: char| !"<>=".contains(c))
                .context("a relation without a version")?;
            let (op, ver) = inner.split_at(split);
            let op = Op::parse(op.trim()).with_context(|| format!("unknown relation {op:?}"))?;
            (head.trim(), Some((op, Version::parse(ver.trim())?)))
        }
        None => (s, None),
    };
    let (name, arch) = match head.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (head, None),
    };
    super::recipe::check_package_name(name)?;
    if let Some(a) = arch {
        if !super::recipe::is_name(a) {
            bail!("bad architecture qualifier {a:?}");
        }
    }
    Ok(Dep {
        name: name.to_string(),
        arch: arch.map(str::to_string),
        constraint,
    })
}

/// A `Provides` entry: a virtual name, with a version when versioned.
#[derive(Debug, Clone)]
struct Provide {
    name: String,
    version: Option<Version>,
}

fn parse_provides(field: &str) -> Result<Vec<Provide>> {
    let mut out = Vec::new();
    for group in parse_relations(field)? {
        let [d] = group.as_slice() else {
            bail!("alternatives in Provides");
        };
        let version = match &d.constraint {
            None => None,
            Some((Op::Eq, v)) => Some(v.clone()),
            Some((op, _)) => bail!("Provides with relation {op} (only = is allowed)"),
        };
        out.push(Provide {
            name: d.name.clone(),
            version,
        });
    }
    Ok(out)
}

/// Why a package was refused as a candidate, for the error message.
#[derive(Debug)]
enum Refusal {
    OtherVersionChosen(usize),
    Conflict { with: usize, how: &'static str },
}

struct Resolver<'a> {
    pkgs: &'a [Package],
    arch: &'a str,
    /// Real packages by name, highest version first.
    by_name: HashMap<&'a str, Vec<usize>>,
    /// Providers by virtual name: (package, provided version), sorted by
    /// provider name then highest version.
    providers: HashMap<String, Vec<(usize, Option<Version>)>>,
    provides_of: HashMap<usize, Vec<Provide>>,
    chosen: BTreeMap<&'a str, usize>,
    /// Virtual names provided by chosen packages.
    chosen_provides: HashMap<String, Vec<(usize, Option<Version>)>>,
    queue: VecDeque<usize>,
}

/// Resolves `wanted` (plus the Essential set when `essential`) over `pkgs`
/// for `arch`; returns the chosen packages sorted by name.
pub fn resolve<'a>(
    pkgs: &'a [Package],
    arch: &'a str,
    wanted: &[String],
    essential: bool,
) -> Result<Vec<&'a Package>> {
    let mut r = Resolver::new(pkgs, arch)?;
    let mut roots: Vec<String> = Vec::new();
    if essential {
        let mut ess: Vec<&str> = r
            .by_name
            .iter()
            .filter(|(_, ix)| pkgs[ix[0]].essential)
            .map(|(n, _)| *n)
            .collect();
        ess.sort_unstable();
        roots.extend(ess.into_iter().map(str::to_string));
    }
    for w in wanted {
        if !roots.contains(w) {
            roots.push(w.clone());
        }
    }
    for root in &roots {
        r.add_root(root)?;
    }
    while let Some(i) = r.queue.pop_front() {
        let p = &pkgs[i];
        for (field, text) in [("Pre-Depends", &p.pre_depends), ("Depends", &p.depends)] {
            let Some(text) = text else { continue };
            let groups = parse_relations(text)
                .with_context(|| format!("{} {}: {field}", p.name, p.version))?;
            for g in groups {
                r.satisfy(i, &g)?;
            }
        }
    }
    r.final_check()?;
    Ok(r.chosen.values().map(|&i| &pkgs[i]).collect())
}

impl<'a> Resolver<'a> {
    fn new(pkgs: &'a [Package], arch: &'a str) -> Result<Resolver<'a>> {
        let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut providers: HashMap<String, Vec<(usize, Option<Version>)>> = HashMap::new();
        let mut provides_of = HashMap::new();
        for (i, p) in pkgs.iter().enumerate() {
            if p.architecture != arch && p.architecture != "all" {
                continue;
            }
            by_name.entry(&p.name).or_default().push(i);
            if let Some(text) = &p.provides {
                let prov = parse_provides(text)
                    .with_context(|| format!("{} {}: Provides", p.name, p.version))?;
                for pr in &prov {
                    providers
                        .entry(pr.name.clone())
                        .or_default()
                        .push((i, pr.version.clone()));
                }
                provides_of.insert(i, prov);
            }
        }
        for v in by_name.values_mut() {
            v.sort_by(|&a, &b| pkgs[b].version.cmp(&pkgs[a].version).then(a.cmp(&b)));
        }
        for v in providers.values_mut() {
            v.sort_by(|(a, _), (b, _)| {
                pkgs[*a]
                    .name
                    .cmp(&pkgs[*b].name)
                    .then(pkgs[*b].version.cmp(&pkgs[*a].version))
                    .then(a.cmp(b))
            });
        }
        Ok(Resolver {
            pkgs,
            arch,
            by_name,
            providers,
            provides_of,
            chosen: BTreeMap::new(),
            chosen_provides: HashMap::new(),
            queue: VecDeque::new(),
        })
    }

    fn show(&self, i: usize) -> String {
        format!("{} {}", self.pkgs[i].name, self.pkgs[i].version)
    }

    fn add_root(&mut self, name: &str) -> Result<()> {
        if self.chosen.contains_key(name) {
            return Ok(());
        }
        let dep = Dep {
            name: name.to_string(),
            arch: None,
            constraint: None,
        };
        if self.satisfied(&dep) {
            return Ok(());
        }
        let cands = self.candidates(&dep);
        if cands.is_empty() {
            bail!("package {name} is not in the index (nor provided by any package)");
        }
        let mut first_refusal = None;
        for c in cands {
            match self.refusal(c) {
                None => {
                    self.choose(c);
                    return Ok(());
                }
                Some(r) => {
                    first_refusal.get_or_insert((c, r));
                }
            }
        }
        let (c, r) = first_refusal.context("no candidate")?;
        bail!("cannot install {name}: {}", self.explain(c, &r))
    }

    fn explain(&self, c: usize, r: &Refusal) -> String {
        match r {
            Refusal::OtherVersionChosen(o) => {
                format!(
                    "{} is wanted but {} was chosen",
                    self.show(c),
                    self.show(*o)
                )
            }
            Refusal::Conflict { with, how } => {
                format!("{} {how} {}", self.show(c), self.show(*with))
            }
        }
    }

    /// Whether the architecture qualifier lets package `i` satisfy `dep`.
    fn arch_ok(&self, dep: &Dep, i: usize, via_provides: bool) -> bool {
        match dep.arch.as_deref() {
            None | Some("native") => true,
            Some("any") => via_provides || self.pkgs[i].multi_arch.as_deref() == Some("allowed"),
            Some(a) => a == self.arch,
        }
    }

    fn version_ok(dep: &Dep, have: Option<&Version>) -> bool {
        match (&dep.constraint, have) {
            (None, _) => true,
            (Some((op, want)), Some(have)) => op.holds(have, want),
            (Some(_), None) => false,
        }
    }

    /// Whether a chosen package satisfies `dep`.
    fn satisfied(&self, dep: &Dep) -> bool {
        if let Some(&i) = self.chosen.get(dep.name.as_str()) {
            if self.arch_ok(dep, i, false) && Self::version_ok(dep, Some(&self.pkgs[i].version)) {
                return true;
            }
        }
        self.chosen_provides.get(&dep.name).is_some_and(|ps| {
            ps.iter()
                .any(|(i, v)| self.arch_ok(dep, *i, true) && Self::version_ok(dep, v.as_ref()))
        })
    }

    /// Packages that would satisfy `dep`: the real ones (highest version
    /// first), then the providers (by name, highest version first).
    fn candidates(&self, dep: &Dep) -> Vec<usize> {
        let mut out = Vec::new();
        if let Some(ix) = self.by_name.get(dep.name.as_str()) {
            out.extend(ix.iter().copied().filter(|&i| {
                self.arch_ok(dep, i, false) && Self::version_ok(dep, Some(&self.pkgs[i].version))
            }));
        }
        if let Some(ps) = self.providers.get(&dep.name) {
            for (i, v) in ps {
                if self.arch_ok(dep, *i, true)
                    && Self::version_ok(dep, v.as_ref())
                    && !out.contains(i)
                {
                    out.push(*i);
                }
            }
        }
        out
    }

    /// Why candidate `c` cannot join the chosen set, if it cannot.
    fn refusal(&self, c: usize) -> Option<Refusal> {
        if let Some(&o) = self.chosen.get(self.pkgs[c].name.as_str()) {
            if o != c {
                return Some(Refusal::OtherVersionChosen(o));
            }
        }
        for (field, how) in [("Conflicts", "conflicts with"), ("Breaks", "breaks")] {
            if let Some(with) = self.hits(c, field, self.chosen.values().copied()) {
                return Some(Refusal::Conflict { with, how });
            }
        }
        for &o in self.chosen.values() {
            for (field, how) in [("Conflicts", "conflicts with"), ("Breaks", "is broken by")] {
                if self.hits(o, field, std::iter::once(c)).is_some() {
                    return Some(Refusal::Conflict { with: o, how });
                }
            }
        }
        None
    }

    /// The first of `others` that package `a`'s `field` (Conflicts or
    /// Breaks) names, directly or through what it provides. A package
    /// never conflicts with itself (Conflicts + Provides of one name).
    fn hits(&self, a: usize, field: &str, others: impl Iterator<Item = usize>) -> Option<usize> {
        let p = &self.pkgs[a];
        let text = match field {
            "Conflicts" => p.conflicts.as_ref(),
            _ => p.breaks.as_ref(),
        }?;
        // Malformed fields were reported when the package was chosen or in
        // the final check; here they count as no conflict.
        let groups = parse_relations(text).ok()?;
        let others: Vec<usize> = others.filter(|&o| o != a).collect();
        for d in groups.iter().flatten() {
            for &o in &others {
                let q = &self.pkgs[o];
                if q.name == d.name
                    && self.arch_ok(d, o, false)
                    && Self::version_ok(d, Some(&q.version))
                {
                    return Some(o);
                }
                if let Some(prov) = self.provides_of.get(&o) {
                    if prov
                        .iter()
                        .any(|pr| pr.name == d.name && Self::version_ok(d, pr.version.as_ref()))
                    {
                        return Some(o);
                    }
                }
            }
        }
        None
    }

    fn choose(&mut self, c: usize) {
        let p = &self.pkgs[c];
        self.chosen.insert(&p.name, c);
        if let Some(prov) = self.provides_of.get(&c) {
            for pr in prov {
                self.chosen_provides
                    .entry(pr.name.clone())
                    .or_default()
                    .push((c, pr.version.clone()));
            }
        }
        self.queue.push_back(c);
    }

    fn satisfy(&mut self, from: usize, group: &[Dep]) -> Result<()> {
        if group.iter().any(|d| self.satisfied(d)) {
            return Ok(());
        }
        let mut first_refusal = None;
        for d in group {
            for c in self.candidates(d) {
                match self.refusal(c) {
                    None => {
                        self.choose(c);
                        return Ok(());
                    }
                    Some(r) => {
                        first_refusal.get_or_insert((c, r));
                    }
                }
            }
        }
        let wants = format!("{} depends on {}", self.show(from), group_text(group));
        match first_refusal {
            None => bail!("{wants}, which no package in the index satisfies"),
            Some((c, r)) => bail!("{wants}, but {}", self.explain(c, &r)),
        }
    }

    /// Every chosen pair against Conflicts and Breaks; malformed fields of
    /// chosen packages are errors here.
    fn final_check(&self) -> Result<()> {
        for &a in self.chosen.values() {
            let p = &self.pkgs[a];
            for (field, text, how) in [
                ("Conflicts", &p.conflicts, "conflicts with"),
                ("Breaks", &p.breaks, "breaks"),
            ] {
                let Some(text) = text else { continue };
                parse_relations(text).with_context(|| format!("{}: {field}", self.show(a)))?;
                if let Some(o) = self.hits(a, field, self.chosen.values().copied()) {
                    bail!("{} {how} {}", self.show(a), self.show(o));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::archive::parse_packages;
    use super::*;

    /// An index from short stanzas: "name version [Field: value]...", one
    /// per line, fields separated by ";".
    fn index(lines: &[&str]) -> Vec<Package> {
        let mut text = String::new();
        for (n, l) in lines.iter().enumerate() {
            let mut parts = l.split(';');
            let head = parts.next().unwrap();
            let (name, version) = head.split_once(' ').unwrap();
            text.push_str(&format!(
                "Package: {name}\nVersion: {version}\nArchitecture: arm64\n\
                 Filename: pool/{name}_{n}.deb\nSize: 1\nSHA256: {n:064x}\n"
            ));
            for f in parts {
                text.push_str(f.trim());
                text.push('\n');
            }
            text.push('\n');
        }
        parse_packages(&text).unwrap()
    }

    fn names(pkgs: &[Package], wanted: &[&str]) -> Result<Vec<String>> {
        let wanted: Vec<String> = wanted.iter().map(|s| s.to_string()).collect();
        Ok(resolve(pkgs, "arm64", &wanted, false)?
            .iter()
            .map(|p| format!("{}={}", p.name, p.version))
            .collect())
    }

    #[test]
    fn parses_relations() {
        let g =
            parse_relations("aa (>= 1.0), bb:any | cc (<< 2~) ,dd:native,\n ee (= 1:2-3)").unwrap();
        assert_eq!(g.len(), 4);
        assert_eq!(g[1].len(), 2);
        assert_eq!(g[1][0].arch.as_deref(), Some("any"));
        assert_eq!(g[1][1].constraint.as_ref().unwrap().0, Op::Lt);
        assert_eq!(g[3][0].to_string(), "ee (= 1:2-3)");
        for bad in [
            "aa (>= )",
            "aa (~ 1)",
            "AA",
            "aa [amd64]",
            "aa <!nocheck>",
            "aa (>= 1",
            "aa | ",
            "x",
        ] {
            assert!(parse_relations(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn follows_depends_and_pre_depends_not_recommends() {
        let idx = index(&[
            "app 1;Depends: lib (>= 2);Pre-Depends: pre;Recommends: extra",
            "lib 2",
            "pre 1",
            "extra 1",
        ]);
        assert_eq!(names(&idx, &["app"]).unwrap(), ["app=1", "lib=2", "pre=1"]);
    }

    #[test]
    fn versioned_dependencies_pick_the_highest_satisfying_version() {
        let idx = index(&["app 1;Depends: lib (<< 3)", "lib 3", "lib 2.5", "lib 1"]);
        assert_eq!(names(&idx, &["app"]).unwrap(), ["app=1", "lib=2.5"]);
        let idx = index(&["app 1;Depends: lib (>> 3)", "lib 3"]);
        let e = names(&idx, &["app"]).unwrap_err().to_string();
        assert!(
            e.contains("app 1 depends on lib (>> 3), which no package"),
            "{e}"
        );
        // A chosen version that a later dependency rejects is named.
        let idx = index(&[
            "aa 1;Depends: lib (= 1)",
            "bb 1;Depends: lib (>= 2)",
            "lib 2",
            "lib 1",
        ]);
        let e = names(&idx, &["aa", "bb"]).unwrap_err().to_string();
        assert!(e.contains("lib 2 is wanted but lib 1 was chosen"), "{e}");
    }

    #[test]
    fn alternatives_take_the_first_satisfiable() {
        let idx = index(&[
            "app 1;Depends: missing | second | third",
            "second 1",
            "third 1",
        ]);
        assert_eq!(names(&idx, &["app"]).unwrap(), ["app=1", "second=1"]);
        // An alternative already chosen satisfies the group.
        assert_eq!(
            names(&idx, &["third", "app"]).unwrap(),
            ["app=1", "third=1"]
        );
    }

    #[test]
    fn virtual_packages_and_versioned_provides() {
        let idx = index(&[
            "app 1;Depends: mta",
            "zmail 1;Provides: mta",
            "amail 1;Provides: mta",
        ]);
        // No real `mta`: the first provider by name.
        assert_eq!(names(&idx, &["app"]).unwrap(), ["amail=1", "app=1"]);
        // A real package wins over providers.
        let idx = index(&["app 1;Depends: awk", "awk 1", "mawk 1;Provides: awk"]);
        assert_eq!(names(&idx, &["app"]).unwrap(), ["app=1", "awk=1"]);
        // Versioned dependency on a virtual name: only versioned provides count.
        let idx = index(&[
            "app 1;Depends: libx (>= 2)",
            "aold 1;Provides: libx",
            "bnew 1;Provides: libx (= 2.1)",
        ]);
        assert_eq!(names(&idx, &["app"]).unwrap(), ["app=1", "bnew=1"]);
        // A root that is only virtual.
        assert_eq!(names(&idx, &["libx"]).unwrap(), ["aold=1"]);
    }

    #[test]
    fn arch_qualifiers() {
        let idx = index(&[
            "app 1;Depends: py:any, tool:native",
            "py 3;Multi-Arch: allowed",
            "tool 1",
        ]);
        assert_eq!(names(&idx, &["app"]).unwrap(), ["app=1", "py=3", "tool=1"]);
        let idx = index(&["app 1;Depends: tool:any", "tool 1"]);
        assert!(names(&idx, &["app"]).is_err());
        let idx = index(&["app 1;Depends: tool:amd64", "tool 1"]);
        assert!(names(&idx, &["app"]).is_err());
    }

    #[test]
    fn conflicts_and_breaks_steer_alternatives_and_are_errors_otherwise() {
        // The first alternative conflicts with a root: the second is taken.
        let idx = index(&[
            "app 1;Depends: alpha | beta",
            "alpha 1;Conflicts: root",
            "beta 1",
            "root 1",
        ]);
        assert_eq!(
            names(&idx, &["root", "app"]).unwrap(),
            ["app=1", "beta=1", "root=1"]
        );
        // Breaks seen from the other side: root breaks alpha (<< 2).
        let idx = index(&[
            "app 1;Depends: alpha | beta",
            "alpha 1",
            "beta 1",
            "root 1;Breaks: alpha (<< 2)",
        ]);
        assert_eq!(
            names(&idx, &["root", "app"]).unwrap(),
            ["app=1", "beta=1", "root=1"]
        );
        // Two roots that conflict: an error naming both.
        let idx = index(&["one 1;Conflicts: two", "two 1"]);
        let e = names(&idx, &["two", "one"]).unwrap_err().to_string();
        assert!(e.contains("one 1 conflicts with two 1"), "{e}");
        let idx = index(&["one 1;Breaks: vtwo", "two 1;Provides: vtwo"]);
        let e = names(&idx, &["one", "two"]).unwrap_err().to_string();
        assert!(e.contains("two 1 is broken by one 1"), "{e}");
        // Conflicts + Provides of the same name is no conflict with itself.
        let idx = index(&["mawk 1;Provides: awk;Conflicts: awk"]);
        assert_eq!(names(&idx, &["mawk"]).unwrap(), ["mawk=1"]);
    }

    #[test]
    fn essential_packages_are_roots() {
        let idx = index(&["base 1;Essential: yes;Depends: libc", "libc 2", "other 1"]);
        let got: Vec<&str> = resolve(&idx, "arm64", &[], true)
            .unwrap()
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(got, ["base", "libc"]);
    }

    #[test]
    fn unknown_root_is_an_error() {
        let idx = index(&["aa 1"]);
        let e = names(&idx, &["nope"]).unwrap_err().to_string();
        assert!(e.contains("nope is not in the index"), "{e}");
    }
}
