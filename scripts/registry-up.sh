#!/usr/bin/env bash
# registry-up.sh [PORT]: start a CNCF distribution registry (Debian docker-registry)
# on 127.0.0.1:PORT (default 5000), filesystem storage, in the background.
# State: /tmp/clip-registry-PORT/{config.yml,storage/,registry.pid,registry.log}
# (override with CLIP_REGISTRY_DIR). Idempotent: if our registry for PORT already
# runs, only re-checks it. Waits until GET /v2/ answers; prints 127.0.0.1:PORT.
# Notes for clients: blob GETs honour Range (206); manifest GETs need
# Accept: application/vnd.oci.image.manifest.v1+json (else 404); plain HTTP, no auth.
set -euo pipefail
HERE="$(dirname "$(readlink -f "$0")")"
. "$HERE/lib.sh"

PORT="${1:-5000}"
[[ "$PORT" =~ ^[0-9]+$ ]] || die "PORT must be numeric"
STATE="$(registry_state "$PORT")"
URL="http://127.0.0.1:$PORT/v2/"
command -v docker-registry >/dev/null 2>&1 || "$HERE/install-deps.sh"

if registry_is_ours "$STATE"; then
  log "already running (pid $(cat "$STATE/registry.pid")) on 127.0.0.1:$PORT"
else
  curl -fsS -o /dev/null --max-time 2 "$URL" 2>/dev/null && die "something else already answers on $URL"
  mkdir -p "$STATE/storage"
  # redirect.disable: blob GETs are always served directly (206 for Range GETs).
  cat > "$STATE/config.yml" <<YAML
version: 0.1
log:
  level: ${REGISTRY_LOGLEVEL:-warn}
  formatter: text
  accesslog:
    disabled: $([ "${REGISTRY_ACCESSLOG:-0}" = 1 ] && echo false || echo true)
storage:
  filesystem:
    rootdirectory: $STATE/storage
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
  redirect:
    disable: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$PORT
  secret: clip-testbed-not-secret
health:
  storagedriver:
    enabled: false
YAML
  # setsid: own session, so the registry survives the caller; $! is the registry itself.
  setsid docker-registry serve "$STATE/config.yml" >>"$STATE/registry.log" 2>&1 </dev/null &
  echo $! > "$STATE/registry.pid"
  log "started pid $! (log $STATE/registry.log)"
fi

for _ in $(seq 1 100); do
  if curl -fsS -o /dev/null --max-time 2 "$URL" 2>/dev/null; then
    log "registry ready at 127.0.0.1:$PORT (storage $STATE/storage)"
    echo "127.0.0.1:$PORT"
    exit 0
  fi
  registry_is_ours "$STATE" || die "registry exited; see $STATE/registry.log"
  sleep 0.2
done
die "registry did not answer $URL within 20s; see $STATE/registry.log"
