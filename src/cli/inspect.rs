//! `clipctl inspect`: a summary of a .clip index (image, layers,
//! checkpoints, sizes), as text or JSON.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use crate::format::{Index, NodeKind};

use super::util::human;

/// Arguments of `clipctl inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The .clip index file.
    pub file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Opens the index `file` (shared with `ls`).
pub(super) fn open(file: &std::path::Path) -> Result<Index> {
    Index::open(file).with_context(|| format!("opening {}", file.display()))
}

/// Runs `clipctl inspect`.
pub fn run(args: InspectArgs) -> Result<()> {
    let idx = open(&args.file)?;
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
            "profile": idx.profile().map(|p| json!({
                "ranges": p.ranges.len(),
                "bytes": p.bytes(),
                "window_secs": p.window_secs,
            })),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
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
