//! `tether-ingress [serve] [--config PATH]`: loads the configuration, starts
//! logging, binds, and serves until SIGINT/SIGTERM.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use tether_ingress::config::Config;
use tracing_subscriber::EnvFilter;

// mimalloc: measured against glibc malloc on the request path (BENCHMARKS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tether-ingress",
    version,
    about = "Webhook ingress for Redis Streams"
)]
struct Cli {
    /// TOML configuration file (defaults are built in; env TETHER_INGRESS_* overrides).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tether-ingress: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config),
    }
}

fn serve(config: Config) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(&config.log_level))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tether-ingress: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("tether-ingress: cannot listen on {}: {e}", config.listen);
                return ExitCode::FAILURE;
            }
        };
        match tether_ingress::run(listener, config, tether_ingress::shutdown::signal()).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tether-ingress: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
