//! The `logroute` binary: CLI parsing and wiring only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "logroute",
    version,
    about = "Route container logs by LogRoute resources"
)]
struct Cli {
    /// Log format of logroute's own logs: `text` or `json`.
    #[arg(
        long,
        global = true,
        env = "LOGROUTE_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the LogRoute CustomResourceDefinition as YAML.
    Crd,
    /// Validate LogRoute YAML files offline with the controller's compiler.
    Check {
        /// Print the compiled route document of each valid LogRoute.
        #[arg(long)]
        print: bool,
        /// The operator's namespace (tenancy rules depend on it).
        #[arg(long, env = "LOGROUTE_NAMESPACE", default_value = "logroute-system")]
        namespace: String,
        /// The operator's tenancy policy file, as the controller's `--egress-policy`.
        #[arg(long, value_name = "POLICY")]
        egress_policy: Option<PathBuf>,
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Run the controller.
    Controller(logroute::controller::ControllerArgs),
    /// Run the node agent.
    Agent(logroute::agent::AgentArgs),
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOGROUTE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", logroute::api::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Check {
            print,
            namespace,
            egress_policy,
            files,
        } => logroute::check::run(&files, &namespace, egress_policy.as_deref(), print),
        Command::Controller(args) => run_async(&cli.log_format, logroute::controller::run(args)),
        Command::Agent(args) => run_async(&cli.log_format, logroute::agent::run(args)),
    }
}

fn run_async(log_format: &str, fut: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    init_tracing(log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("logroute: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
