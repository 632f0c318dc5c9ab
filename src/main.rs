#![warn(clippy::too_many_lines)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    vpd::app::quiet_native_logs();
    let cli = vpd::cli::Cli::parse();
    match vpd::app::launch(cli) {
        Ok(code) => code,
        // Usage errors found after parsing (a worker without a broker URL, …) print like clap's own.
        Err(err) => match err.downcast::<clap::Error>() {
            Ok(usage) => usage.exit(),
            Err(err) => {
                eprintln!("vpd: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}
