//! The process edge the kubetune binaries (operator, webhook, agent) share: the one logging
//! setup, and [`shutdown_signal`].
//!
//! * `--log-format text` (default): human lines; ANSI colours only when the log stream (stderr)
//!   is a terminal and `NO_COLOR` is unset, so `kubectl logs` shows clean text.
//! * `--log-format json`: one JSON object per line with `timestamp`, `level`, `target`,
//!   `fields` (the message and the event's fields), `span` (the innermost span's name and
//!   fields) and `spans` (the whole span stack) — what log collectors index. The shipped
//!   manifests use it.
//!
//! The format can also come from the environment (`KUBETUNE_LOG_FORMAT`); the filter comes
//! from `RUST_LOG` (e.g. `info`, `warn,kubetune_agent=debug`), else the binary's default.
//! Logs go to stderr in every binary (the agent's `scan` prints its table on stdout).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Environment variable equivalent of `--log-format`.
pub const ENV: &str = "KUBETUNE_LOG_FORMAT";

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colours only on a terminal).
    #[default]
    Text,
    /// JSON lines.
    Json,
}

/// The `--log-format` flag, flattened into each binary's command line (global, so it may
/// follow a subcommand).
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct LogArgs {
    /// Log format: text, or JSON lines for log collectors.
    #[arg(long, env = ENV, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Whether text output may carry ANSI colours: the stream is a terminal and `NO_COLOR` is
/// unset or empty (<https://no-color.org>).
pub fn use_colour(is_terminal: bool, no_color: Option<&str>) -> bool {
    is_terminal && no_color.is_none_or(str::is_empty)
}

/// Installs the global subscriber writing to stderr. `default_filter` applies when `RUST_LOG`
/// is unset or invalid. Panics if a global subscriber is already set (call once, in `main`).
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let colour = use_colour(
                std::io::stderr().is_terminal(),
                std::env::var("NO_COLOR").ok().as_deref(),
            );
            builder.with_ansi(colour).init();
        }
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_ansi(false)
            .init(),
    }
}

/// SIGTERM (the kubelet stopping the pod) or Ctrl-C.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("")));
        assert!(!use_colour(true, Some("1")));
        assert!(!use_colour(false, None));
    }
}
