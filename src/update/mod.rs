//! Updates: signing keys and signatures (`sign`), the update bundle (`bundle`),
//! U-Boot as the slot-picking loader (`uboot`), what a node knows of its
//! system (`release`), the node-side helper shipped in images (`helper`),
//! applying, committing and reporting on the node (`node`, `health`), and
//! pushing a bundle to a node (`push`).
//! See docs/updates.md.

pub mod bundle;
pub mod health;
pub mod helper;
pub mod node;
pub mod push;
pub mod release;
pub mod sign;
pub mod uboot;

use std::time::Duration;

use anyhow::Result;

use crate::cli::UpdateCommand;

/// The node the on-node commands act on: this machine, or (for tests) a
/// stand-in directory named by `$NODEIMG_NODE_ROOT`, where no command
/// (remount, reboot, systemctl) is run.
fn node_here() -> node::Node {
    match std::env::var_os("NODEIMG_NODE_ROOT") {
        Some(root) => node::Node::at(std::path::Path::new(&root)),
        None => node::Node::live(),
    }
}

/// `nodeimg update ...`.
pub fn command(cmd: &UpdateCommand) -> Result<()> {
    match cmd {
        UpdateCommand::Verify(a) => bundle::verify_command(a),
        UpdateCommand::Apply(a) => {
            node::apply(
                &node_here(),
                &a.bundle,
                &node::ApplyOptions {
                    tries: a.tries,
                    reboot: !a.no_reboot,
                    expect_version: a.expect_version,
                },
            )?;
            Ok(())
        }
        UpdateCommand::Commit(a) => {
            let checks = match (a.no_check, a.checks.is_empty()) {
                (true, _) => Some(Vec::new()),
                (false, true) => None,
                (false, false) => Some(a.checks.clone()),
            };
            let node = node_here();
            let opts = node::CommitOptions {
                checks,
                timeout: a.timeout.map(Duration::from_secs),
                reboot: !a.no_reboot,
            };
            match node::commit(&node, &opts) {
                Ok(msg) => {
                    println!("nodeimg: {msg}");
                    Ok(())
                }
                Err(e) => match e.downcast_ref::<node::FallBack>() {
                    // Said before the reboot, which may end this process.
                    Some(f) => {
                        eprintln!("nodeimg: error: {f}");
                        node.reboot()?;
                        std::process::exit(1)
                    }
                    None => Err(e),
                },
            }
        }
        UpdateCommand::Status(a) => {
            let s = node::status(&node_here())?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", s.to_text());
            }
            Ok(())
        }
        UpdateCommand::Push(a) => push::push(
            &a.bundle,
            &a.node,
            &push::PushOptions {
                port: a.port,
                identity: a.identity.as_deref(),
                tries: a.tries,
                reboot: !a.no_reboot,
                ssh_options: &a.ssh_options,
            },
        ),
    }
}
