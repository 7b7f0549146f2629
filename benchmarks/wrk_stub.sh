#!/usr/bin/env bash
# Check that the stub server is not the bottleneck: start it, hit it with wrk, stop it.
#   bash benchmarks/wrk_stub.sh [LATENCY_MS] [CONNECTIONS] [SECONDS]
# Needs wrk (Debian: apt-get install wrk). Uses the python that runs inferbatch (PYTHON=...).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
latency="${1:-0}"
connections="${2:-64}"
seconds="${3:-10}"
out="$(mktemp)"
"$python" "$here/stub_server.py" --latency-ms "$latency" >"$out" &
pid=$!
trap 'kill "$pid" 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 50); do [ -s "$out" ] && break; sleep 0.1; done
url="$(head -1 "$out")"
echo "stub $url latency_ms=$latency connections=$connections"
wrk -t1 -c"$connections" -d"${seconds}s" -s "$here/wrk_post.lua" "$url/v1/chat/completions"
