//! `nodeimg flash` into file targets (no real disk is touched: the refusal
//! rules and the device path are tested through the facts seam in
//! src/flash/). Built images come from the test rootfs; compression comes
//! from the zstd, gzip and xz tools, and block maps also from `bmaptool create`.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use nodeimg::disk::bmap::Bmap;

const MIB: u64 = 1 << 20;

fn flash(image: &Path, target: &Path, extra: &[&str]) -> Output {
    run(nodeimg()
        .arg("flash")
        .arg(image)
        .arg(target)
        .args(extra)
        .env("RUST_BACKTRACE", "0"))
}

/// The numbers of flash's summary: (bytes written, bytes read from the image).
fn summary(out: &Output) -> (u64, u64) {
    let s = stdout(out);
    let num = |after: &str| -> u64 {
        let at = s
            .find(after)
            .unwrap_or_else(|| panic!("{after:?} not in {s:?}"))
            + after.len();
        s[at..].split_whitespace().next().unwrap().parse().unwrap()
    };
    assert!(s.contains("verified"), "{s}");
    (num("wrote "), num("(read "))
}

fn allocated(p: &Path) -> u64 {
    fs::metadata(p).unwrap().blocks() * 512
}

/// Whether two files have the same bytes (`cmp`, the oracle).
fn same_bytes(a: &Path, b: &Path) -> bool {
    run(Command::new("cmp").arg("--quiet").arg(a).arg(b))
        .status
        .success()
}

/// Bytes `[s, e)` of a file.
fn bytes(p: &Path, s: u64, e: u64) -> Vec<u8> {
    let mut buf = vec![0u8; (e - s) as usize];
    File::open(p).unwrap().read_exact_at(&mut buf, s).unwrap();
    buf
}

/// Ranges of the image that its map leaves out: (start, end) gaps.
fn unmapped(b: &Bmap) -> Vec<(u64, u64)> {
    let mut gaps = Vec::new();
    let mut pos = 0;
    for r in &b.ranges {
        let (s, e) = b.span(r);
        if s > pos {
            gaps.push((pos, s));
        }
        pos = e;
    }
    if pos < b.image_size {
        gaps.push((pos, b.image_size));
    }
    gaps
}

#[test]
fn a_sparse_image_goes_to_a_new_file_byte_for_byte_writing_only_its_map() {
    let img = built_image("qemu-aarch64");
    let dir = scratch("flash-sparse");
    let target = dir.join("card.img");
    let out = flash(&img, &target, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bmap = Bmap::read(&img.with_file_name("qemu-aarch64.img.bmap")).unwrap();
    let (written, read) = summary(&out);
    // Read exactly the mapped bytes; written those (the first MiB, held
    // back and written whole, may add up to a MiB).
    assert_eq!(read, bmap.mapped_bytes());
    assert!(
        written <= bmap.mapped_bytes() + MIB,
        "{written} vs {}",
        bmap.mapped_bytes()
    );
    assert_eq!(fs::metadata(&target).unwrap().len(), bmap.image_size);
    assert!(
        same_bytes(&img, &target),
        "the target differs from the image"
    );
    // The target is sparse: what was not written is a hole.
    assert!(allocated(&target) <= bmap.mapped_bytes() + 2 * MIB);
    let _ = fs::remove_dir_all(&dir);
}

/// A fully allocated ("plain") copy of the image whose unmapped ranges hold
/// garbage, flashed with the original's map over a plain target full of
/// garbage: the mapped ranges arrive intact, the garbage of neither file
/// survives (never read from the image; the target's are holes), and the
/// bytes read are exactly the mapped ones.
#[test]
fn bytes_outside_the_map_are_never_read() {
    let img = built_image("rpi4");
    let bmap_path = img.with_file_name("rpi4.img.bmap");
    let bmap = Bmap::read(&bmap_path).unwrap();
    let dir = scratch("flash-unread");
    let plain = dir.join("plain.img");
    run_ok(
        Command::new("cp")
            .arg("--sparse=never")
            .arg(&img)
            .arg(&plain),
    );
    let gaps = unmapped(&bmap);
    assert!(gaps.len() > 3);
    let f = File::options().write(true).open(&plain).unwrap();
    let mut marked = Vec::new();
    for &(s, e) in &gaps {
        let at = s + (e - s) / 2;
        f.write_all_at(b"GARBAGE-NEVER-READ", at).unwrap();
        marked.push(at);
    }
    drop(f);
    assert!(!same_bytes(&img, &plain));
    let target = dir.join("used-card.img");
    fs::write(&target, vec![0xffu8; 8 << 20]).unwrap();
    let out = flash(&plain, &target, &["--bmap", bmap_path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, read) = summary(&out);
    assert_eq!(read, bmap.mapped_bytes(), "bytes read from the image");
    for r in &bmap.ranges {
        let (s, e) = bmap.span(r);
        assert!(
            bytes(&img, s, e) == bytes(&target, s, e),
            "blocks {}-{}",
            r.first,
            r.last
        );
    }
    for at in marked {
        assert_eq!(
            bytes(&target, at, at + 18),
            vec![0u8; 18],
            "garbage at {at}"
        );
    }
    assert!(same_bytes(&img, &target));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_4g_image_with_a_small_payload_writes_about_its_payload() {
    let dir = scratch("flash-4g");
    let res = build(
        "qemu-aarch64",
        &test_rootfs(),
        &dir.join("out"),
        &["--size", "4G"],
    );
    assert!(res.status.success(), "{}", stderr(&res));
    let img = dir.join("out/qemu-aarch64/qemu-aarch64.img");
    assert_eq!(fs::metadata(&img).unwrap().len(), 4 << 30);
    // The payload: the image's allocated bytes (what its filesystems and
    // tables hold), measured by the filesystem, not by nodeimg.
    let payload = allocated(&img);
    let target = dir.join("card.img");
    let out = flash(&img, &target, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (written, _) = summary(&out);
    assert!(
        written <= payload + payload / 20 + MIB,
        "wrote {written} bytes for a payload of {payload}"
    );
    assert!(allocated(&target) <= payload + payload / 20 + MIB);
    assert!(payload < 200 * MIB, "payload {payload}: not a small one");
    assert!(same_bytes(&img, &target));
    let _ = fs::remove_dir_all(&dir);
}

/// A 24 MiB sparse image: an incompressible first MiB and two regions of
/// data, holes between them.
fn synthetic(dir: &Path) -> PathBuf {
    let p = dir.join("syn.img");
    let f = File::create(&p).unwrap();
    f.set_len(24 * MIB).unwrap();
    let mut x = 0x9e37_79b9u32;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    };
    f.write_all_at(&noise(MIB as usize), 0).unwrap();
    f.write_all_at(&noise(3 * MIB as usize), 5 * MIB).unwrap();
    f.write_all_at(&noise(100_000), 20 * MIB + 12345).unwrap();
    p
}

fn compress(tool: &str, img: &Path) -> PathBuf {
    let (args, ext): (&[&str], &str) = match tool {
        "zstd" => (&["-q", "-c", "-3"], "zst"),
        "gzip" => (&["-c", "-1"], "gz"),
        "xz" => (&["-c", "-0", "-T1"], "xz"),
        _ => unreachable!(),
    };
    let out = img.with_file_name(format!(
        "{}.{ext}",
        img.file_name().unwrap().to_str().unwrap()
    ));
    let res = run_ok(Command::new(tool).args(args).arg(img));
    fs::write(&out, res.stdout).unwrap();
    out
}

#[test]
fn each_compression_round_trips_with_and_without_a_map() {
    let dir = scratch("flash-compressed");
    let img = synthetic(&dir);
    for tool in ["zstd", "gzip", "xz"] {
        let packed = compress(tool, &img);
        // No map beside it: the whole stream, zero blocks left as holes.
        let _ = fs::remove_file(dir.join("syn.img.bmap"));
        let target = dir.join(format!("no-map-{tool}.img"));
        let out = flash(&packed, &target, &[]);
        assert!(out.status.success(), "{tool}: {}", stderr(&out));
        assert!(same_bytes(&img, &target), "{tool}: differs");
        let (written, read) = summary(&out);
        assert_eq!(read, 24 * MIB, "{tool}: the whole stream is read");
        assert!(written < 5 * MIB, "{tool}: zero blocks written: {written}");
        // With bmaptool's own map beside it (the map of the plain image).
        run_ok(
            Command::new("bmaptool")
                .arg("create")
                .arg("-o")
                .arg(dir.join("syn.img.bmap"))
                .arg(&img),
        );
        let target = dir.join(format!("map-{tool}.img"));
        let out = flash(&packed, &target, &[]);
        assert!(out.status.success(), "{tool}: {}", stderr(&out));
        assert!(same_bytes(&img, &target), "{tool} with a map: differs");
        let (written, _) = summary(&out);
        assert!(written <= 5 * MIB, "{tool} with a map: {written}");
    }
    // A real image through zstd.
    let real = built_image("rpi4");
    let packed = dir.join("rpi4.img.zst");
    run_ok(
        Command::new("zstd")
            .args(["-q", "-1", "-T0", "-o"])
            .arg(&packed)
            .arg(&real),
    );
    fs::copy(
        real.with_file_name("rpi4.img.bmap"),
        dir.join("rpi4.img.bmap"),
    )
    .unwrap();
    let target = dir.join("rpi4-card.img");
    let out = flash(&packed, &target, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(same_bytes(&real, &target));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_truncated_image_fails_on_one_line_and_leaves_the_first_mib_unwritten() {
    let dir = scratch("flash-truncated");
    let img = synthetic(&dir);
    for tool in ["zstd", "gzip", "xz"] {
        let packed = compress(tool, &img);
        let len = fs::metadata(&packed).unwrap().len();
        File::options()
            .write(true)
            .open(&packed)
            .unwrap()
            .set_len(len * 2 / 3)
            .unwrap();
        for with_map in [false, true] {
            let map = dir.join("syn.img.bmap");
            let _ = fs::remove_file(&map);
            if with_map {
                fs::write(&map, Bmap::create(&img, &[]).unwrap().to_xml()).unwrap();
            }
            let target = dir.join(format!("t-{tool}-{with_map}.img"));
            let out = flash(&packed, &target, &[]);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{tool} map {with_map}: {err}");
            assert_eq!(err.lines().count(), 1, "{tool} map {with_map}: {err}");
            assert!(
                err.contains("truncated") || err.contains("decompressing"),
                "{tool} map {with_map}: {err}"
            );
            // The image's first MiB is noise; the target's is all zeros.
            let head = fs::read(&target).unwrap_or_default();
            let n = head.len().min(MIB as usize);
            assert!(
                head[..n].iter().all(|&b| b == 0),
                "{tool} map {with_map}: first MiB written"
            );
        }
    }
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_image_is_caught_by_its_map_before_the_first_mib() {
    let dir = scratch("flash-damaged");
    let img = synthetic(&dir);
    fs::write(
        dir.join("syn.img.bmap"),
        Bmap::create(&img, &[]).unwrap().to_xml(),
    )
    .unwrap();
    File::options()
        .write(true)
        .open(&img)
        .unwrap()
        .write_all_at(b"X", 6 * MIB)
        .unwrap();
    let target = dir.join("t.img");
    let out = flash(&img, &target, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("do not match the block map"),
        "{}",
        stderr(&out)
    );
    assert!(bytes(&target, 0, MIB).iter().all(|&b| b == 0));
}

#[test]
fn a_directory_is_refused_as_a_target() {
    let dir = scratch("flash-refused");
    let img = synthetic(&dir);
    let out = flash(&img, &dir, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("neither a regular file nor a block device"),
        "{}",
        stderr(&out)
    );
}
