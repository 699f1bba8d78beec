//! The health check that decides whether a trial boot is committed: the
//! system reached multi-user, the k3s service is up, and the kubelet's
//! health endpoint answers. Which checks apply is found from the node
//! (`auto`): multi-user needs systemd as init, the k3s checks a k3s unit.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Check {
    /// systemd's multi-user.target is active.
    MultiUser,
    /// k3s.service is active.
    K3s,
    /// The kubelet's health endpoint (127.0.0.1:10248/healthz) answers "ok".
    Kubelet,
}

impl Check {
    pub fn name(self) -> &'static str {
        match self {
            Check::MultiUser => "multi-user",
            Check::K3s => "k3s",
            Check::Kubelet => "kubelet",
        }
    }
}

/// The checks that apply to the node under `root`.
pub fn auto(root: &Path) -> Vec<Check> {
    let mut v = Vec::new();
    if root.join("run/systemd/system").is_dir() {
        v.push(Check::MultiUser);
        let unit = [
            "usr/lib/systemd/system/k3s.service",
            "etc/systemd/system/k3s.service",
        ]
        .iter()
        .any(|u| root.join(u).is_file());
        if unit {
            v.push(Check::K3s);
            v.push(Check::Kubelet);
        }
    }
    v
}

/// Runs one check once: Ok when it passes, else why not.
fn once(check: Check) -> Result<(), String> {
    let active = |unit: &str| -> Result<(), String> {
        let out = Command::new("systemctl")
            .args(["is-active", unit])
            .output()
            .map_err(|e| format!("running systemctl: {e}"))?;
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if state == "active" {
            Ok(())
        } else {
            Err(format!("{unit} is {state}"))
        }
    };
    match check {
        Check::MultiUser => active("multi-user.target"),
        Check::K3s => active("k3s.service"),
        Check::Kubelet => {
            let agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .new_agent();
            let mut resp = agent
                .get("http://127.0.0.1:10248/healthz")
                .call()
                .map_err(|e| format!("the kubelet's health endpoint: {e}"))?;
            let body = resp
                .body_mut()
                .with_config()
                .limit(4096)
                .read_to_string()
                .map_err(|e| format!("the kubelet's health endpoint: {e}"))?;
            if body.trim() == "ok" {
                Ok(())
            } else {
                Err(format!(
                    "the kubelet's health endpoint says {:?}",
                    body.trim()
                ))
            }
        }
    }
}

/// Runs `checks` until all pass or `timeout` runs out; says what passed, or
/// what did not.
pub fn run(checks: &[Check], timeout: Duration) -> Result<String> {
    if checks.is_empty() {
        return Ok("no health check applies (no systemd, no k3s)".to_string());
    }
    let start = Instant::now();
    loop {
        let failed: Vec<String> = checks.iter().filter_map(|c| once(*c).err()).collect();
        if failed.is_empty() {
            let names: Vec<&str> = checks.iter().map(|c| c.name()).collect();
            return Ok(format!("healthy: {}", names.join(", ")));
        }
        if start.elapsed() >= timeout {
            bail!(
                "not healthy after {} s: {}",
                timeout.as_secs(),
                failed.join("; ")
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_follow_the_init_system_and_the_k3s_unit() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(auto(root.path()), vec![]);
        std::fs::create_dir_all(root.path().join("run/systemd/system")).unwrap();
        assert_eq!(auto(root.path()), vec![Check::MultiUser]);
        let units = root.path().join("usr/lib/systemd/system");
        std::fs::create_dir_all(&units).unwrap();
        std::fs::write(units.join("k3s.service"), "").unwrap();
        assert_eq!(
            auto(root.path()),
            vec![Check::MultiUser, Check::K3s, Check::Kubelet]
        );
    }

    #[test]
    fn no_check_passes_trivially_and_says_so() {
        let s = run(&[], Duration::ZERO).unwrap();
        assert!(s.contains("no health check applies"), "{s}");
    }

    #[test]
    fn a_kubelet_that_does_not_answer_fails_with_the_reason() {
        // Nothing listens on the kubelet port on a build machine.
        if std::net::TcpStream::connect("127.0.0.1:10248").is_ok() {
            return;
        }
        let e = format!("{:#}", run(&[Check::Kubelet], Duration::ZERO).unwrap_err());
        assert!(
            e.contains("not healthy after 0 s: the kubelet's health endpoint"),
            "{e}"
        );
    }
}
