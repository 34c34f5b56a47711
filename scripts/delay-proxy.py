#!/usr/bin/env python3
"""delay-proxy.py: a TCP proxy that puts a registry "a network away" (no netem needed).

Usage:
  delay-proxy.py [options] LISTEN_PORT UPSTREAM      forward 127.0.0.1:LISTEN_PORT to UPSTREAM
                                                     (PORT or HOST:PORT); LISTEN_PORT 0 = any
  delay-proxy.py --self-test [--registry HOST:PORT]  check the timing and fault behaviour below

Model of the network (D = --delay, one way):
  * Every chunk of bytes, in each direction, is delivered D ms after the proxy received it.
    Delivery times are timestamps, not a sleep per chunk: a stream keeps flowing at the
    full loopback bandwidth, only shifted by D (pipelined), as on a long fat link.
  * A new connection costs one extra round trip: the kernel completes the client's
    connect() at once, so the client's bytes are held until 2D after the accept, then
    D more. A 1-byte request/response costs 4D on a fresh connection, 2D kept alive.
  * Half-close (shutdown(SHUT_WR)) is forwarded as EOF D ms later; the connection is
    closed once both directions have delivered their EOF. A reset (or an error) on one
    side resets the other side D ms later (RST via SO_LINGER 0).
  * In-flight bytes are bounded per direction (--buffer): past it the proxy stops reading
    that side, so the sender's TCP sees backpressure.
  * Runs until SIGTERM/SIGINT (then prints one summary line on stderr and exits 0);
    SIGUSR1 prints the summary line so far (byte counts to date) and goes on.
    It keeps no timers of its own on connections, so SIGSTOP/SIGCONT is a clean way to
    stall the "network": nothing moves while stopped (the kernel still completes new
    handshakes into the listen backlog), everything resumes on SIGCONT, bytes held past
    their delivery time go out at once, no connection is dropped by the proxy.

Fault injection (for hardening tests; all count bytes of the UPSTREAM -> client direction):
  --blackhole-after N   after N bytes in total (over all connections) the network goes
                        silent: nothing more is delivered in either direction on any
                        connection, present or future (connections stay open, reads
                        stop, so senders see a stalled peer). The chunk crossing N is cut.
  --reset-after N       each connection is reset (RST to both ends) once it has delivered
                        N bytes to the client (the chunk crossing N is cut at N).
  --reset-count K       only the first K connections that reach --reset-after are reset
                        (default: all).
  --trickle BPS         each connection delivers at most BPS bytes/s to the client (in
                        pieces of BPS/50 bytes), on top of the delay.

Ready signal: --ready-file FILE is written (atomically, after the socket listens) with
"PID PORT"; scripts wait for it, read the port (LISTEN_PORT 0) and the pid to kill.

Why Python asyncio: the kernel here has no sch_netem, a userspace proxy is the only way;
Protocol callbacks timestamp each chunk when it arrives and one timer per direction
delivers the queue in order, so precision is the event loop's (~1 ms) and a single
thread moves several hundred MB/s; python3 is in every Debian install (install-deps.sh).
"""

import argparse
import asyncio
import collections
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

EOF = object()           # queue marker: forward a half-close
RESET = object()         # queue marker: reset the destination


class Stats:
    def __init__(self):
        self.connections = 0
        self.bytes_up = 0      # client -> upstream, delivered
        self.bytes_down = 0    # upstream -> client, delivered
        self.resets_injected = 0
        self.blackholed = False


class Config:
    def __init__(self, args):
        self.delay = args.delay / 1000.0
        self.upstream = args.upstream
        self.buffer = args.buffer
        self.blackhole_after = args.blackhole_after
        self.reset_after = args.reset_after
        self.reset_count = args.reset_count
        self.trickle = args.trickle


class Pipe:
    """One direction of a proxied connection: a queue of (deliver_at, bytes|marker)
    drained in order by a single timer, writing into `dst`."""

    def __init__(self, conn, downstream):
        self.conn = conn
        self.downstream = downstream  # upstream -> client (faults apply here)
        self.src = None               # transport we read from
        self.dst = None               # transport we write to (None until connected)
        self.queue = collections.deque()
        self.queued = 0               # bytes in queue
        self.timer = None
        self.paused = set()           # reasons the source is paused
        self.gate = 0.0               # no delivery before gate + delay (connect RTT)
        self.trickle_at = 0.0         # next free slot of a trickled stream
        self.eof_queued = False
        self.done = False             # EOF delivered

    # ---- source side
    def push(self, item, n=0):
        """Queues bytes (n = len) or a marker for delivery D ms from now."""
        cfg = self.conn.cfg
        at = max(self.conn.loop.time(), self.gate) + cfg.delay
        trickle = self.downstream and cfg.trickle
        if item is EOF:
            self.eof_queued = True
        if trickle and n:
            piece = max(1, cfg.trickle // 50)
            for i in range(0, n, piece):
                part = item[i:i + piece]
                # a piece arrives when its last byte has been sent at the trickle rate
                at = max(at, self.trickle_at) + len(part) / cfg.trickle
                self.trickle_at = at
                self.queue.append((at, part))
        else:
            self.queue.append((max(at, self.trickle_at) if trickle else at, item))
        self.queued += n
        if self.queued > cfg.buffer:
            self.pause("buffer")
        self.schedule()

    def pause(self, why):
        """Stops reading the source until every reason is gone."""
        if not self.paused and self.src is not None and not self.src.is_closing():
            self.src.pause_reading()
        self.paused.add(why)

    def resume(self, why):
        if why not in self.paused:
            return
        self.paused.discard(why)
        if not self.paused and self.src is not None and not self.src.is_closing():
            self.src.resume_reading()

    # ---- delivery
    def schedule(self):
        if self.timer is None and self.queue and self.dst is not None:
            self.timer = self.conn.loop.call_at(self.queue[0][0], self.flush)

    def flush(self):
        self.timer = None
        conn = self.conn
        if conn.closed or conn.stats.blackholed:
            return
        now = conn.loop.time()
        while self.queue and self.queue[0][0] <= now:
            _, item = self.queue.popleft()
            if item is EOF:
                self.done = True
                if self.dst.can_write_eof() and not self.dst.is_closing():
                    self.dst.write_eof()
                conn.maybe_close()
                return
            if item is RESET:
                conn.reset()
                return
            self.queued -= len(item)
            if self.queued <= conn.cfg.buffer:
                self.resume("buffer")
            if not self.deliver(item):
                return
        self.schedule()

    def deliver(self, data):
        """Writes data, cut short by a fault; False once the connection stopped."""
        conn, cfg, st = self.conn, self.conn.cfg, self.conn.stats
        fault, keep = None, len(data)
        if self.downstream:
            if cfg.reset_after is not None and conn.down + keep >= cfg.reset_after and (
                    cfg.reset_count is None or st.resets_injected < cfg.reset_count):
                fault, keep = "reset", max(0, cfg.reset_after - conn.down)
            if cfg.blackhole_after is not None and st.bytes_down + len(data) >= cfg.blackhole_after:
                bh = max(0, cfg.blackhole_after - st.bytes_down)
                if bh <= keep:
                    fault, keep = "blackhole", bh
            data = data[:keep]
        if data and not self.dst.is_closing():
            self.dst.write(data)
        if self.downstream:
            conn.down += len(data)
            st.bytes_down += len(data)
        else:
            st.bytes_up += len(data)
        if fault == "blackhole":
            conn.server.blackhole()
            return False
        if fault == "reset":
            st.resets_injected += 1
            conn.reset()
            return False
        return True


class Side(asyncio.Protocol):
    """Protocol of one socket of a proxied connection."""

    def __init__(self, conn, inbound, outbound):
        self.conn = conn
        self.inbound = inbound    # Pipe carrying what this socket receives
        self.outbound = outbound  # Pipe writing into this socket
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.inbound.src = transport
        self.outbound.dst = transport
        if self.conn.stats.blackholed:
            self.inbound.pause("blackhole")
        elif self.inbound.paused:
            transport.pause_reading()
        self.outbound.schedule()

    def data_received(self, data):
        self.inbound.push(data, len(data))

    def eof_received(self):
        self.inbound.push(EOF)
        return True  # keep the transport open for the other direction (half-close)

    def connection_lost(self, exc):
        if self.conn.closed:
            return
        if exc is not None:
            self.inbound.push(RESET)
        elif not self.inbound.eof_queued:
            self.inbound.push(EOF)

    # This socket's send buffer is full: stop reading what feeds it.
    def pause_writing(self):
        self.outbound.pause("dst")

    def resume_writing(self):
        self.outbound.resume("dst")


class Conn:
    """A client connection and its upstream connection."""

    def __init__(self, server):
        self.server = server
        self.loop = server.loop
        self.cfg = server.cfg
        self.stats = server.stats
        self.closed = False
        self.down = 0
        self.up = Pipe(self, downstream=False)
        self.dn = Pipe(self, downstream=True)
        self.client = Side(self, self.up, self.dn)
        self.upstream = Side(self, self.dn, self.up)
        # The client's connect() completed at once; a real one takes a round trip.
        self.up.gate = self.loop.time() + 2 * self.cfg.delay

    async def connect_upstream(self):
        host, port = self.cfg.upstream
        try:
            await self.loop.create_connection(lambda: self.upstream, host, port)
        except OSError as e:
            print(f"delay-proxy: upstream {host}:{port}: {e}", file=sys.stderr)
            # The client learns of it when a refused connect would have told it:
            # one round trip after its connect().
            self.loop.call_at(self.up.gate, self.reset)

    def maybe_close(self):
        if self.up.done and self.dn.done:
            self.close()

    def close(self):
        """Closes both ends once what they were sent is flushed (FIN)."""
        self.finish(lambda t: t.close())

    def reset(self):
        """Resets both ends (RST, not FIN)."""
        def rst(t):
            sock = t.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            t.abort()
        self.finish(rst)

    def finish(self, end):
        if self.closed:
            return
        self.closed = True
        self.server.conns.discard(self)
        for side in (self.client, self.upstream):
            if side.transport is not None and not side.transport.is_closing():
                end(side.transport)
        for p in (self.up, self.dn):
            if p.timer is not None:
                p.timer.cancel()


class Server:
    def __init__(self, cfg, loop):
        self.cfg = cfg
        self.loop = loop
        self.stats = Stats()
        self.conns = set()

    def accept(self):
        conn = Conn(self)
        self.conns.add(conn)
        self.stats.connections += 1
        self.loop.create_task(conn.connect_upstream())
        return conn.client

    def blackhole(self):
        if self.stats.blackholed:
            return
        self.stats.blackholed = True
        for c in list(self.conns):
            for p in (c.up, c.dn):
                p.queue.clear()
                p.pause("blackhole")
                if p.timer is not None:
                    p.timer.cancel()
                    p.timer = None

    def summary(self):
        s = self.stats
        return (f"delay-proxy: {s.connections} connections, {s.bytes_up} B up, "
                f"{s.bytes_down} B down, {s.resets_injected} resets injected"
                + (", blackholed" if s.blackholed else ""))


def parse_hostport(s):
    host, _, port = s.rpartition(":")
    return (host or "127.0.0.1", int(port))


async def serve(cfg, listen_host, listen_port, ready_file):
    loop = asyncio.get_running_loop()
    server = Server(cfg, loop)
    srv = await loop.create_server(server.accept, listen_host, listen_port, backlog=1024)
    port = srv.sockets[0].getsockname()[1]
    if ready_file:
        tmp = f"{ready_file}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()} {port}\n")
        os.replace(tmp, ready_file)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    loop.add_signal_handler(signal.SIGUSR1,
                            lambda: print(server.summary(), file=sys.stderr, flush=True))
    await stop
    srv.close()
    print(server.summary(), file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- self-test
# An in-process upstream: per line "N\n" it answers N bytes; "ECHO\n" switches the
# connection to echo. The proxy runs as a real subprocess (CLI, ready file, signals).

async def upstream_server():
    async def handle(r, w):
        try:
            while True:
                line = await r.readline()
                if not line:
                    break
                if line == b"ECHO\n":
                    while True:
                        d = await r.read(65536)
                        if not d:
                            break
                        w.write(d)
                        await w.drain()
                    w.write(b"BYE")
                    await w.drain()
                    break
                n = int(line)
                blk = BLOCK[: min(n, len(BLOCK))]
                while n > 0:
                    w.write(blk[:n])
                    n -= len(blk)
                    await w.drain()
            w.close()
        except (ConnectionError, ValueError):
            w.transport.abort()
        except asyncio.CancelledError:  # the self-test ends with a stalled connection open
            w.transport.abort()
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


BLOCK = bytes(range(256)) * 4096  # 1 MiB
TRIALS = 10


class Proxy:
    def __init__(self, upstream_port, *args):
        self.dir = tempfile.mkdtemp(prefix="delay-proxy-test.")
        ready = os.path.join(self.dir, "ready")
        self.p = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--ready-file", ready, *args,
             "0", str(upstream_port)], stderr=subprocess.PIPE)
        for _ in range(200):
            if os.path.exists(ready):
                break
            if self.p.poll() is not None:
                raise SystemExit(f"proxy exited: {self.p.stderr.read().decode()}")
            time.sleep(0.01)
        pid, port = open(ready).read().split()
        assert int(pid) == self.p.pid, "ready file names another pid"
        self.port = int(port)

    def stop(self):
        self.p.send_signal(signal.SIGCONT)
        self.p.terminate()
        err = self.p.stderr.read().decode()
        rc = self.p.wait(5)
        os.remove(os.path.join(self.dir, "ready"))
        os.rmdir(self.dir)
        assert rc == 0, f"proxy exit {rc}: {err}"
        return err


async def read_n(r, n, timeout=10):
    got = 0
    while got < n:
        d = await asyncio.wait_for(r.read(min(1 << 20, n - got)), timeout)
        if not d:
            break
        got += len(d)
    return got


def near(name, got_s, want_s, slack_s):
    """A delay is a floor the proxy never beats (1 ms for clock granularity); above it,
    a loaded machine adds time, so the ceiling has slack."""
    ok = want_s - 0.001 <= got_s <= want_s + slack_s
    print(f"  {'ok ' if ok else 'BAD'} {name}: {got_s * 1000:.1f} ms "
          f"(want {want_s * 1000:.0f} ms, +{slack_s * 1000:.0f} ms slack)")
    return ok


def bulk_ok(name, size, proxied_s, direct_s, delay_s):
    """A bulk GET through the proxy: at least the round trip, at most the round trip plus
    three times the direct transfer (the proxy copies each byte once more, in Python)."""
    hi = 2 * delay_s + max(0.25, 3 * direct_s)
    ok = 2 * delay_s <= proxied_s <= hi
    print(f"  {'ok ' if ok else 'BAD'} {name}: {proxied_s * 1000:.0f} ms, {size / 1e6 / proxied_s:.0f} MB/s "
          f"(direct {direct_s * 1000:.0f} ms, {size / 1e6 / direct_s:.0f} MB/s; want <= {hi * 1000:.0f} ms)")
    return ok


async def bulk(port, size):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"1\n")
    await read_n(r, 1)
    t = time.monotonic()
    w.write(b"%d\n" % size)
    got = await read_n(r, size)
    el = time.monotonic() - t
    w.close()
    assert got == size, f"bulk: got {got} of {size} bytes"
    return el


async def test_timing(up_port, failures):
    D = 0.010
    px = Proxy(up_port, "--delay", "10")
    # Each timing is the best of TRIALS: a loaded machine only ever adds time, and the
    # minimum still shows a proxy that takes too long (or too little).
    try:
        fresh = []
        for _ in range(TRIALS):
            t = time.monotonic()
            r, w = await asyncio.open_connection("127.0.0.1", px.port)
            w.write(b"1\n")
            assert await read_n(r, 1) == 1
            fresh.append(time.monotonic() - t)
            w.close()
        # A fresh connection takes more wakeups (accepts at both hops): more room on a
        # loaded machine; a missing round trip is still 20 ms short.
        failures += not near("1-byte request, fresh connection (connect RTT + RTT)",
                             min(fresh), 4 * D, 0.018)
        r, w = await asyncio.open_connection("127.0.0.1", px.port)
        kept = []
        for _ in range(TRIALS + 1):
            t = time.monotonic()
            w.write(b"1\n")
            assert await read_n(r, 1) == 1
            kept.append(time.monotonic() - t)
        failures += not near("1-byte request, kept-alive connection (RTT)", min(kept[1:]), 2 * D, 0.008)
        # Pipelining: two requests 5 ms apart are answered ~5 ms apart, not 2D apart.
        second = []
        for _ in range(TRIALS):
            t = time.monotonic()
            w.write(b"1\n")
            await asyncio.sleep(0.005)
            w.write(b"1\n")
            assert await read_n(r, 2) == 2
            second.append(time.monotonic() - t)
        failures += not near("answer to the 2nd of two requests sent 5 ms apart (pipelined)",
                             min(second), 2 * D + 0.005, 0.010)
        # Half-close: client EOF reaches upstream after D; its reply and EOF come back.
        w.write(b"ECHO\nabc")
        await asyncio.sleep(0.002)
        t = time.monotonic()
        w.write_eof()
        got = await asyncio.wait_for(r.read(), 5)
        failures += not near("half-close round trip (EOF up, reply + EOF down)",
                             time.monotonic() - t, 2 * D, 0.010)
        if got != b"abcBYE":
            print(f"  BAD half-close: got {got!r}, want b'abcBYE'")
            failures += 1
        w.close()
        # Bandwidth: 44 MB kept-alive, direct vs through the proxy.
        size = 44_000_000
        direct = min([await bulk(up_port, size) for _ in range(2)])
        proxied = min([await bulk(px.port, size) for _ in range(2)])
        failures += not bulk_ok("44 MB kept alive at D=10", size, proxied, direct, D)
        # SIGSTOP stalls everything, SIGCONT resumes without losing a byte.
        r, w = await asyncio.open_connection("127.0.0.1", px.port)
        w.write(b"1\n")
        await read_n(r, 1)
        px.p.send_signal(signal.SIGSTOP)
        t = time.monotonic()
        w.write(b"100000\n")
        try:
            await asyncio.wait_for(r.readexactly(1), 0.2)
            print("  BAD SIGSTOP: data flowed while the proxy was stopped")
            failures += 1
        except asyncio.TimeoutError:
            pass
        px.p.send_signal(signal.SIGCONT)
        got = 1 + await read_n(r, 99999, 5)
        ok = got == 100000
        print(f"  {'ok ' if ok else 'BAD'} SIGSTOP 0.2 s then SIGCONT: {got} of 100000 bytes "
              f"in {(time.monotonic() - t) * 1000:.0f} ms")
        failures += not ok
        w.close()
    finally:
        summary = px.stop()
    print(f"  {summary.strip()}")
    return failures


async def drain(r, idle_s):
    """Reads until EOF, an error or `idle_s` without data: (bytes read, the error)."""
    got = 0
    try:
        while True:
            d = await asyncio.wait_for(r.read(65536), idle_s)
            if not d:
                return got, None
            got += len(d)
    except (asyncio.TimeoutError, ConnectionError) as e:
        return got, e


async def test_faults(up_port, failures):
    # Blackhole after 3000 bytes: this connection and a new one stall, nothing is closed.
    px = Proxy(up_port, "--blackhole-after", "3000")
    try:
        r, w = await asyncio.open_connection("127.0.0.1", px.port)
        w.write(b"1000\n")
        a = await read_n(r, 1000)
        w.write(b"5000\n")
        b, _ = await drain(r, 0.3)
        r2, w2 = await asyncio.open_connection("127.0.0.1", px.port)
        w2.write(b"1\n")
        try:
            await asyncio.wait_for(r2.readexactly(1), 0.2)
            stalled = False
        except asyncio.TimeoutError:
            stalled = True
        ok = a == 1000 and b == 2000 and stalled
        print(f"  {'ok ' if ok else 'BAD'} --blackhole-after 3000: got {a}+{b} bytes, then silence "
              f"(a new connection stalls too: {stalled})")
        failures += not ok
        w.close()
        w2.close()
    finally:
        px.stop()
    # Reset after 5000 bytes per connection, only the first connection (--reset-count 1).
    px = Proxy(up_port, "--reset-after", "5000", "--reset-count", "1")
    try:
        r, w = await asyncio.open_connection("127.0.0.1", px.port)
        w.write(b"100000\n")
        got, err = await drain(r, 2)
        ok = got == 5000 and isinstance(err, ConnectionResetError)
        print(f"  {'ok ' if ok else 'BAD'} --reset-after 5000: got {got} bytes, then "
              f"{type(err).__name__ if err else 'a clean close'}")
        failures += not ok
        w.close()
        await bulk(px.port, 100000)
        print("  ok  --reset-count 1: a second connection carries 100000 bytes")
    finally:
        px.stop()
    # Trickle: 200 KB at 1 MB/s takes ~0.2 s.
    px = Proxy(up_port, "--trickle", "1000000")
    try:
        el = await bulk(px.port, 200000)
        failures += not near("--trickle 1000000: 200 KB", el, 0.2, 0.1)
    finally:
        px.stop()
    return failures


def curl_times(args):
    out = subprocess.run(["curl", "-fsS", "-o", "/dev/null", "-w", "%{time_total}\n", *args],
                         check=True, capture_output=True, text=True).stdout
    return [float(x) for x in out.split()]


def registry_blob(reg):
    """(repository, digest, size) of the largest layer blob of some image in `reg`."""
    import json
    import urllib.request

    def get(path, accept=None):
        req = urllib.request.Request(f"http://{reg}{path}")
        if accept:
            req.add_header("Accept", accept)
        return json.load(urllib.request.urlopen(req, timeout=10))
    best = None
    for repo in get("/v2/_catalog")["repositories"]:
        for tag in (get(f"/v2/{repo}/tags/list").get("tags") or [])[:1]:
            m = get(f"/v2/{repo}/manifests/{tag}", "application/vnd.oci.image.manifest.v1+json")
            for layer in m.get("layers", []):
                if best is None or layer["size"] > best[2]:
                    best = (repo, layer["digest"], layer["size"])
    if best is None:
        raise SystemExit(f"no image with layers in registry {reg}")
    return best


def test_registry(reg, failures):
    """The brief's curl checks against a real registry (HTTP, keep-alive, Range)."""
    repo, digest, size = registry_blob(reg)
    host, rport = parse_hostport(reg)
    px = Proxy(rport, "--delay", "10")
    try:
        url = f"http://127.0.0.1:{px.port}/v2/{repo}/blobs/{digest}"
        # The registry's own time (a blob lookup, ~ms) comes on top of the delay: the best
        # direct time joins the slack.
        def best(u):
            pairs = [curl_times(["-r", "0-0", u, "-r", "0-0", u]) for _ in range(TRIALS)]
            return min(p[0] for p in pairs), min(p[1] for p in pairs)
        d_fresh, d_kept = best(f"http://{reg}/v2/{repo}/blobs/{digest}")
        fresh, kept = best(url)
        failures += not near(f"curl 1-byte Range GET, fresh connection (direct {d_fresh * 1000:.1f} ms)",
                             fresh, 0.040, d_fresh + 0.018)
        failures += not near(f"curl 1-byte Range GET, kept alive (direct {d_kept * 1000:.1f} ms)",
                             kept, 0.020, d_kept + 0.010)
        direct = min(curl_times([f"http://{reg}/v2/{repo}/blobs/{digest}"])[0] for _ in range(3))
        proxied = min(curl_times([url])[0] for _ in range(3))
        failures += not bulk_ok(f"curl GET of the {size / 1e6:.0f} MB blob at D=10", size,
                                proxied, direct, 0.010)
    finally:
        px.stop()
    return failures


async def self_test(registry):
    srv, up_port = await upstream_server()
    failures = 0
    print("delay-proxy self-test: timing at D=10 ms")
    failures = await test_timing(up_port, failures)
    print("delay-proxy self-test: faults")
    failures = await test_faults(up_port, failures)
    srv.close()
    if registry:
        print(f"delay-proxy self-test: curl against the registry {registry}")
        failures = await asyncio.get_running_loop().run_in_executor(
            None, test_registry, registry, failures)
    print(f"delay-proxy self-test: {'PASSED' if not failures else f'{failures} check(s) FAILED'}")
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(
        description="TCP proxy adding D ms each way (pipelined) and a connect round trip; "
                    "see the header of this file for the model and the fault flags.")
    ap.add_argument("listen_port", nargs="?", type=int, help="port on 127.0.0.1 (0: any)")
    ap.add_argument("upstream", nargs="?", type=parse_hostport, help="PORT or HOST:PORT")
    ap.add_argument("--delay", type=float, default=0.0, metavar="MS", help="one-way delay (ms)")
    ap.add_argument("--listen-host", default="127.0.0.1")
    ap.add_argument("--buffer", type=int, default=64 << 20, metavar="BYTES",
                    help="in-flight bytes per direction and connection before reading pauses")
    ap.add_argument("--blackhole-after", type=int, metavar="N")
    ap.add_argument("--reset-after", type=int, metavar="N")
    ap.add_argument("--reset-count", type=int, metavar="K")
    ap.add_argument("--trickle", type=int, metavar="BPS")
    ap.add_argument("--ready-file", metavar="FILE", help='written with "PID PORT" once listening')
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--registry", metavar="HOST:PORT", help="with --self-test: also curl a real registry")
    args = ap.parse_args()
    if args.self_test:
        sys.exit(asyncio.run(self_test(args.registry)))
    if args.listen_port is None or args.upstream is None:
        ap.error("LISTEN_PORT and UPSTREAM are required")
    if args.delay < 0 or args.buffer <= 0 or (args.trickle is not None and args.trickle <= 0):
        ap.error("--delay must be >= 0, --buffer and --trickle > 0")
    try:
        asyncio.run(serve(Config(args), args.listen_host, args.listen_port, args.ready_file))
    except OSError as e:
        sys.exit(f"delay-proxy: {e}")


if __name__ == "__main__":
    main()
