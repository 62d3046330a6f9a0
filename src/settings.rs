//! The configuration as the request path reads it, reloadable (SIGHUP):
//! the running [`Config`] plus the forms built from it once (the JWT
//! verifier, the `Retry-After` value, the stream keys). They sit behind
//! one `ArcSwap`: a request loads them once (an atomic load, no lock, no
//! allocation) and sees one consistent version even if a reload lands
//! mid-request. Which settings a reload changes is decided in
//! [`crate::config`]; the others keep their values until a restart.

use std::{ops::Deref, sync::Arc};

use arc_swap::ArcSwap;
use fred::types::Key;
use http::HeaderValue;

use crate::{auth::jwt::JwtVerifier, config::Config};

/// The running configuration and what is built from it.
#[derive(Debug)]
pub(crate) struct Settings {
    config: Config,
    /// HS256 verifier, when a secret is configured.
    pub(crate) jwt: Option<JwtVerifier>,
    /// `Retry-After` value sent with 503.
    pub(crate) retry_after: HeaderValue,
    /// Workflow stream key.
    pub(crate) workflow_stream: Key,
    /// Outreach stream key.
    pub(crate) outreach_stream: Key,
}

impl Deref for Settings {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.config
    }
}

/// Settings shared by every request, swapped whole on reload.
pub(crate) type SharedSettings = Arc<ArcSwap<Settings>>;

impl Settings {
    /// The settings of `config`.
    pub(crate) fn new(config: Config) -> Self {
        Self {
            jwt: config
                .auth
                .secret()
                .map(|s| JwtVerifier::new(s, config.auth.jwt_leeway_secs)),
            retry_after: HeaderValue::from(config.redis.retry_after_secs),
            workflow_stream: Key::from(config.streams.workflow.as_str()),
            outreach_stream: Key::from(config.streams.outreach.as_str()),
            config,
        }
    }

    /// A shared cell holding the settings of `config`.
    pub(crate) fn shared(config: Config) -> SharedSettings {
        Arc::new(ArcSwap::from_pointee(Self::new(config)))
    }
}
