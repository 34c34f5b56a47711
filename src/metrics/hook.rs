//! [`FuseMetricsHook`]: times every FUSE request through fuse-backend-rs's
//! `MetricsHook`, which `Server::handle_message` calls around each request
//! on the worker thread (`collect` before, `release` after).

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use fuse_backend_rs::api::server::MetricsHook;

use super::{Metrics, Op};

thread_local! {
    /// `(start, opcode)` of the request this worker thread is handling.
    /// `collect`/`release` pair up on one thread and never nest.
    static CURRENT: Cell<Option<(Instant, u32)>> = const { Cell::new(None) };
}

/// Adapter from fuse-backend-rs's `MetricsHook` to [`Metrics`]: pass
/// `Some(&hook)` as the last argument of `Server::handle_message`.
#[derive(Debug, Clone)]
pub struct FuseMetricsHook {
    metrics: Arc<Metrics>,
}

impl FuseMetricsHook {
    /// A hook recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        FuseMetricsHook { metrics }
    }
}

/// Maps a FUSE opcode to the [`Op`] it is counted under.
pub fn op_for_opcode(opcode: u32) -> Op {
    const fn c(o: Opcode) -> u32 {
        o as u32
    }
    match opcode {
        x if x == c(Opcode::Lookup) => Op::Lookup,
        x if x == c(Opcode::Getattr) => Op::Getattr,
        x if x == c(Opcode::Readdir) => Op::Readdir,
        x if x == c(Opcode::Readdirplus) => Op::Readdirplus,
        x if x == c(Opcode::Read) => Op::Read,
        x if x == c(Opcode::Readlink) => Op::Readlink,
        x if x == c(Opcode::Getxattr) => Op::Getxattr,
        x if x == c(Opcode::Listxattr) => Op::Listxattr,
        x if x == c(Opcode::Open) => Op::Open,
        x if x == c(Opcode::Statfs) => Op::Statfs,
        _ => Op::Other,
    }
}

impl MetricsHook for FuseMetricsHook {
    fn collect(&self, ih: &InHeader) {
        CURRENT.with(|c| c.set(Some((Instant::now(), ih.opcode))));
    }

    fn release(&self, oh: Option<&OutHeader>) {
        // fuse-backend-rs 0.14 always passes `None`; when it passes the reply
        // header, a negative `error` marks a failed op.
        if let Some((start, opcode)) = CURRENT.with(|c| c.take()) {
            let error = oh.is_some_and(|h| h.error < 0);
            self.metrics
                .record_fuse_op(op_for_opcode(opcode), start.elapsed(), error);
        }
    }
}
