//! One cancellation signal that every task observes, fired by SIGTERM or SIGINT.
//!
//! The first signal starts a graceful stop (stop fetching, finish or hand back in-flight work,
//! commit, leave the group). A second signal exits at once with status 130: offsets of finished
//! work are committed on an interval, so even then nothing is lost, only repeated.

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
