//! Tests against the in-process fake registry and temp OCI layouts.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::json;

use super::fake::{range_reply, serve, FakeAuth, FakeRegistry, FakeServer, Reply, Req};
use super::*;
use crate::source::BlobSource;

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";

// ---------------------------------------------------------------- references

type RefCase = (
    String,
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<Digest>,
    String,
);

#[test]
fn reference_table() {
    let d = Digest::of(b"x");
    let cases: Vec<RefCase> = vec![
        (
            "debian".into(),
            "registry-1.docker.io",
            "library/debian",
            Some("latest"),
            None,
            "docker.io/library/debian:latest".into(),
        ),
        (
            "debian:12".into(),
            "registry-1.docker.io",
            "library/debian",
            Some("12"),
            None,
            "docker.io/library/debian:12".into(),
        ),
        (
            "docker.io/library/debian".into(),
            "registry-1.docker.io",
            "library/debian",
            Some("latest"),
            None,
            "docker.io/library/debian:latest".into(),
        ),
        (
            "index.docker.io/foo".into(),
            "registry-1.docker.io",
            "library/foo",
            Some("latest"),
            None,
            "docker.io/library/foo:latest".into(),
        ),
        (
            "user/app:v1".into(),
            "registry-1.docker.io",
            "user/app",
            Some("v1"),
            None,
            "docker.io/user/app:v1".into(),
        ),
        (
            "host:5000/a/b:tag".into(),
            "host:5000",
            "a/b",
            Some("tag"),
            None,
            "host:5000/a/b:tag".into(),
        ),
        (
            "127.0.0.1:5000/clip/tiny".into(),
            "127.0.0.1:5000",
            "clip/tiny",
            Some("latest"),
            None,
            "127.0.0.1:5000/clip/tiny:latest".into(),
        ),
        (
            "localhost/x".into(),
            "localhost",
            "x",
            Some("latest"),
            None,
            "localhost/x:latest".into(),
        ),
        (
            "ghcr.io/o/r/deep/name:1.2_3-x".into(),
            "ghcr.io",
            "o/r/deep/name",
            Some("1.2_3-x"),
            None,
            "ghcr.io/o/r/deep/name:1.2_3-x".into(),
        ),
        (
            format!("quay.io/a/b@{d}"),
            "quay.io",
            "a/b",
            None,
            Some(d),
            format!("quay.io/a/b@{d}"),
        ),
        (
            format!("alpine:3@{d}"),
            "registry-1.docker.io",
            "library/alpine",
            Some("3"),
            Some(d),
            format!("docker.io/library/alpine:3@{d}"),
        ),
        (
            "[::1]:5000/x:y".into(),
            "[::1]:5000",
            "x",
            Some("y"),
            None,
            "[::1]:5000/x:y".into(),
        ),
    ];
    for (input, reg, repo, tag, digest, display) in cases {
        let r: ImageRef = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(r.registry, reg, "{input}");
        assert_eq!(r.repository, repo, "{input}");
        assert_eq!(r.tag.as_deref(), tag, "{input}");
        assert_eq!(r.digest, digest, "{input}");
        assert_eq!(r.to_string(), display, "{input}");
        let again: ImageRef = display.parse().unwrap();
        assert_eq!(again, r, "display of {input} round-trips");
    }
    for bad in [
        "",
        "UPPER/case",
        "a//b",
        "host:5000/",
        "debian:",
        "debian:-x",
        "debian@sha256:1234",
        "debian@md5:abc",
        "a b",
        "/abs",
        "x/.y",
        "debian:tag:more",
        "foo@@sha256:00",
    ] {
        let e = bad.parse::<ImageRef>();
        assert!(
            matches!(e, Err(OciError::BadReference { .. })),
            "{bad:?} → {e:?}"
        );
    }
    assert!("x".repeat(5000).parse::<ImageRef>().is_err());
}

#[test]
fn platform_parse_and_match() {
    let p: Platform = "linux/amd64".parse().unwrap();
    assert_eq!(p.to_string(), "linux/amd64");
    let v8: Platform = "linux/arm64/v8".parse().unwrap();
    assert_eq!(v8.variant.as_deref(), Some("v8"));
    let bare: Platform = "linux/aarch64".parse().unwrap();
    assert_eq!(bare.architecture, "arm64");
    assert!(v8.matches(&bare), "arm64 without variant counts as v8");
    assert!(bare.matches(&v8));
    let v7: Platform = "linux/arm/v7".parse().unwrap();
    assert!(!v7.matches(&"linux/arm/v6".parse().unwrap()));
    assert!(!p.matches(&v8));
    for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/amd 64"] {
        assert!(bad.parse::<Platform>().is_err(), "{bad}");
    }
    let h = Platform::host();
    assert_eq!(h.os, std::env::consts::OS);
    if cfg!(target_arch = "x86_64") {
        assert_eq!(h.to_string(), "linux/amd64");
    }
}

// ---------------------------------------------------------------- test image

#[derive(Clone)]
struct TestImage {
    reg: FakeRegistry,
    manifest_digest: Digest,
    manifest_raw: Vec<u8>,
    layers: Vec<Vec<u8>>,
    diff_ids: Vec<Digest>,
}

fn big_blob(n: usize) -> Vec<u8> {
    let mut x = 0x1234_5678u32;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn config_json(arch: &str, diff_ids: &[Digest]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()}
    }))
    .unwrap()
}

fn manifest_json(config: &[u8], layers: &[Vec<u8>]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": {"mediaType": CONFIG_TYPE, "digest": Digest::of(config).to_string(), "size": config.len()},
        "layers": layers.iter().map(|l| json!({
            "mediaType": LAYER_TYPE, "digest": Digest::of(l).to_string(), "size": l.len()
        })).collect::<Vec<_>>()
    }))
    .unwrap()
}

fn desc(media_type: &str, raw: &[u8], platform: Option<(&str, &str)>) -> serde_json::Value {
    let mut d =
        json!({"mediaType": media_type, "digest": Digest::of(raw).to_string(), "size": raw.len()});
    if let Some((os, arch)) = platform {
        d["platform"] = json!({"os": os, "architecture": arch});
    }
    d
}

/// A two-platform image (index → arm64 + amd64) tagged `latest` in `repo`;
/// built once (hashing 5 MiB is slow in debug builds), then cloned.
fn make_image(repo: &str) -> TestImage {
    static IMAGE: std::sync::OnceLock<TestImage> = std::sync::OnceLock::new();
    let mut img = IMAGE.get_or_init(|| build_image("x")).clone();
    img.reg.repo = repo.to_string();
    img
}

fn build_image(repo: &str) -> TestImage {
    let mut reg = FakeRegistry::new(repo);
    let layers = vec![b"layer one ".repeat(100), big_blob(5 << 20)];
    let diff_ids: Vec<Digest> = layers
        .iter()
        .map(|l| Digest::of(&[l.as_slice(), b"-diff"].concat()))
        .collect();
    for l in &layers {
        reg.add_blob(l.clone());
    }
    let config = config_json("amd64", &diff_ids);
    reg.add_blob(config.clone());
    let manifest = manifest_json(&config, &layers);
    let md = reg.add_manifest(None, MEDIA_TYPE_OCI_MANIFEST, manifest.clone());

    let arm_layers = vec![b"arm layer".to_vec()];
    let arm_config = config_json("arm64", &[Digest::of(b"arm diff")]);
    reg.add_blob(arm_config.clone());
    reg.add_blob(arm_layers[0].clone());
    let arm_manifest = manifest_json(&arm_config, &arm_layers);
    reg.add_manifest(None, MEDIA_TYPE_OCI_MANIFEST, arm_manifest.clone());

    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": [
            desc(MEDIA_TYPE_OCI_MANIFEST, &arm_manifest, Some(("linux", "arm64"))),
            desc(MEDIA_TYPE_OCI_MANIFEST, &manifest, Some(("linux", "amd64"))),
        ]
    }))
    .unwrap();
    reg.add_manifest(Some("latest"), MEDIA_TYPE_OCI_INDEX, index);
    TestImage {
        reg,
        manifest_digest: md,
        manifest_raw: manifest,
        layers,
        diff_ids,
    }
}

fn start(reg: FakeRegistry) -> FakeServer {
    let reg = Arc::new(reg);
    serve(Arc::new(move |r: &Req| reg.handle(r)))
}

fn opts() -> RegistryOptions {
    RegistryOptions {
        insecure_registries: Vec::new(),
        platform: Some("linux/amd64".parse().unwrap()),
        timeout: Duration::from_secs(3),
        retries: 2,
        observer: None,
    }
}

fn connect(server: &FakeServer, repo_tag: &str, o: &RegistryOptions) -> RegistrySource {
    let r: ImageRef = format!("{}/{repo_tag}", server.host()).parse().unwrap();
    RegistrySource::connect(&r, o).unwrap()
}

// ---------------------------------------------------------------- env for auth tests

static ENV_LOCK: Mutex<()> = Mutex::new(());

/// Points every credential location into a temp dir (restored on drop).
pub(super) struct AuthEnv {
    _lock: MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
    saved: Vec<(&'static str, Option<OsString>)>,
}

impl AuthEnv {
    pub(super) fn new(auth_json: Option<serde_json::Value>) -> AuthEnv {
        let lock = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let mut saved = Vec::new();
        for k in [
            "REGISTRY_AUTH_FILE",
            "XDG_RUNTIME_DIR",
            "DOCKER_CONFIG",
            "PATH",
        ] {
            saved.push((k, std::env::var_os(k)));
        }
        let auth = dir.path().join("auth.json");
        if let Some(j) = auth_json {
            std::fs::write(&auth, serde_json::to_vec(&j).unwrap()).unwrap();
        }
        std::env::set_var("REGISTRY_AUTH_FILE", &auth);
        std::env::set_var("XDG_RUNTIME_DIR", dir.path().join("xdg"));
        std::env::set_var("DOCKER_CONFIG", dir.path().join("docker"));
        AuthEnv {
            _lock: lock,
            dir,
            saved,
        }
    }

    fn prepend_path(&self, p: &Path) {
        let old = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![p.to_path_buf()];
        paths.extend(std::env::split_paths(&old));
        std::env::set_var("PATH", std::env::join_paths(paths).unwrap());
    }
}

impl Drop for AuthEnv {
    fn drop(&mut self) {
        for (k, v) in &self.saved {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
    }
}

// ---------------------------------------------------------------- resolve

#[test]
fn resolve_index_to_amd64() {
    let img = make_image("clip/tiny");
    let server = start(img.reg.clone());
    let src = connect(&server, "clip/tiny:latest", &opts());
    let r = src.resolve().unwrap();
    assert_eq!(r.manifest_digest, img.manifest_digest);
    assert_eq!(r.manifest_raw, img.manifest_raw);
    assert_eq!(r.platform, "linux/amd64");
    assert_eq!(r.layers.len(), 2);
    assert_eq!(r.diff_ids, img.diff_ids);
    for (l, data) in r.layers.iter().zip(&img.layers) {
        assert_eq!(l.digest, Digest::of(data));
        assert_eq!(l.size, data.len() as u64);
        assert_eq!(l.media_type, LAYER_TYPE);
    }
    let reqs = server.requests();
    let manifest_reqs: Vec<_> = reqs
        .iter()
        .filter(|r| r.path.contains("/manifests/"))
        .collect();
    assert_eq!(manifest_reqs.len(), 2);
    for r in manifest_reqs {
        let accept = r.header("accept").unwrap();
        for t in [
            MEDIA_TYPE_OCI_MANIFEST,
            MEDIA_TYPE_OCI_INDEX,
            MEDIA_TYPE_DOCKER_MANIFEST,
            MEDIA_TYPE_DOCKER_LIST,
        ] {
            assert!(accept.contains(t), "Accept {accept:?} lacks {t}");
        }
    }

    // arm64 selection, pinned digest, and a platform that is not there.
    let mut o = opts();
    o.platform = Some("linux/arm64".parse().unwrap());
    let arm = connect(&server, "clip/tiny", &o).resolve().unwrap();
    assert_eq!(arm.platform, "linux/arm64");
    let pinned = connect(
        &server,
        &format!("clip/tiny@{}", img.manifest_digest),
        &opts(),
    )
    .resolve()
    .unwrap();
    assert_eq!(pinned.manifest_digest, img.manifest_digest);
    o.platform = Some("linux/s390x".parse().unwrap());
    match connect(&server, "clip/tiny", &o).resolve() {
        Err(OciError::NoMatchingPlatform { wanted, available }) => {
            assert_eq!(wanted, "linux/s390x");
            assert_eq!(available, vec!["linux/arm64", "linux/amd64"]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn fake_requires_accept_header() {
    // The fake behaves like distribution 2.8: no Accept → 404.
    let img = make_image("a/b");
    let req = Req {
        method: "GET".into(),
        path: format!("/v2/a/b/manifests/{}", img.manifest_digest),
        headers: vec![],
        body: vec![],
    };
    match img.reg.handle(&req) {
        Reply::Response { status, body, .. } => {
            assert_eq!(status, 404);
            assert!(String::from_utf8_lossy(&body).contains("accept header"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn docker_schema2_single_manifest() {
    let mut reg = FakeRegistry::new("d/s2");
    let layer = b"docker layer".to_vec();
    reg.add_blob(layer.clone());
    let config = config_json("amd64", &[Digest::of(b"d")]);
    reg.add_blob(config.clone());
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MEDIA_TYPE_DOCKER_MANIFEST,
        "config": desc("application/vnd.docker.container.image.v1+json", &config, None),
        "layers": [desc("application/vnd.docker.image.rootfs.diff.tar.gzip", &layer, None)]
    }))
    .unwrap();
    let d = reg.add_manifest(Some("v1"), MEDIA_TYPE_DOCKER_MANIFEST, m);
    let server = start(reg);
    let r = connect(&server, "d/s2:v1", &opts()).resolve().unwrap();
    assert_eq!(r.manifest_digest, d);
    assert_eq!(
        r.layers[0].media_type,
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
}

#[test]
fn manifest_digest_mismatch() {
    let mut img = make_image("a/b");
    // Serve different bytes under the amd64 manifest's digest.
    let key = img.manifest_digest.to_string();
    let tampered = [img.manifest_raw.as_slice(), b" "].concat();
    img.reg
        .manifests
        .insert(key, (MEDIA_TYPE_OCI_MANIFEST.into(), tampered));
    let server = start(img.reg);
    let e = connect(&server, "a/b", &opts()).resolve().unwrap_err();
    assert!(matches!(e, OciError::DigestMismatch { .. }), "{e:?}");

    // A pinned digest that does not match what the registry serves.
    let mut reg = FakeRegistry::new("c/d");
    let other = Digest::of(b"other");
    reg.manifests.insert(
        other.to_string(),
        (MEDIA_TYPE_OCI_MANIFEST.into(), b"{}".to_vec()),
    );
    let server = start(reg);
    let e = connect(&server, &format!("c/d@{other}"), &opts())
        .resolve()
        .unwrap_err();
    assert!(matches!(e, OciError::DigestMismatch { .. }), "{e:?}");
}

#[test]
fn config_digest_mismatch_and_diff_id_count() {
    let mut reg = FakeRegistry::new("a/b");
    let layer = b"L".to_vec();
    reg.add_blob(layer.clone());
    let config = config_json("amd64", &[]); // no diff_ids for one layer
    reg.add_blob(config.clone());
    reg.add_manifest(
        Some("short"),
        MEDIA_TYPE_OCI_MANIFEST,
        manifest_json(&config, std::slice::from_ref(&layer)),
    );
    // A manifest whose config descriptor names a blob whose bytes differ.
    let good = config_json("amd64", &[Digest::of(b"x")]);
    let m = manifest_json(&good, &[layer]);
    reg.blobs
        .insert(Digest::of(&good), b"{\"tampered\":1}".to_vec());
    reg.add_manifest(Some("tampered"), MEDIA_TYPE_OCI_MANIFEST, m);
    let server = start(reg);
    let e = connect(&server, "a/b:short", &opts())
        .resolve()
        .unwrap_err();
    assert!(matches!(e, OciError::BadManifest { .. }), "{e:?}");
    assert!(e.to_string().contains("diff_ids"), "{e}");
    let e = connect(&server, "a/b:tampered", &opts())
        .resolve()
        .unwrap_err();
    assert!(matches!(e, OciError::DigestMismatch { .. }), "{e:?}");
}

#[test]
fn malformed_manifests() {
    let mut reg = FakeRegistry::new("a/b");
    let bodies: Vec<(&str, &str, Vec<u8>)> = vec![
        ("notjson", MEDIA_TYPE_OCI_MANIFEST, b"{not json".to_vec()),
        ("empty", MEDIA_TYPE_OCI_MANIFEST, Vec::new()),
        ("nolayers", MEDIA_TYPE_OCI_MANIFEST, br#"{"schemaVersion":2,"config":{"digest":"sha256:00"}}"#.to_vec()),
        ("baddigest", MEDIA_TYPE_OCI_MANIFEST, br#"{"schemaVersion":2,"config":{"digest":"md5:1","size":1},"layers":[]}"#.to_vec()),
        ("negsize", MEDIA_TYPE_OCI_MANIFEST, format!(r#"{{"schemaVersion":2,"config":{{"digest":"{}"}},"layers":[{{"digest":"{}","size":-5}}]}}"#, Digest::of(b"c"), Digest::of(b"l")).into_bytes()),
        ("badindex", MEDIA_TYPE_OCI_INDEX, br#"{"schemaVersion":2,"manifests":7}"#.to_vec()),
        ("array", MEDIA_TYPE_OCI_MANIFEST, b"[1,2,3]".to_vec()),
    ];
    for (tag, mt, body) in &bodies {
        reg.add_manifest(Some(tag), mt, body.clone());
    }
    reg.add_manifest(
        Some("schema1"),
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        br#"{"schemaVersion":1,"fsLayers":[]}"#.to_vec(),
    );
    let server = start(reg);
    for (tag, _, _) in &bodies {
        let e = connect(&server, &format!("a/b:{tag}"), &opts())
            .resolve()
            .unwrap_err();
        assert!(matches!(e, OciError::BadManifest { .. }), "{tag}: {e:?}");
    }
    // The fake only serves schema1 if asked for it; we never are, so 404.
    let e = connect(&server, "a/b:schema1", &opts())
        .resolve()
        .unwrap_err();
    assert!(matches!(e, OciError::NotFound { .. }), "{e:?}");
}

#[test]
fn huge_manifest_is_refused() {
    let big = vec![b' '; (MAX_DOCUMENT_BYTES + 10) as usize];
    let server = serve(Arc::new(move |_r: &Req| {
        Reply::new(200, big.clone()).header("Content-Type", MEDIA_TYPE_OCI_MANIFEST)
    }));
    let e = connect(&server, "a/b", &opts()).resolve().unwrap_err();
    assert!(matches!(e, OciError::TooLarge { .. }), "{e:?}");
}

#[test]
fn unknown_repo_is_not_found() {
    let img = make_image("a/b");
    let server = start(img.reg);
    let e = connect(&server, "no/such", &opts()).resolve().unwrap_err();
    assert!(matches!(e, OciError::NotFound { .. }), "{e:?}");
    let e = connect(&server, "a/b:nosuchtag", &opts())
        .resolve()
        .unwrap_err();
    assert!(matches!(e, OciError::NotFound { .. }), "{e:?}");
    let src = connect(&server, "a/b", &opts());
    let d = Digest::of(b"missing");
    let mut buf = [0u8; 4];
    assert!(matches!(
        src.read_at(&d, 0, &mut buf),
        Err(SourceError::NotFound { .. })
    ));
    assert!(matches!(src.open(&d), Err(SourceError::NotFound { .. })));
}

// ---------------------------------------------------------------- auth

#[test]
fn unauthorized_without_credentials() {
    let _env = AuthEnv::new(None);
    let mut img = make_image("a/b");
    img.reg.auth = FakeAuth::Basic {
        user: "u".into(),
        pass: "p".into(),
    };
    let server = start(img.reg);
    match connect(&server, "a/b", &opts()).resolve() {
        Err(OciError::Unauthorized { registry, hint }) => {
            assert_eq!(registry, server.host());
            assert!(hint.contains("docker login"), "{hint}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bearer_anonymous_token() {
    let _env = AuthEnv::new(None);
    let mut img = make_image("a/b");
    img.reg.auth = FakeAuth::Bearer {
        token: "anon-token".into(),
        creds: None,
    };
    let server = start(img.reg);
    let src = connect(&server, "a/b", &opts());
    let r = src.resolve().unwrap();
    let mut buf = [0u8; 5];
    assert_eq!(src.read_at(&r.layers[0].digest, 0, &mut buf).unwrap(), 5);
    let reqs = server.requests();
    let tokens: Vec<_> = reqs
        .iter()
        .filter(|r| r.path.starts_with("/token"))
        .collect();
    assert_eq!(tokens.len(), 1, "token fetched once and cached");
    assert!(
        tokens[0].path.contains("scope=repository%3Aa%2Fb%3Apull"),
        "{}",
        tokens[0].path
    );
    assert!(tokens[0].header("authorization").is_none());
    // After the first 401 every request carries the token.
    let last = reqs.last().unwrap();
    assert_eq!(last.header("authorization"), Some("Bearer anon-token"));
}

#[test]
fn bearer_with_basic_creds_from_auth_file() {
    use base64::Engine as _;
    let img = make_image("a/b");
    let server_reg = {
        let mut r = img.reg.clone();
        r.auth = FakeAuth::Bearer {
            token: "t0k".into(),
            creds: Some(("alice".into(), "s3cret".into())),
        };
        r
    };
    let server = start(server_reg);
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    let _env = AuthEnv::new(Some(json!({"auths": {server.host(): {"auth": auth}}})));
    connect(&server, "a/b", &opts()).resolve().unwrap();
}

#[test]
fn basic_auth_from_registry_auth_file() {
    let mut img = make_image("a/b");
    img.reg.auth = FakeAuth::Basic {
        user: "bob".into(),
        pass: "hunter2".into(),
    };
    let server = start(img.reg);
    {
        let _env = AuthEnv::new(Some(json!({
            "auths": {format!("http://{}/v2/", server.host()): {"username": "bob", "password": "hunter2"}}
        })));
        connect(&server, "a/b", &opts()).resolve().unwrap();
    }
    // Wrong password: Unauthorized, and the secret appears nowhere.
    let _env = AuthEnv::new(Some(json!({
        "auths": {server.host(): {"username": "bob", "password": "wrong-pw"}}
    })));
    let e = connect(&server, "a/b", &opts()).resolve().unwrap_err();
    assert!(matches!(e, OciError::Unauthorized { .. }), "{e:?}");
    let text = format!("{e} {e:?}");
    assert!(
        !text.contains("wrong-pw") && !text.contains("hunter2"),
        "{text}"
    );
    assert!(text.contains("rejected"), "{text}");
}

#[test]
fn cred_helper_on_path() {
    let mut img = make_image("a/b");
    img.reg.auth = FakeAuth::Basic {
        user: "helper-user".into(),
        pass: "helper-secret".into(),
    };
    let server = start(img.reg);
    let env = AuthEnv::new(Some(json!({"credHelpers": {server.host(): "test"}})));
    let bin = env.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let script = bin.join("docker-credential-test");
    let host = server.host();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r server\n\
             if [ \"$server\" = \"{host}\" ]; then\n\
             echo '{{\"ServerURL\":\"{host}\",\"Username\":\"helper-user\",\"Secret\":\"helper-secret\"}}'\n\
             else echo 'credentials not found in native keychain'; exit 1; fi\n"
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    env.prepend_path(&bin);
    connect(&server, "a/b", &opts()).resolve().unwrap();
    assert!(super::auth::lookup("elsewhere:1").unwrap().is_none());
}

// ---------------------------------------------------------------- blob reads

#[test]
fn read_at_ranges() {
    let img = make_image("a/b");
    let server = start(img.reg.clone());
    let src = connect(&server, "a/b", &opts());
    let blob = &img.layers[1];
    let d = Digest::of(blob);
    let len = blob.len() as u64;
    for (off, n) in [
        (0u64, 1usize),
        (0, 4096),
        (12345, 70000),
        (len - 10, 10),
        (len - 10, 100),
    ] {
        let mut buf = vec![0u8; n];
        let got = src.read_at(&d, off, &mut buf).unwrap();
        let want = n.min((len - off) as usize);
        assert_eq!(got, want, "{off}+{n}");
        assert_eq!(&buf[..got], &blob[off as usize..off as usize + got]);
    }
    let mut buf = [0u8; 16];
    assert_eq!(src.read_at(&d, len, &mut buf).unwrap(), 0);
    match src.read_at(&d, len + 5, &mut buf) {
        Err(SourceError::OutOfRange { len: l, .. }) => assert_eq!(l, len),
        other => panic!("{other:?}"),
    }
    assert_eq!(src.read_at(&d, 0, &mut []).unwrap(), 0);
    // Several threads at once over the pool.
    let src = Arc::new(src);
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let src = src.clone();
            let blob = blob.clone();
            std::thread::spawn(move || {
                for i in 0..20u64 {
                    let off = (t * 7919 + i * 104729) % (blob.len() as u64 - 4096);
                    let mut buf = [0u8; 4096];
                    src.read_exact_at(&d, off, &mut buf).unwrap();
                    assert_eq!(&buf[..], &blob[off as usize..off as usize + 4096]);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // Keep-alive: the pool reuses connections across requests and threads.
    let requests = server.requests().len();
    let conns = server.connections.load(Ordering::SeqCst);
    assert!(requests >= 85);
    assert!(conns <= 8, "{conns} connections for {requests} requests");
}

/// A registry whose blob requests go through `fault` first (given the
/// number of blob requests so far); `None` means "answer normally".
fn faulty(
    img: &TestImage,
    fault: impl Fn(usize, &Req) -> Option<Reply> + Send + Sync + 'static,
) -> FakeServer {
    let reg = Arc::new(img.reg.clone());
    let count = AtomicUsize::new(0);
    serve(Arc::new(move |r: &Req| {
        if r.path.contains("/blobs/") {
            let n = count.fetch_add(1, Ordering::SeqCst);
            if let Some(reply) = fault(n, r) {
                return reply;
            }
        }
        reg.handle(r)
    }))
}

#[test]
fn reset_once_then_retry_succeeds() {
    let img = make_image("a/b");
    let server = faulty(&img, |n, _| (n == 0).then_some(Reply::Reset));
    let src = connect(&server, "a/b", &opts());
    let d = Digest::of(&img.layers[0]);
    let mut buf = [0u8; 100];
    assert_eq!(src.read_at(&d, 10, &mut buf).unwrap(), 100);
    assert_eq!(&buf[..], &img.layers[0][10..110]);
}

#[test]
fn server_errors_then_ok_is_retried() {
    let img = make_image("a/b");
    let server = faulty(&img, |n, _| (n < 2).then(|| Reply::new(503, "busy")));
    let src = connect(&server, "a/b", &opts());
    let d = Digest::of(&img.layers[0]);
    let mut buf = [0u8; 8];
    assert_eq!(src.read_at(&d, 0, &mut buf).unwrap(), 8);
    // Persistent 500s give up after `retries` and name the status.
    let server = faulty(&img, |_, _| Some(Reply::new(500, "broken")));
    let e = connect(&server, "a/b", &opts())
        .read_at(&d, 0, &mut buf)
        .unwrap_err();
    assert!(e.to_string().contains("500"), "{e}");
    assert_eq!(server.requests().len(), 3, "1 try + 2 retries");
}

#[test]
fn the_observer_sees_every_status_and_retry() {
    let img = make_image("a/b");
    let server = faulty(&img, |n, _| (n < 2).then(|| Reply::new(503, "busy")));
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let o = RegistryOptions {
        observer: Some(RequestObserver(Arc::new(move |e| {
            seen.lock().unwrap().push(e)
        }))),
        ..opts()
    };
    let src = connect(&server, "a/b", &o);
    let d = Digest::of(&img.layers[0]);
    let mut buf = [0u8; 8];
    assert_eq!(src.read_at(&d, 0, &mut buf).unwrap(), 8);
    let ev = events.lock().unwrap().clone();
    let count = |x: RequestEvent| ev.iter().filter(|&&e| e == x).count();
    assert_eq!(count(RequestEvent::Status(503)), 2, "{ev:?}");
    assert_eq!(count(RequestEvent::Retry), 2, "{ev:?}");
    assert_eq!(ev.last(), Some(&RequestEvent::Status(206)), "{ev:?}");
    assert_eq!(
        ev.len(),
        server.requests().len() + 2,
        "one status per request"
    );
    // A reset is a response that never came.
    events.lock().unwrap().clear();
    let server = faulty(&img, |n, _| (n == 0).then_some(Reply::Reset));
    let src = connect(&server, "a/b", &o);
    assert_eq!(src.read_at(&d, 0, &mut buf).unwrap(), 8);
    let ev = events.lock().unwrap().clone();
    assert_eq!(
        ev[..2],
        [RequestEvent::NoResponse, RequestEvent::Retry],
        "{ev:?}"
    );
}

#[test]
fn short_body_is_retried() {
    let img = make_image("a/b");
    let server = faulty(&img, |n, r| {
        (n == 0).then(|| match range_reply(r, b"0123456789") {
            Reply::Response {
                status,
                headers,
                body,
            } => Reply::Truncated {
                status,
                headers,
                body,
                send: 3,
            },
            other => other,
        })
    });
    let src = connect(&server, "a/b", &opts());
    let d = Digest::of(&img.layers[0]);
    let mut buf = [0u8; 50];
    assert_eq!(src.read_at(&d, 0, &mut buf).unwrap(), 50);
    assert_eq!(&buf[..], &img.layers[0][..50]);
}

#[test]
fn stalls_error_within_timeout() {
    let img = make_image("a/b");
    let mut o = opts();
    o.timeout = Duration::from_millis(300);
    o.retries = 1;
    let d = Digest::of(&img.layers[0]);
    for stall in [
        Reply::Stall(Duration::from_secs(30)),
        Reply::StallHeaders(Duration::from_secs(30)),
    ] {
        let stall = Mutex::new(Some(stall));
        let server = faulty(&img, move |_, _| {
            // Both attempts stall (clone the variant).
            match &*stall.lock().unwrap() {
                Some(Reply::Stall(d)) => Some(Reply::Stall(*d)),
                Some(Reply::StallHeaders(d)) => Some(Reply::StallHeaders(*d)),
                _ => None,
            }
        });
        let src = connect(&server, "a/b", &o);
        let t = Instant::now();
        let mut buf = [0u8; 8];
        let e = src.read_at(&d, 0, &mut buf).unwrap_err();
        let took = t.elapsed();
        assert!(took < Duration::from_secs(3), "took {took:?}");
        assert!(e.to_string().contains("no progress"), "{e}");
    }
}

#[test]
fn wrong_content_range_is_an_error() {
    let img = make_image("a/b");
    let server = faulty(&img, |_, _| {
        Some(Reply::new(206, b"abcd".to_vec()).header("Content-Range", "bytes 4-7/100"))
    });
    let src = connect(&server, "a/b", &opts());
    let mut buf = [0u8; 4];
    let e = src
        .read_at(&Digest::of(&img.layers[0]), 0, &mut buf)
        .unwrap_err();
    assert!(e.to_string().contains("Content-Range"), "{e}");
    assert_eq!(server.requests().len(), 1, "not retried");
}

#[test]
fn server_ignoring_range_still_works() {
    let img = make_image("a/b");
    let blob = img.layers[0].clone();
    let b2 = blob.clone();
    let server = faulty(&img, move |_, _| Some(Reply::new(200, b2.clone())));
    let src = connect(&server, "a/b", &opts());
    let mut buf = [0u8; 20];
    let d = Digest::of(&blob);
    assert_eq!(src.read_at(&d, 900, &mut buf).unwrap(), 20);
    assert_eq!(&buf[..], &blob[900..920]);
    assert_eq!(src.read_at(&d, blob.len() as u64 - 5, &mut buf).unwrap(), 5);
}

#[test]
fn redirect_drops_authorization() {
    let img = make_image("a/b");
    let blobs: HashMap<Digest, Vec<u8>> = img.reg.blobs.clone();
    let store = serve(Arc::new(move |r: &Req| {
        let d: Digest = r.path.trim_start_matches("/store/").parse().unwrap();
        range_reply(r, &blobs[&d])
    }));
    let store_host = store.host();
    let mut reg = img.reg.clone();
    reg.auth = FakeAuth::Basic {
        user: "u".into(),
        pass: "p".into(),
    };
    let reg = Arc::new(reg);
    let server = serve(Arc::new(move |r: &Req| {
        let inner = reg.handle(r);
        match (&inner, r.path.split_once("/blobs/")) {
            (
                Reply::Response {
                    status: 200 | 206, ..
                },
                Some((_, d)),
            ) => Reply::new(307, "").header("Location", &format!("http://{store_host}/store/{d}")),
            _ => inner,
        }
    }));
    let _env = AuthEnv::new(Some(
        json!({"auths": {server.host(): {"username": "u", "password": "p"}}}),
    ));
    let src = connect(&server, "a/b", &opts());
    let r = src.resolve().unwrap();
    let mut buf = [0u8; 10];
    src.read_at(&r.layers[1].digest, 100, &mut buf).unwrap();
    assert_eq!(&buf[..], &img.layers[1][100..110]);
    let store_reqs = store.requests();
    assert!(!store_reqs.is_empty());
    for q in store_reqs {
        assert!(
            q.header("authorization").is_none(),
            "auth leaked to {}",
            q.path
        );
    }
}

#[test]
fn insecure_redirect_is_refused() {
    let img = make_image("a/b");
    let server = faulty(&img, |_, _| {
        Some(Reply::new(307, "").header("Location", "http://blobs.example.com/x?sig=SECRET"))
    });
    let e = connect(&server, "a/b", &opts())
        .read_at(&Digest::of(b"x"), 0, &mut [0u8; 4])
        .unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("blobs.example.com") && !s.contains("SECRET"),
        "{s}"
    );
}

#[test]
fn open_streams_multi_mib_blob() {
    let img = make_image("a/b");
    let server = start(img.reg.clone());
    let src = connect(&server, "a/b", &opts());
    let blob = &img.layers[1];
    let mut r = src.open(&Digest::of(blob)).unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    assert_eq!(out.len(), blob.len());
    assert!(out == *blob);
    // Dropping a half-read stream and dropping the source are both fine.
    let mut r = src.open(&Digest::of(blob)).unwrap();
    let mut buf = [0u8; 1000];
    r.read_exact(&mut buf).unwrap();
    drop(src);
    r.read_exact(&mut buf).unwrap();
    drop(r);
}

#[test]
fn open_resumes_after_truncation() {
    let img = make_image("a/b");
    let blob = img.layers[1].clone();
    let server = faulty(&img, |n, _| {
        (n == 0).then(|| Reply::Truncated {
            status: 200,
            headers: vec![],
            body: vec![0u8; 5 << 20],
            send: 0,
        })
    });
    // The first attempt is truncated at 0 bytes ...
    let src = connect(&server, "a/b", &opts());
    let mut out = Vec::new();
    src.open(&Digest::of(&blob))
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    assert!(out == blob);

    // ... and here mid-body: the stream resumes with a Range request.
    let b2 = blob.clone();
    let server = faulty(&img, move |n, _| {
        (n == 0).then(|| Reply::Truncated {
            status: 200,
            headers: vec![],
            body: b2.clone(),
            send: 1 << 20,
        })
    });
    let src = connect(&server, "a/b", &opts());
    let mut out = Vec::new();
    src.open(&Digest::of(&blob))
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    assert!(out == blob);
    let reqs = server.requests();
    let resumed = reqs.iter().find(|r| r.header("range").is_some()).unwrap();
    assert_eq!(resumed.header("range"), Some("bytes=1048576-"));
}

// ---------------------------------------------------------------- layout

fn write_layout(dir: &Path, img: &TestImage, tag: &str) {
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for (d, data) in &img.reg.blobs {
        std::fs::write(blobs.join(d.hex()), data).unwrap();
    }
    for (_, raw) in img.reg.manifests.values() {
        std::fs::write(blobs.join(Digest::of(raw).hex()), raw).unwrap();
    }
    let (mt, index_raw) = &img.reg.manifests["latest"];
    let mut d = desc(mt, index_raw, None);
    d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    let other = desc(MEDIA_TYPE_OCI_MANIFEST, &img.manifest_raw, None);
    let mut other = other;
    other["annotations"] = json!({"org.opencontainers.image.ref.name": "direct"});
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [other, d]})).unwrap(),
    )
    .unwrap();
}

#[test]
fn layout_resolve_by_tag() {
    let img = make_image("a/b");
    let tmp = tempfile::tempdir().unwrap();
    write_layout(tmp.path(), &img, "latest");
    let amd64: Platform = "linux/amd64".parse().unwrap();
    let dir = tmp.path().to_str().unwrap();
    for spec in [
        dir.to_string(),
        format!("{dir}:latest"),
        format!("{dir}:direct"),
    ] {
        let (r, src) = open_layout(&spec, Some(&amd64)).unwrap();
        assert_eq!(r.manifest_digest, img.manifest_digest, "{spec}");
        assert_eq!(r.diff_ids, img.diff_ids);
        assert_eq!(r.platform, "linux/amd64");
        let d = r.layers[1].digest;
        let mut buf = [0u8; 64];
        assert_eq!(src.read_at(&d, 1000, &mut buf).unwrap(), 64);
        assert_eq!(&buf[..], &img.layers[1][1000..1064]);
        let mut all = Vec::new();
        src.open(&d).unwrap().read_to_end(&mut all).unwrap();
        assert!(all == img.layers[1]);
        assert!(matches!(
            src.read_at(&d, 1 << 30, &mut buf),
            Err(SourceError::OutOfRange { .. })
        ));
    }
    let arm: Platform = "linux/arm64".parse().unwrap();
    let (r, _) = open_layout(&format!("{dir}:latest"), Some(&arm)).unwrap();
    assert_eq!(r.platform, "linux/arm64");
    match open_layout(&format!("{dir}:nope"), Some(&amd64)) {
        Err(OciError::NotFound { what }) => assert!(what.contains("direct, latest"), "{what}"),
        other => panic!("{other:?}"),
    }
    let (_, src) = open_layout(dir, Some(&amd64)).unwrap();
    assert!(matches!(
        src.read_at(&Digest::of(b"nope"), 0, &mut [0u8; 1]),
        Err(SourceError::NotFound { .. })
    ));
}

#[test]
fn layout_missing_and_corrupt_blobs_name_the_path() {
    let img = make_image("a/b");
    let amd64: Platform = "linux/amd64".parse().unwrap();

    let tmp = tempfile::tempdir().unwrap();
    write_layout(tmp.path(), &img, "latest");
    let manifest_path = tmp
        .path()
        .join("blobs/sha256")
        .join(img.manifest_digest.hex());
    std::fs::remove_file(&manifest_path).unwrap();
    let e = open_layout(tmp.path().to_str().unwrap(), Some(&amd64)).unwrap_err();
    assert!(
        e.to_string().contains(&manifest_path.display().to_string()),
        "{e}"
    );

    let tmp = tempfile::tempdir().unwrap();
    write_layout(tmp.path(), &img, "latest");
    let manifest_path = tmp
        .path()
        .join("blobs/sha256")
        .join(img.manifest_digest.hex());
    std::fs::write(&manifest_path, b"{\"schemaVersion\":2}").unwrap();
    let e = open_layout(tmp.path().to_str().unwrap(), Some(&amd64)).unwrap_err();
    assert!(matches!(e, OciError::Layout { .. }), "{e:?}");
    assert!(
        e.to_string().contains(&manifest_path.display().to_string()),
        "{e}"
    );
    assert!(e.to_string().contains("digest mismatch"), "{e}");

    let tmp = tempfile::tempdir().unwrap();
    let e = open_layout(tmp.path().to_str().unwrap(), None).unwrap_err();
    assert!(e.to_string().contains("oci-layout"), "{e}");
    std::fs::write(
        tmp.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(tmp.path().join("index.json"), b"{garbage").unwrap();
    let e = open_layout(tmp.path().to_str().unwrap(), None).unwrap_err();
    assert!(e.to_string().contains("index.json"), "{e}");
}

// ---------------------------------------------------------------- errors

#[test]
fn errors_map_to_source_errors() {
    let d = Digest::of(b"q");
    let e: SourceError = OciError::BlobNotFound {
        digest: d,
        repository: "r".into(),
    }
    .into();
    assert!(matches!(e, SourceError::NotFound { digest } if digest == d));
    let e: SourceError = OciError::Http {
        status: 502,
        url: "http://x/v2/".into(),
        detail: String::new(),
    }
    .into();
    assert!(
        matches!(e, SourceError::Remote { kind: RemoteKind::Transient, .. } if e.to_string().contains("502"))
    );
}

// ---------------------------------------------------------------- real registry

#[test]
fn real_registry_if_configured() {
    let Ok(host) = std::env::var("CLIP_TEST_REGISTRY") else {
        return crate::testutil::skip("CLIP_TEST_REGISTRY is not set (run scripts/test.sh)");
    };
    let image = std::env::var("CLIP_TEST_IMAGE").unwrap_or_else(|_| "clip/tiny:latest".into());
    let r: ImageRef = format!("{host}/{image}").parse().unwrap();
    let src = match RegistrySource::connect(&r, &RegistryOptions::default()) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    let resolved = match src.resolve() {
        Ok(x) => x,
        Err(OciError::NotFound { what }) => {
            return crate::testutil::skip(&format!("{what} is not in the test registry"));
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(resolved.layers.len(), resolved.diff_ids.len());
    let l = &resolved.layers[0];
    let mut buf = vec![0u8; 4096.min(l.size as usize)];
    src.read_exact_at(&l.digest, 0, &mut buf).unwrap();
    let mut h = crate::digest::HashingReader::new(src.open(&l.digest).unwrap());
    std::io::copy(&mut h, &mut std::io::sink()).unwrap();
    let (digest, n) = h.finish();
    assert_eq!((digest, n), (l.digest, l.size));
}
