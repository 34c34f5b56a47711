#!/usr/bin/env bash
# install-deps.sh: apt-get install everything clip's tests, e2e and benches need
# (idempotent; prints only what it installs). Rust itself (stable via rustup) is
# not installed here, only its C prerequisites (gcc, pkg-config).
set -euo pipefail
. "$(dirname "$(readlink -f "$0")")/lib.sh"

PKGS=(docker-registry skopeo umoci runc mmdebstrap jq attr curl openssl fuse3 pigz gzip
      libdeflate-tools squashfs-tools squashfuse hyperfine strace prometheus ca-certificates
      kmod python3 gcc libc6-dev pkg-config fio)

missing=()
for p in "${PKGS[@]}"; do
  [ -n "$p" ] || continue
  dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

log "installing: ${missing[*]}"
# The maintainer scripts of docker-registry and prometheus would start the packaged
# services (docker-registry listens on :5000 on ALL interfaces). policy-rc.d = 101
# forbids invoke-rc.d from starting anything during this install.
tmp_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; tmp_policy=1
fi
trap 'if [ "$tmp_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT

export DEBIAN_FRONTEND=noninteractive
# Third-party sources may be unreachable: a partial update is fine as long as install works.
apt-get update -q >/dev/null 2>&1 || log "apt-get update reported errors (continuing)"
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
  die "apt-get install failed: ${missing[*]}"
# On a systemd host also keep the packaged units from starting at the next boot.
if [ -d /run/systemd/system ]; then
  systemctl disable --now docker-registry prometheus prometheus-node-exporter >/dev/null 2>&1 || true
fi
# FUSE needs its module (built in on most kernels; harmless if already there).
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || log "warning: /dev/fuse missing and modprobe fuse failed"
log "installed: ${missing[*]}"
