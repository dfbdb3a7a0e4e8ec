//! The real subscriber in a child process whose stderr is a pipe (not a terminal), as under
//! `kubectl logs`: text lines carry no escape bytes, JSON lines parse with level, target,
//! message, event fields and span fields; the flag and the environment variable both select
//! the format.

use std::process::Command;

use clap::Parser;
use kubetune_logging::{LogArgs, LogFormat};

const CHILD: &str = "KUBETUNE_LOGGING_TEST_CHILD";

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
}

/// Runs in the child only: parse the command line from `CHILD`, log, exit.
#[test]
fn child_logs() {
    let Ok(argv) = std::env::var(CHILD) else {
        return;
    };
    let cli = Cli::parse_from(std::iter::once("child").chain(argv.split_whitespace()));
    kubetune_logging::init(cli.log.log_format, "info");
    let span = tracing::info_span!("reconcile", policy = "web-backlog", namespace = "shop");
    let _g = span.enter();
    tracing::info!(pods = 3, "status written");
    tracing::warn!(error = "boom", "write failed");
    tracing::debug!("filtered out by the default filter");
}

fn run_child(argv: &str, env_format: Option<&str>) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_logs", "--nocapture", "--test-threads=1"])
        .env(CHILD, argv)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env_remove(kubetune_logging::ENV);
    if let Some(f) = env_format {
        cmd.env(kubetune_logging::ENV, f);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stderr).unwrap()
}

/// The child's log lines (the test harness prints its own lines on stdout, not stderr).
fn log_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[test]
fn text_off_a_terminal_has_no_escape_bytes() {
    let err = run_child("", None);
    let lines = log_lines(&err);
    assert_eq!(lines.len(), 2, "{err}");
    assert!(!err.contains('\x1b'), "escape bytes in {err:?}");
    assert!(lines[0].contains("INFO"), "{}", lines[0]);
    assert!(
        lines[0].contains("reconcile{policy=\"web-backlog\" namespace=\"shop\"}"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("status written pods=3"), "{}", lines[0]);
    assert!(lines[1].contains("WARN") && lines[1].contains("error=\"boom\""));
}

fn check_json(err: &str) {
    let lines = log_lines(err);
    assert_eq!(lines.len(), 2, "{err}");
    let first: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON line");
    assert_eq!(first["level"], "INFO");
    assert_eq!(first["target"], "output");
    assert_eq!(first["fields"]["message"], "status written");
    assert_eq!(first["fields"]["pods"], 3);
    assert_eq!(first["span"]["name"], "reconcile");
    assert_eq!(first["span"]["policy"], "web-backlog");
    assert_eq!(first["spans"][0]["namespace"], "shop");
    assert!(first["timestamp"].is_string());
    let second: serde_json::Value = serde_json::from_str(lines[1]).expect("JSON line");
    assert_eq!(second["level"], "WARN");
    assert_eq!(second["fields"]["error"], "boom");
    assert!(!err.contains('\x1b'));
}

#[test]
fn json_lines_parse_with_level_target_message_and_span_fields() {
    check_json(&run_child("--log-format json", None));
}

#[test]
fn the_environment_selects_json_too() {
    check_json(&run_child("", Some("json")));
    // The flag wins over the environment.
    assert!(serde_json::from_str::<serde_json::Value>(
        log_lines(&run_child("--log-format text", Some("json")))[0]
    )
    .is_err());
}

#[test]
fn unknown_formats_are_refused() {
    assert!(Cli::try_parse_from(["x", "--log-format", "yaml"]).is_err());
    assert_eq!(Cli::parse_from(["x"]).log.log_format, LogFormat::Text);
}
