//! The operator's forms of values, as serde helpers used in both
//! directions: `""` for "none", `0` for "off", secrets that print masked.
//! Durations use `serde_with`'s adapters directly on the fields.

use std::{borrow::Cow, cell::Cell, fmt, num::NonZeroU32, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

/// What a secret prints as.
const REDACTED: &str = "**REDACTED**";

thread_local! {
    /// Set while a configuration is serialised for comparison, never for
    /// printing: secrets then serialise as they are.
    static REVEAL: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with secrets serialised as they are (to compare two
/// configurations by their real values); printing never does this.
pub(super) fn revealed<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            REVEAL.with(|r| r.set(self.0));
        }
    }
    let _reset = Reset(REVEAL.with(|r| r.replace(true)));
    f()
}

fn revealing() -> bool {
    REVEAL.with(Cell::get)
}

/// A secret that never prints: `Debug` and serialisation show
/// `**REDACTED**`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret's bytes, for the one place that uses them.
    pub(crate) fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A value written as a non-empty string in the file.
pub(super) trait Text: Sized {
    /// Reads the operator's text; the error is in the operator's words.
    fn read(text: String) -> Result<Self, String>;
    /// The text `check-config` prints (masked for a secret).
    fn show(&self) -> Cow<'_, str>;
}

impl Text for PathBuf {
    fn read(text: String) -> Result<Self, String> {
        Ok(text.into())
    }
    fn show(&self) -> Cow<'_, str> {
        self.to_string_lossy()
    }
}

impl Text for std::net::SocketAddr {
    fn read(text: String) -> Result<Self, String> {
        text.parse().map_err(|_| socket_addr::refusal(&text))
    }
    fn show(&self) -> Cow<'_, str> {
        self.to_string().into()
    }
}

impl Text for http::Uri {
    fn read(text: String) -> Result<Self, String> {
        text.parse().map_err(|_| {
            format!(
                "{:?} must be an http:// or https:// URL like http://127.0.0.1:2212",
                redact_url(&text)
            )
        })
    }
    fn show(&self) -> Cow<'_, str> {
        self.to_string().into()
    }
}

impl Text for Secret {
    fn read(text: String) -> Result<Self, String> {
        Ok(Self(text))
    }
    fn show(&self) -> Cow<'_, str> {
        if revealing() { &self.0 } else { REDACTED }.into()
    }
}

/// `""` means none; anything else is read as `T`.
pub(super) mod empty_as_none {
    use crate::config::forms::*;

    pub(crate) fn serialize<T: Text, S: Serializer>(
        value: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(value.as_ref().map_or("".into(), T::show).as_ref())
    }

    pub(crate) fn deserialize<'de, T: Text, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            return Ok(None);
        }
        T::read(text).map(Some).map_err(D::Error::custom)
    }
}

/// A URL that may hold a password: printed as `redis://user:***@host`.
pub(super) fn redacted_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    if revealing() {
        s.serialize_str(url)
    } else {
        s.serialize_str(&redact_url(url))
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`, for messages; the
/// value of every query parameter but [`PLAIN_PARAMETERS`] is masked the
/// same way (`sentinelPassword=`, or a `password=` some other client reads),
/// and so is a fragment.
pub(crate) fn redact_url(url: &str) -> String {
    let mut out = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    };
    let Some((query, fragment)) = query_of(&out) else {
        return out;
    };
    let masked: Vec<String> = out[query.clone()]
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if !PLAIN_PARAMETERS.contains(&key) => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    if fragment {
        out.replace_range(query.end.., "#***");
    }
    out.replace_range(query, &masked.join("&"));
    out
}

/// Query parameters whose values are no secret.
const PLAIN_PARAMETERS: [&str; 3] = ["node", "sentinelServiceName", "sentinelUsername"];

/// Where the query of `url` is (after its host, so past any `?` an
/// unencoded password holds), and whether a fragment follows it.
pub(crate) fn query_of(url: &str) -> Option<(std::ops::Range<usize>, bool)> {
    let after_scheme = url.find("://").map_or(0, |n| n + 3);
    let host = url[after_scheme..]
        .rfind('@')
        .map_or(after_scheme, |at| after_scheme + at + 1);
    let start = host + url[host..].find('?')? + 1;
    let end = url[start..].find('#').map_or(url.len(), |n| start + n);
    Some((start..end, end < url.len()))
}

/// A count where `0` means none.
pub(super) mod count_or_zero {
    use crate::config::forms::*;

    pub(crate) fn serialize<S: Serializer>(
        n: &Option<NonZeroU32>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u32(n.map_or(0, NonZeroU32::get))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<NonZeroU32>, D::Error> {
        Ok(NonZeroU32::new(u32::deserialize(d)?))
    }
}

/// Whole seconds where `0` means never.
pub(super) mod secs_or_zero {
    use crate::config::forms::*;

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.map_or(0, |d| d.as_secs()))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let secs = u64::deserialize(d)?;
        Ok((secs > 0).then(|| Duration::from_secs(secs)))
    }
}

/// A socket address, refused in the operator's words.
pub(super) mod socket_addr {
    use std::net::SocketAddr;

    use crate::config::forms::*;

    pub(crate) fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|_| D::Error::custom(refusal(&text)))
    }

    /// Why `text` is not a socket address, in the operator's words.
    pub(crate) fn refusal(text: &str) -> String {
        format!(
            "{text:?} is not an address like 127.0.0.1:8080: an IP address and a port (0.0.0.0:8080 or [::]:8080 listens on every interface)"
        )
    }
}
