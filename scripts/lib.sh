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

# Rust toolchain: rustup's default location is not always on root's PATH.
ensure_cargo() {
  [ -d "$HOME/.cargo/bin" ] && PATH="$HOME/.cargo/bin:$PATH"
  command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install Rust stable with rustup (https://rustup.rs), then re-run"
}

# with_registry PORT: start the test registry unless it already runs; the EXIT trap
# set by the caller should call stop_registry, which stops it only if we started it.
STARTED_REGISTRY=""
with_registry() {
  registry_is_ours "$(registry_state "$1")" || STARTED_REGISTRY="$1"
  "$CLIP_ROOT/scripts/registry-up.sh" "$1" >/dev/null
}
stop_registry() {
  if [ -n "$STARTED_REGISTRY" ]; then "$CLIP_ROOT/scripts/registry-down.sh" "$STARTED_REGISTRY" || true; fi
}

# start_s3 PORT DIR: the S3-compatible test server (s3s-fs, scripts/install-deps.sh) on
# 127.0.0.1:PORT keeping its objects under DIR, with bucket "clip" and test credentials,
# exported as AWS_* for clipctl. stop_s3 stops it (call it from the EXIT trap).
S3_PID=""
S3_BUCKET=clip
start_s3() {
  local port="$1" dir="$2" i
  [ -d "$HOME/.cargo/bin" ] && PATH="$HOME/.cargo/bin:$PATH"
  command -v s3s-fs >/dev/null 2>&1 || die "s3s-fs not found: run scripts/install-deps.sh"
  mkdir -p "$dir/$S3_BUCKET"
  s3s-fs --host 127.0.0.1 --port "$port" --access-key clip-local --secret-key clip-local-secret \
    "$dir" > "$dir.log" 2>&1 &
  S3_PID=$!
  export AWS_ACCESS_KEY_ID=clip-local AWS_SECRET_ACCESS_KEY=clip-local-secret
  export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
  for i in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    kill -0 "$S3_PID" 2>/dev/null || die "s3s-fs exited at start (see $dir.log)"
    sleep 0.1
  done
  die "s3s-fs did not listen on 127.0.0.1:$port within 10 s"
}
stop_s3() {
  if [ -n "$S3_PID" ]; then kill "$S3_PID" 2>/dev/null || true; wait "$S3_PID" 2>/dev/null || true; S3_PID=""; fi
}
