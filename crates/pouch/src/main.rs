//! `pouch`: the server, the administrator's tool and the device client in one
//! binary. This file only parses arguments, picks the storage backend, reads
//! passphrases and prints; the work happens in the library crates.
#![forbid(unsafe_code)]

mod bench;
mod cli;
mod workload;

use clap::{CommandFactory, FromArgMatches};
use std::process::ExitCode;

fn main() -> ExitCode {
    // The matches are kept besides the parsed arguments: `pouch server`
    // needs to know which settings the command line gave (they win over its
    // config file) and which are only defaults.
    let matches = cli::Cli::command().get_matches();
    let args = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli::run(args, &matches) {
        Ok(code) => code,
        // The reader of our output closed it (`pouch read 7 | head`): done.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            // One line, no backtrace: what went wrong and what to do.
            let msg = format!("{e:#}");
            eprintln!("error: {}", msg.lines().next().unwrap_or("unknown error"));
            ExitCode::from(1)
        }
    }
}
