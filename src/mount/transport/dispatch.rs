//! The one dispatch both transports call: fuse-backend-rs's
//! `Server::handle_message` over the one [`ClipFs`], or, for a READ that
//! would wait on the network, the hand-off pool.

use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{InHeader, ReadIn};
use fuse_backend_rs::api::server::{MetricsHook, Server};
use fuse_backend_rs::transport::{Reader, Writer};
use vm_memory::bitmap::BitmapSlice;

use super::handoff::{Handoff, ReadRequest};
use crate::fuse::ClipFs;
use crate::metrics::FuseMetricsHook;

/// FUSE opcodes the transports look at before dispatching.
pub(super) mod opcode {
    /// `FUSE_READ`.
    pub const READ: u32 = 15;
    /// `FUSE_INIT`.
    pub const INIT: u32 = 26;
    /// `FUSE_INTERRUPT`.
    pub const INTERRUPT: u32 = 36;
}

/// Serves requests on the filesystem.
pub(super) struct Dispatch {
    pub(super) server: Server<Arc<ClipFs>>,
    pub(super) fs: Arc<ClipFs>,
    pub(super) hook: Option<FuseMetricsHook>,
    pub(super) handoff: Handoff,
}

impl Dispatch {
    /// Serves one request now, on this thread; the reply goes into `w`.
    /// Errors are logged (a reply the kernel refused because the request
    /// was interrupted is one of them).
    pub(super) fn serve<S: BitmapSlice>(&self, r: Reader<'_, S>, w: Writer<'_, S>) {
        let hook = self.hook.as_ref().map(|h| h as &dyn MetricsHook);
        if let Err(e) = self.server.handle_message(r, w, None, hook) {
            tracing::debug!(error = %e, "FUSE message");
        }
    }

    /// The READ to hand to the pool, or `None` to serve it inline (its bytes
    /// are in memory or on local disk, or it fails at once).
    pub(super) fn route_read(&self, ih: &InHeader, read: &ReadIn) -> Option<ReadRequest> {
        self.fs
            .read_would_block(ih.nodeid, read.offset, read.size)
            .then_some(ReadRequest {
                unique: ih.unique,
                ino: ih.nodeid,
                offset: read.offset,
                size: read.size,
            })
    }
}
