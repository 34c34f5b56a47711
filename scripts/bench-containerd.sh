#!/usr/bin/env bash
# bench-containerd.sh [REGISTRY]: issue 14's targets, clip as containerd's remote
# snapshotter against containerd's own pull, on the python image, same run:
#   clip      clipctl rpull IMAGE  + ctr run --snapshotter clip IMAGE python3 -c 'import numpy'
#   overlay   ctr image pull IMAGE + ctr run IMAGE python3 -c 'import numpy'
#             (containerd's default overlayfs snapshotter: full download and unpack)
# Each run starts from nothing: a fresh containerd (own root, content store, snapshots)
# and clip snapshotter (empty node dir: no chunk cache, no startup profile; the image's
# index is published in the registry, as `clipctl index --push` leaves it, so the node
# pulls it), page cache dropped, then the timed steps. Clip and overlay alternate.
# Reported per D (registry D ms away each way through scripts/delay-proxy.py), medians
# of RUNS:
#   *_pull_s    the pull step (rpull: manifest, config, index, layer snapshots recorded)
#   *_total_s   from pull start to `import numpy` done (the target: clip <= 0.2x overlay)
#   *_pull_MB   registry bytes sent by the end of the pull step, i.e. before the
#               container runs (the target: clip <= 2 % of the image's layers)
#   *_total_MB  registry bytes by the end of the run (clip: what the container read
#               and first-start warming fetched)
# Bytes are what the registry sent, counted by scripts/delay-proxy.py (every pull goes
# through it, also at D=0), not clip's own metrics.
# Env: RUNS (3), DISTANCES ("0 10"), CLIPCTL (target/release/clipctl), IMAGE_NAME
# (python). Needs root, containerd + ctr, skopeo, jq, python3 (scripts/install-deps.sh),
# the registry of scripts/registry-up.sh with the images of make-images.sh.
set -Eeuo pipefail
HERE="$(dirname "$(readlink -f "$0")")"
. "$HERE/lib.sh"
. "$HERE/containerd-lib.sh"

REG="${1:-127.0.0.1:${CLIP_REGISTRY_PORT:-5000}}"
RUNS="${RUNS:-3}"
DISTANCES="${DISTANCES:-0 10}"
IMG="${IMAGE_NAME:-python}"
CLIPCTL="${CLIPCTL:-$CLIP_ROOT/target/release/clipctl}"
NUMPY=(python3 -c 'import numpy; print(numpy.__version__)')

[ "$(id -u)" = 0 ] || die "run as root (containerd, FUSE, overlayfs)"
[ -x "$CLIPCTL" ] || die "no $CLIPCTL: cargo build --release"
for t in containerd ctr skopeo jq python3 curl; do
  command -v "$t" >/dev/null || die "$t not found (scripts/install-deps.sh)"
done
curl -fsS -o /dev/null "http://$REG/v2/" || die "no registry at $REG (scripts/registry-up.sh)"

W="$(mktemp -d /var/tmp/clip-ctrd.XXXXXX)"
NRUN=0
REPO="clip/$IMG-ctrd-$$"
PROXY_PID=""
cleanup() {
  local rc=$?
  set +e
  [ -z "$RUN_W" ] || ctrd_down "$RUN_W" 2>/dev/null
  [ -z "$PROXY_PID" ] || { kill "$PROXY_PID"; wait "$PROXY_PID"; } 2>/dev/null
  kill_daemons "$RUN_W"
  if grep -qF " $W/" /proc/self/mountinfo; then
    log "mounts left under $W:"; grep -F " $W/" /proc/self/mountinfo >&2; rc=1
  fi
  [ "$rc" != 0 ] && [ -n "$RUN_W" ] && tail -n 20 "$RUN_W"/*.log >&2
  delete_copy
  rm -rf "$W"
  exit "$rc"
}
RUN_W=""
trap cleanup EXIT
trap 'log "failed: line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT TERM

now() { date +%s%N; }
secs() { awk -v d="$1" 'BEGIN{printf "%.2f", d/1e9}'; }
median() { sort -g | awk '{a[NR]=$1} END{if (NR) print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
calc() { awk "BEGIN{printf \"%.${2:-2}f\", $1}"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

declare -A S=() R=()
add() { S[$1]="${S[$1]:-}${S[$1]:+ }$2"; printf '  %-22s %s\n' "$1" "$2" >&2; }
fin() { R[$1]="$(tr ' ' '\n' <<< "${S[$1]:-}" | median)"; }

# reg_bytes: bytes the registry sent through the proxy so far (its SIGUSR1 summary)
reg_bytes() {
  local n
  n="$(grep -c '^delay-proxy:' "$W/proxy.log" || true)"
  kill -USR1 "$PROXY_PID"
  for _ in $(seq 100); do
    [ "$(grep -c '^delay-proxy:' "$W/proxy.log" || true)" -gt "$n" ] && break
    sleep 0.02
  done
  grep '^delay-proxy:' "$W/proxy.log" | tail -n1 | sed -n 's/.* \([0-9]*\) B down.*/\1/p'
}
mb_since() { awk -v a="$1" -v b="$(reg_bytes)" 'BEGIN{printf "%.2f", (b - a) / 1e6}'; }

# kill_daemons DIR: clip image daemons left in DIR's run dir (a failed run)
kill_daemons() {
  [ -n "$1" ] || return 0
  clip_daemons "$1" | while read -r pid _; do kill "$pid"; done
}

# A private copy of the image (same digest) with its clip index published: the state
# a registry is in after the image's builder ran `clipctl index --push`.
copy_image() {
  skopeo --insecure-policy copy -q --preserve-digests --src-tls-verify=false \
    --dest-tls-verify=false "docker://$REG/clip/$IMG:latest" "docker://$REG/$REPO:latest" ||
    die "skopeo copy to $REPO failed"
  "$CLIPCTL" index --image "$REG/$REPO:latest" --push --out "$W/published.clip" >/dev/null ||
    die "clipctl index --push failed"
  local m
  m="$(curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$REG/v2/$REPO/manifests/latest")"
  IMAGE_MB="$(jq '[.layers[].size] | add / 1e6' <<< "$m")"
  INDEX_MB="$(stat -c %s "$W/published.clip" | awk '{printf "%.2f", $1 / 1e6}')"
}
# delete_copy: the copy's manifests (its blobs stay for the registry's garbage collector)
digest_of() {   # digest_of ACCEPT REFERENCE: the registry's digest of a manifest
  curl -fsSI -H "Accept: $1" "http://$REG/v2/$REPO/manifests/$2" 2>/dev/null | tr -d '\r' |
    sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: //p'
}
delete_copy() {
  local m t d oci=application/vnd.oci.image
  m="$(digest_of "$oci.manifest.v1+json" latest)"
  [ -n "$m" ] || return 0
  t="sha256-${m#sha256:}"   # the tag schema index listing the published artifacts
  for d in $(curl -fsS -H "Accept: $oci.index.v1+json" "http://$REG/v2/$REPO/manifests/$t" 2>/dev/null |
      jq -r '.manifests[].digest' 2>/dev/null) "$(digest_of "$oci.index.v1+json" "$t")" "$m"; do
    [ -n "$d" ] && curl -fsS -o /dev/null -X DELETE "http://$REG/v2/$REPO/manifests/$d" 2>/dev/null
  done
  true
}

# proxy_up D: delay-proxy.py in front of the registry; sets PREG (host:port to pull from)
proxy_up() {
  rm -f "$W/proxy.ready"
  python3 "$HERE/delay-proxy.py" --delay "$1" --ready-file "$W/proxy.ready" 0 "$REG" 2>>"$W/proxy.log" &
  PROXY_PID=$!
  wait_for delay-proxy test -s "$W/proxy.ready"
  local pid port
  read -r pid port < "$W/proxy.ready"
  PREG="127.0.0.1:$port"
}
proxy_down() { kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true; PROXY_PID=""; }

# one_run KIND KEY REF: a fresh containerd + snapshotter, caches dropped, then the timed
# pull and numpy run of KIND (clip|overlay); adds KEY_{pull_s,total_s,pull_MB,total_MB}
one_run() {
  local kind="$1" key="$2" ref="$3" s p q e mark pull_mb out
  NRUN=$((NRUN + 1)); RUN_W="$W/$NRUN"; mkdir -p "$RUN_W"   # short: unix socket paths
  ctrd_up "$RUN_W" "$CLIPCTL" 2>>"$W/bench.log"
  drop_caches
  mark="$(reg_bytes)"
  s=$(now)
  if [ "$kind" = clip ]; then
    "$CLIPCTL" rpull --address "$RUN_W/containerd.sock" "$ref" >>"$W/bench.log" ||
      die "clipctl rpull $ref failed"
    p=$(now); pull_mb="$(mb_since "$mark")"; q=$(now)
    out="$("${CTR[@]}" run --rm --snapshotter clip "$ref" "b-$key" "${NUMPY[@]}")"
  else
    "${CTR[@]}" image pull --plain-http "$ref" >>"$W/bench.log" || die "ctr image pull $ref failed"
    p=$(now); pull_mb="$(mb_since "$mark")"; q=$(now)
    out="$("${CTR[@]}" run --rm "$ref" "b-$key" "${NUMPY[@]}")"
  fi
  e=$(now)
  [ "$out" = 2.2.6 ] || die "$kind: expected numpy 2.2.6, got '$out'"
  add "${key}_pull_s" "$(secs $((p - s)))"
  add "${key}_total_s" "$(secs $((e - s - (q - p))))"   # without the byte count
  add "${key}_pull_MB" "$pull_mb"
  add "${key}_total_MB" "$(mb_since "$mark")"
  if [ "$kind" = clip ]; then
    "${CTR[@]}" image rm --sync "$ref" >/dev/null
    [ -z "$(clip_daemons "$RUN_W")" ] || die "clip daemon left after ctr image rm"
  fi
  ctrd_down "$RUN_W"
  [ -z "$(clip_daemons "$RUN_W")" ] || die "clip daemon left: $(clip_daemons "$RUN_W")"
  rm -rf "$RUN_W"; RUN_W=""
}

step "private copy $REG/$REPO of clip/$IMG with its index published"
copy_image
log "image layers $IMAGE_MB MB (compressed), published index $INDEX_MB MB"
LOAD0="$(load)"
for d in $DISTANCES; do
  [[ "$d" =~ ^[0-9]+$ ]] || die "DISTANCES: '$d' is not a number of ms"
  proxy_up "$d"
  ref="$PREG/$REPO:latest"
  step "D=$d ms: $ref, $RUNS runs each, alternating (load $(load))"
  for i in $(seq 1 "$RUNS"); do
    if [ $((i % 2)) = 1 ]; then
      one_run clip "d${d}_clip" "$ref"; one_run overlay "d${d}_overlay" "$ref"
    else
      one_run overlay "d${d}_overlay" "$ref"; one_run clip "d${d}_clip" "$ref"
    fi
  done
  proxy_down
  for k in clip overlay; do
    for m in pull_s total_s pull_MB total_MB; do fin "d${d}_${k}_$m"; done
  done
done
LOAD1="$(load)"

step "results (medians of $RUNS; load $LOAD0 -> $LOAD1, $(nproc) cores)"
printf '%-5s %-8s %9s %10s %10s %11s %8s %9s\n' D snapsh pull_s total_s pull_MB total_MB pull_% ratio
for d in $DISTANCES; do
  for k in clip overlay; do
    p="d${d}_${k}"
    printf '%-5s %-8s %9s %10s %10s %11s %8s %9s\n' "${d}ms" "$k" "${R[${p}_pull_s]}" \
      "${R[${p}_total_s]}" "${R[${p}_pull_MB]}" "${R[${p}_total_MB]}" \
      "$(calc "100 * ${R[${p}_pull_MB]} / $IMAGE_MB" 2)" \
      "$(calc "${R[${p}_total_s]} / ${R[d${d}_overlay_total_s]}" 3)x"
  done
done
echo "image layers ${IMAGE_MB} MB compressed; published clip index ${INDEX_MB} MB"
echo "targets: clip total <= 0.2x overlay total; clip pull_MB <= 2 % of the image"
for d in $DISTANCES; do
  r="$(calc "${R[d${d}_clip_total_s]} / ${R[d${d}_overlay_total_s]}" 3)"
  b="$(calc "100 * ${R[d${d}_clip_pull_MB]} / $IMAGE_MB" 2)"
  echo "D=${d}ms: time ${r}x ($(awk -v r="$r" 'BEGIN{print (r <= 0.2 ? "met" : "not met")}')), bytes before the run ${b} % ($(awk -v b="$b" 'BEGIN{print (b <= 2 ? "met" : "not met")}'))"
done
