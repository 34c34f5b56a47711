#!/usr/bin/env bash
# check-layering.sh: a module may name `crate::X` only for the X allowed in
# docs/architecture.md ("Allowed imports"). Every `crate::` path in a module's
# files counts (use lines, paths in expressions and types, `crate::{a, b}`
# groups); comment lines and unit-test files (*tests.rs) do not. Prints
# violations, exits 1 on any.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
# `sync` (poison-tolerant locking) and `digest` are leaves any module may use.
declare -A allowed=(
  [digest]=""                     [sync]=""
  [format]="gzip"                 [gzip]=""
  [tar]=""                        [metrics]=""
  [zstd_limits]=""
  [source]=""                     [oci]="source"
  [cache]="source gzip format metrics zstd_limits"
  [index]="oci tar gzip format source zstd_limits"
  [fuse]="cache format metrics"
  [mount]="fuse cache format metrics"
  [node]="mount cache fuse oci format index metrics source archive object s3"
  [object]="source"               [s3]="object source"
  [archive]="format object source zstd_limits"
  [snapshotter]="node mount oci format"
)
# Root re-exports and the module each stands for.
declare -A root=([Digest]=digest [BlobSource]=source)
bad=0
for mod in "${!allowed[@]}"; do
  ok=" $mod sync digest ${allowed[$mod]} "
  files=()
  [ -f "src/$mod.rs" ] && files+=("src/$mod.rs")
  [ -d "src/$mod" ] && while IFS= read -r f; do files+=("$f"); done \
    < <(find "src/$mod" -name '*.rs' ! -name '*tests.rs')
  [ "${#files[@]}" -eq 0 ] && { echo "layering: no files for module $mod"; bad=1; continue; }
  # file:line:text of every non-comment line naming crate::, one per path.
  while IFS=: read -r file line text; do
    for dep in $(grep -oE 'crate::(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)' <<<"$text" \
        | sed -E 's/^crate:://; s/[{}]//g; s/::[A-Za-z0-9_:]*//g; s/,/ /g'); do
      dep="${root[$dep]:-$dep}"
      [[ "$dep" == self ]] && continue
      if [[ "$ok" != *" $dep "* ]]; then
        echo "layering: $file:$line names crate::$dep"; bad=1
      fi
    done
  done < <(grep -nE 'crate::' "${files[@]}" /dev/null | grep -vE '^[^:]+:[0-9]+:\s*//' || true)
done
[ "$bad" -eq 0 ] && echo "layering ok"
exit "$bad"
