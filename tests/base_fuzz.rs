//! Property tests over mutated valid inputs for the base's readers of
//! untrusted bytes: deb822 and `Packages` (then the resolver over what was
//! accepted), relation fields, Debian versions, lock files, and signed
//! `InRelease` files (verified against a key generated here).
//!
//! For every case: no panic, and an error's message (with its context chain)
//! is one line. Where a reader accepts a mutated input, what it returns is
//! checked: versions order consistently; an InRelease that still verifies
//! says what the signed original said.
//!
//! Bounded by default (a few seconds under `--release`); longer with
//! `NODEIMG_FUZZ_CASES=200000`, other mutations with `NODEIMG_FUZZ_SEED=<n>`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use nodeimg::base::{archive, deb822, lock::Lock, resolve, version::Version};

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
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn cases(default: usize) -> usize {
    std::env::var("NODEIMG_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    std::env::var("NODEIMG_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Tokens of the formats, worth inserting.
const DICT: &[&[u8]] = &[
    b"\n",
    b"\n\n",
    b"\n ",
    b" ",
    b":",
    b",",
    b"|",
    b"(",
    b")",
    b"<<",
    b">=",
    b"=",
    b"~",
    b"-",
    b"+",
    b".",
    b"0",
    b"9",
    b"99999999999999999999",
    b"Package: ",
    b"Version: ",
    b"Depends: ",
    b"Provides: ",
    b"Conflicts: ",
    b"Breaks: ",
    b"Size: ",
    b"SHA256: ",
    b"Filename: ",
    b"../",
    b"/",
    b"#",
    b"\t",
    b"\r\n",
    b":any",
    b"[amd64]",
    b"<!nocheck>",
    b"\"",
    b"[[package]]",
    b"\xff",
    b"-----BEGIN PGP SIGNATURE-----",
    b"- ",
    b"Hash: SHA512\n",
];

/// One to four mutations: bit flips, byte sets, deletions, duplications,
/// dictionary insertions.
fn mutate(rng: &mut Rng, d: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = d.len();
        let at = rng.below(len + 1);
        match rng.below(6) {
            0 if len > 0 => d[at.min(len - 1)] ^= 1 << rng.below(8),
            1 if len > 0 => d[at.min(len - 1)] = rng.below(256) as u8,
            2 if len > 0 => {
                let n = 1 + rng.below(16.min(len - at.min(len - 1)));
                d.drain(at.min(len - 1)..(at.min(len - 1) + n).min(len));
            }
            3 if len > 0 => {
                let start = rng.below(len);
                let n = 1 + rng.below(32.min(len - start));
                let chunk = d[start..start + n].to_vec();
                d.splice(at..at, chunk);
            }
            _ => {
                let tok = DICT[rng.below(DICT.len())];
                d.splice(at..at, tok.iter().copied());
            }
        }
    }
}

/// Runs `check` on mutations of each of `inputs`; panics (with the input)
/// on a panic inside.
fn fuzz(name: &str, inputs: &[Vec<u8>], n: usize, check: impl Fn(&[u8])) {
    let mut rng = Rng::new(seed() ^ name.len() as u64);
    for i in 0..n {
        let mut d = inputs[i % inputs.len()].clone();
        mutate(&mut rng, &mut d);
        if catch_unwind(AssertUnwindSafe(|| check(&d))).is_err() {
            let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
            let _ = std::fs::create_dir_all(&dir);
            let p = dir.join(format!("{name}-{i}"));
            let _ = std::fs::write(&p, &d);
            panic!("{name}: case {i} panicked; input saved to {}", p.display());
        }
    }
}

fn one_line(e: &anyhow::Error) {
    let m = format!("{e:#}");
    assert!(!m.contains('\n'), "multi-line error: {m:?}");
}

const PACKAGES: &str = "Package: app\nVersion: 1:2.0-1~deb13u1\nArchitecture: arm64\n\
Pre-Depends: libc6 (>= 2.36)\nDepends: libx (>= 2~) | liby, tool:any, mta\n\
Conflicts: old-app (<< 1.0)\nBreaks: libz (<= 3)\nMulti-Arch: foreign\n\
Filename: pool/main/a/app/app_2.0-1~deb13u1_arm64.deb\nSize: 1234\n\
SHA256: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n\
Description: an app\n more text\n .\n end\n\n\
Package: libx\nVersion: 2.0-3\nArchitecture: arm64\nProvides: tool (= 1), mta\n\
Multi-Arch: allowed\nFilename: pool/main/l/libx/libx_2.0-3_arm64.deb\nSize: 1\n\
SHA256: 1123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n\n\
Package: libc6\nVersion: 2.41-12\nArchitecture: arm64\nEssential: yes\n\
Filename: pool/main/g/glibc/libc6_2.41-12_arm64.deb\nSize: 2\n\
SHA256: 2123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n\n\
Package: liby\nVersion: 0.1\nArchitecture: all\nConflicts: app\n\
Filename: pool/main/l/liby/liby_0.1_all.deb\nSize: 3\n\
SHA256: 3123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n";

#[test]
fn packages_and_the_resolver() {
    let inputs = vec![PACKAGES.as_bytes().to_vec()];
    fuzz("packages", &inputs, cases(10_000), |d| {
        let Ok(text) = std::str::from_utf8(d) else {
            return;
        };
        if let Err(e) = deb822::parse(text) {
            assert!(!e.to_string().contains('\n'));
        }
        match archive::parse_packages(text) {
            Err(e) => one_line(&e),
            Ok(pkgs) => {
                let wanted = vec!["app".to_string(), "libx".to_string()];
                match resolve::resolve(&pkgs, "arm64", &wanted, true) {
                    Err(e) => one_line(&e),
                    Ok(chosen) => {
                        // Sorted by name, each once.
                        assert!(chosen.windows(2).all(|w| w[0].name < w[1].name));
                    }
                }
            }
        }
    });
}

#[test]
fn relations_and_versions() {
    let inputs: Vec<Vec<u8>> = [
        "libc6 (>= 2.36), libx (>= 2~) | liby:any (<< 1:3.0-1+b1), tool:native",
        "1:2.0-1~deb13u1",
        "2.41-12+deb13u1",
        "0.0~git20240101.abc+ds-1.1",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let reference = Version::parse("1:2.0-1").unwrap();
    fuzz("relations", &inputs, cases(20_000), |d| {
        let Ok(text) = std::str::from_utf8(d) else {
            return;
        };
        if let Err(e) = resolve::parse_relations(text) {
            one_line(&e);
        }
        if let Ok(v) = Version::parse(text) {
            // A total order: antisymmetric, and equal to itself reparsed.
            assert_eq!(v.cmp(&reference), reference.cmp(&v).reverse());
            assert_eq!(Version::parse(&v.to_string()).unwrap(), v);
        }
    });
}

#[test]
fn lock_files() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("boards/base/qemu-aarch64.lock"),
    )
    .unwrap();
    // The first packages only: mutations then land in every part of the file.
    let cut = text
        .match_indices("[[package]]")
        .nth(4)
        .map(|(i, _)| i)
        .unwrap();
    let inputs = vec![text.as_bytes()[..cut].to_vec()];
    fuzz("lock", &inputs, cases(5_000), |d| {
        let Ok(t) = std::str::from_utf8(d) else {
            return;
        };
        match Lock::parse(t) {
            Err(e) => one_line(&e),
            Ok(lock) => {
                // What was accepted is valid, and writes back to a lock that parses.
                lock.validate().unwrap();
                Lock::parse(&lock.to_text().unwrap()).unwrap();
            }
        }
    });
}

#[test]
fn signed_inrelease() {
    use pgp::composed::{
        ArmorOptions, CleartextSignedMessage, EncryptionCaps, KeyType, SecretKeyParamsBuilder,
    };
    use pgp::types::{KeyDetails, Password};
    let mut params = SecretKeyParamsBuilder::default();
    params
        .key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(true)
        .can_encrypt(EncryptionCaps::None)
        .primary_user_id("Fuzz <fuzz@example.invalid>".into());
    let key = params
        .build()
        .unwrap()
        .generate(rand::thread_rng())
        .unwrap();
    let public = key.to_public_key();
    let keyring = archive::Keyring::from_pinned(&[(
        "test key".into(),
        public.to_armored_string(ArmorOptions::default()).unwrap(),
        hex::encode_upper(public.fingerprint().as_bytes()),
    )])
    .unwrap();
    let text = format!(
        "Origin: Debian\nSuite: stable\nCodename: trixie\nDate: Sat, 01 Nov 2025 10:00:00 UTC\n\
         Acquire-By-Hash: yes\nSHA256:\n {} 1234 main/binary-arm64/Packages.xz\n \
         {} 99 main/binary-arm64/Release\n",
        "a".repeat(64),
        "b".repeat(64)
    );
    let signed = CleartextSignedMessage::sign(
        rand::thread_rng(),
        &text,
        &key.primary_key,
        &Password::empty(),
    )
    .unwrap()
    .to_armored_string(ArmorOptions::default())
    .unwrap();
    let original = archive::verify_inrelease(signed.as_bytes(), &keyring).unwrap();
    let inputs = vec![signed.into_bytes()];
    fuzz(
        "inrelease",
        &inputs,
        cases(3_000),
        |d| match archive::verify_inrelease(d, &keyring) {
            Err(e) => one_line(&e),
            Ok(r) => {
                assert_eq!(r.date, original.date);
                assert_eq!(r.files, original.files);
                assert_eq!(r.codename, original.codename);
            }
        },
    );
}
