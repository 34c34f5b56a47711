//! The OCI layer merge: applies each layer's tar entries (a changeset with
//! `.wh.` whiteouts and `.wh..wh..opq` opaque markers) on top of the layers
//! below, producing the final [`Tree`] — the same tree `umoci unpack` would
//! leave on disk, without touching a disk.
//!
//! Per layer, whiteouts and opaque markers are applied first, against the
//! tree as it was before the layer (they only ever hide lower content), then
//! the layer's other entries are added in tar order. Parent directories are
//! resolved following symlinks already in the tree (as `umoci`/`containerd`
//! do with `securejoin`), missing ones are implied.

use std::collections::VecDeque;

use crate::format::{DataRef, Node, NodeKind, SparseSegment, Tree};
use crate::tar::{Entry, EntryKind};

/// Prefix marking a whiteout file.
const WHITEOUT: &[u8] = b".wh.";
/// Name of the opaque-directory marker.
const OPAQUE: &[u8] = b".wh..wh..opq";
/// Symlinks followed while resolving one path before giving up (as Linux).
const MAX_SYMLINK_HOPS: u32 = 40;

/// Why a layer could not be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// A hard link names a target that does not exist (in this layer so far
    /// or below).
    #[error("layer {layer}: hard link {path:?} -> {target:?}: target does not exist")]
    HardlinkTargetMissing {
        /// Layer index.
        layer: u32,
        /// The link's path.
        path: String,
        /// The missing target.
        target: String,
    },
    /// A hard link names a directory.
    #[error("layer {layer}: hard link {path:?} -> {target:?}: target is a directory")]
    HardlinkToDir {
        /// Layer index.
        layer: u32,
        /// The link's path.
        path: String,
        /// The target.
        target: String,
    },
    /// The root entry (empty path) is not a directory.
    #[error("layer {layer}: root entry is a {kind:?}, not a directory")]
    RootNotDir {
        /// Layer index.
        layer: u32,
        /// The entry's kind.
        kind: EntryKind,
    },
    /// A path contains a `..` component.
    #[error("layer {layer}: invalid path {path:?}: contains \"..\"")]
    InvalidPath {
        /// Layer index.
        layer: u32,
        /// The path.
        path: String,
    },
    /// Resolving a path's parent directories followed too many symlinks.
    #[error("layer {layer}: too many levels of symbolic links resolving {path:?}")]
    SymlinkLoop {
        /// Layer index.
        layer: u32,
        /// The path being resolved.
        path: String,
    },
    /// The tree would have more than `u32::MAX` nodes.
    #[error("layer {layer}: too many nodes")]
    TooManyNodes {
        /// Layer index.
        layer: u32,
    },
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// A path split into parent components and final name.
type Split<'a> = Option<(Vec<&'a [u8]>, &'a [u8])>;

/// Splits a path into its parent's components and its final name, dropping
/// empty and `.` components. `None` for the root.
fn split(path: &[u8], layer: u32) -> Result<Split<'_>, MergeError> {
    let mut comps = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(MergeError::InvalidPath {
                    layer,
                    path: lossy(path),
                })
            }
            _ => comps.push(c),
        }
    }
    Ok(comps.pop().map(|name| (comps, name)))
}

/// Builds the merged tree layer by layer.
#[derive(Debug, Clone)]
pub struct Merger {
    /// Working nodes; `nodes[0]` is the root. Nodes cut off by whiteouts or
    /// replacements stay here until [`Merger::finish`] compacts them away.
    nodes: Vec<Node>,
}

impl Default for Merger {
    fn default() -> Self {
        Self::new()
    }
}

impl Merger {
    /// An empty tree: just the root directory (mode 0755, owned by 0:0).
    pub fn new() -> Self {
        Merger {
            nodes: vec![Node::new(NodeKind::Dir)],
        }
    }

    /// Applies one layer's entries (in tar order) on top of the tree so far.
    /// `layer` is the layer index (0 = bottom), recorded in file [`DataRef`]s.
    ///
    /// On error the merger may hold a partially applied layer; discard it.
    pub fn apply_layer(&mut self, layer: u32, entries: Vec<Entry>) -> Result<(), MergeError> {
        // Pass 1: whiteouts and opaque markers hide lower-layer content.
        for e in &entries {
            let Some((parent, name)) = split(&e.path, layer)? else {
                continue;
            };
            let Some(hidden) = name.strip_prefix(WHITEOUT) else {
                continue;
            };
            let Some(dir) = self.resolve_dir(&parent, false, layer, &e.path)? else {
                continue; // nothing below to hide
            };
            if name == OPAQUE {
                self.nodes[dir as usize].children.clear();
            } else if !hidden.is_empty() && !hidden.starts_with(WHITEOUT) {
                // (`.wh..wh.*` other than the opaque marker is aufs
                // bookkeeping: ignored.)
                self.nodes[dir as usize].children.remove(hidden);
            }
        }
        // Pass 2: everything else, in tar order.
        for e in entries {
            let is_whiteout =
                split(&e.path, layer)?.is_some_and(|(_, name)| name.starts_with(WHITEOUT));
            if !is_whiteout {
                self.add(layer, e)?;
            }
        }
        Ok(())
    }

    /// The merged tree: unreachable nodes dropped, nodes numbered
    /// breadth-first from the root with siblings in name order.
    pub fn finish(self) -> Tree {
        let mut old = self.nodes;
        let mut new_index = vec![u32::MAX; old.len()];
        new_index[0] = 0;
        let mut order: Vec<u32> = vec![0];
        let mut i = 0;
        while let Some(&o) = order.get(i) {
            i += 1;
            for &c in old[o as usize].children.values() {
                if new_index[c as usize] == u32::MAX {
                    // order.len() <= old.len() <= u32::MAX
                    new_index[c as usize] = order.len() as u32;
                    order.push(c);
                }
            }
        }
        let nodes = order
            .iter()
            .map(|&o| {
                let mut n = std::mem::replace(&mut old[o as usize], Node::new(NodeKind::Dir));
                for v in n.children.values_mut() {
                    *v = new_index[*v as usize];
                }
                n
            })
            .collect();
        Tree { nodes }
    }

    fn push(&mut self, node: Node, layer: u32) -> Result<u32, MergeError> {
        let idx = u32::try_from(self.nodes.len())
            .ok()
            .filter(|&i| i < u32::MAX)
            .ok_or(MergeError::TooManyNodes { layer })?;
        self.nodes.push(node);
        Ok(idx)
    }

    /// Walks `comps` from the root to a directory, following symlinks (with
    /// `..` clamped at the root). With `create`, missing directories are
    /// implied and non-directories in the way replaced by implied
    /// directories; without, `None` if the walk fails.
    fn resolve_dir(
        &mut self,
        comps: &[&[u8]],
        create: bool,
        layer: u32,
        path: &[u8],
    ) -> Result<Option<u32>, MergeError> {
        let mut pending: VecDeque<Vec<u8>> = comps.iter().map(|c| c.to_vec()).collect();
        let mut stack: Vec<u32> = vec![0];
        let mut hops = 0u32;
        while let Some(c) = pending.pop_front() {
            match &c[..] {
                b"" | b"." => continue,
                b".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let cur = *stack.last().unwrap_or(&0);
            let child = self.nodes[cur as usize].children.get(&c).copied();
            let kind = child.map(|i| self.nodes[i as usize].kind);
            match (child, kind) {
                (Some(i), Some(NodeKind::Dir)) => stack.push(i),
                (Some(i), Some(NodeKind::Symlink)) => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(MergeError::SymlinkLoop {
                            layer,
                            path: lossy(path),
                        });
                    }
                    let target = &self.nodes[i as usize].link_target;
                    if target.starts_with(b"/") {
                        stack.truncate(1);
                    }
                    for part in target.split(|&b| b == b'/').rev() {
                        pending.push_front(part.to_vec());
                    }
                }
                _ if !create => return Ok(None),
                _ => {
                    let n = self.push(Node::new(NodeKind::Dir), layer)?;
                    self.nodes[cur as usize].children.insert(c, n);
                    stack.push(n);
                }
            }
        }
        Ok(Some(*stack.last().unwrap_or(&0)))
    }

    /// The node at `path` (final component not followed), if any.
    fn lookup(&mut self, path: &[u8], layer: u32) -> Result<Option<u32>, MergeError> {
        let Some((parent, name)) = split(path, layer)? else {
            return Ok(Some(0));
        };
        let Some(dir) = self.resolve_dir(&parent, false, layer, path)? else {
            return Ok(None);
        };
        Ok(self.nodes[dir as usize].children.get(name).copied())
    }

    /// Adds one non-whiteout entry.
    fn add(&mut self, layer: u32, e: Entry) -> Result<(), MergeError> {
        let Some((parent, name)) = split(&e.path, layer)? else {
            if e.kind != EntryKind::Dir {
                return Err(MergeError::RootNotDir {
                    layer,
                    kind: e.kind,
                });
            }
            set_meta(&mut self.nodes[0], &e);
            return Ok(());
        };
        let dir = self
            .resolve_dir(&parent, true, layer, &e.path)?
            .unwrap_or(0); // with `create` the walk always ends in a directory
        let existing = self.nodes[dir as usize].children.get(name).copied();
        let idx = match e.kind {
            EntryKind::Hardlink => {
                let target = self.lookup(&e.link_target, layer)?.ok_or_else(|| {
                    MergeError::HardlinkTargetMissing {
                        layer,
                        path: lossy(&e.path),
                        target: lossy(&e.link_target),
                    }
                })?;
                if self.nodes[target as usize].kind == NodeKind::Dir {
                    return Err(MergeError::HardlinkToDir {
                        layer,
                        path: lossy(&e.path),
                        target: lossy(&e.link_target),
                    });
                }
                target
            }
            EntryKind::Dir => match existing {
                Some(i) if self.nodes[i as usize].kind == NodeKind::Dir => {
                    set_meta(&mut self.nodes[i as usize], &e);
                    i
                }
                _ => self.push(node_from(layer, &e), layer)?,
            },
            _ => self.push(node_from(layer, &e), layer)?,
        };
        self.nodes[dir as usize].children.insert(name.to_vec(), idx);
        Ok(())
    }
}

/// Copies the metadata every kind carries.
fn set_meta(n: &mut Node, e: &Entry) {
    n.perm = e.perm & 0o7777;
    n.uid = e.uid;
    n.gid = e.gid;
    n.mtime = e.mtime;
    n.mtime_nsec = e.mtime_nsec;
    n.xattrs = e.xattrs.clone();
}

/// A fresh node for a non-hardlink entry.
fn node_from(layer: u32, e: &Entry) -> Node {
    let kind = match e.kind {
        EntryKind::Dir => NodeKind::Dir,
        EntryKind::Symlink => NodeKind::Symlink,
        EntryKind::CharDev => NodeKind::CharDev,
        EntryKind::BlockDev => NodeKind::BlockDev,
        EntryKind::Fifo => NodeKind::Fifo,
        EntryKind::File | EntryKind::Hardlink => NodeKind::File,
    };
    let mut n = Node::new(kind);
    set_meta(&mut n, e);
    match kind {
        NodeKind::File => {
            n.size = e.size;
            match &e.sparse {
                None => {
                    n.data = (e.size > 0).then_some(DataRef {
                        layer,
                        offset: e.data_offset,
                    })
                }
                Some(segments) => {
                    n.data = segments.first().map(|s| DataRef {
                        layer,
                        offset: s.data_offset,
                    });
                    n.sparse = Some(
                        segments
                            .iter()
                            .map(|s| SparseSegment {
                                file_offset: s.offset,
                                len: s.len,
                                layer_offset: s.data_offset,
                            })
                            .collect(),
                    );
                }
            }
        }
        NodeKind::Symlink => {
            n.link_target = e.link_target.clone();
            n.size = e.link_target.len() as u64;
        }
        NodeKind::CharDev | NodeKind::BlockDev => {
            n.rdev_major = e.rdev_major;
            n.rdev_minor = e.rdev_minor;
        }
        _ => {}
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            perm: if kind == EntryKind::Dir { 0o750 } else { 0o640 },
            uid: 1,
            gid: 2,
            mtime: 100,
            mtime_nsec: 5,
            size: 0,
            data_offset: 512,
            link_target: Vec::new(),
            rdev_major: 0,
            rdev_minor: 0,
            xattrs: Vec::new(),
            sparse: None,
        }
    }
    fn f(path: &str) -> Entry {
        f_at(path, 10, 1024)
    }
    fn f_at(path: &str, size: u64, off: u64) -> Entry {
        Entry {
            size,
            data_offset: off,
            ..entry(path, EntryKind::File)
        }
    }
    fn d(path: &str) -> Entry {
        entry(path, EntryKind::Dir)
    }
    fn link(path: &str, kind: EntryKind, target: &str) -> Entry {
        Entry {
            link_target: target.as_bytes().to_vec(),
            ..entry(path, kind)
        }
    }
    fn hl(path: &str, target: &str) -> Entry {
        link(path, EntryKind::Hardlink, target)
    }
    fn sl(path: &str, target: &str) -> Entry {
        link(path, EntryKind::Symlink, target)
    }

    fn merge(layers: Vec<Vec<Entry>>) -> Result<Tree, MergeError> {
        let mut m = Merger::new();
        for (i, l) in layers.into_iter().enumerate() {
            m.apply_layer(i as u32, l)?;
        }
        Ok(m.finish())
    }

    /// Checks the structural invariants and lists `path kind` lines, sorted.
    fn listing(t: &Tree) -> Vec<String> {
        let mut seen = vec![false; t.nodes.len()];
        let mut out = Vec::new();
        let mut stack = vec![(0u32, String::new())];
        seen[0] = true;
        while let Some((i, p)) = stack.pop() {
            for (name, &c) in &t.nodes[i as usize].children {
                assert!((c as usize) < t.nodes.len(), "dangling child");
                assert_ne!(c, 0, "root is nobody's child");
                let cp = format!("{p}/{}", String::from_utf8_lossy(name));
                let n = &t.nodes[c as usize];
                out.push(format!("{cp} {:?}", n.kind));
                if n.kind == NodeKind::Dir {
                    assert!(!seen[c as usize], "directory linked twice");
                    stack.push((c, cp));
                } else {
                    assert!(n.children.is_empty());
                }
                seen[c as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s), "unreachable node kept");
        out.sort();
        out
    }

    fn find(t: &Tree, path: &str) -> Option<u32> {
        let mut cur = 0u32;
        for c in path.split('/').filter(|c| !c.is_empty()) {
            cur = *t.nodes[cur as usize].children.get(c.as_bytes())?;
        }
        Some(cur)
    }
    fn node<'a>(t: &'a Tree, path: &str) -> &'a Node {
        &t.nodes[find(t, path).unwrap_or_else(|| panic!("{path} missing")) as usize]
    }

    #[test]
    fn file_whiteout() {
        let t = merge(vec![
            vec![d("a"), f("a/b"), f("a/c")],
            vec![d("a"), f("a/.wh.b")],
        ])
        .unwrap();
        assert_eq!(listing(&t), ["/a Dir", "/a/c File"]);
    }

    #[test]
    fn dir_whiteout_removes_subtree_and_compacts() {
        let t = merge(vec![
            vec![f("a/x/y/z"), f("a/x/w"), f("keep")],
            vec![f(".wh.a")],
        ])
        .unwrap();
        assert_eq!(listing(&t), ["/keep File"]);
        assert_eq!(t.nodes.len(), 2);
    }

    #[test]
    fn opaque_keeps_same_layer_entries_in_either_order() {
        let lower = vec![d("d"), f("d/old1"), f("d/sub/deep"), f("other")];
        for upper in [
            vec![d("d"), f("d/.wh..wh..opq"), f("d/new"), f("d/sub/n2")],
            vec![d("d"), f("d/new"), f("d/sub/n2"), f("d/.wh..wh..opq")],
        ] {
            let t = merge(vec![lower.clone(), upper]).unwrap();
            assert_eq!(
                listing(&t),
                [
                    "/d Dir",
                    "/d/new File",
                    "/d/sub Dir",
                    "/d/sub/n2 File",
                    "/other File"
                ]
            );
        }
    }

    #[test]
    fn opaque_of_missing_dir_and_whiteouts_of_nothing_are_ignored() {
        let t = merge(vec![
            vec![f("file")],
            vec![
                f("nodir/.wh..wh..opq"),
                f(".wh.ghost"),
                f("nodir/.wh.x"),
                f("file/.wh.x"),
                f(".wh..wh.plnk"),
                f(".wh."),
            ],
        ])
        .unwrap();
        // Whiteout files never appear, nor do parents they name.
        assert_eq!(listing(&t), ["/file File"]);
    }

    #[test]
    fn implied_parents() {
        let t = merge(vec![vec![f("x/y/z")]]).unwrap();
        assert_eq!(listing(&t), ["/x Dir", "/x/y Dir", "/x/y/z File"]);
        let x = node(&t, "x");
        assert_eq!(
            (x.perm, x.uid, x.gid, x.mtime, x.mtime_nsec),
            (0o755, 0, 0, 0, 0)
        );
        // An existing directory is kept as it is.
        let t = merge(vec![vec![d("x")], vec![f("x/q")]]).unwrap();
        let x = node(&t, "x");
        assert_eq!((x.perm, x.uid, x.mtime), (0o750, 1, 100));
    }

    #[test]
    fn dir_over_dir_updates_metadata_keeps_children() {
        let mut up = d("a");
        up.perm = 0o700;
        up.uid = 9;
        up.xattrs = vec![(b"user.k".to_vec(), b"v".to_vec())];
        let t = merge(vec![vec![d("a"), f("a/f")], vec![up]]).unwrap();
        assert_eq!(listing(&t), ["/a Dir", "/a/f File"]);
        let a = node(&t, "a");
        assert_eq!((a.perm, a.uid), (0o700, 9));
        assert_eq!(a.xattrs, vec![(b"user.k".to_vec(), b"v".to_vec())]);
    }

    #[test]
    fn type_replacement_both_ways() {
        // dir -> file: the subtree goes.
        let t = merge(vec![vec![f("a/b/c"), f("z")], vec![f("a")]]).unwrap();
        assert_eq!(listing(&t), ["/a File", "/z File"]);
        assert_eq!(t.nodes.len(), 3);
        // file -> dir.
        let t = merge(vec![vec![f("a")], vec![d("a"), f("a/x")]]).unwrap();
        assert_eq!(listing(&t), ["/a Dir", "/a/x File"]);
        // symlink -> dir, dir -> symlink.
        let t = merge(vec![
            vec![sl("s", "t"), d("e"), f("e/1")],
            vec![d("s"), sl("e", "s")],
        ])
        .unwrap();
        assert_eq!(listing(&t), ["/e Symlink", "/s Dir"]);
        // file -> file in the same layer: the last one wins.
        let t = merge(vec![vec![f_at("a", 1, 512), f_at("a", 2, 2048)]]).unwrap();
        assert_eq!(node(&t, "a").size, 2);
    }

    #[test]
    fn node_contents() {
        let mut dev = entry("dev/sda", EntryKind::BlockDev);
        dev.rdev_major = 8;
        dev.rdev_minor = 1;
        let mut x = f_at("bin/x", 77, 4096);
        x.xattrs = vec![(b"security.capability".to_vec(), vec![1, 2])];
        let t = merge(vec![
            vec![f_at("empty", 0, 512)],
            vec![
                x,
                sl("bin/sh", "/bin/bash"),
                dev,
                entry("p", EntryKind::Fifo),
                entry("c", EntryKind::CharDev),
            ],
        ])
        .unwrap();
        let x = node(&t, "bin/x");
        assert_eq!(x.kind, NodeKind::File);
        assert_eq!(x.size, 77);
        assert_eq!(
            x.data,
            Some(DataRef {
                layer: 1,
                offset: 4096
            })
        );
        assert_eq!(
            (x.perm, x.uid, x.gid, x.mtime, x.mtime_nsec),
            (0o640, 1, 2, 100, 5)
        );
        assert_eq!(x.xattrs.len(), 1);
        assert_eq!(node(&t, "empty").data, None);
        let sh = node(&t, "bin/sh");
        assert_eq!((sh.link_target.as_slice(), sh.size), (&b"/bin/bash"[..], 9));
        let dev = node(&t, "dev/sda");
        assert_eq!(
            (dev.kind, dev.rdev_major, dev.rdev_minor),
            (NodeKind::BlockDev, 8, 1)
        );
        assert_eq!(node(&t, "p").kind, NodeKind::Fifo);
        assert_eq!(node(&t, "c").kind, NodeKind::CharDev);
    }

    #[test]
    fn sparse_maps_follow_their_file_through_layers() {
        use crate::tar::SparseSegment as Run;
        let sparse = |path: &str, runs: Vec<Run>| Entry {
            size: 1 << 20,
            data_offset: runs.first().map_or(2048, |r| r.data_offset),
            sparse: Some(runs),
            ..entry(path, EntryKind::File)
        };
        let run = |offset, data_offset| Run {
            offset,
            len: 10,
            data_offset,
        };
        let t = merge(vec![
            vec![
                sparse("gone", vec![run(0, 1024)]),
                sparse("replaced", vec![run(4096, 2048)]),
                sparse("kept", vec![run(100, 3072), run(9000, 3082)]),
                sparse("hole", vec![]),
                hl("kept-link", "kept"),
            ],
            vec![f(".wh.gone"), f_at("replaced", 3, 512)],
        ])
        .unwrap();
        assert_eq!(
            listing(&t),
            [
                "/hole File",
                "/kept File",
                "/kept-link File",
                "/replaced File"
            ]
        );
        let r = node(&t, "replaced");
        assert_eq!((r.size, r.sparse.as_ref()), (3, None));
        assert_eq!(
            r.data,
            Some(DataRef {
                layer: 1,
                offset: 512
            })
        );
        let k = node(&t, "kept");
        assert_eq!(k.size, 1 << 20);
        assert_eq!(
            k.data,
            Some(DataRef {
                layer: 0,
                offset: 3072
            })
        );
        let segs = k.sparse.as_ref().unwrap();
        assert_eq!(
            segs[1],
            SparseSegment {
                file_offset: 9000,
                len: 10,
                layer_offset: 3082
            }
        );
        assert_eq!(find(&t, "kept"), find(&t, "kept-link"));
        let h = node(&t, "hole");
        assert_eq!((h.data, h.sparse.as_deref()), (None, Some(&[][..])));
    }

    #[test]
    fn root_entry_updates_root() {
        let mut root = d("");
        root.perm = 0o1777;
        let t = merge(vec![vec![root, f("a")]]).unwrap();
        assert_eq!(t.nodes[0].perm, 0o1777);
        assert_eq!(t.nodes[0].uid, 1);
        assert!(matches!(
            merge(vec![vec![f("")]]),
            Err(MergeError::RootNotDir { layer: 0, .. })
        ));
    }

    #[test]
    fn hardlink_groups() {
        let t = merge(vec![
            vec![f_at("f", 5, 512), hl("h1", "f"), hl("d/h2", "./f")],
            vec![
                f_at("f", 6, 1536), // replaces one name only
                hl("g", "h1"),      // target from a lower layer
                sl("s", "x"),
                hl("s2", "s"), // hard link to a symlink
            ],
        ])
        .unwrap();
        let (fi, h1, h2, g) = (
            find(&t, "f").unwrap(),
            find(&t, "h1").unwrap(),
            find(&t, "d/h2").unwrap(),
            find(&t, "g").unwrap(),
        );
        assert_ne!(fi, h1);
        assert_eq!(h1, h2);
        assert_eq!(h1, g);
        assert_eq!(
            t.nodes[h1 as usize].data,
            Some(DataRef {
                layer: 0,
                offset: 512
            })
        );
        assert_eq!(
            t.nodes[fi as usize].data,
            Some(DataRef {
                layer: 1,
                offset: 1536
            })
        );
        assert_eq!(find(&t, "s"), find(&t, "s2"));
        listing(&t);
        // Whiting out one name keeps the node for the others.
        let t = merge(vec![vec![f("f"), hl("h", "f")], vec![f(".wh.f")]]).unwrap();
        assert_eq!(listing(&t), ["/h File"]);
    }

    #[test]
    fn hardlink_errors() {
        let r = merge(vec![vec![hl("a", "missing")]]);
        assert!(
            matches!(r, Err(MergeError::HardlinkTargetMissing { ref path, ref target, .. })
            if path == "a" && target == "missing")
        );
        // Target later in the same layer is missing at the time of the link.
        let r = merge(vec![vec![hl("a", "b"), f("b")]]);
        assert!(matches!(r, Err(MergeError::HardlinkTargetMissing { .. })));
        // Target whited out in this layer.
        let r = merge(vec![vec![f("b")], vec![f(".wh.b"), hl("a", "b")]]);
        assert!(matches!(r, Err(MergeError::HardlinkTargetMissing { .. })));
        let r = merge(vec![vec![d("dir"), hl("a", "dir")]]);
        assert!(matches!(r, Err(MergeError::HardlinkToDir { .. })));
        let msg = merge(vec![vec![hl("x/a", "y/b")]]).unwrap_err().to_string();
        assert!(msg.contains("x/a") && msg.contains("y/b"), "{msg}");
    }

    #[test]
    fn readd_after_whiteout() {
        let t = merge(vec![vec![f("a/old")], vec![f(".wh.a")], vec![f("a/new")]]).unwrap();
        assert_eq!(listing(&t), ["/a Dir", "/a/new File"]);
        // The implied "a" is fresh, not the whited-out one.
        assert_eq!(node(&t, "a").perm, 0o755);
        // Whiteout and re-add in the same layer, both orders.
        for upper in [
            vec![f(".wh.a"), d("a"), f("a/new")],
            vec![d("a"), f("a/new"), f(".wh.a")],
        ] {
            let t = merge(vec![vec![d("a"), f("a/old")], upper]).unwrap();
            assert_eq!(listing(&t), ["/a Dir", "/a/new File"]);
        }
    }

    #[test]
    fn parents_resolve_through_symlinks() {
        let t = merge(vec![
            vec![
                d("usr/lib"),
                sl("lib", "usr/lib"),
                sl("abs", "/usr/lib/"),
                f("usr/lib/old"),
            ],
            vec![
                f("lib/x.so"),
                f("abs/y.so"),
                f("lib/.wh.old"),
                hl("h", "lib/x.so"),
            ],
        ])
        .unwrap();
        assert_eq!(
            listing(&t),
            [
                "/abs Symlink",
                "/h File",
                "/lib Symlink",
                "/usr Dir",
                "/usr/lib Dir",
                "/usr/lib/x.so File",
                "/usr/lib/y.so File"
            ]
        );
        assert_eq!(find(&t, "h"), find(&t, "usr/lib/x.so"));
        // `..` in a target is clamped at the root; dangling targets are implied.
        let t = merge(vec![vec![sl("a", "../../b/c")], vec![f("a/f")]]).unwrap();
        assert_eq!(
            listing(&t),
            ["/a Symlink", "/b Dir", "/b/c Dir", "/b/c/f File"]
        );
        // Loops are an error, not a hang.
        let r = merge(vec![vec![sl("a", "b"), sl("b", "a")], vec![f("a/x")]]);
        assert!(matches!(r, Err(MergeError::SymlinkLoop { .. })));
        let r = merge(vec![vec![sl("a", "a/b")], vec![f("a/x")]]);
        assert!(matches!(r, Err(MergeError::SymlinkLoop { .. })));
    }

    #[test]
    fn dotdot_is_an_error() {
        assert!(matches!(
            merge(vec![vec![f("a/../b")]]),
            Err(MergeError::InvalidPath { .. })
        ));
    }

    #[test]
    fn from_real_tar_streams() {
        fn layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
            let mut b = ::tar::Builder::new(Vec::new());
            for (p, data) in entries {
                let mut h = ::tar::Header::new_gnu();
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                if p.ends_with('/') {
                    h.set_entry_type(::tar::EntryType::Directory);
                }
                b.append_data(&mut h, p, *data).unwrap();
            }
            b.into_inner().unwrap()
        }
        let l0 = layer(&[("etc/", b""), ("etc/passwd", b"root"), ("etc/shadow", b"x")]);
        let l1 = layer(&[
            ("etc/", b""),
            ("etc/.wh.shadow", b""),
            ("etc/passwd", b"root2"),
        ]);
        let mut m = Merger::new();
        for (i, l) in [&l0, &l1].into_iter().enumerate() {
            let mut es = Vec::new();
            crate::tar::read_entries(&l[..], |e| {
                es.push(e);
                Ok(())
            })
            .unwrap();
            m.apply_layer(i as u32, es).unwrap();
        }
        let t = m.finish();
        assert_eq!(listing(&t), ["/etc Dir", "/etc/passwd File"]);
        let p = node(&t, "etc/passwd");
        let dr = p.data.unwrap();
        assert_eq!(dr.layer, 1);
        let off = dr.offset as usize;
        assert_eq!(&l1[off..off + p.size as usize], b"root2");
    }

    #[test]
    fn finish_order_is_breadth_first_by_name() {
        let t = merge(vec![vec![f("b/z"), f("a/y"), f("c")]]).unwrap();
        let names: Vec<&[u8]> = t.nodes[0].children.keys().map(|k| k.as_slice()).collect();
        assert_eq!(names, [b"a", b"b", b"c"]);
        assert_eq!(find(&t, "a"), Some(1));
        assert_eq!(find(&t, "b"), Some(2));
        assert_eq!(find(&t, "c"), Some(3));
        assert_eq!(find(&t, "a/y"), Some(4));
        assert_eq!(find(&t, "b/z"), Some(5));
    }

    #[test]
    fn random_layers_keep_invariants() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let names = ["a", "b", "c", ".wh.a", ".wh.b", ".wh..wh..opq", "."];
        let random_path = |rng: &mut rand::rngs::StdRng| {
            let n = rng.gen_range(1..4);
            (0..n)
                .map(|_| names[rng.gen_range(0..names.len())])
                .collect::<Vec<_>>()
                .join("/")
        };
        let mut applied = 0;
        for _ in 0..300 {
            let mut m = Merger::new();
            for layer in 0..4 {
                let entries: Vec<Entry> = (0..rng.gen_range(0..12))
                    .map(|_| {
                        let p = random_path(&mut rng);
                        let t = random_path(&mut rng);
                        match rng.gen_range(0..6) {
                            0 => d(&p),
                            1 => sl(&p, &t),
                            2 => sl(&p, &format!("/{t}")),
                            3 => hl(&p, &t),
                            4 => entry(&p, EntryKind::Fifo),
                            _ => f(&p),
                        }
                    })
                    .collect();
                // A failed layer leaves a partial state that must still
                // finish into a consistent tree.
                if m.apply_layer(layer, entries).is_ok() {
                    applied += 1;
                }
            }
            let t = m.finish();
            listing(&t);
            // Whiteout entries are never added. (A directory named `.wh.x`
            // can still be implied as the parent of `.wh.x/y`, as umoci would.)
            for n in &t.nodes {
                for (name, &c) in &n.children {
                    let is_dir = t.nodes[c as usize].kind == NodeKind::Dir;
                    assert!(is_dir || !name.starts_with(WHITEOUT));
                }
            }
        }
        assert!(applied > 300, "only {applied} layers applied cleanly");
    }
}
