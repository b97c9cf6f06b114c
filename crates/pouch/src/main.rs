//! `pouch`: the server, the administrator's tool and the device client in one
//! binary. This file only parses arguments, picks the storage backend, reads
//! passphrases and prints; the work happens in the library crates.
#![forbid(unsafe_code)]

mod bench;
mod cli;
mod workload;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            // One line, no backtrace: what went wrong and what to do.
            let msg = format!("{e:#}");
            eprintln!("error: {}", msg.lines().next().unwrap_or("unknown error"));
            ExitCode::from(1)
        }
    }
}
