//! Every way a request can be refused, and the one place each becomes an
//! HTTP status and the contract's JSON envelope:
//! `{"success":false,"error":"…","message":"…","code":"…"}`.
//!
//! Bodies are `&'static` (built by a macro at compile time), so refusing a
//! flood of bad requests allocates nothing but hyper's own response. Internal
//! causes (Redis errors) are carried as `#[source]` for logs and never reach
//! the caller. Status follows who is at fault: caller 4xx, Redis 503, bug 500.

use http::StatusCode;

/// Why jobs were not stored, for the log line of their 503: the sink's
/// own error, boxed so this module needs nothing of the sink.
pub(crate) type StoreFailure = Box<dyn std::error::Error + Send + Sync>;

/// A request refused before (or instead of) doing its work.
#[derive(Debug, thiserror::Error)]
pub enum Reject {
    /// No `Authorization` header, or an empty token.
    #[error("authentication required")]
    NoCredentials,
    /// `Authorization` with a scheme other than `Bearer`.
    #[error("unsupported authorization scheme")]
    BadScheme,
    /// Unknown, inactive or revoked API key (one answer for all three).
    #[error("invalid API key")]
    InvalidKey,
    /// A JWT where none can be verified (no secret, no upstream), or on a
    /// route that takes API keys only.
    #[error("JWT not accepted")]
    JwtNotAccepted,
    /// A JWT that fails verification (signature, alg, claims).
    #[error("invalid JWT")]
    InvalidJwt,
    /// A JWT past `exp` or before `nbf`.
    #[error("expired JWT")]
    ExpiredJwt,
    /// The upstream could not be reached or broke off.
    #[error("upstream unavailable")]
    BadGateway,
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    GatewayTimeout,
    /// The body is over the configured limit.
    #[error("request body too large")]
    BodyTooLarge,
    /// The body could not be read (client went away, bad framing).
    #[error("request body could not be read")]
    BodyRead,
    /// The body is not valid JSON.
    #[error("malformed JSON")]
    MalformedJson,
    /// The JSON nests deeper than the parser allows.
    #[error("JSON nested too deeply")]
    TooDeep,
    /// The body is JSON but not an object.
    #[error("body is not a JSON object")]
    NotAnObject,
    /// No `webhookId` member.
    #[error("missing webhookId")]
    MissingWebhookId,
    /// `webhookId` is present but not a string.
    #[error("webhookId is not a string")]
    WebhookIdNotString,
    /// A JWT on a route that takes API keys only.
    #[error("API key required")]
    ApiKeyRequired,
    /// No `configurationId` (or `configuration_id`, `CONFIGURATION_ID`).
    #[error("missing configurationId")]
    MissingConfigurationId,
    /// The configuration id is not a string.
    #[error("configurationId is not a string")]
    ConfigurationIdNotString,
    /// No such configuration, or not the caller's (one answer for both).
    #[error("configuration not found")]
    ConfigurationNotFound,
    /// The configuration is not active.
    #[error("configuration inactive")]
    ConfigurationInactive,
    /// The configuration has neither a process nor a prompt.
    #[error("configuration has no process or prompt")]
    ConfigurationIncomplete,
    /// A fixed-format group that is not a JSON object.
    #[error("group is not an object")]
    GroupNotObject,
    /// Known route, wrong method. The `Allow` header is added by the service.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// No such route (and no upstream to forward it to).
    #[error("not found")]
    NotFound,
    /// The caches are not loaded from Redis yet.
    #[error("not ready")]
    NotReady,
    /// Redis cannot take the jobs right now, and nothing was sent to it (or
    /// it refused them).
    #[error("job store unavailable")]
    Unavailable(#[source] StoreFailure),
    /// The jobs were sent to Redis but their storage could not be confirmed
    /// (the answer was lost or late, or too few replicas confirmed them).
    #[error("job store did not confirm")]
    Unconfirmed(#[source] StoreFailure),
    /// The body did not arrive whole within the body read timeout.
    #[error("request body timed out")]
    BodyTimeout,
    /// The request head is over the configured limit.
    #[error("request headers too large")]
    HeadersTooLarge,
    /// The key sent more than its rate allows; retry after this many seconds.
    #[error("rate limited")]
    RateLimited {
        /// Seconds until a request would be allowed (at least 1).
        retry_after_secs: u64,
    },
    /// A request with this Idempotency-Key is still being handled.
    #[error("idempotency key in use")]
    IdempotencyInProgress,
    /// This Idempotency-Key was used with a different request.
    #[error("idempotency key reused")]
    IdempotencyKeyReused,
    /// The Idempotency-Key header is empty, too long or not visible ASCII.
    #[error("invalid idempotency key")]
    InvalidIdempotencyKey,
    /// Redis, which holds idempotency keys, cannot be reached.
    #[error("idempotency store unavailable")]
    IdempotencyUnavailable,
    /// Fail-closed: the key cache has been out of touch with Redis too long.
    #[error("key cache out of date")]
    AuthStale,
    /// Every connection slot stayed taken for the queue timeout.
    #[error("too many connections")]
    Overloaded,
    /// Plain HTTP on a listener that speaks TLS only.
    #[error("plain HTTP on the HTTPS port")]
    HttpsRequired,
}

/// Builds `(status, code, static JSON body)` for a refusal.
macro_rules! envelope {
    ($status:ident, $code:literal, $error:literal, $message:literal) => {
        (
            StatusCode::$status,
            $code,
            concat!(
                r#"{"success":false,"error":""#,
                $error,
                r#"","message":""#,
                $message,
                r#"","code":""#,
                $code,
                r#""}"#
            ),
        )
    };
}

// === impl Reject ===

impl Reject {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Reject::NoCredentials => envelope!(
                UNAUTHORIZED,
                "AUTH_REQUIRED",
                "Authentication required",
                "Send an Authorization: Bearer <API key or JWT> header."
            ),
            Reject::BadScheme => envelope!(
                UNAUTHORIZED,
                "AUTH_SCHEME_UNSUPPORTED",
                "Unsupported authorization scheme",
                "Use the Bearer scheme: Authorization: Bearer <API key or JWT>."
            ),
            Reject::InvalidKey => envelope!(
                UNAUTHORIZED,
                "INVALID_API_KEY",
                "Invalid API key",
                "The key is unknown, disabled or revoked; check it or create a new one."
            ),
            Reject::JwtNotAccepted => envelope!(
                UNAUTHORIZED,
                "JWT_NOT_ACCEPTED",
                "JWT not accepted",
                "This endpoint cannot verify a JWT here; authenticate with an API key."
            ),
            Reject::InvalidJwt => envelope!(
                UNAUTHORIZED,
                "INVALID_TOKEN",
                "Invalid token",
                "Sign in again to get a valid session token."
            ),
            Reject::ExpiredJwt => envelope!(
                UNAUTHORIZED,
                "TOKEN_EXPIRED",
                "Token expired or not yet valid",
                "Sign in again to get a fresh session token."
            ),
            Reject::BadGateway => envelope!(
                BAD_GATEWAY,
                "UPSTREAM_UNAVAILABLE",
                "Upstream unavailable",
                "The backend could not be reached; retry later."
            ),
            Reject::GatewayTimeout => envelope!(
                GATEWAY_TIMEOUT,
                "UPSTREAM_TIMEOUT",
                "Upstream timed out",
                "The backend did not answer in time; retry later."
            ),
            Reject::BodyTooLarge => envelope!(
                PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "Request body too large",
                "Send a smaller body; the limit is set by server.max_body_bytes."
            ),
            Reject::BodyRead => envelope!(
                BAD_REQUEST,
                "BODY_READ_FAILED",
                "Request body could not be read",
                "Send the complete body with correct framing."
            ),
            Reject::MalformedJson => envelope!(
                BAD_REQUEST,
                "INVALID_JSON",
                "Malformed JSON",
                "Send a valid JSON object as the body."
            ),
            Reject::TooDeep => envelope!(
                BAD_REQUEST,
                "JSON_TOO_DEEP",
                "JSON nested too deeply",
                "Flatten the body; nesting deeper than 1024 levels is refused."
            ),
            Reject::NotAnObject => envelope!(
                BAD_REQUEST,
                "INVALID_BODY",
                "Body is not a JSON object",
                "Send a JSON object with a string webhookId."
            ),
            Reject::MissingWebhookId => envelope!(
                BAD_REQUEST,
                "MISSING_WEBHOOK_ID",
                "Missing webhookId",
                "Add a string webhookId member to the body."
            ),
            Reject::WebhookIdNotString => envelope!(
                BAD_REQUEST,
                "INVALID_WEBHOOK_ID",
                "webhookId must be a string",
                "Send webhookId as a JSON string."
            ),
            Reject::ApiKeyRequired => envelope!(
                UNAUTHORIZED,
                "API_KEY_REQUIRED",
                "API key required",
                "This endpoint takes an API integration key, not a session JWT."
            ),
            Reject::MissingConfigurationId => envelope!(
                BAD_REQUEST,
                "MISSING_CONFIGURATION_ID",
                "Missing configurationId",
                "Add configurationId (or configuration_id, CONFIGURATION_ID) to the body."
            ),
            Reject::ConfigurationIdNotString => envelope!(
                BAD_REQUEST,
                "INVALID_CONFIGURATION_ID",
                "configurationId must be a string",
                "Send configurationId as a JSON string."
            ),
            Reject::ConfigurationNotFound => envelope!(
                NOT_FOUND,
                "CONFIGURATION_NOT_FOUND",
                "Configuration not found",
                "Check the configuration id in Settings > Outreach; it must belong to this key's user."
            ),
            Reject::ConfigurationInactive => envelope!(
                BAD_REQUEST,
                "CONFIGURATION_INACTIVE",
                "Configuration inactive",
                "Activate the outreach configuration, then retry."
            ),
            Reject::ConfigurationIncomplete => envelope!(
                BAD_REQUEST,
                "CONFIGURATION_INCOMPLETE",
                "No process or prompt configured",
                "Set a process or a prompt on the outreach configuration, then retry."
            ),
            Reject::GroupNotObject => envelope!(
                BAD_REQUEST,
                "INVALID_GROUP",
                "Group is not an object",
                "Send contacts, applications and conversations as JSON objects."
            ),
            Reject::MethodNotAllowed => envelope!(
                METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "Method not allowed",
                "Use POST on this route."
            ),
            Reject::NotFound => envelope!(
                NOT_FOUND,
                "NOT_FOUND",
                "Not found",
                "Check the path; this server answers POST /api/webhook/workflow and /api/webhook/outreach."
            ),
            Reject::NotReady => envelope!(
                SERVICE_UNAVAILABLE,
                "NOT_READY",
                "Service starting",
                "The ingress is still starting (loading its caches from Redis, or connecting its job writer); retry after the Retry-After delay."
            ),
            Reject::Unavailable(_) => envelope!(
                SERVICE_UNAVAILABLE,
                "JOB_STORE_UNAVAILABLE",
                "Job store unavailable",
                "Nothing was enqueued; retry after the Retry-After delay."
            ),
            Reject::Unconfirmed(_) => envelope!(
                SERVICE_UNAVAILABLE,
                "JOB_STORE_UNCONFIRMED",
                "Job store did not confirm",
                "The jobs were sent to the job store but their storage was not confirmed: they may or may not have been enqueued. A retry after the Retry-After delay may enqueue them twice (delivery is at least once)."
            ),
            Reject::BodyTimeout => envelope!(
                REQUEST_TIMEOUT,
                "BODY_TIMEOUT",
                "Request body timed out",
                "Send the whole body promptly; the limit is set by server.body_read_timeout_ms."
            ),
            Reject::HeadersTooLarge => envelope!(
                REQUEST_HEADER_FIELDS_TOO_LARGE,
                "HEADERS_TOO_LARGE",
                "Request headers too large",
                "Send fewer or smaller headers; the limit is set by server.max_header_bytes."
            ),
            Reject::RateLimited { .. } => envelope!(
                TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                "Rate limit exceeded",
                "This API key sent more requests than its rate allows; retry after the Retry-After delay."
            ),
            Reject::IdempotencyInProgress => envelope!(
                CONFLICT,
                "IDEMPOTENCY_IN_PROGRESS",
                "Request with this Idempotency-Key in progress",
                "A request with the same Idempotency-Key is still being handled; retry shortly."
            ),
            Reject::IdempotencyKeyReused => envelope!(
                UNPROCESSABLE_ENTITY,
                "IDEMPOTENCY_KEY_REUSED",
                "Idempotency-Key reused",
                "This Idempotency-Key was used for a different request; use a new key for new content."
            ),
            Reject::InvalidIdempotencyKey => envelope!(
                BAD_REQUEST,
                "INVALID_IDEMPOTENCY_KEY",
                "Invalid Idempotency-Key",
                "Send 1 to 255 visible ASCII characters as the Idempotency-Key."
            ),
            Reject::IdempotencyUnavailable => envelope!(
                SERVICE_UNAVAILABLE,
                "IDEMPOTENCY_UNAVAILABLE",
                "Idempotency store unavailable",
                "Nothing was enqueued; retry after the Retry-After delay, or retry without Idempotency-Key."
            ),
            Reject::Overloaded => envelope!(
                SERVICE_UNAVAILABLE,
                "OVERLOADED",
                "Too many connections",
                "The server is at its connection limit; retry after the Retry-After delay."
            ),
            Reject::AuthStale => envelope!(
                SERVICE_UNAVAILABLE,
                "AUTH_UNAVAILABLE",
                "Key cache out of date",
                "The ingress has lost touch with its key store; retry after the Retry-After delay."
            ),
            Reject::HttpsRequired => envelope!(
                BAD_REQUEST,
                "HTTPS_REQUIRED",
                "Plain HTTP sent to the HTTPS port",
                "This port speaks HTTPS only; send the request to its https:// URL."
            ),
        }
    }

    /// HTTP status of this refusal.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// Machine-readable code (the envelope's `code`), also a bounded metric label.
    pub fn code(&self) -> &'static str {
        self.parts().1
    }

    /// The full JSON envelope.
    pub fn body(&self) -> &'static str {
        self.parts().2
    }

    /// Whether the answer carries `Retry-After`.
    pub fn retry_after(&self) -> bool {
        matches!(
            self.status(),
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Reject> {
        vec![
            Reject::NoCredentials,
            Reject::BadScheme,
            Reject::InvalidKey,
            Reject::JwtNotAccepted,
            Reject::InvalidJwt,
            Reject::ExpiredJwt,
            Reject::BadGateway,
            Reject::GatewayTimeout,
            Reject::BodyTooLarge,
            Reject::BodyRead,
            Reject::MalformedJson,
            Reject::TooDeep,
            Reject::NotAnObject,
            Reject::MissingWebhookId,
            Reject::WebhookIdNotString,
            Reject::ApiKeyRequired,
            Reject::MissingConfigurationId,
            Reject::ConfigurationIdNotString,
            Reject::ConfigurationNotFound,
            Reject::ConfigurationInactive,
            Reject::ConfigurationIncomplete,
            Reject::GroupNotObject,
            Reject::MethodNotAllowed,
            Reject::NotFound,
            Reject::NotReady,
            Reject::Unavailable("disconnected".into()),
            Reject::Unconfirmed("timeout".into()),
            Reject::BodyTimeout,
            Reject::HeadersTooLarge,
            Reject::RateLimited {
                retry_after_secs: 1,
            },
            Reject::IdempotencyInProgress,
            Reject::IdempotencyKeyReused,
            Reject::InvalidIdempotencyKey,
            Reject::IdempotencyUnavailable,
            Reject::AuthStale,
            Reject::Overloaded,
            Reject::HttpsRequired,
        ]
    }

    #[test]
    fn every_body_is_the_contract_envelope() {
        for r in all() {
            let v: serde_json::Value = serde_json::from_str(r.body()).unwrap();
            assert_eq!(v["success"], false);
            assert_eq!(v["code"], r.code());
            assert!(!v["error"].as_str().unwrap().is_empty());
            assert!(!v["message"].as_str().unwrap().is_empty());
        }
    }

    #[test]
    fn the_openapi_document_lists_exactly_these_codes() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../openapi/openapi.json")).unwrap();
        let mut documented: Vec<&str> =
            doc["components"]["schemas"]["WebhookErrorResponse"]["properties"]["code"]["enum"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
        let mut produced: Vec<&str> = all().iter().map(Reject::code).collect();
        documented.sort_unstable();
        produced.sort_unstable();
        produced.dedup();
        assert_eq!(documented, produced);
    }

    #[test]
    fn bad_input_is_never_5xx() {
        for r in all() {
            let server_side = matches!(
                r,
                Reject::NotReady
                    | Reject::Unavailable(_)
                    | Reject::Unconfirmed(_)
                    | Reject::IdempotencyUnavailable
                    | Reject::AuthStale
                    | Reject::Overloaded
                    | Reject::BadGateway
                    | Reject::GatewayTimeout
            );
            assert_eq!(r.status().is_server_error(), server_side, "{r:?}");
        }
    }
}
