#!/usr/bin/env bash
# The layering rule of docs/DESIGN.md ("Where things live"), checked on the source (make lint):
#  1. no role (run, server, worker, client, preview) uses another role;
#  2. nothing below the roles uses a role: only app.rs and config.rs (which build the roles'
#     configs and start them) and main.rs sit above them;
#  3. the leaves use only what is listed for them below, so no cycle runs through them;
#  4. no two files of one module use each other, directly or round a circle
#     (scripts/check-cycles.py).
# Prints each offending line and exits 1; prints one line and exits 0 when all is well.
set -euo pipefail
cd "$(dirname "$0")/.."

roles=(run server worker client preview)
above=(src/app.rs src/config.rs src/main.rs)
# leaf: the crate modules it may use (besides itself)
declare -A leaves=(
  [filters]=""
  [metrics]=""
  [net]=""
  [media]="files"
  [files]=""
  [tls]=""
  [protocol]="filters metrics media"
)

failed=0
offend() {
  echo "check-layers: $1" >&2
  failed=1
}

files_of() { # module name -> its files
  [ -f "src/$1.rs" ] && echo "src/$1.rs"
  [ -d "src/$1" ] && find "src/$1" -name '*.rs'
  return 0
}

# `crate::NAME` at a module boundary: in a use, a path, or a braced import list.
uses() { # file, module name -> matching lines
  grep -nE "crate::$2(::|;|\b)" "$1" || true
}

role_pattern=$(IFS='|'; echo "${roles[*]}")
mapfile -t all < <(find src -name '*.rs' | sort)
for file in "${all[@]}"; do
  [[ " ${above[*]} " == *" $file "* ]] && continue
  own=""
  for role in "${roles[@]}"; do
    if [[ "$file" == "src/$role.rs" || "$file" == src/$role/* ]]; then own=$role; fi
  done
  while IFS= read -r line; do
    [ -z "$line" ] && continue
    used=$(echo "$line" | grep -oE "crate::($role_pattern)\b" | head -1 | sed 's/crate:://')
    [ "$used" = "$own" ] && continue
    if [ -n "$own" ]; then
      offend "$file: the $own role uses the $used role: $line"
    else
      offend "$file: below the roles, but uses the $used role: $line"
    fi
  done < <(grep -nE "crate::($role_pattern)\b" "$file" || true)
done

for leaf in "${!leaves[@]}"; do
  allowed=" $leaf ${leaves[$leaf]} "
  while IFS= read -r file; do
    while IFS= read -r used; do
      [[ "$allowed" == *" $used "* ]] || offend "$file: the leaf $leaf uses crate::$used (allowed: ${leaves[$leaf]:-nothing})"
    done < <(grep -oE "crate::[a-z_]+" "$file" | sed 's/crate:://' | sort -u)
  done < <(files_of "$leaf")
done

python3 scripts/check-cycles.py || failed=1

if ((failed)); then
  exit 1
fi
echo "check-layers: no role uses another, nothing below the roles uses one, the leaves form no cycle," \
  "no module's files form one"
