//! [`Snapshot`]: the serializable, mergeable view of a [`super::Metrics`].
//! The JSON schema is described in the module docs of [`super`].

use std::collections::BTreeMap;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::recorder::new_histogram;
use super::MetricsError;

/// Version of the JSON schema; bumped only on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

const NS_PER_US: f64 = 1_000.0;

/// Who the numbers are about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Labels {
    /// Image reference as given to `mount` (e.g. `docker.io/library/alpine:3.19`).
    pub image: String,
    /// Manifest digest, `sha256:<hex>`.
    pub digest: String,
    /// Container ids using the image.
    pub cids: Vec<String>,
}

/// Plain counters. All are monotonic except `cache_bytes`, `rss_bytes` and
/// `rss_anon_bytes` (gauges).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Bytes returned to readers.
    pub bytes_served: u64,
    /// Compressed bytes received from the network.
    pub bytes_fetched: u64,
    /// Ranged GETs issued.
    pub fetch_count: u64,
    /// Bytes produced by inflating.
    pub inflate_bytes: u64,
    /// Cache lookups served from the cache.
    pub cache_hits: u64,
    /// Cache lookups that had to fill.
    pub cache_misses: u64,
    /// Cache entries evicted.
    pub cache_evictions: u64,
    /// Gauge: bytes currently held by the cache.
    pub cache_bytes: u64,
    /// Gauge: the serving process's resident memory (`VmRSS`), bytes.
    pub rss_bytes: u64,
    /// Gauge: of it, anonymous memory (`RssAnon`: heap, buffers; not the
    /// page cache of the mapped chunk store), bytes.
    pub rss_anon_bytes: u64,
    /// Fetch attempts retried.
    pub retries: u64,
    /// Total nanoseconds readers spent waiting on the network.
    pub network_blocked_ns_total: u64,
    /// Of `bytes_fetched`, fetched ahead of readers (prefetch, profile replay).
    pub prefetch_bytes: u64,
    /// Chunks served from the node's disk cache instead of the network.
    pub disk_hits: u64,
    /// Chunk lookups of readers served from memory (`cache_hits` counts
    /// reads, this counts the chunks they touch).
    pub chunk_hits: u64,
    /// Chunk lookups of readers that went to the miss path.
    pub chunk_misses: u64,
    /// Misses that found the chunk after waiting for another reader's fill.
    pub shared_fills: u64,
    /// Fills that started a decoder at a checkpoint.
    pub decoder_starts: u64,
    /// Fills that continued a parked decoder.
    pub decoder_resumes: u64,
    /// Span jobs queued by prefetch hints and profile replay.
    pub prefetch_jobs: u64,
    /// Prefetch jobs that failed (readers then fetch for themselves).
    pub prefetch_errors: u64,
    /// FUSE READ requests served.
    pub fuse_reads: u64,
    /// Bytes returned by FUSE READ.
    pub fuse_read_bytes: u64,
    /// FUSE READs that failed.
    pub fuse_read_errors: u64,
    /// FUSE LOOKUP requests.
    pub fuse_lookups: u64,
    /// Damaged slots the disk cache found (a page failed its checksum;
    /// the slot was freed).
    pub disk_damaged: u64,
    /// Chunks the disk cache stored.
    pub disk_writes: u64,
    /// Chunks the disk cache could not take (larger than a slot).
    pub disk_write_drops: u64,
    /// Chunks the disk cache evicted (CLOCK) to store others.
    pub disk_evictions: u64,
    /// Disk cache I/O errors (ENOSPC, EACCES, a read-only or damaged
    /// store): those chunks were served from the network.
    pub disk_errors: u64,
    /// Of `fetch_count`, the GETs a reader waited for: those made on a
    /// reader's thread, and a prefetch thread's GETs for a span a reader then
    /// queued on (counted once). The first start's round trips in series.
    pub critical_path_gets: u64,
}

impl Counters {
    /// `bytes_fetched / bytes_served`, or `None` before anything was served.
    pub fn read_amplification(&self) -> Option<f64> {
        (self.bytes_served > 0).then(|| self.bytes_fetched as f64 / self.bytes_served as f64)
    }

    fn add(&mut self, o: &Counters) {
        let pairs = [
            (&mut self.bytes_served, o.bytes_served),
            (&mut self.bytes_fetched, o.bytes_fetched),
            (&mut self.fetch_count, o.fetch_count),
            (&mut self.inflate_bytes, o.inflate_bytes),
            (&mut self.cache_hits, o.cache_hits),
            (&mut self.cache_misses, o.cache_misses),
            (&mut self.cache_evictions, o.cache_evictions),
            (&mut self.cache_bytes, o.cache_bytes),
            (&mut self.rss_bytes, o.rss_bytes),
            (&mut self.rss_anon_bytes, o.rss_anon_bytes),
            (&mut self.retries, o.retries),
            (
                &mut self.network_blocked_ns_total,
                o.network_blocked_ns_total,
            ),
            (&mut self.prefetch_bytes, o.prefetch_bytes),
            (&mut self.disk_hits, o.disk_hits),
            (&mut self.chunk_hits, o.chunk_hits),
            (&mut self.chunk_misses, o.chunk_misses),
            (&mut self.shared_fills, o.shared_fills),
            (&mut self.decoder_starts, o.decoder_starts),
            (&mut self.decoder_resumes, o.decoder_resumes),
            (&mut self.prefetch_jobs, o.prefetch_jobs),
            (&mut self.prefetch_errors, o.prefetch_errors),
            (&mut self.fuse_reads, o.fuse_reads),
            (&mut self.fuse_read_bytes, o.fuse_read_bytes),
            (&mut self.fuse_read_errors, o.fuse_read_errors),
            (&mut self.fuse_lookups, o.fuse_lookups),
            (&mut self.disk_damaged, o.disk_damaged),
            (&mut self.disk_writes, o.disk_writes),
            (&mut self.disk_write_drops, o.disk_write_drops),
            (&mut self.disk_evictions, o.disk_evictions),
            (&mut self.disk_errors, o.disk_errors),
            (&mut self.critical_path_gets, o.critical_path_gets),
        ];
        for (d, s) in pairs {
            *d = d.saturating_add(s);
        }
    }
}

/// Summary of one latency histogram; times in microseconds (fractional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HistSnapshot {
    /// Number of samples.
    pub count: u64,
    /// Exact sum of all samples, µs.
    pub sum_us: f64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Median, µs (3 significant digits).
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Maximum, µs.
    pub max_us: f64,
    /// Base64 (standard alphabet, padded) of the HdrHistogram V2 encoding of
    /// the nanosecond histogram; empty when `count == 0`. Decode and add to
    /// merge exactly.
    pub hdr: String,
}

impl HistSnapshot {
    /// Summarises `h` (nanoseconds) whose exact sum is `sum_ns`.
    pub fn from_histogram(h: &Histogram<u64>, sum_ns: u64) -> Self {
        let count = h.len();
        if count == 0 {
            return HistSnapshot::default();
        }
        let q = |q: f64| h.value_at_quantile(q) as f64 / NS_PER_US;
        let mut buf = Vec::new();
        let hdr = match V2Serializer::new().serialize(h, &mut buf) {
            Ok(_) => base64::engine::general_purpose::STANDARD.encode(&buf),
            Err(_) => String::new(),
        };
        HistSnapshot {
            count,
            sum_us: sum_ns as f64 / NS_PER_US,
            mean_us: sum_ns as f64 / NS_PER_US / count as f64,
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            max_us: h.max() as f64 / NS_PER_US,
            hdr,
        }
    }

    /// Decodes the embedded nanosecond histogram (empty when `count == 0`).
    pub fn histogram(&self) -> Result<Histogram<u64>, MetricsError> {
        let mut out = new_histogram();
        if self.hdr.is_empty() {
            if self.count > 0 {
                return Err(MetricsError::Histogram("count > 0 but no hdr data".into()));
            }
            return Ok(out);
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(self.hdr.as_bytes())
            .map_err(|e| MetricsError::Histogram(format!("base64: {e}")))?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| MetricsError::Histogram(format!("hdr V2: {e:?}")))?;
        out.add(&h)
            .map_err(|e| MetricsError::Histogram(format!("add: {e:?}")))?;
        Ok(out)
    }

    /// Exact merge: decodes both histograms, adds them, recomputes quantiles.
    pub fn merged<'a>(
        parts: impl IntoIterator<Item = &'a HistSnapshot>,
    ) -> Result<HistSnapshot, MetricsError> {
        let mut acc = new_histogram();
        let mut sum_us = 0.0;
        for p in parts {
            acc.add(p.histogram()?)
                .map_err(|e| MetricsError::Histogram(format!("add: {e:?}")))?;
            sum_us += p.sum_us;
        }
        let mut out = HistSnapshot::from_histogram(&acc, 0);
        if out.count > 0 {
            out.sum_us = sum_us;
            out.mean_us = sum_us / out.count as f64;
        }
        Ok(out)
    }
}

/// The non-FUSE latency histograms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timings {
    /// Ranged GET latency (request sent → body received).
    pub range_get: HistSnapshot,
    /// Time spent inflating.
    pub inflate: HistSnapshot,
    /// Time to serve a cache hit.
    pub cache_hit: HistSnapshot,
    /// Time to serve a cache miss (fill included).
    pub cache_miss: HistSnapshot,
    /// Time readers waited on network fetches.
    pub blocked_on_network: HistSnapshot,
}

impl Timings {
    /// `(name, histogram)` pairs in a fixed order.
    pub fn named(&self) -> [(&'static str, &HistSnapshot); 5] {
        [
            ("range_get", &self.range_get),
            ("inflate", &self.inflate),
            ("cache_hit", &self.cache_hit),
            ("cache_miss", &self.cache_miss),
            ("blocked_on_network", &self.blocked_on_network),
        ]
    }
}

/// Everything one daemon recorded; see the module docs for the JSON schema.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Snapshot {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Image, digest, containers.
    pub labels: Labels,
    /// Seconds since the registry was created (for a merge: the largest).
    pub uptime_seconds: f64,
    /// The FUSE transport serving the mount: `dev` (`/dev/fuse`), `uring`
    /// (FUSE over io_uring), `""` if not known (yet); for a merge, the
    /// distinct transports joined with `,`.
    pub fuse_transport: String,
    /// `bytes_fetched / bytes_served`; `null` before anything was served.
    pub read_amplification: Option<f64>,
    /// Byte and event counters.
    pub counters: Counters,
    /// Errors by kind (`fetch`, `digest_mismatch`, `inflate`, `fuse_eio`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Ranged GET responses by HTTP status (`"0"`: no response).
    pub http_status: BTreeMap<String, u64>,
    /// FUSE latency per operation name (`lookup`, `getattr`, ... `other`).
    pub fuse_ops: BTreeMap<String, HistSnapshot>,
    /// FUSE operations that replied with an error, per operation name.
    pub fuse_op_errors: BTreeMap<String, u64>,
    /// Fetch, inflate, cache and blocking latencies.
    pub timings: Timings,
}

fn add_map(dst: &mut BTreeMap<String, u64>, src: &BTreeMap<String, u64>) {
    for (k, v) in src {
        let e = dst.entry(k.clone()).or_default();
        *e = e.saturating_add(*v);
    }
}

impl Snapshot {
    /// Node-wide totals: counters added, histograms merged exactly, labels
    /// given by the caller.
    pub fn merged(parts: &[Snapshot], labels: Labels) -> Result<Snapshot, MetricsError> {
        let mut out = Snapshot {
            schema_version: SCHEMA_VERSION,
            labels,
            ..Default::default()
        };
        let mut ops: BTreeMap<&str, Vec<&HistSnapshot>> = BTreeMap::new();
        for p in parts {
            out.uptime_seconds = out.uptime_seconds.max(p.uptime_seconds);
            out.counters.add(&p.counters);
            add_map(&mut out.errors, &p.errors);
            add_map(&mut out.http_status, &p.http_status);
            add_map(&mut out.fuse_op_errors, &p.fuse_op_errors);
            for (k, h) in &p.fuse_ops {
                ops.entry(k.as_str()).or_default().push(h);
            }
        }
        let mut transports: Vec<&str> = parts
            .iter()
            .map(|p| p.fuse_transport.as_str())
            .filter(|t| !t.is_empty())
            .collect();
        transports.sort_unstable();
        transports.dedup();
        out.fuse_transport = transports.join(",");
        for (k, hs) in ops {
            out.fuse_ops
                .insert(k.to_string(), HistSnapshot::merged(hs)?);
        }
        let t = |f: fn(&Timings) -> &HistSnapshot| {
            HistSnapshot::merged(parts.iter().map(|p| f(&p.timings)))
        };
        out.timings = Timings {
            range_get: t(|t| &t.range_get)?,
            inflate: t(|t| &t.inflate)?,
            cache_hit: t(|t| &t.cache_hit)?,
            cache_miss: t(|t| &t.cache_miss)?,
            blocked_on_network: t(|t| &t.blocked_on_network)?,
        };
        out.read_amplification = out.counters.read_amplification();
        Ok(out)
    }

    /// Parses a daemon's `stats` reply: either a bare snapshot, or an object
    /// whose `metrics` member is one (the mount daemon wraps it with its pid,
    /// uptime and mountpoint).
    pub fn from_stats_reply(line: &str) -> Result<Snapshot, MetricsError> {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| MetricsError::Protocol(format!("stats reply is not JSON: {e}")))?;
        let inner = if v.get("schema_version").is_some() {
            v
        } else {
            match v.get("metrics") {
                Some(m) if m.is_object() => m.clone(),
                Some(_) => {
                    return Err(MetricsError::Protocol(
                        "daemon has no metrics registry attached (`metrics` is null)".into(),
                    ))
                }
                None => {
                    return Err(MetricsError::Protocol(
                        "stats reply has neither `schema_version` nor `metrics`".into(),
                    ))
                }
            }
        };
        let mut s: Snapshot = serde_json::from_value(inner).map_err(|e| {
            MetricsError::Protocol(format!("stats reply is not a metrics snapshot: {e}"))
        })?;
        if s.schema_version > SCHEMA_VERSION {
            return Err(MetricsError::Protocol(format!(
                "snapshot schema version {} is newer than this clipctl understands ({SCHEMA_VERSION})",
                s.schema_version
            )));
        }
        // Derived: recomputed so a daemon cannot disagree with its counters.
        s.read_amplification = s.counters.read_amplification();
        Ok(s)
    }
}
