#!/usr/bin/env bash
# bench-fuse.sh   FUSE transports compared in the same run: io_uring vs /dev/fuse.
#
# Serves the python test image (from its OCI layout in the test bed: no registry, no
# network) with a fresh `clipctl mount --cid` daemon per run and transport, runs
# alternating dev, uring, uring, dev, ... so load drift hits both alike, and prints the
# medians of RUNS runs and the ratio uring/dev:
#
#   stat-all     `find MNT -printf %s` over the whole tree on a fresh mount (cold kernel
#                dentry/attr caches: READDIRPLUS + LOOKUP), seconds
#   getattr-all  `stat --cached=never` (statx AT_STATX_FORCE_SYNC: one GETATTR each) of every
#                regular file, seconds
#   rand4k-J     warm 4 KiB random reads, fio psync, O_DIRECT (every read is a FUSE READ,
#                none from the page cache), J = 1, 4, 16 threads, IOPS; the file (25 MB)
#                is in the daemon's memory cache
#   seq-direct   warm sequential 1 MiB O_DIRECT reads (1 MiB FUSE READs), MB/s
#   seq-buffered warm sequential read through the page cache (kernel read-ahead: 512 KiB
#                READs), the file's page cache dropped before each pass, MB/s
#   lookup/getattr/read p50/p99   the daemon's FUSE op histograms (`clipctl metrics`):
#                lookup and getattr after the two metadata cases, read after the rand4k
#                cases (mostly 4 KiB READs), microseconds
#   cpu-s/GB     daemon CPU seconds (utime+stime) per GB served, over rand4k-16 and
#                seq-direct
#   daemon-rss   the daemon's resident memory at the end (ring buffers included)
#
# Env: RUNS (default 3), SECS (fio seconds per case, default 5), CLIPCTL (default
#      target/release/clipctl), OUT (raw samples TSV; default: a temp file, path printed).
# Needs: root, fio, jq, the test bed (scripts/make-images.sh), the release build; the fuse
# module's enable_uring is switched on (auto/uring do so as root) and left as it was found.
set -euo pipefail
HERE="$(dirname "$(readlink -f "$0")")"
. "$HERE/lib.sh"

RUNS="${RUNS:-3}"
SECS="${SECS:-5}"
CLIPCTL="${CLIPCTL:-$CLIP_ROOT/target/release/clipctl}"
LAYOUT="$CLIP_TESTBED/oci/python"
FILE="usr/local/lib/python3.11/dist-packages/numpy.libs/libscipy_openblas64_-56d6093b.so"
PARAM=/sys/module/fuse/parameters/enable_uring

command -v fio >/dev/null || die "fio missing (scripts/install-deps.sh)"
command -v jq >/dev/null || die "jq missing (scripts/install-deps.sh)"
[ -x "$CLIPCTL" ] || die "no $CLIPCTL (cargo build --release)"
[ -d "$LAYOUT" ] || die "no $LAYOUT (scripts/make-images.sh)"
[ -e "$PARAM" ] || die "this kernel has no FUSE over io_uring ($PARAM)"
PARAM_WAS="$(cat "$PARAM")"

TMP="$(mktemp -d /tmp/clip-bench-fuse.XXXXXX)"
OUT="${OUT:-$TMP/samples.tsv}"
cleanup() {
  for rd in "$TMP"/run-*; do
    [ -d "$rd" ] || continue
    for c in "$rd"/*/container.json; do
      [ -e "$c" ] && "$CLIPCTL" umount --cid "$(basename "$(dirname "$c")")" --run-dir "$rd" >/dev/null 2>&1 || true
    done
  done
  grep -F "$TMP" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  echo "$PARAM_WAS" > "$PARAM" 2>/dev/null || true
  if [ "$OUT" = "$TMP/samples.tsv" ]; then cp "$OUT" /tmp/clip-bench-fuse-samples.tsv 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

log "load: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs; RUNS=$RUNS SECS=$SECS"
"$CLIPCTL" index --layout "$LAYOUT" --out "$TMP/python.clip" >/dev/null 2>&1 || die "indexing failed"
printf 'run\ttransport\tcase\tvalue\n' > "$OUT"
sample() { printf '%s\t%s\t%s\t%s\n' "$RUN" "$T" "$1" "$2" >> "$OUT"; }
calc() { awk "BEGIN { print $1 }"; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
metrics() { "$CLIPCTL" metrics --cid "bench" --format json --run-dir "$RD"; }

# fio_case NAME ARGS...: one fio job group on the bench file; prints the JSON.
fio_case() {
  local name="$1"; shift
  fio --name="$name" --filename="$MNT/$FILE" --readonly --ioengine=psync \
      --group_reporting --time_based --runtime="$SECS" --output-format=json "$@"
}

bench_one() {
  RD="$TMP/run-$T-$RUN"
  local rootfs image_dir pid t0 t1 c0 c1 json bytes m p50 p99
  rootfs="$("$CLIPCTL" mount --cid bench --clip "$TMP/python.clip" --run-dir "$RD" \
      --node-dir "$TMP/node-$T-$RUN" --fuse-transport "$T" --disk-cache 0 --profile off)"
  image_dir="$(dirname "$(ls -d "$RD"/images/*/mnt)")"
  MNT="$image_dir/mnt"
  pid="$(cat "$image_dir/daemon.pid")"
  [ "$(cat "$image_dir/fuse-transport")" = "$T" ] || die "daemon serves over $(cat "$image_dir/fuse-transport"), not $T"
  [ -d "$rootfs" ] || die "no rootfs"

  t0=$(date +%s.%N); find "$MNT" -printf '%s\n' > /dev/null; t1=$(date +%s.%N)
  sample stat-all "$(calc "$t1 - $t0")"
  find "$MNT" -type f -print0 > "$TMP/files"
  t0=$(date +%s.%N); xargs -0 stat --cached=never -c %s < "$TMP/files" > /dev/null; t1=$(date +%s.%N)
  sample getattr-all "$(calc "$t1 - $t0")"
  # Client-side GETATTR round trips: statx(AT_STATX_FORCE_SYNC) of one file, one thread.
  read -r p50 p99 < <(perl "$HERE/bench-fuse-statx.pl" "$MNT/$FILE" 20000)
  sample getattr-client-p50-us "$p50"
  sample getattr-client-p99-us "$p99"
  m="$(metrics)"
  for op in lookup getattr; do
    sample "$op-p50-us" "$(jq ".images[0].fuse_ops.$op.p50_us" <<< "$m")"
    sample "$op-p99-us" "$(jq ".images[0].fuse_ops.$op.p99_us" <<< "$m")"
  done

  cat "$MNT/$FILE" > /dev/null   # warm the daemon's memory cache
  for j in 1 4 16; do
    c0=$(cpu_ticks "$pid")
    json="$(fio_case "rand$j" --rw=randread --bs=4k --direct=1 --numjobs="$j")"
    c1=$(cpu_ticks "$pid")
    sample "rand4k-$j-iops" "$(jq '.jobs[0].read.iops' <<< "$json")"
    sample "rand4k-$j-clat-p50-us" "$(jq '.jobs[0].read.clat_ns.percentile["50.000000"] / 1000' <<< "$json")"
    sample "rand4k-$j-clat-p99-us" "$(jq '.jobs[0].read.clat_ns.percentile["99.000000"] / 1000' <<< "$json")"
    if [ "$j" = 16 ]; then
      bytes="$(jq '.jobs[0].read.io_bytes' <<< "$json")"
      sample "rand4k-16-cpu-s-per-GB" "$(calc "($c1 - $c0) / $(getconf CLK_TCK) / ($bytes / 1e9)")"
    fi
  done
  m="$(metrics)"
  sample read-p50-us "$(jq '.images[0].fuse_ops.read.p50_us' <<< "$m")"
  sample read-p99-us "$(jq '.images[0].fuse_ops.read.p99_us' <<< "$m")"

  c0=$(cpu_ticks "$pid")
  json="$(fio_case seq --rw=read --bs=1M --direct=1 --numjobs=1)"
  c1=$(cpu_ticks "$pid")
  sample seq-direct-MBps "$(jq '.jobs[0].read.bw_bytes / 1000000' <<< "$json")"
  bytes="$(jq '.jobs[0].read.io_bytes' <<< "$json")"
  sample seq-direct-cpu-s-per-GB "$(calc "($c1 - $c0) / $(getconf CLK_TCK) / ($bytes / 1e9)")"

  local size passes=0 start now
  size=$(stat -c %s "$MNT/$FILE")
  start=$(date +%s.%N); now=$start
  while [ "$(calc "$now - $start < $SECS")" = 1 ]; do
    dd if="$MNT/$FILE" iflag=nocache count=0 status=none
    cat "$MNT/$FILE" > /dev/null
    passes=$((passes + 1)); now=$(date +%s.%N)
  done
  sample seq-buffered-MBps "$(calc "$passes * $size / ($now - $start) / 1e6")"

  sample daemon-rss-MiB "$(awk '/^VmRSS/ { print $2 / 1024 }' "/proc/$pid/status")"
  "$CLIPCTL" umount --cid bench --run-dir "$RD" >/dev/null
}

for RUN in $(seq 1 "$RUNS"); do
  if [ $((RUN % 2)) = 1 ]; then order="dev uring"; else order="uring dev"; fi
  for T in $order; do
    log "run $RUN: $T"
    bench_one
  done
done
log "load: $(cut -d' ' -f1-3 /proc/loadavg)"
log "samples: $OUT"

# Medians and ratios.
python3 - "$OUT" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
cases = []
for r in rows:
    if r["case"] not in cases:
        cases.append(r["case"])
def med(t, c):
    v = [float(r["value"]) for r in rows if r["transport"] == t and r["case"] == c]
    return statistics.median(v) if v else float("nan")
print(f"| case | /dev/fuse | io_uring | uring/dev |")
print(f"|---|---:|---:|---:|")
for c in cases:
    d, u = med("dev", c), med("uring", c)
    print(f"| {c} | {d:.4g} | {u:.4g} | {u / d if d else float('nan'):.2f} |")
EOF
