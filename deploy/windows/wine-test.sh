#!/bin/sh
# Runs the Windows build for real under Wine: `predict` on a photo with the committed
# weights, then `serve` answering a POST over loopback. CI runs it after `make dist`.
#
#   deploy/windows/wine-test.sh [dist/x86_64-pc-windows-gnu/classify.exe]
#
# Needs Debian's wine (8.0 on Debian 12) and gcc-mingw-w64-x86-64. Wine 8.0 lacks
# bcryptprimitives.dll (ProcessPrng, which Rust's standard library imports on Windows 10
# and later): a stand-in built here from bcryptprimitives.c goes beside a copy of the
# exe. What Wine cannot show: Ctrl+C and console close events (SetConsoleCtrlHandler),
# Windows Defender's scan of a new exe, and a real Windows network stack.
set -eu
cd "$(dirname "$0")/../.."
exe=${1:-dist/x86_64-pc-windows-gnu/classify.exe}
shared=${EDGE_SHARED:-../shared}
photo=$shared/data/photos/tiger.jpg
[ -f "$exe" ] || { echo "no $exe: run make dist first" >&2; exit 2; }

work=$(mktemp -d)
server=
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null
    WINEPREFIX=$work/prefix wineserver -k 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cp "$exe" "$work/classify.exe"
x86_64-w64-mingw32-gcc -O2 -shared -o "$work/bcryptprimitives.dll" \
    deploy/windows/bcryptprimitives.c deploy/windows/bcryptprimitives.def -ladvapi32
export WINEPREFIX="$work/prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
wineboot --init >/dev/null 2>&1 || true

echo "== predict under Wine"
answer=$(wine "$work/classify.exe" --manifest weights/models.toml predict --format json "$photo")
echo "$answer"
echo "$answer" | grep -q '"label":"tiger"' || { echo "predict did not answer tiger" >&2; exit 1; }

echo "== serve under Wine"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
wine "$work/classify.exe" --manifest weights/models.toml serve --bind 127.0.0.1 --port "$port" \
    --lock-file "$work/lock" >"$work/serve.log" 2>&1 &
server=$!
ready=
for _ in $(seq 1 240); do
    if curl -fsS "http://127.0.0.1:$port/_/ready" >/dev/null 2>&1; then ready=yes; break; fi
    kill -0 "$server" 2>/dev/null || break
    sleep 0.5
done
[ -n "$ready" ] || { cat "$work/serve.log" >&2; echo "serve did not become ready" >&2; exit 1; }
answer=$(curl -fsS --max-time 60 --data-binary @"$photo" "http://127.0.0.1:$port/")
echo "$answer"
echo "$answer" | grep -q '"label":"tiger"' || { echo "serve did not answer tiger" >&2; exit 1; }
echo "Windows build: predict and serve answered under Wine"
