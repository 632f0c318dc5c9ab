#!/usr/bin/env bash
# vpd run --filter edges against FFmpeg on the same H.264 clip (720p, 600 frames; or 1080p, 300),
# in the same run, each writing H.264 at x264's preset P (vpd's default, veryfast) and CRF 23:
#   ceiling:    ffmpeg -i clip -c:v libx264 -preset P -crf 23 -f null -            (decode + encode)
#   edgedetect: ffmpeg -i clip -vf edgedetect -c:v libx264 -preset P -crf 23 -f null -
# and vpd --codec mpeg4 against ffmpeg -i clip -c:v mpeg4 -f null -.
# Rounds are interleaved so a noisy neighbour slows every command alike; the median wall time of
# each command gives its frames per second.
# Usage: scripts/bench-e2e.sh [ROUNDS] [CONTENT] [HEIGHT]: ROUNDS default 5; CONTENT `sample`
# (default: the sample video scaled and looped: real photos, a face, H.264 noise) or `testsrc2`
# (FFmpeg's synthetic test pattern: dense sharp edges, clean gradients); HEIGHT 720 (default) or
# 1080.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
content=${2:-sample}
height=${3:-720}
width=$((height * 16 / 9))
preset=veryfast
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --quiet
vpd="$target/release/vpd"
work="$target/bench-e2e"
mkdir -p "$work"
clip="$work/$content-${height}p.mp4"
frames=$((height == 720 ? 600 : 300))
if [ ! -s "$clip" ]; then
  case $content in
    sample) input=(-stream_loop -1 -i assets/sample.mp4 -vf "scale=$width:$height") ;;
    testsrc2) input=(-f lavfi -i "testsrc2=size=${width}x$height:rate=30") ;;
    *) echo "unknown content '$content' (sample or testsrc2)" >&2 && exit 2 ;;
  esac
  ffmpeg -loglevel error -y "${input[@]}" -frames:v "$frames" -an -c:v libx264 -preset medium -crf 20 -pix_fmt yuv420p "$clip"
fi
out=$(mktemp -d "${TMPDIR:-/tmp}/vpd-bench.XXXXXX")
trap 'rm -rf "$out"' EXIT

x264="-c:v libx264 -preset $preset -crf 23"
declare -A cmds=(
  [vpd_edges]="$vpd run $clip --filter edges -o $out/edges.mp4 --preset $preset --crf 23 --quiet"
  [ffmpeg_ceiling]="ffmpeg -loglevel error -y -i $clip $x264 -f null -"
  [ffmpeg_edgedetect]="ffmpeg -loglevel error -y -i $clip -vf edgedetect $x264 -f null -"
  [vpd_edges_mpeg4]="$vpd run $clip --filter edges -o $out/edges-mpeg4.mp4 --codec mpeg4 --quiet"
  [ffmpeg_mpeg4]="ffmpeg -loglevel error -y -i $clip -c:v mpeg4 -f null -"
)
order=(vpd_edges ffmpeg_ceiling ffmpeg_edgedetect vpd_edges_mpeg4 ffmpeg_mpeg4)
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
echo "clip: $clip ($frames frames, ${width}x$height H.264), $rounds interleaved rounds, $(nproc) cores, x264 preset $preset"
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
for pair in "vpd_edges ffmpeg_ceiling" "vpd_edges ffmpeg_edgedetect" "vpd_edges_mpeg4 ffmpeg_mpeg4"; do
  set -- $pair
  r=$(ratios "$1" "$2")
  printf '%-16s / %-18s median %.2f   per round: %s\n' "$1" "$2" "$(echo "$r" | median)" "$r"
done
echo "targets: vpd_edges >= 0.6 x ffmpeg_ceiling and >= 1.5 x ffmpeg_edgedetect; vpd_edges_mpeg4 >= 0.55 x ffmpeg_mpeg4"
