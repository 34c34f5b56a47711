#!/usr/bin/env bash
# e2e.sh: the main job, end to end, as root on a fresh Debian 12 (needs Rust stable).
# install deps -> cargo build --release -> local registry -> test images (tiny, python)
# -> clipctl index / inspect / ls -> clipctl mount -> `import numpy` in runc on the
# lazy rootfs (first start, records a startup profile) -> metrics -> umount -> cold mount
# again (replays the profile) -> umount -> check that no clip mount is left.
# Env: CLIP_REGISTRY_PORT (default 5000), CLIP_TESTBED (default /var/tmp/clip-testbed).
# The registry is stopped at exit if (and only if) this script started it.
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
  rm -rf "$W"
  if [ "$rc" = 0 ]; then step "e2e: PASSED"; else step "e2e: FAILED (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT

step "1/11 install dependencies";        scripts/install-deps.sh
step "2/11 cargo build --release";       ensure_cargo; cargo build --release
step "3/11 registry on $REG";            with_registry "$PORT"
step "4/11 test images (tiny, python)";  IMAGES="tiny python" scripts/make-images.sh "$REG"

step "5/11 clipctl index $IMAGE"
"$CLIPCTL" index --image "$IMAGE" --out "$W/python.clip"
ls -l "$W/python.clip"
step "6/11 clipctl inspect / ls /app"
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

step "7/11 clipctl mount (cid $CID, first start: records a startup profile) + import numpy in runc"
sync; echo 3 > /proc/sys/vm/drop_caches
ROOTFS="$("$CLIPCTL" mount --image "$IMAGE" --cid "$CID" --clip "$W/python.clip" "${NODE_ARGS[@]}")"
MOUNTED=1
echo "rootfs: $ROOTFS"
run_numpy "$ROOTFS"

step "8/11 clipctl metrics --cid $CID"
"$CLIPCTL" metrics --cid "$CID" --format text

step "9/11 clipctl umount --cid $CID (saves the startup profile)"
"$CLIPCTL" umount --cid "$CID"
MOUNTED=0
PROFILE="$(ls "$W"/node/profiles/*.json)" || die "no startup profile saved"
jq -r '"profile \(input_filename): \(.ranges | length) ranges, \([.ranges[].len] | add) bytes"' "$PROFILE"

step "10/11 cold mount again: the profile is replayed from mount time on"
sync; echo 3 > /proc/sys/vm/drop_caches
ROOTFS="$("$CLIPCTL" mount --image "$IMAGE" --cid "$CID" --clip "$W/python.clip" "${NODE_ARGS[@]}")"
MOUNTED=1
run_numpy "$ROOTFS"
"$CLIPCTL" metrics --cid "$CID" --format text | grep -E "^ *(bytes|network)"

step "11/11 clipctl umount --cid $CID"
"$CLIPCTL" umount --cid "$CID"
MOUNTED=0
# mountinfo: "... MOUNTPOINT ... - FSTYPE SOURCE ..." ; nothing under /run/clip, no fuse mount of clip
LEFT="$(awk '{ sep=0; for (i=1; i<=NF; i++) if ($i == "-") { sep=i; break }
              fs=$(sep+1); src=$(sep+2)
              if ($5 ~ /^\/run\/clip/ || (fs ~ /^fuse/ && (fs ~ /clip/ || src ~ /clip/))) print }' /proc/self/mountinfo)"
[ -z "$LEFT" ] || die "mounts left after umount:"$'\n'"$LEFT"
echo "no clip mount left"
