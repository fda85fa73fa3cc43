#!/usr/bin/env bash
# Runs the bare-hyper baseline and hookgate side by side under the same wrk load and
# prints requests/s, p99 and their ratio. Needs wrk (Debian package `wrk`) and a release
# build: cargo build --release --workspace
# Usage: loadtest/wrk/compare.sh [SECONDS] [CONNECTIONS]
# With BEFORE=/path/to/an/older/hookgate, that build runs too, in the same run, on a
# fresh journal of its own (for before/after figures).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
conns=${2:-64}
bin=target/release
"$bin/hookgate-loadtest" baseline --listen 127.0.0.1:8081 2>/dev/null &
base_pid=$!
gate_pid=
trap 'kill $base_pid $gate_pid 2>/dev/null || true' EXIT
sleep 1
run() { wrk -t1 -c"$conns" -d"${secs}s" --latency -s loadtest/wrk/github.lua "http://127.0.0.1:$1/hooks/github"; }
rate() { awk '/Requests\/sec/{print $2}'; }
p99() { awk '/ 99%/{print $2}'; }
gate() {
  rm -rf /tmp/hookgate-bench
  HOOKGATE_LOG=${HOOKGATE_LOG:-warn} "$1" serve -c loadtest/wrk/bench.toml 2>/tmp/hookgate-bench.log &
  gate_pid=$!
  sleep 1
  run 8080
  kill "$gate_pid"
  wait "$gate_pid" 2>/dev/null || true
  gate_pid=
}
b=$(run 8081)
br=$(rate <<<"$b")
echo "baseline: $br req/s, p99 $(p99 <<<"$b")"
if [[ -n "${BEFORE:-}" ]]; then
  o=$(gate "$BEFORE")
  orate=$(rate <<<"$o")
  echo "before:   $orate req/s, p99 $(p99 <<<"$o")  ratio $(awk -v h="$orate" -v b="$br" 'BEGIN{printf "%.2f", h/b}')x  $(grep -E 'Non-2xx|Socket errors' <<<"$o" || true)"
fi
h=$(gate "$bin/hookgate")
hr=$(rate <<<"$h")
echo "hookgate: $hr req/s, p99 $(p99 <<<"$h")  $(grep -E 'Non-2xx|Socket errors' <<<"$h" || true)"
echo "ratio:    $(awk -v h="$hr" -v b="$br" 'BEGIN{printf "%.2f", h/b}')x"
