//! `kitebridge check`: everything `serve` would refuse, found without serving.

use crate::validate::validate;
use std::path::Path;
use std::process::ExitCode;

/// Runs the check and prints one line per problem.
pub fn run(path: &Path) -> ExitCode {
    let Some(config) = super::load(path) else {
        return ExitCode::FAILURE;
    };
    match validate(&config).map(|v| v.summary) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in problems {
                eprintln!("{p}");
            }
            ExitCode::FAILURE
        }
    }
}
