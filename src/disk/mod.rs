//! Partition tables (MBR, GPT), layout arithmetic, the disk plan by role and disk image assembly.

pub mod bmap;
pub mod gpt;
pub mod image;
pub mod layout;
pub mod mbr;
pub mod plan;
pub mod read;
pub mod sparse;

/// Test oracle: runs `sfdisk` on `img` with `script` on its stdin and checks
/// it succeeded.
#[cfg(test)]
pub(crate) fn sfdisk_script(img: &std::path::Path, script: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("sfdisk")
        .arg("--quiet")
        .arg(img)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("running sfdisk");
    child
        .stdin
        .take()
        .expect("sfdisk's stdin")
        .write_all(script.as_bytes())
        .expect("writing sfdisk's script");
    assert!(
        child.wait().expect("waiting for sfdisk").success(),
        "sfdisk failed:\n{script}"
    );
}
