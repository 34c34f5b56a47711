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

. "$HERE/containerd-lib.sh"
W="$(mktemp -d /tmp/clip-containerd.XXXXXX)"
cleanup() {
  set +e
  ctrd_down "$W"
  if [ "${KEEP:-0}" = 1 ]; then log "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

step "clip snapshotter and containerd in $W"
ctrd_up "$W" "$CLIPCTL"

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
daemons="$(clip_daemons "$W")"
[ -z "$daemons" ] || die "clip daemons still running: $daemons"
echo "containerd demo ok: numpy $out over clip; clean after removal"
