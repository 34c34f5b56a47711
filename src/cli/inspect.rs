//! `clipctl inspect`: a summary of a .clip index (image, layers,
//! checkpoints, sizes), or of the index inside a .clip archive (local or in
//! S3) with the archive's layout, as text or JSON.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use crate::archive::{sniff, Archive, FileKind};
use crate::format::{Index, NodeKind};

use super::archive_io::S3Args;
use super::util::human;

/// Arguments of `clipctl inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The .clip index or archive: a file, or s3://BUCKET/KEY (archives).
    pub file: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub s3: S3Args,
}

/// The index to show, and the archive holding it if it is one (shared
/// with `ls`).
pub(super) fn open(file: &str, s3: &S3Args) -> Result<(Arc<Index>, Option<Archive>)> {
    let object = s3.open_object(file)?;
    let mut magic = [0u8; 8];
    let n = object.read_at(0, &mut magic)?;
    if sniff(&magic[..n]) == FileKind::Archive {
        let archive = Archive::open(object).with_context(|| file.to_string())?;
        return Ok((archive.index().clone(), Some(archive)));
    }
    let index =
        Index::open(std::path::Path::new(file)).with_context(|| format!("opening {file}"))?;
    Ok((Arc::new(index), None))
}

/// JSON summary of an archive's layout.
fn archive_json(a: &Archive) -> Result<serde_json::Value> {
    let layer = a.index().layer(0)?;
    Ok(json!({
        "archive_size": a.object().len(),
        "index_bytes": a.index_range().end - a.index_range().start,
        "data_offset": a.data_range().start,
        "stored_bytes": layer.compressed_size(),
        "file_bytes": layer.uncompressed_size(),
        "frames": layer.checkpoint_count(),
        "chunks": layer.chunk_count(),
    }))
}

/// Runs `clipctl inspect`.
pub fn run(args: InspectArgs) -> Result<()> {
    let (idx, archive) = open(&args.file, &args.s3)?;
    let archive = archive.as_ref().map(archive_json).transpose()?;
    let meta = idx.meta();
    let mut layers = Vec::new();
    for i in 0..idx.layer_count() {
        let l = idx.layer(i)?;
        layers.push(json!({
            "digest": l.digest().to_string(),
            "diff_id": l.diff_id().to_string(),
            "media_type": l.media_type()?,
            "kind": format!("{:?}", l.kind()),
            "compressed_size": l.compressed_size(),
            "uncompressed_size": l.uncompressed_size(),
            "checkpoints": l.checkpoint_count(),
            "chunks": l.chunk_count(),
            "chunk_size": l.chunk_size(),
            "window_bytes": l.window_bytes(),
        }));
    }
    let (mut files, mut dirs, mut links, mut other, mut bytes) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for ino in 1..=idx.inode_count() {
        let node = idx.inode(ino)?;
        match node.kind() {
            Some(NodeKind::File) => {
                files += 1;
                bytes += node.size();
            }
            Some(NodeKind::Dir) => dirs += 1,
            Some(NodeKind::Symlink) => links += 1,
            _ => other += 1,
        }
    }
    let pct = if meta.compressed_size > 0 {
        idx.file_size() as f64 * 100.0 / meta.compressed_size as f64
    } else {
        0.0
    };
    let source = meta
        .reference
        .clone()
        .or_else(|| meta.layout.clone().map(|l| format!("oci layout {l}")))
        .unwrap_or_default();
    if args.json {
        let doc = json!({
            "source": source,
            "reference": meta.reference,
            "pinned_reference": meta.pinned_reference,
            "layout": meta.layout,
            "manifest_digest": meta.manifest_digest.map(|d| d.to_string()),
            "platform": meta.platform,
            "compressed_size": meta.compressed_size,
            "span": meta.span,
            "writer": meta.writer,
            "index_size": idx.file_size(),
            "index_percent_of_compressed": pct,
            "inodes": idx.inode_count(),
            "regular_files": files,
            "directories": dirs,
            "symlinks": links,
            "other": other,
            "file_bytes": bytes,
            "layers": layers,
            "archive": archive,
            "profile": idx.profile().map(|p| json!({
                "ranges": p.ranges.len(),
                "bytes": p.bytes(),
                "window_secs": p.window_secs,
            })),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    if let Some(a) = &archive {
        let n = |k: &str| a[k].as_u64().unwrap_or(0);
        println!(
            "archive:         {}: index {}, data {} in {} frames ({} of file data)",
            human(n("archive_size")),
            human(n("index_bytes")),
            human(n("stored_bytes")),
            n("frames"),
            human(n("file_bytes")),
        );
    }
    println!("source:          {source}");
    if let Some(p) = &meta.pinned_reference {
        println!("pinned:          {p}");
    }
    println!(
        "manifest:        {}",
        meta.manifest_digest
            .map(|d| d.to_string())
            .unwrap_or_default()
    );
    println!("platform:        {}", meta.platform);
    println!(
        "index size:      {} ({:.2}% of {} compressed)",
        human(idx.file_size()),
        pct,
        human(meta.compressed_size)
    );
    println!("span:            {}", human(meta.span));
    println!(
        "tree:            {} inodes: {files} files ({}), {dirs} dirs, {links} symlinks, {other} other",
        idx.inode_count(),
        human(bytes)
    );
    if let Some(p) = idx.profile() {
        println!(
            "profile:         {} ranges, {} (embedded startup profile)",
            p.ranges.len(),
            human(p.bytes())
        );
    }
    println!("layers:");
    for (i, l) in layers.iter().enumerate() {
        println!(
            "  {i}: {} {} {} -> {}, {} checkpoints, {} chunks, windows {}",
            l["digest"].as_str().unwrap_or_default(),
            l["kind"].as_str().unwrap_or_default(),
            human(l["compressed_size"].as_u64().unwrap_or(0)),
            human(l["uncompressed_size"].as_u64().unwrap_or(0)),
            l["checkpoints"],
            l["chunks"],
            human(l["window_bytes"].as_u64().unwrap_or(0)),
        );
    }
    Ok(())
}
