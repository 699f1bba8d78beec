//! The binary on its own, as `cargo install` leaves it: copied away from the
//! source tree and run from an unrelated directory, it still knows its boards
//! and overlays (they are built in), and `--data-dir` adds to them.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A copy of the built binary in a fresh directory outside the source tree.
///
/// Copied by `cp`, not by this process: a file this process holds open for
/// writing is inherited by any child another test thread forks meanwhile, and
/// executing the copy then fails with ETXTBSY ("Text file busy").
fn lone_binary(dir: &Path) -> PathBuf {
    let bin = dir.join("bin/nodeimg");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    run_ok(
        Command::new("cp")
            .arg(env!("CARGO_BIN_EXE_nodeimg"))
            .arg(&bin),
    );
    bin
}

fn lone(bin: &Path, cwd: &Path) -> Command {
    let mut c = Command::new(bin);
    c.current_dir(cwd)
        .env_remove("NODEIMG_DATA_DIR")
        .env("XDG_CACHE_HOME", cwd.join(".cache"))
        .env("SOURCE_DATE_EPOCH", "1700000000");
    c
}

#[test]
fn a_copied_binary_lists_its_boards_and_builds_from_an_unrelated_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = lone_binary(tmp.path());
    let cwd = tmp.path().join("elsewhere");
    std::fs::create_dir(&cwd).unwrap();

    let out = run_ok(lone(&bin, &cwd).arg("boards"));
    let names: Vec<String> = stdout(&out)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert_eq!(names, BUILT_IN, "{}", stdout(&out));

    run_ok(
        lone(&bin, &cwd)
            .args(["build", "qemu-aarch64", "--rootfs"])
            .arg(test_rootfs())
            .args(["-o", "out"]),
    );
    let image = cwd.join("out/qemu-aarch64/qemu-aarch64.img");
    assert!(image.is_file());
    // The built-in initramfs overlay kept its executable `init`.
    let x = extract_initramfs(&image, tmp.path());
    let mode = std::fs::metadata(x.join("init"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755, "init mode {mode:o}");
}

/// The boards built into the binary, as `nodeimg boards` lists them.
const BUILT_IN: [&str; 6] = [
    "oneplus-dumpling",
    "oneplus-enchilada",
    "oneplus-instantnoodlep",
    "qemu-aarch64",
    "qemu-aarch64-phone",
    "rpi4",
];

#[test]
fn data_dir_adds_a_board_to_the_built_in_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = lone_binary(tmp.path());
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("boards")).unwrap();
    let text = std::fs::read_to_string(repo().join("boards/qemu-aarch64.toml")).unwrap();
    let extra = text
        .replace("name = \"qemu-aarch64\"", "name = \"my-board\"")
        .replacen("description = \"", "description = \"extra: ", 1);
    assert_ne!(extra, text);
    std::fs::write(data.join("boards/my-board.toml"), extra).unwrap();

    let out = run_ok(
        lone(&bin, tmp.path())
            .arg("--data-dir")
            .arg(&data)
            .arg("boards"),
    );
    let names: Vec<String> = stdout(&out)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    let mut want = vec!["my-board"];
    want.extend(BUILT_IN);
    assert_eq!(names, want, "{}", stdout(&out));
    assert!(stdout(&out).contains("extra: "), "{}", stdout(&out));

    // Without --data-dir the extra board is unknown again.
    let out = run(lone(&bin, tmp.path()).args(["build", "my-board", "--rootfs", "x"]));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown board \"my-board\""),
        "{}",
        stderr(&out)
    );
}
