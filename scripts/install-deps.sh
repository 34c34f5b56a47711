#!/usr/bin/env bash
# install-deps.sh: apt-get install everything clip's tests, e2e and benches need,
# and `cargo install` the S3-compatible test server s3s-fs (idempotent; prints only
# what it installs). Rust itself (stable via rustup) is not installed here, only its
# C prerequisites (gcc, pkg-config) and protoc (build.rs
# generates the containerd snapshots service). containerd and ctr: the snapshotter
# test and scripts/containerd-demo.sh start their own containerd (own root and sockets).
set -euo pipefail
. "$(dirname "$(readlink -f "$0")")/lib.sh"

PKGS=(docker-registry skopeo umoci runc mmdebstrap jq attr curl openssl fuse3 pigz gzip
      libdeflate-tools squashfs-tools squashfuse hyperfine strace prometheus ca-certificates
      kmod python3 gcc libc6-dev pkg-config fio zstd containerd protobuf-compiler
      libprotobuf-dev)

# s3s-fs: a real S3 server (SigV4-checked credentials, range GETs, multipart) on a
# directory, for the archive tests and e2e. 0.14.1 is the newest that builds with
# Rust 1.95 (0.17 needs 1.96).
S3S_VERSION=0.14.1
install_s3s() {
  [ -d "$HOME/.cargo/bin" ] && PATH="$HOME/.cargo/bin:$PATH"
  if command -v s3s-fs >/dev/null 2>&1 && s3s-fs --version 2>/dev/null | grep -q "$S3S_VERSION"; then
    return 0
  fi
  ensure_cargo
  log "installing s3s-fs $S3S_VERSION (cargo install, a few minutes)"
  cargo install s3s-fs --version "$S3S_VERSION" --locked --features binary -q ||
    die "cargo install s3s-fs failed"
}

missing=()
for p in "${PKGS[@]}"; do
  [ -n "$p" ] || continue
  dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then install_s3s; exit 0; fi

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
install_s3s
