//! `clipctl ls`: the merged file tree of a .clip index, or the tree of a
//! .clip archive (local or in S3), like `ls -l`.

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::format::{Index, InodeView, NodeKind};

use super::archive_io::S3Args;

/// Arguments of `clipctl ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// The .clip index or archive: a file, or s3://BUCKET/KEY (archives).
    pub file: String,
    /// Path inside the image (default: /).
    #[arg(default_value = "/")]
    pub path: String,
    /// List subdirectories recursively.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    #[command(flatten)]
    pub s3: S3Args,
}

/// `drwxr-xr-x` for a mode.
fn mode_string(mode: u32) -> String {
    let t = match mode & 0o170000 {
        0o040000 => 'd',
        0o120000 => 'l',
        0o020000 => 'c',
        0o060000 => 'b',
        0o010000 => 'p',
        0o140000 => 's',
        _ => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(t);
    let bits = [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ];
    for (i, (bit, c)) in bits.iter().enumerate() {
        let set = mode & bit != 0;
        let special = match i {
            2 => mode & 0o4000 != 0,
            5 => mode & 0o2000 != 0,
            8 => mode & 0o1000 != 0,
            _ => false,
        };
        s.push(match (special, set, i) {
            (true, true, 8) => 't',
            (true, false, 8) => 'T',
            (true, true, _) => 's',
            (true, false, _) => 'S',
            (false, true, _) => *c,
            (false, false, _) => '-',
        });
    }
    s
}

fn line(node: &InodeView<'_>, name: &str) -> Result<String> {
    let (secs, _) = node.mtime();
    let size = match node.kind() {
        Some(NodeKind::CharDev | NodeKind::BlockDev) => {
            let (ma, mi) = node.rdev();
            format!("{ma}, {mi}")
        }
        _ => node.size().to_string(),
    };
    let mut s = format!(
        "{} {:>3} {:>5} {:>5} {:>10} {:>11} {}",
        mode_string(node.mode()),
        node.nlink(),
        node.uid(),
        node.gid(),
        size,
        secs,
        name
    );
    if node.kind() == Some(NodeKind::Symlink) {
        s.push_str(" -> ");
        s.push_str(&String::from_utf8_lossy(node.link_target()?));
    }
    Ok(s)
}

/// Directory depth limit for `ls -R`: a corrupt index cannot loop forever.
const MAX_DEPTH: usize = 4096;

fn list_dir(idx: &Index, ino: u64, path: &str, recursive: bool, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        bail!("directory nesting deeper than {MAX_DEPTH} at {path}");
    }
    let mut subdirs = Vec::new();
    if recursive {
        println!("{path}:");
    }
    for entry in idx.read_dir(ino, 0)? {
        let entry = entry?;
        let name = String::from_utf8_lossy(entry.name);
        let node = idx.inode(entry.ino)?;
        println!("{}", line(&node, &name)?);
        if recursive && node.kind() == Some(NodeKind::Dir) {
            subdirs.push((
                entry.ino,
                format!("{}/{}", path.trim_end_matches('/'), name),
            ));
        }
    }
    for (child, p) in subdirs {
        println!();
        list_dir(idx, child, &p, recursive, depth + 1)?;
    }
    Ok(())
}

/// Runs `clipctl ls`.
pub fn run(args: LsArgs) -> Result<()> {
    let (idx, _) = super::inspect::open(&args.file, &args.s3)?;
    let ino = idx
        .resolve(args.path.as_bytes())?
        .with_context(|| format!("{}: no such file or directory in the image", args.path))?;
    let node = idx.inode(ino)?;
    if node.kind() == Some(NodeKind::Dir) {
        list_dir(&idx, ino, &args.path, args.recursive, 0)
    } else {
        println!("{}", line(&node, &args.path)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::mode_string;

    #[test]
    fn modes() {
        assert_eq!(mode_string(0o040755), "drwxr-xr-x");
        assert_eq!(mode_string(0o104755), "-rwsr-xr-x");
        assert_eq!(mode_string(0o041777), "drwxrwxrwt");
        assert_eq!(mode_string(0o120777), "lrwxrwxrwx");
    }
}
