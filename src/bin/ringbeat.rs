//! `ringbeat`: the server binary. `ringbeat serve` runs the server;
//! SIGTERM or SIGINT close every connection with CLOSE(SHUTDOWN) and exit 0;
//! SIGHUP reopens the events file (after logrotate moved or removed it).
//! `ringbeat check-system` says what would stop this machine from holding
//! N connections, with the fix for each; it exits 1 if something blocks.
//! `ringbeat token` mints a HELLO token (PROTOCOL.md, Authentication).
//! `ringbeat presence --cluster URL get ID|count|watch` reads the cluster's
//! presence directory and events (docs/CLUSTER.md).

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ringbeat::auth::{Authenticator, KeySpec};
use ringbeat::config::{Config, IoMode, ServeArgs};
use ringbeat::server::Server;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
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

// Parsed once at start; the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Print the kernel's io_uring features and which io modes can run.
    Features,
    /// Report what would stop this machine from holding N connections.
    CheckSystem(CheckArgs),
    /// Print a HELLO token (compact JWT) for one client_id to stdout.
    Token(TokenArgs),
    /// Ask the cluster's presence directory (NATS JetStream).
    Presence(PresenceArgs),
}

#[derive(Args, Debug)]
struct TokenArgs {
    /// Signing key: KID=hs256:SECRET_FILE or KID=eddsa:PRIVATE_KEY.pem
    #[arg(long, value_name = "KID=ALG:FILE", value_parser = parse_key)]
    key: KeySpec,
    /// The token's `sub`: the client_id its HELLO will carry
    #[arg(long, value_name = "ID")]
    client_id: u64,
    /// How long the token is valid (`exp` = now + ttl), e.g. 1h, 30d
    #[arg(long, value_name = "DUR", value_parser = parse_ttl, default_value = "1h")]
    ttl: std::time::Duration,
}

fn parse_key(s: &str) -> Result<KeySpec, String> {
    s.parse()
        .map_err(|e: ringbeat::auth::KeyError| e.to_string())
}

fn parse_ttl(s: &str) -> Result<std::time::Duration, String> {
    let ttl = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if ttl.as_secs() == 0 {
        return Err("--ttl must be at least 1s".into());
    }
    Ok(ttl)
}

#[derive(Args, Debug)]
struct PresenceArgs {
    /// NATS URL of the cluster, nats://HOST:PORT
    #[arg(long, value_name = "URL")]
    cluster: String,
    #[command(subcommand)]
    query: PresenceQuery,
}

#[derive(Subcommand, Debug)]
enum PresenceQuery {
    /// Print the directory entry of ID as JSON; exit 1 if it is offline.
    Get {
        #[arg(value_name = "ID")]
        client_id: u64,
    },
    /// Print how many clients are online across the cluster.
    Count,
    /// Print online/offline events as JSON lines until interrupted.
    Watch,
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// Connections this machine should hold
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    connections: u64,
    /// Shards (rings) the server will run [default: cores]
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// auto, fast or compat, as for serve
    #[arg(long, value_enum, value_name = "MODE", default_value = "auto")]
    io_mode: IoMode,
    /// The clients run on this machine too (load tests): count their
    /// sockets' memory and ephemeral ports
    #[arg(long)]
    local_clients: bool,
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
        Command::Serve(args) => serve(args),
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
        Command::CheckSystem(args) => check_system(&args),
        Command::Token(args) => token(&args),
        Command::Presence(args) => presence(&args),
    }
}

fn token(args: &TokenArgs) -> ExitCode {
    let now_s = ringbeat::auth::unix_now_s();
    match ringbeat::auth::keys::mint_from_file(&args.key, args.client_id, now_s, args.ttl.as_secs())
    {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringbeat: {e}");
            ExitCode::from(2)
        }
    }
}

fn presence(args: &PresenceArgs) -> ExitCode {
    use ringbeat::cluster::query;
    let url = &args.cluster;
    let result = match args.query {
        PresenceQuery::Get { client_id } => query::get(url, client_id).map(|entry| match entry {
            Some(e) => {
                println!("{}", serde_json::to_string(&e).expect("entry json"));
                ExitCode::SUCCESS
            }
            None => ExitCode::FAILURE,
        }),
        PresenceQuery::Count => query::count(url).map(|n| {
            println!("{n}");
            ExitCode::SUCCESS
        }),
        PresenceQuery::Watch => {
            query::watch(url, &mut std::io::stdout().lock(), None).map(|()| ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("ringbeat presence: {e}");
        ExitCode::from(2)
    })
}

fn check_system(args: &CheckArgs) -> ExitCode {
    use ringbeat::system_check::{report, Inputs, Target};
    let shards = args
        .shards
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if shards == 0 || args.connections == 0 {
        eprintln!("ringbeat: --shards and --connections must be at least 1");
        return ExitCode::from(2);
    }
    let target = Target {
        connections: args.connections,
        shards,
        io_mode: args.io_mode,
        local_clients: args.local_clients,
    };
    let report = report(&Inputs::gather(), &target);
    print!("{}", report.render());
    if report.blocked() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
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
    // Load every key now: a bad key file is one line and exit 2, not a
    // refusal of every client later.
    let auth = match Authenticator::from_config(&config) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ringbeat: {e}");
            return ExitCode::from(2);
        }
    };
    drop(auth); // the server loads the keys again for its shards
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringbeat: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives once clients can connect must
    // shut down cleanly, not kill the process with the default action.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let server = Server::start(config)?;
    for addr in server.local_addrs() {
        tracing::info!(%addr, "listening");
    }
    if let Some(addr) = server.metrics_addr() {
        tracing::info!("metrics at http://{addr}/metrics");
    }
    let handle = server.shutdown_handle();
    let reopen = server.events_reopen_handle();
    std::thread::Builder::new()
        .name("ringbeat-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    tracing::info!("SIGHUP: reopening the events file");
                    reopen.iter().for_each(|r| r.reopen());
                    continue;
                }
                tracing::info!(signal = sig, "shutting down");
                handle.shutdown();
                break;
            }
        })?;
    server.join()
}
