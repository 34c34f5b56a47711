#!/usr/bin/env bash
# registry-down.sh [PORT]: stop exactly the registry registry-up.sh started for PORT
# (by its pid file), nothing else. Storage is kept unless PURGE=1.
set -euo pipefail
. "$(dirname "$(readlink -f "$0")")/lib.sh"

PORT="${1:-5000}"
STATE="$(registry_state "$PORT")"
if registry_is_ours "$STATE"; then
  pid="$(cat "$STATE/registry.pid")"
  kill "$pid"
  for _ in $(seq 1 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  if [ -d "/proc/$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
  log "stopped pid $pid (127.0.0.1:$PORT)"
elif [ -e "$STATE/registry.pid" ]; then
  log "stale pid file $STATE/registry.pid (not our registry); nothing to stop"
else
  log "no registry started for port $PORT; nothing to stop"
fi
rm -f "$STATE/registry.pid"
if [ "${PURGE:-0}" = 1 ]; then rm -rf "$STATE"; log "purged $STATE"; fi
