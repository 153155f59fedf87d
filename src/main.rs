//! The `sftp-mirror` command line: parses arguments, loads the configuration,
//! calls into the library and maps failures to the exit codes of SPEC §4.

use anyhow::Context;
use clap::{Parser, Subcommand};
use sftp_mirror::config::{LogFormat, Secret, Settings};
use sftp_mirror::journal::{Journal, Status};
use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Keeps a local folder an exact mirror of an SFTP To Go storage, driven by its
/// signed webhooks (the remote is the truth, an event is a hint).
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Configuration file (TOML); environment variables SFTP_MIRROR__SECTION__KEY
    /// and SFTPTOGO_URL override it.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Less logging (warnings and errors only).
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: webhook listener, journal, workers.
    Serve,
    /// The journal: received events and what became of them.
    Events {
        /// Only this status: pending, running, done, failed, ignored.
        #[arg(long, value_name = "S")]
        status: Option<String>,
        /// At most this many rows, newest first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Queue failed events again.
    Retry {
        /// Every failed event.
        #[arg(long, conflicts_with = "ids")]
        failed: bool,
        /// These event ids.
        #[arg(value_name = "ID", required_unless_present = "failed")]
        ids: Vec<String>,
    },
    /// Print the X-Hub-Signature of a body (stdin by default).
    Sign {
        /// Read the secret from this file instead of the configuration.
        #[arg(long, value_name = "F")]
        secret_file: Option<PathBuf>,
        /// The body; `-` or nothing for stdin.
        file: Option<PathBuf>,
    },
}

/// A failure with its exit code (SPEC §4).
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
    fn new(code: u8, error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code,
            error: error.into(),
        }
    }
}

const EXIT_FAILED: u8 = 1;
const EXIT_CONFIG: u8 = 2;
const EXIT_ACCESS: u8 = 4;

fn config_path(cli: &Cli) -> Option<PathBuf> {
    cli.config.clone().or_else(|| {
        let default = PathBuf::from(sftp_mirror::config::DEFAULT_CONFIG_PATH);
        default.exists().then_some(default)
    })
}

fn load(cli: &Cli) -> Result<Settings, Failure> {
    Settings::load(config_path(cli).as_deref())
        .map_err(|e| Failure::new(EXIT_CONFIG, anyhow::anyhow!("invalid configuration:\n{e}")))
}

fn init_logging(cli: &Cli, format: LogFormat) {
    let default = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "sftp_mirror=debug,info",
        _ => "sftp_mirror=trace,debug",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

/// SIGTERM or SIGINT cancels the token.
fn on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot watch SIGTERM: {e}");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    match &cli.command {
        Command::Serve => {
            let settings = load(&cli)?;
            init_logging(&cli, settings.log.format);
            let token = CancellationToken::new();
            on_signals(token.clone());
            sftp_mirror::daemon::serve(&settings, token)
                .await
                .map_err(|e| {
                    let code = match e {
                        sftp_mirror::daemon::ServeError::Access(_) => EXIT_ACCESS,
                        sftp_mirror::daemon::ServeError::Bind { .. } => EXIT_CONFIG,
                        _ => EXIT_FAILED,
                    };
                    Failure::new(code, e)
                })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Events {
            status,
            limit,
            json,
        } => {
            let settings = load(&cli)?;
            let status = match status {
                None => None,
                Some(s) => Some(Status::parse(s).ok_or_else(|| {
                    Failure::new(
                        EXIT_CONFIG,
                        anyhow::anyhow!(
                            "--status {s:?}: expected pending, running, done, failed or ignored"
                        ),
                    )
                })?),
            };
            let journal = open_journal(&settings)?;
            let rows = journal
                .list(status, *limit)
                .await
                .map_err(|e| Failure::new(EXIT_FAILED, e))?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).expect("rows serialize")
                );
            } else {
                println!(
                    "{:<36} {:<13} {:<8} {:>3} {:<24} PATH / LAST ERROR",
                    "ID", "TOPIC", "STATUS", "TRY", "RECEIVED"
                );
                for r in rows {
                    let received = humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH
                            + std::time::Duration::from_millis(r.received_ms.max(0) as u64),
                    );
                    let mut tail = r.path.unwrap_or_default();
                    if let Some(e) = r.last_error {
                        tail = format!("{tail}  ({e})");
                    }
                    println!(
                        "{:<36} {:<13} {:<8} {:>3} {:<24} {tail}",
                        r.id,
                        r.topic,
                        r.status.as_str(),
                        r.attempts,
                        received.to_string()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry { failed, ids } => {
            let settings = load(&cli)?;
            let journal = open_journal(&settings)?;
            let n = journal
                .retry(if *failed { None } else { Some(ids.clone()) })
                .await
                .map_err(|e| Failure::new(EXIT_FAILED, e))?;
            println!("{n} event(s) queued again; a running daemon picks them up within 30 s");
            if !*failed && n < ids.len() {
                eprintln!(
                    "{} id(s) were not failed events and were left as they are",
                    ids.len() - n
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sign { secret_file, file } => {
            let secret = match secret_file {
                Some(f) => {
                    let s = std::fs::read_to_string(f)
                        .with_context(|| format!("cannot read secret file {}", f.display()))
                        .map_err(|e| Failure::new(EXIT_CONFIG, e))?;
                    Secret::new(s.trim_end_matches(['\r', '\n']))
                }
                None => {
                    let env: HashMap<String, String> = std::env::vars().collect();
                    let secrets =
                        Settings::load_webhook_secrets(config_path(&cli).as_deref(), &env)
                            .map_err(|e| {
                                Failure::new(
                                    EXIT_CONFIG,
                                    anyhow::anyhow!("invalid configuration:\n{e}"),
                                )
                            })?;
                    secrets.into_iter().next().ok_or_else(|| {
                        Failure::new(
                            EXIT_CONFIG,
                            anyhow::anyhow!("no webhook secret configured; pass --secret-file"),
                        )
                    })?
                }
            };
            let mut body = Vec::new();
            match file.as_deref() {
                None => std::io::stdin().read_to_end(&mut body).map(|_| ()),
                Some(p) if p.as_os_str() == "-" => {
                    std::io::stdin().read_to_end(&mut body).map(|_| ())
                }
                Some(p) => std::fs::read(p).map(|b| body = b),
            }
            .context("cannot read the body")
            .map_err(|e| Failure::new(EXIT_CONFIG, e))?;
            println!("{}", sftp_mirror::webhook::sign(&secret, &body));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn open_journal(settings: &Settings) -> Result<Journal, Failure> {
    Journal::open(&settings.journal.path)
        .with_context(|| format!("cannot open journal {}", settings.journal.path.display()))
        .map_err(|e| Failure::new(EXIT_FAILED, e))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sftp-mirror: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(f) => {
            eprintln!("sftp-mirror: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}
