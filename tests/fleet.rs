//! The fleet learns once (issue 9): indexes and startup profiles published
//! in the registry as OCI artifacts attached to the image, against the real
//! registry (distribution 2.8: the referrers tag schema), real FUSE and
//! runc. Each test works on a private copy of a test image, so what it
//! attaches is its own. Faults (no push access, a blob changed in transit)
//! come from a proxy in front of the real registry (tests/common/proxy.rs).

use std::path::Path;
use std::time::{Duration, Instant};

use clip::node::{ARTIFACT_TYPE_INDEX, ARTIFACT_TYPE_PROFILE};
use clip::oci::{
    Artifact, ImageRef, Referrer, ReferrersVia, RegistryOptions, RegistrySource, Subject,
};
use clip::Digest;

use crate::common::proxy::{Faults, Proxy};
use crate::common::{self, run, stderr, Dirs};
use crate::mount::{import_numpy, wait_for_replay};

fn source(reference: &str) -> RegistrySource {
    let r: ImageRef = reference.parse().unwrap();
    RegistrySource::connect(&r, &RegistryOptions::default()).unwrap()
}

/// What is attached to the image `reference` names, and how it is listed.
fn published(reference: &str) -> (Vec<Referrer>, ReferrersVia) {
    let src = source(reference);
    let image = src.resolve().unwrap();
    src.referrers(&image.manifest_digest, None).unwrap()
}

fn of_type(list: &[Referrer], t: &str) -> Vec<Digest> {
    list.iter()
        .filter(|r| r.artifact_type == t)
        .map(|r| r.digest)
        .collect()
}

/// `reference` with its registry replaced by `host`.
fn via_host(reference: &str, host: &str) -> String {
    let (_, rest) = reference.split_once('/').unwrap();
    format!("{host}/{rest}")
}

/// `clipctl index --image reference --out out [extra…]`: its output.
fn index(reference: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "index",
        "--image",
        reference,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// The index file a node keeps for its one image.
fn node_index(d: &Dirs) -> Vec<u8> {
    let file = std::fs::read_dir(d.node_dir().join("indexes"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "clip"))
        .unwrap();
    std::fs::read(file).unwrap()
}

fn unmount_all(d: &mut Dirs) {
    for cid in std::mem::take(&mut d.cids) {
        let o = d.umount(&cid);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert!(d.mounts_left().is_empty(), "{}", d.explain());
}

#[test]
fn privileged_a_published_index_is_pulled_and_checked() {
    let Some(reg) = common::privileged_registry() else {
        return;
    };
    let copy = common::private_copy(&reg, "tiny");
    let image = copy.reference.clone();
    let mut d = Dirs::new();

    // Nothing published yet: --index pull says so and mounts nothing.
    let err = d
        .mount("none", &["--image", &image, "--index", "pull"])
        .unwrap_err();
    assert!(
        err.contains("no usable index") && err.contains(ARTIFACT_TYPE_INDEX),
        "{err}"
    );
    assert!(!d.run_dir().join("none").exists());

    // Published with a span no node would choose, so a pulled index is
    // told apart from one built on the node by its bytes.
    let pushed = d.tmp.path().join("pushed.clip");
    let o = index(&image, &pushed, &["--span", "128K", "--push"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("published as artifact") && out.contains("tag schema"),
        "{out}"
    );
    let (list, via) = published(&image);
    assert_eq!(via, ReferrersVia::TagSchema);
    let genuine = of_type(&list, ARTIFACT_TYPE_INDEX);
    assert_eq!(genuine.len(), 1, "{list:?}");

    // A fresh node pulls it instead of indexing the image.
    let mut a = Dirs::new();
    let rootfs = a
        .mount("a", &["--image", &image, "--index", "pull"])
        .unwrap();
    assert_eq!(
        std::fs::read(rootfs.join("hello.txt")).unwrap(),
        b"hello again\n"
    );
    assert_eq!(node_index(&a), std::fs::read(&pushed).unwrap());
    let ps = a.ps();
    assert_eq!(ps[0]["provenance"]["index"]["from"], "pulled", "{ps}");
    assert_eq!(
        ps[0]["provenance"]["index"]["artifact"],
        genuine[0].to_string()
    );
    unmount_all(&mut a);

    // A valid index of ANOTHER image attached as this one's (the newest):
    // refused with its reason, and the genuine one is used.
    let layout = d.tmp.path().join("other-layout");
    common::write_layout(&layout, &[common::gzip_layer(&common::small_tar())], None);
    let other = d.tmp.path().join("other.clip");
    let o = run(&[
        "index",
        "--layout",
        layout.to_str().unwrap(),
        "--out",
        other.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let src = source(&image);
    let resolved = src.resolve().unwrap();
    let foreign = src
        .attach(
            &Subject::of_manifest(&resolved.manifest_raw),
            Artifact {
                artifact_type: ARTIFACT_TYPE_INDEX.to_string(),
                data: std::fs::read(&other).unwrap(),
                title: "image.clip".into(),
                annotations: Default::default(),
            },
        )
        .unwrap();
    // Appended to the tag schema, not written over it.
    let (list, _) = published(&image);
    assert_eq!(
        of_type(&list, ARTIFACT_TYPE_INDEX),
        vec![genuine[0], foreign.digest]
    );
    let mut b = Dirs::new();
    let o = b.mount_output("b", &["--image", &image, "--index", "pull"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("artifact {} refused", foreign.digest))
            && err.contains("it describes image"),
        "{err}"
    );
    assert_eq!(
        b.ps()[0]["provenance"]["index"]["artifact"],
        genuine[0].to_string()
    );
    unmount_all(&mut b);

    // The genuine index's blob changed in transit: a digest error. With
    // --index pull nothing is left to use; with auto the node builds its own.
    let layer = Digest::of(&std::fs::read(&pushed).unwrap());
    let proxy = Proxy::start(
        &reg,
        Faults {
            corrupt_blob: Some(layer.to_string()),
            ..Default::default()
        },
    );
    let tampered = via_host(&image, proxy.host());
    let mut c = Dirs::new();
    let err = c
        .mount("c", &["--image", &tampered, "--index", "pull"])
        .unwrap_err();
    assert!(
        err.contains("digest mismatch") && err.contains("no usable index"),
        "{err}"
    );
    let o = c.mount_output("c", &["--image", &tampered]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("digest mismatch"), "{}", stderr(&o));
    assert_eq!(c.ps()[0]["provenance"]["index"]["from"], "built");
    assert_ne!(node_index(&c), std::fs::read(&pushed).unwrap());
    let rootfs = c.ps()[0]["rootfs"].as_str().unwrap().to_string();
    assert_eq!(
        std::fs::read(Path::new(&rootfs).join("hello.txt")).unwrap(),
        b"hello again\n"
    );
    unmount_all(&mut c);
    unmount_all(&mut d);
}

#[test]
fn privileged_two_nodes_share_a_startup_profile() {
    let Some(reg) = common::privileged_registry() else {
        return;
    };
    let copy = common::private_copy(&reg, "python");
    let image = copy.reference.clone();
    let tmp = common::tempdir();
    let o = index(&image, &tmp.path().join("python.clip"), &["--push"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Node A: pulls the index, records its first start, publishes the
    // profile when the container is gone.
    let mut a = Dirs::new();
    let rootfs = a
        .mount(
            "a",
            &["--image", &image, "--profile-push", "--disk-cache", "0"],
        )
        .unwrap();
    assert_eq!(
        a.ps()[0]["provenance"]["profile_pulled"],
        serde_json::Value::Null
    );
    import_numpy(&rootfs);
    unmount_all(&mut a);
    let (list, _) = published(&image);
    let profiles = of_type(&list, ARTIFACT_TYPE_PROFILE);
    assert_eq!(profiles.len(), 1, "{list:?}");
    assert_eq!(of_type(&list, ARTIFACT_TYPE_INDEX).len(), 1, "{list:?}");

    // Node B's first start: the published profile is replayed before the
    // container runs (more than 1 MiB fetched ahead of any reader).
    let mut b = Dirs::new();
    let rootfs = b
        .mount("b", &["--image", &image, "--disk-cache", "0"])
        .unwrap();
    let ps = b.ps();
    assert_eq!(
        ps[0]["provenance"]["profile_pulled"],
        profiles[0].to_string(),
        "{ps}"
    );
    assert_eq!(ps[0]["provenance"]["index"]["from"], "pulled", "{ps}");
    wait_for_replay(&b, "b");
    import_numpy(&rootfs);
    let log =
        std::fs::read_to_string(Path::new(ps[0]["image_dir"].as_str().unwrap()).join("daemon.log"))
            .unwrap();
    assert!(log.contains("replaying the startup profile"), "{log}");
    unmount_all(&mut b);
    // B's run fits the profile and B was not asked to publish: still one.
    let (list, _) = published(&image);
    assert_eq!(of_type(&list, ARTIFACT_TYPE_PROFILE), profiles);
}

#[test]
fn privileged_a_node_without_push_access_logs_one_line_and_goes_on() {
    let Some(reg) = common::privileged_registry() else {
        return;
    };
    let copy = common::private_copy(&reg, "tiny");
    let image = copy.reference.clone();
    let proxy = Proxy::start(
        &reg,
        Faults {
            refuse_writes: true,
            ..Default::default()
        },
    );
    let pull_only = via_host(&image, proxy.host());
    let mut d = Dirs::new();

    // index --push: the index is written, the push fails naming why.
    let out = d.tmp.path().join("t.clip");
    let o = index(&pull_only, &out, &["--push"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("was written but not published") && err.contains("no credentials"),
        "{err}"
    );
    assert!(out.exists());

    // A mount that records and may not publish: one log line, the mount
    // serves on and the profile stays on the node.
    let rootfs = d
        .mount(
            "t",
            &[
                "--image",
                &pull_only,
                "--profile-push",
                "--profile-window",
                "1",
            ],
        )
        .unwrap();
    assert_eq!(
        std::fs::read(rootfs.join("hello.txt")).unwrap(),
        b"hello again\n"
    );
    let log_path = Path::new(d.ps()[0]["image_dir"].as_str().unwrap()).join("daemon.log");
    let t = Instant::now();
    let lines = loop {
        let log = std::fs::read_to_string(&log_path).unwrap();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("cannot publish"))
            .map(str::to_string)
            .collect();
        if !lines.is_empty() {
            break lines;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{log}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("no credentials"), "{}", lines[0]);
    assert!(std::fs::read(rootfs.join("random-3MiB.bin")).unwrap().len() == 3 << 20);
    let profiles = std::fs::read_dir(d.node_dir().join("profiles"))
        .unwrap()
        .count();
    assert_eq!(profiles, 1);
    unmount_all(&mut d);
    assert!(published(&image).0.is_empty());
}
