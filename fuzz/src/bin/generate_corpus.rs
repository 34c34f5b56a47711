//! Writes seed corpora for the fuzz targets into `<CORPUS>/<target>/`.
//!
//! Usage: `generate_corpus CORPUS [EXTRA]...` where each EXTRA is either a
//! `.clip` index file (copied as a `format_open` seed) or an OCI layout
//! directory (its gzip blobs become `gzip_index` seeds and their tars
//! `tar_entries` seeds); `archive_open` gets archives made here by the
//! library. Seeds are capped at 1 MiB (big ones are truncated,
//! big `.clip` files skipped: a truncated index is only a header check).
//! Run via `cargo run --features gen --bin generate_corpus` (see
//! `scripts/fuzz-smoke.sh`). The sparse-file `tar_entries` seeds are
//! written by GNU tar itself, one per sparse dialect.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clip::format::{
    write_index, AccessProfile, Checkpoint, Chunk, DataRef, FileHint, ImageMeta, IndexData, Layer,
    LayerKind, Node, NodeKind, ProfileRange, SparseSegment, Tree, WriteOptions, PROFILE_VERSION,
};
use clip::gzip::{IndexerConfig, ZranReader};
use clip::Digest;
use clip_fuzz::invariants::{pad_to_block, pax_record, tar_header};
use flate2::{Compression, GzBuilder};

const MAX_SEED: usize = 1 << 20;

struct Out {
    dir: PathBuf,
    count: usize,
}

impl Out {
    fn new(corpus: &Path, target: &str) -> Out {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir).expect("create corpus dir");
        Out { dir, count: 0 }
    }
    fn put(&mut self, name: &str, bytes: &[u8]) {
        let bytes = &bytes[..bytes.len().min(MAX_SEED)];
        fs::write(self.dir.join(format!("seed-{name}")), bytes).expect("write seed");
        self.count += 1;
    }
}

fn gzip(members: &[&[u8]], level: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members {
        let mut e = flate2::write::GzEncoder::new(&mut out, Compression::new(level));
        e.write_all(m).unwrap();
        e.finish().unwrap();
    }
    out
}

/// Mixed, moderately compressible text (deterministic).
fn text(n: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 61 == 60 {
                b'\n'
            } else {
                b"etaoin shrdlu cmfwyp vbgkqj xz"[(x % 30) as usize]
            }
        })
        .collect()
}

fn gzip_seeds(out: &mut Out) {
    let t = text(40_000);
    out.put("empty-member", &gzip(&[b""], 6));
    for level in [0, 1, 9] {
        out.put(&format!("one-l{level}"), &gzip(&[&t[..5000]], level));
        out.put(
            &format!("three-l{level}"),
            &gzip(&[&t[..3000], b"", &t[3000..20000]], level),
        );
    }
    out.put("big-l6", &gzip(&[&t], 6));
    let mut padded = gzip(&[&t[..2000], &t[2000..4000]], 6);
    padded.extend_from_slice(&[0; 100]);
    out.put("zero-padding", &padded);
    // Optional header fields: FNAME, FCOMMENT, FEXTRA (FHCRC via the flag below).
    let mut h = Vec::new();
    let mut e = GzBuilder::new()
        .filename("layer.tar")
        .comment("seed")
        .extra(vec![1, 2, 3, 4])
        .mtime(1_700_000_000)
        .write(&mut h, Compression::new(1));
    e.write_all(&t[..1000]).unwrap();
    e.finish().unwrap();
    out.put("header-fields", &h);
    // Mode-byte inputs (no gzip magic): the target gzips the rest itself.
    for mode in [0x00u8, 0x07, 0x1b, 0x3d, 0x8e, 0xf3] {
        out.put(&format!("mode-{mode:02x}"), &[&[mode], &t[..3000]].concat());
    }
}

fn tar_seeds(out: &mut Out) {
    let mut t = Vec::new();
    let add = |t: &mut Vec<u8>, name: &[u8], flag: u8, data: &[u8], link: &[u8]| {
        t.extend_from_slice(&tar_header(name, flag, data.len() as u64, 0o755, link));
        t.extend_from_slice(data);
        pad_to_block(t);
    };
    add(&mut t, b"./", b'5', b"", b"");
    add(&mut t, b"etc/", b'5', b"", b"");
    add(&mut t, b"etc/hosts", b'0', b"127.0.0.1 localhost\n", b"");
    add(&mut t, b"etc/hosts.link", b'1', b"", b"etc/hosts");
    add(&mut t, b"etc/sym", b'2', b"", b"../usr/lib/os-release");
    add(&mut t, b"dev-null", b'3', b"", b"");
    add(&mut t, b"fifo", b'6', b"", b"");
    add(&mut t, b"usr/big", b'0', &text(3000), b"");
    let mut pax = Vec::new();
    pax_record(
        &mut pax,
        b"path",
        &[b"long/".repeat(30), b"name".to_vec()].concat(),
    );
    pax_record(&mut pax, b"mtime", b"1700000000.123456789");
    pax_record(&mut pax, b"SCHILY.xattr.user.k", b"v\0\n=");
    pax_record(&mut pax, b"uid", b"100000");
    add(&mut t, b"PaxHeaders/x", b'x', &pax, b"");
    add(&mut t, b"short", b'0', b"pax file", b"");
    let long = [b"gnu/".repeat(40), b"long".to_vec(), vec![0]].concat();
    add(&mut t, b"././@LongLink", b'L', &long, b"");
    add(&mut t, b"gnu-trunc", b'0', b"gnu", b"");
    add(&mut t, b"g", b'g', b"9 a=bcd\n", b"");
    let mut full = t.clone();
    full.extend_from_slice(&[0; 1024]);
    out.put("handmade", &full);
    out.put("handmade-no-eof", &t);
    out.put("empty", &[0; 1024]);
    let mut one = Vec::new();
    add(&mut one, b"a", b'0', b"x", b"");
    one.extend_from_slice(&[0; 1024]);
    out.put("one-file", &one);
}

/// GNU tar archives of two small sparse files (6 runs: more than an old-GNU
/// header holds; and all hole) in each of its four sparse dialects.
fn sparse_tar_seeds(out: &mut Out) {
    use std::os::unix::fs::FileExt;
    let dir = std::env::temp_dir().join(format!("clip-fuzz-sparse-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    let f = fs::File::create(dir.join("runs")).unwrap();
    f.set_len(64 << 10).unwrap();
    for i in 0..6u64 {
        f.write_all_at(format!("run {i}").as_bytes(), i * 10_000 + 4096)
            .unwrap();
    }
    fs::File::create(dir.join("hole"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    for (name, args) in [
        ("gnu", &["--format=gnu"][..]),
        ("pax-0.0", &["--format=posix", "--sparse-version=0.0"]),
        ("pax-0.1", &["--format=posix", "--sparse-version=0.1"]),
        ("pax-1.0", &["--format=posix", "--sparse-version=1.0"]),
    ] {
        let o = std::process::Command::new("tar")
            .current_dir(&dir)
            .args(args)
            .args(["--sparse", "-cf", "-", "runs", "hole"])
            .output()
            .expect("GNU tar");
        assert!(o.status.success(), "tar {args:?}");
        out.put(&format!("sparse-{name}"), &o.stdout);
    }
    fs::remove_dir_all(&dir).ok();
}

fn index_seeds(out: &mut Out) {
    out.put(
        "root-only",
        &write_index(&IndexData::default(), WriteOptions::default()).unwrap(),
    );
    let payload = text(40_000);
    let blob = gzip(&[&payload[..25_000], &payload[25_000..]], 6);
    let mut zr = ZranReader::new(
        &blob[..],
        IndexerConfig {
            span: 16_384,
            chunk_size: 8192,
        },
    );
    std::io::copy(&mut zr, &mut std::io::sink()).unwrap();
    let z = zr.finish().unwrap();
    let layer = Layer {
        digest: Digest::from_bytes([1; 32]),
        diff_id: Digest::from_bytes([2; 32]),
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        kind: LayerKind::Gzip,
        compressed_size: z.compressed_size,
        uncompressed_size: z.uncompressed_size,
        chunk_size: 8192,
        checkpoints: z.checkpoints,
        chunks: z.chunks,
    };
    let tar_layer = Layer {
        digest: Digest::from_bytes([3; 32]),
        diff_id: Digest::from_bytes([3; 32]),
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        kind: LayerKind::Tar,
        compressed_size: 10240,
        uncompressed_size: 10240,
        chunk_size: 4096,
        checkpoints: vec![Checkpoint::default()],
        chunks: vec![Chunk::default(); 3],
    };
    let mut nodes = vec![Node::new(NodeKind::Dir)];
    let child = |nodes: &mut Vec<Node>, parent: usize, name: &str, n: Node| {
        nodes.push(n);
        let i = (nodes.len() - 1) as u32;
        nodes[parent].children.insert(name.as_bytes().to_vec(), i);
        i as usize
    };
    let etc = child(&mut nodes, 0, "etc", Node::new(NodeKind::Dir));
    let mut f = Node::new(NodeKind::File);
    f.size = 1234;
    f.data = Some(DataRef {
        layer: 0,
        offset: 512,
    });
    f.xattrs = vec![
        (b"user.a".to_vec(), b"1".to_vec()),
        (b"user.b".to_vec(), vec![]),
    ];
    let hosts = child(&mut nodes, etc, "hosts", f);
    nodes[0]
        .children
        .insert(b"hosts-link".to_vec(), hosts as u32);
    let mut s = Node::new(NodeKind::Symlink);
    s.link_target = b"etc/hosts".to_vec();
    s.size = 9;
    child(&mut nodes, 0, "link", s);
    let mut d = Node::new(NodeKind::CharDev);
    (d.rdev_major, d.rdev_minor) = (1, 3);
    child(&mut nodes, etc, "null", d);
    let usr = child(&mut nodes, 0, "usr", Node::new(NodeKind::Dir));
    // Enough inodes (> 4 KiB of records) for the zstd section path.
    // A sparse file (two runs in the tar layer) and an all-hole one.
    let mut sp = Node::new(NodeKind::File);
    sp.size = 1 << 20;
    sp.data = Some(DataRef {
        layer: 1,
        offset: 1024,
    });
    sp.sparse = Some(vec![
        SparseSegment {
            file_offset: 4096,
            len: 512,
            layer_offset: 1024,
        },
        SparseSegment {
            file_offset: 900_000,
            len: 100,
            layer_offset: 1536,
        },
    ]);
    child(&mut nodes, 0, "sparse", sp);
    let mut hole = Node::new(NodeKind::File);
    hole.size = 1 << 30;
    hole.sparse = Some(Vec::new());
    child(&mut nodes, 0, "hole", hole);
    for i in 0..120 {
        let mut f = Node::new(NodeKind::File);
        f.size = i * 100;
        f.data = (i > 0).then_some(DataRef {
            layer: 1,
            offset: i * 512,
        });
        child(&mut nodes, usr, &format!("f{i:03}"), f);
    }
    let data = IndexData {
        meta: ImageMeta {
            platform: "linux/amd64".into(),
            manifest: "{}".into(),
            config: "{}".into(),
            span: 16_384,
            ..ImageMeta::default()
        },
        profile: Some(AccessProfile {
            version: PROFILE_VERSION,
            manifest: None,
            window_secs: 30,
            ranges: vec![
                ProfileRange {
                    layer: tar_layer.digest,
                    offset: 512,
                    len: 4096,
                },
                ProfileRange {
                    layer: layer.digest,
                    offset: 0,
                    len: 65_536,
                },
            ],
        }),
        layers: vec![layer, tar_layer],
        tree: Tree { nodes },
        // A hints section (§3.10): dependencies and hot ranges of a file.
        hints: vec![FileHint {
            ino: 3,
            dependencies: vec![4],
            hot_ranges: vec![(0, 4096), (8192, 512)],
        }],
    };
    for compress in [false, true] {
        let bytes = write_index(&data, WriteOptions { compress }).unwrap();
        out.put(&format!("small-zstd{}", u8::from(compress)), &bytes);
    }
}

/// Archives of a small tree (files, an empty file, a symlink, a hard link,
/// xattr-free so any user can make it) in two frame/chunk geometries, and
/// of an empty tree: `archive_open` seeds.
fn archive_seeds(out: &mut Out) {
    use clip::archive::{create, CreateOptions, CreateProgress, Input};
    use clip::object::FileWriter;

    let dir = std::env::temp_dir().join(format!("clip-archive-seeds-{}", std::process::id()));
    let tree = dir.join("tree");
    fs::create_dir_all(tree.join("a/b")).expect("seed tree");
    fs::write(tree.join("a/hello.txt"), b"hello\n").unwrap();
    fs::write(tree.join("a/b/text.txt"), text(40_000)).unwrap();
    fs::write(tree.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("a/hello.txt", tree.join("link")).unwrap();
    fs::hard_link(tree.join("a/hello.txt"), tree.join("hard")).unwrap();
    let empty = dir.join("empty-tree");
    fs::create_dir_all(&empty).unwrap();
    let runs = [
        ("f16k-c4k", &tree, 16 << 10, 4 << 10),
        ("f64k-c16k", &tree, 64 << 10, 16 << 10),
        ("empty", &empty, 16 << 10, 4 << 10),
    ];
    for (name, root, frame_size, chunk_size) in runs {
        let opts = CreateOptions {
            frame_size,
            chunk_size,
            threads: 1,
            ..Default::default()
        };
        let input = Input::from_dir(root).expect("walk seed tree");
        let path = dir.join(format!("{name}.clip"));
        create(input, &opts, &CreateProgress::default(), |front| {
            Ok(Box::new(FileWriter::create(&path, front)?))
        })
        .expect("create seed archive");
        out.put(&format!("archive-{name}"), &fs::read(&path).unwrap());
    }
    fs::remove_dir_all(&dir).expect("remove seed dir");
}

/// The `fuse_read` fixture's index, plain and zstd-packed, with an empty
/// script and with scripts that read, look up and list on known inodes.
fn read_seeds(out: &mut Out) {
    use clip_fuzz::read_invariants::seed_input;
    let scripts: [(&str, &[u8]); 3] = [
        ("walk", b""),
        // read (op 5) of known inode 3 at 4 KiB, 64 KiB; lookup (op 0) of
        // "etc" in the root; readdirplus (op 4) of the root from cookie 2.
        (
            "ops",
            b"\x05\x03\x02\x01\x00\x00\x01\x00\x00\x00\x01\x03etc\x04\x00\x02\x00\x00\x00\x00\x00\x00\x00\x10",
        ),
        // lseek (op 8), getxattr/listxattr (op 9), a read at a huge offset.
        (
            "edges",
            b"\x08\x04\x00\x00\x10\x00\x00\x00\x00\x00\x00\x09\x02\x04user\x00\x01\x00\x00\x00\x00\x00\x00\x05\x05\x01\xff\xff\xff\xff\xff\xff\xff\x7f\x00\x10\x00\x00",
        ),
    ];
    for compress in [false, true] {
        for (name, script) in scripts {
            out.put(
                &format!("{name}-zstd{}", u8::from(compress)),
                &seed_input(compress, script),
            );
        }
    }
}

fn main() {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let corpus = args
        .next()
        .expect("usage: generate_corpus CORPUS [FILE.clip | OCI-LAYOUT]...");
    let mut fmt = Out::new(&corpus, "format_open");
    let mut tar = Out::new(&corpus, "tar_entries");
    let mut gz = Out::new(&corpus, "gzip_index");
    let mut arc = Out::new(&corpus, "archive_open");
    let mut read = Out::new(&corpus, "fuse_read");
    read_seeds(&mut read);
    archive_seeds(&mut arc);
    index_seeds(&mut fmt);
    tar_seeds(&mut tar);
    sparse_tar_seeds(&mut tar);
    gzip_seeds(&mut gz);
    for extra in args {
        let stem = extra
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if extra.is_file() {
            let bytes = fs::read(&extra).expect("read .clip");
            if bytes.len() <= MAX_SEED {
                fmt.put(&stem, &bytes);
            } else {
                eprintln!(
                    "skipping {} ({} bytes > 1 MiB)",
                    extra.display(),
                    bytes.len()
                );
            }
            continue;
        }
        let blobs: BTreeMap<_, _> = fs::read_dir(extra.join("blobs/sha256"))
            .expect("OCI layout with blobs/sha256")
            .map(|e| e.unwrap().path())
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
            .collect();
        for (name, path) in blobs {
            let blob = fs::read(&path).unwrap();
            if !blob.starts_with(&[0x1f, 0x8b]) {
                continue;
            }
            let short = &name[..12.min(name.len())];
            gz.put(&format!("{stem}-{short}"), &blob);
            let mut t = Vec::new();
            let dec = flate2::read::MultiGzDecoder::new(&blob[..]);
            dec.take(MAX_SEED as u64).read_to_end(&mut t).unwrap();
            tar.put(&format!("{stem}-{short}"), &t);
        }
    }
    for o in [&fmt, &tar, &gz, &arc, &read] {
        println!("{}: {} seeds", o.dir.display(), o.count);
    }
}
