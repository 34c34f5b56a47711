//! `clipctl metrics`: asks the running mount daemons for their metrics and
//! prints them (text, JSON or Prometheus), or serves them over HTTP with
//! `--serve` (`/metrics`, `/healthz`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use super::{CodedError, EXIT_NOT_FOUND};
use crate::metrics::{self, DaemonEntry, MetricsError, MetricsServer, RenderFn, Snapshot};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
    Prometheus,
}

/// `clipctl metrics`.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Only the image used by this container.
    #[arg(long, conflicts_with_all = ["image", "serve"])]
    cid: Option<String>,
    /// Only this image: reference as mounted, manifest digest, or a digest hex prefix.
    #[arg(long, conflicts_with = "serve")]
    image: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text, conflicts_with = "serve")]
    format: Format,
    /// Where the mount daemons keep their state.
    #[arg(long, default_value = "/run/clip")]
    run_dir: PathBuf,
    /// Seconds to wait for each daemon's answer.
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
    /// Serve Prometheus metrics at http://BIND:PORT/metrics (and /healthz) until killed.
    #[arg(long)]
    serve: bool,
    /// Port for --serve.
    #[arg(long, default_value_t = 8080, requires = "serve")]
    port: u16,
    /// Address for --serve (loopback by default).
    #[arg(long, default_value = "127.0.0.1", requires = "serve")]
    bind: IpAddr,
}

/// Runs `clipctl metrics`.
pub fn run(a: MetricsArgs) -> Result<()> {
    if !(a.timeout > 0.0 && a.timeout.is_finite()) {
        bail!("--timeout must be a positive number of seconds");
    }
    let timeout = Duration::from_secs_f64(a.timeout);
    if a.serve {
        let server = MetricsServer::bind(SocketAddr::new(a.bind, a.port))?;
        eprintln!(
            "clipctl: serving http://{}/metrics (daemons under {})",
            server.local_addr(),
            a.run_dir.display()
        );
        let run_dir = a.run_dir.clone();
        let render: Arc<RenderFn> = Arc::new(move || {
            metrics::prometheus_scrape(&run_dir, timeout).map_err(|e| e.to_string())
        });
        match server.run(render)? {}
    }
    let snaps = gather(&a, timeout)?;
    let out = match a.format {
        Format::Text => metrics::render_text(&snaps)?,
        Format::Json => metrics::render_json(&snaps)?,
        Format::Prometheus => metrics::render_prometheus(&snaps, &[])?,
    };
    print!("{out}");
    if a.format == Format::Json {
        println!();
    }
    Ok(())
}

/// Does the daemon with `image`/`digest` match `--image want`?
fn image_matches(want: &str, image: &str, digest: &str) -> bool {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let want_hex = want.strip_prefix("sha256:").unwrap_or(want);
    want == image
        || want == digest
        || (want_hex.len() >= 6 && !hex.is_empty() && hex.starts_with(want_hex))
}

fn not_found(message: String) -> anyhow::Error {
    CodedError {
        code: EXIT_NOT_FOUND,
        message,
    }
    .into()
}

/// Discovers, selects and queries daemons; warns about those not answering.
fn gather(a: &MetricsArgs, timeout: Duration) -> Result<Vec<Snapshot>> {
    let run_dir = a.run_dir.display();
    let mut entries = metrics::discover(&a.run_dir)?;
    if entries.is_empty() {
        let none = format!("no clip mount daemons are running (run dir {run_dir})");
        // A named container that is not mounted is "not found" (exit 3) even
        // when nothing at all is mounted, as for `umount --cid`.
        return Err(match &a.cid {
            Some(cid) => not_found(format!("container {cid} not found: {none}")),
            None => anyhow::anyhow!(none),
        });
    }
    if let Some(cid) = &a.cid {
        entries.retain(|e| e.cids.iter().any(|c| c == cid));
        if entries.is_empty() {
            return Err(not_found(format!(
                "container {cid} not found: no mounted image under {run_dir} lists it"
            )));
        }
    }
    let mut ok = Vec::new();
    let mut down: Vec<(DaemonEntry, MetricsError)> = Vec::new();
    for r in metrics::collect(&entries, timeout) {
        let want = a.image.as_deref();
        match r.result {
            Ok(s) if want.is_none_or(|w| image_matches(w, &s.labels.image, &s.labels.digest)) => {
                ok.push(s)
            }
            Ok(_) => {}
            Err(e) if want.is_none_or(|w| image_matches(w, "", &r.entry.digest())) => {
                down.push((r.entry, e))
            }
            Err(_) => {}
        }
    }
    if let Some(want) = &a.image {
        if ok.is_empty() && down.is_empty() {
            return Err(not_found(format!(
                "no running clip mount daemon serves image {want} (run dir {run_dir})"
            )));
        }
    }
    for (e, err) in &down {
        let cids = if e.cids.is_empty() {
            String::new()
        } else {
            format!(", containers {}", e.cids.join(" "))
        };
        eprintln!(
            "clipctl: warning: the mount daemon of image {}{cids} is not answering: {err}",
            e.digest()
        );
    }
    match (ok.is_empty(), down.len()) {
        (true, 1) => bail!("the selected clip mount daemon is not answering (run dir {run_dir})"),
        (true, n) => {
            bail!("none of the {n} selected clip mount daemons answered (run dir {run_dir})")
        }
        _ => {}
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{image_matches, run, MetricsArgs};
    use crate::cli::CodedError;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        a: MetricsArgs,
    }

    fn args(extra: &[&str]) -> MetricsArgs {
        T::try_parse_from(std::iter::once("metrics").chain(extra.iter().copied()))
            .unwrap()
            .a
    }

    #[test]
    fn selection_and_exit_codes() {
        assert!(image_matches("alpine:3", "alpine:3", "sha256:abcdef12"));
        assert!(image_matches("sha256:abcdef12", "", "sha256:abcdef12"));
        assert!(
            image_matches("abcdef", "", "sha256:abcdef12")
                && !image_matches("abc", "", "sha256:abcdef12")
        );
        assert!(T::try_parse_from(["m", "--cid", "x", "--serve"]).is_err());
        assert!(
            T::try_parse_from(["m", "--port", "9"]).is_err(),
            "--port needs --serve"
        );
        let dir = tempfile::tempdir().unwrap();
        let rd = dir.path().to_str().unwrap();
        let err = run(args(&["--run-dir", rd])).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no clip mount daemons are running (run dir {rd})")
        );
        assert!(err.downcast_ref::<CodedError>().is_none(), "exit 1, not 3");
        let err = run(args(&["--run-dir", rd, "--cid", "c0"])).unwrap_err();
        assert_eq!(
            err.downcast_ref::<CodedError>().map(|c| c.code),
            Some(3),
            "{err}"
        );
        assert!(err
            .to_string()
            .contains("no clip mount daemons are running"));
        let img = dir.path().join("images/ab12");
        std::fs::create_dir_all(&img).unwrap();
        drop(std::os::unix::net::UnixListener::bind(img.join("control.sock")).unwrap()); // stale
        std::fs::write(img.join("containers"), "c1\n").unwrap();
        let err = run(args(&["--run-dir", rd, "--cid", "nope"])).unwrap_err();
        assert_eq!(
            err.downcast_ref::<CodedError>().map(|c| c.code),
            Some(3),
            "{err}"
        );
        let err = run(args(&["--run-dir", rd, "--cid", "c1"])).unwrap_err();
        assert!(
            err.to_string()
                .contains("the selected clip mount daemon is not answering"),
            "{err}"
        );
    }
}
