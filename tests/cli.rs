//! What the binary says about itself and how it writes: `--help` names every
//! environment variable, `--version` the commit, and log lines going to a
//! pipe or a file carry no colour codes.
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

#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let redis = RedisServer::start();
    let mut child = binary()
        .env(
            "TETHER_INGRESS_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("TETHER_INGRESS_REDIS_URL", redis.url())
        .env("TETHER_INGRESS_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.contains("listening");
        seen.push(line);
        if done || seen.len() > 50 {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen.iter().any(|l| l.contains("listening")), "{seen:?}");
    assert!(
        seen.iter().all(|l| !l.contains('\u{1b}')),
        "colour codes in {seen:?}"
    );
}
