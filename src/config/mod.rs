//! Configuration: `config/default.toml` built in, an optional TOML file
//! over it, `TETHER_INGRESS_*` environment variables over both.
//!
//! The merged TOML deserialises straight into [`Config`], the one typed
//! struct the program reads: one struct per section, units in the key
//! names, `""` and `0` meaning "none" or "off" where the file says so.
//! Each section checks its own ranges and cross-field rules; every problem,
//! structural or not, is reported at once with its key and where it was
//! set, so an operator fixes a file in one pass. A reload compares the new
//! configuration with the running one and applies only what `keys` lists
//! as live.

mod file;
mod forms;
mod jobs;
mod keys;
mod problems;
mod redis;
mod sections;
mod server;
mod tree;

use std::{ffi::OsString, path::Path};

pub use file::Config;
pub use forms::Secret;
pub(crate) use forms::redact_url;
pub use jobs::{Bullmq, JobOptions, Sink, SinkKind, Streams};
pub use keys::ENV;
pub use redis::{Redis, RedisTls};
pub use sections::{
    Auth, Idempotency, Log, LogFormat, RateLimit, RateLimitScope, SecretFile, Spool, Upstream,
};
pub use server::{Server, ServerTls, ServingThreads, TrustedProxies};

use problems::Problems;

/// Settings whose environment value is taken as given, whitespace and all.
const SECRETS: [&str; 1] = ["auth.jwt_secret"];

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The I/O cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML; every syntax error is listed.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The path given.
        path: String,
        /// The parser's messages, with line and column.
        message: String,
    },
    /// One or more settings are unknown, mistyped or out of range; every
    /// problem is listed.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Built-in defaults, then `path` if given, then the process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => Some(
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?,
            ),
            None => None,
        };
        let origin = path.map(|p| p.display().to_string()).unwrap_or_default();
        // A name that is not text cannot be one of ours.
        let env: Vec<(String, OsString)> = std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value)))
            .collect();
        Self::from_sources(text.as_deref().map(|t| (t, origin.as_str())), &env)
    }

    /// Defaults, then the TOML `text` (`origin` names it in errors), with no
    /// environment.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        Self::from_sources(Some((text, origin)), &[])
    }

    /// Defaults, then `file` (its text and name), then the variables of
    /// `env` named in [`ENV`]. A variable of the binary's prefix that
    /// [`ENV`] does not name is refused like an unknown key in the file: a
    /// misspelt `TETHER_INGRESS_REDIS_URL` must not leave the jobs going to
    /// the default Redis.
    fn from_sources(
        file: Option<(&str, &str)>,
        env: &[(String, OsString)],
    ) -> Result<Self, ConfigError> {
        let defaults = file::default_table();
        let mut table = defaults.clone();
        if let Some((text, origin)) = file {
            let given: toml::Table = toml::from_str(text).map_err(|first| {
                // Every syntax error of the file, not just the first.
                let (_, all) = toml::de::DeTable::parse_recoverable(text);
                let all: Vec<String> = all.iter().map(ToString::to_string).collect();
                ConfigError::Parse {
                    path: origin.to_owned(),
                    message: if all.len() > 1 {
                        all.join("\n")
                    } else {
                        first.to_string()
                    },
                }
            })?;
            tree::merge(&mut table, given);
        }
        let mut problems = Problems::default();
        let mut unknown: Vec<&str> = env
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| {
                name.starts_with(keys::ENV_PREFIX) && !ENV.iter().any(|(known, _)| known == name)
            })
            .collect();
        unknown.sort_unstable();
        for name in unknown {
            problems.push(keys::unknown_variable(name));
        }
        let mut set: Vec<(&str, &str)> = Vec::new();
        for &(name, key) in ENV {
            let Some((_, value)) = env.iter().find(|(n, _)| n == name) else {
                continue;
            };
            match value.to_str() {
                Some(text) => {
                    // Surrounding whitespace (the trailing newline of a
                    // value written from a file or a YAML block) is no part
                    // of an address, a path or a name: kept, it would put
                    // the spool in a directory named `spool\n`. A secret is
                    // taken byte for byte, as the backend reading the same
                    // variable takes it.
                    let text = if SECRETS.contains(&key) {
                        text
                    } else {
                        text.trim()
                    };
                    tree::set_text(&mut table, &defaults, key, text.to_owned());
                    set.push((name, key));
                }
                None => problems.push(format!("{key} (from {name}): is not UTF-8 text")),
            }
        }
        let config = tree::deserialize::<Config>(table, &defaults, &mut problems);
        if let Some(config) = &config {
            config.check(&mut problems);
        }
        tree::locate(&mut problems, file.map(|(text, _)| text), &set);
        match config {
            Some(config) if problems.0.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid(problems.0)),
        }
    }

    /// Checks every section, returning the configuration when all is well:
    /// for a configuration built or changed in code.
    pub fn validate(self) -> Result<Self, ConfigError> {
        let mut problems = Problems::default();
        self.check(&mut problems);
        if problems.0.is_empty() {
            Ok(self)
        } else {
            Err(ConfigError::Invalid(problems.0))
        }
    }
}

/// The configuration as `section.key = value` lines, in the file's names
/// and units, secrets masked: `check-config`'s output. It is the serialised
/// [`Config`], so every setting is in it.
pub fn describe(config: &Config) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    match flatten(config) {
        Ok(settings) => {
            for (key, value) in settings {
                let _ = match value {
                    toml::Value::String(s) if s.is_empty() => writeln!(out, "{key} = (none)"),
                    toml::Value::String(s) => writeln!(out, "{key} = {s}"),
                    other => writeln!(out, "{key} = {other}"),
                };
            }
        }
        // Every field serialises to a TOML scalar; this cannot happen.
        Err(e) => {
            let _ = writeln!(out, "(cannot describe the configuration: {e})");
        }
    }
    out
}

/// Every setting of `config` as `(section.key, value)`, in the file's order.
fn flatten(config: &Config) -> Result<Vec<(String, toml::Value)>, toml::ser::Error> {
    fn walk(prefix: &str, value: toml::Value, out: &mut Vec<(String, toml::Value)>) {
        match value {
            toml::Value::Table(table) => {
                for (key, v) in table {
                    let path = if prefix.is_empty() {
                        key
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&path, v, out);
                }
            }
            other => out.push((prefix.to_owned(), other)),
        }
    }
    let mut out = Vec::new();
    walk("", toml::Value::try_from(config)?, &mut out);
    Ok(out)
}

/// What a reload does with a new configuration.
#[derive(Debug)]
pub(crate) struct Reload {
    /// The running configuration with the live settings of the new one.
    pub(crate) applied: Config,
    /// Live settings that changed, now in force (names only).
    pub(crate) changed: Vec<String>,
    /// Settings that changed but keep their running value until a restart.
    pub(crate) restart_needed: Vec<String>,
}

/// Compares `new` with `running` by their real values (secrets and
/// passwords included) and takes over what `keys` lists as live; every
/// other changed setting is reported as needing a restart, so a setting
/// missing from the list errs on the safe side.
pub(crate) fn reload(running: &Config, new: &Config) -> Reload {
    let real = |c: &Config| forms::revealed(|| flatten(c)).unwrap_or_default();
    let before = real(running);
    // Turning the listener's TLS on or off needs a new listener.
    let tls_switch = running.server.tls.files().is_some() != new.server.tls.files().is_some();
    let under = |name: &str, key: &str| {
        key.strip_prefix(name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    };
    let mut applied = running.clone();
    for (name, take) in keys::LIVE {
        if !(tls_switch && *name == "server.tls") {
            take(&mut applied, new);
        }
    }
    let (mut changed, mut restart_needed) = (Vec::new(), Vec::new());
    for (key, value) in real(new) {
        if before.iter().any(|(k, v)| *k == key && *v == value) {
            continue;
        }
        let (key, list) = match under("server.tls", &key) {
            true if tls_switch => ("server.tls (on or off)".to_owned(), &mut restart_needed),
            _ if keys::LIVE.iter().any(|(name, _)| under(name, &key)) => (key, &mut changed),
            _ => (key, &mut restart_needed),
        };
        if !list.contains(&key) {
            list.push(key);
        }
    }
    Reload {
        applied,
        changed,
        restart_needed,
    }
}

#[cfg(test)]
mod tests;
