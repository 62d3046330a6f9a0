//! Loading a configuration: defaults, the file, the environment, and every
//! problem reported at once with its key.

use std::ffi::OsString;

use super::*;

fn with_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: Vec<(String, OsString)> = vars
        .iter()
        .map(|&(name, value)| (name.to_owned(), value.into()))
        .collect();
    Config::from_sources(None, &env)
}

fn problems(result: Result<Config, ConfigError>) -> Vec<String> {
    match result {
        Err(ConfigError::Invalid(problems)) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn a_misspelt_variable_is_refused_with_the_name_it_is_near() {
    let found = problems(with_env(&[
        ("TETHER_INGRESS_REDIS_URI", "redis://10.0.0.9:6379"),
        ("TETHER_INGRESS_PORT", "9000"),
        ("TETHER_INGRESS_LISTEN", "nowhere"),
        // Other programs' variables are none of ours.
        ("TETHER_DEMO", "0"),
        ("PATH", "/usr/bin"),
    ]));
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(
        found[0],
        "TETHER_INGRESS_PORT: not a variable tether-ingress reads (`tether-ingress --help` lists them)"
    );
    assert_eq!(
        found[1],
        "TETHER_INGRESS_REDIS_URI: not a variable tether-ingress reads; did you mean TETHER_INGRESS_REDIS_URL? (`tether-ingress --help` lists them)"
    );
    assert!(
        found[2].starts_with("server.listen (from TETHER_INGRESS_LISTEN): "),
        "{found:?}"
    );
    assert!(with_env(&[("TETHER_DEMO", "0")]).is_ok());
    let hint = |name| problems(with_env(&[(name, "x")])).join("");
    assert!(hint("TETHER_INGRESS_JWT_SECERT").contains("did you mean TETHER_INGRESS_JWT_SECRET?"));
    assert!(hint("TETHER_INGRESS_TLS_CERT").contains("did you mean TETHER_INGRESS_TLS_CERT_FILE?"));
    for (name, _) in ENV {
        assert!(name.starts_with(keys::ENV_PREFIX), "{name}");
    }
}

#[test]
fn a_value_that_is_not_text_is_refused_not_ignored() {
    use std::os::unix::ffi::OsStringExt as _;
    let env = [(
        "TETHER_INGRESS_REDIS_URL".to_owned(),
        OsString::from_vec(b"redis://\xff:6379".to_vec()),
    )];
    assert_eq!(
        problems(Config::from_sources(None, &env)),
        ["redis.url (from TETHER_INGRESS_REDIS_URL): is not UTF-8 text"]
    );
}

#[test]
fn whitespace_around_a_variable_is_dropped_but_a_secret_is_kept_as_given() {
    let cfg = with_env(&[
        ("TETHER_INGRESS_SPOOL_DIR", "/var/lib/tether/spool\n"),
        ("TETHER_INGRESS_SINK", " bullmq\r\n"),
        ("TETHER_INGRESS_LISTEN", "0.0.0.0:8080\n"),
        ("TETHER_INGRESS_REDIS_WAIT_REPLICAS", "1\n"),
        ("TETHER_INGRESS_JWT_SECRET", "s3cret\n"),
    ])
    .unwrap();
    assert_eq!(
        cfg.spool.dir.as_deref(),
        Some(std::path::Path::new("/var/lib/tether/spool"))
    );
    assert_eq!(cfg.sink.kind, SinkKind::Bullmq);
    assert_eq!(cfg.server.listen, ([0, 0, 0, 0], 8080).into());
    assert_eq!(cfg.redis.wait_replicas, 1);
    assert_eq!(cfg.auth.secret().unwrap().expose(), b"s3cret\n");
    // Kept, but said: a padded secret is more often a stray newline.
    assert!(cfg.auth.secret_warning().is_some());
    for (secret, warned) in [("s3cret", false), (" s3cret", true), ("s3 cret", false)] {
        let cfg = with_env(&[("TETHER_INGRESS_JWT_SECRET", secret)]).unwrap();
        assert_eq!(cfg.auth.secret_warning().is_some(), warned, "{secret:?}");
    }
}

#[test]
fn default_toml_is_the_valid_default() {
    let parsed =
        Config::from_toml(include_str!("../../../config/default.toml"), "default.toml").unwrap();
    assert_eq!(parsed, Config::default());
    assert!(Config::default().validate().is_ok());
    assert!(!file::default_table().is_empty());
}

#[test]
fn partial_file_keeps_other_defaults() {
    let config = Config::from_toml("[server]\nmax_body_bytes = 10\n", "t").unwrap();
    assert_eq!(config.server.max_body_bytes, 10);
    assert_eq!(config.redis, Config::default().redis);
}

#[test]
fn unknown_setting_is_refused() {
    let err = Config::from_toml("[server]\nlisten_addr = \"x\"\n", "t").unwrap_err();
    assert!(err.to_string().contains("listen_addr"), "{err}");
}

#[test]
fn env_overrides_file() {
    let cfg = with_env(&[
        ("TETHER_INGRESS_LISTEN", "0.0.0.0:9999"),
        ("TETHER_INGRESS_REDIS_URL", "redis://10.0.0.1:6380"),
        ("TETHER_INGRESS_JWT_SECRET", "s3cret"),
    ])
    .unwrap();
    assert_eq!(cfg.server.listen.port(), 9999);
    assert_eq!(cfg.redis.url, "redis://10.0.0.1:6380");
    assert_eq!(cfg.auth.secret().unwrap().expose(), b"s3cret");
    assert!(!format!("{cfg:?}").contains("s3cret"));
}

#[test]
fn every_environment_name_sets_a_setting_of_the_default_file() {
    for (name, key) in ENV {
        assert!(
            tree::get(&file::default_table(), key).is_some(),
            "{name} → {key}"
        );
    }
}

#[test]
fn an_environment_value_of_the_wrong_type_names_its_key() {
    let err = with_env(&[("TETHER_INGRESS_REDIS_WAIT_REPLICAS", "two")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("redis.wait_replicas"), "{err}");
    let cfg = with_env(&[("TETHER_INGRESS_REDIS_WAIT_REPLICAS", " 2 ")]).unwrap();
    assert_eq!(cfg.redis.wait_replicas, 2);
}

#[test]
fn bullmq_in_a_cluster_needs_a_hash_tag() {
    let check = |prefix: &str, queue: &str| {
        let mut c = Config::default();
        c.redis.url = "redis-cluster://127.0.0.1:7000".into();
        c.sink.kind = SinkKind::Bullmq;
        c.bullmq.prefix = prefix.into();
        c.bullmq.workflow_queue = queue.into();
        c.bullmq.outreach_queue = format!("{queue}-out");
        c.validate().map(drop).map_err(|e| e.to_string())
    };
    assert!(check("{bull}", "wf").is_ok());
    assert!(check("bull", "{wf}").is_ok());
    let err = check("bull", "wf").unwrap_err();
    assert!(err.contains("hash tag"), "{err}");
    assert!(
        check("bull{}", "wf").is_err(),
        "an empty tag hashes the whole key"
    );
    assert_eq!(jobs::hash_tag("a{b}c{d}"), Some("b"));
    // Off a cluster, any prefix does.
    let mut c = Config::default();
    c.sink.kind = SinkKind::Bullmq;
    c.bullmq.prefix = "bull".into();
    assert!(c.validate().is_ok());
}

#[test]
fn bullmq_settings_from_the_environment() {
    let cfg = with_env(&[
        ("TETHER_INGRESS_SINK", "bullmq"),
        ("TETHER_INGRESS_BULLMQ_PREFIX", "{bull}"),
        ("TETHER_INGRESS_BULLMQ_WORKFLOW_QUEUE", "wf"),
        ("TETHER_INGRESS_BULLMQ_OUTREACH_QUEUE", "out"),
        (
            "TETHER_INGRESS_BULLMQ_JOB_OPTIONS",
            r#"{"attempts":3,"removeOnComplete":true}"#,
        ),
    ])
    .unwrap();
    assert_eq!(cfg.sink.kind, SinkKind::Bullmq);
    assert_eq!(
        (
            cfg.bullmq.prefix.as_str(),
            cfg.bullmq.workflow_queue.as_str(),
            cfg.bullmq.outreach_queue.as_str()
        ),
        ("{bull}", "wf", "out")
    );
    assert_eq!(
        cfg.bullmq.job_options.stored().unwrap(),
        r#"{"attempts":3,"removeOnComplete":true}"#
    );
    for (var, value, says) in [
        ("TETHER_INGRESS_SINK", "kafka", "sink.kind"),
        (
            "TETHER_INGRESS_BULLMQ_WORKFLOW_QUEUE",
            "a:b",
            "bullmq.workflow_queue",
        ),
        (
            "TETHER_INGRESS_BULLMQ_OUTREACH_QUEUE",
            "",
            "bullmq.outreach_queue",
        ),
    ] {
        let err = with_env(&[(var, value)]).unwrap_err().to_string();
        assert!(err.contains(says), "{var}={value}: {err}");
    }
}

#[test]
fn jwt_secret_from_a_file() {
    let path = std::env::temp_dir().join(format!("tether-secret-{}", std::process::id()));
    std::fs::write(&path, "file-secret\n").unwrap();
    let toml = format!(
        "[auth]\njwt_secret_file = {:?}\n",
        path.display().to_string()
    );
    let cfg = Config::from_toml(&toml, "t").unwrap();
    assert_eq!(cfg.auth.secret().unwrap().expose(), b"file-secret");
    let both = format!("{toml}jwt_secret = \"inline\"\n");
    assert!(Config::from_toml(&both, "t").is_err(), "both set");
    let _ = std::fs::remove_file(&path);
    let err = Config::from_toml("[auth]\njwt_secret_file = \"/nonexistent/secret\"\n", "t")
        .unwrap_err()
        .to_string();
    assert!(err.contains("auth.jwt_secret_file"), "{err}");
}

#[test]
fn every_problem_is_reported() {
    let mut c = Config::default();
    c.server.max_connections = 0;
    c.redis.url = "http://x".into();
    c.server.max_body_bytes = 0;
    let ConfigError::Invalid(problems) = c.validate().unwrap_err() else {
        panic!("expected Invalid");
    };
    assert_eq!(problems.len(), 3, "{problems:?}");
    // A body whose job no Redis value or spool record could hold.
    let body_cap = |n: usize| {
        let mut c = Config::default();
        c.server.max_body_bytes = n;
        c.validate()
    };
    let ConfigError::Invalid(problems) = body_cap((64 << 20) + 1).unwrap_err() else {
        panic!("expected Invalid");
    };
    assert!(
        problems[0].starts_with("server.max_body_bytes: must be at most 67108864"),
        "{problems:?}"
    );
    assert!(body_cap(64 << 20).is_ok());
    // Structural problems (unknown keys, wrong types) with the others.
    let file = "[server]\nlisten = \"nope\"\nmax_connections = 0\nnope = 1\n[redis]\nurl = \"http://x\"\n[sink]\nkind = \"kafka\"\n[extra]\nx = 1\n";
    let ConfigError::Invalid(problems) = Config::from_toml(file, "t").unwrap_err() else {
        panic!("expected Invalid");
    };
    let text = problems.join("\n");
    for says in [
        "server.listen",
        "server.max_connections",
        "nope",
        "redis.url",
        "sink.kind",
        "extra",
    ] {
        assert!(text.contains(says), "{says} missing from:\n{text}");
    }
    assert_eq!(problems.len(), 6, "{text}");
    // Each with where it was set: the line of the file, or the variable.
    assert!(text.contains("server.listen (line 2): "), "{text}");
    assert!(text.contains("extra (line 9): "), "{text}");
    let err = with_env(&[("TETHER_INGRESS_LISTEN", "x")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.listen (from TETHER_INGRESS_LISTEN): "),
        "{err}"
    );
}

#[test]
fn redis_urls_this_build_cannot_honour_are_refused() {
    let check = |url: &str| {
        let mut c = Config::default();
        c.redis.url = url.into();
        c.validate().map(drop).map_err(|e| e.to_string())
    };
    assert!(check("redis://127.0.0.1:6379/0").is_ok());
    assert!(check("redis://user:pw@127.0.0.1:6379").is_ok());
    assert!(check("redis+unix:///tmp/redis.sock").is_ok());
    assert!(
        check("redis-sentinel://u:pw@127.0.0.1:26379?sentinelServiceName=m&node=127.0.0.1:26380")
            .is_ok()
    );
    assert!(check("redis-cluster://u:pw@127.0.0.1:7000?node=127.0.0.1:7001").is_ok());
    for (url, says) in [
        ("redis-sentinel://h:1", "sentinelServiceName"),
        ("http://h:1", "must start with"),
        ("redis+unix://", "path"),
        // Without fred's sentinel-auth, these were silently ignored.
        (
            "redis-sentinel://u:pw@h:1?sentinelServiceName=m&sentinelPassword=hunter2",
            "sentinelPassword=***\" sets sentinelUsername or sentinelPassword, which this build does not honour",
        ),
        (
            "redis-sentinel://h:1?sentinelServiceName=m&sentinelUsername=s",
            "does not honour",
        ),
        // fred said only "InvalidPort".
        (
            "redis://u:hunter2/x?y@127.0.0.1:6379",
            "***@127.0.0.1:6379\" is not a Redis URL: InvalidPort; a user or password holding @ : / ? # or % must be percent-encoded",
        ),
        ("redis://u:a:hunter2#@h:1", "must be percent-encoded"),
        // fred reads no other parameter, and said nothing of these.
        (
            "redis://h:6379?db=2",
            "has the query parameter \"db\", which is not read (a redis:// URL takes none); a database goes in the path",
        ),
        (
            "redis://h:6379?password=hunter2#hunter2",
            "\"redis://h:6379?password=***#***\" has the query parameter \"password\"",
        ),
        ("redis://h:1?node=h:2", "(a redis:// URL takes none)"),
        (
            "rediss-cluster://h:1?node=h:2&timeout=5",
            "\"timeout\", which is not read (a rediss-cluster:// URL takes node)",
        ),
        (
            "redis-sentinel://h:1?sentinelServiceName=m&node=h:2&db=1",
            "(a redis-sentinel:// URL takes sentinelServiceName and node)",
        ),
    ] {
        let err = check(url).unwrap_err();
        assert!(err.contains(says), "{url}: {err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}

#[test]
fn an_upstream_url_is_only_where_the_backend_is() {
    let check = |url: &str| {
        with_env(&[("TETHER_INGRESS_UPSTREAM_URL", url)])
            .map(drop)
            .map_err(|e| e.to_string())
    };
    assert!(check("http://127.0.0.1:2212").is_ok());
    assert!(check("http://127.0.0.1:2212/").is_ok());
    assert!(check("https://backend.internal").is_ok());
    for (url, says) in [
        (
            "http://admin:hunter2@127.0.0.1:2212",
            "\"http://admin:***@127.0.0.1:2212/\" must not hold a user or password",
        ),
        (
            "http://127.0.0.1:2212/api",
            "must name only the scheme, host and port",
        ),
        (
            "http://127.0.0.1:2212?x=1",
            "must name only the scheme, host and port",
        ),
        ("ftp://u:hunter2@h:21", "must be an http:// or https:// URL"),
        (
            "http://u:hunter2@bad host",
            "must be an http:// or https:// URL",
        ),
    ] {
        let err = check(url).unwrap_err();
        assert!(err.contains(says), "{url}: {err}");
        assert!(err.contains("(from TETHER_INGRESS_UPSTREAM_URL)"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}

#[test]
fn a_listen_address_without_an_ip_says_what_is_missing() {
    for given in ["8080", ":8080", "localhost:8080"] {
        let problems = problems(with_env(&[("TETHER_INGRESS_LISTEN", given)]));
        assert_eq!(
            problems,
            [format!(
                "server.listen (from TETHER_INGRESS_LISTEN): {given:?} is not an address like 127.0.0.1:8080: an IP address and a port (0.0.0.0:8080 or [::]:8080 listens on every interface)"
            )]
        );
    }
}

#[test]
fn serving_threads_auto_count_or_refused() {
    let threads = |text: &str| {
        Config::from_toml(&format!("[server]\nserving_threads = {text}\n"), "t")
            .map_err(|e| e.to_string())
            .map(|c| c.server.serving_threads.count())
    };
    assert_eq!(threads(r#""auto""#), Ok(crate::cores::per_core()));
    assert_eq!(threads("3"), Ok(3));
    assert_eq!(threads("0"), Ok(0));
    for bad in [r#""many""#, "257", "-1"] {
        let err = threads(bad).unwrap_err();
        assert!(err.contains("serving_threads"), "{bad}: {err}");
    }
}

mod output;

/// A bare word in the log filter is a level; tracing would take any other
/// as the one target to log, and the ingress's own lines, errors included,
/// would vanish without a word.
#[test]
fn a_log_level_that_would_silence_the_ingress_is_refused() {
    let check = |level: &str| {
        let mut c = Config::default();
        c.log.level = level.into();
        c.validate().err().map(|e| e.to_string())
    };
    for fine in [
        "info",
        "WARN",
        "debug,fred=warn",
        "info,hyper=off",
        "tether_ingress::sink=debug",
        "tether_ingress::sink",
        "off",
    ] {
        assert_eq!(check(fine), None, "{fine}");
    }
    for silencing in ["warning", "verbose", "info,fatal"] {
        let said = check(silencing).unwrap_or_default();
        assert!(
            said.contains("is not a level") && said.contains("log.level"),
            "{silencing}: {said}"
        );
    }
    assert!(
        check("info,fred=loud")
            .unwrap_or_default()
            .contains("is not a tracing filter")
    );
}

/// A value of the wrong type is answered with what may be written, not
/// with the Rust type serde expected (`expected u32`).
#[test]
fn a_number_out_of_its_type_says_what_may_be_written() {
    let file = "[server]\nmax_body_bytes = -1\n[redis]\nwait_replicas = \"two\"\nresync_busy_percent = 300\n[streams]\nmaxlen = \"x\"\n";
    let ConfigError::Invalid(problems) = Config::from_toml(file, "t").unwrap_err() else {
        panic!("expected Invalid");
    };
    let text = problems.join("\n");
    for says in [
        "server.max_body_bytes (line 2): invalid value: integer `-1`, expected a whole number, 0 or more",
        "redis.wait_replicas (line 4): invalid type: string \"two\", expected a whole number from 0 to 4294967295",
        "redis.resync_busy_percent (line 5): invalid value: integer `300`, expected a whole number from 0 to 255",
        "streams.maxlen (line 7): invalid type: string \"x\", expected a whole number",
    ] {
        assert!(text.contains(says), "{says}\n{text}");
    }
    assert!(
        !text.contains("expected u") && !text.contains("expected i64"),
        "{text}"
    );
}

#[test]
fn the_metrics_listener_is_an_address_of_its_own() {
    let config = with_env(&[("TETHER_INGRESS_METRICS_LISTEN", " 0.0.0.0:9090 ")]).unwrap();
    assert_eq!(
        config.server.metrics_listen,
        Some(([0, 0, 0, 0], 9090).into())
    );
    assert_eq!(Config::default().server.metrics_listen, None);
    let found = problems(with_env(&[("TETHER_INGRESS_METRICS_LISTEN", "9090")]));
    assert_eq!(
        found,
        [
            r#"server.metrics_listen (from TETHER_INGRESS_METRICS_LISTEN): "9090" is not an address like 127.0.0.1:8080: an IP address and a port (0.0.0.0:8080 or [::]:8080 listens on every interface)"#
        ]
    );
    let found = problems(with_env(&[
        ("TETHER_INGRESS_LISTEN", "127.0.0.1:9000"),
        ("TETHER_INGRESS_METRICS_LISTEN", "127.0.0.1:9000"),
    ]));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with(
            "server.metrics_listen (from TETHER_INGRESS_METRICS_LISTEN): 127.0.0.1:9000 is server.listen too"
        ),
        "{found:?}"
    );
}
