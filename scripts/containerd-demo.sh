#!/usr/bin/env bash
# containerd-demo.sh [REGISTRY]: clip as containerd's remote snapshotter, end to end,
# with Debian's containerd and ctr. Starts in one temp dir (its own root, state, sockets,
# so it never meets a system containerd): `clipctl snapshotter`, a containerd whose
# config names it in proxy_plugins, then
#   clipctl index --push IMAGE                 (the publisher: once per image)
#   clipctl rpull IMAGE                        (manifest + config only; layers served by clip)
#   ctr run --snapshotter clip IMAGE ... python3 -c 'import numpy; print(numpy.__version__)'
#   ctr image rm --sync IMAGE
# and checks that nothing stays mounted and no clip daemon is left. Also shows the
# fallback: an image pulled by plain `ctr image pull --snapshotter clip` (no lazy
# labels) is unpacked into ordinary overlay snapshots and runs too.
# Env: CLIPCTL (default target/release/clipctl), IMAGE (default REGISTRY/clip/python:latest),
# FALLBACK_IMAGE (default REGISTRY/clip/tiny:latest), KEEP=1 keeps the temp dir.
# REGISTRY defaults to 127.0.0.1:$CLIP_REGISTRY_PORT (or 5000); start it with
# scripts/registry-up.sh and push the images with scripts/make-images.sh.
set -euo pipefail
HERE="$(dirname "$(readlink -f "$0")")"
. "$HERE/lib.sh"

REG="${1:-127.0.0.1:${CLIP_REGISTRY_PORT:-5000}}"
CLIPCTL="${CLIPCTL:-$CLIP_ROOT/target/release/clipctl}"
IMAGE="${IMAGE:-$REG/clip/python:latest}"
FALLBACK_IMAGE="${FALLBACK_IMAGE:-$REG/clip/tiny:latest}"
[ -x "$CLIPCTL" ] || die "no clipctl at $CLIPCTL (cargo build --release)"
command -v containerd >/dev/null && command -v ctr >/dev/null ||
  die "containerd/ctr missing: scripts/install-deps.sh"

W="$(mktemp -d /tmp/clip-containerd.XXXXXX)"
SNAP_PID="" CTRD_PID=""
cleanup() {
  set +e
  [ -n "$CTRD_PID" ] && kill "$CTRD_PID" 2>/dev/null && wait "$CTRD_PID" 2>/dev/null
  [ -n "$SNAP_PID" ] && kill "$SNAP_PID" 2>/dev/null && wait "$SNAP_PID" 2>/dev/null
  # Anything left (a failed run): containers' mounts, then the image daemons' mounts.
  grep -F " $W/" /proc/self/mountinfo | awk '{print $5}' | sort -r | while read -r m; do
    umount -l "$m"
  done
  if [ "${KEEP:-0}" = 1 ]; then log "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

cat > "$W/config.toml" <<TOML
version = 2
root = "$W/containerd/root"
state = "$W/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$W/containerd.sock"
[ttrpc]
  address = "$W/containerd.sock.ttrpc"
[plugins."io.containerd.gc.v1.scheduler"]
  # collect right after deletions, so removing an image removes its snapshots
  deletion_threshold = 1
[proxy_plugins]
  [proxy_plugins.clip]
    type = "snapshot"
    address = "$W/snapshotter.sock"
TOML

wait_for() { # wait_for WHAT CMD...: up to 20 s
  local what="$1"; shift
  for _ in $(seq 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "$what not ready; logs in $W"
}

step "clip snapshotter and containerd in $W"
RUST_LOG=info "$CLIPCTL" snapshotter --address "$W/snapshotter.sock" --root "$W/snapshotter" \
  --run-dir "$W/run" --node-dir "$W/node" 2> "$W/snapshotter.log" &
SNAP_PID=$!
wait_for "clip snapshotter" test -S "$W/snapshotter.sock"
containerd --config "$W/config.toml" > "$W/containerd.log" 2>&1 &
CTRD_PID=$!
CTR=(ctr --address "$W/containerd.sock")
wait_for containerd "${CTR[@]}" version
"${CTR[@]}" plugins ls | grep -E "snapshotter\.v1 +clip .*ok" >&2 || die "containerd has no clip snapshotter"

step "publish the index (once per image, by whoever builds it)"
"$CLIPCTL" index --image "$IMAGE" --push --out "$W/published.clip" >&2

step "clipctl rpull $IMAGE"
"$CLIPCTL" rpull --address "$W/containerd.sock" "$IMAGE"
"${CTR[@]}" image ls -q | grep -qxF "$IMAGE" || die "image not recorded"
"${CTR[@]}" snapshots --snapshotter clip ls >&2

step "ctr run --snapshotter clip"
out="$("${CTR[@]}" run --rm --snapshotter clip "$IMAGE" demo1 \
  python3 -c 'import numpy; print(numpy.__version__)')"
echo "numpy $out"
[ "$out" = "2.2.6" ] || die "expected numpy 2.2.6, got: $out"

step "fallback: ctr image pull --snapshotter clip $FALLBACK_IMAGE (unpacked, not lazy)"
"${CTR[@]}" image pull --plain-http --snapshotter clip "$FALLBACK_IMAGE" >/dev/null
"${CTR[@]}" run --rm --snapshotter clip "$FALLBACK_IMAGE" demo2 /bin/sh -c 'echo fallback ok'

step "remove the images; nothing may stay mounted or running"
"${CTR[@]}" image rm --sync "$IMAGE" "$FALLBACK_IMAGE" >/dev/null
left="$("${CTR[@]}" snapshots --snapshotter clip ls | tail -n +2)"
[ -z "$left" ] || die "snapshots left: $left"
mounts="$(grep -F " $W/" /proc/self/mountinfo || true)"
[ -z "$mounts" ] || die "still mounted: $mounts"
daemons="$(pgrep -f -- "__daemon --spec $W/" || true)"
[ -z "$daemons" ] || die "clip daemons still running: $daemons"
echo "containerd demo ok: numpy $out over clip; clean after removal"
