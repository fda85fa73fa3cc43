#!/usr/bin/env bash
# Forwarding figures against the local RabbitMQ, all in one run:
#  1. the bare-hyper baseline and hookgate (with [broker]) under the same wrk load, and
#     how fast events went from the journal to confirmed in the broker meanwhile;
#  2. a backlog of N events built while the broker is out of reach, then timed from
#     hookgate's restart until every event is in the queue.
# Needs wrk, a running RabbitMQ (guest/guest) and: cargo build --release --workspace
# Usage: loadtest/wrk/forward.sh [SECONDS] [BACKLOG]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
backlog=${2:-100000}
# Every request a new signed body (see compare.sh), for the live run and the backlog.
export HOOKGATE_BENCH_SIGS=${SIGS:-/tmp/hookgate-sigs.txt}
[[ -s $HOOKGATE_BENCH_SIGS ]] || python3 loadtest/wrk/sign.py 1000000 "$HOOKGATE_BENCH_SIGS"
bin=target/release
amqp=amqp://guest:guest@127.0.0.1:5672/%2f
work=/tmp/hookgate-forward
cfg=$work/hookgate.toml
live=hookgate-bench-live-$$
drain=hookgate-bench-drain-$$
rm -rf "$work" && mkdir -p "$work"

config() { # $1 broker url, $2 queue
  cat >"$cfg" <<TOML
[server]
listen = "127.0.0.1:8080"
[admin]
listen = "127.0.0.1:9090"
[journal]
path = "$work/journal"
max_backlog = 100000000
[broker]
url = "$1"
exchange = "hookgate-bench"
[[broker.queues]]
name = "$2"
bindings = ["github.#"]
kind = "quorum"
[[sources]]
name = "github"
scheme = "github"
secrets = ["bench-github-secret"]
TOML
}
gate_pid=
base_pid=
clk_tck=$(getconf CLK_TCK)
# utime + stime of a process, in clock ticks (see compare.sh).
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
# Clock ticks over the backlog, in µs per event.
per_event() { awk -v t="$1" -v hz="$clk_tck" -v n="$backlog" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }'; }
start_gate() {
  HOOKGATE_LOG=warn "$bin/hookgate" serve -c "$cfg" 2>>"$work/hookgate.log" &
  gate_pid=$!
  until curl -sf http://127.0.0.1:9090/healthz >/dev/null; do sleep 0.05; done
}
stop_gate() { kill -TERM "$gate_pid"; wait "$gate_pid" || true; }
trap 'kill $base_pid $gate_pid 2>/dev/null || true' EXIT
run() { wrk -t1 -c64 -d"${secs}s" --latency -s loadtest/wrk/github.lua "http://127.0.0.1:$1/hooks/github"; }
rate() { awk '/Requests\/sec/{print $2}'; }
total() { awk '/requests in/{print $1}'; }

"$bin/hookgate-loadtest" baseline --listen 127.0.0.1:8081 2>/dev/null &
base_pid=$!
sleep 0.5
b=$(run 8081)
echo "baseline:            $(rate <<<"$b") req/s"

config "$amqp" "$live"
start_gate
h=$(run 8080)
n=$(total <<<"$h")
hr=$(rate <<<"$h")
echo "hookgate ingest:     $hr req/s ($n events, $(awk -v h="$hr" -v b="$(rate <<<"$b")" 'BEGIN{printf "%.2f", h/b}')x baseline) $(grep -E 'Non-2xx|Socket errors' <<<"$h" || true)"
t0=$(date +%s.%N)
"$bin/hookgate-loadtest" queue-watch --url "$amqp" --queue "$live" --until "$n" --delete >/dev/null
t1=$(date +%s.%N)
echo "forwarded meanwhile: all $n confirmed $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')s after the load ended: $(awk -v n="$n" -v s="$secs" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", n/(s+b-a)}') events/s over the whole run"
stop_gate

rm -rf "$work/journal"
config "amqp://guest:guest@127.0.0.1:1/%2f" "$drain"
start_gate
# wrk's threads stop sending at the limit, but wrk itself waits out its duration: stop it
# once hookgate has accepted the backlog.
HOOKGATE_BENCH_LIMIT=$backlog wrk -t1 -c64 -d600s -s loadtest/wrk/github.lua http://127.0.0.1:8080/hooks/github >/dev/null &
fill_pid=$!
until (($(curl -sf http://127.0.0.1:9090/metrics | awk '/^hookgate_events_total.*accepted/ { print $NF }' || echo 0) >= backlog)); do
  sleep 0.5
done
kill -INT $fill_pid
wait $fill_pid || true
stop_gate
config "$amqp" "$drain"
broker_pid=$(pgrep -o beam.smp || true)
broker_before=$( [[ -n $broker_pid ]] && cpu_ticks "$broker_pid" || echo 0)
t0=$(date +%s.%N)
"$bin/hookgate-loadtest" queue-watch --url "$amqp" --queue "$drain" --until "$backlog" --delete >"$work/drain.txt" &
watch_pid=$!
start_gate
wait $watch_pid
t1=$(date +%s.%N)
gate_ticks=$(cpu_ticks "$gate_pid")
broker_after=$( [[ -n $broker_pid ]] && cpu_ticks "$broker_pid" || echo 0)
echo "backlog drain:       $backlog events in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')s from restart ($(awk -v n="$backlog" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", n/(b-a)}') events/s)"
echo "  CPU per event:     hookgate $(per_event "$gate_ticks") µs (its opening included), the broker (beam.smp) $(per_event $((broker_after - broker_before))) µs"
stop_gate
