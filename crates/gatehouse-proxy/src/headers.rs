//! Outgoing headers are rebuilt, never copied wholesale: the client's credentials and
//! connection-level headers stay on this side; the provider's credentials are added here.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use gatehouse_config::{ProviderConfig, ProviderType};

use crate::HOP_HEADER;

/// Request headers that never travel upstream.
fn dropped_request_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        // hop-by-hop (RFC 9110 §7.6.1) and framing: the client library recomputes them
        "connection" | "keep-alive" | "proxy-connection" | "proxy-authorization"
            | "proxy-authenticate" | "te" | "trailer" | "transfer-encoding" | "upgrade"
            | "host" | "content-length"
            // we ask for identity so the stream can be read on the side
            | "accept-encoding" | "content-encoding"
            // the client's credentials are for the gateway, not the provider
            | "authorization" | "x-api-key" | "api-key" | "x-goog-api-key" | "cookie"
    ) || name.as_str().starts_with("x-gatehouse-")
}

/// Response headers that never travel back to the client. `content-encoding` does travel: the
/// body is passed through as upstream encoded it (upstream is asked for identity, but may not
/// comply).
pub fn dropped_response_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "set-cookie"
            | "x-request-id"
    )
}

/// A provider's credential header, ready to send.
pub type Credential = (HeaderName, HeaderValue);

/// A provider's own headers, built once: its credentials, its extra headers, and defaults its
/// API needs when the client did not send them. The credential can be replaced while the gateway
/// runs (`PUT /api/providers/{name}/key`): behind a read lock nobody holds but that write.
#[derive(Debug, Default)]
pub struct ProviderHeaders {
    auth: std::sync::RwLock<Option<Credential>>,
    extra: Vec<(HeaderName, HeaderValue)>,
    defaults: Vec<(HeaderName, HeaderValue)>,
}

impl ProviderHeaders {
    /// The header that carries `key` to `provider`.
    pub fn credential(
        provider: &ProviderConfig,
        key: &gatehouse_config::Secret,
    ) -> Option<Credential> {
        {
            let (name, value) = match provider.kind {
                _ if provider.bearer => (header::AUTHORIZATION, format!("Bearer {}", key.expose())),
                ProviderType::Anthropic => (
                    HeaderName::from_static("x-api-key"),
                    key.expose().to_owned(),
                ),
                ProviderType::Gemini => (
                    HeaderName::from_static("x-goog-api-key"),
                    key.expose().to_owned(),
                ),
                _ => (header::AUTHORIZATION, format!("Bearer {}", key.expose())),
            };
            let mut v = HeaderValue::from_str(&value).ok()?;
            // Keeps the key out of any header dump made by a debug layer.
            v.set_sensitive(true);
            Some((name, v))
        }
    }

    /// Replaces the credential (`None`: send none).
    pub fn set_credential(&self, c: Option<Credential>) {
        *self
            .auth
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = c;
    }

    pub fn new(provider: &ProviderConfig) -> Self {
        let auth = provider
            .api_key
            .as_ref()
            .and_then(|key| Self::credential(provider, key));
        // `Accept: */*` as HTTP client libraries send it, when the client sent none.
        let mut defaults = vec![(header::ACCEPT, HeaderValue::from_static("*/*"))];
        if provider.kind == ProviderType::Anthropic {
            defaults.push((
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static(crate::translate::anthropic::VERSION),
            ));
        }
        let extra = provider
            .headers
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    HeaderName::try_from(k.as_str()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect();
        Self {
            auth: std::sync::RwLock::new(auth),
            extra,
            defaults,
        }
    }
}

/// Builds the headers of the upstream request.
pub fn upstream_headers(
    client: &HeaderMap,
    provider: &ProviderHeaders,
    request_id: &str,
    hop_id: &HeaderValue,
) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(client.len() + 4);
    for (name, value) in client {
        if !dropped_request_header(name)
            && name != header::CONTENT_TYPE
            && name.as_str() != "x-request-id"
        {
            out.append(name.clone(), value.clone());
        }
    }
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        out.insert(HeaderName::from_static("x-request-id"), v);
    }
    out.insert(HeaderName::from_static(HOP_HEADER), hop_id.clone());
    for (k, v) in &provider.extra {
        out.insert(k.clone(), v.clone());
    }
    for (k, v) in &provider.defaults {
        if !out.contains_key(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    if let Some((name, value)) = &*provider
        .auth
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        out.insert(name.clone(), value.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_config::{Env, Overrides, load};

    #[test]
    fn credentials_are_replaced_and_hop_headers_dropped() {
        let c = load(
            None,
            &Env::from_pairs([("MISTRAL_API_KEY", "sk-up")]),
            &Overrides::default(),
        )
        .unwrap();
        let p = &ProviderHeaders::new(&c.providers["mistral"]);
        let mut client = HeaderMap::new();
        client.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer client-key"),
        );
        client.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        client.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        client.insert("x-gatehouse-session", HeaderValue::from_static("s1"));
        client.insert("openai-organization", HeaderValue::from_static("org"));
        client.insert(
            header::USER_AGENT,
            HeaderValue::from_static("OpenAI/Python"),
        );
        let h = upstream_headers(&client, p, "rid-1", &HeaderValue::from_static("gw"));
        assert_eq!(h[header::AUTHORIZATION], "Bearer sk-up");
        assert!(h[header::AUTHORIZATION].is_sensitive());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get(header::ACCEPT_ENCODING).is_none());
        assert!(h.get("x-gatehouse-session").is_none());
        assert_eq!(h["openai-organization"], "org");
        assert_eq!(h[header::USER_AGENT], "OpenAI/Python");
        assert_eq!(h["x-request-id"], "rid-1");
        assert_eq!(h[HOP_HEADER], "gw");
        let keyless = &ProviderHeaders::new(&c.providers["ollama"]);
        let h = upstream_headers(&client, keyless, "r", &HeaderValue::from_static("gw"));
        assert!(
            h.get(header::AUTHORIZATION).is_none(),
            "client key must not leak upstream"
        );
    }
}
