//! meerkat-bench: the load generator of Meerkat, usable against any XMPP server.
//!
//! The parent process (`parent`) fixes the timeline and starts W worker processes of
//! this same binary (`worker`, hidden `--worker I/W` flag); each runs its users as
//! tokio tasks (`login`, then `session`, `presence`, `smresume`, `mam` or `muc` by scenario) over
//! hand-driven TCP/TLS or WebSocket connections (`conn`, `ws`) and
//! prints a `report::WorkerReport` as one JSON line; the parent merges them with the
//! /proc samples of the server (`procfs`) into the result line (`output`).

#![recursion_limit = "256"]

mod cli;
mod conn;
mod frame;
mod hist;
mod login;
mod mam;
mod muc;
mod output;
mod parent;
mod presence;
mod procfs;
mod report;
mod sasl;
mod schedule;
mod session;
mod smresume;
mod worker;
mod ws;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let args = cli::Args::parse();
    let r = args.validate().and_then(|()| match args.worker_slot()? {
        Some((i, w)) => worker::run(&args, i, w),
        None => parent::run(&args),
    });
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meerkat-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
