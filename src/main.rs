//! The `nodeimg` binary: parse the command line, run it, print the error chain
//! on one line and exit 1 on failure.

use std::process::ExitCode;

use clap::Parser;
use nodeimg::board::DataDir;
use nodeimg::cli::{BaseCommand, Cli, Command};

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
            if nodeimg::kernelconfig::command(&data, &args)? {
                Ok(())
            } else {
                anyhow::bail!("the kernel lacks options k3s requires (listed above)")
            }
        }
        Command::BootTest(args) => nodeimg::boottest::command(&args),
        Command::Base(BaseCommand::Lock(args)) => nodeimg::base::lock_command(&data, &args),
        Command::Base(BaseCommand::Fetch(args)) => nodeimg::base::fetch_command(&data, &args),
        Command::Flash(args) => match &args.fastboot {
            Some(outdir) => nodeimg::android::fastboot::command(&data, outdir, args.dry_run),
            None => nodeimg::flash::command(&args),
        },
        Command::Keygen(args) => {
            let public = nodeimg::update::sign::keygen(&args.out)?;
            println!("secret key: {} (keep it private)", args.out.display());
            println!("public key: {}", public.display());
            Ok(())
        }
        Command::Update(cmd) => nodeimg::update::command(&cmd),
        Command::Inspect(args) => nodeimg::inspect::command(&args),
        Command::Base(BaseCommand::Compose(a)) => {
            nodeimg::base::compose::command(&a.debs, &a.console, a.unpack_only, &a.out)
        }
    }
}
