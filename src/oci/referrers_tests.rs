//! Publishing and reading referrers against a writable in-process fake
//! registry: the tag schema (distribution 2.8), the referrers API, refused
//! pushes, chunked uploads, a concurrent writer, tampered and oversized
//! artifacts.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use super::artifact::fallback_tag;
use super::fake::{serve, FakeRegistry, FakeServer, Reply, Req};
use super::referrers::upload_blob;
use super::tests::AuthEnv;
use super::*;

const PROFILE: &str = "application/vnd.clip.profile.v1+json";
const INDEX_TYPE: &str = "application/vnd.clip.index.v2";

/// A registry that accepts pushes, optionally with the referrers API.
#[derive(Default)]
struct Writable {
    reg: Mutex<Option<FakeRegistry>>,
    /// Serve `GET referrers/` and answer manifest PUTs with `OCI-Subject`.
    api: bool,
    /// Refuse every write with this status.
    deny: Option<u16>,
    uploads: Mutex<HashMap<String, Vec<u8>>>,
    next_upload: AtomicUsize,
    /// The next PUT of a `sha256-` tag is replaced by another writer's.
    clobber_tag: AtomicBool,
}

fn json_reply(status: u16, v: Value) -> Reply {
    Reply::new(status, serde_json::to_vec(&v).unwrap()).header("Content-Type", "application/json")
}

impl Writable {
    fn new(api: bool, deny: Option<u16>) -> Arc<Self> {
        let mut reg = FakeRegistry::new("app");
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = reg.add_blob(config.to_vec());
        let manifest = json!({
            "schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c.to_string(), "size": config.len()},
            "layers": [],
        });
        reg.add_manifest(
            Some("latest"),
            MEDIA_TYPE_OCI_MANIFEST,
            serde_json::to_vec(&manifest).unwrap(),
        );
        Arc::new(Writable {
            reg: Mutex::new(Some(reg)),
            api,
            deny,
            ..Default::default()
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut FakeRegistry) -> T) -> T {
        f(self.reg.lock().unwrap().as_mut().unwrap())
    }

    fn manifest_raw(&self) -> Vec<u8> {
        self.with(|r| r.manifests["latest"].1.clone())
    }

    fn handle(&self, req: &Req) -> Reply {
        let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
        let rest = path.strip_prefix("/v2/app/").unwrap_or("");
        let write = !matches!(req.method.as_str(), "GET" | "HEAD");
        if let (true, Some(status)) = (write, self.deny) {
            let r = json_reply(
                status,
                json!({"errors": [{"code": "DENIED", "message": "requested access to the resource is denied"}]}),
            );
            return if status == 401 {
                r.header("WWW-Authenticate", "Basic realm=\"fake\"")
            } else {
                r
            };
        }
        match (req.method.as_str(), rest) {
            ("HEAD", r) if r.starts_with("blobs/") => {
                let d: Option<Digest> = r["blobs/".len()..].parse().ok();
                let found = d.is_some_and(|d| self.with(|reg| reg.blobs.contains_key(&d)));
                Reply::new(if found { 200 } else { 404 }, "")
            }
            ("POST", "blobs/uploads/") => {
                let n = self.next_upload.fetch_add(1, Ordering::SeqCst).to_string();
                self.uploads.lock().unwrap().insert(n.clone(), Vec::new());
                Reply::new(202, "").header(
                    "Location",
                    &format!("/v2/app/blobs/uploads/{n}?_state=s{n}"),
                )
            }
            ("PATCH", r) if r.starts_with("blobs/uploads/") => {
                let n = &r["blobs/uploads/".len()..];
                let mut up = self.uploads.lock().unwrap();
                let Some(buf) = up.get_mut(n) else {
                    return Reply::new(404, "");
                };
                let want = format!("{}-{}", buf.len(), buf.len() + req.body.len() - 1);
                assert_eq!(req.header("content-range"), Some(want.as_str()));
                buf.extend_from_slice(&req.body);
                Reply::new(202, "")
                    .header("Location", &format!("/v2/app/blobs/uploads/{n}?_state=p"))
            }
            ("PUT", r) if r.starts_with("blobs/uploads/") => {
                let n = &r["blobs/uploads/".len()..];
                let Some(mut buf) = self.uploads.lock().unwrap().remove(n) else {
                    return Reply::new(404, "");
                };
                buf.extend_from_slice(&req.body);
                let d = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("digest="))
                    .map(|d| d.replace("%3A", ":"));
                if d != Some(Digest::of(&buf).to_string()) {
                    return json_reply(400, json!({"errors": [{"code": "DIGEST_INVALID"}]}));
                }
                self.with(|reg| reg.add_blob(buf));
                Reply::new(201, "")
            }
            ("PUT", r) if r.starts_with("manifests/") => {
                self.put_manifest(&r["manifests/".len()..], req)
            }
            ("GET", r) if r.starts_with("referrers/") && self.api => {
                let subject = r["referrers/".len()..].to_string();
                let list: Vec<Value> = self.with(|reg| {
                    let mut seen = std::collections::BTreeSet::new();
                    reg.manifests
                        .iter()
                        .filter(|(k, _)| k.starts_with("sha256:"))
                        .filter_map(|(_, (_, raw))| {
                            let m: Value = serde_json::from_slice(raw).ok()?;
                            (m["subject"]["digest"] == subject.as_str()).then_some(())?;
                            let d = Digest::of(raw).to_string();
                            seen.insert(d.clone()).then(|| json!({
                                "mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": d, "size": raw.len(),
                                "artifactType": m["artifactType"], "annotations": m["annotations"],
                            }))
                        })
                        .collect()
                });
                json_reply(200, json!({"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": list}))
                    .header("Content-Type", MEDIA_TYPE_OCI_INDEX)
            }
            _ => self.with(|reg| reg.handle(req)),
        }
    }

    fn put_manifest(&self, reference: &str, req: &Req) -> Reply {
        let media_type = req.header("content-type").unwrap_or("").to_string();
        let mut body = req.body.clone();
        if reference.starts_with("sha256-") && self.clobber_tag.swap(false, Ordering::SeqCst) {
            // Another writer's index lands right after ours.
            body = serde_json::to_vec(
                &json!({"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": []}),
            )
            .unwrap();
        }
        let d = Digest::of(&body);
        self.with(|reg| {
            let tag = (!reference.starts_with("sha256:")).then_some(reference);
            reg.add_manifest(tag, &media_type, body.clone());
        });
        let mut r = Reply::new(201, "").header("Docker-Content-Digest", &d.to_string());
        if self.api {
            let m: Value = serde_json::from_slice(&req.body).unwrap_or_default();
            if let Some(s) = m["subject"]["digest"].as_str() {
                r = r.header("OCI-Subject", s);
            }
        }
        r
    }
}

fn start(w: &Arc<Writable>) -> FakeServer {
    let w = w.clone();
    serve(Arc::new(move |r: &Req| w.handle(r)))
}

fn source(server: &FakeServer) -> RegistrySource {
    let r: ImageRef = format!("{}/app:latest", server.host()).parse().unwrap();
    let opts = RegistryOptions {
        timeout: Duration::from_secs(3),
        retries: 1,
        ..Default::default()
    };
    RegistrySource::connect(&r, &opts).unwrap()
}

fn profile_artifact(n: u8) -> Artifact {
    Artifact {
        artifact_type: PROFILE.into(),
        data: format!("{{\"version\":1,\"n\":{n}}}").into_bytes(),
        title: "profile.json".into(),
        annotations: BTreeMap::from([("n".to_string(), n.to_string())]),
    }
}

fn methods(server: &FakeServer) -> Vec<String> {
    server
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path.split('?').next().unwrap()))
        .collect()
}

#[test]
fn tag_schema_without_the_api_appends_and_reads_back() {
    let w = Writable::new(false, None);
    let server = start(&w);
    let src = source(&server);
    let subject = Subject::of_manifest(&w.manifest_raw());
    let a = src.attach(&subject, profile_artifact(1)).unwrap();
    assert_eq!(a.via, ReferrersVia::TagSchema);
    let tag = fallback_tag(&subject.digest);
    assert!(methods(&server).contains(&format!("PUT /v2/app/manifests/{tag}")));
    // A second artifact is appended, the same one again (same bytes, same
    // time stamp) is not listed twice.
    let mut two = profile_artifact(2);
    two.annotations
        .insert(ANNOTATION_CREATED.into(), "2026-01-01T00:00:00.000Z".into());
    let b = src.attach(&subject, two.clone()).unwrap();
    assert_eq!(src.attach(&subject, two).unwrap().digest, b.digest);
    let (list, via) = src.referrers(&subject.digest, Some(PROFILE)).unwrap();
    assert_eq!(via, ReferrersVia::TagSchema);
    let digests: Vec<Digest> = list.iter().map(|r| r.digest).collect();
    assert_eq!(digests, vec![a.digest, b.digest]);
    assert_eq!(list[1].annotations["n"], "2");
    assert!(list[1].created().is_some());
    assert!(src
        .referrers(&subject.digest, Some(INDEX_TYPE))
        .unwrap()
        .0
        .is_empty());
    // The blob is only uploaded once (HEAD finds it the second time).
    let puts = methods(&server)
        .iter()
        .filter(|m| m.starts_with("PUT /v2/app/blobs/uploads/"))
        .count();
    assert_eq!(puts, 3, "{:?}", methods(&server));
    let got = src
        .fetch_artifact(&list[1], PROFILE, &subject.digest, 1 << 20)
        .unwrap();
    assert_eq!(got.data, profile_artifact(2).data);
}

#[test]
fn referrers_api_when_the_registry_processes_the_subject() {
    let w = Writable::new(true, None);
    let server = start(&w);
    let src = source(&server);
    let subject = Subject::of_manifest(&w.manifest_raw());
    let a = src.attach(&subject, profile_artifact(7)).unwrap();
    assert_eq!(a.via, ReferrersVia::Api);
    assert!(!methods(&server)
        .iter()
        .any(|m| m.contains("manifests/sha256-")));
    let (list, via) = src.referrers(&subject.digest, None).unwrap();
    assert_eq!(via, ReferrersVia::Api);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].artifact_type, PROFILE);
    assert_eq!(list[0].annotations["n"], "7");
}

#[test]
fn a_refused_push_names_the_missing_access() {
    let _env = AuthEnv::new(None);
    for status in [401, 403] {
        let w = Writable::new(false, Some(status));
        let server = start(&w);
        let src = source(&server);
        let subject = Subject::of_manifest(&w.manifest_raw());
        let e = src.attach(&subject, profile_artifact(1)).unwrap_err();
        assert_eq!(
            e.remote_kind(),
            crate::source::RemoteKind::Unauthorized,
            "{e}"
        );
        let msg = e.to_string();
        if status == 403 {
            assert!(msg.contains("no push access to app"), "{msg}");
        } else {
            assert!(msg.contains("no credentials"), "{msg}");
        }
        // Reading still works.
        assert!(src.referrers(&subject.digest, None).unwrap().0.is_empty());
    }
}

#[test]
fn big_blobs_go_up_in_chunks() {
    let w = Writable::new(false, None);
    let server = start(&w);
    let src = source(&server);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let d = src
        .block_on(upload_blob(
            src.client(),
            Bytes::from(data.clone()),
            64 << 10,
        ))
        .unwrap()
        .unwrap();
    assert_eq!(d, Digest::of(&data));
    assert_eq!(w.with(|r| r.blobs[&d].clone()), data);
    let patches = methods(&server)
        .iter()
        .filter(|m| m.starts_with("PATCH"))
        .count();
    assert_eq!(patches, 4, "{:?}", methods(&server));
}

#[test]
fn a_concurrent_writer_is_noticed_and_our_entry_added_again() {
    let w = Writable::new(false, None);
    w.clobber_tag.store(true, Ordering::SeqCst);
    let server = start(&w);
    let src = source(&server);
    let subject = Subject::of_manifest(&w.manifest_raw());
    let a = src.attach(&subject, profile_artifact(3)).unwrap();
    let (list, _) = src.referrers(&subject.digest, None).unwrap();
    assert_eq!(
        list.iter().map(|r| r.digest).collect::<Vec<_>>(),
        vec![a.digest]
    );
    let tag_puts = methods(&server)
        .iter()
        .filter(|m| m.contains("PUT /v2/app/manifests/sha256-"))
        .count();
    assert_eq!(tag_puts, 2);
}

#[test]
fn tampered_foreign_and_oversized_artifacts_are_refused() {
    let w = Writable::new(false, None);
    let server = start(&w);
    let src = source(&server);
    let subject = Subject::of_manifest(&w.manifest_raw());
    src.attach(&subject, profile_artifact(4)).unwrap();
    let (list, _) = src.referrers(&subject.digest, None).unwrap();
    // Oversized: refused before the blob is downloaded.
    let before = server.requests().len();
    let e = src
        .fetch_artifact(&list[0], PROFILE, &subject.digest, 4)
        .unwrap_err();
    assert!(matches!(e, OciError::TooLarge { .. }), "{e}");
    assert!(!server.requests()[before..]
        .iter()
        .any(|r| r.path.contains("/blobs/")));
    // Foreign: asked for as another image's artifact, or of another type.
    let other = Digest::of(b"another image");
    let e = src
        .fetch_artifact(&list[0], PROFILE, &other, 1 << 20)
        .unwrap_err();
    assert!(e.to_string().contains("not the image"), "{e}");
    let e = src
        .fetch_artifact(&list[0], INDEX_TYPE, &subject.digest, 1 << 20)
        .unwrap_err();
    assert!(e.to_string().contains("artifactType"), "{e}");
    // Tampered: the stored blob's bytes changed under its digest.
    let layer = Digest::of(&profile_artifact(4).data);
    w.with(|r| r.blobs.insert(layer, b"{\"version\":1,\"n\":5}".to_vec()));
    let e = src
        .fetch_artifact(&list[0], PROFILE, &subject.digest, 1 << 20)
        .unwrap_err();
    assert!(matches!(e, OciError::DigestMismatch { .. }), "{e}");
    // A listed manifest whose bytes changed.
    let mut forged = list[0].clone();
    forged.digest = Digest::of(b"forged");
    w.with(|r| {
        let raw = r.manifests[&list[0].digest.to_string()].clone();
        r.manifests.insert(forged.digest.to_string(), raw);
    });
    let e = src
        .fetch_artifact(&forged, PROFILE, &subject.digest, 1 << 20)
        .unwrap_err();
    assert!(matches!(e, OciError::DigestMismatch { .. }), "{e}");
}
