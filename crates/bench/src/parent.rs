//! The parent process: fixes the run's timeline, starts the worker processes, samples
//! the server processes from /proc every 200 ms (and exactly at the phase boundaries),
//! merges the workers' reports and writes the result line.

use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::cli::{Args, Scenario};
use crate::output::{self, ServerStats};
use crate::report::WorkerReport;
use crate::worker::unix_us;

const SAMPLE_EVERY_MS: u64 = 200;

/// The run's timeline in Unix ms.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// First login.
    pub login_ms: u64,
    /// Start of the measured phase (end of the login ramp, and of the setup phase).
    pub start_ms: u64,
    /// End of the measured phase.
    pub end_ms: u64,
    /// Sessions close (after the drain); mam: end of the fill's drain.
    pub close_ms: u64,
    /// mam: start of the lookups (after the pass through the archives); else `close_ms`.
    pub lookup_start_ms: u64,
    /// mam: end of the lookups; else `close_ms`.
    pub lookup_end_ms: u64,
    /// Tags this run's messages.
    pub run_id: u64,
}

/// Runs the whole benchmark and writes its result.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let workers = args.worker_count();
    let now_ms = unix_us() / 1000;
    // Time for the workers to start before the first login.
    let login_ms = now_ms + 300 + 30 * u64::from(workers);
    // presence: the (unmeasured) subscription setup runs between the ramp and the start.
    let start_ms = login_ms + ((args.ramp_seconds() + args.setup_seconds()) * 1000.0) as u64;
    let end_ms = match args.scenario {
        Scenario::Register => start_ms,
        _ => start_ms + (args.send_seconds() * 1000.0) as u64,
    };
    let close_ms = match args.scenario.sends() {
        true => end_ms + (args.drain_seconds * 1000.0) as u64,
        false => end_ms,
    };
    let (lookup_start_ms, lookup_end_ms) = match args.scenario {
        Scenario::Mam => {
            let start = close_ms + (args.learn_seconds() * 1000.0) as u64;
            (start, start + (args.lookup_seconds * 1000.0) as u64)
        }
        _ => (close_ms, close_ms),
    };
    let plan = Plan {
        login_ms,
        start_ms,
        end_ms,
        close_ms,
        lookup_start_ms,
        lookup_end_ms,
        run_id: unix_us() ^ (u64::from(std::process::id()) << 40),
    };

    let mut server = ServerStats::new(&args.server_pid);
    server.sample_start();
    let exe = std::env::current_exe().context("locating the meerkat-bench executable")?;
    let user_args: Vec<_> = std::env::args_os().skip(1).collect();
    let mut children = Vec::new();
    for i in 0..workers {
        let mut child = Command::new(&exe)
            .args(&user_args)
            .arg("--worker")
            .arg(format!("{i}/{workers}"))
            .args(["--plan-login-ms", &plan.login_ms.to_string()])
            .args(["--plan-start-ms", &plan.start_ms.to_string()])
            .args(["--run-id", &plan.run_id.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting worker {i}"))?;
        let mut stdout = child.stdout.take().context("worker stdout")?;
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            stdout.read_to_string(&mut s).map(|_| s)
        });
        children.push((child, reader));
    }

    sample_until_done(&mut server, &plan, &mut children);

    let mut total = WorkerReport::new();
    for (i, (mut child, reader)) in children.into_iter().enumerate() {
        let status = child.wait().with_context(|| format!("waiting for worker {i}"))?;
        let text = match reader.join() {
            Ok(Ok(s)) => s,
            _ => bail!("worker {i}: its output could not be read"),
        };
        let Some(line) = text.lines().rev().find(|l| !l.trim().is_empty()) else {
            bail!("worker {i} exited with {status} and printed no result");
        };
        let r: WorkerReport =
            serde_json::from_str(line).with_context(|| format!("worker {i} printed an unreadable result"))?;
        total.merge(&r);
    }
    let result = output::result(args, workers, &plan, &total, &server);
    eprint!("{}", output::summary(&result));
    output::write(args, &result)
}

/// Samples the server processes until every worker has exited.
fn sample_until_done(
    server: &mut ServerStats,
    plan: &Plan,
    children: &mut [(Child, std::thread::JoinHandle<std::io::Result<String>>)],
) {
    let boundaries = [plan.start_ms, plan.end_ms, plan.close_ms, plan.lookup_start_ms, plan.lookup_end_ms];
    let mut marked = [false; 5];
    loop {
        let now = unix_us() / 1000;
        for (i, &b) in boundaries.iter().enumerate() {
            if !marked[i] && now >= b {
                marked[i] = true;
                match i {
                    0 => server.sample_after_login(),
                    1 => server.sample_window_end(),
                    2 => server.sample_closing(),
                    3 => server.sample_lookup_start(),
                    _ => server.sample_lookup_end(),
                }
            }
        }
        server.sample();
        let running = children.iter_mut().any(|(c, _)| matches!(c.try_wait(), Ok(None)));
        if !running {
            break;
        }
        let now = unix_us() / 1000;
        let next_boundary = boundaries.iter().zip(&marked).filter(|(_, m)| !**m).map(|(b, _)| *b).min();
        let mut wait = SAMPLE_EVERY_MS;
        if let Some(b) = next_boundary {
            wait = wait.min(b.saturating_sub(now));
        }
        std::thread::sleep(Duration::from_millis(wait.max(1)));
    }
    // A run that ended early (every login failed) still gets all its samples.
    if !marked[0] {
        server.sample_after_login();
    }
    if !marked[1] {
        server.sample_window_end();
    }
    if !marked[2] {
        server.sample_closing();
    }
    if !marked[3] {
        server.sample_lookup_start();
    }
    if !marked[4] {
        server.sample_lookup_end();
    }
    server.sample_final();
}

/// The commit being measured: `git rev-parse --short HEAD` in the current directory,
/// else in the directory of this executable (a workspace's target/), else
/// `$MEERKAT_COMMIT`, else "unknown".
pub fn commit() -> String {
    let exe_dir = std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.to_path_buf()));
    let dirs = [Some(std::path::PathBuf::from(".")), exe_dir];
    let git = dirs.iter().flatten().find_map(|dir| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["rev-parse", "--short", "HEAD"])
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    });
    git.or_else(|| std::env::var("MEERKAT_COMMIT").ok().filter(|s| !s.is_empty())).unwrap_or_else(|| "unknown".into())
}
