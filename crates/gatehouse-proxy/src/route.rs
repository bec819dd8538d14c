//! Model routing: from the request's `model` to a provider and an upstream model name.
//!
//! The key is matched exactly first; else `provider/upstream-model` is accepted for any
//! configured provider, so a client can reach a model the catalogue does not list. The session
//! never decides the model silently.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use gatehouse_config::{Config, ProviderConfig};
use gatehouse_core::{ApiError, Encoding, ErrorKind, Pricing};

/// Where one request goes.
#[derive(Debug, Clone)]
pub struct Route {
    pub model_key: String,
    pub provider_key: String,
    pub upstream_model: String,
    pub max_context: u64,
    pub encoding: Encoding,
    pub pricing: Option<Pricing>,
    pub provider: Arc<ProviderConfig>,
    /// Model keys tried in order when this route fails before answering.
    pub fallbacks: Vec<String>,
    /// A timed-out whole answer goes to the fallbacks too (it may still be generating).
    pub fallback_on_timeout: bool,
    /// Other deployments of this model, with their weights; this one's is `weight`.
    pub deployments: Vec<(String, f64)>,
    pub weight: f64,
    /// Time to first byte, exponentially weighted (ms, as f64 bits; 0 until measured).
    pub latency: LatencyEwma,
}

/// An exponentially weighted moving average of a route's time to first byte.
#[derive(Debug, Default)]
pub struct LatencyEwma(std::sync::atomic::AtomicU64);

impl LatencyEwma {
    /// Weight of the newest sample.
    const ALPHA: f64 = 0.3;

    pub fn observe(&self, d: std::time::Duration) {
        use std::sync::atomic::Ordering;
        let x = d.as_secs_f64() * 1000.0;
        // A lost update under contention only drops one sample.
        let old = f64::from_bits(self.0.load(Ordering::Relaxed));
        let new = if old == 0.0 {
            x
        } else {
            Self::ALPHA * x + (1.0 - Self::ALPHA) * old
        };
        self.0.store(new.max(0.001).to_bits(), Ordering::Relaxed);
    }

    /// Milliseconds, or `None` before the first sample.
    pub fn ms(&self) -> Option<f64> {
        let v = f64::from_bits(self.0.load(std::sync::atomic::Ordering::Relaxed));
        (v > 0.0).then_some(v)
    }
}

impl Route {
    /// A passthrough route: the client's target, not a configured provider.
    pub fn is_passthrough(&self) -> bool {
        self.provider_key
            .starts_with(crate::passthrough::PROVIDER_PREFIX)
    }
}

impl Clone for LatencyEwma {
    fn clone(&self) -> Self {
        Self(std::sync::atomic::AtomicU64::new(
            self.0.load(std::sync::atomic::Ordering::Relaxed),
        ))
    }
}

/// Window assumed for `provider/model` requests the catalogue does not describe.
const UNLISTED_MODEL_WINDOW: u64 = 131_072;

/// Resolves models to routes. Built once from the configuration.
#[derive(Debug)]
pub struct Router {
    models: BTreeMap<String, Arc<Route>>,
    auto: BTreeMap<String, gatehouse_config::AutoRoute>,
    providers: BTreeMap<String, Arc<ProviderConfig>>,
    /// Providers whose base URL is this gateway's own listen address.
    looping: HashSet<String>,
    /// Providers given a key while running (`PUT /api/providers/{name}/key`): their config may
    /// say the key is missing. Read only on that (refusing) path.
    keyed: std::sync::RwLock<HashSet<String>>,
}

impl Router {
    /// `listen` is the address the gateway is bound to, used to refuse routes back to itself.
    pub fn new(config: &Config, listen: Option<SocketAddr>) -> Self {
        let providers: BTreeMap<String, Arc<ProviderConfig>> = config
            .providers
            .iter()
            .map(|(k, p)| (k.clone(), Arc::new(p.clone())))
            .collect();
        let looping = match listen {
            Some(addr) => providers
                .iter()
                .filter(|(_, p)| points_at(&p.base_url, addr))
                .map(|(k, _)| k.clone())
                .collect(),
            None => HashSet::new(),
        };
        let models = config
            .models
            .iter()
            .filter_map(|(key, m)| {
                let provider = providers.get(&m.provider)?.clone();
                Some((
                    key.clone(),
                    Arc::new(Route {
                        model_key: key.clone(),
                        provider_key: m.provider.clone(),
                        upstream_model: m.model.clone(),
                        max_context: m.max_context_size,
                        encoding: m.encoding,
                        pricing: m.pricing,
                        provider,
                        fallbacks: m.fallbacks.clone(),
                        fallback_on_timeout: m.fallback_on_timeout,
                        deployments: m
                            .deployments
                            .iter()
                            .map(|d| (d.model.clone(), d.weight))
                            .collect(),
                        weight: m.weight,
                        latency: LatencyEwma::default(),
                    }),
                ))
            })
            .collect();
        Self {
            models,
            auto: config.auto.clone(),
            providers,
            looping,
            keyed: std::sync::RwLock::new(HashSet::new()),
        }
    }

    /// Records that `provider` has (or, with `false`, no longer has) a key set while running.
    pub fn set_keyed(&self, provider: &str, keyed: bool) {
        let mut k = self
            .keyed
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if keyed {
            k.insert(provider.to_owned());
        } else {
            k.remove(provider);
        }
    }

    fn keyed_while_running(&self, provider: &str) -> bool {
        self.keyed
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(provider)
    }

    /// Finds the route for a requested model, or explains why there is none. Catalogue routes
    /// are shared, so resolving one allocates nothing.
    pub fn resolve(&self, requested: &str) -> Result<Arc<Route>, ApiError> {
        let route = match self.models.get(requested) {
            Some(r) => r.clone(),
            None => self.unlisted(requested)?,
        };
        if self.looping.contains(&route.provider_key) {
            return Err(ApiError::new(
                ErrorKind::LoopDetected,
                format!(
                    "provider `{}` points at this gateway ({}); refusing to forward to myself",
                    route.provider_key, route.provider.shown_url
                ),
            ));
        }
        if !route.provider.kind.is_served() {
            return Err(ApiError::new(
                ErrorKind::ProviderUnsupported,
                format!(
                    "provider `{}` has type `{}`, which this version of Gatehouse does not serve yet; use an OpenAI-compatible endpoint (type `openai`)",
                    route.provider_key,
                    route.provider.kind.as_str()
                ),
            ));
        }
        if route.provider.key_missing() && !self.keyed_while_running(&route.provider_key) {
            let var = route
                .provider
                .api_key_env
                .as_deref()
                .unwrap_or("the API key variable");
            return Err(ApiError::new(
                ErrorKind::ProviderKeyMissing,
                format!(
                    "provider `{}` has no API key: set {var} or `api_key` in [providers.\"{}\"]",
                    route.provider_key, route.provider_key
                ),
            ));
        }
        Ok(route)
    }

    /// The route of a passthrough request: the client's model at the client's target. The
    /// catalogue's knowledge of the model (window, vocabulary, prices) is used when it has it.
    pub fn passthrough(&self, target: &crate::passthrough::Target, model: &str) -> Arc<Route> {
        let known = self
            .models
            .values()
            .find(|r| r.upstream_model == model || r.model_key == model);
        Arc::new(Route {
            model_key: model.to_owned(),
            provider_key: target.provider_key.clone(),
            upstream_model: model.to_owned(),
            max_context: known.map_or(UNLISTED_MODEL_WINDOW, |r| r.max_context),
            encoding: known.map_or_else(|| Encoding::for_model(model), |r| r.encoding),
            pricing: known.and_then(|r| r.pricing),
            provider: target.provider.clone(),
            fallbacks: Vec::new(),
            fallback_on_timeout: false,
            deployments: Vec::new(),
            weight: 1.0,
            latency: LatencyEwma::default(),
        })
    }

    /// `provider/upstream-model` for a configured provider.
    fn unlisted(&self, requested: &str) -> Result<Arc<Route>, ApiError> {
        // Provider keys may themselves contain `/`-free colons (`managed:kimi-code`), so split
        // at the first slash only.
        if let Some((pkey, model)) = requested.split_once('/')
            && let Some(provider) = self.providers.get(pkey)
            && !model.is_empty()
        {
            return Ok(Arc::new(Route {
                model_key: requested.to_owned(),
                provider_key: pkey.to_owned(),
                upstream_model: model.to_owned(),
                max_context: UNLISTED_MODEL_WINDOW,
                encoding: Encoding::for_model(model),
                pricing: None,
                provider: provider.clone(),
                fallbacks: Vec::new(),
                fallback_on_timeout: false,
                deployments: Vec::new(),
                weight: 1.0,
                latency: LatencyEwma::default(),
            }));
        }
        Err(ApiError::new(
            ErrorKind::ModelNotFound,
            format!(
                "model `{requested}` is not configured; try one of: {} (GET /v1/models lists them all)",
                self.suggestions(requested).join(", ")
            ),
        )
        .with_param("model"))
    }

    /// A few configured models, the most similar first.
    fn suggestions(&self, requested: &str) -> Vec<String> {
        let needle = requested.to_ascii_lowercase();
        let tail = needle.rsplit('/').next().unwrap_or(&needle).to_owned();
        let mut scored: Vec<(usize, &String)> = self
            .models
            .keys()
            .map(|k| {
                let kl = k.to_ascii_lowercase();
                let score =
                    if kl.contains(&tail) || tail.contains(kl.rsplit('/').next().unwrap_or(&kl)) {
                        usize::MAX / 2
                    } else {
                        common_prefix(&kl, &needle)
                            .max(common_prefix(kl.rsplit('/').next().unwrap_or(&kl), &tail))
                    };
                (usize::MAX - score, k)
            })
            .collect();
        scored.sort();
        scored.into_iter().take(5).map(|(_, k)| k.clone()).collect()
    }

    /// The seed's heavy-duty choice: the smallest servable model of `route`'s provider whose
    /// window holds `tokens` under `threshold_pct`.
    pub fn larger(&self, route: &Route, tokens: u64, threshold_pct: f64) -> Option<Arc<Route>> {
        self.models
            .values()
            .filter(|r| {
                r.provider_key == route.provider_key
                    && r.model_key != route.model_key
                    && r.max_context > route.max_context
                    && (tokens as f64) < threshold_pct / 100.0 * r.max_context as f64
            })
            .min_by_key(|r| r.max_context)
            .and_then(|r| self.resolve(&r.model_key).ok())
    }

    /// The smart-routing definition of `auto/<name>`, if `requested` is one.
    pub fn auto(&self, requested: &str) -> Option<(&str, &gatehouse_config::AutoRoute)> {
        let name = requested.strip_prefix("auto/")?;
        self.auto.get_key_value(name).map(|(k, a)| (k.as_str(), a))
    }

    pub fn models(&self) -> impl Iterator<Item = &Route> {
        self.models.values().map(|r| &**r)
    }

    pub fn providers(&self) -> &BTreeMap<String, Arc<ProviderConfig>> {
        &self.providers
    }
}

fn common_prefix(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

/// Whether `base_url` targets `addr` (same port, and a host that is this machine).
fn points_at(base_url: &str, addr: SocketAddr) -> bool {
    let Ok(url) = url::Url::parse(base_url) else {
        return false;
    };
    if url.port_or_known_default() != Some(addr.port()) {
        return false;
    }
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => {
            ip.is_loopback() || ip.is_unspecified() || std::net::IpAddr::V4(ip) == addr.ip()
        }
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback() || ip.is_unspecified() || std::net::IpAddr::V6(ip) == addr.ip()
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_config::{Env, Overrides, load};

    fn config(extra: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, extra).unwrap();
        load(
            Some(&f),
            &Env::from_pairs([("MISTRAL_API_KEY", "k")]),
            &Overrides::default(),
        )
        .unwrap()
    }

    #[test]
    fn exact_then_provider_slash_model_then_404() {
        let r = Router::new(&config(""), None);
        let route = r.resolve("mistral/codestral-2501").unwrap();
        assert_eq!(route.upstream_model, "codestral-2501");
        assert_eq!(route.max_context, 262_144);
        let route = r.resolve("mistral/open-mixtral-8x22b").unwrap();
        assert_eq!(route.upstream_model, "open-mixtral-8x22b");
        let e = r.resolve("codestral").unwrap_err();
        assert_eq!(e.kind, ErrorKind::ModelNotFound);
        assert!(
            e.message.contains("mistral/codestral-2501"),
            "{}",
            e.message
        );
    }

    #[test]
    fn missing_key_names_the_variable() {
        let r = Router::new(&config(""), None);
        let e = r.resolve("groq/qwen3-32b").unwrap_err();
        assert_eq!(e.kind, ErrorKind::ProviderKeyMissing);
        assert!(e.message.contains("GROQ_API_KEY"));
        let e = r.resolve("gemini/gemini-2.5-pro").unwrap_err();
        assert_eq!(e.kind, ErrorKind::ProviderKeyMissing);
        assert!(e.message.contains("GEMINI_API_KEY"));
        let r = Router::new(
            &config("[providers.ol]\ntype = \"ollama\"\nbase_url = \"http://127.0.0.1:11434\"\n"),
            None,
        );
        assert!(
            r.resolve("ol/llama3.1").is_ok(),
            "every provider type is served, keyless Ollama too"
        );
    }

    #[test]
    fn refuses_to_route_to_itself() {
        let c = config(
            "[providers.me]\ntype = \"openai\"\nbase_url = \"http://localhost:8000/v1\"\n[models.\"me/x\"]\nprovider = \"me\"\nmodel = \"x\"\nmax_context_size = 10\n",
        );
        let r = Router::new(&c, Some("127.0.0.1:8000".parse().unwrap()));
        assert_eq!(r.resolve("me/x").unwrap_err().kind, ErrorKind::LoopDetected);
        let r = Router::new(&c, Some("127.0.0.1:8001".parse().unwrap()));
        assert!(r.resolve("me/x").is_ok());
    }
}
