#!/usr/bin/env bash
# Images/s through HTTP (`classify serve`, load from wrk) against the in-process rate
# (`classify bench`, the same image decoded and classified by concurrent callers), at
# each concurrency, with and without batching. Writes a Markdown table to
# bench/results/http-throughput.md and prints it.
#
#   bench/http_throughput.sh                 # release build, ../shared/data/photos/tiger.jpg
#   DURATION=30s CONCURRENCY="1 2 4 8" WORKERS=4 IMAGE=photo.jpg bench/http_throughput.sh
#
# Needs wrk (Debian: apt-get install wrk). Runs on the device it measures.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/classify}
IMAGE=${IMAGE:-../shared/data/photos/tiger.jpg}
DURATION=${DURATION:-20s}
CONCURRENCY=${CONCURRENCY:-1 2 4 8}
ITERS=${ITERS:-8}
PORT=${PORT:-18090}
WORKERS=${WORKERS:-$(nproc)}
OUT=bench/results/http-throughput.md

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 2; }
[ -x "$BIN" ] || cargo build --release --locked
export IMAGE

server_pid=""
stop_server() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null; server_pid=""; }
trap stop_server EXIT

start_server() { # max_batch
  "$BIN" serve --bind 127.0.0.1 --port "$PORT" --workers "$WORKERS" --max-batch "$1" --lock-file "$(mktemp -u)" \
    --exec-timeout 0 --queue 1024 2>/dev/null &
  server_pid=$!
  for _ in $(seq 1 600); do
    curl -fs "http://127.0.0.1:$PORT/_/ready" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "the server did not become ready" >&2; exit 1
}

http_rate() { # concurrency -> "images/s non-2xx"
  local report
  report=$(wrk -t "$1" -c "$1" -d "$DURATION" --timeout 60s -s bench/post_image.lua "http://127.0.0.1:$PORT/")
  local rate errors
  rate=$(awk '/Requests\/sec/ {print $2}' <<<"$report")
  errors=$(awk '/Non-2xx/ {print $NF}' <<<"$report")
  echo "$rate ${errors:-0}"
}

inprocess_rate() { # concurrency -> images/s
  "$BIN" bench --image "$IMAGE" --threads "$(nproc)" --concurrency "$1" --iters "$ITERS" --warmup 1 --format json \
    | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["images_per_s"])'
}

declare -A inprocess
for c in $CONCURRENCY; do inprocess[$c]=$(inprocess_rate "$c"); done

{
  echo "# HTTP throughput against the in-process rate"
  echo
  echo "$(date -u +%Y-%m-%d), $(nproc) cores, $(uname -m); image $(basename "$IMAGE"); wrk for $DURATION per row; server --workers $WORKERS;"
  echo "in-process: \`classify bench --concurrency C\` (decode + preprocess + forward per image)."
  echo
  echo "| concurrency | in-process images/s | HTTP max_batch=1 | ratio | HTTP max_batch=4 | ratio | non-200 |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
} > "$OUT"

declare -A unbatched batched errors
start_server 1
for c in $CONCURRENCY; do read -r unbatched[$c] e1 < <(http_rate "$c"); errors[$c]=$e1; done
stop_server
start_server 4
for c in $CONCURRENCY; do read -r batched[$c] e2 < <(http_rate "$c"); errors[$c]=$(( ${errors[$c]} + e2 )); done
stop_server

for c in $CONCURRENCY; do
  python3 - "$c" "${inprocess[$c]}" "${unbatched[$c]}" "${batched[$c]}" "${errors[$c]}" >> "$OUT" <<'PY'
import sys
c, base, one, four, errors = sys.argv[1], *map(float, sys.argv[2:5]), sys.argv[5]
print(f"| {c} | {base:.2f} | {one:.2f} | {one / base:.2f} | {four:.2f} | {four / base:.2f} | {errors} |")
PY
done
cat "$OUT"
