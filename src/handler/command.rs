//! The `command` handler: runs a program per message, payload on stdin, metadata in env vars.
//!
//! Exit 0 is success; exit 75 (`EX_TEMPFAIL`) is transient; any other exit code is permanent.
//! A child killed by a signal (the OOM killer, say) is transient with class `signal_N`; a child
//! still running at the handler timeout is killed (the future owning it is dropped, and the child
//! is spawned with `kill_on_drop`) and the attempt counts as a transient `timeout`.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::{Handler, Message, Outcome};
use crate::headers::{truncate, MAX_ERROR_MESSAGE};

/// Exit code that asks for a retry (sysexits.h `EX_TEMPFAIL`).
pub const EX_TEMPFAIL: i32 = 75;

/// Runs `program args…` for every message.
#[derive(Debug, Clone)]
pub struct CommandHandler {
    program: String,
    args: Vec<String>,
}

/// Why a command line cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Unbalanced quotes or a trailing backslash.
    #[error(transparent)]
    Split(#[from] shell_words::ParseError),
    /// No program.
    #[error("the command is empty")]
    Empty,
}

/// Splits a command line into program and arguments the way a POSIX shell would (quotes,
/// backslashes; no expansion).
pub fn split(command_line: &str) -> Result<(String, Vec<String>), CommandError> {
    let mut words = shell_words::split(command_line)?.into_iter();
    let program = words.next().ok_or(CommandError::Empty)?;
    Ok((program, words.collect()))
}

impl CommandHandler {
    /// Runs `program` with `args` (no shell).
    pub fn new(program: impl Into<String>, args: Vec<String>) -> CommandHandler {
        CommandHandler {
            program: program.into(),
            args,
        }
    }

    /// Splits a command line the way a POSIX shell would (quotes, backslashes; no expansion).
    pub fn parse(command_line: &str) -> Result<CommandHandler, CommandError> {
        let (program, args) = split(command_line)?;
        Ok(CommandHandler::new(program, args))
    }

    /// The program run.
    pub fn program(&self) -> &str {
        &self.program
    }
}

#[async_trait::async_trait]
impl Handler for CommandHandler {
    async fn handle(&self, message: &Message) -> Outcome {
        let mut child = match Command::new(&self.program)
            .args(&self.args)
            .env("REBOUND_TOPIC", &message.topic)
            .env("REBOUND_PARTITION", message.partition.to_string())
            .env("REBOUND_OFFSET", message.offset.to_string())
            .env("REBOUND_KEY", message.key_lossy())
            .env("REBOUND_ATTEMPT", message.attempt.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                return Outcome::transient(
                    "spawn",
                    format!("could not start {}: {e}", self.program),
                )
            }
        };
        let stdin = child.stdin.take();
        let payload = message.payload();
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A child that exits without reading stdin breaks the pipe: that is its choice.
                let _ = stdin.write_all(payload).await;
            }
        };
        let (_, output) = tokio::join!(feed, child.wait_with_output());
        let output = match output {
            Ok(o) => o,
            Err(e) => {
                return Outcome::transient("spawn", format!("waiting for {}: {e}", self.program))
            }
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        let detail = |what: String| {
            let tail = stderr.trim();
            let text = if tail.is_empty() {
                what
            } else {
                format!("{what}: {tail}")
            };
            truncate(&text, MAX_ERROR_MESSAGE).to_string()
        };
        match output.status.code() {
            Some(0) => Outcome::Success,
            Some(EX_TEMPFAIL) => {
                Outcome::transient("exit_75", detail("exited with 75 (EX_TEMPFAIL)".into()))
            }
            Some(code) => Outcome::permanent(
                format!("exit_{code}"),
                detail(format!("exited with {code}")),
            ),
            None => {
                #[cfg(unix)]
                {
                    use std::os::unix::process::ExitStatusExt;
                    let sig = output.status.signal().unwrap_or(0);
                    Outcome::transient(
                        format!("signal_{sig}"),
                        detail(format!("killed by signal {sig}")),
                    )
                }
                #[cfg(not(unix))]
                Outcome::transient("signal", detail("killed".into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn msg(payload: &[u8]) -> Message {
        Message {
            topic: "orders".into(),
            partition: 2,
            offset: 41,
            key: Some(vec![b'k', 0xff]),
            payload: Some(payload.to_vec()),
            headers: vec![],
            timestamp: None,
            attempt: 3,
        }
    }

    async fn run(script: &str, payload: &[u8]) -> Outcome {
        CommandHandler::new("sh", vec!["-c".into(), script.into()])
            .handle(&msg(payload))
            .await
    }

    #[tokio::test]
    async fn exit_codes_classify_per_the_contract() {
        assert_eq!(run("exit 0", b"").await, Outcome::Success);
        assert!(matches!(run("exit 75", b"").await, Outcome::Transient(f) if f.class == "exit_75"));
        let out = run("echo nope >&2; exit 3", b"").await;
        assert!(
            matches!(&out, Outcome::Permanent(f) if f.class == "exit_3" && f.message.contains("nope")),
            "{out:?}"
        );
        assert!(
            matches!(run("kill -9 $$", b"").await, Outcome::Transient(f) if f.class == "signal_9")
        );
    }

    #[tokio::test]
    async fn payload_and_metadata_reach_the_program() {
        let script = r#"test "$(cat)" = "hello" && test "$REBOUND_TOPIC" = orders && test "$REBOUND_PARTITION" = 2 \
            && test "$REBOUND_OFFSET" = 41 && test "$REBOUND_ATTEMPT" = 3 && test "$REBOUND_KEY" = "k�""#;
        assert_eq!(run(script, b"hello").await, Outcome::Success);
    }

    #[tokio::test]
    async fn a_big_payload_to_a_program_that_ignores_stdin_does_not_deadlock() {
        assert_eq!(run("exit 0", &vec![b'x'; 4 << 20]).await, Outcome::Success);
    }

    #[tokio::test]
    async fn a_hung_child_is_killed_at_the_timeout() {
        let h: Arc<dyn Handler> = Arc::new(CommandHandler::new("sleep", vec!["30".into()]));
        let started = Instant::now();
        let out = super::super::call(&h, &msg(b""), Duration::from_millis(200)).await;
        assert!(
            matches!(&out, Outcome::Transient(f) if f.class == "timeout"),
            "{out:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn command_lines_split_like_a_shell() {
        let h = CommandHandler::parse("python3 -c 'import sys; sys.exit(75)'").unwrap();
        assert_eq!(h.program, "python3");
        assert_eq!(h.args, vec!["-c", "import sys; sys.exit(75)"]);
        assert!(CommandHandler::parse("  ").is_err());
        assert!(CommandHandler::parse("echo 'unterminated").is_err());
    }
}
