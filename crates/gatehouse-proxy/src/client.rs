//! The HTTP client the proxy path sends with: hyper-util's pooled client over rustls
//! (aws-lc-rs, the platform's trust roots), one per provider, built at start.
//!
//! Not reqwest: on every response reqwest turned the request's URI back into a string and
//! parsed it as a URL (IDNA included), and each send cloned the URL and the header map and
//! went through layers the gateway does not use (redirects, proxies, decompression). Here a
//! request is the URI parsed once at start, headers built for it and moved in, and the body's
//! bytes; the response is hyper's own.

use std::error::Error as StdError;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// A pooled client: HTTP/1.1 and HTTP/2 (by ALPN over https, or by prior knowledge).
pub(crate) type Client =
    hyper_util::client::legacy::Client<HttpsConnector<HttpConnector<Resolver>>, Full<Bytes>>;

/// The client could not be built (the platform's trust store could not be read).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the upstream HTTP client: {0}")]
pub struct ClientError(String);

/// How a client finds addresses for a host name (an IP address in the URL skips it).
#[derive(Clone)]
pub(crate) enum Resolver {
    /// The system's resolver.
    System,
    /// The system's, keeping only the addresses passthrough may reach (`listed` are allowed
    /// even when private).
    Guarded { listed: Arc<Vec<IpAddr>> },
}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, BoxError>> + Send>>;
type BoxError = Box<dyn StdError + Send + Sync>;

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_owned();
        let listed = match self {
            Self::System => None,
            Self::Guarded { listed } => Some(listed.clone()),
        };
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let Some(listed) = listed else {
                return Ok(all.into_iter());
            };
            let ok: Vec<SocketAddr> = all
                .into_iter()
                .filter(|a| crate::passthrough::reachable(a.ip(), &listed))
                .collect();
            if ok.is_empty() {
                return Err(format!(
                    "`{host}` resolves only to private or loopback addresses, which passthrough does not reach unless they are listed"
                )
                .into());
            }
            Ok(ok.into_iter())
        })
    }
}

/// A client for one provider (or for passthrough). `http2_prior_knowledge`: speak HTTP/2 to a
/// plain `http://` URL without asking (https negotiates it by ALPN either way).
pub(crate) fn build(
    connect_timeout: Duration,
    http2_prior_knowledge: bool,
    resolver: Resolver,
) -> Result<Client, ClientError> {
    let tls = tls_config()?;
    let mut http = HttpConnector::new_with_resolver(resolver);
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    let mut builder = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .http2_only(http2_prior_knowledge);
    Ok(builder.build(connector))
}

/// The TLS settings every client shares (cloning the config shares its parts).
fn tls_config() -> Result<rustls::ClientConfig, ClientError> {
    static TLS: OnceLock<Result<rustls::ClientConfig, String>> = OnceLock::new();
    TLS.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        Ok(
            rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(LazyRoots {
                    provider,
                    verifier: OnceLock::new(),
                }))
                .with_no_client_auth(),
        )
    })
    .clone()
    .map_err(ClientError)
}

/// The platform's verifier, made at the first certificate it checks: it copies the system's
/// trust anchors (about 3.5 MiB), which a gateway that only reaches local or plain-http
/// providers never needs. Handshake signatures are checked with the provider's algorithms,
/// as the platform verifier itself does.
#[derive(Debug)]
struct LazyRoots {
    provider: Arc<rustls::crypto::CryptoProvider>,
    verifier: OnceLock<Result<Arc<rustls_platform_verifier::Verifier>, rustls::Error>>,
}

impl rustls::client::danger::ServerCertVerifier for LazyRoots {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.verifier
            .get_or_init(|| {
                rustls_platform_verifier::Verifier::new(self.provider.clone()).map(Arc::new)
            })
            .clone()?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The outbound-proxy variables (`HTTPS_PROXY` and kin) among `vars` that hold a value.
/// Gatehouse connects to providers directly and does not follow them, so the server warns
/// when one is set: behind an egress proxy every provider would otherwise just be
/// unreachable, with nothing saying why.
pub fn proxy_variables(vars: impl Iterator<Item = (String, String)>) -> Vec<String> {
    let mut set: Vec<String> = vars
        .filter(|(k, v)| {
            !v.trim().is_empty()
                && matches!(
                    k.to_ascii_lowercase().as_str(),
                    "https_proxy" | "http_proxy" | "all_proxy"
                )
        })
        .map(|(k, _)| k)
        .collect();
    set.sort();
    set
}

/// `error: source: source`, since the top-level messages hide the cause ("client error
/// (Connect)").
pub(crate) fn error_chain(e: &dyn StdError) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let next = inner.to_string();
        // hyper-util repeats a cause in its own words; say each once.
        if !s.ends_with(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_variables_are_noticed_whatever_their_case() {
        let vars = [
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("http_proxy", "http://proxy:3128"),
            ("ALL_PROXY", " "),
            ("NO_PROXY", "localhost"),
            ("PATH", "/usr/bin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(proxy_variables(vars), ["HTTPS_PROXY", "http_proxy"]);
        assert!(proxy_variables(std::iter::empty()).is_empty());
    }
}
