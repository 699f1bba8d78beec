//! Reading what a dynamically linked program needs at run time from its ELF
//! headers, and finding those files in a [`Tree`].
//!
//! [`parse`] reads ELF32/ELF64, little and big endian: the interpreter
//! (`PT_INTERP`), `DT_NEEDED`, `DT_SONAME`, `DT_RUNPATH` and `DT_RPATH`. The
//! dynamic section's string table is found by mapping `DT_STRTAB` (a virtual
//! address) to a file offset through the `PT_LOAD` segments, the way the
//! loader sees it; section headers are never used (they may be stripped).
//! Every offset is bounds-checked: malformed input is an [`ElfError`], never
//! a panic.
//!
//! [`closure`] follows the loader's rules inside a rootfs tree: the program,
//! its interpreter and every library it needs, recursively, each with the
//! path the loader asks for and the canonical (symlink-free) path of the file
//! behind it.

use std::collections::BTreeSet;

use anyhow::{anyhow, bail, Context, Result};

use crate::tree::{self, lookup, Kind, Tree};

/// Why a file's dynamic-linking information could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("truncated ELF file: {0} lies beyond the end of the file")]
    Truncated(&'static str),
    #[error("malformed ELF file: {0}")]
    Malformed(String),
    /// No `PT_DYNAMIC` and no `PT_INTERP`: nothing to load besides the file.
    #[error("statically linked")]
    Static,
}

pub const EM_386: u16 = 3;
pub const EM_ARM: u16 = 40;
pub const EM_X86_64: u16 = 62;
pub const EM_AARCH64: u16 = 183;
pub const EM_RISCV: u16 = 243;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_SONAME: u64 = 14;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// What the loader needs to know about one ELF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    pub is_64: bool,
    pub big_endian: bool,
    /// `e_machine` (`EM_AARCH64`, ...).
    pub machine: u16,
    /// `PT_INTERP`, e.g. `/lib/ld-linux-aarch64.so.1`.
    pub interp: Option<String>,
    /// `DT_NEEDED` names in file order.
    pub needed: Vec<String>,
    pub soname: Option<String>,
    /// `DT_RUNPATH` entries (split at ':'), unexpanded (`$ORIGIN` kept).
    pub runpath: Vec<String>,
    /// `DT_RPATH` entries, unexpanded.
    pub rpath: Vec<String>,
}

/// Bounds-checked reads in the file's byte order.
struct Reader<'a> {
    data: &'a [u8],
    be: bool,
    is_64: bool,
}

impl Reader<'_> {
    fn bytes(&self, off: u64, len: u64, what: &'static str) -> Result<&[u8], ElfError> {
        let end = off.checked_add(len).ok_or(ElfError::Truncated(what))?;
        if end > self.data.len() as u64 {
            return Err(ElfError::Truncated(what));
        }
        Ok(&self.data[off as usize..end as usize])
    }
    fn u16(&self, off: u64, what: &'static str) -> Result<u16, ElfError> {
        let b = self.bytes(off, 2, what)?;
        let a = [b[0], b[1]];
        Ok(if self.be {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        })
    }
    fn u32(&self, off: u64, what: &'static str) -> Result<u32, ElfError> {
        let b = self.bytes(off, 4, what)?;
        let a = [b[0], b[1], b[2], b[3]];
        Ok(if self.be {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        })
    }
    fn u64(&self, off: u64, what: &'static str) -> Result<u64, ElfError> {
        let b = self.bytes(off, 8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(if self.be {
            u64::from_be_bytes(a)
        } else {
            u64::from_le_bytes(a)
        })
    }
    /// A word: 8 bytes in ELF64, 4 in ELF32.
    fn word(&self, off: u64, what: &'static str) -> Result<u64, ElfError> {
        if self.is_64 {
            self.u64(off, what)
        } else {
            self.u32(off, what).map(u64::from)
        }
    }
}

struct Segment {
    typ: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// Reads the dynamic-linking information of an ELF file.
pub fn parse(data: &[u8]) -> Result<ElfInfo, ElfError> {
    if data.len() < 16 || &data[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    let is_64 = match data[4] {
        1 => false,
        2 => true,
        c => return Err(ElfError::Malformed(format!("unknown ELF class {c}"))),
    };
    let be = match data[5] {
        1 => false,
        2 => true,
        d => return Err(ElfError::Malformed(format!("unknown ELF byte order {d}"))),
    };
    let r = Reader { data, be, is_64 };
    let machine = r.u16(18, "the ELF header")?;
    // e_phoff, e_phentsize, e_phnum.
    let (phoff, phentsize, phnum) = if is_64 {
        (
            r.u64(32, "the ELF header")?,
            r.u16(54, "the ELF header")?,
            r.u16(56, "the ELF header")?,
        )
    } else {
        (
            u64::from(r.u32(28, "the ELF header")?),
            r.u16(42, "the ELF header")?,
            r.u16(44, "the ELF header")?,
        )
    };
    let min_entsize = if is_64 { 56 } else { 32 };
    if phnum > 0 && u64::from(phentsize) < min_entsize {
        return Err(ElfError::Malformed(format!(
            "program header entries of {phentsize} bytes"
        )));
    }
    if phnum == 0xffff {
        return Err(ElfError::Malformed(
            "more than 65534 program headers (PN_XNUM) are not supported".into(),
        ));
    }
    // The whole table inside the file before anything is allocated for it.
    let table_len = u64::from(phnum) * u64::from(phentsize); // < 2^32
    let table = match phnum {
        0 => &[][..],
        _ => r.bytes(phoff, table_len, "the program headers")?,
    };
    let mut segs = Vec::with_capacity(usize::from(phnum));
    for raw in table.chunks_exact(usize::from(phentsize).max(1)) {
        // Offsets below are constants inside an entry of >= min_entsize bytes.
        let e = Reader {
            data: raw,
            be,
            is_64,
        };
        let what = "the program headers";
        let seg = if is_64 {
            Segment {
                typ: e.u32(0, what)?,
                offset: e.u64(8, what)?,
                vaddr: e.u64(16, what)?,
                filesz: e.u64(32, what)?,
            }
        } else {
            Segment {
                typ: e.u32(0, what)?,
                offset: u64::from(e.u32(4, what)?),
                vaddr: u64::from(e.u32(8, what)?),
                filesz: u64::from(e.u32(16, what)?),
            }
        };
        segs.push(seg);
    }

    let interp = match segs.iter().find(|s| s.typ == PT_INTERP) {
        Some(s) => {
            let raw = r.bytes(s.offset, s.filesz, "the interpreter (PT_INTERP)")?;
            let raw = raw.split(|&b| b == 0).next().unwrap_or_default();
            Some(text(raw, "the interpreter path")?)
        }
        None => None,
    };
    let Some(dynamic) = segs.iter().find(|s| s.typ == PT_DYNAMIC) else {
        return match interp {
            None => Err(ElfError::Static),
            Some(_) => Err(ElfError::Malformed(
                "PT_INTERP without a dynamic section".into(),
            )),
        };
    };

    // The dynamic section: (tag, value) pairs up to DT_NULL.
    let entsize = if is_64 { 16 } else { 8 };
    let section = Reader {
        data: r.bytes(dynamic.offset, dynamic.filesz, "the dynamic section")?,
        be,
        is_64,
    };
    // At most one entry per `entsize` bytes of the file.
    let mut entries = Vec::new();
    for raw in section.data.chunks_exact(entsize) {
        let e = Reader {
            data: raw,
            be,
            is_64,
        };
        let tag = e.word(0, "the dynamic section")?;
        let val = e.word(entsize as u64 / 2, "the dynamic section")?;
        if tag == DT_NULL {
            break;
        }
        entries.push((tag, val));
    }
    let find = |t: u64| entries.iter().find(|(tag, _)| *tag == t).map(|(_, v)| *v);
    let strtab_addr = find(DT_STRTAB).ok_or_else(|| ElfError::Malformed("no DT_STRTAB".into()))?;
    let strtab = segs
        .iter()
        .filter(|s| s.typ == PT_LOAD)
        .find(|s| strtab_addr >= s.vaddr && strtab_addr - s.vaddr < s.filesz)
        .ok_or_else(|| {
            ElfError::Malformed(format!(
                "DT_STRTAB {strtab_addr:#x} is in no PT_LOAD segment"
            ))
        })
        // p_offset is as untrusted as the rest: the sum may not fit.
        .and_then(|s| {
            s.offset
                .checked_add(strtab_addr - s.vaddr)
                .ok_or(ElfError::Truncated("the string table"))
        })?;
    // The table ends at DT_STRSZ when given, else at the end of the file.
    let strtab_end = match find(DT_STRSZ) {
        Some(sz) => strtab
            .checked_add(sz)
            .ok_or(ElfError::Truncated("the string table"))?,
        None => data.len() as u64,
    };
    if strtab_end > data.len() as u64 {
        return Err(ElfError::Truncated("the string table"));
    }
    let string = |idx: u64| -> Result<String, ElfError> {
        let start = strtab
            .checked_add(idx)
            .filter(|s| *s < strtab_end)
            .ok_or_else(|| {
                ElfError::Malformed(format!("string offset {idx} beyond the string table"))
            })?;
        let tail = &data[start as usize..strtab_end as usize];
        let len = tail
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| ElfError::Malformed("unterminated string in the string table".into()))?;
        text(&tail[..len], "a dynamic string")
    };
    let split = |s: String| -> Vec<String> {
        s.split(':')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut info = ElfInfo {
        is_64,
        big_endian: be,
        machine,
        interp,
        needed: Vec::new(),
        soname: None,
        runpath: Vec::new(),
        rpath: Vec::new(),
    };
    for &(tag, val) in &entries {
        match tag {
            DT_NEEDED => info.needed.push(string(val)?),
            DT_SONAME => info.soname = Some(string(val)?),
            DT_RUNPATH => info.runpath.extend(split(string(val)?)),
            DT_RPATH => info.rpath.extend(split(string(val)?)),
            _ => {}
        }
    }
    Ok(info)
}

fn text(raw: &[u8], what: &str) -> Result<String, ElfError> {
    String::from_utf8(raw.to_vec()).map_err(|_| ElfError::Malformed(format!("{what} is not UTF-8")))
}

/// How the loader reaches a file of the closure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The program asked for.
    Program,
    /// Its `PT_INTERP`.
    Interpreter,
    /// A `DT_RUNPATH` or `DT_RPATH` directory.
    RunPath,
    /// A directory from `/etc/ld.so.conf` (glibc, through `/etc/ld.so.cache`)
    /// or from musl's `/etc/ld-musl-<arch>.path`.
    Config,
    /// One of the loader's built-in directories.
    Default,
}

/// One file a program needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needed {
    /// The absolute path the loader opens (`/lib/ld-linux-aarch64.so.1`,
    /// `/usr/lib/aarch64-linux-gnu/libc.so.6`); it may go through symlinks.
    pub requested: String,
    /// The canonical absolute path of the regular file behind it.
    pub resolved: String,
    pub via: Via,
}

/// Which loader a program uses, with the directories it searches by itself.
#[derive(Debug)]
struct Loader {
    musl: bool,
    /// Searched after RUNPATH/RPATH: ld.so.conf (glibc) or the musl path file.
    config: Vec<String>,
    /// Built-in directories.
    defaults: Vec<String>,
}

fn triplet(machine: u16, is_64: bool) -> Option<&'static str> {
    match (machine, is_64) {
        (EM_AARCH64, true) => Some("aarch64-linux-gnu"),
        (EM_ARM, false) => Some("arm-linux-gnueabihf"),
        (EM_X86_64, true) => Some("x86_64-linux-gnu"),
        (EM_386, false) => Some("i386-linux-gnu"),
        (EM_RISCV, true) => Some("riscv64-linux-gnu"),
        _ => None,
    }
}

/// A regular file's canonical path and bytes (`None` when it is missing or
/// cannot be read).
fn file_data(tree: &Tree, abs: &str) -> Option<(String, Vec<u8>)> {
    let canon = lookup::resolve(tree, abs)?;
    match &tree.get(canon.trim_start_matches('/'))?.kind {
        Kind::File(d) => Some((canon, d.to_vec().ok()?)),
        _ => None,
    }
}

fn file_text(tree: &Tree, abs: &str) -> Option<String> {
    file_data(tree, abs).and_then(|(_, d)| String::from_utf8(d).ok())
}

/// Directories listed in `/etc/ld.so.conf`, following `include` lines (glob
/// patterns, relative ones from `/etc`), at most 8 levels deep.
fn ld_so_conf(tree: &Tree, file: &str, depth: usize, out: &mut Vec<String>) {
    if depth > 8 {
        return;
    }
    let Some(text) = file_text(tree, file) else {
        return;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if let Some(pat) = line.strip_prefix("include") {
            let pat = pat.trim();
            let pat = if pat.starts_with('/') {
                pat.to_string()
            } else {
                format!("/etc/{pat}")
            };
            for f in lookup::glob(tree, &pat) {
                ld_so_conf(tree, &f, depth + 1, out);
            }
        } else if line.starts_with('/') {
            // Old syntax allowed "dir=TYPE" and separators; take the path.
            let dir = line
                .split(['=', ' ', '\t', ',', ':'])
                .next()
                .unwrap_or(line);
            out.push(dir.trim_end_matches('/').to_string());
        }
    }
}

impl Loader {
    fn for_program(tree: &Tree, info: &ElfInfo, interp: &str) -> Loader {
        let name = tree::file_name(interp);
        if let Some(arch) = name
            .strip_prefix("ld-musl-")
            .and_then(|s| s.strip_suffix(".so.1"))
        {
            // musl: the path file replaces the defaults when present.
            let path_file = format!("/etc/ld-musl-{arch}.path");
            let config: Vec<String> = file_text(tree, &path_file)
                .map(|t| {
                    t.split(['\n', ':'])
                        .map(str::trim)
                        .filter(|d| d.starts_with('/'))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            let defaults = if config.is_empty() {
                vec!["/lib".into(), "/usr/local/lib".into(), "/usr/lib".into()]
            } else {
                Vec::new()
            };
            return Loader {
                musl: true,
                config,
                defaults,
            };
        }
        let mut config = Vec::new();
        ld_so_conf(tree, "/etc/ld.so.conf", 0, &mut config);
        if config.is_empty() {
            // Debian ships only the .d directory on some minimal systems.
            for f in lookup::glob(tree, "/etc/ld.so.conf.d/*.conf") {
                ld_so_conf(tree, &f, 1, &mut config);
            }
        }
        let interp_dir = tree::parent(interp.trim_start_matches('/'));
        let mut defaults = Vec::new();
        // The triplet from the interpreter's directory (/lib/aarch64-linux-gnu/ld-...)
        // or else from the machine.
        let trip = tree::file_name(interp_dir)
            .contains("-linux-")
            .then(|| tree::file_name(interp_dir).to_string())
            .or_else(|| triplet(info.machine, info.is_64).map(str::to_string));
        if let Some(t) = trip {
            defaults.push(format!("/lib/{t}"));
            defaults.push(format!("/usr/lib/{t}"));
        }
        if interp_dir.ends_with("lib64") {
            defaults.push("/lib64".into());
            defaults.push("/usr/lib64".into());
        }
        defaults.push("/lib".into());
        defaults.push("/usr/lib".into());
        Loader {
            musl: false,
            config,
            defaults,
        }
    }

    /// Names musl's libc answers itself (its ldso is also libc, libpthread, ...).
    fn is_builtin(&self, name: &str) -> bool {
        if !self.musl {
            return false;
        }
        let stem = name.split(".so").next().unwrap_or(name);
        name.contains(".so")
            && matches!(
                stem,
                "libc" | "libpthread" | "librt" | "libm" | "libdl" | "libutil" | "libxnet"
            )
    }
}

/// Expands `$ORIGIN` in a RUNPATH/RPATH entry; `None` for entries the loader
/// would not use from a fixed place (relative paths, `$LIB`, `$PLATFORM`).
fn expand(entry: &str, origin: &str) -> Option<String> {
    let e = entry
        .replace("${ORIGIN}", origin)
        .replace("$ORIGIN", origin);
    (e.starts_with('/') && !e.contains('$')).then(|| e.trim_end_matches('/').to_string())
}

/// The program, its interpreter and every library it needs, recursively, in
/// the order the loader meets them (each requested path once).
///
/// `program` is an absolute path in `tree`. Libraries are searched the way
/// the loader does: the object's `DT_RPATH` (and the program's) when it has no
/// `DT_RUNPATH`, then `DT_RUNPATH`, then `/etc/ld.so.conf` directories, then
/// the built-in directories: `/lib/<triplet>`, `/usr/lib/<triplet>`, `/lib`,
/// `/usr/lib` for glibc (the triplet from the interpreter's directory or
/// `e_machine`), `/lib`, `/usr/local/lib`, `/usr/lib` for musl (or its
/// `/etc/ld-musl-<arch>.path`). A name already loaded (by `DT_SONAME` or file
/// name, the interpreter included) is not searched again; musl's libc names
/// are the interpreter itself. Files of another ELF class or machine are
/// skipped, as the loader does. A statically linked program is returned
/// alone. A library found nowhere is an error naming the program and it.
pub fn closure(tree: &Tree, program: &str) -> Result<Vec<Needed>> {
    let (prog_canon, data) = file_data(tree, program)
        .ok_or_else(|| anyhow!("{program}: not found in the rootfs (or not a regular file)"))?;
    let mut out = vec![Needed {
        requested: program.to_string(),
        resolved: prog_canon.clone(),
        via: Via::Program,
    }];
    let info = match parse(&data) {
        Ok(i) => i,
        Err(ElfError::Static) => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {program}")),
    };
    let Some(interp) = info.interp.clone() else {
        // Static PIE: it relocates itself.
        if info.needed.is_empty() {
            return Ok(out);
        }
        bail!("{program}: needs libraries but names no interpreter (PT_INTERP)");
    };
    if !interp.starts_with('/') {
        bail!("{program}: interpreter {interp:?} is not an absolute path");
    }
    let (interp_canon, interp_data) = file_data(tree, &interp)
        .ok_or_else(|| anyhow!("{program}: its interpreter {interp} is not in the rootfs"))?;
    let loader = Loader::for_program(tree, &info, &interp);
    out.push(Needed {
        requested: interp.clone(),
        resolved: interp_canon.clone(),
        via: Via::Interpreter,
    });
    // Names already loaded: the loader matches DT_NEEDED against these.
    let mut loaded: BTreeSet<String> = BTreeSet::new();
    loaded.insert(tree::file_name(&interp).to_string());
    if let Ok(i) = parse(&interp_data) {
        loaded.extend(i.soname);
    }
    let mut seen_files: BTreeSet<String> = BTreeSet::from([prog_canon.clone(), interp_canon]);
    // The program's RPATH applies to every object without a RUNPATH (glibc).
    let prog_origin = tree::parent(&prog_canon).to_string();
    let prog_rpath: Vec<String> = if info.runpath.is_empty() {
        info.rpath
            .iter()
            .filter_map(|e| expand(e, &prog_origin))
            .collect()
    } else {
        Vec::new()
    };
    // Breadth first, like the loader.
    let mut queue = vec![(program.to_string(), prog_origin, info)];
    let mut next = 0;
    while next < queue.len() {
        let (obj, origin, oi) = queue[next].clone();
        next += 1;
        let mut dirs: Vec<(String, Via)> = Vec::new();
        if oi.runpath.is_empty() {
            for e in oi.rpath.iter().filter_map(|e| expand(e, &origin)) {
                dirs.push((e, Via::RunPath));
            }
            for e in &prog_rpath {
                dirs.push((e.clone(), Via::RunPath));
            }
        }
        for e in oi.runpath.iter().filter_map(|e| expand(e, &origin)) {
            dirs.push((e, Via::RunPath));
        }
        dirs.extend(loader.config.iter().map(|d| (d.clone(), Via::Config)));
        dirs.extend(loader.defaults.iter().map(|d| (d.clone(), Via::Default)));
        for name in &oi.needed {
            if loaded.contains(name) || loader.is_builtin(name) {
                continue;
            }
            let found = search(tree, name, &dirs, &info_key(&oi), &loader);
            let Some((requested, resolved, via, li)) = found else {
                bail!(
                    "{program}: library {name} (needed by {obj}) is not in the rootfs; searched {}",
                    dirs.iter()
                        .map(|(d, _)| d.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            loaded.insert(name.clone());
            if let Some(s) = &li.soname {
                loaded.insert(s.clone());
            }
            out.push(Needed {
                requested: requested.clone(),
                resolved: resolved.clone(),
                via,
            });
            if seen_files.insert(resolved) {
                let lib_origin = tree::parent(&requested).to_string();
                queue.push((requested, lib_origin, li));
            }
        }
    }
    Ok(out)
}

fn info_key(i: &ElfInfo) -> (bool, bool, u16) {
    (i.is_64, i.big_endian, i.machine)
}

/// The first `dir/name` that is an ELF file of the program's kind. For the
/// loader's own directories the path is taken in the canonical directory when
/// that is also one of them (`/lib/aarch64-linux-gnu` -> `/usr/lib/...` in a
/// usr-merged rootfs), so that copies need no directory symlinks.
fn search(
    tree: &Tree,
    name: &str,
    dirs: &[(String, Via)],
    kind: &(bool, bool, u16),
    loader: &Loader,
) -> Option<(String, String, Via, ElfInfo)> {
    if name.contains('/') {
        // A path in DT_NEEDED is used as is.
        let (canon, data) = file_data(tree, name)?;
        let info = parse(&data).ok()?;
        return Some((name.to_string(), canon, Via::RunPath, info));
    }
    let own: Vec<&String> = loader.config.iter().chain(&loader.defaults).collect();
    for (dir, via) in dirs {
        let candidate = format!("{dir}/{name}");
        let Some((canon, data)) = file_data(tree, &candidate) else {
            continue;
        };
        let Ok(info) = parse(&data) else { continue };
        if info_key(&info) != *kind {
            continue;
        }
        let cdir = lookup::resolve(tree, dir);
        let requested = match (via, &cdir) {
            (Via::Config | Via::Default, Some(cdir)) if own.contains(&cdir) => {
                format!("{cdir}/{name}")
            }
            _ => candidate,
        };
        // An ld.so.conf directory that the loader also searches by itself
        // needs no cache.
        let builtin = |d: &String| loader.defaults.contains(d);
        let via = match via {
            Via::Config if builtin(dir) || cdir.as_ref().is_some_and(builtin) => Via::Default,
            v => *v,
        };
        return Some((requested, canon, via, info));
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tree::{Entry, Meta};

    /// A minimal dynamic ELF: header, PT_LOAD over the whole file, PT_INTERP,
    /// PT_DYNAMIC, a string table and a dynamic section.
    pub(crate) fn synth(
        is_64: bool,
        be: bool,
        machine: u16,
        interp: &str,
        dynamic: &[(u64, &str)],
    ) -> Vec<u8> {
        let (ehsize, phentsize) = if is_64 { (64u64, 56u64) } else { (52, 32) };
        let vbase = 0x10000u64;
        let phoff = ehsize;
        let interp_off = phoff + 3 * phentsize;
        let mut strtab = vec![0u8];
        let mut dyn_entries: Vec<(u64, u64)> = Vec::new();
        for (tag, s) in dynamic {
            dyn_entries.push((*tag, strtab.len() as u64));
            strtab.extend_from_slice(s.as_bytes());
            strtab.push(0);
        }
        let strtab_off = interp_off + interp.len() as u64 + 1;
        dyn_entries.push((DT_STRTAB, vbase + strtab_off));
        dyn_entries.push((DT_STRSZ, strtab.len() as u64));
        dyn_entries.push((DT_NULL, 0));
        let dyn_off = strtab_off + strtab.len() as u64;
        let dyn_ent = if is_64 { 16 } else { 8 };
        let total = dyn_off + dyn_ent * dyn_entries.len() as u64;

        let mut f = Vec::new();
        let w16 = |f: &mut Vec<u8>, v: u16| {
            f.extend_from_slice(&if be { v.to_be_bytes() } else { v.to_le_bytes() })
        };
        let w32 = |f: &mut Vec<u8>, v: u32| {
            f.extend_from_slice(&if be { v.to_be_bytes() } else { v.to_le_bytes() })
        };
        let w64 = |f: &mut Vec<u8>, v: u64| {
            f.extend_from_slice(&if be { v.to_be_bytes() } else { v.to_le_bytes() })
        };
        let word = |f: &mut Vec<u8>, v: u64| {
            if is_64 {
                w64(f, v)
            } else {
                w32(f, v as u32)
            }
        };
        f.extend_from_slice(b"\x7fELF");
        f.push(if is_64 { 2 } else { 1 });
        f.push(if be { 2 } else { 1 });
        f.push(1);
        f.extend_from_slice(&[0; 9]);
        w16(&mut f, 3); // ET_DYN
        w16(&mut f, machine);
        w32(&mut f, 1);
        word(&mut f, vbase); // e_entry
        word(&mut f, phoff);
        word(&mut f, 0); // e_shoff
        w32(&mut f, 0); // e_flags
        w16(&mut f, ehsize as u16);
        w16(&mut f, phentsize as u16);
        w16(&mut f, 3);
        w16(&mut f, 0);
        w16(&mut f, 0);
        w16(&mut f, 0);
        assert_eq!(f.len() as u64, ehsize);
        let ph = |f: &mut Vec<u8>, typ: u32, off: u64, size: u64| {
            if is_64 {
                w32(f, typ);
                w32(f, 4);
                w64(f, off);
                w64(f, vbase + off);
                w64(f, vbase + off);
                w64(f, size);
                w64(f, size);
                w64(f, 8);
            } else {
                w32(f, typ);
                w32(f, off as u32);
                w32(f, (vbase + off) as u32);
                w32(f, (vbase + off) as u32);
                w32(f, size as u32);
                w32(f, size as u32);
                w32(f, 4);
                w32(f, 4);
            }
        };
        ph(&mut f, PT_LOAD, 0, total);
        ph(&mut f, PT_INTERP, interp_off, interp.len() as u64 + 1);
        ph(&mut f, PT_DYNAMIC, dyn_off, total - dyn_off);
        f.extend_from_slice(interp.as_bytes());
        f.push(0);
        f.extend_from_slice(&strtab);
        for (t, v) in dyn_entries {
            word(&mut f, t);
            word(&mut f, v);
        }
        assert_eq!(f.len() as u64, total);
        f
    }

    pub(crate) fn aarch64(dynamic: &[(u64, &str)]) -> Vec<u8> {
        synth(
            true,
            false,
            EM_AARCH64,
            "/lib/ld-linux-aarch64.so.1",
            dynamic,
        )
    }

    #[test]
    fn reads_all_four_layouts() {
        for (is_64, be) in [(true, false), (true, true), (false, false), (false, true)] {
            let bin = synth(
                is_64,
                be,
                EM_ARM,
                "/lib/ld-linux-armhf.so.3",
                &[
                    (DT_NEEDED, "libfoo.so.1"),
                    (DT_RUNPATH, "$ORIGIN/../lib:/opt/x"),
                    (DT_NEEDED, "libc.so.6"),
                    (DT_SONAME, "libme.so.2"),
                    (DT_RPATH, "/old"),
                ],
            );
            let i = parse(&bin).unwrap();
            assert_eq!((i.is_64, i.big_endian, i.machine), (is_64, be, EM_ARM));
            assert_eq!(i.interp.as_deref(), Some("/lib/ld-linux-armhf.so.3"));
            assert_eq!(i.needed, ["libfoo.so.1", "libc.so.6"]);
            assert_eq!(i.runpath, ["$ORIGIN/../lib", "/opt/x"]);
            assert_eq!(i.rpath, ["/old"]);
            assert_eq!(i.soname.as_deref(), Some("libme.so.2"));
        }
    }

    #[test]
    fn reads_the_hosts_own_programs() {
        // Whatever the host is, its coreutils are dynamically linked ELF.
        let Ok(data) = std::fs::read("/bin/true") else {
            return;
        };
        let i = parse(&data).unwrap();
        let interp = i.interp.expect("/bin/true has an interpreter");
        assert!(
            interp.starts_with('/') && interp.contains("ld-"),
            "{interp}"
        );
        assert!(
            i.needed.iter().any(|n| n.starts_with("libc.")),
            "{:?}",
            i.needed
        );
        #[cfg(target_arch = "x86_64")]
        assert_eq!((i.is_64, i.big_endian, i.machine), (true, false, EM_X86_64));
    }

    #[test]
    fn not_elf_static_and_truncated_are_told_apart() {
        assert_eq!(parse(b"#!/bin/sh\necho hi\n"), Err(ElfError::NotElf));
        assert_eq!(parse(b""), Err(ElfError::NotElf));
        // Header only, no program headers: nothing dynamic.
        let bin = aarch64(&[(DT_NEEDED, "libc.so.6")]);
        let mut stat = bin[..64].to_vec();
        stat[56] = 0; // e_phnum = 0
        assert_eq!(parse(&stat), Err(ElfError::Static));
        let err = parse(&bin[..100]).unwrap_err();
        assert!(matches!(err, ElfError::Truncated(_)), "{err:?}");
    }

    #[test]
    fn every_truncation_and_garbage_is_an_error_not_a_panic() {
        let bin = aarch64(&[(DT_NEEDED, "libc.so.6"), (DT_RUNPATH, "/x")]);
        for n in 0..bin.len() {
            assert!(parse(&bin[..n]).is_err(), "truncated at {n} parsed");
        }
        // Flip every byte to a few values: whatever comes out, no panic.
        for i in 0..bin.len() {
            for v in [0x00, 0xff, 0x7f, 0x80, 0x01] {
                let mut b = bin.clone();
                b[i] = v;
                let _ = parse(&b);
            }
        }
        // Deterministic pseudo-random garbage behind a valid magic.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..2000 {
            let mut b = b"\x7fELF".to_vec();
            for _ in 0..(x % 300) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.push(x as u8);
            }
            let _ = parse(&b);
        }
    }

    #[test]
    fn huge_offsets_do_not_overflow() {
        let mut bin = aarch64(&[(DT_NEEDED, "libc.so.6")]);
        bin[32..40].copy_from_slice(&u64::MAX.to_le_bytes()); // e_phoff
        assert!(matches!(parse(&bin), Err(ElfError::Truncated(_))));
    }

    #[test]
    fn a_load_segment_offset_near_the_top_does_not_wrap() {
        // PT_LOAD is the first program header (at 64); p_offset at +8. The
        // string table's file offset, p_offset + (DT_STRTAB - p_vaddr), does
        // not fit 64 bits: an error, not a wrapped offset or a panic.
        let mut bin = aarch64(&[(DT_NEEDED, "libc.so.6")]);
        bin[72..80].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
        assert_eq!(parse(&bin), Err(ElfError::Truncated("the string table")));
        // A program header table claiming more entries than the file holds.
        let mut bin = aarch64(&[(DT_NEEDED, "libc.so.6")]);
        bin[56..58].copy_from_slice(&0xfffeu16.to_le_bytes());
        assert_eq!(parse(&bin), Err(ElfError::Truncated("the program headers")));
    }

    fn m(mode: u32) -> Meta {
        Meta::root(mode, 1)
    }

    fn put(t: &mut Tree, p: &str, data: Vec<u8>) {
        t.insert_with_parents(p, Entry::file(m(0o755), data), m(0o755))
            .unwrap();
    }

    fn link(t: &mut Tree, p: &str, target: &str) {
        t.insert_with_parents(p, Entry::symlink(m(0o777), target), m(0o755))
            .unwrap();
    }

    /// A Debian-like usr-merged aarch64 rootfs.
    pub(crate) fn debian() -> Tree {
        let mut t = Tree::new(m(0o755));
        link(&mut t, "lib", "usr/lib");
        link(&mut t, "sbin", "usr/sbin");
        let lib = "usr/lib/aarch64-linux-gnu";
        put(
            &mut t,
            &format!("{lib}/ld-linux-aarch64.so.1"),
            aarch64(&[(DT_SONAME, "ld-linux-aarch64.so.1")]),
        );
        link(
            &mut t,
            "usr/lib/ld-linux-aarch64.so.1",
            "aarch64-linux-gnu/ld-linux-aarch64.so.1",
        );
        put(
            &mut t,
            &format!("{lib}/libc.so.6"),
            aarch64(&[
                (DT_NEEDED, "ld-linux-aarch64.so.1"),
                (DT_SONAME, "libc.so.6"),
            ]),
        );
        put(
            &mut t,
            &format!("{lib}/libfdisk.so.1.1.0"),
            aarch64(&[(DT_NEEDED, "libblkid.so.1"), (DT_NEEDED, "libc.so.6")]),
        );
        link(&mut t, &format!("{lib}/libfdisk.so.1"), "libfdisk.so.1.1.0");
        put(
            &mut t,
            &format!("{lib}/libblkid.so.1"),
            aarch64(&[(DT_NEEDED, "libc.so.6")]),
        );
        put(
            &mut t,
            "usr/sbin/sfdisk",
            aarch64(&[(DT_NEEDED, "libfdisk.so.1"), (DT_NEEDED, "libc.so.6")]),
        );
        t
    }

    #[test]
    fn closure_follows_debian_symlinks_and_recurses() {
        let t = debian();
        let c = closure(&t, "/sbin/sfdisk").unwrap();
        let got: Vec<(&str, &str, Via)> = c
            .iter()
            .map(|n| (n.requested.as_str(), n.resolved.as_str(), n.via))
            .collect();
        let lib = "/usr/lib/aarch64-linux-gnu";
        assert_eq!(
            got,
            [
                ("/sbin/sfdisk", "/usr/sbin/sfdisk", Via::Program),
                (
                    "/lib/ld-linux-aarch64.so.1",
                    &format!("{lib}/ld-linux-aarch64.so.1")[..],
                    Via::Interpreter
                ),
                (
                    &format!("{lib}/libfdisk.so.1")[..],
                    &format!("{lib}/libfdisk.so.1.1.0")[..],
                    Via::Default
                ),
                (
                    &format!("{lib}/libc.so.6")[..],
                    &format!("{lib}/libc.so.6")[..],
                    Via::Default
                ),
                (
                    &format!("{lib}/libblkid.so.1")[..],
                    &format!("{lib}/libblkid.so.1")[..],
                    Via::Default
                ),
            ]
        );
    }

    #[test]
    fn missing_library_is_an_error_naming_program_and_library() {
        let mut t = debian();
        t.remove("usr/lib/aarch64-linux-gnu/libblkid.so.1");
        let err = format!("{:#}", closure(&t, "/sbin/sfdisk").unwrap_err());
        assert!(err.contains("/sbin/sfdisk"), "{err}");
        assert!(err.contains("libblkid.so.1"), "{err}");
        assert!(
            err.contains("needed by /usr/lib/aarch64-linux-gnu/libfdisk.so.1"),
            "{err}"
        );
    }

    #[test]
    fn runpath_with_origin_comes_first_and_wrong_machine_is_skipped() {
        let mut t = debian();
        put(
            &mut t,
            "opt/app/bin/tool",
            aarch64(&[(DT_NEEDED, "libapp.so"), (DT_RUNPATH, "$ORIGIN/../lib")]),
        );
        put(
            &mut t,
            "opt/app/lib/libapp.so",
            aarch64(&[(DT_NEEDED, "libc.so.6")]),
        );
        // An x86_64 libc earlier in the search path is skipped.
        let x86 = synth(true, false, EM_X86_64, "/lib64/ld-linux-x86-64.so.2", &[]);
        put(&mut t, "opt/app/lib/libc.so.6", x86);
        let c = closure(&t, "/opt/app/bin/tool").unwrap();
        let libapp = c
            .iter()
            .find(|n| n.requested.ends_with("libapp.so"))
            .unwrap();
        assert_eq!(libapp.requested, "/opt/app/bin/../lib/libapp.so");
        assert_eq!(libapp.resolved, "/opt/app/lib/libapp.so");
        assert_eq!(libapp.via, Via::RunPath);
        let libc = c
            .iter()
            .find(|n| n.requested.ends_with("libc.so.6"))
            .unwrap();
        assert_eq!(libc.resolved, "/usr/lib/aarch64-linux-gnu/libc.so.6");
    }

    #[test]
    fn musl_libc_is_the_interpreter() {
        let mut t = Tree::new(m(0o755));
        let musl =
            |d: &[(u64, &str)]| synth(true, false, EM_AARCH64, "/lib/ld-musl-aarch64.so.1", d);
        put(
            &mut t,
            "lib/ld-musl-aarch64.so.1",
            musl(&[(DT_SONAME, "libc.musl-aarch64.so.1")]),
        );
        link(&mut t, "lib/libc.musl-aarch64.so.1", "ld-musl-aarch64.so.1");
        put(
            &mut t,
            "usr/lib/libfdisk.so.1",
            musl(&[(DT_NEEDED, "libc.musl-aarch64.so.1")]),
        );
        put(
            &mut t,
            "sbin/sfdisk",
            musl(&[
                (DT_NEEDED, "libfdisk.so.1"),
                (DT_NEEDED, "libc.so"),
                (DT_NEEDED, "libc.musl-aarch64.so.1"),
            ]),
        );
        let c = closure(&t, "/sbin/sfdisk").unwrap();
        let req: Vec<&str> = c.iter().map(|n| n.requested.as_str()).collect();
        assert_eq!(
            req,
            [
                "/sbin/sfdisk",
                "/lib/ld-musl-aarch64.so.1",
                "/usr/lib/libfdisk.so.1"
            ]
        );
    }

    #[test]
    fn static_program_is_alone_and_scripts_are_refused() {
        let mut t = debian();
        let bin = aarch64(&[]);
        let mut stat = bin[..64].to_vec();
        stat[56] = 0;
        put(&mut t, "usr/bin/busybox", stat);
        let c = closure(&t, "/usr/bin/busybox").unwrap();
        assert_eq!(c.len(), 1);
        put(&mut t, "usr/bin/script", b"#!/bin/sh\n".to_vec());
        let err = format!("{:#}", closure(&t, "/usr/bin/script").unwrap_err());
        assert!(
            err.contains("/usr/bin/script") && err.contains("not an ELF file"),
            "{err}"
        );
        let err = closure(&t, "/usr/bin/none").unwrap_err().to_string();
        assert!(err.contains("/usr/bin/none"), "{err}");
    }

    #[test]
    fn ld_so_conf_directories_are_searched_with_includes() {
        let mut t = debian();
        put(
            &mut t,
            "etc/ld.so.conf",
            b"include /etc/ld.so.conf.d/*.conf\n".to_vec(),
        );
        put(
            &mut t,
            "etc/ld.so.conf.d/local.conf",
            b"# x\n/opt/local/lib\n".to_vec(),
        );
        put(
            &mut t,
            "etc/ld.so.conf.d/aarch64-linux-gnu.conf",
            b"/lib/aarch64-linux-gnu\n".to_vec(),
        );
        // Only there (ld.so.conf.d/*.conf are read in name order).
        t.remove("usr/lib/aarch64-linux-gnu/libblkid.so.1");
        put(&mut t, "opt/local/lib/libblkid.so.1", aarch64(&[]));
        let c = closure(&t, "/sbin/sfdisk").unwrap();
        let b = c
            .iter()
            .find(|n| n.requested.ends_with("libblkid.so.1"))
            .unwrap();
        assert_eq!(
            (b.requested.as_str(), b.via),
            ("/opt/local/lib/libblkid.so.1", Via::Config)
        );
        // Found through ld.so.conf, but in a directory the loader knows anyway.
        let f = c
            .iter()
            .find(|n| n.requested.ends_with("libfdisk.so.1"))
            .unwrap();
        assert_eq!(
            (f.requested.as_str(), f.via),
            ("/usr/lib/aarch64-linux-gnu/libfdisk.so.1", Via::Default)
        );
    }
}
