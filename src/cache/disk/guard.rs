//! SIGBUS guard of the store's mappings: a page of a mapped store file that
//! no longer exists (the file was truncated under the daemon) is replaced by
//! a zero page instead of killing the process.
//!
//! A process-wide SIGBUS handler (installed once, chained to the one it
//! replaces: Rust's own stack-overflow handler, or the default action)
//! looks the faulting address up in a fixed table of registered regions.
//! Inside one, it maps an anonymous zero page over the faulting page
//! (`mmap(MAP_FIXED)` is a plain system call, safe in a signal handler) and
//! returns, so the faulting copy resumes and reads zeros, which the store's
//! per-page checksums then reject. Outside, the previous handler runs.
//! Global state is unavoidable here: a signal handler has no context
//! pointer. The store remaps a slot from its file after a failed checksum
//! ([`remap_shared`]), so a file restored to its size is served again.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Regions registered at once, process-wide (each store registers its
/// table and its slab files).
const MAX_REGIONS: usize = 4096;

const PAGE: usize = 4096;

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
};

static REGIONS: [Slot; MAX_REGIONS] = [EMPTY; MAX_REGIONS];
/// Faults absorbed so far (zero pages mapped).
static FAULTS: AtomicU64 = AtomicU64::new(0);
/// The handler this one replaced, called for faults outside the regions.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// A registered region; unregistered on drop (before its mapping goes).
#[derive(Debug)]
pub(super) struct Region(usize);

impl Drop for Region {
    fn drop(&mut self) {
        REGIONS[self.0].len.store(0, Ordering::Release);
        REGIONS[self.0].start.store(0, Ordering::Release);
    }
}

/// Faults absorbed in this process so far.
pub(super) fn faults() -> u64 {
    FAULTS.load(Ordering::Acquire)
}

/// Installs the handler (once) and registers `[start, start+len)`; `None`
/// when the handler cannot be installed or every region slot is taken (the
/// caller must then not map the file).
pub(super) fn register(start: *const u8, len: usize) -> Option<Region> {
    install().ok()?;
    for (i, r) in REGIONS.iter().enumerate() {
        if r.start
            .compare_exchange(0, start as usize, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            r.len.store(len, Ordering::Release);
            return Some(Region(i));
        }
    }
    None
}

fn install() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let r = INSTALLED.get_or_init(|| {
        // SAFETY: a zeroed `sigaction` is a valid "no handler, no flags"
        // value; `sigemptyset` and `sigaction` get valid pointers to it.
        unsafe {
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_sigbus as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &new, &mut old) != 0 {
                return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
            let _ = PREVIOUS.set(old);
        }
        Ok(())
    });
    r.map_err(io::Error::from_raw_os_error)
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    for r in REGIONS.iter() {
        let len = r.len.load(Ordering::Acquire);
        let start = r.start.load(Ordering::Acquire);
        if len != 0 && addr >= start && addr < start + len {
            let page = addr & !(PAGE - 1);
            // SAFETY: `page` lies in a mapping the store owns and keeps
            // until it unregisters the region; replacing one page of it by
            // a private zero page only changes what its readers see (the
            // checksums reject it). mmap is async-signal-safe.
            let p = unsafe {
                libc::mmap(
                    page as *mut libc::c_void,
                    PAGE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                FAULTS.fetch_add(1, Ordering::AcqRel);
                return;
            }
        }
    }
    // Not ours: what would have happened without this handler.
    match PREVIOUS.get() {
        Some(old)
            if old.sa_sigaction != libc::SIG_DFL
                && old.sa_sigaction != libc::SIG_IGN
                && old.sa_flags & libc::SA_SIGINFO != 0 =>
        {
            // SAFETY: the previous handler was installed as an SA_SIGINFO
            // handler with this signature.
            unsafe {
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    std::mem::transmute(old.sa_sigaction);
                f(sig, info, ctx);
            }
        }
        Some(old) if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN => {
            // SAFETY: a plain handler installed without SA_SIGINFO.
            unsafe {
                let f: extern "C" fn(libc::c_int) = std::mem::transmute(old.sa_sigaction);
                f(sig);
            }
        }
        _ => {
            // Back to the default action; returning re-executes the
            // faulting access, which now kills the process as it should.
            // SAFETY: a zeroed sigaction with SIG_DFL is valid.
            unsafe {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
            }
        }
    }
}

/// Maps `[offset, offset+len)` of `fd` again over `addr` (read-only,
/// shared): undoes zero pages the handler put there once the file is back
/// to its size.
///
/// # Safety
/// `addr..addr+len` must be page aligned and lie inside a read-only shared
/// mapping of `fd` at the same file offsets that the caller owns.
pub(super) unsafe fn remap_shared(
    addr: *const u8,
    len: usize,
    fd: BorrowedFd<'_>,
    offset: u64,
) -> io::Result<()> {
    // SAFETY: by the caller's contract the range is its own mapping of the
    // same file range; MAP_FIXED replaces it in place.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ,
            libc::MAP_FIXED | libc::MAP_SHARED,
            fd.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
