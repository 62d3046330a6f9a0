//! What the binary says about itself and how it writes: `--help` names every
//! environment variable, `--version` the commit, and log lines going to a
//! pipe or a file carry no colour codes. And what it does with the process's
//! open-file limit: raised towards `server.max_connections`, or said short.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use support::*;

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
}

#[test]
fn help_lists_every_environment_variable_and_version_names_the_commit() {
    let help = binary().arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    for (name, key) in tether_ingress::config::ENV {
        assert!(help.contains(name), "{name} missing from --help:\n{help}");
        assert!(help.contains(&format!("({key})")), "{key} missing:\n{help}");
    }
    let version = binary().arg("--version").output().unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    assert!(version.contains("(commit "), "{version}");
}

/// The binary serving on a port the kernel picks against `redis` with `env` set,
/// logging at info level to a pipe.
fn logging_to_a_pipe(redis: &RedisServer, env: &[(&str, &str)]) -> std::process::Child {
    binary()
        .env("TETHER_INGRESS_LISTEN", "127.0.0.1:0")
        .env("TETHER_INGRESS_REDIS_URL", redis.url())
        .env("TETHER_INGRESS_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let redis = RedisServer::start();
    let mut child = logging_to_a_pipe(&redis, &[]);
    let seen = log_until_listening(&mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen.iter().any(|l| l.contains("listening")), "{seen:?}");
    assert!(
        seen.iter().all(|l| !l.contains('\u{1b}')),
        "colour codes in {seen:?}"
    );
}

/// A JWT secret with a trailing newline is used as given, as the backend
/// uses it, but said at start, without the secret.
#[test]
fn a_jwt_secret_ending_in_a_newline_is_said_at_start() {
    let redis = RedisServer::start();
    let mut child = logging_to_a_pipe(
        &redis,
        &[("TETHER_INGRESS_JWT_SECRET", "sekrit-of-ours-42\n")],
    );
    let seen = log_until(&mut child, "JWT secret");
    child.kill().unwrap();
    child.wait().unwrap();
    let warning = seen
        .iter()
        .find(|l| l.contains("JWT secret begins or ends with whitespace"))
        .unwrap_or_else(|| panic!("no warning in {seen:?}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(seen.iter().all(|l| !l.contains("sekrit")), "{seen:?}");
}

/// The binary under `sh -c 'ulimit ARGS; exec BIN --config FILE'`, logging
/// at info level to a pipe, with `max_connections = 1000` (and silent
/// connections kept a minute, so idle ones hold their descriptors).
fn under_ulimit(ulimit: &str, redis: &RedisServer) -> (std::process::Child, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ingress.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_connections = 1000\nfirst_byte_timeout_ms = 60000\n[redis]\nurl = \"{}\"\n",
            redis.url()
        ),
    )
    .unwrap();
    let child = Command::new("sh")
        .args([
            "-c",
            &format!("ulimit {ulimit} && exec \"$0\" --config \"$1\""),
        ])
        .arg(env!("CARGO_BIN_EXE_tether-ingress"))
        .arg(&config)
        .env("TETHER_INGRESS_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (child, dir)
}

/// Lines of `child`'s log up to the one saying it listens.
fn log_until_listening(child: &mut std::process::Child) -> Vec<String> {
    log_until(child, "listening")
}

/// Lines of `child`'s log up to the first holding `what` (at most 51).
fn log_until(child: &mut std::process::Child, what: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.contains(what);
        seen.push(line);
        if done || seen.len() > 50 {
            break;
        }
    }
    seen
}

/// The hard open-file limit of this process (and so of its children).
fn hard_open_file_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let hard = line.split_whitespace().nth(4).unwrap();
    hard.parse().unwrap_or(u64::MAX)
}

/// A soft limit of 200 (the hard one higher) is raised at start, so the
/// ingress holds 600 connections and still answers a new one; before, it
/// stopped accepting at about 200 and the new connection waited unserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_soft_open_file_limit_is_raised_for_max_connections() {
    if hard_open_file_limit() < 2_000 {
        eprintln!("skipped: the hard open-file limit is below 2000 here");
        return;
    }
    let redis = RedisServer::start();
    let (mut child, _dir) = under_ulimit("-Sn 200", &redis);
    let port =
        listening_port(&mut child, std::time::Duration::from_secs(20)).expect("never listened");
    let seen = log_until_listening(&mut child);
    assert!(
        seen.iter()
            .any(|l| l.contains("open-file limit raised") && l.contains("from=200")),
        "{seen:?}"
    );
    let held: Vec<std::net::TcpStream> = (0..600)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let http = http_client();
    let healthz = async {
        let req = http::Request::get(format!("http://127.0.0.1:{port}/healthz"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        http.request(req).await.map(|r| r.status())
    };
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), healthz).await;
    drop(held);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        matches!(answer, Ok(Ok(s)) if s == http::StatusCode::OK),
        "a new connection after 600 open ones: {answer:?}"
    );
}

/// A hard limit below what `max_connections` needs is said at start, with
/// the numbers and the setting to change.
#[test]
fn a_hard_open_file_limit_below_max_connections_is_said_at_start() {
    let redis = RedisServer::start();
    let (mut child, _dir) = under_ulimit("-n 128", &redis);
    let seen = log_until_listening(&mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    let warning = seen
        .iter()
        .find(|l| l.contains("open-file limit is below"))
        .unwrap_or_else(|| panic!("no warning in {seen:?}"));
    assert!(warning.contains("WARN"), "{warning}");
    for part in ["limit=128", "wanted=1256", "max_connections=1000"] {
        assert!(warning.contains(part), "{part} missing: {warning}");
    }
}
