//! `ringbeat`: the server binary. `ringbeat serve` runs the server;
//! SIGTERM or SIGINT close every connection with CLOSE(SHUTDOWN) and exit 0.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ringbeat::config::{Config, ServeArgs};
use ringbeat::server::Server;
use signal_hook::consts::{SIGINT, SIGTERM};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "ringbeat",
    version,
    about = "Heartbeat server for a million connections per box"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Print the kernel's io_uring features and which io modes can run.
    Features,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Features => {
            let f = ringbeat::ring::Features::probe();
            let verdict = |r: Result<(), String>| {
                r.map_or_else(|e| format!("missing ({e})"), |()| "ready".into())
            };
            println!(
                "{}; fast mode: {}; compat mode: {}",
                f.summary(),
                verdict(f.fast_mode_ready()),
                verdict(f.compat_mode_ready())
            );
            ExitCode::SUCCESS
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::resolve(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringbeat: {e}");
            return ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringbeat: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let server = Server::start(config)?;
    for addr in server.local_addrs() {
        tracing::info!(%addr, "listening");
    }
    if let Some(addr) = server.metrics_addr() {
        tracing::info!("metrics at http://{addr}/metrics");
    }
    let handle = server.shutdown_handle();
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("ringbeat-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "shutting down");
                handle.shutdown();
            }
        })?;
    server.join()
}
