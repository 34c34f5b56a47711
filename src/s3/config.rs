//! Where the S3 settings come from, as the AWS tools find them: explicit
//! options, then the environment (`AWS_ACCESS_KEY_ID`, `AWS_PROFILE`,
//! `AWS_ENDPOINT_URL`, ...), then the shared profile files
//! (`~/.aws/credentials`, `~/.aws/config`, or `AWS_SHARED_CREDENTIALS_FILE`
//! and `AWS_CONFIG_FILE`). Web identity and container credentials are
//! `object_store`'s own providers; the parsing here is only the INI files,
//! which `object_store` does not read.

use std::collections::HashMap;
use std::path::PathBuf;

/// Settings of one profile (keys lower-cased).
pub(super) type Profile = HashMap<String, String>;

/// Parses an AWS INI file: `[section]` headers and `key = value` lines;
/// `#` and `;` start comments. Continuation lines (nested sub-sections of
/// the config file) are ignored.
pub(super) fn parse_ini(text: &str) -> HashMap<String, Profile> {
    let mut out: HashMap<String, Profile> = HashMap::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.trim().to_string());
            continue;
        }
        if let (Some(s), Some((k, v))) = (&section, line.split_once('=')) {
            out.entry(s.clone())
                .or_default()
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn home_file(var: &str, rel: &str) -> Option<PathBuf> {
    env(var)
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(rel)))
}

/// The selected profile's settings: its `[name]` section of the credentials
/// file overlaid on its `[profile name]` (or `[default]`) section of the
/// config file.
pub(super) fn load_profile() -> Profile {
    let name = env("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
    let read = |p: Option<PathBuf>| {
        p.and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| parse_ini(&t))
            .unwrap_or_default()
    };
    let config = read(home_file("AWS_CONFIG_FILE", ".aws/config"));
    let creds = read(home_file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"));
    let config_section = if name == "default" {
        "default".to_string()
    } else {
        format!("profile {name}")
    };
    let mut p = config.get(&config_section).cloned().unwrap_or_default();
    if let Some(c) = creds.get(&name) {
        p.extend(c.clone());
    }
    p
}

/// Static credentials: access key, secret, optional session token.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct StaticKeys {
    pub access_key: String,
    pub secret_key: String,
    pub token: Option<String>,
}

impl std::fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKeys")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

/// Where credentials will come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Credentials {
    /// Keys from the environment or a profile file.
    Static(StaticKeys),
    /// `object_store`'s providers: web identity or container credentials
    /// (named by the environment), or instance metadata when
    /// `AWS_EC2_METADATA_DISABLED=false` asks for it explicitly.
    Provider,
    /// No signing (`AWS_SKIP_SIGNATURE=true`, public buckets).
    Anonymous,
}

/// The resolved settings.
#[derive(Debug, Clone)]
pub(super) struct Resolved {
    pub endpoint: Option<String>,
    pub region: String,
    pub credentials: Option<Credentials>,
}

/// Resolves settings from `endpoint` (`--s3-endpoint`), the environment
/// and `profile`. `credentials` is `None` when nothing names any.
pub(super) fn resolve(endpoint: Option<&str>, profile: &Profile) -> Resolved {
    let endpoint = endpoint
        .map(str::to_string)
        .or_else(|| env("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .or_else(|| profile.get("endpoint_url").cloned());
    let region = env("AWS_REGION")
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .or_else(|| profile.get("region").cloned())
        .unwrap_or_else(|| "us-east-1".to_string());
    let keys =
        |id: Option<String>, secret: Option<String>, token: Option<String>| match (id, secret) {
            (Some(access_key), Some(secret_key)) => Some(Credentials::Static(StaticKeys {
                access_key,
                secret_key,
                token,
            })),
            _ => None,
        };
    let credentials = if env("AWS_SKIP_SIGNATURE").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        Some(Credentials::Anonymous)
    } else {
        keys(
            env("AWS_ACCESS_KEY_ID"),
            env("AWS_SECRET_ACCESS_KEY"),
            env("AWS_SESSION_TOKEN"),
        )
        .or_else(|| {
            (env("AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
                || env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
                || env("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some())
            .then_some(Credentials::Provider)
        })
        .or_else(|| {
            keys(
                profile.get("aws_access_key_id").cloned(),
                profile.get("aws_secret_access_key").cloned(),
                profile.get("aws_session_token").cloned(),
            )
        })
        // Instance metadata is a link-local request that fails slowly off
        // EC2: only when asked for.
        .or_else(|| {
            env("AWS_EC2_METADATA_DISABLED")
                .is_some_and(|v| v.eq_ignore_ascii_case("false"))
                .then_some(Credentials::Provider)
        })
    };
    Resolved {
        endpoint,
        region,
        credentials,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_ini;

    #[test]
    fn ini_sections_keys_and_comments() {
        let f = parse_ini(
            "# c\n[default]\naws_access_key_id = AK\nAWS_SECRET_ACCESS_KEY=SK ; not a comment\n\
             [profile dev]\nregion = eu-west-1\ns3 =\n  endpoint_url = http://nested\n",
        );
        assert_eq!(f["default"]["aws_access_key_id"], "AK");
        assert_eq!(f["default"]["aws_secret_access_key"], "SK ; not a comment");
        assert_eq!(f["profile dev"]["region"], "eu-west-1");
        assert!(!f["profile dev"].contains_key("endpoint_url"));
    }
}
