//! The unsafe room of the io_uring transport: building and pushing the
//! 128-byte `IORING_OP_URING_CMD` SQEs of FUSE over io_uring, the eventfd
//! that wakes a queue thread, and CPU pinning.
//!
//! uapi (`include/uapi/linux/fuse.h`): the command data of an SQE128 is a
//! `struct fuse_uring_cmd_req { u64 flags; u64 commit_id; u16 qid; u8
//! padding[6]; }`; `FUSE_IO_URING_CMD_REGISTER` also passes `sqe->addr`, an
//! array of two iovecs (header, payload), and `sqe->len == 2`.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use io_uring::squeue::{Entry, Entry128};
use io_uring::{opcode, types, IoUring};

/// `FUSE_IO_URING_CMD_REGISTER`.
pub(super) const CMD_REGISTER: u32 = 1;
/// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`.
pub(super) const CMD_COMMIT_AND_FETCH: u32 = 2;

/// Offset of `len` in `struct io_uring_sqe`.
const SQE_LEN: usize = 24;

/// A queue's ring: SQE128, one SQE in flight per entry plus the wake poll.
pub(super) type Ring = IoUring<Entry128, io_uring::cqueue::Entry>;

/// The two iovecs `FUSE_IO_URING_CMD_REGISTER` reads: header, payload.
pub(super) struct Iovecs([libc::iovec; 2]);

// SAFETY: the iovecs only carry addresses for the kernel; this process never
// dereferences them through this type.
unsafe impl Send for Iovecs {}

impl Iovecs {
    pub(super) fn new(bufs: [(*mut u8, usize); 2]) -> Self {
        Iovecs(bufs.map(|(base, len)| libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        }))
    }
}

/// A `FUSE_IO_URING_CMD_*` SQE for queue `qid` on the `/dev/fuse` fd.
fn uring_cmd(fuse: RawFd, cmd_op: u32, qid: u16, commit_id: u64) -> opcode::UringCmd80 {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    opcode::UringCmd80::new(types::Fd(fuse), cmd_op).cmd(cmd)
}

/// Pushes SQEs onto a queue's ring. The kernel keeps using the memory an
/// SQE points at (the iovecs while registering, the entry buffers they
/// name until the connection ends), so the owner of a `Submitter` keeps
/// that memory alive (or leaks it) as long as the ring may use it; see
/// `uring::Queue`'s `Drop`.
pub(super) struct Submitter<'a> {
    pub(super) ring: &'a mut Ring,
}

impl Submitter<'_> {
    fn push(&mut self, e: &Entry128) -> io::Result<()> {
        // SAFETY: every SQE pushed here references only memory whose
        // lifetime the caller ties to the ring (see the type's docs): the
        // entry buffers and iovecs of `uring::Queue`, or none (poll).
        unsafe { self.ring.submission().push(e) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))
    }

    /// `FUSE_IO_URING_CMD_REGISTER` of the buffers in `iov` as an entry of
    /// queue `qid`; its completion delivers the entry's first request.
    pub(super) fn register(
        &mut self,
        fuse: RawFd,
        qid: u16,
        iov: &Iovecs,
        user_data: u64,
    ) -> io::Result<()> {
        let e = uring_cmd(fuse, CMD_REGISTER, qid, 0)
            .addr(Some(iov.0.as_ptr() as u64))
            .build()
            .user_data(user_data);
        // SAFETY: `Entry128` is `#[repr(C)]` over two 64-byte halves of
        // plain integers (the kernel's `struct io_uring_sqe` and its
        // command tail), so every 128-byte pattern is a valid value; only
        // the `len` field (u32 at offset 24) changes, which the crate's
        // builder has no setter for.
        let e = unsafe {
            let mut raw: [u8; 128] = std::mem::transmute(e);
            raw[SQE_LEN..SQE_LEN + 4].copy_from_slice(&2u32.to_ne_bytes());
            std::mem::transmute::<[u8; 128], Entry128>(raw)
        };
        self.push(&e)
    }

    /// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`: the reply in the entry of
    /// request `commit_id` goes to the kernel, and the entry waits for the
    /// next request.
    pub(super) fn commit(
        &mut self,
        fuse: RawFd,
        qid: u16,
        commit_id: u64,
        user_data: u64,
    ) -> io::Result<()> {
        let e = uring_cmd(fuse, CMD_COMMIT_AND_FETCH, qid, commit_id)
            .build()
            .user_data(user_data);
        self.push(&e)
    }

    /// A one-shot poll for `fd` becoming readable.
    pub(super) fn poll(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let e: Entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(user_data);
        self.push(&Entry128::from(e))
    }
}

/// An eventfd: other threads `notify`, the queue thread polls it in its
/// ring and `drain`s it.
#[derive(Debug)]
pub(super) struct EventFd(File);

impl EventFd {
    pub(super) fn new() -> io::Result<Self> {
        // SAFETY: eventfd(2) takes no pointers; a non-negative result is a
        // new fd that nothing else owns, which `File` then owns and closes.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: see above: `fd` is valid and owned by no one else.
        Ok(EventFd(unsafe { File::from_raw_fd(fd) }))
    }

    pub(super) fn notify(&self) {
        // Only fails if the counter would overflow: it is already set.
        let _ = (&self.0).write(&1u64.to_ne_bytes());
    }

    pub(super) fn drain(&self) {
        let _ = (&self.0).read(&mut [0u8; 8]);
    }

    pub(super) fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Runs the calling thread on `cpu` only: a queue serves the requests of
/// tasks on that CPU, so its thread wakes where they were issued.
pub(super) fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: `cpu_set_t` is a plain bit array, valid all-zero;
    // `CPU_SET` writes inside it (it checks the index against its size);
    // sched_setaffinity reads `size_of` bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
