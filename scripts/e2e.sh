#!/usr/bin/env bash
# e2e.sh: the main job, end to end, as root on a fresh Debian 12 (needs Rust stable).
# install deps -> cargo build --release -> local registry -> test images (tiny, python)
# -> clipctl index / inspect / ls -> clipctl mount -> `import numpy` in runc on the
# lazy rootfs (first start, records a startup profile) -> metrics -> umount -> cold mount
# again (replays the profile) -> umount -> archives and S3 (s3s-fs on loopback, started
# here): clipctl create --image -> s3://, inspect / ls / extract from S3, the extracted
# tree == umoci's rootfs, push, mount --archive s3:// + import numpy in runc -> check
# that no clip mount is left.
# Env: CLIP_REGISTRY_PORT (default 5000), CLIP_S3_PORT (default registry port + 4000),
# CLIP_TESTBED (default /var/tmp/clip-testbed). The registry is stopped at exit if (and
# only if) this script started it; the S3 server always.
set -euo pipefail
. "$(dirname "$(readlink -f "$0")")/lib.sh"
cd "$CLIP_ROOT"

PORT="${CLIP_REGISTRY_PORT:-5000}"
REG="127.0.0.1:$PORT"
IMAGE="$REG/clip/python:latest"
CID=e2e-demo
W="$(mktemp -d /tmp/clip-e2e.XXXXXX)"
CLIPCTL="$CLIP_ROOT/target/release/clipctl"
MOUNTED=0
cleanup() {
  local rc=$?
  if [ "$MOUNTED" = 1 ]; then "$CLIPCTL" umount --cid "$CID" >/dev/null 2>&1 || true; fi
  stop_registry
  stop_s3
  rm -rf "$W"
  if [ "$rc" = 0 ]; then step "e2e: PASSED"; else step "e2e: FAILED (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT

step "1/15 install dependencies";        scripts/install-deps.sh
step "2/15 cargo build --release";       ensure_cargo; cargo build --release
step "3/15 registry on $REG";            with_registry "$PORT"
step "4/15 test images (tiny, python)";  IMAGES="tiny python" scripts/make-images.sh "$REG"

step "5/15 clipctl index $IMAGE"
"$CLIPCTL" index --image "$IMAGE" --out "$W/python.clip"
ls -l "$W/python.clip"
step "6/15 clipctl inspect / ls /app"
"$CLIPCTL" inspect "$W/python.clip"
"$CLIPCTL" ls "$W/python.clip" /app

# A node dir of its own, so the demo always shows the first start (no startup profile
# yet), and no disk tier, so the second start really fetches from the registry.
NODE_ARGS=(--node-dir "$W/node" --disk-cache 0)
run_numpy() {   # run_numpy ROOTFS: import numpy in runc, check the version, print the run time
  local s out
  s=$(date +%s%N)
  out="$(scripts/run-container.sh "$1" python3 -c 'import numpy; print(numpy.__version__)')"
  [ "$out" = 2.2.6 ] || die "expected numpy 2.2.6, got '$out'"
  echo "numpy.__version__ in the container: $out (container run $(( ($(date +%s%N) - s) / 1000000 )) ms)"
}

step "7/15 clipctl mount (cid $CID, first start: records a startup profile) + import numpy in runc"
sync; echo 3 > /proc/sys/vm/drop_caches
ROOTFS="$("$CLIPCTL" mount --image "$IMAGE" --cid "$CID" --clip "$W/python.clip" "${NODE_ARGS[@]}")"
MOUNTED=1
echo "rootfs: $ROOTFS"
run_numpy "$ROOTFS"

step "8/15 clipctl metrics --cid $CID"
"$CLIPCTL" metrics --cid "$CID" --format text

step "9/15 clipctl umount --cid $CID (saves the startup profile)"
"$CLIPCTL" umount --cid "$CID"
MOUNTED=0
PROFILE="$(ls "$W"/node/profiles/*.json)" || die "no startup profile saved"
jq -r '"profile \(input_filename): \(.ranges | length) ranges, \([.ranges[].len] | add) bytes"' "$PROFILE"

step "10/15 cold mount again: the profile is replayed from mount time on"
sync; echo 3 > /proc/sys/vm/drop_caches
ROOTFS="$("$CLIPCTL" mount --image "$IMAGE" --cid "$CID" --clip "$W/python.clip" "${NODE_ARGS[@]}")"
MOUNTED=1
run_numpy "$ROOTFS"
"$CLIPCTL" metrics --cid "$CID" --format text | grep -E "^ *(bytes|network)"

step "11/15 clipctl umount --cid $CID"
"$CLIPCTL" umount --cid "$CID"
MOUNTED=0

S3_PORT="${CLIP_S3_PORT:-$((PORT + 4000))}"
step "12/15 S3 (s3s-fs on 127.0.0.1:$S3_PORT): clipctl create --image $IMAGE -> s3://$S3_BUCKET/python.clip"
start_s3 "$S3_PORT" "$W/s3"
"$CLIPCTL" create --image "$IMAGE" --output "s3://$S3_BUCKET/python.clip"
"$CLIPCTL" inspect "s3://$S3_BUCKET/python.clip"
"$CLIPCTL" ls "s3://$S3_BUCKET/python.clip" /app

step "13/15 clipctl extract --archive s3://$S3_BUCKET/python.clip: the tree == umoci's rootfs"
GT="$CLIP_TESTBED/unpacked/python/rootfs"
"$CLIPCTL" extract --archive "s3://$S3_BUCKET/python.clip" --output "$W/extracted"
listing() { (cd "$1" && find . -printf '%p %M %U %G %s %T@ %l\n' | sort); }
cmp <(listing "$W/extracted") <(listing "$GT") || die "extracted tree differs from $GT (metadata)"
if ! diff -r --no-dereference "$W/extracted" "$GT" > "$W/diff.txt" 2>&1; then
  # diff cannot compare devices and fifos; their columns were compared above.
  if grep -v -e ' is a fifo while ' -e ' special file while ' "$W/diff.txt" | grep -q .; then
    die "extracted tree differs from $GT: $(head -3 "$W/diff.txt")"
  fi
fi
echo "extracted tree equals $GT (names, modes, owners, sizes, mtimes, link targets, bytes)"

step "14/15 clipctl push (local archive -> S3) and extract it back"
"$CLIPCTL" create --input "$CLIP_TESTBED/unpacked/tiny/rootfs" --output "$W/tiny.clip"
"$CLIPCTL" push "$W/tiny.clip" "s3://$S3_BUCKET/tiny.clip"
cmp "$W/tiny.clip" "$W/s3/$S3_BUCKET/tiny.clip" || die "pushed object differs from $W/tiny.clip"
"$CLIPCTL" extract --archive "s3://$S3_BUCKET/tiny.clip" --output "$W/tiny-out"
cmp <(listing "$W/tiny-out") <(listing "$CLIP_TESTBED/unpacked/tiny/rootfs") || die "tiny round trip differs"

step "15/15 clipctl mount --archive s3://$S3_BUCKET/python.clip --cid $CID + import numpy in runc (lazy range reads)"
sync; echo 3 > /proc/sys/vm/drop_caches
ROOTFS="$("$CLIPCTL" mount --archive "s3://$S3_BUCKET/python.clip" --cid "$CID" "${NODE_ARGS[@]}")"
MOUNTED=1
run_numpy "$ROOTFS"
"$CLIPCTL" ps
"$CLIPCTL" metrics --cid "$CID" --format text | grep -E "^ *(bytes|network)"
"$CLIPCTL" umount --cid "$CID"
MOUNTED=0
stop_s3
# mountinfo field 5 is the mount point: nothing left under /run/clip, where this run's
# FUSE mounts (images/<key>/mnt) and overlays (<cid>/rootfs) live. (Other clip mounts on
# the host, e.g. a developer's own run dir, are not this run's.)
LEFT="$(awk '$5 ~ /^\/run\/clip/' /proc/self/mountinfo)"
[ -z "$LEFT" ] || die "mounts left after umount:"$'\n'"$LEFT"
echo "no clip mount left"
