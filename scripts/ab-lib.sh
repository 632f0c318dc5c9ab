# Shared by scripts/ab.sh and scripts/ab-server.sh: the `ROUNDS BIN… -- ARGS…` command line,
# and the report of median wall times with their ratio to the first binary. Sourced, not run.

# Reads `ROUNDS BIN… -- ARGS…` into $rounds, the array bins and the array rest.
ab_parse() {
  rounds=$1
  shift
  bins=()
  while (($#)) && [ "$1" != "--" ]; do
    bins+=("$1")
    shift
  done
  [ "${1:-}" = "--" ] && [ "${#bins[@]}" -gt 0 ] || { echo "usage: $0 ROUNDS BIN… -- ARGS…" >&2; exit 2; }
  shift
  rest=("$@")
}

# Seconds since `start` (from `date +%s.%N`).
ab_since() { echo "$(date +%s.%N) - $1" | bc; }

ab_median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# Prints each binary's median of the times in the associative array `times` (keyed by its
# index in bins, space-separated seconds) and its ratio to the first binary's.
ab_report() {
  local base m i
  base=$(echo "${times[0]}" | ab_median)
  printf '%-40s %10s %8s   %s\n' binary "median s" ratio "all runs (s)"
  for i in "${!bins[@]}"; do
    m=$(echo "${times[$i]}" | ab_median)
    printf '%-40s %10.3f %8.3f   %s\n' "${bins[$i]}" "$m" "$(echo "$m / $base" | bc -l)" "${times[$i]}"
  done
}
