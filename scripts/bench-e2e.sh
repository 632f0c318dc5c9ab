#!/usr/bin/env bash
# vpd run --filter edges against FFmpeg on the same 720p H.264 clip of 600 frames, in the same run:
#   ceiling:    ffmpeg -i clip -c:v mpeg4 -f null -                  (decode + encode, no filtering)
#   edgedetect: ffmpeg -i clip -vf edgedetect -c:v mpeg4 -f null -
# Rounds are interleaved so a noisy neighbour slows every command alike; the median wall time of
# each command gives its frames per second.
# Usage: scripts/bench-e2e.sh [ROUNDS] [CONTENT]: ROUNDS default 5; CONTENT `sample` (default: the
# sample video scaled to 720p and looped: real photos, a face, H.264 noise) or `testsrc2` (FFmpeg's
# synthetic test pattern: dense sharp edges, clean gradients).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
content=${2:-sample}
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --quiet
vpd="$target/release/vpd"
work="$target/bench-e2e"
mkdir -p "$work"
clip="$work/$content-720p.mp4"
frames=600
if [ ! -s "$clip" ]; then
  case $content in
    sample) input=(-stream_loop -1 -i assets/sample.mp4 -vf scale=1280:720) ;;
    testsrc2) input=(-f lavfi -i testsrc2=size=1280x720:rate=30) ;;
    *) echo "unknown content '$content' (sample or testsrc2)" >&2 && exit 2 ;;
  esac
  ffmpeg -loglevel error -y "${input[@]}" -frames:v "$frames" -c:v libx264 -preset medium -crf 20 -pix_fmt yuv420p "$clip"
fi
out=$(mktemp -d "${TMPDIR:-/tmp}/vpd-bench.XXXXXX")
trap 'rm -rf "$out"' EXIT

declare -A cmds=(
  [vpd_edges]="$vpd run $clip --filter edges -o $out/edges.mp4 --quiet"
  [ffmpeg_ceiling]="ffmpeg -loglevel error -y -i $clip -c:v mpeg4 -f null -"
  [ffmpeg_edgedetect]="ffmpeg -loglevel error -y -i $clip -vf edgedetect -c:v mpeg4 -f null -"
)
order=(vpd_edges ffmpeg_ceiling ffmpeg_edgedetect)
declare -A times
for ((r = 1; r <= rounds; r++)); do
  for name in "${order[@]}"; do
    start=$(date +%s.%N)
    ${cmds[$name]} >/dev/null
    end=$(date +%s.%N)
    times[$name]+="$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }') "
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
declare -A fps
echo "clip: $clip ($frames frames, 1280x720 H.264), $rounds interleaved rounds, $(nproc) cores"
printf '%-20s %10s %10s   %s\n' command "median s" fps "all runs (s)"
for name in "${order[@]}"; do
  m=$(echo "${times[$name]}" | median)
  fps[$name]=$(awk -v f="$frames" -v m="$m" 'BEGIN { print f / m }')
  printf '%-20s %10.2f %10.1f   %s\n' "$name" "$m" "${fps[$name]}" "${times[$name]}"
done
# Speed ratios per round (the two commands ran back to back, under the same load), then their
# median: steadier than a ratio of medians when the machine's speed drifts between rounds.
ratios() {
  paste <(echo "${times[$2]}" | tr ' ' '\n') <(echo "${times[$1]}" | tr ' ' '\n') | grep -v '^\s*$' |
    awk '{ printf "%.3f ", $1 / $2 }'
}
for baseline in ffmpeg_ceiling ffmpeg_edgedetect; do
  r=$(ratios vpd_edges "$baseline")
  printf 'vpd edges / %-18s median %.2f   per round: %s\n' "$baseline" "$(echo "$r" | median)" "$r"
done
echo "targets: >= 0.6 x ffmpeg_ceiling, >= 3 x ffmpeg_edgedetect"
