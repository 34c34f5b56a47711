//! Issue 10 part 6: the registry fault matrix on live FUSE mounts. Each row
//! mounts the tiny image through a fault-injecting proxy in front of the
//! real registry (tests/common/fault_proxy.rs), reads through the
//! mountpoint with O_DIRECT (every read a FUSE READ), switches a fault on,
//! and checks what a reader sees (the true bytes, or EIO), how long it
//! takes, that no wrong byte is ever served, and that reads succeed again
//! once the fault is gone, without a remount. Rows run in parallel threads,
//! each with its own daemon. The TLS rows run a real HTTPS registry
//! (docker-registry with a test CA). docs/faults.md holds the measured
//! table; the rows print their lines of it.

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::common::fault_proxy::{Fault, FaultProxy};
use crate::common::{self, image_ref, index_image, stderr, Dirs};
use crate::require;

/// `--read-timeout` of the rows (the default, 30 s, has a row of its own).
const DEADLINE: Duration = Duration::from_secs(4);

/// A region of a file of the image: (path, offset, length).
type Region = (&'static str, u64, usize);
/// Read before any fault: warms the connection, proves the mount works.
const FIRST: Region = ("bin/busybox", 0, 64 << 10);
/// Read under the fault: not cached by then (other file, other chunk).
const UNDER: Region = ("random-3MiB.bin", 1 << 20, 64 << 10);

/// What the rows share: the index of the tiny image, the ground truth.
struct Bed {
    registry: String,
    clip: PathBuf,
    truth: PathBuf,
}

/// One READ with O_DIRECT: always a FUSE READ, never the page cache.
fn direct_read(mnt: &Path, (path, off, len): Region) -> Result<Vec<u8>, i32> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(mnt.join(path))
        .map_err(|e| e.raw_os_error().unwrap_or(-1))?;
    let mut buf = vec![0u8; len];
    let n = f
        .read_at(&mut buf, off)
        .map_err(|e| e.raw_os_error().unwrap_or(-1))?;
    buf.truncate(n);
    Ok(buf)
}

/// A row's mount and its reads: every byte a read returns is checked
/// against the ground truth and a difference counted.
struct Mounted {
    d: Dirs,
    mnt: PathBuf,
    truth: PathBuf,
    wrong: usize,
}

impl Mounted {
    /// Mounts the tiny image's index with blobs read through `source`
    /// (`host:port`), `extra` mount flags, `env` for clipctl and daemon.
    fn new(bed: &Bed, source: &str, extra: &[&str], env: &[(&str, String)]) -> Mounted {
        let mut d = Dirs::new();
        d.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let image = image_ref(source, "tiny");
        let mut args = vec!["--clip", bed.clip.to_str().unwrap(), "--image", &image];
        args.extend_from_slice(common::UNCACHED);
        args.extend_from_slice(extra);
        d.mount("faults", &args).unwrap();
        let mnt = d.image_mnt();
        Mounted {
            d,
            mnt,
            truth: bed.truth.clone(),
            wrong: 0,
        }
    }

    /// Reads `r`: Ok(()) when the bytes are the true ones (a wrong byte is
    /// counted and fails the row), Err(errno) otherwise; and how long.
    fn read(&mut self, r: Region) -> (Result<(), i32>, Duration) {
        let t = Instant::now();
        let got = direct_read(&self.mnt, r);
        let took = t.elapsed();
        let out = got.map(|bytes| {
            let f = std::fs::File::open(self.truth.join(r.0)).unwrap();
            let mut want = vec![0u8; r.2];
            let n = f.read_at(&mut want, r.1).unwrap();
            want.truncate(n);
            let differ = bytes.iter().zip(&want).filter(|(a, b)| a != b).count()
                + bytes.len().abs_diff(want.len());
            self.wrong += differ;
        });
        (out, took)
    }

    fn unmount(mut self) -> usize {
        assert!(self.d.umount("faults").status.success());
        self.d.cids.clear();
        assert!(
            self.d.mounts_left().is_empty(),
            "{:?}",
            self.d.mounts_left()
        );
        self.wrong
    }
}

/// One line of the table: the fault, what the reader saw, how long it took,
/// how long until a read succeeded again after the fault ended, wrong bytes.
#[derive(Debug)]
struct Line {
    fault: String,
    sees: String,
    took: Duration,
    recovered: Option<Duration>,
    wrong: usize,
}

fn sees(r: &Result<(), i32>) -> String {
    match r {
        Ok(()) => "the bytes".into(),
        Err(e) if *e == libc::EIO => "EIO".into(),
        Err(e) => format!("errno {e}"),
    }
}

/// What a row expects of the read under the fault.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// The true bytes, within this long.
    Bytes(Duration),
    /// EIO, after at least `.0` and within `.1`.
    Eio(Duration, Duration),
}

/// The common row: mount through a proxy, read, switch `fault` on (for `n`
/// requests, or until healed), read a region not cached yet, heal, read it
/// again.
fn row(bed: &Bed, name: &str, fault: Fault, n: Option<usize>, expect: Expect) -> Line {
    let proxy = FaultProxy::start(&bed.registry);
    let deadline = format!("{}s", DEADLINE.as_secs());
    let mut m = Mounted::new(bed, proxy.host(), &["--read-timeout", &deadline], &[]);
    assert_eq!(m.read(FIRST).0, Ok(()), "{name}: before the fault");
    match n {
        Some(n) => proxy.set_for(fault, n),
        None => proxy.set(fault),
    }
    let (got, took) = m.read(UNDER);
    match expect {
        Expect::Bytes(within) => {
            assert_eq!(got, Ok(()), "{name}: after {took:?}");
            assert!(took < within, "{name}: took {took:?}");
        }
        Expect::Eio(at_least, within) => {
            assert_eq!(got, Err(libc::EIO), "{name}: after {took:?}");
            assert!(
                took >= at_least && took < within,
                "{name}: EIO after {took:?}"
            );
        }
    }
    proxy.set(Fault::Forward);
    let recovered = if got.is_err() {
        Some(recover(&mut m, name))
    } else {
        None
    };
    Line {
        fault: name.to_string(),
        sees: sees(&got),
        took,
        recovered,
        wrong: m.unmount(),
    }
}

/// Reads UNDER again until it gives the true bytes (the same mount, no
/// remount); how long that took.
fn recover(m: &mut Mounted, name: &str) -> Duration {
    let t = Instant::now();
    loop {
        let (got, _) = m.read(UNDER);
        if got.is_ok() {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "{name}: still {got:?} {:?} after the fault ended",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// 429 with `Retry-After: 2` on the next two requests: the reader gets the
/// bytes, and the client waited as told before each next request.
fn throttled(bed: &Bed) -> Line {
    let proxy = FaultProxy::start(&bed.registry);
    let mut m = Mounted::new(bed, proxy.host(), &["--read-timeout", "20s"], &[]);
    assert_eq!(m.read(FIRST).0, Ok(()));
    proxy.set_for(Fault::TooManyRequests(2), 2);
    let (got, took) = m.read(UNDER);
    assert_eq!(got, Ok(()), "429: after {took:?}");
    let throttled = proxy.throttled_at();
    assert_eq!(throttled.len(), 2, "429s answered");
    for t in &throttled {
        let next = proxy.arrivals().into_iter().find(|a| a > t).unwrap();
        assert!(
            next - *t >= Duration::from_millis(1900),
            "the next request came {:?} after a 429 with Retry-After: 2",
            next - *t
        );
    }
    assert!(took >= Duration::from_secs(4) && took < Duration::from_secs(15));
    Line {
        fault: "429, Retry-After: 2, twice".into(),
        sees: sees(&got),
        took,
        recovered: None,
        wrong: m.unmount(),
    }
}

/// The registry goes away (every connection reset) after the data was read:
/// cached reads keep answering, with no error at all.
fn outage_cached(bed: &Bed) -> Line {
    let proxy = FaultProxy::start(&bed.registry);
    let mut m = Mounted::new(bed, proxy.host(), &["--read-timeout", "4s"], &[]);
    assert_eq!(m.read(FIRST).0, Ok(()));
    assert_eq!(m.read(UNDER).0, Ok(()));
    proxy.set(Fault::Reset);
    let before = proxy.requests();
    let t = Instant::now();
    for i in 0..20 {
        for r in [FIRST, UNDER] {
            let (got, took) = m.read(r);
            assert_eq!(got, Ok(()), "cached read {i} of {} ({took:?})", r.0);
        }
    }
    let took = t.elapsed() / 40;
    assert_eq!(
        proxy.requests(),
        before,
        "cached reads went to the registry"
    );
    Line {
        fault: "outage (connections reset), data cached: 40 reads".into(),
        sees: "the bytes, 0 errors".into(),
        took,
        recovered: None,
        wrong: m.unmount(),
    }
}

/// The registry stops answering under a mount with the default read
/// deadline: EIO at 30 s, and the bytes once it answers again.
fn outage_default_deadline(bed: &Bed) -> Line {
    let proxy = FaultProxy::start(&bed.registry);
    let mut m = Mounted::new(bed, proxy.host(), &[], &[]);
    assert_eq!(m.read(FIRST).0, Ok(()));
    proxy.set(Fault::Blackhole);
    let (got, took) = m.read(UNDER);
    assert_eq!(got, Err(libc::EIO), "after {took:?}");
    assert!(
        took >= Duration::from_millis(29_500) && took < Duration::from_secs(40),
        "EIO after {took:?}, the default deadline is 30 s"
    );
    proxy.set(Fault::Forward);
    let recovered = recover(&mut m, "outage, default deadline");
    Line {
        fault: "outage (no answer), uncached, default --read-timeout".into(),
        sees: sees(&got),
        took,
        recovered: Some(recovered),
        wrong: m.unmount(),
    }
}

/// An auth file holding `user:secret` for `host`.
fn auth_file(dir: &Path, host: &str) -> String {
    use base64::Engine as _;
    let path = dir.join(format!("auth-{host}.json").replace(':', "_"));
    let auth = base64::engine::general_purpose::STANDARD.encode("clip-user:clip-secret");
    let doc = serde_json::json!({ "auths": { host: { "auth": auth } } });
    std::fs::write(&path, doc.to_string()).unwrap();
    path.to_string_lossy().into_owned()
}

/// Bearer tokens good for 3 requests each: tokens expire under the mount,
/// the client fetches a new one and the reader never notices. The token
/// service is on the registry's host (another port), so it gets the stored
/// credentials; on `other_host` (127.0.0.2) it must get none.
fn tokens(bed: &Bed, other_host: bool) -> Line {
    let realm_ip = if other_host { "127.0.0.2" } else { "127.0.0.1" };
    let proxy = FaultProxy::with_tokens(&bed.registry, realm_ip, 3);
    let dir = common::tempdir();
    let env = [("REGISTRY_AUTH_FILE", auth_file(dir.path(), proxy.host()))];
    let mut m = Mounted::new(bed, proxy.host(), &["--read-timeout", "4s"], &env);
    let t = Instant::now();
    let mut reads = 0;
    for off in (0..3u64 << 20).step_by(256 << 10) {
        let (got, took) = m.read(("random-3MiB.bin", off, 64 << 10));
        assert_eq!(got, Ok(()), "read at {off} ({took:?})");
        reads += 1;
    }
    let took = t.elapsed() / reads;
    let sent = proxy.token_requests();
    assert!(
        sent.len() >= 3,
        "tokens did not expire: {} token requests",
        sent.len()
    );
    assert!(proxy.challenges() >= sent.len());
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "clip-user:clip-secret"
        )
    );
    if other_host {
        assert!(
            sent.iter().all(Option::is_none),
            "credentials went to a token service on another host"
        );
    } else {
        assert!(sent.iter().all(|a| a.as_deref() == Some(basic.as_str())));
    }
    let where_ = if other_host {
        "on another host (127.0.0.2): no credentials sent"
    } else {
        "on the registry host: credentials sent"
    };
    Line {
        fault: format!(
            "token expires every 3 requests ({} tokens), realm {where_}",
            sent.len()
        ),
        sees: format!("the bytes ({reads} reads)"),
        took,
        recovered: None,
        wrong: m.unmount(),
    }
}

fn bed() -> Option<Bed> {
    let registry = common::privileged_registry()?;
    let Some(testbed) = common::testbed() else {
        common::skip("CLIP_TESTBED not set (run scripts/test.sh)");
        return None;
    };
    let dir = common::tempdir().keep();
    let clip = index_image(&dir, &image_ref(&registry, "tiny"));
    Some(Bed {
        registry,
        clip,
        truth: testbed.join("unpacked/tiny/rootfs"),
    })
}

fn print(lines: &[Line]) {
    eprintln!("| fault | a reader sees | after | reads again after the fault ends | wrong bytes |");
    for l in lines {
        eprintln!(
            "| {} | {} | {:.2?} | {} | {} |",
            l.fault,
            l.sees,
            l.took,
            l.recovered
                .map_or("-".to_string(), |r| format!("{r:.2?}, no remount")),
            l.wrong
        );
    }
}

#[test]
fn privileged_registry_fault_matrix() {
    let Some(bed) = bed() else { return };
    let bed = std::sync::Arc::new(bed);
    let fast = Duration::from_millis(3500);
    let slow_eio = Expect::Eio(DEADLINE - Duration::from_millis(300), DEADLINE * 3);
    type RowFn = Box<dyn FnOnce(&Bed) -> Line + Send>;
    let rows: Vec<(&str, RowFn)> = vec![
        (
            "blackhole",
            Box::new(move |b| row(b, "blackhole", Fault::Blackhole, None, slow_eio)),
        ),
        (
            "trickle",
            Box::new(move |b| row(b, "1 byte/s trickle", Fault::Trickle, None, slow_eio)),
        ),
        (
            "reset x2",
            Box::new(move |b| {
                row(
                    b,
                    "reset, next 2 requests",
                    Fault::Reset,
                    Some(2),
                    Expect::Bytes(fast),
                )
            }),
        ),
        (
            "reset",
            Box::new(move |b| {
                let e = Expect::Eio(Duration::ZERO, fast);
                row(b, "reset, every request (outage)", Fault::Reset, None, e)
            }),
        ),
        (
            "503 x2",
            Box::new(move |b| {
                let e = Expect::Bytes(fast);
                row(b, "503, next 2 requests", Fault::Status(503), Some(2), e)
            }),
        ),
        (
            "503",
            Box::new(move |b| {
                let e = Expect::Eio(Duration::ZERO, fast);
                row(b, "503, every request", Fault::Status(503), None, e)
            }),
        ),
        (
            "redirect loop",
            Box::new(move |b| {
                let e = Expect::Eio(Duration::ZERO, fast);
                row(
                    b,
                    "redirect loop (307 to itself)",
                    Fault::RedirectLoop,
                    None,
                    e,
                )
            }),
        ),
        ("429", Box::new(throttled)),
        ("outage cached", Box::new(outage_cached)),
        ("outage default", Box::new(outage_default_deadline)),
        ("token expiry", Box::new(|b| tokens(b, false))),
        ("realm elsewhere", Box::new(|b| tokens(b, true))),
    ];
    let handles: Vec<_> = rows
        .into_iter()
        .map(|(name, f)| {
            let b = bed.clone();
            (name, std::thread::spawn(move || f(&b)))
        })
        .collect();
    let mut lines = Vec::new();
    let mut failed = Vec::new();
    for (name, h) in handles {
        match h.join() {
            Ok(l) => lines.push(l),
            Err(_) => failed.push(name),
        }
    }
    print(&lines);
    assert!(failed.is_empty(), "rows failed: {failed:?}");
    assert!(lines.iter().all(|l| l.wrong == 0), "wrong bytes served");
}

/// A TLS registry: docker-registry serving HTTPS with a certificate of a
/// test CA, for `name`.
struct TlsRegistry {
    child: Child,
    host: String,
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/install-deps.sh installs it)");
    assert!(o.status.success(), "openssl {args:?}: {}", stderr(&o));
}

/// A CA `<name>.pem`/`<name>.key` in `dir`.
fn make_ca(dir: &Path, name: &str) {
    let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=clip test {name}"),
            "-keyout",
            &key,
            "-out",
            &pem,
        ],
    );
}

/// A server certificate `<out>.pem`/`<out>.key` for DNS name `dns`, signed
/// by CA `ca`.
fn make_cert(dir: &Path, ca: &str, out: &str, dns: &str) {
    let (pem, key, csr) = (
        format!("{out}.pem"),
        format!("{out}.key"),
        format!("{out}.csr"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={dns}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    let ext = format!("{out}.ext");
    std::fs::write(dir.join(&ext), format!("subjectAltName=DNS:{dns}\n")).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ],
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts docker-registry on 127.0.0.1 with TLS certificate `cert` of
/// `dir`; reached as `name:port`.
fn tls_registry(dir: &Path, cert: &str, name: &str) -> TlsRegistry {
    let port = free_port();
    let state = dir.join(format!("registry-{cert}"));
    std::fs::create_dir_all(state.join("storage")).unwrap();
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  redirect:\n    disable: true\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: clip-test\n  tls:\n    certificate: {}\n    key: {}\n",
        state.join("storage").display(),
        dir.join(format!("{cert}.pem")).display(),
        dir.join(format!("{cert}.key")).display(),
    );
    let path = state.join("config.yml");
    std::fs::write(&path, config).unwrap();
    let log = std::fs::File::create(state.join("registry.log")).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&path)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("docker-registry (scripts/install-deps.sh installs it)");
    let reg = TlsRegistry {
        child,
        host: format!("{name}:{port}"),
    };
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "TLS registry did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    reg
}

/// This machine's host name if it resolves to a loopback address: a name
/// the client reaches over HTTPS (loopback IPs and `localhost` it reaches
/// over plain HTTP), served on 127.0.0.1.
fn loopback_name() -> Option<String> {
    use std::net::ToSocketAddrs;
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_string();
    let addrs: Vec<_> = (name.as_str(), 0).to_socket_addrs().ok()?.collect();
    addrs
        .iter()
        .any(|a| a.ip() == std::net::IpAddr::from([127, 0, 0, 1]))
        .then_some(name)
}

/// HTTPS with a test CA: trusted through SSL_CERT_FILE the image mounts and
/// reads true; with another CA trusted, or a certificate for another name,
/// the mount fails at once with a one-line error naming the certificate
/// problem, and leaves nothing mounted.
#[test]
fn privileged_tls_registry_with_a_test_ca() {
    let Some(registry) = common::privileged_registry() else {
        return;
    };
    let bed = require!(
        common::testbed(),
        "CLIP_TESTBED not set (run scripts/test.sh)"
    );
    let name = require!(
        loopback_name(),
        "the host name does not resolve to 127.0.0.1 (/etc/hosts)"
    );
    let dir = common::tempdir();
    let p = dir.path();
    make_ca(p, "ca");
    make_ca(p, "other-ca");
    make_cert(p, "ca", "server", &name);
    make_cert(p, "ca", "wrong-name", "not-this-host.invalid");
    let good = tls_registry(p, "server", &name);
    let wrong_name = tls_registry(p, "wrong-name", &name);
    let o = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .arg(format!("docker://{}", image_ref(&registry, "tiny")))
        .arg(format!("docker://{}", image_ref(&good.host, "tiny")))
        .output()
        .expect("skopeo (scripts/install-deps.sh installs it)");
    assert!(o.status.success(), "skopeo copy: {}", stderr(&o));
    let ca = p.join("ca.pem").to_string_lossy().into_owned();
    let other_ca = p.join("other-ca.pem").to_string_lossy().into_owned();

    // Trusted: index and mount over HTTPS, every byte true.
    let o = common::clipctl()
        .args(["index", "--image", &image_ref(&good.host, "tiny"), "--out"])
        .arg(p.join("tiny.clip"))
        .env("SSL_CERT_FILE", &ca)
        .output()
        .unwrap();
    assert!(o.status.success(), "index over TLS: {}", stderr(&o));
    let bed = Bed {
        registry: registry.clone(),
        clip: p.join("tiny.clip"),
        truth: bed.join("unpacked/tiny/rootfs"),
    };
    let t = Instant::now();
    let mut m = Mounted::new(&bed, &good.host, &[], &[("SSL_CERT_FILE", ca.clone())]);
    for r in [FIRST, UNDER, ("random-3MiB.bin", 0, 3 << 20)] {
        assert_eq!(m.read(r).0, Ok(()), "{}", r.0);
    }
    let mut lines = vec![Line {
        fault: "TLS, test CA trusted (SSL_CERT_FILE)".into(),
        sees: "the bytes".into(),
        took: t.elapsed(),
        recovered: None,
        wrong: m.unmount(),
    }];

    // Refused: another CA trusted; a certificate for another name.
    for (what, host, trust, needle) in [
        (
            "TLS, another CA trusted",
            &good.host,
            &other_ca,
            "UnknownIssuer",
        ),
        (
            "TLS, certificate for another name",
            &wrong_name.host,
            &ca,
            "not valid for name",
        ),
    ] {
        let mut d = Dirs::new();
        d.env = vec![("SSL_CERT_FILE".into(), trust.clone())];
        let image = image_ref(host, "tiny");
        let t = Instant::now();
        let o = d.mount_output(
            "faults",
            &["--clip", bed.clip.to_str().unwrap(), "--image", &image],
        );
        let took = t.elapsed();
        let err = stderr(&o);
        assert!(!o.status.success(), "{what}: mounted");
        assert!(err.contains(needle) && err.contains("TLS"), "{what}: {err}");
        assert!(took < Duration::from_secs(10), "{what}: {took:?}");
        assert!(d.mounts_left().is_empty(), "{}", d.explain());
        lines.push(Line {
            fault: what.into(),
            sees: format!(
                "mount fails: {}",
                err.lines()
                    .find_map(|l| l.split_once("TLS with ").map(|(_, m)| m))
                    .unwrap_or_default()
            ),
            took,
            recovered: None,
            wrong: 0,
        });
    }
    print(&lines);
}
