//! clipctl as a subprocess: index/inspect/ls on OCI layouts made here, and
//! bad input: one line naming the cause, a non-zero exit, no partial output.

use crate::common::{self, gzip_layer, run, small_tar, stderr, write_layout};
use crate::require;

fn assert_fails_cleanly(args: &[&str], needle: &str) -> String {
    let out = run(args);
    let err = stderr(&out);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in {err:?}"
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn index_inspect_ls_from_layout() {
    let tmp = common::tempdir();
    let layout = tmp.path().join("img");
    write_layout(&layout, &[gzip_layer(&small_tar())], None);
    let out = tmp.path().join("img.clip");
    let spec = format!("{}:latest", layout.display());
    let o = run(&[
        "index",
        "--layout",
        &spec,
        "--out",
        out.to_str().unwrap(),
        "--span",
        "64K",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["inspect", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["layers"].as_array().unwrap().len(), 1);
    assert_eq!(doc["regular_files"], 3);
    assert!(doc["layers"][0]["checkpoints"].as_u64().unwrap() >= 2);
    let o = run(&["ls", out.to_str().unwrap(), "/"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("link -> hello.txt"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("-rw-r--r--   2") && l.ends_with("hello.txt")),
        "{text}"
    );
    let o = run(&["ls", out.to_str().unwrap(), "/nope"]);
    assert!(!o.status.success());
}

#[test]
fn digest_mismatch_truncated_blob_and_bad_manifest_write_nothing() {
    let tmp = common::tempdir();
    let out = tmp.path().join("out.clip");
    let out_s = out.to_str().unwrap();

    // A layer blob whose bytes do not match its digest.
    let layout = tmp.path().join("flipped");
    let layer = gzip_layer(&small_tar());
    write_layout(&layout, std::slice::from_ref(&layer), None);
    let digest = common::put_blob(&tmp.path().join("scratch"), &layer.blob);
    let blob_path = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob_path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&blob_path, &bytes).unwrap();
    let spec = format!("{}:latest", layout.display());
    assert_fails_cleanly(&["index", "--layout", &spec, "--out", out_s], "layer");
    assert!(!out.exists());

    // A truncated layer blob.
    bytes[mid] ^= 0x40;
    bytes.truncate(mid);
    std::fs::write(&blob_path, &bytes).unwrap();
    assert_fails_cleanly(&["index", "--layout", &spec, "--out", out_s], "layer");
    assert!(!out.exists());

    // A manifest that is not a manifest.
    let layout = tmp.path().join("badmanifest");
    write_layout(
        &layout,
        &[gzip_layer(&small_tar())],
        Some(b"{\"schemaVersion\": 2, \"layers\": 7}"),
    );
    let spec = format!("{}:latest", layout.display());
    assert_fails_cleanly(&["index", "--layout", &spec, "--out", out_s], "manifest");
    assert!(!out.exists());

    // An unsupported layer media type.
    let layout = tmp.path().join("mediatype");
    let mut l = gzip_layer(&small_tar());
    l.media_type = "application/vnd.example.layer.v1.tar+lz4".into();
    write_layout(&layout, &[l], None);
    let spec = format!("{}:latest", layout.display());
    assert_fails_cleanly(&["index", "--layout", &spec, "--out", out_s], "media type");
    assert!(!out.exists());
    // Nothing at all was left in the output directory (no temp files either).
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("clip"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn corrupt_index_files_are_named_errors() {
    let tmp = common::tempdir();
    let layout = tmp.path().join("img");
    write_layout(&layout, &[gzip_layer(&small_tar())], None);
    let good = tmp.path().join("good.clip");
    let spec = format!("{}:latest", layout.display());
    assert!(
        run(&["index", "--layout", &spec, "--out", good.to_str().unwrap()])
            .status
            .success()
    );
    let bytes = std::fs::read(&good).unwrap();

    let bad = tmp.path().join("bad.clip");
    let bad_s = bad.to_str().unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails_cleanly(&["inspect", bad_s], "truncated");
    let mut flipped = bytes.clone();
    flipped[100] ^= 1;
    std::fs::write(&bad, &flipped).unwrap();
    assert_fails_cleanly(&["inspect", bad_s], "corrupt");
    std::fs::write(&bad, b"not an index at all, just text").unwrap();
    assert_fails_cleanly(&["ls", bad_s], "not a clip index");
    assert_fails_cleanly(&["inspect", "/nonexistent/x.clip"], "/nonexistent/x.clip");
}

#[test]
fn unreachable_registry_and_unknown_images() {
    let tmp = common::tempdir();
    let out = tmp.path().join("o.clip");
    let out_s = out.to_str().unwrap();
    // Nothing listens on port 1.
    assert_fails_cleanly(
        &[
            "index",
            "--image",
            "127.0.0.1:1/clip/tiny:latest",
            "--out",
            out_s,
        ],
        "127.0.0.1:1",
    );
    assert_fails_cleanly(
        &["index", "--image", "not a reference!", "--out", out_s],
        "reference",
    );
    let reg = require!(
        common::registry(),
        "CLIP_TEST_REGISTRY not set (run scripts/test.sh)"
    );
    let unknown_repo = format!("{reg}/clip/does-not-exist:latest");
    assert_fails_cleanly(
        &["index", "--image", &unknown_repo, "--out", out_s],
        "not found",
    );
    let unknown_tag = format!("{reg}/clip/tiny:no-such-tag");
    assert_fails_cleanly(
        &["index", "--image", &unknown_tag, "--out", out_s],
        "not found",
    );
    assert!(!out.exists());
}

#[test]
fn zstd_layers_index_by_frames() {
    let tar = small_tar();
    let diff_id = gzip_layer(&tar).diff_id;
    let layer = |blob: Vec<u8>| common::TestLayer {
        media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
        blob,
        diff_id: diff_id.clone(),
    };
    // Four independent frames and a skippable frame between two of them.
    let mut frames = Vec::new();
    for (i, part) in tar.chunks(tar.len().div_ceil(4)).enumerate() {
        if i == 2 {
            frames.extend(0x184D_2A5Au32.to_le_bytes());
            frames.extend(3u32.to_le_bytes());
            frames.extend(b"pad");
        }
        frames.extend(zstd::bulk::compress(part, 3).unwrap());
    }
    let single = zstd::bulk::compress(&tar, 3).unwrap();
    let mut corrupt = frames.clone();
    corrupt.truncate(frames.len() - 100);
    let tmp = common::tempdir();
    let index = |name: &str, blob: Vec<u8>| {
        let layout = tmp.path().join(name);
        write_layout(&layout, &[layer(blob)], None);
        let out = tmp.path().join(format!("{name}.clip"));
        let spec = format!("{}:latest", layout.display());
        let args = ["index", "--layout", &spec, "--out", out.to_str().unwrap()];
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        (args, out)
    };
    for (name, blob, kind, min_cps) in [
        ("frames", frames, "ZstdFrames", 3),
        ("single", single, "ZstdWhole", 1),
    ] {
        let (mut args, out) = index(name, blob);
        args.extend(["--span".to_string(), "512K".to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run(&args);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let o = run(&["inspect", out.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let l = &doc["layers"][0];
        assert_eq!(l["kind"], kind, "{name}: {l}");
        assert!(l["checkpoints"].as_u64().unwrap() >= min_cps, "{name}: {l}");
        assert_eq!(doc["regular_files"], 3, "{name}");
    }
    let digest = common::put_blob(&tmp.path().join("scratch"), &corrupt);
    let (args, _) = index("corrupt", corrupt);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_fails_cleanly(&args, &digest);
}

#[test]
fn index_embeds_a_startup_profile_that_fits_the_image() {
    let tmp = common::tempdir();
    let layout = tmp.path().join("img");
    write_layout(&layout, &[gzip_layer(&small_tar())], None);
    let spec = format!("{}:latest", layout.display());
    let plain = tmp.path().join("plain.clip");
    let o = run(&["index", "--layout", &spec, "--out", plain.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let inspect = |f: &std::path::Path| -> serde_json::Value {
        let o = run(&["inspect", f.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let doc = inspect(&plain);
    assert!(doc["profile"].is_null(), "{doc}");
    let layer = doc["layers"][0]["digest"].as_str().unwrap().to_string();
    let manifest = doc["manifest_digest"].as_str().unwrap().to_string();
    let other = format!("sha256:{}", "ab".repeat(32));
    let profile = |manifest: &str, layer: &str| {
        format!(
            r#"{{"version":1,"manifest":"{manifest}","window_secs":30,
                "ranges":[{{"layer":"{layer}","offset":0,"len":4096}}]}}"#
        )
    };
    let p = tmp.path().join("p.json");
    let out = tmp.path().join("with.clip");
    let index_with = || {
        vec![
            "index".to_string(),
            "--layout".into(),
            spec.clone(),
            "--out".into(),
            out.to_str().unwrap().into(),
            "--profile".into(),
            p.to_str().unwrap().into(),
        ]
    };
    // Recorded on another image, or naming none of its layers: refused,
    // nothing written.
    for (m, l, why) in [
        (&other, &layer, "recorded for image"),
        (&manifest, &other, "names none of the image's layers"),
    ] {
        std::fs::write(&p, profile(m, l)).unwrap();
        let args = index_with();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_fails_cleanly(&args, why);
        assert!(!out.exists());
    }
    std::fs::write(&p, "garbage").unwrap();
    let args = index_with();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_fails_cleanly(&args, "not a clip access profile");
    // A fitting one is embedded and shown.
    std::fs::write(&p, profile(&manifest, &layer)).unwrap();
    let o = run(&index_with().iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let doc = inspect(&out);
    assert_eq!(doc["profile"]["ranges"], 1, "{doc}");
    assert_eq!(doc["profile"]["bytes"], 4096, "{doc}");
    let o = run(&["inspect", out.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("embedded startup profile"));
}
