//! Kimi Proxy's `config.toml` (the seed project's), read as it is: each of its keys that is not
//! Gatehouse's is moved to Gatehouse's equivalent, or taken out and accepted with a note saying
//! what Gatehouse does instead. A Kimi Proxy user points `--config` at their file and changes
//! nothing; `gatehouse check` prints the table of what became what.
//!
//! Keys the user also wrote in Gatehouse's own form win over the seed's.

use toml::{Table, Value};

/// What one seed key became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedKey {
    /// The key as the seed's file writes it (`proxy.connect_timeout`).
    pub seed: String,
    /// Gatehouse's key it now sets, or what Gatehouse does instead.
    pub gatehouse: String,
    /// Set as Gatehouse's equivalent (true), or accepted without effect (false).
    pub mapped: bool,
}

struct Rewrite<'a> {
    root: &'a mut Table,
    out: Vec<SeedKey>,
}

fn get_table<'t>(t: &'t mut Table, path: &[&str]) -> Option<&'t mut Table> {
    let mut cur = t;
    for k in path {
        cur = cur.get_mut(*k)?.as_table_mut()?;
    }
    Some(cur)
}

fn ensure_table<'t>(t: &'t mut Table, path: &[&str]) -> Option<&'t mut Table> {
    let mut cur = t;
    for k in path {
        cur = cur
            .entry((*k).to_owned())
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()?;
    }
    Some(cur)
}

fn as_f64(v: &Value) -> Option<f64> {
    v.as_float().or_else(|| v.as_integer().map(|i| i as f64))
}

impl Rewrite<'_> {
    /// Takes `key` out of the table at `path`.
    fn take(&mut self, path: &[&str], key: &str) -> Option<Value> {
        let t = get_table(self.root, path)?;
        let v = t.remove(key);
        if t.is_empty() && !path.is_empty() {
            // An emptied seed-only table (`[compaction.ui]`) goes too.
            if let Some((last, parent)) = path.split_last()
                && let Some(p) = get_table(self.root, parent)
                && p.get(*last)
                    .and_then(Value::as_table)
                    .is_some_and(Table::is_empty)
            {
                p.remove(*last);
            }
        }
        v
    }

    /// Sets Gatehouse's `path.key` unless the file already set it in Gatehouse's own form.
    fn set(&mut self, path: &[&str], key: &str, v: Value) {
        if let Some(t) = ensure_table(self.root, path) {
            t.entry(key.to_owned()).or_insert(v);
        }
    }

    fn note(&mut self, seed: String, gatehouse: impl Into<String>, mapped: bool) {
        self.out.push(SeedKey {
            seed,
            gatehouse: gatehouse.into(),
            mapped,
        });
    }

    /// `seed` moved to Gatehouse's `to` (a dotted path), its value converted by `f`.
    fn map(
        &mut self,
        path: &[&str],
        key: &str,
        to: &[&str],
        f: impl Fn(&Value) -> Option<Value>,
        unit: &str,
    ) {
        let Some(v) = self.take(path, key) else {
            return;
        };
        let seed = dotted(path, key);
        let Some((to_key, to_path)) = to.split_last() else {
            return;
        };
        match f(&v) {
            Some(new) => {
                let shown = format!("{} = {new}{unit}", to.join("."));
                self.set(to_path, to_key, new);
                self.note(seed, shown, true);
            }
            None => self.note(
                seed,
                format!("ignored: `{v}` is not a valid value here"),
                false,
            ),
        }
    }

    /// `seed` accepted, without effect; `why` says what Gatehouse does instead.
    fn accept(&mut self, path: &[&str], key: &str, why: &str) {
        if self.take(path, key).is_some() {
            self.note(dotted(path, key), why, false);
        }
    }

    /// Every key left in the table at `path` accepted with one note (and the table removed).
    fn accept_all(&mut self, path: &[&str], why: &str) {
        let Some((last, parent)) = path.split_last() else {
            return;
        };
        if let Some(p) = get_table(self.root, parent)
            && p.remove(*last).is_some()
        {
            self.note(path.join("."), why, false);
        }
    }
}

fn dotted(path: &[&str], key: &str) -> String {
    let mut p: Vec<&str> = path.to_vec();
    p.push(key);
    p.join(".")
}

fn pct(v: &Value) -> Option<Value> {
    // The seed writes fractions (0.85) in some places and percentages (80) in others.
    let x = as_f64(v)?;
    let p = if x <= 1.0 { x * 100.0 } else { x };
    (p > 0.0 && p <= 100.0).then(|| Value::Float((p * 100.0).round() / 100.0))
}

fn secs(v: &Value) -> Option<Value> {
    as_f64(v).filter(|s| *s > 0.0).map(Value::Float)
}

fn count(v: &Value) -> Option<Value> {
    v.as_integer().filter(|n| *n >= 0).map(Value::Integer)
}

/// Rewrites the seed's keys in a user's file (before it is merged over the defaults) and says
/// what became of each.
pub fn from_kimi_proxy(root: &mut Table) -> Vec<SeedKey> {
    let providers: Vec<(String, String)> = root
        .get("providers")
        .and_then(Value::as_table)
        .map(|t| {
            t.iter()
                .map(|(k, v)| {
                    let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
                    (k.clone(), kind.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut r = Rewrite {
        root,
        out: Vec::new(),
    };

    // Top level.
    r.map(
        &[],
        "default_model",
        &["proxy", "default_model"],
        |v| v.as_str().map(|s| Value::String(s.to_owned())),
        "",
    );
    r.accept(&[], "default_thinking", "thinking is the client's choice per request; Gatehouse passes `thinking` / `reasoning` through and translates it");
    r.accept(
        &[],
        "default_yolo",
        "an agent's approval setting; the gateway runs no tools",
    );

    // Providers: OAuth token storage belongs to Kimi CLI.
    for (key, _) in &providers {
        if r.take(&["providers", key], "oauth").is_some() {
            r.note(
                format!("providers.\"{key}\".oauth"),
                "ignored: Gatehouse sends the provider's `api_key` (set its environment variable); it reads no OAuth token store",
                false,
            );
        }
    }

    // Sanitizer.
    r.accept(
        &["sanitizer"],
        "tmp_dir",
        "masked originals are kept in the database, read back with GET /api/mask/{ref}",
    );
    if let Some(v) = r.take(&["sanitizer"], "trigger_tags") {
        const BUILT_IN: [&str; 5] = ["@file", "@codebase", "@tool", "@console", "@output"];
        let tags: Vec<&str> = v
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let extra: Vec<&str> = tags
            .iter()
            .copied()
            .filter(|t| !BUILT_IN.contains(t))
            .collect();
        if extra.is_empty() {
            r.note("sanitizer.trigger_tags".into(), "built in: the sanitizer masks large messages carrying @file, @codebase, @tool, @console or @output (and tool results, console output, big JSON)", true);
        } else {
            r.note("sanitizer.trigger_tags".into(), format!("partly built in (@file, @codebase, @tool, @console, @output); not recognised: {}", extra.join(", ")), false);
        }
    }
    r.map(
        &["sanitizer", "routing"],
        "fallback_threshold",
        &["proxy", "heavy_duty", "threshold_pct"],
        pct,
        " %",
    );
    r.map(
        &["sanitizer", "routing"],
        "heavy_duty_fallback",
        &["proxy", "heavy_duty", "enabled"],
        |v| v.as_bool().map(Value::Boolean),
        "",
    );
    r.accept_all(
        &["sanitizer", "routing"],
        "other heavy-duty settings: the smallest larger model of the same provider is chosen",
    );

    // Agent-side sections.
    r.accept_all(&["loop_control"], "Kimi CLI's agent loop (steps, retries per step, reserved context); the gateway does not run the loop");
    r.accept_all(
        &["services"],
        "Kimi CLI's Moonshot search and fetch tools; not proxied by Gatehouse",
    );
    r.accept_all(&["mcp"], "MCP servers are not served by this version of Gatehouse; the sections are read and left alone");

    // Proxy: timeouts in seconds, retries and their backoff.
    r.map(
        &["proxy"],
        "connect_timeout",
        &["proxy", "timeouts", "connect"],
        secs,
        " s",
    );
    if let Some(v) = r.take(&["proxy"], "stream_timeout") {
        match secs(&v) {
            Some(s) => {
                r.set(&["proxy", "timeouts"], "first_byte", s.clone());
                r.set(&["proxy", "timeouts"], "idle", s.clone());
                r.note(
                    "proxy.stream_timeout".into(),
                    format!("proxy.timeouts.first_byte = proxy.timeouts.idle = {s} s"),
                    true,
                );
            }
            None => r.note(
                "proxy.stream_timeout".into(),
                "ignored: not a number of seconds",
                false,
            ),
        }
    }
    r.map(&["proxy"], "max_retries", &["proxy", "retries"], count, "");
    r.map(
        &["proxy"],
        "retry_delay",
        &["proxy", "retry_backoff_ms"],
        |v| {
            as_f64(v)
                .filter(|s| *s >= 0.0)
                .map(|s| Value::Integer((s * 1000.0).round() as i64))
        },
        " ms (doubles per retry, as the seed's)",
    );
    // `[proxy.timeouts] gemini = 180.0`: a read timeout per provider type or key.
    let per_provider: Vec<(String, Value)> = get_table(r.root, &["proxy", "timeouts"])
        .map(|t| {
            t.iter()
                .filter(|(_, v)| as_f64(v).is_some())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    for (name, v) in per_provider {
        r.take(&["proxy", "timeouts"], &name);
        if matches!(name.as_str(), "connect" | "first_byte" | "idle" | "total") {
            // Gatehouse's own keys, in Gatehouse's form: put back.
            r.set(&["proxy", "timeouts"], &name, v);
            continue;
        }
        let targets: Vec<String> = providers
            .iter()
            .filter(|(key, kind)| *key == name || *kind == name)
            .map(|(key, _)| key.clone())
            .collect();
        let seed = format!("proxy.timeouts.{name}");
        if targets.is_empty() {
            r.note(
                seed,
                "ignored: no provider of that name or type is configured",
                false,
            );
            continue;
        }
        let Some(s) = secs(&v) else {
            r.note(seed, "ignored: not a number of seconds", false);
            continue;
        };
        for key in &targets {
            let path = ["proxy", "timeouts", "providers", key.as_str()];
            if let Some(t) = ensure_table(r.root, &path) {
                // The seed's per-provider value is its read timeout; it replaces the built-in one.
                t.insert("first_byte".into(), s.clone());
                t.insert("idle".into(), s.clone());
            }
        }
        let shown: Vec<String> = targets
            .iter()
            .map(|k| format!("proxy.timeouts.providers.\"{k}\""))
            .collect();
        r.note(
            seed,
            format!("{} first_byte = idle = {s} s", shown.join(", ")),
            true,
        );
    }

    // Compaction.
    r.map(
        &["compaction"],
        "enabled",
        &["compaction", "auto", "enabled"],
        |v| v.as_bool().map(Value::Boolean),
        "",
    );
    r.map(
        &["compaction"],
        "max_preserved_messages",
        &["compaction", "keep_exchanges"],
        count,
        " exchanges",
    );
    r.map(
        &["compaction"],
        "min_tokens_to_compact",
        &["compaction", "min_tokens"],
        count,
        "",
    );
    r.map(
        &["compaction"],
        "reserved_tokens",
        &["compaction", "reserved_tokens"],
        count,
        "",
    );
    if let Some(v) = r.take(&["compaction"], "threshold_percentage") {
        r.note("compaction.threshold_percentage".into(), format!("the gauge's alert levels (caution at 80 %, warning at 90 %, critical at 95 %) are built in; the seed's {v} % is the caution level"), as_f64(&v) == Some(80.0));
    }
    if let Some(v) = r.take(&["compaction"], "critical_threshold") {
        r.note(
            "compaction.critical_threshold".into(),
            format!("built in: the gauge's critical alert at 95 % (the seed's {v} %)"),
            as_f64(&v) == Some(95.0),
        );
    }
    r.accept(
        &["compaction"],
        "min_messages_to_compact",
        "a compaction needs more user turns than `compaction.keep_exchanges`",
    );
    r.accept(
        &["compaction"],
        "target_reduction_ratio",
        "the summary's size is bounded by `compaction.summary_max_tokens`",
    );
    r.map(
        &["compaction", "auto"],
        "auto_compact",
        &["compaction", "auto", "enabled"],
        |v| v.as_bool().map(Value::Boolean),
        "",
    );
    r.map(
        &["compaction", "auto"],
        "auto_compact_threshold",
        &["compaction", "auto", "threshold_pct"],
        pct,
        " %",
    );
    r.map(
        &["compaction", "auto"],
        "auto_compact_cooldown",
        &["compaction", "auto", "cooldown_secs"],
        |v| {
            v.as_integer()
                .filter(|m| *m >= 0)
                .map(|m| Value::Integer(m * 60))
        },
        " s (the seed's minutes)",
    );
    r.map(
        &["compaction", "auto"],
        "max_consecutive_auto_compactions",
        &["compaction", "auto", "max_consecutive"],
        count,
        "",
    );
    r.accept_all(&["compaction", "ui"], "the dashboard always shows the compaction button, the gauge's tooltips and compaction notifications");
    r.accept_all(
        &["compaction", "preview"],
        "POST /api/compaction/{id}/preview returns the whole preview with its savings estimate",
    );
    r.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_keys_move_to_gatehouse_keys_and_the_rest_is_noted() {
        let mut t: Table = toml::from_str(
            r#"
default_model = "kimi-code/kimi-for-coding"
default_yolo = false
[providers."managed:kimi-code"]
type = "kimi"
[providers."managed:kimi-code".oauth]
storage = "file"
[proxy]
connect_timeout = 10.0
stream_timeout = 120.0
max_retries = 2
retry_delay = 1.5
retries = 4
[proxy.timeouts]
kimi = 90.0
nowhere = 5
[compaction.auto]
auto_compact_threshold = 0.85
auto_compact_cooldown = 5
[compaction.ui]
show_compact_button = true
"#,
        )
        .unwrap_or_default();
        let notes = from_kimi_proxy(&mut t);
        let get = |p: &[&str]| {
            let mut v = Value::Table(t.clone());
            for k in p {
                v = v.get(*k).cloned().unwrap_or(Value::Boolean(false));
            }
            v
        };
        assert_eq!(
            get(&["proxy", "default_model"]).as_str(),
            Some("kimi-code/kimi-for-coding")
        );
        assert_eq!(
            get(&["proxy", "timeouts", "connect"]).as_float(),
            Some(10.0)
        );
        assert_eq!(get(&["proxy", "timeouts", "idle"]).as_float(), Some(120.0));
        assert_eq!(get(&["proxy", "retry_backoff_ms"]).as_integer(), Some(1500));
        // Gatehouse's own `retries` wins over the seed's `max_retries`.
        assert_eq!(get(&["proxy", "retries"]).as_integer(), Some(4));
        assert_eq!(
            get(&[
                "proxy",
                "timeouts",
                "providers",
                "managed:kimi-code",
                "idle"
            ])
            .as_float(),
            Some(90.0)
        );
        assert_eq!(
            get(&["compaction", "auto", "threshold_pct"]).as_float(),
            Some(85.0)
        );
        assert_eq!(
            get(&["compaction", "auto", "cooldown_secs"]).as_integer(),
            Some(300)
        );
        assert!(t.get("default_yolo").is_none());
        assert!(
            get(&["compaction", "ui"]).as_bool() == Some(false),
            "the UI table is gone"
        );
        assert!(get(&["providers", "managed:kimi-code", "oauth"]).as_bool() == Some(false));
        let seed: Vec<&str> = notes.iter().map(|n| n.seed.as_str()).collect();
        for k in [
            "default_model",
            "default_yolo",
            "providers.\"managed:kimi-code\".oauth",
            "proxy.timeouts.kimi",
            "proxy.timeouts.nowhere",
            "compaction.ui",
        ] {
            assert!(seed.contains(&k), "{k} not noted in {seed:?}");
        }
        assert!(
            notes
                .iter()
                .any(|n| n.seed == "proxy.timeouts.nowhere" && !n.mapped)
        );
    }
}
