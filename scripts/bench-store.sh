#!/usr/bin/env bash
# bench-store.sh [REGISTRY]   e.g. bench-store.sh 127.0.0.1:5000
# The node's mapped chunk store (issue 12, docs/store.md) on the python test image, with
# the baselines measured in the SAME run (medians of RUNS; runs alternate the two sides):
#
#   memory   a fresh foreground mount (`clipctl mount --clip F --mount-point MNT --profile
#            off --warm off`, empty node dir) reads the whole tree (`tar -cf - . | cat`),
#            then the daemon's RssAnon / VmRSS (/proc/PID/status): `--disk-cache 4G` (the
#            store; --memory-cache auto = 16M) vs `--disk-cache 0` (the 512 MiB anonymous
#            memory tier, as before the store)
#   rand4k   right after, on the same mount: warm 4 KiB random reads of a 25 MB file, fio
#            psync, O_DIRECT (every read a FUSE READ), 1 thread, SECS seconds after a 2 s
#            warm-up pass, IOPS: from the store's mapping vs from the memory tier
#   pairs    warm 4 KiB random reads again, paired: a store mount and a memory-tier mount
#            side by side (two daemons, both warmed by a whole-tree read and a 2 s pass),
#            PAIRS pairs of 1 s fio runs, one on each, the order alternating; the median of
#            the per-pair ratios (the machine's load drifts less within a pair than
#            between the memory runs above)
#   restart  the store left warm by the memory runs: drop caches, fresh daemon on the same
#            node dir, whole-tree `tar -cf - . | cat`; and again (drop caches, fresh
#            daemon) a cold `chroot MNT python3 -c "import numpy"`; vs squashfuse_ll of a
#            squashfs of the unpacked rootfs (local, drop caches + fresh mount) the same;
#            and the import once more with the startup profile on (`--profile auto`:
#            a profile recorded once by an import on that node dir before the runs; the
#            replay reads the store's slots of the profile's chunks in at daemon start,
#            MADV_WILLNEED, all at once), against the same squashfuse_ll samples
#
# Env: RUNS (default 3), SECS (default 5), CLIPCTL (default target/release/clipctl),
#      PAIRS (default 20; 0 skips them), RESTART=0 skips the restart part,
#      CLIP_BENCH_CACHE (default /var/tmp/clip-bench: the squashfs, shared with bench-e2e.sh).
# Needs: root, fio, jq, squashfuse_ll, mksquashfs, the test bed and the image in REGISTRY
# (make-images.sh). Drops the machine's page cache (echo 3 > drop_caches), as bench-e2e.sh.
set -euo pipefail
HERE="$(dirname "$(readlink -f "$0")")"
. "$HERE/lib.sh"

REG="${1:-127.0.0.1:5000}"; IMG=python
RUNS="${RUNS:-3}"; SECS="${SECS:-5}"
CLIPCTL="${CLIPCTL:-$CLIP_ROOT/target/release/clipctl}"
BENCH_CACHE="${CLIP_BENCH_CACHE:-/var/tmp/clip-bench}"
LAYOUT="$CLIP_TESTBED/oci/$IMG"; GT_ROOTFS="$CLIP_TESTBED/unpacked/$IMG/rootfs"
FILE="usr/local/lib/python3.11/dist-packages/numpy.libs/libscipy_openblas64_-56d6093b.so"
for t in fio jq squashfuse_ll mksquashfs mountpoint; do command -v $t >/dev/null || die "$t missing"; done
[ -x "$CLIPCTL" ] || die "no $CLIPCTL"

W="$(mktemp -d /tmp/clip-bench-store.XXXXXX)"
PID=""
cleanup() {
  grep -F "$W" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
now() { date +%s%N; }
secs() { awk -v d="$1" 'BEGIN{printf "%.3f", d/1e9}'; }
median() { sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
wait_mounted() { local i; for i in $(seq 300); do mountpoint -q "$1" && return 0; sleep 0.1; done; die "no mount at $1"; }

CLIP="$W/$IMG.clip"
"$CLIPCTL" index --image "$REG/clip/$IMG:latest" --out "$CLIP" >/dev/null 2>&1 || die "clipctl index failed"
h="$(layout_manifest "$LAYOUT")"; h="${h#sha256:}"; SQFS="$BENCH_CACHE/$IMG-${h:0:12}.sqfs"
if [ ! -s "$SQFS" ]; then
  mkdir -p "$BENCH_CACHE"; log "building $SQFS (once per image digest)"
  mksquashfs "$GT_ROOTFS" "$SQFS.tmp.$$" -comp gzip -noappend -quiet >/dev/null; mv "$SQFS.tmp.$$" "$SQFS"
fi
MNT="$W/mnt"; mkdir -p "$MNT"

clip_up() {   # NODE DISK [PROFILE]
  "$CLIPCTL" mount --clip "$CLIP" --mount-point "$MNT" --node-dir "$1" --disk-cache "$2" \
    --profile "${3:-off}" --warm off >>"$W/clip.log" 2>&1 &
  PID=$!; wait_mounted "$MNT"
}
clip_down() { umount "$MNT"; wait "$PID" 2>/dev/null || true; PID=""; }
sq_up() { squashfuse_ll -f "$SQFS" "$MNT" >>"$W/sq.log" 2>&1 & PID=$!; wait_mounted "$MNT"; }
tar_walk() { local s; s=$(now); tar -cf - -C "$MNT" . | cat > /dev/null; secs $(( $(now) - s )); }
numpy() { local s; s=$(now); chroot "$MNT" python3 -c "import numpy" || die "import numpy failed"; secs $(( $(now) - s )); }
status_mib() { awk -v k="$2:" '$1==k {printf "%.1f", $2/1024}' "/proc/$1/status"; }
rand4k() {   # [MOUNT]
  fio --name=r --filename="${1:-$MNT}/$FILE" --rw=randread --bs=4k --direct=1 --ioengine=psync \
    --numjobs=1 --time_based --runtime="$SECS" --output-format=json 2>/dev/null | jq '.jobs[0].read.iops | floor'
}

S="$W/samples"; : > "$S"
put() { echo "$1 $2" >> "$S"; }
med() { awk -v k="$1" '$1==k {print $2}' "$S" | median; }

log "memory + rand4k (RUNS=$RUNS, load $(load))"
for r in $(seq "$RUNS"); do
  for mode in store mem; do
    [ "$mode" = store ] && disk=4G || disk=0
    clip_up "$W/node-$mode-$r" "$disk"
    put "${mode}_fill_s" "$(tar_walk)"
    put "${mode}_anon_mib" "$(status_mib "$PID" RssAnon)"
    put "${mode}_rss_mib" "$(status_mib "$PID" VmRSS)"
    # Warm-up pass: the file's slots resident and mapped (the page cache does not stay
    # warm on this machine kind: DAMON pages out what is idle for a few seconds).
    SECS=2 rand4k > /dev/null
    put "${mode}_rand4k_iops" "$(rand4k)"
    put "${mode}_anon_after_fio_mib" "$(status_mib "$PID" RssAnon)"
    clip_down
  done
done
NODE="$W/node-store-$RUNS"
du -sh "$NODE/store" >&2

PAIRS="${PAIRS:-20}"
if [ "$PAIRS" -gt 0 ]; then
  log "pairs: rand4k, a store mount and a memory-tier mount side by side ($PAIRS pairs, load $(load))"
  M2="$W/mnt-mem"; mkdir -p "$M2"
  clip_up "$NODE" 4G; SPID=$PID
  "$CLIPCTL" mount --clip "$CLIP" --mount-point "$M2" --node-dir "$W/node-pairs-mem" --disk-cache 0 \
    --profile off --warm off >>"$W/clip.log" 2>&1 &
  MPID=$!; wait_mounted "$M2"
  for m in "$MNT" "$M2"; do tar -cf - -C "$m" . | cat > /dev/null; SECS=2 rand4k "$m" > /dev/null; done
  for i in $(seq "$PAIRS"); do
    if [ $((i % 2)) = 1 ]; then a=$(SECS=1 rand4k "$MNT"); b=$(SECS=1 rand4k "$M2");
    else b=$(SECS=1 rand4k "$M2"); a=$(SECS=1 rand4k "$MNT"); fi
    put pair_store_iops "$a"; put pair_mem_iops "$b"
    put pair_ratio "$(awk -v a="$a" -v b="$b" 'BEGIN{printf "%.4f", a/b}')"
  done
  umount "$M2"; wait "$MPID" 2>/dev/null || true
  PID=$SPID; clip_down
fi

if [ "${RESTART:-1}" = 0 ]; then
  echo "== samples"; sort "$S" | awk '{a[$1]=a[$1]" "$2} END{for (k in a) print k":"a[k]}' | sort
  awk -v a="$(med store_rand4k_iops)" -v b="$(med mem_rand4k_iops)" -v p="$(med pair_ratio)" \
    'BEGIN{printf "rand4k store/memory tier: %.2fx (target >= 1.0); paired: %.3fx\n", a/b, p}'
  exit 0
fi

# The startup profile of `import numpy` on this node dir (saved at unmount).
clip_up "$NODE" 4G auto; numpy > /dev/null; clip_down
ls "$NODE"/profiles/*.json >/dev/null 2>&1 || die "no startup profile recorded"

log "restart: tar and import numpy, store warm vs squashfuse_ll (RUNS=$RUNS, load $(load))"
for r in $(seq "$RUNS"); do
  drop_caches; clip_up "$NODE" 4G; put clip_tar_s "$(tar_walk)"; clip_down
  drop_caches; sq_up; put sq_tar_s "$(tar_walk)"; umount "$MNT"; wait "$PID" 2>/dev/null || true; PID=""
  drop_caches; clip_up "$NODE" 4G; put clip_numpy_s "$(numpy)"; clip_down
  drop_caches; sq_up; put sq_numpy_s "$(numpy)"; umount "$MNT"; wait "$PID" 2>/dev/null || true; PID=""
  drop_caches; clip_up "$NODE" 4G auto; put clipprof_numpy_s "$(numpy)"; clip_down
done

echo "== samples"; sort "$S" | awk '{a[$1]=a[$1]" "$2} END{for (k in a) print k":"a[k]}' | sort
echo "== medians (load now $(load))"
for k in pair_store_iops pair_mem_iops pair_ratio store_fill_s mem_fill_s store_anon_mib mem_anon_mib store_rss_mib mem_rss_mib \
         store_anon_after_fio_mib mem_anon_after_fio_mib store_rand4k_iops mem_rand4k_iops \
         clip_tar_s sq_tar_s clip_numpy_s sq_numpy_s clipprof_numpy_s; do
  printf '%-26s %s\n' "$k" "$(med $k)"
done
awk -v a="$(med store_rand4k_iops)" -v b="$(med mem_rand4k_iops)" -v t="$(med clip_tar_s)" -v u="$(med sq_tar_s)" \
    -v n="$(med clip_numpy_s)" -v q="$(med sq_numpy_s)" -v p="$(med clipprof_numpy_s)" -v pr="$(med pair_ratio)" 'BEGIN{
  printf "rand4k store/memory tier: %.2fx (target >= 1.0); paired: %.3fx\n", a/b, pr
  printf "restart tar: squashfuse_ll time / clip time = %.2fx (target >= 1.0)\n", u/t
  printf "restart import numpy: clip/squashfuse_ll = %.2fx (target <= 0.5)\n", n/q
  printf "restart import numpy, startup profile on: clip/squashfuse_ll = %.2fx\n", p/q }'
