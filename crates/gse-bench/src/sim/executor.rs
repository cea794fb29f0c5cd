//! [`SimulatedExecutor`]: the Executor seam's in-process runner, for scale
//! benchmarks only (DESIGN.md "Layers and seams").
//!
//! It runs nothing: no process, no shell, no user switch. It answers at once
//! with the output the command would plausibly print (`echo X` prints
//! `X\n`; anything else prints [`SIMULATED_LINE`]) and exit code 0, so that
//! thousands of simulated agents cost the bench almost nothing and the
//! server, which is what is measured, does all its real work. The real
//! runner is gse-agent's `executor::ProcessExecutor`.

use async_trait::async_trait;
use bytes::Bytes;
use gse_core::now_ms;
use gse_core::seams::{ExecOutcome, ExecRequest, Executor, ExitKind, truncation_marker};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a simulated command prints when it is not an `echo`.
pub const SIMULATED_LINE: &str = "simulated run: nothing was executed\n";

/// Runs commands without running them; see the module header.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimulatedExecutor;

#[async_trait]
impl Executor for SimulatedExecutor {
    fn kind(&self) -> &'static str {
        "simulated"
    }

    async fn run(
        &self,
        req: ExecRequest,
        output: mpsc::Sender<Bytes>,
        cancel: CancellationToken,
    ) -> ExecOutcome {
        let start_ms = now_ms();
        if cancel.is_cancelled() {
            return outcome(ExitKind::Cancelled, start_ms, false);
        }
        let (text, truncated) = bounded(simulated_output(&req.command), req.output_limit);
        // A reader that went away only loses output, as with a real pipe.
        let _ = output.send(Bytes::from(text)).await;
        drop(output);
        outcome(ExitKind::Exited(0), start_ms, truncated)
    }
}

fn outcome(exit: ExitKind, start_ms: u64, truncated: bool) -> ExecOutcome {
    ExecOutcome {
        exit,
        start_ms,
        end_ms: now_ms(),
        truncated,
    }
}

/// What `command` would print: the arguments of a plain `echo` (one level
/// of matching quotes removed), else [`SIMULATED_LINE`].
pub fn simulated_output(command: &str) -> String {
    let Some(args) = command.trim().strip_prefix("echo ") else {
        return SIMULATED_LINE.to_string();
    };
    let args = args.trim();
    let unquoted = ['"', '\'']
        .iter()
        .find_map(|&q| args.strip_prefix(q).and_then(|a| a.strip_suffix(q)))
        .unwrap_or(args);
    format!("{unquoted}\n")
}

/// `text` cut to `limit` bytes on a character boundary, with the truncation
/// marker the real runner appends; and whether it was cut.
fn bounded(mut text: String, limit: usize) -> (String, bool) {
    if text.len() <= limit {
        return (text, false);
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&truncation_marker(limit));
    (text, true)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn echo_prints_its_arguments_and_anything_else_a_fixed_line() {
        assert_eq!(simulated_output("echo hello"), "hello\n");
        assert_eq!(simulated_output("  echo 'a b' "), "a b\n");
        assert_eq!(simulated_output("ls /"), SIMULATED_LINE);
    }

    #[test]
    fn long_output_is_cut_with_the_marker() {
        let (text, cut) = bounded("héllo".into(), 2);
        assert!(cut);
        assert_eq!(text, format!("h{}", truncation_marker(2)));
    }

    #[tokio::test]
    async fn runs_to_exit_zero_with_its_output() {
        let (tx, mut rx) = mpsc::channel(4);
        let req = ExecRequest::new("echo hi", Duration::from_secs(1));
        let out = SimulatedExecutor
            .run(req, tx, CancellationToken::new())
            .await;
        assert_eq!(out.exit, ExitKind::Exited(0));
        assert_eq!(rx.recv().await.unwrap(), Bytes::from("hi\n"));
        assert!(rx.recv().await.is_none());
        assert_eq!(SimulatedExecutor.kind(), "simulated");
    }
}
