//! The `sftp-mirror` command line: parses arguments, loads the configuration,
//! calls into the library and maps failures to the exit codes of SPEC §4.

use anyhow::Context;
use clap::{Parser, Subcommand};
use sftp_mirror::config::{LogFormat, Secret, Settings};
use sftp_mirror::daemon::MirrorAccess;
use sftp_mirror::exit::{ACCESS as EXIT_ACCESS, CONFIG as EXIT_CONFIG, FAILED as EXIT_FAILED, GUARD as EXIT_GUARD};
use sftp_mirror::journal::{Journal, Status};
use sftp_mirror::remote::RemoteError;
use sftp_mirror::sync::reconcile;
use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use tokio_util::sync::CancellationToken;

/// The help heading of the flags every command takes, kept apart from each
/// command's own.
const GLOBAL: &str = "Global options";

/// Keeps a local folder an exact mirror of an SFTP To Go storage, driven by its
/// signed webhooks (the remote is the truth, an event is a hint).
#[derive(Parser)]
#[command(
    version,
    about,
    long_about = None,
    after_help = "Exit codes: 0 success / converged; 1 finished with failures; 2 bad configuration or usage; \
                  3 reconcile refused by the delete guard; 4 cannot reach or log in to the SFTP server, or host key mismatch."
)]
struct Cli {
    /// Configuration file (TOML) [default: /etc/sftp-mirror/config.toml, if it exists];
    /// environment variables SFTP_MIRROR__SECTION__KEY and SFTPTOGO_URL override it.
    /// Not taken by `demo` (it brings its own server and mirror).
    #[arg(long, global = true, value_name = "PATH", help_heading = GLOBAL)]
    config: Option<PathBuf>,
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = GLOBAL)]
    verbose: u8,
    /// Less logging (warnings and errors only).
    #[arg(short, long, global = true, help_heading = GLOBAL)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: webhook listener, journal, workers.
    Serve,
    /// One pass: make the mirror equal the remote, then exit.
    Reconcile {
        /// Print the plan only; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Never delete local entries in this pass.
        #[arg(long)]
        no_delete: bool,
        /// Proceed even when the delete guard (mirror.max_delete_ratio) trips.
        #[arg(long)]
        force: bool,
        /// Print the summary as one JSON object (and no plan lines).
        #[arg(long)]
        json: bool,
    },
    /// Validate config, connect, verify the host key, log in, probe the mirror.
    Check {
        /// Record the server's host key in sftp.known_hosts (trust on first use);
        /// refuses if a different key is already recorded.
        #[arg(long)]
        trust_host_key: bool,
    },
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
    /// The whole pipeline on this machine, no account needed.
    #[cfg(feature = "testkit")]
    Demo {
        /// Leave the daemon running and print a curl command to send an event by hand.
        #[arg(long)]
        keep_running: bool,
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
        Failure { code, error: error.into() }
    }
}

/// Plan lines printed before a real pass ("… and N more" after that).
const PLAN_LINES: usize = 20;

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

fn init_logging(quiet: bool, verbose: u8, format: LogFormat) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "sftp_mirror=debug,info",
        _ => "sftp_mirror=trace,debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    // Colour only for a person at a terminal (not a file, a pipe or the
    // journal), and never with NO_COLOR set (no-color.org).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| sftp_mirror::terminal::LogWriter(Vec::new()))
        .with_ansi(colour);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
        LogFormat::Journald => builder.with_ansi(false).event_format(sftp_mirror::logfmt::Journald).try_init(),
    };
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    match &cli.command {
        Command::Serve => {
            let settings = load(&cli)?;
            init_logging(cli.quiet, cli.verbose, settings.log.format);
            let token = CancellationToken::new();
            sftp_mirror::daemon::serve(&settings, config_path(&cli), token).await.map_err(|e| {
                let code = match &e {
                    sftp_mirror::daemon::ServeError::Access(_) => EXIT_ACCESS,
                    // What the operator must fix in the setup: exit 2 (README).
                    e if e.is_setup() => EXIT_CONFIG,
                    _ => EXIT_FAILED,
                };
                Failure::new(code, e)
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reconcile { dry_run, no_delete, force, json } => {
            let settings = load(&cli)?;
            init_logging(cli.quiet, cli.verbose, settings.log.format);
            let opts = reconcile::Options { dry_run: *dry_run, no_delete: *no_delete, force: *force };
            reconcile_command(&settings, opts, *json, cli.verbose > 0).await
        }
        #[cfg(feature = "testkit")]
        Command::Demo { keep_running } => {
            if cli.config.is_some() {
                // Silently ignoring it would let a user believe the demo used their setup.
                return Err(Failure::new(
                    EXIT_CONFIG,
                    anyhow::anyhow!(
                        "demo takes no --config: it runs its own embedded SFTP server and a temporary mirror"
                    ),
                ));
            }
            // The narration is the output; logs only for errors unless -v.
            if cli.verbose == 0 && std::env::var_os("RUST_LOG").is_none() {
                std::env::set_var("RUST_LOG", "error");
            }
            init_logging(cli.quiet, cli.verbose, LogFormat::Human);
            match sftp_mirror::demo::run(*keep_running).await {
                Ok(true) => Ok(ExitCode::SUCCESS),
                Ok(false) => Err(Failure::new(EXIT_FAILED, anyhow::anyhow!("the mirror does not equal the remote"))),
                Err(e) => Err(Failure::new(EXIT_FAILED, e)),
            }
        }
        Command::Check { trust_host_key } => {
            init_logging(true, cli.verbose, LogFormat::Human);
            let env: HashMap<String, String> = std::env::vars().collect();
            let code =
                sftp_mirror::check::run(config_path(&cli).as_deref(), &env, *trust_host_key, &mut std::io::stdout())
                    .await;
            Ok(ExitCode::from(code))
        }
        Command::Events { status, limit, json } => {
            let journal_path = load_journal_path(&cli)?;
            let status = match status {
                None => None,
                Some(s) => Some(Status::parse(s).ok_or_else(|| {
                    Failure::new(
                        EXIT_CONFIG,
                        anyhow::anyhow!("--status {s:?}: expected pending, running, done, failed or ignored"),
                    )
                })?),
            };
            let journal = open_journal(&journal_path)?;
            let rows = journal.list(status, *limit).await.map_err(|e| Failure::new(EXIT_FAILED, e))?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&rows).expect("rows serialize"));
            } else {
                println!(
                    "{:<36} {:<13} {:<8} {:>3} {:<24} PATH / LAST ERROR",
                    "ID", "TOPIC", "STATUS", "TRY", "RECEIVED"
                );
                for r in rows {
                    let received = humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.received_ms.max(0) as u64),
                    );
                    let mut tail = r.path.unwrap_or_default();
                    if let Some(e) = r.last_error {
                        tail = format!("{tail}  ({e})");
                    }
                    if let Some(o) = r.outcome {
                        tail = format!("{tail}  → {o}");
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
            let journal = open_journal(&load_journal_path(&cli)?)?;
            let n = journal
                .retry(if *failed { None } else { Some(ids.clone()) })
                .await
                .map_err(|e| Failure::new(EXIT_FAILED, e))?;
            println!("{n} event(s) queued again; a running daemon picks them up within 5 s");
            if !*failed && n < ids.len() {
                return Err(Failure::new(
                    EXIT_FAILED,
                    anyhow::anyhow!(
                        "{} of the given id(s) are not failed events in the journal (unknown, or not failed): left as they are",
                        ids.len() - n
                    ),
                ));
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
                    let secrets = Settings::load_webhook_secrets(config_path(&cli).as_deref(), &env)
                        .map_err(|e| Failure::new(EXIT_CONFIG, anyhow::anyhow!("invalid configuration:\n{e}")))?;
                    secrets.into_iter().next().ok_or_else(|| {
                        Failure::new(EXIT_CONFIG, anyhow::anyhow!("no webhook secret configured; pass --secret-file"))
                    })?
                }
            };
            let mut body = Vec::new();
            match file.as_deref() {
                None => std::io::stdin().read_to_end(&mut body).map(|_| ()),
                Some(p) if p.as_os_str() == "-" => std::io::stdin().read_to_end(&mut body).map(|_| ()),
                Some(p) => std::fs::read(p).map(|b| body = b),
            }
            .context("cannot read the body")
            .map_err(|e| Failure::new(EXIT_CONFIG, e))?;
            println!("{}", sftp_mirror::webhook::sign(&secret, &body));
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn reconcile_command(
    settings: &Settings,
    opts: reconcile::Options,
    json: bool,
    verbose: bool,
) -> Result<ExitCode, Failure> {
    let mut syncer =
        sftp_mirror::daemon::syncer(settings, if opts.dry_run { MirrorAccess::ReadOnly } else { MirrorAccess::Write })
            .map_err(|e| Failure::new(EXIT_FAILED, e))?;
    // Changes made by this pass fire the hooks too (SPEC §9), journaled as the daemon's.
    if !opts.dry_run && settings.hooks.any() {
        let journal = open_journal(&settings.journal.path)?;
        syncer.hooks = sftp_mirror::hooks::Hooks::new(journal, &settings.hooks, settings.mirror.path.clone());
    }
    let syncer = std::sync::Arc::new(syncer);
    let hooks_done = CancellationToken::new();
    let hook_runner = match syncer.hooks.clone() {
        Some(h) => {
            h.resolve_armed(&syncer.mirror).await.map_err(|e| Failure::new(EXIT_FAILED, e))?;
            Some(tokio::spawn(h.run(CancellationToken::new(), hooks_done.clone())))
        }
        None => None,
    };
    if let Err(e) = syncer.remote.conn().await {
        return Err(Failure::new(EXIT_ACCESS, e));
    }
    let bar = std::sync::Arc::new(sftp_mirror::terminal::Bar::new(syncer.clone()));
    let ticker = bar.ticker();
    let trash = syncer.mirror.trash_keep().is_some();
    let print_plan = |plan: &reconcile::Plan| {
        if json {
            return;
        }
        let limit = if opts.dry_run || verbose { usize::MAX } else { PLAN_LINES };
        println!(
            "plan: {} change(s), {} unchanged ({} remote entries, {} local)",
            plan.ops.len(),
            plan.unchanged,
            plan.remote_entries,
            plan.local_entries
        );
        // By path, so a person can find an entry (the walk's order is the listing's).
        let mut ops: Vec<&reconcile::Op> = plan.ops.iter().collect();
        ops.sort_by(|a, b| a.path().cmp(b.path()));
        for op in ops.into_iter().take(limit) {
            println!("  {}", op.describe(trash));
        }
        if plan.ops.len() > limit {
            println!("  … and {} more (--dry-run or -v lists all)", plan.ops.len() - limit);
        }
    };
    // The listing spinner is cleared for the plan and drawn again below it,
    // never left behind among the plan's lines.
    let mut on_plan = |plan: &reconcile::Plan| match &bar.bar {
        Some(b) => b.suspend(|| print_plan(plan)),
        None => print_plan(plan),
    };
    let r = reconcile::run(
        &syncer,
        opts,
        settings.mirror.max_delete_ratio,
        settings.mirror.concurrency,
        bar.as_ref(),
        &mut on_plan,
    )
    .await;
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(b) = &bar.bar {
        b.finish_and_clear();
    }
    let summary = match r {
        Ok(s) => s,
        Err(e @ reconcile::ReconcileError::DeleteGuard { .. }) => return Err(Failure::new(EXIT_GUARD, e)),
        Err(reconcile::ReconcileError::Remote(e)) => {
            let code = match &e {
                e if e.is_not_found() => {
                    return Err(Failure::new(
                        EXIT_CONFIG,
                        anyhow::anyhow!(
                            "sftp.remote_root {:?} does not exist on the server ({e})",
                            settings.sftp.remote_root
                        ),
                    ))
                }
                RemoteError::Status { .. } | RemoteError::Unstable { .. } => EXIT_FAILED,
                _ => EXIT_ACCESS,
            };
            return Err(Failure::new(code, e));
        }
        Err(e) => return Err(Failure::new(EXIT_FAILED, e)),
    };
    // The hooks of this pass's changes run to their end (retries included).
    let mut hooks_failed = 0;
    if let (Some(runner), Some(h)) = (hook_runner, &syncer.hooks) {
        hooks_done.cancel();
        let _ = runner.await;
        hooks_failed = h.stats.gave_up.load(Ordering::Relaxed);
        let ran = h.stats.timed.load(Ordering::Relaxed);
        if !json && ran > 0 {
            println!("hooks: {ran} run(s), {hooks_failed} failed for good (`sftp-mirror events --status failed`)");
        }
    }
    if json {
        println!("{}", serde_json::to_string(&summary).expect("summary serializes"));
    } else {
        println!("{summary}");
        for e in &summary.errors {
            println!("  failed: {e}");
        }
    }
    Ok(if summary.failed == 0 && hooks_failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILED) })
}

fn open_journal(path: &std::path::Path) -> Result<Journal, Failure> {
    Journal::open(path)
        .with_context(|| format!("cannot open journal {}", path.display()))
        .map_err(|e| Failure::new(EXIT_FAILED, e))
}

/// `journal.path` alone (`events`, `retry`).
fn load_journal_path(cli: &Cli) -> Result<std::path::PathBuf, Failure> {
    let env: HashMap<String, String> = std::env::vars().collect();
    Settings::load_journal_path(config_path(cli).as_deref(), &env)
        .map_err(|e| Failure::new(EXIT_CONFIG, anyhow::anyhow!("invalid configuration:\n{e}")))
}

/// glibc's malloc adapts its thresholds so that every freed 255 KiB SFTP read
/// buffer is handed back to the kernel (madvise) and the next one page-faults
/// fresh zeroed pages: a quarter of the process's CPU in a 500 x 1 MiB download
/// (perf). Fixed thresholds keep those buffers for reuse (sys CPU 1.3 -> 0.9 s
/// there); peak RSS stays under 30 MiB in every bench scenario.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// One-shot commands behave like Unix tools in a pipeline: `reconcile | head`
/// ends them quietly by SIGPIPE once the reader is gone (Rust ignores SIGPIPE,
/// so `println!` would panic on EPIPE instead). The daemon keeps ignoring it.
fn default_sigpipe() {
    // SAFETY: resets one signal's disposition before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The error and its causes on one line, each cause once: many errors name
/// their cause in their own message too ("create mirror folder X: No such
/// file or directory"), and `{:#}` would repeat it.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !line.contains(&c) {
            line.push_str(": ");
            line.push_str(&c);
        }
    }
    line
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    // The daemon and the demo (a daemon too) keep ignoring SIGPIPE.
    #[cfg(feature = "testkit")]
    let long_running = matches!(cli.command, Command::Serve | Command::Demo { .. });
    #[cfg(not(feature = "testkit"))]
    let long_running = matches!(cli.command, Command::Serve);
    if !long_running {
        default_sigpipe();
    }
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
            eprintln!("sftp-mirror: {}", one_line(&f.error));
            ExitCode::from(f.code)
        }
    }
}
