//! The memory of one io_uring queue: its ring entries' header and payload
//! buffers, and the fuse-backend-rs `Reader`/`Writer` over them.
//!
//! fuse-backend-rs reads requests and writes replies through its own
//! `Reader`/`Writer`, which exist for `/dev/fuse` (one flat buffer, replies
//! written to the device) and for virtio-fs (descriptor chains in guest
//! memory, replies written in place). A ring entry is two buffers with the
//! request split over them and the reply going into them, which is what a
//! descriptor chain describes, so the entries live in a `vm-memory`
//! `GuestMemoryMmap` (anonymous memory, here simply this process's) and
//! each request gets a small private virtqueue chain: readable descriptors
//! for the in-header, the op header and the payload, writable ones for the
//! out-header and the payload. `Server::handle_message` then reads the
//! request from, and writes the reply into, the entry's own buffers: no
//! copy besides the one the kernel makes.
//!
//! Layout of an entry (uapi `struct fuse_uring_req_header`): `in_out` (128
//! bytes: `fuse_in_header` of the request, `fuse_out_header` of the reply),
//! `op_in` (128 bytes: the opcode's own header, e.g. `fuse_read_in`),
//! `ring_ent_in_out` (`flags`, `commit_id`, `payload_sz`, ...); the payload
//! buffer holds the rest of the request (a name, ...) and the reply's body.

use std::mem::size_of;
use std::sync::atomic::Ordering;

use fuse_backend_rs::abi::fuse_abi::{InHeader, OutHeader, ReadIn};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

/// Size of `struct fuse_uring_req_header`.
pub(super) const HEADER_SIZE: usize = 288;
/// Offset of `op_in` in it.
const OP_IN: u64 = 128;
/// Room for `op_in`.
const OP_IN_SIZE: u64 = 128;
/// Offsets of `ring_ent_in_out.commit_id` and `.payload_sz`.
const COMMIT_ID: u64 = 256 + 8;
const PAYLOAD_SZ: u64 = 256 + 16;
/// Bytes between two entries' headers.
const HEADER_STRIDE: u64 = 512;
/// Payload buffer of an entry: the kernel wants at least
/// `max(max_write, max_pages * PAGE_SIZE)`, 1 MiB with the 256 pages INIT
/// negotiates (fuse-backend-rs's `MAX_REQ_PAGES`).
pub(super) const PAYLOAD_SIZE: u64 = 1 << 20;
/// Descriptors one request uses at most (3 readable, 2 writable).
const DESCS_PER_ENTRY: u16 = 5;
const PAGE: u64 = 4096;
/// `VRING_DESC_F_NEXT`, `VRING_DESC_F_WRITE`.
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

fn page_up(n: u64) -> u64 {
    n.div_ceil(PAGE) * PAGE
}

/// What the kernel put in an entry.
#[derive(Debug, Clone)]
pub(super) struct Request {
    pub(super) header: InHeader,
    /// To quote in the commit of the reply.
    pub(super) commit_id: u64,
    /// Bytes of the request in the payload buffer.
    payload: u32,
    /// Bytes of the request in `op_in`.
    op_in: u32,
    /// Why the request cannot be served (sizes that do not add up); it is
    /// answered with EIO.
    pub(super) malformed: Option<String>,
}

/// The buffers of `depth` entries plus the private virtqueue.
pub(super) struct Entries {
    mem: GuestMemoryMmap,
    queue: Queue,
    /// Next index of the virtqueue's available ring.
    avail_idx: u16,
    depth: u16,
    desc: u64,
    avail: u64,
    headers: u64,
    payloads: u64,
}

impl Entries {
    /// Maps (lazily: untouched pages cost nothing) the buffers of `depth`
    /// entries. Payloads are page-aligned, so copies into them run at full
    /// speed (FACTS: misaligned copies are several times slower here).
    pub(super) fn new(depth: u16) -> Result<Self, String> {
        let qsize = (depth * DESCS_PER_ENTRY).next_power_of_two();
        // The virtqueue refuses an available ring at guest address 0.
        let desc = PAGE;
        let avail = page_up(desc + 16 * u64::from(qsize));
        let used = page_up(avail + 6 + 2 * u64::from(qsize));
        let headers = page_up(used + 6 + 8 * u64::from(qsize));
        let payloads = page_up(headers + HEADER_STRIDE * u64::from(depth));
        let end = payloads + PAYLOAD_SIZE * u64::from(depth);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), end as usize)])
            .map_err(|e| format!("map {} MiB of ring buffers: {e}", end >> 20))?;
        let mut queue = Queue::new(qsize).map_err(|e| format!("virtqueue: {e}"))?;
        queue.set_size(qsize);
        queue.set_desc_table_address(Some(desc as u32), Some(0));
        queue.set_avail_ring_address(Some(avail as u32), Some(0));
        queue.set_used_ring_address(Some(used as u32), Some(0));
        queue.set_ready(true);
        if !queue.is_valid(&mem) {
            return Err("virtqueue layout rejected".into());
        }
        Ok(Entries {
            mem,
            queue,
            avail_idx: 0,
            depth,
            desc,
            avail,
            headers,
            payloads,
        })
    }

    /// Entries.
    pub(super) fn depth(&self) -> u16 {
        self.depth
    }

    fn header(&self, e: u16) -> u64 {
        self.headers + HEADER_STRIDE * u64::from(e)
    }

    fn payload(&self, e: u16) -> u64 {
        self.payloads + PAYLOAD_SIZE * u64::from(e)
    }

    /// Process addresses of entry `e`'s header and payload buffers, for
    /// `FUSE_IO_URING_CMD_REGISTER`.
    pub(super) fn buffers(&self, e: u16) -> [(*mut u8, usize); 2] {
        let host = |a: u64| {
            self.mem
                .get_host_address(GuestAddress(a))
                .unwrap_or(std::ptr::null_mut())
        };
        [
            (host(self.header(e)), HEADER_SIZE),
            (host(self.payload(e)), PAYLOAD_SIZE as usize),
        ]
    }

    /// The request the kernel delivered into entry `e`.
    pub(super) fn request(&self, e: u16) -> Result<Request, String> {
        let h = self.header(e);
        let err = |e: vm_memory::GuestMemoryError| e.to_string();
        let header: InHeader = self.mem.read_obj(GuestAddress(h)).map_err(err)?;
        let commit_id: u64 = self
            .mem
            .read_obj(GuestAddress(h + COMMIT_ID))
            .map_err(err)?;
        let payload: u32 = self
            .mem
            .read_obj(GuestAddress(h + PAYLOAD_SZ))
            .map_err(err)?;
        let op_in = (header.len as u64)
            .checked_sub(size_of::<InHeader>() as u64 + u64::from(payload))
            .filter(|&n| n <= OP_IN_SIZE && u64::from(payload) <= PAYLOAD_SIZE);
        Ok(Request {
            header,
            commit_id,
            payload: if op_in.is_some() { payload } else { 0 },
            op_in: op_in.unwrap_or(0) as u32,
            malformed: op_in.is_none().then(|| {
                format!(
                    "request of {} bytes with {payload} in the payload",
                    header.len
                )
            }),
        })
    }

    /// The `fuse_read_in` of a READ in entry `e`.
    pub(super) fn read_in(&self, e: u16, req: &Request) -> Option<ReadIn> {
        (req.op_in as usize >= size_of::<ReadIn>())
            .then(|| self.mem.read_obj(GuestAddress(self.header(e) + OP_IN)).ok())
            .flatten()
    }

    /// A reader of request `req` in entry `e` and a writer of its reply into
    /// the same entry, for `Server::handle_message`.
    pub(super) fn reader_writer(
        &mut self,
        e: u16,
        req: &Request,
    ) -> Result<(Reader<'_>, Writer<'_>), String> {
        let (h, p) = (self.header(e), self.payload(e));
        let mut chain: Vec<(u64, u32, u16)> = vec![(h, size_of::<InHeader>() as u32, 0)];
        if req.op_in > 0 {
            chain.push((h + OP_IN, req.op_in, 0));
        }
        if req.payload > 0 {
            chain.push((p, req.payload, 0));
        }
        chain.push((h, size_of::<OutHeader>() as u32, F_WRITE));
        chain.push((p, PAYLOAD_SIZE as u32, F_WRITE));
        let first = e * DESCS_PER_ENTRY;
        let n = chain.len() as u16;
        for (i, (addr, len, flags)) in (0u16..).zip(chain) {
            let next = if i + 1 < n { F_NEXT } else { 0 };
            let d = Descriptor::new(addr, len, flags | next, first + i + 1);
            let at = self.desc + 16 * u64::from(first + i);
            self.mem
                .write_obj(d, GuestAddress(at))
                .map_err(|e| e.to_string())?;
        }
        let qsize = self.queue.size();
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % qsize);
        self.mem
            .write_obj(first, GuestAddress(slot))
            .map_err(|e| e.to_string())?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .store(
                self.avail_idx,
                GuestAddress(self.avail + 2),
                Ordering::Release,
            )
            .map_err(|e| e.to_string())?;
        let chain = self
            .queue
            .pop_descriptor_chain(&self.mem)
            .ok_or("virtqueue returned no chain")?;
        let reader =
            Reader::from_descriptor_chain(&self.mem, chain.clone()).map_err(|e| e.to_string())?;
        let writer = VirtioFsWriter::new(&self.mem, chain).map_err(|e| e.to_string())?;
        Ok((reader, Writer::VirtioFs(writer)))
    }

    /// After the server answered request `req` in entry `e`: sets the
    /// payload size the kernel copies back. A request the server did not
    /// answer (the out-header still holds the in-header, whose second field,
    /// the opcode, is positive where an errno is not) is answered with EIO.
    pub(super) fn seal_reply(&self, e: u16, req: &Request) -> Result<(), String> {
        let h = self.header(e);
        let out: OutHeader = self
            .mem
            .read_obj(GuestAddress(h))
            .map_err(|e| e.to_string())?;
        let body = (out.len as u64).checked_sub(size_of::<OutHeader>() as u64);
        match body {
            Some(n) if out.error <= 0 && out.unique == req.header.unique && n <= PAYLOAD_SIZE => {
                self.set_payload(e, n as u32)
            }
            _ => {
                tracing::warn!(
                    opcode = req.header.opcode,
                    unique = req.header.unique,
                    "no reply from the server; answering EIO"
                );
                self.write_reply(e, req.header.unique, libc::EIO, &[])
            }
        }
    }

    /// Writes a reply (`errno` 0 with `data`, or an error) into entry `e`.
    pub(super) fn write_reply(
        &self,
        e: u16,
        unique: u64,
        errno: i32,
        data: &[u8],
    ) -> Result<(), String> {
        let data = &data[..data.len().min(PAYLOAD_SIZE as usize)];
        let out = OutHeader {
            len: (size_of::<OutHeader>() + data.len()) as u32,
            error: -errno,
            unique,
        };
        self.mem
            .write_obj(out, GuestAddress(self.header(e)))
            .map_err(|e| e.to_string())?;
        self.mem
            .write_slice(data, GuestAddress(self.payload(e)))
            .map_err(|e| e.to_string())?;
        self.set_payload(e, data.len() as u32)
    }

    fn set_payload(&self, e: u16, n: u32) -> Result<(), String> {
        self.mem
            .write_obj(n, GuestAddress(self.header(e) + PAYLOAD_SZ))
            .map_err(|e| e.to_string())
    }
}
