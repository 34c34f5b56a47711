#!/usr/bin/env bash
# Smoke-fuzz every cargo-fuzz target for SECONDS each (default 60).
#   scripts/fuzz-smoke.sh [SECONDS]
# Installs cargo-fuzz if missing, regenerates fuzz/corpus/ (git-ignored) from
# library-built seeds, the tiny test image (if present) and fuzz/regressions/,
# then runs each target on stable (no sanitizer). Fails on the first crash;
# the reproducer is left in fuzz/artifacts/<target>/ and copied to
# fuzz/regressions/<target>/ (commit it: `cargo test` replays it).
set -euo pipefail

secs=${1:-60}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root/fuzz"

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz

# Seeds: library-built files, plus the testbed's tiny image when it exists.
extra=()
layout=/var/tmp/clip-testbed/oci/tiny
if [[ -d $layout/blobs ]]; then
    extra+=("$layout")
    clipctl=$(command -v clipctl || true)
    [[ -x ${clipctl:-} ]] || clipctl=$root/target/release/clipctl
    if [[ -x $clipctl ]]; then
        tmp=$(mktemp -d)
        trap 'rm -rf "$tmp"' EXIT
        "$clipctl" index --layout "$layout:latest" --out "$tmp/tiny.clip" >/dev/null 2>&1 &&
            extra+=("$tmp/tiny.clip")
    fi
fi
cargo run --quiet --features gen --bin generate_corpus -- corpus "${extra[@]}"

for target in format_open tar_entries gzip_index archive_open fuse_read; do
    mkdir -p "corpus/$target"
    cp -f regressions/"$target"/* "corpus/$target/" 2>/dev/null || true
    echo "== $target (${secs}s)"
    if ! cargo fuzz run --sanitizer none --release "$target" "corpus/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len=1048576 -print_final_stats=1; then
        for f in artifacts/"$target"/*; do
            [[ -f $f ]] || continue
            cp -f "$f" "regressions/$target/"
            echo "fuzz smoke: $target crashed; reproducer saved as fuzz/regressions/$target/$(basename "$f")"
        done
        exit 1
    fi
done
echo "fuzz smoke: no crashes"
