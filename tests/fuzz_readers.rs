//! Property tests over arbitrary bytes for the readers of untrusted input:
//! partition tables (`disk::read`), tar archives plain and compressed
//! (`tree::reader::read_tar`), ELF (`elf::parse`) and cluster.yaml
//! (`join::load_str`), Android boot and sparse images (`android::bootimg::parse`,
//! `android::sparse::parse`).
//!
//! Each starts from valid inputs (tables our writers make, a tar with every
//! entry kind, small ELFs of both classes and byte orders and the host's
//! `/bin/ls`, cluster.yaml files like the unit tests')
//! and mutates them with a small deterministic mutator (stable Rust, no extra
//! crates), so that most cases get past the first checks. For every case:
//! no panic, and an error's message (with its context chain) is one line.
//! Where a reader accepts a mutated input, what it returns is checked too
//! (partitions inside the file and disjoint; no token in an error).
//!
//! Bounded by default (a few seconds per target under `--release`). Longer:
//! `NODEIMG_FUZZ_CASES=200000 cargo test --release --test fuzz_readers`,
//! with `NODEIMG_FUZZ_SEED=<n>` for other mutations. A failing input is saved
//! under `target/tmp/fuzz-failures/` and its path printed.

use std::io::{Cursor, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

mod common;

use nodeimg::disk::layout::{PartKind, Placed};
use nodeimg::disk::{mbr, read};

// ---------------------------------------------------------------------------
// The mutator

/// xorshift64*: deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// In `0..n` (0 when n is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.next() % one_in == 0
    }
}

fn cases() -> usize {
    std::env::var("NODEIMG_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn base_seed() -> u64 {
    std::env::var("NODEIMG_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
    u64::MAX - 1,
];

/// Where mutations land: half of them inside `hot` (the headers), when given.
struct Mutator<'a> {
    rng: Rng,
    hot: std::ops::Range<usize>,
    /// Byte strings worth inserting or overwriting with (format tokens).
    dict: &'a [&'a [u8]],
}

impl Mutator<'_> {
    fn offset(&mut self, len: usize) -> usize {
        if len == 0 {
            return 0;
        }
        let hot_end = self.hot.end.min(len);
        if self.hot.start < hot_end && self.rng.chance(2) {
            self.hot.start + self.rng.below(hot_end - self.hot.start)
        } else {
            self.rng.below(len)
        }
    }

    /// One to four mutations of `data`.
    fn mutate(&mut self, data: &mut Vec<u8>) {
        let n = 1 + self.rng.below(4);
        for _ in 0..n {
            self.one(data);
        }
    }

    fn one(&mut self, d: &mut Vec<u8>) {
        let len = d.len();
        match self.rng.below(12) {
            0 if len > 0 => {
                let at = self.offset(len);
                d[at] ^= 1 << self.rng.below(8);
            }
            1 if len > 0 => {
                let at = self.offset(len);
                d[at] = INTERESTING[self.rng.below(INTERESTING.len())] as u8;
            }
            2..=4 => {
                // An interesting integer, 2/4/8 bytes, either byte order.
                let width = [2usize, 4, 8][self.rng.below(3)];
                if len >= width {
                    let at = self.offset(len - width + 1).min(len - width);
                    let mut v = INTERESTING[self.rng.below(INTERESTING.len())];
                    if self.rng.chance(3) {
                        v = v.wrapping_add(self.rng.below(16) as u64).wrapping_sub(8);
                    }
                    let bytes = if self.rng.chance(2) {
                        v.to_le_bytes()
                    } else {
                        v.to_be_bytes()
                    };
                    let src = if self.rng.chance(2) {
                        &bytes[..width]
                    } else {
                        &bytes[8 - width..]
                    };
                    d[at..at + width].copy_from_slice(src);
                }
            }
            5 => {
                let at = self.offset(len + 1).min(len);
                d.truncate(at);
            }
            6 if len > 0 => {
                // Delete a range.
                let at = self.offset(len);
                let n = 1 + self.rng.below((len - at).min(512));
                d.drain(at..at + n);
            }
            7 => {
                // Insert random bytes.
                let at = self.offset(len + 1).min(len);
                let n = 1 + self.rng.below(64);
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.next() as u8).collect();
                d.splice(at..at, bytes);
            }
            8 if len > 0 => {
                // Copy a range elsewhere (overwrite).
                let from = self.rng.below(len);
                let to = self.offset(len);
                let n = (1 + self.rng.below(256)).min(len - from).min(len - to);
                let chunk = d[from..from + n].to_vec();
                d[to..to + n].copy_from_slice(&chunk);
            }
            9 if !self.dict.is_empty() => {
                let tok = self.dict[self.rng.below(self.dict.len())];
                let at = self.offset(len + 1).min(len);
                if self.rng.chance(2) {
                    d.splice(at..at, tok.iter().copied());
                } else {
                    let end = (at + tok.len()).min(len);
                    d.splice(at..end, tok.iter().copied());
                }
            }
            10 if len > 0 => {
                // Fill a range with one byte.
                let at = self.offset(len);
                let n = 1 + self.rng.below((len - at).min(64));
                let v = [0u8, 0xff, b'0', b' '][self.rng.below(4)];
                d[at..at + n].fill(v);
            }
            _ => {
                // Append garbage.
                let n = self.rng.below(64);
                d.extend((0..n).map(|_| self.rng.next() as u8));
            }
        }
    }
}

fn failure_path(name: &str, case: usize) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}-seed{}-case{case}.bin", base_seed()))
}

/// Runs `check` on `cases()` mutations of the seeds. `check` returns a
/// problem to report, or panics itself; both fail the test with the input saved.
fn fuzz(
    name: &str,
    seeds: &[Vec<u8>],
    hot: std::ops::Range<usize>,
    dict: &[&[u8]],
    prepare: impl Fn(&mut Rng, Vec<u8>) -> Vec<u8>,
    check: impl Fn(&[u8]) -> Result<(), String>,
) {
    assert!(!seeds.is_empty());
    // The seeds themselves first: valid inputs must pass.
    for (i, s) in seeds.iter().enumerate() {
        if let Err(p) = check(s) {
            panic!("{name}: seed {i}: {p}");
        }
    }
    let mut m = Mutator {
        rng: Rng::new(base_seed() ^ name.len() as u64 ^ (name.as_bytes()[0] as u64) << 32),
        hot,
        dict,
    };
    for case in 0..cases() {
        let mut input = seeds[m.rng.below(seeds.len())].clone();
        m.mutate(&mut input);
        let input = prepare(&mut m.rng, input);
        let outcome = catch_unwind(AssertUnwindSafe(|| check(&input)));
        let problem = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(p)) => p,
            Err(panic) => format!(
                "panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            ),
        };
        let path = failure_path(name, case);
        std::fs::write(&path, &input).unwrap();
        panic!(
            "{name}: case {case}: {problem}; input saved as {}",
            path.display()
        );
    }
}

fn one_line(msg: String) -> Result<(), String> {
    if msg.contains('\n') || msg.is_empty() {
        Err(format!("error message is not one line: {msg:?}"))
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Partition tables

fn placed(number: u32, first: u64, last: u64, sector: u64) -> Placed {
    Placed {
        number,
        name: format!("part-{number}"),
        start: first * sector,
        size: (last + 1 - first) * sector,
        kind: if number == 1 {
            PartKind::BootFat
        } else {
            PartKind::LinuxData
        },
    }
}

/// A small GPT image: 256 sectors of 512 bytes or 64 of 4096.
fn gpt_seed(sector: u64) -> Vec<u8> {
    let (n, bounds): (u64, [(u64, u64); 4]) = if sector == 512 {
        (256, [(34, 99), (100, 149), (150, 199), (200, 222)])
    } else {
        (64, [(6, 20), (21, 30), (31, 40), (41, 58)])
    };
    let placed: Vec<Placed> = (1u32..)
        .zip(bounds)
        .map(|(i, (f, l))| placed(i, f, l, sector))
        .collect();
    common::gpt_image([7; 16], sector, n * sector, &placed)
}

fn mbr_seed() -> Vec<u8> {
    let placed: Vec<Placed> = (1u32..)
        .zip([(1, 63), (64, 127), (128, 191), (192, 255)])
        .map(|(i, (f, l))| placed(i, f, l, 512))
        .collect();
    let mut img = vec![0u8; 256 * 512];
    img[..512].copy_from_slice(&mbr::table(0xdead_beef, &placed, Some(1)).unwrap());
    img
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Recomputes the primary GPT's CRCs from its (mutated) header fields when
/// they point inside `img`, so that mutations reach the checks behind them.
fn reseal(img: &mut [u8]) {
    for sector in [512usize, 4096] {
        let h = sector;
        if img.get(h..h + 8) != Some(b"EFI PART") {
            continue;
        }
        let (Some(size), Some(lba), Some(count), Some(esize)) = (
            le32(img, h + 12),
            le64(img, h + 72),
            le32(img, h + 80),
            le32(img, h + 84),
        ) else {
            return;
        };
        let arr_len = u64::from(count) * u64::from(esize);
        let arr_at = lba.checked_mul(sector as u64);
        if let Some(at) = arr_at.filter(|_| arr_len <= 1 << 20) {
            if let Some(arr) = img.get(at as usize..(at + arr_len) as usize) {
                let crc = crc32fast::hash(arr);
                img[h + 88..h + 92].copy_from_slice(&crc.to_le_bytes());
            }
        }
        let size = size as usize;
        if (92..=sector).contains(&size) && img.len() >= h + size {
            let crc = read::header_crc(&img[h..h + size]);
            img[h + 16..h + 20].copy_from_slice(&crc.to_le_bytes());
        }
        return;
    }
}

fn check_table(img: &[u8]) -> Result<(), String> {
    match read::parse(&mut Cursor::new(img)) {
        Err(e) => one_line(e.to_string()),
        Ok(t) => {
            let len = img.len() as u64;
            let mut spans: Vec<(u64, u64, u32)> = Vec::new();
            for p in &t.partitions {
                let end = p
                    .start
                    .checked_add(p.size)
                    .ok_or("start + size overflows")?;
                if end > len || p.size == 0 {
                    return Err(format!("accepted partition {p:?} of a {len}-byte file"));
                }
                spans.push((p.start, end, p.number));
            }
            spans.sort();
            if spans.windows(2).any(|w| w[0].1 > w[1].0) {
                return Err(format!("accepted overlapping partitions {spans:?}"));
            }
            let numbers: Vec<u32> = t.partitions.iter().map(|p| p.number).collect();
            if numbers.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!("partition numbers out of order: {numbers:?}"));
            }
            Ok(())
        }
    }
}

#[test]
fn partition_tables() {
    let seeds = vec![gpt_seed(512), gpt_seed(4096), mbr_seed()];
    // Sector 0, the header and the entries (512-byte sectors), or the 4096 header.
    fuzz(
        "partition-table",
        &seeds,
        0..34 * 512,
        &[b"EFI PART", &[0x55, 0xaa], &[0xee], &[0, 0, 1, 0]],
        |rng, mut img| {
            if !rng.chance(4) {
                reseal(&mut img);
            }
            img
        },
        check_table,
    );
}

// ---------------------------------------------------------------------------
// Tar archives

fn tar_seed() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let h = |path: &str, kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    };
    let mut dir = h("usr/", tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut dir, "usr/", &[][..]).unwrap();
    let mut dir = h("usr/bin/", tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut dir, "usr/bin/", &[][..]).unwrap();
    let body = b"#!/bin/sh\necho hello\n";
    let mut f = h(
        "usr/bin/hello",
        tar::EntryType::Regular,
        0o755,
        body.len() as u64,
    );
    b.append_data(&mut f, "usr/bin/hello", &body[..]).unwrap();
    let mut l = h("bin", tar::EntryType::Symlink, 0o777, 0);
    b.append_link(&mut l, "bin", "usr/bin").unwrap();
    let mut hl = h("usr/bin/hi", tar::EntryType::Link, 0o755, 0);
    b.append_link(&mut hl, "usr/bin/hi", "usr/bin/hello")
        .unwrap();
    let mut dev = h("dev/null", tar::EntryType::Char, 0o666, 0);
    dev.set_device_major(1).unwrap();
    dev.set_device_minor(3).unwrap();
    b.append_data(&mut dev, "dev/null", &[][..]).unwrap();
    let mut fifo = h("run/fifo", tar::EntryType::Fifo, 0o600, 0);
    b.append_data(&mut fifo, "run/fifo", &[][..]).unwrap();
    // A name over 100 bytes: a GNU long-name entry before it.
    let long = format!("usr/share/{}", "n".repeat(120));
    let mut lf = h("x", tar::EntryType::Regular, 0o644, 3);
    b.append_data(&mut lf, &long, &b"abc"[..]).unwrap();
    // PAX records (uid, mtime) for one file.
    b.append_pax_extensions([("uid", &b"1000"[..]), ("mtime", &b"1700000001.5"[..])])
        .unwrap();
    let mut pf = h("home/u/file", tar::EntryType::Regular, 0o600, 2);
    b.append_data(&mut pf, "home/u/file", &b"hi"[..]).unwrap();
    b.into_inner().unwrap()
}

type Compress = fn(&[u8]) -> Vec<u8>;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 1).unwrap()
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 0);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn check_tar(data: &[u8]) -> Result<(), String> {
    match nodeimg::tree::reader::read_tar(data, &std::env::temp_dir()) {
        Ok(_) => Ok(()),
        Err(e) => one_line(format!("{e:#}")),
    }
}

const TAR_DICT: &[&[u8]] = &[
    b"ustar\0",
    b"ustar  \0",
    b"././@LongLink",
    b"../",
    b"/etc/passwd",
    b"path=",
    b"uid=",
    b"77777777777",
    b"\x80\0\0\0\0\0\0\x01",
    b"\xff\xff\xff\xff\xff\xff\xff\xff",
    b"0",
    b"1",
    b"2",
    b"5",
    b"x",
    b"g",
    b"L",
    b"S",
    b"\n",
];

#[test]
fn tar_plain() {
    fuzz("tar", &[tar_seed()], 0..2048, TAR_DICT, |_, d| d, check_tar);
}

/// What the mutations found first, kept as a fixed case: the `tar` crate's
/// error for a bad header field quotes the field's and the entry name's raw
/// bytes, newlines included.
#[test]
fn tar_error_quoting_a_newline_is_one_line() {
    let mut t = tar_seed();
    // The first header's checksum field (148..156) holds text with a newline.
    t[148..156].copy_from_slice(b"12\n34567");
    let err = nodeimg::tree::reader::read_tar(&t[..], &std::env::temp_dir()).unwrap_err();
    one_line(format!("{err:#}")).unwrap();
}

/// The tar is mutated and then compressed, so that the mutations reach the
/// tar reader through each decompressor; one case in eight mutates the
/// compressed stream instead.
#[test]
fn tar_compressed() {
    let seed = tar_seed();
    let compressors: [Compress; 3] = [gzip, zstd, xz];
    for c in compressors {
        assert!(check_tar(&c(&seed)).is_ok());
    }
    fuzz(
        "tar-compressed",
        &[seed],
        0..2048,
        TAR_DICT,
        |rng, d| {
            let mut z = compressors[rng.below(3)](&d);
            if rng.chance(8) && !z.is_empty() {
                let at = rng.below(z.len());
                z[at] ^= 1 << rng.below(8);
                if rng.chance(2) {
                    z.truncate(rng.below(z.len()));
                }
            }
            z
        },
        check_tar,
    );
}

// ---------------------------------------------------------------------------
// ELF

fn check_elf(data: &[u8]) -> Result<(), String> {
    match nodeimg::elf::parse(data) {
        Ok(info) => {
            let strings = info
                .needed
                .iter()
                .chain(&info.runpath)
                .chain(&info.rpath)
                .chain(&info.interp)
                .chain(&info.soname);
            match strings.into_iter().find(|s| s.contains('\0')) {
                Some(s) => Err(format!("a string with NUL: {s:?}")),
                None => Ok(()),
            }
        }
        Err(e) => one_line(e.to_string()),
    }
}

/// A small dynamic ELF of either class and byte order: header, PT_LOAD over
/// the file, PT_INTERP, PT_DYNAMIC, a string table and the dynamic entries
/// (DT_NEEDED, DT_RUNPATH, DT_SONAME, DT_STRTAB, DT_STRSZ, DT_NULL).
fn small_elf(is_64: bool, be: bool) -> Vec<u8> {
    let (ehsize, phentsize, word) = if is_64 { (64, 56, 8) } else { (52, 32, 4) };
    let vbase = 0x10000u64;
    let interp = b"/lib/ld-linux.so.3\0";
    let strtab = b"\0libc.so.6\0$ORIGIN/../lib\0libme.so.1\0";
    let interp_off = ehsize + 3 * phentsize;
    let strtab_off = interp_off + interp.len() as u64;
    let dyn_off = strtab_off + strtab.len() as u64;
    let dynamic = [
        (1u64, 1u64),
        (29, 11),
        (14, 26),
        (5, vbase + strtab_off),
        (10, strtab.len() as u64),
        (0, 0),
    ];
    let total = dyn_off + 2 * word * dynamic.len() as u64;
    let mut f = Vec::new();
    let put = |f: &mut Vec<u8>, v: u64, n: usize| {
        let b = if be { v.to_be_bytes() } else { v.to_le_bytes() };
        if be {
            f.extend_from_slice(&b[8 - n..]);
        } else {
            f.extend_from_slice(&b[..n]);
        }
    };
    let w = word as usize;
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[if is_64 { 2 } else { 1 }, if be { 2 } else { 1 }, 1]);
    f.extend_from_slice(&[0; 9]);
    put(&mut f, 3, 2); // ET_DYN
    put(&mut f, if is_64 { 183 } else { 40 }, 2);
    put(&mut f, 1, 4);
    put(&mut f, vbase, w); // e_entry
    put(&mut f, ehsize, w); // e_phoff
    put(&mut f, 0, w); // e_shoff
    put(&mut f, 0, 4);
    for v in [ehsize, phentsize, 3, 0, 0, 0] {
        put(&mut f, v, 2);
    }
    for (typ, off, size) in [
        (1u64, 0u64, total),
        (3, interp_off, interp.len() as u64),
        (2, dyn_off, total - dyn_off),
    ] {
        if is_64 {
            put(&mut f, typ, 4);
            put(&mut f, 4, 4);
            for v in [off, vbase + off, vbase + off, size, size, 8] {
                put(&mut f, v, 8);
            }
        } else {
            for v in [typ, off, vbase + off, vbase + off, size, size, 4, 4] {
                put(&mut f, v, 4);
            }
        }
    }
    f.extend_from_slice(interp);
    f.extend_from_slice(strtab);
    for (tag, val) in dynamic {
        put(&mut f, tag, w);
        put(&mut f, val, w);
    }
    assert_eq!(f.len() as u64, total);
    f
}

#[test]
fn elf() {
    let mut seeds = Vec::new();
    for (is_64, be) in [(true, false), (true, true), (false, false), (false, true)] {
        let e = small_elf(is_64, be);
        let info = nodeimg::elf::parse(&e).unwrap();
        assert_eq!(
            (info.needed, info.runpath, info.soname.as_deref()),
            (
                vec!["libc.so.6".to_string()],
                vec!["$ORIGIN/../lib".to_string()],
                Some("libme.so.1")
            )
        );
        seeds.push(e);
    }
    for p in ["/bin/ls", "/bin/true"] {
        let data = std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        nodeimg::elf::parse(&data).unwrap_or_else(|e| panic!("{p}: {e}"));
        seeds.push(data);
    }
    // The headers: ELF header, program headers; the dynamic section is found
    // through them wherever it is.
    fuzz("elf", &seeds, 0..4096, &[b"\x7fELF"], |_, d| d, check_elf);
}

// ---------------------------------------------------------------------------
// cluster.yaml

const PASSWORD: &str = "s3cr3t-passw0rd-do-not-print";

fn token() -> String {
    format!("K10{}::server:{PASSWORD}", "ab".repeat(32))
}

fn yaml_seeds() -> Vec<Vec<u8>> {
    let t = token();
    [
        format!(
            r#"# an agent node
server: https://10.0.0.1:6443
token: "{t}"
node_name: pi-1
labels:
  zone: kitchen
  topology.kubernetes.io/region: home
taints:
  - dedicated=edge:NoSchedule
  - gpu:PreferNoSchedule
k3s_args:
  - --node-ip=10.0.0.11
  - --kubelet-arg
  - max-pods=50
  - --kubelet-arg=image-gc-high-threshold=80
  - --disable-apiserver-lb
ssh_authorized_keys:
  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ7 admin@laptop
nameservers: [10.0.0.1, "2001:db8::1"]
ntp_servers: [pool.ntp.org]
k3s:
  version: v1.31.4+k3s1
"#
        ),
        format!(
            r#"server: https://cp-1.lan:6443
token: {t}
labels: {{site: home, tier: "1"}}
taints: ["edge=true:NoSchedule"]
k3s_args: [--kubelet-arg=max-pods=60]
nodes:
  - name: cp-1
    role: cluster-init
  - name: cp-2
    role: server
    labels: [tier=0]
  - name: w-1
    labels: {{gpu: "true"}}
    taints: ["gpu=nvidia:NoExecute"]
    k3s_args: [--kubelet-arg=max-pods=110, --node-ip, 10.0.0.21]
"#
        ),
        format!(
            r#"ssh_authorized_keys:
  - ecdsa-sha2-nistp256 AAAAE2VjZHNh user@host
hostname: k3os-1
k3os:
  server_url: https://192.168.1.10:6443
  token: {t}
  labels:
    region: us-west-1
  taints:
    - key1=value1:NoSchedule
  k3s_args:
    - agent
    - --node-ip=192.168.1.20
  dns_nameservers: [1.1.1.1]
  ntp_servers: [0.pool.ntp.org]
"#
        ),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

const YAML_DICT: &[&[u8]] = &[
    b"\n",
    b"\n  ",
    b"\n- ",
    b": ",
    b"- ",
    b"&a ",
    b"*a",
    b"<<: *a\n",
    b"!!binary ",
    b"!!int ",
    b"? ",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"'",
    b"|\n",
    b">-\n",
    b"\t",
    b"#",
    b"---\n",
    b"...\n",
    b"~",
    b"null",
    b"1e9999",
    b"-1",
    b"0x7fffffffffffffff",
    b"token: ",
    b"token_file: ",
    b"nodes:\n  - name: x\n",
    b"role: ",
    b"server",
    b"cluster-init",
    b"agent",
];

#[test]
fn cluster_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    fuzz(
        "cluster-yaml",
        &yaml_seeds(),
        0..0,
        YAML_DICT,
        |_, d| d,
        |data| {
            let text = String::from_utf8_lossy(data);
            let msg = match nodeimg::join::load_str(&text, "cluster.yaml", &base) {
                Ok(c) => {
                    let names = c.node_names();
                    let name = names.first().map(String::as_str);
                    match c.node(name) {
                        Ok(n) => {
                            let _ = n.render_k3s_config("/t");
                            return Ok(());
                        }
                        Err(e) => format!("{e:#}"),
                    }
                }
                Err(e) => format!("{e:#}"),
            };
            // When the password is only in the token's own line, no error
            // may show it (a mutation may also copy it into another field,
            // whose errors quote their value).
            let only_in_token = text.matches(PASSWORD).count() == 1
                && text
                    .lines()
                    .any(|l| l.contains(PASSWORD) && l.trim_start().starts_with("token:"));
            if only_in_token && msg.contains(PASSWORD) {
                return Err(format!("the error shows the token: {msg:?}"));
            }
            one_line(msg)
        },
    );
}

// ---------------------------------------------------------------------------
// Android boot images and sparse images

fn android_boot_seeds() -> Vec<Vec<u8>> {
    use nodeimg::android::bootimg::{self, BootImage, VendorBootImage};
    let mut seeds = Vec::new();
    for v in 0..=4 {
        let img = BootImage {
            header_version: v,
            page_size: 2048,
            kernel: vec![0x11; 3000],
            ramdisk: vec![0x22; 1500],
            second: if v <= 2 { vec![0x33; 10] } else { Vec::new() },
            recovery_dtbo: if (1..=2).contains(&v) {
                vec![0x44; 20]
            } else {
                Vec::new()
            },
            dtb: if v == 2 { vec![0x55; 30] } else { Vec::new() },
            cmdline: "console=ttyMSM0 rootwait".repeat(if v <= 2 { 30 } else { 1 }),
            name: "sdm845".into(),
            kernel_offset: 0x8000,
            dtb_offset: 0x01f0_0000,
            ..BootImage::default()
        };
        let mut out = Vec::new();
        bootimg::write(&img, &mut out).unwrap();
        seeds.push(out);
    }
    for v in [3, 4] {
        let img = VendorBootImage {
            header_version: v,
            page_size: 2048,
            vendor_ramdisk: vec![0x66; 2500],
            vendor_cmdline: "androidboot.hardware=qcom".into(),
            name: "kona".into(),
            dtb: vec![0x77; 100],
            bootconfig: if v == 4 {
                b"a=b\n".to_vec()
            } else {
                Vec::new()
            },
            ..VendorBootImage::default()
        };
        let mut out = Vec::new();
        bootimg::write_vendor(&img, &mut out).unwrap();
        seeds.push(out);
    }
    seeds
}

fn check_bootimg(data: &[u8]) -> Result<(), String> {
    use nodeimg::android::bootimg::{parse, Parsed};
    match parse(data) {
        // Every section the parser returns must lie inside the image.
        Ok(Parsed::Boot(b)) => {
            for r in [
                &b.kernel,
                &b.ramdisk,
                &b.second,
                &b.recovery_dtbo,
                &b.dtb,
                &b.signature,
            ] {
                if data.get(r.clone()).is_none() {
                    return Err(format!("section {r:?} outside {} bytes", data.len()));
                }
            }
            Ok(())
        }
        Ok(Parsed::VendorBoot(b)) => {
            for r in [&b.vendor_ramdisk, &b.dtb, &b.bootconfig]
                .into_iter()
                .chain(b.ramdisks.iter().map(|e| &e.data))
            {
                if data.get(r.clone()).is_none() {
                    return Err(format!("section {r:?} outside {} bytes", data.len()));
                }
            }
            for e in &b.ramdisks {
                if e.data.start < b.vendor_ramdisk.start || e.data.end > b.vendor_ramdisk.end {
                    return Err(format!(
                        "ramdisk entry {:?} outside the vendor ramdisk",
                        e.data
                    ));
                }
            }
            Ok(())
        }
        Err(e) => one_line(e.to_string()),
    }
}

#[test]
fn android_boot_images() {
    fuzz(
        "android-bootimg",
        &android_boot_seeds(),
        0..2200,
        &[
            b"ANDROID!",
            b"VNDRBOOT",
            &2048u32.to_le_bytes(),
            &4096u32.to_le_bytes(),
            &4u32.to_le_bytes(),
        ],
        |_, d| d,
        check_bootimg,
    );
}

fn android_sparse_seeds() -> Vec<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    // Its own directory: two tests call this at once.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let raw = dir.join("raw.img");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(64 * 4096).unwrap();
    let noise: Vec<u8> = (0..3 * 4096u32).map(|i| (i * 31 + i / 7) as u8).collect();
    f.write_all_at(&noise, 4096).unwrap();
    f.write_all_at(&0x1234_5678u32.to_le_bytes().repeat(1024), 10 * 4096)
        .unwrap();
    f.write_all_at(&noise[..5000], 40 * 4096).unwrap();
    drop(f);
    let mut seeds = Vec::new();
    for max in [None, Some(3 * 4096 + 200)] {
        let out = dir.join(format!("s{}.img", seeds.len()));
        for p in nodeimg::android::sparse::write_sparse(&raw, &out, max).unwrap() {
            seeds.push(std::fs::read(p).unwrap());
        }
    }
    // A CRC32 chunk (which libsparse may write) at the end of the first seed.
    let mut with_crc = seeds[0].clone();
    with_crc.extend_from_slice(&0xcac4u16.to_le_bytes());
    with_crc.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    with_crc.extend_from_slice(&16u32.to_le_bytes());
    with_crc.extend_from_slice(&[1, 2, 3, 4]);
    let chunks = u32::from_le_bytes(with_crc[20..24].try_into().unwrap()) + 1;
    with_crc[20..24].copy_from_slice(&chunks.to_le_bytes());
    seeds.push(with_crc);
    seeds
}

fn check_sparse(data: &[u8]) -> Result<(), String> {
    use nodeimg::android::sparse::{parse, ChunkData};
    match parse(&mut Cursor::new(data)) {
        Ok(img) => {
            let blk = u64::from(img.header.blk_sz);
            let mut next = 0u64;
            for c in &img.chunks {
                if c.start != next {
                    return Err(format!("chunk at block {} after block {next}", c.start));
                }
                next += u64::from(c.blocks);
                if let ChunkData::Raw { offset } = c.data {
                    let end = offset + u64::from(c.blocks) * blk;
                    if end > data.len() as u64 {
                        return Err(format!("RAW data to {end} past {} bytes", data.len()));
                    }
                }
            }
            if next != u64::from(img.header.total_blks) {
                return Err(format!(
                    "chunks cover {next} of {} blocks",
                    img.header.total_blks
                ));
            }
            Ok(())
        }
        Err(e) => one_line(e.to_string()),
    }
}

#[test]
fn android_sparse_images() {
    fuzz(
        "android-sparse",
        &android_sparse_seeds(),
        0..120,
        &[
            &0xed26_ff3au32.to_le_bytes(),
            &0xcac1u16.to_le_bytes(),
            &0xcac2u16.to_le_bytes(),
            &0xcac3u16.to_le_bytes(),
            &0xcac4u16.to_le_bytes(),
            &4096u32.to_le_bytes(),
        ],
        |_, d| d,
        check_sparse,
    );
}

/// Hand-made bad images: each is one specific, one-line error.
#[test]
fn crafted_android_images_are_one_clear_error() {
    use nodeimg::android::bootimg::{parse, BootImgError};
    let seeds = android_boot_seeds();
    let v0 = &seeds[0];
    let with = |at: usize, v: u32| {
        let mut d = v0.clone();
        d[at..at + 4].copy_from_slice(&v.to_le_bytes());
        d
    };
    let mut bad_magic = v0.clone();
    bad_magic[..8].copy_from_slice(b"ANDROID?");
    assert_eq!(parse(&bad_magic), Err(BootImgError::Magic));
    assert_eq!(parse(&with(40, 99)), Err(BootImgError::Version(99)));
    assert_eq!(
        parse(&with(36, 0x4000_0000)),
        Err(BootImgError::PageSize(0x4000_0000))
    );
    assert_eq!(parse(&with(36, 0)), Err(BootImgError::PageSize(0)));
    let e = parse(&with(16, 0xffff_fff0)).unwrap_err();
    assert!(
        matches!(
            e,
            BootImgError::PastEnd {
                section: "ramdisk",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("runs past the end"), "{e}");
    // Cut inside the last section (second, bytes 8192..8202).
    let e = parse(&v0[..8200]).unwrap_err();
    assert!(e.to_string().contains("past the end"), "{e}");

    use nodeimg::android::sparse::parse as sparse_parse;
    let s = &android_sparse_seeds()[0];
    let msg = |d: &[u8]| sparse_parse(&mut Cursor::new(d)).unwrap_err().to_string();
    let mut d = s.clone();
    d[0] ^= 1;
    assert!(msg(&d).contains("bad magic"));
    let mut d = s.clone();
    d[16..20].copy_from_slice(&u32::MAX.to_le_bytes()); // total_blks
    assert!(msg(&d).contains("the chunks cover"), "{}", msg(&d));
    let mut d = s.clone();
    d[12..16].copy_from_slice(&3u32.to_le_bytes()); // block size
    assert!(msg(&d).contains("block size 3"), "{}", msg(&d));
    let d = &s[..s.len() - 100];
    assert!(msg(d).contains("ends inside"), "{}", msg(d));
    let mut d = s.clone();
    d[28..30].copy_from_slice(&0xcaffu16.to_le_bytes()); // first chunk's type
    assert!(msg(&d).contains("unknown chunk type 0xcaff"), "{}", msg(&d));
}
// .deb packages (`base::deb::read_deb_from`) and control paragraphs

/// A small .deb made by dpkg-deb with uncompressed members, so that
/// mutations reach the ar headers, the tar headers and the control text.
fn deb_seed() -> Vec<u8> {
    let dir = common::scratch("fuzz-deb-seed");
    let root = dir.join("pkg");
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        "Package: fuzz\nVersion: 1:2.0-1\nArchitecture: all\nMaintainer: t <t@example.org>\n\
         Replaces: old (<< 2)\nDescription: a package\n to mutate\n",
    )
    .unwrap();
    std::fs::write(root.join("DEBIAN/conffiles"), "/etc/fuzz.conf\n").unwrap();
    common::run_ok(
        std::process::Command::new("sh")
            .arg("-ec")
            .arg(
                "mkdir -p etc usr/bin && echo conf > etc/fuzz.conf && echo bin > usr/bin/fuzz && \
         chmod 4755 usr/bin/fuzz && ln usr/bin/fuzz usr/bin/fuzz2 && ln -s fuzz usr/bin/fuzz3",
            )
            .current_dir(&root),
    );
    let deb = dir.join("fuzz.deb");
    common::run_ok(
        std::process::Command::new("dpkg-deb")
            .args(["--build", "-Znone", "--uniform-compression"])
            .arg(&root)
            .arg(&deb),
    );
    std::fs::read(deb).unwrap()
}

fn check_deb(data: &[u8]) -> Result<(), String> {
    let mut spill = nodeimg::tree::reader::Spill::new(&std::env::temp_dir()).unwrap();
    match nodeimg::base::deb::read_deb_from(data, &mut spill) {
        Ok(deb) if deb.package.is_empty() || deb.version.is_empty() => {
            Err("accepted a package without a name or version".into())
        }
        Ok(_) => Ok(()),
        Err(e) => one_line(format!("{e:#}")),
    }
}

const DEB_DICT: &[&[u8]] = &[
    b"!<arch>\n",
    b"debian-binary   ",
    b"control.tar     ",
    b"data.tar.xz     ",
    b"_gpgorigin      ",
    b"2.0\n",
    b"ustar\0",
    b"Package:",
    b"\n ",
    b"\n\n",
    b":",
    b"../",
    b"9999999999",
    b"`\n",
];

#[test]
fn deb_packages() {
    fuzz("deb", &[deb_seed()], 0..4096, DEB_DICT, |_, d| d, check_deb);
}

#[test]
fn control_paragraphs() {
    let seed =
        b"Package: a\nVersion: 1.0\nDepends: b (>= 1), c | d\nDescription: x\n more\n .\n end\n"
            .to_vec();
    fuzz(
        "control",
        &[seed],
        0..96,
        &[b"\n", b" ", b":", b"#", b"\n\n", b"\t", b"\xff"],
        |_, d| d,
        |data| {
            let text = String::from_utf8_lossy(data);
            match nodeimg::base::deb822::parse_one(&text) {
                Ok(p) if p.fields().next().is_none() => Err("accepted an empty paragraph".into()),
                Ok(p) => {
                    // What it read it writes back and reads again the same.
                    let again = nodeimg::base::deb822::parse_one(&p.to_text())
                        .map_err(|e| format!("its own output does not parse: {e:#}"))?;
                    if !again.fields().eq(p.fields()) {
                        return Err(format!("round trip changed {p:?} into {again:?}"));
                    }
                    Ok(())
                }
                Err(e) => one_line(format!("{e:#}")),
            }
        },
    );
}
