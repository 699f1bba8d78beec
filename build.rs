//! Build script: embeds `boards/` and `overlays/` in the binary, so an
//! installed nodeimg (`cargo install`) needs no data files beside it.
//!
//! Writes `$OUT_DIR/embedded.rs`: a sorted list of every file, directory and
//! symlink under the two directories with its kind and executable bit (the
//! initramfs `init` must stay executable), file contents by `include_bytes!`.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn main() {
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let mut entries = Vec::new();
    for top in ["boards", "overlays"] {
        println!("cargo:rerun-if-changed={top}");
        walk(Path::new(&root), Path::new(top), &mut entries);
    }
    entries.sort();
    let mut code = String::from(
        "/// Every entry under boards/ and overlays/, sorted by path.\n\
         pub static ENTRIES: &[Embedded] = &[\n",
    );
    for (rel, item) in &entries {
        let rel = rel.to_str().expect("data paths are UTF-8");
        let line = match item {
            Item::Dir => format!("    Embedded {{ path: {rel:?}, kind: EmbeddedKind::Dir }},\n"),
            Item::File { abs, executable } => format!(
                "    Embedded {{ path: {rel:?}, kind: EmbeddedKind::File {{ executable: {executable}, \
                 data: include_bytes!({abs:?}) }} }},\n"
            ),
            Item::Symlink(target) => format!(
                "    Embedded {{ path: {rel:?}, kind: EmbeddedKind::Symlink({target:?}) }},\n"
            ),
        };
        code.push_str(&line);
    }
    let _ = writeln!(code, "];");
    std::fs::write(Path::new(&out).join("embedded.rs"), code).expect("writing embedded.rs");
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    Dir,
    File { abs: String, executable: bool },
    Symlink(String),
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<(std::path::PathBuf, Item)>) {
    let abs = root.join(rel);
    let md = std::fs::symlink_metadata(&abs).unwrap_or_else(|e| panic!("{}: {e}", abs.display()));
    let ft = md.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(&abs).unwrap_or_else(|e| panic!("{}: {e}", abs.display()));
        let target = target
            .to_str()
            .expect("symlink targets are UTF-8")
            .to_string();
        out.push((rel.to_path_buf(), Item::Symlink(target)));
    } else if ft.is_dir() {
        out.push((rel.to_path_buf(), Item::Dir));
        let mut children: Vec<_> = std::fs::read_dir(&abs)
            .unwrap_or_else(|e| panic!("{}: {e}", abs.display()))
            .map(|e| {
                e.unwrap_or_else(|e| panic!("{}: {e}", abs.display()))
                    .file_name()
            })
            .collect();
        children.sort();
        for c in children {
            walk(root, &rel.join(c), out);
        }
    } else if ft.is_file() {
        out.push((
            rel.to_path_buf(),
            Item::File {
                abs: abs.to_str().expect("data paths are UTF-8").to_string(),
                executable: md.permissions().mode() & 0o111 != 0,
            },
        ));
    } else {
        panic!(
            "{}: only files, directories and symlinks can be embedded",
            abs.display()
        );
    }
}
