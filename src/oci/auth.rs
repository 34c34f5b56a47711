//! Registry credentials (auth files, credential helpers) and
//! `WWW-Authenticate` challenges. Nothing here logs or formats a secret.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde::Deserialize;

use super::client::host_of;
use super::reference::DOCKER_HUB_REGISTRY;
use super::OciError;

/// The key Docker uses for Docker Hub in `config.json` and helpers.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// A username and password (or token). `Debug` redacts both.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub username: String,
    pub secret: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

impl Credentials {
    /// The value of an `Authorization: Basic …` header.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.secret);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthEntry(<redacted>)")
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperReply {
    username: String,
    secret: String,
}

/// The auth files consulted, in order.
fn auth_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        out.push(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("XDG_RUNTIME_DIR") {
        out.push(PathBuf::from(p).join("containers/auth.json"));
    }
    if let Some(p) = std::env::var_os("DOCKER_CONFIG") {
        out.push(PathBuf::from(p).join("config.json"));
    } else if let Some(h) = std::env::var_os("HOME") {
        out.push(PathBuf::from(h).join(".docker/config.json"));
    }
    out
}

/// `https://host:port/v1/` → `host:port`; Docker Hub aliases → the API host.
fn normalize_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "docker.io" | "registry-1.docker.io" => DOCKER_HUB_REGISTRY.to_string(),
        h => h.to_string(),
    }
}

/// The server URL a credential helper is asked about.
fn helper_server(registry: &str) -> &str {
    if registry == DOCKER_HUB_REGISTRY {
        DOCKER_HUB_KEY
    } else {
        registry
    }
}

fn decode_entry(registry: &str, e: &AuthEntry) -> Result<Option<Credentials>, OciError> {
    if let Some(a) = e.auth.as_deref().filter(|a| !a.is_empty()) {
        let err = || OciError::Credentials {
            registry: registry.to_string(),
            reason: "malformed \"auth\" entry (want base64 of user:password)".into(),
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.trim())
            .map_err(|_| err())?;
        let s = String::from_utf8(raw).map_err(|_| err())?;
        let (u, p) = s.split_once(':').ok_or_else(err)?;
        return Ok(Some(Credentials {
            username: u.to_string(),
            secret: p.to_string(),
        }));
    }
    match (&e.username, &e.password) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credentials {
            username: u.clone(),
            secret: p.clone(),
        })),
        _ => Ok(None),
    }
}

/// Runs `docker-credential-<helper> get` for `registry`. A helper that knows
/// nothing (non-zero exit) gives `None`.
fn run_helper(helper: &str, registry: &str) -> Result<Option<Credentials>, OciError> {
    let err = |reason: String| OciError::Credentials {
        registry: registry.to_string(),
        reason,
    };
    if helper.is_empty()
        || !helper
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
    {
        return Err(err(format!("invalid credential helper name {helper:?}")));
    }
    let prog = format!("docker-credential-{helper}");
    let mut child = Command::new(&prog)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| err(format!("cannot run {prog}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading stdin is fine.
        let _ = stdin.write_all(helper_server(registry).as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(format!("{prog} failed: {e}")))?;
    if !out.status.success() {
        tracing::debug!(helper = %prog, registry, "credential helper has no credentials");
        return Ok(None);
    }
    let reply: HelperReply = serde_json::from_slice(&out.stdout).map_err(|_| {
        err(format!(
            "{prog} printed something that is not {{Username, Secret}} JSON"
        ))
    })?;
    if reply.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials {
        username: reply.username,
        secret: reply.secret,
    }))
}

fn lookup_in_file(path: &Path, registry: &str) -> Result<Option<Credentials>, OciError> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(_) => return Ok(None),
    };
    let file: AuthFile = match serde_json::from_slice(&data) {
        Ok(f) => f,
        Err(_) => {
            tracing::warn!(path = %path.display(), "ignoring malformed auth file");
            return Ok(None);
        }
    };
    if let Some((_, helper)) = file
        .cred_helpers
        .iter()
        .find(|(k, _)| normalize_key(k) == registry)
    {
        return run_helper(helper, registry);
    }
    // Prefer an exact key, then any key normalizing to the registry.
    let entry = file.auths.get(registry).or_else(|| {
        file.auths
            .iter()
            .find(|(k, _)| normalize_key(k) == registry)
            .map(|(_, v)| v)
    });
    if let Some(e) = entry {
        if let Some(c) = decode_entry(registry, e)? {
            return Ok(Some(c));
        }
    }
    if let Some(store) = file.creds_store.as_deref().filter(|s| !s.is_empty()) {
        return run_helper(store, registry);
    }
    Ok(None)
}

/// Looks up credentials for `registry` (`host[:port]`, Docker Hub as
/// `registry-1.docker.io`) in `$REGISTRY_AUTH_FILE`,
/// `$XDG_RUNTIME_DIR/containers/auth.json`, then `$DOCKER_CONFIG/config.json`
/// (or `~/.docker/config.json`); the first file with an answer wins.
pub(crate) fn lookup(registry: &str) -> Result<Option<Credentials>, OciError> {
    for path in auth_files() {
        if let Some(c) = lookup_in_file(&path, registry)? {
            tracing::debug!(registry, path = %path.display(), "using stored credentials");
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// One parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// Lowercased scheme, e.g. `bearer`, `basic`.
    pub scheme: String,
    /// Parameters with lowercased names.
    pub params: HashMap<String, String>,
}

/// Parses a `WWW-Authenticate` value: `Scheme k="v", k2=v2[, Scheme2 …]`.
/// Malformed input gives whatever parsed cleanly before it.
pub(crate) fn parse_challenges(value: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let s = value.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && (s[*i] == b' ' || s[*i] == b'\t' || s[*i] == b',') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < s.len() && !matches!(s[*i], b' ' | b'\t' | b',' | b'=' | b'"') {
            *i += 1;
        }
        String::from_utf8_lossy(&s[start..*i]).into_owned()
    };
    loop {
        skip_ws(&mut i);
        if i >= s.len() {
            break;
        }
        let word = token(&mut i);
        if word.is_empty() {
            break;
        }
        let mut j = i;
        while j < s.len() && (s[j] == b' ' || s[j] == b'\t') {
            j += 1;
        }
        if j < s.len() && s[j] == b'=' {
            // A parameter of the current challenge.
            i = j + 1;
            while i < s.len() && (s[i] == b' ' || s[i] == b'\t') {
                i += 1;
            }
            let val = if i < s.len() && s[i] == b'"' {
                i += 1;
                let mut v = Vec::new();
                while i < s.len() && s[i] != b'"' {
                    if s[i] == b'\\' && i + 1 < s.len() {
                        i += 1;
                    }
                    v.push(s[i]);
                    i += 1;
                }
                i += 1; // closing quote (or past the end)
                String::from_utf8_lossy(&v).into_owned()
            } else {
                token(&mut i)
            };
            match out.last_mut() {
                Some(c) => {
                    c.params.insert(word.to_ascii_lowercase(), val);
                }
                None => break,
            }
        } else {
            out.push(Challenge {
                scheme: word.to_ascii_lowercase(),
                params: HashMap::new(),
            });
        }
    }
    out
}

/// `application/x-www-form-urlencoded`-style percent encoding of a query value.
pub(crate) fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether the password for `registry` may go to a token `realm` host: the
/// same host, or a sibling under the registry's parent domain
/// (`registry-1.docker.io` → `auth.docker.io`). Anywhere else a 401 could
/// send the password to a host that never had it; the token is asked for
/// anonymously there.
pub(crate) fn realm_gets_credentials(registry: &str, realm: &str) -> bool {
    let (reg, realm) = (
        host_of(registry).to_ascii_lowercase(),
        host_of(realm).to_ascii_lowercase(),
    );
    if reg == realm {
        return true;
    }
    if reg.parse::<IpAddr>().is_ok() || realm.parse::<IpAddr>().is_ok() {
        return false;
    }
    match reg.split_once('.') {
        Some((_, parent)) if parent.contains('.') => realm.ends_with(&format!(".{parent}")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "https://auth.docker.io/token");
        assert_eq!(c[0].params["scope"], "repository:library/debian:pull");
        let c = parse_challenges(r#"Basic realm="Registry Realm", Bearer realm=x"#);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].params["realm"], "Registry Realm");
        assert_eq!(c[1].params["realm"], "x");
        for junk in ["", "=", "\"", "a=\"", ",,,", "Bearer realm=\"\\"] {
            let _ = parse_challenges(junk);
        }
    }

    #[test]
    fn keys_and_entries() {
        assert_eq!(normalize_key(DOCKER_HUB_KEY), DOCKER_HUB_REGISTRY);
        assert_eq!(normalize_key("https://reg:5000/v2/"), "reg:5000");
        let e = AuthEntry {
            auth: Some(base64::engine::general_purpose::STANDARD.encode("u:p:q")),
            ..Default::default()
        };
        let c = decode_entry("r", &e).unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.secret.as_str()), ("u", "p:q"));
        assert_eq!(format!("{c:?}"), "Credentials(<redacted>)");
        let e = AuthEntry {
            auth: Some("!!!".into()),
            ..Default::default()
        };
        let err = decode_entry("r", &e).unwrap_err().to_string();
        assert!(!err.contains("!!!"));
    }

    #[test]
    fn realm_credentials_stay_in_the_registry_domain() {
        for (registry, realm, ok) in [
            ("registry-1.docker.io", "auth.docker.io", true),
            ("ghcr.io", "ghcr.io", true),
            ("gitlab.example.com:5050", "gitlab.example.com", true),
            ("reg.example.com", "auth.example.com:8443", true),
            ("10.0.0.5:5000", "10.0.0.5:8080", true),
            ("127.0.0.1:5000", "127.0.0.2:5000", false),
            ("ghcr.io", "evil.io", false),
            ("reg.example.com", "example.com.evil.net", false),
            ("reg.example.com", "evil.com", false),
            ("localhost:5000", "127.0.0.1:5000", false),
        ] {
            assert_eq!(
                realm_gets_credentials(registry, realm),
                ok,
                "{registry} -> {realm}"
            );
        }
    }
}
