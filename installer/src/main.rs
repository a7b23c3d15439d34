//! The `meshctl` binary: parse the command line, run the command, map the result to an exit
//! status (0 success, 1 failure, 2 bad input: the command line, from clap, a bad flag value or
//! mesh file, from [`meshctl::Error::exit_code`]).

use std::process::ExitCode;

use clap::Parser;
use meshctl::cli::Cli;
use meshctl::commands::{self, Finished};
use meshctl::progress::Stderr;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(Finished::Success) => ExitCode::SUCCESS,
        Ok(Finished::Problems) => ExitCode::FAILURE,
        Ok(Finished::InputProblems) => ExitCode::from(2),
        Err(e) => {
            // Every meshctl error carries its causes and fix in its own message.
            match e.downcast_ref::<meshctl::Error>() {
                Some(e) => {
                    eprintln!("error: {}", meshctl::cli::describe(e));
                    ExitCode::from(e.exit_code())
                }
                None => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<Finished> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    let mut stdout = std::io::stdout().lock();
    let finished = runtime.block_on(commands::run(cli, &mut stdout, &mut Stderr))?;
    Ok(finished)
}
