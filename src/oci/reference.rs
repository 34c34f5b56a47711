//! Image references (`[registry/]repo[:tag][@digest]`) and platforms.

use std::fmt;
use std::str::FromStr;

use super::OciError;
use crate::digest::Digest;

/// The host Docker Hub's registry API lives on.
pub(crate) const DOCKER_HUB_REGISTRY: &str = "registry-1.docker.io";
/// The name Docker Hub images are displayed under.
const DOCKER_HUB_DISPLAY: &str = "docker.io";

/// A parsed image reference.
///
/// `debian` → `registry-1.docker.io` / `library/debian` : `latest`;
/// `host:5000/a/b:tag`; `name@sha256:…` (tag `None` unless also given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry `host[:port]` the API is reached at.
    pub registry: String,
    /// Repository path, e.g. `library/debian`.
    pub repository: String,
    /// Tag, if any (`latest` when neither tag nor digest is given).
    pub tag: Option<String>,
    /// Pinned manifest digest, if any.
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// The tag or digest to ask the registry for (digest wins).
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }
}

fn bad(input: &str, reason: impl Into<String>) -> OciError {
    OciError::BadReference {
        input: input.chars().take(200).collect(),
        reason: reason.into(),
    }
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
        && b[b.len() - 1].is_ascii_lowercase() | b[b.len() - 1].is_ascii_digit()
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':' | b'[' | b']'))
}

impl FromStr for ImageRef {
    type Err = OciError;

    fn from_str(input: &str) -> Result<Self, OciError> {
        if input.is_empty() {
            return Err(bad(input, "empty"));
        }
        if input.len() > 1024 {
            return Err(bad(input, "too long"));
        }
        let (name, digest) = match input.split_once('@') {
            Some((n, d)) => {
                let d = d.parse::<Digest>().map_err(|e| bad(input, e.to_string()))?;
                (n, Some(d))
            }
            None => (input, None),
        };
        let last_slash = name.rfind('/');
        let (name, tag) = match name.rfind(':') {
            Some(i) if last_slash.is_none_or(|s| i > s) => (&name[..i], Some(&name[i + 1..])),
            _ => (name, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(bad(input, format!("invalid tag {t:?}")));
            }
        }
        let (registry, repo) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first, rest)
            }
            _ => (DOCKER_HUB_DISPLAY, name),
        };
        if !valid_host(registry) {
            return Err(bad(input, format!("invalid registry {registry:?}")));
        }
        if repo.is_empty() {
            return Err(bad(input, "missing repository"));
        }
        if let Some(c) = repo.split('/').find(|c| !valid_component(c)) {
            return Err(bad(
                input,
                format!("invalid repository component {c:?} (lowercase letters, digits, . _ -)"),
            ));
        }
        let hub = matches!(
            registry,
            "docker.io" | "index.docker.io" | "registry-1.docker.io"
        );
        let repository = if hub && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo.to_string()
        };
        let registry = if hub {
            DOCKER_HUB_REGISTRY.to_string()
        } else {
            registry.to_string()
        };
        let tag = match (tag, digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reg = if self.registry == DOCKER_HUB_REGISTRY {
            DOCKER_HUB_DISPLAY
        } else {
            &self.registry
        };
        write!(f, "{reg}/{}", self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// An OCI platform: `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// OCI architecture name, e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// CPU variant, e.g. `v8`, `v7`.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this process runs on, in OCI names.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// Whether an image for `other` runs here: same os and architecture, and
    /// the same variant if this platform names one (`arm64` without variant
    /// counts as `v8`).
    pub fn matches(&self, other: &Platform) -> bool {
        if self.os != other.os || self.architecture != other.architecture {
            return false;
        }
        let norm = |p: &Platform| match (p.architecture.as_str(), p.variant.as_deref()) {
            ("arm64", None) => Some("v8".to_string()),
            (_, v) => v.map(str::to_string),
        };
        match &self.variant {
            None => true,
            Some(_) => norm(self) == norm(other),
        }
    }
}

impl FromStr for Platform {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, OciError> {
        let bad = |reason: &str| OciError::BadPlatform {
            input: s.chars().take(100).collect(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = s.split('/').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(bad("expected os/architecture[/variant]"));
        }
        let ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 64
                && p.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        };
        if !parts.iter().all(|p| ok(p)) {
            return Err(bad("empty or invalid component"));
        }
        let arch = match parts[1] {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            a => a,
        };
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: arch.to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}
