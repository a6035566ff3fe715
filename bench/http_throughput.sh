#!/usr/bin/env bash
# Images/s through HTTP (`classify serve` loaded by wrk) against the in-process rate
# (`classify bench --concurrency C`: C callers decoding and classifying the same image),
# at each concurrency, without and with batching. The three measurements of a
# concurrency run back to back, round after round, and the table reports medians, so
# the ratios come from the same minutes of this (shared, noisy) machine.
#
#   bench/http_throughput.sh
#   ROUNDS=3 DURATION=30s CONCURRENCY="1 2 4 8" WORKERS=4 IMAGE=photo.jpg bench/http_throughput.sh
#
# Needs wrk (Debian: apt-get install wrk). Runs on the device it measures and writes
# bench/results/http-throughput.md.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/classify}
IMAGE=${IMAGE:-../shared/data/photos/tiger.jpg}
DURATION=${DURATION:-15s}
CONCURRENCY=${CONCURRENCY:-1 2 4 8}
ROUNDS=${ROUNDS:-2}
ITERS=${ITERS:-6}
WORKERS=${WORKERS:-$((2 * $(nproc)))}
PORT_UNBATCHED=${PORT:-18090}
PORT_BATCHED=$((PORT_UNBATCHED + 1))
OUT=bench/results/http-throughput.md

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 2; }
[ -x "$BIN" ] || cargo build --release --locked
export IMAGE

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT

start_server() { # port max_batch
  "$BIN" serve --bind 127.0.0.1 --port "$1" --workers "$WORKERS" --max-batch "$2" \
    --lock-file "$(mktemp -u)" --exec-timeout 0 --queue 1024 2>/dev/null &
  pids+=($!)
  for _ in $(seq 1 600); do
    curl -fs "http://127.0.0.1:$1/_/ready" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "the server on port $1 did not become ready" >&2; exit 1
}

http_rate() { # port concurrency -> images/s (exits on any non-200)
  local report
  report=$(wrk -t "$2" -c "$2" -d "$DURATION" --timeout 60s -s bench/post_image.lua "http://127.0.0.1:$1/")
  if grep -q "Non-2xx" <<<"$report"; then echo "non-200 answers under load:" >&2; echo "$report" >&2; exit 1; fi
  awk '/Requests\/sec/ {print $2}' <<<"$report"
}

inprocess_rate() { # concurrency -> images/s
  "$BIN" bench --image "$IMAGE" --threads "$(nproc)" --concurrency "$1" --iters "$ITERS" --warmup 1 --format json \
    | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["images_per_s"])'
}

start_server "$PORT_UNBATCHED" 1
start_server "$PORT_BATCHED" 4

samples=$(mktemp)
for round in $(seq 1 "$ROUNDS"); do
  for c in $CONCURRENCY; do
    echo "$c $(inprocess_rate "$c") $(http_rate "$PORT_UNBATCHED" "$c") $(http_rate "$PORT_BATCHED" "$c")" >> "$samples"
    echo "round $round, concurrency $c: $(tail -1 "$samples" | cut -d' ' -f2-)" >&2
  done
done

python3 - "$samples" "$ROUNDS" "$DURATION" "$WORKERS" "$(nproc)" "$(uname -m)" "$(basename "$IMAGE")" > "$OUT" <<'PY'
import statistics, sys, datetime
path, rounds, duration, workers, cores, arch, image = sys.argv[1:]
rows = {}
for line in open(path):
    c, *rates = line.split()
    rows.setdefault(int(c), []).append([float(r) for r in rates])
print("# HTTP throughput against the in-process rate\n")
print(f"{datetime.date.today()}, {cores} cores, {arch}; image {image}; {rounds} rounds, medians; "
      f"wrk for {duration} per measurement; `classify serve --workers {workers}`.")
print("In-process: `classify bench --concurrency C` (decode + preprocess + forward per image).\n")
print("| concurrency | in-process images/s | HTTP max_batch=1 | ratio | HTTP max_batch=4 | ratio |")
print("| --- | --- | --- | --- | --- | --- |")
for c in sorted(rows):
    base, one, four = (statistics.median(r[i] for r in rows[c]) for i in range(3))
    print(f"| {c} | {base:.2f} | {one:.2f} | {one / base:.2f} | {four:.2f} | {four / base:.2f} |")
PY
rm -f "$samples"
cat "$OUT"
