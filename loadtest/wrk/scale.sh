#!/usr/bin/env bash
# Scale figures of the journal: fills a fresh journal with N events (wrk, github.lua,
# unique ids), stops hookgate, and prints the journal's bytes per event and how long a
# restart takes until /healthz answers and until the first new event is accepted; then
# the same after a SIGKILL (the index rebuilt from the log's tail). Needs wrk and a
# release build: cargo build --release --workspace
# Usage: loadtest/wrk/scale.sh [EVENTS]   (default 1000000); COLD=1 empties the page
# cache before each opening (root only); BIN=PATH runs another build of hookgate.
set -euo pipefail
cd "$(dirname "$0")/../.."
events=${1:-1000000}
# A new signed body per request (see compare.sh), enough for the fill and the restarts.
export HOOKGATE_BENCH_SIGS=/tmp/hookgate-sigs-scale.txt
python3 loadtest/wrk/sign.py $((events + 50000)) "$HOOKGATE_BENCH_SIGS"
bin=${BIN:-target/release/hookgate}
journal=/tmp/hookgate-bench/journal
pid=
trap '[[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true' EXIT
start() {
  HOOKGATE_LOG=${HOOKGATE_LOG:-warn} "$bin" serve -c loadtest/wrk/bench.toml 2>>/tmp/hookgate-scale.log &
  pid=$!
}
# Seconds from now until the command in "$@" succeeds.
until_ok() {
  local t0
  t0=$(date +%s.%N)
  until "$@" >/dev/null 2>&1; do sleep 0.05; done
  echo "$(date +%s.%N) - $t0" | bc
}
healthy() { curl -sf http://127.0.0.1:9090/healthz; }
accepts() {
  curl -sf -o /dev/null -H 'Content-Type: application/json' -H 'X-GitHub-Event: ping' \
    -H "X-GitHub-Delivery: scale-$RANDOM-$RANDOM" \
    -H "X-Hub-Signature-256: sha256=$(printf '{}' | openssl dgst -sha256 -hmac bench-github-secret | awk '{print $NF}')" \
    --data '{}' http://127.0.0.1:8080/hooks/github
}
rm -rf /tmp/hookgate-bench /tmp/hookgate-scale.log
start
until_ok healthy >/dev/null
echo "filling a fresh journal with $events events"
# wrk's threads stop sending at the limit, but wrk itself waits out its duration: stop it
# once hookgate has accepted them all.
accepted() { curl -sf http://127.0.0.1:9090/metrics | awk '/^hookgate_events_total.*accepted/ { print $NF }'; }
began=$(date +%s.%N)
HOOKGATE_BENCH_LIMIT=$events wrk -t1 -c64 -d1h -s loadtest/wrk/github.lua \
  http://127.0.0.1:8080/hooks/github >/tmp/hookgate-scale.wrk &
fill=$!
until (($(accepted || echo 0) >= events)); do sleep 0.5; done
echo "filled in $(echo "$(date +%s.%N) - $began" | bc) s"
kill -INT $fill
wait $fill || true
curl -s http://127.0.0.1:9090/metrics | grep '^hookgate_events_total'
kill -TERM "$pid"; wait "$pid" || true; pid=
bytes=$(du -sb "$journal" | awk '{print $1}')
log=$(du -sb "$journal/log" | awk '{print $1}')
echo "journal: $bytes bytes, $((bytes / events)) per event (commit log $((log / events)), index $(((bytes - log) / events)))"
# A clean stop leaves a census and the saved dedup fingerprints (README, "Start time
# after a clean stop"): the first opening reads them; the second finds them deleted
# (as an operator would delete <journal.path>/fingerprints) and walks the index, as the
# third does after a SIGKILL.
for how in "after a clean stop" "after a clean stop, counting again" "after SIGKILL"; do
  [[ $how == *"counting again" ]] && rm -f "$journal/fingerprints"
  # COLD=1 starts each opening with an empty page cache (needs root).
  [[ ${COLD:-0} == 1 ]] && { sync; echo 3 >/proc/sys/vm/drop_caches; }
  start
  echo "open $how: /healthz in $(until_ok healthy) s, first event accepted in $(until_ok accepts) s"
  if [[ $how == *"counting again" ]]; then
    # Load for a moment so that the log's tail is past the index's flushed mark: 20,000
    # new events (bodies the fill did not send); the SIGKILL leaves the newest of them
    # past that mark, for the next opening to write into the index again.
    HOOKGATE_BENCH_FIRST=$((events + 1000)) HOOKGATE_BENCH_LIMIT=20000 \
      wrk -t1 -c64 -d10s -s loadtest/wrk/github.lua \
      http://127.0.0.1:8080/hooks/github >/dev/null
    kill -KILL "$pid"
  else
    kill -TERM "$pid"
  fi
  wait "$pid" 2>/dev/null || true; pid=
done
echo "RSS is not measured here; see the soak in BENCHMARKS.md"
