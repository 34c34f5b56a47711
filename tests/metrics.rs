//! `clipctl metrics` end to end: counters after a known workload on a real
//! mount, the `--serve` endpoint (checked by `promtool` and scraped by a real
//! Prometheus), and the error paths. Everything listens on 127.0.0.1 only;
//! mounts and child processes are cleaned up by guards, also on failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{self, clipctl, index_image, run, stderr, Dirs};

/// Kills and reaps a child process on drop (also when the test panics).
struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    fn spawn(name: &'static str, cmd: &mut Command) -> Self {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        ChildGuard { child }
    }

    /// Waits up to `limit` for the child to exit on its own.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago on 127.0.0.1 (for servers that cannot
/// be told to pick one themselves).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// One HTTP response: status, head (status line and headers), body.
struct Response {
    status: u16,
    head: String,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `GET path` on `addr` over a raw TCP connection, `Connection: close`, read to EOF.
/// `version` is `HTTP/1.1` or `HTTP/1.0` (the latter keeps Go servers from chunking).
fn http_get(addr: &str, path: &str, version: &str) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} {version}\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no end of head in {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok(Response {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// `clipctl metrics --cid cid --format json`: the one image's snapshot.
fn snapshot(d: &Dirs, cid: &str) -> Value {
    let run_dir = d.run_dir();
    let o = run(&[
        "metrics",
        "--cid",
        cid,
        "--format",
        "json",
        "--run-dir",
        run_dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "clipctl metrics: {}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("metrics JSON");
    let images = v["images"].as_array().expect("images array");
    assert_eq!(images.len(), 1, "one image for cid {cid}: {v:#}");
    assert!(v["total"].is_object(), "total: {v:#}");
    let s = images[0].clone();
    assert_eq!(s["schema_version"], 1);
    assert!(
        s["labels"]["cids"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x == cid)),
        "labels: {}",
        s["labels"]
    );
    s
}

/// An integer field of a snapshot by JSON pointer (missing = 0, as the schema says).
fn n(s: &Value, pointer: &str) -> u64 {
    s.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

/// Drops the page cache of `path` (so the next read reaches the FUSE daemon).
#[allow(unsafe_code)]
fn drop_page_cache(path: &Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: posix_fadvise only reads its integer arguments; the fd is open for the call.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise(DONTNEED) on {}", path.display());
}

/// `<run_dir>/images/*/daemon.pid` of the only daemon under `run_dir`.
fn daemon_pid(run_dir: &Path) -> String {
    let pidfile = std::fs::read_dir(run_dir.join("images"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("daemon.pid"))
        .find(|p| p.exists())
        .expect("daemon.pid");
    common::pid_in(&pidfile).to_string()
}

/// Mounts the tiny image as `cid` in `d`; returns the rootfs.
fn mount_tiny(d: &mut Dirs, reg: &str, cid: &str) -> PathBuf {
    let clip = index_image(d.tmp.path(), &common::image_ref(reg, "tiny"));
    d.mount(cid, &["--clip", clip.to_str().unwrap()]).unwrap()
}

/// `clipctl metrics --serve --port 0` on loopback for `run_dir`; returns the
/// guard and the bound `127.0.0.1:PORT` (read from its startup line).
fn serve(run_dir: &Path) -> (ChildGuard, String) {
    let mut g = ChildGuard::spawn(
        "clipctl metrics --serve",
        clipctl()
            .args(["metrics", "--serve", "--port", "0", "--bind", "127.0.0.1"])
            .arg("--run-dir")
            .arg(run_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let err = g.child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        if let Some(addr) = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split_once("/metrics"))
            .map(|(a, _)| a.to_string())
        {
            assert!(addr.starts_with("127.0.0.1:"), "{line}");
            return (g, addr);
        }
        seen.push(line);
    }
    panic!("metrics server printed no address: {seen:?}");
}

/// Runs `promtool check metrics` on `body`; returns (exit ok, its output).
fn promtool_check(body: &str) -> (bool, String) {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool (apt-get install prometheus)");
    p.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let o = p.wait_with_output().unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), out)
}

#[test]
fn privileged_metrics_follow_a_known_workload() {
    let Some(reg) = common::privileged_registry() else {
        return;
    };
    let mut d = Dirs::new();
    let cid = "mwork";
    let rootfs = mount_tiny(&mut d, &reg, cid);

    let s0 = snapshot(&d, cid);
    assert_eq!(
        std::fs::read(rootfs.join("hello.txt")).unwrap(),
        b"hello again\n"
    );
    let s1 = snapshot(&d, cid);
    let served =
        |a: &Value, b: &Value| n(b, "/counters/bytes_served") - n(a, "/counters/bytes_served");
    assert_eq!(served(&s0, &s1), 12, "hello.txt: {s0:#} -> {s1:#}");

    // Cold: the daemon has never seen these bytes, so it must fetch ranges.
    let big = rootfs.join("random-3MiB.bin");
    let first = std::fs::read(&big).unwrap();
    assert_eq!(first.len(), 3 << 20);
    let s2 = snapshot(&d, cid);
    assert_eq!(served(&s1, &s2), 3 << 20, "cold read served");
    assert!(
        n(&s2, "/counters/fetch_count") > n(&s1, "/counters/fetch_count"),
        "cold read fetched nothing: {s1:#} -> {s2:#}"
    );
    assert!(n(&s2, "/http_status/206") > n(&s1, "/http_status/206"));
    assert!(n(&s2, "/counters/bytes_fetched") > n(&s1, "/counters/bytes_fetched"));
    assert!(n(&s2, "/counters/cache_misses") > n(&s1, "/counters/cache_misses"));
    assert!(n(&s2, "/timings/range_get/count") > 0);

    // Warm: out of the page cache, but still in the daemon's chunk cache.
    drop_page_cache(&big);
    let second = std::fs::read(&big).unwrap();
    assert!(first == second, "second read returned different bytes");
    let s3 = snapshot(&d, cid);
    assert!(
        n(&s3, "/fuse_ops/read/count") > n(&s2, "/fuse_ops/read/count"),
        "page cache not dropped: no FUSE reads on the second pass"
    );
    assert_eq!(served(&s2, &s3), 3 << 20, "warm read served");
    for p in [
        "/counters/fetch_count",
        "/counters/bytes_fetched",
        "/http_status/206",
    ] {
        assert_eq!(n(&s3, p), n(&s2, p), "warm read changed {p}");
    }
    assert!(
        n(&s3, "/counters/cache_hits") > n(&s2, "/counters/cache_hits"),
        "warm read: no cache hits: {s2:#} -> {s3:#}"
    );
    assert_eq!(
        n(&s3, "/counters/cache_misses"),
        n(&s2, "/counters/cache_misses")
    );
    assert!(n(&s3, "/fuse_ops/read/count") > 0);
    assert!(n(&s3, "/fuse_ops/lookup/count") > 0);
    assert!(s3["fuse_ops"]["read"]["p50_us"].as_f64().unwrap() > 0.0);
    assert!(s3["read_amplification"].as_f64().is_some());
    for kind in ["fetch", "digest_mismatch", "inflate", "fuse_eio", "timeout"] {
        assert_eq!(n(&s3, &format!("/errors/{kind}")), 0, "errors.{kind}");
    }

    // The text format shows the same mount.
    let r = d.run_dir();
    let o = run(&["metrics", "--cid", cid, "--run-dir", r.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains(cid) && text.contains("served"), "{text}");

    assert!(d.umount(cid).status.success());
    d.cids.clear();
    assert!(d.mounts_left().is_empty(), "{}", d.explain());
}

#[test]
fn privileged_metrics_endpoint_passes_promtool() {
    let Some(reg) = common::privileged_registry() else {
        return;
    };
    let mut d = Dirs::new();
    let rootfs = mount_tiny(&mut d, &reg, "mserve");
    std::fs::read(rootfs.join("hello.txt")).unwrap();
    let (_server, addr) = serve(&d.run_dir());

    let r = http_get(&addr, "/metrics", "HTTP/1.1").unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.head, r.body);
    let ctype = r.header("content-type").unwrap_or("");
    assert!(
        ctype.starts_with("text/plain; version=0.0.4"),
        "content type {ctype:?}"
    );
    assert_eq!(
        r.header("content-length").and_then(|l| l.parse().ok()),
        Some(r.body.len())
    );
    let (ok, out) = promtool_check(&r.body);
    assert!(
        ok,
        "promtool check metrics:\n{out}\n--- body ---\n{}",
        r.body
    );
    assert!(r.body.contains("clip_daemon_up{"), "{}", r.body);
    let served = r
        .body
        .lines()
        .find(|l| l.starts_with("clip_bytes_served_total{"))
        .unwrap_or_else(|| panic!("no clip_bytes_served_total in {}", r.body));
    assert!(served.ends_with(" 12"), "{served}");

    // The one-shot Prometheus format is the same exposition.
    let run_dir = d.run_dir();
    let o = run(&[
        "metrics",
        "--format",
        "prometheus",
        "--run-dir",
        run_dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (ok, out) = promtool_check(&String::from_utf8_lossy(&o.stdout));
    assert!(ok, "promtool on --format prometheus:\n{out}");

    let h = http_get(&addr, "/healthz", "HTTP/1.1").unwrap();
    assert_eq!((h.status, h.body.trim()), (200, "ok"));
    assert_eq!(http_get(&addr, "/nope", "HTTP/1.1").unwrap().status, 404);
}

#[test]
fn privileged_prometheus_scrapes_the_endpoint() {
    let Some(reg) = common::privileged_registry() else {
        return;
    };
    if !common::have_program("prometheus", "prometheus") {
        return;
    }
    let mut d = Dirs::new();
    let rootfs = mount_tiny(&mut d, &reg, "mprom");
    std::fs::read(rootfs.join("hello.txt")).unwrap();
    let (_server, addr) = serve(&d.run_dir());

    let tmp = common::tempdir();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: clip\n    scrape_interval: 1s\n    \
             static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    let log_path = tmp.path().join("prometheus.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let mut prom = ChildGuard::spawn(
        "prometheus",
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::from("(no answer yet)");
    let value = loop {
        if let Some(st) = prom.child.try_wait().unwrap() {
            panic!(
                "prometheus exited ({st}):\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            panic!(
                "prometheus never saw clip_bytes_served_total > 0; last answer: {last}\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        match http_get(
            &web,
            "/api/v1/query?query=clip_bytes_served_total",
            "HTTP/1.0",
        ) {
            Ok(r) if r.status == 200 => {
                let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
                let got = v
                    .pointer("/data/result/0/value/1")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse::<f64>().ok());
                if let Some(x) = got.filter(|x| *x > 0.0) {
                    break (x, v);
                }
                last = r.body;
            }
            Ok(r) => last = format!("{} {}", r.status, r.body),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(value.0, 12.0, "{:#}", value.1);
    let labels = &value.1["data"]["result"][0]["metric"];
    assert_eq!(labels["job"], "clip", "{labels}");
    assert_eq!(labels["instance"], addr.as_str(), "{labels}");
    assert!(
        labels["digest"]
            .as_str()
            .unwrap_or("")
            .starts_with("sha256:"),
        "{labels}"
    );
}

#[test]
fn metrics_errors_without_daemons() {
    let tmp = common::tempdir();
    let empty = tmp.path().to_str().unwrap();

    // A container nobody mounted: the documented "not found" exit code.
    let o = run(&["metrics", "--cid", "does-not-exist", "--run-dir", empty]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("does-not-exist"), "{}", stderr(&o));

    // No daemon at all.
    let o = run(&["metrics", "--run-dir", empty]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no clip mount daemons are running"),
        "{}",
        stderr(&o)
    );
    let o = run(&["metrics", "--format", "json", "--run-dir", empty]);
    assert!(!o.status.success() && o.stdout.is_empty());

    // --serve on a port in use: an error naming the address, not a hang.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let port = held.local_addr().unwrap().port().to_string();
    let mut g = ChildGuard::spawn(
        "clipctl metrics --serve (busy port)",
        clipctl()
            .args(["metrics", "--serve", "--port", &port, "--run-dir", empty])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let st = g
        .wait_exit(Duration::from_secs(10))
        .expect("--serve on a busy port kept running");
    let mut err = String::new();
    g.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!st.success(), "{err}");
    assert!(err.contains(&addr), "{err}");
    drop(held);
}

#[test]
fn privileged_metrics_of_a_killed_daemon() {
    let Some(reg) = common::privileged_registry() else {
        return;
    };
    let mut d = Dirs::new();
    let cid = "mdead";
    let rootfs = mount_tiny(&mut d, &reg, cid);
    std::fs::read(rootfs.join("hello.txt")).unwrap();
    snapshot(&d, cid);
    let pid = daemon_pid(&d.run_dir());
    assert!(Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(200));

    let run_dir = d.run_dir();
    let started = Instant::now();
    let o = run(&[
        "metrics",
        "--cid",
        cid,
        "--run-dir",
        run_dir.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("not answering"), "{err}");
    assert!(err.contains(cid), "the warning names the container: {err}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let o = d.umount(cid);
    assert!(o.status.success(), "{}", stderr(&o));
    d.cids.clear();
    assert!(d.mounts_left().is_empty(), "{}", d.explain());
}
