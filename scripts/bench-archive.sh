#!/usr/bin/env bash
# bench-archive.sh [REGISTRY]   e.g. bench-archive.sh 127.0.0.1:5000
#
# Archives on the python test image's rootfs ($CLIP_TESTBED/unpacked/python/rootfs),
# each against a baseline measured in the SAME run, runs interleaved (clip, baseline,
# clip, ...), medians of RUNS; the load is printed with every section.
#
# Sections (env SECTIONS, default "create extract numpy"):
#   create   clipctl create --input ROOTFS (all cores) vs mksquashfs ROOTFS -comp zstd
#            (all cores, its default level 15): wall time, throughput of file data, size.
#            Input in page cache for both (read once before each run).
#   extract  clipctl extract --archive of that archive vs `zstd -dc | tar -x` of a
#            tar.zst of the same tree (zstd -3 -T0, made once), both as root into fresh
#            directories on the same file system, page cache warm for both inputs.
#   numpy    cold `import numpy` in runc: clipctl mount --archive s3://... --cid (s3s-fs
#            on loopback, started here; page cache dropped, fresh daemon, empty caches,
#            no startup profile) vs squashfuse_ll of a local squashfs of the rootfs +
#            overlay (page cache dropped, fresh mount); and clip again with the startup
#            profile a first (untimed) mount recorded replayed (--profile auto, the node's
#            profile of the archive). The archive is made from the unpacked rootfs.
# Env: RUNS (default 3), SECTIONS, CLIPCTL (default target/release/clipctl), CLIP_S3_PORT
#      (default 9400), CLIP_BENCH_CACHE (default /var/tmp/clip-bench: the squashfs and
#      tar.zst baselines, built once).
# Needs: root, the release build, mksquashfs, squashfuse_ll, zstd, tar, runc, s3s-fs.
set -euo pipefail
HERE="$(dirname "$(readlink -f "$0")")"
. "$HERE/lib.sh"

RUNS="${RUNS:-3}"
SECTIONS="${SECTIONS:-create extract numpy}"
CLIPCTL="${CLIPCTL:-$CLIP_ROOT/target/release/clipctl}"
BENCH_CACHE="${CLIP_BENCH_CACHE:-/var/tmp/clip-bench}"
S3_PORT="${CLIP_S3_PORT:-9400}"
ROOTFS="$CLIP_TESTBED/unpacked/python/rootfs"
NCPU="$(nproc)"
[ -x "$CLIPCTL" ] || die "no $CLIPCTL: run cargo build --release"
[ -d "$ROOTFS" ] || die "no $ROOTFS: run make-images.sh first"
for t in mksquashfs squashfuse_ll zstd tar runc mountpoint; do
  command -v "$t" >/dev/null || die "$t not found (scripts/install-deps.sh)"
done

W="$(mktemp -d /var/tmp/clip-bench-archive.XXXXXX)"
CID=""; SQPID=""
cleanup() {
  local rc=$?
  set +e
  [ -n "$CID" ] && "$CLIPCTL" umount --cid "$CID" --run-dir "$W/run" >/dev/null 2>&1
  for m in "$W/sqmerged" "$W/sqov" "$W/sq"; do mountpoint -q "$m" && umount "$m"; done
  [ -n "$SQPID" ] && { kill "$SQPID" 2>/dev/null; wait "$SQPID" 2>/dev/null; }
  stop_s3
  awk -v w="$W" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l
  rm -rf "$W"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s%N; }
secs() { awk -v d="$1" 'BEGIN{printf "%.3f", d/1e9}'; }
median() { sort -g | awk '{a[NR]=$1} END{if (NR) print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
warm() { tar -cf - -C "$1" . | cat > /dev/null; }
declare -A S=()
add() { S[$1]="${S[$1]:-}${S[$1]:+ }$2"; printf '  %-22s run: %s\n' "$1" "$2" >&2; }
med() { tr ' ' '\n' <<< "${S[$1]}" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
DATA=$(find "$ROOTFS" -type f -printf '%s\n' | awk '{s+=$1} END{print s}')   # file bytes
mb() { awk -v b="$1" 'BEGIN{printf "%.1f", b/1e6}'; }

section_create() {
  step "create: clipctl create vs mksquashfs -comp zstd -processors $NCPU (RUNS=$RUNS, load $(load))"
  local i s
  for i in $(seq 1 "$RUNS"); do
    rm -f "$W/py.clip" "$W/py.sqfs"; warm "$ROOTFS"
    s=$(now); "$CLIPCTL" create --input "$ROOTFS" --output "$W/py.clip" >/dev/null
    add clip_create_s "$(secs $(( $(now) - s )))"
    warm "$ROOTFS"
    s=$(now); mksquashfs "$ROOTFS" "$W/py.sqfs" -comp zstd -processors "$NCPU" -noappend -quiet >/dev/null
    add sq_create_s "$(secs $(( $(now) - s )))"
  done
  local c q cs qs
  c=$(med clip_create_s); q=$(med sq_create_s)
  cs=$(stat -c %s "$W/py.clip"); qs=$(stat -c %s "$W/py.sqfs")
  printf '%-44s %9s %12s %12s\n' "" seconds "MB/s (data)" "size MB"
  printf '%-44s %9s %12s %12s\n' "clipctl create (zstd -3, 1 MiB frames)" "$c" "$(mb "$(awk -v d="$DATA" -v t="$c" 'BEGIN{print d/t}')")" "$(mb "$cs")"
  printf '%-44s %9s %12s %12s\n' "mksquashfs -comp zstd (level 15)" "$q" "$(mb "$(awk -v d="$DATA" -v t="$q" 'BEGIN{print d/t}')")" "$(mb "$qs")"
  printf 'create throughput: %sx mksquashfs (target >= 1.0); size: %sx (target <= 1.1); load now %s\n' \
    "$(ratio "$q" "$c")" "$(ratio "$cs" "$qs")" "$(load)"
}

ensure_tzst() {
  TZST="$BENCH_CACHE/python-rootfs.tar.zst"
  [ -s "$TZST" ] && return 0
  mkdir -p "$BENCH_CACHE"
  tar -cf - --xattrs -C "$ROOTFS" . | zstd -q -3 -T0 > "$TZST.tmp.$$"
  mv "$TZST.tmp.$$" "$TZST"
}

section_extract() {
  [ -s "$W/py.clip" ] || "$CLIPCTL" create --input "$ROOTFS" --output "$W/py.clip" >/dev/null
  ensure_tzst
  step "extract: clipctl extract vs zstd -dc | tar -x (RUNS=$RUNS, load $(load))"
  local i s
  # Deleting a tree this size keeps ext4 busy for tens of seconds (measured: both
  # tools 5-8x slower right after an rm -rf): every run extracts into a new
  # directory, all are removed at the end; the order alternates.
  run_clip() {
    cat "$W/py.clip" > /dev/null; s=$(now)
    "$CLIPCTL" extract --archive "$W/py.clip" --output "$W/x-clip-$i" >/dev/null
    add clip_extract_s "$(secs $(( $(now) - s )))"
  }
  run_tar() {
    cat "$TZST" > /dev/null; mkdir "$W/x-tar-$i"; s=$(now)
    zstd -q -dc "$TZST" | tar -x -C "$W/x-tar-$i"
    add tar_extract_s "$(secs $(( $(now) - s )))"
  }
  sync
  for i in $(seq 1 "$RUNS"); do
    if (( i % 2 )); then run_clip; run_tar; else run_tar; run_clip; fi
  done
  local c t
  c=$(med clip_extract_s); t=$(med tar_extract_s)
  printf '%-44s %9s\n' "clipctl extract" "$c"
  printf '%-44s %9s\n' "zstd -dc | tar -x" "$t"
  printf 'extract time: %sx zstd|tar (target <= 1.0); load now %s\n' "$(ratio "$c" "$t")" "$(load)"
  rm -rf "$W"/x-clip-* "$W"/x-tar-*
}

numpy_in() {   # numpy_in ROOTFS: sets PY (python3's own time inside runc)
  local out
  out="$("$HERE/run-container.sh" "$1" /bin/bash -c 'TIMEFORMAT=%R; time python3 -c "import numpy"' 2>&1)" ||
    die "container failed: $out"
  PY="$(tail -n1 <<< "$out")"
}

section_numpy() {
  [ -s "$W/py.clip" ] || "$CLIPCTL" create --input "$ROOTFS" --output "$W/py.clip" >/dev/null
  local sqfs="$BENCH_CACHE/python-rootfs-zstd.sqfs" i s url
  if [ ! -s "$sqfs" ]; then
    mkdir -p "$BENCH_CACHE"; mksquashfs "$ROOTFS" "$sqfs.tmp" -comp zstd -noappend -quiet >/dev/null
    mv "$sqfs.tmp" "$sqfs"
  fi
  start_s3 "$S3_PORT" "$W/s3"
  url="s3://$S3_BUCKET/python.clip"
  "$CLIPCTL" push "$W/py.clip" "$url" >/dev/null
  # One untimed first start records the startup profile the "replayed" runs use.
  CID="bench-archive-$$-rec"
  numpy_in "$("$CLIPCTL" mount --archive "$url" --cid "$CID" --run-dir "$W/run" --node-dir "$W/node-prof" \
    --profile auto --disk-cache 0)"
  "$CLIPCTL" umount --cid "$CID" --run-dir "$W/run" >/dev/null; CID=""
  ls "$W/node-prof/profiles/"*.json >/dev/null || die "no startup profile recorded"
  step "numpy: cold import numpy, archive in S3 on loopback vs squashfuse_ll local (RUNS=$RUNS, load $(load))"
  for i in $(seq 1 "$RUNS"); do
    drop_caches
    CID="bench-archive-$$-$i"
    s=$(now)
    local rootfs
    rootfs="$("$CLIPCTL" mount --archive "$url" --cid "$CID" --run-dir "$W/run" --node-dir "$W/node-$i" \
      --profile off --disk-cache 0)"
    numpy_in "$rootfs"
    add clip_numpy_py_s "$PY"; add clip_numpy_total_s "$(secs $(( $(now) - s )))"
    "$CLIPCTL" umount --cid "$CID" --run-dir "$W/run" >/dev/null; CID=""
    drop_caches
    CID="bench-archive-$$-p$i"
    s=$(now)
    rootfs="$("$CLIPCTL" mount --archive "$url" --cid "$CID" --run-dir "$W/run" --node-dir "$W/node-prof" \
      --profile auto --disk-cache 0)"
    numpy_in "$rootfs"
    add clip_prof_py_s "$PY"; add clip_prof_total_s "$(secs $(( $(now) - s )))"
    "$CLIPCTL" umount --cid "$CID" --run-dir "$W/run" >/dev/null; CID=""
    drop_caches
    mkdir -p "$W/sq" "$W/sqov" "$W/sqmerged"
    s=$(now)
    squashfuse_ll -f "$sqfs" "$W/sq" & SQPID=$!
    for _ in $(seq 1 200); do mountpoint -q "$W/sq" && break; sleep 0.05; done
    mount -t tmpfs tmpfs "$W/sqov"; mkdir -p "$W/sqov/u" "$W/sqov/w"
    mount -t overlay overlay -o "lowerdir=$W/sq,upperdir=$W/sqov/u,workdir=$W/sqov/w" "$W/sqmerged"
    numpy_in "$W/sqmerged"
    add sq_numpy_py_s "$PY"; add sq_numpy_total_s "$(secs $(( $(now) - s )))"
    umount "$W/sqmerged"; umount "$W/sqov"; umount "$W/sq"; wait "$SQPID" 2>/dev/null || true; SQPID=""
  done
  printf '%-44s %9s %9s\n' "" "python" "total"
  printf '%-44s %9s %9s\n' "clip mount --archive s3:// (s3s-fs loopback)" "$(med clip_numpy_py_s)" "$(med clip_numpy_total_s)"
  printf '%-44s %9s %9s\n' "clip, startup profile replayed" "$(med clip_prof_py_s)" "$(med clip_prof_total_s)"
  printf '%-44s %9s %9s\n' "squashfuse_ll local + overlay" "$(med sq_numpy_py_s)" "$(med sq_numpy_total_s)"
  printf 'cold import numpy: first start %sx, profile replayed %sx squashfuse_ll (target <= 1.0); load now %s\n' \
    "$(ratio "$(med clip_numpy_py_s)" "$(med sq_numpy_py_s)")" \
    "$(ratio "$(med clip_prof_py_s)" "$(med sq_numpy_py_s)")" "$(load)"
  stop_s3
}

printf 'python rootfs: %s MB of file data, %s entries; %s CPUs; load %s\n' \
  "$(mb "$DATA")" "$(find "$ROOTFS" | wc -l)" "$NCPU" "$(load)"
for sec in $SECTIONS; do "section_$sec"; done
