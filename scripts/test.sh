#!/usr/bin/env bash
# test.sh: clip's test suite, as root on a fresh Debian 12 (needs Rust stable + rustfmt
# + clippy). install deps -> local registry -> test images (tiny, python) -> the delay
# proxy's self-test (scripts/delay-proxy.py, ~10 s) -> cargo fmt --check -> cargo clippy
# -D warnings -> cargo test --release with
#   CLIP_TEST_REGISTRY=127.0.0.1:PORT   registry holding clip/{tiny,python}:latest
#   CLIP_TESTBED=/var/tmp/clip-testbed  oci/NAME layouts, unpacked/NAME/rootfs ground truth
# Env: CLIP_REGISTRY_PORT (default 5000), IMAGES (default "tiny python"), extra
# arguments are passed to cargo test. The registry is stopped at exit if this script
# started it. Exits non-zero on the first failure.
set -euo pipefail
. "$(dirname "$(readlink -f "$0")")/lib.sh"
cd "$CLIP_ROOT"

PORT="${CLIP_REGISTRY_PORT:-5000}"
trap 'rc=$?; stop_registry; exit "$rc"' EXIT

step "install dependencies";       scripts/install-deps.sh
ensure_cargo
step "registry on 127.0.0.1:$PORT"; with_registry "$PORT"
step "test images";                IMAGES="${IMAGES:-tiny python}" scripts/make-images.sh "127.0.0.1:$PORT"
step "delay proxy self-test";      python3 scripts/delay-proxy.py --self-test --registry "127.0.0.1:$PORT"
step "cargo fmt --check";          cargo fmt --check
step "cargo clippy";               cargo clippy --all-targets -- -D warnings
step "module layering";            scripts/check-layering.sh
step "cargo test --release"
CLIP_TEST_REGISTRY="127.0.0.1:$PORT" CLIP_TESTBED="$CLIP_TESTBED" cargo test --release "$@"
step "all tests passed"
