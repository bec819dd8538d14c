//! Per-endpoint request limits (`[rate_limits.endpoints]`): a fixed window per pattern and
//! subject (the logged-in user, else the client's address). Synchronous and in memory; the
//! management routes consult it, never the proxy path.

use std::collections::HashMap;
use std::sync::Mutex;

use gatehouse_config::{RateLimitsConfig, parse_window};

/// One pattern of the table, ready to match.
#[derive(Debug, Clone)]
struct Rule {
    /// The path, or the prefix of a pattern ending in `*`.
    path: String,
    prefix: bool,
    requests: u32,
    window_ms: i64,
}

impl Rule {
    fn matches(&self, path: &str) -> bool {
        if self.prefix {
            path.starts_with(&self.path)
        } else {
            path == self.path
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start_ms: i64,
    count: u32,
}

/// What the limiter said about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the window starts again.
    pub reset_secs: u64,
}

/// Subjects tracked at most per process; past it, ended windows are forgotten first.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Default)]
pub struct EndpointLimits {
    /// Longest pattern first, so the first match is the most specific.
    rules: Vec<Rule>,
    windows: Mutex<HashMap<(usize, String), Window>>,
}

impl EndpointLimits {
    pub fn new(config: &RateLimitsConfig) -> Self {
        if !config.enabled {
            return Self::default();
        }
        let mut rules: Vec<Rule> = config
            .endpoints
            .iter()
            .filter_map(|(pattern, l)| {
                let (path, prefix) = match pattern.strip_suffix('*') {
                    Some(p) => (p.to_owned(), true),
                    None => (pattern.clone(), false),
                };
                Some(Rule {
                    path,
                    prefix,
                    requests: l.requests,
                    window_ms: i64::try_from(parse_window(&l.window)?.saturating_mul(1000)).ok()?,
                })
            })
            .collect();
        // An exact path beats a prefix of the same length.
        rules.sort_by(|a, b| {
            b.path
                .len()
                .cmp(&a.path.len())
                .then(a.prefix.cmp(&b.prefix))
        });
        Self {
            rules,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// The pattern that governs `path`, if any (its index).
    pub fn rule_for(&self, path: &str) -> Option<usize> {
        self.rules.iter().position(|r| r.matches(path))
    }

    /// Counts a request of `subject` to `path` and says whether it may go on.
    pub fn check(&self, path: &str, subject: &str, now_ms: i64) -> Option<Verdict> {
        let i = self.rule_for(path)?;
        let rule = self.rules.get(i)?;
        let mut m = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() >= MAX_TRACKED {
            let rules = &self.rules;
            m.retain(|(ri, _), w| {
                rules
                    .get(*ri)
                    .is_some_and(|r| now_ms - w.start_ms < r.window_ms)
            });
        }
        let w = m.entry((i, subject.to_owned())).or_insert(Window {
            start_ms: now_ms,
            count: 0,
        });
        if now_ms - w.start_ms >= rule.window_ms {
            *w = Window {
                start_ms: now_ms,
                count: 0,
            };
        }
        let allowed = w.count < rule.requests;
        if allowed {
            w.count += 1;
        }
        let left_ms = (w.start_ms + rule.window_ms - now_ms).max(0);
        Some(Verdict {
            allowed,
            limit: rule.requests,
            remaining: rule.requests.saturating_sub(w.count),
            reset_secs: u64::try_from((left_ms + 999) / 1000).unwrap_or(0).max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use gatehouse_config::EndpointLimit;

    use super::*;

    fn limits(entries: &[(&str, u32, &str)]) -> EndpointLimits {
        let endpoints: BTreeMap<String, EndpointLimit> = entries
            .iter()
            .map(|(p, n, w)| {
                (
                    (*p).to_owned(),
                    EndpointLimit {
                        requests: *n,
                        window: (*w).to_owned(),
                    },
                )
            })
            .collect();
        EndpointLimits::new(&RateLimitsConfig {
            enabled: true,
            endpoints,
        })
    }

    #[test]
    fn the_most_specific_pattern_governs() {
        let l = limits(&[
            ("/api/*", 100, "1h"),
            ("/api/auth/login", 2, "1h"),
            ("/api/users*", 5, "1h"),
        ]);
        let login = l.rule_for("/api/auth/login");
        assert_ne!(login, l.rule_for("/api/sessions"));
        assert_ne!(l.rule_for("/api/users/usr_1"), l.rule_for("/api/sessions"));
        assert_eq!(l.rule_for("/v1/chat/completions"), None);
        assert_eq!(l.rule_for("/api/auth/login/x"), l.rule_for("/api/sessions"));
    }

    #[test]
    fn a_window_counts_per_subject_and_starts_again() {
        let l = limits(&[("/api/auth/login", 2, "60s")]);
        let t = 1_000_000;
        let v = l.check("/api/auth/login", "1.2.3.4", t).unwrap();
        assert_eq!(
            (v.allowed, v.limit, v.remaining, v.reset_secs),
            (true, 2, 1, 60)
        );
        assert!(
            l.check("/api/auth/login", "1.2.3.4", t + 1)
                .unwrap()
                .allowed
        );
        let v = l.check("/api/auth/login", "1.2.3.4", t + 30_000).unwrap();
        assert_eq!((v.allowed, v.remaining, v.reset_secs), (false, 0, 30));
        assert!(
            l.check("/api/auth/login", "5.6.7.8", t + 30_000)
                .unwrap()
                .allowed
        );
        assert!(
            l.check("/api/auth/login", "1.2.3.4", t + 60_000)
                .unwrap()
                .allowed
        );
    }

    #[test]
    fn disabled_limits_nothing() {
        let l = EndpointLimits::new(&RateLimitsConfig {
            enabled: false,
            endpoints: BTreeMap::new(),
        });
        assert_eq!(l.check("/api/x", "a", 0), None);
    }
}
