//! Read hints for a first start: what a dynamic loader will open after a
//! program or library, and which parts of a big ELF file it touches. Found
//! once, while the layer streams through the indexer, and stored in the
//! index (HINTS sections, docs/format.md), so a mount with no startup
//! profile can fetch a program's libraries before the loader asks for them.
//!
//! [`ElfTap`] sits between the decompressor and the tar parser: the tar
//! callback names the regular file whose bytes come next
//! ([`ElfTap::expect`]), the tap copies them while they pass, and keeps the
//! facts of the ones that are ELF ([`ElfFacts`]). After the merge,
//! [`resolve`] turns library names into inodes of the merged tree the way
//! the loader searches (`DT_RPATH`/`DT_RUNPATH` with `$ORIGIN`, then the
//! usual library directories), follows symlinks, and closes over
//! dependencies of dependencies.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read};
use std::rc::Rc;

use object::elf;
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::Endianness;

use crate::format::{FileHint, NodeKind, Tree};

/// ELF files bigger than this are not read for hints (their bytes would
/// be held in memory while they stream past).
pub const MAX_ELF_BYTES: u64 = 256 << 20;
/// Dependencies listed per file at most (a loader rarely opens more).
pub const MAX_DEPENDENCIES: usize = 64;
/// Symlinks followed while resolving one path.
const MAX_SYMLINKS: u32 = 40;
/// Where glibc's loader looks names up before searching directories.
const LD_SO_CACHE: &[u8] = b"/etc/ld.so.cache";
/// The head of an ELF file (headers, the first pages) counts as hot.
const HEAD_BYTES: u64 = 64 << 10;

/// What an ELF file tells about its loading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElfFacts {
    /// `DT_NEEDED` names, in order.
    pub needed: Vec<Vec<u8>>,
    /// `DT_RUNPATH` (or `DT_RPATH` when there is no runpath) directories.
    pub search: Vec<Vec<u8>>,
    /// `PT_INTERP`: the program's loader.
    pub interpreter: Option<Vec<u8>>,
    /// `e_machine`, for the multiarch library directories.
    pub machine: u16,
    /// File ranges a loader reads or maps writable: headers, non-executable
    /// `PT_LOAD` segments, the dynamic segment. Sorted, merged.
    pub hot: Vec<(u64, u64)>,
}

/// Parses what a loader needs from an ELF file's bytes; `None` when the
/// bytes are not a well-formed ELF file (hints are best effort).
pub fn elf_facts(data: &[u8]) -> Option<ElfFacts> {
    // e_ident[EI_CLASS]
    match *data.get(4)? {
        elf::ELFCLASS64 => facts::<elf::FileHeader64<Endianness>>(data),
        elf::ELFCLASS32 => facts::<elf::FileHeader32<Endianness>>(data),
        _ => None,
    }
}

fn facts<Elf: FileHeader<Endian = Endianness>>(data: &[u8]) -> Option<ElfFacts> {
    let header = Elf::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let phdrs = header.program_headers(endian, data).ok()?;
    let mut out = ElfFacts {
        machine: header.e_machine(endian),
        ..ElfFacts::default()
    };
    let size = data.len() as u64;
    let mut hot = vec![(0, HEAD_BYTES.min(size))];
    let mut dynamic = None;
    for ph in phdrs {
        let (offset, len) = ph.file_range(endian);
        let kind = ph.p_type(endian);
        let keep = match kind {
            elf::PT_LOAD => ph.p_flags(endian) & elf::PF_X == 0,
            elf::PT_DYNAMIC | elf::PT_INTERP => true,
            _ => false,
        };
        if keep && len > 0 && offset < size {
            hot.push((offset, len.min(size - offset)));
        }
        if let Ok(Some(i)) = ph.interpreter(endian, data) {
            out.interpreter = Some(i.to_vec());
        }
        if let Ok(Some(d)) = ph.dynamic(endian, data) {
            dynamic = Some(d);
        }
    }
    out.hot = merge_ranges(hot);
    let Some(dynamic) = dynamic else {
        return Some(out);
    };
    // The string table is named by its address: map it through PT_LOAD.
    let tag = |t: u32| {
        dynamic
            .iter()
            .find(|d| d.tag32(endian) == Some(t))
            .map(|d| d.d_val(endian).into())
    };
    let (Some(strtab), Some(strsz)) = (tag(elf::DT_STRTAB), tag(elf::DT_STRSZ)) else {
        return Some(out);
    };
    let strings = phdrs.iter().find_map(|ph| {
        (ph.p_type(endian) == elf::PT_LOAD)
            .then(|| ph.data_range(endian, data, strtab, strsz).ok().flatten())
            .flatten()
    });
    let Some(strings) = strings else {
        return Some(out);
    };
    let string = |off: u64| -> Option<Vec<u8>> {
        let rest = strings.get(usize::try_from(off).ok()?..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        Some(rest[..end].to_vec())
    };
    let (mut runpath, mut rpath) = (Vec::new(), Vec::new());
    for d in dynamic {
        let Some(t) = d.tag32(endian) else { continue };
        let val: u64 = d.d_val(endian).into();
        match t {
            elf::DT_NULL => break,
            elf::DT_NEEDED => out.needed.extend(string(val)),
            elf::DT_RUNPATH => runpath.extend(string(val)),
            elf::DT_RPATH => rpath.extend(string(val)),
            _ => {}
        }
    }
    // The loader ignores DT_RPATH when DT_RUNPATH is present.
    let dirs = if runpath.is_empty() { rpath } else { runpath };
    out.search = dirs
        .iter()
        .flat_map(|d| d.split(|&b| b == b':'))
        .filter(|d| !d.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    Some(out)
}

fn merge_ranges(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (start, len) in r {
        let end = start.saturating_add(len);
        match out.last_mut() {
            Some((s, l)) if start <= *s + *l => *l = (*l).max(end - *s),
            _ => out.push((start, len)),
        }
    }
    out
}

/// The bytes of the file the tap is copying.
#[derive(Debug, Default)]
struct Capture {
    /// Stream offset of the file's first byte.
    start: u64,
    size: u64,
    bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct TapState {
    capture: Option<Capture>,
    /// ELF facts by the stream offset of the file's data.
    found: HashMap<u64, ElfFacts>,
}

/// A reader that hands the bytes of regular files named by
/// [`ElfTap::expect`] to [`elf_facts`] as they stream past. Positions are
/// counted from the first byte read through it (the start of the tar).
#[derive(Debug)]
pub struct ElfTap<R> {
    inner: R,
    pos: u64,
    state: Rc<RefCell<TapState>>,
}

/// The tar callback's handle on an [`ElfTap`].
#[derive(Debug, Clone)]
pub struct TapHandle(Rc<RefCell<TapState>>);

impl TapHandle {
    /// The file whose `size` bytes start at stream offset `start` comes
    /// next; the tap copies it if it turns out to be ELF.
    pub fn expect(&self, start: u64, size: u64) {
        let capture = (64..=MAX_ELF_BYTES).contains(&size).then(|| Capture {
            start,
            size,
            bytes: Vec::new(),
        });
        self.0.borrow_mut().capture = capture;
    }

    /// The ELF facts found, by the stream offset of each file's data.
    pub fn into_found(self) -> HashMap<u64, ElfFacts> {
        std::mem::take(&mut self.0.borrow_mut().found)
    }
}

impl<R> ElfTap<R> {
    /// A tap over `inner`, and the handle the tar callback uses.
    pub fn new(inner: R) -> (Self, TapHandle) {
        let state = Rc::new(RefCell::new(TapState::default()));
        (
            ElfTap {
                inner,
                pos: 0,
                state: state.clone(),
            },
            TapHandle(state),
        )
    }
}

impl<R: Read> Read for ElfTap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let (from, to) = (self.pos, self.pos + n as u64);
        self.pos = to;
        let mut st = self.state.borrow_mut();
        let Some(cap) = st.capture.as_mut() else {
            return Ok(n);
        };
        let want_from = cap.start + cap.bytes.len() as u64;
        let want_to = cap.start + cap.size;
        if from <= want_from && want_from < to {
            let end = want_to.min(to);
            let slice = &buf[(want_from - from) as usize..(end - from) as usize];
            cap.bytes.extend_from_slice(slice);
        }
        if cap.bytes.len() >= 4 && cap.bytes[..4] != elf::ELFMAG {
            st.capture = None;
        } else if cap.bytes.len() as u64 == cap.size {
            let cap = st.capture.take().unwrap_or_default();
            if let Some(f) = elf_facts(&cap.bytes) {
                st.found.insert(cap.start, f);
            }
        } else if to > want_to {
            // The file's bytes went by without us (a skip we did not see).
            st.capture = None;
        }
        Ok(n)
    }
}

/// The directories a loader searches after the file's own runpath, for
/// ELF machine `machine`.
fn default_dirs(machine: u16) -> Vec<Vec<u8>> {
    let triplet: &[u8] = match machine {
        elf::EM_X86_64 => b"x86_64-linux-gnu",
        elf::EM_AARCH64 => b"aarch64-linux-gnu",
        elf::EM_386 => b"i386-linux-gnu",
        elf::EM_ARM => b"arm-linux-gnueabihf",
        elf::EM_PPC64 => b"powerpc64le-linux-gnu",
        elf::EM_S390 => b"s390x-linux-gnu",
        elf::EM_RISCV => b"riscv64-linux-gnu",
        _ => b"",
    };
    let mut dirs = Vec::new();
    for base in [&b"/lib"[..], b"/usr/lib", b"/usr/local/lib"] {
        if !triplet.is_empty() {
            dirs.push([base, b"/", triplet].concat());
        }
    }
    for d in [
        &b"/lib64"[..],
        b"/usr/lib64",
        b"/lib",
        b"/usr/lib",
        b"/usr/local/lib",
    ] {
        dirs.push(d.to_vec());
    }
    dirs
}

/// Path lookups in a merged [`Tree`], following symlinks.
struct Paths<'a> {
    tree: &'a Tree,
    /// A path of every directory node (for `$ORIGIN`).
    dir_path: HashMap<u32, Vec<u8>>,
}

impl<'a> Paths<'a> {
    fn new(tree: &'a Tree) -> Self {
        let mut dir_path = HashMap::new();
        let mut queue = VecDeque::from([(0u32, Vec::new())]);
        while let Some((n, path)) = queue.pop_front() {
            let Some(node) = tree.nodes.get(n as usize) else {
                continue;
            };
            for (name, &child) in &node.children {
                let is_dir = tree
                    .nodes
                    .get(child as usize)
                    .is_some_and(|c| c.kind == NodeKind::Dir);
                if is_dir && !dir_path.contains_key(&child) {
                    let p = [&path[..], b"/", name].concat();
                    queue.push_back((child, p));
                }
            }
            dir_path.insert(n, path);
        }
        Paths { tree, dir_path }
    }

    /// The node an absolute `path` names, following symlinks (the final
    /// one too).
    fn resolve(&self, path: &[u8]) -> Option<u32> {
        let mut comps = components(&[], path);
        let mut hops = 0;
        'walk: loop {
            let mut node = 0u32;
            for (i, comp) in comps.iter().enumerate() {
                let dir = self.tree.nodes.get(node as usize)?;
                if dir.kind != NodeKind::Dir {
                    return None;
                }
                let next = *dir.children.get(comp)?;
                let child = self.tree.nodes.get(next as usize)?;
                if child.kind == NodeKind::Symlink {
                    hops += 1;
                    if hops > MAX_SYMLINKS {
                        return None;
                    }
                    // Restart from the root with the link spliced in.
                    let mut spliced = components(&comps[..i], &child.link_target);
                    spliced.extend_from_slice(&comps[i + 1..]);
                    comps = spliced;
                    continue 'walk;
                }
                node = next;
            }
            return Some(node);
        }
    }
}

/// The components of `path` taken from directory `base` (ignored when
/// `path` is absolute), with `.` dropped and `..` folded.
fn components(base: &[Vec<u8>], path: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = if path.starts_with(b"/") {
        Vec::new()
    } else {
        base.to_vec()
    };
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c.to_vec()),
        }
    }
    out
}

/// `dir/name` (`..` is folded when the path is resolved).
fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    [dir, b"/", name].concat()
}

/// Turns ELF facts (by node index) into the index's file hints: each ELF
/// file's libraries (transitively, loader first, at most
/// [`MAX_DEPENDENCIES`]) as inode numbers, and its hot ranges.
pub fn resolve(tree: &Tree, facts: &HashMap<u32, ElfFacts>) -> Vec<FileHint> {
    let paths = Paths::new(tree);
    // Where each ELF node sits (any one of its names will do for $ORIGIN).
    let mut origin: HashMap<u32, u32> = HashMap::new();
    for (&dir, _) in paths.dir_path.iter() {
        if let Some(node) = tree.nodes.get(dir as usize) {
            for &child in node.children.values() {
                if facts.contains_key(&child) {
                    origin.entry(child).or_insert(dir);
                }
            }
        }
    }
    // Direct dependencies.
    let mut direct: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&node, f) in facts {
        let here = origin
            .get(&node)
            .and_then(|d| paths.dir_path.get(d))
            .cloned()
            .unwrap_or_default();
        let mut deps = Vec::new();
        if let Some(interp) = &f.interpreter {
            deps.extend(paths.resolve(interp));
            // The loader's first read when it looks for a library.
            deps.extend(paths.resolve(LD_SO_CACHE));
        }
        let mut search: Vec<Vec<u8>> = f.search.iter().map(|d| replace_origin(d, &here)).collect();
        search.extend(default_dirs(f.machine));
        for name in &f.needed {
            let found = if name.contains(&b'/') {
                paths.resolve(&join(&here, name))
            } else {
                search
                    .iter()
                    .filter_map(|d| paths.resolve(&join(d, name)))
                    .find(|&n| {
                        tree.nodes
                            .get(n as usize)
                            .is_some_and(|n| n.kind == NodeKind::File)
                    })
            };
            deps.extend(found.filter(|&n| n != node));
        }
        direct.insert(node, deps);
    }
    let mut hints: Vec<FileHint> = facts
        .iter()
        .map(|(&node, f)| {
            // Breadth first: the loader opens direct needs before theirs.
            let mut seen: HashSet<u32> = HashSet::from([node]);
            let mut order = Vec::new();
            let mut queue: VecDeque<u32> = direct.get(&node).cloned().unwrap_or_default().into();
            while let Some(d) = queue.pop_front() {
                if order.len() >= MAX_DEPENDENCIES {
                    break;
                }
                if seen.insert(d) {
                    order.push(u64::from(d) + 1);
                    queue.extend(direct.get(&d).into_iter().flatten());
                }
            }
            FileHint {
                ino: u64::from(node) + 1,
                dependencies: order,
                hot_ranges: f.hot.clone(),
            }
        })
        .collect();
    hints.sort_unstable_by_key(|h| h.ino);
    hints
}

/// `$ORIGIN` / `${ORIGIN}` in a runpath entry → the file's directory.
fn replace_origin(dir: &[u8], origin: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(dir.len());
    let mut rest = dir;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix(b"${ORIGIN}") {
            out.extend_from_slice(origin);
            rest = r;
        } else if let Some(r) = rest.strip_prefix(b"$ORIGIN") {
            out.extend_from_slice(origin);
            rest = r;
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::{elf_facts, resolve, ElfFacts, ElfTap, MAX_DEPENDENCIES};
    use crate::format::{Node, NodeKind, Tree};
    use crate::tar::{self, EntryKind};

    /// A real ELF program of the machine the tests run on.
    fn some_program() -> Vec<u8> {
        std::fs::read("/bin/ls").expect("/bin/ls")
    }

    #[test]
    fn facts_of_a_real_program() {
        let f = elf_facts(&some_program()).expect("ELF facts of /bin/ls");
        assert!(f.needed.iter().any(|n| n.starts_with(b"libc.so")), "{f:?}");
        assert!(f
            .interpreter
            .as_ref()
            .is_some_and(|i| i.starts_with(b"/lib")));
        assert_eq!(f.hot.first().map(|r| r.0), Some(0));
        assert!(
            f.hot.windows(2).all(|w| w[0].0 + w[0].1 < w[1].0),
            "sorted, merged"
        );
    }

    #[test]
    fn non_elf_and_broken_elf_give_nothing() {
        assert_eq!(elf_facts(b"#!/bin/sh\necho hi\n"), None);
        let ls = some_program();
        // Cut anywhere: never a panic; a header cut short is no ELF.
        for cut in [0, 4, 16, 63, 64, 100, 1000, ls.len() / 2] {
            let _ = elf_facts(&ls[..cut]);
        }
        assert_eq!(elf_facts(&ls[..40]), None);
        let mut garbage = ls.clone();
        for b in garbage.iter_mut().skip(64).step_by(7) {
            *b ^= 0x5a;
        }
        let _ = elf_facts(&garbage);
    }

    #[test]
    fn the_tap_finds_elf_files_in_a_tar_stream() {
        let mut b = ::tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = ::tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        };
        add("bin/script", b"#!/bin/sh\nexit 0\n");
        add("bin/ls", &some_program());
        add("empty", b"");
        let tar = b.into_inner().unwrap();
        let (tap, handle) = ElfTap::new(&tar[..]);
        let mut offsets = HashMap::new();
        tar::read_entries(tap, |e| {
            if e.kind == EntryKind::File {
                handle.expect(e.data_offset, e.size);
                offsets.insert(e.path.clone(), e.data_offset);
            }
            Ok(())
        })
        .unwrap();
        let found = handle.into_found();
        assert_eq!(found.len(), 1);
        assert!(found.contains_key(&offsets[&b"bin/ls".to_vec()]));
    }

    fn dir(children: &[(&str, u32)]) -> Node {
        let mut d = Node::new(NodeKind::Dir);
        d.children = children
            .iter()
            .map(|(n, i)| (n.as_bytes().to_vec(), *i))
            .collect::<BTreeMap<_, _>>();
        d
    }

    fn link(target: &str) -> Node {
        let mut l = Node::new(NodeKind::Symlink);
        l.link_target = target.as_bytes().to_vec();
        l
    }

    #[test]
    fn libraries_resolve_like_the_loader_finds_them() {
        // /lib -> usr/lib (merged /usr), /lib64/ld.so -> ../lib/x86_64-linux-gnu/ld.so,
        // /usr/lib/x86_64-linux-gnu/{libc.so.6 -> libc-2.36.so, libc-2.36.so, ld.so},
        // /usr/bin/prog (needs libc.so.6, libapp.so via $ORIGIN/../lib/app),
        // /usr/lib/app/libapp.so (needs libc.so.6, libmissing.so).
        let mut t = Tree::default();
        let nodes: Vec<Node> = vec![
            link("usr/lib"),                                             // 1 /lib
            dir(&[("ld.so", 3)]),                                        // 2 /lib64
            link("../lib/x86_64-linux-gnu/ld.so"),                       // 3 /lib64/ld.so
            dir(&[("lib", 5), ("bin", 11)]),                             // 4 /usr
            dir(&[("x86_64-linux-gnu", 6), ("app", 13)]),                // 5 /usr/lib
            dir(&[("libc.so.6", 7), ("libc-2.36.so", 8), ("ld.so", 9)]), // 6
            link("libc-2.36.so"),                                        // 7
            Node::new(NodeKind::File),                                   // 8 libc
            Node::new(NodeKind::File),                                   // 9 ld.so
            Node::new(NodeKind::File),                                   // 10 prog
            dir(&[("prog", 10)]),                                        // 11 /usr/bin
            Node::new(NodeKind::File),                                   // 12 libapp
            dir(&[("libapp.so", 12)]),                                   // 13 /usr/lib/app
            dir(&[("ld.so.cache", 15)]),                                 // 14 /etc
            Node::new(NodeKind::File),                                   // 15 ld.so.cache
        ];
        t.nodes.extend(nodes);
        t.nodes[0] = dir(&[("lib", 1), ("lib64", 2), ("usr", 4), ("etc", 14)]);
        let facts = HashMap::from([
            (
                10,
                ElfFacts {
                    needed: vec![b"libc.so.6".to_vec(), b"libapp.so".to_vec()],
                    search: vec![b"$ORIGIN/../lib/app".to_vec()],
                    interpreter: Some(b"/lib64/ld.so".to_vec()),
                    machine: object::elf::EM_X86_64,
                    hot: vec![(0, 4096)],
                },
            ),
            (
                12,
                ElfFacts {
                    needed: vec![b"libc.so.6".to_vec(), b"libmissing.so".to_vec()],
                    machine: object::elf::EM_X86_64,
                    ..ElfFacts::default()
                },
            ),
        ]);
        let hints = resolve(&t, &facts);
        assert_eq!(hints.len(), 2);
        // Inode = node + 1. Loader and its cache first, then the needs in order.
        assert_eq!(hints[0].ino, 11);
        assert_eq!(hints[0].dependencies, [10, 16, 9, 13]);
        assert_eq!(hints[0].hot_ranges, [(0, 4096)]);
        assert_eq!(hints[1].ino, 13);
        assert_eq!(hints[1].dependencies, [9], "libmissing.so is left out");
    }

    #[test]
    fn dependency_lists_are_bounded_and_loops_end() {
        // A chain of libraries, each needing the next, and the last the first.
        let n = MAX_DEPENDENCIES as u32 + 10;
        let mut t = Tree::default();
        let mut facts = HashMap::new();
        let mut lib = Node::new(NodeKind::Dir);
        for i in 0..n {
            t.nodes.push(Node::new(NodeKind::File));
            lib.children.insert(format!("l{i}.so").into_bytes(), i + 1);
            facts.insert(
                i + 1,
                ElfFacts {
                    needed: vec![format!("l{}.so", (i + 1) % n).into_bytes()],
                    ..ElfFacts::default()
                },
            );
        }
        t.nodes.push(lib);
        t.nodes[0] = dir(&[("lib", n + 1)]);
        // A symlink loop in the search path must end too.
        t.nodes[0].children.insert(b"loop".to_vec(), n + 2);
        t.nodes.push(link("loop"));
        let hints = resolve(&t, &facts);
        assert_eq!(hints.len(), n as usize);
        assert!(hints
            .iter()
            .all(|h| h.dependencies.len() == MAX_DEPENDENCIES));
        assert!(hints.iter().all(|h| !h.dependencies.contains(&h.ino)));
    }
}
