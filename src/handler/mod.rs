//! What processes a message: the [`Handler`] trait, its [`Outcome`], and the built-in handlers.
//!
//! A handler only says *what happened*; where the message goes next is decided by
//! [`crate::topology::Topology::route`].

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use crate::headers::Header;

pub mod command;
pub mod http;

/// A message handed to a handler. Key, payload and headers are exactly what was read.
#[derive(Debug, Clone)]
pub struct Message {
    /// The topic it was read from: the main topic or a delay tier.
    pub topic: String,
    /// Its partition there.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// The key, byte for byte (`None`: no key).
    pub key: Option<Vec<u8>>,
    /// The payload, byte for byte (`None`: a null payload, e.g. a tombstone).
    pub payload: Option<Vec<u8>>,
    /// Every header in order, duplicates and rebound's own `rebound-*` ones included.
    pub headers: Vec<Header>,
    /// The record's timestamp in epoch milliseconds, when the broker gave one.
    pub timestamp: Option<i64>,
    /// Failed attempts before this one (0 on the main topic).
    pub attempt: u32,
}

impl Message {
    /// The payload, empty when it is null.
    pub fn payload(&self) -> &[u8] {
        self.payload.as_deref().unwrap_or_default()
    }

    /// The key as text, with invalid UTF-8 replaced (for logs and env vars, never for routing).
    pub fn key_lossy(&self) -> String {
        self.key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default()
    }
}

/// Why a handler failed: a short machine label, human text, and an optional minimum delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `http_503`, `timeout`, `connect`, `exit_75`, …: goes to `rebound-error-class`.
    pub class: String,
    /// Goes to `rebound-error-message` (cut to 1 KiB).
    pub message: String,
    /// The downstream asked not to be called again before this (HTTP `Retry-After`).
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure of `class` (a short label such as `http_503`) with human text `message`.
    pub fn new(class: impl Into<String>, message: impl Into<String>) -> Failure {
        Failure {
            class: class.into(),
            message: message.into(),
            retry_after: None,
        }
    }
}

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled: the offset may be committed.
    Success,
    /// Worth trying again later: goes to the next delay tier.
    Transient(Failure),
    /// Will never succeed: goes to the DLQ.
    Permanent(Failure),
}

impl Outcome {
    /// [`Outcome::Transient`] with a [`Failure::new`].
    pub fn transient(class: impl Into<String>, message: impl Into<String>) -> Outcome {
        Outcome::Transient(Failure::new(class, message))
    }

    /// [`Outcome::Permanent`] with a [`Failure::new`].
    pub fn permanent(class: impl Into<String>, message: impl Into<String>) -> Outcome {
        Outcome::Permanent(Failure::new(class, message))
    }

    /// `success`, `transient` or `permanent`: the `outcome` label of metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Transient(_) => "transient",
            Outcome::Permanent(_) => "permanent",
        }
    }

    /// The failure, unless it is a success.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Outcome::Success => None,
            Outcome::Transient(f) | Outcome::Permanent(f) => Some(f),
        }
    }
}

/// Processes messages. Implement this to embed rebound in your own program.
///
/// Called concurrently for different messages. A call that takes longer than the configured
/// handler timeout is abandoned and counts as a transient failure with class `timeout`; a call
/// that panics counts as a transient failure with class `panic`. Neither stops the service.
/// The timeout can only interrupt a handler at an `.await`: a handler that blocks its thread
/// should move that work to `tokio::task::spawn_blocking`.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one message and says how it went.
    async fn handle(&self, message: &Message) -> Outcome;
}

/// Closures make handlers too: `Arc::new(handler_fn(|m| async move { Outcome::Success }))`.
pub struct HandlerFn<F>(pub F);

/// Wraps an async closure as a [`Handler`].
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    HandlerFn(f)
}

#[async_trait::async_trait]
impl<F, Fut> Handler for HandlerFn<F>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    async fn handle(&self, message: &Message) -> Outcome {
        (self.0)(message.clone()).await
    }
}

/// Runs one handler call with a deadline, turning a timeout or a panic into a transient failure.
pub async fn call(handler: &Arc<dyn Handler>, message: &Message, timeout: Duration) -> Outcome {
    call_since(handler, message, timeout, tokio::time::Instant::now()).await
}

/// [`call`] for a call that began at `started` (a clock reading the caller already has): the
/// call times out `timeout` after it. The call is polled once before any timer exists, so a
/// handler that answers at once (an in-process handler) costs no timer and no clock reading
/// here; one that has to wait gets the deadline `started + timeout`.
pub async fn call_since(
    handler: &Arc<dyn Handler>,
    message: &Message,
    timeout: Duration,
    started: tokio::time::Instant,
) -> Outcome {
    let mut call = std::pin::pin!(AssertUnwindSafe(handler.handle(message)).catch_unwind());
    let answered = match futures::poll!(call.as_mut()) {
        std::task::Poll::Ready(answer) => Ok(answer),
        // Boxed: the timer is large and only a call that waits needs it, while every job's
        // future (allocated per message) has room for what it holds across this await.
        std::task::Poll::Pending => {
            Box::pin(tokio::time::timeout_at(started + timeout, call)).await
        }
    };
    match answered {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(panic)) => {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".to_string());
            Outcome::transient("panic", format!("handler panicked: {text}"))
        }
        Err(_) => Outcome::transient(
            "timeout",
            format!(
                "handler did not finish within {}",
                crate::duration::Short(timeout)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Message {
        Message {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            key: None,
            payload: None,
            headers: vec![],
            timestamp: None,
            attempt: 0,
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_transient_failure() {
        let h: Arc<dyn Handler> = Arc::new(handler_fn(|_m| async { panic!("boom") }));
        let out = call(&h, &msg(), Duration::from_secs(1)).await;
        assert!(
            matches!(&out, Outcome::Transient(f) if f.class == "panic" && f.message.contains("boom")),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn a_hanging_handler_times_out_as_transient() {
        let h: Arc<dyn Handler> = Arc::new(handler_fn(|_m| async {
            std::future::pending::<()>().await;
            Outcome::Success
        }));
        let out = call(&h, &msg(), Duration::from_millis(20)).await;
        assert!(
            matches!(&out, Outcome::Transient(f) if f.class == "timeout"),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn the_timeout_counts_from_the_start_the_caller_gives_not_from_the_first_poll() {
        // A handler that waits 200 ms, given a start 1 s old and a 1.1 s timeout: 100 ms are
        // left, so it times out. Counted from the first poll it would answer.
        let h: Arc<dyn Handler> = Arc::new(handler_fn(|_m| async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Outcome::Success
        }));
        let started = tokio::time::Instant::now() - Duration::from_secs(1);
        let out = call_since(&h, &msg(), Duration::from_millis(1100), started).await;
        assert!(
            matches!(&out, Outcome::Transient(f) if f.class == "timeout"),
            "{out:?}"
        );
        // One that answers at once answers, whatever the clock says (no timer is armed).
        let quick: Arc<dyn Handler> = Arc::new(handler_fn(|_m| async { Outcome::Success }));
        let out = call_since(&quick, &msg(), Duration::ZERO, started).await;
        assert_eq!(out, Outcome::Success);
        // And with time left, a waiting one answers.
        let out = call_since(&h, &msg(), Duration::from_secs(5), started).await;
        assert_eq!(out, Outcome::Success);
    }
}
