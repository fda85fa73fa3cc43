#!/usr/bin/env bash
# Runs the bare-hyper baseline and hookgate side by side under the same wrk load and
# prints requests/s, p99 and the ratio to the baseline. Needs wrk (Debian package `wrk`)
# and a release build: cargo build --release --workspace
# Usage: loadtest/wrk/compare.sh [SECONDS] [CONNECTIONS]
# BEFORE=/path/to/an/older/hookgate also runs that build, on a fresh journal of its own.
# WEBHOOK=1 also runs adnanh/webhook (Debian package `webhook`) with one HMAC rule and
# /bin/true as its command (loadtest/wrk/webhook.json).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
conns=${2:-64}
bin=target/release
"$bin/hookgate-loadtest" baseline --listen 127.0.0.1:8081 2>/dev/null &
base_pid=$!
other_pid=
trap 'kill $base_pid $other_pid 2>/dev/null || true' EXIT
sleep 1
run() { wrk -t1 -c"$conns" -d"${secs}s" --latency -s loadtest/wrk/github.lua "http://127.0.0.1:$1/hooks/github"; }
rate() { awk '/Requests\/sec/{print $2}'; }
p99() { awk '/ 99%/{print $2}'; }
errors() { grep -E 'Non-2xx|Socket errors' || true; }
# Starts a server (the command in "$@"), loads port $port, stops it.
measure() {
  "$@" >/dev/null 2>&1 &
  other_pid=$!
  sleep 1
  run "$port"
  kill "$other_pid"
  wait "$other_pid" 2>/dev/null || true
  other_pid=
}
gate() {
  rm -rf /tmp/hookgate-bench
  HOOKGATE_LOG=${HOOKGATE_LOG:-warn} exec "$1" serve -c loadtest/wrk/bench.toml 2>/tmp/hookgate-bench.log
}
line() { # name, wrk output
  local r
  r=$(rate <<<"$2")
  printf '%-9s %10s req/s  p99 %-8s  %sx  %s\n' "$1:" "$r" "$(p99 <<<"$2")" \
    "$(awk -v h="$r" -v b="$br" 'BEGIN{printf "%.2f", h/b}')" "$(errors <<<"$2")"
}
b=$(run 8081)
br=$(rate <<<"$b")
line baseline "$b"
port=8080
if [[ -n "${BEFORE:-}" ]]; then
  line before "$(measure gate "$BEFORE")"
fi
line hookgate "$(measure gate "$bin/hookgate")"
if [[ -n "${WEBHOOK:-}" ]]; then
  port=8082
  line webhook "$(measure webhook -hooks loadtest/wrk/webhook.json -ip 127.0.0.1 -port 8082 -nopanic)"
fi
