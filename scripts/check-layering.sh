#!/usr/bin/env bash
# check-layering.sh: each module may `use crate::X` only for the X allowed in
# docs/architecture.md ("Allowed imports"). Prints violations, exits 1 on any.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
declare -A allowed=(
  [format]="digest format"        [gzip]="digest format gzip"
  [tar]="digest tar"              [metrics]="metrics"
  [oci]="digest source oci"       [cache]="cache source gzip format metrics digest"
  [index]="index oci tar gzip format source digest"
  [fuse]="fuse cache format metrics"
  [mount]="mount fuse cache format metrics digest"
  [object]="source digest"        [s3]="s3 object source"
  [archive]="archive format object source digest"
)
bad=0
for mod in "${!allowed[@]}"; do
  while IFS=: read -r file _ line; do
    dep=$(sed -E 's/.*crate::([a-z_]+).*/\1/' <<<"$line")
    # Unit tests may reach anywhere.
    [[ "$file" == *tests.rs ]] && continue
    if ! grep -qw "$dep" <<<"${allowed[$mod]} Digest Error Result"; then
      echo "layering: $file uses crate::$dep"; bad=1
    fi
  done < <(grep -rn --include='*.rs' -E '^\s*(pub(\([a-z]+\))? )?use crate::[a-z_]+' "src/$mod" "src/$mod.rs" 2>/dev/null || true)
done
[ "$bad" -eq 0 ] && echo "layering ok"
exit "$bad"
