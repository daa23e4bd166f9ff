//! What each subcommand does, so that `main.rs` only parses arguments.

#[cfg(feature = "emulator")]
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use crate::config::{self, LogFormat};
#[cfg(feature = "emulator")]
use crate::demo::{self, DemoAddrs};
#[cfg(feature = "emulator")]
use crate::emulator::{Emulator, EmulatorOptions};
use crate::telemetry::Telemetry;
use crate::{logging, Server};

/// `account-gate check-config`: exit 0 with the effective config (secrets redacted) and any
/// warnings, or exit 1 with every error.
pub fn check_config(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            print!("{}", loaded.config.to_redacted_toml());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{}: invalid configuration", path.display());
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

/// `account-gate run`: load the config, refuse to start on any error or missing secret, then
/// serve until SIGTERM or SIGINT and drain.
pub fn run(path: &Path, log_format: Option<LogFormat>) -> ExitCode {
    let loaded = match config::load(path) {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprintln!("{}: invalid configuration", path.display());
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    // A secret that is referenced but absent is only a warning for check-config; a gateway
    // must not start without it.
    if !loaded.warnings.is_empty() {
        for warning in &loaded.warnings {
            eprintln!("error: {warning}");
        }
        return ExitCode::FAILURE;
    }
    let (mut config, listener_tls) = (loaded.config, loaded.listener_tls);
    if let Some(format) = log_format {
        config.log.format = format;
    }
    // The caller's thread is the first serving thread (see `server`): a single-threaded
    // runtime, which also runs the admin listener, reloads and the store's background work.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The trace exporter runs its HTTP exchanges on the runtime, so it comes after it.
    let telemetry = match Telemetry::start(&config.tracing, runtime.handle().clone()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("cannot start tracing: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Dropped last, when `run` returns: the last lines are written out before the exit.
    let _logs = logging::init(&config.log, telemetry.as_ref());
    runtime.block_on(async move {
        let server = match Server::bind_with_tls(config, listener_tls).await {
            Ok(server) => server.with_config_file(path.to_owned()).pinning_caller(),
            Err(error) => {
                tracing::error!(%error, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        server.run(shutdown_signal()).await;
        // Spans of the last requests are exported before the process exits.
        if let Some(telemetry) = telemetry {
            telemetry.shutdown().await;
        }
        ExitCode::SUCCESS
    })
}

/// `account-gate emulator`: the Commerce stand-in alone, until SIGTERM or SIGINT.
#[cfg(feature = "emulator")]
pub fn emulator(listen: SocketAddr) -> ExitCode {
    let _logs = logging::init(
        &config::LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
        },
        None,
    );
    block_on(async move {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("cannot listen on {listen}: {error}");
                return ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().unwrap_or(listen);
        println!("Commerce emulator listening on http://{addr}");
        match Emulator::serve(listener, EmulatorOptions::default(), shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("emulator failed: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `account-gate demo`: emulator and gateway on loopback, with a walkthrough.
#[cfg(feature = "emulator")]
pub fn demo(addrs: DemoAddrs) -> ExitCode {
    block_on(async move {
        match demo::run(addrs, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("demo failed: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

#[cfg(feature = "emulator")]
fn block_on(future: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(future),
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Completes at the first SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
