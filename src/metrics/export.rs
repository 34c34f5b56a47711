//! Rendering snapshots for people ([`render_text`]), programs
//! ([`render_json`]) and Prometheus ([`render_prometheus`], text exposition
//! format 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{HistSnapshot, Labels, MetricsError, Snapshot};

/// `Content-Type` of [`render_prometheus`]'s output.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Prometheus histogram bucket upper bounds, seconds: 10 µs .. 10 s.
const BUCKETS_S: [f64; 19] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Node-wide totals of `snaps` (labels `image = "total"`, all cids).
fn total(snaps: &[Snapshot]) -> Result<Snapshot, MetricsError> {
    let labels = Labels {
        image: "total".into(),
        digest: String::new(),
        cids: snaps
            .iter()
            .flat_map(|s| s.labels.cids.iter().cloned())
            .collect(),
    };
    Snapshot::merged(snaps, labels)
}

/// JSON for programs: `{"images": [Snapshot...], "total": Snapshot}`.
pub fn render_json(snaps: &[Snapshot]) -> Result<String, MetricsError> {
    #[derive(serde::Serialize)]
    struct Out<'a> {
        images: &'a [Snapshot],
        total: Snapshot,
    }
    serde_json::to_string_pretty(&Out {
        images: snaps,
        total: total(snaps)?,
    })
    .map_err(|e| MetricsError::Protocol(format!("encode JSON: {e}")))
}

/// `1.5 MiB` style: binary units, one decimal.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut u) = (n as f64, 0);
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn us(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{:.2}s", v / 1e6)
    } else if v >= 1_000.0 {
        format!("{:.2}ms", v / 1e3)
    } else {
        format!("{v:.1}µs")
    }
}

fn nonzero(m: &BTreeMap<String, u64>) -> String {
    let v: Vec<String> = m
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(" ")
    }
}

fn text_one(out: &mut String, s: &Snapshot) {
    let c = &s.counters;
    let amp = s
        .read_amplification
        .map_or("-".into(), |a| format!("{a:.2}"));
    let cids = if s.labels.cids.is_empty() {
        "-".into()
    } else {
        s.labels.cids.join(", ")
    };
    let _ = writeln!(out, "image {}  {}", s.labels.image, s.labels.digest);
    let _ = writeln!(out, "  containers  {cids}");
    let _ = writeln!(out, "  uptime      {:.0}s", s.uptime_seconds);
    if !s.fuse_transport.is_empty() {
        let _ = writeln!(out, "  transport   {}", s.fuse_transport);
    }
    let _ = writeln!(
        out,
        "  bytes       served {}  fetched {} in {} GETs ({} waited for; {} ahead)  inflated {}  amplification {amp}",
        human_bytes(c.bytes_served),
        human_bytes(c.bytes_fetched),
        c.fetch_count,
        c.critical_path_gets,
        human_bytes(c.prefetch_bytes),
        human_bytes(c.inflate_bytes)
    );
    let _ = writeln!(
        out,
        "  cache       hits {}  chunks from disk {}  misses {}  evictions {}  size {}",
        c.cache_hits,
        c.disk_hits,
        c.cache_misses,
        c.cache_evictions,
        human_bytes(c.cache_bytes)
    );
    let _ = writeln!(
        out,
        "  memory      rss {}  anonymous {}",
        human_bytes(c.rss_bytes),
        human_bytes(c.rss_anon_bytes)
    );
    let _ = writeln!(
        out,
        "  network     blocked {}  retries {}  http {}",
        us(c.network_blocked_ns_total as f64 / 1e3),
        c.retries,
        nonzero(&s.http_status)
    );
    let _ = writeln!(out, "  errors      {}", nonzero(&s.errors));
    let mut rows = String::new();
    let mut row = |name: String, h: &HistSnapshot, errs: Option<u64>| {
        if h.count == 0 {
            return;
        }
        let e = errs.map_or("".into(), |e| e.to_string());
        let _ = writeln!(
            rows,
            "  {name:<20} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {e:>6}",
            h.count,
            us(h.p50_us),
            us(h.p90_us),
            us(h.p99_us),
            us(h.max_us),
            us(h.mean_us)
        );
    };
    for (op, h) in &s.fuse_ops {
        row(
            format!("fuse {op}"),
            h,
            Some(s.fuse_op_errors.get(op).copied().unwrap_or(0)),
        );
    }
    for (name, h) in s.timings.named() {
        row(name.to_string(), h, None);
    }
    if rows.is_empty() {
        out.push_str("  latency     no samples yet\n");
    } else {
        let _ = writeln!(
            out,
            "  {:<20} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6}",
            "latency", "count", "p50", "p90", "p99", "max", "mean", "errors"
        );
        out.push_str(&rows);
    }
    out.push('\n');
}

/// A table per image, then node-wide totals (histograms merged exactly)
/// when there is more than one image.
pub fn render_text(snaps: &[Snapshot]) -> Result<String, MetricsError> {
    let mut out = String::new();
    for s in snaps {
        text_one(&mut out, s);
    }
    if snaps.len() > 1 {
        let mut t = total(snaps)?;
        t.labels.image = format!("node-wide total ({} images)", snaps.len());
        text_one(&mut out, &t);
    }
    Ok(out)
}

/// Escapes a Prometheus label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A float in Prometheus text format.
fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// One metric family being assembled.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    lines: Vec<String>,
}

struct Families(Vec<Family>);

impl Families {
    fn get(
        &mut self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
    ) -> &mut Vec<String> {
        let i = match self.0.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.0.push(Family {
                    name,
                    help,
                    kind,
                    lines: Vec::new(),
                });
                self.0.len() - 1
            }
        };
        &mut self.0[i].lines
    }

    fn sample(
        &mut self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        labels: &str,
        v: f64,
    ) {
        let line = format!("{name}{{{labels}}} {}", num(v));
        self.get(name, kind, help).push(line);
    }

    fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &str,
        h: &HistSnapshot,
    ) {
        let lines = self.get(name, "histogram", help);
        // Bucket counts come from the exact histogram; if it cannot be
        // decoded only the +Inf bucket (always exact) is emitted.
        if let Ok(hist) = h.histogram() {
            for le in BUCKETS_S {
                let le_ns = (le * 1e9) as u64;
                let n = if h.count == 0 {
                    0
                } else {
                    hist.count_between(0, le_ns)
                };
                lines.push(format!("{name}_bucket{{{labels},le=\"{}\"}} {n}", num(le)));
            }
        }
        lines.push(format!("{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count));
        lines.push(format!("{name}_sum{{{labels}}} {}", num(h.sum_us / 1e6)));
        lines.push(format!("{name}_count{{{labels}}} {}", h.count));
    }
}

/// Prometheus text exposition format 0.0.4: one series set per image
/// (labels `image`, `digest`); snapshots with the same labels are merged
/// first so no series repeats. `down` lists digests of daemons that did not
/// answer: they get `clip_daemon_up{digest=...} 0`.
pub fn render_prometheus(snaps: &[Snapshot], down: &[String]) -> Result<String, MetricsError> {
    let mut groups: BTreeMap<(String, String), Vec<Snapshot>> = BTreeMap::new();
    for s in snaps {
        groups
            .entry((s.labels.image.clone(), s.labels.digest.clone()))
            .or_default()
            .push(s.clone());
    }
    let mut f = Families(Vec::new());
    const UP: &str = "Whether the image's mount daemon answered this scrape.";
    for ((image, digest), parts) in &groups {
        let s = if parts.len() == 1 {
            parts[0].clone()
        } else {
            Snapshot::merged(parts, parts[0].labels.clone())?
        };
        let l = format!("image=\"{}\",digest=\"{}\"", esc(image), esc(digest));
        let c = &s.counters;
        f.sample("clip_daemon_up", "gauge", UP, &l, 1.0);
        f.sample(
            "clip_uptime_seconds",
            "gauge",
            "Seconds since the daemon's metrics registry was created.",
            &l,
            s.uptime_seconds,
        );
        if !s.fuse_transport.is_empty() {
            f.sample(
                "clip_fuse_transport_info",
                "gauge",
                "The FUSE transport serving the image (label transport: dev, uring).",
                &format!("{l},transport=\"{}\"", esc(&s.fuse_transport)),
                1.0,
            );
        }
        f.sample(
            "clip_containers",
            "gauge",
            "Containers using the image.",
            &l,
            s.labels.cids.len() as f64,
        );
        let counters: [(&'static str, &'static str, f64); 28] = [
            (
                "clip_bytes_served_total",
                "Bytes returned to readers.",
                c.bytes_served as f64,
            ),
            (
                "clip_bytes_fetched_total",
                "Compressed bytes received from the network.",
                c.bytes_fetched as f64,
            ),
            (
                "clip_fetches_total",
                "Ranged GETs issued.",
                c.fetch_count as f64,
            ),
            (
                "clip_inflate_bytes_total",
                "Bytes produced by inflating.",
                c.inflate_bytes as f64,
            ),
            (
                "clip_cache_hits_total",
                "Cache lookups served from the cache.",
                c.cache_hits as f64,
            ),
            (
                "clip_cache_misses_total",
                "Cache lookups that had to fill.",
                c.cache_misses as f64,
            ),
            (
                "clip_cache_evictions_total",
                "Cache entries evicted.",
                c.cache_evictions as f64,
            ),
            (
                "clip_retries_total",
                "Fetch attempts retried.",
                c.retries as f64,
            ),
            (
                "clip_network_blocked_seconds_total",
                "Seconds readers spent waiting on the network.",
                c.network_blocked_ns_total as f64 / 1e9,
            ),
            (
                "clip_critical_path_gets_total",
                "Range GETs a reader waited for (its own or a prefetch it queued behind).",
                c.critical_path_gets as f64,
            ),
            (
                "clip_disk_hits_total",
                "Chunks served from the node's disk cache instead of the network.",
                c.disk_hits as f64,
            ),
            (
                "clip_prefetch_bytes_total",
                "Compressed bytes fetched ahead of readers (prefetch, startup profile).",
                c.prefetch_bytes as f64,
            ),
            (
                "clip_chunk_hits_total",
                "Chunk lookups of readers served from memory.",
                c.chunk_hits as f64,
            ),
            (
                "clip_chunk_misses_total",
                "Chunk lookups of readers that had to fill.",
                c.chunk_misses as f64,
            ),
            (
                "clip_shared_fills_total",
                "Misses served by another reader's fill.",
                c.shared_fills as f64,
            ),
            (
                "clip_decoder_starts_total",
                "Fills that started a decoder at a checkpoint.",
                c.decoder_starts as f64,
            ),
            (
                "clip_decoder_resumes_total",
                "Fills that continued a parked decoder.",
                c.decoder_resumes as f64,
            ),
            (
                "clip_prefetch_jobs_total",
                "Span jobs queued by prefetch hints and profile replay.",
                c.prefetch_jobs as f64,
            ),
            (
                "clip_prefetch_errors_total",
                "Prefetch jobs that failed.",
                c.prefetch_errors as f64,
            ),
            (
                "clip_fuse_reads_total",
                "FUSE READ requests served.",
                c.fuse_reads as f64,
            ),
            (
                "clip_fuse_read_bytes_total",
                "Bytes returned by FUSE READ.",
                c.fuse_read_bytes as f64,
            ),
            (
                "clip_fuse_read_errors_total",
                "FUSE READs that failed.",
                c.fuse_read_errors as f64,
            ),
            (
                "clip_fuse_lookups_total",
                "FUSE LOOKUP requests.",
                c.fuse_lookups as f64,
            ),
            (
                "clip_disk_damaged_total",
                "Damaged slots found in the disk cache.",
                c.disk_damaged as f64,
            ),
            (
                "clip_disk_writes_total",
                "Chunks written to the disk cache.",
                c.disk_writes as f64,
            ),
            (
                "clip_disk_write_drops_total",
                "Disk cache writes dropped or failed.",
                c.disk_write_drops as f64,
            ),
            (
                "clip_disk_evictions_total",
                "Chunks evicted to keep the disk cache within its budget.",
                c.disk_evictions as f64,
            ),
            (
                "clip_disk_errors_total",
                "Disk cache I/O errors (chunks served from the network instead).",
                c.disk_errors as f64,
            ),
        ];
        for (name, help, v) in counters {
            f.sample(name, "counter", help, &l, v);
        }
        f.sample(
            "clip_cache_bytes",
            "gauge",
            "Bytes currently held by the cache.",
            &l,
            c.cache_bytes as f64,
        );
        f.sample(
            "clip_rss_bytes",
            "gauge",
            "Resident memory of the serving process.",
            &l,
            c.rss_bytes as f64,
        );
        f.sample(
            "clip_rss_anon_bytes",
            "gauge",
            "Anonymous resident memory of the serving process (RssAnon).",
            &l,
            c.rss_anon_bytes as f64,
        );
        if let Some(a) = s.read_amplification {
            f.sample(
                "clip_read_amplification",
                "gauge",
                "Bytes fetched divided by bytes served.",
                &l,
                a,
            );
        }
        for (kind, n) in &s.errors {
            let ll = format!("{l},kind=\"{}\"", esc(kind));
            f.sample(
                "clip_errors_total",
                "counter",
                "Errors by kind.",
                &ll,
                *n as f64,
            );
        }
        for (status, n) in &s.http_status {
            let ll = format!("{l},status=\"{}\"", esc(status));
            f.sample(
                "clip_http_responses_total",
                "counter",
                "Ranged GET responses by HTTP status (0: no response).",
                &ll,
                *n as f64,
            );
        }
        for (op, h) in &s.fuse_ops {
            let ll = format!("{l},op=\"{}\"", esc(op));
            f.histogram(
                "clip_fuse_op_duration_seconds",
                "FUSE request latency by operation.",
                &ll,
                h,
            );
            let e = s.fuse_op_errors.get(op).copied().unwrap_or(0);
            f.sample(
                "clip_fuse_op_errors_total",
                "counter",
                "FUSE requests answered with an error.",
                &ll,
                e as f64,
            );
        }
        let t = &s.timings;
        f.histogram(
            "clip_range_get_duration_seconds",
            "Ranged GET latency.",
            &l,
            &t.range_get,
        );
        f.histogram(
            "clip_inflate_duration_seconds",
            "Time spent inflating.",
            &l,
            &t.inflate,
        );
        f.histogram(
            "clip_cache_serve_duration_seconds",
            "Time to serve a cache lookup, by result.",
            &format!("{l},result=\"hit\""),
            &t.cache_hit,
        );
        f.histogram(
            "clip_cache_serve_duration_seconds",
            "Time to serve a cache lookup, by result.",
            &format!("{l},result=\"miss\""),
            &t.cache_miss,
        );
        f.histogram(
            "clip_blocked_on_network_duration_seconds",
            "Time readers waited on network fetches.",
            &l,
            &t.blocked_on_network,
        );
    }
    for d in down {
        f.sample(
            "clip_daemon_up",
            "gauge",
            UP,
            &format!("digest=\"{}\"", esc(d)),
            0.0,
        );
    }
    let mut out = String::new();
    for fam in f.0 {
        let _ = writeln!(out, "# HELP {} {}", fam.name, fam.help);
        let _ = writeln!(out, "# TYPE {} {}", fam.name, fam.kind);
        for l in fam.lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    Ok(out)
}
