//! The `rebound` binary: parse the command line, set up logging, dispatch, map errors to exit
//! codes (0 success, 1 runtime failure, 2 bad usage or configuration).

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use rebound::cli::{Cli, Command, DlqCommand, LogFormat, TopicsCommand};
use rebound::config::{
    Config, DlqReadConfig, DlqShowConfig, HandlerSpec, ReplayConfig, TopicsConfig,
};
use rebound::handler::command::CommandHandler;
use rebound::handler::http::HttpHandler;
use rebound::handler::Handler;
use rebound::{dlq, shutdown, topics, Service};

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
            let handler: Arc<dyn Handler> = match &config.handler {
                Some(HandlerSpec::Http {
                    url,
                    forward_headers,
                }) => match HttpHandler::new(url, config.handler_timeout) {
                    Ok(h) => Arc::new(h.forward_headers(forward_headers.clone())),
                    Err(e) => return usage_error(format!("--url: {e}")),
                },
                Some(HandlerSpec::Command { command_line }) => {
                    match CommandHandler::parse(command_line) {
                        Ok(h) => Arc::new(h),
                        Err(e) => return usage_error(format!("--command: {e}")),
                    }
                }
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
                let cfg = DlqReadConfig::for_stats(args)
                    .map_err(|e| dlq::DlqError::Usage(e.to_string()))?;
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
                let cfg = DlqReadConfig::for_list(args)
                    .map_err(|e| dlq::DlqError::Usage(e.to_string()))?;
                dlq::list(&cfg, &mut std::io::stdout()).await?;
                Ok(false)
            }
            DlqCommand::Show(args) => {
                let cfg = DlqShowConfig::resolve(args)
                    .map_err(|e| dlq::DlqError::Usage(e.to_string()))?;
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
