//! Input from a directory: one walk (names sorted, symlinks never followed)
//! records the tree with every column the index keeps — modes, owners,
//! mtimes, xattrs (capabilities are the `security.capability` xattr), hard
//! links, symlink targets, device numbers — and the regular files whose
//! bytes go into the data section, in walk order. [`DirFeed`] then streams
//! those files, checking that none changed size since the walk.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::create::{DataItem, Feed, Input};
use super::ArchiveError;
use crate::format::{ImageMeta, Node, NodeKind, Tree};

/// Directories nested deeper than this are refused (a loop through bind
/// mounts, or a hostile tree).
const MAX_DEPTH: usize = 4096;

fn input_err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Input {
        path: path.to_path_buf(),
        source,
    }
}

/// Extended attributes of `path` (not following a symlink), sorted by name.
pub(crate) fn read_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut names = Vec::new();
    loop {
        let n = match rustix::fs::llistxattr_query(path) {
            Ok(n) => n,
            Err(e) if e == rustix::io::Errno::OPNOTSUPP => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Ok(Vec::new());
        }
        names.resize(n, 0);
        match rustix::fs::llistxattr(path, &mut names) {
            Ok(got) => {
                names.truncate(got);
                break;
            }
            // Grew between the two calls: ask again.
            Err(e) if e == rustix::io::Errno::RANGE => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name_os = std::ffi::OsStr::from_bytes(name);
        let mut value = Vec::new();
        loop {
            let n = match rustix::fs::lgetxattr_query(path, name_os) {
                Ok(n) => n,
                // Removed since the listing.
                Err(e) if e == rustix::io::Errno::NODATA => break,
                Err(e) => return Err(e.into()),
            };
            value.resize(n, 0);
            match rustix::fs::lgetxattr(path, name_os, &mut value) {
                Ok(got) => {
                    value.truncate(got);
                    out.push((name.to_vec(), std::mem::take(&mut value)));
                    break;
                }
                Err(e) if e == rustix::io::Errno::RANGE => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
    out.sort();
    Ok(out)
}

fn node_of(path: &Path, md: &Metadata) -> Result<Node, ArchiveError> {
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_file() {
        NodeKind::File
    } else if ft.is_symlink() {
        NodeKind::Symlink
    } else if ft.is_char_device() {
        NodeKind::CharDev
    } else if ft.is_block_device() {
        NodeKind::BlockDev
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else {
        NodeKind::Socket
    };
    let mut node = Node::new(kind);
    node.perm = md.mode() & 0o7777;
    node.uid = md.uid();
    node.gid = md.gid();
    node.mtime = md.mtime();
    node.mtime_nsec = md.mtime_nsec().clamp(0, 999_999_999) as u32;
    match kind {
        NodeKind::File => node.size = md.len(),
        NodeKind::Symlink => {
            node.link_target = fs::read_link(path)
                .map_err(input_err(path))?
                .into_os_string()
                .into_vec();
            node.size = node.link_target.len() as u64;
        }
        NodeKind::CharDev | NodeKind::BlockDev => {
            node.rdev_major = libc::major(md.rdev());
            node.rdev_minor = libc::minor(md.rdev());
        }
        _ => {}
    }
    node.xattrs = read_xattrs(path).map_err(input_err(path))?;
    Ok(node)
}

/// Walks `root` into a tree and the list of files whose bytes to store.
pub fn walk_dir(root: &Path) -> Result<Input, ArchiveError> {
    let md = fs::metadata(root).map_err(input_err(root))?;
    if !md.is_dir() {
        return Err(ArchiveError::Input {
            path: root.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let mut nodes = vec![node_of(root, &md)?];
    let mut items = Vec::new();
    let mut paths = Vec::new();
    let mut sizes = Vec::new();
    // (dev, ino) of non-directories seen with more than one link.
    let mut links: HashMap<(u64, u64), u32> = HashMap::new();
    // Depth-first, names in byte order: the data section follows `tar`'s order.
    let mut stack: Vec<(u32, PathBuf, usize)> = vec![(0, root.to_path_buf(), 0)];
    while let Some((dir, path, depth)) = stack.pop() {
        if depth >= MAX_DEPTH {
            return Err(ArchiveError::Input {
                path,
                source: io::Error::other(format!("directories nested deeper than {MAX_DEPTH}")),
            });
        }
        let mut names: Vec<_> = fs::read_dir(&path)
            .map_err(input_err(&path))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(input_err(&path))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut subdirs = Vec::new();
        for name in names {
            let child_path = path.join(&name);
            let md = fs::symlink_metadata(&child_path).map_err(input_err(&child_path))?;
            let key = (md.dev(), md.ino());
            let linked = !md.is_dir() && md.nlink() > 1;
            let idx = match links.get(&key) {
                Some(&idx) if linked => idx,
                _ => {
                    let node = node_of(&child_path, &md)?;
                    let idx = u32::try_from(nodes.len())
                        .map_err(|_| ArchiveError::TooLarge("more than 2^32 inodes"))?;
                    if node.kind == NodeKind::File && node.size > 0 {
                        items.push(DataItem {
                            node: idx,
                            size: node.size,
                        });
                        paths.push(child_path.clone());
                        sizes.push(node.size);
                    }
                    if node.kind == NodeKind::Dir {
                        subdirs.push((idx, child_path, depth + 1));
                    }
                    if linked {
                        links.insert(key, idx);
                    }
                    nodes.push(node);
                    idx
                }
            };
            nodes[dir as usize].children.insert(name.into_vec(), idx);
        }
        // Reversed so that the first name is walked first.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(Input {
        tree: Tree { nodes },
        items,
        meta: ImageMeta::default(),
        feed: Box::new(DirFeed {
            paths,
            sizes,
            next: 0,
            current: None,
        }),
    })
}

/// Streams the files found by [`walk_dir`], in order, as one byte stream.
struct DirFeed {
    paths: Vec<PathBuf>,
    /// Sizes seen by the walk.
    sizes: Vec<u64>,
    next: usize,
    /// The open file, its path and the bytes still to read from it.
    current: Option<(File, usize, u64)>,
}

impl DirFeed {
    fn changed(&self, i: usize, what: String) -> ArchiveError {
        ArchiveError::Changed {
            path: self.paths[i].clone(),
            what,
        }
    }
}

impl Feed for DirFeed {
    fn fill(&mut self, mut buf: &mut [u8]) -> Result<(), ArchiveError> {
        while !buf.is_empty() {
            let (file, i, left) = match self.current.as_mut() {
                Some(c) => c,
                None => {
                    let i = self.next;
                    let path = self.paths.get(i).ok_or(ArchiveError::Corrupt(
                        "data stream longer than the files walked".into(),
                    ))?;
                    let file = File::open(path).map_err(input_err(path))?;
                    let len = file.metadata().map_err(input_err(path))?.len();
                    let want = self.sizes.get(i).copied().unwrap_or(0);
                    if len != want {
                        return Err(self.changed(i, format!("size {want} became {len}")));
                    }
                    self.next += 1;
                    self.current.insert((file, i, want))
                }
            };
            let n = (*left).min(buf.len() as u64) as usize;
            let got = match file.read(&mut buf[..n]) {
                Ok(0) if n > 0 => {
                    let i = *i;
                    return Err(self.changed(i, "file shrank while being read".into()));
                }
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(input_err(&self.paths[*i])(e)),
            };
            *left -= got as u64;
            buf = &mut buf[got..];
            if *left == 0 {
                self.current = None;
            }
        }
        Ok(())
    }
}
