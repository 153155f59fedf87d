//! Reading the merged configuration tree: typed getters that collect every
//! problem, naming its key, and that record which keys were asked for.

use super::{ConfigError, Secret, ENV_PREFIX};
use config::{Environment, File, FileFormat, Value, ValueKind};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Reads typed values out of the merged tree, collecting problems, and
/// records every key it is asked for: the keys no section reader asked for
/// are the unknown ones ([`Reader::unknown_keys`]), so no table of known keys
/// repeats the section readers.
pub(super) struct Reader {
    tree: HashMap<String, HashMap<String, Value>>,
    /// Every problem found so far, one line each, naming its key.
    pub(super) problems: Vec<String>,
    /// `JOURNAL_STREAM` is set: stderr goes to systemd's journal.
    pub(super) under_journal: bool,
    /// The environment, to name the variable an unknown key came from.
    env: HashMap<String, String>,
    asked: RefCell<BTreeSet<(String, String)>>,
}

fn kind_name(v: &Value) -> &'static str {
    match v.kind {
        ValueKind::Nil => "nothing",
        ValueKind::Boolean(_) => "a boolean",
        ValueKind::I64(_) | ValueKind::I128(_) | ValueKind::U64(_) | ValueKind::U128(_) => "a number",
        ValueKind::Float(_) => "a number",
        ValueKind::String(_) => "a string",
        ValueKind::Table(_) => "a table",
        ValueKind::Array(_) => "a list",
    }
}

impl Reader {
    fn raw(&self, s: &str, k: &str) -> Option<&Value> {
        self.asked.borrow_mut().insert((s.to_owned(), k.to_owned()));
        self.tree.get(s).and_then(|t| t.get(k)).filter(|v| !matches!(v.kind, ValueKind::Nil))
    }

    /// One problem per key in the tree that no section reader asked for (a
    /// typo, most likely), with the closest asked key and, for an environment
    /// variable, its name; one per unknown section. Call after every section
    /// was read.
    pub(super) fn unknown_keys(&mut self) {
        let asked = self.asked.borrow().clone();
        let sections: BTreeSet<&str> = asked.iter().map(|(s, _)| s.as_str()).collect();
        let mut found = Vec::new();
        let mut tree: Vec<(&String, &HashMap<String, Value>)> = self.tree.iter().collect();
        tree.sort_by_key(|(s, _)| s.as_str());
        for (section, table) in tree {
            if !sections.contains(section.as_str()) {
                let list = sections.iter().copied().collect::<Vec<_>>().join(", ");
                let hint = closest(section, &sections.iter().copied().collect::<Vec<_>>())
                    .map(|c| format!("; did you mean [{c}]?"))
                    .unwrap_or_default();
                found.push(format!("{section}: unknown section (expected one of {list}){hint}"));
                continue;
            }
            let known: Vec<&str> = asked.iter().filter(|(s, _)| s == section).map(|(_, k)| k.as_str()).collect();
            let mut keys: Vec<&String> = table.keys().collect();
            keys.sort();
            for k in keys.into_iter().filter(|k| !known.contains(&k.as_str())) {
                let var = format!("{ENV_PREFIX}__{}__{}", section.to_ascii_uppercase(), k.to_ascii_uppercase());
                let from = if self.env.contains_key(&var) {
                    format!(" (from the environment variable {var})")
                } else {
                    String::new()
                };
                let hint = closest(k, &known).map(|c| format!("; did you mean {section}.{c}?")).unwrap_or_default();
                found.push(format!("{section}.{k}: unknown key{from}{hint}"));
            }
        }
        self.problems.extend(found);
    }

    pub(super) fn problem(&mut self, s: &str, k: &str, msg: impl std::fmt::Display) {
        self.problems.push(format!("{s}.{k}: {msg}"));
    }

    /// A scalar as a string (numbers and booleans too: env values are strings anyway).
    pub(super) fn string(&mut self, s: &str, k: &str) -> Option<String> {
        let v = self.raw(s, k)?.clone();
        match v.kind {
            ValueKind::Table(_) | ValueKind::Array(_) => {
                let what = kind_name(&v);
                self.problem(s, k, format!("expected a single value, found {what}"));
                None
            }
            _ => v.into_string().ok(),
        }
    }

    /// A secret string; the error never shows the value.
    pub(super) fn secret_string(&mut self, s: &str, k: &str) -> Option<Secret> {
        let v = self.raw(s, k)?.clone();
        match v.kind {
            ValueKind::String(x) => Some(Secret::new(x)),
            _ => {
                let what = kind_name(&v);
                self.problem(s, k, format!("expected a string, found {what}"));
                None
            }
        }
    }

    pub(super) fn parsed<T>(
        &mut self,
        s: &str,
        k: &str,
        what: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.string(s, k)?;
        match parse(text.trim()) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(s, k, format!("invalid value {text:?}: expected {what}{e}"));
                None
            }
        }
    }

    pub(super) fn bool(&mut self, s: &str, k: &str, default: bool) -> bool {
        self.parsed(s, k, "true or false", |t| match t.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(String::new()),
        })
        .unwrap_or(default)
    }

    pub(super) fn number<T>(&mut self, s: &str, k: &str, default: T, range: (T, T)) -> T
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let what = format!("a number from {} to {}", range.0, range.1);
        self.parsed(s, k, &what, |t| match t.parse::<T>() {
            Ok(n) if n >= range.0 && n <= range.1 => Ok(n),
            _ => Err(String::new()),
        })
        .unwrap_or(default)
    }

    pub(super) fn duration(&mut self, s: &str, k: &str, default: Duration) -> Duration {
        self.parsed(s, k, "a duration like \"30s\", \"5m\", \"1h\", \"7d\"", |t| {
            humantime::parse_duration(t).map_err(|e| format!(" ({e})"))
        })
        .unwrap_or(default)
    }

    /// [`Reader::duration`] that must not be zero (a deadline).
    pub(super) fn positive_duration(&mut self, s: &str, k: &str, default: Duration) -> Duration {
        let d = self.duration(s, k, default);
        if d.is_zero() {
            self.problem(s, k, "must be more than 0s");
        }
        d
    }

    pub(super) fn path(&mut self, s: &str, k: &str) -> Option<PathBuf> {
        let p = self.string(s, k)?;
        if p.is_empty() {
            self.problem(s, k, "must not be empty");
            return None;
        }
        Some(PathBuf::from(p))
    }

    pub(super) fn addr(&mut self, s: &str, k: &str, default: &str) -> Option<SocketAddr> {
        let text = self.string(s, k).unwrap_or_else(|| default.to_owned());
        if let Ok(a) = text.trim().parse() {
            return Some(a);
        }
        // A host name (`localhost:8080`): its first address, loopback first.
        let resolved: Vec<SocketAddr> =
            std::net::ToSocketAddrs::to_socket_addrs(text.trim()).map(|a| a.collect()).unwrap_or_default();
        match resolved.iter().find(|a| a.ip().is_loopback()).or(resolved.first()) {
            Some(a) => Some(*a),
            None => {
                self.problem(s, k, format!("invalid value {text:?}: expected an address like \"127.0.0.1:8080\""));
                None
            }
        }
    }

    /// A list of strings: a TOML array, or a comma-separated string (environment).
    pub(super) fn list(&mut self, s: &str, k: &str) -> Option<Vec<String>> {
        let v = self.raw(s, k)?.clone();
        match v.kind {
            ValueKind::Array(items) => {
                let mut out = Vec::new();
                for item in items {
                    match item.kind {
                        ValueKind::String(x) => out.push(x),
                        _ => {
                            self.problem(s, k, "expected a list of strings");
                            return None;
                        }
                    }
                }
                Some(out)
            }
            ValueKind::String(x) => {
                Some(x.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect())
            }
            _ => {
                self.problem(s, k, "expected a list of strings");
                None
            }
        }
    }

    /// A secret given inline (`k`) or in a file (`k_file`), never both.
    pub(super) fn secret(&mut self, s: &str, k: &str) -> Option<Secret> {
        let file_key = format!("{k}_file");
        let inline = self.secret_string(s, k);
        let file = self.path(s, &file_key);
        match (inline, file) {
            (Some(_), Some(_)) => {
                self.problem(s, k, format!("give either {s}.{k} or {s}.{file_key}, not both"));
                None
            }
            (Some(v), None) => Some(v),
            (None, Some(p)) => self.read_secret_file(s, &file_key, &p).map(Secret::new),
            (None, None) => None,
        }
    }

    pub(super) fn read_secret_file(&mut self, s: &str, k: &str, p: &Path) -> Option<String> {
        match std::fs::read_to_string(p) {
            Ok(text) => {
                let v = text.trim_end_matches(['\r', '\n']).to_owned();
                if v.is_empty() {
                    self.problem(s, k, format!("{} is empty", p.display()));
                    return None;
                }
                Some(v)
            }
            Err(e) => {
                self.problem(s, k, format!("cannot read {}: {e}", p.display()));
                None
            }
        }
    }
}

/// The known key closest to a mistyped one (at most two edits away).
fn closest<'k>(typo: &str, keys: &[&'k str]) -> Option<&'k str> {
    fn distance(a: &str, b: &str) -> usize {
        let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.iter().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let here = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(here + 1);
                prev = here;
            }
        }
        row[b.len()]
    }
    keys.iter().map(|k| (distance(typo, k), *k)).filter(|(d, _)| *d <= 2).min().map(|(_, k)| k)
}

/// Merges `file` (required when given), `SFTPTOGO_URL` and the
/// `SFTP_MIRROR__SECTION__KEY` variables of `env` into a [`Reader`].
///
/// # Errors
/// When the file is missing or not valid TOML (one problem: nothing else can be read).
pub(super) fn read(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Reader, ConfigError> {
    let one = |p: String| ConfigError { problems: vec![p] };
    let mut b = config::Config::builder();
    if let Some(f) = file {
        if !f.exists() {
            return Err(one(format!("config file {}: not found", f.display())));
        }
        b = b.add_source(File::from(f).format(FileFormat::Toml).required(true));
    }
    let env_map: config::Map<String, String> =
        env.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).map(|(k, v)| (k.clone(), v.clone())).collect();
    b = b.add_source(Environment::with_prefix(ENV_PREFIX).prefix_separator("__").separator("__").source(Some(env_map)));
    let cfg = b.build().map_err(|e| {
        let place = file.map(|f| format!("config file {}: ", f.display())).unwrap_or_default();
        one(format!("{place}{e}"))
    })?;
    let top: HashMap<String, Value> = cfg.try_deserialize().map_err(|e| one(format!("configuration: {e}")))?;
    let mut r = Reader {
        tree: HashMap::new(),
        problems: Vec::new(),
        under_journal: env.contains_key("JOURNAL_STREAM"),
        env: env.clone(),
        asked: RefCell::default(),
    };
    for (section, v) in top {
        match v.kind {
            ValueKind::Table(t) => {
                r.tree.insert(section, t.into_iter().collect());
            }
            _ => r.problems.push(format!("{section}: expected a table")),
        }
    }
    // SFTPTOGO_URL sits between the file and the explicit SFTP_MIRROR__SFTP__* variables.
    if let Some(url) = env.get("SFTPTOGO_URL").filter(|u| !u.trim().is_empty()) {
        match super::url::sftp_values(url, env) {
            Ok(values) => {
                let sftp = r.tree.entry("sftp".into()).or_default();
                for k in values.remove {
                    sftp.remove(k);
                }
                for (k, v) in values.set {
                    sftp.insert(k.into(), Value::new(Some(&"SFTPTOGO_URL".to_string()), v));
                }
            }
            Err(e) => r.problems.push(format!("SFTPTOGO_URL: {e}")),
        }
    }
    Ok(r)
}
