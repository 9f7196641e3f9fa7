//! The `vigil` command: `serve` runs the pipeline (OTLP in, alerts and Parquet
//! out); `rules` lets detection engineers list, check and test rules.

mod config;
mod demo;
mod detect;
mod ingest_role;
mod loadgen;
mod replay;
mod restore;
mod scenario;
mod scratch;
mod serve;
mod stages;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::config::Config;

#[global_allocator]
static ALLOCATOR: ingest::memory::Allocator = ingest::memory::Allocator {};

/// jemalloc's options, read at the first allocation (`_RJEM_MALLOC_CONF` in
/// the environment still overrides them). Events are allocated on the
/// receivers and freed on the archive and engine threads: each thread's
/// cache of freed blocks fills on one side and empties on the other, and
/// each time it takes an arena's lock. Caches up to ten times jemalloc's
/// default (2,000 blocks per size class) fill and flush less often: 1-2% less
/// CPU per record end to end (docs/performance.md, "Allocators"). jemalloc
/// reads a `const char *`: the address of the string's first byte.
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &u8 = &b"tcache_nslots_small_max:2000,lg_tcache_nslots_mul:2\0"[0];

#[derive(Parser)]
#[command(
    name = "vigil",
    version,
    about = "Detection pipeline for AI-agent telemetry: OTLP in, alerts and Parquet archives out"
)]
struct Cli {
    /// Log lines as text or as one JSON object per line (for log shippers); levels with RUST_LOG.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "VIGIL_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Receive OTLP, detect, and write alerts and archives (the embedded default needs no broker).
    Serve(ServeArgs),
    /// Scale-out front: receive OTLP and publish normalized events to Kafka (kafka.events_topic).
    Ingest(ServeArgs),
    /// Scale-out detector: consume the event topic in a consumer group, detect, publish alerts exactly once.
    Detect(DetectArgs),
    /// Start vigil on free local ports, send a day of agent telemetry with every attack of the default pack, and show the alerts.
    Demo {
        /// Where the demo's vigil keeps its data.
        #[arg(long, default_value = "vigil-demo")]
        data_dir: PathBuf,
    },
    /// Run the rules over the Parquet event archive (history), giving the alerts a live run gives.
    Replay(ReplayArgs),
    /// Send realistic mixed OTLP to a running vigil at a target rate and report throughput and latency.
    Loadgen(loadgen::LoadgenArgs),
    /// Make and hash bearer tokens for `--auth-tokens`.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// List, check and test detection rules.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Configuration file (YAML); flags override it.
    #[arg(long, short, env = "VIGIL_CONFIG")]
    config: Option<PathBuf>,
    /// OTLP/gRPC listen address [default: 127.0.0.1:4317].
    #[arg(long, env = "VIGIL_GRPC_LISTEN")]
    grpc_listen: Option<String>,
    /// OTLP/HTTP listen address, also serving /healthz, /readyz, /metrics [default: 127.0.0.1:4318].
    #[arg(long, env = "VIGIL_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// Data directory: archive/ and alerts.jsonl [default: ./vigil-data].
    #[arg(long, env = "VIGIL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Archive root [default: DATA_DIR/archive].
    #[arg(long)]
    archive_dir: Option<PathBuf>,
    /// Extra rule files or folders (repeatable).
    #[arg(long = "rules")]
    rules: Vec<PathBuf>,
    /// Extra mapping files or folders (repeatable).
    #[arg(long = "mappings")]
    mappings: Vec<PathBuf>,
    /// Kafka bootstrap servers for the alert topic.
    #[arg(long, env = "VIGIL_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Kafka topic for alerts [default: vigil.alerts].
    #[arg(long)]
    kafka_topic: Option<String>,
    /// Capture every accepted OTLP request in this folder, for `vigil replay --otlp`.
    #[arg(long)]
    capture: Option<PathBuf>,
    /// Bearer tokens per tenant (YAML of `tenant: [sha256:<hex>, ...]`); every sender must present one.
    #[arg(long, env = "VIGIL_AUTH_TOKENS")]
    auth_tokens: Option<PathBuf>,
    /// Listen on a non-loopback address without authentication (not for production).
    #[arg(long)]
    insecure_no_auth: bool,
    /// TLS certificate chain (PEM) for both receivers; with --tls-key.
    #[arg(long, env = "VIGIL_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "VIGIL_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that sign client certificates: senders must present one (mTLS).
    #[arg(long, env = "VIGIL_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// Refuse new data (429 / RESOURCE_EXHAUSTED) while RSS is near this many MiB (ingest.memory_limit_mib).
    #[arg(long, env = "VIGIL_MEMORY_LIMIT_MIB")]
    memory_limit_mib: Option<u64>,
}

#[derive(Args)]
struct ReplayArgs {
    /// Archive root (the folder holding events/) [default: DATA_DIR/archive of --config, else ./vigil-data/archive].
    #[arg(long, conflicts_with = "otlp")]
    archive: Option<PathBuf>,
    /// Captured OTLP (`vigil serve --capture DIR`): capture files or folders, replayed through normalization.
    #[arg(long, num_args = 1..)]
    otlp: Vec<PathBuf>,
    /// Configuration: lists, business hours, engine settings and rules, as for `serve`.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Start of the range (RFC 3339 time or YYYY-MM-DD, UTC), inclusive.
    #[arg(long)]
    from: Option<String>,
    /// End of the range (RFC 3339 time or YYYY-MM-DD, UTC), exclusive.
    #[arg(long)]
    to: Option<String>,
    /// With --from: the rules first go through this much of the archive
    /// before it, so state a live run had at --from (a session's prompt, the
    /// first writes of a burst) is there again; alerts of the warm-up are
    /// not reported. 0s starts the rules empty at --from.
    #[arg(long, default_value = "1d", value_parser = humantime::parse_duration)]
    warm_up: Duration,
    /// Extra rule files or folders (repeatable).
    #[arg(long = "rules")]
    rules: Vec<PathBuf>,
    /// Leave the embedded default pack out.
    #[arg(long)]
    no_default: bool,
    /// Write the alerts here as JSON lines [default: standard output].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also publish the replayed alerts (marked `replayed: true`) to this
    /// Kafka cluster; producer properties (SASL, TLS) come from --config's
    /// kafka section. Never taken from the environment, so a replay does not
    /// reach serve's topic by accident.
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// Topic for the replayed alerts [default: --config's kafka.topic, else vigil.alerts].
    #[arg(long, requires = "kafka_brokers")]
    kafka_topic: Option<String>,
    /// How long to wait at the end for the broker to acknowledge every replayed alert.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, requires = "kafka_brokers")]
    kafka_timeout: Duration,
}

#[derive(Args)]
struct DetectArgs {
    /// Consumer group of the detectors; every member shares the partitions.
    #[arg(long, default_value = "vigil-detect")]
    group: String,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a fresh random token and the `sha256:` line to put in the tokens file.
    New,
    /// Read a token on standard input and print its `sha256:` hash.
    Hash,
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Print the loaded rules.
    List(RulesArgs),
    /// Validate rule files (schema, unknown fields and lists, bad regexes) with file:line errors.
    Check(RulesArgs),
    /// Run the examples in each rule's `tests:` (and with --scenario, whole
    /// scenario files) and print a pass/fail table.
    Test(RulesTestArgs),
}

#[derive(Args)]
struct RulesTestArgs {
    #[command(flatten)]
    rules: RulesArgs,
    /// Scenario files (or folders of them, *.json) to run through the
    /// mappings and rules in process, each checked against its `expect` and
    /// `expect_none` (repeatable).
    #[arg(long = "scenario", value_name = "PATH")]
    scenarios: Vec<PathBuf>,
}

#[derive(Args)]
struct RulesArgs {
    /// Rule files or folders; without any, the default pack (plus `rules:` of --config).
    paths: Vec<PathBuf>,
    /// Configuration whose lists and business hours the rules compile against.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Leave the embedded default pack out.
    #[arg(long)]
    no_default: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: a log file or the journal gets plain text,
    // which grep and log shippers read as written.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vigil: {}", error_chain(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes joined by ": ", as `{:#}` does, leaving out a
/// cause whose text the message already carries: errors of vigil's crates
/// print their source inside their own message, so the plain chain said
/// everything twice ("parquet file F: Corrupt footer: Corrupt footer").
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let config = serve_config(args)?;
            serve::run(config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingest(args) => {
            ingest_role::run(serve_config(args)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Detect(args) => {
            let group = args.group.clone();
            detect::run(serve_config(args.serve)?, group)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Rules { command } => rules_command(command),
        Command::Token { command } => token_command(command),
        Command::Replay(args) => replay::run(args),
        Command::Demo { data_dir } => demo::run(data_dir),
        Command::Loadgen(args) => loadgen::run(args),
    }
}

fn serve_config(args: ServeArgs) -> Result<Config> {
    let mut c = Config::load_or_default(args.config.as_deref())?;
    if let Some(v) = args.grpc_listen {
        c.grpc_listen = v;
    }
    if let Some(v) = args.http_listen {
        c.http_listen = v;
    }
    if let Some(v) = args.data_dir {
        c.data_dir = v;
    }
    if let Some(v) = args.archive_dir {
        c.archive.dir = Some(v);
    }
    c.rules.extend(args.rules);
    c.mappings.extend(args.mappings);
    if let Some(v) = args.kafka_brokers {
        c.kafka.brokers = Some(v);
    }
    if let Some(v) = args.kafka_topic {
        c.kafka.topic = v;
    }
    if let Some(v) = args.capture {
        c.capture.dir = Some(v);
    }
    if let Some(v) = args.auth_tokens {
        c.auth.tokens_file = Some(v);
    }
    c.auth.insecure_no_auth |= args.insecure_no_auth;
    if let Some(v) = args.tls_cert {
        c.tls.cert_file = Some(v);
    }
    if let Some(v) = args.tls_key {
        c.tls.key_file = Some(v);
    }
    if let Some(v) = args.tls_client_ca {
        c.tls.client_ca_file = Some(v);
    }
    if let Some(v) = args.memory_limit_mib {
        c.ingest.memory_limit_mib = v;
    }
    Ok(c)
}

/// The rule set `serve` runs: the default pack (unless disabled) plus the configured paths.
pub(crate) fn load_rules(config: &Config) -> Result<rules::RuleSet> {
    let set = rules::load(config.default_rules, &config.rules, &config.rules_context())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("loading rules")?;
    for w in rule_warnings(&set) {
        tracing::warn!("{w}");
    }
    Ok(set)
}

/// What leaves a loaded rule silent without an error: a configuration list
/// no rule reads (a misspelt name: the list it meant keeps its default) and
/// rules inactive for want of a list. Said at every start and by
/// `vigil rules check`, since nothing else would tell.
fn rule_warnings(set: &rules::RuleSet) -> Vec<String> {
    let (unread, read) = set.unread_config_lists();
    let mut out: Vec<String> = unread
        .iter()
        .map(|name| {
            format!(
                "configuration list `{name}` is read by no loaded rule: a misspelt name? (the rules read: {})",
                read.join(", ")
            )
        })
        .collect();
    out.extend(set.list_notes().iter().cloned());
    for r in set.rules() {
        if let (true, Some(why)) = (r.enabled, &r.inactive_reason) {
            out.push(format!("rule `{}` is inactive: {why}", r.id));
        }
    }
    out
}

fn rules_command(cmd: RulesCommand) -> Result<ExitCode> {
    let (args, which) = match cmd {
        RulesCommand::List(a) => (a, "list"),
        RulesCommand::Check(a) => (a, "check"),
        RulesCommand::Test(a) => return rules_test(a),
    };
    let mut config = Config::load_or_default(args.config.as_deref())?;
    if !args.paths.is_empty() {
        config.rules = args.paths.clone();
    }
    if args.no_default {
        config.default_rules = false;
    }
    let ctx = config.rules_context();
    let mut out = std::io::stdout().lock();
    match which {
        "list" => {
            let set = load_rules(&config)?;
            print_rule_list(&set.rules(), &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        "check" => match rules::check(config.default_rules, &config.rules, &ctx) {
            Ok(set) => {
                for w in rule_warnings(&set) {
                    eprintln!("warning: {w}");
                }
                println!("ok: {} rules", set.len());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::from(1))
            }
        },
        _ => unreachable!("`rules test` has its own function"),
    }
}

/// `vigil rules test`: the rules' own examples, then any scenarios.
fn rules_test(args: RulesTestArgs) -> Result<ExitCode> {
    let mut config = Config::load_or_default(args.rules.config.as_deref())?;
    if !args.rules.paths.is_empty() {
        config.rules = args.rules.paths.clone();
    }
    if args.rules.no_default {
        config.default_rules = false;
    }
    let mut out = std::io::stdout().lock();
    let report = rules::testing::run(config.default_rules, &config.rules, &config.rules_context())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    report.print_table(&mut out)?;
    let mut failed = report.failed();
    if !args.scenarios.is_empty() {
        let outcomes = scenario::check_all(&args.scenarios, args.rules.config.as_deref(), &config)?;
        std::io::Write::write_all(&mut out, b"\n")?;
        scenario::print_table(&outcomes, &mut out)?;
        failed += outcomes.iter().filter(|o| !o.problems.is_empty()).count();
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_rule_list(
    rules: &[rules::RuleInfo],
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<30} {:<12} {:<13} {:<8} {:<40} TITLE",
        "ID", "KIND", "SEVERITY", "ACTIVE", "SOURCE"
    )?;
    for r in rules {
        let active = if !r.enabled {
            "disabled".to_string()
        } else if r.inactive_reason.is_some() {
            "inactive".to_string()
        } else {
            "yes".to_string()
        };
        let kind = format!("{:?}", r.kind).to_lowercase();
        writeln!(
            out,
            "{:<30} {:<12} {:<13} {:<8} {:<40} {}",
            r.id,
            kind,
            // Padding applies to strings; the severity's Display ignores it.
            r.severity.to_string(),
            active,
            format!("{}:{}", r.source, r.line),
            r.title
        )?;
        if let Some(why) = &r.inactive_reason {
            writeln!(out, "{:<30} note: {why}", "")?;
        }
    }
    Ok(())
}

fn token_command(cmd: TokenCommand) -> Result<ExitCode> {
    match cmd {
        TokenCommand::New => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes)
                .map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
            let token = format!("vgl_{}", ingest_hex(&bytes));
            println!("token: {token}");
            println!("hash:  {}", ingest::auth::hash_token(&token));
            eprintln!("give the token to the sender (Authorization: Bearer ...); put only the hash in the tokens file");
        }
        TokenCommand::Hash => {
            let mut token = String::new();
            std::io::stdin()
                .read_line(&mut token)
                .context("reading the token from standard input")?;
            if token.trim().is_empty() {
                anyhow::bail!("no token on standard input");
            }
            println!("{}", ingest::auth::hash_token(&token));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn ingest_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod error_tests {
    use super::error_chain;

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let e = anyhow::Error::new(sinks::archive::ArchiveError::Io {
            op: "open",
            path: "f.parquet".into(),
            source: std::io::Error::other("corrupt footer"),
        })
        .context("reading the archive");
        assert_eq!(
            error_chain(&e),
            "reading the archive: cannot open f.parquet: corrupt footer"
        );
        // A cause the message does not carry is still printed.
        let e = anyhow::anyhow!("no such file").context("loading mappings");
        assert_eq!(error_chain(&e), "loading mappings: no such file");
    }
}
