//! What a configuration prints as (`check-config`) and what a reload does
//! with it.

use std::time::Duration;

use super::super::*;

#[test]
fn describe_masks_the_secret() {
    let mut c = Config::default();
    c.auth.jwt_secret = Some(Secret::new("top-secret"));
    c.redis.url = "redis://u:pw@h:1".into();
    let text = describe(&c.validate().unwrap());
    assert!(text.contains("auth.jwt_secret = **REDACTED**"));
    assert!(!text.contains("top-secret"));
    assert!(!text.contains("pw@"));
}

#[test]
fn describe_prints_job_options_as_given() {
    let text = describe(&Config::default());
    assert!(text.contains("bullmq.job_options = (none)"), "{text}");
    let mut c = Config::default();
    c.bullmq.job_options = JobOptions::from(r#"{ "attempts": 3, "backoff": 1000 }"#);
    let text = describe(&c.validate().unwrap());
    assert!(
        text.contains(r#"bullmq.job_options = {"attempts":3,"backoff":1000}"#),
        "{text}"
    );
}

#[test]
fn describe_names_every_setting_of_the_default_file() {
    let text = describe(&Config::default());
    let described: std::collections::BTreeSet<&str> =
        text.lines().filter_map(|l| l.split(" = ").next()).collect();
    let file = file::default_table();
    fn keys_of(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value.as_table() {
                Some(inner) => keys_of(&path, inner, out),
                None => out.push(path),
            }
        }
    }
    let mut keys = Vec::new();
    keys_of("", &file, &mut keys);
    assert!(keys.len() > 30, "{keys:?}");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !described.contains(k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "check-config leaves out {missing:?}:\n{text}"
    );
    // And nothing that is not a setting.
    assert_eq!(described.len(), keys.len(), "{text}");
}

#[test]
fn every_live_setting_is_a_setting() {
    let defaults = file::default_table();
    for (name, _) in keys::LIVE {
        assert!(tree::get(&defaults, name).is_some(), "{name}");
    }
}

#[test]
fn a_reload_applies_live_settings_and_names_the_rest() {
    let running = Config::default();
    let mut new = running.clone();
    new.server.max_body_bytes = 10;
    new.redis.command_timeout_ms = Duration::from_millis(5);
    new.redis.url = "redis://10.0.0.1:6379".into();
    let r = reload(&running, &new);
    assert_eq!(r.applied.server.max_body_bytes, 10);
    assert_eq!(r.applied.redis.command_timeout_ms, Duration::from_millis(5));
    assert_eq!(r.applied.redis.url, running.redis.url);
    assert_eq!(r.restart_needed, ["redis.url"]);
    // What the log names as applied: the live settings that changed.
    assert_eq!(
        r.changed,
        ["server.max_body_bytes", "redis.command_timeout_ms"]
    );
    let same = reload(&running, &running.clone());
    assert!(same.changed.is_empty() && same.restart_needed.is_empty());
}

#[test]
fn a_reload_never_switches_the_rate_limit_scope() {
    let mut running = Config::default();
    running.rate_limit.scope = RateLimitScope::Global;
    let mut new = running.clone();
    new.rate_limit.scope = RateLimitScope::Instance;
    new.rate_limit.burst = std::num::NonZeroU32::new(7);
    let r = reload(&running, &new);
    assert_eq!(r.applied.rate_limit.scope, RateLimitScope::Global);
    assert_eq!(r.applied.rate_limit.burst, new.rate_limit.burst);
    assert_eq!(r.restart_needed, ["rate_limit.scope"]);
    assert_eq!(r.changed, ["rate_limit.burst"]);
}

#[test]
fn a_reload_reports_redis_tls_and_a_changed_password() {
    let mut running = Config::default();
    running.redis.url = "rediss://u:old@127.0.0.1:6380".into();
    let mut new = running.clone();
    new.redis.url = "rediss://u:new@127.0.0.1:6380".into();
    new.redis.tls.ca_file = Some("/etc/ca.pem".into());
    let r = reload(&running, &new);
    assert_eq!(r.applied.redis, running.redis);
    assert_eq!(r.restart_needed, ["redis.url", "redis.tls.ca_file"]);
    // The report names the key, never the password.
    assert!(!r.restart_needed.join(" ").contains("old"));
}

#[test]
fn a_reload_does_not_turn_the_listener_tls_on() {
    let running = Config::default();
    let mut new = running.clone();
    new.server.tls.cert_file = Some("/c.pem".into());
    new.server.tls.key_file = Some("/k.pem".into());
    let r = reload(&running, &new);
    assert_eq!(r.applied.server.tls, running.server.tls);
    assert_eq!(r.restart_needed, ["server.tls (on or off)"]);
}
