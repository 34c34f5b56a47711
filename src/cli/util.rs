//! Helpers shared by the verbs: logging setup, size, duration and
//! `--warm` parsing, size formatting.

use anyhow::{bail, Context, Result};

use crate::fuse::WarmConfig;
use crate::oci::Platform;

/// Logging: `RUST_LOG`-style filter (default `warn` for the CLI, `info` for
/// the daemon, whose stderr is its log file).
pub fn init_logging(daemon: bool) {
    let default = if daemon { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// `"512KiB"` → `(512, "kib")`: the leading decimal number and the
/// lower-cased unit after it; `what` names the value in the error.
fn number_and_unit(s: &str, what: &str) -> Result<(u64, String)> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n = num
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid {what} {s:?}"))?;
    Ok((n, unit.to_ascii_lowercase()))
}

/// Parses `4M`, `4MiB`, `512k`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64> {
    let (n, unit) = number_and_unit(s, "size")?;
    let mult: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => bail!("invalid size unit in {s:?} (use K, M or G)"),
    };
    n.checked_mul(mult)
        .ok_or_else(|| anyhow::anyhow!("size {s:?} is too large"))
}

/// `--warm` as a warming configuration (None: off).
pub fn warm_config(spec: &str) -> Result<Option<WarmConfig>> {
    let mut c = WarmConfig::default();
    match spec {
        "off" => return Ok(None),
        "on" => return Ok(Some(c)),
        _ => {}
    }
    for item in spec.split(',').filter(|i| !i.is_empty() && *i != "on") {
        let (key, value) = item
            .split_once('=')
            .with_context(|| format!("--warm {item:?}: expected KEY=VALUE"))?;
        let size = || parse_size(value).with_context(|| format!("--warm {key}"));
        match key {
            "whole-max" => c.whole_file_max = size()?,
            "dir-budget" => c.dir_budget = size()?,
            "small-max" => c.small_file_max = size()?,
            "budget" => c.speculation_budget = size()?,
            "dir-trigger" => c.dir_trigger = value.parse().context("--warm dir-trigger")?,
            "deps" => c.dependencies = value == "on",
            _ => bail!("--warm: unknown key {key:?} (whole-max, dir-budget, small-max, dir-trigger, deps, budget)"),
        }
    }
    Ok(Some(c))
}

/// Parses `--platform` (`os/arch[/variant]`), if given.
pub fn parse_platform(p: Option<&str>) -> Result<Option<Platform>> {
    p.map(|p| {
        p.parse()
            .with_context(|| format!("invalid --platform {p:?}"))
    })
    .transpose()
}

/// Parses `60s`, `500ms`, `2m`, `1h`, or plain seconds (`60`); at least
/// one millisecond.
pub fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let (n, unit) = number_and_unit(s, "duration")?;
    let ms: u64 = match unit.as_str() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => bail!("invalid duration unit in {s:?} (use ms, s, m or h)"),
    };
    match n.checked_mul(ms) {
        Some(0) => bail!("duration {s:?} must be at least 1ms"),
        Some(ms) => Ok(std::time::Duration::from_millis(ms)),
        None => bail!("duration {s:?} is too large"),
    }
}

pub use crate::metrics::human_bytes as human;

#[cfg(test)]
mod tests {
    use super::{parse_duration, parse_size};
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        for bad in ["", "0", "5x", "s", "99999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4M").unwrap(), 4 << 20);
        assert_eq!(parse_size("512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("4X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }
}
