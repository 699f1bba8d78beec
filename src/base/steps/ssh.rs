//! openssh-server: `/etc/ssh/sshd_config` from the package's template
//! (`/usr/share/openssh/sshd_config`, which its postinst copies), plus a
//! drop-in that makes a node's policy explicit: root logs in with a key
//! only, no password or keyboard-interactive authentication. (Host keys are
//! not made here: they are per node, created on first boot.)

use anyhow::Result;

use super::{read, write};
use crate::tree::Tree;

pub const POLICY: &str = "# nodeimg: keys from cluster.yaml's ssh_authorized_keys only.\n\
PermitRootLogin prohibit-password\n\
PasswordAuthentication no\n\
KbdInteractiveAuthentication no\n";

pub fn run(tree: &mut Tree, mtime: u64) -> Result<()> {
    let Some(template) = read(tree, "usr/share/openssh/sshd_config")? else {
        return Ok(());
    };
    if !tree.contains("etc/ssh/sshd_config") {
        write(tree, "etc/ssh/sshd_config", template, 0o644, mtime)?;
    }
    write(
        tree,
        "etc/ssh/sshd_config.d/10-nodeimg.conf",
        POLICY.as_bytes().to_vec(),
        0o644,
        mtime,
    )
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn config_from_template_and_policy_drop_in() {
        let mut t = tree(&[(
            "usr/share/openssh/sshd_config",
            "Include /etc/ssh/sshd_config.d/*.conf\nUsePAM yes\n",
        )]);
        run(&mut t, 0).unwrap();
        assert!(text(&t, "etc/ssh/sshd_config").starts_with("Include /etc/ssh/sshd_config.d/"));
        assert!(text(&t, "etc/ssh/sshd_config.d/10-nodeimg.conf")
            .contains("PasswordAuthentication no\n"));
        let mut none = tree(&[]);
        run(&mut none, 0).unwrap();
        assert!(!none.contains("etc/ssh/sshd_config"));
    }
}
