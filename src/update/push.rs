//! `nodeimg update push BUNDLE [USER@]NODE`: streams a bundle over SSH into
//! the node's own helper (`nodeimg update apply -`), which verifies it
//! against the key in the node's image; nothing is trusted on this side.
//! The bundle is checked to be one before it is sent (a readable tar whose
//! first entry is the manifest), so a wrong file fails here, quickly.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::update::bundle;

pub struct PushOptions<'a> {
    pub port: Option<u16>,
    pub identity: Option<&'a Path>,
    pub tries: Option<u32>,
    pub reboot: bool,
    /// More `-o` options for ssh (`StrictHostKeyChecking=accept-new`, ...).
    pub ssh_options: &'a [String],
}

/// The ssh program: `$NODEIMG_SSH`, else `ssh`.
fn ssh_program() -> String {
    std::env::var("NODEIMG_SSH").unwrap_or_else(|_| "ssh".to_string())
}

/// The ssh arguments for pushing to `target`.
pub fn ssh_args(target: &str, opts: &PushOptions) -> Result<Vec<String>> {
    if target.is_empty() || target.starts_with('-') || target.contains(char::is_whitespace) {
        bail!("{target:?} is not a [user@]host to push to");
    }
    let mut a = vec!["-o".to_string(), "BatchMode=yes".to_string()];
    for o in opts.ssh_options {
        a.extend(["-o".to_string(), o.clone()]);
    }
    if let Some(p) = opts.port {
        a.extend(["-p".to_string(), p.to_string()]);
    }
    if let Some(i) = opts.identity {
        a.extend(["-i".to_string(), i.display().to_string()]);
    }
    a.extend([
        "--".to_string(),
        target.to_string(),
        "nodeimg".to_string(),
        "update".to_string(),
        "apply".to_string(),
    ]);
    if let Some(t) = opts.tries {
        a.extend(["--tries".to_string(), t.to_string()]);
    }
    if !opts.reboot {
        a.push("--no-reboot".to_string());
    }
    a.push("-".to_string());
    Ok(a)
}

pub fn push(bundle_path: &Path, target: &str, opts: &PushOptions) -> Result<()> {
    let mut f =
        File::open(bundle_path).with_context(|| format!("opening {}", bundle_path.display()))?;
    let mut head = [0u8; 512];
    f.read_exact(&mut head)
        .with_context(|| format!("{} is not an update bundle", bundle_path.display()))?;
    let name_end = head[..100].iter().position(|b| *b == 0).unwrap_or(100);
    if &head[..name_end] != bundle::MANIFEST.as_bytes() {
        bail!(
            "{} is not an update bundle (its first entry is not {})",
            bundle_path.display(),
            bundle::MANIFEST
        );
    }
    let f =
        File::open(bundle_path).with_context(|| format!("opening {}", bundle_path.display()))?;
    let args = ssh_args(target, opts)?;
    let program = ssh_program();
    eprintln!("nodeimg: pushing {} to {target}", bundle_path.display());
    let st = Command::new(&program)
        .args(&args)
        .stdin(Stdio::from(f))
        .status()
        .with_context(|| format!("running {program}"))?;
    match st.code() {
        Some(0) => Ok(()),
        Some(255) => bail!("could not reach {target} over ssh (ssh exited 255)"),
        _ => bail!("{target} did not apply the update (its error is above; ssh {st})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_runs_the_nodes_helper_on_stdin_with_the_options() {
        let a = ssh_args(
            "root@node1",
            &PushOptions {
                port: Some(2222),
                identity: Some(Path::new("/k/id")),
                tries: Some(2),
                reboot: false,
                ssh_options: &["ConnectTimeout=5".to_string()],
            },
        )
        .unwrap();
        assert_eq!(
            a.join(" "),
            "-o BatchMode=yes -o ConnectTimeout=5 -p 2222 -i /k/id -- root@node1 nodeimg update apply --tries 2 --no-reboot -"
        );
        let a = ssh_args(
            "n",
            &PushOptions {
                port: None,
                identity: None,
                tries: None,
                reboot: true,
                ssh_options: &[],
            },
        )
        .unwrap();
        assert_eq!(a.join(" "), "-o BatchMode=yes -- n nodeimg update apply -");
        for bad in ["", "-oProxyCommand=x", "a b"] {
            let opts = PushOptions {
                port: None,
                identity: None,
                tries: None,
                reboot: true,
                ssh_options: &[],
            };
            assert!(ssh_args(bad, &opts).is_err(), "{bad}");
        }
    }
}
