#!/usr/bin/env bash
# bench-baselines.sh REGISTRY [IMAGE]   e.g. bench-baselines.sh 127.0.0.1:5000 python
# Baselines to compare clip against, measured on this machine in this run:
#   - inflating all layers of IMAGE (default python) with gzip -dc, pigz -dc and
#     libdeflate-gunzip (blobs in page cache, output to /dev/null; median of RUNS=3)
#   - the "eager pull": skopeo copy REGISTRY/clip/IMAGE:latest to an OCI layout, then
#     umoci unpack it (median of PULL_RUNS=1)
# Needs the image built by make-images.sh (layout in $CLIP_TESTBED/oci/IMAGE).
set -euo pipefail
HERE="$(dirname "$(readlink -f "$0")")"
. "$HERE/lib.sh"

REG="${1:?usage: bench-baselines.sh REGISTRY [IMAGE]}"; IMG="${2:-python}"
RUNS="${RUNS:-3}"; PULL_RUNS="${PULL_RUNS:-1}"
L="$CLIP_TESTBED/oci/$IMG"
[ -f "$L/index.json" ] || die "no layout $L: run make-images.sh first"
command -v pigz >/dev/null && command -v libdeflate-gunzip >/dev/null || "$HERE/install-deps.sh"
T="$(mktemp -d /var/tmp/clip-bench.XXXXXX)"
trap 'rm -rf "$T"' EXIT

now() { date +%s%N; }
# wall seconds of the shell string $1 (output discarded)
tm() { local s; s=$(now); sh -c "$1" >/dev/null 2>&1 || die "failed: $1"; awk -v d=$(( $(now) - s )) 'BEGIN{printf "%.3f", d/1e9}'; }
median() { sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
runs() { local i; for i in $(seq 1 "$2"); do tm "$1"; echo; done | median; }

BLOBS=(); GZ=0; TAR=0
for d in $(jq -r '.layers[].digest' "$(layout_blob "$L" "$(layout_manifest "$L")")"); do
  b="$(layout_blob "$L" "$d")"; BLOBS+=("$b")
  GZ=$((GZ + $(stat -c %s "$b"))); TAR=$((TAR + $(gzip -dc "$b" | wc -c)))
done
cat "${BLOBS[@]}" > /dev/null   # page cache: measure inflate CPU, not the disk
row() { printf '%-40s %9s s %9s MB/s\n' "$1" "$2" "$(awk -v b="$TAR" -v t="$2" 'BEGIN{printf "%.0f", b/1e6/t}')"; }

printf '%s: %d layers, %d B gz, %d B tar; load %s\n' "$IMG" "${#BLOBS[@]}" "$GZ" "$TAR" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-40s %11s %14s\n' "baseline (MB/s of uncompressed tar)" seconds throughput
for tool in "gzip -dc" "pigz -dc" "libdeflate-gunzip -c"; do
  row "$tool (all layers)" "$(runs "for b in ${BLOBS[*]}; do $tool < \$b > /dev/null; done" "$RUNS")"
done
row "skopeo copy registry -> OCI layout" \
  "$(runs "rm -rf $T/l && skopeo --insecure-policy copy -q --src-tls-verify=false docker://$REG/clip/$IMG:latest oci:$T/l:latest" "$PULL_RUNS")"
row "umoci unpack" "$(runs "rm -rf $T/u && umoci unpack --image $T/l:latest $T/u" "$PULL_RUNS")"
