#!/usr/bin/env bash
# bench-e2e.sh [REGISTRY [SECTION...]]   e.g. bench-e2e.sh 127.0.0.1:5000 distance
#                                         (default 127.0.0.1:5000, sections from $SECTIONS)
#
# End-to-end benchmark of clip on the python test image against baselines measured
# in the SAME run (the machine is shared and noisy: trust the ratios, not the seconds).
#
# Sections (arguments after REGISTRY, else env SECTIONS, default "index numpy walk"):
#   index  `clipctl index` of REGISTRY/clip/python:latest: wall time, peak RSS, index size;
#          baseline: `pigz -dc` and `gzip -dc` of all layer blobs (from the OCI layout, in
#          page cache) to /dev/null. Runs are interleaved (clip, pigz, gzip, clip, ...).
#   numpy  cold start of `python3 -c "import numpy"` in runc:
#          clip      first start of the image on the node (no startup profile yet): drop
#                    caches + fresh daemon (empty cache) -> `clipctl mount --cid` ->
#                    run-container.sh; then a warm run (2nd container on the same mount);
#                    bytes fetched / range GETs / bytes served from `clipctl metrics`.
#                    The umount saves the startup profile this run recorded.
#          clip+profile  the same cold start again (drop caches, fresh daemon, empty
#                    memory and disk cache), now replaying that profile from mount time on.
#          restart   once more with the node's disk chunk cache left from the runs
#                    above (drop caches, fresh daemon): a container coming back to a node.
#          eager     drop caches -> skopeo copy + umoci unpack + the same container run.
#          sqfs      drop caches -> fresh squashfuse_ll mount of a squashfs of the unpacked
#                    rootfs + overlay (tmpfs upper) -> the same container run; then warm.
#   walk   whole-tree data read `tar -cf - -C MNT . | cat > /dev/null` on the read-only
#          tree (`clipctl mount --clip F --mount-point MNT --profile off --disk-cache 0`:
#          demand reads, memory cache only)
#          vs squashfuse_ll:
#            cold      drop caches + fresh mount (1 run; it is also the warm-up pass)
#            warm      every cache warm (kernel page cache of the FUSE files included:
#                      clip and squashfuse_ll both open files with keep_cache)
#            warm-fs   the filesystem's own caches warm (clip: daemon chunk cache;
#                      squashfuse_ll: the .sqfs in host page cache), but the FUSE files'
#                      kernel page cache evicted before each run with
#                      posix_fadvise(DONTNEED) on every file, so every read goes to the daemon
#          and `ls -lR MNT > /dev/null`, cold (drop caches + fresh mount) for both.
#          Runs alternate clip, squashfuse_ll, clip, ... so load drift hits both alike.
#   distance  (not in the default set: ~15 min) the registry a network away: for each D in
#          DISTANCES, scripts/delay-proxy.py holds each direction D ms (pipelined; a new
#          connection costs one more round trip) and, RUNS times, the cold numpy start of
#            sq        squashfuse_ll local (no network; as in numpy)
#            first     clip first start through the proxy (`clipctl mount --clip F --image
#                      PROXIED_REF`): no profile, empty disk tier, fresh daemon, caches dropped
#            replay    the same with the profile `first` saved replayed from mount time on
#            published a fresh node (empty node dir: no index, no profile, no chunks) whose
#                      registry has the index and a profile published (`clipctl index --push`,
#                      `clipctl profile push` of the first profile recorded, into a private
#                      copy of the image, removed at exit): `clipctl mount --image PROXIED_REF`
#                      pulls both through the proxy and replays the profile
#            pull      skopeo copy through the proxy + umoci unpack + the container run
#          Reports, per D, python times (× squashfuse_ll) and, from `clipctl metrics`, GETs
#          total / critical (critical_path_gets: the GETs a reader waited for), bytes
#          fetched / served; one markdown table to paste into BENCHMARKS.md.
#
# Env: RUNS (default 3; medians), SECTIONS, DISTANCES (default "0 5 10 25": one-way ms),
#      SPAN (passed as `clipctl index --span`), CLIPCTL (default target/release/clipctl), CLIP_BENCH_CACHE (default /var/tmp/clip-bench:
#      the squashfs, built once per image digest, about 30-60 s), CLIP_MOUNT_ARGS (extra
#      `clipctl mount` options, e.g. "--threads 4"; default: clipctl's defaults),
#      TOUCHED_MB (default 18: bytes `import numpy` touches, Slacker-style, measured on the
#      testbed with strace + smaps).
# Needs: root, the registry and images of make-images.sh, the release build, squashfuse_ll,
# mksquashfs, skopeo, umoci, runc, pigz, python3 (also for delay-proxy.py). Everything it
# creates lives in one temp dir and is removed (mounts, daemons, containers, the proxy) at
# exit; it checks /proc/self/mountinfo at the end.
set -euo pipefail
HERE="$(dirname "$(readlink -f "$0")")"
. "$HERE/lib.sh"

CMDLINE="$0 $*"
REG="${1:-127.0.0.1:5000}"
IMG=python
REF="$REG/clip/$IMG:latest"
RUNS="${RUNS:-3}"
SECTIONS="${SECTIONS:-index numpy walk}"
[ "$#" -le 1 ] || SECTIONS="${*:2}"
DISTANCES="${DISTANCES:-0 5 10 25}"
CLIPCTL="${CLIPCTL:-$CLIP_ROOT/target/release/clipctl}"
BENCH_CACHE="${CLIP_BENCH_CACHE:-/var/tmp/clip-bench}"
TOUCHED_MB="${TOUCHED_MB:-18}"
read -r -a MOUNT_ARGS <<< "${CLIP_MOUNT_ARGS:-}"
LAYOUT="$CLIP_TESTBED/oci/$IMG"
GT_ROOTFS="$CLIP_TESTBED/unpacked/$IMG/rootfs"
NUMPY_CMD='TIMEFORMAT=%R; time python3 -c "import numpy"'

[ -x "$CLIPCTL" ] || die "no $CLIPCTL: run cargo build --release"
[ -f "$LAYOUT/index.json" ] || die "no layout $LAYOUT: run make-images.sh $REG first"
[ -d "$GT_ROOTFS" ] || die "no unpacked rootfs $GT_ROOTFS: run make-images.sh $REG first"
for t in pigz gzip skopeo umoci runc squashfuse_ll mksquashfs jq mountpoint; do
  command -v "$t" >/dev/null || die "$t not found (scripts/install-deps.sh; squashfuse_ll: apt-get install squashfuse)"
done
[ -x /usr/bin/time ] || die "/usr/bin/time not found (apt-get install time)"
PY3="$(command -v /usr/bin/python3 python3 | head -1)"; [ -n "$PY3" ] || die "python3 not found (walk section)"
curl -fsS -o /dev/null "http://$REG/v2/" || die "no registry at $REG (scripts/registry-up.sh)"

W="$(mktemp -d /var/tmp/clip-bench-run.XXXXXX)"
RUN_DIR="$W/run"; NODE_DIR="$W/node"; CLIP="$W/$IMG.clip"
mkdir -p "$RUN_DIR" "$NODE_DIR"

# ---------------------------------------------------------------- cleanup
CIDS=()     # clip containers attached (clipctl umount --cid)
MNTS=()     # mount points, unmounted in reverse order
PIDS=()     # foreground FUSE servers we started in the background
PUB_REPO=""  # private copy of the image holding published artifacts (distance section)
cleanup() {
  local rc=$? i
  set +e
  [ -z "$PUB_REPO" ] || delete_published "$PUB_REPO"
  for ((i=${#CIDS[@]}-1; i>=0; i--)); do
    [ -n "${CIDS[i]}" ] && "$CLIPCTL" umount --cid "${CIDS[i]}" --run-dir "$RUN_DIR" >/dev/null 2>&1
  done
  for ((i=${#MNTS[@]}-1; i>=0; i--)); do
    [ -n "${MNTS[i]}" ] && mountpoint -q "${MNTS[i]}" && { umount "${MNTS[i]}" 2>/dev/null || umount -l "${MNTS[i]}"; }
  done
  for i in "${PIDS[@]}"; do [ -n "$i" ] || continue; kill "$i" 2>/dev/null; wait "$i" 2>/dev/null; done
  for i in $(seq 1 50); do [ -z "$(daemon_pids)" ] && break; sleep 0.1; done
  kill_daemons; sleep 0.2
  local left
  left="$(awk -v w="$W" 'index($5, w) == 1' /proc/self/mountinfo)"
  if [ -n "$left" ]; then
    log "mounts left under $W, lazy-unmounting:"$'\n'"$left"
    awk -v w="$W" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l
    rc=1
  fi
  rm -rf "$W"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- helpers
now() { date +%s%N; }
secs() { awk -v d="$1" 'BEGIN{printf "%.3f", d/1e9}'; }          # ns -> s
median() { sort -g | awk '{a[NR]=$1} END{if (NR) print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
calc() { awk "BEGIN{printf \"%.${2:-2}f\", $1}"; }                # calc EXPR [DECIMALS]
load() { cut -d' ' -f1-3 /proc/loadavg; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
is_num() { [[ "$1" =~ ^[0-9]+(\.[0-9]+)?$ ]]; }

declare -A R=()        # results: key -> value (medians)
declare -A S=()        # samples: key -> "v1 v2 v3"
add() { S[$1]="${S[$1]:-}${S[$1]:+ }$2"; printf '  %-28s run: %s\n' "$1" "$2" >&2; }
fin() { local k; for k in "$@"; do R[$k]="$(tr ' ' '\n' <<< "${S[$k]:-}" | median)"; done; }

# wait_mounted DIR [PID]: until DIR is a mount point (10 s), failing early if PID died
wait_mounted() {
  local i
  for i in $(seq 1 200); do
    mountpoint -q "$1" && return 0
    [ -z "${2:-}" ] || kill -0 "$2" 2>/dev/null || die "FUSE server for $1 exited"
    sleep 0.05
  done
  die "$1 not mounted after 10 s"
}
# fg_umount DIR PID: unmount a foreground FUSE server and wait for it to exit
fg_umount() { umount "$1"; wait "$2" 2>/dev/null || true; forget PIDS "$2"; forget MNTS "$1"; }
# forget ARRAY VALUE: remove VALUE from the cleanup list ARRAY
forget() { local -n a=$1; local i; for i in "${!a[@]}"; do [ "${a[i]}" != "$2" ] || unset 'a[i]'; done; }

# clip daemons of our run dir (started detached by `clipctl mount --cid`)
daemon_pids() { cat "$RUN_DIR"/images/*/daemon.pid 2>/dev/null | while read -r p; do [ -d "/proc/$p" ] && echo "$p"; done; true; }
wait_daemons_gone() {
  local i
  for i in $(seq 1 100); do [ -z "$(daemon_pids)" ] && return 0; sleep 0.1; done
  die "clip daemon still running after umount: $(daemon_pids)"
}
kill_daemons() { local p; for p in $(daemon_pids); do kill "$p" 2>/dev/null; done; }

CLIP_SOURCE=()   # e.g. (--image PROXIED_REF): where clip_mount_cid reads blobs from
clip_mount_cid() {   # clip_mount_cid CID: sets ROOTFS
  CIDS+=("$1")
  ROOTFS="$("$CLIPCTL" mount --cid "$1" --clip "$CLIP" --run-dir "$RUN_DIR" --node-dir "$NODE_DIR" \
    ${CLIP_SOURCE[@]+"${CLIP_SOURCE[@]}"} ${MOUNT_ARGS[@]+"${MOUNT_ARGS[@]}"})"
  [ -d "$ROOTFS" ] || die "clipctl mount printed '$ROOTFS'"
}
clip_umount_cid() { "$CLIPCTL" umount --cid "$1" --run-dir "$RUN_DIR" >/dev/null; forget CIDS "$1"; }
# metric JQ: a number from the metrics of the (only) image in $W/metrics.json (0 if absent)
metric() { jq -r "(.images[0] | $1) // 0" "$W/metrics.json"; }

# clip_fg_mount DIR: read-only tree in the foreground (own process, own cache); sets FGPID
clip_fg_mount() {
  mkdir -p "$1"
  "$CLIPCTL" mount --clip "$CLIP" --mount-point "$1" --profile off --disk-cache 0 --node-dir "$NODE_DIR" ${MOUNT_ARGS[@]+"${MOUNT_ARGS[@]}"} >>"$W/clip-fg.log" 2>&1 &
  FGPID=$!; PIDS+=("$FGPID"); MNTS+=("$1"); wait_mounted "$1" "$FGPID"
}
# sq_mount DIR: squashfuse_ll in the foreground, backgrounded; sets FGPID
sq_mount() {
  mkdir -p "$1"
  squashfuse_ll -f "$SQFS" "$1" >>"$W/squashfuse.log" 2>&1 &
  FGPID=$!; PIDS+=("$FGPID"); MNTS+=("$1"); wait_mounted "$1" "$FGPID"
}

# clip_cold_numpy CID KEY: wait until no daemon of ours runs (fresh daemon, empty memory
# cache), drop caches, then timed: mount CID + the numpy container. Adds KEY_total_s and
# KEY_py_s; the container's metrics are in $W/metrics.json.
clip_cold_numpy() {
  local s
  wait_daemons_gone
  drop_caches
  s=$(now)
  clip_mount_cid "$1"
  numpy_in "$ROOTFS"
  add "$2_total_s" "$(secs $(( $(now) - s )))"
  add "$2_py_s" "$PY"
  "$CLIPCTL" metrics --cid "$1" --run-dir "$RUN_DIR" --format json > "$W/metrics.json"
}
# numpy_in ROOTFS: run the numpy command in runc; sets TOTAL (wall s of run-container.sh)
# and PY (bash `time` of python3 inside the container)
numpy_in() {
  local s out
  s=$(now)
  out="$("$HERE/run-container.sh" "$1" /bin/bash -c "$NUMPY_CMD" 2>&1)" || die "container failed: $out"
  TOTAL=$(secs $(( $(now) - s )))
  PY="$(tail -n1 <<< "$out")"
  is_num "$PY" || die "unexpected container output: $out"
}

# eager_numpy REF PREFIX: the eager baseline, drop caches -> skopeo copy of REF + umoci
# unpack + the numpy container. Adds PREFIXskopeo_s, PREFIXumoci_s, PREFIXeager_total_s
# and PREFIXeager_py_s.
eager_numpy() {
  local s s2 s3 p=$2
  drop_caches
  s=$(now)
  skopeo --insecure-policy copy -q --src-tls-verify=false "docker://$1" "oci:$W/layout:latest" >/dev/null
  s2=$(now); add "${p}skopeo_s" "$(secs $(( s2 - s )))"
  umoci unpack --image "$W/layout:latest" "$W/unpack" >/dev/null 2>&1
  s3=$(now); add "${p}umoci_s" "$(secs $(( s3 - s2 )))"
  numpy_in "$W/unpack/rootfs"
  add "${p}eager_total_s" "$(secs $(( $(now) - s )))"; add "${p}eager_py_s" "$PY"
  rm -rf "$W/layout" "$W/unpack"
}

# sq_numpy KEY [warm]: the local baseline, drop caches -> fresh squashfuse_ll mount +
# overlay (tmpfs upper) -> the numpy container. Adds KEY_cold_total_s and KEY_cold_py_s
# (with warm, a second container too: KEY_warm_total_s, KEY_warm_py_s).
sq_numpy() {
  local s sqpid
  drop_caches
  s=$(now)
  sq_mount "$W/sq"; sqpid=$FGPID
  mkdir -p "$W/sqov" "$W/sqmerged"
  MNTS+=("$W/sqov"); mount -t tmpfs tmpfs "$W/sqov"
  mkdir -p "$W/sqov/upper" "$W/sqov/work"
  MNTS+=("$W/sqmerged")
  mount -t overlay overlay -o "lowerdir=$W/sq,upperdir=$W/sqov/upper,workdir=$W/sqov/work" "$W/sqmerged"
  numpy_in "$W/sqmerged"
  add "$1_cold_total_s" "$(secs $(( $(now) - s )))"; add "$1_cold_py_s" "$PY"
  if [ "${2:-}" = warm ]; then
    numpy_in "$W/sqmerged"
    add "$1_warm_total_s" "$TOTAL"; add "$1_warm_py_s" "$PY"
  fi
  umount "$W/sqmerged"; forget MNTS "$W/sqmerged"
  umount "$W/sqov"; forget MNTS "$W/sqov"
  fg_umount "$W/sq" "$sqpid"
}

# evict_fuse_pages DIR: drop the kernel page cache of every regular file under DIR
# (posix_fadvise DONTNEED; clean pages only), leaving the FUSE server's own caches alone.
evict_fuse_pages() {
  "$PY3" - "$1" <<'EOF'
import os, sys
for root, dirs, files in os.walk(sys.argv[1]):
    for f in files:
        p = os.path.join(root, f)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
EOF
}

# tar_read DIR: full data read of DIR, sets SEC (GNU tar reads no file data when the
# archive is /dev/null, hence the pipe)
tar_read() {
  local s; s=$(now)
  tar -cf - -C "$1" . | cat > /dev/null || die "tar of $1 failed"
  SEC=$(secs $(( $(now) - s )))
}
ls_walk() { local s; s=$(now); ls -lR "$1" > /dev/null || die "ls -lR $1 failed"; SEC=$(secs $(( $(now) - s ))); }

ensure_index() {   # the .clip used by numpy/walk (built untimed if the index section is off)
  [ -s "$CLIP" ] && return 0
  "$CLIPCTL" index --image "$REF" --out "$CLIP" ${SPAN:+--span "$SPAN"} >/dev/null 2>&1 || die "clipctl index failed"
}

ensure_sqfs() {    # squashfs of the ground-truth rootfs, cached per manifest digest
  local h; h="$(layout_manifest "$LAYOUT")"; h="${h#sha256:}"
  SQFS="$BENCH_CACHE/$IMG-${h:0:12}.sqfs"
  [ -s "$SQFS" ] && return 0
  mkdir -p "$BENCH_CACHE"
  log "building $SQFS (mksquashfs, once per image digest)"
  mksquashfs "$GT_ROOTFS" "$SQFS.tmp.$$" -comp gzip -noappend -quiet >/dev/null
  mv "$SQFS.tmp.$$" "$SQFS"
}

# ---------------------------------------------------------------- 1. index
section_index() {
  step "index: clipctl index $REF ${SPAN:+--span $SPAN} vs pigz/gzip -dc of all layers (RUNS=$RUNS)"
  local blobs=() d i s
  for d in $(jq -r '.layers[].digest' "$(layout_blob "$LAYOUT" "$(layout_manifest "$LAYOUT")")"); do
    blobs+=("$(layout_blob "$LAYOUT" "$d")")
  done
  cat "${blobs[@]}" > /dev/null                       # layout blobs into page cache
  ensure_index                                        # warm-up: registry blobs into page cache
  R[index_load0]="$(load)"
  for i in $(seq 1 "$RUNS"); do
    s=$(now)
    /usr/bin/time -f %M -o "$W/rss" "$CLIPCTL" index --image "$REF" --out "$W/run.clip" ${SPAN:+--span "$SPAN"} >/dev/null 2>&1 \
      || die "clipctl index failed"
    add index_s "$(secs $(( $(now) - s )))"
    add index_rss_kib "$(tail -n1 "$W/rss")"
    s=$(now); for b in "${blobs[@]}"; do pigz -dc < "$b" > /dev/null; done; add pigz_s "$(secs $(( $(now) - s )))"
    s=$(now); for b in "${blobs[@]}"; do gzip -dc < "$b" > /dev/null; done; add gzip_s "$(secs $(( $(now) - s )))"
  done
  fin index_s index_rss_kib pigz_s gzip_s
  local js; js="$("$CLIPCTL" inspect "$W/run.clip" --json)"
  R[index_size]="$(jq -r .index_size <<< "$js")"
  R[index_pct]="$(jq -r '.index_percent_of_compressed' <<< "$js")"
  R[compressed]="$(jq -r .compressed_size <<< "$js")"
  R[span]="$(jq -r '.span // "?"' <<< "$js")"
  R[checkpoints]="$(jq -r '[.layers[].checkpoints] | add' <<< "$js")"
  R[window_bytes]="$(jq -r '[.layers[].window_bytes // 0] | add' <<< "$js")"
  R[index_load1]="$(load)"
}

# ---------------------------------------------------------------- 2. numpy
section_numpy() {
  step "numpy: cold start of import numpy in runc, clip vs skopeo+umoci vs squashfuse_ll (RUNS=$RUNS)"
  ensure_index; ensure_sqfs
  R[numpy_load0]="$(load)"
  local i cid
  for i in $(seq 1 "$RUNS"); do
    # clip, the image's first start here: no profile, nothing on the node's disk
    cid="bench-$$-$i"
    wait_daemons_gone; rm -rf "$NODE_DIR/profiles" "$NODE_DIR/chunks"
    clip_cold_numpy "$cid" clip_cold
    add clip_fetched "$(metric .counters.bytes_fetched)"
    add clip_gets "$(metric .counters.fetch_count)"
    add clip_served "$(metric .counters.bytes_served)"
    add clip_inflated "$(metric .counters.inflate_bytes)"
    add clip_get_p50_ms "$(metric '(.timings.range_get.p50_us // 0) / 1000')"
    add clip_net_s "$(metric '(.counters.network_blocked_ns_total // 0) / 1e9')"
    add clip_inflate_s "$(metric '(.timings.inflate.sum_us // 0) / 1e6')"
    add clip_miss_s "$(metric '(.timings.cache_miss.sum_us // 0) / 1e6')"
    numpy_in "$ROOTFS"                                   # warm: same mount, new container
    add clip_warm_total_s "$TOTAL"; add clip_warm_py_s "$PY"
    clip_umount_cid "$cid"                               # saves the startup profile

    # clip again, cold, replaying the startup profile the first start recorded
    ls "$NODE_DIR"/profiles/*.json >/dev/null 2>&1 || die "no startup profile saved in $NODE_DIR/profiles"
    cid="bench-$$-$i-p"
    wait_daemons_gone; rm -rf "$NODE_DIR/chunks"          # cold: nothing on the node's disk
    clip_cold_numpy "$cid" clipp_cold
    add clipp_fetched "$(metric .counters.bytes_fetched)"
    add clipp_gets "$(metric .counters.fetch_count)"
    add clipp_net_s "$(metric '(.counters.network_blocked_ns_total // 0) / 1e9')"
    clip_umount_cid "$cid"

    # clip restarted on the same node: fresh daemon, page cache dropped, the node's
    # disk chunk cache (and profile) from the runs above
    cid="bench-$$-$i-r"
    clip_cold_numpy "$cid" clipr
    add clipr_fetched "$(metric .counters.bytes_fetched)"
    add clipr_disk_hits "$(metric .counters.disk_hits)"
    clip_umount_cid "$cid"

    eager_numpy "$REF" ""
    sq_numpy sq warm
  done
  fin clipp_cold_total_s clipp_cold_py_s clipp_fetched clipp_gets clipp_net_s \
      clipr_total_s clipr_py_s clipr_fetched clipr_disk_hits
  fin clip_cold_total_s clip_cold_py_s clip_fetched clip_gets clip_served clip_warm_total_s clip_warm_py_s \
      clip_inflated clip_get_p50_ms clip_net_s clip_inflate_s clip_miss_s \
      skopeo_s umoci_s eager_total_s eager_py_s sq_cold_total_s sq_cold_py_s sq_warm_total_s sq_warm_py_s
  R[numpy_load1]="$(load)"
}

# ---------------------------------------------------------------- 3. walk
fs_mount() { if [ "$1" = clip ]; then clip_fg_mount "$2"; else sq_mount "$2"; fi; }
section_walk() {
  step "walk: tar | cat and ls -lR on clip --mount-point vs squashfuse_ll (RUNS=$RUNS)"
  ensure_index; ensure_sqfs
  R[walk_load0]="$(load)"
  local fs i
  local -A pid=()
  # Both trees stay mounted while the tar runs alternate clip, sq, clip, sq, ... so that
  # load drift on a shared machine hits both alike.
  for fs in clip sq; do
    # cold pass: drop caches + fresh mount; it also fills the filesystem's own cache
    # (clip's chunk cache is 512 MiB > the 361 MB of layer tar)
    drop_caches
    fs_mount $fs "$W/m-$fs"; pid[$fs]=$FGPID
    tar_read "$W/m-$fs"; add ${fs}_tar_cold_s "$SEC"
  done
  R[tar_bytes]="$(tar -cf - -C "$W/m-clip" . | wc -c)"   # untimed: stream size, re-warms clip
  tar_read "$W/m-sq"                                     # untimed: re-warm sq's page cache
  for i in $(seq 1 "$RUNS"); do
    for fs in clip sq; do tar_read "$W/m-$fs"; add ${fs}_tar_warm_s "$SEC"; done
  done
  for i in $(seq 1 "$RUNS"); do
    for fs in clip sq; do
      evict_fuse_pages "$W/m-$fs"
      tar_read "$W/m-$fs"; add ${fs}_tar_warmfs_s "$SEC"
    done
  done
  for fs in clip sq; do fg_umount "$W/m-$fs" "${pid[$fs]}"; done
  for i in $(seq 1 "$RUNS"); do
    for fs in clip sq; do
      drop_caches
      fs_mount $fs "$W/m-$fs"
      ls_walk "$W/m-$fs"; add ${fs}_ls_cold_s "$SEC"
      fg_umount "$W/m-$fs" "$FGPID"
    done
  done
  for fs in clip sq; do fin ${fs}_tar_cold_s ${fs}_tar_warm_s ${fs}_tar_warmfs_s ${fs}_ls_cold_s; done
  R[walk_load1]="$(load)"
}

# ---------------------------------------------------------------- 4. distance
# publish_setup: a private copy of the image (same digest) with its index published;
# sets PUB_REPO (repository path) and PUB_CLIP
publish_setup() {
  PUB_REPO="clip/$IMG-bench-$$"
  skopeo --insecure-policy copy -q --preserve-digests --src-tls-verify=false --dest-tls-verify=false \
    "docker://$REF" "docker://$REG/$PUB_REPO:latest" >/dev/null || die "skopeo copy to $PUB_REPO failed"
  PUB_CLIP="$W/published.clip"
  "$CLIPCTL" index --image "$REG/$PUB_REPO:latest" --out "$PUB_CLIP" ${SPAN:+--span "$SPAN"} --push >/dev/null \
    || die "clipctl index --push failed"
}
# delete_published REPO: remove the private copy (its artifacts, their tag schema index,
# the image manifest) from the registry; the blobs stay for the registry's garbage collector
delete_published() {
  local m t d
  m="$(layout_manifest "$LAYOUT")"; t="sha256-${m#sha256:}"
  for d in $(curl -fsS -H 'Accept: application/vnd.oci.image.index.v1+json' "http://$REG/v2/$1/manifests/$t" | jq -r '.manifests[].digest') \
      "$(curl -fsSI -H 'Accept: application/vnd.oci.image.index.v1+json' "http://$REG/v2/$1/manifests/$t" | tr -d '\r' | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: //p')" "$m"; do
    [ -n "$d" ] && curl -fsS -o /dev/null -X DELETE "http://$REG/v2/$1/manifests/$d"
  done
  true
}
# clip_published_numpy CID KEY: the first start on a fresh node whose registry has the
# index and a profile published: like clip_cold_numpy, but `clipctl mount --image` (no
# --clip) through the proxy with an empty node dir; checks both were pulled
clip_published_numpy() {
  local s node="$W/node-fresh"
  wait_daemons_gone; rm -rf "$node"
  drop_caches
  s=$(now)
  CIDS+=("$1")
  ROOTFS="$("$CLIPCTL" mount --cid "$1" --image "$PREG/$PUB_REPO:latest" --run-dir "$RUN_DIR" \
    --node-dir "$node" ${MOUNT_ARGS[@]+"${MOUNT_ARGS[@]}"})"
  [ -d "$ROOTFS" ] || die "clipctl mount printed '$ROOTFS'"
  numpy_in "$ROOTFS"
  add "$2_total_s" "$(secs $(( $(now) - s )))"
  add "$2_py_s" "$PY"
  "$CLIPCTL" metrics --cid "$1" --run-dir "$RUN_DIR" --format json > "$W/metrics.json"
  "$CLIPCTL" ps --json --run-dir "$RUN_DIR" | jq -e --arg c "$1" \
    '.[] | select(.cid == $c) | .provenance | .index.from == "pulled" and .profile_pulled != null' >/dev/null \
    || die "published run: index or profile not pulled ($("$CLIPCTL" ps --json --run-dir "$RUN_DIR"))"
}
# proxy_up D: scripts/delay-proxy.py in front of the registry, D ms each way; sets
# PROXY_PID and PREG (the proxied registry host:port)
proxy_up() {
  local i port pid
  rm -f "$W/proxy.ready"
  "$PY3" "$HERE/delay-proxy.py" --delay "$1" --ready-file "$W/proxy.ready" 0 "$REG" 2>>"$W/proxy.log" &
  PROXY_PID=$!; PIDS+=("$PROXY_PID")
  for i in $(seq 1 200); do
    [ -s "$W/proxy.ready" ] && break
    kill -0 "$PROXY_PID" 2>/dev/null || die "delay-proxy.py exited: $(cat "$W/proxy.log")"
    sleep 0.05
  done
  read -r pid port < "$W/proxy.ready" || die "delay-proxy.py not ready after 10 s"
  [ "$pid" = "$PROXY_PID" ] || die "delay-proxy.py ready file names pid $pid, started $PROXY_PID"
  PREG="127.0.0.1:$port"
  curl -fsS -o /dev/null "http://$PREG/v2/" || die "no registry through the proxy at $PREG"
}
proxy_down() {
  kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true; forget PIDS "$PROXY_PID"
  tail -n1 "$W/proxy.log" >&2
}
# net_metrics KEY: the network side of the clip run just measured ($W/metrics.json)
net_metrics() {
  add "$1_gets" "$(metric .counters.fetch_count)"
  add "$1_critical" "$(metric .counters.critical_path_gets)"
  add "$1_reader_gets" "$(metric .timings.blocked_on_network.count)"
  add "$1_fetched" "$(metric .counters.bytes_fetched)"
  add "$1_served" "$(metric .counters.bytes_served)"
  add "$1_blocked_s" "$(metric '(.counters.network_blocked_ns_total // 0) / 1e9')"
}
section_distance() {
  step "distance: cold import numpy, registry D ms away each way (delay-proxy.py), D in $DISTANCES (RUNS=$RUNS)"
  ensure_index; ensure_sqfs; publish_setup
  local d i k cid x
  for d in $DISTANCES; do
    is_num "$d" || die "DISTANCES: '$d' is not a number of ms"
    k="d${d}_"
    proxy_up "$d"
    log "D=$d ms: registry through $PREG"
    R[${k}load0]="$(load)"
    CLIP_SOURCE=(--image "$PREG/clip/$IMG:latest")
    for i in $(seq 1 "$RUNS"); do
      sq_numpy "${k}sq"                                       # local, no network
      cid="dist-$$-$d-$i"                                     # first start: no profile,
      wait_daemons_gone; rm -rf "$NODE_DIR/profiles" "$NODE_DIR/chunks"   # empty disk tier
      clip_cold_numpy "$cid" "${k}first"
      net_metrics "${k}first"
      clip_umount_cid "$cid"                                  # saves the startup profile
      ls "$NODE_DIR"/profiles/*.json >/dev/null 2>&1 || die "no startup profile saved in $NODE_DIR/profiles"
      if [ -z "${PUB_PROFILE:-}" ]; then                      # publish the first one recorded
        PUB_PROFILE="$(ls "$NODE_DIR"/profiles/*.json | head -1)"
        "$CLIPCTL" profile push --image "$REG/$PUB_REPO:latest" --from "$PUB_PROFILE" >/dev/null \
          || die "clipctl profile push failed"
      fi
      cid+="-p"                                               # replayed, empty disk tier
      wait_daemons_gone; rm -rf "$NODE_DIR/chunks"
      clip_cold_numpy "$cid" "${k}replay"
      net_metrics "${k}replay"
      clip_umount_cid "$cid"
      cid+="-pub"                                             # fresh node, published profile
      clip_published_numpy "$cid" "${k}pub"
      net_metrics "${k}pub"
      clip_umount_cid "$cid"
      eager_numpy "$PREG/clip/$IMG:latest" "$k"               # full pull through the proxy
    done
    CLIP_SOURCE=()
    proxy_down
    for x in sq_cold_total_s sq_cold_py_s skopeo_s umoci_s eager_total_s eager_py_s; do fin "$k$x"; done
    for x in first replay pub; do
      fin "${k}${x}_total_s" "${k}${x}_py_s" "${k}${x}_gets" "${k}${x}_critical" \
          "${k}${x}_reader_gets" "${k}${x}_fetched" "${k}${x}_served" "${k}${x}_blocked_s"
    done
    R[${k}load1]="$(load)"
  done
}

# ---------------------------------------------------------------- report
mbps() { calc "${R[tar_bytes]}/1e6/$1" 0; }
# row METRIC CLIP BASELINE RATIO TARGET MET
row() { printf '| %s | %s | %s | %s | %s | %s |\n' "$@"; }
met() { if awk "BEGIN{exit !($1)}"; then echo met; else echo "NOT met"; fi; }

# x A B: "(A/B×)"
x() { echo "($(calc "$1/$2" 1)×)"; }
report_distance() {
  local d k sq sqt
  echo
  echo "Network distance: \`$CMDLINE\` (RUNS=$RUNS, DISTANCES=\"$DISTANCES\"); registry through scripts/delay-proxy.py"
  echo "(D ms each way, pipelined; a new connection costs one more round trip). Cold \`import numpy\`,"
  echo "python time in runc, page cache dropped, medians; clip: fresh daemon, empty memory and disk"
  echo "tiers; ratios against squashfuse_ll local (no network) measured in the same run."
  echo "Load avg (1/5/15 min) per D, start -> end:$(for d in $DISTANCES; do printf ' D=%s: %s -> %s;' "$d" "${R[d${d}_load0]}" "${R[d${d}_load1]}"; done)"
  echo
  echo "| D one way (RTT) | squashfuse_ll local | clip first start | clip, profile replayed | clip first start, profile published (fresh node) | full pull: skopeo + umoci + run, total (× squashfuse_ll mount + run) | first start: GETs total / critical | first start: MB fetched / served (touched ${TOUCHED_MB}) |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
  for d in $DISTANCES; do
    k="d${d}_"; sq=${R[${k}sq_cold_py_s]}; sqt=${R[${k}sq_cold_total_s]}
    printf '| %s ms (%s ms) | %s s | %s s %s | %s s %s | %s s %s | %s s %s | %s / %s | %s / %s |\n' "$d" "$(calc "2*$d" 0)" "$sq" \
      "${R[${k}first_py_s]}" "$(x "${R[${k}first_py_s]}" "$sq")" \
      "${R[${k}replay_py_s]}" "$(x "${R[${k}replay_py_s]}" "$sq")" \
      "${R[${k}pub_py_s]}" "$(x "${R[${k}pub_py_s]}" "$sq")" \
      "${R[${k}eager_total_s]}" "$(x "${R[${k}eager_total_s]}" "$sqt")" \
      "${R[${k}first_gets]}" "${R[${k}first_critical]}" \
      "$(calc "${R[${k}first_fetched]}/1e6" 1)" "$(calc "${R[${k}first_served]}/1e6" 1)"
  done
  echo
  echo "Details (medians): totals are mount (or pull) + runc + import wall time; \"reader GETs\" are the"
  echo "critical GETs a reader made itself (the rest it waited for behind a prefetch); blocked = reader"
  echo "time in its own GETs."
  echo
  echo "| D | squashfuse_ll mount + run | clip first start: total; reader GETs; blocked | clip replayed: total; GETs total / critical; MB fetched | clip published (index + profile pulled): total; GETs total / critical; MB fetched | full pull: skopeo / umoci / python |"
  echo "| --- | --- | --- | --- | --- | --- |"
  for d in $DISTANCES; do
    k="d${d}_"
    printf '| %s ms | %s s | %s s; %s; %s s | %s s; %s / %s; %s | %s s; %s / %s; %s | %s / %s / %s s |\n' "$d" "${R[${k}sq_cold_total_s]}" \
      "${R[${k}first_total_s]}" "${R[${k}first_reader_gets]}" "$(calc "${R[${k}first_blocked_s]}" 2)" \
      "${R[${k}replay_total_s]}" "${R[${k}replay_gets]}" "${R[${k}replay_critical]}" "$(calc "${R[${k}replay_fetched]}/1e6" 1)" \
      "${R[${k}pub_total_s]}" "${R[${k}pub_gets]}" "${R[${k}pub_critical]}" "$(calc "${R[${k}pub_fetched]}/1e6" 1)" \
      "${R[${k}skopeo_s]}" "${R[${k}umoci_s]}" "${R[${k}eager_py_s]}"
  done
}

report() {
  step "results"
  echo
  echo "clip bench-e2e: $REF, RUNS=$RUNS, $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), kernel $(uname -r), $(date -u +%FT%TZ)"
  echo "clipctl: $("$CLIPCTL" --version); git $(git -C "$CLIP_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  [ -s "$CLIP" ] && echo "index used by numpy/walk: $("$CLIPCTL" inspect "$CLIP" --json |
    jq -r '"span \(.span // "?"), \([.layers[].checkpoints] | add) checkpoints, \(.index_size) B"')"
  echo "medians of $RUNS runs; samples in the log above; load avg (1/5/15 min) at section start -> end:"
  case " $SECTIONS " in *" index "*) echo "  index: ${R[index_load0]} -> ${R[index_load1]}";; esac
  case " $SECTIONS " in *" numpy "*) echo "  numpy: ${R[numpy_load0]} -> ${R[numpy_load1]}";; esac
  case " $SECTIONS " in *" walk "*)  echo "  walk:  ${R[walk_load0]} -> ${R[walk_load1]}";; esac
  case " $SECTIONS " in *" distance "*) echo "  distance: per D in the table below";; esac
  echo
  case " $SECTIONS " in *" index "*|*" numpy "*|*" walk "*)
  row metric clip baseline ratio target result
  row --- --- --- --- --- --- ;; esac
  case " $SECTIONS " in *" index "*)
    row "index wall time (span ${R[span]}, ${R[checkpoints]} checkpoints)" "${R[index_s]} s" "pigz -dc ${R[pigz_s]} s (gzip -dc ${R[gzip_s]} s)" \
        "$(calc "${R[index_s]}/${R[pigz_s]}")× pigz, $(calc "${R[index_s]}/${R[gzip_s]}")× gzip" "≤ 1.0× pigz" "$(met "${R[index_s]} <= ${R[pigz_s]}")"
    row "index peak RSS" "$(calc "${R[index_rss_kib]}/1024" 1) MiB" - - "≤ 100 MiB" "$(met "${R[index_rss_kib]} <= 102400")"
    row "index size" "$(calc "${R[index_size]}/1048576" 2) MiB" "compressed image $(calc "${R[compressed]}/1e6" 1) MB" \
        "$(calc "${R[index_pct]}" 2) % (windows $(calc "${R[window_bytes]}/1048576" 2) MiB)" "≤ 1 %" "$(met "${R[index_pct]} <= 1")"
  ;; esac
  case " $SECTIONS " in *" numpy "*)
    row "cold import numpy, startup profile replayed: python time in runc" "${R[clipp_cold_py_s]} s" "squashfuse_ll+overlay ${R[sq_cold_py_s]} s" \
        "$(calc "${R[clipp_cold_py_s]}/${R[sq_cold_py_s]}")×" "≤ 0.55 s and ≤ 1.0×" \
        "$(met "${R[clipp_cold_py_s]} <= 0.55") / $(met "${R[clipp_cold_py_s]} <= ${R[sq_cold_py_s]}")"
    row "cold start total, profile replayed (mount + runc + import)" "${R[clipp_cold_total_s]} s" \
        "skopeo ${R[skopeo_s]} + umoci ${R[umoci_s]} + run = ${R[eager_total_s]} s" \
        "$(calc "${R[clipp_cold_total_s]}/${R[eager_total_s]}")×" "≤ 0.2×" "$(met "${R[clipp_cold_total_s]} <= 0.2*${R[eager_total_s]}")"
    row "bytes fetched, profile replayed" "$(calc "${R[clipp_fetched]}/1e6" 1) MB (${R[clipp_gets]} GETs, blocked on network $(calc "${R[clipp_net_s]}" 2) s)" "touched ${TOUCHED_MB} MB" \
        "$(calc "${R[clipp_fetched]}/1e6/$TOUCHED_MB")× touched" \
        "≤ 1.2× touched" "$(met "${R[clipp_fetched]}/1e6 <= 1.2*$TOUCHED_MB")"
    row "cold import numpy, first start (no profile yet): python time in runc" "${R[clip_cold_py_s]} s" "squashfuse_ll+overlay ${R[sq_cold_py_s]} s" \
        "$(calc "${R[clip_cold_py_s]}/${R[sq_cold_py_s]}")×" "≤ 0.55 s and ≤ 1.0×" \
        "$(met "${R[clip_cold_py_s]} <= 0.55") / $(met "${R[clip_cold_py_s]} <= ${R[sq_cold_py_s]}")"
    row "cold start total, first start (mount + runc + import)" "${R[clip_cold_total_s]} s" \
        "skopeo ${R[skopeo_s]} + umoci ${R[umoci_s]} + run = ${R[eager_total_s]} s" \
        "$(calc "${R[clip_cold_total_s]}/${R[eager_total_s]}")×" "≤ 0.2×" "$(met "${R[clip_cold_total_s]} <= 0.2*${R[eager_total_s]}")"
    row "bytes fetched, first start (range GETs)" "$(calc "${R[clip_fetched]}/1e6" 1) MB (${R[clip_gets]} GETs)" "touched ${TOUCHED_MB} MB" \
        "$(calc "${R[clip_fetched]}/1e6/$TOUCHED_MB")× touched, $(calc "${R[clip_fetched]}/${R[clip_served]}")× served ($(calc "${R[clip_served]}/1e6" 1) MB)" \
        "≤ 1.2× touched" "$(met "${R[clip_fetched]}/1e6 <= 1.2*$TOUCHED_MB")"
    row "restart on the node (fresh daemon, page cache dropped, disk cache warm): python / total" \
        "${R[clipr_py_s]} / ${R[clipr_total_s]} s ($(calc "${R[clipr_fetched]}/1e6" 1) MB fetched, ${R[clipr_disk_hits]} chunks from disk)" \
        "squashfuse_ll cold ${R[sq_cold_py_s]} / ${R[sq_cold_total_s]} s" "$(calc "${R[clipr_py_s]}/${R[sq_cold_py_s]}")× python" "(info)" -
    row "warm import numpy (2nd container): python / total" "${R[clip_warm_py_s]} / ${R[clip_warm_total_s]} s" \
        "squashfuse_ll ${R[sq_warm_py_s]} / ${R[sq_warm_total_s]} s" "$(calc "${R[clip_warm_py_s]}/${R[sq_warm_py_s]}")× python" "(info)" -
    row "cold total, squashfuse_ll+overlay / eager python" - "${R[sq_cold_total_s]} s / eager python ${R[eager_py_s]} s" - "(info)" -
    row "cold first start, where clip's time goes (daemon metrics)" \
        "range GET p50 $(calc "${R[clip_get_p50_ms]}" 1) ms; blocked on network $(calc "${R[clip_net_s]}" 2) s; inflate $(calc "${R[clip_inflate_s]}" 2) s for $(calc "${R[clip_inflated]}/1e6" 0) MB; cache-miss time $(calc "${R[clip_miss_s]}" 2) s (summed over threads)" \
        - - "(info)" -
  ;; esac
  case " $SECTIONS " in *" distance "*) report_distance ;; esac
  case " $SECTIONS " in *" walk "*)
    local cw=${R[clip_tar_warm_s]} sw=${R[sq_tar_warm_s]} cf=${R[clip_tar_warmfs_s]} sf=${R[sq_tar_warmfs_s]}
    row "tar\\|cat, warm (all caches) $(calc "${R[tar_bytes]}/1e6" 0) MB" "$cw s ($(mbps "$cw") MB/s)" "squashfuse_ll $sw s ($(mbps "$sw") MB/s)" \
        "$(calc "$sw/$cw")× throughput" "≥ 1.0×" "$(met "$cw <= $sw")"
    row "tar\\|cat, warm fs cache, FUSE page cache evicted" "$cf s ($(mbps "$cf") MB/s)" "squashfuse_ll $sf s ($(mbps "$sf") MB/s)" \
        "$(calc "$sf/$cf")× throughput" "≥ 1.0×" "$(met "$cf <= $sf")"
    row "tar\\|cat, cold (1 run)" "${R[clip_tar_cold_s]} s ($(mbps "${R[clip_tar_cold_s]}") MB/s)" \
        "squashfuse_ll ${R[sq_tar_cold_s]} s ($(mbps "${R[sq_tar_cold_s]}") MB/s)" "$(calc "${R[sq_tar_cold_s]}/${R[clip_tar_cold_s]}")× throughput" "(info)" -
    row "ls -lR, cold" "${R[clip_ls_cold_s]} s" "squashfuse_ll ${R[sq_ls_cold_s]} s" "$(calc "${R[clip_ls_cold_s]}/${R[sq_ls_cold_s]}")×" \
        "≤ 1.0 s and ≤ 1.0×" "$(met "${R[clip_ls_cold_s]} <= 1.0") / $(met "${R[clip_ls_cold_s]} <= ${R[sq_ls_cold_s]}")"
  ;; esac
}

for sec in $SECTIONS; do
  case "$sec" in
    index|numpy|walk|distance) "section_$sec" ;;
    *) die "unknown section '$sec' (index numpy walk distance)" ;;
  esac
done
report
