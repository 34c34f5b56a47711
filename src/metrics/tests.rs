//! Tests of the metrics module: recording, quantiles, merging, rendering
//! (with `promtool check metrics` when installed), the FUSE hook, the
//! control-socket client and the HTTP endpoint.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode};
use fuse_backend_rs::api::server::MetricsHook;
use rand::{Rng, SeedableRng};

use super::{
    collect, discover, op_for_opcode, prometheus_scrape, query_daemon, render_json,
    render_prometheus, render_text, Counter, ErrorKind, FuseMetricsHook, HistSnapshot, Labels,
    Metrics, MetricsError, MetricsServer, Op, Snapshot,
};

fn labels(image: &str, hex: &str) -> Labels {
    Labels {
        image: image.into(),
        digest: format!("sha256:{hex}"),
        cids: vec![],
    }
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-9)
}

#[test]
fn quantiles_of_known_samples() {
    let m = Metrics::with_shards(4);
    for us in 1..=1000u64 {
        m.record_cache(true, Duration::from_micros(us));
    }
    let s = m.snapshot(Labels::default());
    let h = &s.timings.cache_hit;
    assert_eq!(h.count, 1000);
    assert_eq!(s.counters.cache_hits, 1000);
    assert!(close(h.p50_us, 500.0, 0.002), "p50 {}", h.p50_us);
    assert!(close(h.p90_us, 900.0, 0.002), "p90 {}", h.p90_us);
    assert!(close(h.p99_us, 990.0, 0.002), "p99 {}", h.p99_us);
    assert!(close(h.max_us, 1000.0, 0.002), "max {}", h.max_us);
    assert!(
        close(h.sum_us, 500_500.0, 1e-12),
        "sum is exact: {}",
        h.sum_us
    );
    assert!(close(h.mean_us, 500.5, 1e-12));
    assert_eq!(s.timings.cache_miss.count, 0);
    assert_eq!(s.timings.cache_miss.hdr, "");
}

#[test]
fn sub_microsecond_and_huge_values() {
    let m = Metrics::with_shards(1);
    m.record_inflate(Duration::from_nanos(300), 10);
    m.record_inflate(Duration::from_secs(7200), 10); // clamped to one hour
    let s = m.snapshot(Labels::default());
    let h = &s.timings.inflate;
    assert_eq!(h.count, 2);
    assert!(
        close(h.p50_us, 0.3, 0.06),
        "300 ns kept at 16 ns resolution: {}",
        h.p50_us
    );
    assert!(close(h.max_us, 3.6e9, 0.002), "clamped max {}", h.max_us);
    assert_eq!(s.counters.inflate_bytes, 20);
}

#[test]
fn timer_counters_and_errors() {
    let m = Metrics::with_shards(2);
    {
        let _t = m.fuse_timer(Op::Lookup);
    }
    {
        let mut t = m.fuse_timer(Op::Read);
        t.mark_error();
    }
    m.add_served(1000);
    m.record_range_get(Duration::from_millis(3), 400);
    m.record_range_get(Duration::from_millis(30), 0);
    m.record_range_get(Duration::from_millis(4), 100);
    for status in [206, 0, 206] {
        m.count_http_status(status);
    }
    m.record_blocked(Duration::from_millis(2));
    m.count(Counter::CriticalPathGets, 1);
    m.count(Counter::CriticalPathGets, 2);
    m.count_error(ErrorKind::Fetch);
    m.count_error(ErrorKind::DigestMismatch);
    m.count_retry();
    m.count_eviction();
    m.set_cache_bytes(4096);
    let s = m.snapshot(labels("img", "ab"));
    assert_eq!(s.fuse_ops["lookup"].count, 1);
    assert_eq!(s.fuse_ops["read"].count, 1);
    assert_eq!(s.fuse_op_errors["read"], 1);
    assert_eq!(s.fuse_op_errors["lookup"], 0);
    assert_eq!(s.fuse_ops.len(), Op::ALL.len());
    let c = &s.counters;
    assert_eq!(
        (c.bytes_served, c.bytes_fetched, c.fetch_count),
        (1000, 500, 3)
    );
    assert_eq!((c.retries, c.cache_evictions, c.cache_bytes), (1, 1, 4096));
    assert_eq!(c.network_blocked_ns_total, 2_000_000);
    assert_eq!(c.critical_path_gets, 3);
    assert_eq!(s.read_amplification, Some(0.5));
    assert_eq!(
        s.http_status,
        BTreeMap::from([("0".to_string(), 1), ("206".to_string(), 2)])
    );
    assert_eq!(s.errors["fetch"], 1);
    assert_eq!(s.errors["digest_mismatch"], 1);
    assert_eq!(s.errors["inflate"], 0);
    assert_eq!(s.timings.range_get.count, 3);
}

#[test]
fn many_threads_record_everything() {
    let m = Arc::new(Metrics::with_shards(3));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let m = m.clone();
            std::thread::spawn(move || {
                for i in 0..5000u64 {
                    m.record_fuse_op(Op::Getattr, Duration::from_nanos(1000 + i), false);
                    m.add_served(2);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = m.snapshot(Labels::default());
    assert_eq!(s.fuse_ops["getattr"].count, 40_000);
    assert_eq!(s.counters.bytes_served, 80_000);
}

#[test]
fn merge_equals_recording_in_one_histogram() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (a, b, all) = (
        Metrics::with_shards(2),
        Metrics::with_shards(3),
        Metrics::with_shards(1),
    );
    for i in 0..20_000 {
        // Log-uniform 1 µs .. 1 s.
        let ns = 10f64.powf(rng.gen_range(3.0..9.0)) as u64;
        let d = Duration::from_nanos(ns);
        let part = if i % 3 == 0 { &a } else { &b };
        part.record_range_get(d, 10);
        part.count_http_status(206);
        part.record_fuse_op(Op::Read, d / 10, false);
        all.record_range_get(d, 10);
        all.count_http_status(206);
        all.record_fuse_op(Op::Read, d / 10, false);
    }
    let (sa, sb) = (a.snapshot(labels("a", "aa")), b.snapshot(labels("b", "bb")));
    let merged = Snapshot::merged(&[sa, sb], Labels::default()).unwrap();
    let one = all.snapshot(Labels::default());
    let same = |x: &HistSnapshot, y: &HistSnapshot| {
        assert_eq!(x.count, y.count);
        assert_eq!(
            (x.p50_us, x.p90_us, x.p99_us, x.max_us),
            (y.p50_us, y.p90_us, y.p99_us, y.max_us)
        );
        assert!(close(x.sum_us, y.sum_us, 1e-9));
        assert_eq!(x.histogram().unwrap(), y.histogram().unwrap());
    };
    same(&merged.timings.range_get, &one.timings.range_get);
    same(&merged.fuse_ops["read"], &one.fuse_ops["read"]);
    assert_eq!(merged.counters.fetch_count, 20_000);
    // The memory gauges are the process's, read at each snapshot (and
    // summed by a merge), not part of what was recorded.
    let recorded = |c: &crate::metrics::Counters| crate::metrics::Counters {
        rss_bytes: 0,
        rss_anon_bytes: 0,
        ..c.clone()
    };
    assert_eq!(recorded(&merged.counters), recorded(&one.counters));
    assert!(one.counters.rss_bytes > 0 && one.counters.rss_anon_bytes > 0);
    assert_eq!(merged.http_status["206"], 20_000);
}

#[test]
fn snapshot_json_round_trip_and_stats_replies() {
    let m = Metrics::new();
    m.record_cache(false, Duration::from_micros(250));
    let s = m.snapshot(labels("docker.io/library/alpine:3.19", "cd"));
    let line = serde_json::to_string(&s).unwrap();
    assert!(!line.contains('\n'));
    assert_eq!(Snapshot::from_stats_reply(&line).unwrap(), s);
    let wrapped = format!(r#"{{"pid":1,"uptime_s":2.0,"fs":{{}},"metrics":{line}}}"#);
    assert_eq!(Snapshot::from_stats_reply(&wrapped).unwrap(), s);
    let unwired = r#"{"pid":1,"metrics":null}"#;
    assert!(Snapshot::from_stats_reply(unwired)
        .unwrap_err()
        .to_string()
        .contains("no metrics registry"));
    assert!(Snapshot::from_stats_reply("pong").is_err());
    // Unknown fields from a newer daemon are ignored; missing ones default.
    let v: Snapshot = Snapshot::from_stats_reply(r#"{"schema_version":1,"new_field":3}"#).unwrap();
    assert_eq!(v.counters.bytes_served, 0);
    assert!(Snapshot::from_stats_reply(r#"{"schema_version":99}"#).is_err());
}

fn sample_snapshots() -> Vec<Snapshot> {
    let mut out = Vec::new();
    for (i, (img, hex)) in [
        ("docker.io/library/alpine:3.19", "aa11"),
        ("ghcr.io/x/\"weird\\name\":1", "bb22"),
    ]
    .iter()
    .enumerate()
    {
        let m = Metrics::with_shards(2);
        for k in 1..=200u64 {
            m.record_fuse_op(
                Op::ALL[(k as usize) % Op::ALL.len()],
                Duration::from_micros(k * (i as u64 + 1)),
                k % 50 == 0,
            );
            m.record_range_get(Duration::from_millis(k % 40), 1 << 16);
            m.count_http_status(if k % 99 == 0 { 503 } else { 206 });
            m.record_cache(k % 4 != 0, Duration::from_micros(k));
            m.record_inflate(Duration::from_micros(30 * k), 1 << 20);
            m.record_blocked(Duration::from_micros(200 * k));
        }
        m.add_served(5 << 20);
        m.count(Counter::CriticalPathGets, 7);
        m.count_error(ErrorKind::Timeout);
        let mut l = labels(img, hex);
        l.cids = vec![format!("c{i}")];
        out.push(m.snapshot(l));
    }
    out
}

/// Structural check of the text exposition format: HELP/TYPE precede each
/// family's samples, names and labels are well formed, values parse,
/// histogram buckets are cumulative and end with `+Inf == _count`.
fn check_exposition(text: &str) {
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut seen_series = std::collections::HashSet::new();
    let mut last_bucket: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split(' ');
            let (n, t) = (p.next().unwrap(), p.next().unwrap());
            assert!(name_ok(n), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                "{line}"
            );
            assert!(
                families.insert(n.into(), t.into()).is_none(),
                "family declared twice: {n}"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "unexpected line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').unwrap();
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        assert!(
            seen_series.insert(series.to_string()),
            "duplicate series {series}"
        );
        let (name, labels) = series
            .split_once('{')
            .map_or((series, ""), |(n, l)| (n, l.strip_suffix('}').unwrap()));
        assert!(name_ok(name), "{line}");
        let fam = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|b| families.get(*b).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        let kind = families
            .get(fam)
            .unwrap_or_else(|| panic!("sample before TYPE: {line}"));
        if kind == "counter" {
            assert!(name.ends_with("_total"), "{name}");
        }
        if name.ends_with("_bucket") {
            let le_at = labels.rfind(",le=\"").expect("bucket has le");
            let key = format!("{fam}{{{}}}", &labels[..le_at]);
            let le: f64 = match &labels[le_at + 5..labels.len() - 1] {
                "+Inf" => f64::INFINITY,
                x => x.parse().unwrap(),
            };
            let n = v as u64;
            if let Some((ple, pn)) = last_bucket.get(&key) {
                assert!(le > *ple && n >= *pn, "buckets not cumulative at {line}");
            }
            last_bucket.insert(key, (le, n));
        }
        if name.ends_with("_count") && fam != name {
            let key = format!("{fam}{{{labels}}}");
            let (le, n) = last_bucket[&key];
            assert!(
                le.is_infinite() && n == v as u64,
                "+Inf bucket != count for {key}"
            );
        }
    }
}

fn promtool() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("promtool"))
        .find(|p| p.is_file())
}

fn promtool_check(text: &str) {
    let Some(tool) = promtool() else {
        return crate::testutil::skip("promtool not installed (apt-get install prometheus)");
    };
    let mut child = std::process::Command::new(tool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && msg.trim().is_empty(),
        "promtool check metrics:\n{msg}\n---\n{text}"
    );
}

#[test]
fn prometheus_output_is_valid() {
    let snaps = sample_snapshots();
    let text = render_prometheus(&snaps, &["sha256:dead".to_string()]).unwrap();
    check_exposition(&text);
    promtool_check(&text);
    assert!(text.contains("# TYPE clip_fuse_op_duration_seconds histogram"));
    assert!(text
        .contains("clip_bytes_served_total{image=\"docker.io/library/alpine:3.19\",digest=\"sha256:aa11\"} 5242880"));
    assert!(
        text.contains("image=\"ghcr.io/x/\\\"weird\\\\name\\\":1\""),
        "label escaping"
    );
    assert!(text.contains("clip_daemon_up{digest=\"sha256:dead\"} 0"));
    assert!(text.contains(
        "clip_critical_path_gets_total{image=\"docker.io/library/alpine:3.19\",digest=\"sha256:aa11\"} 7"
    ));
    assert!(text.contains(
        "clip_errors_total{image=\"docker.io/library/alpine:3.19\",digest=\"sha256:aa11\",kind=\"timeout\"} 1"
    ));
    assert!(text.contains(
        "clip_http_responses_total{image=\"docker.io/library/alpine:3.19\",digest=\"sha256:aa11\",status=\"503\"} 2"
    ));
    // Same labels twice are merged, never duplicated series.
    let dup = render_prometheus(&[snaps[0].clone(), snaps[0].clone()], &[]).unwrap();
    check_exposition(&dup);
    assert!(dup
        .contains("clip_bytes_served_total{image=\"docker.io/library/alpine:3.19\",digest=\"sha256:aa11\"} 10485760"));
    // Empty: valid, only the down daemons.
    let empty = render_prometheus(&[], &[]).unwrap();
    assert_eq!(empty, "");
    // Bucket boundaries agree with the recorded values: 200 samples of k µs
    // for op k % 11, cache hits of k µs (k % 4 != 0) -> 150 samples.
    assert!(text.contains(
        "clip_cache_serve_duration_seconds_bucket{image=\"docker.io/library/alpine:3.19\",digest=\"sha256:aa11\",result=\"hit\",le=\"+Inf\"} 150"
    ));
}

#[test]
fn text_and_json_rendering() {
    let snaps = sample_snapshots();
    let text = render_text(&snaps).unwrap();
    assert!(
        text.contains("image docker.io/library/alpine:3.19  sha256:aa11"),
        "{text}"
    );
    assert!(text.contains("node-wide total (2 images)"), "{text}");
    assert!(text.contains("fuse lookup"), "{text}");
    assert!(text.contains("amplification"), "{text}");
    assert!(text.contains("in 200 GETs (7 waited for;"), "{text}");
    assert!(text.contains("errors      timeout=1"), "{text}");
    let one = render_text(&snaps[..1]).unwrap();
    assert!(!one.contains("node-wide"));
    let json: serde_json::Value = serde_json::from_str(&render_json(&snaps).unwrap()).unwrap();
    assert_eq!(json["images"].as_array().unwrap().len(), 2);
    assert_eq!(json["total"]["counters"]["bytes_served"], 10 << 20);
    assert_eq!(json["total"]["timings"]["range_get"]["count"], 400);
    assert_eq!(
        json["total"]["labels"]["cids"],
        serde_json::json!(["c0", "c1"])
    );
}

#[test]
fn fuse_hook_records_a_request() {
    let m = Arc::new(Metrics::with_shards(2));
    let hook = FuseMetricsHook::new(m.clone());
    let ih = InHeader {
        opcode: Opcode::Lookup as u32,
        ..Default::default()
    };
    hook.collect(&ih);
    std::thread::sleep(Duration::from_millis(2));
    hook.release(None);
    hook.release(None); // an unpaired release records nothing
    let ih = InHeader {
        opcode: Opcode::Forget as u32,
        ..Default::default()
    };
    hook.collect(&ih);
    hook.release(None);
    let s = m.snapshot(Labels::default());
    assert_eq!(s.fuse_ops["lookup"].count, 1);
    assert!(s.fuse_ops["lookup"].p50_us >= 2000.0);
    assert_eq!(s.fuse_ops["other"].count, 1);
    assert_eq!(op_for_opcode(Opcode::Readdirplus as u32), Op::Readdirplus);
    assert_eq!(op_for_opcode(Opcode::Statfs as u32), Op::Statfs);
    assert_eq!(op_for_opcode(9999), Op::Other);
}

/// A fake daemon: answers each `stats` line with `reply`, or never answers.
fn fake_daemon(sock: &Path, reply: Option<String>) {
    let listener = UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            let conn = conn.unwrap();
            match &reply {
                Some(r) => {
                    let mut line = String::new();
                    BufReader::new(&conn).read_line(&mut line).unwrap();
                    let out = if line.trim() == "stats" {
                        r.clone()
                    } else {
                        "error unknown command".into()
                    };
                    (&conn).write_all(format!("{out}\n").as_bytes()).unwrap();
                }
                None => held.push(conn), // accept, never answer
            }
        }
    });
}

/// `<dir>/images/<hex>/{control.sock,containers}` with a fake daemon.
fn fake_image(run_dir: &Path, hex: &str, image: &str, cids: &[&str], answers: bool) {
    let d = run_dir.join("images").join(hex);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("containers"),
        cids.iter().map(|c| format!("{c}\n")).collect::<String>(),
    )
    .unwrap();
    let m = Metrics::with_shards(1);
    m.add_served(100);
    m.record_fuse_op(Op::Read, Duration::from_micros(40), false);
    let mut l = labels(image, "");
    l.digest = String::new(); // the client fills it from the dir name
    let reply = serde_json::json!({"pid": 1, "metrics": m.snapshot(l)}).to_string();
    fake_daemon(&d.join("control.sock"), answers.then_some(reply));
}

#[test]
fn control_client_answers_timeouts_and_missing_sockets() {
    let dir = tempfile::tempdir().unwrap();
    fake_image(dir.path(), "aa", "alpine:3", &["c1", "c2"], true);
    fake_image(dir.path(), "bb", "busybox", &[], false);
    // A stale socket: the file exists, nothing listens.
    let stale = dir.path().join("images/cc");
    std::fs::create_dir_all(&stale).unwrap();
    drop(UnixListener::bind(stale.join("control.sock")).unwrap());

    let s = query_daemon(
        &dir.path().join("images/aa/control.sock"),
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(s.labels.image, "alpine:3");
    assert_eq!(s.counters.bytes_served, 100);

    let t0 = Instant::now();
    let err = query_daemon(
        &dir.path().join("images/bb/control.sock"),
        Duration::from_millis(300),
    )
    .unwrap_err();
    assert!(matches!(err, MetricsError::Timeout { .. }), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(2), "timeout honoured");
    assert!(err.to_string().contains("not answering"), "{err}");

    let err = query_daemon(
        &dir.path().join("images/zz/control.sock"),
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(matches!(err, MetricsError::NotRunning { .. }), "{err}");
    let err = query_daemon(&stale.join("control.sock"), Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(err, MetricsError::NotRunning { .. }),
        "stale socket: {err}"
    );

    let entries = discover(dir.path()).unwrap();
    assert_eq!(
        entries
            .iter()
            .map(|e| e.manifest_hex.as_str())
            .collect::<Vec<_>>(),
        ["aa", "bb", "cc"]
    );
    assert_eq!(entries[0].cids, ["c1", "c2"]);
    let t0 = Instant::now();
    let reports = collect(&entries, Duration::from_millis(300));
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "daemons are queried concurrently"
    );
    let ok = reports[0].result.as_ref().unwrap();
    assert_eq!(ok.labels.digest, "sha256:aa");
    assert_eq!(ok.labels.cids, ["c1", "c2"]);
    assert!(reports[1].result.is_err() && reports[2].result.is_err());
    assert!(discover(&dir.path().join("nope")).unwrap().is_empty());
}

#[test]
fn control_client_error_reply() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    fake_daemon(&sock, Some("error stats unavailable".into()));
    let err = query_daemon(&sock, Duration::from_secs(1)).unwrap_err();
    assert!(
        err.to_string()
            .contains("daemon answered: error stats unavailable"),
        "{err}"
    );
}

fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

#[test]
fn serve_metrics_and_healthz() {
    let dir = tempfile::tempdir().unwrap();
    fake_image(dir.path(), "aa", "alpine:3", &["c1"], true);
    fake_image(dir.path(), "bb", "busybox", &[], false);
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr();
    let run_dir = dir.path().to_path_buf();
    let render: Arc<super::RenderFn> = Arc::new(move || {
        prometheus_scrape(&run_dir, Duration::from_millis(300)).map_err(|e| e.to_string())
    });
    std::thread::spawn(move || server.run(render));

    let (head, body) = http_get(addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        body.contains("clip_bytes_served_total{image=\"alpine:3\",digest=\"sha256:aa\"} 100"),
        "{body}"
    );
    assert!(
        body.contains("clip_daemon_up{digest=\"sha256:bb\"} 0"),
        "{body}"
    );
    check_exposition(&body);
    promtool_check(&body);
    let (head, body) = http_get(addr, "/healthz");
    assert!(
        head.starts_with("HTTP/1.1 200") && body == "ok\n",
        "{head}{body}"
    );
    let (head, _) = http_get(addr, "/nope");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    let err = MetricsServer::bind(addr).unwrap_err();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    assert!(matches!(err, MetricsError::Bind { .. }));
}

/// Cost of one record on the read path (debug build here: the criterion
/// bench `metrics_record` gives the optimised number).
#[test]
fn record_cost_is_small() {
    let m = Metrics::new();
    let n = 200_000u32;
    let t0 = Instant::now();
    for _ in 0..n {
        drop(m.fuse_timer(Op::Read));
    }
    let timer_ns = t0.elapsed().as_nanos() as f64 / f64::from(n);
    let t0 = Instant::now();
    for _ in 0..n {
        m.add_served(4096);
    }
    let ctr_ns = t0.elapsed().as_nanos() as f64 / f64::from(n);
    println!(
        "fuse_timer create+drop: {timer_ns:.1} ns/op, add_served: {ctr_ns:.1} ns/op (debug build)"
    );
    assert_eq!(
        m.snapshot(Labels::default()).fuse_ops["read"].count,
        u64::from(n)
    );
}
