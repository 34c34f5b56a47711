//! The generated server side of containerd's snapshots service (build.rs);
//! the messages are `containerd-client`'s.

#![allow(missing_docs, clippy::all)]

tonic::include_proto!("containerd.services.snapshots.v1");
