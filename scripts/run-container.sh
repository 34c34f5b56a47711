#!/usr/bin/env bash
# run-container.sh ROOTFS [ARG...]: run one process in ROOTFS with runc, in a
# throw-away OCI bundle (runc spec; root.path=ROOTFS, not read-only, no terminal,
# no network). stdio pass through; exit code is the process's.
# Process: ARG... if given, else /bin/sh -c "$CONTAINER_CMD" (default: echo hello).
# Env: CONTAINER_ENV="K=V K2=V2" extra environment, CONTAINER_CWD (default /),
# CONTAINER_USER=UID:GID the process's user (default 0:0).
set -euo pipefail
CONTAINER_USER="${CONTAINER_USER:-0:0}"
HERE="$(dirname "$(readlink -f "$0")")"
. "$HERE/lib.sh"

ROOTFS="$(readlink -f "${1:?usage: run-container.sh ROOTFS [ARG...]}")"; shift
[ -d "$ROOTFS" ] || die "no such rootfs dir: $ROOTFS"
command -v runc >/dev/null 2>&1 && command -v jq >/dev/null 2>&1 || "$HERE/install-deps.sh"
if [ $# -gt 0 ]; then ARGS=("$@"); else ARGS=(/bin/sh -c "${CONTAINER_CMD:-echo hello from container}"); fi

BUNDLE="$(mktemp -d /tmp/clip-bundle.XXXXXX)"
ID="clip-$$-$RANDOM"
cleanup() { runc delete -f "$ID" >/dev/null 2>&1 || true; rm -rf "$BUNDLE"; }
trap cleanup EXIT

(cd "$BUNDLE" && runc spec)
# JSON arrays built one --arg at a time (jq 1.6 mangles "--args -c").
to_json() { local a='[]' x; for x in "$@"; do a="$(jq -cn --argjson a "$a" --arg x "$x" '$a + [$x]')"; done; echo "$a"; }
read -r -a ENVS <<< "${CONTAINER_ENV:-}"
jq --arg root "$ROOTFS" --argjson args "$(to_json "${ARGS[@]}")" \
   --argjson env "$(to_json ${ENVS[@]+"${ENVS[@]}"})" --arg cwd "${CONTAINER_CWD:-/}" \
   --argjson uid "${CONTAINER_USER%%:*}" --argjson gid "${CONTAINER_USER##*:}" \
   '.root.path=$root | .process.user.uid=$uid | .process.user.gid=$gid | .root.readonly=false | .process.terminal=false
    | .process.args=$args | .process.cwd=$cwd | .process.env += $env
    | .hostname="clip"' "$BUNDLE/config.json" > "$BUNDLE/config.json.new"
mv "$BUNDLE/config.json.new" "$BUNDLE/config.json"

set +e
runc run --bundle "$BUNDLE" "$ID" </dev/null
rc=$?
set -e
exit "$rc"
