//! Newtypes for identifiers that must never be mixed up.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Self {
                Self(s.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// The key of a `[models."…"]` entry, e.g. `mistral/codestral-2501`.
    ModelKey
);
string_id!(
    /// The key of a `[providers."…"]` entry, e.g. `mistral` or `managed:kimi-code`.
    ProviderKey
);
string_id!(
    /// A session id: a UUID v7 when the gateway makes one, or the client's own from
    /// `X-Gatehouse-Session` (validated by [`SessionId::parse_client`]).
    SessionId
);
string_id!(
    /// A request id: the client's `X-Request-ID` when it sent a usable one, else a UUID v7.
    RequestId
);

impl SessionId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// Accepts a client-chosen id: 1 to 128 characters of `[A-Za-z0-9._:-]`, so it is safe in
    /// URLs, logs and CSV without escaping.
    pub fn parse_client(s: &str) -> Option<Self> {
        valid_token(s).then(|| Self(s.to_owned()))
    }
}

impl RequestId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// Keeps the client's id only when it is safe to echo in a header and a log line.
    pub fn from_client_or_generate(s: Option<&str>) -> Self {
        match s {
            Some(s) if valid_token(s) => Self(s.to_owned()),
            _ => Self::generate(),
        }
    }
}

fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_validated() {
        assert!(SessionId::parse_client("conv-42:a.b_c").is_some());
        assert!(SessionId::parse_client("").is_none());
        assert!(SessionId::parse_client("a b").is_none());
        assert!(SessionId::parse_client(&"x".repeat(129)).is_none());
        let r = RequestId::from_client_or_generate(Some("bad\nid"));
        assert_ne!(r.as_str(), "bad\nid");
    }
}
