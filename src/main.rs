//! The `account-gate` command line. Everything it does lives in the `account_gate` library.

#![forbid(unsafe_code)]

#[cfg(feature = "emulator")]
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// jemalloc: a proxy allocates and frees many small buffers per request, and glibc's malloc
/// spends much of that time consolidating free chunks. Measured in one run against the system
/// allocator (4 alternating rounds, one core): +2 % proxied GETs, +11 % sign-ups, +1.5 MiB idle
/// RSS (mimalloc was as fast but cost 7.5 MiB more idle, over the sidecar budget). Its options
/// (a background thread returning freed pages after 300 ms) are compiled in from
/// `.cargo/config.toml`, which says why.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Authenticating reverse proxy for the Commerce account-management API.
#[derive(Parser)]
#[command(version = account_gate::LONG_VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Log format; overrides `[log] format`.
        #[arg(long)]
        log_format: Option<LogFormatArg>,
    },
    /// Check a configuration file: print the effective configuration (secrets redacted), or
    /// every error.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the Commerce API emulator alone.
    #[cfg(feature = "emulator")]
    Emulator {
        /// Where the emulator listens.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
    },
    /// Run the emulator and a gateway in front of it on loopback, and print a walkthrough.
    #[cfg(feature = "emulator")]
    Demo {
        /// The gateway's data-plane address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// The gateway's admin address.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
        /// The emulator's address.
        #[arg(long, default_value = "127.0.0.1:8081")]
        emulator_listen: SocketAddr,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => account_gate::cli::check_config(&config),
        Command::Run { config, log_format } => {
            let format = log_format.map(|f| match f {
                LogFormatArg::Text => account_gate::config::LogFormat::Text,
                LogFormatArg::Json => account_gate::config::LogFormat::Json,
            });
            account_gate::cli::run(&config, format)
        }
        #[cfg(feature = "emulator")]
        Command::Emulator { listen } => account_gate::cli::emulator(listen),
        #[cfg(feature = "emulator")]
        Command::Demo {
            listen,
            admin_listen,
            emulator_listen,
        } => account_gate::cli::demo(account_gate::demo::DemoAddrs {
            gateway: listen,
            admin: admin_listen,
            emulator: emulator_listen,
        }),
    }
}
