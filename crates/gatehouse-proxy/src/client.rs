//! The HTTP client the proxy path sends with: hyper-util's pooled client over rustls
//! (aws-lc-rs, the platform's trust roots), one per provider, built at start.
//!
//! Not reqwest: on every response reqwest turned the request's URI back into a string and
//! parsed it as a URL (IDNA included), and each send cloned the URL and the header map and
//! went through layers the gateway does not use (redirects, proxies, decompression). Here a
//! request is the URI parsed once at start, headers built for it and moved in, and the body's
//! bytes; the response is hyper's own.
//!
//! An outbound proxy (`[proxy] outbound_proxy`, else `HTTPS_PROXY` and kin) is followed the way
//! curl does: an https provider through a `CONNECT` tunnel, TLS end to end; a plain-http one
//! in absolute form, with `Proxy-Authorization` when the proxy URL has credentials. Loopback
//! providers are always reached directly: no proxy can reach this machine's loopback.

use std::error::Error as StdError;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http::uri::Scheme;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

type Pooled = hyper_util::client::legacy::Client<HttpsConnector<Connector>, Full<Bytes>>;

/// A pooled client: HTTP/1.1 and HTTP/2 (by ALPN over https, or by prior knowledge), through
/// the outbound proxy when there is one.
#[derive(Clone)]
pub(crate) struct Client {
    pooled: Pooled,
    proxies: Option<Arc<Matcher>>,
}

impl Client {
    pub(crate) fn request(
        &self,
        mut request: http::Request<Full<Bytes>>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        // A plain-http request goes to the proxy itself, so it carries the proxy's credentials;
        // a tunnel carried them in its CONNECT.
        if let Some(m) = &self.proxies
            && request.uri().scheme() == Some(&Scheme::HTTP)
            && !direct(request.uri())
            && let Some(auth) = m
                .intercept(request.uri())
                .and_then(|i| i.basic_auth().cloned())
        {
            request
                .headers_mut()
                .insert(http::header::PROXY_AUTHORIZATION, auth);
        }
        self.pooled.request(request)
    }
}

/// Where providers are reached through: the outbound proxy's rules (`NO_PROXY` included).
#[derive(Clone, Debug, Default)]
pub struct OutboundProxy(Option<Arc<Matcher>>);

impl OutboundProxy {
    /// No proxy: every provider directly.
    pub fn none() -> Self {
        Self(None)
    }

    /// `[proxy] outbound_proxy` and `no_proxy` when the config sets them (an empty URL turns
    /// the environment's off), else `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`
    /// (either case), as curl reads them.
    pub fn new(configured: Option<&str>, no_proxy: &[String]) -> Result<Self, ClientError> {
        let matcher = match configured {
            Some(url) if url.trim().is_empty() => return Ok(Self::none()),
            Some(url) => {
                check_proxy_url(url, "proxy.outbound_proxy")?;
                // curl's syntax (`.internal` and `internal` cover the subdomains), and the
                // `*.internal` people write anyway.
                let no: Vec<&str> = no_proxy
                    .iter()
                    .map(|h| h.trim().strip_prefix('*').unwrap_or(h.trim()))
                    .collect();
                Matcher::builder().all(url).no(no.join(",")).build()
            }
            None => {
                // `vars_os`: `vars` panics on a variable that is not UTF-8.
                let vars = std::env::vars_os()
                    .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
                for (name, url) in vars.filter(|(k, v)| {
                    !v.trim().is_empty()
                        && matches!(
                            k.to_ascii_lowercase().as_str(),
                            "https_proxy" | "http_proxy" | "all_proxy"
                        )
                }) {
                    check_proxy_url(&url, &name)?;
                }
                Matcher::from_env()
            }
        };
        // Whether any proxy is set at all: asked for a name no `NO_PROXY` lists (`.invalid` is
        // reserved), so a `NO_PROXY` that lists a real host cannot hide the proxy.
        let any = [
            "http://gatehouse-probe.invalid/",
            "https://gatehouse-probe.invalid/",
        ]
        .iter()
        .any(|u| matcher.intercept(&Uri::from_static(u)).is_some());
        Ok(Self(any.then(|| Arc::new(matcher))))
    }

    /// Whether a request to `url` goes through the proxy.
    pub(crate) fn intercepts(&self, url: &str) -> bool {
        self.0.as_ref().is_some_and(|m| {
            url.parse::<Uri>()
                .is_ok_and(|uri| !direct(&uri) && m.intercept(&uri).is_some())
        })
    }

    /// The proxy a request to `url` goes through, for the log (credentials left out).
    pub fn describe(&self, url: &str) -> Option<String> {
        let uri: Uri = url.parse().ok()?;
        if direct(&uri) {
            return None;
        }
        let i = self.0.as_ref()?.intercept(&uri)?;
        Some(format!(
            "{}://{}",
            i.uri().scheme_str().unwrap_or("http"),
            i.uri()
                .authority()
                .map_or("", |a| a.as_str().rsplit('@').next().unwrap_or(""))
        ))
    }
}

/// Only http:// proxies: the tunnel and the absolute form are spoken in the clear to the
/// proxy (what corporate proxies expect); anything else would fail at the first request.
fn check_proxy_url(url: &str, source: &str) -> Result<(), ClientError> {
    let uri: Uri = url
        .trim()
        .parse()
        .map_err(|_| ClientError(format!("{source} `{}` is not a URL", redact_userinfo(url))))?;
    if uri.scheme() != Some(&Scheme::HTTP) || uri.host().is_none() {
        return Err(ClientError(format!(
            "{source} `{}` must be an http:// proxy URL (http://host:port, with user:password@ if it needs them)",
            redact_userinfo(url)
        )));
    }
    Ok(())
}

/// A proxy URL for a message, its password left out.
fn redact_userinfo(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!(
            "{}://…@{}",
            url.get(..s).unwrap_or(""),
            url.get(at + 1..).unwrap_or("")
        ),
        _ => url.to_owned(),
    }
}

/// Loopback targets, which no proxy can reach.
fn direct(uri: &Uri) -> bool {
    let Some(host) = uri.host() else {
        return true;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let suffix = host
        .len()
        .checked_sub(".localhost".len())
        .and_then(|at| host.as_bytes().get(at..));
    host.eq_ignore_ascii_case("localhost")
        || suffix.is_some_and(|s| s.eq_ignore_ascii_case(b".localhost"))
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Opens connections: directly, or through the outbound proxy (a tunnel for https, the proxy
/// itself for plain http, the connection then marked as proxied so requests go in absolute
/// form).
#[derive(Clone)]
pub(crate) struct Connector {
    http: HttpConnector<Resolver>,
    proxies: Option<Arc<Matcher>>,
    /// Passthrough's resolver: through a proxy the target's name is the proxy's to resolve,
    /// and an address literal is still checked here.
    guard: Option<Resolver>,
}

type Connecting = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let proxy = match &self.proxies {
            Some(m) if !direct(&dst) => m.intercept(&dst),
            _ => None,
        };
        let Some(proxy) = proxy else {
            let connecting = self.http.call(dst);
            return Box::pin(async move {
                Ok(Conn {
                    io: connecting.await?,
                    proxied: false,
                })
            });
        };
        if let Some(g) = &self.guard
            && let Err(e) = g.check(dst.host().unwrap_or(""))
        {
            return Box::pin(async move { Err(e) });
        }
        if dst.scheme() == Some(&Scheme::HTTPS) {
            let mut tunnel = Tunnel::new(proxy.uri().clone(), self.http.clone());
            if let Some(auth) = proxy.basic_auth() {
                tunnel = tunnel.with_auth(auth.clone());
            }
            Box::pin(async move {
                let io = tunnel
                    .call(dst)
                    .await
                    .map_err(|e| format!("through the outbound proxy: {}", error_chain(&e)))?;
                Ok(Conn { io, proxied: false })
            })
        } else {
            let connecting = self.http.call(proxy.uri().clone());
            Box::pin(async move {
                Ok(Conn {
                    io: connecting.await?,
                    proxied: true,
                })
            })
        }
    }
}

/// A TCP connection, to the provider or to the outbound proxy.
pub(crate) struct Conn {
    io: TokioIo<TcpStream>,
    /// Connected to a proxy that forwards plain-http requests: they go in absolute form.
    proxied: bool,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

/// The client could not be built: the platform's trust store could not be read, or the
/// outbound proxy's URL is not one it can use.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the upstream HTTP client: {0}")]
pub struct ClientError(pub(crate) String);

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

impl Resolver {
    /// Whether `host`, about to be sent to the outbound proxy, may be reached: an address
    /// literal is checked as the resolver would check it; a name is the proxy's to resolve
    /// (behind an egress proxy this machine often cannot resolve public names at all).
    fn check(&self, host: &str) -> Result<(), BoxError> {
        let Self::Guarded { listed } = self else {
            return Ok(());
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) if !crate::passthrough::reachable(ip, listed) => Err(format!(
                "`{host}` is a private or loopback address, which passthrough does not reach unless it is listed"
            )
            .into()),
            _ => Ok(()),
        }
    }
}

/// A client for one provider (or for passthrough). `http2_prior_knowledge`: speak HTTP/2 to a
/// plain `http://` URL without asking (https negotiates it by ALPN either way).
pub(crate) fn build(
    connect_timeout: Duration,
    http2_prior_knowledge: bool,
    resolver: Resolver,
    proxy: &OutboundProxy,
) -> Result<Client, ClientError> {
    let tls = tls_config()?;
    let guard = matches!(resolver, Resolver::Guarded { .. }).then(|| resolver.clone());
    let mut http = HttpConnector::new_with_resolver(resolver);
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let proxies = proxy.0.clone();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(Connector {
            http,
            proxies: proxies.clone(),
            guard,
        });
    let mut builder = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .http2_only(http2_prior_knowledge);
    Ok(Client {
        pooled: builder.build(connector),
        proxies,
    })
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
    fn loopback_is_always_reached_directly() {
        for u in [
            "http://localhost:11434/v1",
            "http://LOCALHOST/",
            "http://ollama.localhost/",
            "http://127.0.0.1:8080/",
            "http://127.9.9.9/",
            "http://[::1]:8080/",
        ] {
            assert!(direct(&Uri::from_static(u)), "{u}");
        }
        for u in [
            "https://api.openai.com/v1",
            "http://10.0.0.5/",
            "http://localhost.example.com/",
        ] {
            assert!(!direct(&Uri::from_static(u)), "{u}");
        }
    }

    #[test]
    fn a_configured_proxy_applies_except_where_it_cannot_or_should_not() -> Result<(), ClientError>
    {
        let p = OutboundProxy::new(
            Some("http://alice:s3cret@proxy.internal:3128"),
            &["*.internal".to_owned(), "10.0.0.0/8".to_owned()],
        )?;
        let via = p.describe("https://api.openai.com/v1");
        assert_eq!(via.as_deref(), Some("http://proxy.internal:3128"));
        assert_eq!(p.describe("http://localhost:11434/v1"), None);
        assert_eq!(p.describe("http://models.internal/v1"), None);
        assert_eq!(p.describe("http://10.1.2.3:8000/v1"), None);
        // A NO_PROXY that lists some real host leaves the proxy on for the others.
        let p = OutboundProxy::new(
            Some("http://proxy.internal:3128"),
            &["example.com".to_owned()],
        )?;
        assert!(p.intercepts("https://api.openai.com/v1"));
        assert!(!p.intercepts("https://example.com/v1"));
        // An empty URL turns the environment's off; no proxy describes nothing.
        assert_eq!(
            OutboundProxy::new(Some(""), &[])?.describe("https://x.io/"),
            None
        );
        Ok(())
    }

    #[test]
    fn only_http_proxies_are_accepted_and_their_passwords_never_shown() {
        for bad in [
            "https://alice:s3cret@proxy:3128",
            "socks5://alice:s3cret@proxy:1080",
            "proxy:3128",
        ] {
            let Err(e) = OutboundProxy::new(Some(bad), &[]) else {
                panic!("{bad} accepted");
            };
            let msg = e.to_string();
            assert!(msg.contains("http:// proxy URL"), "{msg}");
            assert!(!msg.contains("s3cret"), "{msg}");
        }
    }
}
