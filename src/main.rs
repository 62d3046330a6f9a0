//! `tether-ingress [--config PATH] [serve]`: the wiring only. Parses the
//! command line, loads the configuration, then either serves (logging,
//! bind, SIGHUP reloads, run until SIGINT/SIGTERM) or runs one admin
//! command ([`tether_ingress::Admin`]).

use std::{
    fmt::Display,
    io::{ErrorKind, Write},
    path::PathBuf,
    process::ExitCode,
};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tether_ingress::{
    Admin, AdminError,
    config::{self, Config},
    import, init_logging, on_sighup,
};

// mimalloc: measured against glibc malloc on the request path (BENCHMARKS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tether-ingress",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("TETHER_BUILD_COMMIT"), ")"),
    about = "Webhook ingress for Redis Streams or BullMQ queues, and its admin commands"
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
    /// API keys: only their SHA-256 is stored.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Workflow triggers: tether:triggers:<org>:<webhookId> sets.
    #[command(subcommand)]
    Triggers(TriggersCommand),
    /// Outreach configurations.
    #[command(subcommand)]
    Outreach(OutreachCommand),
    /// Org dynamic properties (field → contact | application | conversation).
    #[command(subcommand)]
    Properties(PropertiesCommand),
    /// Job streams.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Bring the control plane over from JSON lines (apiKey, trigger,
    /// outreachConfig, orgProperties; one per line): only what differs is
    /// written; a summary per kind at the end.
    Import {
        /// Also delete the keys of each kind in the file that the file does
        /// not name.
        #[arg(long)]
        prune: bool,
        /// Write nothing; print what would change.
        #[arg(long)]
        dry_run: bool,
        /// The file, or - for stdin.
        file: PathBuf,
    },
    /// Validate the configuration and print the effective values, secrets masked.
    CheckConfig,
    /// Ask the running ingress this configuration describes whether it is
    /// alive (GET /healthz) or, with --ready, ready (GET /readyz): on
    /// server.metrics_listen when set, else server.listen (0.0.0.0 asked on
    /// 127.0.0.1). Exits 0 on 200, 1 otherwise: a container health check
    /// (Docker HEALTHCHECK, ECS) for an image without curl.
    Healthcheck {
        /// Ask /readyz instead of /healthz.
        #[arg(long)]
        ready: bool,
    },
    /// Ask Redis, before serving, whether it will take this ingress's work:
    /// the user's permissions for every write and read the ingress makes,
    /// each node's role, version, durability and memory, the sentinels, the
    /// job streams' consumer groups or the BullMQ queues' state. One line
    /// per check (ok, warn, FAIL); exits 1 if a check failed, 3 if Redis
    /// cannot be reached.
    CheckRedis,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it (the only time it is shown).
    Create {
        /// User id the key acts as.
        #[arg(long)]
        user: String,
        /// Org id whose triggers the key reaches.
        #[arg(long)]
        org: String,
        /// Requests per second allowed for this key.
        #[arg(long, value_name = "N")]
        rate_limit: Option<u32>,
    },
    /// Delete a key (it stops working within a second).
    Revoke {
        /// The plain key.
        key: String,
    },
    /// Mark a key inactive, keeping its record.
    Disable {
        /// The plain key.
        key: String,
    },
    /// Count the keys.
    Count,
}

#[derive(Subcommand)]
enum TriggersCommand {
    /// Add workflows to a webhookId of an org.
    Add {
        /// Org id.
        org: String,
        /// webhookId.
        webhook_id: String,
        /// Workflow ids (one job each per matching request).
        #[arg(required = true)]
        workflows: Vec<String>,
    },
    /// Remove workflows from a webhookId (all of them when none given).
    Remove {
        /// Org id.
        org: String,
        /// webhookId.
        webhook_id: String,
        /// Workflow ids.
        workflows: Vec<String>,
    },
    /// List an org's triggers.
    List {
        /// Org id.
        org: String,
    },
}

#[derive(Subcommand)]
enum OutreachCommand {
    /// Create or replace an outreach configuration.
    Put {
        /// Configuration id.
        id: String,
        /// Owner user id.
        #[arg(long)]
        user: String,
        /// Owner org id.
        #[arg(long)]
        org: String,
        /// Process id.
        #[arg(long)]
        process: Option<String>,
        /// Prompt id.
        #[arg(long)]
        prompt: Option<String>,
        /// Store it inactive.
        #[arg(long)]
        inactive: bool,
    },
}

#[derive(Subcommand)]
enum PropertiesCommand {
    /// Set FIELD=CATEGORY pairs for an org.
    Set {
        /// Org id.
        org: String,
        /// FIELD=contact|application|conversation
        #[arg(required = true)]
        pairs: Vec<String>,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Follow a stream and print its entries as JSON lines.
    Tail {
        /// workflow or outreach.
        #[arg(default_value = "workflow")]
        stream: String,
        /// Start from the stream's first entry instead of its end.
        #[arg(long)]
        from_start: bool,
        /// Stop after this many entries (at least 1).
        #[arg(long, value_name = "N")]
        limit: Option<std::num::NonZeroUsize>,
    },
}

/// The environment variables, from the table the configuration reads.
fn environment_help() -> String {
    let mut text = String::from("Environment (each overrides the setting in parentheses):\n");
    for (name, key) in config::ENV {
        text.push_str(&format!("  {name:<40} ({key})\n"));
    }
    text
}

fn main() -> ExitCode {
    let matches = Cli::command().after_help(environment_help()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tether-ingress: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config, cli.config),
        Command::CheckConfig => exit(put(config::describe(&config))),
        Command::Healthcheck { ready } => match tether_ingress::healthcheck(&config, ready) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tether-ingress: healthcheck: {e}");
                ExitCode::from(e.exit_code())
            }
        },
        other => run_admin(config, other),
    }
}

/// Builds a runtime, reporting a failure on stderr.
fn runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    builder
        .enable_all()
        .build()
        .map_err(|e| eprintln!("tether-ingress: cannot start the runtime: {e}"))
        .ok()
}

fn run_admin(config: Config, command: Command) -> ExitCode {
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async move {
        let admin = Admin::connect(&config).await?;
        let config = &config;
        match command {
            Command::Keys(KeysCommand::Create {
                user,
                org,
                rate_limit,
            }) => {
                let key = admin.keys_create(&user, &org, rate_limit).await?;
                eprintln!("Created a key for user {user} in org {org}. It is shown only now:");
                if let Err(e) = put(format_args!("{key}\n")) {
                    // Nobody saw it, so nobody can use or revoke it: take
                    // it back rather than leave a live key no one holds.
                    admin.keys_revoke(&key).await?;
                    return Err(AdminError::Refused(format!(
                        "{e}; the new key was revoked, as it could not be shown"
                    )));
                }
            }
            Command::Keys(KeysCommand::Revoke { key }) => {
                admin.keys_revoke(&key).await?;
                eprintln!("Revoked.");
            }
            Command::Keys(KeysCommand::Disable { key }) => {
                admin.keys_disable(&key).await?;
                eprintln!("Disabled.");
            }
            Command::Keys(KeysCommand::Count) => {
                put(format_args!("{}\n", admin.keys_count().await?))?;
            }
            Command::Triggers(TriggersCommand::Add {
                org,
                webhook_id,
                workflows,
            }) => {
                admin.triggers_add(&org, &webhook_id, &workflows).await?;
            }
            Command::Triggers(TriggersCommand::Remove {
                org,
                webhook_id,
                workflows,
            }) => {
                admin.triggers_remove(&org, &webhook_id, &workflows).await?;
            }
            Command::Triggers(TriggersCommand::List { org }) => {
                for (webhook, workflows) in admin.triggers_list(&org).await? {
                    put(format_args!("{webhook}\t{}\n", workflows.join(" ")))?;
                }
            }
            Command::Outreach(OutreachCommand::Put {
                id,
                user,
                org,
                process,
                prompt,
                inactive,
            }) => {
                admin
                    .outreach_put(
                        &id,
                        &user,
                        &org,
                        process.as_deref(),
                        prompt.as_deref(),
                        !inactive,
                    )
                    .await?;
            }
            Command::Properties(PropertiesCommand::Set { org, pairs }) => {
                admin.properties_set(&org, &pairs).await?;
            }
            Command::Jobs(JobsCommand::Tail {
                stream,
                from_start,
                limit,
            }) => {
                admin
                    .jobs_tail(&stream, from_start, limit, &mut std::io::stdout().lock())
                    .await?;
            }
            Command::Import {
                prune,
                dry_run,
                file,
            } => {
                let options = tether_ingress::ImportOptions { prune, dry_run };
                let (client, prefix, out) = (
                    admin.client(),
                    admin.prefix(),
                    &mut std::io::stdout().lock(),
                );
                let summary = if file.as_os_str() == "-" {
                    import(client, prefix, std::io::stdin().lock(), None, options, out).await?
                } else {
                    let opened = std::fs::File::open(&file).map_err(|e| {
                        AdminError::Refused(format!("cannot open {}: {e}", file.display()))
                    })?;
                    let size = opened.metadata().ok().map(|m| m.len());
                    let input = std::io::BufReader::with_capacity(1 << 20, opened);
                    import(client, prefix, input, size, options, out).await?
                };
                put(&summary)?;
                if let Some(refusal) = summary.refusal() {
                    return Err(AdminError::Refused(refusal));
                }
            }
            Command::CheckRedis => {
                let report = tether_ingress::check_redis(&admin, config).await;
                put(&report)?;
                let failed = report.failures();
                if failed > 0 {
                    return Err(AdminError::Refused(format!(
                        "{failed} check{} failed",
                        if failed == 1 { "" } else { "s" }
                    )));
                }
            }
            Command::Serve | Command::CheckConfig | Command::Healthcheck { .. } => {}
        }
        Ok::<(), AdminError>(())
    });
    exit(result)
}

/// Writes `text` to standard output, flushed, so a failure is seen here.
fn put(text: impl Display) -> Result<(), AdminError> {
    let mut out = std::io::stdout().lock();
    write!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(AdminError::Output)
}

/// The exit code of an admin command's `result`, its failure said on
/// stderr. A reader that closed the pipe (`jobs tail | head -3`) took what
/// it wanted: that ends the command quietly, as it ends `cat`.
fn exit(result: Result<(), AdminError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(AdminError::Output(e)) if e.kind() == ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether-ingress: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn serve(config: Config, path: Option<PathBuf>) -> ExitCode {
    let log_level = init_logging(&config.log);
    tether_ingress::raise_open_file_limit(&config);
    let Some(runtime) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        // Signals are watched before the port opens: from the moment anyone
        // can connect, SIGTERM drains and SIGHUP reloads.
        let shutdown = tether_ingress::shutdown_signals();
        let reloads = on_sighup(path, log_level);
        let listener = match tokio::net::TcpListener::bind(config.server.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "tether-ingress: cannot listen on {}: {e}",
                    config.server.listen
                );
                return ExitCode::FAILURE;
            }
        };
        match tether_ingress::run_with_reloads(listener, config, shutdown, reloads).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tether-ingress: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
