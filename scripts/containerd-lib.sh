# Helpers for the containerd scripts (sourced after lib.sh): a containerd of our own
# whose config names `clipctl snapshotter` in proxy_plugins, both in one dir W (own
# root, state and sockets, so they never meet a system containerd).

# ctrd_up W CLIPCTL [SNAPSHOTTER-ARGS...]: start the snapshotter (root W/snapshotter,
# run dir W/run, node dir W/node unless the args say otherwise) and containerd; sets
# SNAP_PID, CTRD_PID and CTR (the ctr command line).
ctrd_up() {
  local w="$1" clipctl="$2"; shift 2
  cat > "$w/config.toml" <<TOML
version = 2
root = "$w/containerd/root"
state = "$w/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$w/containerd.sock"
[ttrpc]
  address = "$w/containerd.sock.ttrpc"
[plugins."io.containerd.gc.v1.scheduler"]
  # collect right after deletions, so removing an image removes its snapshots
  deletion_threshold = 1
[proxy_plugins]
  [proxy_plugins.clip]
    type = "snapshot"
    address = "$w/snapshotter.sock"
TOML
  snap_up "$w" "$clipctl" "$@"
  containerd --config "$w/config.toml" > "$w/containerd.log" 2>&1 &
  CTRD_PID=$!
  CTR=(ctr --address "$w/containerd.sock")
  wait_for containerd "${CTR[@]}" version
  "${CTR[@]}" plugins ls | grep -E "snapshotter\.v1 +clip .*ok" >&2 ||
    die "containerd has no clip snapshotter (logs in $w)"
}

# snap_up W CLIPCTL [ARGS...]: (re)start the snapshotter alone; sets SNAP_PID.
snap_up() {
  local w="$1" clipctl="$2"; shift 2
  RUST_LOG=info "$clipctl" snapshotter --address "$w/snapshotter.sock" \
    --root "$w/snapshotter" --run-dir "$w/run" --node-dir "$w/node" "$@" \
    2>> "$w/snapshotter.log" &
  SNAP_PID=$!
  wait_for "clip snapshotter" test -S "$w/snapshotter.sock"
}

# snap_down: stop the snapshotter (SIGTERM; it removes its socket).
snap_down() {
  [ -n "${SNAP_PID:-}" ] || return 0
  kill "$SNAP_PID" 2>/dev/null || true
  wait "$SNAP_PID" 2>/dev/null || true
  SNAP_PID=""
}

# ctrd_down W: stop containerd and the snapshotter, lazily unmount anything left in W.
ctrd_down() {
  local w="$1"
  [ -n "$w" ] || die "ctrd_down: no dir"   # " /" would match every mount
  if [ -n "${CTRD_PID:-}" ]; then
    kill "$CTRD_PID" 2>/dev/null || true
    wait "$CTRD_PID" 2>/dev/null || true   # set -e callers: its exit status is SIGTERM's
  fi
  CTRD_PID=""
  snap_down
  awk -v p="$w/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" || true; done
}

# wait_for WHAT CMD...: until CMD succeeds, up to 20 s.
wait_for() {
  local what="$1"; shift
  for _ in $(seq 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "$what not ready"
}

# clip_daemons W: the live clip image daemons of W's run dir ("PID IMAGE-DIR"), from
# their pid files (not /proc/*/cmdline: reading another process's cmdline can block).
clip_daemons() {
  local f pid
  for f in "$1"/run/images/*/daemon.pid; do
    [ -s "$f" ] || continue
    read -r pid _ < "$f" # "pid starttime"
    [ -d "/proc/$pid" ] && echo "$pid ${f%/daemon.pid}"
  done
  return 0
}
