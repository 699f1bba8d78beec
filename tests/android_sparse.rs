//! Android sparse images against AOSP's libsparse tools (`simg2img`,
//! `img2simg`, `simg_dump`): ours expand to the raw image byte for byte,
//! whole or split into pieces; large zero runs make a small file; ours read
//! theirs. Each test removes its directory when it passes (the images are
//! tens of MiB).

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{run, run_ok, scratch};

use nodeimg::android::sparse::{self, ChunkData};

const MIB: u64 = 1 << 20;

/// A sparse raw image of `len` bytes: random-looking data here and there,
/// explicit zero blocks, a block repeating one u32, the last block written.
fn raw_image(path: &Path, len: u64) {
    let f = File::create(path).unwrap();
    f.set_len(len).unwrap();
    let noise = |seed: u32, n: usize| -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    };
    f.write_all_at(&noise(1, 3 * MIB as usize + 123), 0)
        .unwrap();
    // Explicit zeros inside data (a FILL, not RAW) and a repeated pattern.
    f.write_all_at(&vec![0u8; 64 << 10], 5 * MIB).unwrap();
    f.write_all_at(&0xdead_beefu32.to_le_bytes().repeat(2048), 6 * MIB)
        .unwrap();
    f.write_all_at(&noise(2, 10_000), 6 * MIB + 8192).unwrap();
    f.write_all_at(&noise(3, 2 * MIB as usize), len / 2)
        .unwrap();
    f.write_all_at(b"the end", len - 7).unwrap();
}

fn simg2img(inputs: &[PathBuf], out: &Path) {
    run_ok(Command::new("simg2img").args(inputs).arg(out));
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    run(Command::new("cmp").arg("-s").arg(a).arg(b))
        .status
        .success()
}

#[test]
fn simg2img_gives_back_the_raw_image_and_zero_runs_cost_nothing() {
    let dir = scratch("sparse-roundtrip");
    let raw = dir.join("raw.img");
    let len = 96 * MIB;
    raw_image(&raw, len);
    let out = dir.join("rootfs.img");
    let written = sparse::write_sparse(&raw, &out, None).unwrap();
    assert_eq!(written, vec![out.clone()]);
    let back = dir.join("back.img");
    simg2img(&written, &back);
    assert_eq!(fs::metadata(&back).unwrap().len(), len);
    assert!(
        same_bytes(&raw, &back),
        "simg2img's output differs from the raw image"
    );

    // About 5 MiB of data in 96 MiB: the sparse file is about the data.
    let size = fs::metadata(&out).unwrap().len();
    assert!(size < 6 * MIB, "sparse image is {size} bytes");

    // Zero blocks and the repeated u32 became FILL chunks, the data RAW.
    let img = sparse::read_file(&out).unwrap();
    assert_eq!(img.raw_len(), len);
    let fills: Vec<u32> = img
        .chunks
        .iter()
        .filter_map(|c| match c.data {
            ChunkData::Fill(v) => Some(v),
            _ => None,
        })
        .collect();
    assert!(fills.contains(&0xdead_beef), "{fills:x?}");
    assert!(fills.contains(&0));

    // Our own expansion agrees.
    let ours = dir.join("ours.img");
    sparse::expand(&written, &ours).unwrap();
    assert!(same_bytes(&raw, &ours));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn split_pieces_each_fit_and_together_make_the_image() {
    let dir = scratch("sparse-split");
    let raw = dir.join("raw.img");
    let len = 64 * MIB;
    raw_image(&raw, len);
    let max = MIB + 4096;
    let out = dir.join("rootfs.img");
    let pieces = sparse::write_sparse(&raw, &out, Some(max)).unwrap();
    assert!(pieces.len() >= 5, "{} pieces", pieces.len());
    for (i, p) in pieces.iter().enumerate() {
        assert_eq!(p, &dir.join(format!("rootfs.img.{i}")));
        let size = fs::metadata(p).unwrap().len();
        assert!(size <= max, "piece {i} is {size} bytes, over {max}");
        // Each piece is a whole sparse image of the full size, by libsparse's reader too.
        let alone = dir.join(format!("alone{i}.img"));
        simg2img(std::slice::from_ref(p), &alone);
        assert_eq!(fs::metadata(&alone).unwrap().len(), len);
        fs::remove_file(&alone).unwrap();
    }
    assert!(
        !out.exists(),
        "an unsplit rootfs.img was left beside the pieces"
    );
    let back = dir.join("back.img");
    simg2img(&pieces, &back);
    assert!(
        same_bytes(&raw, &back),
        "the pieces do not make the raw image"
    );
    let ours = dir.join("ours.img");
    sparse::expand(&pieces, &ours).unwrap();
    assert!(same_bytes(&raw, &ours));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn output_does_not_depend_on_where_the_raw_file_has_holes() {
    let dir = scratch("sparse-repro");
    let raw = dir.join("raw.img");
    raw_image(&raw, 32 * MIB);
    // The same bytes with every zero written out (no holes).
    let dense = dir.join("dense.img");
    run_ok(
        Command::new("cp")
            .arg("--sparse=never")
            .arg(&raw)
            .arg(&dense),
    );
    let a = sparse::write_sparse(&raw, &dir.join("a.img"), None).unwrap();
    let b = sparse::write_sparse(&dense, &dir.join("b.img"), None).unwrap();
    let again = sparse::write_sparse(&raw, &dir.join("c.img"), None).unwrap();
    assert_eq!(fs::read(&a[0]).unwrap(), fs::read(&b[0]).unwrap());
    assert_eq!(fs::read(&a[0]).unwrap(), fs::read(&again[0]).unwrap());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn we_read_and_expand_img2simg_images() {
    let dir = scratch("sparse-img2simg");
    let raw = dir.join("raw.img");
    raw_image(&raw, 48 * MIB);
    let theirs = dir.join("theirs.simg");
    run_ok(Command::new("img2simg").arg(&raw).arg(&theirs));
    let img = sparse::read_file(&theirs).unwrap();
    assert_eq!(img.raw_len(), 48 * MIB);
    let out = dir.join("out.img");
    sparse::expand(&[theirs], &out).unwrap();
    assert!(same_bytes(&raw, &out));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_raw_image_of_partial_blocks_is_refused() {
    let dir = scratch("sparse-odd");
    let raw = dir.join("odd.img");
    fs::write(&raw, vec![1u8; 5000]).unwrap();
    let e = sparse::write_sparse(&raw, &dir.join("o.img"), None).unwrap_err();
    assert!(
        e.to_string().contains("not a multiple of the 4096-byte"),
        "{e}"
    );
    let e = sparse::write_sparse(&dir.join("missing"), &dir.join("o.img"), None).unwrap_err();
    assert!(format!("{e:#}").contains("missing"), "{e:#}");
}
