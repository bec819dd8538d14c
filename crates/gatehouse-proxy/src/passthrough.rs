//! Session-less passthrough: a request whose `X-Target-Base-URL` names a listed host goes there,
//! with the client's own key, instead of to a configured provider.
//!
//! Never an open relay. The host must be listed in `[passthrough] allowed_hosts`; a host name
//! is resolved before the request is admitted, and again, through a guarded resolver, when the
//! connection is made (so a name that changes its address in between, DNS rebinding, gains
//! nothing): an address that is private, loopback, link-local or otherwise not public is
//! reached only when that address itself is listed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use gatehouse_config::{PassthroughConfig, ProviderConfig, ProviderType, Secret, Timeouts};
use gatehouse_core::{ApiError, ErrorKind};
use http::{HeaderMap, header};

use crate::translate::Format;

/// The header naming the base URL.
pub const TARGET_HEADER: &str = "x-target-base-url";
/// Provider keys of passthrough routes start with this; the rest is the host.
pub const PROVIDER_PREFIX: &str = "passthrough:";

/// The allow-list and the one client every passthrough request shares.
pub struct Passthrough {
    hosts: Vec<String>,
    addresses: Arc<Vec<IpAddr>>,
    timeouts: Timeouts,
    client: crate::client::Client,
    /// Targets it intercepts are resolved by the proxy, not here.
    outbound: crate::client::OutboundProxy,
}

impl std::fmt::Debug for Passthrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passthrough")
            .field("hosts", &self.hosts)
            .finish()
    }
}

/// Where one passthrough request goes: a provider of its own, keyed `passthrough:<host>`.
#[derive(Debug, Clone)]
pub struct Target {
    pub provider_key: String,
    pub provider: Arc<ProviderConfig>,
}

impl Passthrough {
    pub fn new(
        config: &PassthroughConfig,
        timeouts: Timeouts,
        outbound: &crate::client::OutboundProxy,
    ) -> Result<Self, crate::client::ClientError> {
        let hosts: Vec<String> = config
            .allowed_hosts
            .iter()
            .map(|h| {
                h.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_ascii_lowercase()
            })
            .collect();
        let addresses: Arc<Vec<IpAddr>> =
            Arc::new(hosts.iter().filter_map(|h| h.parse().ok()).collect());
        let client = crate::client::build(
            timeouts.connect,
            false,
            crate::client::Resolver::Guarded {
                listed: addresses.clone(),
            },
            outbound,
        )?;
        Ok(Self {
            hosts,
            addresses,
            timeouts,
            client,
            outbound: outbound.clone(),
        })
    }

    pub(crate) fn client(&self) -> &crate::client::Client {
        &self.client
    }

    /// The target of a request, `None` without the header. `client` is the format the client
    /// speaks: the target is spoken to in it, and the key is in that API's header. Refused (403)
    /// unless the host is listed and every address it resolves to may be reached.
    pub async fn target(
        &self,
        headers: &HeaderMap,
        client: Format,
    ) -> Result<Option<Target>, ApiError> {
        let Some(value) = headers.get(TARGET_HEADER) else {
            return Ok(None);
        };
        let refuse = |why: String| Err(ApiError::new(ErrorKind::PassthroughNotAllowed, why));
        let Some(raw) = value.to_str().ok().map(str::trim) else {
            return refuse("X-Target-Base-URL is not a readable URL".into());
        };
        let Ok(url) = url::Url::parse(raw) else {
            return refuse(format!(
                "X-Target-Base-URL `{}` is not a URL (e.g. https://api.openai.com/v1)",
                gatehouse_config::shown_url(raw)
            ));
        };
        if !matches!(url.scheme(), "http" | "https") {
            return refuse("X-Target-Base-URL must be an http or https URL".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return refuse(
                "X-Target-Base-URL must not carry credentials; send your key in Authorization"
                    .into(),
            );
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return refuse("X-Target-Base-URL has no host".into()),
        };
        if !self.listed(&host) {
            return refuse(if self.hosts.is_empty() {
                "passthrough is off: no host is listed in [passthrough] allowed_hosts".into()
            } else {
                format!("host `{host}` is not listed in [passthrough] allowed_hosts")
            });
        }
        // A host name is checked now, for a clear 403; the resolver checks again on connect.
        // Through the outbound proxy the name is the proxy's to resolve.
        if host.parse::<IpAddr>().is_err() && !self.outbound.intercepts(raw) {
            let port = url.port_or_known_default().unwrap_or(443);
            let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host.as_str(), port)).await
            {
                Ok(a) => a.collect(),
                Err(e) => {
                    return Err(ApiError::new(
                        ErrorKind::UpstreamUnreachable,
                        format!("passthrough host `{host}` could not be resolved: {e}"),
                    ));
                }
            };
            if let Some(a) = addrs.iter().find(|a| !reachable(a.ip(), &self.addresses)) {
                return refuse(format!(
                    "host `{host}` resolves to {}, a private or loopback address; list that address in [passthrough] allowed_hosts to allow it",
                    a.ip()
                ));
            }
        }
        let kind = match client {
            Format::Anthropic => ProviderType::Anthropic,
            Format::Gemini => ProviderType::Gemini,
            Format::OpenAi | Format::Responses | Format::Ollama => ProviderType::Openai,
        };
        let Some((key, bearer)) = client_key(headers, kind) else {
            return Err(ApiError::new(
                ErrorKind::ProviderKeyMissing,
                "a passthrough request carries your own provider key: send it in Authorization: Bearer (or x-api-key)",
            ));
        };
        // The endpoint's path goes after the base URL: a query or fragment there would swallow it.
        let mut url = url;
        url.set_query(None);
        url.set_fragment(None);
        let base_url = url.as_str().trim_end_matches('/').to_owned();
        Ok(Some(Target {
            provider_key: format!("{PROVIDER_PREFIX}{host}"),
            provider: Arc::new(ProviderConfig {
                kind,
                shown_url: base_url.clone(),
                base_url,
                api_key: Some(key),
                api_key_env: None,
                headers: Default::default(),
                timeouts: self.timeouts,
                // The target is unknown: usage comes from whatever its stream carries.
                stream_usage: false,
                rpm: None,
                responses_api: false,
                bearer,
                // The shared passthrough client carries it.
                http2: false,
                connections: 1,
            }),
        }))
    }

    fn listed(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| match h.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
            None => h == host,
        })
    }
}

/// The client's key for the API it speaks: that API's own header first, then the other one;
/// and whether it came as `Authorization: Bearer` (an OAuth token stays in that header).
fn client_key(headers: &HeaderMap, kind: ProviderType) -> Option<(Secret, bool)> {
    let bearer = || {
        headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")
            .map(str::trim)
    };
    let named = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    let own = match kind {
        ProviderType::Anthropic => named("x-api-key"),
        ProviderType::Gemini => named("x-goog-api-key"),
        _ => None,
    };
    let (key, as_bearer) = match own {
        Some(k) => (k, false),
        None => match bearer() {
            Some(k) => (k, true),
            None => (named("x-api-key")?, false),
        },
    };
    (!key.is_empty()).then(|| (Secret::new(key.to_owned()), as_bearer))
}

/// Whether an address may be reached: a public one, or one listed itself.
pub(crate) fn reachable(ip: IpAddr, listed: &[IpAddr]) -> bool {
    listed.contains(&ip) || is_public(ip)
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let [x, y, ..] = a.octets();
            !(a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_documentation()
                // shared address space (RFC 6598) and 0.0.0.0/8
                || (x == 100 && (64..128).contains(&y))
                || x == 0)
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => is_public(IpAddr::V4(v4)),
            None => {
                let first = a.segments().first().copied().unwrap_or(0);
                !(a.is_loopback()
                    || a.is_unspecified()
                    || a.is_multicast()
                    // unique local fc00::/7 and link-local fe80::/10
                    || (first & 0xfe00) == 0xfc00
                    || (first & 0xffc0) == 0xfe80)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(hosts: &[&str]) -> Passthrough {
        let t = std::time::Duration::from_secs(5);
        Passthrough::new(
            &PassthroughConfig {
                allowed_hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            },
            Timeouts {
                connect: t,
                first_byte: t,
                idle: t,
                total: t,
            },
            &crate::client::OutboundProxy::none(),
        )
        .expect("client")
    }

    #[test]
    fn hosts_match_exactly_or_by_suffix() {
        let p = pt(&["api.openai.com", "*.openai.azure.com", "10.0.0.5"]);
        assert!(p.listed("api.openai.com"));
        assert!(!p.listed("evil-api.openai.com"));
        assert!(!p.listed("api.openai.com.evil.net"));
        assert!(p.listed("team.openai.azure.com"));
        assert!(!p.listed("openai.azure.com"));
        assert!(!p.listed("x.evilopenai.azure.com.net"));
        assert!(p.listed("10.0.0.5"));
    }

    #[test]
    fn private_addresses_need_listing() {
        let none: &[IpAddr] = &[];
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            let ip: IpAddr = private.parse().unwrap();
            assert!(!reachable(ip, none), "{private}");
            assert!(reachable(ip, &[ip]), "{private} listed");
        }
        assert!(reachable("104.18.7.192".parse().unwrap(), none));
        assert!(reachable("2606:4700::1".parse().unwrap(), none));
    }

    #[test]
    fn the_key_comes_from_the_clients_own_header() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "sk-ant".parse().unwrap());
        h.insert(header::AUTHORIZATION, "Bearer sk-oai".parse().unwrap());
        let key = |h: &HeaderMap, k| client_key(h, k).map(|(s, b)| (s.expose().to_owned(), b));
        assert_eq!(
            key(&h, ProviderType::Anthropic),
            Some(("sk-ant".into(), false))
        );
        assert_eq!(key(&h, ProviderType::Openai), Some(("sk-oai".into(), true)));
        // An OAuth token sent as Bearer to an Anthropic target stays a Bearer token.
        h.remove("x-api-key");
        assert_eq!(
            key(&h, ProviderType::Anthropic),
            Some(("sk-oai".into(), true))
        );
        assert_eq!(
            client_key(&HeaderMap::new(), ProviderType::Openai).map(|_| ()),
            None
        );
    }
}
