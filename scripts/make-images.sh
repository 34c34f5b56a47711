#!/usr/bin/env bash
# make-images.sh REGISTRY      e.g. make-images.sh 127.0.0.1:5000
# Build clip's test images (all layers application/vnd.oci.image.layer.v1.tar+gzip),
# push them with skopeo to REGISTRY/clip/NAME:latest and keep, per image:
#   $CLIP_TESTBED/oci/NAME                OCI layout (tag latest), same digests as the registry
#   $CLIP_TESTBED/unpacked/NAME/rootfs    `umoci unpack` of it: ground truth for differential
#                                         tests (rebuilt only when the layout's digest changes)
#   $CLIP_TESTBED/images.txt              table of all images (digest, layers, sizes)
# Images (IMAGES="tiny debian python" by default; e.g. IMAGES="tiny python"):
#   tiny   2 handcrafted layers, bit-reproducible: see build_tiny.
#   debian 1 layer: mmdebstrap --variant=minbase bookworm (merged-usr hook).
#   python debian layer + apt python3/pip + pip numpy/pandas + /app layer (4 layers).
# Fast when the layouts exist (re-push only). Env: CLIP_TESTBED (default
# /var/tmp/clip-testbed), FORCE=1 rebuilds, MIRROR, DEBIAN_SUITE, PY_PKGS, PIP_INDEX_URL.
set -euo pipefail
HERE="$(dirname "$(readlink -f "$0")")"
. "$HERE/lib.sh"

REGISTRY="${1:?usage: make-images.sh REGISTRY (e.g. 127.0.0.1:5000)}"
IMAGES="${IMAGES:-tiny debian python}"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
EPOCH="${SOURCE_DATE_EPOCH:-1700000000}"          # fixed mtimes / created for tiny
PY_PKGS="${PY_PKGS:-numpy==2.2.6 pandas==2.2.3}"
BUILD="$CLIP_TESTBED/build"; OCI="$CLIP_TESTBED/oci"; UNPACKED="$CLIP_TESTBED/unpacked"
mkdir -p "$BUILD" "$OCI" "$UNPACKED"
# One run at a time per test bed: runs share the build dir (and clean up
# its scratch dirs), so concurrent suites would pull files from under each other.
exec 9>"$CLIP_TESTBED/.make-images.lock"
flock 9
for c in skopeo umoci runc mmdebstrap jq setfattr getfattr openssl curl; do
  command -v "$c" >/dev/null 2>&1 || { "$HERE/install-deps.sh"; break; }
done

# ------------------------------------------------------------ mounts / cleanup
MOUNTS=()
cleanup() {
  local i
  for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do
    if mountpoint -q "${MOUNTS[$i]}"; then umount -R -l "${MOUNTS[$i]}" || true; fi
  done
  MOUNTS=()
}
trap cleanup EXIT
do_mount() { mount "$@"; MOUNTS+=("${!#}"); }
pop_mount() { umount "${MOUNTS[-1]}"; unset 'MOUNTS[-1]'; }

# ------------------------------------------------------------ layer / image writers
# add_layer DIR LAYOUT: deterministic tar of DIR (sorted, numeric owners, PAX with
# xattrs minus trusted.* / security.selinux, no atime/ctime), gzip -n into
# LAYOUT/blobs; appends "digest size diffid" to LAYOUT/.layers.
add_layer() {
  local dir="$1" layout="$2" tarf diffid digest
  tarf="$(mktemp -p "$BUILD" layer.XXXXXX.tar)"
  (cd "$dir" && find . -mindepth 1 -maxdepth 1 -printf '%P\0' | LC_ALL=C sort -z |
     tar --create --file=- --null --files-from=- --numeric-owner --sort=name \
         --format=pax --pax-option='exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime' \
         --xattrs --xattrs-include='*' --xattrs-exclude='trusted.*' \
         --xattrs-exclude='security.selinux') > "$tarf"
  diffid="sha256:$(sha256sum < "$tarf" | cut -d' ' -f1)"
  gzip -n -6 -c "$tarf" > "$tarf.gz"; rm -f "$tarf"
  digest="$(sha256sum < "$tarf.gz" | cut -d' ' -f1)"
  mkdir -p "$layout/blobs/sha256"
  echo "sha256:$digest $(stat -c %s "$tarf.gz") $diffid" >> "$layout/.layers"
  mv "$tarf.gz" "$layout/blobs/sha256/$digest"
  log "  layer sha256:${digest:0:12} $(stat -c %s "$layout/blobs/sha256/$digest") B gz from $dir"
}

# add_blob_layer GZBLOB LAYOUT: reuse an existing gzip layer (shared base layer).
add_blob_layer() {
  local blob="$1" layout="$2" digest
  digest="$(sha256sum < "$blob" | cut -d' ' -f1)"
  mkdir -p "$layout/blobs/sha256"; cp "$blob" "$layout/blobs/sha256/$digest"
  echo "sha256:$digest $(stat -c %s "$blob") sha256:$(gzip -dc "$blob" | sha256sum | cut -d' ' -f1)" >> "$layout/.layers"
}

# write_image LAYOUT CREATED ENV_JSON HISTORY_JSON: config + manifest + index.json
# (tag latest) from LAYOUT/.layers. The config runs /bin/sh -c 'echo ok'.
write_image() {
  local layout="$1" created="$2" envj="$3" histj="$4" layers diffids cfg cdig man mdig
  layers="$(awk '{printf "%s{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"%s\",\"size\":%s}", (NR>1?",":""), $1, $2}' "$layout/.layers")"
  diffids="$(awk '{printf "%s\"%s\"", (NR>1?",":""), $3}' "$layout/.layers")"
  cfg="$(jq -cn --arg c "$created" --argjson env "$envj" --argjson h "$histj" --argjson d "[$diffids]" \
    '{created:$c, architecture:"amd64", os:"linux",
      config:{Env:$env, Cmd:["/bin/sh","-c","echo ok"], WorkingDir:"/"},
      rootfs:{type:"layers", diff_ids:$d}, history:$h}')"
  cdig="$(printf '%s' "$cfg" | sha256sum | cut -d' ' -f1)"
  printf '%s' "$cfg" > "$layout/blobs/sha256/$cdig"
  man="$(jq -cn --arg cd "sha256:$cdig" --argjson cs "${#cfg}" --argjson l "[$layers]" \
    '{schemaVersion:2, mediaType:"application/vnd.oci.image.manifest.v1+json",
      config:{mediaType:"application/vnd.oci.image.config.v1+json", digest:$cd, size:$cs},
      layers:$l}')"
  mdig="$(printf '%s' "$man" | sha256sum | cut -d' ' -f1)"
  printf '%s' "$man" > "$layout/blobs/sha256/$mdig"
  jq -cn --arg d "sha256:$mdig" --argjson s "${#man}" \
    '{schemaVersion:2, manifests:[{mediaType:"application/vnd.oci.image.manifest.v1+json",
      digest:$d, size:$s, annotations:{"org.opencontainers.image.ref.name":"latest"}}]}' > "$layout/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
  rm -f "$layout/.layers"
}

# upper_to_oci UPPER STAGE: copy an overlayfs upper dir, turning overlay whiteouts
# (0:0 char devices) into .wh.NAME and opaque dirs into DIR/.wh..wh..opq.
upper_to_oci() {
  local up="$1" st="$2" f d
  rm -rf "$st"; cp -a "$up" "$st"
  while IFS= read -r -d '' f; do
    if [ "$(stat -c '%t:%T' "$f")" = "0:0" ]; then rm -f "$f"; : > "$(dirname "$f")/.wh.$(basename "$f")"; fi
  done < <(find "$st" -type c -print0)
  while IFS= read -r -d '' d; do
    if [ "$(getfattr -h --only-values -n trusted.overlay.opaque "$d" 2>/dev/null || true)" = y ]; then
      : > "$d/.wh..wh..opq"
    fi
  done < <(find "$st" -type d -print0)
}

# ------------------------------------------------------------ chroot helpers
# chroot_run ROOT CMD...: CMD in ROOT with /proc, /dev and the host resolv.conf
# bind-mounted (mount points only: nothing lands in the overlay upper dir).
# CHROOT_PIP_CERT=PATH also binds the host CA bundle there (TLS-inspecting proxies).
chroot_run() {
  local root="$1" extra=(); shift
  do_mount -t proc proc "$root/proc"
  do_mount --rbind /dev "$root/dev"; mount --make-rslave "$root/dev"
  do_mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
  [ -n "${PIP_INDEX_URL:-}" ] && extra+=("PIP_INDEX_URL=$PIP_INDEX_URL")
  if [ -n "${CHROOT_PIP_CERT:-}" ]; then
    : > "$root$CHROOT_PIP_CERT"
    do_mount --bind /etc/ssl/certs/ca-certificates.crt "$root$CHROOT_PIP_CERT"
    extra+=("PIP_CERT=$CHROOT_PIP_CERT")
  fi
  local rc=0
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
      LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "${extra[@]}" chroot "$root" "$@" || rc=$?
  if [ -n "${CHROOT_PIP_CERT:-}" ]; then pop_mount; rm -f "$root$CHROOT_PIP_CERT"; fi
  pop_mount; umount -R "${MOUNTS[-1]}"; unset 'MOUNTS[-1]'; pop_mount
  return "$rc"
}

# The Debian mirror this host's apt uses (MIRROR= overrides).
host_mirror() {
  [ -n "${MIRROR:-}" ] && { echo "$MIRROR"; return; }
  apt-get indextargets --format '$(RELEASE) $(REPO_URI)' 'Identifier: Packages' 2>/dev/null |
    awk -v s="$DEBIAN_SUITE" '$1==s {print $2; exit}' | grep . ||
    die "no $DEBIAN_SUITE mirror in the apt sources; set MIRROR="
}

# ------------------------------------------------------------ image: tiny
# Layer 1: static busybox (/bin/sh etc. are symlinks), hello.txt, empty file, hard
# links dir/hardlink-a + -b, symlinks (relative, absolute, dangling, to a dir),
# xattr.txt (user.clip=hello), fifo, char device dev-null-copy (c 1 3), block
# device dev-loop0-copy (b 7 0), 200-char name, 10-level deep path (>300 chars),
# names with spaces / non-ASCII, suid (4755), private/ (0700) with a 0600 file,
# tmp/ (1777), user-file owned 1000:1000, random-3MiB.bin (incompressible),
# zeros-1MiB.bin, text-2MiB.txt (compressible text > 1 MiB, spans several checkpoints).
# Layer 2: file whiteout .wh.to-delete.txt, dir whiteout .wh.deldir, opaque dir
# opaque/ (only new1 survives), modified hello.txt, new added.txt.
build_tiny() {
  local w="$BUILD/tiny" l1 l2 long deep i
  rm -rf "$w"; mkdir -p "$w"; l1="$w/l1"; l2="$w/l2"
  mkdir -p "$l1"/{bin,etc,dir,deldir/sub,opaque,tmp,private}
  (cd "$w" && { apt-get download -q busybox-static >/dev/null 2>&1 ||
     { apt-get update -q >/dev/null 2>&1 || true; apt-get download -q busybox-static >/dev/null; }; })
  dpkg-deb -x "$w"/busybox-static_*.deb "$w/bb"
  install -m 0755 "$w/bb/bin/busybox" "$l1/bin/busybox"
  for a in sh ls cat echo stat find sha256sum head wc true; do ln -s busybox "$l1/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n' > "$l1/etc/passwd"
  printf 'root:x:0:\nuser:x:1000:\n' > "$l1/etc/group"
  printf 'hello world\n' > "$l1/hello.txt"
  : > "$l1/empty"
  printf 'linked content\n' > "$l1/dir/hardlink-a"; ln "$l1/dir/hardlink-a" "$l1/dir/hardlink-b"
  ln -s hello.txt "$l1/link-rel"; ln -s /hello.txt "$l1/link-abs"
  ln -s /does/not/exist "$l1/link-dangling"; ln -s dir "$l1/link-to-dir"
  printf 'has xattr\n' > "$l1/xattr.txt"; setfattr -n user.clip -v hello "$l1/xattr.txt"
  mkfifo "$l1/fifo"
  mknod "$l1/dev-null-copy" c 1 3; mknod "$l1/dev-loop0-copy" b 7 0
  printf 'to be deleted\n' > "$l1/to-delete.txt"
  printf 'a\n' > "$l1/deldir/a"; printf 'b\n' > "$l1/deldir/sub/b"
  printf 'old1\n' > "$l1/opaque/old1"; printf 'old2\n' > "$l1/opaque/old2"
  printf 'space\n' > "$l1/name with spaces.txt"; printf 'unicode\n' > "$l1/ünïcödé-файл.txt"
  long="$(printf 'L%.0s' $(seq 1 200))"; printf 'long\n' > "$l1/$long"
  deep="$l1/deep"; for i in $(seq 1 10); do deep="$deep/level-$i-abcdefghijklmnopqrstuvwxyz"; done
  mkdir -p "$deep"; printf 'deep\n' > "$deep/file.txt"
  printf 'suid\n' > "$l1/suid"
  printf 'secret\n' > "$l1/private/secret"; chmod 0600 "$l1/private/secret"; chmod 0700 "$l1/private"
  chmod 1777 "$l1/tmp"
  printf 'owned by 1000\n' > "$l1/user-file"
  # deterministic incompressible data (AES-CTR keystream), zeros, compressible text
  head -c 3145728 /dev/zero | openssl enc -aes-128-ctr -K 000102030405060708090a0b0c0d0e0f \
      -iv 00000000000000000000000000000000 > "$l1/random-3MiB.bin"
  head -c 1048576 /dev/zero > "$l1/zeros-1MiB.bin"
  seq -f 'line %07g: the quick brown fox jumps over the lazy dog' 1 40000 > "$l1/text-2MiB.txt"
  truncate -s 2097152 "$l1/text-2MiB.txt"
  chown -hR 0:0 "$l1"; chown 1000:1000 "$l1/user-file"
  chmod 4755 "$l1/suid"   # after chown (chown clears set-uid)
  mkdir -p "$l2/opaque"
  : > "$l2/.wh.to-delete.txt"; : > "$l2/.wh.deldir"; : > "$l2/opaque/.wh..wh..opq"
  printf 'new1\n' > "$l2/opaque/new1"
  printf 'hello again\n' > "$l2/hello.txt"
  printf 'added in layer 2\n' > "$l2/added.txt"
  chown -hR 0:0 "$l2"
  find "$l1" "$l2" -depth -exec touch -h -d "@$EPOCH" {} +
  add_layer "$l1" "$w/layout"; add_layer "$l2" "$w/layout"
  write_image "$w/layout" "$(date -u -d "@$EPOCH" +%FT%TZ)" '["PATH=/bin"]' \
    '[{"created_by":"clip: handcrafted base layer"},{"created_by":"clip: whiteouts, opaque dir, modified file"}]'
}

# ------------------------------------------------------------ image: debian
DEB_ROOT="$BUILD/debian-rootfs"      # cached rootfs (python's base), marker $DEB_ROOT.done
DEB_LAYER="$BUILD/debian-layer.tar.gz"
build_debian_rootfs() {
  [ -f "$DEB_ROOT.done" ] && [ -d "$DEB_ROOT" ] && return 0
  rm -rf "$DEB_ROOT" "$DEB_ROOT.done"
  local m; m="$(host_mirror)"
  log "  mmdebstrap $DEBIAN_SUITE minbase from $m"
  # merged-usr hook: /usr merge via symlinks without pulling usrmerge + perl
  mmdebstrap --quiet --mode=root --variant=minbase --format=directory \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr "$DEBIAN_SUITE" "$DEB_ROOT" "$m" \
    > "$BUILD/mmdebstrap.log" 2>&1 ||
    { tail -20 "$BUILD/mmdebstrap.log" >&2; die "mmdebstrap failed (log $BUILD/mmdebstrap.log)"; }
  # container hygiene: empty /dev (the runtime provides it), empty resolv.conf/hostname
  find "$DEB_ROOT/dev" -mindepth 1 -delete
  rm -f "$DEB_ROOT/etc/resolv.conf" "$DEB_ROOT/etc/hostname"
  : > "$DEB_ROOT/etc/resolv.conf"; : > "$DEB_ROOT/etc/hostname"
  rm -rf "$DEB_ROOT"/var/lib/apt/lists/*_* "$DEB_ROOT"/var/cache/apt/*.bin
  touch "$DEB_ROOT.done"
}
build_debian() {
  local layout="$BUILD/debian/layout"
  rm -rf "$BUILD/debian"; mkdir -p "$BUILD/debian"
  [ "${FORCE:-0}" = 1 ] && rm -f "$DEB_ROOT.done"
  build_debian_rootfs
  add_layer "$DEB_ROOT" "$layout"
  cp "$(layout_blob "$layout" "$(cut -d' ' -f1 "$layout/.layers")")" "$DEB_LAYER"
  write_image "$layout" "$(date -u +%FT%TZ)" \
    '["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]' \
    "[{\"created_by\":\"mmdebstrap --variant=minbase $DEBIAN_SUITE\"}]"
}

# ------------------------------------------------------------ image: python
# overlay_step DIR NAME LOWERS CMD: overlay (LOWERS colon list, top first), run the
# shell string CMD chrooted in it; the layer diff is DIR/NAME-upper.
overlay_step() {
  local w="$1" name="$2" lowers="$3" cmd="$4"
  rm -rf "$w/$name-upper" "$w/$name-work"; mkdir -p "$w/$name-upper" "$w/$name-work" "$w/merged"
  do_mount -t overlay overlay -o "lowerdir=$lowers,upperdir=$w/$name-upper,workdir=$w/$name-work,redirect_dir=off,metacopy=off,index=off,xino=off" "$w/merged"
  chroot_run "$w/merged" /bin/sh -euc "$cmd" > "$w/$name.log" 2>&1 ||
    { tail -20 "$w/$name.log" >&2; die "build step $name failed (log $w/$name.log)"; }
  pop_mount; rm -rf "$w/$name-work"
}
build_python() {
  local w="$BUILD/python" layout="$BUILD/python/layout" m ca=""
  rm -rf "$w"; mkdir -p "$w"
  if [ "${FORCE:-0}" != 1 ] && [ ! -f "$DEB_LAYER" ] && [ -f "$OCI/debian/index.json" ]; then
    # base = the published debian image's layer (same blob in both images)
    m="$(jq -r '.layers[0].digest' "$(layout_blob "$OCI/debian" "$(layout_manifest "$OCI/debian")")")"
    cp "$(layout_blob "$OCI/debian" "$m")" "$DEB_LAYER"; rm -f "$DEB_ROOT.done"
  fi
  if [ ! -f "$DEB_ROOT.done" ] && [ -f "$DEB_LAYER" ]; then
    # rootfs cache recreated from that exact layer (keeps base sharing)
    rm -rf "$DEB_ROOT"; mkdir -p "$DEB_ROOT"
    tar -xzpf "$DEB_LAYER" -C "$DEB_ROOT" --numeric-owner --xattrs --xattrs-include='*'
    touch "$DEB_ROOT.done"
  fi
  [ -f "$DEB_LAYER" ] || build_debian
  log "  apt-get install python3 python3-pip"
  overlay_step "$w" l2 "$DEB_ROOT" '
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends python3 python3-pip >/dev/null
    apt-get clean; rm -rf /var/lib/apt/lists/*_* /var/cache/apt/*.bin /tmp/* /var/tmp/*'
  log "  pip install $PY_PKGS"
  [ -f /etc/ssl/certs/ca-certificates.crt ] && ca=/clip-host-ca.crt
  CHROOT_PIP_CERT="$ca" overlay_step "$w" l3 "$w/l2-upper:$DEB_ROOT" "
    python3 -m pip install -q --break-system-packages --no-cache-dir --root-user-action=ignore \
      --disable-pip-version-check $PY_PKGS
    rm -rf /tmp/* /var/tmp/* /root/.cache"
  mkdir -p "$w/l4/app"
  printf 'import numpy\nimport pandas\nprint("numpy", numpy.__version__, "pandas", pandas.__version__)\n' > "$w/l4/app/main.py"
  chown -R 0:0 "$w/l4"
  upper_to_oci "$w/l2-upper" "$w/l2-stage"; upper_to_oci "$w/l3-upper" "$w/l3-stage"
  add_blob_layer "$DEB_LAYER" "$layout"
  add_layer "$w/l2-stage" "$layout"; add_layer "$w/l3-stage" "$layout"; add_layer "$w/l4" "$layout"
  rm -rf "$w/l2-stage" "$w/l3-stage" "$w/l2-upper" "$w/l3-upper" "$w/l4" "$w/merged"
  write_image "$layout" "$(date -u +%FT%TZ)" \
    '["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","LANG=C.UTF-8"]' \
    "[{\"created_by\":\"mmdebstrap --variant=minbase $DEBIAN_SUITE\"},
      {\"created_by\":\"apt-get install --no-install-recommends python3 python3-pip\"},
      {\"created_by\":\"pip install $PY_PKGS\"},
      {\"created_by\":\"COPY app/main.py /app/\"}]"
}

# ------------------------------------------------------------ ground truth
# unpack NAME: umoci unpack the layout into $UNPACKED/NAME (rootfs/ + umoci files)
# unless it already holds this manifest digest; also writes the images.txt row.
unpack() {
  local name="$1" dig mf gz=0 raw=0 l b
  dig="$(layout_manifest "$OCI/$name")"
  [ "$(cat "$UNPACKED/$name.digest" 2>/dev/null)" = "$dig" ] && [ -d "$UNPACKED/$name/rootfs" ] && return 0
  log "$name: umoci unpack -> $UNPACKED/$name/rootfs"
  rm -rf "$UNPACKED/$name" "$UNPACKED/$name.digest" "$UNPACKED/$name.tmp"
  umoci unpack --image "$OCI/$name:latest" "$UNPACKED/$name.tmp" >/dev/null
  mv "$UNPACKED/$name.tmp" "$UNPACKED/$name"
  mf="$(layout_blob "$OCI/$name" "$dig")"
  for l in $(jq -r '.layers[].digest' "$mf"); do
    b="$(layout_blob "$OCI/$name" "$l")"; gz=$((gz + $(stat -c %s "$b"))); raw=$((raw + $(gzip -dc "$b" | wc -c)))
  done
  printf '%-8s %-71s %6s %12s %12s %8s\n' "$name" "$dig" "$(jq '.layers|length' "$mf")" "$gz" "$raw" \
    "$(find "$UNPACKED/$name/rootfs" -mindepth 1 | wc -l)" > "$UNPACKED/$name.row"
  echo "$dig" > "$UNPACKED/$name.digest"
}

# check NAME: Range GET on the first layer gives 206 + the right bytes, and the
# image runs in runc (on a throw-away overlay, so the ground truth stays pristine).
check() {
  local name="$1" l code t
  l="$(jq -r '.layers[0].digest' "$(layout_blob "$OCI/$name" "$(layout_manifest "$OCI/$name")")")"
  code="$(curl -sS -o "$BUILD/range.bin" -w '%{http_code}' -r 0-4095 "http://$REGISTRY/v2/clip/$name/blobs/$l")"
  [ "$code" = 206 ] && cmp -s "$BUILD/range.bin" <(head -c 4096 "$(layout_blob "$OCI/$name" "$l")") ||
    die "$name: Range GET on $l gave HTTP $code / wrong bytes"
  rm -f "$BUILD/range.bin"
  t="$(mktemp -d -p "$BUILD" check.XXXXXX)"
  do_mount -t tmpfs tmpfs "$t"; mkdir -p "$t/upper" "$t/work" "$t/merged"
  do_mount -t overlay overlay -o "lowerdir=$UNPACKED/$name/rootfs,upperdir=$t/upper,workdir=$t/work" "$t/merged"
  [ "$("$HERE/run-container.sh" "$t/merged" /bin/sh -c 'echo ok' 2>&1)" = ok ] || die "$name: runc check failed"
  pop_mount; pop_mount; rmdir "$t"
  log "$name: range GET + umoci unpack + runc: ok"
}

# ------------------------------------------------------------ main
SK=(skopeo --insecure-policy)
rm -rf "$BUILD"/check.*
for name in $IMAGES; do
  declare -F "build_$name" >/dev/null || die "unknown image '$name' (tiny, debian, python)"
  final="$OCI/$name"; ref="docker://$REGISTRY/clip/$name:latest"
  if [ "${FORCE:-0}" != 1 ] && [ -f "$final/index.json" ]; then
    log "$name: layout exists, pushing $final (FORCE=1 rebuilds)"
    "${SK[@]}" copy -q --preserve-digests --dest-tls-verify=false "oci:$final:latest" "$ref"
  else
    log "$name: building"; t0=$(date +%s)
    "build_$name"
    log "$name: built in $(( $(date +%s) - t0 ))s; pushing to $ref"
    "${SK[@]}" copy -q --preserve-digests --dest-tls-verify=false "oci:$BUILD/$name/layout:latest" "$ref"
    # the kept layout is pulled back from the registry: same bytes, same digests
    rm -rf "$final" "$final.tmp"
    "${SK[@]}" copy -q --preserve-digests --src-tls-verify=false "$ref" "oci:$final.tmp:latest"
    mv "$final.tmp" "$final"; rm -rf "$BUILD/$name/layout"
  fi
  log "$name: $REGISTRY/clip/$name:latest@$(layout_manifest "$final")"
  unpack "$name"
  check "$name"
done

{ printf '%-8s %-71s %6s %12s %12s %8s\n' image manifest layers gz_bytes tar_bytes entries
  cat "$UNPACKED"/*.row 2>/dev/null || true; } > "$CLIP_TESTBED/images.txt"
cat "$CLIP_TESTBED/images.txt"
