//! [`S3Writer`]: an object written front-last by multipart upload. Part 1
//! (the front, then data up to one part size) is held in memory and
//! uploaded last; parts 2.. are uploaded as they fill, a few at a time, on
//! the client's runtime. An object smaller than one part is one PUT. On
//! failure or abort the upload is aborted: the key never shows a partial
//! object.

use std::collections::VecDeque;

use bytes::Bytes;
use object_store::multipart::{MultipartStore, PartId};
use object_store::{MultipartId, ObjectStoreExt, PutPayload};
use tokio::task::JoinHandle;

use super::{S3Client, S3Error};
use crate::object::ObjectWrite;
use crate::source::{RemoteKind, SourceError};

/// Size of the first parts; S3 wants at least 5 MiB for all but the last.
const PART: usize = 8 << 20;
/// Parts after which the part size doubles (S3 allows 10,000 parts).
const PARTS_PER_SIZE: usize = 1000;
/// Largest part (S3 allows 5 GiB).
const MAX_PART: usize = 512 << 20;
/// Parts uploaded at once.
const IN_FLIGHT: usize = 4;
/// S3's limit on the number of parts.
const MAX_PARTS: usize = 10_000;

type Upload = JoinHandle<Result<PartId, object_store::Error>>;

/// See the module documentation.
#[derive(Debug)]
pub struct S3Writer {
    client: S3Client,
    front_len: u64,
    /// Part 1: zeros for the front, then data.
    first: Vec<u8>,
    /// The part being filled (number `parts.len() + 2`).
    current: Vec<u8>,
    upload: Option<MultipartId>,
    /// Uploads started, in part order (part 2 first).
    parts: Vec<Option<PartId>>,
    running: VecDeque<(usize, Upload)>,
    len: u64,
}

impl S3Writer {
    pub(super) fn new(client: S3Client, front_len: u64) -> Self {
        S3Writer {
            client,
            front_len,
            first: vec![0; front_len as usize],
            current: Vec::new(),
            upload: None,
            parts: Vec::new(),
            running: VecDeque::new(),
            len: front_len,
        }
    }

    fn part_size(&self) -> usize {
        (PART << (self.parts.len() / PARTS_PER_SIZE)).min(MAX_PART)
    }

    fn err(&self, e: object_store::Error) -> SourceError {
        self.client.error(e).into()
    }

    /// Waits for the oldest running upload.
    fn wait_one(&mut self) -> Result<(), SourceError> {
        let Some((slot, handle)) = self.running.pop_front() else {
            return Ok(());
        };
        let part = self
            .client
            .block_on(handle)?
            .map_err(|e| {
                SourceError::remote(
                    RemoteKind::Transient,
                    format!("{}: part upload: {e}", self.client.url),
                )
            })?
            .map_err(|e| self.err(e))?;
        self.parts[slot] = Some(part);
        Ok(())
    }

    /// Starts uploading `current` as the next part.
    fn send_current(&mut self) -> Result<(), SourceError> {
        if self.parts.len() + 2 > MAX_PARTS {
            return Err(S3Error::Request {
                url: self.client.url.to_string(),
                detail: "object too large for a multipart upload".into(),
            }
            .into());
        }
        let path = self.client.path();
        if self.upload.is_none() {
            let (store, p) = (self.client.store.clone(), path.clone());
            let id = self
                .client
                .block_on(async move { store.create_multipart(&p).await })?
                .map_err(|e| self.err(e))?;
            self.upload = Some(id);
        }
        while self.running.len() >= IN_FLIGHT {
            self.wait_one()?;
        }
        let data = Bytes::from(std::mem::take(&mut self.current));
        let (store, id) = (
            self.client.store.clone(),
            self.upload.clone().unwrap_or_default(),
        );
        // Part numbers start at 0 here; part 0 is `first`, sent last.
        let idx = self.parts.len() + 1;
        let handle = self.client.runtime.spawn(async move {
            store
                .put_part(&path, &id, idx, PutPayload::from(data))
                .await
        });
        self.parts.push(None);
        self.running.push_back((idx - 1, handle));
        Ok(())
    }

    fn abort_upload(&mut self) {
        for (_, h) in self.running.drain(..) {
            h.abort();
        }
        if let Some(id) = self.upload.take() {
            let (store, path) = (self.client.store.clone(), self.client.path());
            let _ = self
                .client
                .block_on(async move { store.abort_multipart(&path, &id).await });
        }
    }
}

impl ObjectWrite for S3Writer {
    fn write(&mut self, mut data: &[u8]) -> Result<(), SourceError> {
        self.len += data.len() as u64;
        if self.first.len() < PART {
            let n = data.len().min(PART - self.first.len());
            self.first.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        while !data.is_empty() {
            let size = self.part_size();
            let n = data.len().min(size - self.current.len());
            self.current.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.current.len() == size {
                if let Err(e) = self.send_current() {
                    self.abort_upload();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>, front: &[u8]) -> Result<u64, SourceError> {
        if front.len() as u64 != self.front_len {
            self.abort_upload();
            return Err(SourceError::remote(
                RemoteKind::Permanent,
                "front length changed",
            ));
        }
        self.first[..front.len()].copy_from_slice(front);
        let first = Bytes::from(std::mem::take(&mut self.first));
        let path = self.client.path();
        let store = self.client.store.clone();
        if self.upload.is_none() && self.current.is_empty() {
            self.client
                .block_on(async move { store.put(&path, PutPayload::from(first)).await })?
                .map_err(|e| self.err(e))?;
            return Ok(self.len);
        }
        let r = (|| {
            if !self.current.is_empty() {
                self.send_current()?;
            }
            let id = self.upload.clone().unwrap_or_default();
            let (store, p) = (store.clone(), path.clone());
            let idx0 = self.client.block_on(async move {
                store.put_part(&p, &id, 0, PutPayload::from(first)).await
            })?;
            let idx0 = idx0.map_err(|e| self.err(e))?;
            while !self.running.is_empty() {
                self.wait_one()?;
            }
            let mut parts = vec![idx0];
            parts.extend(self.parts.iter().flatten().cloned());
            let id = self.upload.clone().unwrap_or_default();
            let store = self.client.store.clone();
            self.client
                .block_on(async move { store.complete_multipart(&path, &id, parts).await })?
                .map_err(|e| self.err(e))?;
            Ok(self.len)
        })();
        if r.is_err() {
            self.abort_upload();
        } else {
            self.upload = None;
        }
        r
    }

    fn abort(mut self: Box<Self>) {
        self.abort_upload();
    }
}
