//! The `nodeimg` binary: parse the command line, run it, print the error chain
//! on one line and exit 1 on failure.

use std::process::ExitCode;

use clap::Parser;
use nodeimg::board::DataDir;
use nodeimg::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodeimg: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let data = DataDir::locate(cli.data_dir.as_deref())?;
    match cli.command {
        Command::Boards => {
            for name in data.board_names()? {
                let (board, _) = data.load(&name)?;
                println!("{:<16} {}", board.name, board.description);
            }
            Ok(())
        }
        Command::Build(args) => nodeimg::build::run(&data, &args),
        Command::CheckKernel(args) => {
            if nodeimg::build::check_kernel_command(&data, &args)? {
                Ok(())
            } else {
                anyhow::bail!("the kernel lacks options k3s requires (listed above)")
            }
        }
        Command::BootTest(args) => boot_test(&args),
    }
}

fn boot_test(args: &nodeimg::cli::BootTestArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let temp;
    let work_dir = match &args.work_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir().context("creating a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let opts = nodeimg::boottest::Options {
        image: args.image.clone(),
        work_dir,
        grow_by: nodeimg::disk::layout::parse_size(&args.grow_by)
            .with_context(|| format!("--grow-by {:?}", args.grow_by))?,
        boot_timeout: std::time::Duration::from_secs(args.timeout),
        broken: args.broken,
    };
    let report = nodeimg::boottest::run(&opts, |c| {
        println!(
            "{} {}: {}",
            if c.passed { "PASS" } else { "FAIL" },
            c.name,
            c.detail
        )
    })?;
    if report.passed() {
        println!("boot-test passed ({} checks)", report.checks.len());
        Ok(())
    } else {
        anyhow::bail!(
            "boot-test failed; the console log is {}",
            report.console_log.display()
        )
    }
}
