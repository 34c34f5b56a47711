# Shared helpers for clip's scripts (sourced, not executed).
set -euo pipefail

# Repo root (scripts/..), testbed state dir (OCI layouts, ground-truth rootfs, build cache).
CLIP_ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
CLIP_TESTBED="${CLIP_TESTBED:-/var/tmp/clip-testbed}"
export CLIP_TESTBED

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
step() { printf '\n==== %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || die "run as root"

# State dir of the registry started by registry-up.sh for PORT.
registry_state() { echo "${CLIP_REGISTRY_DIR:-/tmp/clip-registry-$1}"; }

# registry_is_ours STATE: the pid file names a live registry serving STATE/config.yml
registry_is_ours() {
  local pidfile="$1/registry.pid" pid
  [ -s "$pidfile" ] || return 1
  pid="$(cat "$pidfile")"
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF "docker-registry serve $1/config.yml"
}

# Digest of the image tagged latest in OCI layout DIR, and the path of a blob in it.
layout_manifest() { jq -r '.manifests[0].digest' "$1/index.json"; }
layout_blob() { echo "$1/blobs/sha256/${2#sha256:}"; }
