//! The system cache across `nodeimg build` runs: a second node reuses the
//! first's system image, the result is the image an uncached build makes,
//! a changed input misses, a damaged entry is rebuilt, and the join token
//! never reaches the cache.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

const PASSWORD: &str = "cache-test-password-5f3a9c1e";

fn token() -> String {
    format!("K10{}::server:{PASSWORD}", "cd34".repeat(16))
}

struct Setup {
    dir: PathBuf,
    xdg: PathBuf,
    cluster: PathBuf,
}

impl Setup {
    fn new(name: &str) -> Setup {
        let dir = scratch(name);
        fs::write(dir.join("node-token"), format!("{}\n", token())).unwrap();
        let cluster = dir.join("cluster.yaml");
        fs::write(
            &cluster,
            format!(
                "server: https://10.0.0.1:6443\n\
                 token_file: node-token\n\
                 k3s:\n  source: file\n  path: {}\n\
                 nodes:\n  - name: node-a\n  - name: node-b\n",
                repo().join("test-images/k3s-standin").display()
            ),
        )
        .unwrap();
        Setup {
            xdg: dir.join("xdg"),
            dir,
            cluster,
        }
    }

    fn systems(&self) -> PathBuf {
        self.xdg.join("nodeimg/systems")
    }

    /// `nodeimg build qemu-aarch64` of `node` into `out`, with this test's cache.
    fn build(&self, rootfs: &Path, node: &str, out: &str, epoch: &str, extra: &[&str]) -> Output {
        let res = run(nodeimg()
            .env("XDG_CACHE_HOME", &self.xdg)
            .env("SOURCE_DATE_EPOCH", epoch)
            .arg("build")
            .arg("qemu-aarch64")
            .arg("--rootfs")
            .arg(rootfs)
            .arg("--join")
            .arg(&self.cluster)
            .args(["--node", node])
            .arg("-o")
            .arg(self.dir.join(out))
            .args(extra));
        assert!(res.status.success(), "{}", stderr(&res));
        res
    }

    fn out(&self, out: &str, node: &str) -> PathBuf {
        self.dir.join(out).join(format!("qemu-aarch64-{node}"))
    }

    /// build.json's `system_cache`.
    fn cache_state(&self, out: &str, node: &str) -> String {
        let json = fs::read_to_string(self.out(out, node).join("build.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["system_cache"].as_str().unwrap().to_string()
    }

    /// The SHA-256 of the image's block map as build.json records it (the
    /// map holds the SHA-256 of every range of the image that holds data,
    /// and the image's size; cheaper than reading 2 GiB here twice).
    fn image(&self, out: &str, node: &str) -> String {
        let json = fs::read_to_string(self.out(out, node).join("build.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let o = &v["outputs"][0];
        assert_eq!(o["file"], format!("qemu-aarch64-{node}.img"));
        o["bmap"]["sha256"].as_str().unwrap().to_string()
    }

    fn entries(&self) -> Vec<String> {
        dir_names(&self.systems())
    }
}

fn assert_same(a: &str, b: &str, what: &str) {
    assert_eq!(a, b, "{what}: the images differ");
}

fn holds(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if holds(&fs::read(&p).unwrap(), needle) {
                found.push(p);
            }
        }
    }
    found
}

const EPOCH: &str = "1700000000";

#[test]
fn a_second_node_reuses_the_system_and_gets_the_uncached_image() {
    let s = Setup::new("cache-nodes");
    let rootfs = test_rootfs();
    s.build(&rootfs, "node-a", "out", EPOCH, &[]);
    assert_eq!(s.cache_state("out", "node-a"), "miss");
    let entries = s.entries();
    assert_eq!(entries.len(), 1, "{entries:?}");

    s.build(&rootfs, "node-b", "out", EPOCH, &[]);
    assert_eq!(s.cache_state("out", "node-b"), "hit");
    s.build(&rootfs, "node-b", "uncached", EPOCH, &["--no-cache"]);
    assert_eq!(s.cache_state("uncached", "node-b"), "off");
    assert_same(
        &s.image("out", "node-b"),
        &s.image("uncached", "node-b"),
        "node-b from the cache and without it",
    );
    // The first node's image from a hit is the one its miss made.
    s.build(&rootfs, "node-a", "again", EPOCH, &[]);
    assert_eq!(s.cache_state("again", "node-a"), "hit");
    assert_same(
        &s.image("out", "node-a"),
        &s.image("again", "node-a"),
        "node-a",
    );
    assert_eq!(
        s.entries(),
        entries,
        "--no-cache and hits store nothing new"
    );

    // The token is on the nodes' boot partitions only, never in the cache.
    let leaks = files_holding(&s.xdg, PASSWORD.as_bytes());
    assert!(leaks.is_empty(), "the join token is in {leaks:?}");
    // (The search finds it where it is.)
    let probe = s.dir.join("probe");
    fs::create_dir(&probe).unwrap();
    fs::copy(s.dir.join("node-token"), probe.join("t")).unwrap();
    assert_eq!(
        files_holding(&probe, PASSWORD.as_bytes()),
        [probe.join("t")]
    );
}

#[test]
fn changed_inputs_miss_and_a_damaged_entry_is_rebuilt() {
    let s = Setup::new("cache-inputs");
    let rootfs = test_rootfs();
    s.build(&rootfs, "node-a", "first", EPOCH, &[]);
    assert_eq!(s.cache_state("first", "node-a"), "miss");
    let first = s.entries();

    // Another SOURCE_DATE_EPOCH: another system.
    s.build(&rootfs, "node-a", "epoch", "1700000100", &[]);
    assert_eq!(s.cache_state("epoch", "node-a"), "miss");
    assert_eq!(s.entries().len(), 2);

    // Another rootfs archive (a zstd skippable frame appended: the same
    // files, other bytes) misses too, and gives the same image.
    let other = s.dir.join("rootfs-other.tar.zst");
    let mut bytes = fs::read(&rootfs).unwrap();
    bytes.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
    bytes.extend_from_slice(&4u32.to_le_bytes());
    bytes.extend_from_slice(b"pad!");
    fs::write(&other, bytes).unwrap();
    s.build(&other, "node-a", "other", EPOCH, &[]);
    assert_eq!(s.cache_state("other", "node-a"), "miss");
    assert_eq!(s.entries().len(), 3);
    assert_same(
        &s.image("first", "node-a"),
        &s.image("other", "node-a"),
        "same files",
    );

    // A truncated squashfs in the first entry: rebuilt, not used.
    let squashfs = s.systems().join(&first[0]).join("system.squashfs");
    let len = fs::metadata(&squashfs).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&squashfs)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let res = s.build(&rootfs, "node-a", "damaged", EPOCH, &[]);
    assert!(stderr(&res).contains("system.squashfs"), "{}", stderr(&res));
    assert_eq!(s.cache_state("damaged", "node-a"), "miss");
    assert_same(
        &s.image("first", "node-a"),
        &s.image("damaged", "node-a"),
        "rebuilt",
    );
    assert_eq!(
        fs::metadata(&squashfs).unwrap().len(),
        len,
        "the entry is whole again"
    );
    s.build(&rootfs, "node-a", "healed", EPOCH, &[]);
    assert_eq!(s.cache_state("healed", "node-a"), "hit");

    // An entry with its index gone (a build killed mid-way leaves no such
    // thing, but a user might): a miss, rebuilt.
    fs::remove_file(s.systems().join(&first[0]).join("index.json")).unwrap();
    s.build(&rootfs, "node-b", "noindex", EPOCH, &[]);
    assert_eq!(s.cache_state("noindex", "node-b"), "miss");
}
