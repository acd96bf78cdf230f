//! The `tandem-bench` binary: `tandem-bench <scenario> [options]`; see the crate's scenarios.

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "tandem-bench",
    version,
    about = "Measure a Yjs server (Tandem or another) under load"
)]
struct Cli {
    #[command(subcommand)]
    scenario: tandem_bench::Scenario,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|runtime| runtime.block_on(tandem_bench::run(cli.scenario)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tandem-bench: {err}");
            ExitCode::FAILURE
        }
    }
}
