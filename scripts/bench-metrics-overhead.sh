#!/usr/bin/env bash
# bench-metrics-overhead.sh CLIP: whole-tree read through the daemon's own FUSE mount
# ("on": the per-request FUSE latency hook, control socket) vs through
# `clipctl mount --mount-point` ("off": no FUSE hook). Since the cache and the
# filesystem always count into a `Metrics` (one counter system; a private one in the
# foreground), this measures the per-request hook, not counting as a whole; the cost of
# one record is `cargo bench --bench metrics_record`. Both with a warm chunk cache and
# the FUSE page cache evicted before each run, interleaved; prints each pair, then the
# medians and their ratio.
set -uo pipefail
C="${CLIPCTL:-$(dirname "$(readlink -f "$0")")/../target/release/clipctl}"
CLIP="${1:?usage: bench-metrics-overhead.sh FILE.clip}"
evict() { python3 - "$1" <<'PY'
import os,sys
for d,_,fs in os.walk(sys.argv[1]):
    for f in fs:
        p=os.path.join(d,f)
        try:
            if os.path.islink(p) or not os.path.isfile(p): continue
            fd=os.open(p,os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED); os.close(fd)
        except OSError: pass
PY
}
walk() {
  evict "$1"
  local t0=$EPOCHREALTIME
  tar -cf - -C "$1" . 2>/dev/null | cat > /dev/null
  python3 -c "print(round($EPOCHREALTIME - $t0, 3))"
}
RD=$(mktemp -d); MNT=$RD/mnt; mkdir -p "$MNT"
R=$($C mount --cid ovh --clip $CLIP --run-dir $RD/run --node-dir $RD/node --profile off --disk-cache 0)
ON=$(ls -d $RD/run/images/*/mnt)
$C mount --clip $CLIP --mount-point $MNT --node-dir $RD/node --profile off --disk-cache 0 & sleep 2
tar -cf - -C $ON . | cat >/dev/null; tar -cf - -C $MNT . | cat > /dev/null
out=$(for i in $(seq "${RUNS:-9}"); do echo "on $(walk $ON) off $(walk $MNT)"; done)
echo "$out"
echo "$out" | python3 -c "
import statistics as s, sys
rows=[l.split() for l in sys.stdin]
on=[float(r[1]) for r in rows]; off=[float(r[3]) for r in rows]
print(f'median on {s.median(on):.3f} s, off {s.median(off):.3f} s, on/off {s.median(on)/s.median(off):.3f}')"
umount "$MNT"; "$C" umount --cid ovh --run-dir "$RD/run"; rm -rf "$RD"
