//! Layered loading: the TOML file, then `COBA_SECTION__KEY` environment variables, then
//! `--set key=value` (figment), and the wording of its errors: the key, where it came from
//! (file and line, or environment variable) and, for an unknown key, the nearest valid one.

use super::validate::validate;
use super::TrainConfig;
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;

/// Where the configuration comes from, in increasing priority.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// TOML text and the name to report it under (a path, or `embedded configs/demo.toml`).
    pub toml: Option<(String, String)>,
    /// `(NAME, value)` environment variables (filtered to `COBA_*` with `__` by [`env_vars`]).
    pub env: Vec<(String, String)>,
    /// `key.path=value` overrides; the value is TOML (`2.0e-5`, `"text"`, `[1, 2]`) or a bare
    /// string.
    pub sets: Vec<String>,
}

/// The `COBA_SECTION__KEY=value` variables of this process: `COBA_TRAIN__LR=2.0e-5` sets
/// `train.lr`. Only names containing `__` (or `COBA_OUTPUT_DIR`) count, so unrelated `COBA_*`
/// variables (e.g. `COBA_DIST_CACHE`) are not read as configuration.
pub fn env_vars() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("COBA_") && (k.contains("__") || k == "COBA_OUTPUT_DIR"))
        .collect()
}

/// A configuration error, with its origin.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// `COBA_TRAIN__LR` → `train.lr`.
fn env_key(name: &str) -> String {
    name.strip_prefix("COBA_")
        .unwrap_or(name)
        .to_ascii_lowercase()
        .replace("__", ".")
}

fn parse_value(raw: &str) -> figment::value::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => match t.remove("v") {
            Some(v) => figment::value::Value::serialize(v)
                .unwrap_or_else(|_| figment::value::Value::from(raw.to_string())),
            None => figment::value::Value::from(raw.to_string()),
        },
        Err(_) => figment::value::Value::from(raw.to_string()),
    }
}

/// Merges the sources and extracts the configuration; checks values with [`validate`].
///
/// # Errors
/// [`ConfigError`] naming the key, its source and, for unknown keys, the nearest valid key; a
/// TOML syntax error names the line; an out-of-range value names the key.
pub fn load(sources: &Sources) -> Result<TrainConfig, ConfigError> {
    let mut fig = Figment::new();
    if let Some((text, name)) = &sources.toml {
        toml::from_str::<toml::Table>(text)
            .map_err(|e| ConfigError(format!("{name}: {}", e.to_string().trim_end())))?;
        fig = fig.merge(Toml::string(text));
    }
    for (k, v) in &sources.env {
        fig = fig.merge(Serialized::default(&env_key(k), parse_value(v)));
    }
    for s in &sources.sets {
        let Some((k, v)) = s.split_once('=').filter(|(k, _)| !k.trim().is_empty()) else {
            return Err(ConfigError(format!(
                "--set {s:?}: expected key.path=value (e.g. train.lr=2.0e-5)"
            )));
        };
        fig = fig.merge(Serialized::default(k.trim(), parse_value(v.trim())));
    }
    let cfg: TrainConfig = fig
        .extract()
        .map_err(|e| ConfigError(describe(e, sources)))?;
    validate(&cfg)?;
    Ok(cfg)
}

fn origin(path: &[String], sources: &Sources) -> String {
    let dotted = path.join(".");
    let covers = |key: &str| key == dotted || key.starts_with(&format!("{dotted}."));
    if let Some(s) = sources
        .sets
        .iter()
        .rev()
        .find(|s| s.split_once('=').is_some_and(|(k, _)| covers(k.trim())))
    {
        return format!("--set {s}");
    }
    if let Some((k, _)) = sources.env.iter().find(|(k, _)| covers(&env_key(k))) {
        return format!("environment variable {k}");
    }
    match &sources.toml {
        Some((text, name)) => match find_line(text, path) {
            Some(line) => format!("{name}:{line}"),
            None => name.clone(),
        },
        None => "the configuration".into(),
    }
}

/// Line (1-based) of `path`'s leaf key inside its `[section]` of a TOML text, best effort.
fn find_line(text: &str, path: &[String]) -> Option<usize> {
    let (leaf, sections) = path.split_last()?;
    let want = sections.join(".");
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            current = h.trim().trim_matches(['[', ']']).trim().to_string();
            continue;
        }
        let key = t.split('=').next().unwrap_or("").trim();
        if current == want && key == leaf {
            return Some(i + 1);
        }
    }
    None
}

fn describe(errs: figment::Error, sources: &Sources) -> String {
    use figment::error::Kind;
    errs.into_iter()
        .map(|e| {
            let path = e.path.clone();
            let at = |p: &[String]| origin(p, sources);
            match &e.kind {
                Kind::UnknownField(field, expected) => {
                    let mut parent = path.clone();
                    if parent.last() == Some(field) {
                        parent.pop();
                    }
                    let mut full = parent.clone();
                    full.push(field.clone());
                    let prefix = parent.join(".");
                    let join = |f: &str| {
                        if prefix.is_empty() {
                            f.to_string()
                        } else {
                            format!("{prefix}.{f}")
                        }
                    };
                    let hint = nearest(field, expected)
                        .map(|s| format!("; did you mean `{}`?", join(s)))
                        .unwrap_or_else(|| {
                            format!(
                                "; valid keys here: {}",
                                expected
                                    .iter()
                                    .map(|s| join(s))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        });
                    format!("unknown key `{}` in {}{hint}", join(field), at(&full))
                }
                Kind::MissingField(field) => {
                    let mut full = path.clone();
                    if full.last().map(String::as_str) != Some(field.as_ref()) {
                        full.push(field.to_string());
                    }
                    format!("missing key `{}` (required)", full.join("."))
                }
                _ => format!("key `{}` in {}: {}", path.join("."), at(&path), e.kind),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The candidate closest to `word` by edit distance, if it is close (≤ 1/3 of the length + 1);
/// a candidate that extends `word` (or that `word` extends) counts as distance 1.
fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| {
            let d = if c.starts_with(word) || word.starts_with(c) {
                1
            } else {
                levenshtein(word, c)
            };
            (d, *c)
        })
        .min()
        .filter(|(d, _)| *d <= word.len() / 3 + 1)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
