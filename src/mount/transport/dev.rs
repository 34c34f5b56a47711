//! The `/dev/fuse` transport: worker threads reading requests from the
//! device (fuse-backend-rs's `FuseChannel`) and writing the replies; and,
//! because the kernel sends it there, the INIT that decides whether the rest
//! goes over io_uring.

use std::fs::File;
use std::io::{IoSlice, Read, Write};
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use fuse_backend_rs::abi::fuse_abi::{
    InHeader, InitIn, InitIn2, InitOut, InterruptIn, OutHeader, ReadIn,
};
use fuse_backend_rs::transport::{FuseBuf, FuseChannel, FuseDevWriter, Reader, Writer};
use vm_memory::ByteValued;

use super::dispatch::opcode;
use super::handoff::{Answer, ReadReply};
use super::{lock, uring, Shared, TransportKind};

/// `FUSE_INIT_EXT`: `flags2` of INIT is valid.
const INIT_EXT: u32 = 1 << 30;
/// `FUSE_OVER_IO_URING` (bit 41 of the 64-bit flags, bit 9 of `flags2`).
const OVER_IO_URING: u32 = 1 << 9;

/// Starts worker `i` on channel `ch`.
pub(super) fn spawn_worker(
    i: usize,
    mut ch: FuseChannel,
    shared: Arc<Shared>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("clip-fuse-{i}"))
        .spawn(move || loop {
            match ch.get_request() {
                Ok(Some((reader, writer))) => serve(&shared, reader, writer),
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "FUSE channel closed");
                    break;
                }
            }
        })
}

/// Serves one request read from `/dev/fuse`.
fn serve(shared: &Shared, reader: Reader<'_>, writer: FuseDevWriter<'_>) {
    let mut peek = reader.clone();
    let Ok(ih) = peek.read_obj::<InHeader>() else {
        return;
    };
    match ih.opcode {
        opcode::INIT => init(shared, reader, &mut peek),
        opcode::INTERRUPT => {
            // No reply: the interrupted request's own reply says EINTR.
            if let Ok(i) = peek.read_obj::<InterruptIn>() {
                shared.dispatch.handoff.interrupt(i.unique);
            }
        }
        opcode::READ => {
            let read = peek.read_obj::<ReadIn>().ok();
            match read.and_then(|r| shared.dispatch.route_read(&ih, &r)) {
                Some(req) => shared.dispatch.handoff.submit(
                    req,
                    Box::new(DevAnswer {
                        fuse: shared.fuse.clone(),
                    }),
                ),
                None => shared.dispatch.serve(reader, writer.into()),
            }
        }
        _ => shared.dispatch.serve(reader, writer.into()),
    }
}

/// Answers INIT: the server's reply, plus `FUSE_OVER_IO_URING` when the
/// kernel offered it and the mount wants it; then starts the rings.
fn init(shared: &Shared, reader: Reader<'_>, peek: &mut Reader<'_>) {
    // Kept byte for byte: a successor taking the connection over replays it.
    let mut raw = Vec::with_capacity(reader.available_bytes());
    if reader.clone().read_to_end(&mut raw).is_ok() {
        *lock(&shared.init_request) = Some(raw);
    }
    let offered = peek.read_obj::<InitIn>().is_ok_and(|i| {
        i.flags & INIT_EXT != 0
            && peek
                .read_obj::<InitIn2>()
                .is_ok_and(|i2| i2.flags2 & OVER_IO_URING != 0)
    });
    // fuse-backend-rs drops INIT flags it does not know, so its reply is
    // staged in a buffer (a split FuseDevWriter only writes on commit,
    // which a successful INIT reply never calls) and completed here.
    let fd = shared.fuse.as_raw_fd();
    let mut buf = vec![0u8; 4096];
    let staged = FuseDevWriter::<()>::new(fd, &mut buf).and_then(|mut w| w.split_at(0));
    let Ok(staged) = staged else {
        tracing::error!("cannot stage the INIT reply");
        return;
    };
    shared.dispatch.serve(reader, Writer::FuseDev(staged));
    let mut out = OutHeader::default();
    out.as_mut_slice()
        .copy_from_slice(&buf[..size_of::<OutHeader>()]);
    let len = out.len as usize;
    if out.error != 0 || len < size_of::<OutHeader>() || len > buf.len() {
        // An error reply was written (committed) by the server itself.
        shared.settle(TransportKind::Dev, "/dev/fuse (INIT failed)");
        return;
    }
    let body = size_of::<OutHeader>()..size_of::<OutHeader>() + size_of::<InitOut>();
    // The rings are set up before INIT is answered: once it negotiates
    // io_uring, only a failed registration lets the kernel fall back.
    let mut rings = None;
    if shared.offer_uring && offered && len >= body.end {
        match uring::Rings::prepare(shared) {
            Ok(r) => rings = Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "cannot set up FUSE over io_uring; using /dev/fuse")
            }
        }
    }
    let uring = rings.is_some();
    if uring {
        let mut init = InitOut::default();
        init.as_mut_slice().copy_from_slice(&buf[body.clone()]);
        init.flags |= INIT_EXT;
        init.flags2 |= OVER_IO_URING;
        buf[body].copy_from_slice(init.as_slice());
    }
    if let Err(e) = (&*shared.fuse).write_all(&buf[..len]) {
        tracing::error!(error = %e, "writing the INIT reply");
        return;
    }
    let Some(rings) = rings else {
        let why = match (shared.offer_uring, offered) {
            (false, _) => "/dev/fuse",
            (true, false) => "/dev/fuse (the kernel did not offer FUSE_OVER_IO_URING)",
            (true, true) => "/dev/fuse (io_uring could not be set up)",
        };
        shared.settle(TransportKind::Dev, why);
        return;
    };
    // INIT is answered: the kernel holds new requests back until every
    // queue has a ring entry (or a registration fails, which turns io_uring
    // off for the connection and lets them through /dev/fuse).
    let registered = rings.register();
    let why = format!(
        "io_uring ({} queues x {} entries)",
        rings.queues(),
        shared.uring_depth
    );
    *lock(&shared.rings) = Some(rings);
    match registered {
        Ok(()) => shared.settle(TransportKind::Uring, &why),
        Err(e) => {
            tracing::warn!(error = %e, "FUSE over io_uring did not start; falling back to /dev/fuse");
            shared.settle(TransportKind::Dev, "/dev/fuse (io_uring did not start)");
        }
    }
}

/// Replays the INIT request `request` (recorded by the daemon this one
/// takes over from) into `shared`'s server and filesystem. The reply is
/// staged in a buffer and dropped: the kernel got the real one long ago. A
/// server that fails INIT writes its error reply itself, so the writer's fd
/// is `/dev/null`, never `/dev/fuse`.
pub(super) fn replay_init(shared: &Shared, request: &[u8]) -> Result<(), String> {
    let mut req = request.to_vec();
    let mut peek = Reader::<()>::from_fuse_buffer(FuseBuf::new(&mut req))
        .map_err(|e| format!("request buffer: {e}"))?;
    let ih = peek
        .read_obj::<InHeader>()
        .map_err(|e| format!("request header: {e}"))?;
    if ih.opcode != opcode::INIT {
        return Err(format!("opcode {} is not INIT", ih.opcode));
    }
    let mut req = request.to_vec();
    let reader = Reader::<()>::from_fuse_buffer(FuseBuf::new(&mut req))
        .map_err(|e| format!("request buffer: {e}"))?;
    let sink = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("open /dev/null: {e}"))?;
    let mut buf = vec![0u8; 4096];
    let staged = FuseDevWriter::<()>::new(sink.as_raw_fd(), &mut buf)
        .and_then(|mut w| w.split_at(0))
        .map_err(|e| format!("staging the reply: {e}"))?;
    shared.dispatch.serve(reader, Writer::FuseDev(staged));
    let mut out = OutHeader::default();
    out.as_mut_slice()
        .copy_from_slice(&buf[..size_of::<OutHeader>()]);
    if out.error != 0 || (out.len as usize) < size_of::<OutHeader>() + size_of::<InitOut>() {
        return Err(format!(
            "the server refused it (error {}, reply of {} bytes)",
            out.error, out.len
        ));
    }
    Ok(())
}

/// Replies to `/dev/fuse` from any thread (one `writev` per reply, which the
/// kernel takes whole).
struct DevAnswer {
    fuse: Arc<File>,
}

impl Answer for DevAnswer {
    fn send(&self, unique: u64, reply: ReadReply) {
        let (error, data) = match &reply {
            ReadReply::Data(d) => (0, d.as_slice()),
            ReadReply::Error(e) => (-e, &[][..]),
        };
        let out = OutHeader {
            len: (size_of::<OutHeader>() + data.len()) as u32,
            error,
            unique,
        };
        let bufs = [IoSlice::new(out.as_slice()), IoSlice::new(data)];
        // ENOENT: the kernel no longer waits for it (aborted, or
        // interrupted and already answered).
        if let Err(e) = (&*self.fuse).write_vectored(&bufs) {
            tracing::debug!(unique, error = %e, "late READ reply refused");
        }
    }
}
