#!/usr/bin/env bash
# Memory over a long run: hookgate on a fresh journal under a steady wrk load (pick the
# connections so that the rate is about half of compare.sh's), its RSS sampled every
# 10 s. Prints the samples, then the rate and RSS at the start (after the first minute),
# the end and the highest. Needs wrk and: cargo build --release --workspace
# Every request is a new signed body (see compare.sh): SIGNED signatures (default 5
# million, 325 MB) are written first; past them the bodies repeat and are duplicates.
# Usage: loadtest/wrk/soak.sh [SECONDS] [CONNECTIONS]   (default 600 s, 4 connections);
# CONFIG=FILE runs hookgate with FILE instead of loadtest/wrk/bench.toml.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-600}
conns=${2:-4}
export HOOKGATE_BENCH_SIGS=/tmp/hookgate-sigs-soak.txt
python3 loadtest/wrk/sign.py "${SIGNED:-5000000}" "$HOOKGATE_BENCH_SIGS"
rm -rf /tmp/hookgate-bench
HOOKGATE_LOG=${HOOKGATE_LOG:-warn} target/release/hookgate serve -c "${CONFIG:-loadtest/wrk/bench.toml}" \
  2>/tmp/hookgate-soak.log &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
sleep 1
rss() { awk '/^VmRSS/{print $2}' "/proc/$pid/status"; }
wrk -t1 -c"$conns" -d"${secs}s" -s loadtest/wrk/github.lua \
  http://127.0.0.1:8080/hooks/github >/tmp/hookgate-soak.wrk &
load=$!
samples=()
while kill -0 "$load" 2>/dev/null; do
  samples+=("$(rss)")
  sleep 10
done
echo "RSS every 10 s, KiB: ${samples[*]}"
grep -E 'requests in|Requests/sec|Non-2xx' /tmp/hookgate-soak.wrk
curl -s http://127.0.0.1:9090/metrics | grep '^hookgate_events_total'
du -sh /tmp/hookgate-bench/journal
first=${samples[6]:-${samples[0]}}
last=${samples[-1]}
high=$(printf '%s\n' "${samples[@]}" | sort -n | tail -1)
echo "RSS after 1 min ${first} KiB, at the end ${last} KiB, highest ${high} KiB"
