//! `nodeimg base lock` and `nodeimg base fetch` against a test archive served
//! by a local HTTP server and signed in the test with a freshly generated
//! OpenPGP key (signing subkey, as Debian's archive keys do). The good path
//! writes a lock, fills the cache and then works offline; a tampered,
//! unsigned or foreign-signed InRelease, a Packages.xz that does not match
//! InRelease, and a `.deb` that does not match the lock (or is gone) are each
//! a clear error, with no lock written and nothing cached.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use pgp::composed::{
    ArmorOptions, CleartextSignedMessage, EncryptionCaps, KeyType, SecretKeyParamsBuilder,
    SignedSecretKey, SubkeyParamsBuilder,
};
use pgp::types::{KeyDetails, Password};
use sha2::{Digest, Sha256};

mod common;
use common::*;

type Files = Arc<Mutex<HashMap<String, Vec<u8>>>>;

/// A minimal HTTP/1.1 server: GET of a known path is 200 with its bytes,
/// anything else 404. One connection at a time, closed after each answer.
fn serve(files: Files) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                match reader.read_line(&mut h) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if h == "\r\n" || h == "\n" => break,
                    Ok(_) => {}
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            let body = files.lock().unwrap().get(&path).cloned();
            let _ = match body {
                Some(b) => conn
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            b.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|_| conn.write_all(&b)),
                None => conn.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            };
        }
    });
    format!("http://{addr}/debian")
}

fn keygen(uid: &str) -> SignedSecretKey {
    let mut sign = SubkeyParamsBuilder::default();
    sign.key_type(KeyType::Ed25519Legacy)
        .can_sign(true)
        .can_encrypt(EncryptionCaps::None)
        .can_authenticate(false);
    let mut params = SecretKeyParamsBuilder::default();
    params
        .key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(false)
        .can_encrypt(EncryptionCaps::None)
        .primary_user_id(uid.into())
        .subkeys(vec![sign.build().unwrap()]);
    params
        .build()
        .unwrap()
        .generate(rand::thread_rng())
        .unwrap()
}

fn clearsign(key: &SignedSecretKey, text: &str) -> Vec<u8> {
    let msg = CleartextSignedMessage::sign(
        rand::thread_rng(),
        text,
        &key.secret_subkeys[0].key,
        &Password::empty(),
    )
    .unwrap();
    msg.to_armored_string(ArmorOptions::default())
        .unwrap()
        .into_bytes()
}

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn xz(b: &[u8]) -> Vec<u8> {
    let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 6);
    enc.write_all(b).unwrap();
    enc.finish().unwrap()
}

/// The test archive: three packages (app needs libx, which `Provides` the
/// virtual name tool; other is not wanted), their .debs (arbitrary bytes),
/// Packages.xz by path and by hash, InRelease signed by `key`.
struct Archive {
    files: Files,
    mirror: String,
    key: SignedSecretKey,
    debs: HashMap<&'static str, Vec<u8>>,
    inrelease_text: String,
}

const SUITE: &str = "testsuite";

impl Archive {
    fn new() -> Archive {
        let key = keygen("Test Archive <archive@example.invalid>");
        let mut debs = HashMap::new();
        let mut packages = String::new();
        for (name, version, fields) in [
            (
                "app",
                "1.0-1",
                "Depends: missing-pkg | libx (>= 2~), tool\n",
            ),
            ("libx", "2.0-3", "Provides: tool (= 1)\nMulti-Arch: same\n"),
            ("other", "1:0.5", "Conflicts: app\n"),
        ] {
            let deb = format!("not really a .deb: {name} {version}\n")
                .repeat(100)
                .into_bytes();
            // Like Debian's, file names leave the epoch out.
            let bare = version.rsplit(':').next().unwrap();
            let filename = format!("pool/main/{name}_{bare}_arm64.deb");
            packages.push_str(&format!(
                "Package: {name}\nVersion: {version}\nArchitecture: arm64\n{fields}\
                 Filename: {filename}\nSize: {}\nSHA256: {}\nDescription: test\n\n",
                deb.len(),
                sha256(&deb)
            ));
            debs.insert(name, deb);
        }
        let archive = Archive {
            files: Arc::new(Mutex::new(HashMap::new())),
            mirror: String::new(),
            key,
            debs,
            inrelease_text: String::new(),
        };
        let mirror = serve(archive.files.clone());
        let mut a = Archive { mirror, ..archive };
        let pxz = xz(packages.as_bytes());
        let h = sha256(&pxz);
        a.inrelease_text = format!(
            "Origin: Test\nSuite: {SUITE}\nCodename: {SUITE}\nDate: Sat, 01 Nov 2025 10:00:00 UTC\n\
             Architectures: arm64\nComponents: main\nAcquire-By-Hash: yes\nSHA256:\n \
             {h} {} main/binary-arm64/Packages.xz\n {} 10 main/binary-arm64/Release\n",
            pxz.len(),
            "0".repeat(64)
        );
        let signed = clearsign(&a.key, &a.inrelease_text);
        let d = format!("/debian/dists/{SUITE}");
        {
            let mut f = a.files.lock().unwrap();
            f.insert(format!("{d}/InRelease"), signed);
            f.insert(format!("{d}/main/binary-arm64/Packages.xz"), pxz.clone());
            f.insert(format!("{d}/main/binary-arm64/by-hash/SHA256/{h}"), pxz);
        }
        for (name, deb) in &a.debs {
            let path = packages
                .lines()
                .skip_while(|l| *l != format!("Package: {name}"))
                .find_map(|l| l.strip_prefix("Filename: "))
                .unwrap();
            a.set(&format!("/debian/{path}"), deb.clone());
        }
        a
    }

    fn set(&self, path: &str, bytes: Vec<u8>) {
        self.files.lock().unwrap().insert(path.to_string(), bytes);
    }

    fn remove(&self, path: &str) {
        self.files.lock().unwrap().remove(path);
    }

    fn inrelease_path(&self) -> String {
        format!("/debian/dists/{SUITE}/InRelease")
    }

    /// A data dir whose qemu-aarch64 board uses recipe `testbase` (keyring
    /// `testkeys` pinning `pin_key`'s fingerprint).
    fn data_dir(&self, dir: &Path, pin_key: &SignedSecretKey) -> PathBuf {
        let data = data_dir_with_board(dir, "qemu-aarch64", |t| {
            t.replace("base = \"debian-trixie\"", "base = \"testbase\"")
                .replace(
                    "base_packages = [\"linux-image-arm64\"]",
                    "base_packages = [\"app\"]",
                )
        });
        let keys = data.join("boards/base/keys");
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::write(
            data.join("boards/base/testbase.toml"),
            format!(
                "distribution = \"debian\"\nsuite = \"{SUITE}\"\ncomponents = [\"main\"]\n\
                 architecture = \"arm64\"\nkeyring = \"testkeys\"\npackages = []\n"
            ),
        )
        .unwrap();
        let public = pin_key.to_public_key();
        std::fs::write(
            keys.join("test.asc"),
            public.to_armored_string(ArmorOptions::default()).unwrap(),
        )
        .unwrap();
        std::fs::write(
            keys.join("testkeys.toml"),
            format!(
                "[[key]]\nfile = \"test.asc\"\nfingerprint = \"{}\"\n",
                hex::encode_upper(public.fingerprint().as_bytes())
            ),
        )
        .unwrap();
        data
    }
}

fn base(data: &Path, cache: &Path, args: &[&str]) -> std::process::Output {
    run(nodeimg()
        .arg("--data-dir")
        .arg(data)
        .arg("base")
        .args(args)
        .env("XDG_CACHE_HOME", cache)
        .env_remove("NODEIMG_DEBIAN_MIRROR"))
}

fn lock_path(data: &Path) -> PathBuf {
    data.join("boards/base/qemu-aarch64.lock")
}

fn lock_args(a: &Archive, data: &Path) -> Vec<String> {
    vec![
        "lock".into(),
        "qemu-aarch64".into(),
        "--mirror".into(),
        a.mirror.clone(),
        "-o".into(),
        data.join("boards/base").display().to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Files in the cache directory tree, temporaries included.
fn cached(cache: &Path) -> Vec<String> {
    let dir = cache.join("nodeimg/debs/sha256");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn lock_then_fetch_then_offline() {
    let dir = scratch("base-archive-good");
    let a = Archive::new();
    let data = a.data_dir(&dir, &a.key);
    let cache = dir.join("cache");
    let out = base(&data, &cache, &strs(&lock_args(&a, &data)));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(lock_path(&data)).unwrap();
    let lock = nodeimg::base::lock::Lock::parse(&text).unwrap();
    let got: Vec<(&str, &str)> = lock
        .packages
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    // libx satisfies both `libx (>= 2~)` and the virtual `tool`; `other` is not wanted.
    assert_eq!(got, [("app", "1.0-1"), ("libx", "2.0-3")]);
    for p in &lock.packages {
        assert_eq!(p.sha256, sha256(&a.debs[p.name.as_str()]));
        assert_eq!(p.size, a.debs[p.name.as_str()].len() as u64);
    }
    let inrelease = a.files.lock().unwrap()[&a.inrelease_path()].clone();
    assert_eq!(lock.release.inrelease_sha256, sha256(&inrelease));
    assert_eq!(lock.release.date, "Sat, 01 Nov 2025 10:00:00 UTC");
    assert_eq!(lock.indexes[0].path, "main/binary-arm64/Packages.xz");

    // The same archive gives the same bytes.
    let again = base(&data, &cache, &strs(&lock_args(&a, &data)));
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(std::fs::read_to_string(lock_path(&data)).unwrap(), text);

    let fetch = ["fetch", "qemu-aarch64", "--mirror", &a.mirror];
    let out = base(&data, &cache, &fetch);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut want: Vec<String> = lock.packages.iter().map(|p| p.sha256.clone()).collect();
    want.sort();
    assert_eq!(cached(&cache), want);
    for h in &want {
        let bytes = std::fs::read(cache.join("nodeimg/debs/sha256").join(h)).unwrap();
        assert_eq!(&sha256(&bytes), h);
    }

    // Offline: a mirror nothing listens on is never asked.
    let offline = [
        "fetch",
        "qemu-aarch64",
        "--mirror",
        "http://127.0.0.1:1/debian",
    ];
    let out = base(&data, &cache, &offline);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("2 packages verified"),
        "{}",
        stdout(&out)
    );

    // A board whose package list changed after the lock was made is sent
    // to relock, before anything is fetched.
    let board = data.join("boards/qemu-aarch64.toml");
    let t = std::fs::read_to_string(&board).unwrap();
    std::fs::write(
        &board,
        t.replace(
            "base_packages = [\"app\"]",
            "base_packages = [\"app\", \"other\"]",
        ),
    )
    .unwrap();
    let out = base(&data, &cache, &offline);
    assert!(
        stderr(&out).contains("made for another package list")
            && stderr(&out).contains("run `nodeimg base lock qemu-aarch64`"),
        "{}",
        stderr(&out)
    );
    std::fs::write(&board, t).unwrap();

    // A damaged cache entry is fetched again.
    std::fs::write(cache.join("nodeimg/debs/sha256").join(&want[0]), b"damaged").unwrap();
    assert!(!base(&data, &cache, &offline).status.success());
    let out = base(&data, &cache, &fetch);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(cached(&cache), want);
}

fn lock_fails(a: &Archive, data: &Path, want: &str) {
    let cache = data.join("../cache");
    let out = base(data, &cache, &strs(&lock_args(a, data)));
    let err = stderr(&out);
    assert!(!out.status.success(), "lock succeeded");
    assert!(err.contains(want), "wanted {want:?} in: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!lock_path(data).exists(), "a lock was written");
}

#[test]
fn tampered_inrelease_is_refused() {
    let dir = scratch("base-archive-tampered");
    let a = Archive::new();
    let data = a.data_dir(&dir, &a.key);
    let p = a.inrelease_path();
    let signed = String::from_utf8(a.files.lock().unwrap()[&p].clone()).unwrap();
    let tampered = signed.replace("Sat, 01 Nov 2025", "Sun, 02 Nov 2025");
    assert_ne!(tampered, signed);
    a.set(&p, tampered.into_bytes());
    lock_fails(
        &a,
        &data,
        "no valid OpenPGP signature by a pinned archive key",
    );
}

#[test]
fn inrelease_signed_by_another_key_is_refused() {
    let dir = scratch("base-archive-foreign");
    let a = Archive::new();
    let other = keygen("Someone Else <else@example.invalid>");
    let data = a.data_dir(&dir, &other);
    lock_fails(
        &a,
        &data,
        "no valid OpenPGP signature by a pinned archive key",
    );
}

#[test]
fn unsigned_or_missing_inrelease_is_refused() {
    let dir = scratch("base-archive-unsigned");
    let a = Archive::new();
    let data = a.data_dir(&dir, &a.key);
    a.set(&a.inrelease_path(), a.inrelease_text.clone().into_bytes());
    lock_fails(&a, &data, "not a clearsigned OpenPGP message");
    a.remove(&a.inrelease_path());
    lock_fails(&a, &data, "not on the mirror (HTTP 404)");
}

#[test]
fn a_signed_inrelease_of_another_suite_is_refused() {
    let dir = scratch("base-archive-suite");
    let a = Archive::new();
    let data = a.data_dir(&dir, &a.key);
    let other = a.inrelease_text.replace(
        &format!("Suite: {SUITE}\nCodename: {SUITE}"),
        "Suite: oldstable\nCodename: bookworm",
    );
    assert_ne!(other, a.inrelease_text);
    a.set(&a.inrelease_path(), clearsign(&a.key, &other));
    lock_fails(
        &a,
        &data,
        "signed for suite \"oldstable\" (codename \"bookworm\"), not \"testsuite\"",
    );
}

#[test]
fn a_pin_that_does_not_match_its_key_file_is_refused() {
    let dir = scratch("base-archive-pin");
    let a = Archive::new();
    let data = a.data_dir(&dir, &a.key);
    let pins = data.join("boards/base/keys/testkeys.toml");
    let text = std::fs::read_to_string(&pins).unwrap();
    let fpr = hex::encode_upper(a.key.fingerprint().as_bytes());
    std::fs::write(&pins, text.replace(&fpr, &"AB".repeat(20))).unwrap();
    lock_fails(&a, &data, "the pin says");
}

#[test]
fn packages_xz_not_matching_inrelease_is_refused() {
    let dir = scratch("base-archive-index");
    let a = Archive::new();
    let data = a.data_dir(&dir, &a.key);
    let paths: Vec<String> = a
        .files
        .lock()
        .unwrap()
        .keys()
        .filter(|k| k.contains("binary-arm64/"))
        .cloned()
        .collect();
    assert_eq!(paths.len(), 2);
    // Same size, other bytes: the hash catches it.
    for p in &paths {
        let mut b = a.files.lock().unwrap()[p].clone();
        let last = b.len() - 1;
        b[last] ^= 1;
        a.set(p, b);
    }
    lock_fails(&a, &data, "main/binary-arm64/Packages.xz: SHA-256");
    // Another size.
    for p in &paths {
        a.set(p, xz(b"Package: evil\n"));
    }
    lock_fails(&a, &data, "main/binary-arm64/Packages.xz: size");
}

/// A good lock in `data`, then the archive's libx .deb changed by `change`.
fn locked_then(a: &Archive, data: &Path) -> (nodeimg::base::lock::Lock, String) {
    let out = base(data, &data.join("../cache0"), &strs(&lock_args(a, data)));
    assert!(out.status.success(), "{}", stderr(&out));
    let lock = nodeimg::base::lock::Lock::parse(&std::fs::read_to_string(lock_path(data)).unwrap())
        .unwrap();
    let libx = lock.packages.iter().find(|p| p.name == "libx").unwrap();
    (lock.clone(), format!("/debian/{}", libx.filename))
}

#[test]
fn a_deb_not_matching_the_lock_is_refused_and_not_cached() {
    let dir = scratch("base-archive-deb");
    let a = Archive::new();
    let data = a.data_dir(&dir, &a.key);
    let (_, libx) = locked_then(&a, &data);
    let mut evil = a.debs["libx"].clone();
    evil[0] ^= 0x20;
    a.set(&libx, evil);
    let cache = dir.join("cache");
    let out = base(
        &data,
        &cache,
        &["fetch", "qemu-aarch64", "--mirror", &a.mirror],
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("libx 2.0-3: the download from") && err.contains("does not match the lock"),
        "{err}"
    );
    assert!(err.contains("nothing was cached"), "{err}");
    // app (fetched before libx, in lock order) is cached; libx and no temporary is.
    assert_eq!(cached(&cache), [sha256(&a.debs["app"])]);
}

#[test]
fn a_deb_gone_from_the_mirror_names_the_refresh_command() {
    let dir = scratch("base-archive-gone");
    let a = Archive::new();
    let data = a.data_dir(&dir, &a.key);
    let (_, libx) = locked_then(&a, &data);
    a.remove(&libx);
    let cache = dir.join("cache");
    let out = base(
        &data,
        &cache,
        &["fetch", "qemu-aarch64", "--mirror", &a.mirror],
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("libx 2.0-3: the mirror no longer has this locked version")
            && err.contains("`nodeimg base lock qemu-aarch64`"),
        "{err}"
    );
    assert!(!cached(&cache).contains(&sha256(&a.debs["libx"])));
}

#[test]
fn no_mirror_anywhere_is_a_clear_error_only_when_something_is_missing() {
    let dir = scratch("base-archive-nomirror");
    let a = Archive::new();
    let data = a.data_dir(&dir, &a.key);
    locked_then(&a, &data);
    // Reading the mirror from apt sources is unit-tested; here only that
    // an explicit bad one is reported before any download.
    let out = base(
        &data,
        &dir.join("cache"),
        &[
            "fetch",
            "qemu-aarch64",
            "--mirror",
            "ftp://x.invalid/debian",
        ],
    );
    assert!(
        stderr(&out).contains("is not an http:// or https:// URL"),
        "{}",
        stderr(&out)
    );
}
