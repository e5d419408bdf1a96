//! The `rebound` binary: parse the command line, set up logging, dispatch, map errors to exit
//! codes (0 success, 1 runtime failure, 2 bad usage or configuration).

use std::process::ExitCode;

use clap::Parser;
use rebound::cli::{Cli, Command, DlqCommand, LogFormat, TopicsCommand};
use rebound::config::{Config, DlqReadConfig, DlqShowConfig, ReplayConfig, TopicsConfig};
use rebound::{dlq, topics, Service};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(dispatch(cli.command))
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.init(),
    }
}

fn usage_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

async fn dispatch(command: Command) -> ExitCode {
    match command {
        Command::Run(args) => {
            let config = match Config::for_run(&args) {
                Ok(c) => c,
                Err(e) => return usage_error(e),
            };
            if args.check_config {
                print!("{config}");
                println!("configuration ok");
                return ExitCode::SUCCESS;
            }
            let handler = match config
                .handler
                .as_ref()
                .map(|h| h.build(config.handler_timeout))
            {
                Some(Ok(h)) => h,
                Some(Err(e)) => return usage_error(e),
                None => return usage_error("--handler: missing"),
            };
            let stop = shutdown::on_signals();
            match Service::new(config, handler).run(stop).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.is_configuration() => usage_error(e),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Demo(args) => {
            let cfg = match rebound::demo::DemoConfig::resolve(&args) {
                Ok(c) => c,
                Err(e) => return usage_error(e),
            };
            match rebound::demo::run(cfg, shutdown::on_signals()).await {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Topics(cmd) => {
            let (args, apply) = match &cmd {
                TopicsCommand::Plan(a) => (a, false),
                TopicsCommand::Apply(a) => (a, true),
            };
            let cfg = match TopicsConfig::resolve(args) {
                Ok(c) => c,
                Err(e) => return usage_error(e),
            };
            let result = if apply {
                topics::apply(&cfg).await
            } else {
                topics::plan(&cfg).await
            };
            match result {
                Ok(plan) => {
                    print!("{plan}");
                    if apply && plan.unsafe_after_apply() {
                        eprintln!("warning: --force: applied with the hazards listed above");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) if e.is_configuration() => usage_error(e),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Dlq(cmd) => dlq_command(cmd).await,
        Command::Console(args) => {
            let cfg = match rebound::console::ConsoleConfig::resolve(&args) {
                Ok(c) => c,
                Err(e) => return usage_error(e),
            };
            let stop = shutdown::on_signals();
            match rebound::console::start(cfg, stop).await {
                Ok((local, task)) => {
                    eprintln!("rebound console on http://{local}/");
                    let _ = task.await;
                    ExitCode::SUCCESS
                }
                Err(e) => usage_error(e),
            }
        }
        Command::ReplayDlq(args) => {
            let cfg = match ReplayConfig::resolve(&args) {
                Ok(c) => c,
                Err(e) => return usage_error(e),
            };
            let stop = shutdown::on_signals();
            match dlq::replay(&cfg, &stop, &mut std::io::stdout()).await {
                Ok(summary) => {
                    let _ = dlq::emit(&mut std::io::stdout(), &summary.to_string());
                    if summary.ok() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => dlq_error(e),
            }
        }
    }
}

fn dlq_error(e: dlq::DlqError) -> ExitCode {
    if e.is_usage() {
        return usage_error(e);
    }
    eprintln!("error: {e}");
    ExitCode::from(1)
}

async fn dlq_command(cmd: DlqCommand) -> ExitCode {
    // Ok(true): printed, but the DLQ could not be read to its end.
    let result: Result<bool, dlq::DlqError> = async {
        match &cmd {
            DlqCommand::Stats(args) => {
                let cfg = DlqReadConfig::for_stats(args)?;
                let stats = dlq::stats(&cfg).await?;
                let text = if cfg.json {
                    serde_json::to_string_pretty(&stats).unwrap_or_default() + "\n"
                } else {
                    dlq::render_stats(&stats)
                };
                dlq::emit(&mut std::io::stdout(), &text)?;
                Ok(stats.incomplete)
            }
            DlqCommand::List(args) => {
                let cfg = DlqReadConfig::for_list(args)?;
                dlq::list(&cfg, &mut std::io::stdout()).await?;
                Ok(false)
            }
            DlqCommand::Show(args) => {
                let cfg = DlqShowConfig::resolve(args)?;
                let entry = dlq::show(&cfg).await?;
                let text = dlq::render_show(&cfg.cluster.topology.dlq, &entry);
                dlq::emit(&mut std::io::stdout(), &text)?;
                Ok(false)
            }
        }
    }
    .await;
    match result {
        Ok(false) => ExitCode::SUCCESS,
        Ok(true) => {
            eprintln!("error: {}", dlq::DlqError::Incomplete);
            ExitCode::from(1)
        }
        Err(e) => dlq_error(e),
    }
}

/// One cancellation signal that every task observes, fired by SIGTERM or SIGINT.
///
/// The first signal starts a graceful stop (stop fetching, finish or hand back in-flight work,
/// commit, leave the group). A second signal exits at once with status 130: offsets of finished
/// work are committed on an interval, so even then nothing is lost, only repeated. Signal
/// handling and exiting belong to the binary; the library only observes the token.
mod shutdown {
    use tokio_util::sync::CancellationToken;

    /// Returns a token cancelled on the first SIGTERM/SIGINT; the second one exits the process.
    pub fn on_signals() -> CancellationToken {
        let token = CancellationToken::new();
        let fire = token.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received; stopping gracefully (send it again to exit at once)");
            fire.cancel();
            wait_for_signal().await;
            tracing::warn!("second signal; exiting now");
            std::process::exit(130);
        });
        token
    }

    async fn wait_for_signal() {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
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
}
